"""Bad input, numerical faults, persistence and resource use, through the public API."""

import gc
import pickle
import resource
import signal
import threading
import warnings

import joblib
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_gpa import GPATransporter, LatentGPA, MeanStdAdjuster
from sklearn_gpa.utils import stack_domains

FAST = dict(n_steps=10, random_state=0)
ESTIMATORS = [
    GPATransporter(**FAST),
    LatentGPA(transporter=GPATransporter(out_of_sample="auto", **FAST)),
]


def _pair(n=30, d=3, seed=0):
    rng = np.random.RandomState(seed)
    return stack_domains(rng.normal(0, 1, (n, d)), rng.normal(2, 1, (n, d)))


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize(
    "make_X, message",
    [
        (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 4, np.nan, X), "NaN"),
        (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 4, np.inf, X), "infinity"),
        (lambda X: X[:0], "0 sample"),
        (lambda X: X[:1], "1 sample"),
        (lambda X: X.astype(str).astype(object).tolist() and np.full(X.shape, "a"), "convert"),
        (lambda X: sp.csr_matrix(X), "Sparse data"),
        (lambda X: X[:, :0], "0 feature"),
    ],
)
def test_bad_X_gets_a_named_error(estimator, make_X, message):
    X, _, _ = _pair()
    # scikit-learn raises TypeError for sparse input, ValueError for the rest.
    with pytest.raises((ValueError, TypeError), match=message):
        estimator.fit(make_X(X))


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_feature_mismatch_between_fit_and_transform(estimator):
    X, _, sd = _pair()
    estimator.fit(X, sample_domain=sd)
    with pytest.raises(ValueError, match="features"):
        estimator.transform(X[:, :2])


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize(
    "transform_X",
    [
        lambda X: X.astype(np.float16),
        lambda X: np.round(X * 10).astype(np.int64),
        lambda X: X * 1e30,
        lambda X: np.vstack([X[:10]] * 6),  # duplicated rows
        lambda X: np.column_stack([X[:, :2], np.full(len(X), 7.0)]),  # a constant feature
    ],
)
def test_unusual_but_valid_input_works_and_stays_finite(estimator, transform_X):
    X, _, _ = _pair()
    data = transform_X(X)
    sd = np.where(np.arange(len(data)) % 2 == 0, 1, -2)
    original = np.array(data, copy=True)
    out = estimator.fit(data, sample_domain=sd).transform(data, sample_domain=sd)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[sd < 0], np.asarray(data, dtype=out.dtype)[sd < 0])
    np.testing.assert_array_equal(data, original)


def test_one_feature_and_single_sample_classes():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(12, 1))
    y = np.array([0] * 10 + [1, 2])  # two classes with a single row each
    with pytest.warns(UserWarning, match=r"Classes \[1, 2\] have one row each"):
        gpa = GPATransporter(**FAST).fit(X, y)
    samples = gpa.sample(6, y=[0, 0, 1, 1, 2, 2], random_state=0)
    assert samples.shape == (6, 1) and np.isfinite(samples).all()


def test_labels_in_one_domain_only_fall_back_to_one_flow():
    X, _, sd = _pair()
    y = np.where(sd >= 0, 1, -1)  # skada: -1 marks the unknown target labels
    gpa = GPATransporter(**FAST).fit(X, y, sample_domain=sd)
    assert gpa.classes_ is None and gpa.n_flows_ == 1


def test_source_class_missing_from_target():
    X, _, sd = _pair()
    y = np.where(sd >= 0, np.arange(len(sd)) % 2, 0)
    with pytest.warns(UserWarning, match=r"source classes \[1\] have no target rows"):
        GPATransporter(**FAST).fit(X, y, sample_domain=sd)
    with pytest.raises(ValueError, match="conditional=True"):
        GPATransporter(conditional=True, **FAST).fit(X, y, sample_domain=sd)


def test_wrong_length_labels():
    X, _, sd = _pair()
    with pytest.raises(ValueError, match="y must have shape"):
        GPATransporter(**FAST).fit(X, np.zeros(5), sample_domain=sd)


