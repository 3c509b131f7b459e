"""Why label-free integration of GSE1992 -> GSE4335 loses the ER signal.

Source GSE1992 (122 patients, 41 % ER-) is integrated onto target GSE4335 (113 patients, 27 %
ER-), 11,809 genes (``load_breast_cancer_studies``, needs ``survset``), with no ER label given
to the transport.  ER is then predicted on the moved source rows by a logistic regression
trained on the target study (``Scorer`` of ``bench_gene_integration``).  Four measurements:

1. Label-free methods, in-sample (every source row, fitted on all source and target rows):
   raw source, ``MeanStdAdjuster``, POT's Sinkhorn map, ``LatentGPA`` with the library's
   defaults and with the variants that tell most (``n_steps=100``, ``L=1``, both,
   ``prealign=None``, ``residual="drop"``, ``encoder=default_encoder(0.5)``), each
   ``LatentGPA`` row the mean over ``random_state`` 0-4; the labelled defaults as reference.
   Columns: ER balanced accuracy (min-max over seeds), recall of each ER class, share of rows
   predicted ER-, gene-space W2 and energy distance per ER class relative to the raw source's.
2. Class balance: a source subsample with the target's ER- share (all ER+ rows and a random
   draw of the ER- rows, seed 0; the labels are used only to draw it), raw vs label-free
   mean/std, Sinkhorn and LatentGPA.  If the label shift were the cause, balancing the classes
   would remove the loss.  The subsample also has fewer rows (99 of 122) and is a single
   draw: it tells whether balance removes the loss, not by exactly how much.
3. Where ER lies in each study: the share of the standardised variance explained by ER
   (between-class over total sum of squares after standardising each study's genes), the ER
   AUC of each study's own first 5 principal components; then, in the shared latent space of
   the label-free ``LatentGPA`` fits (codes of ``encoder_``, source rows pre-aligned), the
   cosine between the two studies' ER mean-difference vectors, the share of the flow's
   squared displacement that lies along the target's ER axis (against 1/d' for a direction
   taken at random), and the cosine between the moved source's ER contrast and the target's.
4. The exact label-free optimal coupling (POT ``ot.emd``, uniform weights, squared Euclidean
   cost) between source and target, raw, pre-aligned (label-free mean/std) in gene space and
   in the latent codes: the mass it puts on same-ER pairs, against a random pairing and the
   best any coupling can do, 1 - |difference of the ER- shares|.

No thread count is pinned: the estimators run numpy's BLAS on one thread for data of this
size whatever the load, and torch on one thread for networks this small, so a seed gives the
same bits on an idle or a busy machine (checked: ``threadpool_limits(1)`` and
``torch.set_num_threads(1)`` around a fit change nothing).  A long label-free flow is chaotic
all the same (a 1-ulp change moves one seed's ER accuracy by up to 0.08): read the seed means.

Run: ``python benchmarks/bench_label_free.py [--quick]`` (``--quick``: random_state 0-1).
Writes ``benchmarks/results/bench_label_free{_quick}.{json,md}``.
"""

from __future__ import annotations

import sys
import time

import _common
import numpy as np
import ot
from bench_gene_integration import Scorer, latent_method, load_studies, meanstd, sinkhorn
from sklearn.decomposition import PCA
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from sklearn_gpa import MeanStdAdjuster
from sklearn_gpa.latent import default_encoder
from sklearn_gpa.utils import stack_domains

SUBSAMPLE_SEED = 0
N_PCS = 5

# (name, flat LatentGPA settings for _common.latent_gpa, ER labels given to fit and transform)
GPA_ROWS = [
    ("LatentGPA label-free, defaults", {}, False),
    ("  n_steps=100", {"n_steps": 100}, False),
    ("  L=1", {"L": 1.0}, False),
    ("  L=1, n_steps=100", {"L": 1.0, "n_steps": 100}, False),
    ("  prealign=None", {"prealign": None}, False),
    ("  residual='drop'", {"residual": "drop"}, False),
    ("  encoder=default_encoder(0.5)", {"encoder": default_encoder(0.5)}, False),
    ("LatentGPA with ER labels, defaults (reference)", {}, True),
]


# ------------------------------------------------------------------ 1. label-free methods
def predictions(scorer, moved, ys):
    """Balanced accuracy, per-class recall and predicted ER- share of the target classifier."""
    pred = scorer.classifier.predict(moved)
    return {
        "balanced_accuracy": balanced_accuracy_score(ys, pred),
        "recall_er0": float(np.mean(pred[ys == 0] == 0)),
        "recall_er1": float(np.mean(pred[ys == 1] == 1)),
        "predicted_er0_share": float(np.mean(pred == 0)),
    }


