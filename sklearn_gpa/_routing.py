"""Routing rows given without a class to a class flow whose particles start from a known law.

A generative fit draws each flow's particles from its fitted prior (a Gaussian, a Gaussian
mixture or a Gaussian copula per class; a copula votes with the Gaussian of its rows'
values), and :class:`GPAAugmenter` draws its flows' source rows the same way.  The
Bayes classifier of those laws needs nothing fitted and no stored rows: a row goes to the flow
whose prior density times its share of the particles is highest.  Flows that start from data
rows (integration) are routed by :func:`sklearn_gpa.baselines.class_router` instead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PriorRouter"]


class PriorRouter:
    """Sends rows to the flow ``k`` of highest ``log p_k(z * scale + shift) + log counts[k]``.

    ``prior`` is a :class:`~sklearn_gpa._prior.Prior` whose flow ``k`` drew ``counts[k]``
    starting points; ``z * scale + shift`` takes the rows given to :meth:`predict` into the
    prior's units (the identity when the prior was fitted in them).  A fixed law shared by
    all flows says nothing about the class: every row goes to the flow of most particles.
    """

    def __init__(self, prior, counts, scale=1.0, shift=0.0):
        self.prior = prior
        self.log_counts = np.log(np.asarray(counts, dtype=np.float64))
        self.scale, self.shift = scale, shift

    def predict(self, Z) -> np.ndarray:
        """Index of the flow of each row of ``Z``."""
        units = np.asarray(Z, dtype=np.float64) * self.scale + self.shift
        scores = np.column_stack(
            [self.prior.log_density(k, units) for k in range(len(self.log_counts))]
        )
        return np.argmax(scores + self.log_counts, axis=1)

    @classmethod
    def between(cls, prior, counts, rows_scaling, prior_scaling) -> PriorRouter:
        """The router for rows standardised by ``rows_scaling`` when ``prior`` was fitted on
        rows standardised by ``prior_scaling`` (two :class:`~sklearn_gpa._scaling.Standardization`
        of the same original units)."""
        scale = rows_scaling.scale / prior_scaling.scale
        shift = (rows_scaling.center - prior_scaling.center) / prior_scaling.scale
        return cls(prior, counts, scale, shift)
