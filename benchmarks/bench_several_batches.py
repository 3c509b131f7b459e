"""Several batches onto one reference: each source batch with its own effect, truth known.

A user who integrates several studies (or plates, or sites) onto one reference passes them in
one ``X`` with a ``sample_domain`` value per batch (``>= 0``) and ``-1`` for the reference.
Each batch has its own effect; this benchmark says whether the estimators correct each batch
its own way.

Gene expression: every breast-cancer study of ``survset`` with an ER status (GSE1992, GSE3143,
GSE4335, all ``num_HS_*`` genes) is split in halves stratified by ER; the target half is the
reference, the source half is split (stratified) into ``--batches`` batches (default 3), and
each batch gets its own draw of one kind of effect of ``bench_known_truth.py`` (``affine``,
``factors``, ``mix``), so every source row's batch-free value is known.  Tables: sklearn's
wine and breast-cancer tables and the digits' 8x8 pixels averaged to 16 features, per
batch a per-feature affine effect (scale ``exp(N(0, 0.3))``, shift ``N(0, 1)`` feature sds).

Every estimator with default parameters (``random_state=0``), three ways of passing the
batches:

* ``batches``: one ``sample_domain`` value per batch (what a user passes);
* ``pooled``: every source row with ``sample_domain`` 0 (the batches moved as one source);
* ``one fit per batch``: a separate estimator per batch, each with the reference rows (a
  user's loop; the reference for ``batches``).

Methods: raw; ``MeanStdAdjuster``; ``LatentGPA`` label-free and labelled (genes);
``GPATransporter`` label-free and labelled (tables).  Scores: ``recovery``,
RMSE(corrected - truth) / RMSE(distorted - truth) over every source row and feature (lower is
better); ``accuracy``, balanced accuracy of the class predicted on the corrected source rows
by a classifier trained on the reference rows; seconds.

Run: ``python benchmarks/bench_several_batches.py [--quick] [--batches B] [--no-genes]
[--no-tables]`` (``--quick``: one effect per study, the ``mix``).  Writes
``benchmarks/results/bench_several_batches{_quick}.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import _common
import numpy as np
from _studies import ER_STUDIES, er_study, open_studies
from bench_known_truth import batch_effect, target_classifier
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from sklearn_gpa import GPATransporter, LatentGPA, MeanStdAdjuster

GENE_EFFECTS = ("affine", "factors", "mix")
WAYS = ("batches", "pooled", "one fit per batch")


def _digits16():
    X, y = load_digits(return_X_y=True)
    # 2x2 blocks of the 8x8 image: 16 features that keep the digit's shape.
    blocks = X.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(len(X), 16)
    return blocks[:600], y[:600]


TABLES = {
    "wine": lambda: load_wine(return_X_y=True),
    "breast cancer": lambda: load_breast_cancer(return_X_y=True),
    "digits 16": _digits16,
}


def _affine(truth, rng):
    mean, sd = truth.mean(0), truth.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    scale = rng.lognormal(0.0, 0.3, truth.shape[1])
    return (truth - mean) * scale + mean + rng.normal(0.0, 1.0, truth.shape[1]) * sd


def make_cell(X, y, effect, seed, n_batches):
    """The reference half, and the source half split in batches with their own effects."""
    source, target = train_test_split(
        np.arange(len(X)), test_size=0.5, stratify=y, random_state=seed
    )
    folds = StratifiedKFold(n_batches, shuffle=True, random_state=seed)
    batch = np.empty(len(source), dtype=int)
    for b, (_, rows) in enumerate(folds.split(source, y[source])):
        batch[rows] = b
    truth = X[source]
    Xs = np.empty_like(truth)
    for b in range(n_batches):
        rng = np.random.RandomState(100 * seed + b)
        rows = batch == b
        if effect == "table affine":
            Xs[rows] = _affine(truth[rows], rng)
        else:
            Xs[rows] = batch_effect(effect, truth[rows], rng)[0]
    return {
        "Xs": Xs,
        "ys": y[source],
        "Xt": X[target],
        "yt": y[target],
        "truth": truth,
        "batch": batch,
    }


def _fit_transform(estimator, cell, labels, domains):
    """Moved source rows of ``estimator`` fitted on source + reference rows."""
    X = np.vstack([cell["Xs"], cell["Xt"]])
    y = np.concatenate([cell["ys"], cell["yt"]]) if labels else None
    sample_domain = np.concatenate([domains, np.full(len(cell["Xt"]), -1)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        moved = estimator.fit_transform(X, y, sample_domain=sample_domain)
    return moved[: len(cell["Xs"])]


def run_way(make, cell, labels, way):
    if way == "batches":
        return _fit_transform(make(), cell, labels, cell["batch"])
    if way == "pooled":
        return _fit_transform(make(), cell, labels, np.zeros(len(cell["Xs"]), dtype=int))
    moved = np.empty_like(cell["Xs"])
    for b in np.unique(cell["batch"]):
        rows = cell["batch"] == b
        part = {**cell, "Xs": cell["Xs"][rows], "ys": cell["ys"][rows]}
        moved[rows] = _fit_transform(make(), part, labels, np.zeros(rows.sum(), dtype=int))
    return moved


def methods(genes):
    flow = LatentGPA if genes else GPATransporter
    name = flow.__name__
    return [
        ("MeanStdAdjuster", MeanStdAdjuster, False),
        (f"{name} label-free", lambda: flow(random_state=0), False),
        (f"{name} labelled", lambda: flow(random_state=0), True),
    ]


def score(moved, cell, classifier):
    error = np.mean((moved - cell["truth"]) ** 2) / np.mean((cell["Xs"] - cell["truth"]) ** 2)
    accuracy = balanced_accuracy_score(cell["ys"], classifier.predict(moved))
    return {"recovery": float(np.sqrt(error)), "accuracy": float(accuracy)}


def run_cell(cell, key, genes):
    if genes:
        classifier = target_classifier(cell["Xt"], cell["yt"])
    else:
        classifier = RandomForestClassifier(200, random_state=0).fit(cell["Xt"], cell["yt"])
    rows = [{**key, "method": "raw", "way": "", **score(cell["Xs"], cell, classifier)}]
    print(_common.format_row(rows[0], COLUMNS), flush=True)
    for name, make, labels in methods(genes):
        for way in WAYS:
            start = time.perf_counter()
            moved = run_way(make, cell, labels, way)
            row = {**key, "method": name, "way": way, **score(moved, cell, classifier)}
            row["seconds"] = time.perf_counter() - start
            print(_common.format_row(row, COLUMNS), flush=True)
            rows.append(row)
    return rows


COLUMNS = (
    ("data", "data", None),
    ("effect", "effect", None),
    ("method", "method", None),
    ("way", "way", None),
    ("recovery", "recovery", "{:.3f}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("seconds", "seconds", "{:.1f}"),
)


def summarise(rows):
    """Per kind of data, method and way: mean scores over the cells."""
    out = []
    for kind in ("genes", "tables"):
        picked = [r for r in rows if r["kind"] == kind]
        for method, way in dict.fromkeys((r["method"], r["way"]) for r in picked):
            these = [r for r in picked if (r["method"], r["way"]) == (method, way)]
            entry = {"data": f"{kind}: mean of {len(these)}", "effect": "", "method": method}
            entry["way"] = way
            for column in ("recovery", "accuracy", "seconds"):
                values = [r[column] for r in these if column in r]
                entry[column] = float(np.mean(values)) if values else None
            entry["worst recovery"] = max(r["recovery"] for r in these)
            out.append(entry)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the mix effect only (genes)")
    parser.add_argument("--batches", type=int, default=3, help="source batches (default 3)")
    parser.add_argument("--no-genes", action="store_true")
    parser.add_argument("--no-tables", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = []
    print(_common.grouped_table([], COLUMNS), flush=True)
    studies = None if args.no_genes else open_studies("the gene cells")
    if studies is not None:
        for study in ER_STUDIES:
            X, y, _ = er_study(studies, study)
            for effect in ("mix",) if args.quick else GENE_EFFECTS:
                cell = make_cell(X, y, effect, ER_STUDIES.index(study), args.batches)
                key = {"kind": "genes", "data": study, "effect": effect}
                rows += run_cell(cell, key, genes=True)
    if not args.no_tables:
        for seed, (name, load) in enumerate(TABLES.items()):
            X, y = load()
            cell = make_cell(np.asarray(X, float), y, "table affine", seed, args.batches)
            key = {"kind": "tables", "data": name, "effect": "affine"}
            rows += run_cell(cell, key, genes=False)
    summary = summarise(rows)
    columns = COLUMNS + (("worst recovery", "worst recovery", "{:.3f}"),)
    print("\n" + _common.grouped_table(summary, columns, group="data"), flush=True)
    total = time.perf_counter() - start
    stem = _common.result_stem("bench_several_batches", args.quick)
    text = [
        f"`{_common.command()}` ({_common.now()}, {_common.machine_line()}), total "
        f"{total:.0f} s. {args.batches} source batches, each with its own effect, onto one "
        "reference; default parameters (random_state=0). recovery: RMSE(corrected - truth) / "
        "RMSE(distorted - truth), lower is better; accuracy: balanced accuracy of a "
        "classifier trained on the reference rows.",
        "",
        _common.grouped_table(summary, columns, group="data"),
        "",
        "Every cell:",
        "",
        _common.grouped_table(rows, COLUMNS),
    ]
    record = {
        "command": _common.command(),
        "batches": args.batches,
        "summary": summary,
        "rows": rows,
        "seconds": total,
    }
    _common.write_results(stem, record, "\n".join(text))
    print(f"\ntotal {total:.0f} s; wrote {_common.RESULTS}/{stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