def summarise(name, rows, seconds):
    """Mean of each score over seeds, with the accuracy of every seed; seconds per fit."""
    out = {"method": name, "seconds": seconds / len(rows)}
    for key, value in rows[0].items():
        if isinstance(value, float) and key != "seconds":
            out[key] = float(np.mean([r[key] for r in rows]))
    out["accuracy_per_seed"] = [r["balanced_accuracy"] for r in rows]
    return out


def in_sample(scorer, seeds):
    """Table 1; returns its rows and the fitted label-free default models (one per seed)."""
    Xs, ys, Xt, yt = scorer.Xs, scorer.ys, scorer.Xt, scorer.yt
    base = scorer.distances(Xs, ys)
    rows, models = [], []

    def add(name, runs, seconds):
        rows.append(summarise(name, runs, seconds))
        print(format_method_row(rows[-1]), flush=True)

    def scored(name, moved):
        return {**scorer.row(name, moved, ys, base), **predictions(scorer, moved, ys)}

    add("raw source", [scored("raw source", Xs)], 0.0)
    for name, method in [("mean/std label-free", meanstd), ("Sinkhorn label-free", sinkhorn)]:
        start = time.perf_counter()
        moved, _ = method(Xs, ys, Xt, yt, Xs, ys, labels=False)
        add(name, [scored(name, moved)], time.perf_counter() - start)
    for name, params, labels in GPA_ROWS:
        runs, seconds = [], 0.0
        for seed in seeds:
            start = time.perf_counter()
            moved, model = latent_method(**params, random_state=seed)(
                Xs, ys, Xt, yt, Xs, ys, labels=labels
            )
            seconds += time.perf_counter() - start
            runs.append(scored(name, moved))
            if not params and not labels:
                models.append(model)
        add(f"{name}, random_state {seeds[0]}-{seeds[-1]}", runs, seconds)
    return rows, models


# ---------------------------------------------------------------------- 2. class balance
def balanced_subsample(ys, yt, seed=SUBSAMPLE_SEED):
    """All ER+ source rows and a random draw of ER- rows giving the target's ER- share."""
    neg, pos = np.flatnonzero(ys == 0), np.flatnonzero(ys == 1)
    n_neg = int(round(len(pos) * np.mean(yt == 0) / np.mean(yt == 1)))
    rng = np.random.RandomState(seed)
    return np.sort(np.r_[rng.choice(neg, n_neg, replace=False), pos])


def class_balance(scorer, seeds, full_rows):
    Xs, ys, Xt, yt = scorer.Xs, scorer.ys, scorer.Xt, scorer.yt
    keep = balanced_subsample(ys, yt)
    S, ysub = Xs[keep], ys[keep]
    full = {r["method"].split(",")[0]: r for r in full_rows}
    info = {
        "rows": len(keep),
        "er0_rows": int(np.sum(ysub == 0)),
        "er0_share": float(np.mean(ysub == 0)),
        "target_er0_share": float(np.mean(yt == 0)),
        "seed": SUBSAMPLE_SEED,
    }
    print(
        f"\nClass balance: source subsample of {info['rows']} rows ({info['er0_rows']} ER-, "
        f"share {info['er0_share']:.3f}; target {info['target_er0_share']:.3f}), label-free:\n"
        + BALANCE_HEADER
    )
    methods = [
        ("raw source", lambda seed: S),
        ("mean/std label-free", lambda seed: meanstd(S, ysub, Xt, yt, S, ysub, labels=False)[0]),
        ("Sinkhorn label-free", lambda seed: sinkhorn(S, ysub, Xt, yt, S, ysub, labels=False)[0]),
        (
            "LatentGPA label-free",
            lambda seed: latent_method(random_state=seed)(S, ysub, Xt, yt, S, ysub, labels=False)[
                0
            ],
        ),
    ]
    rows = []
    for name, move in methods:
        runs = [predictions(scorer, move(seed), ysub) for seed in (seeds if "GPA" in name else [0])]
        row = summarise(name, runs, 0.0)
        del row["seconds"]
        reference = full["LatentGPA label-free" if "GPA" in name else name]
        row["full_source_balanced_accuracy"] = reference["balanced_accuracy"]
        row["full_source_accuracy_per_seed"] = reference["accuracy_per_seed"]
        rows.append(row)
        print(format_balance_row(row), flush=True)
    return {"subsample": info, "rows": rows}


