"""GPAAugmenter: imbalanced-learn sampler built on class-wise GPA flows."""

import warnings

import numpy as np
import pytest
import torch
from imblearn.pipeline import make_pipeline
from imblearn.utils.estimator_checks import (
    check_dataframe_column_names_consistency,
    check_param_validation,
)
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_validate
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from threadpoolctl import threadpool_info

from sklearn_gpa import GPATransporter
from sklearn_gpa.augment import GPAAugmenter, default_transporter

FAST = dict(transporter=GPATransporter(source="gaussian_fit", n_steps=5), random_state=0)


def test_imblearn_param_validation_and_column_names():
    check_param_validation("GPAAugmenter", GPAAugmenter(**FAST))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        check_dataframe_column_names_consistency("GPAAugmenter", GPAAugmenter(**FAST))


def test_flow_settings_live_on_the_transporter():
    X, y, _ = _three_classes()
    sampler = GPAAugmenter(transporter=GPATransporter(n_steps=7, L=3.0), random_state=0)
    assert sampler.get_params()["transporter__L"] == 3.0
    sampler.set_params(transporter__n_steps=4).fit_resample(X, y)
    assert sampler.transporter_.n_steps_ == 4 and sampler.transporter_.L == 3.0
    assert sampler.transporter_.conditional is True  # the augmenter's own settings
    assert not hasattr(sampler.transporter, "flow_")  # the parameter is cloned, not fitted
    default = GPAAugmenter(random_state=0).fit_resample(X, y)
    assert GPAAugmenter(random_state=0).transporter is None and len(default[0]) > len(X)


def test_default_flow_is_short_and_cheap():
    # Issue 18: the default flow must cost no more than a 100-tree forest in cross-validation;
    # 300 steps of 5 critic updates (the former default) cost 3-6 forests.
    X, y, _ = _three_classes()
    sampler = GPAAugmenter(random_state=0)
    sampler.fit_resample(X, y)
    flow = sampler.transporter_
    assert (flow.source, flow.n_steps, flow.n_critic, flow.stop) == ("gaussian_fit", 50, 2, None)
    assert flow.n_steps_ == 50 and flow.n_steps_ * flow.n_critic <= 100
    assert (
        default_transporter().get_params()
        == GPATransporter(source="gaussian_fit", n_steps=50, n_critic=2, stop=None).get_params()
    )
    assert GPAAugmenter().max_particles == 1000


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two torch threads to limit")
def test_flows_run_on_one_torch_thread_unless_n_jobs_says_otherwise():
    # Large enough that the engine's size rule would take every thread (2.4e7 multiply-adds).
    X, y, _ = _three_classes(sizes=(3000, 1000, 0), n_features=20)
    seen, openmp = {}, {}

    def record_threads(n_jobs):
        seen.setdefault(n_jobs, torch.get_num_threads())
        pools = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]
        openmp.setdefault(n_jobs, max(pools, default=1))

    def fit(n_jobs):
        record = lambda step, divergence, kinetic: record_threads(n_jobs)  # noqa: E731
        flow = GPATransporter(source="gaussian_fit", n_steps=2, log_every=1, callback=record)
        GPAAugmenter(transporter=flow, n_jobs=n_jobs, random_state=0).fit_resample(X, y)

    before = torch.get_num_threads()
    for n_jobs in (None, 1, -1):
        fit(n_jobs)
    assert seen == {None: 1, 1: 1, -1: before} and torch.get_num_threads() == before
    assert openmp[None] == openmp[1] == 1


def _three_classes(seed=0, sizes=(60, 25, 10), n_features=3):
    """Three well separated Gaussian classes."""
    rng = np.random.RandomState(seed)
    centers = 6.0 * np.eye(3, n_features)
    X = np.vstack([rng.normal(c, 1.0, (n, n_features)) for c, n in zip(centers, sizes)])
    y = np.repeat([0, 1, 2], sizes)
    return X, y, centers


@pytest.mark.parametrize(
    "strategy, expected",
    [
        ("auto", [60, 60, 60]),
        ("not majority", [60, 60, 60]),
        ("minority", [60, 25, 60]),
        ("all", [60, 60, 60]),
        ({1: 40, 2: 30}, [60, 40, 30]),
        (lambda y: {2: 12}, [60, 25, 12]),
    ],
)
def test_class_counts_follow_sampling_strategy(strategy, expected):
    X, y, _ = _three_classes()
    X_res, y_res = GPAAugmenter(sampling_strategy=strategy, **FAST).fit_resample(X, y)
    assert np.bincount(y_res).tolist() == expected
    assert X_res.shape == (sum(expected), X.shape[1])


