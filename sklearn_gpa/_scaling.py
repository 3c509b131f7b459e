"""The standardisation a flow runs in: a centre and a scale, undone on output.

Two geometries:

* ``"common"``: one scale for all features, the root of the total robust variance.  It keeps
  the Euclidean geometry of the data, which suits features that share a unit (pixels, gene
  expression, latent codes): a rarely lit pixel stays small instead of being blown up to
  unit spread.
* ``"per_feature"``: each feature divided by its own robust spread (then all by the square
  root of the number of features, so the data cloud keeps a radius of about one and the
  flow's ``L`` and ``dt`` keep their meaning).  It suits tabular data whose features carry
  different units: with one common scale, a feature of small spread (a ratio next to an
  amount in thousands) is drowned and the flow moves it far out of its range.

``"auto"`` keeps one common scale for data whose features look like they share a unit: at
least ``SHARED_UNIT_MIN_FEATURES`` features whose ranges agree within ``UNIT_RATIO`` (see
:func:`unit_spread_ratio`), as pixels, genes and spectra do; it scales per feature otherwise.
A table of a few features almost always mixes units (an age, a count, a concentration), even
when their ranges happen to agree.  Among features that share a unit, a few may not (a
patient's age beside 70 genes, byte counts beside 60 rates and flags): a feature whose range
exceeds ``UNIT_RATIO`` times the median feature's (:func:`odd_unit_features`) is scaled on its
own, as ``"per_feature"`` would, and the common scale is the others'
(:func:`shared_unit_scale`); otherwise the one feature sets the common scale and drowns
the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .utils import warn_at_caller

__all__ = [
    "SCALINGS",
    "SHARED_UNIT_MIN_FEATURES",
    "UNIT_RATIO",
    "WARN_RATIO",
    "Standardization",
    "feature_spreads",
    "odd_unit_features",
    "resolve_scaling",
    "robust_scale",
    "shared_unit_scale",
    "unit_spread_ratio",
    "warn_units_ignored",
]

SCALINGS = ("auto", "common", "per_feature")

# "auto" scales per feature when unit_spread_ratio exceeds this, or with fewer features
# than SHARED_UNIT_MIN_FEATURES.
UNIT_RATIO = 10.0
SHARED_UNIT_MIN_FEATURES = 20
# A setting that ignores the features' units warns when unit_spread_ratio exceeds this, or
# some feature's range exceeds this many times the median feature's.
WARN_RATIO = 100.0
# "auto" with a common scale scales the features in another unit (odd_unit_features) on
# their own.  False: one scale for all, as before 2026-12-07 (benchmarks).
SEPARATE_ODD_UNITS = True


def feature_spreads(X) -> np.ndarray:
    """Robust spread of each feature: interquartile range / 1.349, else standard deviation.

    The interquartile range / 1.349 is the standard deviation for Gaussian data, and a heavy
    tail does not shrink the bulk of the data to a point; a feature with no interquartile
    spread (mostly one value) falls back to its standard deviation.
    """
    X = np.asarray(X, dtype=np.float64)
    q75, q25 = np.percentile(X, [75, 25], axis=0)
    spread = (q75 - q25) / 1.349
    flat = spread == 0
    spread[flat] = X[:, flat].std(0)
    return spread


def robust_scale(X) -> float:
    """One scale for all features: the root of the sum of squared per-feature spreads."""
    scale = float(np.sqrt(np.sum(feature_spreads(X) ** 2)))
    return scale if scale > 0 and math.isfinite(scale) else 1.0


def odd_unit_features(X, ratio=UNIT_RATIO) -> np.ndarray:
    """Mask of the features whose range (max - min) exceeds ``ratio`` times the median range
    of the varying features: in another unit than the rest (an age among genes, a byte
    count among rates and flags).  A feature of small range is not odd: in a shared unit it
    is a quiet feature (a rarely lit pixel, a gene that hardly varies)."""
    ranges, varying = _ranges(X)
    if varying.sum() < 2:
        return np.zeros(len(ranges), dtype=bool)
    return varying & (ranges > ratio * np.median(ranges[varying]))


def _ranges(X):
    """Each feature's range (max - min; 0 without rows) and the mask of the varying ones
    (a range above 0, finite)."""
    X = np.asarray(X, dtype=np.float64)
    ranges = X.max(0) - X.min(0) if len(X) else np.zeros(X.shape[1])
    return ranges, (ranges > 0) & np.isfinite(ranges)


def shared_unit_scale(X) -> float | np.ndarray:
    """The scale of ``standardize="auto"`` where the features share a unit: one common scale
    (:func:`robust_scale`) for all but the features in another unit
    (:func:`odd_unit_features`), each of which is divided by its own spread as under
    ``"per_feature"`` (never by less than the common scale: only a feature whose spread
    stands out is scaled down).  The common scale is then the other features' root sum of
    squared spreads, raised by the square root of all features over theirs, so that every
    feature's squared spread still averages about ``1 / n_features``, the data cloud a
    radius of about one.  A float where no feature is odd (the plain common scale), else an
    array."""
    X = np.asarray(X, dtype=np.float64)
    odd = odd_unit_features(X) if SEPARATE_ODD_UNITS else np.zeros(X.shape[1], dtype=bool)
    if not odd.any():
        return robust_scale(X)
    n_features, shared = X.shape[1], ~odd
    common = robust_scale(X[:, shared]) * math.sqrt(n_features / shared.sum())
    # An odd feature is scaled down, never up: a quiet feature made odd by one artefact
    # value (a range of 80 for a spread of 0.05) would otherwise be blown up.
    return np.where(odd, np.maximum(_own_spreads(X) * math.sqrt(n_features), common), common)


def _own_spreads(X) -> np.ndarray:
    """Each feature's spread (:func:`feature_spreads`), 1 where it has none."""
    spread = feature_spreads(X)
    return np.where((spread > 0) & np.isfinite(spread), spread, 1.0)


