"""
Forward Euler against Heun in 12 dimensions
===========================================

Appendix B (Figure 10) of Gu et al.: the papers' 2-D mixture of four Gaussians is
embedded in 12-D (the other 10 coordinates of every target sample are exactly 0)
and 600 particles start from ``N(8 * 1, 0.5^2 I)`` in 12-D, far from the plane of
the target.  The particles must find the plane and the four wells inside it.

With ``L = 1`` and ``dt = 0.25`` a forward Euler step can overshoot the plane: the
particles' orthogonal coordinates oscillate around 0, with a growing amplitude.
Heun's predictor-corrector (``solver="heun"``, which retrains the discriminator at
the predicted positions) damps the oscillation.  With the same critic budget (five
Adam updates per stage) Heun's particles settle in the plane and in the four wells,
while Euler's, still shaken in the orthogonal directions, stall between the wells
(the paper's Euler run did reach the wells, but oscillated in the same way).
``GPATransporter.trajectories`` replays the learned flow and returns the positions
every ``every`` steps, from which both views are drawn.
"""

# %%
# Data and the two solvers
# ------------------------
# Set ``SKLEARN_GPA_EXAMPLES_FAST=1`` for a quick run (fewer steps).
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from sklearn_gpa import GPATransporter
from sklearn_gpa.datasets import make_gaussian_mixture
from sklearn_gpa.plotting import plot_trajectories
from sklearn_gpa.utils import stack_domains

FAST = os.environ.get("SKLEARN_GPA_EXAMPLES_FAST", "0") == "1"
N_PARTICLES = 600
N_STEPS = 700 if FAST else 1000
EVERY = 5
WELLS = np.array([[0.0, 4.0], [4.0, 0.0], [4.0, 4.0], [0.0, 0.0]])  # the mixture's centres

target = make_gaussian_mixture(200, n_features=12, random_state=0)
source = 8.0 + 0.5 * np.random.RandomState(1).standard_normal((N_PARTICLES, 12))
X, _, sample_domain = stack_domains(source, target)

paths = {}
for solver in ("euler", "heun"):
    start = time.perf_counter()
    gpa = GPATransporter(
        f="kl",
        L=1.0,
        dt=0.25,
        n_steps=N_STEPS,
        solver=solver,
        standardize=False,
        prealign=None,
        random_state=0,
    )
    gpa.fit(X, sample_domain=sample_domain)
    paths[solver] = gpa.trajectories(source, every=EVERY)
    final = paths[solver][-1]
    distance_to_wells = np.linalg.norm(final[:, None, :2] - WELLS, axis=2).min(axis=1)
    print(
        f"{solver}: {gpa.n_steps_} steps in {time.perf_counter() - start:.1f} s; "
        f"{np.mean(distance_to_wells < 1.0):.0%} of the particles within 1 of a well "
        f"centre in the plane; root mean square of the 10 orthogonal coordinates "
        f"{np.sqrt(np.mean(final[:, 2:] ** 2)):.3f}"
    )

# %%
# The plane of the mixture and the orthogonal coordinates
# -------------------------------------------------------
# Left: trajectories projected on the first two coordinates.  Right: the 10
# orthogonal coordinates over time, the mean over particles of each (lines) and
# the 5-95 % range of all of them (band); the target has 0 there.
fig, axes = plt.subplots(2, 2, figsize=(12, 9))
for row, (solver, path) in zip(axes, paths.items()):
    plot_trajectories(path, target=target, ax=row[0], max_paths=150)
    row[0].set_title(f"{solver}, dt = 0.25: trajectories in the plane (coordinates 1, 2)")
    steps = np.minimum(np.arange(len(path)) * EVERY, N_STEPS)
    orthogonal = path[:, :, 2:]
    low, high = np.percentile(orthogonal.reshape(len(path), -1), [5, 95], axis=1)
    row[1].fill_between(steps, low, high, color="tab:orange", alpha=0.25, label="5-95 %")
    row[1].plot(steps, orthogonal.mean(axis=1), lw=0.8)
    row[1].axhline(0.0, c="k", lw=0.5)
    row[1].set_xlabel("particle step")
    row[1].set_ylabel("orthogonal coordinates 3-12")
    row[1].set_title(f"{solver}: the 10 orthogonal coordinates")
    row[1].legend(loc="upper right", fontsize="small")
fig.tight_layout()
fig.savefig("euler_vs_heun.png", dpi=100)
plt.show()
