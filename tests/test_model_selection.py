"""Model selection: domain-stratified splitters, routed searches, parallel and Dask backends."""

import os

import joblib
import numpy as np
import pytest
import sklearn
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import loguniform
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.parallel import Parallel, delayed

from sklearn_gpa import GPATransporter, LatentGPA
from sklearn_gpa.datasets import make_batch_effect
from sklearn_gpa.model_selection import (
    DomainStratifiedKFold,
    DomainStratifiedShuffleSplit,
    IntegratedClassifier,
)
from sklearn_gpa.utils import stack_domains

SPLITTERS = [
    DomainStratifiedKFold(3),
    DomainStratifiedKFold(4, shuffle=True, random_state=0),
    DomainStratifiedShuffleSplit(5, test_size=0.3, random_state=0),
]

# n_steps=2 cannot carry the source across the batch effect; 50 steps can.
GRID = {"gpatransporter__n_steps": [2, 50], "gpatransporter__L": [1.0, 10.0]}


@pytest.fixture
def routing():
    with sklearn.config_context(enable_metadata_routing=True):
        yield


@pytest.fixture(scope="module")
def batch_pair():
    Xs, ys, Xt, yt = make_batch_effect(60, 45, n_features=4, shift=2.0, random_state=0)
    return stack_domains(Xs, Xt, ys, yt)


def _gpa_pipeline(**params):
    return make_pipeline(StandardScaler(), GPATransporter(random_state=0, prealign=None, **params))


def _grid_search(X, y, sd, **search_params):
    search = GridSearchCV(_gpa_pipeline(), GRID, cv=DomainStratifiedKFold(3), **search_params)
    return search.fit(X, y, sample_domain=sd)


@pytest.fixture(scope="module")
def sequential_search(batch_pair):
    with sklearn.config_context(enable_metadata_routing=True):
        return _grid_search(*batch_pair)


# ------------------------------------------------------------------------------ splitters
@pytest.mark.parametrize("cv", SPLITTERS, ids=repr)
def test_every_fold_holds_every_domain_in_proportion(cv):
    sd = np.repeat([1, 2, -3], [31, 12, 20])
    X = np.zeros((len(sd), 2))
    assert cv.get_n_splits(X, sample_domain=sd) == cv.n_splits
    splits = list(cv.split(X, sample_domain=sd))
    assert len(splits) == cv.n_splits
    for train, test in splits:
        assert np.intersect1d(train, test).size == 0
        for domain, n_rows in ((1, 31), (2, 12), (-3, 20)):
            n_test = np.sum(sd[test] == domain)
            n_train = np.sum(sd[train] == domain)
            assert n_test >= 1 and n_train >= 1
            if isinstance(cv, DomainStratifiedKFold):
                assert abs(n_test - n_rows / cv.n_splits) < 1
                assert n_test + n_train == n_rows
            else:
                assert n_test == np.ceil(cv.test_size * n_rows)


def test_kfold_tests_each_row_once_with_balanced_folds():
    sd = np.repeat([1, -2], [23, 17])
    splits = DomainStratifiedKFold(5).split(np.zeros((40, 1)), sample_domain=sd)
    tests = [test for _, test in splits]
    assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(40))
    assert {len(t) for t in tests} == {8}


@settings(max_examples=30, deadline=None)
@given(
    n_source=st.integers(3, 40),
    n_target=st.integers(3, 40),
    n_splits=st.integers(2, 3),
    seed=st.integers(0, 1000),
)
def test_kfold_properties_hold_for_any_domain_sizes(n_source, n_target, n_splits, seed):
    sd = np.random.RandomState(seed).permutation(np.repeat([0, -1], [n_source, n_target]))
    cv = DomainStratifiedKFold(n_splits, shuffle=True, random_state=seed)
    sizes = []
    for train, test in cv.split(np.zeros((len(sd), 1)), sample_domain=sd):
        assert (sd[train] >= 0).any() and (sd[train] < 0).any()
        assert (sd[test] >= 0).any() and (sd[test] < 0).any()
        sizes.append(len(test))
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    "make_cv",
    [
        lambda seed: DomainStratifiedKFold(3, shuffle=True, random_state=seed),
        lambda seed: DomainStratifiedShuffleSplit(3, random_state=seed),
    ],
    ids=["kfold", "shuffle"],
)
def test_splits_are_reproducible_and_depend_on_the_seed(make_cv):
    sd = np.repeat([1, -2], 30)
    X = np.zeros((60, 1))

    def folds(seed):
        return [test.tolist() for _, test in make_cv(seed).split(X, sample_domain=sd)]

    assert folds(0) == folds(0)
    assert folds(0) != folds(1)


