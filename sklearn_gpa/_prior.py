"""The prior of generative flows: where the particles start, in standardised units."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.covariance import ledoit_wolf
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.utils import check_random_state

from ._threadpool import one_thread

__all__ = ["SOURCES", "Prior", "split_counts"]

SOURCES = ("normal", "uniform", "logistic", "gaussian_fit", "mixture_fit")

# "mixture_fit" tries Gaussian mixtures of 2 .. _MIXTURE_MAX_COMPONENTS components (full
# covariances) for a flow's target rows of at most _MIXTURE_MAX_FEATURES features, at most
# one component per _MIXTURE_ROWS_PER_COMPONENT rows, and keeps the one of lowest BIC if it
# beats one Gaussian's.  The covariances get _MIXTURE_REG times the rows' mean feature
# variance added to their diagonal (a component's rows can be few).
_MIXTURE_MAX_COMPONENTS = 5
_MIXTURE_MAX_FEATURES = 50
_MIXTURE_ROWS_PER_COMPONENT = 10
_MIXTURE_REG = 1e-3
# Above this many rows, the mixtures are fitted on a random subset of this size: a prior
# needs the clusters' rough shape, and EM with full covariances costs n k d^2 per iteration.
_MIXTURE_MAX_ROWS = 2000

# A full covariance for the moment-matched prior is kept up to this many features;
# above it the prior is diagonal (a d x d factor per class would dominate memory).
_FULL_COVARIANCE_MAX_FEATURES = 500


@dataclass
class Prior:
    """A fixed law shared by all flows, or a Gaussian (mixture) fitted to each flow's rows.

    ``mean[k]`` and ``factor[k]`` (a Cholesky factor, or per-feature standard deviations
    above ``_FULL_COVARIANCE_MAX_FEATURES`` features) describe flow k's ``"gaussian_fit"``.
    With ``"mixture_fit"``, ``mixture[k]`` is None (flow k keeps that one Gaussian) or the
    ``(weights, means, cholesky_factors)`` of the Gaussian mixture chosen by BIC.
    """

    source: str
    n_features: int
    mean: list = field(default_factory=list)
    factor: list = field(default_factory=list)
    mixture: list = field(default_factory=list)

    @classmethod
    def fit(cls, source: str, targets, random_state=None) -> Prior:
        """The prior of each flow, from the flows' (standardised) target rows.

        ``random_state`` seeds the mixtures' fits of ``"mixture_fit"`` (only they draw from it).
        """
        d = targets[0].shape[1]
        prior = cls(source, d)
        if source in ("gaussian_fit", "mixture_fit"):
            prior.mean = [t.mean(0) for t in targets]
            prior.factor = [_gaussian_factor(t) for t in targets]
        if source == "mixture_fit":
            seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
            prior.mixture = [_mixture(t, seed + k) for k, t in enumerate(targets)]
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
        if self.mixture and self.mixture[flow] is not None:
            weights, means, factors = self.mixture[flow]
            component = rng.choice(len(weights), size=n, p=weights)
            return means[component] + np.einsum("nij,nj->ni", factors[component], noise)
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


def _mixture(rows, seed):
    """The Gaussian mixture of lowest BIC for ``rows``, or None when one Gaussian is best.

    Candidates: 1 .. ``_MIXTURE_MAX_COMPONENTS`` components with full covariances (one
    initialisation each, seeded; on ``_MIXTURE_MAX_ROWS`` random rows of more), at most one
    per ``_MIXTURE_ROWS_PER_COMPONENT`` rows; none above ``_MIXTURE_MAX_FEATURES`` features
    (images, genes), where a few rows cannot support several full covariances.  When one
    component wins, the flow keeps the shrunk Gaussian of ``"gaussian_fit"``; a candidate
    whose fit fails (rows all alike) is skipped.
    """
    n, d = rows.shape
    most = min(_MIXTURE_MAX_COMPONENTS, n // _MIXTURE_ROWS_PER_COMPONENT)
    if d > _MIXTURE_MAX_FEATURES or most < 2:
        return None
    if n > _MIXTURE_MAX_ROWS:
        rows = rows[np.random.RandomState(seed).choice(n, _MIXTURE_MAX_ROWS, replace=False)]
    reg = _MIXTURE_REG * max(float(rows.var(0).mean()), 1e-12)
    best, best_bic = None, np.inf
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for k in range(1, most + 1):
            gm = GaussianMixture(k, covariance_type="full", reg_covar=reg, random_state=seed)
            try:
                bic = gm.fit(rows).bic(rows)
            except ValueError:  # an ill-defined covariance: fewer distinct rows than needed
                continue
            if bic < best_bic:
                best, best_bic = gm, bic
    if best is None or best.n_components == 1:
        return None
    weights = best.weights_ / best.weights_.sum()
    return weights, best.means_, np.linalg.cholesky(best.covariances_)


def split_counts(total, sizes):
    """Split ``total`` particles across flows in proportion to ``sizes``, at least one each."""
    sizes = np.asarray(sizes, dtype=float)
    counts = np.maximum(1, np.floor(total * sizes / sizes.sum()).astype(int))
    counts[np.argmax(sizes)] += max(0, total - counts.sum())
    return counts.tolist()
