"""LatentGPA: the generative particle flow in the latent space of an encoder."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, _fit_context, clone
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import HasMethods, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._threadpool import limit_blas_threads
from .baselines import MeanStdAdjuster, meanstd_map
from .transport import GPA_PARAMETER_CONSTRAINTS, GPATransporter
from .utils import check_sample_domain, known_labels

__all__ = ["LatentGPA", "default_encoder", "decoder_lipschitz_constant"]


def default_encoder(variance=0.9):
    """The papers' encoder: standardise every feature, then PCA keeping ``variance``.

    PCA runs on the thin SVD of the (n_samples x n_features) matrix, so 500 samples of
    55 000 genes take seconds and about 2 x 220 MB of memory.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.latent import default_encoder
    >>> X = np.random.RandomState(0).normal(size=(50, 20))
    >>> default_encoder(0.9).fit(X).transform(X).shape[1] < 20
    True
    """
    return make_pipeline(StandardScaler(), PCA(n_components=variance, svd_solver="full"))


def decoder_lipschitz_constant(encoder, codes, *, step=1e-3):
    """Lipschitz constant ``a_D`` of ``encoder.inverse_transform`` (Theorem 7.1, paper 000).

    The decoder's Jacobian is taken by finite differences at up to 20 training codes and its
    largest singular value is returned.  For a linear decoder (PCA, TruncatedSVD, a
    StandardScaler-PCA pipeline) this is exact: 1 for PCA, ``max sigma_i`` after
    de-standardisation (Remark 7.2), and the Jacobian is computed once (the decoder is
    checked to be affine along a random direction at the other codes); for a nonlinear
    decoder it is an estimate from below.

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
    codes = np.asarray(codes, dtype=float)
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