def test_float_strategy_on_binary_data():
    X, y, _ = _three_classes(sizes=(60, 10, 0))
    _, y_res = GPAAugmenter(sampling_strategy=0.5, **FAST).fit_resample(X, y)
    assert np.bincount(y_res).tolist() == [60, 30]


def test_originals_first_unchanged_then_synthetic_by_class():
    X, y, _ = _three_classes()
    X32 = X.astype(np.float32)
    sampler = GPAAugmenter(**FAST)
    X_res, y_res = sampler.fit_resample(X32, y)
    assert X_res.dtype == np.float32
    np.testing.assert_array_equal(X_res[: len(X)], X32)
    np.testing.assert_array_equal(y_res[: len(y)], y)
    assert y_res[len(y) :].tolist() == [1] * 35 + [2] * 50
    assert sampler.augmented_classes_.tolist() == [1, 2]


def test_already_balanced_returns_data_as_is():
    X, y, _ = _three_classes(sizes=(20, 20, 20))
    sampler = GPAAugmenter(**FAST)
    X_res, y_res = sampler.fit_resample(X, y)
    np.testing.assert_array_equal(X_res, X)
    np.testing.assert_array_equal(y_res, y)
    assert sampler.transporter_ is None and sampler.nearest_original_distance_.shape == (0,)


def test_reproducible_with_random_state():
    X, y, _ = _three_classes()
    first = GPAAugmenter(
        random_state=3, transporter=GPATransporter(source="gaussian_fit", n_steps=30)
    ).fit_resample(X, y)[0]
    again = GPAAugmenter(
        random_state=3, transporter=GPATransporter(source="gaussian_fit", n_steps=30)
    ).fit_resample(X, y)[0]
    other = GPAAugmenter(
        random_state=4, transporter=GPATransporter(source="gaussian_fit", n_steps=30)
    ).fit_resample(X, y)[0]
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first[len(X) :], other[len(X) :])


@pytest.mark.parametrize("source", ["gaussian_fit", "normal"])
def test_synthetic_rows_belong_to_their_class(source):
    X, y, centers = _three_classes()
    sampler = GPAAugmenter(random_state=0, transporter=GPATransporter(source=source))
    X_res, y_res = sampler.fit_resample(X, y)
    synthetic, labels = X_res[len(X) :], y_res[len(X) :]
    for c in (1, 2):
        # Class means of 25 and 10 unit-variance rows; the flow should land within noise.
        assert np.linalg.norm(synthetic[labels == c].mean(0) - X[y == c].mean(0)) < 0.6
    distances = ((synthetic[:, None, :] - X[None]) ** 2).sum(-1)
    assert np.mean(y[distances.argmin(1)] == labels) > 0.95
    assert sampler.nearest_original_distance_.shape == (len(synthetic),)
    assert np.all(sampler.nearest_original_distance_ >= 0)
    assert set(sampler.divergence_) == set(sampler.termination_step_) == {1, 2}
    assert sampler.n_particles_ == {1: 75, 2: 50}  # max(n_k, 3 N_k): max(35, 75), max(50, 30)


def test_discrete_features_stay_on_their_levels():
    rng = np.random.RandomState(0)
    X = np.column_stack([rng.normal(size=80), rng.randint(0, 2, 80), np.full(80, 0.5)])
    X[60:, 2] = 1.0  # constant within each class
    y = np.repeat([0, 1], [60, 20])
    X_res, y_res = GPAAugmenter(
        random_state=0, transporter=GPATransporter(source="gaussian_fit", n_steps=20)
    ).fit_resample(X, y)
    synthetic = X_res[len(X) :]
    assert set(np.unique(synthetic[:, 1])) <= {0.0, 1.0}
    assert np.all(synthetic[:, 2] == 1.0)
    # Continuous stays continuous; the particles' extremes map onto the class's extreme
    # values (the quantile function is flat beyond its first and last levels).
    assert len(np.unique(synthetic[:, 0])) >= len(synthetic) - 2
    raw = GPAAugmenter(
        random_state=0,
        discrete_features=None,
        marginals=False,
        transporter=GPATransporter(source="gaussian_fit", n_steps=20),
    ).fit_resample(X, y)[0]
    assert len(np.unique(raw[len(X) :, 1])) > 2


