"""GPATransporter: Lipschitz-regularised generative particle transport as a transformer."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils._set_output import _wrap_data_with_container
from sklearn.utils.validation import check_is_fitted

from ._base import DomainTransformer, class_index
from ._engine import ACTIVATIONS, DIVERGENCES, SOLVERS, resolve_device
from ._grouping import group_rows
from ._out_of_sample import NeighbourMap
from ._prior import SOURCES, Prior, split_counts
from ._scaling import SCALINGS, WARN_RATIO, Standardization, unit_spread_ratio
from ._training import append_history, check_continuation, check_flow_settings, train_flows
from .baselines import class_router, meanstd_map
from .utils import warn_at_caller

__all__ = ["GPATransporter"]

# Particles per target row when n_particles is None (paper 002 uses M = 3 N).
PARTICLES_PER_TARGET = 3


class GPATransporter(DomainTransformer):
    """Move samples onto a target distribution with a Lipschitz-regularised gradient flow.

    The generative particle algorithm (GPA) of Gu et al. transports particles along
    ``-grad phi*``, where ``phi*`` is the optimal L-Lipschitz discriminator of an
    f-divergence between the particles and the target sample.  The discriminator is an MLP
    (or a CNN for images) whose layers are spectrally normalised to ``L ** (1 / depth)``;
    it is warm-started across particle steps, so each step costs ``n_critic`` Adam updates.

    Two modes, chosen by ``fit``:

    * **integration** (``sample_domain`` given, skada's convention: ``>= 0`` source rows,
      ``< 0`` target rows): source rows are transported onto the target rows, one flow per
      class when both sides carry labels ``y``;
    * **generation** (no ``sample_domain``): ``X`` is the target; ``n_particles`` draws from
      the prior ``source`` are transported onto it, one flow per class when ``y`` is given.

    The sequence of discriminators *is* the fitted model: ``transform`` and ``sample``
    replay it on particles the fit never saw.  :class:`LatentGPA` and
    :class:`GPAAugmenter` take a ``GPATransporter`` as their ``transporter``.

    Read more in the :ref:`User Guide <user_guide>`.

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
        Maximum number of particle steps (the number of steps with ``stop=None``).  With
        the default ``stop="auto"`` most flows stop well before it; a flow that reaches it
        has not become indistinguishable from its target (see ``history_["stop_score"]``).
    solver : {"euler", "heun", "rk4"}, default="euler"
        Time integrator; Heun and RK4 retrain the discriminator at every stage.
    hidden_layer_sizes : tuple of int, default=(32, 32, 32)
        Widths of the discriminator's hidden layers (at least one); with
        ``discriminator="cnn"``, of the dense layers after the convolutions.
    discriminator : {"mlp", "cnn"}, default="mlp"
        ``"cnn"`` is the image discriminator of the paper's Table 4b for rows that are
        flattened images of ``image_shape``: 5 x 5 convolutions of stride 2 with
        ``conv_channels`` channels, dropout while it trains, then the dense layers; every
        convolution is normalised to its exact operator norm.  A CNN costs far more per
        step than the MLP: use a GPU, or :class:`LatentGPA` with an ``Autoencoder``, for
        long runs, and ``store_every`` to keep the stored flow small.
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
        Spectral normalisation after every update, or a gradient penalty of weight
        ``penalty``.
    penalty : float, default=10.0
        Weight of the gradient penalty when ``constraint="soft"``.
    tol : float or None, default=None
        Stop early once the kinetic energy ``mean |grad phi|^2`` of every flow is below
        ``tol`` (checked every ``log_every`` steps).
    stop : "auto" or None, default="auto"
        "auto": each flow stops (its particles, and its stored discriminators on replay,
        are frozen) once its particles are as close to its target rows as a fresh sample of
        the target would be, checked before the first step and every ``log_every`` steps;
        the other flows go on.  Closeness is measured on at most 1000 rows per side by two
        unbiased two-sample statistics (the energy distance and a Gaussian-kernel MMD at a
        quarter of the target's median distance), each against its spread between random
        halves of the target, and by the share of particles farther from every target row
        than 90 % of the target rows are from their nearest neighbour (strays between the
        target's clusters; at most 20 features), against its spread for a fresh sample.
        A flow whose source is already indistinguishable from its target does not move,
        and a flow stopped this way has not started to copy the target rows.  None runs
        every flow for ``n_steps``.
    source : {"gaussian_fit", "normal", "uniform", "logistic"}, default="gaussian_fit"
        Prior of the particles in generative mode, in standardised units: ``"gaussian_fit"``,
        a Gaussian with the mean and covariance of each class of the target (Ledoit-Wolf
        shrinkage of the correlations, so a feature constant in a class gets no variance);
        or the papers' fixed laws, standard normal, uniform and logistic with unit variance.
        Keep ``"gaussian_fit"`` when new samples are wanted from ``sample``: a fresh draw
        is only moved in the directions the stored discriminators pushed the training
        particles in, and keeps its prior noise in the others, which from a fixed law is
        noise.
    n_particles : int or None, default=None
        Number of particles in generative mode (split across classes by frequency);
        None uses 3 per target row (paper 002's ``M = 3 N``).  More particles than
        targets keeps the particles from settling on the target rows (copies) and trains
        the flow on more of the space that ``sample``'s fresh draws start from.
    conditional : "auto" or bool, default="auto"
        One flow per class.  "auto": when labels are given (on both sides, in
        integration) and every source class occurs among the targets.
    standardize : {"auto", "common", "per_feature"} or bool, default="auto"
        The units the flow works in; results are mapped back to the original units.  The
        median of the training rows is subtracted, then:

        * ``"common"``: all features are divided by one scale, the root of the total robust
          variance (interquartile ranges / 1.349).  It keeps the Euclidean geometry, which
          suits features that share a unit: pixels, gene expression, latent codes.
        * ``"per_feature"``: each feature is divided by its own robust spread (and all by
          the root of the number of features).  It suits tabular data whose features carry
          different units, where one common scale drowns the features of small spread.
        * ``"auto"`` (or True): ``"common"`` for data whose features look like they share
          a unit, at least 20 features whose ranges agree within a factor 10 (90th to 10th
          percentile of the non-constant features' ranges): pixels, genes, spectra;
          ``"per_feature"`` otherwise, since a table of a few features almost always mixes
          units even when their ranges happen to agree.

        Either way the data cloud has a radius of about one whatever its magnitude and
        dimension, so ``L`` and ``dt`` mean the same on every data set.  False runs in raw
        units, as the papers do.  ``"common"`` and False warn when the features' ranges
        differ by more than a factor 100.
    store_every : int, default=1
        Keep the discriminator of every ``store_every``-th step; replay uses each stored
        one for ``store_every`` steps (less memory, a coarser velocity field).
    batch_size : int or None, default=None
        Rows per flow and side in each discriminator update (sampled with replacement);
        None uses all rows.  Every particle still moves at every step.  Keep a few hundred
        rows or more per flow.
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
    prealign : {"meanstd"} or None, default=None
        Integration only.  "meanstd" first maps each flow's source rows by the per-feature
        affine map that matches their mean and standard deviation to the flow's target rows
        (the papers' baseline F), and starts the flow there, so the flow only fixes what
        two moments cannot.  The same map is applied to new rows in ``transform``.
    out_of_sample : {"replay", "nearest", "barycentric", "auto"}, default="replay"
        How ``transform`` moves rows of an integration fit.  "replay" pushes them through
        the stored flow (the papers' generated particles).  "nearest" moves each row by the
        inverse-distance-weighted displacement of its 5 nearest training source rows (as
        POT's out-of-sample maps do): robust with few rows in many dimensions.
        "barycentric" sends a row to the weighted mean of those neighbours' end points.
        "auto" picks, per class flow, the one of the two that predicts the training rows'
        end points better (leave-one-out); without class flows it is "nearest".
        Generative fits always replay.
    warm_start : bool, default=False
        When fitted already, ``fit`` on the same data continues the flow for ``n_steps``
        more steps from where it stopped (particles, critic weights, Adam state and all).
        Flows that the stopping rule (or a non-finite step) stopped stay where they are.

    Attributes
    ----------
    flow_ : LearnedFlow
        The stored discriminators; ``flow_.nbytes`` is its memory.
    history_ : dict of ndarray
        Per step: ``"divergence"`` and ``"kinetic_energy"`` (mean over flows, weighted by
        particles), their ``"_per_flow"`` versions ``(n_steps_, n_flows)``, ``"time"``
        (seconds since the start), and ``"stop_step"`` (per flow, the step at which the
        stopping rule froze it, -1 if it did not).  With ``stop="auto"``, per check of the
        rule: ``"stop_check_step"`` (steps run), and per check and flow ``"stop_score"``
        (the largest statistic / floor ratio; the flow stops at 1 or below),
        ``"stop_statistic"`` (the unbiased energy distance between particles and target) and
        ``"stop_floor"`` (its spread for a fresh sample).
    n_steps_ : int
        Steps actually run (fewer than ``n_steps`` after an early stop).
    failed_step_ : ndarray of shape (n_flows,)
        Per flow, the step at which it turned non-finite and stopped, or -1.
    stop_reason_ : str
        "converged" (the stopping rule froze every flow), "n_steps", "tol", "non-finite" or
        "interrupted" (Ctrl-C during ``fit`` keeps the steps finished so far and leaves a
        usable estimator).
    mode_ : str
        "integration" or "generation".
    classes_ : ndarray or None
        Class of each flow, None for a single unconditional flow.
    n_flows_ : int
    particles_ : ndarray of shape (n_particles, n_features)
        The trained particles, in original units (source rows, in integration).
    particle_labels_ : ndarray or None
        Class of each trained particle.
    center_, scale_ : ndarray, and float or ndarray
        The standardisation ``(X - center_) / scale_``: ``scale_`` is one float for a
        common scale, an array of shape (n_features,) per feature (zero and one when
        ``standardize=False``).
    prior_ : Prior or None
        The fitted prior of a generative fit.
    prealign_ : list of (ndarray, ndarray) or None
        Per flow, the pre-alignment ``z * a + b`` in standardised units.
    device_ : str
        Device the flow was trained on.
    image_shape_ : tuple of int or None
        (channels, height, width) of the CNN discriminator's input, None for the MLP.
    out_of_sample_ : list of str or None
        Per flow, the map ``transform`` uses for new rows of an integration fit ("nearest"
        or "barycentric"; what "auto" picked), None when rows are replayed.
    flow_assigner_ : classifier or None
        Sends rows given without ``y`` to class flows
        (:func:`~sklearn_gpa.baselines.class_router`); None for a single flow.
    critic_state_ : dict
        The discriminators' weights, Adam moments and power-iteration vectors at the end
        of the fit, from which ``warm_start=True`` continues.
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

    _parameter_constraints = {
        "f": [StrOptions(set(DIVERGENCES))],
        "alpha": [Interval(Real, 1, None, closed="neither"), None],
        "L": [Interval(Real, 0, None, closed="neither"), None],
        "dt": [Interval(Real, 0, None, closed="neither")],
        "n_steps": [Interval(Integral, 1, None, closed="left")],
        "solver": [StrOptions(set(SOLVERS))],
        "hidden_layer_sizes": ["array-like"],
        "discriminator": [StrOptions({"mlp", "cnn"})],
        "image_shape": ["array-like", None],
        "conv_channels": ["array-like"],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "n_critic": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "constraint": [StrOptions({"hard", "soft"})],
        "penalty": [Interval(Real, 0, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left"), None],
        "stop": [StrOptions({"auto"}), None],
        "source": [StrOptions(set(SOURCES))],
        "n_particles": [Interval(Integral, 1, None, closed="left"), None],
        "conditional": [StrOptions({"auto"}), "boolean"],
        "standardize": [StrOptions(set(SCALINGS)), "boolean"],
        "store_every": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "device": [str, None],
        "dtype": [StrOptions({"float32", "float64"})],
        "log_every": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callback": [callable, None],
        "prealign": [StrOptions({"meanstd"}), None],
        "out_of_sample": [StrOptions({"replay", "nearest", "barycentric", "auto"})],
        "warm_start": ["boolean"],
    }

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
        source="gaussian_fit",
        n_particles=None,
        conditional="auto",
        standardize="auto",
        store_every=1,
        batch_size=None,
        device="auto",
        dtype="float32",
        log_every=50,
        random_state=None,
        verbose=0,
        callback=None,
        prealign=None,
        out_of_sample="replay",
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

    def _fit(self, X, y, source):
        """Learn the flow (or continue it); return the moved source rows in integration."""
        params = self.get_params(deep=False)
        image_shape = check_flow_settings(params, X.shape[1])
        mode = "generation" if source is None else "integration"
        source = np.zeros(len(X), dtype=bool) if source is None else source
        groups = group_rows(
            y, source, conditional=self.conditional, generative=mode == "generation"
        )
        rng = check_random_state(self.random_state)
        resume = self._continues_fit()
        if resume:
            check_continuation(self, params, mode, groups.classes, image_shape)
            sources = self._final_particles_
        else:
            if groups.ignored is not None and mode == "integration":
                warn_at_caller(f"Labels ignored, one flow for all classes: {groups.ignored}.")
            self.mode_, self.image_shape_ = mode, image_shape
            self.classes_, self.n_flows_ = groups.classes, len(groups)
            self._scaling = Standardization.fit(X, self.standardize)
            self._warn_units(X)
        Z = self._scaling.transform(X)
        targets = [Z[t] for t in groups.targets]
        if not resume:
            starts = self._starting_points(Z, groups.sources, targets, rng)
            self.flow_assigner_ = _flow_router(starts)
            sources = [self._prealign(s, k) for k, s in enumerate(starts)]
        moved = self._train(sources, targets, rng, resume).particles
        if not resume:
            self.neighbour_map_ = self._neighbour_map(starts, sources, moved)
        elif self.neighbour_map_ is not None:
            self.neighbour_map_.extend(sources, moved)
        self._final_particles_ = moved
        particles = self._scaling.inverse_transform(np.concatenate(moved))
        labels = None
        if self.classes_ is not None:
            labels = np.repeat(self.classes_, [len(s) for s in sources])
        if mode == "integration":
            # Back to the order of the source rows in X.
            order = np.argsort(np.concatenate(groups.sources), kind="stable")
            particles, labels = particles[order], None if labels is None else labels[order]
        self.particles_, self.particle_labels_ = particles, labels
        return particles if mode == "integration" else None

    def _warn_units(self, X):
        """Warn when a setting that ignores units meets features of very different sizes."""
        if self._scaling.kind == "per_feature":
            return
        ratio = unit_spread_ratio(X)
        if ratio > WARN_RATIO:
            warn_at_caller(
                f"The features' ranges differ by a factor of {ratio:.0f} (90th to 10th "
                f"percentile), but standardize={self.standardize!r} treats all features "
                "alike: features of small range will be drowned. Use standardize='auto' or "
                "'per_feature' unless the features share a unit."
            )

    def _starting_points(self, Z, source_rows, targets, rng):
        """Standardised starting rows of each flow (before any pre-alignment).

        Integration starts from the source rows of ``Z`` (``source_rows[k]`` for flow k),
        generation from prior draws; the pre-alignment (``prealign_``) and the prior
        (``prior_``) are fitted here.
        """
        self.prior_ = self.prealign_ = None
        if self.mode_ == "integration":
            starts = [Z[s] for s in source_rows]
            if self.prealign == "meanstd":
                self.prealign_ = [meanstd_map(s, t) for s, t in zip(starts, targets)]
            return starts
        self.prior_ = Prior.fit(self.source, targets)
        total = self.n_particles or PARTICLES_PER_TARGET * sum(len(t) for t in targets)
        counts = split_counts(total, [len(t) for t in targets])
        return [self.prior_.draw(k, n, rng) for k, n in enumerate(counts)]

    def _train(self, sources, targets, rng, resume):
        device = resolve_device(self.device)
        self.device_ = str(device)
        trained = train_flows(
            self.get_params(deep=False),
            sources,
            targets,
            name=type(self).__name__,
            image_shape=self.image_shape_,
            device=device,
            seed=rng.randint(np.iinfo(np.int32).max),
            critic_state=self.critic_state_ if resume else None,
            frozen=(self.history_["stop_step"] >= 0) | (self.failed_step_ >= 0) if resume else None,
        )
        flow, history, failed = trained.flow, trained.history, trained.failed_step
        if resume:
            flow = self.flow_.extend(flow)
            history = append_history(self.history_, history, self.flow_.n_steps)
            failed = np.where(
                self.failed_step_ >= 0,
                self.failed_step_,
                np.where(failed >= 0, failed + self.flow_.n_steps, -1),
            )
        self.flow_, self.history_, self.failed_step_ = flow, history, failed
        self.critic_state_, self.stop_reason_ = trained.critic_state, trained.stop_reason
        self.n_steps_ = flow.n_steps
        return trained

    def _neighbour_map(self, starts, sources, moved):
        """The map of new rows by their nearest training rows (None when rows replay)."""
        if self.out_of_sample == "replay" or self.mode_ != "integration":
            return None
        # Without class flows one flow carries every kind of row: the mean of a row's
        # neighbours' end points would mix groups the fit never saw.
        method = "nearest" if self.out_of_sample == "auto" and self.classes_ is None else None
        return NeighbourMap.fit(starts, sources, moved, method or self.out_of_sample)

    # ---------------------------------------------------------------------- transform
    @property
    def center_(self):
        return self._scaling.center

    @property
    def scale_(self):
        return self._scaling.scale

    @property
    def out_of_sample_(self):
        return None if self.neighbour_map_ is None else list(self.neighbour_map_.methods)

    def flow_index(self, X, y=None):
        """Index of the flow that carries each row of ``X``.

        From the class ``y`` when given (after a conditional fit), else the class that
        ``flow_assigner_`` predicts from the row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None

        Returns
        -------
        flows : ndarray of int of shape (n_samples,)
        """
        X = self._validate_rows(X)
        return self._flows_of(self._scaling.transform(X), y)

    def _flows_of(self, Z, y):
        if self.flow_assigner_ is None:
            return np.zeros(len(Z), dtype=int)
        if y is not None:
            return class_index(self.classes_, y, len(Z))
        return self.flow_assigner_.predict(Z)

    def _prealign(self, Z, flows):
        """Apply the per-flow pre-alignment (identity without one); ``flows`` per row or one."""
        if self.prealign_ is None:
            return Z
        flows = np.broadcast_to(flows, (len(Z),))
        out = Z.copy()
        for k, (a, b) in enumerate(self.prealign_):
            out[flows == k] = Z[flows == k] * a + b
        return out

    def _move(self, X, y):
        Z = self._scaling.transform(X)
        flows = self._flows_of(Z, y)
        aligned = self._prealign(Z, flows)
        if self.neighbour_map_ is None:
            moved = self._replay(aligned, flows)
        else:
            moved = self.neighbour_map_.move(Z, aligned, flows, self._prealign)
        return self._scaling.inverse_transform(moved)

    def _replay(self, Z, flows, path=None, flow=None):
        """Replay the flow (or ``flow``) on standardised rows ``Z`` of flows ``flows``."""
        return (flow or self.flow_).replay_rows(Z, flows, device=self.device_, path=path)

    def replay(self, X, y=None, *, stop_steps=None):
        """Push rows through the stored flow, whatever ``out_of_sample`` says.

        These are the papers' generated particles: the training rows of an integration
        fit, replayed, end exactly at their particles.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Starting points (all rows move, after the pre-alignment of their flow).
        y : array-like of shape (n_samples,), default=None
            Class of each row (picks its flow); None routes rows as ``transform`` does.
        stop_steps : array-like of int of shape (n_flows,), default=None
            Flow k stops after ``stop_steps[k]`` steps (an early stop chosen after the fit,
            as :class:`GPAAugmenter`'s ``tolerance`` does); None runs every flow to the end.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features)
        """
        X = self._validate_rows(X)
        Z = self._scaling.transform(X)
        flows = self._flows_of(Z, y)
        flow = None if stop_steps is None else self.flow_.truncate(stop_steps)
        return self._scaling.inverse_transform(
            self._replay(self._prealign(Z, flows), flows, flow=flow)
        )

    def trajectories(self, X, *, every=10):
        """Positions of rows along the learned flow, every ``every`` steps.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Starting points (all rows move).
        every : int, default=10

        Returns
        -------
        path : ndarray of shape (n_snapshots, n_samples, n_features)
            Snapshots before steps 0, every, 2 * every, ... and after the last step.
        """
        X = self._validate_rows(X)
        Z = self._scaling.transform(X)
        flows = self._flows_of(Z, None)
        path = self._replay(self._prealign(Z, flows), flows, path=int(every))
        return self._scaling.inverse_transform(path)

    def sample(self, n_samples=1, *, y=None, random_state=None, clip=True):
        """Draw new samples: fresh prior draws pushed through the learned flow.

        The draws come from the fitted prior (``prior_``); with the default
        ``source="gaussian_fit"`` they start near the data and the flow corrects what a
        Gaussian misses.  The trained particles themselves are ``particles_``.

        Parameters
        ----------
        n_samples : int, default=1
        y : array-like of shape (n_samples,), default=None
            After a conditional fit, the class of each requested sample.  None draws the
            classes in proportion to the training targets.
        random_state : int, RandomState instance or None, default=None
        clip : bool, default=True
            Clip each feature to its range in the training rows, as ForestFlow does: a
            flow moves particles continuously, and a few end slightly past a bound that
            the data never crosses (a negative count, a pixel below 0).  False returns the
            flow's end points as they are.

        Returns
        -------
        X : ndarray or DataFrame of shape (n_samples, n_features)
            A DataFrame with the training columns' names when
            ``set_output(transform="pandas")`` is set.
        """
        check_is_fitted(self, "flow_")
        if self.mode_ != "generation":
            raise ValueError(
                "sample() needs a generative fit (fit(X) without sample_domain); this "
                "estimator was fitted for integration: use transform()."
            )
        if not isinstance(n_samples, Integral) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        rng = check_random_state(random_state)
        flows = self._requested_flows(n_samples, y, rng)
        Z = np.empty((n_samples, self.n_features_in_))
        for k in range(self.n_flows_):
            rows = flows == k
            Z[rows] = self.prior_.draw(k, int(rows.sum()), rng)
        X_new = self._scaling.inverse_transform(self._replay(Z, flows))
        if clip:
            X_new = self._scaling.clip(X_new)
        # The container of set_output(transform=...) (pandas, polars) with the feature names.
        return _wrap_data_with_container("transform", X_new, None, self)

    def _requested_flows(self, n_samples, y, rng):
        if self.classes_ is None:
            if y is not None:
                raise ValueError("y was given but the fit was not class-conditional.")
            return np.zeros(n_samples, dtype=int)
        if y is None:
            freq = np.bincount(np.searchsorted(self.classes_, self.particle_labels_))
            return rng.choice(self.n_flows_, size=n_samples, p=freq / freq.sum())
        return class_index(self.classes_, y, n_samples)


def _flow_router(starts):
    """A classifier of the flows' starting points routes new rows to flows (None for one)."""
    flows = np.repeat(np.arange(len(starts)), [len(s) for s in starts])
    return class_router(np.concatenate(starts), flows)
