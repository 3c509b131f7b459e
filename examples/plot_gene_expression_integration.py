"""
Integrating two breast-cancer gene-expression studies
=====================================================

Two microarray studies of breast tumours measure the same genes, but a batch effect separates
them: a classifier trained on one study misreads the other.  This example moves the source
study (GSE1992) onto the target study (GSE4335) with :class:`~sklearn_gpa.LatentGPA`, given
both studies' estrogen-receptor (ER) labels, and compares it with the per-gene mean/std
adjustment per ER class.

Adapt it to your own studies: put each study in a samples x genes table with the same gene
columns, give the ER (or any) labels you trust, and call ``fit_transform``.

What the defaults do, and how to change them:

* ``prealign="shrunk"`` first matches each gene's mean and spread (one map for all rows,
  shrunk towards the common shift and scale as ComBat does), so the flow only corrects what
  two moments cannot.
* The encoder is a :class:`~sklearn_gpa.latent.DiscrepancyEncoder`: the few directions in
  which the aligned source's covariance still differs from the target's beyond sampling noise
  (here a handful).  The flow moves rows only along them, and every row keeps the rest of its
  own profile, so each patient stays the same patient.  Pass ``encoder=default_encoder(0.9)``
  for the papers' PCA keeping 90 % of the variance.
* The flow stops once its particles are as close to the target as a fresh sample of it would
  be (``stop="auto"``); ``n_steps`` is only a maximum.  ``transporter_.stop_reason_`` says
  which came first.
* ``L=10, dt=0.01`` (standardised units) move a row at most a tenth of the cloud's radius per
  step; keep ``L * dt`` near 0.1.

The data come from the ``survset`` package (``pip install survset``); without it the example
says so and stops.
"""

# %%

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_gpa import GPATransporter, LatentGPA, MeanStdAdjuster
from sklearn_gpa.datasets import load_breast_cancer_studies
from sklearn_gpa.metrics import sinkhorn_w2
from sklearn_gpa.utils import stack_domains

try:
    Xs, ys, Xt, yt, genes = load_breast_cancer_studies("gse1992", "gse4335")
except ImportError:
    genes = None
    print("survset is not installed (pip install survset): nothing to integrate.")

# %%
# The two studies, genes aligned by symbol
# ----------------------------------------
# ``load_breast_cancer_studies`` keeps the genes both studies measure and the patients with
# a known ER status; for your own studies, build ``Xs, ys, Xt, yt`` the same way.
if genes is not None:
    print(f"source {Xs.shape}, target {Xt.shape}, {len(genes)} shared genes")

# %%
# Integrate: mean/std adjustment per ER class, and latent GPA
# -----------------------------------------------------------
if genes is not None:
    X, y, sample_domain = stack_domains(Xs, Xt, ys, yt)
    meanstd = MeanStdAdjuster().fit_transform(X, y, sample_domain=sample_domain)[sample_domain >= 0]
    # Defaults: mean/std alignment, then one flow (the labels steer the directions it may
    # move along) in the few directions where the two studies still differ beyond
    # sampling noise, stopped once it matches the target.
    gpa = LatentGPA(transporter=GPATransporter(n_steps=1000, random_state=0))
    moved = gpa.fit_transform(X, y, sample_domain=sample_domain)[sample_domain >= 0]
    print(
        f"directions of discrepancy {gpa.n_components_}, steps run {gpa.n_steps_} "
        f"({gpa.transporter_.stop_reason_ if gpa.transporter_ is not None else 'no flow'})"
    )

# %%
# How close is each version to the target, and can a target-trained classifier read it?
# -------------------------------------------------------------------------------------
# Mean/std per class sends each class onto its own target class, so the classifier reads
# it by construction (a circular score); latent GPA moves every row by one flow.
if genes is not None:
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    classifier.fit(Xt, yt)
    print(f"{'':>22} {'2-Wasserstein (ER-, ER+)':>28} {'ER balanced accuracy':>22}")
    for name, rows in (("raw source", Xs), ("mean/std per class", meanstd), ("latent GPA", moved)):
        distance = [sinkhorn_w2(rows[ys == c], Xt[yt == c]) for c in (0, 1)]
        accuracy = balanced_accuracy_score(ys, classifier.predict(rows))
        print(f"{name:>22} {distance[0]:>13.1f} {distance[1]:>13.1f} {accuracy:>22.3f}")

# %%
# A 2-D view: the first two principal components of the target study
# ------------------------------------------------------------------
if genes is not None:
    view = make_pipeline(StandardScaler(), PCA(2)).fit(Xt)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharex=True, sharey=True)
    for ax, (title, rows) in zip(
        axes, (("before", Xs), ("mean/std per class", meanstd), ("latent GPA", moved))
    ):
        t, s = view.transform(Xt), view.transform(rows)
        for c, marker in ((0, "o"), (1, "^")):
            ax.scatter(*t[yt == c].T, s=12, c="tab:blue", marker=marker, label=f"target ER={c}")
            ax.scatter(*s[ys == c].T, s=12, c="tab:orange", marker=marker, label=f"source ER={c}")
        ax.set_title(title)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig("gene_expression_integration.png", dpi=110)
    plt.close(fig)

if genes is not None and gpa.transporter_ is not None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(gpa.history_["kinetic_energy_per_flow"])
    ax.set_xlabel("particle step")
    ax.set_ylabel("kinetic energy")
    if gpa.classes_ is not None:  # flows per class (transporter conditional=True)
        ax.legend([f"ER={c}" for c in gpa.classes_])
    fig.tight_layout()
    fig.savefig("gene_expression_kinetic_energy.png", dpi=110)
    plt.close(fig)
