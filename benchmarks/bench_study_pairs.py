"""LatentGPA on other gene-expression study pairs: real cross-study pairs and known-truth splits.

All data come from the ``survset`` package (``pip install survset``, in the ``bench`` extra).
Two kinds of source -> target pairs:

* real pairs: two breast-cancer studies, genes aligned by symbol (``num_HS_*``), patients with
  an ER status: GSE3143 -> GSE4335, GSE4335 -> GSE3143, GSE1992 -> GSE3143;
* split pairs: one study split in two by a covariate (GSE4335 by lymph-node status, with ER
  labels; DLBCL, AML_Bull and chop by the survival event; DLBCL at random as a control where
  both halves share one distribution).  The source half gets a simulated per-gene batch
  effect (log-normal scale with sd 0.3, a shift of N(0, 1) gene standard deviations, noise of
  0.2 gene standard deviations), so that the batch-free truth of every source row is known.

Methods, through the public API on ``stack_domains`` data: the raw source,
``MeanStdAdjuster`` and ``LatentGPA`` (library defaults, ``n_steps=300``, ``random_state=0``),
with ER labels and label-free where the pair has labels.  Scores, for the moved source rows
against the target study:

* W2/D: exact 2-Wasserstein distance (``sklearn_gpa.metrics.sinkhorn_w2``), relative to the
  raw source's (D);
* energy/D: the (squared) energy distance (``sklearn_gpa.metrics.energy_distance``), relative
  to the raw source's;
* ER balanced accuracy: a logistic regression trained on the target study predicts ER on the
  moved source rows (pairs with ER labels);
* truth RMSE / raw RMSE: root mean squared distance of the moved rows to their batch-free
  truth, relative to the raw rows' (split pairs; below 1 = the batch effect was partly
  removed);
* seconds: fit + transform wall time (noisy on a shared machine; compare within a run).

Tables: (1) in-sample, every source row; (2) held-out: fit on 70 % of the source rows and all
of the target, transform the other 30 % (two stratified splits, seeds 0 and 1, averaged; D is
that of the held-out rows); (3) the ``n_steps`` sweep on the DLBCL event split (label-free):
more steps bring the moved rows closer to the target sample but move them away from their
batch-free truth.

Run: ``python benchmarks/bench_study_pairs.py [--quick]`` (``--quick``: three pairs, 100 steps,
sweep to 300 steps).  Writes ``benchmarks/results/bench_study_pairs{_quick}.{json,md}``.
"""

from __future__ import annotations

import sys
import time
import warnings

import _common
import numpy as np
from _studies import er_labels, open_studies, real_pair
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_gpa import MeanStdAdjuster
from sklearn_gpa.metrics import energy_distance, sinkhorn_w2
from sklearn_gpa.utils import stack_domains

HELD_OUT_SEEDS = (0, 1)
HELD_OUT_SIZE = 0.3
BATCH_SEED = 0


# ------------------------------------------------------------------------------- data
def batch_effect(X, rng, scale_sd=0.3, shift_sd=1.0, noise=0.2):
    """Per-gene scale and shift (in units of the gene's sd) plus noise, about the gene mean."""
    sd = X.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    scale = rng.lognormal(0.0, scale_sd, X.shape[1])
    shift = rng.normal(0.0, shift_sd, X.shape[1]) * sd
    mean = X.mean(0)
    return (X - mean) * scale + mean + shift + noise * sd * rng.normal(size=X.shape)


def split_pair(studies, study, source_mask, er=False):
    """One study split in two; the source half gets a simulated batch effect."""
    frame = studies(study)
    prefix = "num_HS_" if study.startswith("gse") else "num_"
    genes = [c for c in frame.columns if c.startswith(prefix)]
    X = frame[genes].to_numpy(float)
    keep = np.isfinite(X).all(1)
    y = er_labels(study, frame) if er else None
    if er:
        keep &= y >= 0
    source = source_mask(frame) & keep
    target = ~source_mask(frame) & keep
    truth = X[source]
    Xs = batch_effect(truth, np.random.RandomState(BATCH_SEED))
    return {
        "Xs": Xs,
        "ys": y[source] if er else None,
        "Xt": X[target],
        "yt": y[target] if er else None,
        "truth": truth,
        "n_genes": len(genes),
    }


