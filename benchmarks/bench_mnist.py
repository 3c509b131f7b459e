"""Class-conditional MNIST generation from 200 training images: GPA against density estimators.

What is measured
----------------
Every method sees the same 200 training images, 20 per digit, drawn with a fixed seed from the
official 60 000 training images (:func:`sklearn_gpa.datasets.fetch_mnist`), and generates
``--n-generated`` images of each digit (60) (one model per digit, or one class-conditional fit).
Generated pixels are clipped to [0, 1] for every method, as a user showing them would.

(a) **digit accuracy**: a small CNN trained once on the 60 000 training images (2 epochs, cached
    in the scikit-learn data home; its accuracy on the 10 000 test images is printed) labels
    each generated image; the share labelled with the intended digit.
(b) **novelty**: each generated image's Euclidean distance to its nearest training image,
    divided by the median of the same distance for held-out real test images of that digit.
    A ratio near 1 means "as far from the training images as a fresh real image"; near 0,
    copies.  "copies %" is the share of generated images nearer to a training image than 95 %
    of the held-out real images are (5 % for real images, by construction).
(c) **distance to real images of the digit**: squared MMD (Gaussian kernel, unbiased) between
    the generated and ``--n-held-out`` (300) held-out test images of the same digit, averaged over
    the digits, in pixel space and in the classifier's 128-dimensional penultimate layer
    ("features"); the kernel width is the median heuristic of the held-out images alone, so it
    is the same for every method.  "FD" is the Frechet distance between Gaussians fitted to
    the features of all generated and all held-out images (FID's formula, on this classifier).

Two reference rows read the scale: **real (held-out)** scores other real test images as if
generated (``--n-generated`` per digit: what a perfect generator reaches), **training copies**
the 200 training images themselves, each repeated (a perfect memoriser).

Methods
-------
* ``GaussianMixture`` per digit: ``n_components`` in {1, 2, 3}, ``covariance_type`` in
  {"spherical", "diag"} and ``reg_covar`` in {1e-3, 1e-2, 1e-1} chosen per digit by 5-fold
  cross-validated log-likelihood on its 20 images (``GridSearchCV``; ``reg_covar`` matters: a
  pixel that is 0 in every training image otherwise gets a variance of 1e-6).
* ``KernelDensity`` per digit (Gaussian kernel), bandwidth chosen among 30 values from 0.01 to
  10 by 5-fold cross-validated log-likelihood.
* **GPA (pixels, MLP, logistic prior)**: ``GPATransporter`` in generation mode, ``fit(X, y)``
  (one flow per digit, all ten batched), KL, ``L = 1``, logistic prior, pixel units
  (``standardize=False``), as papers 000 and 002; settings in ``GPA_SETTINGS``.  The
  discriminator's first layer is wide (256): the particles move along its gradient, which
  lies in the span of that layer's rows.  ``n_particles`` is 10 x ``--n-generated`` (600 for
  the 200 images by default, the papers' M = 3 N).  Two rows come from one fit:
  **particles**, the trained particles (the papers' generated samples), and **sample()**,
  fresh prior draws pushed through the stored flow.
* **GPA (pixels, MLP, gaussian_fit prior)**: the same from ``source="gaussian_fit"``, a
  Gaussian with each digit's mean and diagonal covariance (the library's moment-matched prior).
* **GPA (pixels, CNN)**: the convolutional discriminator of Table 4b of paper 000
  (``discriminator="cnn"``), when the installed version has it; about 1.7 s per step on 2 CPU
  cores, so a short run (``CNN_SETTINGS``).
* **LatentGPA (default encoder)**: the flow, with ``GPA_SETTINGS``, on the codes of the
  default standardise + PCA(90 % variance) encoder.
* **LatentGPA (autoencoder)**: on the 16 codes of a convolutional ``sklearn_gpa.Autoencoder``
  (300 epochs), in standardised units with the library's default ``L = 10, dt = 0.01``
  (``AUTOENCODER_FLOW``).

Every encoder is fitted on the 200 training images only, and decoded without residual.

A small WGAN-GP is not run: 200 images are far too few for its generator (paper 000, Fig. 6).

How to run (from the repository root)
-------------------------------------
::

    python benchmarks/bench_mnist.py --quick   # 30 images per digit, fewer steps (a smoke run)
    python benchmarks/bench_mnist.py           # 60 images per digit

Results go to ``benchmarks/results/bench_mnist.{json,md}`` and a grid of generated images to
``benchmarks/results/bench_mnist.png`` (``bench_mnist_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import get_data_home
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity, NearestNeighbors

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sklearn_gpa import GPATransporter, LatentGPA
from sklearn_gpa.datasets import fetch_mnist
from sklearn_gpa.metrics import mmd

RESULTS = REPO / "benchmarks" / "results"
SEED = 0
N_PER_DIGIT = 20
IMAGE_SHAPE = (28, 28)

GPA_SETTINGS = {
    "f": "kl",
    "L": 1.0,
    "dt": 0.5,
    "n_steps": 400,
    "source": "logistic",
    "standardize": False,
    "hidden_layer_sizes": (256, 64, 32),
    "n_critic": 5,
    "log_every": 100,
}

# The CNN discriminator costs 0.2-0.7 s per step on 2 CPU cores: a short run, from the
# moment-matched prior (from the logistic prior, 150 steps leave the particles far from the
# images: divergence 0.6, twice the images' norm).
CNN_SETTINGS = {
    "discriminator": "cnn",
    "source": "gaussian_fit",
    "image_shape": IMAGE_SHAPE,
    "conv_channels": (8, 16, 32),
    "hidden_layer_sizes": (64,),
    "activation": "leaky_relu",
    "n_critic": 2,
    "dt": 1.0,
    "n_steps": 150,
}

# The autoencoder's codes have no natural unit: the flow runs in standardised units, with the
# library's default L and dt.
AUTOENCODER_FLOW = {"standardize": True, "L": 10.0, "dt": 0.01, "n_steps": 300}


# --------------------------------------------------------------------------- data
def load_data(n_held_out, n_reference, data_home):
    """200 training images (20 per digit), held-out test images per digit, full train set."""
    X_all, y_all = fetch_mnist(subset="train", data_home=data_home, return_X_y=True)
    X_test, y_test = fetch_mnist(subset="test", data_home=data_home, return_X_y=True)
    rng = np.random.RandomState(SEED)
    train = np.concatenate(
        [rng.choice(np.flatnonzero(y_all == d), N_PER_DIGIT, replace=False) for d in range(10)]
    )
    # Two disjoint held-out sets: one the metrics compare against, one the "real" reference row.
    held_out, reference = [], []
    for d in range(10):
        rows = rng.permutation(np.flatnonzero(y_test == d))
        held_out.append(rows[:n_held_out])
        reference.append(rows[n_held_out : n_held_out + n_reference])
    held_out, reference = np.concatenate(held_out), np.concatenate(reference)
    return {
        "X_train": X_all[train].astype(np.float64),
        "y_train": y_all[train],
        "X_held_out": X_test[held_out].astype(np.float64),
        "y_held_out": y_test[held_out],
        "X_reference": X_test[reference].astype(np.float64),
        "y_reference": y_test[reference],
        "X_full": X_all,
        "y_full": y_all,
        "X_test": X_test,
        "y_test": y_test,
    }


# --------------------------------------------------------------------------- classifier
def _classifier_network():
    torch.manual_seed(SEED)
    return torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, *IMAGE_SHAPE)),
        torch.nn.Conv2d(1, 16, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 7 * 7, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )


def train_classifier(X, y, *, n_epochs=2, batch_size=128):
    network = _classifier_network()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    X, y = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(n_epochs):
        order = torch.randperm(len(X), generator=generator)
        for start in range(0, len(X), batch_size):
            batch = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(network(X[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return network.eval()


def load_classifier(data, data_home):
    """The CNN trained on the full training set, cached in the data home after the first run."""
    path = Path(get_data_home(data_home)) / "sklearn_gpa" / "bench_mnist_cnn.pt"
    if path.exists():
        network = _classifier_network()
        network.load_state_dict(torch.load(path))
        return network.eval(), None
    start = time.perf_counter()
    network = train_classifier(data["X_full"], data["y_full"])
    torch.save(network.state_dict(), path)
    return network, time.perf_counter() - start


@torch.no_grad()
def classify(network, X):
    """Predicted digits and the 128-dimensional penultimate-layer features."""
    X = torch.as_tensor(np.asarray(X), dtype=torch.float32)
    features = torch.cat([network[:-1](X[i : i + 2000]) for i in range(0, len(X), 2000)])
    return network[-1](features).argmax(1).numpy(), features.numpy().astype(np.float64)


# --------------------------------------------------------------------------- methods
def _per_digit(fit_and_sample, X, y, n_per_digit, seed):
    parts = [fit_and_sample(X[y == d], n_per_digit, seed + d) for d in range(10)]
    return np.concatenate(parts), np.repeat(np.arange(10), n_per_digit)


def gaussian_mixture(X, y, n_per_digit, seed):
    grid = {
        "n_components": [1, 2, 3],
        "covariance_type": ["spherical", "diag"],
        "reg_covar": [1e-3, 1e-2, 1e-1],
    }

    def fit_and_sample(X_digit, n, digit_seed):
        search = GridSearchCV(GaussianMixture(random_state=digit_seed), grid, cv=5)
        model = search.fit(X_digit).best_estimator_
        gaussian_mixture.chosen.append(search.best_params_)
        return model.sample(n)[0][np.random.RandomState(digit_seed).permutation(n)]

    gaussian_mixture.chosen = []
    return _per_digit(fit_and_sample, X, y, n_per_digit, seed)


def kernel_density(X, y, n_per_digit, seed):
    def fit_and_sample(X_digit, n, digit_seed):
        search = GridSearchCV(KernelDensity(), {"bandwidth": np.logspace(-2, 1, 30)}, cv=5)
        model = search.fit(X_digit).best_estimator_
        kernel_density.chosen.append(float(model.bandwidth))
        return model.sample(n, random_state=digit_seed)

    kernel_density.chosen = []
    return _per_digit(fit_and_sample, X, y, n_per_digit, seed)


def _generated(model, particles, n_per_digit, seed):
    """The papers' samples (the trained particles) and fresh draws pushed through the flow."""
    y = np.repeat(np.arange(10), n_per_digit)
    labels = (
        model.transporter_.particle_labels_
        if hasattr(model, "transporter_")
        else model.particle_labels_
    )
    order = np.argsort(labels, kind="stable")
    return {
        "particles": (particles[order], labels[order]),
        "sample()": (model.sample(len(y), y=y, random_state=seed), y),
    }


