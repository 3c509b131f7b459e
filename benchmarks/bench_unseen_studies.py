"""Integration defaults on studies and batch effects that the known-truth benchmark does not use.

``bench_known_truth.py`` chose and checked the integration defaults on the three breast-cancer
studies of SurvSet with an ER status.  This script runs the same methods on three other
gene-expression studies of SurvSet (DLBCL, 240 x 7399; DBCD, 295 x 4919; chop, 414 x 3833;
every numeric column), each split in halves (stratified by the event indicator), the source
half distorted by one of five batch effects, so that every source row's batch-free value is
known:

* ``affine``, ``factors r2`` (per-sample factors of rank 2) and ``mix r1`` (a rank-1 factor,
  an intensity curve and a per-gene affine map): the generators of ``bench_known_truth.py``;
* ``intensity``: a per-sample multiplicative intensity (array brightness): each row scaled
  by a log-normal factor (sd 0.25) about a level below the data's minimum, then a per-gene
  affine map.  It is a per-sample factor whose gene pattern follows the genes' mean
  profile, which lies along the loudest biological axes;
* ``sparse probe``: 10 % of the genes shifted by 2-3 sds and a rank-1 factor with loadings
  on another 20 % of them.

Methods: per-gene mean/std, shrunk mean/std, quantile mapping, ComBat (inmoose), and
``LatentGPA`` with every default, label-free and labelled (the event indicator on both
sides); with ``--patterns`` also label-free ``LatentGPA`` whose ``DiscrepancyEncoder`` moves
rows along the discrepancy's patterns (``move_along="patterns"``).  Score: per-sample
recovery, RMSE(corrected - truth) / RMSE(distorted - truth), and its ratio to the best
per-gene method of the cell.

Run: ``python benchmarks/bench_unseen_studies.py [--quick] [--patterns]`` (``--quick``: one
split).  Writes ``benchmarks/results/bench_unseen_studies[_quick][_patterns].{json,md}``.
"""

from __future__ import annotations

import sys
import time
import warnings

import _common
import bench_known_truth as kt
import numpy as np
from sklearn.model_selection import train_test_split

from sklearn_gpa.latent import DiscrepancyEncoder

STUDIES = ("DLBCL", "DBCD", "chop")
PER_GENE = ("mean/std", "mean/std shrunk", "quantile mapping", "ComBat")


def load_study(name):
    """Every numeric column of a SurvSet study (rows with a missing value and constant
    columns dropped) and the event indicator."""
    from SurvSet.data import SurvLoader

    frame = SurvLoader().load_dataset(name)["df"]
    X = frame[[c for c in frame.columns if c.startswith("num_")]].to_numpy(float)
    keep = np.isfinite(X).all(1)
    X, y = X[keep], frame["event"].to_numpy()[keep].astype(int)
    return X[:, X.std(0) > 0], y


def intensity(truth, rng):
    """Per-sample multiplicative intensity about a level below the minimum, then affine."""
    mean, sd = truth.mean(0), truth.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    level = truth.min() - 1.0
    scaled = level + (truth - level) * rng.lognormal(0.0, 0.25, (len(truth), 1))
    return kt._affine(scaled, mean, sd, rng, 0.2, 0.5)


