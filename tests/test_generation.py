"""Generation with default parameters, the scaling rule, its warning and pandas output."""

import pickle
import warnings

import numpy as np
import pytest
from scipy import special
from sklearn.datasets import load_diabetes, load_digits, make_moons
from sklearn.neighbors import NearestNeighbors
from sklearn.svm import SVC

from sklearn_gpa import GPATransporter, LatentGPA
from sklearn_gpa._prior import Prior, _binned_normal_cdf, _normal_scores, match_marginals
from sklearn_gpa._scaling import (
    Standardization,
    feature_spreads,
    resolve_scaling,
    robust_scale,
    unit_spread_ratio,
)
from sklearn_gpa.utils import stack_domains


def _mixed_units(n=120, seed=0):
    """Two classes; one feature in thousands, two in units, one in hundredths."""
    rng = np.random.RandomState(seed)
    y = np.repeat([0, 1], n // 2)
    X = np.column_stack(
        [
            rng.normal(1000 + 300 * y, 200),
            rng.normal(5 + y, 1),
            rng.normal(2 - y, 1),
            rng.normal(0.1 + 0.05 * y, 0.01),
        ]
    )
    return X, y


def _pixels(n=100, seed=0):
    """Images in [0, 16] whose pixels share a unit; some are almost never lit."""
    rng = np.random.RandomState(seed)
    X = np.clip(rng.normal(8, 4, (n, 36)), 0, 16)
    X[:, :3] = 0.0
    X[rng.rand(n) < 0.05, 0] = 16.0  # a rarely lit pixel: tiny spread, full range
    return X


def test_auto_scaling_per_feature_for_tables_common_for_pixels():
    X, _ = _mixed_units()
    assert unit_spread_ratio(X) > 100
    assert resolve_scaling("auto", X) == "per_feature"
    assert resolve_scaling(True, X) == "per_feature"
    pixels = _pixels()
    assert unit_spread_ratio(pixels) == pytest.approx(1.0, abs=0.3)
    assert resolve_scaling("auto", pixels) == "common"
    assert resolve_scaling("per_feature", pixels) == "per_feature"
    assert resolve_scaling(False, X) is None
    # A few features whose ranges agree are still a table (an age, a count, a year).
    assert resolve_scaling("auto", pixels[:, 3:10]) == "per_feature"
    with pytest.raises(ValueError, match="standardize must be one of"):
        resolve_scaling("columns", X)


def test_per_feature_scaling_gives_each_feature_the_same_spread():
    X, _ = _mixed_units()
    scaling = Standardization.fit(X, "per_feature")
    Z = scaling.transform(X)
    q75, q25 = np.percentile(Z, [75, 25], axis=0)
    # Each feature's robust spread is 1 / sqrt(d): the cloud keeps a radius of about one.
    np.testing.assert_allclose((q75 - q25) / 1.349, 0.5, rtol=1e-9)
    np.testing.assert_allclose(scaling.inverse_transform(Z), X)
    common = Standardization.fit(X, "common").transform(X)
    # One common scale leaves the hundredths feature at about 1e-5 of the cloud's radius.
    assert np.ptp(common[:, 3]) < 1e-3 < np.ptp(Z[:, 3])


def test_warns_when_a_common_scale_meets_different_units():
    X, y = _mixed_units()
    for setting, data in (("common", X), (False, X / 100)):
        with pytest.warns(UserWarning, match="ranges differ by a factor of"):
            GPATransporter(standardize=setting, n_steps=2).fit(data, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpa = GPATransporter(n_steps=2).fit(X, y)
        GPATransporter(standardize="common", n_steps=2).fit(_pixels())
    assert gpa._scaling.kind == "per_feature"
    assert gpa.scale_.shape == (4,)


def test_auto_scales_a_feature_in_another_unit_on_its_own():
    """Rates and flags in [0, 1] beside one byte count in the tens of thousands: the ranges
    agree (90th to 10th percentile), so one common scale, but not the count's, which
    would set it and drown the rest."""
    rng = np.random.RandomState(0)
    X = np.column_stack(
        [rng.rand(200, 30), rng.randint(0, 2, (200, 10)), rng.exponential(1e4, 200)]
    )
    assert resolve_scaling("auto", X) == "common"
    scale = Standardization.fit(X, "auto").scale
    assert scale.shape == (41,)
    assert scale[40] == pytest.approx(feature_spreads(X)[40] * np.sqrt(41))
    np.testing.assert_allclose(scale[:40], robust_scale(X[:, :40]) * np.sqrt(41 / 40))
    # Every feature's squared spread still averages 1 / n_features: a cloud of radius one.
    spreads = feature_spreads(Standardization.fit(X, "auto").transform(X))
    assert np.sum(spreads**2) == pytest.approx(1.0)
    # Asked for, one common scale is one scale, with a warning that names the count.
    with pytest.warns(UserWarning, match=r"1 feature\(s\) \(index 40\) exceed 100 times"):
        gpa = GPATransporter(standardize="common", n_steps=2).fit(X)
    assert np.ndim(gpa.scale_) == 0
    # "auto", which scales the count on its own, does not warn.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GPATransporter(n_steps=2).fit(X)
    # Without a feature in another unit the common scale is one number, as it was.
    assert np.ndim(Standardization.fit(X[:, :40], "auto").scale) == 0
    # A quiet feature made odd by one artefact value is not blown up: never a smaller
    # scale than the common one.
    genes = rng.normal(size=(100, 200))
    genes[:, 0] = rng.normal(0.0, 0.05, 100)
    genes[0, 0] = 80.0
    scale = Standardization.fit(genes, "auto").scale
    assert scale[0] == pytest.approx(scale[1])


def test_defaults_generate_mixed_units_within_each_features_range():
    X, y = _mixed_units()
    gpa = GPATransporter(random_state=0).fit(X, y)
    assert gpa.source == "copula_fit" and len(gpa.particles_) == 3 * len(X)
    samples = gpa.sample(200, y=np.repeat([0, 1], 100), random_state=1)
    for k in (0, 1):
        real, fake = X[y == k], samples[k * 100 : (k + 1) * 100]
        # Every feature, the hundredths one included, keeps its class mean and spread.
        np.testing.assert_array_less(
            np.abs(fake.mean(0) - real.mean(0)), 0.35 * real.std(0), err_msg=f"class {k}"
        )
        np.testing.assert_array_less(fake.std(0), 1.5 * real.std(0))
        assert np.all((fake >= X.min(0)) & (fake <= X.max(0)))  # clipped to the range
    # The pre-17 defaults (one common scale, normal prior): the small feature is noise.
    old = GPATransporter(source="normal", standardize="common", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        noisy = old.fit(X, y).sample(200, random_state=1, clip=False)
    assert noisy[:, 3].std() > 10 * X[:, 3].std()


def test_defaults_generate_digits():
    X, y = load_digits(return_X_y=True)
    rng = np.random.RandomState(0)
    classes = [0, 1, 3]
    train = np.concatenate([rng.choice(np.flatnonzero(y == c), 20, replace=False) for c in classes])
    others = np.setdiff1d(np.flatnonzero(np.isin(y, classes)), train)
    recogniser = SVC().fit(X[others], y[others])
    gpa = GPATransporter(random_state=0).fit(X[train], y[train])
    asked = np.repeat(classes, 30)
    samples = gpa.sample(90, y=asked, random_state=0)
    recognised = np.mean(recogniser.predict(np.clip(samples, 0, 16)) == asked)
    assert recognised >= 0.9
    noise = rng.uniform(0, 16, (90, 64))
    real = X[others[:90]]

    def nearest(A):
        return np.sqrt(((A[:, None] - X[train][None]) ** 2).sum(-1)).min(1)

    # Samples are about as far from the training digits as unseen real digits are, and far
    # nearer than noise of the same range.
    assert np.median(nearest(samples)) < 1.5 * np.median(nearest(real))
    assert np.median(nearest(samples)) < 0.5 * np.median(nearest(noise))


def test_gaussian_fit_prior_gives_constant_features_no_variance():
    rng = np.random.RandomState(0)
    rows = np.column_stack([rng.normal(size=(30, 3)), np.zeros(30)])
    prior = Prior.fit("gaussian_fit", [rows])
    draws = prior.draw(0, 500, rng)
    assert np.all(draws[:, 3] == 0.0)
    np.testing.assert_allclose(draws[:, :3].std(0), rows[:, :3].std(0), rtol=0.2)


def _two_modes(n=90, seed=0):
    """Two classes; in each, the first feature sits near -3 or +3, never in between."""
    rng = np.random.RandomState(seed)
    y = np.repeat([0, 1], n)
    mode = np.where(rng.rand(2 * n) < 0.5, -3.0, 3.0)
    X = np.column_stack(
        [mode + rng.normal(0, 0.5, 2 * n), rng.normal(0, 1, 2 * n) + 4 * y, rng.normal(size=2 * n)]
    )
    return X, y


def test_default_priors_keep_the_modes_of_a_class_apart():
    X, y = _two_modes()
    assert not np.any(np.abs(X[:, 0]) < 1.5)
    asked = np.repeat([0, 1], 1000)

    def between_modes(source):
        gpa = GPATransporter(source=source, random_state=0).fit(X, y)
        return gpa, np.mean(np.abs(gpa.sample(2000, y=asked, random_state=0)[:, 0]) < 1.5)

    gpa, gap = between_modes("mixture_fit")
    assert GPATransporter().source == "copula_fit"
    assert all(m is not None and len(m[0]) >= 2 for m in gpa.prior_.mixture)
    # The copula (the default) draws the bimodal feature from its own quantiles, which jump
    # the gap: no prior draw falls between the modes.  The flow, where it runs, moves some
    # there (measured 1.15 % of the samples with random_state 0 and 2, none with 1).
    copula, gap_copula = between_modes("copula_fit")
    assert gap_copula < 0.015
    draws = copula.prior_.draw(0, 4000, np.random.RandomState(0))
    assert np.mean(np.abs(copula._scaling.inverse_transform(draws)[:, 0]) < 1.5) == 0
    # One Gaussian per class starts a share of the particles between the modes, and the
    # flow, stopped once its particles look like a fresh sample, leaves some there
    # (measured: 1.9 % of the samples).  The mixture's draws start in the modes, but where
    # a flow moves it too puts some there: 1.05 % (its class 1 flow moves 50 steps, on a
    # first-check score of 1.01; random_state 1 and 2: 0.95 % and 0.65 %, as before the
    # rule counted strays per feature, when random_state 0 gave 0.35 %).
    _, gap_single = between_modes("gaussian_fit")
    assert gap < 0.012 < 0.015 < gap_single


def test_mixture_prior_keeps_one_gaussian_for_one_mode_or_many_features():
    rng = np.random.RandomState(0)
    one_mode = rng.normal(size=(200, 3))
    pixels = rng.normal(size=(200, 64))
    two_modes = _two_modes()[0]
    prior = Prior.fit("mixture_fit", [one_mode, two_modes], np.random.RandomState(1))
    assert prior.mixture[0] is None and prior.mixture[1] is not None
    assert Prior.fit("mixture_fit", [pixels], rng).mixture == [None]
    # Seeded by the random state: the same fit twice, the same draws.
    again = Prior.fit("mixture_fit", [one_mode, two_modes], np.random.RandomState(1))
    np.testing.assert_array_equal(again.mixture[1][1], prior.mixture[1][1])
    draws = prior.draw(1, 4000, np.random.RandomState(2))
    assert np.mean(np.abs(draws[:, 0]) < 1.5) < 0.01
    np.testing.assert_allclose(draws.mean(0), two_modes.mean(0), atol=0.25)


def _awkward_table(n=300, seed=0):
    """A binary feature (0 in 90 % of the rows), a constant one, a Cauchy-tailed one and
    one that follows it."""
    rng = np.random.RandomState(seed)
    tail = rng.standard_t(1, n)
    return np.column_stack(
        [np.where(rng.rand(n) < 0.9, 0.0, 1.0), np.full(n, 9.0), tail, 0.1 * tail + rng.rand(n)]
    )


def test_copula_prior_keeps_every_features_own_distribution():
    X = _awkward_table()
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    draws = {
        source: Prior.fit(source, [X], np.random.RandomState(1)).draw(
            0, 20_000, np.random.RandomState(2)
        )
        for source in ("mixture_fit", "copula_fit")
    }
    copula, mixture = draws["copula_fit"], draws["mixture_fit"]
    # The binary feature keeps its two values in their proportions (measured 0.859 zeros
    # against 0.860; a Gaussian mixture never draws 0 or 1 exactly), the constant stays constant.
    assert np.mean(np.isin(copula[:, 0], [0.0, 1.0])) > 0.99
    assert abs(np.mean(copula[:, 0] == 0) - np.mean(X[:, 0] == 0)) < 0.02
    assert np.mean(np.isin(mixture[:, 0], [0.0, 1.0])) == 0
    assert np.all(copula[:, 1] == 9.0) and mixture[:, 1].std() > 0.01
    # The heavy tail's distribution is the rows' own: the share of draws below each of the
    # rows' quantiles is its level.
    quantiles = np.quantile(X[:, 2], levels)
    below = {key: np.mean(d[:, 2, None] <= quantiles, axis=0) for key, d in draws.items()}
    np.testing.assert_allclose(below["copula_fit"], levels, atol=0.02)
    assert np.abs(below["mixture_fit"] - levels).max() > 0.05
    # Every draw lies within the rows' range, and the dependence survives.
    assert np.all((copula >= X.min(0)) & (copula <= X.max(0)))
    assert np.corrcoef(copula[:, 2], copula[:, 3], rowvar=False)[0, 1] > 0.5


def _parabola(n=60, seed=0):
    """A curved dependence (the second feature is the square of the first) and six noise
    features: too few rows for BIC to afford a second full-covariance component."""
    rng = np.random.RandomState(seed)
    x = rng.normal(size=n)
    return np.column_stack([x, x**2 + 0.1 * rng.normal(size=n), rng.normal(size=(n, 6))])


def test_copula_prior_follows_a_curve_that_one_gaussian_copula_smears():
    X = _parabola()
    prior = Prior.fit("copula_fit", [X], np.random.RandomState(1))
    # BIC keeps one Gaussian for these rows' scores; the copula then draws from a kernel
    # density of the scores, not from that Gaussian.
    assert prior.mixture == [None] and prior.kernel[0] is not None
    draws = prior.draw(0, 20_000, np.random.RandomState(2))
    # Off the curve: median |x1 - x0^2| measured 0.66 (one Gaussian copula, before: 0.88;
    # the rows themselves: 0.09).
    assert np.median(np.abs(draws[:, 1] - draws[:, 0] ** 2)) < 0.77
    # Every feature keeps its own distribution and range, as with a Gaussian copula.
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    for j in range(X.shape[1]):
        below = np.mean(draws[:, j, None] <= np.quantile(X[:, j], levels), axis=0)
        np.testing.assert_allclose(below, levels, atol=0.03)
    assert np.all((draws >= X.min(0)) & (draws <= X.max(0)))
    # Not copies: about as far from the rows as fresh rows of the same law (measured 0.91;
    # before 1.04).
    fresh = _parabola(20_000, seed=1)
    nearest = NearestNeighbors(n_neighbors=1).fit(X)
    ratio = np.median(nearest.kneighbors(draws)[0]) / np.median(nearest.kneighbors(fresh)[0])
    assert 0.6 < ratio < 1.2


def test_copula_kernel_keeps_the_scores_mean_and_spread():
    X = _parabola()
    kernel = Prior.fit("copula_fit", [X], np.random.RandomState(1)).kernel[0]
    scores = _normal_scores(X)
    rng = np.random.RandomState(0)
    noise = rng.standard_normal((200_000, X.shape[1]))
    draws = kernel.centres[rng.randint(len(X), size=len(noise))] + noise @ kernel.factor.T
    np.testing.assert_allclose(draws.mean(0), scores.mean(0), atol=0.01)
    np.testing.assert_allclose(draws.var(0), scores.var(0), rtol=0.02)
    # The marginal distribution functions that map draws back are the draws' own.
    probabilities = kernel.probabilities(noise[:50_000], np.random.RandomState(1))
    np.testing.assert_allclose(np.mean(probabilities <= 0.25, axis=0), 0.25, atol=0.01)


def _sparse_pixels(n, d, seed=0):
    """Whole-number pixels in [0, 16], each unlit (0) in about 60 % of the rows."""
    rng = np.random.RandomState(seed)
    return np.where(rng.rand(n, d) < 0.6, 0.0, rng.randint(1, 17, (n, d)).astype(float))


@pytest.mark.parametrize("d", [64, 600])
def test_copula_prior_keeps_each_pixels_own_values_above_fifty_features(d):
    """Images get the copula too (before, above 50 features the prior was one Gaussian, whose
    draws are never exactly 0 nor whole numbers: a forest told them from real images)."""
    pixels = _sparse_pixels(30, d)
    prior = Prior.fit("copula_fit", [pixels], np.random.RandomState(1))
    assert prior.mixture == [None] and prior.kernel[0] is not None
    # Above _FULL_COVARIANCE_MAX_FEATURES the kernel's noise is per feature: no d x d matrix.
    assert prior.kernel[0].factor.ndim == (2 if d <= 500 else 1)
    draws = prior.draw(0, 3000, np.random.RandomState(2))
    assert np.all((draws >= pixels.min(0)) & (draws <= pixels.max(0)))
    # Each pixel is unlit in as many draws as rows (a Gaussian: in none).
    unlit = np.mean(draws == 0, axis=0) - np.mean(pixels == 0, axis=0)
    assert np.abs(unlit).mean() < 0.03
    # Draws are not copies of the 30 rows.
    nearest = NearestNeighbors(n_neighbors=1).fit(pixels).kneighbors(draws)[0]
    assert np.min(nearest) > 0


def test_copula_prior_stores_a_bounded_quantile_table():
    rows = np.random.RandomState(0).standard_t(3, size=(5000, 3))
    rows[:3000, 1] = 0.0
    many = Prior.fit("copula_fit", [rows], 1)
    assert many.quantiles[0].shape == (1000, 3)
    levels = (np.arange(1000) + 0.5) / 1000
    np.testing.assert_allclose(many.quantiles[0], np.quantile(rows, levels, axis=0), atol=1e-12)


@pytest.mark.parametrize("n, d", [(20, 64), (300, 60)])
def test_copula_kernel_marginals_match_the_exact_sum(n, d):
    """The kernel's marginal distribution functions (binned and convolved, never pickled)
    are the exact mean of the kernels' normal distribution functions."""
    rng = np.random.RandomState(n)
    X = np.column_stack([rng.standard_t(3, size=n), np.zeros(n), rng.rand(n, d - 2)])
    kernel = Prior.fit("copula_fit", [X], 1).kernel[0]
    spreads = np.maximum(np.linalg.norm(kernel.factor, axis=1), 1e-12)
    np.testing.assert_array_equal(kernel.spreads, spreads)
    grid = np.linspace(-8, 8, 257)
    exact = special.ndtr((grid[:, None, None] - kernel.centres[None]) / spreads).mean(1)
    np.testing.assert_allclose(kernel.cdf, exact, atol=1e-12 if n <= 100 else 1e-4)
    binned = _binned_normal_cdf(kernel.centres, spreads)  # what more than 100 rows get
    np.testing.assert_allclose(binned, exact, atol=1e-4)
    assert np.all(np.diff(binned, axis=0) > -1e-12)
    # The constant feature (its spread is zero) is a step at its one score.
    np.testing.assert_allclose(binned[:, 1], np.sign(grid) / 2 + 0.5, atol=1e-12)
    again = pickle.loads(pickle.dumps(kernel))
    assert again._cdf is None and np.array_equal(again.cdf, kernel.cdf)
    np.testing.assert_array_equal(again.factor, kernel.factor)


def test_sample_returns_pandas_with_feature_names():
    pd = pytest.importorskip("pandas")
    X, y = _mixed_units()
    frame = pd.DataFrame(X, columns=["amount", "a", "b", "ratio"])
    gpa = GPATransporter(n_steps=5, random_state=0).set_output(transform="pandas")
    out = gpa.fit(frame, y).sample(7, y=np.zeros(7, dtype=int), random_state=0)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["amount", "a", "b", "ratio"] and out.shape == (7, 4)
    plain = GPATransporter(n_steps=5, random_state=0).fit(frame, y).sample(7, random_state=0)
    assert isinstance(plain, np.ndarray)
    # LatentGPA's samples too (they came back as an ndarray).
    latent = LatentGPA(random_state=0).set_output(transform="pandas").fit(frame, y)
    out = latent.sample(7, y=np.zeros(7, dtype=int), random_state=0)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == list(frame.columns)


def test_transport_with_defaults_keeps_mixed_units():
    """Integration with a per-feature batch effect on mixed-unit data: the default scaling
    brings the source to the target per feature; one common scale leaves the small
    feature far off."""
    X, y = _mixed_units(n=200, seed=1)
    rng = np.random.RandomState(2)
    source = rng.rand(len(X)) < 0.5
    shift = np.array([100.0, 0.5, -0.5, 0.02])
    Xs, Xt = X[source] * 1.1 + shift, X[~source]
    Xall, yall, domain = stack_domains(Xs, Xt, y[source], y[~source])
    moved = GPATransporter(random_state=0).fit_transform(Xall, yall, sample_domain=domain)
    moved = moved[: len(Xs)]
    for k in (0, 1):
        gap = np.abs(moved[y[source] == k].mean(0) - Xt[y[~source] == k].mean(0))
        np.testing.assert_array_less(gap, 0.3 * Xt.std(0), err_msg=f"class {k}")


def test_sample_snaps_few_valued_features_to_their_class_levels():
    rng = np.random.RandomState(0)
    n = 60
    y = np.repeat([0, 1], n)
    binary = rng.randint(0, 2, 2 * n).astype(float)
    ordinal = np.where(y == 0, rng.choice([1.0, 2.0, 3.0], 2 * n), 7.0)  # constant in class 1
    continuous = rng.normal(size=2 * n) + 3 * y
    X = np.column_stack([binary, ordinal, continuous])
    gpa = GPATransporter(n_steps=20, stop=None, random_state=0).fit(X, y)
    labels = np.repeat([0, 1], 50)
    snapped = gpa.sample(100, y=labels, random_state=1)
    assert set(np.unique(snapped[:, 0])) <= {0.0, 1.0}
    assert set(np.unique(snapped[labels == 0, 1])) <= {1.0, 2.0, 3.0}
    np.testing.assert_array_equal(snapped[labels == 1, 1], 7.0)
    raw = gpa.sample(100, y=labels, random_state=1, snap=False, marginals=False)
    # The flow's end points lie between the levels; the continuous feature is never snapped.
    assert len(np.unique(raw[:, 0])) > 2
    no_map = gpa.sample(100, y=labels, random_state=1, marginals=False)
    np.testing.assert_array_equal(no_map[:, 2], raw[:, 2])
    # Snapping moves each value to its nearest level.
    assert np.all(np.abs(no_map[:, 0] - raw[:, 0]) <= 0.5 + 1e-12)
    # With the marginal map (the default) the binary feature is already on its two levels.
    assert set(np.unique(gpa.sample(100, y=labels, random_state=1, snap=False)[:, 0])) == {0, 1}


def test_sample_keeps_the_precision_the_values_were_recorded_with():
    rng = np.random.RandomState(0)
    n = 120
    X = np.column_stack(
        [
            rng.poisson(40, n).astype(float),  # a count: whole numbers, many levels
            np.round(rng.normal(36.8, 0.4, n), 1),  # one decimal
            rng.normal(size=n),  # full precision
        ]
    )
    gpa = GPATransporter(n_steps=30, stop=None, random_state=0).fit(X)
    # The flow's end points (the marginal map alone already lands tied values on the rows').
    rounded = gpa.sample(200, random_state=1, marginals=False)
    raw = gpa.sample(200, random_state=1, snap=False, marginals=False)
    np.testing.assert_array_equal(rounded[:, 0], np.round(raw[:, 0]))
    np.testing.assert_array_equal(rounded[:, 1], np.round(raw[:, 1], 1))
    np.testing.assert_array_equal(rounded[:, 2], raw[:, 2])
    assert np.any(raw[:, 0] != np.round(raw[:, 0]))  # the flow's values are not whole


def test_sample_keeps_features_of_tiny_magnitude():
    # Values of order 1e-7 were within the 1e-6 tolerance of the whole number 0: every
    # sample's value was rounded to 0 (a constant feature, two distinct rows in all).
    X = load_diabetes().data[:200] * 1e-6
    samples = GPATransporter(random_state=0).fit(X).sample(100, random_state=0)
    spread = samples.std(0) / X.std(0)
    assert np.all((spread > 0.7) & (spread < 1.4)) and len(np.unique(samples, axis=0)) == 100


def _with_an_atom(n=150, seed=0):
    """A class whose first feature is 0 in 80 % of the rows (a trace element) and lognormal
    elsewhere, correlated with two continuous features."""
    rng = np.random.RandomState(seed)
    latent = rng.normal(size=n)
    atom = np.where(rng.rand(n) < 0.8, 0.0, np.exp(rng.normal(size=n)))
    return np.column_stack(
        [atom, latent + 0.3 * rng.normal(size=n), 2 * latent + (atom > 0) + rng.normal(size=n)]
    )


def test_sample_keeps_each_features_distribution_where_the_flow_moved():
    X = _with_an_atom()
    gpa = GPATransporter(n_steps=100, stop=None, random_state=0).fit(X)
    mapped = gpa.sample(3000, random_state=1)
    ends = gpa.sample(3000, random_state=1, marginals=False)
    # The flow moved every value off the atom (no draw is exactly 0 but for clipping); the
    # map gives it back in its proportion (measured 0.80 against 0.80 of the rows).
    assert np.mean(ends[:, 0] == 0.0) < 0.6
    assert abs(np.mean(mapped[:, 0] == 0.0) - np.mean(X[:, 0] == 0.0)) < 0.03
    levels = [0.1, 0.3, 0.5, 0.7, 0.9]
    for j in (1, 2):
        below = np.mean(mapped[:, j, None] <= np.quantile(X[:, j], levels), axis=0)
        np.testing.assert_allclose(below, levels, atol=0.04)
    # Increasing in every feature: each sample keeps its rank among the flow's end points.
    for j in range(3):
        order = np.argsort(ends[:, j], kind="stable")
        assert np.all(np.diff(mapped[order, j]) >= 0)
    # The dependence the flow learned is kept (rows: 0.86 between the continuous features).
    assert np.corrcoef(mapped[:, 1], mapped[:, 2])[0, 1] > 0.7


def test_the_marginal_map_leaves_a_feature_already_distributed_like_its_class():
    rng = np.random.RandomState(0)
    table = np.sort(rng.normal(size=(200, 2)), axis=0)
    # Feature 0: the particles are a fresh sample of the class's law; feature 1: too narrow.
    ends = rng.normal(size=(600, 2)) * [1.0, 0.3]
    rows = rng.normal(size=(50, 2)) * 1.5
    out = match_marginals(rows, ends, table)
    np.testing.assert_array_equal(out[:, 0], np.clip(rows[:, 0], table[0, 0], table[-1, 0]))
    assert np.any(out[:, 0] != rows[:, 0])  # some rows lay past the class's range
    # The narrow feature goes through the map: each row by its rank among the particles.
    clipped = np.clip(rows[:, 1], table[0, 1], table[-1, 1])
    assert np.abs(out[:, 1] - clipped).max() > 0.5
    assert np.all((out[:, 1] >= table[0, 1]) & (out[:, 1] <= table[-1, 1]))


def test_sample_keeps_a_thin_2d_cloud_where_the_particles_marginals_are_right():
    """Two moons: the flow's particles already have each feature's distribution (within a
    fresh sample's noise), so the marginal map would only move samples along each axis, off
    the thin curves (C2ST 0.614 -> 0.588 on four such clouds, benchmarks/README.md)."""
    X = make_moons(300, noise=0.05, random_state=0)[0]
    gpa = GPATransporter(random_state=0).fit(X)
    assert gpa.n_steps_ > 0
    np.testing.assert_allclose(
        gpa.sample(500, random_state=1),
        gpa.sample(500, random_state=1, marginals=False),
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize("name", ["clip", "snap", "marginals"])
def test_sample_names_a_switch_that_is_not_a_bool(name):
    gpa = GPATransporter(n_steps=5, random_state=0).fit(_with_an_atom())
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        gpa.sample(3, **{name: "no"})


def test_sample_leaves_flows_that_did_not_move_and_other_priors_alone():
    X = _with_an_atom()
    # The copula prior's draws are as close to these rows as a fresh sample: the stopping
    # rule freezes the flow before its first step.
    unmoved = GPATransporter(random_state=0).fit(X)
    assert unmoved.history_["stop_step"].tolist() == [0]
    np.testing.assert_array_equal(
        unmoved.sample(50, random_state=1), unmoved.sample(50, random_state=1, marginals=False)
    )
    gaussian = GPATransporter(source="gaussian_fit", n_steps=20, stop=None, random_state=0)
    gaussian.fit(X)
    np.testing.assert_array_equal(
        gaussian.sample(50, random_state=1), gaussian.sample(50, random_state=1, marginals=False)
    )


def test_a_class_of_one_row_warns_that_its_samples_are_copies():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(41, 3))
    y = np.r_[np.ones(1, int), np.zeros(40, int)]
    with pytest.warns(UserWarning, match=r"Classes \[1\] have one row each"):
        gpa = GPATransporter(n_steps=5, random_state=0).fit(X, y)
    np.testing.assert_allclose(gpa.sample(3, y=[1, 1, 1], random_state=0), X[[0, 0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GPATransporter(n_steps=5, random_state=0).fit(X[1:], y[1:])


@pytest.mark.parametrize(
    "dtype, expected", [(np.float32, np.float32), (np.float64, np.float64), (np.int64, np.float64)]
)
def test_sample_returns_the_dtype_transform_returns(dtype, expected):
    # float32 rows gave float64 samples while transform returned float32 rows.
    X, y = _mixed_units(60)
    X = (X * 100).astype(dtype)
    gpa = GPATransporter(n_steps=5, random_state=0).fit(X, y)
    assert gpa.transform(X, y).dtype == expected
    assert gpa.sample(10, random_state=0).dtype == expected
    assert gpa.sample(10, y=np.ones(10, dtype=int), random_state=0).dtype == expected
