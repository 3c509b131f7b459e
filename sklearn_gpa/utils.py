"""Domain bookkeeping and validation helpers shared by the estimators.

Source and target rows travel together in one ``X``, as in skada: an integer array
``sample_domain`` marks each row, ``>= 0`` for source rows and ``< 0`` for target rows.
"""

from __future__ import annotations

import numbers
import os
import sys
import warnings

import numpy as np
from sklearn.utils import check_array, column_or_1d
from sklearn.utils._param_validation import Interval, validate_params

__all__ = ["check_sample_domain", "stack_domains"]


class NumberInterval(Interval):
    """scikit-learn's :class:`~sklearn.utils._param_validation.Interval` without booleans.

    ``True`` is an ``int`` to Python, so ``Interval(Integral, 1, None, closed="left")``
    accepts ``n_samples=True``; here a bool is never a number.  NaN is outside every
    interval, and infinity outside every interval open on that side (``None`` bounds
    with ``closed="left"`` or ``"neither"`` mean finite numbers).
    """

    def is_satisfied_by(self, val):
        return not isinstance(val, bool | np.bool_) and super().is_satisfied_by(val)


@validate_params(
    {
        "Xs": ["array-like"],
        "Xt": ["array-like"],
        "ys": ["array-like", None],
        "yt": ["array-like", None],
    },
    prefer_skip_nested_validation=True,
)
def stack_domains(Xs, Xt, ys=None, yt=None):
    """Stack source and target rows into one ``X`` with a ``sample_domain`` array.

    Parameters
    ----------
    Xs : array-like of shape (n_source, n_features), or a list of them
        Source rows (the data to transport).  A list of tables (batches, studies) makes
        each its own source domain, 1, 2, ... in order, each moved its own way.
    Xt : array-like of shape (n_target, n_features)
        Target rows (the reference distribution).  Where both are DataFrames, ``Xt``'s
        columns are taken in ``Xs``'s order (by name; different names raise).
    ys, yt : array-like of shape (n_source,) and (n_target,), default=None
        Optional labels of each side (``ys`` a list of them, one per source table, when
        ``Xs`` is a list).  When only one side has labels, the other side's labels are
        filled with -1, skada's marker for "unknown".

    Returns
    -------
    X : ndarray of shape (n_source + n_target, n_features)
        Source rows first, then target rows.
    y : ndarray of shape (n_source + n_target,) or None
        Labels, or None when neither side has any.
    sample_domain : ndarray of shape (n_source + n_target,)
        1 for source rows (1, 2, ... for a list of source tables), and for target rows
        minus one more than the number of source tables (skada's convention: >= 0
        source, < 0 target).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.utils import stack_domains
    >>> X, y, sample_domain = stack_domains(np.zeros((2, 3)), np.ones((3, 3)))
    >>> X.shape, y, sample_domain.tolist()
    ((5, 3), None, [1, 1, -2, -2, -2])
    >>> X, y, sample_domain = stack_domains([np.zeros((2, 3)), np.ones((1, 3))], np.ones((2, 3)))
    >>> sample_domain.tolist()
    [1, 1, 2, -3, -3]
    """
    domains = None
    if _is_list_of_tables(Xs):
        Xt = _columns_as_in(Xt, Xs[0])
        Xs, ys, domains = _stacked_tables(Xs, ys)
    Xt = _columns_as_in(Xt, Xs)
    Xs, Xt = check_pair(Xs, Xt, names=("Xs", "Xt"), dtype="numeric")
    if domains is None:
        domains = np.ones(len(Xs), dtype=np.int64)
    X = np.concatenate([Xs, Xt])
    sample_domain = np.concatenate([domains, np.full(len(Xt), -1 - domains.max(), np.int64)])
    if ys is None and yt is None:
        return X, None, sample_domain
    ys = np.full(len(Xs), -1) if ys is None else column_or_1d(ys)
    yt = np.full(len(Xt), -1) if yt is None else column_or_1d(yt)
    for name, labels, rows in (("ys", ys, Xs), ("yt", yt, Xt)):
        if len(labels) != len(rows):
            raise ValueError(f"{name} has {len(labels)} labels for {len(rows)} rows.")
    return X, _joined_labels([ys, yt]), sample_domain


def _joined_labels(parts):
    """Label arrays as one; text labels beside the -1 of unknown ones become objects, so
    that -1 stays the number skada's marker is (NumPy would make it the text "-1", a
    class of its own)."""
    if all(np.asarray(part).dtype.kind in "biuf" for part in parts):
        return np.concatenate(parts)
    return np.concatenate([np.asarray(part, dtype=object) for part in parts])