def sparse_probe(truth, rng):
    """10 % of the genes shifted by 2-3 sds, a rank-1 factor on another 20 %."""
    sd = truth.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    n_genes = truth.shape[1]
    out = truth.copy()
    shifted = rng.choice(n_genes, n_genes // 10, replace=False)
    size = rng.uniform(2.0, 3.0, len(shifted))
    out[:, shifted] += size * rng.choice([-1.0, 1.0], len(shifted)) * sd[shifted]
    loaded = rng.choice(n_genes, n_genes // 5, replace=False)
    scores = rng.normal(size=(len(truth), 1))
    out[:, loaded] += scores * rng.normal(0.0, 0.8, len(loaded)) * sd[loaded]
    return out


EFFECTS = {
    "affine": lambda truth, rng: kt.batch_effect("affine", truth, rng)[0],
    "factors r2": lambda truth, rng: kt.batch_effect("factors", truth, rng, 2)[0],
    "mix r1": lambda truth, rng: kt.batch_effect("mix", truth, rng, 1)[0],
    "intensity": intensity,
    "sparse probe": sparse_probe,
}


def methods(patterns):
    out = [
        ("mean/std", kt.meanstd),
        ("mean/std shrunk", kt.meanstd_shrunk),
        ("quantile mapping", kt.quantile_mapping),
        ("ComBat", kt.combat),
        ("LatentGPA label-free", kt.latent_gpa(None)),
        ("LatentGPA labelled", kt.latent_gpa("both")),
    ]
    if patterns:
        encoder = DiscrepancyEncoder(move_along="patterns")
        out.append(("LatentGPA label-free, patterns", kt.latent_gpa(None, {"encoder": encoder})))
    return out


def run_cell(cell, candidates, key):
    base = np.sqrt(np.mean((cell["Xs"] - cell["truth"]) ** 2))
    rows = []
    for name, method in candidates:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            moved = method(cell)
        seconds = time.perf_counter() - start
        recovery = float(np.sqrt(np.mean((moved - cell["truth"]) ** 2)) / base)
        rows.append({**key, "method": name, "recovery": recovery, "seconds": seconds})
    best = min(r["recovery"] for r in rows if r["method"] in PER_GENE)
    for row in rows:
        row["ratio"] = row["recovery"] / best
    return rows


def summarise(rows):
    out = []
    for effect in EFFECTS:
        cells = [r for r in rows if r["effect"] == effect]
        for name in dict.fromkeys(r["method"] for r in cells):
            mine = [r for r in cells if r["method"] == name]
            out.append(
                {
                    "effect": effect,
                    "method": name,
                    "recovery": float(np.mean([r["recovery"] for r in mine])),
                    "ratio": float(np.mean([r["ratio"] for r in mine])),
                    "worst": float(np.max([r["ratio"] for r in mine])),
                    "seconds": float(np.mean([r["seconds"] for r in mine])),
                }
            )
    return out


CELL_COLUMNS = [
    ("study", "study", None),
    ("effect", "effect", None),
    ("split", "split", "{}"),
    ("method", "method", None),
    ("recovery", "recovery", "{:.3f}"),
    ("/ best per-gene", "ratio", "{:.2f}"),
    ("seconds", "seconds", "{:.1f}"),
]
SUMMARY_COLUMNS = [
    ("effect", "effect", None),
    ("method", "method", None),
    ("recovery", "recovery", "{:.3f}"),
    ("/ best per-gene", "ratio", "{:.2f}"),
    ("worst cell", "worst", "{:.2f}"),
    ("seconds", "seconds", "{:.1f}"),
]


def main(argv=None):
    parser = _common.parser(__doc__, quick="one split per study")
    parser.add_argument(
        "--patterns", action="store_true", help='also LatentGPA with move_along="patterns"'
    )
    args = parser.parse_args(argv)
    try:
        import SurvSet  # noqa: F401
    except ImportError:
        print("survset is not installed (pip install survset): skipping bench_unseen_studies.")
        return 0
    candidates = methods(args.patterns)
    start = time.perf_counter()
    rows = []
    print(_common.grouped_table([], CELL_COLUMNS), flush=True)
    for study in STUDIES:
        X, y = load_study(study)
        for split in range(1 if args.quick else 2):
            source, target = train_test_split(
                np.arange(len(X)), test_size=0.5, stratify=y, random_state=split
            )
            for index, (effect, distort) in enumerate(EFFECTS.items()):
                rng = np.random.RandomState(100 * split + index)
                cell = {
                    "Xs": distort(X[source], rng),
                    "ys": y[source],
                    "Xt": X[target],
                    "yt": y[target],
                    "truth": X[source],
                }
                key = {"study": study, "effect": effect, "split": split}
                for row in run_cell(cell, candidates, key):
                    rows.append(row)
                    print(_common.format_row(row, CELL_COLUMNS), flush=True)
    summary = summarise(rows)
    total = time.perf_counter() - start
    print("\n" + _common.grouped_table(summary, SUMMARY_COLUMNS, group="effect"))
    stem = _common.result_stem("bench_unseen_studies", args.quick, "_patterns" * args.patterns)
    text = [
        f"`{_common.command()}` ({_common.now()}, {_common.machine_line()}), total {total:.0f} s. "
        "recovery: RMSE(corrected - truth) / RMSE(distorted - truth), lower is better; "
        "/ best per-gene: over the best of mean/std, shrunk mean/std, quantile mapping and "
        "ComBat in the same cell (mean over cells; worst cell beside it).",
        "",
        _common.grouped_table(summary, SUMMARY_COLUMNS, group="effect"),
        "",
        "Every cell:",
        "",
        _common.grouped_table(rows, CELL_COLUMNS),
    ]
    record = {"command": _common.command(), "summary": summary, "rows": rows, "seconds": total}
    _common.write_results(stem, record, "\n".join(text))
    print(f"\ntotal {total:.0f} s; wrote {_common.RESULTS}/{stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
