"""Distances between samples used to score integration and generation."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.utils import check_array

__all__ = ["energy_distance"]


def _mean_distance(A, B, wa, wb, chunk=2048):
    total = 0.0
    for start in range(0, len(A), chunk):
        total += wa[start : start + chunk] @ cdist(A[start : start + chunk], B) @ wb
    return total


def energy_distance(X, Y, *, sample_weight_x=None, sample_weight_y=None):
    """Squared energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (>= 0).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.metrics import energy_distance
    >>> round(energy_distance(np.zeros((3, 1)), np.ones((2, 1))), 6)
    2.0
    """
    X = check_array(X, input_name="X")
    Y = check_array(Y, input_name="Y")
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"X has {X.shape[1]} features but Y has {Y.shape[1]}.")
    wx = (
        np.full(len(X), 1 / len(X))
        if sample_weight_x is None
        else np.asarray(sample_weight_x, float)
    )
    wy = (
        np.full(len(Y), 1 / len(Y))
        if sample_weight_y is None
        else np.asarray(sample_weight_y, float)
    )
    wx, wy = wx / wx.sum(), wy / wy.sum()
    value = (
        2 * _mean_distance(X, Y, wx, wy)
        - _mean_distance(X, X, wx, wx)
        - _mean_distance(Y, Y, wy, wy)
    )
    return max(float(value), 0.0)