@pytest.mark.parametrize("cv", SPLITTERS, ids=repr)
def test_split_without_sample_domain_says_how_to_route_it(cv):
    with pytest.raises(ValueError, match="enable_metadata_routing"):
        next(cv.split(np.zeros((10, 1)), np.zeros(10)))
    with sklearn.config_context(enable_metadata_routing=True):
        with pytest.raises(ValueError, match="Pass sample_domain"):
            next(cv.split(np.zeros((10, 1))))


@pytest.mark.parametrize(
    "sd, match",
    [
        (np.repeat([1, -2], [2, 10]), "Domain 1 has 2 rows, fewer than n_splits=3"),
        (np.ones(12, dtype=int), "no target"),
        (np.full(12, 0.5), "integers"),
        (np.ones(5, dtype=int), "one entry per row"),
    ],
)
def test_split_rejects_bad_sample_domain(sd, match):
    with pytest.raises(ValueError, match=match):
        next(DomainStratifiedKFold(3).split(np.zeros((12, 1)), sample_domain=sd))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: DomainStratifiedKFold(1), "at least 2"),
        (lambda: DomainStratifiedKFold(3, random_state=0), "shuffle=True"),
        (lambda: DomainStratifiedShuffleSplit(test_size=1.5), "test_size"),
        (lambda: DomainStratifiedShuffleSplit(test_size=3), "test_size"),
        (lambda: DomainStratifiedShuffleSplit(test_size=0.5, train_size=0.7), "exceeds 1"),
    ],
)
def test_bad_splitter_parameters_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_shuffle_split_rejects_a_domain_too_small_to_split():
    cv = DomainStratifiedShuffleSplit(test_size=0.5)
    with pytest.raises(ValueError, match="Domain -2 has 1 rows"):
        next(cv.split(np.zeros((11, 1)), sample_domain=np.repeat([1, -2], [10, 1])))


def test_groups_are_ignored_with_a_warning():
    sd = np.repeat([1, -2], 6)
    with pytest.warns(UserWarning, match="groups parameter is ignored"):
        next(DomainStratifiedKFold(3).split(np.zeros((12, 1)), groups=sd, sample_domain=sd))


# ------------------------------------------------------------------------ routed searches
def test_grid_search_picks_the_candidate_that_reaches_the_target(sequential_search):
    search = sequential_search
    assert search.best_params_["gpatransporter__n_steps"] == 50
    scores = search.cv_results_["mean_test_score"]
    steps = np.array(search.cv_results_["param_gpatransporter__n_steps"], dtype=int)
    assert scores[steps == 50].min() > scores[steps == 2].max()
    # The refitted pipeline carries the routed sample_domain through the scaler to the flow.
    assert search.best_estimator_[-1].mode_ == "integration"


def test_grid_search_without_routing_explains_what_to_enable(batch_pair):
    X, y, sd = batch_pair
    search = GridSearchCV(_gpa_pipeline(n_steps=2), {"gpatransporter__L": [1.0]}, cv=SPLITTERS[0])
    with pytest.raises(ValueError, match="enable metadata routing"):
        search.fit(X, y)


def test_randomized_search_tunes_latent_gpa_in_a_pipeline(routing, batch_pair):
    X, y, sd = batch_pair
    pipeline = make_pipeline(
        StandardScaler(),
        LatentGPA(
            prealign=None,
            transporter=GPATransporter(n_steps=30, random_state=0, out_of_sample="auto"),
        ),
    )
    distributions = {
        "latentgpa__transporter__L": loguniform(1.0, 30.0),
        "latentgpa__transporter__dt": loguniform(1e-3, 0.1),
    }
    search = RandomizedSearchCV(
        pipeline,
        distributions,
        n_iter=3,
        cv=DomainStratifiedShuffleSplit(2, test_size=0.3, random_state=0),
        random_state=0,
    ).fit(X, y, sample_domain=sd)
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores).all() and len(scores) == 3
    assert search.best_score_ == scores.max()


def test_skada_splitter_is_routed_too(routing, batch_pair):
    model_selection = pytest.importorskip("skada.model_selection")
    X, y, sd = batch_pair
    cv = model_selection.SourceTargetShuffleSplit(2, test_size=0.3, random_state=0)
    search = GridSearchCV(_gpa_pipeline(), {"gpatransporter__n_steps": [2, 50]}, cv=cv)
    assert search.fit(X, y, sample_domain=sd).best_params_ == {"gpatransporter__n_steps": 50}


