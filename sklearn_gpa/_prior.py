"""The prior of generative flows: where the particles start, in standardised units."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import signal, special, stats
from scipy.linalg import solve_triangular
from scipy.special import logsumexp
from sklearn.covariance import ledoit_wolf
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.utils import check_random_state

from ._threadpool import one_thread
from .utils import sorted_quantiles

__all__ = ["SOURCES", "Prior", "match_marginals", "split_counts"]

SOURCES = ("normal", "uniform", "logistic", "gaussian_fit", "mixture_fit", "copula_fit")

# "mixture_fit" tries Gaussian mixtures of 2 .. _MIXTURE_MAX_COMPONENTS components (full
# covariances) for a flow's target rows of at most _MIXTURE_MAX_FEATURES features, at most
# one component per _MIXTURE_ROWS_PER_COMPONENT rows, and keeps the one of lowest BIC if it
# beats one Gaussian's.  The covariances get _MIXTURE_REG times the rows' mean feature
# variance added to their diagonal (a component's rows can be few).
_MIXTURE_MAX_COMPONENTS = 5
_MIXTURE_MAX_FEATURES = 50
_MIXTURE_ROWS_PER_COMPONENT = 10
_MIXTURE_REG = 1e-3
# "copula_fit" (the default) does the same on the rows' normal scores (each value replaced by
# the standard normal quantile of its mid-rank in its feature); where BIC keeps one Gaussian,
# and always above _MIXTURE_MAX_FEATURES features (images: a pixel's zeros and whole values
# are kept, which one Gaussian of the values never draws), a kernel density of the scores (a
# smoothed bootstrap) replaces it.  Draws go back through each feature's empirical quantile
# function, stored at most at this many levels.
_COPULA_MAX_LEVELS = 1000
# The kernel's bandwidth is Silverman's rule for the class's rows times this factor (1.0 and
# 1.3 measured: the same C2ST and efficacy, 1.3 keeps the samples farther from the rows).
_COPULA_BANDWIDTH = 1.3
# Each feature's marginal distribution under the kernel density is tabulated on this many
# normal scores evenly spaced over [-_COPULA_GRID_EDGE, _COPULA_GRID_EDGE].
_COPULA_GRID_POINTS = 257
_COPULA_GRID_EDGE = 8.0
_COPULA_GRID = np.linspace(-_COPULA_GRID_EDGE, _COPULA_GRID_EDGE, _COPULA_GRID_POINTS)
# That table is computed when first needed, never stored with the model.  Up to
# _COPULA_EXACT_ROWS rows it is the exact mean of the kernels' normal distribution functions,
# O(n G d) for n rows; above, the kernel's centres are linearly binned on a grid
# _COPULA_GRID_REFINE times finer and convolved with the kernel's normal distribution function
# (an FFT, _COPULA_CDF_CHUNK features at a time), O(G d) whatever n (the two cost the same at
# about 100 rows: bench_prior.py).  The binned table is within a few 1e-5 of the exact one.
_COPULA_EXACT_ROWS = 100
_COPULA_GRID_REFINE = 8
_COPULA_CDF_CHUNK = 128
# sample()'s marginal map leaves a feature alone where the particles' distribution is already
# as close to the class's values as a fresh sample of them would be: a two-sample
# Kolmogorov-Smirnov distance at most this times sqrt(1 / m + 1 / n), its 5 % critical value
# (n: the quantile table's length, the class's rows or at most _COPULA_MAX_LEVELS).  There the
# map would only trade the particles' sampling noise for the training rows' and shift each
# sample along that feature, off a thin joint structure (2-D point clouds: C2ST 0.614 ->
# 0.588, the tables level; benchmarks/README.md).  0 maps every feature.
MARGINAL_TEST_LEVEL = 1.358
# A spacing between consecutive sorted values over this many times their median spacing is a
# gap between clusters, which the quantile function jumps instead of filling.
_COPULA_GAP = 10.0
# Above this many rows, the mixtures are fitted on a random subset of this size: a prior
# needs the clusters' rough shape, and EM with full covariances costs n k d^2 per iteration.
_MIXTURE_MAX_ROWS = 2000

# A full covariance for the moment-matched prior is kept up to this many features;
# above it the prior is diagonal (a d x d factor per class would dominate memory).
_FULL_COVARIANCE_MAX_FEATURES = 500

LOG_2PI = math.log(2 * math.pi)


@dataclass
class Prior:
    """A fixed law shared by all flows, or a Gaussian (mixture, copula) fitted to each flow.

    ``mean[k]`` and ``factor[k]`` (a Cholesky factor, or per-feature standard deviations
    above ``_FULL_COVARIANCE_MAX_FEATURES`` features) describe flow k's ``"gaussian_fit"``.
    With ``"mixture_fit"``, ``mixture[k]`` is None (flow k keeps that one Gaussian) or the
    ``(weights, means, cholesky_factors)`` of the Gaussian mixture chosen by BIC.  With
    ``"copula_fit"``, ``mixture[k]`` is BIC's mixture of the rows' normal scores, or None and
    ``kernel[k]`` their kernel density (:class:`_Kernel`) where BIC keeps one Gaussian: a few
    rows of a curved or clustered class, whose shape one Gaussian would smear, and always
    above ``_MIXTURE_MAX_FEATURES`` features (images), where no mixture is tried.  ``mean[k]``
    and ``factor[k]`` still describe the values, and ``quantiles[k]`` holds each feature's
    sorted values (its empirical quantile function), through which the draws go back: a
    copula with the rows' own marginals.  A binary feature keeps its two values in their
    proportions, a constant one stays constant (a pixel never lit in a class stays 0, one
    often lit keeps its share of zeros), a heavy tail keeps its quantiles.
    """

    source: str
    n_features: int
    mean: list = field(default_factory=list)
    factor: list = field(default_factory=list)
    mixture: list = field(default_factory=list)
    quantiles: list = field(default_factory=list)
    kernel: list = field(default_factory=list)

    @classmethod
    def fit(cls, source: str, targets, random_state=None) -> Prior:
        """The prior of each flow, from the flows' (standardised) target rows.

        ``random_state`` seeds the mixtures' fits of ``"mixture_fit"`` (only they draw from it).
        """
        d = targets[0].shape[1]
        prior = cls(source, d)
        if source not in ("gaussian_fit", "mixture_fit", "copula_fit"):
            return prior
        prior.mean = [t.mean(0) for t in targets]
        prior.factor = [_gaussian_factor(t) for t in targets]
        if source == "gaussian_fit":
            return prior
        seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
        if source == "copula_fit":
            prior.quantiles = [_quantile_table(t) for t in targets]
            scores = [_normal_scores(t) for t in targets]
            prior.mixture = [_mixture(z, seed + k) for k, z in enumerate(scores)]
            prior.kernel = [
                _Kernel.fit(z, seed + k) if m is None else None
                for k, (z, m) in enumerate(zip(scores, prior.mixture))
            ]
        else:
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
        if self.kernel and self.kernel[flow] is not None:
            probabilities = self.kernel[flow].probabilities(noise, rng)
            return _from_probabilities(probabilities, self.quantiles[flow])
        if not self.mixture or self.mixture[flow] is None:
            factor = self.factor[flow]
            shaped = noise @ factor.T if factor.ndim == 2 else noise * factor
            return self.mean[flow] + shaped
        weights, means, factors = self.mixture[flow]
        component = rng.choice(len(weights), size=n, p=weights)
        draws = np.empty((n, d))
        for c, (mean, factor) in enumerate(zip(means, factors)):
            rows = component == c  # per component: no (n, d, d) stack of factors
            draws[rows] = mean + noise[rows] @ factor.T
        if not self.quantiles:
            return draws
        spreads = np.linalg.norm(factors, axis=2)
        probabilities = _marginal_cdf(draws, means, spreads, weights)
        return _from_probabilities(probabilities, self.quantiles[flow])

    def log_density(self, flow: int, Z) -> np.ndarray:
        """Log density of flow ``flow``'s law at the rows ``Z``, up to a constant that all
        flows share (so comparable across flows, not across priors).

        A fixed law is the same for every flow: zero.  The fitted Gaussian's covariance gets
        ``_MIXTURE_REG`` times the flows' mean feature variance added to its diagonal, as the
        mixtures' do: a feature constant in a class (a pixel never lit) has no variance.  A
        copula is represented by the Gaussian of its rows' values (its own density is zero
        outside each feature's range and infinite on tied values, no basis for a vote).
        """
        Z = np.asarray(Z, dtype=np.float64)
        if self.source not in ("gaussian_fit", "mixture_fit", "copula_fit"):
            return np.zeros(len(Z))
        if self.mixture and self.mixture[flow] is not None and not self.quantiles:
            weights, means, factors = self.mixture[flow]
            terms = [
                math.log(w) + _gaussian_log_density(Z, m, f)
                for w, m, f in zip(weights, means, factors)
            ]
            return logsumexp(terms, axis=0)
        factor, reg = self.factor[flow], _MIXTURE_REG * self._mean_variance()
        if factor.ndim == 1:
            return _gaussian_log_density(Z, self.mean[flow], np.sqrt(factor**2 + reg))
        covariance = factor @ factor.T + reg * np.eye(len(factor))
        return _gaussian_log_density(Z, self.mean[flow], np.linalg.cholesky(covariance))

    def __getstate__(self):
        return {**self.__dict__, "factor": [_packed(f) for f in self.factor]}

    def __setstate__(self, state):
        self.__dict__.update({**state, "factor": [_unpacked(f) for f in state["factor"]]})

    def _mean_variance(self) -> float:
        """The fitted Gaussians' feature variance, averaged over features and flows."""
        return max(float(np.mean([np.sum(np.square(f)) / len(f) for f in self.factor])), 1e-12)