# ------------------------------------------------------------------- 3. where ER lies
def er_gap(Z, y):
    return Z[y == 1].mean(0) - Z[y == 0].mean(0)


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def study_profile(name, X, y):
    """ER's share of the standardised variance and the ER AUC of the study's own PCs."""
    Z = StandardScaler().fit_transform(X)
    between = sum(np.mean(y == c) * np.sum(Z[y == c].mean(0) ** 2) for c in (0, 1))
    pca = PCA(N_PCS, svd_solver="full").fit(Z)
    P = pca.transform(Z)
    auc = [roc_auc_score(y, P[:, j]) for j in range(N_PCS)]
    return {
        "study": name,
        "patients": len(X),
        "er0_share": float(np.mean(y == 0)),
        "er_variance_share": float(between / np.sum(Z.var(0))),
        "pc_er_auc": [float(max(a, 1 - a)) for a in auc],
        "pc_variance_ratio": [float(v) for v in pca.explained_variance_ratio_],
    }


def latent_geometry(model, Xs, ys, Xt, yt):
    """ER axes of the two studies in the codes of a label-free fit, and the flow along them."""
    scale = model.latent_scale
    aligned = model.adjuster_.transform(Xs) if model.adjuster_ is not None else Xs
    Zs = model.encoder_.transform(aligned) * scale
    Zt = model.encoder_.transform(Xt) * scale
    Zm = model.transporter_.particles_  # the source codes at the end of the flow
    target = er_gap(Zt, yt)
    axis = target / np.linalg.norm(target)
    move = Zm - Zs
    return {
        "random_state": model.transporter.random_state,
        "n_components": int(model.n_components_),
        "cos_before": cosine(er_gap(Zs, ys), target),
        "cos_after": cosine(er_gap(Zm, ys), target),
        "displacement_share_on_er_axis": float(np.sum((move @ axis) ** 2) / np.sum(move**2)),
        "random_direction_share": 1.0 / model.n_components_,
        "source_gap_on_axis_before": float(er_gap(Zs, ys) @ axis),
        "source_gap_on_axis_after": float(er_gap(Zm, ys) @ axis),
        "target_gap": float(np.linalg.norm(target)),
    }


def where_er_lies(scorer, models):
    Xs, ys, Xt, yt = scorer.Xs, scorer.ys, scorer.Xt, scorer.yt
    studies = [study_profile("GSE1992 (source)", Xs, ys), study_profile("GSE4335 (target)", Xt, yt)]
    print("\nWhere ER lies in each study (genes standardised within the study):\n" + STUDY_HEADER)
    for row in studies:
        print(format_study_row(row), flush=True)
    X, _, sd = stack_domains(Xs, Xt)
    aligned = MeanStdAdjuster().fit_transform(X, sample_domain=sd)[: len(Xs)]
    genes = {
        "cos_raw": cosine(er_gap(Xs, ys), er_gap(Xt, yt)),
        "cos_after_meanstd": cosine(er_gap(aligned, ys), er_gap(Xt, yt)),
    }
    print(
        "\nCosine of the source's and target's ER mean-difference vectors in gene space: "
        f"raw {genes['cos_raw']:.3f}, after label-free mean/std {genes['cos_after_meanstd']:.3f}"
    )
    print(
        "\nLabel-free LatentGPA (defaults): ER axes in the shared latent space (codes of "
        "encoder_, source pre-aligned) and the flow along the target's ER axis:\n" + FLOW_HEADER
    )
    flows = [latent_geometry(m, Xs, ys, Xt, yt) for m in models]
    mean = {k: float(np.mean([f[k] for f in flows])) for k in flows[0]}
    mean["random_state"] = f"mean of {len(flows)}"
    for row in [*flows, mean]:
        print(format_flow_row(row), flush=True)
    return {"studies": studies, "gene_space": genes, "flows": flows, "flow_mean": mean}


