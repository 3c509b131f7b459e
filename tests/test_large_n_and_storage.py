"""batch_size="auto" (full batch when small, bounded when large), chunked velocities, and
the encodings of a stored flow (size and replay error)."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, load_wine

from sklearn_gpa import GPATransporter
from sklearn_gpa._engine import critic as critic_module
from sklearn_gpa._engine import flow as flow_module
from sklearn_gpa._engine import run_gpa
from sklearn_gpa._engine.critic import Critic
from sklearn_gpa._engine.divergences import get_divergence
from sklearn_gpa._engine.flow import AUTO_BATCH_ROWS, resolve_batch_size
from sklearn_gpa._engine.networks import MLPLayout, make_activation
from sklearn_gpa._engine.storage import BLOCK, STATE_ENCODINGS, StoredStates
from sklearn_gpa.utils import stack_domains


def _rows(n, d=3, seed=0, shift=0.0):
    return np.random.RandomState(seed).standard_normal((n, d)) + shift


# -- batch_size="auto" --------------------------------------------------------------------
def test_auto_batch_size_is_full_up_to_the_threshold_and_bounded_above():
    assert resolve_batch_size("auto", 300, 100) is None
    assert resolve_batch_size("auto", AUTO_BATCH_ROWS, AUTO_BATCH_ROWS) is None
    assert resolve_batch_size("auto", AUTO_BATCH_ROWS + 1, 10) == AUTO_BATCH_ROWS
    assert resolve_batch_size("auto", 10, 10 * AUTO_BATCH_ROWS) == AUTO_BATCH_ROWS
    assert resolve_batch_size(None, 10**6, 10**6) is None
    assert resolve_batch_size(64, 10, 10) == 64


def test_auto_batch_size_runs_small_problems_bit_identically_to_full_batch():
    X, _, sd = stack_domains(_rows(150), _rows(120, seed=1, shift=2.0))
    auto = GPATransporter(n_steps=20, stop=None, random_state=0).fit(X, sample_domain=sd)
    full = GPATransporter(n_steps=20, stop=None, batch_size=None, random_state=0)
    full.fit(X, sample_domain=sd)
    assert auto.batch_size == "auto"
    np.testing.assert_array_equal(auto.particles_, full.particles_)
    np.testing.assert_array_equal(auto.flow_.states, full.flow_.states)


def test_auto_batch_size_bounds_the_critics_rows_above_the_threshold(monkeypatch):
    monkeypatch.setattr(flow_module, "AUTO_BATCH_ROWS", 40)
    seen = []
    train_step = Critic.train_step

    def spy(self, z, *args, **kwargs):
        seen.append(z.shape[1])
        return train_step(self, z, *args, **kwargs)

    monkeypatch.setattr(Critic, "train_step", spy)
    run_gpa([_rows(40)], [_rows(30, seed=1)], n_steps=2, n_critic=2, batch_size="auto")
    assert seen == [70] * 4  # 40 particles and 30 targets: every row
    seen.clear()
    result, _ = run_gpa(
        [_rows(500)], [_rows(300, seed=1)], n_steps=2, n_critic=2, batch_size="auto"
    )
    assert seen == [80] * 4  # 40 rows per side
    assert result.particles.shape == (1, 500, 3)  # every particle still moves
    assert torch.all(torch.isfinite(result.particles))


def test_batch_size_auto_is_validated():
    X, _, sd = stack_domains(_rows(20), _rows(20, seed=1))
    with pytest.raises(ValueError, match="batch_size"):
        GPATransporter(batch_size="full").fit(X, sample_domain=sd)
    with pytest.raises(ValueError, match="batch_size"):
        GPATransporter(batch_size=0).fit(X, sample_domain=sd)


def test_velocity_in_chunks_equals_velocity_in_one_piece(monkeypatch):
    critic = Critic(
        MLPLayout(3, (16, 16), 2),
        make_activation("relu"),
        get_divergence("kl"),
        lipschitz=1.0,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    y = torch.as_tensor(np.stack([_rows(103, seed=4), _rows(103, seed=5)]))
    whole = critic.gradient(y)
    monkeypatch.setattr(critic_module, "VELOCITY_ROWS", 16)
    chunked = critic.gradient(y)
    assert chunked.shape == y.shape
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    assert whole.abs().sum() > 0


# -- stored flows -------------------------------------------------------------------------
def _walk(n_steps=400, n_params=1000, seed=0):
    """A sequence of states that moves like a warm-started critic: small steps."""
    rng = np.random.default_rng(seed)
    start = rng.standard_normal(n_params) * 0.2
    steps = rng.standard_normal((n_steps, n_params)) * 1e-3
    return (start + np.cumsum(steps, 0)).astype(np.float32)[:, None, :]


@pytest.mark.parametrize("encoding", STATE_ENCODINGS)
def test_stored_states_decode_the_same_after_pickling(encoding):
    states = _walk(50)
    stored = StoredStates.encode(states, encoding)
    decoded = stored.decode()
    assert decoded.shape == states.shape and decoded.dtype == np.float32
    again = pickle.loads(pickle.dumps(stored))
    assert again._decoded is None  # the decoded cache is not pickled
    np.testing.assert_array_equal(again.decode(), decoded)
    if encoding == "float32":
        np.testing.assert_array_equal(decoded, states)


def test_delta_encodings_do_not_accumulate_errors_along_the_flow():
    states = _walk(400)
    change = np.abs(np.diff(states[:, 0], axis=0))
    for encoding, bound in (("delta8", change.max() / 254), ("delta16", change.max() / 2048)):
        error = np.abs(StoredStates.encode(states, encoding).decode() - states)[:, 0]
        # Every state is within one step's rounding, the last as well as the second.
        assert error.max() <= 1.01 * bound + 1e-7, encoding
        assert error[-50:].max() <= 1.01 * bound + 1e-7
    # float16 rounds each weight: relative error 2^-11.
    error16 = np.abs(StoredStates.encode(states, "float16").decode() - states)
    assert np.all(error16 <= np.abs(states) * 2.0**-11 + 1e-7)


def test_delta8_scales_each_block_by_its_own_largest_change():
    states = np.zeros((2, 1, 2 * BLOCK), dtype=np.float32)
    states[1, 0, :BLOCK] = 1e-6  # small changes in the first block
    states[1, 0, BLOCK] = 1.0  # one large change in the second
    decoded = StoredStates.encode(states, "delta8").decode()
    np.testing.assert_allclose(decoded[1, 0, :BLOCK], 1e-6, rtol=1e-2)
    assert decoded[1, 0, BLOCK] == pytest.approx(1.0, rel=1e-6)


def test_stopped_flow_costs_almost_nothing_in_a_delta_encoding():
    moving = _walk(200)
    frozen = np.repeat(moving[:1], 200, axis=0)
    size_moving = StoredStates.encode(moving, "delta16").nbytes
    size_frozen = StoredStates.encode(frozen, "delta16").nbytes
    assert size_frozen < 0.05 * size_moving
    assert size_moving < 0.55 * moving.nbytes


def test_continued_flow_appends_its_own_segment():
    X, _, sd = stack_domains(_rows(60), _rows(60, seed=1, shift=1.0))
    gpa = GPATransporter(n_steps=10, stop=None, warm_start=True, random_state=0)
    gpa.fit(X, sample_domain=sd)
    first = gpa.flow_.states.copy()
    gpa.set_params(n_steps=5).fit(X, sample_domain=sd)
    assert len(gpa.flow_.stored.segments) == 2
    np.testing.assert_array_equal(gpa.flow_.states[:10], first)
    assert gpa.flow_.states.shape[0] == 15


@pytest.fixture(scope="module")
def wine_fits():
    """Class-conditional generation on wine, with each encoding, and its starts: 40 steps
    without the stopping rule, which with the default copula prior stops every wine flow at
    step 0 (nothing to store)."""
    X, y = load_wine(return_X_y=True)
    fits = {}
    for encoding in ("delta16", "float32"):
        gpa = GPATransporter(random_state=0, store_encoding=encoding, stop=None, n_steps=40)
        starts = {}
        draw = gpa._starting_points

        def record(*args, _draw=draw, _starts=starts, **kwargs):
            _starts["rows"] = _draw(*args, **kwargs)
            return _starts["rows"]

        gpa._starting_points = record
        gpa.fit(X, y)
        del gpa._starting_points
        fits[encoding] = gpa, starts["rows"]
    return X, fits


def test_default_wine_fit_pickles_to_at_most_one_megabyte(wine_fits):
    _, fits = wine_fits
    default, _ = fits["delta16"]
    # "auto" (the default) stores a generative flow as delta16.
    assert GPATransporter().store_encoding == "auto"
    X, y = load_wine(return_X_y=True)
    auto = GPATransporter(random_state=0).fit(X, y)
    assert auto.flow_.stored.encoding == "delta16"
    assert len(pickle.dumps(auto)) <= 1_000_000
    assert len(pickle.dumps(default)) <= 1_000_000
    # The same fit kept in float32 is about twice the size.
    assert len(pickle.dumps(fits["float32"][0])) > 1.6 * len(pickle.dumps(default))


def test_auto_encoding_keeps_integration_flows_exact():
    # transform of the training source rows replays them: it must give their particles.
    X, y = load_wine(return_X_y=True)
    rng = np.random.RandomState(0)
    domain = np.where(rng.rand(len(X)) < 0.5, 0, -1)
    X = X + 3.0 * X.std(0) * (domain == 0)[:, None]
    gpa = GPATransporter(random_state=0, n_steps=30, stop=None).fit(X, sample_domain=domain)
    assert gpa.flow_.stored.encoding == "float32"
    np.testing.assert_allclose(gpa.transform(X[domain == 0]), gpa.particles_, rtol=1e-5)


def test_default_wine_fit_replays_its_trained_particles(wine_fits):
    X, fits = wine_fits
    spread = np.sqrt(np.mean(np.sum((X - X.mean(0)) ** 2, 1)))
    errors = {}
    for encoding, (gpa, starts) in fits.items():
        flows = np.repeat(np.arange(len(starts)), [len(s) for s in starts])
        replayed = gpa._scaling.inverse_transform(gpa._replay(np.concatenate(starts), flows))
        trained = gpa._scaling.inverse_transform(np.concatenate(gpa._final_particles_))
        errors[encoding] = np.linalg.norm(replayed - trained, axis=1) / spread
        # Pickling changes nothing: the decoded weights are the stored ones.
        again = pickle.loads(pickle.dumps(gpa))
        np.testing.assert_array_equal(again.flow_.states, gpa.flow_.states)
    assert errors["float32"].max() < 1e-5
    assert np.median(errors["delta16"]) < 1e-5
    assert np.quantile(errors["delta16"], 0.99) < 1e-3
    assert np.sqrt(np.mean(errors["delta16"] ** 2)) < 0.01


# -- out_of_sample="auto" at large N -------------------------------------------------------
def test_leave_one_out_choice_predicts_a_bounded_number_of_rows(monkeypatch):
    from sklearn.neighbors import NearestNeighbors

    from sklearn_gpa._out_of_sample import leave_one_out_map

    queried = []
    kneighbors = NearestNeighbors.kneighbors

    def spy(self, X=None, *args, **kwargs):
        queried.append(len(X))
        return kneighbors(self, X, *args, **kwargs)

    monkeypatch.setattr(NearestNeighbors, "kneighbors", spy)
    rng = np.random.default_rng(0)
    start = rng.standard_normal((400, 5))
    shifted = start + 1.0 + 0.01 * rng.standard_normal((400, 5))  # a translation: nearest
    shrunk = 0.2 * start + 0.01 * rng.standard_normal((400, 5))  # a contraction: barycentric
    for end, expected in ((shifted, "nearest"), (shrunk, "barycentric")):
        assert leave_one_out_map(start, start, end) == expected
        assert leave_one_out_map(start, start, end, max_rows=60) == expected
    assert queried == [400, 60, 400, 60]


@pytest.mark.parametrize("encoding", ["float16", "delta16", "delta8"])
def test_non_finite_or_huge_states_are_kept_in_float32(encoding):
    states = _walk(20, n_params=300)
    states[5:, 0, 7] = np.nan  # one weight of a flow that failed at step 5
    stored = StoredStates.encode(states, encoding)
    assert stored.segments[0].encoding == "float32"
    np.testing.assert_array_equal(stored.decode(), states)
    huge = _walk(5, n_params=10) * 1e6
    assert StoredStates.encode(huge, encoding).segments[0].encoding == "float32"
    assert StoredStates.encode(_walk(5), encoding).segments[0].encoding == encoding


def test_default_small_image_fit_pickles_to_at_most_one_megabyte():
    """20 digits of each class.  Before: 3.35 MB, of which 1.3 MB were the copula's marginal
    tables (now computed on first use), 0.3 MB a second copy of the particles and 0.3 MB
    Adam moments that were still zero (the flows never moved)."""
    X, y = load_digits(return_X_y=True)
    rng = np.random.RandomState(0)
    rows = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), 20, replace=False) for c in range(10)]
    )
    gpa = GPATransporter(random_state=0).fit(X[rows] / 16, y[rows])
    stored = pickle.dumps(gpa)
    assert len(stored) <= 1_000_000
    again = pickle.loads(stored)
    np.testing.assert_array_equal(again.particles_, gpa.particles_)
    np.testing.assert_array_equal(again.particle_labels_, gpa.particle_labels_)
    asked = np.repeat(np.arange(10), 5)
    np.testing.assert_array_equal(
        again.sample(50, y=asked, random_state=1), gpa.sample(50, y=asked, random_state=1)
    )
    # A continued fit starts from the stored critic (zero moments included).
    again.set_params(warm_start=True, n_steps=gpa.n_steps_ + 5, stop=None)
    gpa.set_params(warm_start=True, n_steps=gpa.n_steps_ + 5, stop=None)
    np.testing.assert_array_equal(
        again.fit(X[rows] / 16, y[rows]).particles_, gpa.fit(X[rows] / 16, y[rows]).particles_
    )