def _is_list_of_tables(Xs):
    """Whether ``Xs`` is a list of tables (each 2-D), not one table given as a list of rows."""
    return isinstance(Xs, (list, tuple)) and len(Xs) > 0 and all(np.ndim(x) == 2 for x in Xs)


def _stacked_tables(tables, labels):
    """Several source tables as one: rows (columns in the first table's order), labels
    (None, or -1 for a table given none) and each row's domain, 1, 2, ... in order."""
    if labels is not None and (not isinstance(labels, (list, tuple)) or len(labels) != len(tables)):
        raise ValueError(
            f"Xs is a list of {len(tables)} source tables: ys must be a list of as many "
            "label arrays (None for a table without labels), or None."
        )
    rows = [
        check_array(_columns_as_in(table, tables[0]), dtype="numeric", input_name=f"Xs[{k}]")
        for k, table in enumerate(tables)
    ]
    if len({table.shape[1] for table in rows}) > 1:
        widths = [table.shape[1] for table in rows]
        raise ValueError(f"The source tables have different numbers of features: {widths}.")
    domains = np.repeat(np.arange(1, len(rows) + 1, dtype=np.int64), [len(t) for t in rows])
    if labels is None:
        return np.concatenate(rows), None, domains
    labels = [np.full(len(t), -1) if y is None else column_or_1d(y) for t, y in zip(rows, labels)]
    for k, (y, table) in enumerate(zip(labels, rows)):
        if len(y) != len(table):
            raise ValueError(f"ys[{k}] has {len(y)} labels for {len(table)} rows.")
    return np.concatenate(rows), _joined_labels(labels), domains


def _columns_as_in(Xt, Xs):
    """``Xt`` with its columns in the order of ``Xs``'s where both are tables with named
    columns (stacked by position, two studies' tables with other column orders mixed
    their features without a word); a ValueError names the columns one side lacks."""
    names_s, names_t = getattr(Xs, "columns", None), getattr(Xt, "columns", None)
    if names_s is None or names_t is None or list(names_s) == list(names_t):
        return Xt
    if not all(isinstance(name, str) for name in [*names_s, *names_t]):
        return Xt  # as scikit-learn, only string column names are names
    shared = set(names_s) & set(names_t)
    missing = [name for name in names_s if name not in shared]
    extra = [name for name in names_t if name not in shared]
    if missing or extra:
        raise ValueError(
            f"Xs and Xt have different columns: Xt lacks {missing[:5]} and has {extra[:5]} "
            "that Xs lacks (first five each); select the shared columns of both."
        )
    return Xt[list(names_s)]


def check_pair(X, Y, names=("X", "Y"), *, dtype=np.float64, min_samples=1):
    """Validate two samples: finite numeric 2-D arrays with the same number of columns.

    Float64 samples (those distances are computed on) must also be small enough that squared
    distances between rows do not overflow.
    """
    X = check_array(X, dtype=dtype, input_name=names[0], ensure_min_samples=min_samples)
    Y = check_array(Y, dtype=dtype, input_name=names[1], ensure_min_samples=min_samples)
    if dtype is np.float64:
        check_magnitude(X, names[0])
        check_magnitude(Y, names[1])
    if X.shape[1] != Y.shape[1]:
        raise ValueError(
            f"{names[0]} has {X.shape[1]} features but {names[1]} has {Y.shape[1]}; "
            "the two samples must describe the same features."
        )
    return X, Y


def check_sample_domain(
    sample_domain, n_samples: int, *, require_both: bool = True, n_features=None
):
    """Validate ``sample_domain`` and return a boolean mask of the source rows.

    Raises a ValueError naming the problem: wrong length (with a hint when it matches
    ``n_features``, the columns of X: a genes x samples matrix passed untransposed),
    non-integer values, or (with ``require_both``) no source or no target rows.
    """
    values = np.asarray(sample_domain)
    if values.ndim != 1 or values.shape[0] != n_samples:
        hint = ""
        if values.ndim == 1 and n_features is not None and values.shape[0] == n_features:
            hint = (
                f" It has one entry per column of X ({n_features}): is X transposed? Rows "
                "must be samples and columns features (genes); pass X.T for a genes x "
                "samples matrix."
            )
        raise ValueError(
            f"sample_domain must be a 1-D array with one entry per row of X ({n_samples}), "
            f"got shape {values.shape}.{hint}"
        )
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.bool_)):
        if not np.issubdtype(values.dtype, np.floating) or not np.all(
            np.isfinite(values) & (values == np.round(values))
        ):
            raise ValueError(
                "sample_domain must hold integers (>= 0 for source rows, < 0 for target rows)."
            )
    source = values >= 0
    if require_both and (source.all() or not source.any()):
        missing = "target (< 0)" if source.all() else "source (>= 0)"
        raise ValueError(
            f"sample_domain has no {missing} rows; integration needs both source and target "
            "rows in X. Use sklearn_gpa.utils.stack_domains to build X and sample_domain."
        )
    return source


