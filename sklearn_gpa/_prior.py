"""The prior of generative flows: where the particles start, in standardised units."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.covariance import ledoit_wolf

__all__ = ["SOURCES", "Prior", "split_counts"]

SOURCES = ("normal", "uniform", "logistic", "gaussian_fit")

# A full covariance for the moment-matched prior is kept up to this many features;
# above it the prior is diagonal (a d x d factor per class would dominate memory).
_FULL_COVARIANCE_MAX_FEATURES = 500


@dataclass
class Prior:
    """A fixed law shared by all flows, or a Gaussian fitted to each flow's target rows.

    ``mean[k]`` and ``factor[k]`` (a Cholesky factor, or per-feature standard deviations
    above ``_FULL_COVARIANCE_MAX_FEATURES`` features) describe flow k's ``"gaussian_fit"``.
    """

    source: str
    n_features: int
    mean: list = field(default_factory=list)
    factor: list = field(default_factory=list)

    @classmethod
    def fit(cls, source: str, targets) -> Prior:
        """The prior of each flow, from the flows' (standardised) target rows."""
        d = targets[0].shape[1]
        prior = cls(source, d)
        if source == "gaussian_fit":
            prior.mean = [t.mean(0) for t in targets]
            prior.factor = [_gaussian_factor(t) for t in targets]
        return prior

    def draw(self, flow: int, n: int, rng) -> np.ndarray:
        """``n`` draws for flow ``flow``, shape ``(n, n_features)``."""
        d = self.n_features
        if self.source == "normal":
            return rng.standard_normal((n, d))
        if self.source == "uniform":
            return rng.uniform(-math.sqrt(3.0), math.sqrt(3.0), (n, d))
        if self.source == "logistic":
            return rng.logistic(0.0, math.sqrt(3.0) / math.pi, (n, d))
        noise = rng.standard_normal((n, d))
        factor = self.factor[flow]
        shaped = noise @ factor.T if factor.ndim == 2 else noise * factor
        return self.mean[flow] + shaped


def _gaussian_factor(rows):
    """Cholesky factor of the class covariance, shrunk towards its diagonal.

    Ledoit-Wolf shrinkage of the correlation matrix (towards the identity), rescaled by
    the features' standard deviations: a feature that is constant in the class (a pixel
    that is never lit) gets no variance, where shrinking the covariance towards a multiple
    of the identity would give it noise that the flow must then remove.
    """
    d = rows.shape[1]
    if len(rows) < 2:
        return np.zeros(d)
    std = rows.std(0)
    if d > _FULL_COVARIANCE_MAX_FEATURES:
        return std
    varying = std > 1e-12 * max(1.0, float(std.max()))
    factor = np.zeros((d, d))
    if varying.any():
        corr, _ = ledoit_wolf(rows[:, varying] / std[varying])
        inner = np.linalg.cholesky(corr + 1e-9 * np.eye(int(varying.sum())))
        factor[np.ix_(varying, varying)] = std[varying, None] * inner
    return factor


def split_counts(total, sizes):
    """Split ``total`` particles across flows in proportion to ``sizes``, at least one each."""
    sizes = np.asarray(sizes, dtype=float)
    counts = np.maximum(1, np.floor(total * sizes / sizes.sum()).astype(int))
    counts[np.argmax(sizes)] += max(0, total - counts.sum())
    return counts.tolist()
