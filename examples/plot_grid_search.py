"""
=========================================
Tuning the speed limit L and the step dt
=========================================

A particle of :class:`~sklearn_gpa.GPATransporter` moves at most ``L * dt`` per step:
``L`` bounds the discriminator's slope (the particles' speed) and ``dt`` is the time step.
Too slow, and the source never reaches the target in ``n_steps``; too coarse, and the
particles overshoot and jitter around it.  This example tunes both with
:class:`~sklearn.model_selection.GridSearchCV` on a batch-effect pair, and plots the score
surface.

Three things make the search meaningful:

* the splitter, :class:`~sklearn_gpa.model_selection.DomainStratifiedKFold`, keeps source
  and target rows in every training and test fold (an ordinary ``KFold`` may not);
* ``sample_domain`` reaches the splitter, ``fit`` and ``score`` through scikit-learn's
  metadata routing, enabled here with ``sklearn.config_context``;
* the score, minus the energy distance between the transported held-out source rows and
  the held-out target rows, has no parameter of its own, so candidates with different
  ``L`` are compared on the same scale.
"""

# %%
# A batch-effect pair
# -------------------
# Two "studies" with the same two classes; the source study is shifted and rescaled
# feature by feature.  Set ``SKLEARN_GPA_EXAMPLES_FAST=1`` for a quick, coarser run.
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import sklearn
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_gpa import GPATransporter
from sklearn_gpa.datasets import make_batch_effect
from sklearn_gpa.model_selection import DomainStratifiedKFold
from sklearn_gpa.utils import stack_domains

FAST = os.environ.get("SKLEARN_GPA_EXAMPLES_FAST") == "1"
n_rows, n_steps = (80, 50) if FAST else (150, 100)
L_grid = [1.0, 3.0, 10.0] if FAST else [0.3, 1.0, 3.0, 10.0, 30.0]
dt_grid = [0.003, 0.03, 0.3] if FAST else [0.003, 0.01, 0.03, 0.1, 0.3]

Xs, ys, Xt, yt = make_batch_effect(n_rows, n_rows, n_features=5, random_state=0)
X, y, sample_domain = stack_domains(Xs, Xt)

# %%
# The search
# ----------
# The transporter sits in a pipeline after a scaler; the grid names its parameters with
# the step prefix.  ``prealign=None`` makes the flow carry the whole batch effect, which is
# what ``L`` and ``dt`` govern (by default each feature's mean and spread are matched
# before the flow starts, which removes this per-feature effect at once).  ``n_jobs=-1``
# would spread the candidates over all cores (see ``benchmarks/bench_search.py`` for the
# speed-up and the start-up cost of the workers).
pipeline = make_pipeline(
    StandardScaler(), GPATransporter(n_steps=n_steps, prealign=None, random_state=0)
)
grid = {"gpatransporter__L": L_grid, "gpatransporter__dt": dt_grid}
cv = DomainStratifiedKFold(n_splits=3, shuffle=True, random_state=0)

start = time.perf_counter()
with sklearn.config_context(enable_metadata_routing=True):
    search = GridSearchCV(pipeline, grid, cv=cv).fit(X, sample_domain=sample_domain)
    moved = search.best_estimator_.transform(X, sample_domain=sample_domain)
print(f"{len(L_grid) * len(dt_grid)} candidates x 3 folds in {time.perf_counter() - start:.1f} s")
print("best:", search.best_params_, f"score {search.best_score_:.3f}")

# %%
# The score surface
# -----------------
# ``cv_results_`` lists the candidates in grid order (L outer, dt inner).  The score
# depends mostly on the product ``L * dt``, the largest distance a particle travels per
# step: below the diagonal the particles are too slow to arrive in ``n_steps``, far above
# it they overshoot.  The right panel shows the source before and after the best
# candidate's transport, on the target's first two principal components.
scores = search.cv_results_["mean_test_score"].reshape(len(L_grid), len(dt_grid))

fig, (ax_surface, ax_data) = plt.subplots(1, 2, figsize=(11, 4.5))
image = ax_surface.imshow(scores, origin="lower", cmap="viridis")
ax_surface.set_xticks(range(len(dt_grid)), [f"{dt:g}" for dt in dt_grid])
ax_surface.set_yticks(range(len(L_grid)), [f"{L:g}" for L in L_grid])
ax_surface.set_xlabel("dt")
ax_surface.set_ylabel("L")
for i in range(len(L_grid)):
    for j in range(len(dt_grid)):
        ax_surface.text(j, i, f"{scores[i, j]:.2f}", ha="center", va="center", fontsize=8)
best = np.unravel_index(np.argmax(scores), scores.shape)
ax_surface.scatter(best[1], best[0], s=600, facecolors="none", edgecolors="red", linewidths=2)
ax_surface.set_title("mean CV score (- energy distance)")
fig.colorbar(image, ax=ax_surface)

pca = PCA(2).fit(Xt)
source = sample_domain >= 0
for rows, label, color in (
    (X[~source], "target", "tab:blue"),
    (X[source], "source", "tab:orange"),
    (moved[source], "source, transported", "tab:green"),
):
    codes = pca.transform(rows)
    ax_data.scatter(codes[:, 0], codes[:, 1], s=8, alpha=0.6, label=label, color=color)
ax_data.set_title("best candidate, refitted on all rows")
ax_data.legend(loc="best", fontsize=8)
fig.tight_layout()
plt.savefig("grid_search.png", dpi=100)
