"""GPATransporter: Lipschitz-regularised generative particle transport as a transformer."""

from __future__ import annotations

import dataclasses
import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, _fit_context
from sklearn.covariance import ledoit_wolf
from sklearn.neighbors import NearestNeighbors
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._engine import (
    ACTIVATIONS,
    DIVERGENCES,
    SOLVERS,
    pack_rows,
    resolve_device,
    resolve_dtype,
    run_gpa,
    unpack_rows,
)
from ._engine.device import limit_blas_threads
from .baselines import class_router, meanstd_map
from .utils import check_image_shape, check_sample_domain, check_sizes, known_labels

__all__ = ["GPATransporter"]

SOURCES = ("normal", "uniform", "logistic", "gaussian_fit")

# A full covariance for the moment-matched prior is kept up to this many features;
# above it the prior is diagonal (a d x d factor per class would dominate memory).
_FULL_COVARIANCE_MAX_FEATURES = 500

GPA_PARAMETER_CONSTRAINTS = {
    "f": [StrOptions(set(DIVERGENCES))],
    "alpha": [Interval(Real, 1, None, closed="neither"), None],
    "L": [Interval(Real, 0, None, closed="neither"), None],
    "dt": [Interval(Real, 0, None, closed="neither")],
    "n_steps": [Interval(Integral, 1, None, closed="left")],
    "solver": [StrOptions(set(SOLVERS))],
    "hidden_layer_sizes": ["array-like"],
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
    "standardize": ["boolean"],
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


class GPATransporter(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Move samples onto a target distribution with a Lipschitz-regularised gradient flow.

    The generative particle algorithm (GPA) of Gu et al. transports particles along
    ``-grad phi*``, where ``phi*`` is the optimal L-Lipschitz discriminator of an
    f-divergence between the particles and the target sample.  The discriminator is an MLP
    whose layers are spectrally normalised to ``L ** (1 / depth)``; it is warm-started
    across particle steps, so each step costs ``n_critic`` Adam updates.

    Two modes, chosen by ``fit``:

    * **integration** (``sample_domain`` given, skada's convention: ``>= 0`` source rows,
      ``< 0`` target rows): source rows are transported onto the target rows, one flow per
      class when both sides carry labels ``y``;
    * **generation** (no ``sample_domain``): ``X`` is the target; ``n_particles`` draws from
      the prior ``source`` are transported onto it, one flow per class when ``y`` is given.

    The sequence of discriminators *is* the fitted model: ``transform`` and ``sample``
    replay it on particles the fit never saw.

    Parameters
    ----------
    f : {"kl", "kl_dv", "alpha", "chi2", "reverse_kl", "js"}, default="kl"
        The f-divergence.  ``"kl"`` is the Legendre form of Algorithm 1 with the shift
        ``nu``; ``"kl_dv"`` the Donsker-Varadhan form ``E_P[phi] - log E_Q[exp phi]``
        (logsumexp, more robust); ``"alpha"`` uses ``alpha``; ``"chi2"`` is ``alpha=2``.
        Prefer ``"alpha"`` for heavy-tailed targets, where KL can diverge.
    alpha : float > 1, default=None
        Order of the alpha-divergence (2 when None).
    L : float or None, default=10.0
        Lipschitz bound of the discriminator, the particles' speed limit (in standardised
        units when ``standardize``: the discriminator may change by at most L across one
        standard deviation of the data).  None removes the constraint (unstable: for study).
    dt : float, default=0.01
        Time step.  A particle moves at most ``L * dt`` per step; keep ``L * dt`` about 0.1
        in standardised units (the papers' CFL heuristic, dt proportional to 1 / L).  The
        defaults were chosen on a two-class 2-D transport problem, the mixture of Gaussians
        and the gene-expression benchmark (129 latent dimensions).
    n_steps : int, default=300
        Maximum number of particle steps (the number of steps with ``stop=None``).
    solver : {"euler", "heun", "rk4"}, default="euler"
        Time integrator; Heun and RK4 retrain the discriminator at every stage.
    hidden_layer_sizes : tuple of int, default=(32, 32, 32)
        Widths of the discriminator's hidden layers (at least one); with
        ``discriminator="cnn"``, of the dense layers after the convolutions.
    discriminator : {"mlp", "cnn"}, default="mlp"
        ``"cnn"`` is the image discriminator of the paper's Table 4b for rows that are
        flattened images of ``image_shape``: 5 x 5 convolutions of stride 2 with
        ``conv_channels`` channels, each followed by the activation and (while the
        discriminator trains) dropout of rate 0.3, then the dense layers.  Every convolution
        is normalised to its exact operator norm, so the network stays L-Lipschitz.  A CNN
        costs far more than the MLP per step (about 0.6 s per critic update for 10 classes
        of 80 MNIST-sized images with ``conv_channels=(8, 16, 32)`` on 2 CPU cores): use a
        GPU, or ``LatentGPA`` with an ``Autoencoder``, for long runs.  The divergence in
        ``history_`` is measured on the training network, dropout included (noisier than the
        MLP's); particles always move by the network without dropout.  The stored flow holds
        every step's weights: about 10^6 parameters per step for 10 MNIST classes at the
        default channels, so long CNN runs want ``store_every``.
    image_shape : tuple of int, default=None
        ``(height, width)`` or ``(channels, height, width)`` of the images whose pixels
        are the rows' features (channels first, as torch); needed by ``"cnn"``.
    conv_channels : tuple of int, default=(16, 32, 64)
        Output channels of the CNN's convolutions.
    activation : {"relu", "leaky_relu", "smooth_relu"}, default="relu"
        ``"smooth_relu"`` is the C^3 activation of the paper (eq. 35, eps=0.5), which lets
        particles slow down smoothly.
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
        the other flows go on.  Closeness is measured by two unbiased two-sample statistics
        (the energy distance and a Gaussian-kernel MMD at a quarter of the target's median
        distance) on at most 1000 rows per side, each against its spread between random
        halves of the target.  A flow whose source is already indistinguishable from its
        target does not move; a flow stopped this way has not started to copy the target
        rows.  None runs every flow for ``n_steps``.
    source : {"normal", "uniform", "logistic", "gaussian_fit"}, default="normal"
        Prior of the particles in generative mode, in standardised units:
        standard normal, uniform and logistic with unit variance, or ``"gaussian_fit"``, a
        Gaussian with the mean and (Ledoit-Wolf) covariance of each class of the target.
        In many dimensions prefer ``"gaussian_fit"`` when new samples are wanted from
        ``sample``: an MLP discriminator's gradient lies in the span of its first layer's
        weights, so a fresh draw is only moved in the directions that the stored
        discriminators pushed the training particles in, and keeps its prior noise in the
        others.  On MNIST from 200 images (``benchmarks/bench_mnist.py``) ``sample()``
        gave 97 % recognisable digits from ``"gaussian_fit"`` and 36 % from
        ``"logistic"``, whose trained particles were 99 % recognisable.
    n_particles : int or None, default=None
        Number of particles in generative mode (split across classes by frequency);
        None uses as many as target rows.  More particles than targets keeps the samples
        diverse (paper 002, section 4).
    conditional : "auto" or bool, default="auto"
        One flow per class.  "auto": when labels are given (on both sides, in
        integration) and every source class occurs among the targets.
    standardize : bool, default=True
        Work in standardised units: subtract the median of the training rows and divide by
        one common scale, the root of the total robust variance (the sum over features of
        (interquartile range / 1.349)^2, the variances for Gaussian data, robust to heavy
        tails).  The data cloud then has a radius of about one whatever its magnitude and
        its dimension, and one scale for all features keeps the Euclidean geometry, so the
        same L and dt suit 2 features and 200; results are mapped back to the original
        units.  False runs in raw units, as the papers do.
    store_every : int, default=1
        Keep the discriminator of every ``store_every``-th step.  Replay then uses each
        stored discriminator for ``store_every`` steps: memory shrinks by that factor,
        at the price of a coarser velocity field for ``transform``/``sample``.
    batch_size : int or None, default=None
        Rows per flow and side in each discriminator update (sampled with replacement);
        None uses all rows.  Every particle still moves at every step, so the cost per step
        is the updates on ``batch_size`` rows plus one gradient evaluation on all particles:
        it grows linearly in the number of particles.  Measured at 20 000 particles
        (``benchmarks/bench_batch_size.py``): ``batch_size=2000`` cut the time per step
        8x (2-D mixture) and 4x (50-D Gaussian); the 2-D mixture was transported as well as
        with the full batch from 100 rows up, the 50-D Gaussian's energy distance to the
        target rose from 0.018 (full) to 0.021-0.028 for 500-5000 rows and 0.033 for 100.
        Keep a few hundred rows or more per flow.
    device : str, default="auto"
        "auto" uses CUDA when available, else the CPU.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the computation.
    log_every : int, default=50
        The host looks at the device every ``log_every`` steps (stopping tests, progress).
    random_state : int, RandomState instance or None, default=None
        Seeds the discriminator initialisation and the prior draws.
    verbose : int, default=0
        Print the divergence and kinetic energy every ``log_every`` steps.
    callback : callable or None, default=None
        Called as ``callback(step, divergence, kinetic_energy)`` every ``log_every`` steps
        (arrays over flows), e.g. for a progress bar; replaces the ``verbose`` printout.
    prealign : {"meanstd"} or None, default=None
        Integration only.  "meanstd" first maps each flow's source rows by the per-feature
        affine map that matches their mean and standard deviation to the flow's target rows
        (the papers' baseline F), and starts the flow there: the flow then only has to fix
        what two moments cannot, so it is short, and class means line up exactly.  The
        same map is applied to new rows in ``transform``.  None starts from the source rows
        themselves (Algorithm 1 as published).
    out_of_sample : {"replay", "nearest", "barycentric", "auto"}, default="replay"
        How ``transform`` moves rows of an integration fit.  "replay" pushes them through
        the stored flow (the papers' generated particles): exact for the training rows and
        good where the training rows sample the source densely.  "nearest" moves each row
        by the inverse-distance-weighted displacement of its 5 nearest training source rows
        (as POT's out-of-sample OT maps do): robust with few rows in many dimensions, where
        a replayed row far from every training path can keep moving (on the gene-expression
        benchmark, 97 rows in 129 latent dimensions, replayed held-out rows ended twice as
        far from the target as they started).  "barycentric" sends a row to the weighted
        mean of those neighbours' end points: closer in distribution on that benchmark
        (W2 / D 0.64 against 0.73 with ``residual="drop"``), but rows lose their own
        deviation from their neighbours.  "auto" picks, per class flow, the one of the two
        that predicts the training rows' end points better, each row from its 5 nearest
        other rows (leave-one-out): "nearest" where the flow moves neighbouring rows alike,
        "barycentric" where it scatters them.  Without class flows (no labels) "auto" is
        "nearest": a label-free flow carries every group of rows, and the mean of a new
        row's neighbours' end points mixes groups (on GSE1992 -> GSE4335 without labels,
        a target-trained classifier recognised ER in a balanced 52 % of held-out rows moved
        by "barycentric", 70 % by "nearest").  Generative fits always replay.
    warm_start : bool, default=False
        When fitted already, ``fit`` on the same data continues the flow for ``n_steps``
        more steps from where it stopped (particles, critic weights, Adam state and all);
        the stored flow and ``history_`` grow accordingly.  Flows that the stopping rule
        (or a non-finite step) stopped stay where they are.

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
        (the larger statistic / floor ratio; the flow stops at 1 or below),
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
    particles_ : ndarray of shape (n_particles, n_features)
        The trained particles, in original units (source rows, in integration).
    particle_labels_ : ndarray or None
        Class of each trained particle.
    center_, scale_ : ndarray and float
        The standardisation (zero and one when ``standardize=False``).
    device_ : str
        Device the flow was trained on.
    image_shape_ : tuple of int or None
        (channels, height, width) of the CNN discriminator's input, None for the MLP.
    out_of_sample_ : list of str or None
        Per flow, the map ``transform`` uses for new rows of an integration fit ("nearest"
        or "barycentric"; what "auto" picked), None when rows are replayed.
    flow_assigner_ : KNeighborsClassifier, RidgeClassifierCV or None
        Sends rows given without ``y`` to class flows: the classifier of the flows'
        starting points that cross-validates better
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

    __metadata_request__fit = {"sample_domain": True}
    __metadata_request__transform = {"sample_domain": True}
    __metadata_request__score = {"sample_domain": True}

    _parameter_constraints = {
        **GPA_PARAMETER_CONSTRAINTS,
        "discriminator": [StrOptions({"mlp", "cnn"})],
        "image_shape": ["array-like", None],
        "conv_channels": ["array-like"],
    }

    def __init__(
        self,
        *,
        f="kl",
        alpha=None,
        L=10.0,
        dt=0.01,
        n_steps=300,
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
        source="normal",
        n_particles=None,
        conditional="auto",
        standardize=True,
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
    @limit_blas_threads
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, sample_domain=None):
        """Learn the flow.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Target rows (generation), or source and target rows marked by
            ``sample_domain`` (integration).
        y : array-like of shape (n_samples,), default=None
            Class labels; -1 or NaN marks an unknown label (skada's convention).
        sample_domain : array-like of shape (n_samples,), default=None
            ``>= 0`` for source rows, ``< 0`` for target rows.

        Returns
        -------
        self : GPATransporter
        """
        self._fit(X, y, sample_domain)
        return self

    @limit_blas_threads
    def fit_transform(self, X, y=None, *, sample_domain=None):
        """Fit, then return ``X`` with the rows moved by the flow.

        In integration the source rows are replaced by the trained particles themselves
        and target rows are returned unchanged; in generation every row is pushed through
        the learned flow (as ``fit(X).transform(X)``).

        Parameters
        ----------
        X, y, sample_domain : see ``fit``.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features)
        """
        X_checked, source = self._fit(X, y, sample_domain)
        if self.mode_ == "generation":
            return self.transform(X)
        out = np.array(X_checked, dtype=self._output_dtype(X_checked), copy=True)
        out[source] = self.particles_
        return out

    def _validate_params_extra(self):
        check_sizes(self.hidden_layer_sizes, "hidden_layer_sizes", minimum=1)
        check_sizes(self.conv_channels, "conv_channels", minimum=1)
        if self.discriminator == "cnn" and self.image_shape is None:
            raise ValueError("discriminator='cnn' needs image_shape, e.g. image_shape=(28, 28).")
        if self.discriminator == "mlp" and self.image_shape is not None:
            raise ValueError(
                "image_shape is used by discriminator='cnn' only; set both or neither."
            )
        if self.constraint == "soft" and self.L is None:
            raise ValueError("constraint='soft' penalises gradients above L: give a finite L.")
        resolve_device(self.device)
        resolve_dtype(self.dtype)

    def _fit(self, X, y, sample_domain):
        """Fit (or, with ``warm_start``, continue); return the validated X and its source mask."""
        self._validate_params_extra()
        resume = self.warm_start and hasattr(self, "flow_")
        X = validate_data(
            self, X, dtype=[np.float64, np.float32], ensure_min_samples=2, reset=not resume
        )
        image_shape = self._image_shape(X.shape[1])
        if resume:
            self._check_same_architecture(image_shape)
        self.image_shape_ = image_shape
        rng = check_random_state(self.random_state)
        if y is not None:
            y = np.asarray(y)
            if y.shape != (X.shape[0],):
                raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}.")
        mode = "generation" if sample_domain is None else "integration"
        if resume and mode != self.mode_:
            raise ValueError(
                f"warm_start=True continues the previous {self.mode_} fit, but this call is "
                f"a {mode} fit; set warm_start=False to start afresh."
            )
        self.mode_ = mode
        source = np.zeros(len(X), dtype=bool)
        if mode == "integration":
            source = check_sample_domain(sample_domain, len(X), n_features=X.shape[1])
        if resume:
            classes = self.classes_
            groups = self._flow_groups(X, y, source)
            sources, targets = self._resume_rows(X, groups, classes)
        else:
            self._fit_scaler(X)
            groups = self._flow_groups(X, y, source)
            starts, targets = self._flow_rows(X, groups, rng)
            self._fit_flow_assigner(starts)
            sources = [self._prealign(s, k) for k, s in enumerate(starts)]
        counts = [len(s) for s in sources]
        moved = unpack_rows(self._fit_flow(sources, targets, rng, resume), counts)
        if resume:
            self._extend_out_of_sample(sources, moved)
        else:
            self._fit_out_of_sample(starts, sources, moved)
        self._final_particles_ = moved
        particles = self._unscale(np.concatenate(moved))
        labels = None if self.classes_ is None else np.repeat(self.classes_, counts)
        if self.mode_ == "integration":
            # Back to the order of the source rows in X.
            position = np.searchsorted(
                np.flatnonzero(source), np.concatenate([g[0] for g in groups])
            )
            particles[position] = particles.copy()
            if labels is not None:
                labels[position] = labels.copy()
        self.particles_, self.particle_labels_ = particles, labels
        return X, source

    def _image_shape(self, n_features):
        """(channels, height, width) of the CNN's input, None for the MLP."""
        if self.discriminator != "cnn":
            return None
        return check_image_shape(self.image_shape, n_features)

    def _check_same_architecture(self, image_shape):
        """Warm start continues the stored discriminators: they must keep their shape."""
        layout = self.flow_.layout
        cnn = self.discriminator == "cnn"
        before = {
            "discriminator": "cnn" if hasattr(layout, "image_shape") else "mlp",
            "image_shape": getattr(layout, "image_shape", None),
            "conv_channels": getattr(layout, "channels", None),
            "hidden_layer_sizes": tuple(layout.hidden_layer_sizes),
            "activation": self.flow_.activation,
            "solver": self.flow_.solver,
        }
        now = {
            "discriminator": self.discriminator,
            "image_shape": image_shape,
            "conv_channels": tuple(int(c) for c in self.conv_channels) if cnn else None,
            "hidden_layer_sizes": tuple(int(h) for h in self.hidden_layer_sizes),
            "activation": self.activation,
            "solver": self.solver,
        }
        changed = [name for name in before if before[name] != now[name]]
        if changed:
            raise ValueError(
                f"warm_start=True continues the previous fit's discriminators, but "
                f"{', '.join(changed)} changed; set warm_start=False to start afresh."
            )

    def _resume_rows(self, X, groups, classes):
        """Warm start: the last particles of each flow, and the targets of the same flows."""
        same = (classes is None and self.classes_ is None) or (
            classes is not None
            and self.classes_ is not None
            and np.array_equal(classes, self.classes_)
        )
        if not same or len(groups) != len(self._final_particles_):
            raise ValueError(
                "warm_start=True continues the previous flows, but y defines different "
                "classes now; set warm_start=False to start afresh."
            )
        Z = self._scale(X)
        return list(self._final_particles_), [Z[t] for _, t in groups]

    # -- preparation ------------------------------------------------------------------
    def _fit_scaler(self, X):
        if self.standardize:
            self.center_ = np.median(X, axis=0)
            self.scale_ = _robust_scale(X)
        else:
            self.center_ = np.zeros(X.shape[1])
            self.scale_ = 1.0

    def _scale(self, X):
        return (np.asarray(X, dtype=np.float64) - self.center_) / self.scale_

    def _unscale(self, Z):
        return Z * self.scale_ + self.center_

    def _flow_groups(self, X, y, source):
        """Per flow: (indices of its source rows, indices of its target rows)."""
        target_rows = np.flatnonzero(~source) if self.mode_ == "integration" else np.arange(len(X))
        source_rows = np.flatnonzero(source)
        self.classes_ = None
        if y is None or self.conditional is False:
            if self.conditional is True:
                raise ValueError("conditional=True needs class labels y.")
            return [(source_rows, target_rows)]
        known = known_labels(y)
        tgt_known = target_rows[known[target_rows]]
        src_known = source_rows[known[source_rows]]
        target_classes = np.unique(y[tgt_known])
        reason = None
        if len(target_classes) == 0:
            reason = "no target row has a known label"
        elif self.mode_ == "integration":
            if len(src_known) < len(source_rows):
                reason = "some source rows have no label"
            elif not np.isin(np.unique(y[src_known]), target_classes).all():
                missing = np.setdiff1d(np.unique(y[src_known]), target_classes)
                reason = f"source classes {missing.tolist()} have no target rows"
        if reason is not None:
            if self.conditional is True:
                raise ValueError(f"conditional=True but {reason}.")
            if self.mode_ == "integration" and len(target_classes) > 0:
                warnings.warn(
                    f"Labels ignored, one flow for all classes: {reason}.",
                    UserWarning,
                    stacklevel=4,
                )
            return [(source_rows, target_rows)]
        if self.mode_ == "generation":
            self.classes_ = target_classes
            return [(np.array([], dtype=int), tgt_known[y[tgt_known] == c]) for c in target_classes]
        # Target classes without source rows need no flow.
        self.classes_ = np.intersect1d(target_classes, y[src_known])
        return [(src_known[y[src_known] == c], tgt_known[y[tgt_known] == c]) for c in self.classes_]

    def _flow_rows(self, X, groups, rng):
        """Scaled starting rows (before any pre-alignment) and target rows of each flow.

        In generation the starting rows are prior draws.
        """
        Z = self._scale(X)
        targets = [Z[t] for _, t in groups]
        if self.mode_ == "integration":
            sources = [Z[s] for s, _ in groups]
            self.prealign_ = None
            if self.prealign == "meanstd":
                self.prealign_ = [meanstd_map(src, tgt) for src, tgt in zip(sources, targets)]
            return sources, targets
        self.prealign_ = None
        self._fit_prior(targets)
        total = self.n_particles or sum(len(t) for t in targets)
        counts = _split_counts(total, [len(t) for t in targets])
        return [self._draw_prior(k, n, rng) for k, n in enumerate(counts)], targets

    def _fit_prior(self, targets):
        d = targets[0].shape[1]
        self.prior_ = {"source": self.source}
        if self.source != "gaussian_fit":
            return
        means, factors = [], []
        for t in targets:
            means.append(t.mean(0))
            if len(t) < 2:
                factors.append(np.zeros(d))
            elif d <= _FULL_COVARIANCE_MAX_FEATURES:
                cov, _ = ledoit_wolf(t)
                factors.append(np.linalg.cholesky(cov + 1e-9 * np.eye(d)))
            else:
                factors.append(t.std(0))
        self.prior_.update(mean=np.array(means), factor=factors)

    def _draw_prior(self, flow, n, rng):
        d = self.n_features_in_
        if self.source == "normal":
            return rng.standard_normal((n, d))
        if self.source == "uniform":
            return rng.uniform(-math.sqrt(3.0), math.sqrt(3.0), (n, d))
        if self.source == "logistic":
            return rng.logistic(0.0, math.sqrt(3.0) / math.pi, (n, d))
        noise = rng.standard_normal((n, d))
        factor = self.prior_["factor"][flow]
        shaped = noise @ factor.T if factor.ndim == 2 else noise * factor
        return self.prior_["mean"][flow] + shaped

    # -- training ---------------------------------------------------------------------
    def _fit_flow(self, sources, targets, rng, resume=False):
        device = resolve_device(self.device)
        self.device_ = str(device)
        callback = self.callback or (self._progress if self.verbose else None)
        result, flow = run_gpa(
            sources,
            targets,
            f=self.f,
            alpha=self.alpha,
            L=self.L,
            constraint=self.constraint,
            penalty=self.penalty,
            dt=self.dt,
            n_steps=self.n_steps,
            solver=self.solver,
            hidden_layer_sizes=tuple(int(h) for h in self.hidden_layer_sizes),
            image_shape=self.image_shape_,
            conv_channels=tuple(int(c) for c in self.conv_channels),
            activation=self.activation,
            n_critic=self.n_critic,
            learning_rate=self.learning_rate,
            tol=self.tol,
            store_every=self.store_every,
            batch_size=self.batch_size,
            log_every=self.log_every,
            seed=rng.randint(np.iinfo(np.int32).max),
            device=device,
            dtype=self.dtype,
            callback=callback,
            critic_state=self.critic_state_ if resume else None,
            stop=self.stop,
            frozen=(self.history_["stop_step"] >= 0) | (self.failed_step_ >= 0) if resume else None,
        )
        weights = np.array([len(s) for s in sources], dtype=float)
        weights /= weights.sum()
        history = {
            "divergence": result.divergence @ weights,
            "kinetic_energy": result.kinetic_energy @ weights,
            "divergence_per_flow": result.divergence,
            "kinetic_energy_per_flow": result.kinetic_energy,
            "time": result.time,
            "stop_step": np.array(result.stop_step),
        }
        if result.stop_statistic is not None:
            history.update(
                stop_check_step=result.stop_check_step,
                stop_score=result.stop_score,
                stop_statistic=result.stop_statistic,
                stop_floor=np.tile(result.stop_floor, (len(result.stop_statistic), 1)),
            )
        failed = np.array(result.failed_step)
        if resume:
            flow, history, failed = self._append_run(flow, history, failed)
        self.flow_, self.history_, self.failed_step_ = flow, history, failed
        self.critic_state_ = result.critic_state
        self.n_steps_ = flow.n_steps
        self.stop_reason_ = result.stop_reason
        if any(s >= 0 for s in result.failed_step):
            self._warn_non_finite(result.failed_step)
        self._warn_dead_critic(result.kinetic_energy)
        if result.stop_reason == "interrupted":
            warnings.warn(
                f"fit interrupted after {result.n_steps} of {self.n_steps} steps; the estimator "
                "keeps the finished steps and is usable.",
                RuntimeWarning,
                stacklevel=4,
            )
        return result.particles.cpu().numpy().astype(np.float64)

    def _append_run(self, flow, history, failed):
        """Warm start: the new steps follow the stored ones in the flow and the history."""
        old = self.flow_
        if old.store_every != flow.store_every or old.n_steps % old.store_every:
            raise ValueError(
                "warm_start=True needs the same store_every, and a previous run whose length "
                f"is a multiple of it ({old.n_steps} steps, store_every={old.store_every})."
            )
        flow = dataclasses.replace(
            flow,
            states=np.concatenate([old.states, flow.states]),
            alive=np.concatenate([old.alive, flow.alive]),
        )
        offset = self.history_["time"][-1] if len(self.history_["time"]) else 0.0
        offsets = {"time": offset, "stop_check_step": old.n_steps}
        stop = history.pop("stop_step")
        stop = np.where(stop >= 0, stop + old.n_steps, -1)
        history = {
            key: np.concatenate(
                [self.history_[key]] * (key in self.history_)
                + ([history[key] + offsets.get(key, 0)] if key in history else [])
            )
            for key in dict.fromkeys([*self.history_, *history])
            if key != "stop_step"
        }
        before = self.history_["stop_step"]
        history["stop_step"] = np.where(before >= 0, before, stop)
        new_failures = np.where(failed >= 0, failed + old.n_steps, -1)
        return flow, history, np.where(self.failed_step_ >= 0, self.failed_step_, new_failures)

    def _warn_non_finite(self, failed_step):
        where = ", ".join(f"flow {k} at step {s}" for k, s in enumerate(failed_step) if s >= 0)
        warnings.warn(
            f"GPA produced non-finite values ({where}); the particles of those flows were "
            "kept at their last finite positions and the flow stops there. Try a smaller dt, "
            "a finite L, or f='alpha' (KL diverges on heavy-tailed data).",
            RuntimeWarning,
            stacklevel=4,
        )

    def _warn_dead_critic(self, kinetic_energy):
        """Warn when a flow's particles stopped because its critic went flat for good."""
        for k in np.flatnonzero(kinetic_energy[-1] == 0) if len(kinetic_energy) else []:
            moving = np.flatnonzero(kinetic_energy[:, k] != 0)
            since = moving[-1] + 1 if len(moving) else 0
            if since < len(kinetic_energy) - 1:
                warnings.warn(
                    f"the critic of flow {k} went flat at step {since} (kinetic energy exactly "
                    "0: every ReLU unit inactive on the particles), so they stopped there; "
                    "activation='leaky_relu' or 'smooth_relu' avoids this.",
                    RuntimeWarning,
                    stacklevel=5,
                )

    def _progress(self, step, divergence, kinetic_energy):
        print(
            f"[GPATransporter] step {step + 1}/{self.n_steps}  "
            f"divergence {np.mean(divergence):.4g}  kinetic energy {np.mean(kinetic_energy):.4g}"
        )

    def _fit_flow_assigner(self, starts):
        """A classifier of the flows' starting points routes new rows to flows."""
        self.n_flows_ = len(starts)
        flows = np.repeat(np.arange(len(starts)), [len(s) for s in starts])
        self.flow_assigner_ = class_router(np.concatenate(starts), flows)

    def _fit_out_of_sample(self, starts, sources, moved):
        """Per flow, the training starting points, their displacements and the map to use."""
        self.displacements_ = self.out_of_sample_ = None
        if self.out_of_sample == "replay" or self.mode_ != "integration":
            return
        self.displacements_ = [
            (NearestNeighbors(n_neighbors=min(5, len(start))).fit(start), end - begin)
            for start, begin, end in zip(starts, sources, moved)
        ]
        if self.out_of_sample != "auto":
            self.out_of_sample_ = [self.out_of_sample] * len(starts)
        elif self.classes_ is None:
            # One flow carries every kind of row: the mean of a row's neighbours' end points
            # mixes biological groups the fit never saw, and new rows lose them (see the
            # parameter's documentation).
            self.out_of_sample_ = ["nearest"] * len(starts)
        else:
            self.out_of_sample_ = [
                _leave_one_out_map(start, begin, end)
                for start, begin, end in zip(starts, sources, moved)
            ]

    def _extend_out_of_sample(self, sources, moved):
        """Warm start: each training row's displacement grows by its new move."""
        if self.displacements_ is not None:
            self.displacements_ = [
                (neighbours, displacement + (end - begin))
                for (neighbours, displacement), begin, end in zip(
                    self.displacements_, sources, moved
                )
            ]

    def _move(self, Z, flows):
        """Move scaled rows of known flows: replay the flow, or follow the nearest rows."""
        aligned = self._prealign(Z, flows)
        if self.displacements_ is None:
            return self._replay(aligned, flows)
        out = aligned.copy()
        for k, (neighbours, displacement) in enumerate(self.displacements_):
            rows = flows == k
            if not rows.any():
                continue
            distance, index = neighbours.kneighbors(Z[rows])
            # Inverse-distance weights; a training row itself gets exactly its own move.
            weight = 1.0 / np.maximum(distance, 1e-12 * (1.0 + distance.max()))
            weight /= weight.sum(1, keepdims=True)
            if self.out_of_sample_[k] == "barycentric":
                # The weighted mean of the neighbours' end points (an affine pre-alignment
                # commutes with the mean, so this is their mean start plus mean move).
                starts = self._prealign(neighbours._fit_X[index].reshape(-1, Z.shape[1]), k)
                out[rows] = np.einsum("ij,ijd->id", weight, starts.reshape(index.shape + (-1,)))
            out[rows] += np.einsum("ij,ijd->id", weight, displacement[index])
        return out

    # ---------------------------------------------------------------------- transform
    def _output_dtype(self, X):
        return X.dtype if X.dtype in (np.float32, np.float64) else np.float64

    def _replay(self, Z, flows, path=None):
        """Replay the flow on scaled rows ``Z`` whose flow index is ``flows``."""
        groups = [np.flatnonzero(flows == k) for k in range(self.n_flows_)]
        # Replay in float64 whatever the training precision: a row's result then does not
        # depend (beyond 1e-12) on which other rows share its batch.
        packed, _ = pack_rows([Z[g] if len(g) else Z[:1] for g in groups], torch.float64, "cpu")
        moved = self.flow_.replay(
            packed, dtype=torch.float64, device=self._replay_device(), path=path
        )
        out = np.empty(moved.shape[:-3] + Z.shape)
        for k, g in enumerate(groups):
            out[..., g, :] = moved[..., k, : len(g), :]
        return out

    def _replay_device(self):
        """The fit's device, or the CPU when that device is missing (a GPU fit loaded here)."""
        if self.device_.startswith("cuda") and not torch.cuda.is_available():
            return "cpu"
        return self.device_

    def _assign_flows(self, Z, y=None):
        """Flow of each scaled row: its class's flow when ``y`` is given, else routed."""
        if self.flow_assigner_ is None:
            return np.zeros(len(Z), dtype=int)
        if y is not None:
            return self._class_index(np.asarray(y), len(Z))
        return self.flow_assigner_.predict(Z)

    def _class_index(self, y, n_samples):
        if y.shape != (n_samples,):
            raise ValueError(f"y must have shape ({n_samples},), got {y.shape}.")
        unknown = ~np.isin(y, self.classes_)
        if unknown.any():
            raise ValueError(
                f"y holds classes {np.unique(y[unknown]).tolist()} that were not fitted; "
                f"known classes: {self.classes_.tolist()}."
            )
        return np.searchsorted(self.classes_, y)

    @limit_blas_threads
    def transform(self, X, y=None, *, sample_domain=None):
        """Move rows along the learned flow.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows to move.
        y : array-like of shape (n_samples,), default=None
            After a conditional fit, the class of each row, which picks its flow.  None
            sends each row to the flow of the class predicted from the training starting
            points (``flow_assigner_``).
        sample_domain : array-like of shape (n_samples,), default=None
            When given, only source rows (``>= 0``) move; target rows (``< 0``) are returned
            unchanged, bit for bit.  None moves every row.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self, "flow_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        move = np.ones(len(X), dtype=bool)
        if sample_domain is not None:
            move = check_sample_domain(
                sample_domain, len(X), require_both=False, n_features=X.shape[1]
            )
        out = np.array(X, dtype=self._output_dtype(X), copy=True)
        if move.any():
            Z = self._scale(X[move])
            flows = self._assign_flows(Z, None if y is None else np.asarray(y)[move])
            out[move] = self._unscale(self._move(Z, flows))
        return out

    def _prealign(self, Z, flows):
        """Apply the fitted per-flow affine pre-alignment (identity without one).

        ``flows`` is the flow index of each row, or one index for all rows.
        """
        if self.prealign_ is None:
            return Z
        flows = np.broadcast_to(flows, (len(Z),))
        out = Z.copy()
        for k, (a, b) in enumerate(self.prealign_):
            out[flows == k] = Z[flows == k] * a + b
        return out

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
        check_is_fitted(self, "flow_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        Z = self._scale(X)
        flows = self._assign_flows(Z)
        return self._unscale(self._replay(self._prealign(Z, flows), flows, path=int(every)))

    def sample(self, n_samples=1, *, y=None, random_state=None):
        """Draw new samples: fresh prior draws pushed through the learned flow.

        Parameters
        ----------
        n_samples : int, default=1
        y : array-like of shape (n_samples,), default=None
            After a conditional fit, the class of each requested sample.  None draws the
            classes in proportion to the training targets.
        random_state : int, RandomState instance or None, default=None

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self, "flow_")
        if self.mode_ != "generation":
            raise ValueError(
                "sample() needs a generative fit (fit(X) without sample_domain); this "
                "estimator was fitted for integration: use transform()."
            )
        if not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        rng = check_random_state(random_state)
        flows = self._requested_flows(n_samples, y, rng)
        Z = np.empty((n_samples, self.n_features_in_))
        for k in range(self.n_flows_):
            rows = flows == k
            Z[rows] = self._draw_prior(k, int(rows.sum()), rng)
        return self._unscale(self._replay(Z, flows))

    def _requested_flows(self, n_samples, y, rng):
        if self.classes_ is None:
            if y is not None:
                raise ValueError("y was given but the fit was not class-conditional.")
            return np.zeros(n_samples, dtype=int)
        if y is None:
            freq = np.bincount(np.searchsorted(self.classes_, self.particle_labels_))
            return rng.choice(self.n_flows_, size=n_samples, p=freq / freq.sum())
        return self._class_index(np.asarray(y), n_samples)

    # -------------------------------------------------------------------------- score
    def score(self, X, y=None, *, sample_weight=None, sample_domain=None):
        """Minus the energy distance between moved rows and target rows (higher is better).

        In integration, the source rows of ``X`` are transported and compared with its
        target rows; in generation, ``len(X)`` new samples are compared with ``X``.  The
        energy distance has no parameter, so the score does not depend on the fitted L and
        grid searches over L and dt compare like with like.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the rows of ``X``.
        sample_domain : array-like of shape (n_samples,), default=None

        Returns
        -------
        score : float
        """
        from .metrics import energy_distance

        check_is_fitted(self, "flow_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        weights = None if sample_weight is None else np.asarray(sample_weight, dtype=float)
        if self.mode_ == "generation" and sample_domain is None:
            moved, target, w_moved, w_target = self.sample(len(X), random_state=0), X, None, weights
        else:
            if sample_domain is None:
                raise ValueError(
                    "score() of an integration fit needs sample_domain to tell source from "
                    "target rows (enable metadata routing to pass it through a search)."
                )
            source = check_sample_domain(sample_domain, len(X))
            moved = self.transform(X[source])
            target = X[~source]
            w_moved = None if weights is None else weights[source]
            w_target = None if weights is None else weights[~source]
        return -energy_distance(moved, target, sample_weight_x=w_moved, sample_weight_y=w_target)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


def _leave_one_out_map(start, begin, end, n_neighbors=5):
    """``"nearest"`` or ``"barycentric"``: which predicts each training end point better.

    Each training row is predicted from its ``n_neighbors`` nearest other rows (in the
    starting points ``start``, inverse-distance weights): by its own (pre-aligned) start
    ``begin`` plus their mean displacement, or by the mean of their end points.
    """
    if len(start) < 3:
        return "nearest"
    k = min(n_neighbors, len(start) - 1)
    distance, index = NearestNeighbors(n_neighbors=k + 1).fit(start).kneighbors(start)
    distance, index = distance[:, 1:], index[:, 1:]
    weight = 1.0 / np.maximum(distance, 1e-12 * (1.0 + distance.max()))
    weight /= weight.sum(1, keepdims=True)
    mean_end = np.einsum("ij,ijd->id", weight, end[index])
    mean_move = np.einsum("ij,ijd->id", weight, (end - begin)[index])
    nearest_error = np.sum((begin + mean_move - end) ** 2)
    return "barycentric" if np.sum((mean_end - end) ** 2) < nearest_error else "nearest"


def _robust_scale(X) -> float:
    """One scale for all features: the root of the sum of squared per-feature spreads.

    The spread of a feature is its interquartile range / 1.349 (the standard deviation for
    Gaussian data), so a heavy tail does not shrink the bulk of the data to a point; a
    feature with no interquartile spread falls back to its standard deviation.
    """
    q75, q25 = np.percentile(X, [75, 25], axis=0)
    spread = (q75 - q25) / 1.349
    flat = spread == 0
    spread[flat] = X[:, flat].std(0)
    scale = float(np.sqrt(np.sum(spread**2)))
    return scale if scale > 0 and math.isfinite(scale) else 1.0


def _split_counts(total, sizes):
    """Split ``total`` particles across flows in proportion to ``sizes``, at least one each."""
    sizes = np.asarray(sizes, dtype=float)
    counts = np.maximum(1, np.floor(total * sizes / sizes.sum()).astype(int))
    counts[np.argmax(sizes)] += max(0, total - counts.sum())
    return counts.tolist()
