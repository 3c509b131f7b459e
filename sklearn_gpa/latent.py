"""LatentGPA: the generative particle flow in the latent space of an encoder."""

from __future__ import annotations

from inspect import signature
from numbers import Integral, Real

import numpy as np
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_array
from sklearn.utils._param_validation import (
    HasMethods,
    Interval,
    RealNotInt,
    StrOptions,
    validate_params,
)
from sklearn.utils._set_output import _wrap_data_with_container
from sklearn.utils.validation import check_is_fitted

from ._base import DomainTransformer
from ._discrepancy import DiscrepancyEncoder
from ._discrete import FeatureLevels
from ._grouping import group_rows
from ._intensity_curve import IntensityCurve
from ._sample_levels import SampleLevels
from .baselines import MeanStdAdjuster, meanstd_map
from .transport import GPATransporter
from .utils import NumberInterval, check_flags, known_labels, warn_at_caller

__all__ = ["DiscrepancyEncoder", "LatentGPA", "decoder_lipschitz_constant", "default_encoder"]

# Critic updates per step of that flow: twice GPATransporter's.  Latent flows are few
# dimensions and few rows, where a critic that lags its particles lets them swing past
# their target and back (measured in benchmarks/README.md, "A critic that keeps up").
FLOW_CRITIC = 10
# The flow on the codes starts from its own pre-alignment (the transporter's
# prealign="auto": each code's mean and spread, and their covariance where it differs,
# mapped onto the target's) and runs only where that leaves the codes farther from the
# target than a fresh sample.  False: the flow starts from the codes as they are, as
# before 2026-12-07 (a flow that had to shrink a code 50-fold ran out of steps;
# benchmarks/README.md, "A second factor at a few dozen rows").
CODES_PREALIGN = True
# Integration with labels on both sides runs one flow on the codes (the labels still steer
# the encoder), unless the transporter is given conditional=True.  Flows per class, of a
# few dozen rows each, fit their noise, and under a label shift sent rows onto their
# class's target rows, farther from their own truth (benchmarks/README.md, "One flow with
# labels").  True: a flow per class, as before 2026-12-07.
CLASS_FLOWS = False
# Where the encoder finds directions, the shared intensity curve is looked for in the rows
# the flow and the residual maps corrected (the per-sample factors, which change the genes'
# shapes too, removed first) and undone on them (benchmarks/README.md, "The intensity curve
# after the factors").  False: a curve only where the encoder found no direction, as
# before 2026-12-08.
CURVE_AFTER_FLOW = True


def _default_flow(**params):
    """The flow ``LatentGPA`` runs on its codes when given no transporter, with ``params``
    changed (the CLI's ``--latent`` and the benchmarks build theirs here)."""
    defaults = dict(n_critic=FLOW_CRITIC, standardize="common")
    return GPATransporter(**{**defaults, **params})


@validate_params(
    {
        "variance": [
            NumberInterval(RealNotInt, 0, 1, closed="neither"),
            NumberInterval(Integral, 1, None, closed="left"),
        ]
    },
    prefer_skip_nested_validation=True,
)
def default_encoder(variance=0.9):
    """The papers' encoder: standardise every feature, then PCA keeping ``variance``.

    PCA runs on the thin SVD of the (n_samples x n_features) matrix: time and memory grow
    with the matrix's size (about two copies of it), not with ``n_features`` squared, so
    wide data such as gene expression are fine.  See the :ref:`User Guide <user_guide>`,
    section "Measurements behind the defaults".

    Parameters
    ----------
    variance : float in (0, 1) or int >= 1, default=0.9
        The fraction of the variance the kept components explain, or their number
        (``PCA(n_components=variance)``).

    Returns
    -------
    encoder : Pipeline
        An unfitted ``make_pipeline(StandardScaler(), PCA(...))``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.latent import default_encoder
    >>> X = np.random.RandomState(0).normal(size=(50, 20))
    >>> default_encoder(0.9).fit(X).transform(X).shape[1] < 20
    True
    """
    return make_pipeline(StandardScaler(), PCA(n_components=variance, svd_solver="full"))


