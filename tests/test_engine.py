"""The torch engine against autograd, closed forms and the papers' algorithm."""

import math

import numpy as np
import pytest
import torch

from sklearn_gpa._engine import pack_rows, run_gpa
from sklearn_gpa._engine.critic import Critic
from sklearn_gpa._engine.divergences import DIVERGENCES, get_divergence
from sklearn_gpa._engine.flow import train_flow
from sklearn_gpa._engine.integrators import get_tableau
from sklearn_gpa._engine.networks import (
    MLPLayout,
    forward,
    input_gradient,
    make_activation,
    parameter_gradient,
)

F64 = torch.float64


def _critic(f="kl", L=1.0, constraint="hard", n_flows=1, d=3, activation="relu", seed=0):
    layout = MLPLayout(d, (16, 16), n_flows)
    return Critic(
        layout,
        make_activation(activation),
        get_divergence(f),
        lipschitz=L,
        constraint=constraint,
        generator=torch.Generator().manual_seed(seed),
        dtype=F64,
    )


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_divergence_gradients_match_autograd(name):
    div = get_divergence(name)
    gen = torch.Generator().manual_seed(1)
    phi_y = torch.randn(2, 5, generator=gen, dtype=F64)
    phi_x = (0.3 * torch.randn(2, 7, generator=gen, dtype=F64)).requires_grad_(True)
    nu = torch.tensor([0.4, 0.9], dtype=F64, requires_grad=True)
    w_y = torch.full((2, 5), 0.2, dtype=F64)
    w_x = torch.full((2, 7), 1 / 7, dtype=F64)
    value = div.value(phi_y, phi_x, nu, w_y, w_x)
    auto_x, auto_nu = torch.autograd.grad(value.sum(), [phi_x, nu], allow_unused=True)
    grad_x, grad_nu = div.gradients(phi_x.detach(), nu.detach(), w_x)
    torch.testing.assert_close(grad_x, auto_x)
    torch.testing.assert_close(grad_nu, torch.zeros(2, dtype=F64) if auto_nu is None else auto_nu)


@pytest.mark.parametrize(
    "name, f",
    [
        ("kl", lambda t: t * math.log(t)),
        ("alpha", lambda t: (t**2 - 1) / 2),
        ("reverse_kl", lambda t: -math.log(t)),
        ("js", lambda t: t * math.log(t) - (t + 1) * math.log((t + 1) / 2)),
    ],
)
def test_conjugate_is_legendre_transform(name, f):
    # f*(y) = sup_t (t y - f(t)); at y = f'(t0) the sup is attained at t0 (Fenchel-Young).
    div = get_divergence(name)
    for t0 in (0.3, 1.0, 1.7):
        h = 1e-6
        slope = (f(t0 + h) - f(t0 - h)) / (2 * h)
        conj = float(div.conjugate(torch.tensor(slope, dtype=F64)))
        assert conj == pytest.approx(t0 * slope - f(t0), abs=1e-5)


def test_half_line_conjugates_stay_finite_past_their_domain():
    y = torch.tensor([-1.0, 0.5, 5.0, 50.0], dtype=F64)
    for name in ("reverse_kl", "js"):
        div = get_divergence(name)
        assert torch.isfinite(div.conjugate(y)).all()
        assert (div.conjugate_derivative(y)[1:] > 0).all()


def test_smooth_relu_is_c1_with_slope_in_unit_interval():
    act = make_activation("smooth_relu", eps=0.25)
    a = torch.linspace(-1, 2, 30001, dtype=F64)
    h, slope = act.forward(a)
    assert float(slope.min()) >= 0.0 and float(slope.max()) <= 1.0
    numeric = torch.diff(h) / torch.diff(a)
    torch.testing.assert_close(numeric, 0.5 * (slope[1:] + slope[:-1]), atol=1e-6, rtol=0)
    assert float(h[a <= 0].abs().max()) == 0.0
    torch.testing.assert_close(h[a >= 0.5], a[a >= 0.5] - 0.25)