def check_domains(sample_domain, n_samples: int, **kwargs):
    """:func:`check_sample_domain`'s mask of the source rows, and ``sample_domain`` as
    int64 (each source value a source domain)."""
    source = check_sample_domain(sample_domain, n_samples, **kwargs)
    return source, np.asarray(sample_domain).astype(np.int64)


# Squared distances between rows must stay finite in float64.
_MAX_MAGNITUDE = 1e150


def check_magnitude(X, name: str = "X"):
    """Raise a named error when values are so large that squared distances overflow."""
    largest = float(np.max(np.abs(X))) if np.size(X) else 0.0
    if largest > _MAX_MAGNITUDE:
        raise ValueError(
            f"{name} holds values up to {largest:.3g} in magnitude; squared distances between "
            f"rows would overflow. Rescale the data (e.g. divide by a power of ten) first."
        )
    return X


def known_labels(y) -> np.ndarray:
    """Mask of the labels that are known: not NaN, not None, and not skada's -1 marker."""
    y = np.asarray(y)
    if y.dtype.kind == "f":
        return np.isfinite(y) & (y != -1)
    if y.dtype.kind in "iu":
        return y != -1
    return np.array([v is not None and v != -1 and v == v for v in y], dtype=bool)


def check_flags(**flags) -> None:
    """A TypeError naming the first of ``flags`` (name=value) that is not True or False."""
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {value!r}.")


def sorted_quantiles(ordered, levels) -> np.ndarray:
    """Each column's quantiles at ``levels`` (in [0, 1]) from its sorted values ``ordered``
    (n, d): ``np.quantile``'s linear interpolation, from one sort; shape (len(levels), d)."""
    position = np.asarray(levels, dtype=float) * (len(ordered) - 1)
    low = position.astype(np.intp)
    high = np.minimum(low + 1, len(ordered) - 1)
    fraction = (position - low)[:, None]
    return ordered[low] + fraction * (ordered[high] - ordered[low])


def few(values, limit: int = 10) -> str:
    """``values`` as a list for a message: the first ``limit`` and how many in all."""
    values = np.asarray(values).tolist()
    if len(values) <= limit:
        return str(values)
    return f"{str(values[:limit])[:-1]}, ... ({len(values)} in all)]"


def check_sizes(sizes, name: str, *, minimum: int = 0) -> tuple[int, ...]:
    """A tuple of positive ints, or a ValueError naming the parameter."""
    values = np.asarray(sizes).ravel() if not np.isscalar(sizes) else np.asarray([sizes])
    if len(values) < minimum or not all(
        isinstance(v, numbers.Integral | np.integer) and v >= 1 for v in values.tolist()
    ):
        raise ValueError(f"{name} must be a sequence of positive integers, got {sizes!r}.")
    return tuple(int(v) for v in values.tolist())


def check_image_shape(image_shape, n_features: int) -> tuple[int, int, int]:
    """``(channels, height, width)`` from ``(height, width)`` or ``(channels, height, width)``."""
    shape = check_sizes(image_shape, "image_shape")
    if len(shape) not in (2, 3):
        raise ValueError(
            "image_shape must be (height, width) or (channels, height, width), "
            f"got {image_shape!r}."
        )
    shape = (1, *shape) if len(shape) == 2 else shape
    if int(np.prod(shape)) != n_features:
        raise ValueError(
            f"image_shape={tuple(image_shape)!r} holds {int(np.prod(shape))} values per image, "
            f"but X has {n_features} features."
        )
    return shape


# Frames in these packages are not the user's: a warning points at the first frame outside
# them (the caller's line), as pandas' ``find_stack_level`` does.
_LIBRARIES = ("sklearn_gpa", "sklearn", "imblearn")


def _library_dirs():
    return tuple(
        os.path.dirname(sys.modules[name].__file__) + os.sep
        for name in _LIBRARIES
        if name in sys.modules
    )


def warn_at_caller(message: str, category=UserWarning) -> None:
    """Warn with the stack level of the first frame outside sklearn-gpa and scikit-learn."""
    dirs = _library_dirs()
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(dirs):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