def unit_spread_ratio(X) -> float:
    """How much the features' magnitudes differ: ratio of the 90th to the 10th percentile
    of the ranges (max - min) of the non-constant features (1 with fewer than two).

    Ranges, not spreads: a rarely lit pixel has a tiny spread but the same range as the
    others, so pixels (and other features sharing a unit) score near 1, while tabular
    features in different units (an amount in thousands next to a ratio) score in the
    tens to thousands.  The percentiles make one odd feature among many not decide.
    """
    ranges, varying = _ranges(X)
    ranges = ranges[varying]
    if len(ranges) < 2:
        return 1.0
    return float(np.quantile(ranges, 0.9) / np.quantile(ranges, 0.1))


def warn_units_ignored(X, kind, standardize):
    """Warn when a scaling that ignores units meets features of very different sizes
    (``standardize="auto"`` heeds them: per feature, or the odd ones on their own)."""
    if kind == "per_feature" or standardize is True or standardize == "auto":
        return
    ratio = unit_spread_ratio(X)
    odd = np.flatnonzero(odd_unit_features(X, WARN_RATIO))
    if ratio > WARN_RATIO:
        sizes = f"features' ranges differ by a factor of {ratio:.0f} (90th to 10th percentile)"
    elif len(odd):
        shown = ", ".join(map(str, odd[:5])) + (", ..." if len(odd) > 5 else "")
        sizes = (
            f"ranges of {len(odd)} feature(s) (index {shown}) exceed {WARN_RATIO:.0f} "
            "times the median feature's range"
        )
    else:
        return
    warn_at_caller(
        f"The {sizes}, but standardize={standardize!r} treats all features alike: "
        "features of small range will be drowned. Use standardize='auto' or "
        "'per_feature' unless the features share a unit."
    )


def resolve_scaling(standardize, X) -> str | None:
    """The scaling a ``standardize`` setting gives on ``X``: "common", "per_feature" or None.

    True is "auto"; False is None (raw units).
    """
    if standardize is False:
        return None
    if standardize is True or standardize == "auto":
        X = np.asarray(X)
        shared = X.shape[1] >= SHARED_UNIT_MIN_FEATURES and unit_spread_ratio(X) <= UNIT_RATIO
        return "common" if shared else "per_feature"
    if standardize not in SCALINGS:
        raise ValueError(
            f"standardize must be one of {SCALINGS} or a boolean, got {standardize!r}."
        )
    return standardize


@dataclass(frozen=True)
class Standardization:
    """``(X - center) / scale`` and back; the identity when fitted with ``standardize=False``.

    ``scale`` is a float (one common scale) or an array of shape ``(n_features,)``.
    ``kind`` is "common", "per_feature" or None (raw units); ``low`` and ``high`` are the
    fitted rows' per-feature minimum and maximum (in original units).
    """

    center: np.ndarray
    scale: float | np.ndarray
    kind: str | None = "common"
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    @classmethod
    def fit(cls, X, standardize="auto") -> Standardization:
        X = np.asarray(X, dtype=np.float64)
        kind = resolve_scaling(standardize, X)
        bounds = {"low": X.min(0), "high": X.max(0)} if len(X) else {}
        if kind is None:
            return cls(np.zeros(X.shape[1]), 1.0, None, **bounds)
        center = np.median(X, axis=0)
        if kind == "common":
            # "auto" (or True) scales features in another unit on their own.
            scale = robust_scale(X) if standardize == "common" else shared_unit_scale(X)
            return cls(center, scale, kind, **bounds)
        return cls(center, _own_spreads(X) * math.sqrt(X.shape[1]), kind, **bounds)

    def transform(self, X) -> np.ndarray:
        return (np.asarray(X, dtype=np.float64) - self.center) / self.scale

    def inverse_transform(self, Z) -> np.ndarray:
        return Z * self.scale + self.center

    def clip(self, X) -> np.ndarray:
        """``X`` clipped to the fitted rows' range, feature by feature."""
        return X if self.low is None else np.clip(X, self.low, self.high)
