"""
Integrating two breast-cancer gene-expression studies
=====================================================

Two microarray studies of breast tumours measure the same genes, but a batch effect separates
them: a classifier trained on one study misreads the other.  This example moves the source
study (GSE1992) onto the target study (GSE4335) with :class:`~sklearn_gpa.LatentGPA`, one flow
per estrogen-receptor (ER) class, and compares it with the per-gene mean/std adjustment.

Adapt it to your own studies: put each study in a samples x genes table with the same gene
columns, give the ER (or any) labels you trust, and call ``fit_transform``.

How to choose the settings:

* ``encoder`` / d': the default standardises genes and keeps the principal components that
  explain 90 % of the variance (here 141 of them); ``reconstruction_error_`` tells how much the
  latent space discards.  Fewer components (``PCA(50)``) run faster and lose more detail.
* ``L`` and ``dt``: in the default standardised units the cloud of codes has radius about one
  whatever d'; ``L=10, dt=0.01`` moves a row at most a tenth of that per step.  Keep ``L * dt``
  near 0.1 and raise ``n_steps`` until ``history_["kinetic_energy"]`` has fallen.
* ``n_steps``: the default 300 is enough here.  More steps move the source closer to the
  target *sample* and start to fit its noise: on these studies 1 000 steps lower the
  2-Wasserstein distance further but make the ER accuracy below depend on the seed
  (0.97-1.00 over five seeds, and 0.95 for one seed on another CPU, against 0.98-1.00 after
  300 steps).
* ``prealign="meanstd"`` (default) first matches each gene's mean and spread per class, so the
  flow only corrects what two moments cannot.

The data come from the ``survset`` package (``pip install survset``); without it the example
says so and stops.
"""

# %%
import os

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

FAST = os.environ.get("SKLEARN_GPA_EXAMPLES_FAST") == "1"

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
# Integrate: mean/std adjustment and latent GPA, per ER class
# -----------------------------------------------------------
if genes is not None:
    X, y, sample_domain = stack_domains(Xs, Xt, ys, yt)
    meanstd = MeanStdAdjuster().fit_transform(X, y, sample_domain=sample_domain)[sample_domain >= 0]
    gpa = LatentGPA(
        transporter=GPATransporter(
            n_steps=100 if FAST else 300, random_state=0, out_of_sample="auto"
        )
    )
    moved = gpa.fit_transform(X, y, sample_domain=sample_domain)[sample_domain >= 0]
    print(
        f"latent dimension {gpa.n_components_}, reconstruction error "
        f"{gpa.reconstruction_error_:.3f}, decoder Lipschitz constant {gpa.decoder_lipschitz_:.2f}"
    )

# %%
# How close is each version to the target, and can a target-trained classifier read it?
# -------------------------------------------------------------------------------------
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

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(gpa.history_["kinetic_energy_per_flow"])
    ax.set_xlabel("particle step")
    ax.set_ylabel("kinetic energy")
    ax.legend(["ER-", "ER+"])
    fig.tight_layout()
    fig.savefig("gene_expression_kinetic_energy.png", dpi=110)
    plt.close(fig)
