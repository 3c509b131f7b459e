"""Moving rows an integration flow never saw by the moves of their nearest training rows."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

__all__ = ["NeighbourMap", "leave_one_out_map"]

N_NEIGHBORS = 5
# "auto" judges the two maps on at most this many training rows per flow.
LEAVE_ONE_OUT_ROWS = 4096


def _inverse_distance_weights(distance):
    """Row-normalised ``1 / distance``; a training row itself gets all of its own weight."""
    weight = 1.0 / np.maximum(distance, 1e-12 * (1.0 + distance.max()))
    return weight / weight.sum(1, keepdims=True)


class NeighbourMap:
    """Per flow, the training rows' starting points and moves, and how new rows follow them.

    ``"nearest"`` moves a new row by the inverse-distance-weighted displacement of its
    ``N_NEIGHBORS`` nearest training starting points (as POT's out-of-sample maps do);
    ``"barycentric"`` sends it to the weighted mean of their end points.
    """

    def __init__(self, starts, begins, ends, methods):
        self.starts = [np.asarray(s) for s in starts]
        self.methods = list(methods)
        self.neighbours = [
            NearestNeighbors(n_neighbors=min(N_NEIGHBORS, len(s))).fit(s) for s in self.starts
        ]
        self.displacements = [end - begin for begin, end in zip(begins, ends)]

    @classmethod
    def fit(cls, starts, begins, ends, method):
        """``method`` is "nearest", "barycentric", or "auto" (per flow, by leave-one-out)."""
        if method == "auto":
            methods = [leave_one_out_map(s, b, e) for s, b, e in zip(starts, begins, ends)]
        else:
            methods = [method] * len(starts)
        return cls(starts, begins, ends, methods)

    @classmethod
    def for_fit(cls, out_of_sample, mode, classes, starts, begins, ends):
        """The map an estimator's ``out_of_sample`` asks for (None: new rows replay)."""
        if out_of_sample == "replay" or mode != "integration":
            return None
        # Without class flows one flow carries every kind of row: the mean of a row's
        # neighbours' end points would mix groups the fit never saw.
        if out_of_sample == "auto" and classes is None:
            out_of_sample = "nearest"
        return cls.fit(starts, begins, ends, out_of_sample)

    def extend(self, begins, ends):
        """A continued flow (warm start): each training row's move grows by its new move."""
        for k, (begin, end) in enumerate(zip(begins, ends)):
            self.displacements[k] = self.displacements[k] + (end - begin)

    def move(self, Z, aligned, flows, prealign):
        """New positions of rows ``Z`` (their pre-aligned versions ``aligned``) of ``flows``.

        ``prealign(rows, k)`` applies flow k's pre-alignment (barycentres of neighbours'
        starting points are pre-aligned like the rows themselves).
        """
        out = aligned.copy()
        for k, neighbours in enumerate(self.neighbours):
            rows = flows == k
            if not rows.any():
                continue
            distance, index = neighbours.kneighbors(Z[rows])
            weight = _inverse_distance_weights(distance)
            if self.methods[k] == "barycentric":
                # The weighted mean of the neighbours' end points (an affine pre-alignment
                # commutes with the mean, so this is their mean start plus mean move).
                starts = prealign(self.starts[k][index.ravel()], k).reshape(index.shape + (-1,))
                out[rows] = np.einsum("ij,ijd->id", weight, starts)
            out[rows] += np.einsum("ij,ijd->id", weight, self.displacements[k][index])
        return out


def leave_one_out_map(start, begin, end, n_neighbors=N_NEIGHBORS, max_rows=LEAVE_ONE_OUT_ROWS):
    """``"nearest"`` or ``"barycentric"``: which predicts each training end point better.

    Each training row is predicted from its ``n_neighbors`` nearest other rows (in the
    starting points ``start``, inverse-distance weights): by its own (pre-aligned) start
    ``begin`` plus their mean displacement, or by the mean of their end points.  With more
    than ``max_rows`` rows, a fixed random ``max_rows`` of them are predicted (from all
    rows): the neighbour search costs about rows x predicted rows in many dimensions, which
    would grow with the square of the rows.
    """
    if len(start) < 3:
        return "nearest"
    k = min(n_neighbors, len(start) - 1)
    rows = np.arange(len(start))
    if len(start) > max_rows:
        rows = np.sort(np.random.default_rng(0).choice(len(start), max_rows, replace=False))
    search = NearestNeighbors(n_neighbors=k + 1).fit(start)
    distance, index = search.kneighbors(start[rows])
    weight = _inverse_distance_weights(distance[:, 1:])
    index = index[:, 1:]
    mean_end = np.einsum("ij,ijd->id", weight, end[index])
    mean_move = np.einsum("ij,ijd->id", weight, (end - begin)[index])
    nearest_error = np.sum((begin[rows] + mean_move - end[rows]) ** 2)
    return "barycentric" if np.sum((mean_end - end[rows]) ** 2) < nearest_error else "nearest"
