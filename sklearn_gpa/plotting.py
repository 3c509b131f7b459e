"""Plots of a GPA run: history curves, particles and trajectories (matplotlib)."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_history", "plot_particles", "plot_trajectories"]


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    return ax


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
    ax = _axes(ax)
    values = np.asarray(history[key])
    ax.plot(np.arange(1, len(values) + 1), values)
    if log and np.any(values[np.isfinite(values)] > 0):
        ax.set_yscale("log")  # matplotlib masks the zeros of a flow whose critic went flat
    ax.set_xlabel("particle step")
    ax.set_ylabel(key.replace("_", " "))
    return ax


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
    ax = _axes(ax)
    i, j = dims
    if source is not None:
        source = np.asarray(source)
        ax.scatter(source[:, i], source[:, j], s=6, c="0.7", label="start")
    target, moved = np.asarray(target), np.asarray(moved)
    ax.scatter(target[:, i], target[:, j], s=8, c="tab:blue", label="target")
    ax.scatter(moved[:, i], moved[:, j], s=8, c="tab:orange", label="transported")
    ax.legend(loc="best", fontsize="small")
    return ax


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
