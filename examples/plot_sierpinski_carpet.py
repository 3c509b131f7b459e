"""
A multi-scale target: the Sierpinski carpet in 2-D and embedded in 3-D
======================================================================

Section 6 (Figures 1 and 5) of Gu et al.: the target is the Sierpinski carpet of
level 4 in ``[0, 10]^2``, a uniform law on a union of ``8^4`` small squares with
holes at four scales, known only through 4096 samples.  As many particles start
from ``N(0, 3^2 I)`` and are transported by the KL flow with ``L = 1`` and
``dt = 0.2`` for 5000 steps (time ``T = 1000``).  The particles find the largest hole
first and the finer scales later; the kinetic energy falls by orders of magnitude as
they settle.

The second experiment embeds the carpet in 3-D (the plane ``z = 0``) and starts the
particles from a 3-D Gaussian: they must also find the plane.  Heun's method
(``solver="heun"``, as in the papers' code for this example) damps the oscillation
across the plane that forward Euler shows (see the Euler-Heun example).  To keep it
near a minute, its discriminator trains on mini-batches of 1024 rows per side
(``batch_size``; the papers' code used 200).

With ReLU discriminators the kinetic energy may drop to exactly 0 late in the run:
the network is then flat at every particle and target row (a layer is inactive there), its
training gradient vanishes too, and the flow has stopped for good.  The script prints
the step where this happens; ``activation="leaky_relu"`` avoids it.
"""

# %%
# Settings
# --------
# Set ``SKLEARN_GPA_EXAMPLES_FAST=1`` for a quick run (fewer particles and steps).
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from sklearn_gpa import GPATransporter
from sklearn_gpa.datasets import make_sierpinski_carpet
from sklearn_gpa.metrics import energy_distance
from sklearn_gpa.plotting import plot_history, plot_particles_3d
from sklearn_gpa.utils import stack_domains

FAST = os.environ.get("SKLEARN_GPA_EXAMPLES_FAST", "0") == "1"
N_SAMPLES = 500 if FAST else 4096
N_STEPS = 600 if FAST else 5000


def transport_onto_carpet(n_features, solver, batch_size=None):
    """Fit the flow from N(0, 3^2 I) onto the carpet; return it, the start and the target."""
    target = make_sierpinski_carpet(
        N_SAMPLES, depth=4, scale=10.0, n_features=n_features, random_state=0
    )
    source = np.random.RandomState(1).normal(0.0, 3.0, size=(N_SAMPLES, n_features))
    X, _, sample_domain = stack_domains(source, target)
    gpa = GPATransporter(
        f="kl",
        L=1.0,
        dt=0.2,
        n_steps=N_STEPS,
        solver=solver,
        batch_size=batch_size,
        standardize=False,
        prealign=None,
        log_every=100,
        random_state=0,
    )
    start = time.perf_counter()
    gpa.fit(X, sample_domain=sample_domain)
    print(
        f"{n_features}-D, {solver}: {gpa.n_steps_} steps in {time.perf_counter() - start:.0f} s, "
        f"energy distance to the target in the plane: start "
        f"{energy_distance(source[:, :2], target[:, :2]):.3f}, end "
        f"{energy_distance(gpa.particles_[:, :2], target[:, :2]):.4f}"
    )
    standing = np.flatnonzero(gpa.history_["kinetic_energy"] == 0.0)
    if len(standing):
        print(f"  kinetic energy exactly 0 (a dead ReLU discriminator) from step {standing[0]}")
    return gpa, source, target


def plot_kinetic_energy(gpa, ax):
    plot_history(gpa.history_, ax=ax, key="kinetic_energy")
    # Steps where every particle stands still have zero kinetic energy: keep the log scale.
    ax.set_yscale("log")
    ax.set_title("kinetic energy of the particles")


# %%
# The carpet in 2-D (Figure 5)
# ----------------------------
gpa, source, target = transport_onto_carpet(2, "euler")
fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
for ax, points, title in [
    (axes[0], target, f"target: {N_SAMPLES} samples of the carpet"),
    (axes[1], gpa.particles_, f"GPA particles after {gpa.n_steps_} steps"),
]:
    ax.scatter(points[:, 0], points[:, 1], s=1, c="k" if points is target else "tab:orange")
    ax.set_xlim(-0.5, 10.5)
    ax.set_ylim(-0.5, 10.5)
    ax.set_aspect("equal")
    ax.set_title(title)
plot_kinetic_energy(gpa, axes[2])
fig.tight_layout()
fig.savefig("sierpinski_carpet_2d.png", dpi=100)

# %%
# The carpet embedded in 3-D (Figure 1)
# -------------------------------------
# :func:`~sklearn_gpa.plotting.plot_particles_3d` draws the target (blue) with the
# particles at the start of the flow (grey) and where the flow leaves them (orange).
gpa3, source3, target3 = transport_onto_carpet(3, "heun", batch_size=None if FAST else 1024)
print(
    "root mean square distance of the particles to the plane z = 0: "
    f"start {np.sqrt(np.mean(source3[:, 2] ** 2)):.2f}, "
    f"end {np.sqrt(np.mean(gpa3.particles_[:, 2] ** 2)):.3f}"
)

fig = plt.figure(figsize=(15, 5))
panels = [
    (source3, f"start and end of {gpa3.n_steps_} steps (Heun)"),
    (None, "end, seen closer"),
]
for k, (start, title) in enumerate(panels):
    ax = fig.add_subplot(1, 3, k + 1, projection="3d")
    plot_particles_3d(target3, gpa3.particles_, source=start, ax=ax, size=0.5)
    limits = 9.0 if start is not None else 3.0
    ax.set_xlim(-limits + 3, 7 + limits)
    ax.set_ylim(-limits + 3, 7 + limits)
    ax.set_zlim(-limits, limits)
    ax.view_init(elev=20, azim=-60)
    ax.set_title(title)
plot_kinetic_energy(gpa3, fig.add_subplot(1, 3, 3))
fig.tight_layout()
fig.savefig("sierpinski_carpet_3d.png", dpi=100)
plt.show()
