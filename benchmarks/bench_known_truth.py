"""Integration with a known truth: real studies split in halves, simulated batch effects.

Every breast-cancer study of ``survset`` with an ER status (GSE1992, GSE3143, GSE4335; genes
``num_HS_*``, all of them) is split at random into two halves, stratified by ER.  The source
half gets a simulated batch effect, the target half stays as it is, so the batch-free value of
every source row (its *truth*) is known.  Four kinds of batch effect, drawn afresh for each
study and split (gene sd and mean are those of the source half):

* ``affine``: per gene, scale ``exp(N(0, 0.3))`` about the gene mean and shift ``N(0, 1)``
  gene sds;
* ``curve``: one intensity-dependent curve for all genes, ``z + a tanh(b (z - z0)) + c z|z|``
  on the study's standardised intensity ``z`` (``a`` in 0.3-0.6, ``b`` in 1-2, ``z0`` in
  +-0.5, ``c`` in 0.05-0.15, monotone), then gene-wise scales ``exp(N(0, 0.2))`` and shifts
  ``N(0, 0.5)`` gene sds;
* ``factors``: per-sample factors of rank 1, 2, 3 (GSE1992, GSE3143, GSE4335), sample scores
  ``N(0, 1)``, gene loadings ``N(0, w_k^2)`` gene sds with ``w = 0.8, 0.5, 0.3``, plus
  gene-wise shifts ``N(0, 0.5)`` gene sds;
* ``mix``: factors of rank 2, then the curve, then the per-gene affine effect.

Label-shift cells (one split per study; effects ``affine``, ``factors``, ``mix``): the halves
are drawn so that the source half's ER- share is twice the target half's (GSE1992 54 % / 28 %,
GSE3143 41 % / 20 %, GSE4335 38 % / 18 %; :func:`label_shift_halves`), so per-gene means differ
between the halves for biological reasons too; every row's truth is still known.

Then the real study pairs (no row truth): GSE1992 <-> GSE4335, GSE3143 <-> GSE4335, GSE1992
<-> GSE3143 on their shared genes.

Methods, fitted on the source and target rows together and applied to every source row, with
default parameters: raw source; ``MeanStdAdjuster`` (label-free), also with
``shrink=True`` (empirical Bayes, ``LatentGPA``'s pre-alignment); per-gene quantile mapping;
ComBat (inmoose ``pycombat_norm``, the target as reference batch, no covariate); POT's
``SinkhornTransport`` (label-free, out-of-sample ``transform``, as in
``bench_gene_integration``); ``LatentGPA`` labelled (ER on both sides), semi-labelled (ER on
the target only, source labels -1) and label-free, ``random_state=0``.  Two references: the
truth re-standardised to the target half per gene, and the oracle that removes the
simulated per-sample factors exactly (then mean/std).

Scores:

* ``recovery``: RMSE(corrected - truth) / RMSE(distorted - truth) over every source row and
  gene; 0 = the batch-free rows, 1 = nothing removed (lower is better);
* ``accuracy``: balanced accuracy of ER predicted on the corrected source rows by a
  logistic regression trained on the target half (label-free methods are the fair test; the
  labelled flows send each class onto its own target class, which makes it circular);
* ``energy/floor``: energy distance from the corrected source rows to the target half over
  the *fresh-sample floor*, that of the batch-free rows (splits) or, for the real pairs,
  that between two random halves of the target (mean of 5 halvings) rescaled to the pair's
  sample sizes by ``(1/n_s + 1/n_t) / (1/n_a + 1/n_b)``; a value well below 1 means the
  method matched the target sample's own noise;
* ``seconds``: fit + transform.

``--prealign P`` adds ``LatentGPA`` labelled, semi-labelled and label-free with
``prealign=P`` (and, for ``mixture``, the semi-labelled pre-alignment on its own) to compare
with the default.  ``--label-shift`` runs the label-shift cells only.

``--settings`` runs, instead of the default methods, the per-gene baselines and the
non-default ``LatentGPA`` settings of :func:`settings_methods` (the search for defaults that
keep each row's identity) on the same cells.

Run: ``python benchmarks/bench_known_truth.py [--quick] [--settings] [--splits N]
[--no-real | --real-only | --label-shift] [--prealign P]``
(``--quick``: one split, two real pairs; a few minutes).  Writes
``benchmarks/results/bench_known_truth{_quick}{_settings}...{_prealign_P}.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import _common
import numpy as np
from _studies import ER_STUDIES, er_study, open_studies, real_pair
from bench_gene_integration import sinkhorn
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_gpa import MeanStdAdjuster
from sklearn_gpa.baselines import class_router, meanstd_map
from sklearn_gpa.latent import DiscrepancyEncoder
from sklearn_gpa.metrics import energy_distance
from sklearn_gpa.utils import stack_domains

RESULTS = os.path.join(os.path.dirname(__file__), "results")
EFFECTS = ("affine", "curve", "factors", "mix")
# Label-shift cells: halves with different ER mixes (one split per study), these effects.
SHIFT_EFFECTS = ("affine", "factors", "mix")
SHIFT_RATIO = 2.0
FACTOR_RANK = dict(zip(ER_STUDIES, (1, 2, 3)))
REAL_PAIRS = (
    ("gse1992", "gse4335"),
    ("gse4335", "gse1992"),
    ("gse3143", "gse4335"),
    ("gse4335", "gse3143"),
    ("gse1992", "gse3143"),
    ("gse3143", "gse1992"),
)
QUICK_REAL_PAIRS = REAL_PAIRS[:2]
PER_GENE = ("mean/std", "mean/std shrunk", "quantile mapping", "ComBat")


# ---------------------------------------------------------------------- batch effects
def _affine(X, mean, sd, rng, scale_sd=0.3, shift_sd=1.0):
    scale = rng.lognormal(0.0, scale_sd, X.shape[1])
    shift = rng.normal(0.0, shift_sd, X.shape[1]) * sd
    return (X - mean) * scale + mean + shift


def _curve(X, rng):
    """One monotone intensity curve for every gene, on the study's standardised intensity."""
    centre, spread = X.mean(), X.std()
    z = (X - centre) / spread
    a, b = rng.uniform(0.3, 0.6), rng.uniform(1.0, 2.0)
    z0, c = rng.uniform(-0.5, 0.5), rng.uniform(0.05, 0.15)
    return centre + spread * (z + a * np.tanh(b * (z - z0)) + c * z * np.abs(z))