@pytest.mark.parametrize("graph_free", [False, True])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "smooth_relu", "groupsort"])
def test_hand_written_backward_matches_autograd(activation, graph_free):
    # graph_free: as the engine runs it, in inference mode, where the backward pass
    # overwrites its own intermediate products in place.
    critic = _critic(activation=activation, n_flows=2)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 9, 3, generator=gen, dtype=F64)
    g_out = torch.randn(2, 9, generator=gen, dtype=F64)
    params = critic.params.detach().clone().requires_grad_(True)
    layers = critic.layout.layers(params)
    zz = z.clone().requires_grad_(True)
    phi, _, _ = forward(layers, critic.activation, zz)
    auto_params, auto_z = torch.autograd.grad((phi * g_out).sum(), [params, zz])

    with torch.inference_mode(graph_free):
        phi, inputs, saved = forward(critic.layers, critic.activation, z)
        grad = torch.zeros_like(critic.params)
        parameter_gradient(
            critic.layers, critic.activation, inputs, saved, g_out, critic.layout.layers(grad)
        )
        unit = input_gradient(critic.layers, critic.activation, saved)
    n_w = critic.layout.n_weights
    torch.testing.assert_close(grad[:n_w], auto_params[:n_w])
    # input_gradient is d phi / dz with unit output weights
    _, auto_unit = torch.autograd.grad(
        forward(layers, critic.activation, zz)[0].sum(), [params, zz]
    )
    torch.testing.assert_close(unit, auto_unit)


@pytest.mark.parametrize("L", [0.5, 1.0, 4.0])
def test_spectral_normalisation_tracks_true_norm(L):
    critic = _critic(L=L)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 60, 3, generator=gen, dtype=F64)
    w = torch.full((1, 30), 1 / 30, dtype=F64)
    with critic.no_graph():  # a graph-free critic changes its tensors in inference mode
        for _ in range(200):
            critic.train_step(z, 30, w, w)
    target = L ** (1 / critic.layout.depth)
    for weight, _ in critic.layers:
        sigma = torch.linalg.matrix_norm(weight, ord=2)
        torch.testing.assert_close(sigma, torch.full_like(sigma, target), rtol=2e-3, atol=0)


@pytest.mark.parametrize("activation", ["relu", "groupsort"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lipschitz_bound_holds_after_every_update(dtype, activation):
    # Early Adam updates outrun a power iteration (or a few Bjorck iterations); the critic
    # must stay L-Lipschitz anyway.
    critic = Critic(
        MLPLayout(2, (32, 32, 32), 1),
        make_activation(activation),
        get_divergence("kl"),
        lipschitz=10.0,
        generator=torch.Generator().manual_seed(0),
        dtype=dtype,
    )
    z = torch.randn(1, 400, 2, dtype=dtype)
    z[:, 200:] += 3
    w = torch.full((1, 200), 1 / 200, dtype=dtype)
    for _ in range(60):
        with critic.no_graph():
            critic.train_step(z, 200, w, w)
        bound = math.prod(float(torch.linalg.matrix_norm(W[0], ord=2)) for W, _ in critic.layers)
        assert bound <= 10.0 * (1 + 2e-3)


@pytest.mark.parametrize("activation", ["relu", "groupsort"])
def test_lipschitz_bound_holds_for_gradients(activation):
    critic = _critic(L=2.0, activation=activation)
    z = torch.randn(1, 500, 3, dtype=F64) * 3
    grad = critic.gradient(z)
    assert float(grad.norm(dim=-1).max()) <= 2.0 * (1 + 1e-3)


@pytest.mark.parametrize("L", [0.5, 1.0, 4.0])
def test_orthonormalisation_keeps_every_singular_value_at_the_layer_norm(L):
    critic = _critic(L=L, activation="groupsort", n_flows=2)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 60, 3, generator=gen, dtype=F64)
    z[:, 30:] += 1.0
    w = torch.full((2, 30), 1 / 30, dtype=F64)
    with critic.no_graph():
        for _ in range(200):
            critic.train_step(z, 30, w, w)
    target = L ** (1 / critic.layout.depth)
    for weight, _ in critic.layers:
        sigma = torch.linalg.svdvals(weight)
        torch.testing.assert_close(sigma, torch.full_like(sigma, target), rtol=1e-6, atol=0)


def test_groupsort_reaches_its_gradient_bound():
    # Trained towards the linear critic -x_1 (a translation along x_1), the tight network's
    # gradient norm comes close to L = 1 on the rows.
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 400, 3, generator=gen, dtype=F64)
    z[:, 200:, 0] += 4.0
    w = torch.full((1, 200), 1 / 200, dtype=F64)
    critic = _critic(L=1.0, activation="groupsort", f="kl")
    with critic.no_graph():
        for _ in range(500):
            critic.train_step(z, 200, w, w)
        norms = critic.gradient(z).norm(dim=-1)
    assert 0.95 < float(norms.median()) and float(norms.max()) <= 1.0 + 1e-6


