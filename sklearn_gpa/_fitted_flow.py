"""What a fitted :class:`GPATransporter` does with rows: route, replay, sample.

The fitting half (scaling, grouping, the prior, training) is in ``transport.py``; this
half only reads the fitted attributes ``_scaling``, ``flow_``, ``flow_assigner_``,
``prealign_``, ``neighbour_map_``, ``prior_``, ``classes_``, ``device_`` and the trained
particles ``_final_particles_``.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np
from scipy import stats
from sklearn.utils import check_random_state, check_scalar
from sklearn.utils._set_output import _wrap_data_with_container
from sklearn.utils.validation import check_is_fitted

from ._base import class_index
from ._discrete import MAX_LEVELS, UNMOVED, FeatureLevels, few_levels, n_values
from ._prior import match_marginals
from ._routing import PriorRouter
from .baselines import (
    DomainRouter,
    _quartile_range,
    class_router,
    domain_maps,
    meanstd_map,
    moment_map,
)
from .utils import check_domains, check_flags

__all__ = ["FittedFlowMixin", "flow_router"]

# prealign="auto" matches medians and robust spreads instead of means and stds where a
# feature's std exceeds HEAVY_TAIL_RATIO robust spreads (Gaussian: 1; lognormal, sigma 1: 2)
# and MODES_RATIO times the std of its central rows (Gaussian: 1; Student t, 3 degrees of
# freedom: 1.4; four wells on a diamond: 0.9): a tail of a few extreme rows, not modes.
HEAVY_TAIL_RATIO = 3.0
MODES_RATIO = 1.5
# The central rows: between these percentiles; their std over _TRIMMED_NORMAL_STD is the
# std for Gaussian data.
_CENTRAL_PERCENTILES = (5.0, 95.0)
# Integration snaps a feature to the target's values only where each is seen this many times
# on average (with a few dozen target rows every feature has at most 10 values).
_ROWS_PER_LEVEL = 5
_TRIMMED_NORMAL_STD = 0.79
_TINY = 1e-9
# Integration gives codes (few-valued features whose source values all are target values)
# back as they were (``FittedFlowMixin._with_codes``).  False: they move and are snapped
# like other few-valued features, as before 2026-12-07 (benchmarks).
KEEP_CODES = True
# ... where the codes' proportions differ between the sides no more than a chi-squared test
# of homogeneity at this level says chance does.
CODE_ALPHA = 0.05
# Tails on both sides whose log tail weights differ by less than this have one shape.
_SAME_TAIL = 0.1
# prealign="auto" maps one source only where its map moves the rows further than maps
# between random halves of the pooled rows do (map_beyond_noise): a Monte Carlo p-value over
# MAP_EVIDENCE_PERMUTATIONS reassignments (of at most MAP_EVIDENCE_ROWS rows and
# MAP_EVIDENCE_VALUES values a side) at most MAP_EVIDENCE_ALPHA.
MAP_EVIDENCE_ALPHA = 0.05
MAP_EVIDENCE_PERMUTATIONS = 99
MAP_EVIDENCE_ROWS = 5000
MAP_EVIDENCE_VALUES = 200_000
# ... and where they differ, a feature whose own map moves the rows no further than that of
# random halves with a p-value above MAP_FEATURE_P gets none (None: every feature's map).
MAP_FEATURE_P = 0.5
# prealign="auto" maps the covariance too (the Gaussian optimal transport map) with at most
# COVARIANCE_MAX_FEATURES features, COVARIANCE_ROWS_PER_FEATURE rows per feature on each
# side, and a rank correlation that differs between the sides by more than
# COVARIANCE_EVIDENCE standard errors (Fisher's z).
COVARIANCE_MAX_FEATURES = 10
COVARIANCE_ROWS_PER_FEATURE = 10
COVARIANCE_EVIDENCE = 5.0
_MIN_EIGENVALUE = 1e-6


def central_spread(X) -> np.ndarray:
    """Per feature, the std of the rows between its 5th and 95th percentiles, scaled to be
    the std for Gaussian data.

    It tells a heavy tail (a few extreme rows set the std) from several modes: a feature
    with most of its rows in a central mode and the rest in two outer ones (four wells on a
    diamond) has a small interquartile range but keeps its outer modes among the central
    rows.
    """
    X = np.asarray(X, dtype=np.float64)
    low, high = np.percentile(X, _CENTRAL_PERCENTILES, axis=0, method="nearest")
    central = (X >= low) & (X <= high)
    count = central.sum(0)
    mean = np.where(central, X, 0.0).sum(0) / count
    variance = np.where(central, (X - mean) ** 2, 0.0).sum(0) / count
    return np.sqrt(variance) / _TRIMMED_NORMAL_STD


def _heavy_tailed(X) -> np.ndarray:
    """Features whose std a few extreme rows set: over ``HEAVY_TAIL_RATIO`` robust spreads
    (the interquartile range / 1.349, or where that is 0 the std of the central rows) and
    over ``MODES_RATIO`` times the std of the central rows (:func:`central_spread`).  The
    second test keeps features with several modes (a central one holding half of the rows
    has a small interquartile range, but its outer modes are among the central rows) on
    moments.  A feature mostly of one value (a filled-in median, a count mostly 0) is
    measured by its central rows: against its own std (the fallback of ``feature_spreads``)
    it was never heavy, and one extreme row squeezed every other by the std it inflates."""
    std, central = X.std(0), central_spread(X)
    iqr = _quartile_range(X) / 1.349
    robust = np.where(iqr > 0, iqr, central)
    return (std > HEAVY_TAIL_RATIO * robust) & (std > MODES_RATIO * central)


def _tail_weight(X) -> np.ndarray:
    """Per feature, the log of the 5-95 % range over the interquartile range: an increasing
    affine map keeps it (nan where the interquartile range is 0)."""
    outer, inner = np.subtract(*np.percentile(X, [[95, 75], [5, 25]], axis=0))
    ratio = np.divide(outer, inner, out=np.full(len(inner), np.nan), where=inner > 0)
    return np.log(ratio)


def _robust_where_heavy(a, b, source, target, *, pooled=False):
    """The map ``z * a + b`` with median and robust spread in place of mean and std for the
    features heavy-tailed (:func:`_heavy_tailed`) on either side, where that map is the
    better guess of the batch effect.

    Where a few extreme rows set the moments (a Student t of 1/2 degree of freedom sent
    every source row thousands of spreads out; three extreme rows of a population that
    fell in one half squeeze every other row), the bulk's map is the nearer one.  Where the
    batch effect made or stretched the tail (a convex curve), the moments' map pulls the
    tail in and is the nearer one; matching the bulk left those rows far from their truth
    (KEEL shuttle_6_vs_2_3, whose tail on both sides a curve stretched, ended farther from
    its truth than the raw rows).  So the map that brings the source's values nearer the
    target's (1-D Wasserstein distance) is taken, except for a tail on both sides of the
    same shape (tail weights, :func:`_tail_weight`, within ``_SAME_TAIL``): that is what an
    affine effect leaves a shared tail, and there the distance, set by the few extreme
    rows of each half, took the moments' map by chance (Student t tails of 1.2 and 1.5
    degrees of freedom).  ``pooled``: the source rows are several domains pooled, a
    mixture of differently shifted and scaled copies whose tail shape and distance say
    little about one effect; a tail on both sides keeps the bulk's map (three KEEL
    page_blocks sites: 0.48 of the raw error against 0.66 by the distance).
    """
    source_heavy, target_heavy = _heavy_tailed(source), _heavy_tailed(target)
    heavy = source_heavy | target_heavy
    if not heavy.any():
        return a, b
    source_spread, target_spread = _matched_spreads(source, target)
    # A spread of rounding noise (a constant feature after an affine effect) is none.
    heavy &= (source_spread > _TINY * source.std(0)) & (target_spread > _TINY * target.std(0))
    ratio, shift = _bulk_map(source, target, (source_spread, target_spread))
    same_shape = np.abs(_tail_weight(source) - _tail_weight(target)) < _SAME_TAIL
    shared = source_heavy & target_heavy & (same_shape | pooled)
    for j in np.flatnonzero(heavy & ~shared):
        robust = stats.wasserstein_distance(source[:, j] * ratio[j] + shift[j], target[:, j])
        moments = stats.wasserstein_distance(source[:, j] * a[j] + b[j], target[:, j])
        heavy[j] = robust <= moments
    return np.where(heavy, ratio, a), np.where(heavy, shift, b)


def _same_proportions(source, target, values) -> bool:
    """Whether a feature's ``values`` come in the same proportions among the ``source`` and
    ``target`` rows within noise (Pearson's chi-squared test of homogeneity at
    ``CODE_ALPHA``; one value: they do)."""
    if len(values) < 2:
        return True
    counts = np.stack([(side[:, None] == values).sum(0) for side in (source, target)])
    expected = counts.sum(1, keepdims=True) * counts.sum(0) / counts.sum()
    statistic = ((counts - expected) ** 2 / expected).sum()
    return stats.chi2.sf(statistic, len(values) - 1) >= CODE_ALPHA


def _bulk_map(source, target, spreads=None):
    """Per feature, ``(a, b)`` mapping the source's median and robust spread
    (:func:`_matched_spreads`, or ``spreads`` already computed) onto the target's."""
    source_spread, target_spread = _matched_spreads(source, target) if spreads is None else spreads
    ratio = target_spread / np.where(source_spread > 0, source_spread, 1.0)
    return ratio, np.median(target, axis=0) - ratio * np.median(source, axis=0)