def _factors(X, sd, rng, rank):
    """Per-sample scores times gene loadings (in gene sds); returns (added term)."""
    weights = np.array([0.8, 0.5, 0.3])[:rank]
    scores = rng.normal(size=(len(X), rank))
    loadings = rng.normal(size=(rank, X.shape[1])) * weights[:, None] * sd
    return scores @ loadings


def batch_effect(kind, truth, rng, rank=2):
    """Distorted rows and the part of the distortion that per-sample factors explain."""
    mean, sd = truth.mean(0), truth.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    factor = np.zeros_like(truth)
    if kind == "affine":
        return _affine(truth, mean, sd, rng), factor
    if kind == "curve":
        return _affine(_curve(truth, rng), mean, sd, rng, 0.2, 0.5), factor
    factor = _factors(truth, sd, rng, rank)
    if kind == "factors":
        return truth + factor + rng.normal(0.0, 0.5, truth.shape[1]) * sd, factor
    if kind == "mix":
        return _affine(_curve(truth + factor, rng), mean, sd, rng), factor
    raise ValueError(f"unknown batch effect {kind!r}")


def label_shift_halves(y, seed, ratio=2.0, minority=0):
    """Two halves whose ``minority``-class shares differ: the source's ``ratio`` times the
    target's (rounded).  Returns (source, target) row indices."""
    rng = np.random.RandomState(seed)
    rare = rng.permutation(np.flatnonzero(y == minority))
    common = rng.permutation(np.flatnonzero(y != minority))
    n_s = len(y) // 2
    n_t = len(y) - n_s
    # rare_s / n_s = ratio * (len(rare) - rare_s) / n_t
    rare_s = int(round(ratio * len(rare) * n_s / (n_t + ratio * n_s)))
    if rare_s > n_s or n_s - rare_s > len(common):
        raise ValueError(f"cannot give the source {ratio} times the target's share")
    source = np.concatenate([rare[:rare_s], common[: n_s - rare_s]])
    target = np.concatenate([rare[rare_s:], common[n_s - rare_s :]])
    return np.sort(source), np.sort(target)


