"""The CNN discriminator (paper 000, Table 4b): operator norms, flows, the estimator."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from sklearn_gpa import GPATransporter
from sklearn_gpa._engine.conv import ConvCritic, ConvLayout
from sklearn_gpa._engine.divergences import get_divergence
from sklearn_gpa._engine.networks import flow_mask, make_activation
from sklearn_gpa.metrics import energy_distance


def _operator_norm(weight, n_flows, shape, flow, stride=2, padding=2):
    """The exact norm of flow ``flow``'s convolution on inputs of ``shape``, by SVD."""
    c, h, w = shape
    n = c * h * w
    x = torch.zeros(n, n_flows * c, h, w, dtype=weight.dtype)
    x[:, flow * c : (flow + 1) * c] = torch.eye(n, dtype=weight.dtype).view(n, c, h, w)
    y = torch.nn.functional.conv2d(x, weight, stride=stride, padding=padding, groups=n_flows)
    c_out = weight.shape[0] // n_flows
    return float(
        torch.linalg.matrix_norm(y[:, flow * c_out : (flow + 1) * c_out].reshape(n, -1), 2)
    )


def _critic(lipschitz=2.0, n_flows=3, constraint="hard", seed=0):
    layout = ConvLayout(64, (1, 8, 8), (4, 8), (16,), n_flows)
    critic = ConvCritic(
        layout,
        make_activation("leaky_relu"),
        get_divergence("kl"),
        lipschitz=lipschitz,
        constraint=constraint,
        generator=torch.Generator().manual_seed(seed),
        dtype=torch.float64,
    )
    return layout, critic


def _batch(n_flows=3, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_flows, 2 * n, 64, generator=g, dtype=torch.float64)
    z[:, n:] += 1.0
    w = torch.full((n_flows, n), 1.0 / n, dtype=torch.float64)
    return z, n, w


def test_layout_shapes_and_size():
    layout = ConvLayout(784, (1, 28, 28), (16, 32, 64), (32,), 10)
    assert layout.map_shapes == [(1, 28, 28), (16, 14, 14), (32, 7, 7), (64, 4, 4)]
    assert layout.head.n_features == 64 * 16
    assert layout.depth == 5
    critic_weights = 10 * (16 * 25 + 16 + 32 * 16 * 25 + 32 + 64 * 32 * 25 + 64)
    assert layout.conv_size == critic_weights
    assert layout.size == critic_weights + layout.head.size
    with pytest.raises(ValueError, match="image_shape"):
        ConvLayout(100, (1, 28, 28), (16,), (32,), 1)


def test_every_convolution_keeps_its_exact_operator_norm():
    """After each Adam update every convolution's true norm is L**(1/depth) (block iteration)."""
    layout, critic = _critic()
    z, n, w = _batch()
    worst = 0.0
    for step in range(60):
        critic.train_step(z, n, w, w)
        if step % 15 == 14:
            for i, (weight, _) in enumerate(layout.convolutions(critic.params)):
                for flow in range(3):
                    norm = _operator_norm(weight, 3, layout.map_shapes[i], flow)
                    worst = max(worst, abs(norm / critic.layer_norm - 1.0))
    assert worst < 2e-3
    for group in critic.weight_groups:
        np.testing.assert_allclose(
            torch.linalg.matrix_norm(group, 2).numpy(), critic.layer_norm, rtol=2e-3
        )


def test_gradient_is_bounded_by_L_and_flows_are_independent():
    layout, critic = _critic(lipschitz=2.0)
    z, n, w = _batch()
    for _ in range(40):
        critic.train_step(z, n, w, w)
    points = torch.randn(
        3, 400, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    grad = critic.gradient(points)
    assert grad.shape == points.shape
    assert float(grad.norm(dim=-1).max()) <= 2.0 * 1.003
    assert float(grad.norm(dim=-1).mean()) > 0.05
    moved = points.clone()
    moved[1] += 3.0
    phi, phi_moved = (layout.forward(critic.params, critic.activation, p) for p in (points, moved))
    assert torch.equal(phi[0], phi_moved[0]) and torch.equal(phi[2], phi_moved[2])
    assert not torch.allclose(phi[1], phi_moved[1])


def test_gradient_matches_finite_differences():
    layout, critic = _critic()
    point = torch.randn(3, 1, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grad = critic.gradient(point)
    step = 1e-6
    for coordinate in (0, 27, 63):
        shifted = point.clone()
        shifted[:, 0, coordinate] += step
        difference = layout.forward(critic.params, critic.activation, shifted)
        difference -= layout.forward(critic.params, critic.activation, point)
        np.testing.assert_allclose(
            (difference[:, 0] / step).numpy(), grad[:, 0, coordinate].numpy(), atol=1e-5
        )


def test_soft_constraint_trains_to_a_finite_critic():
    layout, critic = _critic(lipschitz=1.0, constraint="soft")
    z, n, w = _batch()
    values = [critic.train_step(z, n, w, w) for _ in range(30)]
    assert all(torch.isfinite(v).all() for v in values)
    assert float(values[-1].mean()) > float(values[0].mean())


SMALL_CNN = dict(discriminator="cnn", image_shape=(8, 8), conv_channels=(4, 8))


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    keep = np.isin(y, [0, 1])
    return X[keep][:120] / 16.0, y[keep][:120]


def test_cnn_transporter_generates_digits_class_by_class(digits):
    X, y = digits
    params = dict(
        **SMALL_CNN,
        hidden_layer_sizes=(32,),
        activation="leaky_relu",
        n_steps=150,
        L=10.0,
        dt=0.05,
        n_critic=3,
        dtype="float64",
        source="normal",  # far from the digits, so the flow's work shows
        random_state=0,
    )
    gpa = GPATransporter(**params).fit(X, y)
    assert gpa.image_shape_ == (1, 8, 8)
    assert np.isfinite(gpa.particles_).all()
    rng = np.random.RandomState(1)
    before = [
        energy_distance(gpa.center_ + gpa.scale_ * gpa.prior_.draw(k, 60, rng), X[y == k])
        for k in (0, 1)
    ]
    after = energy_distance(gpa.particles_[gpa.particle_labels_ == 0], X[y == 0])
    assert after < 0.6 * before[0]
    short = {**params, "n_steps": 5}
    np.testing.assert_array_equal(
        GPATransporter(**short).fit(X, y).particles_, GPATransporter(**short).fit(X, y).particles_
    )
    samples = gpa.sample(20, y=np.repeat([0, 1], 10), random_state=0)
    assert samples.shape == (20, 64) and np.isfinite(samples).all()
    assert energy_distance(samples[10:], X[y == 1]) < 0.6 * before[1]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"discriminator": "cnn"}, "needs image_shape"),
        (
            {"discriminator": "cnn", "image_shape": (7, 7)},
            "holds 49 values per image, but X has 64",
        ),
        ({"discriminator": "cnn", "image_shape": (2, 2, 2, 8)}, "image_shape must be"),
        ({"image_shape": (8, 8)}, "used by discriminator='cnn' only"),
        ({"discriminator": "cnn", "image_shape": (8, 8), "conv_channels": ()}, "conv_channels"),
    ],
)
def test_bad_cnn_settings_are_named(digits, params, message):
    X, y = digits
    with pytest.raises(ValueError, match=message):
        GPATransporter(n_steps=2, **params).fit(X, y)


def test_cnn_replay_retraces_the_training_particles(digits):
    """``transform`` replays the stored CNN flow (no dropout) onto the training rows."""
    X, _ = digits
    domain = np.where(np.arange(len(X)) < 60, 1, -1)
    shifted = X + 0.3 * (domain == 1)[:, None]
    gpa = GPATransporter(
        **SMALL_CNN,
        hidden_layer_sizes=(16,),
        n_steps=20,
        random_state=0,
    )
    trained = gpa.fit_transform(shifted, sample_domain=domain)
    replayed = gpa.transform(shifted, sample_domain=domain)
    assert np.abs(trained[domain == 1] - shifted[domain == 1]).max() > 0.1
    np.testing.assert_allclose(replayed, trained, atol=1e-5)