def _moves(a, b, middle, spread):
    """Per feature, how far ``z * a + b`` moves the rows: its move of ``middle`` (the pooled
    rows' median) and its change of scale times ``spread`` (their median absolute deviation,
    so that a feature mostly of one value shows none: its scale ratio is set by a few rows)."""
    return np.stack([np.abs(middle * (a - 1.0) + b), np.abs(a - 1.0) * spread])


def map_beyond_noise(source, target, bulk, *, n_permutations=None, seed=0, per_feature=False):
    """Whether the two sides differ beyond noise as the pre-alignment sees them: whether its
    per-feature map moves the source rows further than the maps between random halves of
    the pooled rows do.  A source that is a fresh sample of its target gets no map (paper
    002's tolerance, which the stopping rule applies to a flow, applied to the map).

    The maps are the pre-alignment's (shrunk moments; medians and robust spreads on the
    features ``bulk``), fitted on the two sides and on ``n_permutations`` random
    reassignments of the pooled rows to two sides of the same sizes (at most
    ``MAP_EVIDENCE_ROWS`` rows a side, and at most ``MAP_EVIDENCE_VALUES`` values, drawn at
    random).  Per feature, two statistics: how far a map moves the pooled rows' median, and
    how much it changes the scale times their median absolute deviation (none for a feature
    mostly of one value, whose scale ratio a few rows set: a value on 6 of 300 source rows
    and on no target row gave a ratio of 0, an extreme that random halves seldom reach).
    Each is divided by its root mean square over all the splits, the sides' own included
    (so that the sides and the halves are exchangeable), and two summaries are compared
    with the halves': the largest (a max-T test, Westfall and Young 1993, which finds a
    difference in a few features) and the sum of squares (a difference spread thinly over
    many features).  True where either Monte Carlo p-value is at most half of
    ``MAP_EVIDENCE_ALPHA``; also where so few splits exist that no test could reach that
    level (three rows a side: 20 splits), as a map was always fitted before.

    ``per_feature``: instead, per feature, whether to keep its map: none where the sides
    are within noise; else those features whose own two statistics, against the same
    splits, have a p-value of at most ``MAP_FEATURE_P``.  Lenient: it spares features with
    no sign of an effect (a count mostly 0, whose spread the map scaled by 1.6 on
    chance in the target's largest values: 1 came back as 1.6), not small effects.
    """
    everything = np.ones(source.shape[1], dtype=bool) if per_feature else True
    if MAP_EVIDENCE_ALPHA >= 1.0:  # a level of 1: every map is kept
        return everything
    n_permutations = MAP_EVIDENCE_PERMUTATIONS if n_permutations is None else n_permutations
    alpha = MAP_EVIDENCE_ALPHA / 2.0  # Bonferroni over the two summaries
    smaller = min(len(source), len(target), 10)  # beyond 10 rows a side, splits abound
    if math.comb(len(source) + len(target), smaller) * alpha < 2.0:
        return everything
    rng = np.random.RandomState(seed)
    most = max(20, min(MAP_EVIDENCE_ROWS, MAP_EVIDENCE_VALUES // source.shape[1]))
    sides = [
        rows[np.sort(rng.choice(len(rows), most, replace=False))] if len(rows) > most else rows
        for rows in (source, target)
    ]
    pooled, n_s = np.vstack(sides), len(sides[0])
    n_t = len(pooled) - n_s
    # Standardised, so that the sums below lose no precision (the statistics are compared
    # feature by feature, in any unit).
    centre, unit = pooled.mean(0), pooled.std(0)
    pooled = (pooled - centre) / np.where(unit > 0, unit, 1.0)
    middle = np.median(pooled, axis=0)
    spread = np.median(np.abs(pooled - middle), axis=0)
    bulk = np.asarray(bulk, dtype=bool)
    heavy = pooled[:, bulk]  # the features of the bulk's maps, refitted on every split
    # Each split's source side as a row of 0/1 (the first row: the sides themselves), so
    # that the sums of every split are one matrix product.
    ranks = rng.random_sample((n_permutations, len(pooled))).argsort(1).argsort(1)
    first = np.vstack([np.arange(len(pooled)) < n_s, ranks < n_s]).astype(np.float64)
    sums, squares = first @ pooled, first @ pooled**2
    means = sums / n_s, (pooled.sum(0) - sums) / n_t
    variances = squares / n_s - means[0] ** 2, ((pooled**2).sum(0) - squares) / n_t - means[1] ** 2
    # A constant side has a spread of exactly 0 (as meanstd_map's), not a rounding error of
    # its sums (about 1e-14 here; a side with one other value among 5000 has a variance of
    # at least 1e-4 in these units).
    stds = [np.where(v > 1e-8, np.sqrt(np.maximum(v, 0.0)), 0.0) for v in variances]
    moves = np.empty((len(first), 2, pooled.shape[1]))
    for k in range(len(first)):
        a, b = moment_map(means[0][k], stds[0][k], means[1][k], stds[1][k], n_s, n_t, shrink=True)
        if bulk.any():
            a[bulk], b[bulk] = _bulk_map(heavy[first[k] > 0], heavy[first[k] == 0])
        moves[k] = _moves(a, b, middle, spread)
    noise = np.sqrt(np.mean(moves**2, axis=0))
    scaled = (moves / np.where(noise > 0, noise, np.inf)).reshape(len(first), -1)
    p_values = [
        (1.0 + np.sum(summary[1:] >= summary[0])) / len(first)
        for summary in (scaled.max(1), (scaled**2).sum(1))
    ]
    beyond = bool(min(p_values) <= alpha)
    if not per_feature:
        return beyond
    if not beyond:
        return np.zeros(source.shape[1], dtype=bool)
    if MAP_FEATURE_P is None:
        return everything
    each = (moves / np.where(noise > 0, noise, np.inf)).max(1)  # (splits, features)
    p_features = (1.0 + np.sum(each[1:] >= each[0], axis=0)) / len(first)
    return p_features <= MAP_FEATURE_P


def _distance_to_nearest(x, values):
    """Per entry of ``x``, its distance to the nearest of the sorted ``values``."""
    padded = np.concatenate([[-np.inf], values, [np.inf]])
    after = np.clip(np.searchsorted(padded, x), 1, len(padded) - 1)  # NaN sorts last
    return np.minimum(x - padded[after - 1], padded[after] - x)


def _within_groups(rows, groups):
    """``rows`` less the mean of their group (``groups``: one label per row, or None)."""
    if groups is None:
        return rows
    centred = rows.astype(np.float64, copy=True)
    for group in np.unique(groups):
        centred[groups == group] -= rows[groups == group].mean(0)
    return centred


def rank_correlation_shift(source, target) -> float:
    """The largest difference between a rank (Spearman) correlation of the source and the
    same of the target, in standard errors of Fisher's z (0 with fewer than two features).

    An increasing map of each feature, affine or curved (a per-feature batch effect), keeps
    every rank correlation; per-sample factors with feature loadings, or a target whose
    features move together where the source's do not, change them."""
    if source.shape[1] < 2 or min(len(source), len(target)) < 5:
        return 0.0
    upper = np.triu_indices(source.shape[1], 1)
    with np.errstate(divide="ignore", invalid="ignore"):  # a constant feature: nan, then 0
        z = [
            np.arctanh(np.clip(np.corrcoef(stats.rankdata(rows, axis=0).T)[upper], -0.999, 0.999))
            for rows in (source, target)
        ]
    # Copies of a row are one row (a source of 20 rows repeated ten times).
    n_source, n_target = (len(np.unique(rows, axis=0)) for rows in (source, target))
    error = np.sqrt(1.06 / max(n_source - 3, 1) + 1.06 / max(n_target - 3, 1))
    return float(np.max(np.abs(np.nan_to_num(z[0] - z[1])))) / error


def _spd_power(matrix, power):
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.maximum(values, 1e-12 * values.max()) ** power) @ vectors.T


def _measured_apart(rows) -> bool:
    """Each feature off its most common value in ``COVARIANCE_ROWS_PER_FEATURE`` rows or
    more, and none a linear combination of the others (the smallest eigenvalue of the
    correlation matrix at least ``_MIN_EIGENVALUE``): otherwise the inverse root of the
    covariance amplifies a direction the rows do not fill (a column equal to the sum of
    two others moved new rows thousands of sds)."""
    for column in rows.T:
        _, counts = np.unique(column, return_counts=True)
        if len(column) - counts.max() < COVARIANCE_ROWS_PER_FEATURE:
            return False
    return np.linalg.eigvalsh(np.corrcoef(rows.T))[0] >= _MIN_EIGENVALUE


def covariance_map(source, target, source_groups=None, target_groups=None):
    """The affine map ``z @ a + b`` that takes the source's mean and covariance onto the
    target's (the optimal transport map between the two Gaussians), or None where the
    features are too many for the distinct rows (``COVARIANCE_MAX_FEATURES``,
    ``COVARIANCE_ROWS_PER_FEATURE``), some feature is mostly one value or a linear
    combination of the others on a side, or no rank correlation differs between the sides
    by ``COVARIANCE_EVIDENCE`` standard errors (:func:`rank_correlation_shift`).  With
    ``source_groups`` and ``target_groups`` (the rows' classes), each class's correlations
    are compared with the same class's, and the covariances taken within the classes:
    classes whose correlations differ, in other proportions on the two sides, differ pooled
    without any batch effect.

    A per-feature map keeps the source's correlations.  Per-sample factors with feature
    loadings (a sample's quality, a batch's hidden covariate) add correlation that the
    feature-wise map leaves in every row; this map takes it out.  And onto a target whose
    features move together (four wells on a line turned 45 degrees) a feature-wise map
    spreads a blob over the target's bounding box; this one starts it along the line.
    A real difference between the populations' correlations (the rows of one side selected
    along a direction) looks the same, and is mapped away too.
    """
    n_features = source.shape[1]
    if not 2 <= n_features <= COVARIANCE_MAX_FEATURES:
        return None
    distinct = min(len(np.unique(rows, axis=0)) for rows in (source, target))
    if distinct < COVARIANCE_ROWS_PER_FEATURE * n_features:
        return None
    if not (_measured_apart(source) and _measured_apart(target)):
        return None
    if source_groups is None:
        shift = rank_correlation_shift(source, target)
    else:  # class by class: each class's correlations against the same class's
        shift = max(
            rank_correlation_shift(source[source_groups == g], target[target_groups == g])
            for g in np.unique(source_groups)
        )
    if shift <= COVARIANCE_EVIDENCE:
        return None
    within = _within_groups(source, source_groups), _within_groups(target, target_groups)
    source_covariance = np.cov(within[0].T)
    root, inverse_root = _spd_power(source_covariance, 0.5), _spd_power(source_covariance, -0.5)
    a = inverse_root @ _spd_power(root @ np.cov(within[1].T) @ root, 0.5) @ inverse_root
    return a, target.mean(0) - source.mean(0) @ a


def _matched_spreads(source, target):
    """Per feature, the same robust spread of both sides: the interquartile range, or where
    either side has none (a value that holds the middle half of its rows, such as a count
    that is mostly 0) the std of the central rows (:func:`central_spread`).  Both follow
    an increasing affine map exactly, so their ratio undoes one; a std on one side and an
    interquartile range on the other (``feature_spreads``' fallback) do not: a count 76 %
    zero in the target got its source rows stretched 3.1 times for a scale of 0.8."""
    q = [_quartile_range(rows) for rows in (source, target)]
    central = (q[0] <= 0) | (q[1] <= 0)
    return [np.where(central, central_spread(rows), iqr) for rows, iqr in zip((source, target), q)]


def _union(row_groups):
    """The rows of every group, each once: with several source domains, flows share their
    target rows, which would otherwise count once per domain."""
    return np.unique(np.concatenate(row_groups))


def _domains(sample_domain, n_samples):
    """A caller's ``sample_domain`` of rows to move, as integers (None stays None)."""
    if sample_domain is None:
        return None
    return check_domains(sample_domain, n_samples, require_both=False)[1]


def flow_router(starts):
    """A classifier of the flows' starting points routes new rows to flows (None for one)."""
    flows = np.repeat(np.arange(len(starts)), [len(s) for s in starts])
    return class_router(np.concatenate(starts), flows)


class FittedFlowMixin:
    """Transform, replay, trajectories and sampling of a fitted flow."""

    def _set_layout(self, mode, image_shape, groups):
        """The fit's mode, image shape and flows (from their
        :class:`~sklearn_gpa._grouping.FlowGroups`)."""
        self.mode_, self.image_shape_ = mode, image_shape
        self.classes_, self.n_flows_ = groups.classes, len(groups)
        self.flow_domains_, self._flow_classes = groups.domains, groups.flow_classes

    def _fit_levels(self, X, target_rows, source_rows):
        """The values ``sample`` snaps few-valued features to: per flow, its target rows';
        and the dtype it returns, ``X``'s, as ``transform`` returns its input's (float32
        rows give float32 samples).

        In integration, ``_target_levels``: the features both sides record with few values
        and those with one value in every target row, and the target's values of them,
        onto which moved rows are snapped (a moved binary covariate came out at 0.98,
        between its levels).
        """
        self._levels, self._sample_dtype, self._target_levels = None, X.dtype, None
        self._source_values = self._codes = self._source_codes = None
        if self.mode_ == "generation":
            self._levels = FeatureLevels.for_samples(X, [X[rows] for rows in target_rows])
            return
        target, source = X[_union(target_rows)], X[_union(source_rows)]
        # Discrete on both sides, and each level seen several times (with a few dozen rows,
        # every feature has few values).
        levels = n_values(target)
        few = (levels <= MAX_LEVELS) & few_levels(source)
        few &= levels * _ROWS_PER_LEVEL <= len(target)
        # A feature with one value in every target row (of several) keeps it: the flow's
        # critic moved such a feature off it (a KEEL ecoli feature, 0.48 in all 110 target
        # rows, came out between 0.14 and 0.64).
        few |= (levels == 1) & (len(target) > 1)
        if few.any():
            self._target_levels = FeatureLevels.fit(np.flatnonzero(few), [target])
            # The source's own values that no target row has (a value on three source rows
            # of a feature 0 in every target row): a row that still holds one after the fit
            # was not moved there, and keeps it.
            own = [
                (j, np.setdiff1d(source[:, j], values), UNMOVED * np.abs(X[:, j]).max())
                for j, values in zip(self._target_levels.features, self._target_levels.levels[0])
            ]
            self._source_values = [entry for entry in own if len(entry[1])] or None
            # Codes: few-valued features whose source values all are target values, in
            # proportions that agree within noise (a flag, a category, a grade recorded
            # alike on both sides): the rows keep theirs (``_with_codes``).  A moved code is
            # another category: label-free, a flow on KEEL australian with a curve on its
            # measurements sent 101 of 345 rows to the other value of the flag a forest
            # splits on first.  Proportions that differ may be an effect (a grade one level
            # up, a flag from another threshold), which the fit corrects as before.
            codes = [
                j
                for (j, extra, _), values in zip(own, self._target_levels.levels[0])
                if KEEP_CODES
                and len(extra) == 0
                and _same_proportions(source[:, j], target[:, j], values)
            ]
            if codes:
                self._codes = np.array(codes)
                self._source_codes = [X[rows][:, self._codes] for rows in source_rows]

    def _with_codes(self, rows, moved):
        """Rows ``moved`` (n, d), or snapshots of them (..., n, d), with the codes
        (``_fit_levels``) of ``rows`` (n, d): each row's own.  The flow's particles stay
        where the engine put them (a continued fit and ``replay`` go on from there)."""
        codes = getattr(self, "_codes", None)  # None in fits pickled before
        if codes is None:
            return moved
        kept = moved.copy()
        kept[..., codes] = rows[:, codes]
        return kept

    def _snapped(self, X_new):
        """Integration's moved rows with their few-valued features on the target's values,
        except values of the source's own that the fit left where they were."""
        levels = getattr(self, "_target_levels", None)  # None in fits pickled before
        if levels is None:
            return X_new
        snapped = levels.snap(X_new, np.zeros(len(X_new), dtype=int))
        for j, values, tolerance in getattr(self, "_source_values", None) or ():
            kept = _distance_to_nearest(X_new[:, j], values) <= tolerance
            snapped[kept, j] = X_new[kept, j]
        return snapped.astype(X_new.dtype, copy=False)

    def _store_particles(self, moved, order):
        """``particles_`` and ``particle_labels_`` from each flow's final standardised
        particles ``moved`` (``order``: integration's rows back in the order of ``X``).

        Only ``moved`` and ``order`` are pickled: ``particles_`` is rebuilt from them on
        loading, the same array by the same arithmetic (one copy of the particles stored,
        not two).
        """
        self._final_particles_, self._particle_order = moved, order
        particles = self._snapped(self._scaling.inverse_transform(np.concatenate(moved)))
        if getattr(self, "_source_codes", None) is not None:
            particles[:, self._codes] = np.concatenate(self._source_codes)
        labels = None
        if self.classes_ is not None:
            labels = np.repeat(self._flow_classes, [len(m) for m in moved])
        if order is not None:
            particles, labels = particles[order], None if labels is None else labels[order]
        self.particles_, self.particle_labels_ = particles, labels

    def __getstate__(self):
        state = super().__getstate__()
        if "_particle_order" in state:
            state = {k: v for k, v in state.items() if k not in ("particles_", "particle_labels_")}
        return state

    def __setstate__(self, state):
        if "flow_" in state and "flow_domains_" not in state:  # fitted before domains
            state = {**state, "flow_domains_": None, "_flow_classes": state["classes_"]}
        super().__setstate__(state)
        if "_particle_order" in state:
            self._store_particles(self._final_particles_, self._particle_order)

    @property
    def center_(self):
        return self._scaling.center

    @property
    def scale_(self):
        return self._scaling.scale

    @property
    def out_of_sample_(self):
        return None if self.neighbour_map_ is None else list(self.neighbour_map_.methods)

    def flow_index(self, X, y=None, *, sample_domain=None):
        """Index of the flow that carries each row of ``X``.

        From the class ``y`` and the source domain ``sample_domain`` where given (after a
        conditional fit, after a fit with several source domains), else the ones that
        ``flow_assigner_`` predicts from the row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None
        sample_domain : array-like of shape (n_samples,), default=None
            The source domain (``>= 0``) of each row.

        Returns
        -------
        flows : ndarray of int of shape (n_samples,)
        """
        X = self._validate_rows(X)
        return self._flows_of(self._scaling.transform(X), y, _domains(sample_domain, len(X)))

    def _fit_router(self, starts):
        """The router of rows given without a class (None for one flow): the Bayes rule of
        the law the starting points were drawn from when it is known, the fitted prior of a
        generative fit or the law a caller drew the source rows from (``_source_law``, a
        ``(Prior, Standardization)`` that :class:`GPAAugmenter` sets before each fit), else
        a classifier of the starting points (data rows, in integration)."""
        law = self.__dict__.pop("_source_law", None)
        counts = [len(s) for s in starts]
        if len(starts) < 2:
            return None
        if self.flow_domains_ is not None:
            return DomainRouter(self.flow_domains_, self._flow_classes, starts)
        if self.prior_ is not None:
            return PriorRouter(self.prior_, counts)
        if law is not None:
            return PriorRouter.between(law[0], counts, self._scaling, law[1])
        return flow_router(starts)

    def _flows_of(self, Z, y, domains=None):
        if self.flow_domains_ is not None:
            return self.flow_assigner_.predict(Z, y, domains)
        if self.flow_assigner_ is None:
            return np.zeros(len(Z), dtype=int)
        if y is not None:
            return class_index(self.classes_, y, len(Z))
        return self.flow_assigner_.predict(Z)

    def _prealign_kind(self, mode):
        """The pre-alignment a fit in ``mode`` uses: "shrunk", "meanstd" or None."""
        if mode != "integration" or self.prealign is None:
            return None
        return "shrunk" if self.prealign == "auto" else self.prealign

    def _scaling_rows(self, mode, target_rows):
        """Rows the standardisation is fitted on: the target rows where the source rows are
        pre-aligned onto them (a far source would otherwise set the scale), else all."""
        if self._prealign_kind(mode) is None:
            return slice(None)
        return _union(target_rows)

    def _fit_prealign(self, starts, targets):
        """Per flow, the map ``z * a + b`` (``z @ a + b`` for a matrix ``a``) of its start rows
        onto its target rows, or None."""
        kind = self._prealign_kind(self.mode_)
        if kind is None:
            return None
        if self.prealign == "auto":
            # One map for all flows (class moments of a few dozen rows are noisy: in
            # LatentGPA matching them moved rows away from their own truth), after each
            # source domain's own deviation, shrunk (domain_maps).
            classes = self._flow_classes
            first = [0] if classes is None else sorted(np.unique(classes, return_index=True)[1])
            source = np.concatenate(starts)
            target = np.concatenate([targets[k] for k in first])  # each row once
            moments = meanstd_map(source, target, shrink=True)
            keys = np.zeros(len(starts)) if self.flow_domains_ is None else self.flow_domains_
            domains, flow_domain = np.unique(keys, return_inverse=True)
            pooled = len(domains) > 1
            shared = _robust_where_heavy(*moments, source, target, pooled=pooled)
            robust = (shared[0] != moments[0]) | (shared[1] != moments[1])
            kept = pooled or map_beyond_noise(source, target, robust, per_feature=True)
            # One source that is a fresh sample of its target: nothing to correct; nor in
            # the features without a sign of an effect.  (Pooled batches are a mixture:
            # random halves of it differ by the batches' own effects, a null that hides
            # real ones.)
            shared = np.where(kept, shared[0], 1.0), np.where(kept, shared[1], 0.0)
            if not (pooled or robust.any()):
                # One source whose rank correlations differ from the target's: its
                # covariance is mapped too (a heavy tail would set it; pooled batches
                # differ by their own effects).
                groups = None
                if classes is not None:  # one domain: a flow per class, each target once
                    groups = (
                        np.repeat(np.arange(len(starts)), [len(rows) for rows in starts]),
                        np.repeat(first, [len(targets[k]) for k in first]),
                    )
                full = covariance_map(source, target, *(groups or ()))
                if full is not None:
                    return [full] * len(starts)
            sources = [
                np.concatenate([starts[k] for k in np.flatnonzero(flow_domain == d)])
                for d in range(len(domains))
            ]
            maps = domain_maps(sources, shared, robust)
            return [maps[d] for d in flow_domain]
        return [meanstd_map(s, t, shrink=kind == "shrunk") for s, t in zip(starts, targets)]

    def _prealign(self, Z, flows):
        """Apply the per-flow pre-alignment (identity without one); ``flows`` per row or one."""
        if self.prealign_ is None:
            return Z
        flows = np.broadcast_to(flows, (len(Z),))
        out = Z.copy()
        for k, (a, b) in enumerate(self.prealign_):
            rows = flows == k
            out[rows] = (Z[rows] @ a if a.ndim == 2 else Z[rows] * a) + b
        return out

    def _move(self, X, y, domains=None):
        Z = self._scaling.transform(X)
        flows = self._flows_of(Z, y, domains)
        aligned = self._prealign(Z, flows)
        if self.neighbour_map_ is None:
            moved = self._replay(aligned, flows)
        else:
            moved = self.neighbour_map_.move(Z, aligned, flows, self._prealign)
        return self._with_codes(X, self._snapped(self._scaling.inverse_transform(moved)))

    def _replay(self, Z, flows, path=None, flow=None):
        """Replay the flow (or ``flow``) on standardised rows ``Z`` of flows ``flows``."""
        return (flow or self.flow_).replay_rows(Z, flows, device=self.device_, path=path)

    def replay(self, X, y=None, *, sample_domain=None, stop_steps=None):
        """Push rows through the stored flow, whatever ``out_of_sample`` says.

        These are the papers' generated particles: the training rows of an integration
        fit, replayed, end at their particles (to rounding with the float32 storage that
        ``store_encoding="auto"`` uses in integration; a lossy encoding replays a few rows,
        near where a discriminator unit switches, along another path).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Starting points (all rows move, after the pre-alignment of their flow).
        y : array-like of shape (n_samples,), default=None
            Class of each row (picks its flow); None routes rows as ``transform`` does.
        sample_domain : array-like of shape (n_samples,), default=None
            Source domain of each row, after a fit with several (picks its flow with
            ``y``); None routes rows as ``transform`` does.
        stop_steps : array-like of int of shape (n_flows,), default=None
            Flow k stops after ``stop_steps[k]`` steps (an early stop chosen after the fit,
            as :class:`GPAAugmenter`'s ``tolerance`` does); None runs every flow to the end.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features)
        """
        X = self._validate_rows(X)
        Z = self._scaling.transform(X)
        flows = self._flows_of(Z, y, _domains(sample_domain, len(X)))
        flow = None if stop_steps is None else self.flow_.truncate(stop_steps)
        moved = self._replay(self._prealign(Z, flows), flows, flow=flow)
        return self._with_codes(X, self._scaling.inverse_transform(moved))

    def trajectories(self, X, y=None, *, sample_domain=None, every=10):
        """Positions of rows along the learned flow, every ``every`` steps.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Starting points (all rows move).
        y : array-like of shape (n_samples,), default=None
            Class of each row (picks its flow); None routes rows as ``transform`` does.
        sample_domain : array-like of shape (n_samples,), default=None
            Source domain of each row, after a fit with several; None routes rows as
            ``transform`` does.
        every : int, default=10
            Steps between snapshots (at least 1).

        Returns
        -------
        path : ndarray of shape (n_snapshots, n_samples, n_features)
            Snapshots before steps 0, every, 2 * every, ... and after the last step.
        """
        every = check_scalar(every, "every", Integral, min_val=1)
        X = self._validate_rows(X)
        Z = self._scaling.transform(X)
        flows = self._flows_of(Z, y, _domains(sample_domain, len(X)))
        path = self._replay(self._prealign(Z, flows), flows, path=int(every))
        return self._with_codes(X, self._scaling.inverse_transform(path))

    def sample(
        self, n_samples=1, *, y=None, random_state=None, clip=True, snap=True, marginals=True
    ):
        """Draw new samples: fresh prior draws pushed through the learned flow.

        The draws come from the fitted prior (``prior_``); with the default
        ``source="copula_fit"`` (or another fitted prior) they start near the data and the
        flow corrects what the fitted Gaussians miss, how the features vary together, while
        each feature keeps its class's own distribution (``marginals``).  The trained
        particles themselves are ``particles_``.

        Parameters
        ----------
        n_samples : int, default=1
        y : array-like of shape (n_samples,), default=None
            After a conditional fit, the class of each requested sample.  None draws the
            classes in proportion to the training targets.
        random_state : int, RandomState instance or None, default=None
            The draws' seed.  None draws afresh at each call (as ``KernelDensity.sample``
            does; the estimator's own ``random_state`` seeds the fit, not the draws): pass
            an int for the same samples at every call.
        clip : bool, default=True
            Clip each feature to its range in the training rows, as ForestFlow does: a
            flow moves particles continuously, and a few end slightly past a bound that
            the data never crosses (a negative count, a pixel below 0).  False returns the
            flow's end points as they are.
        snap : bool, default=True
            Move each feature that takes at most 10 distinct values in the training
            rows (binary, ordinal, small counts) onto the nearest value that the sample's
            class takes there: the flow moves particles continuously, between the levels.
            Round every other feature to the precision of its training values (at most 6
            decimals): counts and whole units stay whole numbers, a value recorded with
            one decimal keeps one.
        marginals : bool, default=True
            With the default ``source="copula_fit"``, send each
            feature of a class whose flow moved through the increasing map that takes the
            feature's distribution among the class's trained particles onto the prior's (the
            class's own values): the flow shapes how the features vary together, and each
            feature keeps its class's values and their proportions.  A flow moves every value
            continuously, so without it a feature that is 0 in most rows comes out spread
            around 0, and a classifier tells such samples from real rows at once.  Each
            sample keeps its rank among the particles in every feature.  A feature whose
            particles already have the class's distribution, within a fresh sample's noise
            (a two-sample Kolmogorov-Smirnov test at 5 %), is left to the flow (clipped to
            the class's range): there the map would only move each sample along that
            feature, off thin structures such as curves in the plane.  False returns the
            flow's end points (as ``particles_`` are); other priors are left as they are.

        Returns
        -------
        X : ndarray or DataFrame of shape (n_samples, n_features)
            In the dtype of the training rows (float64 for integer input), as
            ``transform`` returns its input's.  A DataFrame with the training columns'
            names when ``set_output(transform="pandas")`` is set.
        """
        check_is_fitted(self, "flow_")
        if self.mode_ != "generation":
            raise ValueError(
                "sample() needs a generative fit (fit(X) without sample_domain); this "
                "estimator was fitted for integration: use transform()."
            )
        if not isinstance(n_samples, Integral) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        check_flags(clip=clip, snap=snap, marginals=marginals)
        rng = check_random_state(random_state)
        flows = self._requested_flows(n_samples, y, rng)
        Z = np.empty((n_samples, self.n_features_in_))
        for k in range(self.n_flows_):
            rows = flows == k
            Z[rows] = self.prior_.draw(k, int(rows.sum()), rng)
        Z = self._replay(Z, flows)
        if marginals:
            Z = self._matched_marginals(Z, flows)
        X_new = self._scaling.inverse_transform(Z)
        if clip:
            X_new = self._scaling.clip(X_new)
        if snap:
            X_new = self._levels.snap(X_new, flows)
        X_new = X_new.astype(self._sample_dtype, copy=False)
        # The container of set_output(transform=...) (pandas, polars) with the feature names.
        return _wrap_data_with_container("transform", X_new, None, self)

    def _matched_marginals(self, Z, flows):
        """Standardised rows ``Z`` of flows that moved, with their prior's marginals."""
        prior = self.prior_
        if prior is None or not prior.quantiles:
            return Z
        Z = np.array(Z, dtype=np.float64)
        for k in np.flatnonzero(self.flow_.steps_moved(self.n_flows_)):
            rows = flows == k
            ends = self._final_particles_[k]
            Z[rows] = match_marginals(Z[rows], ends, prior.quantiles[k])
        return Z

    def _requested_flows(self, n_samples, y, rng):
        if self.classes_ is None:
            if y is not None:
                raise ValueError("y was given but the fit was not class-conditional.")
            return np.zeros(n_samples, dtype=int)
        if y is None:
            freq = np.bincount(np.searchsorted(self.classes_, self.particle_labels_))
            return rng.choice(self.n_flows_, size=n_samples, p=freq / freq.sum())
        return class_index(self.classes_, y, n_samples)