# ----------------------------------------------------------------- downstream classifier
@pytest.fixture(scope="module")
def shifted_classes():
    # A batch effect that moves the classes across the reference's decision boundary.
    Xs, ys, Xt, yt = make_batch_effect(60, 60, n_features=4, random_state=1)
    return stack_domains(Xs, Xt, ys, yt)


def test_cross_validated_integration_lifts_balanced_accuracy(routing, shifted_classes):
    X, y, sd = shifted_classes
    cv = DomainStratifiedKFold(3, shuffle=True, random_state=0)
    integrator = _gpa_pipeline(n_steps=50)

    def balanced_accuracy(integrator):
        model = IntegratedClassifier(integrator, LogisticRegression())
        result = cross_validate(model, X, y, params={"sample_domain": sd}, cv=cv)
        return result["test_score"].mean()

    raw, integrated = balanced_accuracy(None), balanced_accuracy(integrator)
    assert raw < 0.7  # 0.64
    assert integrated > 0.9  # 0.96


def test_integrated_classifier_never_trains_on_source_labels(routing, shifted_classes):
    X, y, sd = shifted_classes
    shuffled = y.copy()
    shuffled[sd >= 0] = np.random.RandomState(0).permutation(y[sd >= 0])
    model = IntegratedClassifier(_gpa_pipeline(n_steps=10), LogisticRegression())
    first = model.fit(X, y, sample_domain=sd).predict(X)
    assert np.array_equal(model.fit(X, shuffled, sample_domain=sd).predict(X), first)
    # Target rows pass the integrator unchanged when marked.
    target = sd < 0
    direct = model.classifier_.predict(model.integrator_[0].transform(X[target]))
    assert np.array_equal(model.predict(X[target], sample_domain=sd[target]), direct)


def test_integrated_classifier_needs_sample_domain_and_target_labels(shifted_classes):
    X, y, sd = shifted_classes
    model = IntegratedClassifier(None, LogisticRegression())
    with pytest.raises(ValueError, match="needs sample_domain"):
        model.fit(X, y)
    unlabelled = np.where(sd < 0, -1, y)
    with pytest.raises(ValueError, match="No target row has a known label"):
        model.fit(X, unlabelled, sample_domain=sd)
    # A Pipeline integrator without routing: scikit-learn's error spoke of
    # "logisticregression__sample_weight"; this one says to enable routing.
    from sklearn_gpa import MeanStdAdjuster

    piped = IntegratedClassifier(
        make_pipeline(StandardScaler(), MeanStdAdjuster()), model.classifier
    )
    with pytest.raises(ValueError, match="Pipeline did not take sample_domain .* routing"):
        piped.fit(X, y, sample_domain=sd)


# ----------------------------------------------------------------- parallel and Dask
def _torch_threads_during_fit(X, sd):
    seen = []
    gpa = GPATransporter(n_steps=4, log_every=1, prealign=None, random_state=0)
    gpa.set_params(callback=lambda *_: seen.append(torch.get_num_threads()))
    gpa.fit(X, sample_domain=sd)
    return max(seen)


def test_loky_workers_do_not_oversubscribe_the_cores(batch_pair):
    X, _, sd = batch_pair
    threads = Parallel(n_jobs=2)(delayed(_torch_threads_during_fit)(X, sd) for _ in range(2))
    assert 2 * max(threads) <= max(2, os.cpu_count())


def test_grid_search_with_two_loky_workers_matches_sequential(
    routing, batch_pair, sequential_search
):
    parallel = _grid_search(*batch_pair, n_jobs=2)
    assert parallel.best_params_ == sequential_search.best_params_
    np.testing.assert_allclose(
        parallel.cv_results_["mean_test_score"],
        sequential_search.cv_results_["mean_test_score"],
        rtol=1e-6,
    )


def test_grid_search_on_a_dask_cluster_matches_sequential(routing, batch_pair, sequential_search):
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
        joblib.parallel_backend("dask"),
    ):
        on_dask = _grid_search(*batch_pair)
    assert on_dask.best_params_ == sequential_search.best_params_
    np.testing.assert_allclose(
        on_dask.cv_results_["mean_test_score"],
        sequential_search.cv_results_["mean_test_score"],
        rtol=1e-6,
    )