def test_pandas_with_and_without_column_names():
    pd = pytest.importorskip("pandas")
    X, _, sd = _pair()
    named = pd.DataFrame(X, columns=["a", "b", "c"])
    gpa = GPATransporter(**FAST).fit(named, sample_domain=sd)
    assert list(gpa.feature_names_in_) == ["a", "b", "c"]
    unnamed = GPATransporter(**FAST).fit(pd.DataFrame(X), sample_domain=sd)
    assert not hasattr(unnamed, "feature_names_in_")
    with pytest.warns(UserWarning, match="feature names"):
        gpa.transform(X)


@settings(max_examples=15, deadline=None)
@given(
    n_source=st.integers(1, 6),
    n_target=st.integers(1, 6),
    n_features=st.integers(1, 4),
    scale=st.sampled_from([1e-8, 1.0, 1e8]),
)
def test_any_small_problem_gives_finite_output_of_the_right_shape(
    n_source, n_target, n_features, scale
):
    rng = np.random.RandomState(n_source * 7 + n_target)
    X, _, sd = stack_domains(
        rng.normal(size=(n_source, n_features)) * scale,
        rng.normal(size=(n_target, n_features)) * scale + scale,
    )
    out = GPATransporter(n_steps=3, random_state=0).fit_transform(X, sample_domain=sd)
    assert out.shape == X.shape and np.isfinite(out).all()


