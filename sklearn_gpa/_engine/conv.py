"""Batched Lipschitz CNN discriminators for images (paper 000, Table 4b).

K networks (one per flow) run as one grouped convolution: flow k's images are channels
``k * C ... (k + 1) * C - 1`` of a ``(T, K * C, H, W)`` batch, and a convolution with
``groups=K`` keeps the flows apart.  Three (by default) 5 x 5 convolutions of stride 2, each
followed by the activation and, while the critic trains, dropout of rate 0.3; then a dense
head (an ``MLPLayout``) down to one output.

Spectral normalisation uses the exact operator norm of each convolution on its input shape
(padding and stride included), found by a persistent power iteration through the convolution
and its adjoint (the transposed convolution).  The common shortcut of normalising the kernel
reshaped to a matrix does not bound the operator norm, so it would not make phi L-Lipschitz.

The gradients of a CNN are left to autograd: the hand-written passes of ``networks`` pay off
for the tiny MLPs, while a convolution's cost is in the convolution itself.  What is around
the convolutions is kept cheap (``benchmarks/bench_images.py``): feature maps are channels-last
(NHWC), which oneDNN's grouped convolutions run at least as fast on the CPU; autograd differentiates
with respect to separate views of each layer's weights, not the flat vector (each slice of
which would otherwise cost a zero-filled copy of the whole vector in the backward pass); a
convolution's norm is read from the small Gram matrix of its power-iteration block instead of
an SVD of the block's images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .critic import _POWER_ITERATIONS_AT_START, Critic
from .networks import MLPLayout, forward

__all__ = ["ConvCritic", "ConvLayout"]

# Vectors per flow in the block power iteration of a convolution's norm.
_CONV_SUBSPACE = 8
# Power iterations for a convolution's norm while Adam's first updates move the weights fast
# (where the MLP uses an exact SVD).
_CONV_ITERATIONS_AT_START = 10


@dataclass(frozen=True)
class ConvLayout:
    """Where the convolutions and the dense head of K CNNs sit in a flat parameter vector.

    Convolution ``l`` has weight ``(K * c_out, c_in, k, k)`` and bias ``(K * c_out,)``; the
    head's parameters (``MLPLayout`` on the flattened last feature map, with the shift ``nu``
    of the f-divergence at its end) follow.
    """

    n_features: int
    image_shape: tuple  # (channels, height, width)
    channels: tuple
    hidden_layer_sizes: tuple
    n_flows: int
    kernel_size: int = 5
    stride: int = 2
    dropout: float = 0.3

    #: The convolutions' gradients come from autograd.
    needs_autograd: ClassVar[bool] = True

    def __post_init__(self):
        if math.prod(self.image_shape) != self.n_features:
            raise ValueError(
                f"image_shape {self.image_shape} holds {math.prod(self.image_shape)} values "
                f"but the rows have {self.n_features} features."
            )

    @property
    def padding(self) -> int:
        return self.kernel_size // 2

    @property
    def map_shapes(self) -> list:
        """The (channels, height, width) entering each convolution, then leaving the last."""
        c, h, w = self.image_shape
        shapes = [(c, h, w)]
        for out in self.channels:
            h = (h + 2 * self.padding - self.kernel_size) // self.stride + 1
            w = (w + 2 * self.padding - self.kernel_size) // self.stride + 1
            shapes.append((out, h, w))
        return shapes

    @property
    def head(self) -> MLPLayout:
        return MLPLayout(math.prod(self.map_shapes[-1]), self.hidden_layer_sizes, self.n_flows)

    @property
    def depth(self) -> int:
        return len(self.channels) + self.head.depth

    @property
    def conv_size(self) -> int:
        k2, shapes = self.kernel_size**2, self.map_shapes
        return sum(
            self.n_flows * c_out * (c_in * k2 + 1)
            for (c_in, _, _), (c_out, _, _) in zip(shapes[:-1], shapes[1:])
        )

    @property
    def n_weights(self) -> int:
        return self.conv_size + self.head.n_weights

    @property
    def size(self) -> int:
        return self.conv_size + self.head.size

    @property
    def macs_per_row(self) -> int:
        k2, shapes = self.kernel_size**2, self.map_shapes
        convs = sum(
            c_in * k2 * c_out * h * w
            for (c_in, _, _), (c_out, h, w) in zip(shapes[:-1], shapes[1:])
        )
        return convs + self.head.macs_per_row

    @property
    def values_per_row(self) -> int:
        """Activations one row leaves behind in one network (the memory of a pass)."""
        return sum(math.prod(shape) for shape in self.map_shapes) + self.head.values_per_row

    def convolutions(self, flat: torch.Tensor) -> list:
        """Views ``[(weight, bias), ...]`` of the convolutions in ``flat`` (1-D); no copy."""
        k, size, shapes = self.n_flows, self.kernel_size, self.map_shapes
        out, offset = [], 0
        for (c_in, _, _), (c_out, _, _) in zip(shapes[:-1], shapes[1:]):
            n_w = k * c_out * c_in * size * size
            weight = flat[offset : offset + n_w].view(k * c_out, c_in, size, size)
            bias = flat[offset + n_w : offset + n_w + k * c_out]
            out.append((weight, bias))
            offset += n_w + k * c_out
        return out

    def head_params(self, flat: torch.Tensor) -> torch.Tensor:
        return flat[..., self.conv_size :]

    def parameter_flows(self) -> torch.Tensor:
        """The flow of every value of the flat parameter vector (``MLPLayout``'s)."""
        flat = torch.empty(self.size, dtype=torch.long)
        flows = torch.arange(self.n_flows)[:, None]
        for weight, bias in self.convolutions(flat):
            for t in (weight.view(self.n_flows, -1), bias.view(self.n_flows, -1)):
                t.copy_(flows.expand_as(t))
        self.head_params(flat).copy_(self.head.parameter_flows())
        return flat

    def nu(self, flat: torch.Tensor) -> torch.Tensor:
        return flat[..., self.n_weights :]

    def initialize(self, generator: torch.Generator, dtype, device) -> torch.Tensor:
        """PyTorch's default initialisation (uniform in +-1/sqrt(fan_in)), nu = 0."""
        flat = torch.zeros(self.size, dtype=dtype, device=device)
        for weight, bias in self.convolutions(flat):
            bound = 1.0 / math.sqrt(weight[0].numel())
            for t in (weight, bias):
                t.copy_(torch.rand(t.shape, generator=generator, dtype=dtype, device=device))
                t.mul_(2.0 * bound).sub_(bound)
        self.head_params(flat).copy_(self.head.initialize(generator, dtype, device))
        return flat

    def views(self, flat: torch.Tensor) -> tuple:
        """``(convolutions, head layers)``: views of every layer's weight and bias in ``flat``."""
        return self.convolutions(flat), self.head.layers(self.head_params(flat))

    def forward(self, flat, activation, z, dropout_generator=None, draws=None):
        """``phi`` (K, T) of the K networks on ``z`` (K, T, d); dropout when given a generator.

        ``draws`` (index, total): the K networks are flows ``index`` of ``total`` and take
        their share of the dropout masks drawn for all ``total`` (``Critic.select``).
        """
        return self.forward_views(*self.views(flat), activation, z, dropout_generator, draws)

    def forward_views(
        self,
        convolutions,
        head_layers,
        activation,
        z,
        dropout_generator=None,
        draws=None,
        dtype=None,
        fused=False,
    ):
        """``forward`` with the layers given as lists of ``(weight, bias)``, as ``views``
        returns them (or as autograd leaves made from those views).

        The images enter channels-last: ``(T, K * C, H, W)`` with the channels innermost in
        memory, in one copy of ``z``; the last feature map is flattened in (c, h, w) order
        for the head, as a contiguous map would be.  With ``dtype`` (``torch.bfloat16``)
        the convolutions, activations and dropout run in that type on copies of the
        weights and of ``z`` (gradients flow back to the originals in their type); the
        dense head runs in the type of its weights.  ``fused``: activation and dropout as
        one autograd node (``_ActivationDropout``: same numbers, fewer passes and stored
        maps, no double backward).
        """
        k, t, _ = z.shape
        c, h, w = self.image_shape
        channels_last = torch.channels_last
        # One copy into channels-last order: the reshape's for several channels, ``to``'s
        # for one, where the reshape is a view whose strides are neither format and oneDNN
        # would run the first convolution and everything after it on contiguous maps.
        x = (
            z.reshape(k, t, c, h, w)
            .permute(1, 3, 4, 0, 2)
            .reshape(t, h, w, k * c)
            .permute(0, 3, 1, 2)
            .to(dtype=dtype or z.dtype, memory_format=channels_last)
        )
        # bfloat16 maps are masked by 0 or 1 and owe the dropout's scale ``1 / (1 - rate)``
        # (not a bfloat16 number) to the next layer: its weights are scaled before their
        # cast, the head's input after its cast.
        owed = 1.0
        for weight, bias in convolutions:
            if dtype is not None:
                weight = weight if owed == 1.0 else weight * owed
                weight, bias = weight.to(dtype), bias.to(dtype)
            x = F.conv2d(
                x,
                weight.contiguous(memory_format=channels_last),
                bias,
                stride=self.stride,
                padding=self.padding,
                groups=k,
            )
            if dropout_generator is not None and self.dropout > 0:
                # The draws of a contiguous map, in its order: the masks do not depend on
                # the memory format or the arithmetic's type.
                keep = _dropout_draws(x, k, dropout_generator, draws)
                if fused:
                    x = _ActivationDropout.apply(x, keep, activation, self.dropout)
                    owed = 1.0 if x.dtype == keep.dtype else 1.0 / (1.0 - self.dropout)
                else:
                    x, _ = activation.forward(x)
                    x = x * keep.ge_(self.dropout).mul_(1.0 / (1.0 - self.dropout)).to(x.dtype)
            else:
                x, _ = activation.forward(x)
        x = x.reshape(t, k, math.prod(self.map_shapes[-1])).transpose(0, 1)
        x = x.to(head_layers[0][0].dtype)
        phi, _, _ = forward(head_layers, activation, x if owed == 1.0 else x * owed)
        return phi

    def gradient(self, flat: torch.Tensor, activation, z: torch.Tensor) -> torch.Tensor:
        """``grad_z phi`` (K, T, d) of the K networks with parameters ``flat`` (no dropout)."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            phi = self.forward(flat.detach(), activation, z)
            (grad,) = torch.autograd.grad(phi.sum(), z)
        return grad

    def conv_norm(self, index: int, weight: torch.Tensor, u: torch.Tensor):
        """One block power iteration for convolution ``index``: per-flow norms (K, 1).

        ``u`` (r, K * c_in, H, W) holds, per flow, r orthonormal inputs; it is replaced by
        the orthonormalised ``conv^T conv u``.  The norm estimate is the largest singular
        value of ``conv`` restricted to their span.  A convolution's top singular values lie
        close together, where a single power vector locks onto the wrong one and
        under-estimates the norm; a block of vectors does not (``benchmarks/README.md``,
        "Measurements quoted from the code").
        """
        k, r = self.n_flows, u.shape[0]
        channels_last = torch.channels_last
        with torch.enable_grad():
            # The adjoint as autograd's input gradient: oneDNN's backward-data primitive is
            # the transposed convolution with the right output size, and on these batches
            # of r images it runs faster than ``conv_transpose2d``, channels-last faster still.
            u_in = u.detach().contiguous(memory_format=channels_last).requires_grad_(True)
            v = F.conv2d(
                u_in,
                weight.detach().contiguous(memory_format=channels_last),
                stride=self.stride,
                padding=self.padding,
                groups=k,
            )
            (back,) = torch.autograd.grad(v, u_in, v.detach())
        sigma = _top_singular_value(v.detach().reshape(r, k, -1).transpose(0, 1))
        u.copy_(_orthonormalize(back, k))
        return sigma[:, None]


def _dropout_draws(x, n_flows, generator, draws):
    """Uniform draws shaped as the (T, K * C, H, W) feature map ``x``: for all ``total``
    flows and then those of flows ``index`` where ``draws`` is (index, total)."""
    # float32 draws for bfloat16 maps: the same numbers as a float32 map's.
    dtype = torch.promote_types(x.dtype, torch.float32)
    if draws is None:
        return torch.rand(x.shape, generator=generator, dtype=dtype, device=x.device)
    index, total = draws
    every = (x.shape[0], x.shape[1] // n_flows * total, *x.shape[2:])
    values = torch.rand(every, generator=generator, dtype=dtype, device=x.device)
    return values.unflatten(1, (total, -1)).index_select(1, index.to(x.device)).flatten(1, 2)


class _ActivationDropout(torch.autograd.Function):
    """``activation(a) * mask`` in place on ``a``: the activation and dropout as one node.

    ``keep`` holds the float32 draws in [0, 1).  Maps of ``keep``'s type are multiplied by
    ``mask = (keep >= rate) / (1 - rate)``: the results and gradients of the activation
    followed by ``x * mask`` (to the bit for ReLU; leaky ReLU's bias gradients can round
    differently), with fewer passes over the maps and fewer stored: the output, which the
    next convolution keeps anyway, and the mask (none for ReLU: where a unit is dropped its
    output is 0, and there ReLU's gradient is too).  Maps of another type (bfloat16) are
    multiplied by ``keep >= rate`` alone, 0 or 1 in the maps' type and memory format, and
    the caller owes the scale to the next layer (``ConvLayout.forward_views``).  ``a`` is a
    convolution's fresh output, which nothing else reads.  Once differentiable: the soft
    constraint's double backward takes the unfused path.
    """

    @staticmethod
    def forward(ctx, a, keep, activation, rate):
        h, saved = activation.forward(a.detach())  # in place where the activation can be
        scale = 1.0 / (1.0 - rate)
        if h.dtype == keep.dtype:
            mask = keep.ge_(rate).mul_(scale)
        else:
            # One pass into the maps' type and memory format: same-format products after.
            scale, mask = 1.0, keep.ge_(rate).to(h.dtype, memory_format=torch.channels_last)
        h.mul_(mask)
        out = h
        if h.data_ptr() == a.data_ptr():
            ctx.mark_dirty(a)
            out = a
        ctx.activation, ctx.scale = activation, scale
        relu = activation.name == "relu"
        ctx.save_for_backward(out, None if relu else mask, None if saved is h else saved)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        h, mask, saved = ctx.saved_tensors
        if mask is None:  # ReLU: its gradient is 0 wherever the output is
            grad = ctx.activation.backward(g, h)
            return (grad if ctx.scale == 1.0 else grad.mul_(ctx.scale)), None, None, None
        # Masked first: a dropped unit's output is 0 and carries no sign.
        grad = ctx.activation.backward(g * mask, h if saved is None else saved, inplace=True)
        return grad, None, None, None


def _top_singular_value(rows: torch.Tensor) -> torch.Tensor:
    """The largest singular value of each (r, n) matrix of the stack ``rows`` (K, r, n), r small.

    From the eigenvalues of the (r, r) Gram matrix ``rows rows^T``: for r = 8 and n in the
    thousands this is a matrix product and an 8 x 8 eigenproblem, where the SVD of the (r, n)
    matrices took a third of a profiled critic update on the CPU.  The top eigenvalue
    of a symmetric matrix is exact to rounding relative to itself, so the norm is too.
    """
    gram = torch.bmm(rows, rows.transpose(1, 2))
    return torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0.0).sqrt()


def _orthonormalize(block: torch.Tensor, n_flows: int) -> torch.Tensor:
    """Per flow, an orthonormal basis of the span of the r inputs in ``block`` (r, K * c, H, W)."""
    r = block.shape[0]
    basis, _ = torch.linalg.qr(block.reshape(r, n_flows, -1).permute(1, 2, 0))
    return basis.permute(2, 0, 1).reshape(block.shape)


class ConvCritic(Critic):
    """K Lipschitz CNN critics trained together (``Critic`` with a ``ConvLayout``).

    The dense head is normalised as the MLP critic's layers; every convolution to operator
    norm ``L ** (1 / depth)`` by its own persistent power iteration.  Dropout is active while
    the critic trains and off when it moves particles, as in the papers' Table 4b.
    """

    #: The convolutions' arithmetic in the training passes (``_write_gradient``), None: the
    #: weights' type.  ``torch.bfloat16`` runs them on bfloat16 copies of the maps and
    #: weights (float32 weights, gradients, Adam and norms), with the same dropout draws.
    #: It pays on CPUs with AMX for wide convolutions (the default channels), not for narrow
    #: ones, and the critic is not bit-for-bit the float32 one (measured in
    #: ``benchmarks/README.md``, "The image path").  The velocity and the power iteration
    #: stay in the weights' type, so the particles move by a float32 critic whose
    #: convolutions keep their exact norms.
    train_dtype = None

    def __init__(self, layout, activation, *args, train_dtype=None, **kwargs):
        if train_dtype is not None:
            self.train_dtype = train_dtype
        if activation.orthonormal:
            raise ValueError(
                f"activation={activation.name!r} is for dense critics; a CNN critic "
                "(image_shape) takes 'relu', 'leaky_relu' or 'smooth_relu'."
            )
        super().__init__(layout, activation, *args, **kwargs)

    def _bind_views(self):
        self.nu = self.layout.nu(self.params)
        self.grad_nu = self.layout.nu(self.grad)
        self._grad_views = [
            t for part in self.layout.views(self.grad) for pair in part for t in pair
        ]

    def _bind_weight_groups(self):
        layout = self.layout
        self.weight_groups = layout.head.weight_groups(layout.head_params(self.params))
        self._conv_weights = [w for w, _ in layout.convolutions(self.params)]

    def _flow_vectors(self):
        # The dense head's as the MLP critic's; a convolution's (r, K * c, H, W) as
        # (r, K, c, H, W).
        k, n_head = self.layout.n_flows, len(self.weight_groups)
        vectors = self._left_vectors or []
        return [u.unflatten(0, (-1, k)) for u in vectors[:n_head]] + [
            u.unflatten(1, (k, -1)) for u in vectors[n_head:]
        ]

    def _join_vectors(self, views):
        n_head = len(self.weight_groups)
        return [v.flatten(0, 1) for v in views[:n_head]] + [v.flatten(1, 2) for v in views[n_head:]]

    def _init_normalisation(self, generator):
        layout = self.layout
        self._bind_weight_groups()
        self._left_vectors = self._head_vectors(generator)
        k = layout.n_flows
        for (c, h, w), weight in zip(layout.map_shapes, self._conv_weights):
            # A block no wider than the input space, where QR would return fewer vectors.
            r = min(_CONV_SUBSPACE, c * h * w)
            u = torch.randn(
                r, k * c, h, w, generator=generator, dtype=weight.dtype, device=weight.device
            )
            self._left_vectors.append(_orthonormalize(u, k))
        for _ in range(_POWER_ITERATIONS_AT_START):
            sigmas = self._conv_power_iteration()
        self._scale(self._conv_weights, sigmas)
        super()._init_normalisation_head()

    def _conv_power_iteration(self):
        vectors = self._left_vectors[len(self.weight_groups) :]
        return [
            self.layout.conv_norm(i, weight, u)
            for i, (weight, u) in enumerate(zip(self._conv_weights, vectors))
        ]

    def _scale(self, weights, sigmas):
        k = self.layout.n_flows
        for weight, sigma in zip(weights, sigmas):
            weight.view(k, -1).mul_(self.layer_norm / sigma)

    def spectral_normalize(self) -> None:
        start = self._exact_left > 0  # read before the dense head counts this update
        super().spectral_normalize()
        for _ in range(_CONV_ITERATIONS_AT_START if start else 1):
            sigmas = self._conv_power_iteration()
        self._scale(self._conv_weights, sigmas)

    def _dropout_generator(self):
        return self.generator if self.layout.dropout > 0 else None

    def _write_gradient(self, z, n_particles, w_y, w_x, with_value):
        # Each layer's weight and bias is its own leaf: autograd writes each gradient once,
        # where the backward pass of a slice of the flat vector would fill a zero vector of
        # its full size and add into it, for every one of the layers.
        convolutions, head = self.layout.views(self.params)
        leaves = [
            [(w.detach().requires_grad_(True), b.detach().requires_grad_(True)) for w, b in part]
            for part in (convolutions, head)
        ]
        with torch.enable_grad():
            phi = self.layout.forward_views(
                *leaves,
                self.activation,
                z,
                self._dropout_generator(),
                self.draws,
                dtype=self.train_dtype,
                fused=True,
            )
            value, grad_phi = self._objective_gradient(
                phi.detach(), n_particles, w_y, w_x, with_value
            )
            flat_leaves = [t for part in leaves for pair in part for t in pair]
            grads = torch.autograd.grad(phi, flat_leaves, grad_phi)
        # nu's gradient is already in place (``_objective_gradient``).
        torch._foreach_copy_(self._grad_views, list(grads))
        return value

    def _phi_and_particle_gradient(self, params, z, n_particles):
        y = z[:, :n_particles].detach().requires_grad_(True)
        rows = torch.cat([y, z[:, n_particles:]], 1)
        phi = self.layout.forward(
            params, self.activation, rows, self._dropout_generator(), self.draws
        )
        (grad_y,) = torch.autograd.grad(phi[:, :n_particles].sum(), y, create_graph=True)
        return phi, grad_y

    def _gradient(self, y):
        return self.layout.gradient(self.params, self.activation, y)
