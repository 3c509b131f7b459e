"""When does ``LatentGPA``'s per-sample alignment run?  Its rule's numbers on every cell.

``sample_alignment="auto"`` maps each source row's level (its mean across genes) onto the
target rows' only where the source rows' levels vary at least 4 times as much as the target
rows' (``LEVEL_VARIANCE_RATIO``) and Brown-Forsythe's test rejects at 0.01.  Since
2026-12-07 each side's levels are first divided by the root of its features' total variance:
two studies in different units (nki70's log10 ratios against the log2 intensities of the
GSE studies) differ in every spread by one factor, which is no per-sample effect.

Cells: ``bench_known_truth.py``'s (three ER studies x four effects x splits 0 and 1),
``bench_held_out_studies.py``'s (five studies x seven effects x two splits: the
``intensity`` cells are the per-sample brightness effect the map is for), and real study
pairs: the repository's six and six with nki70 (SurvSet; ER, the genes both measure).
Printed per cell: the variance ratio of the rows' levels as measured before (raw units) and
now (each side in its own unit), the test's p-values, and whether the map ran then and now.
With ``--accuracy``, the real pairs where the decision changed: balanced ER accuracy of a
target-trained classifier (the logistic regression of ``bench_known_truth.py`` and a
300-tree forest) on the source rows after mean/std and after label-free ``LatentGPA``
(``random_state=0``).

Run: ``python benchmarks/bench_sample_levels.py [--accuracy]`` (needs ``survset``).  Writes
``benchmarks/results/bench_sample_levels.{json,md}``.
"""

from __future__ import annotations

import time
import warnings

import _common
import bench_held_out_studies as held_out
import bench_known_truth as known
import numpy as np
from _studies import er_study, expression, open_studies, real_pair
from scipy import stats
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import train_test_split

from sklearn_gpa import LatentGPA, MeanStdAdjuster
from sklearn_gpa._sample_levels import LEVEL_ALPHA, LEVEL_VARIANCE_RATIO, _total_variance
from sklearn_gpa.utils import stack_domains

NKI70_PAIRS = tuple(
    pair for other in known.ER_STUDIES for pair in (("nki70", other), (other, "nki70"))
)
COLUMNS = [
    ("cell", "cell", None),
    ("genes", "genes", "{}"),
    ("ratio, raw units", "raw_ratio", "{:.2f}"),
    ("p", "raw_p", "{:.0e}"),
    ("ratio, own units", "ratio", "{:.2f}"),
    ("p ", "p", "{:.0e}"),
    ("map before", "before", None),
    ("map now", "now", None),
]


def decision(source, target):
    """The rule's numbers: the levels' variance ratio and p-value in raw units and with
    each side in its own unit (the root of its features' total variance)."""
    levels_s, levels_t = source.mean(1), target.mean(1)
    unit = np.sqrt(_total_variance(source) / _total_variance(target))
    out = {}
    for key, scaled in (("raw_", levels_s), ("", levels_s / unit)):
        ratio = np.var(scaled) / np.var(levels_t)
        p = stats.levene(scaled, levels_t, center="median").pvalue
        out[f"{key}ratio"], out[f"{key}p"] = float(ratio), float(p)
        out["before" if key else "now"] = (
            "runs" if ratio >= LEVEL_VARIANCE_RATIO and p < LEVEL_ALPHA else "-"
        )
    return out


def cells(studies):
    for study in known.ER_STUDIES:
        X, y, _ = er_study(studies, study)
        for kind in known.EFFECTS:
            for split in (0, 1):
                cell = known.split_cell(X, y, study, kind, split)
                yield f"known truth: {study}, {kind}, split {split}", cell["Xs"], cell["Xt"]
    for study in held_out.STUDIES:
        X = expression(studies, study)
        for kind, rank in held_out.EFFECTS:
            for split in (0, 1):
                source, target = train_test_split(
                    np.arange(len(X)), test_size=0.5, random_state=split
                )
                index = held_out.EFFECTS.index((kind, rank))
                seed = 1000 * split + 10 * held_out.STUDIES.index(study) + index
                Xs = held_out.distort(kind, rank, X[source], np.random.RandomState(seed))
                name = held_out.effect_name(kind, rank)
                yield f"held out: {study}, {name}, split {split}", Xs, X[target]
    for source, target in known.REAL_PAIRS + NKI70_PAIRS:
        pair = real_pair(studies, source, target)
        yield f"real pair: {source} -> {target}", pair["Xs"], pair["Xt"]


def accuracy(studies, source, target):
    """Balanced ER accuracy on a real pair's source rows: raw, mean/std, LatentGPA."""
    pair = real_pair(studies, source, target)
    Xs, ys, Xt, yt = pair["Xs"], pair["ys"], pair["Xt"], pair["yt"]
    classifiers = {
        "logistic": known.target_classifier(Xt, yt),
        "forest": RandomForestClassifier(300, random_state=0, n_jobs=1).fit(Xt, yt),
    }
    X, _, domain = stack_domains(Xs, Xt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        latent = LatentGPA(random_state=0).fit(X, sample_domain=domain)
        moved = {
            "raw": Xs,
            "mean/std": MeanStdAdjuster().fit(X, sample_domain=domain).transform(Xs),
            "LatentGPA": latent.transform(Xs),
        }
    rows = []
    for method, rows_moved in moved.items():
        scores = {
            name: balanced_accuracy_score(ys, model.predict(rows_moved))
            for name, model in classifiers.items()
        }
        rows.append({"pair": f"{source} -> {target}", "method": method, **scores})
    rows[-1]["map"] = "runs" if latent.sample_levels_ is not None else "-"
    return rows


ACCURACY_COLUMNS = [
    ("pair", "pair", None),
    ("method", "method", None),
    ("logistic", "logistic", "{:.3f}"),
    ("forest", "forest", "{:.3f}"),
    ("map", "map", None),
]


def main():
    parser = _common.parser(__doc__)
    parser.add_argument("--accuracy", action="store_true", help="real pairs whose map changed")
    args = parser.parse_args()
    studies = open_studies("bench_sample_levels.py")
    if studies is None:
        return 0
    start = time.perf_counter()
    rows = []
    for name, Xs, Xt in cells(studies):
        rows.append({"cell": name, "genes": Xs.shape[1], **decision(Xs, Xt)})
        print(_common.format_row(rows[-1], COLUMNS), flush=True)
    changed = [r for r in rows if r["before"] != r["now"]]
    lines = [
        f"{sum(r['now'] == 'runs' for r in rows)} of {len(rows)} cells run the map now, "
        f"{sum(r['before'] == 'runs' for r in rows)} before; changed: "
        + (", ".join(r["cell"] for r in changed) or "none")
    ]
    accuracy_rows = []
    if args.accuracy:
        for row in changed:
            if row["cell"].startswith("real pair: "):
                source, target = row["cell"][len("real pair: ") :].split(" -> ")
                accuracy_rows += accuracy(studies, source, target)
        lines.append(_common.grouped_table(accuracy_rows, ACCURACY_COLUMNS, group="pair"))
    table = "\n\n".join(lines)
    print(table)
    parts = [_common.machine_line(), table, _common.grouped_table(rows, COLUMNS)]
    parts.append(f"{time.perf_counter() - start:.0f} s in all")
    record = {"cells": rows, "accuracy": accuracy_rows, "command": _common.command()}
    _common.write_results("bench_sample_levels", record, "\n\n".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