def test_non_finite_flows_never_return_nan():
    rng = np.random.RandomState(0)
    X, _, sd = stack_domains(rng.standard_t(0.5, (40, 2)) + 1e3, rng.standard_t(0.5, (40, 2)))
    gpa = GPATransporter(L=None, dt=5.0, learning_rate=0.5, standardize=False, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gpa.fit(X, sample_domain=sd)
    for out in (gpa.transform(X), gpa.particles_, gpa.trajectories(X[:5], every=5)):
        assert np.isfinite(out).all()


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_pickle_and_joblib_round_trips(tmp_path, estimator):
    X, _, sd = _pair()
    estimator.fit(X, sample_domain=sd)
    expected = estimator.transform(X, sample_domain=sd)
    again = pickle.loads(pickle.dumps(estimator))
    np.testing.assert_array_equal(again.transform(X, sample_domain=sd), expected)
    joblib.dump(estimator, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(loaded.transform(X, sample_domain=sd), expected)


def test_gpu_fitted_model_replays_on_cpu():
    X, _, sd = _pair()
    gpa = GPATransporter(**FAST).fit(X, sample_domain=sd)
    expected = gpa.transform(X)
    gpa.device_ = "cuda:0"  # what a fit on a GPU machine leaves behind
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the CPU fallback is not exercised")
    np.testing.assert_allclose(gpa.transform(X), expected)


def test_flow_size_is_reported_and_bounded_by_store_every():
    X, _, sd = _pair()
    full = GPATransporter(n_steps=40, prealign=None, random_state=0).fit(X, sample_domain=sd)
    sparse = GPATransporter(n_steps=40, store_every=8, prealign=None, random_state=0)
    sparse.fit(X, sample_domain=sd)
    assert sparse.flow_.nbytes < full.flow_.nbytes / 6


def test_interrupt_keeps_the_finished_steps():
    X, _, sd = _pair()
    seen = []

    def interrupt(step, divergence, kinetic_energy):
        seen.append(step)
        if step >= 19:
            signal.raise_signal(signal.SIGINT)

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    # stop=None: the test is about Ctrl-C, not about when the flow converges (step 30).
    gpa = GPATransporter(
        n_steps=100, log_every=10, callback=interrupt, prealign=None, stop=None, random_state=0
    )
    # A process started in the background by a non-interactive shell ignores SIGINT
    # (Python then installs no KeyboardInterrupt handler): Ctrl-C's handler, for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gpa.fit(X, sample_domain=sd)
    finally:
        signal.signal(signal.SIGINT, previous)
    # In this order, so that a failure says whether the callback reached the interrupt.
    assert 19 in seen, seen
    assert gpa.stop_reason_ == "interrupted" and 19 <= gpa.n_steps_ < 100, gpa.stop_reason_
    assert any("interrupted" in str(w.message) for w in caught if w.category is RuntimeWarning)
    assert gpa.flow_.n_steps == gpa.n_steps_
    assert np.isfinite(gpa.transform(X)).all()


def test_same_seed_identical_and_thread_setting_restored():
    X, _, sd = _pair()
    before = torch.get_num_threads()
    first = GPATransporter(**FAST).fit_transform(X, sample_domain=sd)
    assert torch.get_num_threads() == before
    second = GPATransporter(**FAST).fit_transform(X, sample_domain=sd)
    np.testing.assert_array_equal(first, second)


def test_repeated_fits_do_not_grow_memory():
    X, _, sd = _pair(n=100)

    def rss_mb():
        gc.collect()
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize() / 2**20

    gpa = GPATransporter(n_steps=20, random_state=0)
    for _ in range(5):
        gpa.fit(X, sample_domain=sd)
    start = rss_mb()
    for _ in range(50):
        gpa.fit(X, sample_domain=sd).transform(X)
    assert rss_mb() - start < 30


def test_meanstd_adjuster_bad_input():
    X, y, sd = _pair()
    with pytest.raises(ValueError, match="sample_domain"):
        MeanStdAdjuster().fit(X)
    with pytest.raises(ValueError, match="no target"):
        MeanStdAdjuster().fit(X, sample_domain=np.ones(len(X), dtype=int))


def test_a_critic_that_went_flat_is_reported():
    from sklearn_gpa._training import _warn_dead_critic

    kinetic = np.array([[0.1, 0.3], [0.2, 0.1], [0.0, 0.1], [0.0, 0.2], [0.0, 0.0]])
    with pytest.warns(RuntimeWarning, match="flow 0 went flat at step 2") as caught:
        _warn_dead_critic(kinetic)
    assert len(caught) == 1  # flow 1 only reached zero at the last step


@pytest.mark.parametrize("conditional", [False, True])
def test_warm_start_continues_the_flow_exactly(conditional):
    X, _, sd = _pair()
    y = np.arange(len(X)) % 2 if conditional else None
    # stop=None: the stopping rule looks at different steps in one run and in two.
    whole = GPATransporter(n_steps=40, stop=None, random_state=0).fit(X, y, sample_domain=sd)
    parts = GPATransporter(n_steps=25, stop=None, warm_start=True, random_state=0)
    parts.fit(X, y, sample_domain=sd)
    parts.set_params(n_steps=15).fit(X, y, sample_domain=sd)
    assert parts.n_steps_ == 40 and len(parts.history_["kinetic_energy"]) == 40
    np.testing.assert_allclose(parts.particles_, whole.particles_, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(parts.transform(X), whole.transform(X), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="warm_start"):
        parts.fit(X)  # a generative fit cannot continue an integration flow


def test_warm_start_with_mini_batches_draws_what_one_run_draws():
    """The mini-batch generator's state is part of the critic state."""
    X, _, sd = _pair()
    params = dict(batch_size=16, dtype="float64", random_state=0)
    whole = GPATransporter(n_steps=30, **params).fit(X, sample_domain=sd)
    parts = GPATransporter(n_steps=20, warm_start=True, **params).fit(X, sample_domain=sd)
    parts.set_params(n_steps=10).fit(X, sample_domain=sd)
    np.testing.assert_allclose(parts.particles_, whole.particles_, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("change", ["rows", "sample_domain", "generation"])
def test_warm_start_refuses_other_data(change):
    # The particles are the first fit's rows: new source rows were silently ignored (the
    # moved rows of the old data came back), and a generative fit on shifted rows "converged"
    # with its samples where the old rows were.
    X, _, sd = _pair()
    y = None
    if change == "generation":
        X, sd = X[sd < 0], None
    gpa = GPATransporter(n_steps=5, stop=None, warm_start=True, random_state=0)
    gpa.fit(X, sample_domain=sd)
    before = gpa.n_steps_
    if change == "sample_domain":
        sd = np.where(np.arange(len(sd)) == 0, -1, sd)
    else:
        X = X + 5.0
    with pytest.raises(ValueError, match="passes other data"):
        gpa.fit(X, y, sample_domain=sd)
    assert gpa.n_steps_ == before  # the fitted state is untouched
    gpa.set_params(warm_start=False).fit(X, y, sample_domain=sd)  # a fresh fit is fine


def test_warm_start_refuses_a_changed_discriminator():
    X, _, sd = _pair()
    gpa = GPATransporter(n_steps=5, warm_start=True, prealign=None, random_state=0)
    gpa.fit(X, sample_domain=sd)
    gpa.set_params(hidden_layer_sizes=(8,), solver="heun")
    with pytest.raises(ValueError, match="hidden_layer_sizes, solver changed"):
        gpa.fit(X, sample_domain=sd)
    assert gpa.n_steps_ == 5  # the fitted state is untouched
