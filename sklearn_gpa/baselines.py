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
from .utils import check_domains, few, known_labels

__all__ = ["MeanStdAdjuster", "class_router", "domain_deviations", "meanstd_map", "mixture_shift"]


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
    moved by more than its standard error (a shift also by no more than one standard error
    in target standard deviations, which one extreme source row cannot inflate), so a
    feature whose effect stands out keeps it.  A few dozen rows per side then give steadier maps.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.baselines import meanstd_map
    >>> a, b = meanstd_map(np.array([[0.0], [2.0]]), np.array([[10.0], [16.0]]))
    >>> (np.array([[0.0], [2.0]]) * a + b).ravel().tolist()
    [10.0, 16.0]
    """
    moments = source.mean(0), _spread(source), target.mean(0), _spread(target)
    return moment_map(*moments, len(source), len(target), shrink=shrink)


def moment_map(src_mean, src_std, tgt_mean, tgt_std, n_s, n_t, *, shrink=False):
    """:func:`meanstd_map` from the two sides' per-feature means, standard deviations
    (exactly 0 for a constant feature) and numbers of rows."""
    ok = (src_std > 0) & (n_t > 1)
    a = np.where(ok, tgt_std / np.where(ok, src_std, 1.0), 1.0)
    shift = tgt_mean - src_mean
    if shrink and len(src_mean) >= SHRINK_MIN_FEATURES and min(n_s, n_t) > 1:
        both = ok & (tgt_std > 0)
        log_ratio = np.log(np.where(both, a, 1.0))
        log_ratio = _posterior_mean(log_ratio, 0.5 / (n_s - 1) + 0.5 / (n_t - 1), both)
        a = np.where(both, np.exp(log_ratio), a)
        # A feature constant on either side keeps its exact map (shifted, or set to the
        # target's constant).  Shifts in pooled stds, as ComBat does; each move at most one
        # standard error of the target's std, the unit the mapped rows land in: a pooled
        # std that one extreme source row set (a byte count 10^9 out) let one standard
        # error move every mapped row 10^5 target stds.
        noise = 1 / n_s + 1 / n_t
        pooled = np.where(both, np.sqrt((src_std**2 + tgt_std**2) / 2), 1.0)
        bound = np.sqrt(noise) * np.where(both, tgt_std, np.inf)
        shrunk = pooled * _posterior_mean(shift / pooled, noise, both)
        shift = shift + np.clip(shrunk - shift, -bound, bound)
    return a, src_mean + shift - a * src_mean


def _posterior_mean(effects, noise, mask, *, limited=True):
    """Shrunk per-feature ``effects``, each measured with sampling variance ``noise`` (one
    for all, or one per effect).

    The normal prior's centre and spread are the median and the MAD-based spread of the
    masked effects, less the (mean) noise; each effect moves towards the centre by its
    posterior weight, with ``limited`` never by more than one standard error (Efron and
    Morris's limited translation), so a feature whose effect stands far out keeps it.
    Unmasked effects are returned as they are.
    """
    if mask.sum() < SHRINK_MIN_FEATURES:
        return effects
    kept = effects[mask]
    centre = np.median(kept)
    mean_noise = float(np.mean(np.broadcast_to(noise, effects.shape)[mask]))
    prior = max((1.4826 * np.median(np.abs(kept - centre))) ** 2 - mean_noise, 0.0)
    step = noise / (prior + noise) * (effects - centre)
    if limited:
        step = np.clip(step, -np.sqrt(noise), np.sqrt(noise))
    return np.where(mask, effects - step, effects)


def domain_deviations(sources, robust=None):
    """Per source domain (``sources``: a list of row arrays), the map ``z * a + b`` that
    takes its rows onto the moments of all of them pooled, shrunk by empirical Bayes.

    A domain's own effect is its deviation from the pooled rows: per feature, its mean's
    shift in units of the pooled standard deviation and its log scale ratio.  Each is
    measured with a sampling variance from the domain's number of rows, and all of them
    (every domain and feature) are shrunk towards their common centre as
    :func:`meanstd_map`'s ``shrink`` shrinks features' effects, but by their full posterior
    weight (limiting each move to one standard error kept much of the noise of batches of
    a few rows that share one effect).  Domains that share one
    effect, or hold a few rows (one row has no spread), are then moved as the pooled rows
    are; a domain whose effect stands out keeps it.  Composed with the pooled rows' map
    onto a target, it gives each domain its own map (:class:`MeanStdAdjuster` and the
    flows' pre-alignment with several source domains).  Features in ``robust`` (a boolean
    mask; those whose pooled map matches medians and interquartile ranges) deviate by their
    medians and interquartile ranges too, where every domain has one: a heavy tail's few
    extreme rows set a domain's mean and std.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.baselines import domain_deviations
    >>> rng = np.random.RandomState(0)
    >>> own = [rng.normal(shift, 1, (40, 20)) for shift in (-2.0, 2.0)]
    >>> shared = [rng.normal(0, 1, (40, 20)) for _ in range(2)]
    >>> def moves(sources):  # each domain's mean move
    ...     maps = domain_deviations(sources)
    ...     return [round(float(np.mean(x * a + b - x)), 2) + 0.0 for x, (a, b) in
    ...             zip(sources, maps)]
    >>> moves(own)  # kept: each domain goes to the pooled mean
    [2.04, -2.04]
    >>> moves(shared)  # shrunk: sampling noise, not an effect
    [0.0, 0.0]
    """
    pooled = np.concatenate(sources)
    centre, spread = pooled.mean(0), _spread(pooled)
    sizes = np.array([len(rows) for rows in sources], dtype=float)[:, None]
    means = np.array([rows.mean(0) for rows in sources])
    spreads = np.array([_spread(rows) for rows in sources])
    noise = np.ones(pooled.shape[1])
    if robust is not None and robust.any():
        ranges = np.array([_quartile_range(rows) for rows in [pooled, *sources]])
        robust = robust & (ranges > 0).all(0)
        centre = np.where(robust, np.median(pooled, axis=0), centre)
        spread = np.where(robust, ranges[0], spread)
        means = np.where(robust, [np.median(rows, axis=0) for rows in sources], means)
        spreads = np.where(robust, ranges[1:], spreads)
        noise = np.where(robust, np.pi / 2, 1.0)  # a median's variance over a mean's
    unit = np.where(spread > 0, spread, 1.0)
    # Shifts in pooled spreads (a subset's mean has variance (1/n - 1/N) about the pool's).
    shifts = (centre - means) / unit
    shift_noise = noise * np.maximum(1 / sizes - 1 / len(pooled), 1e-12)
    varies = np.broadcast_to(spread > 0, shifts.shape)
    shifts = _posterior_mean(shifts.ravel(), shift_noise.ravel(), varies.ravel(), limited=False)
    shifts = shifts.reshape(varies.shape)
    scaled = (spreads > 0) & (spread > 0)
    log_ratios = np.log(np.where(scaled, unit / np.where(spreads > 0, spreads, 1.0), 1.0))
    ratio_noise = noise * 0.5 / np.maximum(sizes - 1, 1)
    log_ratios = _posterior_mean(
        log_ratios.ravel(), ratio_noise.ravel(), scaled.ravel(), limited=False
    )
    scales = np.exp(log_ratios.reshape(scaled.shape))
    return [(a, m + d * unit - a * m) for a, m, d in zip(scales, means, shifts)]


def domain_maps(sources, pooled_map, robust=None):
    """Per source domain (``sources``: a list of row arrays), its shrunk deviation from the
    pooled rows (:func:`domain_deviations`, ``robust`` its features of medians) followed by
    ``pooled_map``, the pooled rows' ``(a, b)`` onto the target; ``[pooled_map]`` for one
    domain."""
    if len(sources) == 1:
        return [pooled_map]
    a, b = pooled_map
    return [(a_d * a, b_d * a + b) for a_d, b_d in domain_deviations(sources, robust)]


def _quartile_range(rows):
    return np.subtract(*np.percentile(rows, [75, 25], axis=0))


def mixture_shift(source, target, target_labels, *, n_components=10, n_iter=200):
    """Per-feature shift that gives moment-matched ``source`` rows back their own class mix.

    Meant for source rows already moment-matched to the target (:func:`meanstd_map`), with
    class labels known on the target rows only (the semi-labelled case).  Matching whole
    sample means assumes both sides hold the same mix of classes; when the source holds a
    larger share of one class (a *label shift*), the match moves every source row towards
    the other class.  This estimates the source's class proportions and its offset
    jointly, in the few directions that separate the target's classes, and removes the
    offset there.

    Both sides are scaled by the target's per-feature spread and reduced to the
    ``n_components`` leading principal components of the pooled rows; these are whitened
    by the target's within-class covariance, and the span of the target's class-mean
    contrasts there (the discriminant directions, ``n_classes - 1`` of them) is kept.  In
    that span the source rows are fitted by expectation-maximisation as a mixture of the
    target's classes: normals centred on the target's class means plus one common offset,
    with the target's within-class covariance and free proportions, from several starting
    proportions (the most likely fit is kept).  Saerens et al. (2002) estimate the
    proportions with a classifier's posteriors; here the classes' own distributions are
    used, which needs no calibrated classifier and also gives the offset.  Rows are left
    alone outside that span.  The estimate is only as good as the classes' separation
    along the discriminant directions in the source study.

    Parameters
    ----------
    source, target : ndarray of shape (n_source, n_features), (n_target, n_features)
        The (pre-aligned) source rows and the target rows.
    target_labels : array-like of shape (n_target,)
        The target rows' classes; -1, NaN or None mark unknown ones (not used).
    n_components : int, default=10
        Principal components of the pooled rows in which the discriminant directions are
        taken.
    n_iter : int, default=200
        Most expectation-maximisation rounds.

    Returns
    -------
    shift : ndarray of shape (n_features,)
        Add it to the source rows; zeros with fewer than two known target classes (each of
        at least two rows) or fewer than two source rows.
    proportions : ndarray of shape (n_classes,)
        The source's estimated class proportions, in the order of ``np.unique`` of the known
        target labels (the target's own proportions where no shift was estimated).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.baselines import meanstd_map, mixture_shift
    >>> rng = np.random.RandomState(0)
    >>> centres = np.array([[-2.0] * 20, [2.0] * 20])
    >>> ys, yt = np.repeat([0, 1], [90, 30]), np.repeat([0, 1], [30, 90])
    >>> source = centres[ys] + rng.normal(size=(120, 20)) + 5.0  # batch: +5 on every gene
    >>> target = centres[yt] + rng.normal(size=(120, 20))
    >>> a, b = meanstd_map(source, target)
    >>> aligned = source * a + b  # both classes pulled towards the target's mix
    >>> shift, proportions = mixture_shift(aligned, target, yt)
    >>> proportions.round(2).tolist()
    [0.75, 0.25]
    >>> gap = lambda rows: round(float(rows[ys == 0].mean() - target[yt == 0].mean()), 1)
    >>> gap(aligned), gap(aligned + shift)
    (2.0, 0.0)
    """
    source = np.asarray(source, dtype=float)
    target = np.asarray(target, dtype=float)
    target_labels = np.asarray(target_labels)
    known = known_labels(target_labels)
    labels = target_labels[known]
    classes, counts = np.unique(labels, return_counts=True)
    shift = np.zeros(source.shape[1])
    weights = counts / max(counts.sum(), 1)
    if len(classes) < 2 or counts.min() < 2 or len(source) < 2:
        return shift, weights
    scale = _spread(target)
    scale = np.where(scale > 0, scale, 1.0)
    rows_s, rows_t = source / scale, target[known] / scale
    pooled = np.vstack([rows_s, rows_t])
    centre = pooled.mean(0)
    n_components = max(1, min(n_components, len(pooled) - 1, source.shape[1]))
    axes = np.linalg.svd(pooled - centre, full_matrices=False)[2][:n_components]
    codes_s, codes_t = (rows_s - centre) @ axes.T, (rows_t - centre) @ axes.T
    index = np.searchsorted(classes, labels)
    centred = codes_t - np.array([codes_t[index == k].mean(0) for k in range(len(classes))])[index]
    values, vectors = np.linalg.eigh(centred.T @ centred / max(len(codes_t) - len(classes), 1))
    whiten = vectors / np.sqrt(np.maximum(values, 1e-6 * max(values.max(), 1e-300)))
    codes_s, codes_t = codes_s @ whiten, codes_t @ whiten
    means = np.array([codes_t[index == k].mean(0) for k in range(len(classes))])
    span = np.linalg.svd(means - means.mean(0), full_matrices=False)[2][: len(classes) - 1]
    u_s, mu = codes_s @ span.T, means @ span.T
    # EM has local optima (all rows in one broad class): start from several mixes, each
    # with the offset that matches the source's mean, and keep the most likely fit.
    best = (-np.inf, weights, np.zeros(len(span)))
    for start in _mixture_starts(weights):
        fit = _fit_offset_mixture(u_s, mu, start, u_s.mean(0) - start @ mu, n_iter)
        if fit[0] > best[0]:
            best = fit
    _, weights, offset = best
    # Back from the whitened span to the features: codes = (rows - centre) @ (whiten.T @
    # axes).T, so a code offset is a row offset of offset @ pinv(whiten.T @ axes).T.
    back = np.linalg.pinv(whiten.T @ axes)
    shift = -(back @ (span.T @ offset)) * scale
    return shift, weights


def _mixture_starts(weights):
    """Starting mixes: the target's, even, and each class holding 80 % or 20 % of rows."""
    k = len(weights)
    starts = [weights, np.full(k, 1 / k)]
    for share in (0.8, 0.2):
        for c in range(k):
            start = np.full(k, (1 - share) / (k - 1))
            start[c] = share
            starts.append(start)
    return starts


def _fit_offset_mixture(u, means, weights, offset, n_iter):
    """EM for rows ``u`` ~ sum_k w_k N(means_k + offset, I): (log-likelihood, w, offset).

    The weights and one common offset are fitted; the means and the (identity) covariance
    stay fixed.  A free covariance let one broad class absorb every row where per-sample
    batch factors widened the source along the class directions.
    """
    n = len(u)
    log_like = -np.inf
    for _ in range(n_iter):
        gaps = u[:, None, :] - means[None] - offset  # (n, n_classes, r)
        log_joint = np.log(np.maximum(weights, 1e-300)) - 0.5 * np.sum(gaps**2, axis=2)
        top = log_joint.max(1, keepdims=True)
        total = top[:, 0] + np.log(np.exp(log_joint - top).sum(1))
        previous, log_like = log_like, float(total.sum())
        if log_like - previous < 1e-9 * abs(log_like):
            break
        post = np.exp(log_joint - total[:, None])
        weights = post.mean(0)
        offset = np.einsum("ik,ikr->r", post, u[:, None, :] - means[None]) / n
    return log_like, weights, offset


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


class DomainRouter:
    """Sends rows to the flows of several source domains: domain first, then class.

    Flow ``k`` carries the rows of source domain ``domains[k]`` and class ``classes[k]``
    (``classes`` None: of every class) from its starting rows ``starts[k]``.  A row goes to
    the domain it is given, or else to the one a :func:`class_router` of the starting rows'
    domains predicts (a batch effect sets its rows apart); then to the flow of its class
    within that domain, given, or else predicted by a :func:`class_router` of the
    domain's flows.
    """

    def __init__(self, domains, classes, starts):
        self.domains, self.classes = np.asarray(domains), classes
        counts = [len(s) for s in starts]
        self.domain_router = class_router(np.concatenate(starts), np.repeat(self.domains, counts))
        self.class_routers = {}
        for domain in np.unique(self.domains):
            flows = np.flatnonzero(self.domains == domain)
            rows = np.concatenate([starts[k] for k in flows])
            self.class_routers[domain] = class_router(
                rows, np.repeat(flows, [counts[k] for k in flows])
            )

    def predict(self, X, y=None, domains=None) -> np.ndarray:
        """Index of the flow of each row of ``X`` (``y``, ``domains``: given, or None)."""
        if domains is None:
            domains = self.domain_router.predict(X)
        else:
            domains = check_domains(domains, len(X), require_both=False)[1]
        unknown = ~np.isin(domains, self.domains)
        if unknown.any():
            raise ValueError(
                f"sample_domain holds domains {few(np.unique(domains[unknown]))} that were "
                f"not fitted as source domains; the fitted source domains are "
                f"{few(np.unique(self.domains))}. A batch is moved the way fitted to its "
                "own rows: fit with rows of it too."
            )
        labelled = y is not None and self.classes is not None
        if labelled:
            y = np.asarray(y)
            if y.shape != (len(X),):
                raise ValueError(f"y must have shape ({len(X)},), got {y.shape}.")
        flows = np.empty(len(X), dtype=int)
        for domain in np.unique(domains):
            rows = domains == domain
            candidates = np.flatnonzero(self.domains == domain)
            if labelled:
                mine = self.classes[candidates]
                unknown = ~np.isin(y[rows], mine)
                if unknown.any():
                    raise ValueError(
                        f"y holds classes {few(np.unique(y[rows][unknown]))} that source "
                        f"domain {domain} was not fitted with; its classes: {few(mine)}."
                    )
                flows[rows] = candidates[np.searchsorted(mine, y[rows])]
            elif len(candidates) == 1:
                flows[rows] = candidates[0]
            else:
                flows[rows] = self.class_routers[domain].predict(X[rows])
        return flows


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
    recentre : {"mixture"} or None, default=None
        "mixture": with labels on the target rows (source labels, if any, are not
        used) and one map for all rows, shift the moment-matched source rows by
        :func:`mixture_shift`, so that a source with another mix of classes than the
        target keeps its own mix instead of being pulled onto the target's mean along the
        directions that separate the classes.  Without target labels, or with one map per
        class, it changes nothing.  Advice: use it when the studies' class proportions may
        differ and the classes separate clearly in the leading principal components; it
        relies on that separation holding in the source study too.

    Attributes
    ----------
    classes_ : ndarray or None
    flow_domains_ : ndarray or None
        With several source domains (values ``>= 0`` of ``sample_domain``), the domain of
        each map: each domain is matched to the target on its own (and per class with
        labels).  None for one source domain.
    scale_, shift_ : ndarray of shape (n_maps, n_features)
        Source rows of map k (class, or domain and class) become
        ``x * scale_[k] + shift_[k]``.
    recentring_ : ndarray of shape (n_maps, n_features)
        The part of ``shift_`` that ``recentre`` added (zeros without it).
    router_ : KNeighborsClassifier, RidgeClassifierCV, DomainRouter or None
        Sends rows given without a class to a class in ``transform``: the one of a
        5-nearest-neighbour vote and a ridge classifier on the source rows that
        cross-validates better (:func:`class_router`); with several source domains, rows
        given without ``sample_domain`` to a domain the same way, then to a class within it.

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

    With labels on the target only and another mix of two classes on each side,
    ``recentre="mixture"`` keeps the source's own mix (its mean stays off the target's):

    >>> centres = np.array([[-2.0] * 20, [2.0] * 20])
    >>> ys, yt = np.repeat([0, 1], [90, 30]), np.repeat([0, 1], [30, 90])
    >>> Xs = centres[ys] + rng.normal(size=(120, 20)) + 5.0
    >>> Xt = centres[yt] + rng.normal(size=(120, 20))
    >>> X, y, sd = stack_domains(Xs, Xt, np.full(120, -1), yt)
    >>> out = MeanStdAdjuster(recentre="mixture").fit_transform(X, y, sample_domain=sd)
    >>> round(float(out[sd >= 0].mean() - out[sd < 0].mean()), 1)  # truth: -2.0
    -2.0
    """

    _parameter_constraints = {
        "conditional": [StrOptions({"auto"}), "boolean"],
        "shrink": ["boolean"],
        "recentre": [StrOptions({"mixture"}), None],
    }

    def __init__(self, conditional="auto", *, shrink=False, recentre=None):
        self.conditional = conditional
        self.shrink = shrink
        self.recentre = recentre

    def _fit(self, X, y, source, domains):
        """One affine map per class (and source domain) from source and target rows; the
        moved source rows."""
        if source is None:
            raise ValueError("MeanStdAdjuster needs sample_domain (>= 0 source, < 0 target).")
        groups = group_rows(y, source, domains=domains, conditional=self.conditional)
        self.classes_, self.flow_domains_ = groups.classes, groups.domains
        maps = [None] * len(groups)
        for flows in groups.sharing_targets():  # one class: its source domains' maps
            sources = [X[groups.sources[k]] for k in flows]
            pooled = meanstd_map(
                np.concatenate(sources), X[groups.targets[flows[0]]], shrink=self.shrink
            )
            for k, domain_map in zip(flows, domain_maps(sources, pooled)):
                maps[k] = domain_map
        recentring = np.zeros((len(maps), X.shape[1]))
        for k, ((a, b), s, t) in enumerate(zip(maps, groups.sources, groups.targets)):
            if not (len(s) and len(t)):
                continue
            if self.recentre == "mixture" and self.classes_ is None and y is not None:
                recentring[k] = mixture_shift(X[s] * a + b, X[t], y[t])[0]
        self.router_ = None
        if self.flow_domains_ is not None:
            starts = [X[s] for s in groups.sources]
            self.router_ = DomainRouter(self.flow_domains_, groups.flow_classes, starts)
        elif self.classes_ is not None:
            self.router_ = class_router(X[source], y[source])
        self.scale_ = np.array([a for a, _ in maps])
        self.shift_ = np.array([b for _, b in maps]) + recentring
        self.recentring_ = recentring
        labels = None if self.classes_ is None else y[source]
        return self._move(X[source], labels, None if domains is None else domains[source])

    def __setstate__(self, state):
        if "scale_" in state and "flow_domains_" not in state:  # fitted before domains
            state = {**state, "flow_domains_": None}
        super().__setstate__(state)

    def flow_index(self, X, y=None, *, sample_domain=None):
        """Index of the map (row of ``scale_``) of each row: from its class ``y`` and
        source domain ``sample_domain`` where given, else routed by ``router_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None
        sample_domain : array-like of shape (n_samples,), default=None
            The source domain of each row, after a fit with several of them.

        Returns
        -------
        flows : ndarray of int of shape (n_samples,)
        """
        X = self._validate_rows(X)
        if self.flow_domains_ is not None:
            return self.router_.predict(X, y, sample_domain)
        if self.classes_ is None:
            return np.zeros(len(X), dtype=int)
        if y is not None:
            return class_index(self.classes_, y, len(X))
        return np.searchsorted(self.classes_, self.router_.predict(X))

    def _move(self, X, y, domains=None):
        index = self.flow_index(X, y, sample_domain=domains)
        return X * self.scale_[index] + self.shift_[index]
