"""GPAAugmenter: class-wise over-sampling with generative particles, for imbalanced-learn."""

from __future__ import annotations

import contextlib
import math
from numbers import Integral, Real

import numpy as np
import torch
from imblearn.over_sampling.base import BaseOverSampler
from scipy import sparse
from sklearn.base import clone
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, Options, StrOptions
from threadpoolctl import threadpool_limits

from ._discrete import FeatureLevels, few_levels
from ._engine.device import cpu_threads
from ._prior import Prior, _quantile_table, match_marginals
from ._scaling import Standardization
from .transport import GPATransporter
from .utils import check_magnitude, few, stack_domains, warn_at_caller

__all__ = ["GPAAugmenter", "default_transporter"]

# A class whose synthetic rows are nearer its originals than this share of the originals'
# own spacing is said to be copied (a fresh sample is at about 1; issue 17's bar is 0.5).
_CLOSE_RATIO = 0.5


class GPAAugmenter(BaseOverSampler):
    """Over-sample classes with generative particles moved onto each class (GPA).

    For every class that ``sampling_strategy`` asks to grow, particles are drawn from a
    prior and transported onto that class's rows by the Lipschitz-regularised gradient
    flow of Gu et al. (one flow per class, all flows batched in one torch computation by a
    single :class:`GPATransporter`).  The particles become the synthetic rows (each feature
    given its class's own distribution back, ``marginals``): the original rows come first,
    unchanged, then the synthetic rows class by class.

    Following the papers' recipe for augmentation (paper 000 section 6, paper 002 sections 4
    and 8):

    * **imbalanced sample sizes**: class ``k`` with ``N_k`` rows and ``n_k`` requested rows
      is learned with ``M_k = max(ceil(oversampling_factor * N_k), min(n_k, max_particles))``
      particles (the papers keep ``M > N``: paper 002 Fig. 13-14 shows ``M = N`` particles
      ending on the targets).  When ``M_k > n_k``, ``n_k`` particles are kept uniformly at
      random: a uniform subset of a sample is a sample of the same law, whereas ranking
      particles by a per-row score (such as the critic's value) biases the kept rows.  When
      ``n_k > M_k`` (a class far smaller than the majority), the other ``n_k - M_k`` rows
      are fresh prior draws pushed through the learned flow (paper 002 section 4), which
      costs one critic gradient per row and step instead of a share of every critic update;
    * **divergence tolerance** (paper 002 eq. 37): the augmented data of class ``k`` are the
      particles at the termination time ``T_k`` of its flow, chosen so that the flow's own
      estimate of the Lipschitz-regularised divergence ``D_f^L(P_T || Q_k)`` between the
      particles and the class rows is below ``tolerance``.  A flow that runs on after that
      carries the particles ever closer to the original rows (memorisation): stopping
      early keeps them apart.  ``memorization_ratio_`` and ``nearest_original_distance_``
      show where a fit stands.

    Parameters
    ----------
    sampling_strategy : float, str, dict or callable, default="auto"
        Which classes to grow and to what size, as in every imbalanced-learn over-sampler:
        a float (binary only) is the minority / majority ratio after resampling;
        ``"minority"``, ``"not minority"``, ``"not majority"``, ``"all"`` and ``"auto"``
        (= ``"not majority"``) equalise the chosen classes with the majority; a dict maps
        a class to its number of rows after resampling; a callable ``y -> dict``.
    random_state : int, RandomState instance or None, default=None
        Seeds the prior draws, the flow and the choice of the kept particles.
    transporter : GPATransporter or None, default=None
        The flow that moves the particles (cloned); every flow setting (divergence, L,
        dt, steps, discriminator, device, ...) is its parameter, reachable in a grid
        search as ``transporter__L``.  None uses :func:`default_transporter`, a short and
        cheap flow made for augmentation inside cross-validation: the particles start from a
        Gaussian with each class's mean and (Ledoit-Wolf) covariance
        (``source="gaussian_fit"``), so the flow only has to correct what two moments miss,
        in 50 steps of 2 critic updates.  For a closer fit to a class of complex shape, or
        classes that overlap strongly, pass a longer flow, e.g.
        ``GPATransporter(source="gaussian_fit", n_steps=300)`` (slower in proportion), or
        let a grid search choose; the papers' fixed priors (``"normal"``, ``"uniform"``,
        ``"logistic"``) make the flow carry the particles much farther.  The augmenter sets
        the clone's ``stop`` (None: the flows run ``n_steps``, and ``tolerance`` picks each
        flow's end), ``conditional``, ``prealign``, ``out_of_sample``, ``warm_start`` and
        ``random_state`` (from its own ``random_state``).
    oversampling_factor : float >= 1, default=3.0
        Minimum number of particles per original row of a class (the papers' ``M / N``;
        3 in paper 000 App. E and paper 002 Fig. 13).
    max_particles : int or None, default=1000
        Each flow is trained with as many particles as rows requested, but not more than
        ``max_particles`` (and never fewer than ``oversampling_factor`` per original row);
        the rows beyond are fresh prior draws replayed through the learned flow.  The cost
        of a critic update grows with the particles, the replay's much less: this keeps a
        class that is a hundred times smaller than the majority about as cheap as one that
        is ten times smaller.  None trains with every requested row as a particle (the
        papers' augmentation).
    tolerance : float or None, default=None
        The tolerance ``epsilon`` of paper 002 eq. 37, in the units of the flow's divergence
        estimate (Algorithm 1's objective ``J``; nats for ``f="kl"``, computed in the flow's
        standardised units with Lipschitz bound ``L``).  Class ``k``'s rows are the particles
        at the earliest step ``T_k`` from which ``J`` stays ``<= tolerance`` until the last
        step (``J`` rises at first, while the critic learns, and fluctuates; requiring it to
        stay below makes ``T_k`` robust).  A smaller tolerance gives later, closer particles.
        When ``J`` ends above the tolerance the flow's last step is used and a
        ``UserWarning`` says so.  None uses the last step of every flow.  Read
        ``transporter_.history_["divergence_per_flow"]`` to choose it.
    scale_features : bool, default=True
        Divide every feature by its standard deviation over all rows of ``X`` before the
        flow (undone on output), so that features of small spread are learned as well as
        large ones; this is what a ``StandardScaler`` before the classifier sees.  False
        leaves the geometry to the transporter's ``standardize`` (whose ``"auto"`` then picks
        per-feature or common scaling); with True, a transporter's ``"auto"`` runs with one
        common scale, since the features already share a unit.
    discrete_features : "auto", array-like or None, default="auto"
        Features whose synthetic values are snapped to the nearest value that the class
        takes in ``X`` (the flow moves particles continuously; a binary, ordinal or
        class-constant feature should stay on its levels, as SMOTE's interpolation between
        equal values keeps it).  "auto": the features with at most 10 distinct values in
        ``X``; an array of feature indices or a boolean mask; None snaps nothing.
    marginals : bool, default=True
        Send each feature of a class's synthetic rows through the increasing map that takes
        its distribution among the class's particles onto its distribution among the class's
        rows, as :meth:`GPATransporter.sample` does: each synthetic row keeps its rank among
        the particles in every feature (how the features vary together), and takes values
        within the class's own range, in their proportions (a feature that is 0 in most of
        the class's rows stays 0 in as many synthetic rows).  A feature whose particles are
        already distributed like the class's rows, within a fresh sample's noise (a
        two-sample Kolmogorov-Smirnov test at 5 %), is only clipped to the class's range.
        Discrete features are then snapped as ``discrete_features`` says.  False keeps the
        flow's end points.

    n_jobs : int or None, default=None
        CPU threads for the flows (torch's, and the OpenMP and BLAS threads of the work
        around them).  None: one, as scikit-learn's ``n_jobs=None``; an
        augmenter runs once per fold of a cross-validation, which parallelises over folds
        (``cross_validate(..., n_jobs=...)``), and next to other busy processes several
        threads wait for each other at every step (a fit can take ten times longer).  A
        positive number: at most that many (never more than ``torch.get_num_threads()``
        allows); -1: the transporter's own choice from the size of the problem.  Ignored on
        a GPU.

    Attributes
    ----------
    sampling_strategy_ : dict
        Class -> number of rows to add (imbalanced-learn's resolution of
        ``sampling_strategy``).
    augmented_classes_ : ndarray
        The classes that received rows, in the order of their synthetic rows (and of the
        flows of ``transporter_``).
    n_particles_ : dict
        Class -> number of particles ``M_k`` its flow was trained with (the class's other
        synthetic rows, if any, were replayed).
    termination_step_ : dict
        Class -> step ``T_k`` whose particles were used (``n_steps_`` of the transporter
        without a tolerance).
    divergence_ : dict
        Class -> the flow's estimate of ``D_f^L(P_T || Q_k)`` at ``T_k`` (the quantity of
        eq. 37; for ``T_k = n_steps_``, the estimate of the last step).  It is a lower bound
        of the divergence from a critic trained along the flow;
        :func:`sklearn_gpa.metrics.lipschitz_f_divergence` gives an independent estimate.
    nearest_original_distance_ : ndarray of shape (n_synthetic,)
        For each synthetic row (in output order), the Euclidean distance, in the units of
        ``X``, to the nearest original row of its class.  Zeros are copies.
    memorization_ratio_ : dict
        Class -> median distance from its synthetic rows to their nearest original row
        of the class divided by the median distance from each original row to its nearest
        other original row, both in the units of ``(X - feature_center_) /
        feature_scale_`` (a feature in large units would otherwise set both).  About 1:
        the synthetic rows are as far from the originals as a fresh sample of the class
        would be; near 0: they copy the originals (``M = N``).
    transporter_ : GPATransporter or None
        The fitted flows (integration mode: prior draws as source rows, the class rows as
        target rows, labels = index into ``augmented_classes_``), in the units of
        ``(X - feature_center_) / feature_scale_``.  None when no class was augmented.
    discrete_features_ : ndarray of int
        Indices of the features treated as discrete.
    feature_center_, feature_scale_ : ndarray of shape (n_features,)
        The per-feature scaling (zeros and ones with ``scale_features=False``).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Defined when ``X`` has string column names.

    See Also
    --------
    GPATransporter : the flow itself (transport, generation, replay).
    imblearn.over_sampling.SMOTE : interpolation between neighbours of a class.

    Notes
    -----
    ``fit_resample`` needs at least two rows in each class it augments.  The synthetic rows
    are the trained particles themselves (the papers' augmentation), up to
    ``max_particles`` per class; beyond, new particles pushed through the learned flow
    (``transporter_.replay`` on fresh prior draws, paper 002 section 4).  With
    ``marginals=True`` (the default) each feature of them then goes through the increasing
    map onto the class's rows' distribution; ``marginals=False`` keeps the papers' rows.

    The default flow is short on purpose: ``fit_resample`` runs once per fold of a
    cross-validation and per candidate of a grid search.  The flows of all augmented
    classes are batched in one computation.

    References
    ----------
    H. Gu, P. Birmpa, Y. Pantazis, L. Rey-Bellet, M. A. Katsoulakis, "Lipschitz-regularized
    gradient flows and generative particle algorithms for high-dimensional scarce data".

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.augment import GPAAugmenter
    >>> rng = np.random.RandomState(0)
    >>> X = np.vstack([rng.normal(0, 1, (90, 2)), rng.normal(4, 1, (10, 2))])
    >>> y = np.array([0] * 90 + [1] * 10)
    >>> augmenter = GPAAugmenter(random_state=0)
    >>> X_res, y_res = augmenter.fit_resample(X, y)
    >>> np.bincount(y_res).tolist()
    [90, 90]
    >>> bool(np.all(X_res[:100] == X))
    True
    >>> bool(np.linalg.norm(X_res[100:].mean(0) - 4) < 1)
    True

    A longer flow, for a class of complex shape (slower in proportion to its steps):

    >>> from sklearn_gpa import GPATransporter
    >>> longer = GPATransporter(source="gaussian_fit", n_steps=200)
    >>> X_res, y_res = GPAAugmenter(transporter=longer, random_state=0).fit_resample(X, y)
    >>> len(X_res)
    180
    """

    _parameter_constraints: dict = {
        **BaseOverSampler._parameter_constraints,
        "transporter": [HasMethods(["fit", "replay"]), None],
        "oversampling_factor": [Interval(Real, 1, None, closed="left")],
        "tolerance": [Interval(Real, 0, None, closed="left"), None],
        "scale_features": ["boolean"],
        "discrete_features": [StrOptions({"auto"}), "array-like", None],
        "max_particles": [Interval(Integral, 1, None, closed="left"), None],
        "marginals": ["boolean"],
        "n_jobs": [Interval(Integral, 1, None, closed="left"), Options(Integral, {-1}), None],
    }

    def __init__(
        self,
        *,
        sampling_strategy="auto",
        random_state=None,
        transporter=None,
        oversampling_factor=3.0,
        tolerance=None,
        scale_features=True,
        discrete_features="auto",
        max_particles=1000,
        marginals=True,
        n_jobs=None,
    ):
        super().__init__(sampling_strategy=sampling_strategy)
        self.random_state = random_state
        self.transporter = transporter
        self.oversampling_factor = oversampling_factor
        self.tolerance = tolerance
        self.scale_features = scale_features
        self.discrete_features = discrete_features
        self.max_particles = max_particles
        self.marginals = marginals
        self.n_jobs = n_jobs

    def _fit_resample(self, X, y):
        rng = check_random_state(self.random_state)
        requested = {c: n for c, n in self.sampling_strategy_.items() if n > 0}
        self.augmented_classes_ = np.array(list(requested), dtype=y.dtype)
        # The flow runs on dense rows; a sparse X gets its synthetic rows appended sparse.
        dense = check_magnitude(X.toarray() if sparse.issparse(X) else X)
        self._fit_feature_scaling(dense)
        self._fit_discrete_features(dense)
        if not requested:
            self._set_empty_diagnostics()
            return X, y
        targets = [dense[y == c] for c in self.augmented_classes_]
        self._check_class_sizes(targets)
        n_new = list(requested.values())
        cap = np.inf if self.max_particles is None else self.max_particles
        counts = [
            max(math.ceil(self.oversampling_factor * len(t)), int(min(n, cap)))
            for n, t in zip(n_new, targets)
        ]
        scaled = [self._scale(t) for t in targets]
        transporter = self._transporter()
        prior = _ScaledPrior(transporter, scaled, rng)
        starts = [prior.draw(k, n, rng) for k, n in enumerate(counts)]
        transporter.set_params(random_state=rng.randint(np.iinfo(np.int32).max))
        with self._torch_threads():
            rows = self._synthetic_rows(transporter, prior, starts, scaled, counts, n_new, rng)
        labels = np.repeat(self.augmented_classes_, n_new)
        synthetic = self._snap_discrete(self._unscale(np.concatenate(rows)), targets, labels)
        self._fit_diagnostics(targets, synthetic, labels)
        return _append_rows(X, synthetic), np.concatenate([y, labels])

    def _synthetic_rows(self, transporter, prior, starts, scaled, counts, n_new, rng):
        """Per class, its synthetic rows in the augmenter's scaled units."""
        # Rows given to transporter_.transform without y go to the class whose prior is
        # likeliest (the transporter's _fit_router), instead of a classifier it would fit
        # on the draws: 0.1 s of a 0.4 s fit (benchmarks/README.md, "Routing by the prior").
        transporter._source_law = (prior.prior, prior.scaling)
        self.transporter_ = _fit_flows(transporter, starts, scaled)
        self.n_particles_ = dict(zip(self.augmented_classes_.tolist(), counts))
        particles = self._particles_at_termination(np.concatenate(starts), counts)
        # Each class: n_k of its particles if it has that many, else all of them and
        # n_k - M_k fresh draws replayed through its flow.
        n_kept = [min(n, m) for n, m in zip(n_new, counts)]
        rows = _by_class(particles[_uniform_subsets(counts, n_kept, rng)], n_kept)
        extra = [n - k for n, k in zip(n_new, n_kept)]
        if any(extra):
            fresh = _by_class(self._replayed(prior, extra, rng), extra)
            rows = [np.concatenate(pair) for pair in zip(rows, fresh)]
        if self.marginals:
            ends = _by_class(particles, counts)
            tables = [_quantile_table(t) for t in scaled]
            rows = [match_marginals(r, e, t) for r, e, t in zip(rows, ends, tables)]
        return rows

    @contextlib.contextmanager
    def _torch_threads(self):
        """The CPU threads the flows may use: one unless ``n_jobs`` says otherwise.

        torch's threads, and the OpenMP and BLAS threads of the numpy and scikit-learn work
        around the flows (the prior's fit and the particles' diagnostics).
        """
        if self.n_jobs == -1:
            yield
            return
        n = 1 if self.n_jobs is None else min(self.n_jobs, torch.get_num_threads())
        with cpu_threads(n), threadpool_limits(limits=n):
            yield

    # -- preparation ------------------------------------------------------------------
    def _fit_discrete_features(self, X):
        n_features = X.shape[1]
        if self.discrete_features is None:
            mask = np.zeros(n_features, dtype=bool)
        elif isinstance(self.discrete_features, str):
            mask = few_levels(X)
        else:
            mask = _feature_mask(self.discrete_features, n_features)
        self.discrete_features_ = np.flatnonzero(mask)

    def _snap_discrete(self, synthetic, targets, labels):
        """Move each discrete feature of a synthetic row to the nearest level of its class."""
        group = np.zeros(len(labels), dtype=int)
        for k, c in enumerate(self.augmented_classes_):
            group[labels == c] = k
        return FeatureLevels.fit(self.discrete_features_, targets).snap(synthetic, group)

    def _fit_feature_scaling(self, X):
        X = np.asarray(X, dtype=np.float64)
        self.feature_center_ = np.zeros(X.shape[1])
        self.feature_scale_ = np.ones(X.shape[1])
        if self.scale_features:
            spread = X.std(0)
            self.feature_center_ = X.mean(0)
            self.feature_scale_ = np.where(spread > 0, spread, 1.0)

    def _scale(self, X):
        return (np.asarray(X, dtype=np.float64) - self.feature_center_) / self.feature_scale_

    def _unscale(self, Z):
        return Z * self.feature_scale_ + self.feature_center_

    def _check_class_sizes(self, targets):
        for c, t in zip(self.augmented_classes_.tolist(), targets):
            if len(t) < 2:
                raise ValueError(
                    f"GPAAugmenter needs at least 2 samples of every class it augments, to "
                    f"learn where to move the particles; class {c!r} has {len(t)}. Leave it "
                    "out of sampling_strategy (e.g. a dict) or collect more samples."
                )

    def _transporter(self):
        transporter = default_transporter()
        if self.transporter is not None:
            transporter = clone(self.transporter)
        if self.scale_features and transporter.standardize in ("auto", True):
            # The features are already divided by their spreads: they share a unit now, and
            # one common scale keeps that geometry.
            transporter.set_params(standardize="common")
        # The flows are replayed from the particles' own starting points (the tolerance's
        # early stop), so every particle keeps its own path.  The flows run n_steps: the
        # termination step T_k (eq. 37) is chosen from their divergence afterwards.  (The
        # engine's stopping rule, stop="auto", judges a Gaussian fit of a class of a few
        # dozen rows indistinguishable from it before the first step, and the flow never runs.)
        return transporter.set_params(
            stop=None,
            conditional=True,
            prealign=None,
            out_of_sample="replay",
            warm_start=False,
        )

    def _particles_at_termination(self, starts, counts):
        """Particles of each flow at its termination step ``T_k`` (eq. 37)."""
        transporter = self.transporter_
        divergence = transporter.history_["divergence_per_flow"]
        stops = self._termination_steps(divergence)
        last = len(divergence) - 1
        self.termination_step_ = dict(zip(self.augmented_classes_.tolist(), stops.tolist()))
        # A flow the stopping rule froze before its first step has no estimate.
        self.divergence_ = {
            c: float(divergence[min(s, last), k]) if last >= 0 else float("nan")
            for k, (c, s) in enumerate(self.termination_step_.items())
        }
        early = stops < transporter.n_steps_
        if not early.any():
            return transporter.particles_
        # Replaying the stored critics up to T_k moves the starting points along the
        # training trajectories.
        flow_of_row = np.repeat(np.arange(len(counts)), counts)
        replayed = transporter.replay(starts, y=flow_of_row, stop_steps=stops)
        return np.where(early[flow_of_row][:, None], replayed, transporter.particles_)

    def _replayed(self, prior, counts, rng):
        """``counts[k]`` fresh prior draws of flow k pushed through the learned flow to ``T_k``."""
        starts = np.concatenate([prior.draw(k, n, rng) for k, n in enumerate(counts)])
        flows = np.repeat(np.arange(len(counts)), counts)
        stops = np.array(list(self.termination_step_.values()))
        stops = stops if (stops < self.transporter_.n_steps_).any() else None
        return self.transporter_.replay(starts, y=flows, stop_steps=stops)

    def _termination_steps(self, divergence):
        """Per flow, the first step from which the divergence estimate stays within tolerance."""
        n_steps, n_flows = divergence.shape
        if self.tolerance is None or n_steps == 0:
            return np.full(n_flows, n_steps)
        above = ~(divergence <= self.tolerance)  # a non-finite estimate is not within it
        last_above = np.where(above.any(0), n_steps - 1 - np.argmax(above[::-1], 0), -1)
        missed = above[-1]
        if missed.any():
            names = self.augmented_classes_[missed].tolist()
            warn_at_caller(
                f"The divergence estimate of classes {names} ended above tolerance="
                f"{self.tolerance} (last values {divergence[-1, missed].round(4).tolist()}); "
                "their particles after the last step are used. Raise the transporter's "
                "n_steps or the tolerance."
            )
        return last_above + 1

    # -- diagnostics ------------------------------------------------------------------
    def _set_empty_diagnostics(self):
        self.transporter_ = None
        self.n_particles_, self.termination_step_, self.divergence_ = {}, {}, {}
        self.memorization_ratio_ = {}
        self.nearest_original_distance_ = np.empty(0)

    def _fit_diagnostics(self, targets, synthetic, labels):
        distances = np.empty(len(synthetic))
        self.memorization_ratio_ = {}
        # Keys as the other per-class dicts have them (Python values: tolist() of the array;
        # an object array's items, such as pandas' str labels, have no tolist of their own).
        scaled_synthetic = self._scale(synthetic)
        for c, key, t in zip(self.augmented_classes_, self.augmented_classes_.tolist(), targets):
            rows = labels == c
            distances[rows] = _nearest_distances(synthetic[rows], t)
            t = self._scale(t)
            spacing = np.median(_nearest_distances(t, t, exclude_self=True))
            nearest = np.median(_nearest_distances(scaled_synthetic[rows], t))
            ratio = nearest / spacing if spacing > 0 else np.nan
            self.memorization_ratio_[key] = float(ratio)
        self.nearest_original_distance_ = distances
        close = {k: round(r, 2) for k, r in self.memorization_ratio_.items() if r < _CLOSE_RATIO}
        if close:
            # A class of a few rows (4: 0.47) comes back as near-copies; nothing said so.
            warn_at_caller(
                f"The synthetic rows of classes {few(list(close))} lie closer to their "
                f"originals than a fresh sample of the class would (memorization_ratio_ "
                f"{close}; about 1 for a fresh sample): near-copies of their few rows, which "
                "add little beyond random oversampling."
            )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