def test_maxmin_sorts_pairs_and_preserves_norms():
    act = make_activation("groupsort")
    a = torch.tensor([[[1.0, 3.0, -2.0, -5.0]]], dtype=F64)
    h, swapped = act.forward(a.clone())
    torch.testing.assert_close(h, torch.tensor([[[3.0, 1.0, -2.0, -5.0]]], dtype=F64))
    g = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]], dtype=F64)
    torch.testing.assert_close(
        act.backward(g, swapped), torch.tensor([[[2.0, 1.0, 3.0, 4.0]]], dtype=F64)
    )


def test_groupsort_needs_even_widths_and_dense_critics():
    with pytest.raises(ValueError, match="even width"):
        Critic(
            MLPLayout(2, (5, 4), 1),
            make_activation("groupsort"),
            get_divergence("kl"),
            lipschitz=1.0,
            generator=torch.Generator().manual_seed(0),
        )
    src = np.zeros((4, 16))
    with pytest.raises(ValueError, match="dense critics"):
        run_gpa([src], [src + 1], image_shape=(1, 4, 4), activation="groupsort", n_steps=1)


def _gaussians(seed, n=60, shift=3.0, d=2):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d)) + shift


def test_flows_in_one_batch_are_independent():
    # Flow 0's trajectory must not depend on what flow 1 is doing.
    a_src, a_tgt = _gaussians(0)
    b_src, b_tgt = _gaussians(1)
    c_src, c_tgt = _gaussians(2, n=90, shift=-5.0)
    kw = dict(n_steps=30, dt=0.2, seed=7, dtype="float64", hidden_layer_sizes=(16, 16))
    first, _ = run_gpa([a_src, b_src], [a_tgt, b_tgt], **kw)
    second, _ = run_gpa([a_src, c_src], [a_tgt, c_tgt], **kw)
    torch.testing.assert_close(first.particles[0], second.particles[0][:60])


def test_replay_reproduces_training_particles():
    src, tgt = _gaussians(4)
    for solver in ("euler", "heun", "rk4"):
        result, flow = run_gpa([src], [tgt], n_steps=15, solver=solver, seed=1)
        y, _ = pack_rows([src], torch.float32, "cpu")
        replayed = flow.replay(y)
        np.testing.assert_array_equal(replayed, result.particles.numpy())


def test_store_every_keeps_fewer_states_and_replays_approximately():
    src, tgt = _gaussians(5)
    full, flow_full = run_gpa([src], [tgt], n_steps=40, seed=2)
    _, flow_sparse = run_gpa([src], [tgt], n_steps=40, seed=2, store_every=4)
    assert flow_sparse.states.shape[0] == 10 and flow_full.states.shape[0] == 40
    y, _ = pack_rows([src], torch.float32, "cpu")
    err = np.abs(flow_sparse.replay(y) - full.particles.numpy()).mean()
    moved = np.abs(full.particles.numpy() - y.numpy()).mean()
    assert err < 0.2 * moved


def test_gradient_penalty_keeps_speed_near_L():
    src, tgt = _gaussians(6, shift=6.0)
    result, _ = run_gpa([src], [tgt], constraint="soft", L=1.0, n_steps=40, seed=0, penalty=10.0)
    assert np.isfinite(result.kinetic_energy).all()
    assert result.kinetic_energy.max() < 2.0  # |grad phi|^2 stays around L^2 = 1


def test_non_finite_step_freezes_flow_and_is_reported():
    src, tgt = _gaussians(8, shift=1e4)
    result, flow = run_gpa(
        [src], [tgt], f="kl", L=None, n_steps=20, dt=1.0, learning_rate=0.5, log_every=5
    )
    assert result.stop_reason == "non-finite"
    assert result.failed_step[0] >= 0
    assert torch.isfinite(result.particles).all()
    assert not flow.alive[result.failed_step[0] :].any()


def test_minibatch_training_reaches_target():
    src, tgt = _gaussians(9, n=400, shift=3.0)
    result, _ = run_gpa([src], [tgt], n_steps=150, dt=0.1, batch_size=64, seed=3)
    moved = result.particles[0].numpy()
    assert np.linalg.norm(moved.mean(0) - tgt.mean(0)) < 0.5


