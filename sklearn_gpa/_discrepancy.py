"""An encoder onto the directions in which a source and a target sample differ."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy.sparse.linalg import LinearOperator, eigsh
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._threadpool import one_thread
from .baselines import meanstd_map
from .utils import check_sample_domain, known_labels

__all__ = ["DiscrepancyEncoder"]


def _gap(codes, n_source):
    """The source's covariance minus the target's (rows centred per side)."""
    source, target = codes[:n_source], codes[n_source:]
    return source.T @ source / len(source) - target.T @ target / len(target)


def _gap_times(source, target, vectors):
    """The covariance gap of ``source`` and ``target`` rows (each side centred) applied to
    ``vectors``, without forming the features-by-features matrix."""
    return source.T @ (source @ vectors) / len(source) - target.T @ (target @ vectors) / len(target)


def _copies(rows):
    """Per row, the index of its distinct value (copies of one row share one)."""
    return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)


def _units(units, n_rows):
    """Per unit (the copies of one row on one side, ``units`` its id per row), the indices of
    its rows; None when every row is a unit of its own (or ``units`` is None)."""
    if units is None:
        return None
    ids = np.unique(units, return_inverse=True)[1].reshape(-1)
    if ids.max() + 1 == n_rows:
        return None
    return np.split(np.argsort(ids, kind="stable"), np.cumsum(np.bincount(ids))[:-1])


def _permutations(n_rows, n_source, members, rng):
    """Random reassignments of the rows to the two sides: (order, source rows first).

    The units ``members`` (:func:`_units`) move together, so that copies count as one
    observation; None: every row is its own unit (the plain permutations).
    """
    if members is None:
        while True:
            yield rng.permutation(n_rows), n_source
    sizes = np.array([len(m) for m in members])
    source_units = sum(int(m[0] < n_source) for m in members)  # no unit spans both sides
    while True:
        order = rng.permutation(len(members))
        yield np.concatenate([members[u] for u in order]), int(sizes[order[:source_units]].sum())


def _top_value(codes, n_source, two_sided):
    """The largest eigenvalue of the covariance gap (in absolute value if ``two_sided``)."""
    if codes.shape[1] <= _DENSE_LIMIT:
        values = np.linalg.eigvalsh(_gap(codes, n_source))
        return np.abs(values).max() if two_sided else values[-1]
    source, target = codes[:n_source], codes[n_source:]
    size = codes.shape[1]
    operator = LinearOperator(
        (size, size), matvec=lambda x: _gap_times(source, target, x), dtype=np.float64
    )
    value = eigsh(operator, k=1, which="LM" if two_sided else "LA", tol=1e-6)[0][0]
    return abs(value) if two_sided else value


# Above this many dimensions the permutations' top eigenvalue comes from Lanczos iterations.
_DENSE_LIMIT = 400


def _axes(rows, largest=None):
    """Orthonormal principal axes (rows) of ``rows``, those whose singular value is not
    negligible beside ``largest`` (None: the rows' own largest), and that largest value."""
    _, singular, basis = np.linalg.svd(rows, full_matrices=False)
    if not len(singular):
        return basis, 0.0
    largest = singular[0] if largest is None else largest
    return basis[singular > 1e-8 * largest], largest


def _removed(rows, filters, removals):
    """``rows`` less their parts along ``removals`` that carry their products with
    ``filters`` (columns; afterwards ``rows @ filters`` is 0)."""
    if not filters.shape[1]:
        return rows
    return rows - (rows @ filters) @ np.linalg.solve(removals.T @ filters, removals.T)


def step_down_directions(
    source,
    target,
    *,
    n_permutations=199,
    alpha=0.01,
    two_sided=False,
    max_components=10,
    rng,
    units=None,
    rematch=True,
    remove_along="filters",
):
    """Directions of the covariance gap that pass a step-down permutation test.

    ``source`` and ``target`` are rows in the features' units (each side centred).  At each
    step the rows are written in the orthonormal basis of their pooled principal axes, and
    each axis is scaled by ``1 / sqrt(v + t)``, ``v`` its pooled variance and ``t`` the
    mean of those variances, so that the gap in a direction of little variance counts as
    much as in one of much.  The leading eigenvector of the gap (largest eigenvalue, or
    largest in absolute value when ``two_sided``) is accepted when its eigenvalue exceeds
    that of random reassignments of the rows to the two sides with Monte Carlo p-value
    ``(1 + #exceeding) / (n_permutations + 1) <= alpha``; then it is removed from the
    rows and the next one is tested against permutations of what is left.  What is left
    is what the encoder leaves of each row: with ``remove_along="filters"`` (rows move
    along the filters) the rows' parts in the span of the accepted filters ``w * v`` (``v``
    the eigenvector, ``w`` the weights) are projected out; with ``"patterns"`` each row's
    product with a filter is taken out along ``v / w`` (for a single factor, its pattern),
    so that a factor is removed whole after its first direction.

    With ``rematch`` the source's per-feature spread is mapped onto the target's again
    (shrunk as ComBat does) after each accepted direction, and the accepted directions
    removed again.  The pre-alignment matched the spreads with the
    batch factors in them, so it shrank the source's own variation wherever a factor had
    inflated it; once a factor is removed, the target varies *more* than the source along
    the biology, and random reassignments of such rows give large gaps that hid a second
    factor at a few dozen rows a side (``benchmarks/README.md``).  The first step is the
    same either way.

    ``units`` (per row, source rows first, an id shared by the copies of one row on one
    side) move together in the permutations: ten copies of a row are one observation,
    whose spread the permutations must reproduce (counted as ten, 20 source rows repeated
    ten times passed the test in 10 directions of noise).  Returns an orthonormal basis of
    the accepted filters (columns, in the features' coordinates; the first is the first
    filter, the others' parts orthogonal to those before them).
    """
    n_source = len(source)
    members = _units(units, n_source + len(target))
    allowed = int(np.floor(alpha * (n_permutations + 1) + 1e-9)) - 1
    filters = removals = np.empty((source.shape[1], 0))
    orthogonal = remove_along == "filters"
    largest = None  # the first rows' largest singular value: what is left is measured by it
    for _ in range(max_components):
        left = _removed(source, filters, removals)
        target_left = _removed(target, filters, removals)
        if rematch and filters.shape[1]:
            # Scaling each feature brings back parts along the filters: removed again.
            scaled = left * meanstd_map(left, target_left, shrink=True)[0]
            left = _removed(scaled, filters, removals)
        rows = np.vstack([left, target_left])
        # Once the accepted directions fill the rows' span, what is left is round-off.
        basis, largest = _axes(rows, largest)
        if not len(basis):
            break
        codes = rows @ basis.T
        variances = np.mean(codes**2, axis=0)
        weights = 1.0 / np.sqrt(variances + variances.mean())
        work = codes * weights
        values, vectors = np.linalg.eigh(_gap(work, n_source))
        index = np.argmax(np.abs(values)) if two_sided else len(values) - 1
        observed = abs(values[index]) if two_sided else values[index]
        if observed <= 0:
            break
        exceeding = 0
        draws = _permutations(len(work), n_source, members, rng)
        for _, (order, n_first) in zip(range(n_permutations), draws):
            exceeding += _top_value(work[order], n_first, two_sided) >= observed
            if exceeding > allowed:
                break
        if exceeding > allowed:
            break
        vector = vectors[:, index]
        filters = np.column_stack([filters, (vector * weights) @ basis])
        pattern = (vector / weights) @ basis
        removals = np.column_stack([removals, filters[:, -1] if orthogonal else pattern])
    if not filters.shape[1]:
        return filters
    return np.linalg.qr(filters)[0]


class DiscrepancyEncoder(TransformerMixin, BaseEstimator):
    """Linear codes along the directions where the source's covariance differs from the target's.

    Both sides are standardised by the target's per-feature standard deviations and
    centred on their own means.  A step-down permutation test then picks the directions,
    one at a time: the leading eigenvector of the difference of the two covariances (in
    the span of the rows, each principal axis weighted by ``1 / sqrt(v + mean(v))``, ``v``
    its pooled variance, so that a gap along a quiet axis counts as much as along a loud
    one) is kept when its eigenvalue exceeds that of ``n_permutations`` random
    reassignments of the rows to the two sides with a Monte Carlo p-value at most
    ``alpha``; it is then removed from the rows and the next direction is tested against
    permutations of what is left, after the source's per-feature spreads are matched to
    the target's again (``rematch``).  A strong direction therefore no longer hides a weak
    one: the former test compared every eigenvalue with the permutations' largest, which a
    strong per-sample factor inflates; and the spreads matched with a factor in them shrink
    the source's own variation, so that once the factor is removed the target varies more
    along the biology, which inflated the next step's permutations until they hid a second
    factor at a few dozen rows a side.  ``alternative="greater"`` looks only for
    directions in which the source varies *more* than the target: a per-sample batch
    factor in the source rows adds variance; where the target varies more (the
    pre-alignment's own per-gene rescaling shrinks the source's biology when a factor
    inflated its per-gene spreads), ``LatentGPA``'s residual adjustment restores the
    per-feature spread, and a flow would have to invent per-row deviations.  A flow on
    these codes moves rows only where the data show a difference, and leaves every row's
    own deviation in the other directions to it; when no direction passes the test the
    encoder has no component (``n_components_ == 0``).

    On two halves of one study with no effect, nothing is found in a share ``1 - alpha``
    of random splits or more (the test's size); how often a weak direction is found is
    measured in the user guide (``benchmarks/bench_discrepancy_test.py``).

    With labels ``y`` on target rows, the directions are made orthogonal to the target's
    class-mean contrasts, so that a flow does not move rows along the axes that separate the
    target's classes (with labels on the target only, a label-free flow would otherwise
    carry the classes' different prevalences into the source rows).

    ``move_along`` decides the directions along which a flow on the codes moves rows.  The
    test's direction is a *filter* ``w``: the gap weighed against the pooled variance, so it
    leans away from axes of large biological variance.  A batch pattern ``u`` that itself
    lies along such axes (a per-sample intensity factor follows the genes' mean profile)
    is then only partly in the filter's span, and rows keep the rest of it.  The covariance
    gap applied to the filter, ``gap @ w``, is the pattern the discrepancy adds to the
    features (for a single factor, ``gap = c u u'`` and ``gap @ w`` is along ``u`` exactly;
    Haufe et al. 2014 call it the filter's *activation pattern*).  ``"patterns"`` codes a row
    with the filters and moves it along the patterns (an oblique projection: the codes of
    ``inverse_transform(codes)`` are ``codes``); ``"filters"`` (default) codes and moves
    along the filters.  Which to use is a matter of what the discrepancy is: the user guide
    measures both.  ``"patterns"`` removes a strong per-sample intensity factor far better,
    but where the two studies' class mixes differ, the gap also holds the classes' axes, and
    a label-free flow along the patterns moves rows between classes.

    It is :class:`LatentGPA`'s encoder for integration; fit it on mean/std-aligned rows.

    Parameters
    ----------
    max_components : int, default=10
        At most this many directions, the largest gaps first.
    n_permutations : int, default=199
        Random reassignments of rows to the two sides per step (a step stops drawing them
        once the direction cannot pass).  At least ``1 / alpha - 1``; more give a steadier
        decision on a borderline direction, at the cost of one eigen-decomposition each.
    alpha : float, default=0.01
        The level of each step's test.  A direction kept by chance moves rows that had no
        batch effect, which costs more than missing a weak one; raise it (e.g. 0.05) to
        find weaker directions at the price of more false ones.
    alternative : {"greater", "two-sided"}, default="greater"
        ``"greater"``: directions in which the source varies more than the target;
        ``"two-sided"``: also those in which it varies less (e.g. a factor present in the
        target only).
    rematch : bool, default=True
        After each accepted direction, map the source's per-feature spreads onto the
        target's again (shrunk as ComBat does) before testing the next.  Meant for rows
        already matched feature by feature (``LatentGPA``'s pre-alignment), whose spreads
        were matched with the batch factors in them; on rows that were not, it also
        removes per-feature differences of spread left after the first direction (features
        0 and 1 scaled by 3 and 2: one direction found instead of two), so pass False
        there.
    random_state : int, RandomState instance or None, default=0
        Seeds the permutations.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        Orthonormal directions along which rows move (``inverse_transform``), in the
        standardised units.
    filters_ : ndarray of shape (n_components, n_features)
        The codes of a standardised row are its products with these (``transform``); equal
        to ``components_`` with ``move_along="filters"``, the filters made biorthogonal to
        the patterns (``filters_ @ components_.T`` is the identity) with ``"patterns"``.
    mean_, scale_ : ndarray of shape (n_features,)
        The target's per-feature mean and standard deviation (1 where it is 0).
    n_components_ : int
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.latent import DiscrepancyEncoder
    >>> rng = np.random.RandomState(0)
    >>> target = rng.normal(size=(100, 20))
    >>> source = rng.normal(size=(100, 20))
    >>> source[:, 0] *= 3  # the two sides differ along the first feature only
    >>> X = np.vstack([source, target])
    >>> encoder = DiscrepancyEncoder().fit(X, sample_domain=np.repeat([0, -1], 100))
    >>> encoder.n_components_, int(np.argmax(np.abs(encoder.components_[0])))
    (1, 0)
    """

    _parameter_constraints = {
        "max_components": [Interval(Integral, 1, None, closed="left")],
        "n_permutations": [Interval(Integral, 1, None, closed="left")],
        "alpha": [Interval(Real, 0, 1, closed="neither")],
        "alternative": [StrOptions({"greater", "two-sided"})],
        "move_along": [StrOptions({"filters", "patterns"})],
        "rematch": ["boolean"],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        max_components=10,
        n_permutations=199,
        alpha=0.01,
        alternative="greater",
        move_along="filters",
        rematch=True,
        random_state=0,
    ):
        self.max_components = max_components
        self.n_permutations = n_permutations
        self.alpha = alpha
        self.alternative = alternative
        self.move_along = move_along
        self.rematch = rematch
        self.random_state = random_state

    def fit(self, X, y=None, *, sample_domain=None):
        """Find the directions of discrepancy between source and target rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None
            Class labels; those of target rows (-1 or NaN: unknown) keep the directions
            orthogonal to the target's class contrasts.
        sample_domain : array-like of shape (n_samples,)
            ``>= 0`` for source rows, ``< 0`` for target rows.

        Returns
        -------
        self : DiscrepancyEncoder
        """
        self._validate_params()
        if self.alpha * (self.n_permutations + 1) < 1:
            raise ValueError(
                f"n_permutations={self.n_permutations} is too few for alpha={self.alpha}: "
                f"no direction could pass; use at least {int(np.ceil(1 / self.alpha)) - 1}."
            )
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=4)
        if sample_domain is None:
            raise ValueError("DiscrepancyEncoder needs sample_domain (>= 0 source, < 0 target).")
        source = check_sample_domain(sample_domain, len(X), n_features=X.shape[1])
        Xs, Xt = X[source], X[~source]
        scale = Xt.std(0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        self.mean_ = Xt.mean(0)
        source_rows = (Xs - Xs.mean(0)) / self.scale_
        target_rows = (Xt - Xt.mean(0)) / self.scale_
        with one_thread():  # many small eigenproblems: one thread is fastest
            filters = step_down_directions(
                source_rows,
                target_rows,
                n_permutations=self.n_permutations,
                alpha=self.alpha,
                two_sided=self.alternative == "two-sided",
                max_components=self.max_components,
                rng=check_random_state(self.random_state),
                # Copies of a row move together in the permutations (one observation).
                units=np.concatenate([_copies(Xs), len(Xs) + _copies(Xt)]),
                rematch=self.rematch,
                remove_along=self.move_along,
            ).T
        directions = filters
        if self.move_along == "patterns":  # the gap applied to each filter
            directions = _gap_times(source_rows, target_rows, filters.T).T
        contrasts = self._class_contrasts(Xt, None if y is None else np.asarray(y)[~source])
        if len(directions) and len(contrasts):
            q = np.linalg.qr(contrasts.T)[0]
            directions = directions - (directions @ q) @ q.T
        if len(directions):
            directions = np.linalg.qr(directions.T)[0].T
        n_components = len(filters)
        self.components_ = directions.reshape(n_components, X.shape[1])
        self.filters_ = self.components_
        if self.move_along == "patterns" and n_components:
            # Codes from the filters, biorthogonal to the patterns: a row moved along the
            # patterns by a change of its codes has exactly that change of codes.
            self.filters_ = np.linalg.pinv(filters @ self.components_.T) @ filters
        self.n_components_ = n_components
        return self

    def _class_contrasts(self, Xt, yt):
        """The target's standardised class means minus its mean, one row per class."""
        if yt is None:
            return np.empty((0, Xt.shape[1]))
        known = known_labels(yt)
        classes = np.unique(yt[known])
        if len(classes) < 2:
            return np.empty((0, Xt.shape[1]))
        centre = Xt.mean(0)
        return np.array([(Xt[known & (yt == c)].mean(0) - centre) / self.scale_ for c in classes])

    def transform(self, X):
        """Codes of rows: ``((X - mean_) / scale_) @ filters_.T``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return ((X - self.mean_) / self.scale_) @ self.filters_.T

    def inverse_transform(self, codes):
        """Rows of codes: ``codes @ components_ * scale_ + mean_``."""
        check_is_fitted(self)
        codes = check_array(codes, dtype=np.float64, ensure_min_features=0, input_name="codes")
        if codes.shape[1] != self.n_components_:
            raise ValueError(
                f"codes have {codes.shape[1]} columns, but this encoder has "
                f"{self.n_components_} components."
            )
        return (codes @ self.components_) * self.scale_ + self.mean_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags
