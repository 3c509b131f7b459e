"""Batched Lipschitz MLP discriminators with hand-written forward and backward passes.

K independent networks (one per flow) live in one flat parameter vector; every layer is a
``(K, fan_in, fan_out)`` view of it, so one ``baddbmm`` evaluates all K networks and one
Adam update and one copy (for the stored flow) touch every parameter.  Gradients with
respect to the weights and to the inputs are written by hand: for a ReLU network this costs
a handful of ``bmm`` calls and none of the bookkeeping of an autograd graph, which is what
dominates the run time of the small networks used here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

__all__ = [
    "ACTIVATIONS",
    "MLPLayout",
    "forward",
    "input_gradient",
    "make_activation",
    "orthonormalize",
    "orthonormal_init",
    "parameter_gradient",
    "spectral_norm_exact",
]


class Activation:
    """A 1-Lipschitz activation.

    ``orthonormal`` tells the critic how to hold its weights under the hard constraint:
    False, every weight matrix is rescaled to spectral norm ``L ** (1 / depth)``; True, every
    singular value is set to ``L ** (1 / depth)`` (``orthonormalize``).

    ``forward(a) -> (h, saved)`` and ``backward(g, saved) -> g * act'(a)``; with
    ``inplace=True`` the backward pass may write its result into ``g`` (a fresh product that
    nobody else holds, outside autograd): no new buffer, which for large batches saves
    allocating and first touching megabytes of memory at every layer.
    """

    name = "base"
    orthonormal = False

    def forward(self, a):
        raise NotImplementedError

    def backward(self, g, saved, inplace=False):
        raise NotImplementedError


class ReLU(Activation):
    name = "relu"

    def forward(self, a):
        # In place: ``a`` is a fresh product nobody else holds, and the backward pass needs
        # only the output.
        h = torch.relu_(a) if not a.requires_grad else torch.relu(a)
        return h, h

    def backward(self, g, saved, inplace=False):
        # One kernel for "g where h > 0 else 0", the op autograd itself uses for ReLU.
        if inplace:
            return torch.ops.aten.threshold_backward.grad_input(g, saved, 0.0, grad_input=g)
        return torch.ops.aten.threshold_backward(g, saved, 0.0)


class LeakyReLU(Activation):
    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.2):
        self.negative_slope = negative_slope

    def forward(self, a):
        h = torch.nn.functional.leaky_relu(a, self.negative_slope, inplace=not a.requires_grad)
        return h, h

    def backward(self, g, saved, inplace=False):
        # The output has the sign of the input, so it tells the slope as well.
        if inplace:
            return torch.ops.aten.leaky_relu_backward.grad_input(
                g, saved, self.negative_slope, True, grad_input=g
            )
        return torch.ops.aten.leaky_relu_backward(g, saved, self.negative_slope, True)


class SmoothReLU(Activation):
    """The C^3 smooth ReLU of paper 000, eq. 35; its slope lies in [0, 1].

    0 for a <= 0; a^2 / (4 eps) + eps / (2 pi^2) (cos(pi a / eps) - 1) on (0, 2 eps);
    a - eps for a >= 2 eps.
    """

    name = "smooth_relu"

    def __init__(self, eps: float = 0.5):
        if not eps > 0:
            raise ValueError(f"The smooth ReLU needs eps > 0, got {eps!r}.")
        self.eps = float(eps)

    def forward(self, a):
        eps = self.eps
        x = torch.clamp(a, 0.0, 2.0 * eps)
        ramp = x * x / (4.0 * eps) + eps / (2.0 * math.pi**2) * (torch.cos(math.pi / eps * x) - 1.0)
        slope = x / (2.0 * eps) - torch.sin(math.pi / eps * x) / (2.0 * math.pi)
        above = a >= 2.0 * eps
        return torch.where(above, a - eps, ramp), torch.where(above, 1.0, slope)

    def backward(self, g, saved, inplace=False):
        return g.mul_(saved) if inplace else g * saved


class MaxMin(Activation):
    """GroupSort with groups of two: each pair of units ``(a_2i, a_2i+1)`` is sorted.

    Anil, Lucas & Grosse (2019), "Sorting out Lipschitz function approximation".  The
    output is a permutation of the input, so the activation preserves gradient norms; with
    orthonormal weights the network's gradient norm can reach its bound ``L`` everywhere,
    which a spectrally normalised ReLU network cannot (ReLU drops the negative half of the
    gradient at every layer).  Hidden widths must be even.
    """

    name = "groupsort"
    orthonormal = True

    def forward(self, a):
        pairs = a.unflatten(-1, (-1, 2))
        first, second = pairs.unbind(-1)
        swapped = first < second
        h = torch.stack([torch.maximum(first, second), torch.minimum(first, second)], -1)
        return h.flatten(-2), swapped

    def backward(self, g, saved, inplace=False):
        pairs = g.unflatten(-1, (-1, 2))
        return torch.where(saved.unsqueeze(-1), pairs.flip(-1), pairs).flatten(-2)


ACTIVATIONS = {
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "smooth_relu": SmoothReLU,
    "groupsort": MaxMin,
}


def make_activation(name: str, eps: float = 0.5) -> Activation:
    """The activation called ``name``; ``eps`` shapes the smooth ReLU."""
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
    return SmoothReLU(eps) if name == "smooth_relu" else ACTIVATIONS[name]()


@dataclass(frozen=True)
class MLPLayout:
    """Where each layer of K stacked MLPs ``R^d -> R`` sits in a flat parameter vector.

    Layer ``l`` has weight ``(K, sizes[l], sizes[l+1])`` and bias ``(K, 1, sizes[l+1])``.
    Consecutive layers of one shape (the hidden-to-hidden layers) are stored as one block
    ``(n, K, fan_in, fan_out)`` followed by their biases, so the spectral normalisation
    treats the whole block in one batched power iteration.  After the layers comes one
    scalar per flow: the shift ``nu`` of the f-divergence.
    """

    n_features: int
    hidden_layer_sizes: tuple
    n_flows: int

    #: The passes below are written by hand and build no autograd graph, so the engine runs
    #: them in ``torch.inference_mode`` (about 15 % of a small step is autograd bookkeeping
    #: otherwise).
    needs_autograd: ClassVar[bool] = False

    @property
    def sizes(self) -> tuple:
        return (self.n_features, *self.hidden_layer_sizes, 1)

    @property
    def depth(self) -> int:
        return len(self.sizes) - 1

    @property
    def macs_per_row(self) -> int:
        """Multiply-adds of one network evaluation on one row."""
        s = self.sizes
        return sum(a * b for a, b in zip(s[:-1], s[1:]))

    @property
    def values_per_row(self) -> int:
        """Activations one row leaves behind in one network (the memory of a pass)."""
        return sum(self.sizes)

    @property
    def n_weights(self) -> int:
        s, k = self.sizes, self.n_flows
        return sum(k * (s[i] + 1) * s[i + 1] for i in range(self.depth))

    @property
    def size(self) -> int:
        return self.n_weights + self.n_flows

    @property
    def shape_runs(self) -> list:
        """Runs of consecutive layers with one shape: ``[(n_layers, fan_in, fan_out), ...]``."""
        runs = []
        for shape in zip(self.sizes[:-1], self.sizes[1:]):
            if runs and runs[-1][1:] == shape:
                runs[-1] = (runs[-1][0] + 1, *shape)
            else:
                runs.append((1, *shape))
        return runs

    def _blocks(self, flat: torch.Tensor) -> list:
        lead, k = flat.shape[:-1], self.n_flows
        blocks, offset = [], 0
        for n, fan_in, fan_out in self.shape_runs:
            n_w, n_b = n * k * fan_in * fan_out, n * k * fan_out
            w = flat[..., offset : offset + n_w].view(*lead, n, k, fan_in, fan_out)
            b = flat[..., offset + n_w : offset + n_w + n_b].view(*lead, n, k, 1, fan_out)
            blocks.append((w, b))
            offset += n_w + n_b
        return blocks

    def layers(self, flat: torch.Tensor) -> list:
        """Views ``[(W_0, b_0), ...]`` into ``flat`` (last dimension); no copy."""
        return [
            (w.select(-4, j), b.select(-4, j))
            for w, b in self._blocks(flat)
            for j in range(w.shape[-4])
        ]

    def weight_groups(self, flat: torch.Tensor) -> list:
        """Each run's weights as one stack ``(n * K, fan_in, fan_out)`` (a view)."""
        return [w.flatten(-4, -3) for w, _ in self._blocks(flat)]

    def nu(self, flat: torch.Tensor) -> torch.Tensor:
        return flat[..., self.n_weights :]

    def gradient(self, flat: torch.Tensor, activation, z: torch.Tensor) -> torch.Tensor:
        """``grad_z phi`` (K, T, d) of the K networks with parameters ``flat``."""
        layers = self.layers(flat)
        _, _, saved = forward(layers, activation, z, output=False)
        return input_gradient(layers, activation, saved)

    def initialize(self, generator: torch.Generator, dtype, device) -> torch.Tensor:
        """PyTorch's ``nn.Linear`` initialisation (uniform in +-1/sqrt(fan_in)), nu = 0."""
        flat = torch.zeros(self.size, dtype=dtype, device=device)
        for w, b in self.layers(flat):
            bound = 1.0 / math.sqrt(w.shape[-2])
            for t in (w, b):
                t.copy_(torch.rand(t.shape, generator=generator, dtype=dtype, device=device))
                t.mul_(2.0 * bound).sub_(bound)
        return flat