def test_euler_step_matches_algorithm_1_by_hand():
    # One Euler step with one critic update equals Y - dt * grad phi_1(Y) for the critic
    # obtained by one ascent step from the same initialisation.
    src, tgt = _gaussians(10, n=20)
    y, w_y = pack_rows([src], F64, "cpu")
    x, w_x = pack_rows([tgt], F64, "cpu")
    critic = _critic(d=2, seed=5)
    twin = _critic(d=2, seed=5)
    result = train_flow(y, w_y, x, w_x, critic, get_tableau("euler"), dt=0.3, n_steps=1, n_critic=1)
    with twin.no_graph():
        twin.train_step(torch.cat([y, x], 1), 20, w_y, w_x)
    torch.testing.assert_close(result.particles, y - 0.3 * twin.gradient(y))


def test_graph_free_critic_runs_in_inference_mode_and_gives_the_same_numbers(monkeypatch):
    # The MLP critic with the hard constraint (or none) builds no autograd graph, so the
    # engine runs it in inference mode; the soft penalty and the CNN need autograd.
    assert not _critic().needs_autograd
    assert not _critic(L=None).needs_autograd
    assert _critic(constraint="soft").needs_autograd
    src, tgt = _gaussians(10, n=30)
    y, w_y = pack_rows([src], F64, "cpu")
    x, w_x = pack_rows([tgt], F64, "cpu")

    def run():
        critic = _critic(d=2, seed=3)
        seen, in_callback = [], []
        step = critic.train_step

        def recording_step(*args, **kwargs):
            seen.append(torch.is_inference_mode_enabled())
            return step(*args, **kwargs)

        critic.train_step = recording_step
        result = train_flow(
            y,
            w_y,
            x,
            w_x,
            critic,
            get_tableau("heun"),
            dt=0.2,
            n_steps=20,
            n_critic=3,
            log_every=5,
            # The user's callback runs outside inference mode (it may use autograd).
            callback=lambda *a: in_callback.append(torch.is_inference_mode_enabled()),
        )
        assert in_callback == [False] * 4
        return result, sorted(set(seen)), critic.params.is_inference()

    fast, seen, inference = run()
    assert seen == [True] and inference
    monkeypatch.setattr(Critic, "no_graph", lambda self: torch.inference_mode(False))
    plain, seen, inference = run()
    assert seen == [False] and not inference
    _assert_same_numbers(fast.particles, plain.particles)
    _assert_same_numbers(fast.states, plain.states)
    _assert_same_numbers(fast.divergence, plain.divergence)