def test_cnn_warm_start_draws_the_same_dropout_as_one_run(digits):
    X, y = digits
    params = {**SMALL_CNN, "hidden_layer_sizes": (16,), "dtype": "float64", "random_state": 0}
    whole = GPATransporter(n_steps=12, **params).fit(X, y)
    parts = GPATransporter(n_steps=7, warm_start=True, **params).fit(X, y)
    parts.set_params(n_steps=5).fit(X, y)
    np.testing.assert_allclose(parts.particles_, whole.particles_, rtol=1e-12, atol=1e-12)
    parts.set_params(conv_channels=(4, 4))
    with pytest.raises(ValueError, match="conv_channels changed"):
        parts.fit(X, y)


def test_small_feature_maps_use_a_smaller_block():
    """A convolution whose input has fewer than 8 values still gets its exact norm."""
    layout = ConvLayout(16, (1, 4, 4), (1, 1), (4,), 2)
    critic = ConvCritic(
        layout,
        make_activation("relu"),
        get_divergence("kl"),
        lipschitz=1.0,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    z = torch.randn(2, 12, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = torch.full((2, 6), 1.0 / 6, dtype=torch.float64)
    for _ in range(40):
        critic.train_step(z, 6, w, w)
    for i, (weight, _) in enumerate(layout.convolutions(critic.params)):
        for flow in range(2):
            norm = _operator_norm(weight, 2, layout.map_shapes[i], flow)
            assert norm == pytest.approx(critic.layer_norm, rel=2e-3)
    assert layout.forward(critic.params, critic.activation, z[:, :0]).shape == (2, 0)


# -- the fast paths against the straightforward formulation they replaced ----------------
def _reference_forward(layout, flat, activation, z, generator=None):
    """phi of the K CNNs with contiguous (NCHW) maps and the dropout mask as a bool product."""
    k, t, _ = z.shape
    x = z.transpose(0, 1).reshape(t, k * layout.image_shape[0], *layout.image_shape[1:])
    for weight, bias in layout.convolutions(flat):
        x = torch.nn.functional.conv2d(
            x, weight, bias, stride=layout.stride, padding=layout.padding, groups=k
        )
        x, _ = activation.forward(x)
        if generator is not None:
            keep = torch.rand(x.shape, generator=generator, dtype=x.dtype)
            x = x * (keep >= layout.dropout) / (1.0 - layout.dropout)
    x = x.reshape(t, k, -1).transpose(0, 1)
    head = layout.head.layers(layout.head_params(flat))
    from sklearn_gpa._engine.networks import forward

    return forward(head, activation, x)[0]


@pytest.mark.parametrize("image_shape", [(1, 8, 8), (2, 5, 7)])
def test_channels_last_forward_matches_contiguous_maps(image_shape):
    """Same phi and the same dropout masks as contiguous maps, for several channels too."""
    n_features = int(np.prod(image_shape))
    layout = ConvLayout(n_features, image_shape, (4, 6), (8,), 3)
    critic = ConvCritic(
        layout,
        make_activation("leaky_relu"),
        get_divergence("kl"),
        lipschitz=1.0,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    z = torch.randn(
        3, 5, n_features, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    new = layout.forward(critic.params, critic.activation, z)
    old = _reference_forward(layout, critic.params, critic.activation, z)
    torch.testing.assert_close(new, old, rtol=1e-12, atol=1e-12)
    seeded = [torch.Generator().manual_seed(2) for _ in range(2)]
    new = layout.forward(critic.params, critic.activation, z, seeded[0])
    old = _reference_forward(layout, critic.params, critic.activation, z, seeded[1])
    torch.testing.assert_close(new, old, rtol=1e-12, atol=1e-12)
    # Dropout is on: it changes phi.
    assert not torch.allclose(new, layout.forward(critic.params, critic.activation, z))


def test_per_layer_gradient_matches_the_flat_vector_gradient():
    """dJ/dparams from per-layer leaves equals autograd on the whole flat vector."""
    layout, critic = _critic()
    z, n, w = _batch()
    critic.generator.manual_seed(5)
    critic._write_gradient(z, n, w, w, False)
    new = critic.grad.clone()
    params = critic.params.detach().requires_grad_(True)
    with torch.enable_grad():
        phi = _reference_forward(
            layout, params, critic.activation, z, torch.Generator().manual_seed(5)
        )
        _, grad_phi = critic._objective_gradient(phi.detach(), n, w, w, False)
        (old,) = torch.autograd.grad(phi, params, grad_phi)
    torch.testing.assert_close(new[: layout.n_weights], old[: layout.n_weights])
    assert new[: layout.n_weights].abs().max() > 0
    # nu's gradient, written by the objective, is the reference's too.
    torch.testing.assert_close(new[layout.n_weights :], critic.grad_nu)


def test_gram_norm_matches_svd():
    from sklearn_gpa._engine.conv import _top_singular_value

    rows = torch.randn(4, 8, 300, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows[1] *= 1e-3
    expected = torch.linalg.matrix_norm(rows, ord=2)
    torch.testing.assert_close(_top_singular_value(rows), expected, rtol=1e-12, atol=0)
    single = torch.randn(2, 8, 300, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        _top_singular_value(single), torch.linalg.matrix_norm(single, ord=2), rtol=1e-5, atol=0
    )


def test_power_iteration_adjoint_matches_transposed_convolution():
    """conv_norm's autograd adjoint is conv_transpose2d with the restoring output padding."""
    from sklearn_gpa._engine.conv import _orthonormalize

    layout = ConvLayout(2 * 5 * 7, (2, 5, 7), (3, 4), (8,), 2)
    _, critic = _critic()
    flat = layout.initialize(torch.Generator().manual_seed(0), torch.float64, "cpu")
    for index, (weight, _) in enumerate(layout.convolutions(flat)):
        c, h, w = layout.map_shapes[index]
        u = _orthonormalize(
            torch.randn(
                4, 2 * c, h, w, generator=torch.Generator().manual_seed(index), dtype=torch.float64
            ),
            2,
        )
        v = torch.nn.functional.conv2d(u, weight, stride=2, padding=2, groups=2)
        extra = [s - ((m - 1) * 2 - 4 + 5) for s, m in zip((h, w), v.shape[2:])]
        back = torch.nn.functional.conv_transpose2d(
            v, weight, stride=2, padding=2, output_padding=extra, groups=2
        )
        expected_u = _orthonormalize(back, 2)
        expected_sigma = torch.linalg.matrix_norm(v.reshape(4, 2, -1).transpose(0, 1), ord=2)
        sigma = layout.conv_norm(index, weight, u)
        torch.testing.assert_close(sigma[:, 0], expected_sigma)
        torch.testing.assert_close(u, expected_u)
        assert u.is_contiguous()


def _leaves(layout, flat, dtype):
    convolutions, head = layout.views(flat.to(dtype))
    return [
        [(w.detach().requires_grad_(True), b.detach().requires_grad_(True)) for w, b in part]
        for part in (convolutions, head)
    ]


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "smooth_relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_activation_dropout_matches_the_unfused_passes(activation, dtype):
    """One autograd node for activation and dropout: the same phi and gradients (to the bit
    for ReLU, to rounding for the others), with the same dropout masks."""
    layout = ConvLayout(2 * 8 * 8, (2, 8, 8), (4, 6), (8,), 3)
    act = make_activation(activation)
    flat = layout.initialize(torch.Generator().manual_seed(0), dtype, "cpu")
    z = torch.rand(3, 7, layout.n_features, generator=torch.Generator().manual_seed(1)).to(dtype)
    results = []
    for fused in (True, False):
        leaves = _leaves(layout, flat, dtype)
        with torch.enable_grad():
            phi = layout.forward_views(
                *leaves, act, z, torch.Generator().manual_seed(2), fused=fused
            )
            flat_leaves = [t for part in leaves for pair in part for t in pair]
            grads = torch.autograd.grad(phi, flat_leaves, torch.linspace(-1, 1, 21).view(3, 7))
        results.append((phi.detach(), grads))
    (phi_fused, grads_fused), (phi_plain, grads_plain) = results
    # Leaky ReLU can round a bias's gradient sum differently (1e-16 in float64).
    tolerance = {torch.float64: 1e-13, torch.float32: 1e-6}[dtype]
    for new, old in zip((phi_fused, *grads_fused), (phi_plain, *grads_plain)):
        if activation == "relu":
            assert torch.equal(new, old)
        else:
            torch.testing.assert_close(new, old, rtol=tolerance, atol=tolerance)
    assert all(g.abs().max() > 0 for g in grads_fused)


def test_first_convolution_runs_on_channels_last_maps(monkeypatch):
    """One input channel: the images are copied into channels-last order, where a view's
    strides would read as contiguous and every map after it would be contiguous too."""
    import sklearn_gpa._engine.conv as conv

    formats = []
    conv2d = conv.F.conv2d

    def recording(x, weight, *args, **kwargs):
        formats.append(x.is_contiguous(memory_format=torch.channels_last) and x.stride(1) == 1)
        return conv2d(x, weight, *args, **kwargs)

    monkeypatch.setattr(conv.F, "conv2d", recording)
    layout = ConvLayout(64, (1, 8, 8), (4, 8), (16,), 3)
    flat = layout.initialize(torch.Generator().manual_seed(0), torch.float32, "cpu")
    layout.forward(flat, make_activation("relu"), torch.rand(3, 5, 64))
    assert formats == [True, True]


def test_bfloat16_training_passes_stay_close_to_float32():
    """``train_dtype=torch.bfloat16``: same dropout draws, phi and the weights' gradient
    within bfloat16 rounding of float32's; the velocity and the norms stay float32, so the
    operator norms are exact after updates as in float32."""
    critics = {}
    for dtype in (None, torch.bfloat16):
        layout = ConvLayout(256, (1, 16, 16), (8, 16), (16,), 2)
        critics[dtype] = ConvCritic(
            layout,
            make_activation("relu"),
            get_divergence("kl"),
            lipschitz=1.0,
            generator=torch.Generator().manual_seed(0),
            train_dtype=dtype,
        )
    assert critics[torch.bfloat16].train_dtype is torch.bfloat16
    assert critics[None].train_dtype is None
    z = torch.rand(2, 40, 256, generator=torch.Generator().manual_seed(1))
    z[:, 20:] *= 0.5
    w = torch.full((2, 20), 1.0 / 20)
    grads = {}
    for dtype, critic in critics.items():
        critic.generator.manual_seed(3)
        value = critic._write_gradient(z, 20, w, w, True)
        grads[dtype] = (value, critic.grad[: layout.n_weights].clone())
    (value32, grad32), (value16, grad16) = grads.values()
    torch.testing.assert_close(value16, value32, rtol=2e-2, atol=1e-3)
    cosine = torch.dot(grad16, grad32) / (grad16.norm() * grad32.norm())
    assert cosine > 0.999  # 0.99997 measured; other dropout masks give far less
    assert (grad16 - grad32).norm() / grad32.norm() < 0.03
    critic = critics[torch.bfloat16]
    torch.testing.assert_close(
        critic.gradient(z[:, :20]), layout.gradient(critic.params, critic.activation, z[:, :20])
    )
    for _ in range(20):
        critic.train_step(z, 20, w, w)
    for i, (weight, _) in enumerate(layout.convolutions(critic.params)):
        for flow in range(2):
            norm = _operator_norm(weight.double(), 2, layout.map_shapes[i], flow)
            assert abs(norm / critic.layer_norm - 1.0) < 2e-3


def test_redraw_gives_one_flow_the_critic_a_fresh_draw_would_give():
    """``Critic.redraw`` (a flat critic's new start) draws and normalises the flow's weights
    as the constructor does, and leaves the other flows' weights alone."""
    _, critic = _critic(n_flows=3)
    z, n, w = _batch()
    with critic.no_graph():
        for _ in range(3):
            critic.train_step(z, n, w, w)
    trained = critic.params.detach().clone()
    critic.redraw(np.array([1]), torch.Generator().manual_seed(5))
    one, fresh = flow_mask(critic.layout, [1]), _critic(n_flows=1, seed=5)[1]
    others = flow_mask(critic.layout, [0, 2])
    torch.testing.assert_close(critic.params[one], fresh.params, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(critic.params[others], trained[others], rtol=0, atol=0)