# --------------------------------------------------------------- 4. exact OT coupling
def same_label_mass(A, B, ys, yt):
    """Exact OT plan between rows A (labels ys) and B (labels yt): mass on same-ER pairs,
    and the share of each source class's mass sent to its own target class."""
    plan = ot.emd(ot.unif(len(A)), ot.unif(len(B)), ot.dist(A, B), numItermax=10**7)
    same = ys[:, None] == yt[None, :]
    return {
        "same_er_mass": float(plan[same].sum()),
        "er0_kept": float(plan[ys == 0][:, yt == 0].sum() / plan[ys == 0].sum()),
        "er1_kept": float(plan[ys == 1][:, yt == 1].sum() / plan[ys == 1].sum()),
    }


def coupling(scorer, model):
    Xs, ys, Xt, yt = scorer.Xs, scorer.ys, scorer.Xt, scorer.yt
    aligned = model.adjuster_.transform(Xs)
    codes = model.encoder_.transform(aligned), model.encoder_.transform(Xt)
    ps, pt = np.mean(ys == 0), np.mean(yt == 0)
    rows = [
        {"coupling": "exact OT, raw genes", **same_label_mass(Xs, Xt, ys, yt)},
        {
            "coupling": "exact OT, genes pre-aligned (label-free mean/std)",
            **same_label_mass(aligned, Xt, ys, yt),
        },
        {
            "coupling": f"exact OT, latent codes (pre-aligned, d'={model.n_components_})",
            **same_label_mass(*codes, ys, yt),
        },
        {
            "coupling": "random pairing (independent coupling)",
            "same_er_mass": float(ps * pt + (1 - ps) * (1 - pt)),
            "er0_kept": float(pt),
            "er1_kept": float(1 - pt),
        },
        {
            "coupling": "best possible, 1 - |ER- share difference|",
            "same_er_mass": float(1 - abs(ps - pt)),
            "er0_kept": float(min(1.0, pt / ps)),
            "er1_kept": float(min(1.0, (1 - pt) / (1 - ps))),
        },
    ]
    print("\nExact label-free optimal coupling (uniform weights, squared Euclidean):\n" + OT_HEADER)
    for row in rows:
        print(format_ot_row(row), flush=True)
    return rows