@dataclass
class _Kernel:
    """A kernel density of one flow's normal scores, and each feature's marginal law under it.

    A smoothed bootstrap: a draw is a row's scores, shrunk towards their mean by
    ``1 / sqrt(1 + h^2)``, plus Gaussian noise of ``h^2 / (1 + h^2)`` times the rows' shrunk
    covariance (``_gaussian_factor``; per-feature standard deviations above
    ``_FULL_COVARIANCE_MAX_FEATURES`` features, so ``factor`` is then a vector and the noise
    independent across features): the draws keep the rows' mean and each feature's variance
    (the noise's correlations are the shrunk ones).  ``h`` is Silverman's rule,
    ``(4 / (d + 2))^(1 / (d + 4)) n^(-1 / (d + 4))`` for ``n`` rows of ``d`` varying features,
    times ``_COPULA_BANDWIDTH``.  ``centres`` (the shrunk rows) are stored in float32.
    ``cdf[:, j]`` is the draws' distribution function of feature ``j`` at the scores
    ``_COPULA_GRID``, computed on first use and left out of the pickle (at 784 features it is
    1.6 MB per flow, more than the centres of a few hundred rows).
    """

    centres: np.ndarray
    factor: np.ndarray
    _cdf: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fit(cls, scores, seed) -> _Kernel:
        """The kernel density of ``scores`` (on ``_MIXTURE_MAX_ROWS`` random rows of more)."""
        n, d = scores.shape
        if n > _MIXTURE_MAX_ROWS:
            pick = np.random.RandomState(seed).choice(n, _MIXTURE_MAX_ROWS, replace=False)
            scores, n = scores[pick], _MIXTURE_MAX_ROWS
        factor = _gaussian_factor(scores)  # zero for a single row: draws are that row
        varying = max(int(np.sum(scores.std(0) > 1e-12)), 1)
        h = _COPULA_BANDWIDTH * (4 / (varying + 2) / n) ** (1 / (varying + 4))
        shrink = 1 / math.sqrt(1 + h * h)
        mean = scores.mean(0)
        centres = (mean + shrink * (scores - mean)).astype(np.float32)
        return cls(centres, h * shrink * factor)

    @property
    def spreads(self) -> np.ndarray:
        """Each feature's kernel standard deviation (at least 1e-12)."""
        factor = self.factor
        spreads = np.abs(factor) if factor.ndim == 1 else np.linalg.norm(factor, axis=1)
        return np.maximum(spreads, 1e-12)

    @property
    def cdf(self) -> np.ndarray:
        if self._cdf is None:
            exact = len(self.centres) <= _COPULA_EXACT_ROWS
            table = _exact_normal_cdf if exact else _binned_normal_cdf
            self._cdf = table(self.centres, self.spreads)
        return self._cdf

    def __getstate__(self):
        return {**self.__dict__, "_cdf": None, "factor": _packed(self.factor)}

    def __setstate__(self, state):
        self.__dict__.update({**state, "factor": _unpacked(state["factor"])})

    def probabilities(self, noise, rng):
        """Draws of normal scores, from standard normal ``noise`` rows, as each feature's
        marginal distribution function at them (uniform on (0, 1) for every feature, even
        where tied values made the scores far from standard normal)."""
        scores = self.centres[rng.randint(len(self.centres), size=len(noise))]
        factor = self.factor
        scores = scores + (noise * factor if factor.ndim == 1 else noise @ factor.T)
        cdf = self.cdf
        return np.column_stack(
            [np.interp(scores[:, j], _COPULA_GRID, cdf[:, j]) for j in range(scores.shape[1])]
        )


