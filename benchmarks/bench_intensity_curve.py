"""LatentGPA's shared intensity curve (``intensity_curve="auto"``) against none, with a known truth.

Eight SurvSet gene-expression studies (the three ER studies of ``bench_known_truth.py`` and
NSBCD, DBCD, chop, vdv, MCLcleaned, which no setting was chosen on), each restricted to its
``GENES`` genes of largest variance, split at random in halves (``--splits`` seeds); the
source half gets a batch effect and every source row's batch-free value is known:

* ``none``: two halves of one study (the truth is the rows themselves);
* ``affine``, ``curve``, ``factors``, ``mix``: ``bench_known_truth.py``'s effects;
* ``knee``: a stronger shared curve of the intensity, a soft knee and a cubic tail
  (``z + 0.6 softplus(2.5 (z - 0.2)) - 0.2 z + 0.1 z^3`` of the study-standardised
  intensity), then a per-gene affine effect;
* ``background``: an unsubtracted scanner background, ``log2(2^x + 2^q)`` of the log2
  intensity ``x`` with ``q`` the study's 30th percentile (low intensities compressed, high
  ones kept), then a per-gene affine effect.

Label-free ``LatentGPA(random_state=0)`` with every default, the curve step on (as it is)
and off (``_intensity_curve.ENABLED`` False, as before 2026-12-07), in one process; the
per-gene methods of ``bench_known_truth.py`` for reference.  Score: per-sample recovery,
RMSE(corrected - truth) / RMSE(distorted - truth) (``none``: over the truth's own spread
about its gene means); "/ best per-gene": over the best of mean/std, shrunk mean/std,
quantile mapping and ComBat in the same cell.  Part two (calibration): on ``HALVINGS``
random halvings of each study, how often the curve's permutation test (level 0.05) fires.

Run: ``python benchmarks/bench_intensity_curve.py [--quick]`` (``--quick``: 4 studies, one
split).  Writes ``benchmarks/results/bench_intensity_curve[_quick].{json,md}``.
"""

from __future__ import annotations

import time
import warnings

import _common
import _studies
import numpy as np
from bench_known_truth import ER_STUDIES, _affine, batch_effect, combat, quantile_mapping

from sklearn_gpa import LatentGPA, MeanStdAdjuster, _intensity_curve
from sklearn_gpa._intensity_curve import IntensityCurve
from sklearn_gpa.utils import stack_domains

STUDIES = (*ER_STUDIES, "NSBCD", "DBCD", "chop", "vdv", "MCLcleaned")
QUICK_STUDIES = ("gse1992", "NSBCD", "DBCD", "vdv")
EFFECTS = ("none", "affine", "curve", "knee", "background", "factors", "mix")
GENES = 1000
HALVINGS = 20


def knee(truth, rng):
    """A strong shared intensity curve, then a per-gene affine effect."""
    centre, spread = truth.mean(), truth.std()
    z = (truth - centre) / spread
    bent = z + 0.6 * np.log1p(np.exp(2.5 * (z - 0.2))) - 0.2 * z + 0.1 * z**3
    return _affine(centre + spread * bent, truth.mean(0), truth.std(0), rng, 0.2, 0.5)


def background(truth, rng, floor):
    """An unsubtracted background added in linear space, then a per-gene affine effect."""
    bent = np.log2(np.exp2(truth) + np.exp2(floor))
    return _affine(bent, bent.mean(0), truth.std(0), rng, 0.2, 0.5)


def study_rows(studies, name):
    X = _studies.expression(studies, name)
    if X.min() >= 0 and X.max() > 50:  # unlogged intensities
        X = np.log2(X + 1.0)
    return X[:, np.argsort(-X.var(0), kind="stable")[:GENES]]


def per_gene(cell):
    X, _, sd = stack_domains(cell["Xs"], cell["Xt"])
    return {
        "mean/std": MeanStdAdjuster().fit(X, sample_domain=sd).transform(cell["Xs"]),
        "mean/std shrunk": MeanStdAdjuster(shrink=True)
        .fit(X, sample_domain=sd)
        .transform(cell["Xs"]),
        "quantile mapping": quantile_mapping(cell),
        "ComBat": combat(cell),
    }


def latent(cell, curve):
    X, _, sd = stack_domains(cell["Xs"], cell["Xt"])
    _intensity_curve.ENABLED = curve
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LatentGPA(random_state=0).fit(X, sample_domain=sd)
            moved = model.transform(cell["Xs"])
    finally:
        _intensity_curve.ENABLED = True
    return moved, model