# ------------------------------------------------------------------------- reporting
METHOD_HEADER = (
    "| method | ER balanced accuracy, mean (min-max) | ER- recall | ER+ recall "
    "| predicted ER- share | gene W2/D ER- | gene W2/D ER+ | energy/D ER- | energy/D ER+ "
    "| s/fit (fit + transform) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)
BALANCE_HEADER = (
    "| method | full source: ER balanced accuracy | balanced subsample: ER balanced accuracy, "
    "mean (min-max) | ER- recall | ER+ recall | predicted ER- share |\n"
    "|---|---:|---|---:|---:|---:|"
)
STUDY_HEADER = (
    f"| study | patients | ER- share | ER share of standardised variance "
    f"| ER AUC of own PC1-{N_PCS} | variance ratio of PC1-{N_PCS} |\n|---|---:|---:|---:|---|---|"
)
FLOW_HEADER = (
    "| random_state | d' | cos(source, target ER vector) before flow | after flow "
    "| share of squared displacement on target ER axis | 1/d' | source ER gap on the axis, "
    "before | after | target ER gap |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)
OT_HEADER = (
    "| coupling | mass on same-ER pairs | ER- source mass sent to ER- target "
    "| ER+ source mass sent to ER+ target |\n|---|---:|---:|---:|"
)


def spread(row):
    values = row["accuracy_per_seed"]
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def format_method_row(r):
    cells = [r["method"], spread(r)]
    for key in ("recall_er0", "recall_er1", "predicted_er0_share"):
        cells.append(f"{r[key]:.2f}")
    for key in ("gene_er0", "gene_er1", "energy_er0", "energy_er1"):
        cells.append(f"{r[key]:.3f}")
    cells.append(f"{r['seconds']:.1f}")
    return "| " + " | ".join(cells) + " |"


def format_balance_row(r):
    full = {"accuracy_per_seed": r["full_source_accuracy_per_seed"]}
    cells = [r["method"], spread(full), spread(r)]
    cells += [f"{r[k]:.2f}" for k in ("recall_er0", "recall_er1", "predicted_er0_share")]
    return "| " + " | ".join(cells) + " |"


def format_study_row(r):
    auc = " ".join(f"{a:.2f}" for a in r["pc_er_auc"])
    ratio = " ".join(f"{v:.3f}" for v in r["pc_variance_ratio"])
    return (
        f"| {r['study']} | {r['patients']} | {r['er0_share']:.3f} "
        f"| {100 * r['er_variance_share']:.1f} % | {auc} | {ratio} |"
    )


def format_flow_row(r):
    d = r["n_components"]
    d = f"{d:.0f}" if float(d).is_integer() else f"{d:.1f}"
    return (
        f"| {r['random_state']} | {d} | {r['cos_before']:.3f} | {r['cos_after']:.3f} "
        f"| {100 * r['displacement_share_on_er_axis']:.2f} % "
        f"| {100 * r['random_direction_share']:.2f} % "
        f"| {r['source_gap_on_axis_before']:.1f} | {r['source_gap_on_axis_after']:.1f} "
        f"| {r['target_gap']:.1f} |"
    )


def format_ot_row(r):
    return (
        f"| {r['coupling']} | {r['same_er_mass']:.3f} | {r['er0_kept']:.3f} | {r['er1_kept']:.3f} |"
    )


def main(argv=None):
    parser = _common.parser(__doc__, quick="random_state 0-1 instead of 0-4")
    args = parser.parse_args(argv)
    studies = load_studies("bench_label_free")
    if studies is None:
        return 0
    Xs, ys, Xt, yt, genes = studies
    run = _common.run_record()
    info = run["machine"]
    seeds = list(range(2 if args.quick else 5))
    print(
        f"source GSE1992 {Xs.shape} ({np.mean(ys == 0):.3f} ER-), target GSE4335 {Xt.shape} "
        f"({np.mean(yt == 0):.3f} ER-), {len(genes)} shared genes"
    )
    start = time.perf_counter()
    scorer = Scorer(Xs, ys, Xt, yt)
    print("\nLabel-free methods, in-sample, relative to the raw source (D):\n" + METHOD_HEADER)
    methods, models = in_sample(scorer, seeds)
    balance = class_balance(scorer, seeds, methods)
    where = where_er_lies(scorer, models)
    couplings = coupling(scorer, models[0])
    total = time.perf_counter() - start

    stem = _common.result_stem("bench_label_free", args.quick)
    command = run["command"]
    result = {
        **run,
        "source": list(Xs.shape),
        "target": list(Xt.shape),
        "random_states": seeds,
        "in_sample": methods,
        "class_balance": balance,
        "where_er_lies": where,
        "coupling": couplings,
        "seconds": total,
    }
    sub = balance["subsample"]
    genes_cos = where["gene_space"]
    load = ", ".join(f"{x:.2f}" for x in info["load_average"])
    text = [
        f"`{command}`: GSE1992 -> GSE4335, {len(genes)} genes, {result['date']}, "
        f"{info['cpu']}, {info['cpus']} CPUs, load average at start {load}, "
        f"total {total:.0f} s. No ER label is given to the transport; ER is predicted on the "
        "moved source rows by a classifier trained on the target study.",
        "",
        f"1. Label-free methods, in-sample; LatentGPA rows: mean over random_state "
        f"{seeds[0]}-{seeds[-1]}; W2/D and energy/D per ER class relative to the raw source's:",
        "",
        METHOD_HEADER,
        *[format_method_row(r) for r in methods],
        "",
        f"2. Class balance: source subsample of {sub['rows']} rows ({sub['er0_rows']} ER-, share "
        f"{sub['er0_share']:.3f}; target {sub['target_er0_share']:.3f}; seed {sub['seed']}), "
        "label-free:",
        "",
        BALANCE_HEADER,
        *[format_balance_row(r) for r in balance["rows"]],
        "",
        "3. Where ER lies in each study (genes standardised within the study):",
        "",
        STUDY_HEADER,
        *[format_study_row(r) for r in where["studies"]],
        "",
        "Cosine of the source's and target's ER mean-difference vectors in gene space: raw "
        f"{genes_cos['cos_raw']:.3f}, after label-free mean/std "
        f"{genes_cos['cos_after_meanstd']:.3f}.",
        "",
        "Label-free LatentGPA (defaults), shared latent space (codes of `encoder_`, source "
        "pre-aligned), and the flow along the target's ER axis:",
        "",
        FLOW_HEADER,
        *[format_flow_row(r) for r in [*where["flows"], where["flow_mean"]]],
        "",
        "4. Exact label-free optimal coupling (POT `ot.emd`, uniform weights, squared "
        "Euclidean cost):",
        "",
        OT_HEADER,
        *[format_ot_row(r) for r in couplings],
    ]
    _common.write_results(stem, result, "\n".join(text), machine=False)
    print(f"\ntotal {total:.0f} s; wrote {_common.RESULTS}/{stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