def _exact_normal_cdf(centres, spreads):
    """``mean_i Phi((g - centres[i, j]) / spreads[j])`` at every ``g`` of ``_COPULA_GRID``,
    shape ``(len(_COPULA_GRID), d)``."""
    centres = centres.astype(np.float64)
    return np.column_stack(
        [
            special.ndtr((_COPULA_GRID[:, None] - centres[None, :, j]) / spreads[j]).mean(1)
            for j in range(centres.shape[1])
        ]
    )


def _binned_normal_cdf(centres, spreads):
    """:func:`_exact_normal_cdf`, approximately and in O(G d) for any number of rows: the
    centres binned linearly on a grid ``_COPULA_GRID_REFINE`` times finer, convolved with
    each feature's normal distribution function."""
    n, d = centres.shape
    refine, points = _COPULA_GRID_REFINE, (_COPULA_GRID_POINTS - 1) * _COPULA_GRID_REFINE + 1
    step = 2 * _COPULA_GRID_EDGE / (points - 1)
    position = np.clip((centres.astype(np.float64) + _COPULA_GRID_EDGE) / step, 0, points - 1)
    low = np.minimum(position.astype(np.intp), points - 2)
    upper = position - low
    columns = np.broadcast_to(np.arange(d), (n, d))
    weights = np.zeros((points, d))
    np.add.at(weights, (low, columns), (1.0 - upper) / n)
    np.add.at(weights, (low + 1, columns), upper / n)
    # Coarse point k is fine point k * refine; bin m contributes Phi((k refine - m) step / s).
    offsets = np.arange(1 - points, points) * step
    wanted = points - 1 + refine * np.arange(_COPULA_GRID_POINTS)
    cdf = np.empty((_COPULA_GRID_POINTS, d))
    for start in range(0, d, _COPULA_CDF_CHUNK):
        part = slice(start, start + _COPULA_CDF_CHUNK)
        kernel = special.ndtr(offsets[:, None] / spreads[None, part])
        cdf[:, part] = signal.fftconvolve(weights[:, part], kernel, axes=0)[wanted]
    return np.clip(cdf, 0.0, 1.0)


