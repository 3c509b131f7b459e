"""Which rows each flow carries: one flow for all rows, or one per class, and with several
source domains one per source domain (and class), each onto the same target rows.

Shared by :class:`~sklearn_gpa.GPATransporter` and :class:`~sklearn_gpa.MeanStdAdjuster`,
so that a transport and its mean/std pre-alignment always group rows the same way.
"""

from __future__ import annotations

import numpy as np

from .utils import few, known_labels, warn_at_caller

__all__ = ["FlowGroups", "group_rows"]


class FlowGroups:
    """Per flow, the indices of its source rows and of its target rows.

    ``flow_classes`` is the class of each flow, None for flows of all classes; ``domains``
    the source domain of each flow, None where the source rows are one domain; ``ignored``
    says why labels that were given were not used (None when they were, or when none were
    given).
    """

    def __init__(self, flow_classes, sources, targets, ignored=None, domains=None):
        self.flow_classes = flow_classes
        self.sources = sources
        self.targets = targets
        self.ignored = ignored
        self.domains = domains

    @property
    def classes(self):
        """The classes of the flows, sorted, each once (None for flows of all classes)."""
        return None if self.flow_classes is None else np.unique(self.flow_classes)

    def __len__(self) -> int:
        return len(self.targets)

    def sharing_targets(self) -> list:
        """Lists of the flows onto the same target rows: each class's flows (one per source
        domain), in the order of the classes; each flow alone without several domains."""
        if self.domains is None:
            return [[k] for k in range(len(self))]
        if self.flow_classes is None:
            return [list(range(len(self)))]
        return [np.flatnonzero(self.flow_classes == c).tolist() for c in self.classes]

    def by_domain(self, domains) -> FlowGroups:
        """Each flow split by the source domain (``domains``: of every row) of its source
        rows, domain by domain, each part onto the flow's target rows; unchanged where the
        source rows are one domain.

        A batch effect is the batch's own: several source studies moved as one source are
        corrected on average only.
        """
        present = np.unique(domains[np.concatenate(self.sources)])
        if len(present) < 2:
            return self
        keys, sources, targets = [], [], []
        for domain in present:
            for k, rows in enumerate(self.sources):
                mine = rows[domains[rows] == domain]
                if len(mine):
                    keys.append((domain, k))
                    sources.append(mine)
                    targets.append(self.targets[k])
        flow_classes = None
        if self.flow_classes is not None:
            flow_classes = self.flow_classes[[k for _, k in keys]]
        flow_domains = np.array([domain for domain, _ in keys])
        return FlowGroups(flow_classes, sources, targets, self.ignored, flow_domains)


def group_rows(y, source, *, domains=None, conditional="auto", generative=False) -> FlowGroups:
    """Group rows into flows.

    Parameters
    ----------
    y : ndarray of shape (n_samples,) or None
        Class labels; -1, NaN or None mark unknown labels (skada's convention).
    source : ndarray of bool of shape (n_samples,)
        Source rows (all False in generative mode, where every row is a target).
    domains : ndarray of int of shape (n_samples,) or None
        ``sample_domain``: with several source domains, one flow per domain (and class),
        each onto the same target rows (:meth:`FlowGroups.by_domain`).
    conditional : "auto" or bool
        One flow per class.  "auto": when labels allow it.  In integration that needs a
        label on every source row and every source class among the labelled target rows;
        in generation, any labelled target row.  True raises where "auto" would fall back.
    generative : bool
        Generative mode: flows carry target rows only.
    """
    groups = _class_groups(y, source, conditional, generative)
    return groups if domains is None else groups.by_domain(domains)


def _class_groups(y, source, conditional, generative):
    """One flow for all rows, or one per class (:func:`group_rows` without domains)."""
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