def test_flows_in_cache_sized_groups_match_one_batch(monkeypatch):
    # Beyond a core's cache the critic runs its flows in groups; the numbers must not change.
    from sklearn_gpa._engine import critic as critic_module

    groups = [_gaussians(seed, n=40) for seed in range(3)]
    y, w_y = pack_rows([g[0] for g in groups], F64, "cpu")
    x, w_x = pack_rows([g[1][: 30 + 5 * i] for i, g in enumerate(groups)], F64, "cpu")

    def run():
        critic = _critic(d=2, n_flows=3, seed=4)
        result = train_flow(
            y, w_y, x, w_x, critic, get_tableau("heun"), dt=0.2, n_steps=8, n_critic=2
        )
        return result, critic

    one, critic = run()
    assert len(critic._flow_chunks(80)) == 1
    monkeypatch.setattr(critic_module, "_CACHE_BYTES", 1)  # one flow per group
    split, critic = run()
    assert [c.flows for c in critic._flow_chunks(80)] == [slice(i, i + 1) for i in range(3)]
    torch.testing.assert_close(split.particles, one.particles, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(split.states, one.states, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(split.divergence, one.divergence, rtol=1e-12)


def _assert_same_numbers(actual, expected):
    """Equal up to rounding: two code paths of the same arithmetic (a transposed copy of a
    weight or a view of it, inference mode or not) may reach BLAS kernels that sum in
    another order on another CPU (to the bit on Intel Xeon, not on AMD EPYC).  A real
    difference in the arithmetic is many orders of magnitude larger."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    tol = 1e-12 if actual.dtype == torch.float64 else 1e-5
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# -- the preallocated passes against the allocating ones they replace ----------------------
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
@pytest.mark.parametrize("hidden, n_flows", [((16, 16), 1), ((8, 12, 12), 3), ((8,), 2)])
def test_mlp_pass_matches_the_allocating_passes(dtype, activation, hidden, n_flows):
    from sklearn_gpa._engine.networks import MLPPass

    gen = torch.Generator().manual_seed(3)
    layout = MLPLayout(3, hidden, n_flows)
    act = make_activation(activation)
    params = layout.initialize(gen, dtype, "cpu")
    grad_new, grad_old = torch.zeros_like(params), torch.zeros_like(params)
    layers = layout.layers(params)
    weights_t = [None] + [w.transpose(1, 2).contiguous() for w, _ in layers[1:-1]] + [None]
    z = torch.randn(n_flows, 50, 3, generator=gen, dtype=dtype)
    grad_phi = torch.randn(n_flows, 50, generator=gen, dtype=dtype)
    with torch.inference_mode():
        passes = MLPPass(layers, layout.layers(grad_new), weights_t, act, 50)
        passes.forward(z)
        passes.grad_phi.copy_(grad_phi)
        passes.parameter_gradient(z)
        phi, inputs, saved = forward(layers, act, z)
        parameter_gradient(layers, act, inputs, saved, grad_phi, layout.layers(grad_old))
        _assert_same_numbers(passes.phi, phi)
        _assert_same_numbers(grad_new, grad_old)
        assert grad_new.abs().sum() > 0
        velocity = passes.input_gradient(z[:, :50])
        _, _, saved = forward(layers, act, z, output=False)
        _assert_same_numbers(velocity, input_gradient(layers, act, saved))
        # The result is the caller's: the next pass does not overwrite it.
        before = velocity.clone()
        passes.input_gradient(torch.randn(n_flows, 50, 3, generator=gen, dtype=dtype))
        assert torch.equal(velocity, before)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("n_flows", [1, 2, 10])
def test_thin_products_keep_the_numbers_of_bmm(dtype, n_flows):
    # The output column as a row times a matrix (where ``_row_form`` takes it) and the
    # gradient back through it as an elementwise outer product, against ``bmm`` itself.
    from sklearn_gpa._engine.networks import PAIRED_BMM, MLPPass, output_column

    gen = torch.Generator().manual_seed(1)
    h = torch.randn(n_flows, 400, 32, generator=gen, dtype=dtype)
    w = torch.randn(n_flows, 32, 1, generator=gen, dtype=dtype)
    g = torch.randn(n_flows, 400, 1, generator=gen, dtype=dtype)
    out = torch.empty(n_flows, 400, 1, dtype=dtype)
    _assert_same_numbers(output_column(torch.bmm, h, w, out), torch.bmm(h, w))
    # A flow alone computed as in a batch (``paired``) gets the batch's numbers.
    alone = torch.empty(1, 400, 1, dtype=dtype)
    output_column(PAIRED_BMM, h[:1], w[:1], alone, paired=True)
    _assert_same_numbers(alone, torch.bmm(h[:1].expand(2, -1, -1), w[:1].expand(2, -1, -1))[:1])
    # One multiplication per entry: the same bits on any CPU.
    assert torch.equal(torch.mul(g, w.transpose(1, 2)), torch.bmm(g, w.transpose(1, 2)))
    layout = MLPLayout(2, (32, 32), n_flows)
    layers = layout.layers(layout.initialize(gen, dtype, "cpu"))
    grads = layout.layers(torch.zeros(layout.size, dtype=dtype))
    with torch.inference_mode():
        passes = MLPPass(layers, grads, None, make_activation("relu"), 40)
    assert (passes._phi_row is not None) == (dtype == torch.float32 and n_flows > 1)


@pytest.mark.parametrize("solver, n_flows", [("euler", 1), ("heun", 3)])
def test_training_with_preallocated_passes_gives_the_same_numbers(monkeypatch, solver, n_flows):
    # The whole run (critic updates, velocities, stored states) with the buffers and the
    # transposed weight copies against the allocating passes on transposed views.  In
    # float64: over 40 steps a float32 rounding difference at a ReLU's kink grows to 1e-2.
    from sklearn_gpa._engine import critic as critic_module

    groups = [_gaussians(seed, n=40) for seed in range(n_flows)]
    y, w_y = pack_rows([g[0] for g in groups], F64, "cpu")
    x, w_x = pack_rows([g[1][: 30 + 5 * i] for i, g in enumerate(groups)], F64, "cpu")

    def run(plain):
        layout = MLPLayout(2, (32, 32, 32), n_flows)
        gen = torch.Generator().manual_seed(5)
        critic = Critic(
            layout,
            make_activation("relu"),
            get_divergence("kl"),
            lipschitz=1.0,
            generator=gen,
            dtype=F64,
        )
        if plain:
            critic.weights_t = None
        result = train_flow(
            y, w_y, x, w_x, critic, get_tableau(solver), dt=0.5, n_steps=40, n_critic=3
        )
        return result, critic

    fast, critic = run(plain=False)
    assert critic._flow_chunks(y.shape[1] + x.shape[1])[0].passes is not None
    monkeypatch.setattr(critic_module, "_WORKSPACE_BYTES", 0)
    plain, critic = run(plain=True)
    assert critic._flow_chunks(y.shape[1] + x.shape[1])[0].passes is None
    _assert_same_numbers(fast.particles, plain.particles)
    _assert_same_numbers(fast.states, plain.states)
    _assert_same_numbers(fast.divergence, plain.divergence)
    _assert_same_numbers(fast.kinetic_energy, plain.kinetic_energy)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_divergence_values_and_gradients_written_in_place_are_the_same_numbers(name):
    div = get_divergence(name)
    gen = torch.Generator().manual_seed(2)
    phi = torch.randn(2, 12, generator=gen)
    phi_y, phi_x = phi[:, :5], phi[:, 5:]
    nu = torch.tensor([0.1, -0.3])
    w_y, w_x = torch.full((2, 5), 0.2), torch.full((2, 7), 1 / 7)
    grad_x, grad_nu = torch.empty(2, 7), torch.empty(2)
    value = div.value_and_gradients_into(phi_y, phi_x, nu, w_y, w_x, grad_x, grad_nu)
    expected_x, expected_nu = div.gradients(phi_x, nu, w_x)
    assert torch.equal(value, div.value(phi_y, phi_x, nu, w_y, w_x))
    assert torch.equal(grad_x, expected_x)
    assert torch.equal(grad_nu, expected_nu)
    div.gradients_into(phi_x, nu, w_x, grad_x.zero_(), grad_nu.zero_())
    assert torch.equal(grad_x, expected_x)
    assert torch.equal(grad_nu, expected_nu)


def test_flush_denormals_sets_the_flag_and_restores_it():
    """Engine work on one thread runs with subnormals flushed (a hundredfold slow path on
    Intel CPUs); the caller's setting comes back afterwards, and one already on stays on.
    Work on several threads does not set the flag."""
    from sklearn_gpa._engine import device

    subnormal = torch.tensor([1e-39], dtype=torch.float32)
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals")
    assert not device._flushing_denormals() and float(subnormal * 1.0) > 0
    with device.cpu_threads(1):
        assert device._flushing_denormals() and float(subnormal * 1.0) == 0.0
    assert not device._flushing_denormals()
    with device.cpu_threads(2):  # worker threads started here would inherit the flag
        assert not device._flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        with device.flush_denormals():
            assert device._flushing_denormals()
        assert device._flushing_denormals()
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("constraint", ["hard", "soft"])
def test_critic_sets_subnormal_state_to_zero_on_schedule(constraint, monkeypatch):
    """Weights that no longer get a gradient decay into the subnormal range (on threads
    without the CPU flag nothing else stops them): every ``_FLUSH_EVERY`` updates, and only
    then, the critic's weights, moments and power-iteration vectors lose their subnormal
    values, and only those; a continued critic keeps the schedule."""
    from sklearn_gpa._engine import critic as critic_module

    critic = _critic(constraint=constraint)
    tiny = torch.finfo(critic.params.dtype).tiny
    state = [critic.params, critic.exp_avg, critic.exp_avg_sq, *(critic._left_vectors or ())]
    state = [t for t in state if t.numel() >= 3]
    assert len(state) >= 4  # the power-iteration vectors too
    flushed_after = []
    real_flush = critic_module.Critic._flush_subnormals

    def counting_flush(self):
        flushed_after.append(self._updates)
        real_flush(self)

    monkeypatch.setattr(critic_module.Critic, "_flush_subnormals", counting_flush)
    rng = torch.Generator().manual_seed(0)
    z = torch.randn(1, 40, 3, generator=rng, dtype=F64)
    w = torch.full((1, 20), 1 / 20, dtype=F64)
    every = critic_module._FLUSH_EVERY
    with critic.no_graph():
        for _ in range(2 * every + 5):
            critic.train_step(z, 20, w, w)
        assert flushed_after == [every, 2 * every]
        twin = _critic(constraint=constraint)
        twin.load_state(critic.state())
        for _ in range(every - 5):
            twin.train_step(z, 20, w, w)
        assert flushed_after == [every, 2 * every, 3 * every]
        for t in state:
            t.view(-1)[:3] = torch.tensor([tiny / 4, -tiny / 1e3, 2 * tiny], dtype=t.dtype)
        critic._flush_subnormals()
    assert all(t.view(-1)[:2].eq(0).all() and float(t.view(-1)[2]) == 2 * tiny for t in state)


@pytest.mark.parametrize("redraw", [True, False])
def test_a_flat_critic_is_drawn_anew_and_the_flow_moves_again(monkeypatch, redraw):
    """Every ReLU unit of flow 0's critic inactive: no gradient for the particles or the
    weights, so without a fresh draw the flow never moves; flow 1 is not touched."""
    from sklearn_gpa._engine import flow as flow_module

    monkeypatch.setattr(flow_module, "_REDRAW_FLAT", redraw)
    (a_src, a_tgt), (b_src, b_tgt) = _gaussians(11, n=30), _gaussians(12, n=30)
    y, w_y = pack_rows([a_src, b_src], F64, "cpu")
    x, w_x = pack_rows([a_tgt, b_tgt], F64, "cpu")

    def run(kill):
        critic = _critic(d=2, n_flows=2, seed=3)
        _kill(critic, [0] if kill else [])
        return train_flow(
            y,
            w_y,
            x,
            w_x,
            critic,
            get_tableau("euler"),
            dt=0.3,
            n_steps=20,
            n_critic=2,
            log_every=5,
        )

    result, healthy = run(kill=True), run(kill=False)
    assert (result.kinetic_energy[:5, 0] == 0).all()
    np.testing.assert_array_equal(result.particles[1], healthy.particles[1])
    if redraw:
        assert result.redrawn == [1, 0]
        assert (result.kinetic_energy[5:, 0] > 0).all()
        assert (result.particles[0] - y[0]).abs().max() > 0.1
    else:
        assert result.redrawn == [0, 0]
        assert (result.kinetic_energy[:, 0] == 0).all()
        np.testing.assert_array_equal(result.particles[0], y[0])


def _kill(critic, flows):
    """Every ReLU unit of ``flows``' critics inactive on rows near the origin."""
    with critic.no_graph():
        for w, b in critic.layers[:-1]:
            for k in flows:
                w[k].mul_(1e-3)
                b[k].fill_(-1.0)


def test_a_redrawn_critic_depends_on_its_flow_only_and_a_continued_run_draws_the_same():
    data = [_gaussians(seed, n=30) for seed in (13, 14, 15)]
    y, w_y = pack_rows([s for s, _ in data], F64, "cpu")
    x, w_x = pack_rows([t for _, t in data], F64, "cpu")

    def run(n_steps=20, critic=None, start=None, callback=None):
        return train_flow(
            y if start is None else start,
            w_y,
            x,
            w_x,
            critic,
            get_tableau("euler"),
            dt=0.3,
            n_steps=n_steps,
            n_critic=2,
            log_every=5,
            callback=callback,
        )

    both, alone = _critic(d=2, n_flows=3, seed=4), _critic(d=2, n_flows=3, seed=4)
    _kill(both, [0, 2])
    _kill(alone, [2])
    both, alone = run(critic=both), run(critic=alone)
    assert both.redrawn == [1, 0, 1] and alone.redrawn == [0, 0, 1]
    np.testing.assert_array_equal(both.particles[2], alone.particles[2])

    # Flow 0 goes flat after step 10: in one run of 20 steps, and in 10 continued by 10.
    critic = _critic(d=2, n_flows=3, seed=4)
    whole = run(critic=critic, callback=lambda step, *_: step + 1 == 10 and _kill(critic, [0]))
    critic = _critic(d=2, n_flows=3, seed=4)
    first = run(n_steps=10, critic=critic)
    _kill(critic, [0])
    second = run(n_steps=10, critic=critic, start=first.particles)
    assert whole.redrawn == second.redrawn == [1, 0, 0]
    np.testing.assert_allclose(second.particles, whole.particles, rtol=1e-12, atol=1e-12)