def forward(layers, activation, z, output=True):
    """Evaluate K networks on ``z`` (K, T, d).

    Returns ``phi`` (K, T), the layer inputs ``[z, h_1, ...]`` and what each activation
    saved for its backward pass.  With ``output=False`` the last layer is skipped and
    ``phi`` is None: the input gradient does not need it.
    """
    inputs, saved, h = [z], [], z
    for w, b in layers[:-1]:
        h, s = activation.forward(torch.baddbmm(b, h, w))
        inputs.append(h)
        saved.append(s)
    if not output:
        return None, inputs, saved
    w, b = layers[-1]
    return torch.baddbmm(b, h, w).squeeze(-1), inputs, saved


def parameter_gradient(layers, activation, inputs, saved, grad_output, grad_layers) -> None:
    """Back-propagate ``grad_output`` = dJ/dphi (K, T) into ``grad_layers`` (views, in place)."""
    g = grad_output.unsqueeze(-1)
    inplace = not torch.is_grad_enabled()  # the products below are ours to overwrite
    for i in range(len(layers) - 1, -1, -1):
        grad_w, grad_b = grad_layers[i]
        torch.bmm(inputs[i].transpose(1, 2), g, out=grad_w)
        torch.sum(g, dim=1, keepdim=True, out=grad_b)
        if i > 0:
            g = torch.bmm(g, layers[i][0].transpose(1, 2))
            g = activation.backward(g, saved[i - 1], inplace)


