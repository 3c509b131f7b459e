"""Source rows a fit never saw: ``GPATransporter``'s ``out_of_sample`` maps, truth known.

Each of the generation benchmark's nine tables (``bench_generation.TABULAR``) is split in
halves (stratified, seeds 0 and 1); the source half gets one of ``bench_prealign.py``'s
effects (``affine``, ``curve``, ``convex``), and 30 % of its rows are held out of the fit.
``GPATransporter`` with every default but ``out_of_sample`` ("replay": the stored flow; and
"auto": the displacement of the nearest training rows, or the mean of their end points,
by leave-one-out) is fitted on the other 70 % and the target half, labelled (ER-like class
labels on both sides) and label-free, in one process; ``MeanStdAdjuster`` beside them.
recovery: RMSE(moved - truth) / RMSE(distorted - truth) per feature sd, of the held-out
rows (``new``), of the held-out rows moved without their labels (``new, routed``), and of
the training rows (``fit``).

Run: ``python benchmarks/bench_out_of_sample.py [--seeds N]``.  Writes
``benchmarks/results/bench_out_of_sample.{json,md}``.
"""

from __future__ import annotations

import sys
import time
import warnings

import _common
import numpy as np
from bench_generation import TABULAR, load_tabular
from bench_prealign import EFFECTS, distort
from sklearn.model_selection import train_test_split

from sklearn_gpa import GPATransporter, MeanStdAdjuster
from sklearn_gpa.utils import stack_domains

MAPS = ("replay", "auto")
COLUMNS = (
    ("cells", "cells", None),
    ("method", "method", None),
    ("new", "new", "{:.3f}"),
    ("new, worst", "new_worst", "{:.3f}"),
    ("new, routed", "routed", "{:.3f}"),
    ("fit", "fit", "{:.3f}"),
)


def run_cell(name, X, y, seed, effect, labelled):
    Xs, Xt, ys, yt = train_test_split(X, y, train_size=0.5, stratify=y, random_state=seed)
    sd = Xt.std(0) + 1e-12
    distorted = distort(Xs, Xt, effect, np.random.RandomState(seed))
    fit, new = train_test_split(np.arange(len(Xs)), test_size=0.3, stratify=ys, random_state=seed)

    def error(moved, rows):
        raw = np.mean(((distorted[rows] - Xs[rows]) / sd) ** 2)
        return float(np.sqrt(np.mean(((moved - Xs[rows]) / sd) ** 2) / raw))

    given = (ys[fit], yt) if labelled else (None, None)
    X_all, y_all, domain = stack_domains(distorted[fit], Xt, *given)
    y_new = ys[new] if labelled else None
    row = {"table": name, "seed": seed, "effect": effect, "labelled": labelled}
    adjuster = MeanStdAdjuster().fit(X_all, y_all, sample_domain=domain)
    row["meanstd"] = error(adjuster.transform(distorted[new], y_new), new)
    for method in MAPS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gpa = GPATransporter(random_state=seed, out_of_sample=method)
            gpa.fit(X_all, y_all, sample_domain=domain)
        row[f"{method} new"] = error(gpa.transform(distorted[new], y_new), new)
        row[f"{method} routed"] = error(gpa.transform(distorted[new]), new)
        row[f"{method} fit"] = error(gpa.particles_, fit)
        row["steps"] = int(gpa.n_steps_)
    return row


def summarise(rows, label):
    out = []
    for method in ("meanstd", *MAPS):
        key = method if method == "meanstd" else f"{method} new"
        new = np.array([r[key] for r in rows])
        entry = {"cells": f"{label} ({len(rows)})", "method": method}
        entry.update(new=float(new.mean()), new_worst=float(new.max()))
        if method != "meanstd":
            entry["routed"] = float(np.mean([r[f"{method} routed"] for r in rows]))
            entry["fit"] = float(np.mean([r[f"{method} fit"] for r in rows]))
        out.append(entry)
    return out


def main(argv=None):
    parser = _common.parser(__doc__)
    parser.add_argument("--seeds", type=int, default=2, help="splits per table (default 2)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = []
    for name in TABULAR:
        X, y = load_tabular(name)
        for seed in range(args.seeds):
            for effect in EFFECTS:
                for labelled in (True, False):
                    rows.append(run_cell(name, X, y, seed, effect, labelled))
                    print(
                        {
                            k: round(v, 3) if isinstance(v, float) else v
                            for k, v in rows[-1].items()
                        },
                        flush=True,
                    )
    moved = [r for r in rows if r["steps"] > 0]
    summary = summarise(rows, "all cells") + (summarise(moved, "flow moved") if moved else [])
    gaps = np.array([r["auto new"] - r["replay new"] for r in rows])
    counts = (
        f"auto - replay on the held-out rows, per cell: better by more than 0.01 in "
        f"{int((gaps < -0.01).sum())}, worse in {int((gaps > 0.01).sum())}, level in "
        f"{int((np.abs(gaps) <= 0.01).sum())} of {len(rows)}."
    )
    table = _common.grouped_table(summary, COLUMNS, group="cells")
    print("\n" + table + "\n\n" + counts)
    total = time.perf_counter() - start
    text = [
        f"`{_common.command()}` ({_common.now()}, {_common.machine_line()}), {total:.0f} s.",
        "",
        table,
        "",
        counts,
    ]
    record = {"command": _common.command(), "summary": summary, "rows": rows, "seconds": total}
    _common.write_results("bench_out_of_sample", record, "\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