def run(studies, names, splits):
    rows = []
    for name in names:
        X = study_rows(studies, name)
        for split in range(splits):
            order = np.random.RandomState(split).permutation(len(X))
            source, target = order[: len(X) // 2], order[len(X) // 2 :]
            truth = X[source]
            for k, effect in enumerate(EFFECTS):
                rng = np.random.RandomState(1000 * split + 10 * STUDIES.index(name) + k)
                if effect == "none":
                    Xs = truth.copy()
                elif effect == "knee":
                    Xs = knee(truth, rng)
                elif effect == "background":
                    Xs = background(truth, rng, np.percentile(X, 30))
                else:
                    Xs = batch_effect(effect, truth, rng)[0]
                cell = {"Xs": Xs, "Xt": X[target]}
                if effect == "none":
                    base = np.sqrt(np.mean((truth - truth.mean(0)) ** 2))
                else:
                    base = np.sqrt(np.mean((Xs - truth) ** 2))
                recovery = {
                    m: float(np.sqrt(np.mean((c - truth) ** 2)) / base)
                    for m, c in per_gene(cell).items()
                }
                best = min(recovery.values())
                for setting, on in (("curve", True), ("no curve", False)):
                    start = time.perf_counter()
                    moved, model = latent(cell, on)
                    recovery[setting] = float(np.sqrt(np.mean((moved - truth) ** 2)) / base)
                    recovery[setting + " seconds"] = time.perf_counter() - start
                    if on:
                        curves = getattr(model, "intensity_curves_", None)
                        recovery["fitted"] = curves is not None
                        recovery["weight"] = curves[1].weight if curves else 0.0
                row = {"study": name, "split": split, "effect": effect, "best": best, **recovery}
                rows.append(row)
                print(
                    f"{name:10s} {split} {effect:8s} best per-gene {best:.3f}  curve "
                    f"{row['curve']:.3f} ({row['curve'] / best:.2f})  no curve "
                    f"{row['no curve']:.3f} ({row['no curve'] / best:.2f})  fitted {row['fitted']} "
                    f"weight {row['weight']:.2f}  {row['curve seconds']:.1f} s",
                    flush=True,
                )
    return rows


def calibration(studies, names):
    rows = []
    for name in names:
        X = study_rows(studies, name)
        fired = 0
        for seed in range(HALVINGS):
            order = np.random.RandomState(10_000 + seed).permutation(len(X))
            half = len(X) // 2
            fired += (
                IntensityCurve.fit(X[order[:half]], X[order[half:]], random_state=seed) is not None
            )
        rows.append({"study": name, "rows": len(X), "fired": fired})
        print(
            f"{name:10s} {len(X)} rows: the curve fitted on {fired} of {HALVINGS} halvings",
            flush=True,
        )
    return rows


def summary(rows, calibration_rows):
    lines = [
        "| effect | cells | curve fitted | LatentGPA no curve | / best per-gene "
        "| LatentGPA curve | / best per-gene | cells lower / higher |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for effect in EFFECTS:
        cells = [r for r in rows if r["effect"] == effect]
        before = np.mean([r["no curve"] for r in cells])
        after = np.mean([r["curve"] for r in cells])
        ratio_before = np.mean([r["no curve"] / r["best"] for r in cells])
        ratio_after = np.mean([r["curve"] / r["best"] for r in cells])
        lower = sum(r["curve"] < r["no curve"] - 1e-9 for r in cells)
        higher = sum(r["curve"] > r["no curve"] + 1e-9 for r in cells)
        fitted = sum(r["fitted"] for r in cells)
        lines.append(
            f"| {effect} | {len(cells)} | {fitted} | {before:.3f} | {ratio_before:.2f} | "
            f"{after:.3f} | {ratio_after:.2f} | {lower} / {higher} |"
        )
    lines += ["", "| study | rows | curve fitted on two halves of the study |", "|---|---:|---:|"]
    for r in calibration_rows:
        lines.append(f"| {r['study']} | {r['rows']} | {r['fired']} of {HALVINGS} |")
    return "\n".join(lines)


def main():
    args = _common.parser(__doc__, quick="4 studies, one split").parse_args()
    parser_splits = 1 if args.quick else 2
    studies = _studies.open_studies("bench_intensity_curve.py")
    if studies is None:
        return 0
    names = QUICK_STUDIES if args.quick else STUDIES
    start = time.perf_counter()
    rows = run(studies, names, parser_splits)
    calibration_rows = calibration(studies, names)
    table = summary(rows, calibration_rows)
    cells = _common.markdown_table(
        ["study", "split", "effect", "best per-gene", "curve", "no curve", "fitted", "weight"],
        [
            [
                r["study"],
                r["split"],
                r["effect"],
                f"{r['best']:.3f}",
                f"{r['curve']:.3f}",
                f"{r['no curve']:.3f}",
                r["fitted"],
                f"{r['weight']:.2f}",
            ]
            for r in rows
        ],
    )
    head = (
        f"`python benchmarks/bench_intensity_curve.py{' --quick' if args.quick else ''}` "
        f"({_common.machine_line()}), {time.perf_counter() - start:.0f} s. Label-free "
        f"LatentGPA(random_state=0), {GENES} genes of largest variance per study, "
        f"{parser_splits} random half-split(s). Means over studies and splits:"
    )
    markdown = f"{head}\n\n{table}\n\nEvery cell:\n\n{cells}\n"
    print(markdown)
    _common.write_results(
        _common.result_stem("bench_intensity_curve", args.quick),
        {"rows": rows, "calibration": calibration_rows},
        markdown,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