def split_cell(X, y, study, kind, split, label_shift=False):
    """One study split in halves, the source half distorted: stratified by ER, or with
    ``label_shift`` the source half's ER- share twice the target half's
    (:func:`label_shift_halves`; the batch effect drawn with other seeds)."""
    seed = 1000 * split + 10 * ER_STUDIES.index(study) + EFFECTS.index(kind)
    if label_shift:
        seed += 500
        source, target = label_shift_halves(y, seed, SHIFT_RATIO)
    else:
        source, target = train_test_split(
            np.arange(len(X)), test_size=0.5, stratify=y, random_state=split
        )
    truth = X[source]
    rank = FACTOR_RANK[study] if kind == "factors" else 2
    Xs, factor = batch_effect(kind, truth, np.random.RandomState(seed), rank)
    return {
        "Xs": Xs,
        "ys": y[source],
        "Xt": X[target],
        "yt": y[target],
        "truth": truth,
        "factor": factor,
        "rank": rank if kind in ("factors", "mix") else 0,
    }


# ---------------------------------------------------------------------------- methods
def _stacked(cell, labels):
    ys = cell["ys"] if labels == "both" else None
    yt = cell["yt"] if labels in ("both", "target") else None
    if labels == "target":
        ys = np.full(len(cell["Xs"]), -1)
    return stack_domains(cell["Xs"], cell["Xt"], ys, yt)


def meanstd(cell):
    X, _, sd = _stacked(cell, None)
    return MeanStdAdjuster().fit(X, sample_domain=sd).transform(cell["Xs"])


def meanstd_shrunk(cell):
    X, _, sd = _stacked(cell, None)
    return MeanStdAdjuster(shrink=True).fit(X, sample_domain=sd).transform(cell["Xs"])


def quantile_mapping(cell):
    """Per gene: each source value goes to the target quantile of its source rank."""
    Xs, Xt = cell["Xs"], cell["Xt"]
    ranks = np.argsort(np.argsort(Xs, axis=0, kind="stable"), axis=0)
    position = (ranks + 0.5) / len(Xs) * len(Xt) - 0.5
    position = np.clip(position, 0, len(Xt) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(Xt) - 1)
    frac = position - low
    ordered = np.sort(Xt, axis=0)
    return (
        np.take_along_axis(ordered, low, 0) * (1 - frac)
        + np.take_along_axis(ordered, high, 0) * frac
    )


