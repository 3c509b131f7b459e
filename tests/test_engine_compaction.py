"""Flows that stop during a run leave its batch: the rest costs what the moving flows cost.

``flow._COMPACT = False`` is the run that keeps every flow in the batch to the end (before
2026-12-06): the flows still moving must follow the same path either way.
"""

import pickle

import numpy as np
import pytest
import torch

import sklearn_gpa._engine.flow as flow_module
from sklearn_gpa import GPATransporter
from sklearn_gpa._engine import run_gpa
from sklearn_gpa._engine.networks import flow_mask
from sklearn_gpa.utils import stack_domains

WELLS = np.array([[4.0, 4.0], [4.0, -4.0], [-4.0, 4.0], [-4.0, -4.0]])


def _wells(n, rng):
    return WELLS[rng.randint(4, size=n)] + 0.5 * rng.standard_normal((n, 2))


def _three_flows(seed=0, shift=1.0):
    """Flow 0 starts near its target (stops after a few checks), flows 1 and 2 far away."""
    rng = np.random.RandomState(seed)
    targets = [_wells(150, rng), _wells(120, rng) + 30, _wells(100, rng) - 20]
    sources = [_wells(150, rng) + [shift, 0.0], _wells(120, rng) - 10, _wells(100, rng) + 10]
    return sources, targets


def _both_ways(sources, targets, **kw):
    out = []
    for compact in (True, False):
        flow_module._COMPACT = compact
        try:
            out.append(run_gpa(sources, targets, **kw))
        finally:
            flow_module._COMPACT = True
    return out


SETTINGS = {
    "euler": {},
    "mini-batches": {"batch_size": 40},
    "heun, store_every=3": {"solver": "heun", "store_every": 3, "log_every": 10},
}


