"""Which rows each flow carries: one flow for all rows, or one per class.

Shared by :class:`~sklearn_gpa.GPATransporter` and :class:`~sklearn_gpa.MeanStdAdjuster`,
so that a transport and its mean/std pre-alignment always group rows the same way.
"""

from __future__ import annotations

import numpy as np

from .utils import few, known_labels, warn_at_caller

__all__ = ["FlowGroups", "group_rows"]


class FlowGroups:
    """Per flow, the indices of its source rows and of its target rows.

    ``classes`` is the class of each flow, None for one flow of all rows; ``ignored`` says
    why labels that were given were not used (None when they were, or when none were given).
    """

    def __init__(self, classes, sources, targets, ignored=None):
        self.classes = classes
        self.sources = sources
        self.targets = targets
        self.ignored = ignored

    def __len__(self) -> int:
        return len(self.targets)


def group_rows(y, source, *, conditional="auto", generative=False) -> FlowGroups:
    """Group rows into flows.

    Parameters
    ----------
    y : ndarray of shape (n_samples,) or None
        Class labels; -1, NaN or None mark unknown labels (skada's convention).
    source : ndarray of bool of shape (n_samples,)
        Source rows (all False in generative mode, where every row is a target).
    conditional : "auto" or bool
        One flow per class.  "auto": when labels allow it.  In integration that needs a
        label on every source row and every source class among the labelled target rows;
        in generation, any labelled target row.  True raises where "auto" would fall back.
    generative : bool
        Generative mode: flows carry target rows only.
    """
    sources, targets = np.flatnonzero(source), np.flatnonzero(~source)
    if y is None or conditional is False:
        if conditional is True:
            raise ValueError("conditional=True needs class labels y.")
        return FlowGroups(None, [sources], [targets])
    known = known_labels(y)
    target_known = targets[known[targets]]
    source_known = sources[known[sources]]
    target_classes = np.unique(y[target_known])
    reason = None
    if len(target_classes) == 0:
        reason = "no target row has a known label"
    elif not generative:
        if len(source_known) < len(sources):
            reason = "some source rows have no label"
        elif not np.isin(np.unique(y[source_known]), target_classes).all():
            missing = np.setdiff1d(np.unique(y[source_known]), target_classes)
            reason = f"source classes {few(missing)} have no target rows"
    if reason is not None:
        if conditional is True:
            raise ValueError(f"conditional=True but {reason}.")
        ignored = reason if len(target_classes) > 0 else None
        return FlowGroups(None, [sources], [targets], ignored)
    if generative:
        rows = [target_known[y[target_known] == c] for c in target_classes]
        single = [c for c, r in zip(target_classes.tolist(), rows) if len(r) == 1]
        if single:
            warn_at_caller(
                f"Classes {single} have one row each: there is no spread to learn, and "
                "their samples are copies of that row."
            )
        return FlowGroups(target_classes, [np.array([], dtype=int) for _ in rows], rows)
    # Target classes without source rows need no flow.
    classes = np.intersect1d(target_classes, y[source_known])
    return FlowGroups(
        classes,
        [source_known[y[source_known] == c] for c in classes],
        [target_known[y[target_known] == c] for c in classes],
    )