def combat(cell):
    """ComBat without covariates (label-free), the target as the reference batch."""
    from inmoose.pycombat import pycombat_norm

    Xs, Xt = cell["Xs"], cell["Xt"]
    batch = [1] * len(Xs) + [2] * len(Xt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adjusted = pycombat_norm(np.vstack([Xs, Xt]).T, batch, ref_batch=2)
    return np.asarray(adjusted).T[: len(Xs)]


def pot_sinkhorn(cell):
    moved, _ = sinkhorn(cell["Xs"], None, cell["Xt"], None, cell["Xs"], None, labels=False)
    return moved


def pseudo_labels(cell):
    """Source classes predicted by a classifier of the target's labels, after label-free
    mean/std alignment (the semi-labelled routing proposed in the benchmark README)."""
    aligned = meanstd(cell)
    return class_router(cell["Xt"], cell["yt"]).predict(aligned)


def latent_gpa(labels, params=None, pseudo=False, global_prealign=False):
    """LatentGPA(**params), labels "both", "target" (source -1), or None (label-free).

    ``params["encoder"]`` may be a function of the cell that builds the encoder (the
    discrepancy encoder); where it returns None (no discrepancy beyond sampling noise) the
    flow is skipped and ``MeanStdAdjuster`` with the labels given is returned (per class
    when labelled, also with ``global_prealign``), as the proposed default would.
    ``pseudo``: source labels guessed by :func:`pseudo_labels`.  ``global_prealign``: the
    source rows are first adjusted by a label-free ``MeanStdAdjuster`` and LatentGPA runs
    with ``prealign=None`` (class flows without per-class moment matching).
    """
    params = {"random_state": 0, **(params or {})}

    def run(cell):
        encoder = params.get("encoder")
        local = dict(params)
        if pseudo:
            guessed = pseudo_labels(cell)
            X, y, sd = stack_domains(cell["Xs"], cell["Xt"], guessed, cell["yt"])
            given = guessed
        else:
            X, y, sd = _stacked(cell, labels)
            given = cell["ys"] if labels == "both" else None
        if callable(encoder) and not hasattr(encoder, "fit"):
            local["encoder"] = encoder(cell)  # an encoder built from the cell's data
            if local["encoder"] is None:
                adjuster = MeanStdAdjuster().fit(X, y, sample_domain=sd)
                return adjuster.transform(cell["Xs"], given)
        rows = cell["Xs"]
        if global_prealign:
            rows = meanstd(cell)
            X = np.vstack([rows, cell["Xt"]])
            local["prealign"] = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _common.latent_gpa(**local).fit(X, y, sample_domain=sd)
            return model.transform(rows, given)

    return run


def truth_restandardised(cell):
    a, b = meanstd_map(cell["truth"], cell["Xt"])
    return cell["truth"] * a + b


def factor_oracle(cell):
    """Removes the simulated per-sample factors exactly, then mean/std (a reference)."""
    a, b = meanstd_map(cell["Xs"] - cell["factor"], cell["Xt"])
    return (cell["Xs"] - cell["factor"]) * a + b


METHODS = [
    ("raw", lambda cell: cell["Xs"]),
    ("mean/std", meanstd),
    ("mean/std shrunk", meanstd_shrunk),
    ("quantile mapping", quantile_mapping),
    ("ComBat", combat),
    ("Sinkhorn (POT)", pot_sinkhorn),
    ("LatentGPA labelled", latent_gpa("both")),
    ("LatentGPA semi-labelled", latent_gpa("target")),
    ("LatentGPA label-free", latent_gpa(None)),
]
REFERENCES = [
    ("ref: truth, mean/std to target", truth_restandardised),
    ("ref: factors removed exactly", factor_oracle),
]


def flow_methods(**settings):
    """``LatentGPA`` (each labelling) with its flow's ``settings`` changed (``--n-critic``,
    ``--flow-steps``: the other setting beside the default)."""
    tag = ", ".join(f"{key}={value}" for key, value in settings.items())
    labellings = (("labelled", "both"), ("semi-labelled", "target"), ("label-free", None))
    return [
        (f"LatentGPA {name}, {tag}", latent_gpa(labels, settings)) for name, labels in labellings
    ]


def prealign_methods(prealign):
    """``LatentGPA`` with another ``prealign`` (each labelling), and for "mixture" the
    pre-alignment on its own, semi-labelled (ER on the target rows only)."""
    rows = []
    if prealign == "mixture":

        def recentred(cell):
            X, y, sd = _stacked(cell, "target")
            adjuster = MeanStdAdjuster(shrink=True, recentre="mixture")
            return adjuster.fit(X, y, sample_domain=sd).transform(cell["Xs"])

        rows.append(("mean/std shrunk + mixture, semi-labelled", recentred))
    settings = {"prealign": None if prealign == "none" else prealign}
    for name, labels in (("labelled", "both"), ("semi-labelled", "target"), ("label-free", None)):
        rows.append((f"LatentGPA {name}, prealign={prealign}", latent_gpa(labels, settings)))
    return rows


# --------------------------------------------------------------- discrepancy encoder
class FixedLinearEncoder(TransformerMixin, BaseEstimator):
    """A linear encoder computed beforehand: ``(x - mean) / scale @ components.T``.

    ``fit`` does nothing, so that ``LatentGPA`` (which clones and fits its encoder on the
    stacked rows) uses directions chosen from the two sides separately.
    """

    def __init__(self, mean=None, scale=None, components=None):
        self.mean = mean
        self.scale = scale
        self.components = components

    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        return ((np.asarray(X) - self.mean) / self.scale) @ self.components.T

    def inverse_transform(self, Z):
        return (np.asarray(Z) @ self.components) * self.scale + self.mean


def discrepancy_directions(Xs, Xt, n_permutations=20, max_components=10, extra=0, seed=0):
    """Directions along which the two sides' covariances differ beyond sampling noise.

    Both sides standardised by the target's gene sds and centred on their own means; the
    eigenvectors of ``C_s - C_t`` (in the span of the rows) whose eigenvalue exceeds, in
    absolute value, the 95th percentile of the largest one over ``n_permutations`` random
    reassignments of the rows to the two sides (possibly none); then ``extra`` leading
    principal components of the pooled rows, orthogonalised.  Returns (mean, scale, components).
    """
    scale = Xt.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    mean = Xt.mean(0)
    S = (Xs - Xs.mean(0)) / scale
    T = (Xt - Xt.mean(0)) / scale
    pooled = np.vstack([S, T])
    _, sv, basis = np.linalg.svd(pooled, full_matrices=False)
    basis = basis[sv > 1e-8 * sv[0]]
    codes = pooled @ basis.T
    ns = len(S)

    def eig(rows_s, rows_t):
        gap = rows_s.T @ rows_s / len(rows_s) - rows_t.T @ rows_t / len(rows_t)
        return np.linalg.eigh(gap)

    values, vectors = eig(codes[:ns], codes[ns:])
    rng = np.random.RandomState(seed)
    null = []
    for _ in range(n_permutations):
        order = rng.permutation(len(codes))
        null.append(np.abs(eig(codes[order[:ns]], codes[order[ns:]])[0]).max())
    keep = np.argsort(-np.abs(values))
    keep = keep[np.abs(values[keep]) > np.quantile(null, 0.95)][:max_components]
    directions = vectors[:, keep].T @ basis
    if extra:
        directions = np.vstack([directions, basis[:extra]])
    if len(directions) == 0:
        return mean, scale, directions
    q, _ = np.linalg.qr(directions.T)
    return mean, scale, q.T


def discrepancy_encoder(extra=0, keep_classes=False):
    """Encoder on the discrepancy directions of the mean/std-aligned source and the target.

    ``keep_classes``: the directions are made orthogonal to the target's standardised
    class-mean contrast(s), so that the flow does not move rows along the axis that
    separates the target's classes (semi-labelled: labels on the target only).
    """

    def build(cell):
        mean, scale, components = discrepancy_directions(meanstd(cell), cell["Xt"], extra=extra)
        if keep_classes and len(components):
            yt = cell["yt"]
            centre = cell["Xt"].mean(0)
            contrasts = np.array(
                [(cell["Xt"][yt == c].mean(0) - centre) / scale for c in np.unique(yt)]
            )
            q, _ = np.linalg.qr(contrasts.T)
            components = components - (components @ q) @ q.T
            components = np.linalg.qr(components.T)[0].T
        return FixedLinearEncoder(mean, scale, components) if len(components) else None

    return build


def pca(n):
    return make_pipeline(StandardScaler(), PCA(n, svd_solver="full"))


# Non-default LatentGPA settings tried (--settings), applied to every labelling.
# Non-default LatentGPA settings (--settings).  A first pass (results/
# bench_known_truth_quick_settings_pass1.md, code of commit e106105 but for the fallback
# described there) also tried, on the same cells: n_steps=30 and 100, PCA-5 with 100 steps,
# L=1, residual="adjust" alone, the discrepancy encoder with residual="keep" and with 300
# steps, the discrepancy encoder labelled with the library's per-class pre-alignment,
# pseudo-labels with default flows, and every setting semi-labelled (identical to
# label-free: the library ignores target-only labels).
DISCREPANCY = {"encoder": discrepancy_encoder(), "residual": "adjust", "n_steps": 1000}


def settings_methods():
    """The second pass: the discrepancy encoder and the ways to give it labels."""
    keep = {**DISCREPANCY, "encoder": discrepancy_encoder(keep_classes=True)}
    return [
        ("LatentGPA label-free, discrepancy, adjust, n_steps=1000", latent_gpa(None, DISCREPANCY)),
        (
            "LatentGPA labelled, label-free mean/std, discrepancy, adjust, n_steps=1000",
            latent_gpa("both", DISCREPANCY, global_prealign=True),
        ),
        (
            "LatentGPA semi, discrepancy orthogonal to target classes, adjust, n_steps=1000",
            latent_gpa("target", keep),
        ),
        (
            "LatentGPA semi, pseudo-labels, label-free mean/std, discrepancy, adjust, n_steps=1000",
            latent_gpa(None, DISCREPANCY, pseudo=True, global_prealign=True),
        ),
    ]


# --------------------------------------------------------------------------- scoring
def target_classifier(Xt, yt):
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    return model.fit(Xt, yt)


def fresh_floor(Xt, ns, halvings=5):
    """Energy distance between two random target halves, rescaled to ``ns`` vs ``len(Xt)``
    rows (the V-statistic's bias scales with ``1/n_a + 1/n_b``)."""
    values = []
    for seed in range(halvings):
        a, b = train_test_split(np.arange(len(Xt)), test_size=0.5, random_state=seed)
        values.append(
            energy_distance(Xt[a], Xt[b]) * (1 / ns + 1 / len(Xt)) / (1 / len(a) + 1 / len(b))
        )
    return float(np.mean(values))


def score(moved, cell, classifier, floor):
    row = {
        "accuracy": float(balanced_accuracy_score(cell["ys"], classifier.predict(moved))),
        "energy_over_floor": energy_distance(moved, cell["Xt"]) / floor,
    }
    truth = cell.get("truth")
    if truth is not None:
        row["recovery"] = float(
            np.sqrt(np.mean((moved - truth) ** 2) / np.mean((cell["Xs"] - truth) ** 2))
        )
    return row


def run_cell(cell, methods, key, floor=None, columns=None):
    classifier = target_classifier(cell["Xt"], cell["yt"])
    if floor is None:
        floor = energy_distance(cell["truth"], cell["Xt"])
    rows = []
    for name, method in methods:
        start = time.perf_counter()
        moved = method(cell)
        seconds = time.perf_counter() - start
        row = {**key, "method": name, **score(moved, cell, classifier, floor)}
        if not name.startswith(("raw", "ref")):
            row["seconds"] = seconds
        rows.append(row)
        print(_common.format_row(row, columns or CELL_COLUMNS), flush=True)
    return rows


# -------------------------------------------------------------------------- reporting
CELL_COLUMNS = (
    ("study", "study", None),
    ("effect", "effect", None),
    ("split", "split", "{}"),
    ("method", "method", None),
    ("recovery", "recovery", "{:.3f}"),
    ("ER accuracy", "accuracy", "{:.3f}"),
    ("energy/floor", "energy_over_floor", "{:.2f}"),
    ("seconds", "seconds", "{:.1f}"),
)
SUMMARY_COLUMNS = (
    ("effect", "effect", None),
    ("method", "method", None),
    ("recovery", "recovery", "{:.3f}"),
    ("/ best per-gene", "vs_best_per_gene", "{:.2f}"),
    ("ER accuracy", "accuracy", "{:.3f}"),
    ("energy/floor", "energy_over_floor", "{:.2f}"),
    ("seconds", "seconds", "{:.1f}"),
)
REAL_COLUMNS = (
    ("pair", "pair", None),
    ("method", "method", None),
    ("ER accuracy", "accuracy", "{:.3f}"),
    ("energy/floor", "energy_over_floor", "{:.2f}"),
    ("seconds", "seconds", "{:.1f}"),
)


def summarise(rows):
    """Per effect and method, the mean of each score over studies and splits; recovery also
    relative to the best per-gene method of each cell (mean of the per-cell ratios)."""
    out = []
    for effect in dict.fromkeys(row["effect"] for row in rows):
        cells = {}
        for row in rows:
            if row["effect"] == effect:
                cells.setdefault((row["study"], row["split"]), {})[row["method"]] = row
        if not cells:
            continue
        methods = list(next(iter(cells.values())))
        for method in methods:
            picked = [c[method] for c in cells.values() if method in c]
            entry = {"effect": effect, "method": method}
            for key in ("recovery", "accuracy", "energy_over_floor", "seconds"):
                values = [r[key] for r in picked if r.get(key) is not None]
                entry[key] = float(np.mean(values)) if values else None
            entry["vs_best_per_gene"] = float(
                np.mean(
                    [
                        c[method]["recovery"] / min(c[m]["recovery"] for m in PER_GENE)
                        for c in cells.values()
                    ]
                )
            )
            out.append(entry)
    return out


def summarise_real(rows):
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        picked = [r for r in rows if r["method"] == method]
        entry = {"pair": "mean of pairs", "method": method}
        for key in ("accuracy", "energy_over_floor", "seconds"):
            values = [r[key] for r in picked if r.get(key) is not None]
            entry[key] = float(np.mean(values)) if values else None
        out.append(entry)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one split, two real pairs")
    parser.add_argument("--splits", type=int, default=None, help="random splits per study")
    parser.add_argument(
        "--settings", action="store_true", help="also the non-default LatentGPA settings"
    )
    parser.add_argument(
        "--groupsort",
        action="store_true",
        help="the per-gene baselines and label-free LatentGPA with the ReLU and GroupSort critics",
    )
    parser.add_argument(
        "--patterns",
        action="store_true",
        help="the per-gene baselines and LatentGPA with the DiscrepancyEncoder moving rows "
        'along its filters (default) and along its patterns (move_along="patterns")',
    )
    parser.add_argument(
        "--label-shift",
        action="store_true",
        help="only the label-shift cells (halves with different ER mixes)",
    )
    parser.add_argument(
        "--prealign",
        default=None,
        help="also LatentGPA (labelled, semi-labelled, label-free) with this prealign, and "
        'with "mixture" the pre-alignment alone, semi-labelled',
    )
    parser.add_argument(
        "--n-critic",
        type=int,
        default=None,
        help="also LatentGPA (labelled, semi-labelled, label-free) with this many critic "
        "updates per step of its flow",
    )
    parser.add_argument(
        "--flow-steps",
        type=int,
        default=None,
        help="also LatentGPA (labelled, semi-labelled, label-free) with this n_steps (most "
        "steps) of its flow",
    )
    parser.add_argument("--no-real", action="store_true", help="skip the real study pairs")
    parser.add_argument("--real-only", action="store_true", help="only the real study pairs")
    args = parser.parse_args(argv)
    studies = open_studies("bench_known_truth")
    if studies is None:
        return 0
    n_splits = args.splits or (1 if args.quick else 2)
    methods = list(METHODS)
    if args.settings:  # per-gene baselines, then the settings
        methods = METHODS[:5] + settings_methods()
    if args.groupsort:  # issue 19: the tight Lipschitz network on the latent flows
        methods = METHODS[:5] + [
            METHODS[-1],
            ("LatentGPA label-free, groupsort", latent_gpa(None, {"activation": "groupsort"})),
        ]
    if args.patterns:
        patterns = {"encoder": DiscrepancyEncoder(move_along="patterns")}
        methods = METHODS[:5] + METHODS[-2:]
        methods += [
            ("LatentGPA semi-labelled, patterns", latent_gpa("target", patterns)),
            ("LatentGPA label-free, patterns", latent_gpa(None, patterns)),
        ]
    if args.prealign:
        methods += prealign_methods(args.prealign)
    if args.n_critic:
        methods += flow_methods(n_critic=args.n_critic)
    if args.flow_steps:
        methods += flow_methods(n_steps=args.flow_steps)
    start = time.perf_counter()
    split_rows, real_rows = [], []
    print(_common.grouped_table([], CELL_COLUMNS), flush=True)
    cells = [] if args.label_shift else [(e, s, False) for s in range(n_splits) for e in EFFECTS]
    cells += [(e, 0, True) for e in SHIFT_EFFECTS]
    for study in () if args.real_only else ER_STUDIES:
        X, y, genes = er_study(studies, study)
        for effect, split, shifted in cells:
            cell = split_cell(X, y, study, effect, split, label_shift=shifted)
            refs = REFERENCES if cell["rank"] else REFERENCES[:1]
            name = f"{effect}, label shift" if shifted else effect
            key = {"study": study, "effect": name, "split": split, "genes": len(genes)}
            split_rows += run_cell(cell, methods + refs, key)
    summary = summarise(split_rows)
    print("\n" + _common.grouped_table(summary, SUMMARY_COLUMNS, group="effect"), flush=True)
    if not (args.no_real or args.label_shift):
        print("\nreal pairs:\n" + _common.grouped_table([], REAL_COLUMNS), flush=True)
        for source, target in QUICK_REAL_PAIRS if args.quick else REAL_PAIRS:
            cell = real_pair(studies, source, target)
            floor = fresh_floor(cell["Xt"], len(cell["Xs"]))
            key = {"pair": f"{source} -> {target}"}
            real_rows += run_cell(cell, methods, key, floor=floor, columns=REAL_COLUMNS)
    real_summary = summarise_real(real_rows) if real_rows else []
    total = time.perf_counter() - start

    suffix = "".join(
        tag
        for tag, on in (
            ("_quick", args.quick),
            ("_settings", args.settings),
            ("_groupsort", args.groupsort),
            ("_patterns", args.patterns),
            ("_real", args.real_only),
            ("_label_shift", args.label_shift),
            (f"_prealign_{args.prealign}", args.prealign),
            (f"_n_critic_{args.n_critic}", args.n_critic),
            (f"_flow_steps_{args.flow_steps}", args.flow_steps),
        )
        if on
    )
    command = "python benchmarks/bench_known_truth.py" + " ".join(
        [""] + [a for a in (argv if argv is not None else sys.argv[1:])]
    )
    result = {
        "command": command,
        "splits": n_splits,
        "summary": summary,
        "real_summary": real_summary,
        "splits_rows": split_rows,
        "real_rows": real_rows,
        "seconds": total,
    }
    text = [
        f"`{command}` ({_common.now()}, {_common.machine_line()}), total {total:.0f} s. "
        f"{n_splits} random half-split(s) per study; every method with default parameters "
        "(LatentGPA random_state=0). recovery: RMSE(corrected - truth) / RMSE(distorted - "
        "truth), lower is better; / best per-gene: recovery over the best of mean/std, "
        "shrunk mean/std, quantile mapping and ComBat in the same cell (mean of ratios); "
        "ER accuracy: balanced accuracy of a classifier trained on the target half "
        "(circular for labelled flows); "
        "energy/floor: energy distance to the target over that of the batch-free rows (splits) "
        "or of a fresh target half (real pairs).",
        "",
        "Mean over studies and splits:",
        "",
        _common.grouped_table(summary, SUMMARY_COLUMNS, group="effect"),
    ]
    if real_rows:
        text += [
            "",
            "Real study pairs (no truth):",
            "",
            _common.grouped_table(real_rows + real_summary, REAL_COLUMNS, group="pair"),
        ]
    text += ["", "Every cell:", "", _common.grouped_table(split_rows, CELL_COLUMNS)]
    _common.write_results(f"bench_known_truth{suffix}", result, "\n".join(text))
    print(f"\ntotal {total:.0f} s; wrote {_common.RESULTS}/bench_known_truth{suffix}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