def test_synthetic_rows_keep_their_class_marginals():
    """A minority class whose first feature is 0 in 75 % of its rows: the flow's end points
    spread around 0, the marginal map gives the class its zeros back in their proportion and
    keeps every synthetic row's rank among the particles."""
    rng = np.random.RandomState(0)
    majority = rng.normal(size=(200, 3))
    latent = rng.normal(size=40)
    minority = np.column_stack(
        [
            np.where(rng.rand(40) < 0.75, 0.0, 1.0 + rng.exponential(size=40)),
            latent + 3,
            latent + 0.3 * rng.normal(size=40) + 3,
        ]
    )
    X, y = np.vstack([majority, minority]), np.repeat([0, 1], [200, 40])
    outputs = {
        flag: GPAAugmenter(random_state=0, marginals=flag).fit_resample(X, y)[0][len(X) :]
        for flag in (True, False)
    }
    mapped, ends = outputs[True], outputs[False]
    share = np.mean(minority[:, 0] == 0.0)
    assert abs(np.mean(mapped[:, 0] == 0.0) - share) < 0.05
    assert np.mean(ends[:, 0] == 0.0) < 0.05
    assert np.all((mapped >= minority.min(0)) & (mapped <= minority.max(0)))
    for j in range(3):
        order = np.argsort(ends[:, j], kind="stable")
        assert np.all(np.diff(mapped[order, j]) >= 0)
    assert np.corrcoef(mapped[:, 1], mapped[:, 2])[0, 1] > 0.8


def test_labels_minus_one_and_strings_are_ordinary_classes():
    import pandas as pd

    X, y, _ = _three_classes(sizes=(40, 12, 0))
    names = np.where(y == 0, "common", "rare")
    # pandas' str labels are an object array (their items have no tolist: a crash once).
    for labels in (np.where(y == 0, 1, -1), names, pd.Series(names), names.astype(object)):
        sampler = GPAAugmenter(**FAST)
        X_res, y_res = sampler.fit_resample(X, labels)
        values, counts = np.unique(np.asarray(y_res), return_counts=True)
        assert counts.tolist() == [40, 40] and set(values) == set(labels)
        assert list(sampler.memorization_ratio_) == list(sampler.termination_step_)


@pytest.mark.parametrize("factor, expected", [(1, 50), (3, 150), (1.5, 75)])
def test_oversampling_factor_sets_particles_per_original_row(factor, expected):
    X, y, _ = _three_classes(sizes=(60, 50, 0))
    sampler = GPAAugmenter(sampling_strategy={1: 60}, oversampling_factor=factor, **FAST)
    sampler.fit_resample(X, y)
    assert sampler.n_particles_ == {1: expected}  # max(10 requested, factor * 50)


def test_rows_beyond_max_particles_are_replayed_draws_of_the_class():
    X, y, centers = _three_classes(sizes=(400, 12, 0))
    flow = GPATransporter(source="gaussian_fit", n_steps=30)
    capped = GPAAugmenter(max_particles=100, transporter=flow, random_state=0)
    X_res, y_res = capped.fit_resample(X, y)
    assert np.bincount(y_res).tolist() == [400, 400]
    assert capped.n_particles_ == {1: 100}  # max(3 * 12, min(388, 100))
    synthetic = X_res[len(X) :]
    trained, replayed = synthetic[:100], synthetic[100:]
    # The replayed rows come from the same flow: same place, same spread as the particles.
    np.testing.assert_allclose(replayed.mean(0), trained.mean(0), atol=0.35)
    np.testing.assert_allclose(replayed.std(0), trained.std(0), rtol=0.3)
    assert np.linalg.norm(replayed.mean(0) - centers[1]) < 0.8
    assert len(np.unique(replayed, axis=0)) == len(replayed)  # no copies
    # The diagnostics measure every synthetic row against its class's rows.
    nearest = NearestNeighbors(n_neighbors=1).fit(X[y == 1]).kneighbors(synthetic)[0][:, 0]
    np.testing.assert_allclose(capped.nearest_original_distance_, nearest, rtol=1e-9)
    uncapped = GPAAugmenter(max_particles=None, transporter=flow, random_state=0)
    uncapped.fit_resample(X, y)
    assert uncapped.n_particles_ == {1: 388}  # every requested row a trained particle
    again = GPAAugmenter(max_particles=100, transporter=flow, random_state=0)
    np.testing.assert_array_equal(again.fit_resample(X, y)[0], X_res)


def _five_dimensional_class(seed=100):
    # Data drawn from a generator other than the sampler's: with equal seeds the prior's
    # noise would be the very noise that made the class rows.
    rng = np.random.RandomState(seed)
    X = np.vstack([rng.normal(size=(200, 5)) + 3.0, rng.normal(size=(50, 5))])
    return X, np.repeat([0, 1], [200, 50])