def _event(frame):
    return frame["event"].to_numpy() == 1


PAIRS = {
    "GSE3143 -> GSE4335": lambda s: real_pair(s, "gse3143", "gse4335"),
    "GSE4335 -> GSE3143": lambda s: real_pair(s, "gse4335", "gse3143"),
    "GSE1992 -> GSE3143": lambda s: real_pair(s, "gse1992", "gse3143"),
    "GSE4335 node split": lambda s: split_pair(
        s, "gse4335", lambda f: f["fac_node_status"].astype(str).to_numpy() == "0", er=True
    ),
    "DLBCL event split": lambda s: split_pair(s, "DLBCL", _event),
    "AML_Bull event split": lambda s: split_pair(s, "AML_Bull", _event),
    "chop event split": lambda s: split_pair(s, "chop", _event),
    "DLBCL random split (control)": lambda s: split_pair(
        s, "DLBCL", lambda f: np.random.RandomState(1).permutation(len(f)) < len(f) // 2
    ),
}
QUICK_PAIRS = ("GSE3143 -> GSE4335", "GSE4335 node split", "DLBCL event split")
SWEEP_PAIR = "DLBCL event split"


# ---------------------------------------------------------------------------- methods
def fit_transform(method, Xs, ys, Xt, yt, Xs_new, ys_new, labels, n_steps):
    """Fit on source + target (``stack_domains``), transform ``Xs_new``; time both."""
    X, y, sample_domain = stack_domains(Xs, Xt, ys if labels else None, yt if labels else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        if method == "MeanStdAdjuster":
            model = MeanStdAdjuster().fit(X, y, sample_domain=sample_domain)
        else:
            model = _common.latent_gpa(n_steps=n_steps, random_state=0)
            model.fit(X, y, sample_domain=sample_domain)
        moved = model.transform(Xs_new, ys_new if labels else None)
        seconds = time.perf_counter() - start
    info = {"seconds": seconds}
    messages = sorted({f"{w.category.__name__}: {w.message}"[:200] for w in caught})
    if messages:
        info["warnings"] = messages
    if method == "LatentGPA":
        info["n_components"] = int(model.n_components_)
        info["out_of_sample"] = list(model.transporter_.out_of_sample_)
    return moved, info


def variants(pair):
    """(name, method, labels): raw, then each method with ER labels where there are any."""
    out = [("raw source", None, False)]
    for labels in (True, False) if pair["ys"] is not None else (False,):
        suffix = ", ER labels" if labels else ", label-free"
        out += [(m + suffix, m, labels) for m in ("MeanStdAdjuster", "LatentGPA")]
    return out


# ---------------------------------------------------------------------------- scoring
def distances(moved, Xt):
    return sinkhorn_w2(moved, Xt), energy_distance(moved, Xt)


def score(moved, raw, truth, ys, Xt, base, classifier):
    w2, energy = distances(moved, Xt)
    row = {"w2_over_D": w2 / base[0], "energy_over_D": energy / base[1]}
    if classifier is not None:
        row["er_balanced_accuracy"] = balanced_accuracy_score(ys, classifier.predict(moved))
    if truth is not None:
        row["truth_rmse_over_raw"] = float(
            np.sqrt(np.mean((moved - truth) ** 2) / np.mean((raw - truth) ** 2))
        )
    return row


def target_classifier(pair):
    if pair["ys"] is None:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    return model.fit(pair["Xt"], pair["yt"])


def in_sample(name, pair, classifier, n_steps):
    Xs, ys, Xt, truth = pair["Xs"], pair["ys"], pair["Xt"], pair["truth"]
    base = distances(Xs, Xt)
    rows = []
    for method_name, method, labels in variants(pair):
        if method is None:
            moved, info = Xs, {"seconds": None}
        else:
            moved, info = fit_transform(method, Xs, ys, Xt, pair["yt"], Xs, ys, labels, n_steps)
        row = {"pair": name, "method": method_name}
        row.update(score(moved, Xs, truth, ys, Xt, base, classifier))
        row.update(info)
        rows.append(row)
        print(_common.format_row(row, MAIN_COLUMNS), flush=True)
    return rows, base


def _take(values, rows):
    return None if values is None else values[rows]


def held_out(name, pair, classifier, n_steps):
    """Fit on 70 % of the source rows, score the other 30 %; mean over the splits."""
    Xs, ys, Xt, yt, truth = pair["Xs"], pair["ys"], pair["Xt"], pair["yt"], pair["truth"]
    collected = {}
    for seed in HELD_OUT_SEEDS:
        train, test = train_test_split(
            np.arange(len(Xs)), test_size=HELD_OUT_SIZE, random_state=seed, stratify=ys
        )
        base = distances(Xs[test], Xt)
        for method_name, method, labels in variants(pair):
            if method is None:
                moved, info = Xs[test], {"seconds": None}
            else:
                moved, info = fit_transform(
                    method,
                    Xs[train],
                    _take(ys, train),
                    Xt,
                    yt,
                    Xs[test],
                    _take(ys, test),
                    labels,
                    n_steps,
                )
            row = score(moved, Xs[test], _take(truth, test), _take(ys, test), Xt, base, classifier)
            row.update(info)
            collected.setdefault(method_name, []).append(row)
    rows = []
    for method_name, runs in collected.items():
        row = {"pair": name, "method": method_name, "held_out_rows": int(len(test))}
        for key, value in runs[0].items():
            if isinstance(value, float):
                row[key] = float(np.mean([r[key] for r in runs]))
            elif value is None:
                row[key] = None
            else:
                row[key] = [r[key] for r in runs]
        rows.append(row)
        print(_common.format_row(row, MAIN_COLUMNS), flush=True)
    return rows


def step_sweep(pair, steps):
    Xs, Xt, truth = pair["Xs"], pair["Xt"], pair["truth"]
    base = distances(Xs, Xt)
    rows = []
    for method_name, method, n_steps in [
        ("raw source", None, None),
        ("MeanStdAdjuster", "MeanStdAdjuster", None),
    ] + [(f"LatentGPA, n_steps={n}", "LatentGPA", n) for n in steps]:
        if method is None:
            moved, info = Xs, {"seconds": None}
        else:
            moved, info = fit_transform(method, Xs, None, Xt, None, Xs, None, False, n_steps)
        row = {"method": method_name, "n_steps": n_steps}
        row.update(score(moved, Xs, truth, None, Xt, base, None))
        row.update(info)
        rows.append(row)
        print(_common.format_row(row, SWEEP_COLUMNS), flush=True)
    return rows


# -------------------------------------------------------------------------- reporting
MAIN_COLUMNS = (
    ("pair", "pair", None),
    ("method", "method", None),
    ("W2/D", "w2_over_D", "{:.3f}"),
    ("energy/D", "energy_over_D", "{:.3f}"),
    ("ER balanced accuracy", "er_balanced_accuracy", "{:.3f}"),
    ("truth RMSE / raw RMSE", "truth_rmse_over_raw", "{:.3f}"),
    ("seconds", "seconds", "{:.1f}"),
)
SWEEP_COLUMNS = tuple(c for c in MAIN_COLUMNS if c[0] not in ("pair", "ER balanced accuracy"))
PAIR_COLUMNS = (
    ("pair", "pair", None),
    ("kind", "kind", None),
    ("source rows", "source_rows", "{}"),
    ("target rows", "target_rows", "{}"),
    ("genes", "genes", "{}"),
    ("ER labels", "er", None),
    ("D: W2", "D_w2", "{:.1f}"),
    ("D: energy", "D_energy", "{:.1f}"),
)


def main(argv=None):
    parser = _common.parser(__doc__, quick="three pairs, 100 steps, sweep 1/100/300 steps")
    args = parser.parse_args(argv)
    studies = open_studies("bench_study_pairs")
    if studies is None:
        return 0
    run = _common.run_record()
    info = run["machine"]
    n_steps = 100 if args.quick else 300
    sweep = (1, 100, 300) if args.quick else (1, 100, 300, 1000)
    names = QUICK_PAIRS if args.quick else tuple(PAIRS)
    start = time.perf_counter()
    pairs_rows, rows_in, rows_out = [], [], []
    sweep_rows = None
    for name in names:
        pair = PAIRS[name](studies)
        classifier = target_classifier(pair)
        print(f"\n== {name}: source {pair['Xs'].shape}, target {pair['Xt'].shape}", flush=True)
        print("in-sample:\n" + _common.grouped_table([], MAIN_COLUMNS), flush=True)
        rows, base = in_sample(name, pair, classifier, n_steps)
        rows_in += rows
        pairs_rows.append(
            {
                "pair": name,
                "kind": "real" if pair["truth"] is None else "split, simulated batch effect",
                "source_rows": len(pair["Xs"]),
                "target_rows": len(pair["Xt"]),
                "genes": pair["n_genes"],
                "er": "yes" if pair["ys"] is not None else "no",
                "D_w2": base[0],
                "D_energy": base[1],
            }
        )
        print("held-out 30 %:\n" + _common.grouped_table([], MAIN_COLUMNS), flush=True)
        rows_out += held_out(name, pair, classifier, n_steps)
        if name == SWEEP_PAIR:
            print(
                f"\nn_steps sweep on {name}, label-free:\n"
                + _common.grouped_table([], SWEEP_COLUMNS)
            )
            sweep_rows = step_sweep(pair, sweep)
    total = time.perf_counter() - start

    stem = _common.result_stem("bench_study_pairs", args.quick)
    command = run["command"]
    result = {
        **run,
        "n_steps": n_steps,
        "held_out": {"size": HELD_OUT_SIZE, "seeds": list(HELD_OUT_SEEDS)},
        "pairs": pairs_rows,
        "in_sample": rows_in,
        "held_out_rows": rows_out,
        "step_sweep": {"pair": SWEEP_PAIR, "labels": False, "rows": sweep_rows},
        "seconds": total,
    }
    load = ", ".join(f"{x:.2f}" for x in info["load_average"])
    text = [
        f"`{command}` ({result['date']}, {info['cpu']}, {info['cpus']} CPUs, "
        f"torch {info['torch']}, load average at start {load}), total {total:.0f} s. "
        f"LatentGPA: library defaults, n_steps={n_steps}, random_state=0. W2/D and energy/D: "
        "distance of the moved source rows to the target study over the raw source's; ER "
        "balanced accuracy of a classifier trained on the target study; truth RMSE / raw RMSE: "
        "distance to the batch-free rows (split pairs) over the raw rows'; seconds: fit + "
        "transform.",
        "",
        "Pairs (D: the raw source's distances to the target, in-sample):",
        "",
        _common.grouped_table(pairs_rows, PAIR_COLUMNS, group="pair"),
        "",
        "In-sample (every source row):",
        "",
        _common.grouped_table(rows_in, MAIN_COLUMNS, group="pair"),
        "",
        f"Held-out source rows: fit on {100 - 100 * HELD_OUT_SIZE:.0f} % of the source and all "
        f"of the target, score the other {100 * HELD_OUT_SIZE:.0f} % (D of those rows); mean "
        f"of {len(HELD_OUT_SEEDS)} stratified splits:",
        "",
        _common.grouped_table(rows_out, MAIN_COLUMNS, group="pair"),
    ]
    if sweep_rows is not None:
        text += [
            "",
            f"n_steps sweep on the {SWEEP_PAIR}, label-free, in-sample (LatentGPA defaults "
            "otherwise):",
            "",
            _common.grouped_table(sweep_rows, SWEEP_COLUMNS, group=None),
        ]
    _common.write_results(stem, result, "\n".join(text), machine=False)
    print(f"\ntotal {total:.0f} s; wrote {_common.RESULTS}/{stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
