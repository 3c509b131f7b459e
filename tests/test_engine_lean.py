"""The critic's lean update path (``Critic._lean_step``) against the general one.

The lean path runs the same ops in the same order as ``_write_gradient``, ``_adam_ascent``
and ``spectral_normalize`` with everything bound once; every result must be the same to the
bit, and the path must be taken exactly where it applies.
"""

import numpy as np
import pytest
import torch

from sklearn_gpa._engine import critic as critic_module
from sklearn_gpa._engine import divergences
from sklearn_gpa._engine.critic import Critic
from sklearn_gpa._engine.divergences import get_divergence
from sklearn_gpa._engine.flow import pack_rows, train_flow
from sklearn_gpa._engine.integrators import get_tableau
from sklearn_gpa._engine.networks import MLPLayout, make_activation


def _problem(n_flows, dtype, n=40):
    rng = np.random.default_rng(7)
    sources = [rng.normal(size=(n, 2)) for _ in range(n_flows)]
    targets = [rng.normal(size=(n - 4 * k, 2)) + 3.0 for k in range(n_flows)]
    y, w_y = pack_rows(sources, dtype, "cpu")
    x, w_x = pack_rows(targets, dtype, "cpu")
    return y, w_y, x, w_x


def _run(
    monkeypatch,
    lean,
    *,
    n_flows=1,
    solver="euler",
    dtype=torch.float32,
    lipschitz=1.0,
    activation="relu",
    constraint="hard",
    divergence="kl",
    n_steps=16,
):
    monkeypatch.setattr(critic_module, "USE_LEAN", lean)
    y, w_y, x, w_x = _problem(n_flows, dtype)
    critic = Critic(
        MLPLayout(2, (16, 16, 16), n_flows),
        make_activation(activation),
        get_divergence(divergence),
        lipschitz=lipschitz,
        constraint=constraint,
        generator=torch.Generator().manual_seed(4),
        dtype=dtype,
    )
    result = train_flow(
        y, w_y, x, w_x, critic, get_tableau(solver), dt=0.1, n_steps=n_steps, n_critic=3
    )
    return result, critic


def _relu_critic(n_flows, seed):
    return Critic(
        MLPLayout(2, (16, 16, 16), n_flows),
        make_activation("relu"),
        get_divergence("kl"),
        lipschitz=1.0,
        generator=torch.Generator().manual_seed(seed),
    )


def _lean_plans(critic):
    return [plan for plan in critic._lean.values() if plan is not None]


@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(n_flows=3, solver="heun", dtype=torch.float64),
        dict(n_flows=2, lipschitz=10.0),  # layer norm != 1: the division by a 0-d tensor
        dict(activation="leaky_relu", lipschitz=3.0, dtype=torch.float64),
        dict(divergence="alpha", n_flows=2),
    ],
)
def test_lean_updates_are_the_general_updates_to_the_bit(monkeypatch, settings):
    # 16 steps of 3 updates: past the first exact (SVD) updates, which take the general path.
    lean, critic = _run(monkeypatch, True, **settings)
    assert len(_lean_plans(critic)) == 2  # the training rows and the velocity rows
    general, other = _run(monkeypatch, False, **settings)
    assert not _lean_plans(other)
    assert torch.equal(lean.particles, general.particles)
    assert torch.equal(lean.states, general.states)
    np.testing.assert_array_equal(lean.divergence, general.divergence)
    np.testing.assert_array_equal(lean.kinetic_energy, general.kinetic_energy)
    for name in ("params", "exp_avg", "exp_avg_sq", "n_updates"):
        assert torch.equal(getattr(critic, name), getattr(other, name)), name
    for u, v in zip(critic._left_vectors, other._left_vectors):
        assert torch.equal(u, v)


def test_lean_path_starts_after_the_exact_updates(monkeypatch):
    # 5 steps of 3 updates: all within the first exact updates, so no update ran lean; the
    # velocity (which needs no normalisation) did.
    _, critic = _run(monkeypatch, True, n_steps=5)
    assert critic._exact_left > 0
    n_rows = 40 + 40  # particles then targets
    assert n_rows not in critic._lean
    assert _lean_plans(critic)  # the velocity's


