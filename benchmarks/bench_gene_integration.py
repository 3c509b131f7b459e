"""Integration of two breast-cancer microarray studies (the papers' Table 3, on real data).

Source GSE1992 (UNC, 122 patients with ER status) is integrated onto target GSE4335
(Stanford, 113 patients), genes aligned by symbol (11,809 shared).  Both come from the
``survset`` package (``pip install survset``).  For each method and each ER class the table
gives the exact 2-Wasserstein distance to the target class, in gene space and in a common
latent space (standardised PCA-50 of both studies), relative to the distance before
integration (D), as in the papers' Table 3:

* (R)/(D): reconstruction floor of the PCA encoder of LatentGPA, W2(D(E(target)), target);
* (S)/(D): the papers' baseline F, per-class mean and std adjustment (MeanStdAdjuster);
* (G)/(D): LatentGPA: the library's defaults (300 steps), also over ``random_state`` 0-4;
  1000 steps; ``out_of_sample="nearest"``; ``residual="drop"``; and the papers' own
  configuration (PCA-50, 5000 steps);
* POT's SinkhornTransport (per class, out-of-sample) and ComBat (inmoose, reference batch =
  target, ER as covariate), where installed.

The squared MMD to the target class (unbiased, a Gaussian kernel with one median-heuristic
width per class shared by every method), relative to the raw source's, is given too, and so
is the energy distance: with
10-15 held-out rows of a class against 31-82 target rows in 11,809 dimensions, W2 rewards
pulling rows towards the class centre (sending every held-out row to its target class mean,
the reference row "target class mean", scores W2/D 0.67) while the energy distance
penalises the lost spread.

Then the downstream task the papers left open: a logistic regression trained on the target
study predicts ER on the source study before and after integration (balanced accuracy).
Everything is also measured on held-out source rows (5-fold: fit on 4/5 of the source and
all of the target, transform the fifth), with labels given to ``transform`` and without
(rows routed to a class flow by their nearest source rows), and label-free (no ER labels
used for the transport at all).

Run: ``python benchmarks/bench_gene_integration.py [--quick] [--held-out-only]
[--paper-steps 5000]``.
Writes ``benchmarks/results/bench_gene_integration.{json,md}``.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import _common
import numpy as np
import ot
from scipy.spatial.distance import pdist
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_gpa import GPATransporter, MeanStdAdjuster
from sklearn_gpa.datasets import load_breast_cancer_studies
from sklearn_gpa.metrics import energy_distance, mmd
from sklearn_gpa.utils import stack_domains


def papers_settings(n_steps=5000):
    """LatentGPA as the papers ran it: PCA-50, codes / 10, KL, L = 1, dt = 0.2, 5 critic steps
    (flat settings for ``_common.latent_gpa``)."""
    return dict(
        encoder=make_pipeline(StandardScaler(), PCA(50, random_state=0)),
        prealign=None,
        residual="drop",
        standardize=False,
        latent_scale=0.1,
        L=1.0,
        dt=0.2,
        n_steps=n_steps,
        n_critic=5,
    )


def load_studies(what):
    """GSE1992 -> GSE4335 as ``(Xs, ys, Xt, yt, genes)``, or None (with a note naming
    ``what`` is skipped) when ``survset`` is not installed."""
    try:
        return load_breast_cancer_studies("gse1992", "gse4335")
    except ImportError:
        print(f"survset is not installed (pip install survset): {what} skipped.")
        return None


def w2(a, b):
    """Exact 2-Wasserstein distance between two point clouds (uniform weights)."""
    cost = ot.dist(a, b)
    return float(np.sqrt(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), cost, numItermax=10**7)))


# ---------------------------------------------------------------------------- methods
def latent_method(**settings):
    """A method (same signature as :func:`meanstd`) fitting ``_common.latent_gpa(**settings)``
    (``random_state`` 0 unless given)."""
    settings = {"random_state": 0, **settings}

    def run(Xs, ys, Xt, yt, Xs_new, ys_new, labels=True, route=False):
        X, y, sd = stack_domains(Xs, Xt, ys if labels else None, yt if labels else None)
        model = _common.latent_gpa(**settings).fit(X, y, sample_domain=sd)
        given = ys_new if (labels and not route) else None
        return model.transform(Xs_new, given), model

    return run


def meanstd(Xs, ys, Xt, yt, Xs_new, ys_new, labels=True, route=False):
    X, y, sd = stack_domains(Xs, Xt, ys if labels else None, yt if labels else None)
    model = MeanStdAdjuster().fit(X, y, sample_domain=sd)
    return model.transform(Xs_new, ys_new if (labels and not route) else None), model


def class_mean(Xs, ys, Xt, yt, Xs_new, ys_new, labels=True, route=False):
    """Reference, not a method: every row sent to its target class mean (a W2 artefact)."""
    return np.array([Xt[yt == c].mean(0) for c in ys_new]), None


def sinkhorn(Xs, ys, Xt, yt, Xs_new, ys_new, labels=True, route=False):
    """POT's entropic OT map with out-of-sample extension, one per class when labelled."""
    out = np.empty_like(Xs_new)
    groups = [0, 1] if labels else [None]
    for c in groups:
        s = ys == c if labels else slice(None)
        t = yt == c if labels else slice(None)
        new = ys_new == c if labels else slice(None)
        scale = np.median(ot.dist(Xs[s], Xt[t]))
        model = ot.da.SinkhornTransport(reg_e=0.05, norm=None, max_iter=2000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(Xs=Xs[s] / np.sqrt(scale), Xt=Xt[t] / np.sqrt(scale))
            out[new] = model.transform(Xs=Xs_new[new] / np.sqrt(scale)) * np.sqrt(scale)
    return out, None


def combat(Xs, ys, Xt, yt):
    """ComBat on all rows (it has no out-of-sample map), target as the reference batch."""
    try:
        from inmoose.pycombat import pycombat_norm
    except ImportError:
        return None
    data = np.vstack([Xs, Xt]).T
    batch = [1] * len(Xs) + [2] * len(Xt)
    covariate = list(np.concatenate([ys, yt]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adjusted = pycombat_norm(data, batch, covar_mod=covariate, ref_batch=2)
    return np.asarray(adjusted).T[: len(Xs)]


# --------------------------------------------------------------------------- scoring
class Scorer:
    def __init__(self, Xs, ys, Xt, yt):
        self.Xs, self.ys, self.Xt, self.yt = Xs, ys, Xt, yt
        self.reference = make_pipeline(StandardScaler(), PCA(50, random_state=0))
        self.reference.fit(np.vstack([Xs, Xt]))
        self.classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
        self.classifier.fit(Xt, yt)
        self.base = {}
        # One Gaussian-kernel width per class for every MMD (the median heuristic on the raw
        # source and target rows of the class), so that methods are compared on one kernel.
        self.bandwidth = {
            c: float(np.median(pdist(np.vstack([Xs[ys == c], Xt[yt == c]])))) for c in (0, 1)
        }

    def distances(self, moved, ys, target=None):
        """Per ER class: gene-space W2, latent W2, gene-space energy distance and squared MMD
        to the target (``target`` = (rows, labels), the whole target study by default)."""
        Xt, yt = target if target is not None else (self.Xt, self.yt)
        out = {}
        for c in (0, 1):
            a, b = moved[ys == c], Xt[yt == c]
            out[c] = (
                w2(a, b),
                w2(self.reference.transform(a), self.reference.transform(b)),
                energy_distance(a, b),
                mmd(a, b, bandwidth=self.bandwidth[c]),
            )
        return out

    def row(self, name, moved, ys, base, seconds=None):
        dist = self.distances(moved, ys)
        row = {"method": name, "seconds": seconds}
        for c in (0, 1):
            row[f"gene_er{c}"] = dist[c][0] / base[c][0]
            row[f"latent_er{c}"] = dist[c][1] / base[c][1]
            row[f"energy_er{c}"] = dist[c][2] / base[c][2]
            row[f"mmd_er{c}"] = dist[c][3] / base[c][3]
        row["balanced_accuracy"] = balanced_accuracy_score(ys, self.classifier.predict(moved))
        return row


def seed_spread(scorer, base, name, params, labels=True, n_seeds=5):
    """``_common.latent_gpa(**params)`` at ``random_state`` 0..n_seeds-1: the mean of each
    score (the seconds are the total).  A long flow amplifies rounding (1 ulp in the spectral
    rescale moved the in-sample ER accuracy of seed 0 after 1000 steps from 1.000 to 0.950), so one
    seed is one draw."""
    rows, start = [], time.perf_counter()
    for seed in range(n_seeds):
        moved, _ = latent_method(**params, random_state=seed)(
            scorer.Xs, scorer.ys, scorer.Xt, scorer.yt, scorer.Xs, scorer.ys, labels=labels
        )
        rows.append(scorer.row(name, moved, scorer.ys, base))
    accuracy = [r["balanced_accuracy"] for r in rows]
    mean = {
        k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("method", "seconds")
    }
    spread = f"accuracy {min(accuracy):.3f}-{max(accuracy):.3f}"
    label = f"{name}, mean of random_state 0-{n_seeds - 1} ({spread})"
    return {"method": label, "seconds": time.perf_counter() - start, **mean}


def kinetic_windows(model, windows=((1, 100), (101, 300), (301, 600), (601, 1000))):
    """Mean, min and max kinetic energy per particle over windows of steps of a fitted flow
    (the trace is noisy step to step: a window mean shows where it is going)."""
    energy = np.asarray(model.history_["kinetic_energy"], dtype=float)
    out = []
    for first, last in windows:
        part = energy[first - 1 : min(last, len(energy))]
        if len(part):
            out.append(
                {
                    "steps": f"{first}-{first + len(part) - 1}",
                    "mean": float(part.mean()),
                    "min": float(part.min()),
                    "max": float(part.max()),
                }
            )
    return {"peak_step": int(energy.argmax()) + 1, "peak": float(energy.max()), "windows": out}


def in_sample(scorer, methods, paper, seeds=(), trace=None):
    """The in-sample table; with ``trace`` (a method's name), also that fit's kinetic energy
    (:func:`kinetic_windows`)."""
    Xs, ys, Xt, yt = scorer.Xs, scorer.ys, scorer.Xt, scorer.yt
    kinetic = None
    base = scorer.distances(Xs, ys)
    rows = [scorer.row("(D) raw source", Xs, ys, base)]
    rows[0].update({"gene_D_er0": base[0][0], "gene_D_er1": base[1][0]})
    default = _common.latent_gpa(random_state=0)
    X, y, sd = stack_domains(Xs, Xt, ys, yt)
    default.fit(X, y, sample_domain=sd)
    recon = default.encoder_.inverse_transform(default.encoder_.transform(Xt))
    floor = scorer.distances(recon, yt)
    rows.append(
        {
            "method": f"(R) PCA reconstruction of target (d'={default.n_components_})",
            **{f"gene_er{c}": floor[c][0] / base[c][0] for c in (0, 1)},
        }
    )
    for name, method, labels in methods + paper:
        start = time.perf_counter()
        moved, model = method(Xs, ys, Xt, yt, Xs, ys, labels=labels)
        rows.append(scorer.row(name, moved, ys, base, time.perf_counter() - start))
        print(_format_row(rows[-1]), flush=True)
        if name == trace:
            kinetic = {"method": name, **kinetic_windows(model)}
    for name, params, labels in seeds:
        rows.append(seed_spread(scorer, base, name, params, labels))
        print(_format_row(rows[-1]), flush=True)
    start = time.perf_counter()
    adjusted = combat(Xs, ys, Xt, yt)
    if adjusted is not None:
        seconds = time.perf_counter() - start
        rows.append(scorer.row("ComBat (ER covariate)", adjusted, ys, base, seconds))
        print(_format_row(rows[-1]), flush=True)
    return rows, kinetic


def _format_kinetic(kinetic):
    lines = [
        f"Kinetic energy per particle of {kinetic['method']}, random_state=0 (peak "
        f"{kinetic['peak']:.1f} at step {kinetic['peak_step']}):",
        "",
        "| steps | mean | min | max |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {w['steps']} | {w['mean']:.1f} | {w['min']:.1f} | {w['max']:.1f} |"
        for w in kinetic["windows"]
    ]
    return "\n".join(lines)


def held_out(scorer, methods, n_splits):
    """Fit on 4/5 of the source, evaluate on the held-out fifth.

    Returns the per-fold scores averaged over folds, and the scores of all source rows moved
    out of sample (each by the fit that did not see it), pooled: the in-sample comparison
    (every source row against the whole target) with no row transported by a fit it was in.
    """
    Xs, ys, Xt, yt = scorer.Xs, scorer.ys, scorer.Xt, scorer.yt
    folds = StratifiedKFold(n_splits, shuffle=True, random_state=0).split(Xs, ys)
    collected, pooled = {}, {}
    rng = np.random.RandomState(0)
    for train, test in folds:
        base = scorer.distances(Xs[test], ys[test])
        collected.setdefault(FRESH, []).append(_fresh_target_row(scorer, ys[test], base, rng))
        variants = [("(D) raw held-out source", None, True, False)]
        variants += [(n, m, lab, False) for n, m, lab in methods]
        variants += [
            (n + ", routed", m, lab, True)
            for n, m, lab in methods
            if lab and m not in (sinkhorn, class_mean)
        ]
        for name, method, labels, route in variants:
            start = time.perf_counter()
            if method is None:
                moved = Xs[test]
            else:
                moved, _ = method(
                    Xs[train], ys[train], Xt, yt, Xs[test], ys[test], labels=labels, route=route
                )
            row = scorer.row(name, moved, ys[test], base, time.perf_counter() - start)
            collected.setdefault(name, []).append(row)
            pooled.setdefault(name, np.empty_like(Xs))[test] = moved
    rows = []
    for name, fold_rows in collected.items():
        merged = {"method": name}
        for key in fold_rows[0]:
            if key != "method" and fold_rows[0][key] is not None:
                merged[key] = float(np.mean([r[key] for r in fold_rows]))
        rows.append(merged)
        print(_format_row(merged), flush=True)
    base = scorer.distances(Xs, ys)
    print("\nHeld-out source rows, pooled over the folds, relative to (D):\n" + HEADER)
    pooled_rows = []
    for name, moved in pooled.items():
        if name == FRESH:
            continue
        pooled_rows.append(scorer.row(name, moved, ys, base))
        print(_format_row(pooled_rows[-1]), flush=True)
    return rows, pooled_rows


FRESH = "fresh target patients (reference: what a perfect integration scores)"


def _fresh_target_row(scorer, ys_test, base, rng):
    """Real target rows, as many per class as held out, against the rest of the target.

    A perfect integration turns held-out source rows into new target-study patients; at
    these sample sizes such patients are no closer to the target rows than this.
    """
    rows = {}
    for c in (0, 1):
        pool = rng.permutation(np.flatnonzero(scorer.yt == c))
        rows[c] = (pool[: int(np.sum(ys_test == c))], pool[int(np.sum(ys_test == c)) :])
    fresh = np.concatenate([rows[c][0] for c in (0, 1)])
    rest = np.concatenate([rows[c][1] for c in (0, 1)])
    dist = scorer.distances(scorer.Xt[fresh], scorer.yt[fresh], (scorer.Xt[rest], scorer.yt[rest]))
    row = {"method": FRESH, "seconds": None, "balanced_accuracy": None}
    for c in (0, 1):
        row[f"gene_er{c}"] = dist[c][0] / base[c][0]
        row[f"latent_er{c}"] = dist[c][1] / base[c][1]
        row[f"energy_er{c}"] = dist[c][2] / base[c][2]
        row[f"mmd_er{c}"] = dist[c][3] / base[c][3]
    return row


def _format_row(row):
    cells = [row["method"]]
    keys = ("gene_er0", "gene_er1", "latent_er0", "latent_er1", "energy_er0", "energy_er1")
    keys += ("mmd_er0", "mmd_er1")
    for key in (*keys, "balanced_accuracy"):
        value = row.get(key)
        cells.append("-" if value is None else f"{value:.3f}")
    cells.append("-" if row.get("seconds") is None else f"{row['seconds']:.1f}")
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| method | gene W2/D ER- | gene W2/D ER+ | latent W2/D ER- | latent W2/D ER+ "
    "| energy/D ER- | energy/D ER+ | MMD²/D ER- | MMD²/D ER+ | ER balanced accuracy | seconds |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def main(argv=None):
    parser = _common.parser(__doc__, quick="fewer steps, 3 folds")
    parser.add_argument("--paper-steps", type=int, default=5000)
    parser.add_argument("--held-out-only", action="store_true", help="skip the in-sample table")
    args = parser.parse_args(argv)
    studies = load_studies("bench_gene_integration")
    if studies is None:
        return 0
    Xs, ys, Xt, yt, genes = studies
    print(f"source GSE1992 {Xs.shape}, target GSE4335 {Xt.shape}, {len(genes)} shared genes")
    scorer = Scorer(Xs, ys, Xt, yt)
    # The defaults are the library's (300 steps); --quick runs every flow for 100 steps.
    steps = {"n_steps": 100} if args.quick else {}
    label = f"{steps['n_steps']} steps" if steps else f"{GPATransporter().n_steps} steps"
    long = {"n_steps": 300} if args.quick else {"n_steps": 1000}
    long_label = f"{long['n_steps']} steps"
    methods = [
        ("(S) mean/std per class (papers' F)", meanstd, True),
        ("mean/std, label-free", meanstd, False),
        (f"(G) LatentGPA defaults ({label})", latent_method(**steps), True),
        (f"LatentGPA label-free ({label})", latent_method(**steps), False),
        (f"(G) LatentGPA, {long_label}", latent_method(**long), True),
        (
            f"LatentGPA, out_of_sample='nearest' ({label})",
            latent_method(**steps, out_of_sample="nearest"),
            True,
        ),
        (
            f"(G) LatentGPA, residual='drop', out_of_sample='barycentric' ({label})",
            latent_method(**steps, residual="drop", out_of_sample="barycentric"),
            True,
        ),
        ("Sinkhorn OT per class (POT)", sinkhorn, True),
        ("Sinkhorn OT, label-free (POT)", sinkhorn, False),
    ]
    paper_steps = 200 if args.quick else args.paper_steps
    paper = [
        (
            f"(G) LatentGPA as the papers: PCA-50, codes / 10, L=1, dt=0.2, {paper_steps} steps",
            latent_method(**papers_settings(paper_steps)),
            True,
        )
    ]
    start = time.perf_counter()
    rows_in, kinetic = [], None
    if not args.held_out_only:
        print("\nIn-sample (all source rows), relative to (D):\n" + HEADER)
        seeds = [
            (f"(G) LatentGPA defaults ({label})", steps, True),
            (f"(G) LatentGPA, {long_label}", long, True),
            (f"LatentGPA label-free ({label})", steps, False),
        ]
        rows_in, kinetic = in_sample(
            scorer, methods, paper, seeds, trace=f"(G) LatentGPA, {long_label}"
        )
        print("\n" + _format_kinetic(kinetic))
    print("\nHeld-out source rows (5-fold), relative to (D) of the held-out rows:\n" + HEADER)
    reference = [("target class mean (reference: W2 rewards collapse)", class_mean, True)]
    rows_out, rows_pooled = held_out(scorer, methods + reference, 3 if args.quick else 5)
    total = time.perf_counter() - start
    result = {
        "source": list(Xs.shape),
        "target": list(Xt.shape),
        "in_sample": rows_in,
        "held_out": rows_out,
        "held_out_pooled": rows_pooled,
        "kinetic_energy": kinetic,
        "seconds": total,
    }
    suffix = "_held_out" if args.held_out_only else ""
    stem = _common.result_stem("bench_gene_integration", args.quick, suffix)
    text = f"GSE1992 -> GSE4335, {len(genes)} genes, {time.strftime('%Y-%m-%d')}, "
    text += f"{os.cpu_count()} CPUs, total {total:.0f} s.\n\nIn-sample:\n\n{HEADER}\n"
    text += "\n".join(_format_row(r) for r in rows_in)
    if kinetic is not None:
        text += "\n\n" + _format_kinetic(kinetic)
    text += f"\n\nHeld-out source rows (5-fold):\n\n{HEADER}\n"
    text += "\n".join(_format_row(r) for r in rows_out) + "\n"
    text += f"\nHeld-out source rows, pooled over the folds:\n\n{HEADER}\n"
    text += "\n".join(_format_row(r) for r in rows_pooled) + "\n"
    _common.write_results(stem, result, text)
    print(f"\ntotal {total:.0f} s; wrote {_common.RESULTS}/{stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
