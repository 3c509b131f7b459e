"""
Generating handwritten digits from 200 images
=============================================

Section 6 (Figures 6 and 11) of Gu et al.: a generative particle algorithm learns to
write digits from only 200 training images, 20 of each digit.  ``GPATransporter``
fitted with labels and no ``sample_domain`` runs one flow per digit (all ten batched):
600 particles start from a prior and are transported by the KL flow with ``L = 1``
onto the 20 images of their digit.  Three times more particles than images keeps them
from landing on copies of the training images (paper 002, section 4).  As in the
papers, the generated images are the trained particles, ``particles_``; ``sample``
pushes fresh prior draws through the learned flow instead.

Two priors are compared: the papers' logistic noise, and ``source="gaussian_fit"``, a
Gaussian with each digit's mean and (diagonal, above 500 pixels) covariance.  From the
logistic prior every pixel starts noisy, and the flow has to remove noise in every
direction of pixel space; some speckle remains after a few hundred steps.  The
moment-matched prior starts closer, and its particles end cleaner.

Two checks tell whether the generated images are good digits and new ones: a classifier
trained on other real images must recognise the intended digit, and each generated
image should be about as far from its nearest training image as a fresh real image of
that digit is (a ratio near 1; copies have 0).

The full run uses MNIST (28 x 28 pixels, :func:`~sklearn_gpa.datasets.fetch_mnist`,
downloaded once); the fast mode, and a run without network access, use scikit-learn's
8 x 8 digits (:func:`sklearn.datasets.load_digits`).  ``benchmarks/bench_mnist.py``
compares GPA with Gaussian mixtures and kernel density estimates on MNIST.
"""

# %%
# Settings and data
# -----------------
# Set ``SKLEARN_GPA_EXAMPLES_FAST=1`` for a quick run (8 x 8 digits, fewer steps).
import os
import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.neighbors import NearestNeighbors
from sklearn.svm import SVC

from sklearn_gpa import GPATransporter
from sklearn_gpa.datasets import fetch_mnist
from sklearn_gpa.plotting import plot_images

FAST = os.environ.get("SKLEARN_GPA_EXAMPLES_FAST", "0") == "1"
N_PER_DIGIT = 20


def load_images():
    """All images (pixels in [0, 1]), their digits, the image shape and the data set's name."""
    if not FAST:
        try:
            X, y = fetch_mnist(subset="test", return_X_y=True)
            return X.astype(np.float64), y, (28, 28), "MNIST"
        except OSError as exc:
            print(f"MNIST could not be fetched ({exc}); using the 8 x 8 digits instead.")
    digits = load_digits()
    return digits.data / 16.0, digits.target, (8, 8), "8 x 8 digits"


X, y, image_shape, name = load_images()
rng = np.random.RandomState(0)
train = np.concatenate(
    [rng.choice(np.flatnonzero(y == d), N_PER_DIGIT, replace=False) for d in range(10)]
)
rest = np.setdiff1d(np.arange(len(y)), train)
X_train, y_train = X[train], y[train]
# A classifier of real images that GPA never sees, to recognise the generated digits.
X_other, y_other = X[rest[:3000]], y[rest[:3000]]
print(f"{name}: {len(X_train)} training images of {image_shape[0]} x {image_shape[1]} pixels")

# %%
# One flow per digit, from each prior
# -----------------------------------
# The papers work in pixel units (``standardize=False``) with ``L = 1``.  The first
# layer of the discriminator is wide: the particles move along its gradient, which
# lies in the span of that layer's rows.
classifier = SVC().fit(X_other, y_other)
nearest = NearestNeighbors(n_neighbors=1).fit(X_train)
fresh_distance = np.median(nearest.kneighbors(X[rest[-500:]])[0])


def report(label, images, labels):
    """Print how well the images are recognised and how far they are from the training set."""
    accuracy = classifier.score(images, labels)
    ratio = np.median(nearest.kneighbors(images)[0]) / fresh_distance
    print(
        f"  {label}: recognised as the intended digit {accuracy:.0%}; distance to the nearest "
        f"training image / that of a fresh real image {ratio:.2f}"
    )


generated = {}
for prior in ["logistic", "gaussian_fit"]:
    gpa = GPATransporter(
        f="kl",
        L=1.0,
        dt=1.0 if FAST else 0.5,
        n_steps=100 if FAST else 400,
        source=prior,
        n_particles=3 * len(X_train),
        standardize=False,
        hidden_layer_sizes=(256, 64, 32),
        log_every=50,
        random_state=0,
    )
    start = time.perf_counter()
    gpa.fit(X_train, y_train)
    print(f"prior {prior!r}: {gpa.n_steps_} steps in {time.perf_counter() - start:.0f} s")
    particles, labels = np.clip(gpa.particles_, 0.0, 1.0), gpa.particle_labels_
    report("trained particles", particles, labels)
    report("sample()", np.clip(gpa.sample(len(labels), y=labels, random_state=1), 0, 1), labels)
    generated[prior] = particles, labels

# %%
# Training images and generated images
# ------------------------------------
# One digit per row: ten of the 20 training images, and ten trained particles of
# each flow.
panels = {f"training images ({name})": (X_train, y_train)}
panels.update({f"GPA, {prior} prior": images for prior, images in generated.items()})
fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 5))
for ax, (title, (images, labels)) in zip(axes, panels.items()):
    shown = np.concatenate([np.flatnonzero(labels == d)[:10] for d in range(10)])
    plot_images(images[shown], image_shape, ax=ax, vmin=0, vmax=1)
    ax.set_title(title)
fig.tight_layout()
fig.savefig("mnist_generation.png", dpi=100)
plt.show()