@pytest.mark.parametrize("name", SETTINGS)
def test_flows_still_moving_follow_the_same_path(name):
    sources, targets = _three_flows()
    kw = {"n_steps": 120, "log_every": 20, "stop": "auto", "seed": 3, **SETTINGS[name]}
    (new, new_flow), (old, old_flow) = _both_ways(sources, targets, **kw)
    assert 0 < new.stop_step[0] < 120 and new.stop_step[1:] == [-1, -1]
    assert new.stop_step == old.stop_step and new.n_steps == old.n_steps == 120
    # Every particle ends where it did with every flow in the batch, to the bit.
    assert torch.equal(new.particles, old.particles)
    assert torch.equal(new.alive, old.alive)
    np.testing.assert_array_equal(new.divergence[:, 1:], old.divergence[:, 1:])
    np.testing.assert_allclose(new.stop_score, old.stop_score, rtol=1e-9)  # float64 sums
    for k in (1, 2):
        mask = flow_mask(new_flow.layout, [k]).numpy()
        np.testing.assert_array_equal(
            new.critic_state["params"][mask], old.critic_state["params"][mask]
        )
    # Flow 0 was not trained after it stopped: NaN per step, no stored states.
    stop = new.stop_step[0]
    assert new.trained_steps == [stop, 120, 120]
    assert np.isnan(new.divergence[stop:, 0]).all() and np.isfinite(old.divergence[:, 0]).all()
    second = new_flow.stored.segments[1]
    assert second.flows.tolist() == [1, 2]
    every = kw.get("store_every", 1)
    assert second.shape[0] == -(-120 // every) - -(-stop // every)
    assert second.shape[2] == new_flow.layout.size * 2 // 3
    assert new_flow.nbytes < old_flow.nbytes
    # Replaying the rows gives the same positions, and flow 0's rows stop at its step.
    rows, labels = np.vstack(sources), np.repeat([0, 1, 2], [150, 120, 100])
    np.testing.assert_array_equal(
        new_flow.replay_rows(rows, labels), old_flow.replay_rows(rows, labels)
    )
    path = new_flow.replay_rows(rows, labels, path=10)
    np.testing.assert_array_equal(path, old_flow.replay_rows(rows, labels, path=10))
    assert path.shape == (13, 370, 2)
    first = path[:, :150]
    assert np.abs(np.diff(first[: stop // 10], axis=0)).max() > 0  # moved until it stopped
    np.testing.assert_array_equal(
        first[stop // 10 :], np.broadcast_to(first[stop // 10], first[stop // 10 :].shape)
    )


def test_widened_states_keep_a_stopped_flow_at_its_last_state():
    sources, targets = _three_flows()
    (new, flow), (_, old_flow) = _both_ways(
        sources, targets, n_steps=80, log_every=20, stop="auto", seed=3
    )
    stop = new.stop_step[0]
    states, before = flow.states, old_flow.states
    assert states.shape == before.shape
    mask0, mask12 = flow_mask(flow.layout, [0]).numpy(), flow_mask(flow.layout, [1, 2]).numpy()
    np.testing.assert_array_equal(states[..., mask12], before[..., mask12])
    np.testing.assert_array_equal(states[:stop][..., mask0], before[:stop][..., mask0])
    last = states[stop - 1][..., mask0]
    after = states[stop:][..., mask0]
    np.testing.assert_array_equal(after, np.broadcast_to(last, after.shape))


@pytest.mark.parametrize("name", SETTINGS)
def test_a_flow_left_alone_follows_the_same_path(name):
    # Two flows, one stops: the other runs alone.  A batch of one matrix takes other
    # kernels than a batch of several for thin products (the last bits differ): its critic
    # computes them as in a batch (``networks._paired``), and trains to the bit as before
    # (on one thread: torch splits the sums of one flow differently on several).
    sources, targets = _three_flows()
    sources, targets = sources[:2], targets[:2]
    kw = {"n_steps": 100, "log_every": 20, "stop": "auto", "seed": 3, **SETTINGS[name]}
    (new, flow), (old, old_flow) = _both_ways(sources, targets, **kw)
    stop = new.stop_step[0]
    assert 0 < stop < 100 and new.stop_step[1] == -1
    assert flow.stored.segments[-1].flows.tolist() == [1]
    assert torch.equal(new.particles, old.particles)
    np.testing.assert_array_equal(new.divergence[:, 1], old.divergence[:, 1])
    rows, labels = np.vstack(sources), np.repeat([0, 1], [150, 120])
    # Replay (float64) of one flow alone: the same to rounding.
    np.testing.assert_allclose(
        flow.replay_rows(rows, labels), old_flow.replay_rows(rows, labels), atol=1e-9
    )


def test_cnn_flows_keep_their_dropout_draws():
    # Dropout masks are drawn for every flow and each flow takes its share: the moving
    # flows' CNN critics train on the same masks as with every flow in the batch.  Flow 0
    # is frozen (as a continued run's stopped flow): it leaves the batch before step 0.
    rng = np.random.RandomState(0)
    sources = [rng.uniform(0, 1, (30, 64)) + shift for shift in (0.0, 3.0, -3.0)]
    targets = [rng.uniform(0, 1, (30, 64)) for _ in range(3)]
    kw = dict(
        image_shape=(1, 8, 8),
        conv_channels=(4, 8),
        hidden_layer_sizes=(16,),
        n_steps=6,
        seed=1,
        n_critic=2,
        frozen=np.array([True, False, False]),
    )
    (new, flow), (old, _) = _both_ways(sources, targets, **kw)
    assert len(flow.stored.segments[0].data[0]) == 0  # no state of all three flows
    assert flow.stored.segments[1].flows.tolist() == [1, 2]
    assert new.trained_steps == [0, 6, 6]
    # Up to rounding: a batch of two flows' convolutions may take other kernels than one of
    # three (equal to the bit on Intel Xeon, 1 float32 ulp apart on AMD EPYC); other dropout
    # masks would move the particles by orders of magnitude more.
    torch.testing.assert_close(new.particles, old.particles, rtol=1e-5, atol=1e-5)
    assert torch.equal(new.particles[0], torch.as_tensor(sources[0], dtype=torch.float32))
    rows, labels = np.vstack(sources), np.repeat([0, 1, 2], 30)
    np.testing.assert_allclose(
        flow.replay_rows(rows, labels)[30:], new.particles[1:].reshape(-1, 64), atol=1e-4
    )


def test_transporter_with_a_flow_stopped_mid_run_replays_pickles_and_continues():
    # Flow 0 a little nearer than elsewhere: it stops at the second check (score 0.19).
    # From 1.0 away its score wandered between 2.3 and 8 on one CPU and it never stopped
    # (it stopped by step 160 on another): rounding decides such a flow's path.
    sources, targets = _three_flows(shift=0.6)
    labels = [np.full(len(s), k) for k, s in enumerate(sources)]
    X, y, domain = stack_domains(
        np.vstack(sources), np.vstack(targets), np.concatenate(labels), np.concatenate(labels)
    )
    gpa = GPATransporter(
        prealign=None,
        n_steps=160,
        log_every=20,
        warm_start=True,
        random_state=0,
        store_encoding="float32",
    )
    moved = gpa.fit_transform(X, y, sample_domain=domain)
    stop = gpa.history_["stop_step"]
    assert 0 < stop[0] < 160 and (stop[1:] == -1).all()
    assert np.isfinite(gpa.history_["divergence"]).all()  # means over the trained flows
    assert len(gpa.flow_.stored.segments) == 2
    source_rows = domain >= 0
    np.testing.assert_allclose(
        gpa.transform(X[source_rows], y[source_rows]), moved[source_rows], atol=1e-3
    )
    again = pickle.loads(pickle.dumps(gpa))
    np.testing.assert_array_equal(
        again.transform(X[source_rows], y[source_rows]),
        gpa.transform(X[source_rows], y[source_rows]),
    )
    # Truncated at step 10, class 1 moves less; class 0 still stops at its step.
    stops = np.array([stop[0], 10, 160])
    short = gpa.replay(X[source_rows], y=y[source_rows], stop_steps=stops)
    full = gpa.replay(X[source_rows], y=y[source_rows])
    first = y[source_rows] == 0
    np.testing.assert_array_equal(short[first], full[first])
    assert np.abs(short[y[source_rows] == 1] - full[y[source_rows] == 1]).max() > 0.1
    # A continued run trains flows 1 and 2 only (flow 0 had stopped) and stays in place.
    particles = gpa.particles_.copy()
    gpa.set_params(n_steps=20).fit(X, y, sample_domain=domain)
    assert gpa.n_steps_ == 180 and gpa.history_["stop_step"][0] == stop[0]
    np.testing.assert_array_equal(gpa.particles_[: len(sources[0])], particles[: len(sources[0])])
    assert gpa.flow_.stored.segments[-1].flows.tolist() == [1, 2]
    np.testing.assert_allclose(
        gpa.transform(X[source_rows], y[source_rows]), gpa.particles_, atol=1e-3
    )


@pytest.mark.parametrize("encoding", ["float16", "delta8"])
def test_lossy_encodings_keep_each_piece_and_pickle(encoding):
    sources, targets = _three_flows()
    kw = {"n_steps": 80, "log_every": 20, "stop": "auto", "seed": 3}
    _, exact = run_gpa(sources, targets, **kw)
    _, lossy = run_gpa(sources, targets, store_encoding=encoding, **kw)
    assert [s.encoding for s in lossy.stored.segments] == [encoding] * 2
    assert lossy.nbytes < exact.nbytes / 1.9
    again = pickle.loads(pickle.dumps(lossy))
    rows, labels = np.vstack(sources), np.repeat([0, 1, 2], [150, 120, 100])
    replayed = again.replay_rows(rows, labels)
    np.testing.assert_array_equal(replayed, lossy.replay_rows(rows, labels))
    assert np.median(np.abs(replayed - exact.replay_rows(rows, labels))) < 1e-2


def test_paired_products_of_one_matrix_are_those_of_a_batch():
    from sklearn_gpa._engine.networks import PAIRED_BADDBMM, PAIRED_BMM

    gen = torch.Generator().manual_seed(0)
    for m, k, n in [(764, 32, 1), (1, 764, 32), (300, 32, 32)]:
        a, b = torch.randn(3, m, k, generator=gen), torch.randn(3, k, n, generator=gen)
        bias = torch.randn(3, 1, n, generator=gen)
        assert torch.equal(PAIRED_BMM(a[1:2], b[1:2]), torch.bmm(a, b)[1:2])
        out = torch.empty(1, m, n)
        PAIRED_BADDBMM(bias[1:2], a[1:2], b[1:2], out=out)
        assert torch.equal(out, torch.baddbmm(bias, a, b)[1:2])
