"""The standardisation a flow runs in: a centre and one common scale, undone on output."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Standardization", "robust_scale"]


def robust_scale(X) -> float:
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


@dataclass(frozen=True)
class Standardization:
    """``(X - center) / scale`` and back; the identity when fitted with ``standardize=False``."""

    center: np.ndarray
    scale: float

    @classmethod
    def fit(cls, X, standardize: bool = True) -> Standardization:
        if not standardize:
            return cls(np.zeros(X.shape[1]), 1.0)
        return cls(np.median(X, axis=0), robust_scale(X))

    def transform(self, X) -> np.ndarray:
        return (np.asarray(X, dtype=np.float64) - self.center) / self.scale

    def inverse_transform(self, Z) -> np.ndarray:
        return Z * self.scale + self.center