@pytest.mark.parametrize(
    "settings",
    [dict(activation="groupsort"), dict(constraint="soft"), dict(activation="smooth_relu")],
)
def test_lean_path_is_not_taken_where_it_does_not_apply(monkeypatch, settings):
    # GroupSort holds orthonormal weights (Bjorck, not the power iteration), the soft
    # constraint trains through autograd, the smooth ReLU has no in-place passes.
    result, critic = _run(monkeypatch, True, **settings)
    assert not _lean_plans(critic)
    assert np.isfinite(result.particles.numpy()).all()


def test_lean_path_follows_a_continued_run(monkeypatch):
    # A warm start loads the state into the tensors the plan holds (in place): continuing
    # from the saved state gives the uninterrupted run.
    whole, _ = _run(monkeypatch, True, n_steps=24)
    first, critic = _run(monkeypatch, True, n_steps=12)
    state = critic.state()
    y, w_y, x, w_x = _problem(1, torch.float32)
    again = _relu_critic(1, seed=99)
    with again.no_graph():
        again.load_state(state)
    second = train_flow(
        first.particles, w_y, x, w_x, again, get_tableau("euler"), dt=0.1, n_steps=12, n_critic=3
    )
    assert _lean_plans(again)
    assert torch.equal(second.particles, whole.particles)


def test_kl_constant_one_is_the_number_one():
    for dtype in (torch.float32, torch.float64):
        one = divergences._one(dtype, torch.device("cpu"))
        assert one.dtype == dtype and one.shape == () and float(one) == 1.0
        t = torch.tensor([0.3, 1e-8, -2.5], dtype=dtype)
        assert torch.equal(t.clone().sub_(one), t.clone().sub_(1.0))


@pytest.mark.parametrize("activation", ["relu", "groupsort"])
def test_small_ops_on_the_calling_thread_change_no_result(monkeypatch, activation):
    # On two threads, Adam and the normalisation run on the calling thread (lean path and
    # general path alike): the same numbers as when they ran on the thread team.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        calls = []
        real = torch.set_num_threads
        monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
        lean, critic = _run(monkeypatch, True, n_flows=6, activation=activation)
        assert 1 in calls and torch.get_num_threads() == 2
        calls.clear()
        general, _ = _run(monkeypatch, False, n_flows=6, activation=activation)
        assert calls == []
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(lean.particles, general.particles)
    assert torch.equal(lean.states, general.states)


def test_bound_ops_are_kept_for_the_same_tensors_only(monkeypatch):
    # The lean path binds an update's ops (and the velocity's) to their input tensors: kept
    # while the same tensors come back (a run's full batch), built anew for others
    # (mini-batches, a new stage position), never run on another call's tensors.
    y, w_y, x, w_x = _problem(2, torch.float32)
    critics, velocities = {}, {}
    for lean in (True, False):
        monkeypatch.setattr(critic_module, "USE_LEAN", lean)
        critic = _relu_critic(2, seed=4)
        with critic.no_graph():
            for update in range(60):  # the first 30 are exact updates (general path)
                if update % 10 == 0:
                    z = torch.cat([y + 0.1 * update, x], 1)
                critic.train_step(z, y.shape[1], w_y, w_x, with_value=update % 3 == 0)
            velocities[lean] = [critic.gradient(rows) for rows in (y, y, y + 1.0, y)]
        critics[lean] = critic
    for name in ("params", "exp_avg", "exp_avg_sq"):
        assert torch.equal(getattr(critics[True], name), getattr(critics[False], name)), name
    for lean, general in zip(velocities[True], velocities[False]):
        assert torch.equal(lean, general)
    plan = critics[True]._lean[z.shape[1]]
    monkeypatch.setattr(critic_module, "USE_LEAN", True)
    with critics[True].no_graph():
        kept = plan.update_ops(critics[True], z, y.shape[1], w_y, w_x, False)
        assert plan.update_ops(critics[True], z, y.shape[1], w_y, w_x, False) is kept
        assert plan.update_ops(critics[True], z.clone(), y.shape[1], w_y, w_x, False) is not kept
