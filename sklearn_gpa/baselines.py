"""Baseline integration: per-feature mean and standard-deviation adjustment (the papers' F)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.linear_model import RidgeClassifierCV
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils._param_validation import StrOptions

from ._base import DomainTransformer, class_index
from ._grouping import group_rows

__all__ = ["MeanStdAdjuster", "class_router", "meanstd_map"]


def _spread(rows):
    """Per-feature standard deviation, exactly 0 for a feature whose values are all equal.

    ``std`` of identical values is not always 0 in floating point (a gene flat at 7.7 has
    a std of about 1e-15, 1e-6 in float32); dividing by it would scale new rows by 1e15.
    """
    if len(rows) < 2:
        return np.zeros(rows.shape[1])
    return np.where(np.ptp(rows, axis=0) > 0, rows.std(0), 0.0)


# Empirical-Bayes shrinkage needs enough features to estimate the spread of their effects.
SHRINK_MIN_FEATURES = 10


def meanstd_map(source, target, *, shrink=False):
    """Per-feature ``(a, b)`` such that ``source * a + b`` has the target's mean and std.

    A feature that is constant on the source side (or with fewer than two rows on either
    side) is only shifted; one that varies in the source but is constant over two or more
    target rows is mapped onto the target's constant (``a = 0``).

    With ``shrink=True`` (and at least 10 features) each feature's shift, in units of its
    pooled standard deviation, and its log scale ratio are shrunk towards their common
    values by empirical Bayes, as ComBat does: a normal prior fitted robustly across the
    features, each estimate's sampling variance from the numbers of rows, and no estimate
    moved by more than its standard error, so a feature whose effect stands out keeps it.
    A few dozen rows per side then give steadier maps.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.baselines import meanstd_map
    >>> a, b = meanstd_map(np.array([[0.0], [2.0]]), np.array([[10.0], [16.0]]))
    >>> (np.array([[0.0], [2.0]]) * a + b).ravel().tolist()
    [10.0, 16.0]
    """
    src_std, tgt_std = _spread(source), _spread(target)
    ok = (src_std > 0) & (len(target) > 1)
    a = np.where(ok, tgt_std / np.where(ok, src_std, 1.0), 1.0)
    src_mean, shift = source.mean(0), target.mean(0) - source.mean(0)
    n_s, n_t = len(source), len(target)
    if shrink and source.shape[1] >= SHRINK_MIN_FEATURES and min(n_s, n_t) > 1:
        both = ok & (tgt_std > 0)
        log_ratio = np.log(np.where(both, a, 1.0))
        log_ratio = _posterior_mean(log_ratio, 0.5 / (n_s - 1) + 0.5 / (n_t - 1), both)
        a = np.where(both, np.exp(log_ratio), a)
        # A feature constant on either side keeps its exact map (shifted, or set to the
        # target's constant).
        pooled = np.where(both, np.sqrt((src_std**2 + tgt_std**2) / 2), 1.0)
        shift = pooled * _posterior_mean(shift / pooled, 1 / n_s + 1 / n_t, both)
    return a, src_mean + shift - a * src_mean


def _posterior_mean(effects, noise, mask):
    """Shrunk per-feature ``effects``, each measured with sampling variance ``noise``.

    The normal prior's centre and spread are the median and the MAD-based spread of the
    masked effects, less the noise; each effect moves towards the centre by its posterior
    weight, but never by more than one standard error (Efron and Morris's limited
    translation), so a feature whose effect stands far out keeps it.  Unmasked effects
    are returned as they are.
    """
    if mask.sum() < SHRINK_MIN_FEATURES:
        return effects
    kept = effects[mask]
    centre = np.median(kept)
    prior = max((1.4826 * np.median(np.abs(kept - centre))) ** 2 - noise, 0.0)
    step = noise / (prior + noise) * (effects - centre)
    step = np.clip(step, -np.sqrt(noise), np.sqrt(noise))
    return np.where(mask, effects - step, effects)


def class_router(rows, labels, n_neighbors=5, cv=5):
    """A classifier that sends unlabelled rows to a class (None for one class).

    Two candidates, fitted on the labelled ``rows``: a ``n_neighbors``-nearest-neighbour
    vote, right for curved class boundaries in a few dimensions, and a ridge classifier
    (its penalty chosen by efficient leave-one-out, in units of the rows' total variance),
    right for a few hundred rows in many dimensions.  Stratified ``cv``-fold balanced
    accuracy (on a stratified subsample of at most 2 000 rows) picks one, which is then
    fitted on all rows; the vote stays on ties and where the classes are too small to
    cross-validate.  The ridge wins on gene expression (many features, few rows), the vote
    on curved boundaries in low dimension; the accuracies are in the :ref:`User Guide
    <user_guide>`, section "Measurements behind the defaults".

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.baselines import class_router
    >>> rng = np.random.RandomState(0)
    >>> rows = np.vstack([rng.normal(0, 1, (30, 50)), rng.normal(0.6, 1, (30, 50))])
    >>> router = class_router(rows, np.repeat(["a", "b"], 30))
    >>> type(router).__name__, router.predict(rows[:2]).tolist()
    ('RidgeClassifierCV', ['a', 'a'])
    """
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        return None
    vote = KNeighborsClassifier(n_neighbors=min(n_neighbors, len(rows)))
    if _ridge_routes_better(rows, labels, counts, vote, cv):
        return _ridge(rows).fit(rows, labels)
    return vote.fit(rows, labels)


def _ridge(rows):
    variance = float(np.sum(np.var(rows, axis=0)))
    return RidgeClassifierCV(alphas=max(variance, 1e-12) * np.logspace(-3, 3, 13))


def _ridge_routes_better(rows, labels, counts, vote, cv, max_rows=2000):
    """Whether the ridge's stratified cross-validated balanced accuracy beats the vote's.

    On at most ``max_rows`` rows (a stratified subsample: the choice, not the fit, is what
    the subsample decides), and only where every fold keeps a row of each class and enough
    rows for the vote; otherwise, or when a fit fails, the vote stays.
    """
    if counts.min() < 2:
        return False
    if len(rows) > max_rows:
        rows, _, labels, _ = train_test_split(
            rows, labels, train_size=max_rows, stratify=labels, random_state=0
        )
        counts = np.unique(labels, return_counts=True)[1]
    folds = min(cv, int(counts.min()))
    if folds < 2 or len(rows) - -(-len(rows) // folds) < vote.n_neighbors:
        return False
    split = StratifiedKFold(folds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = [
                cross_val_score(
                    model, rows, labels, cv=split, scoring="balanced_accuracy", error_score="raise"
                ).mean()
                for model in (vote, _ridge(rows))
            ]
    except (ValueError, FloatingPointError, np.linalg.LinAlgError):
        return False
    return bool(scores[1] > scores[0])


class MeanStdAdjuster(DomainTransformer):
    """Match each source feature's mean and standard deviation to the target's.

    The baseline ``F`` of the papers' Table 3: with labels on both sides, each class of
    the source is adjusted to the same class of the target.  Domains follow skada:
    ``sample_domain >= 0`` marks source rows, ``< 0`` target rows.

    A gene with one value in every source row (of a class) is only shifted to the
    target's mean; one that varies in the source but has one value in every target row
    (two or more) is set to that value (see :func:`meanstd_map`).

    Parameters
    ----------
    conditional : "auto" or bool, default="auto"
        Adjust per class when labels are given on both sides ("auto": when every source
        class occurs among the targets).
    shrink : bool, default=False
        Shrink each feature's shift and scale towards the common ones by empirical Bayes,
        as ComBat does (see :func:`meanstd_map`): steadier with few rows and many features,
        such as gene expression.  False matches every feature's moments exactly (the
        papers' baseline).

    Attributes
    ----------
    classes_ : ndarray or None
    scale_, shift_ : ndarray of shape (n_classes or 1, n_features)
        Source rows of class k become ``x * scale_[k] + shift_[k]``.
    router_ : KNeighborsClassifier, RidgeClassifierCV or None
        Sends unlabelled rows to a class in ``transform``: the one of a 5-nearest-neighbour
        vote and a ridge classifier on the source rows that cross-validates better
        (:func:`class_router`).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.baselines import MeanStdAdjuster
    >>> from sklearn_gpa.utils import stack_domains
    >>> rng = np.random.RandomState(0)
    >>> X, _, sd = stack_domains(rng.normal(0, 1, (50, 2)), rng.normal(5, 2, (60, 2)))
    >>> out = MeanStdAdjuster().fit_transform(X, sample_domain=sd)
    >>> bool(np.allclose(out[sd >= 0].mean(0), out[sd < 0].mean(0)))
    True
    """

    _parameter_constraints = {
        "conditional": [StrOptions({"auto"}), "boolean"],
        "shrink": ["boolean"],
    }

    def __init__(self, conditional="auto", *, shrink=False):
        self.conditional = conditional
        self.shrink = shrink

    def _fit(self, X, y, source):
        """One affine map per class from source and target rows; the moved source rows."""
        if source is None:
            raise ValueError("MeanStdAdjuster needs sample_domain (>= 0 source, < 0 target).")
        groups = group_rows(y, source, conditional=self.conditional)
        self.classes_ = groups.classes
        maps = [
            meanstd_map(X[s], X[t], shrink=self.shrink)
            for s, t in zip(groups.sources, groups.targets)
        ]
        self.router_ = None
        if self.classes_ is not None:
            self.router_ = class_router(X[source], y[source])
        self.scale_ = np.array([a for a, _ in maps])
        self.shift_ = np.array([b for _, b in maps])
        return self._move(X[source], None if self.classes_ is None else y[source])

    def flow_index(self, X, y=None):
        """Class index (row of ``scale_``) of each row: from ``y`` if given, else routed.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None

        Returns
        -------
        flows : ndarray of int of shape (n_samples,)
        """
        if self.classes_ is None:
            return np.zeros(len(X), dtype=int)
        if y is not None:
            return class_index(self.classes_, y, len(X))
        return np.searchsorted(self.classes_, self.router_.predict(X))

    def _move(self, X, y):
        index = self.flow_index(X, y)
        return X * self.scale_[index] + self.shift_[index]
