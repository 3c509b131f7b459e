"""An intensity-dependent curve shared by features of one unit (microarray intensity bias).

A per-feature affine map (mean/std, ComBat) cannot undo a curve that bends each gene's
values, and per-feature quantile mapping can, but with a few dozen rows per side each
gene's quantiles are noisy (on the known-truth benchmark it recovered rows worse than
mean/std, even under a curve).  A curve of the measured intensity is shared by genes of
similar intensity, though: each gene's standardised source quantiles are mapped onto its
standardised target quantiles as pooled over the genes of nearest target mean (a tenth of
them), so that every gene's map averages a few dozen to thousands of genes' noise away.
The map changes only each gene's shape: the gene keeps the mean and standard deviation the
per-feature pre-alignment gave it, and each row its rank within the gene.

``LatentGPA`` fits it on the rows it corrected, last: where its encoder finds directions
of per-sample variation (which change the genes' shapes too), after the flow removed
them.  It fits it only on evidence: the features share a unit (the rule of
``standardize="auto"``, features in another unit left out and kept), there are at least
``MIN_FEATURES`` of them, and the pooled shapes of the two sides differ more than those
of two random parts of one side's own rows (``PERMUTATIONS`` splits of each side in
turn, at the same sizes: a test at ``CURVE_ALPHA``).  The map is then shrunk towards the
identity by the share of the difference that such splits give (``1 - null / observed``).
Two halves of one study and per-gene affine effects stay below the test (fired on 3 of
160 halvings of eight studies); strong intensity curves are far above it
(``benchmarks/README.md``, "A shared intensity curve").  Any difference of the genes'
shapes reads as a curve, a biological one too (two sides with very different mixes of a
class that changes many genes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._scaling import odd_unit_features, resolve_scaling
from .utils import sorted_quantiles

__all__ = ["IntensityCurve"]

MIN_FEATURES = 50
# Each gene's map pools the genes whose target means are nearest: this share of them.
WINDOW_SHARE = 0.1
LEVELS = np.linspace(0.02, 0.98, 25)
PERMUTATIONS = 39
OBSERVED_DRAWS = 5
CURVE_ALPHA = 0.05
# The map's slopes beyond its end knots are kept within these.
END_SLOPES = (1 / 3, 3.0)
# Module switch for benchmarks: False never fits a curve (as before 2026-12-07).
ENABLED = True


def _shape_quantiles(X):
    """Each feature's quantiles at ``LEVELS``, standardised (its mean 0 and standard
    deviation 1), shape (n_features, n_levels)."""
    centre, spread = _units(X)
    return ((sorted_quantiles(np.sort(X, axis=0), LEVELS) - centre) / spread).T


def _units(X):
    """Each feature's mean and standard deviation (1 where it is 0)."""
    spread = X.std(0)
    return X.mean(0), np.where(spread > 0, spread, 1.0)


def _pooled(quantiles, order, half):
    """Each feature's quantiles averaged over the ``2 * half + 1`` features next to it in
    ``order`` (fewer where there are fewer), in the features' own order."""
    n = len(order)
    sums = np.vstack([np.zeros(quantiles.shape[1]), np.cumsum(quantiles[order], axis=0)])
    low = np.clip(np.arange(n) - half, 0, max(0, n - 2 * half - 1))
    high = np.minimum(n, low + 2 * half + 1)
    pooled = (sums[high] - sums[low]) / (high - low)[:, None]
    out = np.empty_like(pooled)
    out[order] = pooled
    return out


def _difference(source, target, half):
    """The pooled maps' knots (source, target quantiles), the genes pooled by their mean
    in ``target``, and the knots' mean squared gap.  Knots increase (an average of
    increasing quantiles, made exactly so: differences of cumulative sums left steps of
    -7e-16)."""
    order = np.argsort(target.mean(0), kind="stable")
    s = np.maximum.accumulate(_pooled(_shape_quantiles(source), order, half), axis=1)
    t = np.maximum.accumulate(_pooled(_shape_quantiles(target), order, half), axis=1)
    return s, t, float(np.mean((t - s) ** 2))


