"""Plots of a GPA run: history curves, particles, trajectories and images (matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_array
from sklearn.utils._param_validation import validate_params

from .utils import NumberInterval

__all__ = [
    "plot_history",
    "plot_images",
    "plot_particles",
    "plot_particles_3d",
    "plot_trajectories",
]


# ``ax`` and ``cmap`` are left to matplotlib, imported only when a plot is drawn.
_POINTS = {"target": ["array-like"], "moved": ["array-like"], "source": ["array-like", None]}
_SIZE = [NumberInterval(Real, 0, None, closed="neither")]
_COUNT = [NumberInterval(Integral, 1, None, closed="left")]


def _axes(ax, **subplot_kw):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(subplot_kw=subplot_kw)
    return ax


@validate_params(
    {
        "history": [Mapping],
        "key": [str],
        "log": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def plot_history(history, *, ax=None, key="kinetic_energy", log=True):
    """Plot one per-step series of a fitted estimator's ``history_``.

    Parameters
    ----------
    history : dict
        ``estimator.history_``.
    ax : matplotlib Axes, default=None
    key : {"kinetic_energy", "divergence"}, default="kinetic_energy"
    log : bool, default=True
        Logarithmic y axis (the kinetic energy falls by orders of magnitude).

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sklearn_gpa.plotting import plot_history
    >>> ax = plot_history({"kinetic_energy": np.geomspace(1, 1e-3, 50)})
    >>> ax.get_ylabel()
    'kinetic energy'
    """
    if key not in history:
        raise ValueError(f"history has no {key!r} series; its keys are {sorted(history)}.")
    ax = _axes(ax)
    values = np.asarray(history[key])
    ax.plot(np.arange(1, len(values) + 1), values)
    if log and np.any(values[np.isfinite(values)] > 0):
        ax.set_yscale("log")  # matplotlib masks the zeros of a flow whose critic went flat
    ax.set_xlabel("particle step")
    ax.set_ylabel(key.replace("_", " "))
    return ax


@validate_params(
    {
        **_POINTS,
        "dims": ["array-like"],
    },
    prefer_skip_nested_validation=True,
)
def plot_particles(target, moved, *, source=None, ax=None, dims=(0, 1)):
    """Scatter target rows, moved particles and (optionally) their starting points.

    Parameters
    ----------
    target, moved : array-like of shape (n, n_features)
    source : array-like of shape (m, n_features), default=None
    ax : matplotlib Axes, default=None
    dims : pair of int, default=(0, 1)
        The two coordinates shown.

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sklearn_gpa.plotting import plot_particles
    >>> ax = plot_particles(np.zeros((3, 2)), np.ones((3, 2)))
    >>> len(ax.collections)
    2
    """
    return _scatter_particles(_axes(ax), target, moved, source, dims, size=8)


@validate_params(
    {
        **_POINTS,
        "dims": ["array-like"],
        "size": _SIZE,
    },
    prefer_skip_nested_validation=True,
)
def plot_particles_3d(target, moved, *, source=None, ax=None, dims=(0, 1, 2), size=4):
    """Scatter target rows, moved particles and (optionally) their starts in 3-D.

    The 3-D counterpart of :func:`plot_particles`, with the same colours: starting
    points grey, target blue, transported particles orange.

    Parameters
    ----------
    target, moved : array-like of shape (n, n_features)
    source : array-like of shape (m, n_features), default=None
    ax : matplotlib 3-D Axes, default=None
        An Axes made with ``projection="3d"``; None makes a new figure with one.
    dims : triple of int, default=(0, 1, 2)
        The three coordinates shown.
    size : float, default=4
        Marker size (points squared): thousands of points need small markers.

    Returns
    -------
    ax : matplotlib 3-D Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sklearn_gpa.plotting import plot_particles_3d
    >>> rng = np.random.RandomState(0)
    >>> ax = plot_particles_3d(rng.rand(5, 3), rng.rand(5, 3), source=rng.rand(5, 3))
    >>> ax.name, len(ax.collections)
    ('3d', 3)
    """
    return _scatter_particles(_axes(ax, projection="3d"), target, moved, source, dims, size)


def _scatter_particles(ax, target, moved, source, dims, size):
    """Scatter the coordinates ``dims`` of each set on ``ax`` (2-D or 3-D) with a legend."""
    sets = {"target": target, "moved": moved, "source": source}
    rows = {
        name: check_array(values, ensure_all_finite=False, input_name=name)
        for name, values in sets.items()
        if values is not None
    }
    widths = {name: values.shape[1] for name, values in rows.items()}
    if len(set(widths.values())) > 1:
        raise ValueError(f"The sets of rows have different numbers of features: {widths}.")
    width, dims = widths["target"], list(dims)
    if any(not isinstance(d, Integral) or not 0 <= d < width for d in dims):
        raise ValueError(
            f"dims must be indices of features, from 0 to {width - 1} (the rows have {width} "
            f"features); got {dims}."
        )
    if "source" in rows:
        ax.scatter(*rows["source"][:, dims].T, s=0.75 * size, c="0.7", label="start")
    ax.scatter(*rows["target"][:, dims].T, s=size, c="tab:blue", label="target")
    ax.scatter(*rows["moved"][:, dims].T, s=size, c="tab:orange", label="transported")
    ax.legend(loc="best", fontsize="small", markerscale=max(1.0, 4.0 / size))
    return ax


@validate_params(
    {
        "X": ["array-like"],
        "image_shape": ["array-like"],
        "n_cols": _COUNT,
        "vmin": [NumberInterval(Real, None, None, closed="neither"), None],
        "vmax": [NumberInterval(Real, None, None, closed="neither"), None],
    },
    prefer_skip_nested_validation=True,
)
def plot_images(X, image_shape, *, n_cols=10, ax=None, cmap="gray", vmin=None, vmax=None):
    """Show the rows of ``X`` as a grid of images, row by row.

    The images are tiled into one mosaic, separated by one pixel of the colour of
    ``vmin``, and drawn with a single ``imshow``: fast for hundreds of images.

    Parameters
    ----------
    X : array-like of shape (n_images, height * width)
        One flattened image per row (row-major, as ``image.reshape(-1)``).
    image_shape : pair of int
        ``(height, width)`` of every image.
    n_cols : int, default=10
        Images per row of the grid (fewer when there are fewer images).
    ax : matplotlib Axes, default=None
    cmap : str or Colormap, default="gray"
    vmin, vmax : float, default=None
        The grey levels of black and white; None uses the smallest and largest value of
        ``X``.  Give them to compare grids on one scale (e.g. ``0, 1`` for MNIST).

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sklearn_gpa.plotting import plot_images
    >>> ax = plot_images(np.random.rand(12, 6), (2, 3), n_cols=5)
    >>> ax.images[0].get_array().shape  # 3 rows and 5 columns of 2 x 3 images, 1-pixel gaps
    (8, 19)
    >>> ax = plot_images(np.full((2, 4), 0.5), (2, 2), vmin=0, vmax=1)  # grey stays grey
    >>> float(ax.images[0].get_array().max())
    0.5
    """
    X = np.asarray(X, dtype=float)
    if len(image_shape) != 2:
        raise ValueError(f"image_shape must be (height, width), got {image_shape!r}.")
    height, width = image_shape
    if X.ndim != 2 or len(X) == 0 or X.shape[1] != height * width:
        raise ValueError(
            f"X must have shape (n_images >= 1, {height * width}) for images of shape "
            f"{tuple(image_shape)}, got {X.shape}."
        )
    vmin = float(X.min()) if vmin is None else vmin
    vmax = float(X.max()) if vmax is None else vmax
    n_cols = max(1, min(n_cols, len(X)))
    n_rows = -(-len(X) // n_cols)
    mosaic = np.full((n_rows * (height + 1) - 1, n_cols * (width + 1) - 1), float(vmin))
    for k, image in enumerate(X.reshape(-1, height, width)):
        top, left = (k // n_cols) * (height + 1), (k % n_cols) * (width + 1)
        mosaic[top : top + height, left : left + width] = image
    ax = _axes(ax)
    ax.imshow(mosaic, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


@validate_params(
    {
        "path": ["array-like"],
        "target": ["array-like", None],
        "dims": ["array-like"],
        "max_paths": _COUNT,
    },
    prefer_skip_nested_validation=True,
)
def plot_trajectories(path, *, target=None, ax=None, dims=(0, 1), max_paths=200):
    """Draw particle trajectories from ``estimator.trajectories(X)``.

    Parameters
    ----------
    path : array-like of shape (n_snapshots, n_particles, n_features)
    target : array-like of shape (n, n_features), default=None
    ax : matplotlib Axes, default=None
    dims : pair of int, default=(0, 1)
    max_paths : int, default=200
        At most this many trajectories are drawn.

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sklearn_gpa.plotting import plot_trajectories
    >>> ax = plot_trajectories(np.random.rand(5, 10, 2))
    >>> len(ax.lines)
    10
    """
    ax = _axes(ax)
    path = np.asarray(path)
    i, j = dims
    if target is not None:
        target = np.asarray(target)
        ax.scatter(target[:, i], target[:, j], s=8, c="tab:blue", label="target", zorder=3)
    shown = path[:, :max_paths]
    for p in range(shown.shape[1]):
        ax.plot(shown[:, p, i], shown[:, p, j], lw=0.5, c="0.6", zorder=1)
    ax.scatter(shown[0, :, i], shown[0, :, j], s=5, c="0.4", label="start", zorder=2)
    ax.scatter(shown[-1, :, i], shown[-1, :, j], s=8, c="tab:orange", label="end", zorder=4)
    ax.legend(loc="best", fontsize="small")
    return ax