@validate_params(
    {
        "encoder": [HasMethods(["inverse_transform"])],
        "codes": ["array-like"],
        "step": [NumberInterval(Real, 0, None, closed="neither")],
    },
    prefer_skip_nested_validation=True,
)
def decoder_lipschitz_constant(encoder, codes, *, step=1e-3):
    """Lipschitz constant ``a_D`` of ``encoder.inverse_transform`` (Theorem 7.1, paper 000).

    The decoder's Jacobian is taken by finite differences at up to 20 training codes and its
    largest singular value is returned.  For a linear decoder (PCA, TruncatedSVD, a
    StandardScaler-PCA pipeline) this is exact: 1 for PCA, ``max sigma_i`` after
    de-standardisation (Remark 7.2), and the Jacobian is computed once (the decoder is
    checked to be affine along a random direction at the other codes); for a nonlinear
    decoder it is an estimate from below.

    Parameters
    ----------
    encoder : fitted transformer with ``inverse_transform``
        Its ``inverse_transform`` is the decoder.
    codes : array-like of shape (n_samples, n_components)
        Codes at which the Jacobian is taken (the training codes).
    step : float, default=1e-3
        Finite-difference step, in the units of the codes.

    Returns
    -------
    lipschitz : float
        The largest singular value of the decoder's Jacobian.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.decomposition import PCA
    >>> from sklearn_gpa.latent import decoder_lipschitz_constant
    >>> X = np.random.RandomState(0).normal(size=(40, 6))
    >>> pca = PCA(3).fit(X)
    >>> round(decoder_lipschitz_constant(pca, pca.transform(X)), 6)
    1.0
    """
    codes = check_array(codes, dtype=np.float64, input_name="codes")
    points = codes[np.linspace(0, len(codes) - 1, min(20, len(codes))).astype(int)]
    d = codes.shape[1]

    def jacobian(z):
        decoded = np.asarray(encoder.inverse_transform(np.vstack([z, z + step * np.eye(d)])))
        return (decoded[1:] - decoded[0]) / step

    first = jacobian(points[0])
    # An affine decoder (PCA, TruncatedSVD, a StandardScaler-PCA pipeline) has the same
    # Jacobian at every code: check that along one random direction at each point (two
    # decoded rows, not d + 1) and compute the norm once.  With 100 codes of 50 000 genes
    # the full Jacobian at every point cost 20 decodings and 20 SVDs of a d x 50 000 matrix.
    direction = np.random.RandomState(0).standard_normal(d)
    direction *= step / np.linalg.norm(direction)
    predicted = direction @ first
    tolerance = 1e-6 * max(float(np.abs(predicted).max()), np.finfo(float).tiny)
    jacobians = [first]
    for z in points[1:]:
        decoded = np.asarray(encoder.inverse_transform(np.vstack([z, z + direction])))
        if np.abs(decoded[1] - decoded[0] - predicted).max() > tolerance:
            jacobians += [jacobian(z) for z in points[1:]]
            break
    return max(_spectral_norm(j) for j in jacobians)


def _spectral_norm(matrix):
    """Largest singular value, from the eigenvalues of the small Gram matrix (d x d)."""
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    return float(np.sqrt(max(np.linalg.eigvalsh(gram)[-1], 0.0)))