def _normal_scores(rows):
    """Each feature's values replaced by the standard normal quantiles of their mid-ranks
    (tied values share a score)."""
    return special.ndtri((stats.rankdata(rows, axis=0) - 0.5) / len(rows))


def _quantile_table(rows):
    """Each feature's sorted values, or its quantiles at ``_COPULA_MAX_LEVELS`` evenly
    spaced levels for more rows (the table is stored with the model)."""
    ordered = np.sort(rows, axis=0)
    n = len(rows)
    if n <= _COPULA_MAX_LEVELS:
        return ordered
    # From the one sort (np.quantile's partition at 1000 levels is slow).
    return sorted_quantiles(ordered, (np.arange(_COPULA_MAX_LEVELS) + 0.5) / _COPULA_MAX_LEVELS)


def _quantile_function(probabilities, column):
    """A feature's empirical quantile function at ``probabilities``: linear between its
    sorted values ``column`` (at levels ``(i + 0.5) / n``), except across a gap (a spacing
    over ``_COPULA_GAP`` times the median spacing: between two clusters of values), which it
    jumps, so that no probability mass falls where the rows have none."""
    n = len(column)
    if n == 1:
        return np.full(len(probabilities), column[0])
    position = np.clip(probabilities * n - 0.5, 0.0, n - 1.0)
    low = np.minimum(position.astype(np.intp), n - 2)
    fraction = position - low
    spacing = np.diff(column)
    gap = spacing > _COPULA_GAP * max(float(np.median(spacing)), 1e-12)
    fraction = np.where(gap[low], (fraction >= 0.5).astype(float), fraction)
    return column[low] + fraction * spacing[low]