def gpa_pixels(X, y, n_per_digit, seed, **overrides):
    params = {**GPA_SETTINGS, "n_particles": 10 * n_per_digit, **overrides}
    model = GPATransporter(random_state=seed, **params).fit(X, y)
    return _generated(model, model.particles_, n_per_digit, seed + 1)


def latent_gpa(X, y, n_per_digit, seed, encoder=None, **overrides):
    params = {**GPA_SETTINGS, "n_particles": 10 * n_per_digit, **overrides}
    if encoder is not None:
        encoder.set_params(random_state=seed)
    flow = GPATransporter(random_state=seed, **params)
    model = LatentGPA(encoder=encoder, transporter=flow, residual="drop").fit(X, y)
    return _generated(model, model.particles_, n_per_digit, seed + 1)


def available_methods(quick):
    steps = {"n_steps": 150} if quick else {}
    methods = {
        "GaussianMixture": gaussian_mixture,
        "KernelDensity": kernel_density,
        "GPA (pixels, MLP, logistic prior)": lambda X, y, n, s: gpa_pixels(X, y, n, s, **steps),
        "GPA (pixels, MLP, gaussian_fit prior)": lambda X, y, n, s: gpa_pixels(
            X, y, n, s, source="gaussian_fit", **steps
        ),
    }
    if "discriminator" in GPATransporter().get_params():
        cnn = {**CNN_SETTINGS, **({"n_steps": 30} if quick else {})}
        methods["GPA (pixels, CNN)"] = lambda X, y, n, s: gpa_pixels(X, y, n, s, **cnn)
    methods["LatentGPA (default encoder)"] = lambda X, y, n, s: latent_gpa(X, y, n, s, **steps)
    try:
        from sklearn_gpa.autoencoder import Autoencoder
    except ImportError:
        return methods
    methods["LatentGPA (autoencoder)"] = lambda X, y, n, s: latent_gpa(
        X,
        y,
        n,
        s,
        encoder=Autoencoder(16, image_shape=IMAGE_SHAPE, max_iter=100 if quick else 300),
        **{**AUTOENCODER_FLOW, **steps},
    )
    return methods