def _feature_mask(features, n_features):
    """Boolean mask from a mask or a list of feature indices, with a named error."""
    features = np.asarray(features)
    if features.dtype == bool:
        if features.shape != (n_features,):
            raise ValueError(
                f"discrete_features as a mask needs {n_features} entries (one per feature), "
                f"got shape {features.shape}."
            )
        return features
    valid = features.dtype.kind in "iu" and np.all(
        (features >= -n_features) & (features < n_features)
    )
    if features.size and not valid:
        raise ValueError(
            f"discrete_features must hold feature indices in [0, {n_features}) or be a "
            f"boolean mask, got {features.tolist()!r}."
        )
    mask = np.zeros(n_features, dtype=bool)
    mask[features.astype(int)] = True
    return mask


def _append_rows(X, rows):
    """``X`` with ``rows`` below it, in X's dtype (float64 for integer X) and format."""
    dtype = X.dtype if X.dtype.kind == "f" else np.float64
    if sparse.issparse(X):
        return sparse.vstack([X, sparse.csr_matrix(rows)], format=X.format, dtype=dtype)
    return np.concatenate([X.astype(dtype, copy=False), rows.astype(dtype)])


def _uniform_subsets(counts, n_keep, rng):
    """Indices into the stacked particles: ``n_keep[k]`` of flow k's ``counts[k]``, uniformly."""
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.concatenate(
        [
            offset + np.sort(rng.choice(count, keep, replace=False))
            for offset, count, keep in zip(offsets, counts, n_keep)
        ]
    )


