"""GPATransporter: Lipschitz-regularised generative particle transport as a transformer."""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_random_state

from ._base import DomainTransformer
from ._engine import resolve_device
from ._fitted_flow import FittedFlowMixin
from ._grouping import group_rows
from ._out_of_sample import NeighbourMap
from ._prior import Prior, split_counts
from ._scaling import Standardization, warn_units_ignored
from ._training import FLOW_CONSTRAINTS, check_continuation, check_flow_settings, train_flows
from .utils import warn_at_caller

__all__ = ["GPATransporter"]

# Particles per target row when n_particles is None (paper 002 uses M = 3 N).
PARTICLES_PER_TARGET = 3


class GPATransporter(FittedFlowMixin, DomainTransformer):
    """Move samples onto a target distribution with a Lipschitz-regularised gradient flow.

    The generative particle algorithm (GPA) of Gu et al. transports particles along
    ``-grad phi*``, where ``phi*`` is the optimal L-Lipschitz discriminator of an
    f-divergence between the particles and the target sample.  The discriminator is an MLP
    (or a CNN for images) whose layers are spectrally normalised to ``L ** (1 / depth)``;
    it is warm-started across particle steps, so each step costs ``n_critic`` Adam updates.

    Two modes, chosen by ``fit``:

    * **integration** (``sample_domain`` given, skada's convention: ``>= 0`` source rows,
      ``< 0`` target rows): source rows are transported onto the target rows, one flow per
      class when both sides carry labels ``y``, and per source domain (batch) where
      ``sample_domain`` holds several, each with its own batch effect;
    * **generation** (no ``sample_domain``): ``X`` is the target; ``n_particles`` draws from
      the prior ``source`` are transported onto it, one flow per class when ``y`` is given.

    The sequence of discriminators *is* the fitted model: ``transform`` and ``sample``
    replay it on particles the fit never saw.  :class:`LatentGPA` and :class:`GPAAugmenter`
    take a ``GPATransporter`` as their ``transporter``.  :ref:`User Guide <user_guide>`.

    Parameters
    ----------
    f : {"kl", "kl_dv", "alpha", "chi2", "reverse_kl", "js"}, default="kl"
        The f-divergence.  ``"kl"`` is the Legendre form of Algorithm 1 with the shift
        ``nu``; ``"kl_dv"`` the Donsker-Varadhan form (logsumexp, more robust); ``"alpha"``
        uses ``alpha``; ``"chi2"`` is ``alpha=2``.  Prefer ``"alpha"`` for heavy-tailed
        targets, where KL can diverge.
    alpha : float > 1, default=None
        Order of the alpha-divergence (2 when None).
    L : float or None, default=10.0
        Lipschitz bound of the discriminator, the particles' speed limit (in standardised
        units when ``standardize``).  None removes the constraint (unstable: for study).
    dt : float, default=0.01
        Time step.  A particle moves at most ``L * dt`` per step; keep ``L * dt`` about 0.1
        in standardised units (the papers' CFL heuristic).
    n_steps : int, default=2000
        Maximum number of particle steps (the number of steps with ``stop=None``); a flow
        that reaches it has not become indistinguishable from its target.
    solver : {"euler", "heun", "rk4"}, default="euler"
        Time integrator; Heun and RK4 retrain the discriminator at every stage.
    hidden_layer_sizes : tuple of int, default=(32, 32, 32)
        Widths of the discriminator's hidden layers (at least one); with
        ``discriminator="cnn"``, of the dense layers after the convolutions.
    discriminator : {"mlp", "cnn"}, default="mlp"
        ``"cnn"`` is the image discriminator of the paper's Table 4b (5 x 5 convolutions of
        stride 2 with ``conv_channels`` channels, each normalised to its exact operator
        norm, then the dense layers) for rows that are flattened images of ``image_shape``.
        It costs far more per step: see the :ref:`user guide <user_guide_images>`.
    image_shape : tuple of int, default=None
        ``(height, width)`` or ``(channels, height, width)`` of the images whose pixels
        are the rows' features (channels first, as torch); needed by ``"cnn"``.
    conv_channels : tuple of int, default=(16, 32, 64)
        Output channels of the CNN's convolutions.
    activation : {"relu", "leaky_relu", "smooth_relu", "groupsort"}, default="relu"
        ``"smooth_relu"`` is the C^3 activation of the paper (eq. 35, eps=0.5), which lets
        particles slow down smoothly.  ``"groupsort"`` is the tight Lipschitz network
        (MaxMin activations, orthonormal weights; even hidden widths), whose gradient norm
        can reach ``L``; dense critics only.
    n_critic : int, default=5
        Discriminator updates per particle step.
    learning_rate : float, default=5e-3
        Adam step of the discriminator.
    constraint : {"hard", "soft"}, default="hard"
        Spectral normalisation after every update, or a gradient penalty (``penalty``).
    penalty : float, default=10.0
        Weight of the gradient penalty when ``constraint="soft"``.
    tol : float or None, default=None
        Stop once every flow's kinetic energy ``mean |grad phi|^2`` is below ``tol``.
    stop : "auto" or None, default="auto"
        "auto": each flow stops (is frozen, also on replay) once its particles are as close
        to its target rows as a fresh sample of the target would be, by two two-sample
        statistics and the share of stray particles, checked every ``log_every`` steps; the
        other flows go on; in integration a flow moves only if it starts beyond a fresh
        sample's usual range, in generation one whose score has not fallen by 10 % in 400
        steps stops at its best check.  A flow it never stops whose score ends above twice
        its best goes back to that check.  None runs ``n_steps``.  See
        :ref:`user_guide_stopping`.
    source : {"copula_fit", "mixture_fit", "gaussian_fit", "normal", "uniform", "logistic"}
        Prior of the particles in generative mode (default "copula_fit"), per class: each
        feature's quantiles joined by BIC's Gaussian mixture of the normal scores (up to 50
        features), or their kernel density (where BIC keeps one Gaussian, and always above 50
        features); "mixture_fit": BIC's mixture of the values; fixed laws: noisy samples.
    n_particles : int or None, default=None
        Number of particles in generative mode (split across classes by frequency);
        None uses 3 per target row (paper 002's ``M = 3 N``), which keeps particles from
        settling on the target rows (copies).
    conditional : "auto" or bool, default="auto"
        One flow per class.  "auto": when labels are given (on both sides, in
        integration) and every source class occurs among the targets.
    standardize : {"auto", "common", "per_feature"} or bool, default="auto"
        The flow's units (results come back in the original ones): less the median,
        ``"common"`` divides all features by one robust scale (keeps the Euclidean
        geometry: pixels, genes, codes), ``"per_feature"`` each by its own robust spread
        (mixed units), and ``"auto"`` (or True) picks ``"common"`` for at least 20
        features whose ranges agree within a factor 10 (one of over 10 times the median
        range, an age among genes, scaled on its own), else ``"per_feature"``.  ``L`` and
        ``dt`` then mean the same on every data set.  False: raw units, as the papers; it
        and ``"common"`` warn where ranges differ by over a factor 100.
    store_every : int, default=1
        Keep the discriminator of every ``store_every``-th step; replay uses each stored
        one for ``store_every`` steps (less memory, a coarser velocity field).
    store_encoding : {"auto", "delta16", "delta8", "float16", "float32"}, default="auto"
        How the stored discriminators are kept: as trained ("float32"), rounded, or as
        compressed changes between steps (about 1/2 and 1/4 of the size); the smaller ones
        replay a few rows along another path.  "auto": "delta16" in generation, "float32"
        in integration.  See the :ref:`user guide <user_guide_memory>`.
    batch_size : "auto", int or None, default="auto"
        Rows per flow and side in each discriminator update (drawn with replacement; None:
        all); every particle still moves at every step.  "auto": all rows up to 16 384 per
        flow and side, 16 384 drawn rows above, so a step's cost is linear in the rows.
    device : str, default="auto"
        "auto" uses CUDA when available, else the CPU.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the computation.
    log_every : int, default=50
        The host looks at the device every ``log_every`` steps (stopping tests, progress).
    random_state : int, RandomState instance or None, default=None
        Seeds the discriminator initialisation and the prior draws.
    verbose : int, default=0
        1: a progress bar (steps, rate, elapsed time, divergence and kinetic energy,
        updated every ``log_every`` steps) closed by a one-line summary, on stderr; 2: also
        a line per update.
    callback : callable or None, default=None
        Called as ``callback(step, divergence, kinetic_energy)`` every ``log_every`` steps
        (arrays over flows); replaces the ``verbose`` progress bar.
    prealign : {"auto", "shrunk", "meanstd"} or None, default="auto"
        Integration only: each flow starts from its source rows with their per-feature mean and std
        matched to its target rows' ("meanstd", the papers' baseline F; "shrunk", shrunk as ComBat
        does), so the flow fixes only what two moments cannot; the scaling is fitted on the target
        rows.  "auto": "shrunk", one map for all flows of a source domain, medians for heavy tails,
        the covariance where rank correlations differ, none where one source is a fresh sample of
        its target (``LatentGPA`` runs it on its codes; None in ``GPAAugmenter``).
        :ref:`user_guide_prealign`.
    out_of_sample : {"auto", "replay", "nearest", "barycentric"}, default="auto"
        How ``transform`` moves rows an integration fit was not fitted on: "nearest" by the
        inverse-distance-weighted displacement of their 5 nearest training source rows;
        "barycentric" to the weighted mean of their end points; "auto" picks, per class
        flow, the better of the two by leave-one-out on at most 4 096 rows ("nearest"
        without class flows); "replay" through the stored flow, which pushes a row beyond
        the training rows' range at every step.  Generative fits replay.
    warm_start : bool, default=False
        When fitted already, ``fit`` on the same data (other data raise) continues the flow
        ``n_steps`` more steps from where it stopped (particles, critic weights, Adam state
        and all); flows that the stopping rule (or a non-finite step) stopped stay put.

    Attributes
    ----------
    flow_ : LearnedFlow
        The stored discriminators; ``flow_.nbytes`` is its memory.
    history_ : dict of ndarray
        Per step ``"divergence"``, ``"kinetic_energy"`` (and their ``"_per_flow"``
        versions) and ``"time"``; per flow ``"stop_step"`` (-1 if the rule did not stop
        it), ``"stop_rolled_back"``, ``"stop_stalled"`` and ``"critic_redrawn"`` (times
        its critic went flat, every unit inactive on the particles, and was drawn anew);
        per check of the rule
        ``"stop_check_step"``, ``"stop_score"``, ``"stop_statistic"``, ``"stop_floor"``.
        :ref:`user_guide_history`.
    n_steps_ : int
        Steps actually run (fewer than ``n_steps`` after an early stop).
    failed_step_ : ndarray of shape (n_flows,)
        Per flow, the step at which it turned non-finite and stopped, or -1.
    stop_reason_ : str
        "converged" (the stopping rule froze every flow), "stalled" (it froze every flow,
        some for no longer nearing their targets), "n_steps", "tol", "non-finite" or
        "interrupted" (Ctrl-C during ``fit``: the steps finished so far are kept).
    mode_ : str
        "integration" or "generation".
    classes_ : ndarray or None
        Classes of the flows (one per class and source domain), None for flows of all classes.
    flow_domains_ : ndarray or None
        With several source domains, each flow's (one per domain and class); None for one.
    n_flows_ : int
    particles_ : ndarray of shape (n_particles, n_features)
        The trained particles, in original units (source rows, in integration).
    particle_labels_ : ndarray or None
        Class of each trained particle.
    center_, scale_ : ndarray, and float or ndarray
        The standardisation ``(X - center_) / scale_`` (``scale_`` one float or per feature).
    prior_ : Prior or None
        The fitted prior of a generative fit.
    prealign_ : list of (ndarray, ndarray) or None
        Per flow, the map ``z * a + b`` in standardised units (``z @ a + b``: a matrix).
    device_ : str
        Device the flow was trained on.
    image_shape_ : tuple of int or None
        (channels, height, width) of the CNN discriminator's input, None for the MLP.
    out_of_sample_ : list of str or None
        Per flow, the map ``transform`` uses for new rows (None when rows are replayed).
    flow_assigner_ : object with ``predict`` or None
        Sends rows given without ``y`` to class flows: the Bayes rule of the prior in
        generation, :func:`~sklearn_gpa.baselines.class_router` in integration; None for one.
    critic_state_ : dict
        The discriminators' weights and optimiser state, for ``warm_start=True``.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Defined when X has string column names.

    See Also
    --------
    LatentGPA : the same flow in the latent space of an encoder.
    GPAAugmenter : class-wise augmentation for imbalanced-learn pipelines.

    References
    ----------
    H. Gu, P. Birmpa, Y. Pantazis, L. Rey-Bellet, M. A. Katsoulakis, "Lipschitz-regularized
    gradient flows and generative particle algorithms for high-dimensional scarce data".

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa import GPATransporter
    >>> from sklearn_gpa.utils import stack_domains
    >>> rng = np.random.RandomState(0)
    >>> Xs, Xt = rng.normal(0, 1, (100, 2)), rng.normal(3, 1, (100, 2))
    >>> X, _, sample_domain = stack_domains(Xs, Xt)
    >>> gpa = GPATransporter(n_steps=200, random_state=0).fit(X, sample_domain=sample_domain)
    >>> moved = gpa.transform(rng.normal(0, 1, (5, 2)))
    >>> bool(np.all(np.abs(moved.mean(0) - 3) < 1))
    True
    """

    _parameter_constraints = FLOW_CONSTRAINTS

    def __init__(
        self,
        *,
        f="kl",
        alpha=None,
        L=10.0,
        dt=0.01,
        n_steps=2000,
        solver="euler",
        hidden_layer_sizes=(32, 32, 32),
        discriminator="mlp",
        image_shape=None,
        conv_channels=(16, 32, 64),
        activation="relu",
        n_critic=5,
        learning_rate=5e-3,
        constraint="hard",
        penalty=10.0,
        tol=None,
        stop="auto",
        source="copula_fit",
        n_particles=None,
        conditional="auto",
        standardize="auto",
        store_every=1,
        store_encoding="auto",
        batch_size="auto",
        device="auto",
        dtype="float32",
        log_every=50,
        random_state=None,
        verbose=0,
        callback=None,
        prealign="auto",
        out_of_sample="auto",
        warm_start=False,
    ):
        self.f = f
        self.alpha = alpha
        self.L = L
        self.dt = dt
        self.n_steps = n_steps
        self.solver = solver
        self.hidden_layer_sizes = hidden_layer_sizes
        self.discriminator = discriminator
        self.image_shape = image_shape
        self.conv_channels = conv_channels
        self.activation = activation
        self.n_critic = n_critic
        self.learning_rate = learning_rate
        self.constraint = constraint
        self.penalty = penalty
        self.tol = tol
        self.stop = stop
        self.source = source
        self.n_particles = n_particles
        self.conditional = conditional
        self.standardize = standardize
        self.store_every = store_every
        self.store_encoding = store_encoding
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.log_every = log_every
        self.random_state = random_state
        self.verbose = verbose
        self.callback = callback
        self.prealign = prealign
        self.out_of_sample = out_of_sample
        self.warm_start = warm_start

    # ----------------------------------------------------------------------------- fit
    def _continues_fit(self):
        return self.warm_start and hasattr(self, "flow_")

    def _fit(self, X, y, source, domains):
        """Learn the flow (or continue it); return the moved source rows in integration."""
        params = self.get_params(deep=False)
        image_shape = check_flow_settings(params, X.shape[1])
        mode = "generation" if source is None else "integration"
        source = np.zeros(len(X), dtype=bool) if source is None else source
        groups = group_rows(
            y, source, domains=domains, conditional=self.conditional, generative=not source.any()
        )
        rng, resume = check_random_state(self.random_state), self._continues_fit()
        self._fingerprint = check_continuation(
            self, resume, params, mode, groups, image_shape, (X, y, source, domains)
        )
        if resume:
            sources = self._final_particles_
        else:
            if groups.ignored is not None and mode == "integration":
                warn_at_caller(f"Labels ignored, one flow for all classes: {groups.ignored}.")
            self._set_layout(mode, image_shape, groups)
            rows = self._scaling_rows(mode, groups.targets)
            self._scaling = Standardization.fit(X[rows], self.standardize)
            warn_units_ignored(X, self._scaling.kind, self.standardize)
            self._fit_levels(X, groups.targets, groups.sources)
        Z = self._scaling.transform(X)
        targets = [Z[t] for t in groups.targets]
        if not resume:
            starts = self._starting_points(Z, groups.sources, targets, rng)
            self.flow_assigner_ = self._fit_router(starts)
            sources = [self._prealign(s, k) for k, s in enumerate(starts)]
        moved = self._train(params, sources, targets, rng, resume).particles
        if not resume:
            self.neighbour_map_ = NeighbourMap.for_fit(
                self.out_of_sample, mode, self.classes_, starts, sources, moved
            )
        elif self.neighbour_map_ is not None:
            self.neighbour_map_.extend(sources, moved)
        order = None  # integration: back to the order of the source rows in X
        if mode == "integration":
            order = np.argsort(np.concatenate(groups.sources), kind="stable")
        self._store_particles(moved, order)
        return self.particles_ if mode == "integration" else None

    def _starting_points(self, Z, source_rows, targets, rng):
        """Standardised starting rows of each flow: source rows (``source_rows[k]`` of flow k)
        or prior draws; fits ``prealign_`` and ``prior_``."""
        self.prior_ = self.prealign_ = None
        if self.mode_ == "integration":
            starts = [Z[s] for s in source_rows]
            self.prealign_ = self._fit_prealign(starts, targets)
            return starts
        self.prior_ = Prior.fit(self.source, targets, rng)
        total = self.n_particles or PARTICLES_PER_TARGET * sum(len(t) for t in targets)
        counts = split_counts(total, [len(t) for t in targets])
        return [self.prior_.draw(k, n, rng) for k, n in enumerate(counts)]

    def _train(self, params, sources, targets, rng, resume):
        device = resolve_device(self.device)
        self.device_ = str(device)
        trained = train_flows(
            params,
            sources,
            targets,
            name=type(self).__name__,
            mode=self.mode_,
            image_shape=self.image_shape_,
            device=device,
            seed=rng.randint(np.iinfo(np.int32).max),
            critic_state=self.critic_state_ if resume else None,
            frozen=(self.history_["stop_step"] >= 0) | (self.failed_step_ >= 0) if resume else None,
        )
        if resume:
            trained = trained.continuing(self.flow_, self.history_, self.failed_step_)
        self.flow_, self.history_ = trained.flow, trained.history
        self.failed_step_ = trained.failed_step
        self.critic_state_, self.stop_reason_ = trained.critic_state, trained.stop_reason
        self.n_steps_ = trained.flow.n_steps
        return trained
