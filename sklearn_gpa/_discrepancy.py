"""An encoder onto the directions in which a source and a target sample differ."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from .utils import check_sample_domain, known_labels

__all__ = ["DiscrepancyEncoder"]


def _covariance_gap(codes, n_source):
    """Eigen-decomposition of the source covariance minus the target covariance."""
    source, target = codes[:n_source], codes[n_source:]
    gap = source.T @ source / len(source) - target.T @ target / len(target)
    return np.linalg.eigh(gap)


class DiscrepancyEncoder(TransformerMixin, BaseEstimator):
    """Linear codes along the directions where the source's covariance differs from the target's.

    Both sides are standardised by the target's per-feature standard deviations and
    centred on their own means; the eigenvectors of the difference of their covariances
    (in the span of the rows) are kept when their eigenvalue exceeds, in absolute value,
    the 95th percentile of the largest one over ``n_permutations`` random reassignments of
    the rows to the two sides: directions in which the two samples differ beyond sampling
    noise.  A flow on these codes moves rows only where the data show a difference, and
    leaves every row's own deviation in the other directions to it; when no direction
    passes the test the encoder has no component (``n_components_ == 0``).

    With labels ``y`` on target rows, the directions are made orthogonal to the target's
    class-mean contrasts, so that a flow does not move rows along the axes that separate the
    target's classes (with labels on the target only, a label-free flow would otherwise
    carry the classes' different prevalences into the source rows).

    It is :class:`LatentGPA`'s encoder for integration; fit it on mean/std-aligned rows.

    Parameters
    ----------
    max_components : int, default=10
        At most this many directions, the largest gaps first.
    n_permutations : int, default=20
        Random reassignments of rows to the two sides that set the noise level.
    random_state : int, RandomState instance or None, default=0
        Seeds the permutations.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        Orthonormal directions, in the standardised units.
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
        "random_state": ["random_state"],
    }

    def __init__(self, max_components=10, n_permutations=20, random_state=0):
        self.max_components = max_components
        self.n_permutations = n_permutations
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
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=4)
        if sample_domain is None:
            raise ValueError("DiscrepancyEncoder needs sample_domain (>= 0 source, < 0 target).")
        source = check_sample_domain(sample_domain, len(X), n_features=X.shape[1])
        Xs, Xt = X[source], X[~source]
        scale = Xt.std(0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        self.mean_ = Xt.mean(0)
        pooled = np.vstack([(Xs - Xs.mean(0)) / self.scale_, (Xt - Xt.mean(0)) / self.scale_])
        _, singular, basis = np.linalg.svd(pooled, full_matrices=False)
        basis = basis[singular > 1e-8 * singular[0]] if len(singular) else basis
        codes = pooled @ basis.T
        values, vectors = _covariance_gap(codes, len(Xs))
        rng = check_random_state(self.random_state)
        null = [
            np.abs(_covariance_gap(codes[rng.permutation(len(codes))], len(Xs))[0]).max()
            for _ in range(self.n_permutations)
        ]
        order = np.argsort(-np.abs(values))
        keep = order[np.abs(values[order]) > np.quantile(null, 0.95)][: self.max_components]
        directions = vectors[:, keep].T @ basis
        contrasts = self._class_contrasts(Xt, None if y is None else np.asarray(y)[~source])
        if len(directions) and len(contrasts):
            q = np.linalg.qr(contrasts.T)[0]
            directions = directions - (directions @ q) @ q.T
        if len(directions):
            directions = np.linalg.qr(directions.T)[0].T
        self.components_ = directions.reshape(len(keep), X.shape[1])
        self.n_components_ = len(keep)
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
        """Codes of rows: ``((X - mean_) / scale_) @ components_.T``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return ((X - self.mean_) / self.scale_) @ self.components_.T

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