@dataclass(frozen=True)
class IntensityCurve:
    """Per feature of the mask ``features``, the increasing piecewise-linear map of
    standardised values (by ``centre`` and ``spread``, the fitted source rows' mean and
    standard deviation) with knots ``knots_source`` onto ``knots_target`` (n_features,
    n_levels), shrunk towards the identity by ``weight``; ``out_centre`` and
    ``out_spread`` are the mean and standard deviation of the fitted source rows' mapped
    values, which go back to the rows' own (each gene keeps its mean and spread)."""

    features: np.ndarray
    knots_source: np.ndarray
    knots_target: np.ndarray
    weight: float
    centre: np.ndarray
    spread: np.ndarray
    out_centre: np.ndarray
    out_spread: np.ndarray
    p_value: float

    @classmethod
    def fit(cls, source, target, *, random_state=0) -> IntensityCurve | None:
        """The curve from ``source`` rows onto ``target`` rows, or None where the
        features do not share a unit, are fewer than ``MIN_FEATURES``, or the shapes do
        not differ beyond noise."""
        source, target = np.asarray(source, float), np.asarray(target, float)
        if not ENABLED or len(source) < 4 or len(target) < 4:
            return None
        if resolve_scaling("auto", np.vstack([source, target])) != "common":
            return None
        features = ~odd_unit_features(target)
        features &= (np.ptp(source, axis=0) > 0) & (np.ptp(target, axis=0) > 0)
        if features.sum() < MIN_FEATURES:
            return None
        source, target = source[:, features], target[:, features]
        half = max(1, int(WINDOW_SHARE * source.shape[1] / 2))
        knots_s, knots_t, _ = _difference(source, target, half)
        # What sampling alone gives: the gap between two disjoint random parts of one
        # side's rows (the target's and the source's in turn, ``size`` rows each), against
        # the sides' gap at that size (a random part of each, averaged over
        # ``OBSERVED_DRAWS`` draws: a test at most as often rejecting as its level).  Not
        # re-splits of both sides' rows together: the pre-alignment matched the source's
        # moments to the target's, and re-splits of rows so matched differ less than
        # fresh samples do (two halves of one study, one of them mean/std-matched to the
        # other, were called different in 4 of 6 splits, the unmatched halves in none).
        # Both sides' own splits, not the target's alone: a study's few odd arrays make
        # whichever side holds them vary more.  Each part's genes are ordered by its
        # second part's means, as the sides' are by the target's.
        rng = np.random.default_rng(random_state)
        size = min(len(source), len(target)) // 2

        def parts_gap(first, second):
            a, b = rng.permutation(len(first))[:size], rng.permutation(len(second))[:size]
            return _difference(first[a], second[b], half)[2]

        def own_split(rows):
            order = rng.permutation(len(rows))
            return parts_gap(rows[order[: len(rows) // 2]], rows[order[len(rows) // 2 :]])

        observed = float(np.mean([parts_gap(source, target) for _ in range(OBSERVED_DRAWS)]))
        null = []
        # Stop once too many splits reach the observed gap for the test to reject.
        allowed = int(np.floor(CURVE_ALPHA * (1 + PERMUTATIONS))) - 1
        while len(null) < PERMUTATIONS and np.sum(np.greater_equal(null, observed)) <= allowed:
            null.append(own_split(target if len(null) % 2 == 0 else source))
        p_value = (1 + np.sum(np.greater_equal(null, observed))) / (1 + PERMUTATIONS)
        if len(null) < PERMUTATIONS or p_value > CURVE_ALPHA:
            return None
        weight = max(0.0, 1.0 - float(np.mean(null)) / observed)
        centre, spread = _units(source)
        z = _map((source - centre) / spread, knots_s, knots_t, weight)
        return cls(features, knots_s, knots_t, weight, centre, spread, z.mean(0), z.std(0), p_value)

    def transform(self, X) -> np.ndarray:
        """Rows of ``X`` with the curve undone on ``features`` (a new array)."""
        X = np.asarray(X, dtype=float)
        out = X.copy()
        z = (X[:, self.features] - self.centre) / self.spread
        z = _map(z, self.knots_source, self.knots_target, self.weight)
        out_spread = np.where(self.out_spread > 0, self.out_spread, 1.0)
        out[:, self.features] = self.centre + self.spread * (z - self.out_centre) / out_spread
        return out


def _map(z, knots_s, knots_t, weight):
    """Each column of ``z`` through its feature's piecewise-linear map, moved ``weight``
    of the way from ``z``; beyond the end knots, linear with the end segments' slopes
    bounded to ``END_SLOPES`` (knots nearly tied by a detection floor in the source gave a
    slope of 406, and a new row just below the floor left the target's range 20-fold)."""
    mapped = np.empty_like(z)
    for j in range(z.shape[1]):
        a, b, col = knots_s[j], knots_t[j], z[:, j]
        inside = np.interp(col, a, b)
        low = b[0] + (col - a[0]) * _slope(a[:2], b[:2])
        high = b[-1] + (col - a[-1]) * _slope(a[-2:], b[-2:])
        mapped[:, j] = np.where(col < a[0], low, np.where(col > a[-1], high, inside))
    return z + weight * (mapped - z)


def _slope(a, b):
    run = a[1] - a[0]
    return float(np.clip((b[1] - b[0]) / run, *END_SLOPES)) if run > 0 else 1.0