def default_transporter():
    """The flow :class:`GPAAugmenter` runs when given none: short and cheap.

    A Gaussian fitted to each class as the prior (``source="gaussian_fit"``), so the flow
    only corrects what two moments miss; 50 steps of two critic updates each
    (``n_steps=50, n_critic=2``), which carry a particle up to ``50 * L * dt = 5``
    standardised units.  Everything else is :class:`GPATransporter`'s default.

    Returns
    -------
    transporter : GPATransporter

    Examples
    --------
    >>> from sklearn_gpa.augment import default_transporter
    >>> flow = default_transporter()
    >>> flow.source, flow.n_steps, flow.n_critic
    ('gaussian_fit', 50, 2)
    """
    return GPATransporter(source="gaussian_fit", n_steps=50, n_critic=2, stop=None)


class _ScaledPrior:
    """The transporter's generative prior, drawn in the units the transporter is fitted in."""

    def __init__(self, transporter, targets, rng):
        self.scaling = Standardization.fit(np.concatenate(targets), transporter.standardize)
        scaled = [self.scaling.transform(t) for t in targets]
        self.prior = Prior.fit(transporter.source, scaled, rng)

    def draw(self, flow, n, rng):
        """``n`` draws for flow ``flow``, as the transporter's generative mode would draw them."""
        return self.scaling.inverse_transform(self.prior.draw(flow, n, rng))