class LatentGPA(DomainTransformer):
    """GPA in the latent space of an encoder, returning data in the original space.

    The encoder (any transformer with ``inverse_transform``) is fitted on source and target
    rows together; a clone of ``transporter`` runs on the codes; moved codes are decoded.
    This is the papers' recipe for 10^4-10^5 genes and a few hundred patients (paper 000,
    section 7; paper 001, Algorithm 2).  Every setting of the flow (divergence, L, dt,
    steps, discriminator, device, seed, ...) is a parameter of the transporter, reachable in
    a grid search as ``transporter__L``.

    Integration by default keeps each row's identity and moves it only where the data show
    a difference between the two sides:

    0. ``sample_alignment="auto"``: where the source rows' overall levels vary beyond the
       target rows' (a per-sample brightness), each row's level and spread across features
       are first matched to the target rows' distribution of them;
    1. ``prealign="shrunk"``: the source rows are adjusted feature by feature to the
       target's mean and standard deviation (one map for all rows, labels or not), each
       feature's shift and scale shrunk towards the common ones by empirical Bayes, as
       ComBat does;
    2. the encoder is a :class:`DiscrepancyEncoder`: the directions in which the aligned
       source varies more than the target beyond sampling noise (a step-down permutation
       test at level 0.01), kept orthogonal to the target's class contrasts when the
       target rows carry labels.  When there is none, no flow runs and the result is that
       adjustment (and step 5);
    3. one flow, labels or not (``transform`` then ignores ``y``), runs in those few
       directions, from the codes with their means and spreads (and covariance, where it
       differs) matched to the target's, and stops once its particles are as close to the
       target as a fresh sample would be (often at once: a per-sample factor is a change
       of spread along its direction).  A flow per class takes
       ``transporter=GPATransporter(conditional=True)``: flows of a few dozen rows each fit
       their noise, and under a label shift they sent rows onto their class's target rows,
       farther from their own truth;
    4. ``residual="adjust"``: each row keeps its own part outside those directions, with
       that part's per-feature mean and std matched to the target's;
    5. ``intensity_curve="auto"``: an intensity-dependent curve shared by genes of similar
       intensity is undone on the rows so corrected, where the genes' shapes (standardised
       quantiles, pooled over genes of similar mean) differ from the target's beyond
       noise; looked for after the flow, so that the per-sample factors, which change
       the genes' shapes too, are removed first.

    On simulated batch effects with a known truth this recovers each row better than
    per-gene methods where the effect is more than per-gene affine, and like mean/std where
    it is per-gene affine (see the user guide).  Generative fits use PCA keeping 90 % of
    the variance, the papers' encoder.

    ``residual`` decides what happens to the part of each moved row the encoder discards:

    * ``"adjust"`` (default): add the row's own off-latent residual ``x - D(E(x))`` back,
      its per-feature mean and std matched to the target's (per flow);
    * ``"keep"``: add the residual back as it is;
    * ``"drop"``: return ``D(moved code)``, a row on the encoder's manifold (the papers; no
      intensity curve is undone after the flow).

    Read more in the :ref:`User Guide <user_guide>`.

    Parameters
    ----------
    encoder : transformer with ``inverse_transform`` or None, default=None
        None uses a :class:`DiscrepancyEncoder` in integration and ``default_encoder(0.9)``
        (standardise, then PCA keeping 90 % of the variance) in generation.  An encoder
        whose ``fit`` takes ``sample_domain`` receives it, and ``y``.  ``PCA``, ``TruncatedSVD``,
        ``KernelPCA(fit_inverse_transform=True)``, a ``Pipeline`` of those, or the package's
        :class:`~sklearn_gpa.Autoencoder` work too.
    transporter : GPATransporter or None, default=None
        The flow to run on the codes (cloned).  None uses
        ``GPATransporter(n_critic=10, standardize="common")`` (its stopping rule usually
        ends the flow well before its 2000 steps; twice the critic updates of a direct
        transporter, so that it keeps up with particles in few dimensions): new source
        rows move like their nearest training codes (or to the mean of their end points,
        per class flow, by leave-one-out; ``out_of_sample="auto"``), which suits few rows
        in a latent space of many dimensions.  In integration its ``conditional="auto"``
        runs one flow, labels or not (``conditional=True``: a flow per class).  A
        transporter you pass is used as given otherwise, except that
        ``standardize="auto"`` (or True) runs with one common scale: codes share the
        encoder's unit, and a per-feature scale would whiten them.  Its
        ``prealign`` (default "auto") pre-aligns the codes in integration; None starts
        the flow from the codes as they are.
    residual : {"adjust", "keep", "drop"}, default="adjust"
        What happens to the part of each row the encoder does not represent (see above).
    latent_scale : float, default=1.0
        Codes are multiplied by this before the flow runs (useful with the transporter's
        ``standardize=False``; the authors divide PCA codes of gene data by 10).
    prealign : {"shrunk", "meanstd", "mixture"} or None, default="shrunk"
        Per-feature moment matching of all source rows to all target rows in the original
        space before encoding (integration only): ``MeanStdAdjuster(conditional=False,
        shrink=True)`` for "shrunk" (with at least 10 features; steadier with a few dozen
        rows per side), exact matching for "meanstd".  "mixture" is "shrunk" followed, when
        the target rows carry labels, by the recentring of
        :func:`~sklearn_gpa.baselines.mixture_shift` (``MeanStdAdjuster(conditional=False,
        shrink=True, recentre="mixture")``): whole-sample moments assume both sides hold
        the same mix of classes, and where they do not the moment match moves rows towards
        the other class; the recentring estimates the source's own mix and offset along the
        directions that separate the target's classes.  ``residual="adjust"`` matches the
        residuals' moments the same way (keeping the recentring's off-latent part).  None
        runs the latent flow from the raw source (and its codes as they are: the default
        transporter's own pre-alignment of the codes is off too).
    sample_alignment : {"auto", "always"} or None, default="auto"
        Per-sample alignment before ``prealign`` (integration only): each source row's
        mean and log standard deviation across features (its overall level and spread: an
        array's brightness, a sample's depth) mapped onto the target rows' distribution of
        them by an increasing affine map, each row's deviations scaled by its new spread
        over its old one.  A per-feature map moves every row alike and cannot remove such
        an effect.  "auto" does it only where the features share a unit (the rule of
        ``standardize="auto"``) and the source rows' levels vary more than the target
        rows' beyond noise (variance at least 4 times, Brown-Forsythe test at 0.01), each
        side's levels taken relative to its features' overall spread: two samples of one
        study do not, nor two studies in different units, a per-sample brightness effect
        does.  "always" does it whenever the data allow; None never.  A feature whose range
        among the target rows is over 10 times the median feature's (a patient's age beside
        the genes) is left out of the levels and keeps its values.
    intensity_curve : {"auto"} or None, default="auto"
        Undo a curve of the measured intensity that bends each gene's values alike at like
        intensities (a scanner's or a platform's intensity bias; integration only), which
        per-feature affine maps leave and per-gene quantile mapping estimates with much
        noise from a few dozen rows.  Each gene's standardised source quantiles are mapped
        onto its standardised target quantiles, both averaged over the tenth of the genes
        nearest it in mean; the gene keeps its mean, its standard deviation and the order of
        its rows.  "auto" does it only where the features share a unit (the rule of
        ``standardize="auto"``; features in another unit keep their values), there are at
        least 50 of them, and the sides' pooled shapes differ beyond those of random parts
        of one side's own rows (a Monte Carlo test at 0.05; the map is shrunk towards the
        identity by their share; its draws have a fixed seed); None never.  Per-sample
        factors change the genes' shapes too: the curve is fitted on the rows the flow and
        the residual maps corrected, and undone last (not after a flow with
        ``residual="drop"``, whose rows stay on the encoder's manifold).  Any difference in
        the genes' shapes reads as a curve, a biological one too: where the two sides hold
        very different mixes of classes that change many genes (20 % against 80 % of a class
        with 30 % of the genes up 2 units), it undoes part of that difference; pass None
        there.
    random_state : int, RandomState instance or None, default=None
        Seeds the flow: the default transporter's, or that of a transporter you pass whose
        own ``random_state`` is None (one you seeded keeps its seed).  An int makes
        ``fit`` reproducible; None draws a new flow each time, as the transporter does.

    Attributes
    ----------
    transporter_ : GPATransporter or None
        The flow fitted on the codes (None when the encoder found no direction to move
        in); ``history_``, ``n_steps_``, ``classes_``, ``flow_domains_``, ``mode_``,
        ``flow_`` and ``particle_labels_`` are its attributes.  With several source
        domains it has a flow per domain (and class, with ``conditional=True``).
    adjuster_ : MeanStdAdjuster or None
        The pre-alignment, when used (per source domain where there are several).
    sample_levels_ : object or None
        The per-sample alignment's maps (``level``: rows' means, ``spread``: their log
        standard deviations, each ``(a, b)`` of ``a * value + b``, or None; ``features``:
        the mask of the features they cover, None for all), when one ran.
    intensity_curves_ : dict or None
        Per source domain, the intensity curve undone (``weight``: how much of the pooled
        map is applied; ``p_value``: the permutation test's), when one was; None otherwise.
    encoder_ : fitted encoder
    n_components_ : int
        Latent dimension d'.
    reconstruction_error_ : float
        Relative reconstruction error of the training rows,
        ``sqrt(sum |x - D(E(x))|^2 / sum |x - mean|^2)``: the papers' (R)/(D) floor.
    decoder_lipschitz_ : float
        ``a_D`` of Theorem 7.1: the latent divergence with Lipschitz bound ``a_D * L``
        bounds the divergence in the original space.
    particles_ : ndarray of shape (n_particles, n_features)
        The trained particles in the original space: in generative mode the decoded
        latent particles (the generated samples), in integration the moved source rows
        as ``fit_transform`` returns them (residuals treated as ``residual`` says).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Defined when X has string column names.

    See Also
    --------
    GPATransporter : the flow itself.
    default_encoder : the papers' encoder.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa import GPATransporter, LatentGPA
    >>> from sklearn_gpa.utils import stack_domains
    >>> rng = np.random.RandomState(0)
    >>> basis = rng.normal(size=(3, 200))
    >>> Xs = rng.normal(size=(80, 3)) @ basis + rng.normal(scale=0.1, size=(80, 200))
    >>> Xt = (rng.normal(size=(80, 3)) + 2) @ basis + rng.normal(scale=0.1, size=(80, 200))
    >>> X, _, sd = stack_domains(Xs, Xt)
    >>> flow = GPATransporter(n_steps=100, random_state=0)
    >>> model = LatentGPA(transporter=flow).fit(X, sample_domain=sd)
    >>> model.transform(X, sample_domain=sd).shape
    (160, 200)
    """

    _parameter_constraints = {
        "encoder": [HasMethods(["fit", "transform", "inverse_transform"]), None],
        "transporter": [HasMethods(["fit", "transform"]), None],
        "residual": [StrOptions({"adjust", "drop", "keep"})],
        "latent_scale": [Interval(Real, 0, None, closed="neither")],
        "prealign": [StrOptions({"shrunk", "meanstd", "mixture"}), None],
        "sample_alignment": [StrOptions({"auto", "always"}), None],
        "intensity_curve": [StrOptions({"auto"}), None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        encoder=None,
        transporter=None,
        *,
        residual="adjust",
        latent_scale=1.0,
        prealign="shrunk",
        sample_alignment="auto",
        intensity_curve="auto",
        random_state=None,
    ):
        self.encoder = encoder
        self.transporter = transporter
        self.residual = residual
        self.latent_scale = latent_scale
        self.prealign = prealign
        self.sample_alignment = sample_alignment
        self.intensity_curve = intensity_curve
        self.random_state = random_state

    def _fit(self, X, y, source, domains):
        """Fit the encoder on all rows, then the flow on the codes."""
        transporter = _default_flow() if self.transporter is None else clone(self.transporter)
        if self.random_state is not None and transporter.random_state is None:
            transporter.set_params(random_state=self.random_state)
        if transporter.standardize in ("auto", True):
            # Codes share the encoder's unit: a per-feature scale would whiten them.
            transporter.set_params(standardize="common")
        if transporter.prealign == "auto" and (not CODES_PREALIGN or self.prealign is None):
            transporter.set_params(prealign=None)  # prealign=None: no pre-alignment at all
        sample_domain = None if source is None else np.where(source, domains, -1)
        self.adjuster_ = self.sample_levels_ = None
        if source is not None and self.sample_alignment is not None:
            self.sample_levels_ = SampleLevels.fit(
                X[source], X[~source], always=self.sample_alignment == "always"
            )
            if self.sample_levels_ is not None:
                X = X.copy()  # never the caller's array
                X[source] = self.sample_levels_.transform(X[source])
        if source is not None and self.prealign is not None:
            # One map for all rows even with labels: per-class moments of a few dozen rows
            # are noisy, and matching them moved rows away from their own truth.
            self.adjuster_ = MeanStdAdjuster(
                conditional=False,
                shrink=self.prealign != "meanstd",
                recentre="mixture" if self.prealign == "mixture" else None,
            )
            labels = y if self.prealign == "mixture" else None  # the recentring's classes
            X = self.adjuster_.fit_transform(X, labels, sample_domain=sample_domain)
        self.intensity_curves_ = None
        self.encoder_ = self._fit_encoder(X, y, sample_domain)
        codes = self._encode(X)
        self.n_components_ = codes.shape[1]
        residuals = X - self._decode(codes)
        spread = np.sum((X - X.mean(0)) ** 2)
        self.reconstruction_error_ = float(np.sqrt(np.sum(residuals**2) / max(spread, 1e-300)))
        if source is None and self.reconstruction_error_ > 0.7:
            # Generation keeps only what the decoder can give back (a KernelPCA with an RBF
            # kernel on unscaled pixels: 0.99, and samples recognised at chance).
            warn_at_caller(
                f"The encoder represents little of the rows (reconstruction error "
                f"{self.reconstruction_error_:.2f} of their spread; PCA keeping 90 % of the "
                "variance gives about 0.3): samples are decoded from its codes and lack the "
                "rest. Check the encoder's settings (a kernel's width against the data's "
                "scale) or keep more components."
            )
        self.transporter_ = self.residual_maps_ = None
        if self.n_components_ == 0:  # the two sides differ in no direction beyond noise
            self.decoder_lipschitz_ = 0.0
            self.particles_ = X[source]
            if source is not None:
                self.particles_ = self._fit_intensity_curves(
                    self.particles_, X[~source], domains[source]
                )
            return self.particles_
        self.decoder_lipschitz_ = decoder_lipschitz_constant(self.encoder_, codes)
        flow_labels = y
        if y is not None and source is not None and not known_labels(y[source]).any():
            # Labels on the target only: the encoder used them; the flow is one label-free
            # flow (the transporter would warn that it ignores them).
            flow_labels = None
        elif source is not None and transporter.conditional == "auto" and not CLASS_FLOWS:
            flow_labels = None  # labels on both sides: one flow too (CLASS_FLOWS)
        self.transporter_ = transporter.fit(codes, flow_labels, sample_domain=sample_domain)
        self.residual_maps_ = self._residual_maps(residuals, flow_labels, source, domains)
        moved = self.transporter_.particles_
        if source is None:
            self.particles_ = self._decode(moved)
            # What sample() clips and snaps decoded rows to, as GPATransporter.sample does
            # in its own space: decoded pixels fell outside [0, 16] and between the levels.
            self._bounds = (X.min(0), X.max(0))
            self._levels = FeatureLevels.for_samples(X, [X])
            return None
        labels = self.transporter_.particle_labels_
        self.particles_ = self._finish(X[source], codes[source], moved, labels, domains[source])
        if CURVE_AFTER_FLOW and self.residual != "drop":
            # Looked for once the flow has removed the per-sample factors, which change the
            # genes' shapes too (tested before it, they cost the factor cells 3 % of
            # recovery; benchmarks/README.md).  Rows asked for on the encoder's manifold
            # ("drop") stay there.
            self.particles_ = self._fit_intensity_curves(
                self.particles_, X[~source], domains[source]
            )
        return self.particles_

    def _fit_encoder(self, X, y, sample_domain):
        """The discrepancy encoder in integration, PCA in generation, or the user's."""
        if self.encoder is not None:
            encoder = clone(self.encoder)
        elif sample_domain is None:
            encoder = default_encoder()
        else:  # its re-matching of spreads is for rows matched feature by feature
            encoder = DiscrepancyEncoder(rematch=self.prealign is not None)
        if sample_domain is not None and "sample_domain" in signature(encoder.fit).parameters:
            return encoder.fit(X, y, sample_domain=sample_domain)
        return encoder.fit(X)

    def _encode(self, X):
        return np.asarray(self.encoder_.transform(X), dtype=np.float64) * self.latent_scale

    def _decode(self, codes):
        return np.asarray(self.encoder_.inverse_transform(codes / self.latent_scale), dtype=float)

    def _residual_maps(self, residuals, y, source, domains):
        """Per flow of ``transporter_`` (its grouping of the rows: ``y`` are the labels it
        was given), the map matching the source residuals' mean and std to the target's."""
        if self.residual != "adjust" or source is None:
            return None
        conditional = self.transporter_.conditional
        groups = group_rows(y, source, domains=domains, conditional=conditional)
        shrink = self.prealign in ("shrunk", "mixture")
        # The recentring moved the source rows off the target's mean on purpose: its
        # off-latent part is matched out of the source residuals, then added back.
        recentre = groups.classes is None and getattr(self.adjuster_, "recentre", None)
        maps = []
        for k, (s, t) in enumerate(zip(groups.sources, groups.targets)):
            recentred = (
                self._off_latent(residuals[s], self.adjuster_.recentring_[k]) if recentre else 0.0
            )
            a, b = meanstd_map(residuals[s] - recentred, residuals[t], shrink=shrink)
            maps.append((a, b + (1 - a) * recentred))
        return maps

    def _fit_intensity_curves(self, rows, target, domains):
        """``intensity_curves_``: per source domain, the shared intensity curve of its
        corrected source rows ``rows`` (of domains ``domains``) against the ``target``
        rows (None where there is no evidence of one); returns ``rows`` with the curves
        undone."""
        if self.intensity_curve is None:
            return rows
        curves = {}
        fitted_domains = np.unique(domains)
        for domain in fitted_domains:
            curve = IntensityCurve.fit(rows[domains == domain], target)
            if curve is not None:
                curves[int(domain)] = curve
        if not curves:
            return rows
        self.intensity_curves_ = curves
        self._curve_domains = fitted_domains
        return self._undo_intensity_curves(rows, domains)

    def _undo_intensity_curves(self, X, domains):
        """Rows ``X`` with their source domain's intensity curve undone (rows of domain
        ``domains``; None: the fit's only source domain).  A fit with one source domain
        moves every source row as that domain's, whatever its value (the pre-alignment and
        the flow do), and so does its curve."""
        curves = getattr(self, "intensity_curves_", None)  # fits pickled before: none
        if not curves:
            return X
        if len(self._curve_domains) == 1:
            return next(iter(curves.values())).transform(X)
        if domains is None:  # no pre-alignment or flow guessed the rows' domains
            raise ValueError(
                "This LatentGPA was fitted with several source domains, and an intensity "
                "curve for some of them, without a pre-alignment to guess each row's "
                "domain: pass sample_domain to transform."
            )
        out = np.array(X, dtype=float)  # never the caller's array
        for domain, curve in curves.items():
            rows = domains == domain
            if rows.any():
                out[rows] = curve.transform(out[rows])
        return out

    def _off_latent(self, residuals, shift):
        """The part of a row shift ``shift`` that the encoder does not represent, at the
        mean of ``residuals``."""
        centre = residuals.mean(0, keepdims=True)
        ends = np.vstack([centre, centre - shift])
        off_latent = ends - self._decode(self._encode(ends))
        return off_latent[0] - off_latent[1]

    def _move(self, X, y, domains=None):
        """Move rows through (pre-alignment,) encoder, latent flow and decoder."""
        if self.sample_levels_ is not None:
            X = self.sample_levels_.transform(X)
        if domains is None and getattr(self.adjuster_, "flow_domains_", None) is not None:
            # Rows given without their source domains: one guess per row, the
            # pre-alignment's, for every stage (the flow's router might guess otherwise).
            domains = self.adjuster_.flow_domains_[self.adjuster_.flow_index(X)]
        if self.adjuster_ is not None:
            X = self.adjuster_.transform(X, sample_domain=domains)
        if self.transporter_ is not None:
            codes = self._encode(X)
            if domains is None and self.transporter_.flow_domains_ is not None:
                # The flows' own guess (no pre-alignment guessed one): the same for the
                # residuals and the intensity curves.
                domains = self.transporter_.flow_domains_[self.transporter_.flow_index(codes)]
            moved = self.transporter_.transform(codes, y, sample_domain=domains)
            X = self._finish(X, codes, moved, y, domains)
        return self._undo_intensity_curves(X, domains)

    def _finish(self, rows, codes, moved_codes, labels, domains):
        """Decode moved codes and treat the off-latent residual as ``residual`` says."""
        decoded = self._decode(moved_codes)
        if self.residual == "drop":
            return decoded
        residual = rows - self._decode(codes)
        if self.residual_maps_ is not None:
            flows = self.transporter_.flow_index(codes, labels, sample_domain=domains)
            for k, (a, b) in enumerate(self.residual_maps_):
                residual[flows == k] = residual[flows == k] * a + b
        return decoded + residual

    def sample(self, n_samples=1, *, y=None, random_state=None, clip=True, snap=True):
        """New samples in the original space: latent samples of ``transporter_``, decoded.

        Parameters
        ----------
        n_samples : int, default=1
        y : array-like of shape (n_samples,), default=None
            After a conditional fit, the class of each requested sample.
        random_state : int, RandomState instance or None, default=None
            The draws' seed.  None draws afresh at each call (as ``KernelDensity.sample``
            does; the estimator's own ``random_state`` seeds the fit, not the draws): pass
            an int for the same samples at every call.
        clip : bool, default=True
            Clip each decoded feature to its range in the training rows (a decoder's
            output is not bounded by the data: pixels below 0).
        snap : bool, default=True
            Move each feature with at most 10 distinct values in the training rows onto
            the nearest of them, and round the others to the precision of their training
            values, as :meth:`GPATransporter.sample` does (whole pixel values stay whole).

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            A DataFrame with ``set_output(transform="pandas")``.
        """
        check_is_fitted(self, "encoder_")
        if self.transporter_ is None:
            raise ValueError(
                "sample() needs a generative fit (fit(X) without sample_domain); this "
                "estimator was fitted for integration: use transform()."
            )
        check_flags(clip=clip, snap=snap)
        codes = self.transporter_.sample(n_samples, y=y, random_state=random_state)
        X_new = self._decode(np.asarray(codes))
        if clip and getattr(self, "_bounds", None) is not None:  # fits pickled before: None
            X_new = np.clip(X_new, *self._bounds)
        if snap and getattr(self, "_levels", None) is not None:
            X_new = self._levels.snap(X_new, np.zeros(len(X_new), dtype=int))
        # The container of set_output(transform=...) (pandas, polars) with the feature names.
        return _wrap_data_with_container("transform", X_new, None, self)

    # The generative/integration switch and diagnostics live on the latent transporter;
    # without one (no direction of discrepancy), there is no flow to describe.
    @property
    def mode_(self):
        return "integration" if self.transporter_ is None else self.transporter_.mode_

    @property
    def history_(self):
        return {} if self.transporter_ is None else self.transporter_.history_

    @property
    def n_steps_(self):
        return 0 if self.transporter_ is None else self.transporter_.n_steps_

    @property
    def classes_(self):
        return None if self.transporter_ is None else self.transporter_.classes_

    def _source_domains(self):
        # The pre-alignment's domains where no flow ran (no direction of discrepancy), or
        # the intensity curves' where no pre-alignment ran either.
        if self.transporter_ is None and self.adjuster_ is not None:
            domains = self.adjuster_.flow_domains_
            return None if domains is None else np.unique(domains)
        if self.transporter_ is None and getattr(self, "intensity_curves_", None):
            return self._curve_domains
        return super()._source_domains()

    def __setstate__(self, state):
        # Fitted before these parameters existed: what the fit did then.
        state = {"sample_alignment": None, "intensity_curve": None, **state}
        if "encoder_" in state:  # fitted before the per-sample alignment: none ran
            state = {"sample_levels_": None, **state}
        super().__setstate__(state)

    @property
    def flow_domains_(self):
        return None if self.transporter_ is None else self.transporter_.flow_domains_

    @property
    def particle_labels_(self):
        return None if self.transporter_ is None else self.transporter_.particle_labels_

    @property
    def flow_(self):
        return None if self.transporter_ is None else self.transporter_.flow_
