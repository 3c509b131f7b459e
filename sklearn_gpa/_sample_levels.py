"""Per-sample alignment: each row's level and spread across features (array brightness).

A per-feature map (mean/std, ComBat) moves every row alike.  A per-sample effect (an
array's overall brightness, a sequencing depth) moves each row by its own amount, and
per-feature maps cannot see it.  Here each source row's mean and the log of its standard
deviation across features (its level and spread) are mapped, by one increasing affine map
each, onto the target rows' distribution of them, and the row's deviations from its mean
are scaled by its new spread over its old one.  The maps keep the rows' order of level and
spread (each row's identity), as ``meanstd_map`` does per feature.

It runs only on evidence: the features share a unit (the rule of ``standardize="auto"``),
the source rows' levels vary at least ``LEVEL_VARIANCE_RATIO`` times as much as the target
rows' (their standard deviation twice the target's), each side's levels in its own unit
(over the root of its features' total variance: a study in other units is no brightness
effect), and Brown-Forsythe's test rejects equal spreads at ``LEVEL_ALPHA``. Two samples of
one study, per-gene effects, intensity curves and per-sample factors of random loadings on
thousands of genes stay below that; brightness effects and two of the real study pairs are
far above it (``benchmarks/README.md``). The spread is matched too where its own variance is
larger beyond noise (the same test) once the levels are; alone it is no evidence (a
per-sample factor raises the spread of the rows it loads, and matching it then lost biology
on a real pair).  A feature in another unit than the rest (``odd_unit_features``: a patient's
age beside the genes) is no part of a row's level: it is left out of the levels and keeps its
values (with the age, nki70's levels were mostly the patients' ages and missed a brightness
effect on the genes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from ._scaling import odd_unit_features, resolve_scaling
from .baselines import meanstd_map

__all__ = ["SampleLevels"]

LEVEL_VARIANCE_RATIO = 4.0
LEVEL_ALPHA = 0.01


def _larger_beyond_noise(source, target):
    """Whether ``source``'s spread exceeds ``target``'s: its variance ratio, and the
    Brown-Forsythe (median-centred Levene) test's p-value below ``LEVEL_ALPHA``."""
    if len(source) < 3 or len(target) < 3:
        return False, 1.0
    ratio = np.var(source) / max(np.var(target), 1e-300)
    larger = ratio > 1 and stats.levene(source, target, center="median").pvalue < LEVEL_ALPHA
    return bool(larger), float(ratio)


def _affine_onto(values, reference):
    """``(a, b)``: ``a * values + b`` has ``reference``'s mean and standard deviation
    (:func:`~sklearn_gpa.baselines.meanstd_map` of one feature: only shifted where
    ``values`` are all equal)."""
    a, b = meanstd_map(values[:, None], reference[:, None])
    return float(a[0]), float(b[0])


def _total_variance(X):
    """The features' variances, summed: the square of the rows' spread about their mean."""
    return float(np.sum(np.var(X, axis=0)))


def _levels(X):
    """Each row's mean and log standard deviation across features (-inf for a constant row)."""
    with np.errstate(divide="ignore"):
        return X.mean(1), np.log(X.std(1))


@dataclass(frozen=True)
class SampleLevels:
    """The increasing affine maps of rows' levels (``level``) and log spreads (``spread``,
    or None: spreads kept), fitted by :meth:`fit`, over the features of the mask
    ``features`` (the others keep their values; None: all)."""

    level: tuple
    spread: tuple | None
    features: np.ndarray | None = None

    @classmethod
    def fit(cls, source, target, *, always=False) -> SampleLevels | None:
        """The maps from ``source`` rows onto ``target`` rows, or None (unless ``always``)
        where the features do not share a unit (the rule of ``standardize="auto"``: fewer
        than 20 features, or spreads over 10 times apart, where a row's mean is no level)
        or the source rows' levels do not vary more than the target's beyond noise."""
        source, target = np.asarray(source, float), np.asarray(target, float)
        shared = resolve_scaling("auto", np.vstack([source, target])) == "common"
        if not always and not shared:
            return None
        # Odd on the target rows, the reference: an effect on the other features widens
        # their stacked ranges and could hide the odd one (nki70's age).
        odd = odd_unit_features(target)
        features = ~odd if odd.any() and not odd.all() else None
        if features is not None:
            source, target = source[:, features], target[:, features]
        (m_s, l_s), (m_t, l_t) = _levels(source), _levels(target)
        # The levels' spread in each side's own unit: two studies measured in different
        # units (log10 ratios against log2 intensities) differ in every spread by one
        # factor, which is no per-sample effect (it made the map run on three real pairs
        # of nki70 and cost one of them 0.05 of label-free accuracy).
        unit = np.sqrt(_total_variance(source) / max(_total_variance(target), 1e-300))
        larger, ratio = _larger_beyond_noise(m_s / unit, m_t) if unit > 0 else (False, 0.0)
        if not always and not (larger and ratio >= LEVEL_VARIANCE_RATIO):
            return None
        keep_s, keep_t = np.isfinite(l_s), np.isfinite(l_t)
        spread = None
        if always or _larger_beyond_noise(l_s[keep_s], l_t[keep_t])[0]:
            spread = _affine_onto(l_s[keep_s], l_t[keep_t])
        return cls(_affine_onto(m_s, m_t), spread, features)

    def transform(self, X) -> np.ndarray:
        """Rows of ``X`` with their level and spread mapped (a new array)."""
        X = np.asarray(X, dtype=float)
        if self.features is not None:
            out = X.copy()
            out[:, self.features] = self._mapped(X[:, self.features])
            return out
        return self._mapped(X)

    def _mapped(self, X):
        level, log_spread = _levels(X)
        a, b = self.level
        deviations = X - level[:, None]
        if self.spread is not None:
            c, d = self.spread
            finite = np.isfinite(log_spread)
            ratio = np.where(finite, np.exp((c - 1) * np.where(finite, log_spread, 0.0) + d), 1.0)
            deviations = deviations * ratio[:, None]
        return (a * level + b)[:, None] + deviations