def match_marginals(rows, ends, table):
    """``rows`` of one flow, each feature sent through the increasing map that takes its
    distribution among ``ends`` (the flow's trained particles) onto the quantile function
    ``table`` (the prior's, :func:`_quantile_table` of the flow's target rows).

    A particle flow moves every value continuously: a feature that is 0 in 80 % of a class's
    rows comes out spread around 0, which a forest tells from real rows at once.  The map
    keeps each row's rank among the particles in every feature (the dependence the flow
    learned) and gives each feature back the values its class takes.  The particles'
    distribution function is their mid-ranks, linear in between and constant past the
    extremes.  A feature whose particles are already distributed like the table, within a
    fresh sample's noise (the two-sample Kolmogorov-Smirnov distance at most
    ``MARGINAL_TEST_LEVEL`` times the test's scale), is only clipped to the table's range.
    """
    ends = np.sort(np.asarray(ends, dtype=np.float64), axis=0)
    n = len(ends)
    out = np.array(rows, dtype=np.float64)
    critical = MARGINAL_TEST_LEVEL * math.sqrt(1.0 / n + 1.0 / len(table))
    for j in range(rows.shape[1]):
        if stats.ks_2samp(ends[:, j], table[:, j], method="asymp").statistic <= critical:
            # Still within the class's values, as the map's outputs are.
            out[:, j] = np.clip(out[:, j], table[0, j], table[-1, j])
            continue
        values, first, counts = np.unique(ends[:, j], return_index=True, return_counts=True)
        levels = (first + 0.5 * counts) / n
        out[:, j] = _quantile_function(np.interp(rows[:, j], values, levels), table[:, j])
    return out


def _marginal_cdf(scores, means, spreads, weights):
    """The fitted Gaussian mixture's cumulative distribution of each feature at ``scores``:
    ``sum_k w_k Phi((z - m_kj) / s_kj)``."""
    z = (scores[:, None, :] - means[None]) / np.maximum(spreads[None], 1e-12)
    return np.einsum("k,nkj->nj", weights, special.ndtr(z))


def _from_probabilities(probabilities, table):
    """Draws back to values: each feature's probabilities (a draw's place in the fitted
    model's own marginal distribution: a feature that is 0 in 90 % of the rows stays 0 in
    90 % of the draws) through the feature's empirical quantile function."""
    return np.column_stack(
        [_quantile_function(probabilities[:, j], table[:, j]) for j in range(table.shape[1])]
    )


def _packed(factor):
    """A lower-triangular factor as its lower triangle (half the pickle), else itself."""
    if factor.ndim != 2 or np.any(np.triu(factor, 1)):
        return factor
    return ("lower", len(factor), factor[np.tril_indices(len(factor))])


def _unpacked(factor):
    """The inverse of :func:`_packed`."""
    if not isinstance(factor, tuple):
        return factor
    _, d, values = factor
    full = np.zeros((d, d))
    full[np.tril_indices(d)] = values
    return full


def _gaussian_log_density(Z, mean, factor):
    """Log density at the rows ``Z`` of the Gaussian of ``mean`` and covariance ``factor
    factor^T`` (a lower Cholesky factor, or per-feature standard deviations)."""
    centred = Z - mean
    if factor.ndim == 1:
        whitened, diagonal = centred / factor, factor
    else:
        whitened, diagonal = solve_triangular(factor, centred.T, lower=True).T, np.diag(factor)
    log_det = np.sum(np.log(diagonal))
    return -0.5 * np.einsum("ij,ij->i", whitened, whitened) - log_det - 0.5 * Z.shape[1] * LOG_2PI


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