# --------------------------------------------------------------------------- metrics
def frechet_distance(A, B):
    """Frechet distance of Gaussians fitted to A and B (FID's formula).

    The trace of ``(C_a C_b)^(1/2)`` is taken as that of the symmetric
    ``(C_a^(1/2) C_b C_a^(1/2))^(1/2)``: stable when a covariance is singular.
    """
    mean = A.mean(0) - B.mean(0)
    cov_a, cov_b = np.cov(A, rowvar=False), np.cov(B, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0.0, None)).sum()
    return float(mean @ mean + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)


def _median_pairwise_distance(X):
    distances = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    return float(np.median(distances[np.triu_indices(len(X), 1)]))


class Scorer:
    """Scores generated images against fixed held-out real images and the training images."""

    def __init__(self, data, network):
        self.network = network
        self.X_train, self.y_train = data["X_train"], data["y_train"]
        self.X_real, self.y_real = data["X_held_out"], data["y_held_out"]
        self.nearest = NearestNeighbors(n_neighbors=1).fit(self.X_train)
        real_distance = self.nearest.kneighbors(self.X_real)[0].ravel()
        self.real_median = {d: np.median(real_distance[self.y_real == d]) for d in range(10)}
        self.copy_threshold = np.percentile(real_distance, 5)
        _, self.real_features = classify(network, self.X_real)
        digits = range(10)
        self.width_pixels = {
            d: _median_pairwise_distance(self.X_real[self.y_real == d]) for d in digits
        }
        self.width_features = {
            d: _median_pairwise_distance(self.real_features[self.y_real == d]) for d in digits
        }

    def __call__(self, X, y):
        X = np.clip(X, 0.0, 1.0)
        predicted, features = classify(self.network, X)
        distance = self.nearest.kneighbors(X)[0].ravel()
        ratio = distance / np.array([self.real_median[d] for d in y])
        mmd_pixels, mmd_features = [], []
        for d in range(10):
            real, fake = self.y_real == d, y == d
            mmd_pixels.append(mmd(X[fake], self.X_real[real], bandwidth=self.width_pixels[d]))
            mmd_features.append(
                mmd(features[fake], self.real_features[real], bandwidth=self.width_features[d])
            )
        return {
            "digit_accuracy": float(np.mean(predicted == y)),
            "worst_digit_accuracy": float(min(np.mean(predicted[y == d] == d) for d in range(10))),
            "novelty_median": float(np.median(ratio)),
            "copies": float(np.mean(distance < self.copy_threshold)),
            "mmd_pixels": float(np.mean(mmd_pixels)),
            "mmd_features": float(np.mean(mmd_features)),
            "frechet_features": frechet_distance(features, self.real_features),
        }