def _nearest_distances(queries, rows, *, exclude_self=False, chunk=2048):
    """Euclidean distance from each query to its nearest row (the query itself left out
    when ``exclude_self``: the queries are ``rows``).

    Plain NumPy in blocks of ``chunk`` queries: for the few hundred rows of a class this is
    a fraction of a millisecond, where a neighbour index costs its set-up and threads.
    """
    rows = np.asarray(rows, dtype=np.float64)
    squared_rows = np.einsum("ij,ij->i", rows, rows)
    out = np.empty(len(queries))
    for start in range(0, len(queries), chunk):
        block = np.asarray(queries[start : start + chunk], dtype=np.float64)
        squared = np.einsum("ij,ij->i", block, block)[:, None] + squared_rows - 2 * block @ rows.T
        if exclude_self:
            index = np.arange(len(block))
            squared[index, start + index] = np.inf
        out[start : start + chunk] = np.sqrt(np.maximum(squared.min(1), 0.0))
    return out


def _by_class(rows, counts):
    """Split stacked rows into consecutive blocks of ``counts`` rows."""
    return np.split(rows, np.cumsum(counts)[:-1])


def _fit_flows(transporter, starts, targets):
    """One flow per class: the prior draws are the source rows, the class rows the target.

    Integration mode with the draws as source rows gives each flow exactly the number of
    particles asked for, and keeps their starting points for replay.
    """
    flows = np.arange(len(starts))
    X, flow_labels, sample_domain = stack_domains(
        np.concatenate(starts),
        np.concatenate(targets),
        np.repeat(flows, [len(s) for s in starts]),
        np.repeat(flows, [len(t) for t in targets]),
    )
    return transporter.fit(X, flow_labels, sample_domain=sample_domain)