def test_long_flows_memorise_and_the_tolerance_stops_before():
    # Paper 002 section 4 and eq. 37: run long enough and the particles settle on the
    # originals; stopping once the divergence is within tolerance keeps them apart.
    X, y = _five_dimensional_class()

    def fit(n_steps, tolerance=None):
        flow = GPATransporter(source="gaussian_fit", n_steps=n_steps)
        sampler = GPAAugmenter(
            sampling_strategy={1: 100}, random_state=0, transporter=flow, tolerance=tolerance
        )
        sampler.fit_resample(X, y)
        return sampler

    short, long, stopped = fit(100), fit(1000), fit(1000, tolerance=0.05)
    assert long.memorization_ratio_[1] < 0.2 and short.memorization_ratio_[1] > 0.5
    divergence = stopped.transporter_.history_["divergence_per_flow"][:, 0]
    stop = stopped.termination_step_[1]
    assert 0 < stop < 1000 and long.termination_step_[1] == 1000
    assert np.all(divergence[stop:] <= 0.05) and divergence[stop - 1] > 0.05
    assert stopped.divergence_[1] == pytest.approx(divergence[stop])
    assert stopped.memorization_ratio_[1] > 2 * long.memorization_ratio_[1]
    assert np.median(stopped.nearest_original_distance_) > np.median(
        long.nearest_original_distance_
    )


def test_unreachable_tolerance_warns_and_uses_the_last_step():
    X, y = _five_dimensional_class()
    sampler = GPAAugmenter(
        transporter=GPATransporter(source="normal", n_steps=5), tolerance=1e-6, random_state=0
    )
    with pytest.warns(UserWarning, match=r"classes \[1\] ended above tolerance=1e-06"):
        sampler.fit_resample(X, y)
    assert sampler.termination_step_ == {1: 5}


def test_pipeline_cross_validate_and_grid_search():
    X, y, _ = _three_classes(sizes=(80, 16, 0), n_features=4)
    X += np.random.RandomState(1).normal(scale=2.5, size=X.shape)  # overlapping classes
    pipe = make_pipeline(
        GPAAugmenter(random_state=0, transporter=GPATransporter(source="gaussian_fit", n_steps=30)),
        LogisticRegression(),
    )
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    scores = cross_validate(pipe, X, y, cv=cv, scoring="balanced_accuracy")["test_score"]
    assert np.all(np.isfinite(scores)) and scores.mean() > 0.6
    knn = make_pipeline(
        GPAAugmenter(random_state=0, transporter=GPATransporter(source="gaussian_fit", n_steps=10)),
        KNeighborsClassifier(),
    )
    grid = {"gpaaugmenter__oversampling_factor": [1, 3]}
    search = GridSearchCV(knn, grid, cv=cv, scoring="balanced_accuracy").fit(X, y)
    assert search.best_params_["gpaaugmenter__oversampling_factor"] in (1, 3)


def test_bad_input_is_named():
    X, y, _ = _three_classes()
    X_nan = X.copy()
    X_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        GPAAugmenter(**FAST).fit_resample(X_nan, y)
    with pytest.raises(ValueError, match="needs to have more than 1 class"):
        GPAAugmenter(**FAST).fit_resample(X, np.zeros(len(X), dtype=int))
    y_single = np.r_[np.zeros(40, int), 1]
    with pytest.raises(ValueError, match="at least 2 samples of every class it augments"):
        GPAAugmenter(**FAST).fit_resample(X[:41], y_single)
    with pytest.raises(ValueError, match=r"class 1 has 1\."):  # not np.int64(1)
        GPAAugmenter(**FAST).fit_resample(X[:41], y_single)
    with pytest.raises(ValueError, match="discrete_features must hold feature indices"):
        GPAAugmenter(discrete_features=[5], **FAST).fit_resample(X, y)
    with pytest.raises(ValueError, match="oversampling_factor"):
        GPAAugmenter(oversampling_factor=0.5).fit_resample(X, y)


def test_a_class_of_a_few_rows_coming_back_as_near_copies_is_named():
    from sklearn.datasets import make_blobs

    # Four rows: the synthetic rows sat at 0.4 of the originals' spacing from them, near
    # copies, with no word (memorization_ratio_ said it to those who looked).
    X, y = make_blobs([100, 60, 4], n_features=3, random_state=0)
    sampler = GPAAugmenter(random_state=0)
    with pytest.warns(UserWarning, match=r"classes \[2\] lie closer to their originals"):
        sampler.fit_resample(X, y)
    assert sampler.memorization_ratio_[2] < 0.5 < sampler.memorization_ratio_[1]


def test_memorization_ratio_does_not_depend_on_a_features_units():
    # Measured in the units of X, one feature in large units set the ratio: a shuttle fold
    # read 0.20 (and warned of near-copies) that was 0.80 with that feature divided by 100.
    from sklearn.datasets import make_blobs

    X, y = make_blobs([120, 30], n_features=4, random_state=1)
    ratios = []
    for factor in (1.0, 1000.0):
        wide = X * [factor, 1.0, 1.0, 1.0]
        sampler = GPAAugmenter(random_state=0)
        sampler.fit_resample(wide, y)
        ratios.append(sampler.memorization_ratio_[1])
    assert ratios[0] == pytest.approx(ratios[1], rel=0.05)
