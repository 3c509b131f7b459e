"""The size and power of ``DiscrepancyEncoder``'s test on real studies split in halves.

The cells of ``bench_known_truth.py`` (GSE1992, GSE3143, GSE4335, each split in halves; the
source half gets a per-gene affine effect, an intensity curve, per-sample factors of rank
1 / 2 / 3 with gene loadings of 0.8, 0.5, 0.3 gene sds, or the mix), plus *pure-noise
splits*: two halves of one study with no effect at all (the encoder should find nothing),
and the real study pairs.  Every cell goes through what ``LatentGPA`` does before its
encoder (the shrunk mean/std pre-alignment), then the encoder's rows (standardised by the
target's gene sds, centred per side) go to each test:

* ``step-down, greater, alpha=0.01`` (the default), ``alpha=0.05`` and ``two-sided``:
  :func:`sklearn_gpa._discrepancy.step_down_directions`;
* ``spreads not re-matched``: the default without matching the source's gene spreads to
  the target's again after each accepted direction;
* ``former: largest eigenvalue``: the former encoder's test (every eigenvalue of the
  covariance gap against the 95th percentile of the largest one over 20 permutations).

Scores: directions found per cell; for factor cells, the share of each simulated factor's
direction inside the found span (1 = found); for pure-noise splits, the share of splits with
at least one direction (the test's size).

Run: ``python benchmarks/bench_discrepancy_test.py [--quick]`` (``--quick``: 10 pure-noise
splits per study instead of 40, splits 0-1 of the effect cells instead of 0-3, no real
pairs).  Writes ``benchmarks/results/bench_discrepancy_test{_quick}.{json,md}``.
"""

from __future__ import annotations

import sys

import _common
import numpy as np
from _studies import ER_STUDIES, er_study, open_studies, real_pair
from bench_known_truth import EFFECTS, REAL_PAIRS, split_cell
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from sklearn_gpa._discrepancy import _axes, _gap, step_down_directions
from sklearn_gpa.baselines import meanstd_map


def encoder_rows(Xs, Xt, factor=None):
    """The encoder's rows of the pre-aligned source and the target (standardised by the
    target's sds, each side centred) and (with ``factor``) each simulated factor's unit
    direction, the part of it inside the rows' span."""
    a, b = meanstd_map(Xs, Xt, shrink=True)
    aligned = Xs * a + b
    scale = Xt.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    source = (aligned - aligned.mean(0)) / scale
    target = (Xt - Xt.mean(0)) / scale
    truth = None
    if factor is not None and np.abs(factor).sum() > 0:
        basis = _axes(np.vstack([source, target]))[0]
        _, values, axes = np.linalg.svd(factor * a / scale, full_matrices=False)
        axes = axes[values > 1e-6 * values[0]]
        truth = (axes @ basis.T) @ basis  # the part inside the rows' span
    return source, target, truth


def former_test(source, target, rng):
    """The former encoder: eigenvalues of the gap against the 95th percentile of the largest
    one over 20 random reassignments of the rows."""
    rows = np.vstack([source, target])
    basis = _axes(rows)[0]
    codes, n_source = rows @ basis.T, len(source)
    values, vectors = np.linalg.eigh(_gap(codes, n_source))
    null = [
        np.abs(np.linalg.eigvalsh(_gap(codes[rng.permutation(len(codes))], n_source))).max()
        for _ in range(20)
    ]
    order = np.argsort(-np.abs(values))
    return basis.T @ vectors[:, order[np.abs(values[order]) > np.quantile(null, 0.95)][:10]]


TESTS = {
    "step-down, greater, alpha=0.01 (default)": dict(alpha=0.01, n_permutations=199),
    "step-down, greater, alpha=0.05": dict(alpha=0.05, n_permutations=199),
    "step-down, two-sided, alpha=0.01": dict(alpha=0.01, n_permutations=199, two_sided=True),
    "step-down, greater, alpha=0.01, spreads not re-matched": dict(
        alpha=0.01, n_permutations=199, rematch=False
    ),
    "former: largest eigenvalue": None,
}


def run_tests(source, target, truth):
    out = {}
    for name, settings in TESTS.items():
        rng = np.random.RandomState(0)
        if settings is None:
            found = former_test(source, target, rng)
        else:
            found = step_down_directions(source, target, rng=rng, **settings)
        entry = {"found": int(found.shape[1])}
        if truth is not None:
            unit = truth / np.linalg.norm(truth, axis=1, keepdims=True)
            span = np.linalg.qr(found)[0] if found.shape[1] else found
            entry["captured"] = np.round(np.sum((unit @ span) ** 2, axis=1), 3).tolist()
        out[name] = entry
    return out


def main(argv=None):
    parser = _common.parser(__doc__, quick="10 pure-noise splits per study, no real pairs")
    args = parser.parse_args(argv)
    studies = open_studies("bench_discrepancy_test")
    if studies is None:
        return 0
    record = _common.run_record()
    n_noise, n_splits = (10, 2) if args.quick else (40, 4)
    cells = []
    with threadpool_limits(1):
        for study in ER_STUDIES:
            X, y, _ = er_study(studies, study)
            for split in range(n_splits):
                for effect in EFFECTS:
                    cell = split_cell(X, y, study, effect, split)
                    factor = cell["factor"] if effect in ("factors", "mix") else None
                    rows = encoder_rows(cell["Xs"], cell["Xt"], factor)
                    cells.append((study, effect, split, run_tests(*rows)))
            for split in range(n_noise):
                s, t = train_test_split(
                    np.arange(len(X)), test_size=0.5, stratify=y, random_state=100 + split
                )
                cells.append((study, "none", split, run_tests(*encoder_rows(X[s], X[t]))))
            print(study, "done", flush=True)
        for source, target in () if args.quick else REAL_PAIRS:
            pair = real_pair(studies, source, target)
            rows = encoder_rows(pair["Xs"], pair["Xt"])
            cells.append((f"{source} -> {target}", "real", 0, run_tests(*rows)))
    lines = [f"`{record['command']}` ({record['date']}, {_common.machine_line()})", ""]
    header = ["test", "pure-noise splits with a direction (size)"]
    header += [f"{e}: directions found" for e in EFFECTS] + [
        "factor cells: share of each factor found (0.8 / 0.5 / 0.3 gene sds)",
        "real pairs: directions",
    ]
    rows = []
    for name in TESTS:
        noise = [c[3][name]["found"] for c in cells if c[1] == "none"]
        row = [name, f"{np.mean(np.array(noise) > 0):.3f} of {len(noise)}"]
        for effect in EFFECTS:
            row.append(" ".join(str(c[3][name]["found"]) for c in cells if c[1] == effect))
        shares = {}
        for c in cells:
            if c[1] == "factors":
                for k, v in enumerate(c[3][name]["captured"]):
                    shares.setdefault(k, []).append(v >= 0.5)
        row.append(" / ".join(f"{np.sum(v)} of {len(v)}" for v in shares.values()))
        row.append(" ".join(str(c[3][name]["found"]) for c in cells if c[1] == "real") or "-")
        rows.append(row)
    lines += [
        "Directions found per cell (GSE1992, GSE3143, GSE4335; splits in order); a factor "
        "counts as found when half of its direction lies in the found span.",
        "",
        _common.markdown_table(header, rows),
    ]
    text = "\n".join(lines)
    print(text)
    record["cells"] = [{"study": c[0], "effect": c[1], "split": c[2], "tests": c[3]} for c in cells]
    _common.write_results(_common.result_stem("bench_discrepancy_test", args.quick), record, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
