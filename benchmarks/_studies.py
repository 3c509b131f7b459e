"""Gene-expression studies from the ``survset`` package, shared by the benchmarks.

``Studies`` loads each SurvSet study once (:func:`open_studies`: or notes that ``survset``
is missing); :func:`er_labels` reads the ER status of the three breast-cancer studies
(GSE1992, GSE3143, GSE4335) and of nki70; :func:`real_pair` aligns two of them by gene
symbol (``num_HS_<SYMBOL>`` columns, ``num_<SYMBOL>`` in nki70); :func:`er_study` returns
one study's expression rows with a known ER status; :func:`expression` any study's numeric
rows. Needs ``pip install survset`` (the ``bench`` extra).
"""

from __future__ import annotations

import numpy as np

# The breast-cancer studies of SurvSet with an ER status (read by er_labels).
ER_STUDIES = ("gse1992", "gse3143", "gse4335")


class Studies:
    """SurvSet studies, loaded once each."""

    def __init__(self):
        from SurvSet.data import SurvLoader

        self.loader = SurvLoader()
        self.frames = {}

    def __call__(self, name):
        if name not in self.frames:
            self.frames[name] = self.loader.load_dataset(name)["df"]
        return self.frames[name]


def open_studies(script):
    """:class:`Studies`, or None with a note that ``script`` is skipped where ``survset`` is
    not installed (a benchmark's ``main`` then returns 0)."""
    try:
        return Studies()
    except ImportError:
        print(f"survset is not installed (pip install survset): skipping {script}.")
        return None


def er_labels(name, frame):
    """ER status: 1 positive, 0 negative, -1 unknown."""
    if name == "nki70":
        return (frame["fac_ER"] == "Positive").to_numpy().astype(int)
    if name == "gse3143":
        return (frame["fac_erlev"].astype(int).to_numpy() > 0).astype(int)
    column = {"gse1992": "fac_er_positive", "gse4335": "fac_er_status"}[name]
    labels = frame[column].astype(str).to_numpy()
    return np.where(labels == "1", 1, np.where(labels == "0", 0, -1))


def gene_columns(frame):
    """The gene columns (``num_HS_<SYMBOL>``) of a SurvSet study, in its order."""
    return [c for c in frame.columns if c.startswith("num_HS_")]


def expression(studies, name):
    """A SurvSet study's numeric columns: rows without a missing value, columns that vary."""
    frame = studies(name)
    X = frame[[c for c in frame.columns if c.startswith("num_")]].to_numpy(float)
    X = X[np.isfinite(X).all(1)]
    return X[:, X.std(0) > 0]


def er_study(studies, name):
    """Expression rows (finite, ER known), ER labels and gene columns of one study."""
    frame = studies(name)
    genes = gene_columns(frame)
    X = frame[genes].to_numpy(float)
    y = er_labels(name, frame)
    keep = np.isfinite(X).all(1) & (y >= 0)
    return X[keep], y[keep], genes


def gene_symbols(name, frame):
    """Gene symbol -> column: ``num_HS_<SYMBOL>``, or ``num_<SYMBOL>`` in nki70 (70 genes
    of the NKI signature, log10 ratios against a reference pool, and the patients' age)."""
    if name == "nki70":
        return {c[4:]: c for c in frame.columns if c.startswith("num_") and c != "num_Age"}
    return {c[len("num_HS_") :]: c for c in gene_columns(frame)}


def real_pair(studies, source, target):
    """Two studies, genes shared by both (in the source's order), rows with an ER status
    and every shared gene measured."""
    frames = studies(source), studies(target)
    symbols = [gene_symbols(name, frame) for name, frame in zip((source, target), frames)]
    genes = [g for g in symbols[0] if g in symbols[1]]
    out = []
    for name, frame, columns in zip((source, target), frames, symbols):
        y = er_labels(name, frame)
        X = frame[[columns[g] for g in genes]].to_numpy(float)
        keep = (y >= 0) & np.isfinite(X).all(1)
        out += [X[keep], y[keep]]
    Xs, ys, Xt, yt = out
    return {"Xs": Xs, "ys": ys, "Xt": Xt, "yt": yt, "truth": None, "n_genes": len(genes)}