def input_gradient(layers, activation, saved):
    """``grad_z phi`` (K, T, d) from a forward pass (at least one hidden layer)."""
    g = layers[-1][0].transpose(1, 2).expand(-1, saved[-1].shape[1], -1)
    inplace = False  # the first g is a view of the last layer's weights
    for i in range(len(layers) - 1, 0, -1):
        g = activation.backward(g, saved[i - 1], inplace)
        g = torch.bmm(g, layers[i - 1][0].transpose(1, 2))
        inplace = not torch.is_grad_enabled()  # from here on g is a product of ours
    return g


def spectral_norm_exact(w: torch.Tensor) -> torch.Tensor:
    """Largest singular value of each matrix in a stack (..., m, n), by SVD.

    A matrix with a non-finite entry gets NaN (the SVD would raise): its flow's step turns
    non-finite, and the flow is frozen like any other that blows up.
    """
    finite = torch.isfinite(w).all(-1).all(-1)
    if bool(finite.all()):
        return torch.linalg.matrix_norm(w, ord=2)
    norms = torch.full(w.shape[:-2], float("nan"), dtype=w.dtype, device=w.device)
    norms[finite] = torch.linalg.matrix_norm(w[finite], ord=2)
    return norms


def orthonormalize(w: torch.Tensor, scale: float, n_iterations: int) -> None:
    """Move every singular value of each matrix of the stack ``w`` (n, m, p) towards
    ``scale``, in place, by ``n_iterations`` Bjorck-Bowie iterations.

    ``W <- 3/2 W - 1/2 W W^T W / scale^2`` converges to ``scale`` times the orthonormal
    polar factor of ``W`` (quadratically near it) when every singular value lies in
    ``(0, sqrt(3) scale)``.  The Gram matrix is taken on the smaller side.  A single column
    (the output layer) is normalised exactly.
    """
    if w.shape[-1] == 1:
        w.mul_(scale / torch.linalg.vector_norm(w, dim=(-2, -1), keepdim=True))
        return
    tall = w.shape[-2] >= w.shape[-1]
    for _ in range(n_iterations):
        if tall:
            cubic = torch.bmm(w, torch.bmm(w.transpose(1, 2), w))
        else:
            cubic = torch.bmm(torch.bmm(w, w.transpose(1, 2)), w)
        w.mul_(1.5).sub_(cubic, alpha=0.5 / scale**2)


def orthonormal_init(w: torch.Tensor, scale: float, generator: torch.Generator) -> None:
    """Fill the stack ``w`` (n, m, p) with random matrices whose singular values are all
    ``scale`` (QR of Gaussian matrices), in place."""
    n, m, p = w.shape
    gaussian = torch.randn(
        n, max(m, p), min(m, p), generator=generator, dtype=w.dtype, device=w.device
    )
    basis, triangle = torch.linalg.qr(gaussian)
    # Signs from the diagonal make the draw uniform over orthonormal frames.
    basis = basis * torch.sign(torch.diagonal(triangle, dim1=-2, dim2=-1)).unsqueeze(-2)
    w.copy_((basis if m >= p else basis.transpose(1, 2)) * scale)