# --------------------------------------------------------------------------- report
COLUMNS = [
    ("digit_accuracy", "digit acc. (a)", "{:.1%}"),
    ("worst_digit_accuracy", "worst digit", "{:.0%}"),
    ("novelty_median", "novelty (b)", "{:.2f}"),
    ("copies", "copies", "{:.0%}"),
    ("mmd_pixels", "MMD² pixels (c)", "{:.3f}"),
    ("mmd_features", "MMD² features (c)", "{:.3f}"),
    ("frechet_features", "FD features", "{:.1f}"),
    ("seconds", "time s", "{:.0f}"),
]


def markdown_table(rows):
    lines = [
        "| method | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name, result in rows.items():
        cells = [
            "" if result.get(key) is None else fmt.format(result[key]) for key, _, fmt in COLUMNS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_grid(samples, data, path, n_show=8, panels_per_row=5):
    """One panel per method, ``n_show`` images of each digit, one digit per row of a panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sklearn_gpa.plotting import plot_images

    panels = {"training images": (data["X_train"], data["y_train"]), **samples}
    n_rows = -(-len(panels) // panels_per_row)
    fig, axes = plt.subplots(
        n_rows, panels_per_row, figsize=(2.6 * panels_per_row, 3.6 * n_rows), squeeze=False
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    for ax, (name, (X, y)) in zip(axes.flat, panels.items()):
        rows = np.concatenate([np.flatnonzero(y == d)[:n_show] for d in range(10)])
        plot_images(np.clip(X[rows], 0, 1), IMAGE_SHAPE, n_cols=n_show, ax=ax, vmin=0, vmax=1)
        ax.set_title(textwrap.fill(name, 30), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--n-generated", type=int, default=None, help="images per digit")
    parser.add_argument("--n-held-out", type=int, default=None, help="real images per digit")
    parser.add_argument("--methods", nargs="*", default=None, help="names of methods to run")
    parser.add_argument("--data-home", default=None)
    args = parser.parse_args(argv)
    n_generated = args.n_generated or (30 if args.quick else 60)
    n_held_out = args.n_held_out or (100 if args.quick else 300)
    torch.manual_seed(SEED)

    data = load_data(n_held_out, n_generated, args.data_home)
    network, training_seconds = load_classifier(data, args.data_home)
    test_accuracy = float(np.mean(classify(network, data["X_test"])[0] == data["y_test"]))
    print(f"classifier: test accuracy {test_accuracy:.2%} on the 10 000 test images", end="")
    print("" if training_seconds is None else f" (trained in {training_seconds:.0f} s)")
    score = Scorer(data, network)

    rows = {
        "real (held-out)": score(data["X_reference"], data["y_reference"]),
        "training copies": score(*_repeat_training(data, n_generated)),
    }
    samples, notes = {}, {}
    methods = available_methods(args.quick)
    for name, method in methods.items():
        if args.methods and name not in args.methods:
            continue
        start = time.perf_counter()
        outputs = method(data["X_train"], data["y_train"], n_generated, SEED)
        seconds = time.perf_counter() - start
        if isinstance(outputs, tuple):
            outputs = {"": outputs}
        for variant, (X, y) in outputs.items():
            label = f"{name}: {variant}" if variant else name
            rows[label] = {**score(X, y), "seconds": seconds}
            samples[label] = (X, y)
            print(f"{label}: {seconds:.0f} s, digit accuracy {rows[label]['digit_accuracy']:.1%}")
        chosen = getattr(method, "chosen", None)
        if chosen:
            notes[name] = chosen

    table = markdown_table(rows)
    print()
    print(table)
    stem = "bench_mnist_quick" if args.quick else "bench_mnist"
    RESULTS.mkdir(exist_ok=True)
    save_grid(samples, data, RESULTS / f"{stem}.png")
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "command": "python benchmarks/bench_mnist.py" + (" --quick" if args.quick else ""),
        "n_generated_per_digit": n_generated,
        "n_held_out_per_digit": n_held_out,
        "classifier_test_accuracy": test_accuracy,
        "gpa_settings": {**GPA_SETTINGS, "n_particles": 10 * n_generated},
        "selected_hyperparameters": notes,
        "results": rows,
    }
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    header = (
        f"# MNIST from 200 training images\n\n`{record['command']}` ({record['date']}, "
        f"{record['machine']}); classifier test accuracy {test_accuracy:.2%}; "
        f"{n_generated} generated and {n_held_out} held-out real images per digit.\n\n"
    )
    (RESULTS / f"{stem}.md").write_text(header + table + "\n")


def _repeat_training(data, n_per_digit):
    rows = np.concatenate(
        [np.resize(np.flatnonzero(data["y_train"] == d), n_per_digit) for d in range(10)]
    )
    return data["X_train"][rows], data["y_train"][rows]


if __name__ == "__main__":
    main()
