"""Features that take a few values: their levels per group of rows, and snapping onto them.

A flow moves particles continuously, so a binary, ordinal or count feature comes out between
its levels; generated rows are moved back onto the nearest level their group (class) takes
in the training rows, as SMOTE's interpolation between equal values keeps them.  Features
with more values keep the precision they were recorded with: a count or a value in whole
units stays whole, a value with one decimal keeps one.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_LEVELS", "FeatureLevels", "few_levels", "n_values", "recorded_decimals"]

# "auto" treats a feature with at most this many distinct values as discrete.
MAX_LEVELS = 10
# The finest precision looked for: a feature whose values need more decimals is left as it is.
MAX_DECIMALS = 6


# A value within this share of its feature's largest magnitude of where it was has not moved:
# a standardisation's round trip changes a value by about 1e-16 of its feature's magnitude
# (its centre), not of the value's own (0.00044 of a feature centred near 4 came back 1.4e-12
# of itself off).
UNMOVED = 1e-9


def unmoved(moved, original) -> np.ndarray:
    """Cells of ``moved`` equal to ``original`` up to such rounding (``UNMOVED`` times the
    largest magnitude of the feature in ``original``)."""
    return np.abs(moved - original) <= UNMOVED * np.abs(original).max(0)


def n_values(X) -> np.ndarray:
    """Per feature, the number of distinct values in the rows of ``X``."""
    X = np.sort(np.asarray(X), axis=0)
    return (np.diff(X, axis=0) != 0).sum(0) + 1


def few_levels(X, max_levels=MAX_LEVELS) -> np.ndarray:
    """Boolean mask of the features of ``X`` with at most ``max_levels`` distinct values."""
    return n_values(X) <= max_levels


def recorded_decimals(X, max_decimals=MAX_DECIMALS) -> np.ndarray:
    """Per feature, the fewest decimals ``k`` (0 .. ``max_decimals``) with every value of
    ``X`` a whole multiple of ``10 ** -k``; -1 where there are none (or too many)."""
    X = np.asarray(X, dtype=np.float64)
    decimals = np.full(X.shape[1], -1)
    for k in range(max_decimals, -1, -1):  # the coarsest grid that fits is found last
        scaled = X * 10.0**k
        largest = np.abs(scaled).max(0)
        # A whole number up to 1e-6 (float32 input, sums of decimals), or up to 1e-6 of the
        # largest value where that is below 1: values of 3e-7 are no whole multiples of 1
        # (all of them "0" rounded a whole feature to a constant).  Beyond 2**40 a float64
        # no longer tells a whole number from one a 1e-6 away.
        tolerance = 1e-6 * np.minimum(largest, 1.0)
        exact = np.all(np.abs(scaled - np.round(scaled)) <= tolerance, axis=0)
        decimals[exact & (largest < 2.0**40)] = k
    return decimals


class FeatureLevels:
    """Per group, the sorted distinct values of each discrete feature in its rows; for the
    other features, the decimals their values were recorded with (-1: left as they are)."""

    def __init__(self, features, levels, decimals=None):
        self.features = np.asarray(features, dtype=int)
        self.levels = levels  # levels[k][i]: values of feature features[i] in group k
        self.decimals = decimals

    @classmethod
    def fit(cls, features, groups, decimals=None):
        """``features``: indices of the discrete features; ``groups``: a row array per group;
        ``decimals``: per feature, the decimals to round to (:func:`recorded_decimals`), or
        None to round nothing."""
        features = np.asarray(features, dtype=int)
        levels = [[np.unique(rows[:, j]) for j in features] for rows in groups]
        if decimals is not None:
            decimals = np.array(decimals)
            decimals[features] = -1
        return cls(features, levels, decimals)

    @classmethod
    def for_samples(cls, X, groups):
        """What generated rows are snapped to, as ``sample`` does: the levels, in each group
        of rows, of the features of ``X`` with at most ``MAX_LEVELS`` values, and the
        recorded decimals of the others."""
        return cls.fit(np.flatnonzero(few_levels(X)), groups, recorded_decimals(X))

    def snap(self, X, group_of_rows):
        """``X`` with each discrete feature moved to the nearest level of the row's group,
        and each other feature rounded to its recorded decimals."""
        X = np.array(X, dtype=np.float64)
        if self.decimals is not None:
            for j in np.flatnonzero(self.decimals >= 0):
                X[:, j] = np.round(X[:, j], self.decimals[j])
        if not len(self.features):
            return X
        for k, levels in enumerate(self.levels):
            rows = group_of_rows == k
            if not rows.any():
                continue
            for j, values in zip(self.features, levels):
                nearest = np.abs(X[rows, j, None] - values).argmin(1)
                X[rows, j] = values[nearest]
        return X
