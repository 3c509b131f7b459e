"""Features that take a few values: their levels per group of rows, and snapping onto them.

A flow moves particles continuously, so a binary, ordinal or count feature comes out between
its levels; generated rows are moved back onto the nearest level their group (class) takes
in the training rows, as SMOTE's interpolation between equal values keeps them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_LEVELS", "FeatureLevels", "few_levels"]

# "auto" treats a feature with at most this many distinct values as discrete.
MAX_LEVELS = 10


def few_levels(X, max_levels=MAX_LEVELS) -> np.ndarray:
    """Boolean mask of the features of ``X`` with at most ``max_levels`` distinct values."""
    X = np.sort(np.asarray(X), axis=0)
    return (np.diff(X, axis=0) != 0).sum(0) + 1 <= max_levels


class FeatureLevels:
    """Per group, the sorted distinct values of each discrete feature in its rows."""

    def __init__(self, features, levels):
        self.features = np.asarray(features, dtype=int)
        self.levels = levels  # levels[k][i]: values of feature features[i] in group k

    @classmethod
    def fit(cls, features, groups):
        """``features``: indices of the discrete features; ``groups``: a row array per group."""
        features = np.asarray(features, dtype=int)
        return cls(features, [[np.unique(rows[:, j]) for j in features] for rows in groups])

    def snap(self, X, group_of_rows):
        """``X`` with each discrete feature moved to the nearest level of the row's group."""
        if not len(self.features):
            return X
        X = np.array(X, dtype=np.float64)
        for k, levels in enumerate(self.levels):
            rows = group_of_rows == k
            if not rows.any():
                continue
            for j, values in zip(self.features, levels):
                nearest = np.abs(X[rows, j, None] - values).argmin(1)
                X[rows, j] = values[nearest]
        return X