class LatentGPA(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """GPA in the latent space of an encoder, returning data in the original space.

    The encoder (any transformer with ``inverse_transform``) is fitted on source and target
    rows together; a ``GPATransporter`` with the same parameters runs on the codes; moved
    codes are decoded.  This is the papers' recipe for 10^4-10^5 genes and a few hundred
    patients (paper 000, section 7; paper 001, Algorithm 2).

    By default (``prealign="meanstd"``, integration only) the source rows are first
    adjusted feature by feature to the target's mean and standard deviation (per class when
    labelled: the papers' baseline F), the encoder is fitted on those and the target rows,
    and the flow starts from the adjusted codes.  Two moments then line up exactly in the
    original space, and the latent flow corrects what two moments cannot.  Without it, the
    latent flow must also remove the batch effect itself, which on few samples in many
    latent dimensions it does only partly (see the gene-expression benchmark).

    Decoding loses what the encoder discards.  ``residual`` decides what happens to that
    part of each moved row:

    * ``"keep"`` (default): add the row's own off-latent residual ``x - D(E(x))`` back,
      so each patient keeps the detail the encoder does not represent (after the
      pre-alignment, its mean and spread already match the target's);
    * ``"adjust"``: the same, with the residual's per-feature mean and std matched to the
      target's (per class) first: useful with ``prealign=None``;
    * ``"drop"``: return ``D(moved code)``, a row on the encoder's manifold (the papers).

    With few rows and many features the encoder fits its training rows far better than new
    ones (on the gene-expression benchmark a new patient's residual is three times a
    training patient's).  ``"drop"`` then moves new rows towards their class's centre in
    the original space: closer in 2-Wasserstein distance to the few target rows of a
    class, but the moved rows lose their spread (the energy distance to the target grows
    fourfold there); ``"keep"`` preserves each row's own detail.

    Parameters
    ----------
    encoder : transformer with ``inverse_transform`` or None, default=None
        None uses ``default_encoder(0.9)``: standardise, then PCA keeping 90 % of the
        variance.  ``PCA``, ``TruncatedSVD``, ``KernelPCA(fit_inverse_transform=True)``,
        a ``Pipeline`` of those, or the package's autoencoder work too.
    residual : {"keep", "adjust", "drop"}, default="keep"
    latent_scale : float, default=1.0
        Codes are multiplied by this before the flow runs (only with
        ``standardize=False``; the authors divide PCA codes of gene data by 10).
    prealign : {"meanstd"} or None, default="meanstd"
        Per-feature moment matching of the source rows in the original space before
        encoding (integration only); None runs the latent flow from the raw source.
    out_of_sample : {"auto", "barycentric", "nearest", "replay"}, default="auto"
        How new source rows move in the latent space (see :class:`GPATransporter`).
        With class labels, "auto" chooses per class flow by leave-one-out on the training
        codes: "nearest" (a new row moves like its nearest training codes) where the flow
        moves neighbouring codes alike, "barycentric" (it goes to the mean of their end
        points) where it scatters them.  The flow scatters them with few rows in a latent
        space of a hundred dimensions: on the gene-expression benchmark the correlation of
        start and end codes is about 0.1, a new row's offset from its neighbours predicts
        nothing about where it should go, and "auto" picks "barycentric".  Without labels
        "auto" is "nearest": one flow carries both classes and "barycentric" would average
        the end points of neighbours of either class (on GSE1992 -> GSE4335 without labels,
        300 steps, 30 % of the source held out, two splits, a classifier trained on the
        target recognised ER in a balanced 52 % of the rows moved by "barycentric", 70 %
        with "nearest" and 75 % after mean/std alone).  Training rows still go exactly to
        their particles.
    **GPA parameters
        ``f``, ``alpha``, ``L``, ``dt``, ... as in :class:`GPATransporter`, applied to the
        codes.

    Attributes
    ----------
    adjuster_ : MeanStdAdjuster or None
        The pre-alignment, when used.
    encoder_ : fitted encoder
    gpa_ : GPATransporter
        The flow fitted on the codes.
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
    particle_labels_ : ndarray or None
        Class of each trained particle.
    history_, n_steps_, classes_ : as in ``gpa_``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa import LatentGPA
    >>> from sklearn_gpa.utils import stack_domains
    >>> rng = np.random.RandomState(0)
    >>> basis = rng.normal(size=(3, 200))
    >>> Xs = rng.normal(size=(80, 3)) @ basis + rng.normal(scale=0.1, size=(80, 200))
    >>> Xt = (rng.normal(size=(80, 3)) + 2) @ basis + rng.normal(scale=0.1, size=(80, 200))
    >>> X, _, sd = stack_domains(Xs, Xt)
    >>> model = LatentGPA(n_steps=100, random_state=0).fit(X, sample_domain=sd)
    >>> model.transform(X, sample_domain=sd).shape
    (160, 200)
    """

    __metadata_request__fit = {"sample_domain": True}
    __metadata_request__transform = {"sample_domain": True}
    __metadata_request__score = {"sample_domain": True}

    _parameter_constraints = {
        **GPA_PARAMETER_CONSTRAINTS,
        "encoder": [HasMethods(["fit", "transform", "inverse_transform"]), None],
        "residual": [StrOptions({"adjust", "drop", "keep"})],
        "latent_scale": [float, int],
    }

    def __init__(
        self,
        encoder=None,
        *,
        residual="keep",
        latent_scale=1.0,
        f="kl",
        alpha=None,
        L=10.0,
        dt=0.01,
        n_steps=300,
        solver="euler",
        hidden_layer_sizes=(32, 32, 32),
        activation="relu",
        n_critic=5,
        learning_rate=5e-3,
        constraint="hard",
        penalty=10.0,
        tol=None,
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
        prealign="meanstd",
        out_of_sample="auto",
    ):
        self.encoder = encoder
        self.residual = residual
        self.latent_scale = latent_scale
        self.f = f
        self.alpha = alpha
        self.L = L
        self.dt = dt
        self.n_steps = n_steps
        self.solver = solver
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.n_critic = n_critic
        self.learning_rate = learning_rate
        self.constraint = constraint
        self.penalty = penalty
        self.tol = tol
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

    def _transporter(self):
        names = GPATransporter._get_param_names()
        params = self.get_params(deep=False)
        return GPATransporter(**{k: v for k, v in params.items() if k in names})

    # ----------------------------------------------------------------------------- fit
    @limit_blas_threads
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, *, sample_domain=None):
        """Fit the encoder on all rows, then the flow on the codes.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None
        sample_domain : array-like of shape (n_samples,), default=None
            ``>= 0`` source, ``< 0`` target; None for generative mode.

        Returns
        -------
        self : LatentGPA
        """
        self._fit(X, y, sample_domain)
        return self

    def _fit(self, X, y, sample_domain):
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        if sample_domain is not None:  # before the encoder: a clear error on a transposed X
            check_sample_domain(sample_domain, len(X), n_features=X.shape[1])
        self.adjuster_ = None
        if sample_domain is not None and self.prealign == "meanstd":
            self.adjuster_ = MeanStdAdjuster(conditional=self.conditional)
            X = self.adjuster_.fit_transform(X, y, sample_domain=sample_domain)
        encoder = default_encoder() if self.encoder is None else clone(self.encoder)
        self.encoder_ = encoder.fit(X)
        codes = self._encode(X)
        self.n_components_ = codes.shape[1]
        residuals = X - self._decode(codes)
        spread = np.sum((X - X.mean(0)) ** 2)
        self.reconstruction_error_ = float(np.sqrt(np.sum(residuals**2) / max(spread, 1e-300)))
        self.decoder_lipschitz_ = decoder_lipschitz_constant(self.encoder_, codes)
        self.gpa_ = self._transporter().set_params(prealign=None)
        self.gpa_.fit(codes, y, sample_domain=sample_domain)
        self._fit_residual_adjustment(residuals, y, sample_domain)
        moved = self.gpa_.particles_
        if sample_domain is None:
            self.particles_ = self._decode(moved)
        else:
            source = check_sample_domain(sample_domain, len(X))
            labels = self.gpa_.particle_labels_
            self.particles_ = self._finish(X[source], codes[source], moved, labels)
        return X, residuals

    def _encode(self, X):
        return np.asarray(self.encoder_.transform(X), dtype=np.float64) * self.latent_scale

    def _decode(self, codes):
        return np.asarray(self.encoder_.inverse_transform(codes / self.latent_scale), dtype=float)

    def _fit_residual_adjustment(self, residuals, y, sample_domain):
        """Per flow, the map matching source residuals' mean and std to the target's."""
        self.residual_maps_ = None
        if self.residual != "adjust" or sample_domain is None:
            return
        source = check_sample_domain(sample_domain, len(residuals))
        classes = self.gpa_.classes_
        groups = [(source, ~source)]
        if classes is not None:
            known = known_labels(y)
            groups = [(source & known & (y == c), ~source & known & (y == c)) for c in classes]
        self.residual_maps_ = [meanstd_map(residuals[s], residuals[t]) for s, t in groups]

    # ---------------------------------------------------------------------- transform
    @limit_blas_threads
    def transform(self, X, y=None, *, sample_domain=None):
        """Move rows through (pre-alignment,) encoder, latent flow and decoder.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None
            After a conditional fit, the class of each row (picks its flow); None routes
            each row to the class predicted from the training source codes.
        sample_domain : array-like of shape (n_samples,), default=None
            Target rows (``< 0``) are returned unchanged; None moves every row.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self, "gpa_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        move = np.ones(len(X), dtype=bool)
        if sample_domain is not None:
            move = check_sample_domain(
                sample_domain, len(X), require_both=False, n_features=X.shape[1]
            )
        out = np.array(X, dtype=X.dtype if X.dtype == np.float32 else np.float64, copy=True)
        if move.any():
            labels = None if y is None else np.asarray(y)[move]
            rows = X[move]
            if self.adjuster_ is not None:
                rows = self.adjuster_.transform(rows, labels)
            codes = self._encode(rows)
            out[move] = self._finish(rows, codes, self.gpa_.transform(codes, labels), labels)
        return out

    def _finish(self, rows, codes, moved_codes, labels):
        """Decode moved codes and treat the off-latent residual as ``residual`` says."""
        decoded = self._decode(moved_codes)
        if self.residual == "drop":
            return decoded
        residual = rows - self._decode(codes)
        if self.residual_maps_ is not None:
            flows = self.gpa_._assign_flows(self.gpa_._scale(codes), labels)
            for k, (a, b) in enumerate(self.residual_maps_):
                residual[flows == k] = residual[flows == k] * a + b
        return decoded + residual

    @limit_blas_threads
    def fit_transform(self, X, y=None, *, sample_domain=None):
        """Fit; return ``X`` with source rows replaced by the trained particles, decoded.

        In generative mode this is ``fit(X).transform(X)``.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features)
        """
        self._fit(X, y, sample_domain)
        if sample_domain is None:
            return self.transform(X)
        source = check_sample_domain(sample_domain, len(X))
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        out = np.array(X, dtype=X.dtype, copy=True)  # float32 in, float32 out (as transform)
        out[source] = self.particles_
        return out

    def sample(self, n_samples=1, *, y=None, random_state=None):
        """New samples in the original space: latent samples of ``gpa_``, decoded.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self, "gpa_")
        return self._decode(self.gpa_.sample(n_samples, y=y, random_state=random_state))

    def score(self, X, y=None, *, sample_weight=None, sample_domain=None):
        """Minus the energy distance in the original space (see ``GPATransporter.score``).

        Returns
        -------
        score : float
        """
        return GPATransporter.score(
            self, X, y, sample_weight=sample_weight, sample_domain=sample_domain
        )

    # The generative/integration switch and diagnostics live on the latent transporter.
    @property
    def mode_(self):
        return self.gpa_.mode_

    @property
    def history_(self):
        return self.gpa_.history_

    @property
    def n_steps_(self):
        return self.gpa_.n_steps_

    @property
    def classes_(self):
        return self.gpa_.classes_

    @property
    def particle_labels_(self):
        return self.gpa_.particle_labels_

    @property
    def flow_(self):
        return self.gpa_.flow_
