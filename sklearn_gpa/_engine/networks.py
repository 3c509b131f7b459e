"""Batched Lipschitz MLP discriminators with hand-written forward and backward passes.

K independent networks (one per flow) live in one flat parameter vector; every layer is a
``(K, fan_in, fan_out)`` view of it, so one ``baddbmm`` evaluates all K networks and one
Adam update and one copy (for the stored flow) touch every parameter.  Gradients with
respect to the weights and to the inputs are written by hand: for a ReLU network this costs
a handful of ``bmm`` calls and none of the bookkeeping of an autograd graph, which is what
dominates the run time of the small networks used here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch

__all__ = [
    "ACTIVATIONS",
    "MLPLayout",
    "flow_mask",
    "MLPPass",
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
    #: ``forward_(a)`` applies the activation to ``a`` in place, and ``a`` itself is what
    #: ``backward`` needs: the critic's preallocated passes (``MLPPass``) use it.
    inplace = False

    def forward(self, a):
        raise NotImplementedError

    def forward_(self, a):
        raise NotImplementedError

    def backward(self, g, saved, inplace=False):
        raise NotImplementedError

    def backward_into(self, g, saved, out):
        """``backward(g, saved)`` written into ``out`` (an ``inplace`` activation's; ``g``
        may be ``out`` or a view that cannot be written, such as an expanded row)."""
        raise NotImplementedError


def _raw(op):
    """The C++ callable behind an ``OpOverload`` (the same kernel without the Python call
    in between), or the overload itself where torch does not expose it."""
    return getattr(op, "_op", op)


# ReLU's backward: "g where h > 0 else 0", the op autograd itself uses, into g or allocating.
_THRESHOLD_BACKWARD_INTO = _raw(torch.ops.aten.threshold_backward.grad_input)
_THRESHOLD_BACKWARD = _raw(torch.ops.aten.threshold_backward.default)


class ReLU(Activation):
    name = "relu"
    inplace = True
    forward_ = staticmethod(torch.relu_)

    def forward(self, a):
        # In place: ``a`` is a fresh product nobody else holds, and the backward pass needs
        # only the output.
        h = torch.relu_(a) if not a.requires_grad else torch.relu(a)
        return h, h

    def backward(self, g, saved, inplace=False):
        # One kernel for "g where h > 0 else 0", the op autograd itself uses for ReLU.
        if inplace:
            return _THRESHOLD_BACKWARD_INTO(g, saved, 0.0, grad_input=g)
        return _THRESHOLD_BACKWARD(g, saved, 0.0)

    def backward_into(self, g, saved, out):
        return _THRESHOLD_BACKWARD_INTO(g, saved, 0.0, grad_input=out)


class LeakyReLU(Activation):
    name = "leaky_relu"

    inplace = True

    def __init__(self, negative_slope: float = 0.2):
        self.negative_slope = negative_slope

    def forward_(self, a):
        torch.nn.functional.leaky_relu_(a, self.negative_slope)

    def forward(self, a):
        h = torch.nn.functional.leaky_relu(a, self.negative_slope, inplace=not a.requires_grad)
        return h, h

    def backward(self, g, saved, inplace=False):
        # The output has the sign of the input, so it tells the slope as well.
        if inplace:
            return self.backward_into(g, saved, g)
        return torch.ops.aten.leaky_relu_backward(g, saved, self.negative_slope, True)

    def backward_into(self, g, saved, out):
        return torch.ops.aten.leaky_relu_backward.grad_input(
            g, saved, self.negative_slope, True, grad_input=out
        )


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

    def parameter_flows(self) -> torch.Tensor:
        """The flow of every value of the flat parameter vector: a (size,) long tensor.

        Within every layer the flows are the outer dimension, so the values of some flows,
        taken in order (``select_flows``), are the parameter vector of the layout of those
        flows alone.
        """
        flat = torch.empty(self.size, dtype=torch.long)
        flows = torch.arange(self.n_flows)
        for w, b in self.layers(flat):
            w.copy_(flows[:, None, None].expand_as(w))
            b.copy_(flows[:, None, None].expand_as(b))
        self.nu(flat).copy_(flows)
        return flat

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


def flow_mask(layout, flows) -> torch.Tensor:
    """Where the parameters of ``flows`` (increasing indices) sit in ``layout``'s flat vector.

    ``flat[..., flow_mask(layout, flows)]`` is the parameter vector of those flows alone,
    for ``dataclasses.replace(layout, n_flows=len(flows))`` (``parameter_flows``).
    """
    return torch.isin(layout.parameter_flows(), torch.as_tensor(flows, dtype=torch.long))


def _paired(op):
    """``op`` (``torch.bmm`` or ``torch.baddbmm``) computing a batch of one thin product
    (a single row or column) as the first of a batch of two.

    A batch of one matrix takes another kernel than the same matrix within a batch of
    several where the product is a matrix times a vector (the last bits differ); in a batch
    of two (an expanded view, no copy) it takes the batched one.  The critic of the one
    flow left in a run (``Critic.select``) uses it, so that flow trains to the bit as it did
    among the others; the extra cost is that of the thin products, a small share.
    """

    def call(*args, out=None):
        a, b = args[-2], args[-1]
        if a.shape[0] != 1 or (a.shape[1] != 1 and b.shape[2] != 1):
            return op(*args) if out is None else op(*args, out=out)
        result = op(*(t.expand(2, *t.shape[1:]) for t in args))[:1]
        return result if out is None else out.copy_(result)

    return call


PAIRED_BMM, PAIRED_BADDBMM = _paired(torch.bmm), _paired(torch.baddbmm)


def _products(paired):
    return (PAIRED_BMM, PAIRED_BADDBMM) if paired else (torch.bmm, torch.baddbmm)


def forward(layers, activation, z, output=True, out=None, paired=False):
    """Evaluate K networks on ``z`` (K, T, d).

    Returns ``phi`` (K, T), the layer inputs ``[z, h_1, ...]`` and what each activation
    saved for its backward pass.  With ``output=False`` the last layer is skipped and
    ``phi`` is None: the input gradient does not need it.  ``out`` (outside autograd only)
    holds a preallocated ``(K, T, fan_out)`` buffer per layer evaluated: each pre-activation
    is written there instead of into a fresh tensor (the same numbers; the returned tensors
    are then views of the buffers, valid until their next use).
    """
    bmm, baddbmm = _products(paired)
    inputs, saved, h = [z], [], z
    for i, (w, b) in enumerate(layers[:-1]):
        a = baddbmm(b, h, w) if out is None else baddbmm(b, h, w, out=out[i])
        h, s = activation.forward(a)
        inputs.append(h)
        saved.append(s)
    if not output:
        return None, inputs, saved
    w, b = layers[-1]
    if out is None:
        phi = baddbmm(b, h, w)
    elif w.shape[-1] == 1:
        # The same numbers as ``baddbmm``, which is slower for a single output column with
        # many flows (``benchmarks/README.md``, per particle step).
        phi = output_column(bmm, h, w, out[-1], paired).add_(b)
    else:
        phi = bmm(h, w, out=out[-1]).add_(b)
    return phi.squeeze(-1), inputs, saved


def _row_form(h, paired) -> bool:
    """Whether ``output_column`` takes the product of K networks' last hidden layer ``h``
    (K, T, f) with their single output column as a row times a matrix (``w^T h^T``).

    In a batch (several flows, or ``paired``) of float32 products that is the same product
    to the bit and three times faster in ``bmm``: 40 against 130 us for ten flows of 400
    rows (``benchmarks/README.md``, "Thin products of many flows").  In float64 the last
    bits differ (up to 7e-15), and a single flow's matrix times a column is the faster
    form (3 against 6 us): both keep the column.
    """
    return h.dtype == torch.float32 and (h.shape[0] > 1 or paired)


def output_column(bmm, h, w, out, paired=False):
    """``bmm(h, w, out=out)`` for a single column ``w`` (K, f, 1), the same numbers, as a
    row times a matrix (transposed views, no copy) where that is faster (``_row_form``)."""
    if not _row_form(h, paired):
        return bmm(h, w, out=out)
    bmm(w.transpose(1, 2), h.transpose(1, 2), out=out.transpose(1, 2))
    return out


def _transposed(layers, weights_t, i):
    """Layer ``i``'s weight transposed: a contiguous copy from ``weights_t`` if it has one."""
    if weights_t is not None and weights_t[i] is not None:
        return weights_t[i]
    return layers[i][0].transpose(1, 2)


def parameter_gradient(
    layers,
    activation,
    inputs,
    saved,
    grad_output,
    grad_layers,
    weights_t=None,
    out=None,
    paired=False,
) -> None:
    """Back-propagate ``grad_output`` = dJ/dphi (K, T) into ``grad_layers`` (views, in place).

    ``weights_t`` (optional) gives per layer a contiguous copy of its transposed weights, or
    None (a transposed view is used): ``bmm`` is faster on a contiguous right factor than
    on a transposed one, with the same result to the bit.  ``out`` (outside
    autograd only) holds a ``(K, T, fan_out)`` buffer per hidden layer for the gradient
    flowing back through it.
    """
    bmm = _products(paired)[0]
    g = grad_output.unsqueeze(-1)
    inplace = not torch.is_grad_enabled()  # the products below are ours to overwrite
    for i in range(len(layers) - 1, -1, -1):
        grad_w, grad_b = grad_layers[i]
        if grad_w.shape[-1] == 1:
            # A single output column: (g^T h)^T is the same product to the bit, and a row
            # times a matrix is much faster in ``bmm`` than a matrix times a column when
            # there are many flows.
            bmm(g.transpose(1, 2), inputs[i], out=grad_w.transpose(1, 2))
        else:
            bmm(inputs[i].transpose(1, 2), g, out=grad_w)
        torch.sum(g, dim=1, keepdim=True, out=grad_b)
        if i > 0:
            w_t = _transposed(layers, weights_t, i)
            # Through a single output: an outer product, each entry one multiplication, the
            # numbers of ``bmm`` to the bit at a tenth of its time for many flows.
            product = torch.mul if g.shape[-1] == 1 else bmm
            g = product(g, w_t) if out is None else product(g, w_t, out=out[i - 1])
            g = activation.backward(g, saved[i - 1], inplace)


def input_gradient(layers, activation, saved, weights_t=None, out=None, paired=False):
    """``grad_z phi`` (K, T, d) from a forward pass (at least one hidden layer).

    ``weights_t`` and ``out`` as in ``parameter_gradient``; the result is always a fresh
    tensor.  ``paired``: thin products of a batch of one flow as in a batch (``_paired``).
    """
    bmm = _products(paired)[0]
    g = layers[-1][0].transpose(1, 2).expand(-1, saved[-1].shape[1], -1)
    inplace = False  # the first g is a view of the last layer's weights
    for i in range(len(layers) - 1, 0, -1):
        g = activation.backward(g, saved[i - 1], inplace)
        w_t = _transposed(layers, weights_t, i - 1)
        g = bmm(g, w_t) if out is None or i == 1 else bmm(g, w_t, out=out[i - 2])
        inplace = not torch.is_grad_enabled()  # from here on g is a product of ours
    return g


class MLPPass:
    """Forward and backward passes of K MLPs over a fixed number of rows, preallocated.

    For a graph-free critic with an in-place activation (``Activation.inplace``): every
    activation, pre-activation and back-propagated gradient lives in a buffer allocated
    once, and every view the passes need (transposes, the split of the rows into particles
    and targets) is taken once, so a pass runs its arithmetic ops and little else.  It
    computes the same numbers as ``forward``, ``parameter_gradient`` and
    ``input_gradient`` (the same ops in the same order; tested to the bit).  Reused from
    update to update, the buffers stay in cache; on small problems most of a step is the
    cost of calling ops, and views and allocations were a good share of the calls.

    ``layers`` and ``grad_layers`` are views ``[(W, b), ...]`` of the weights and of their
    gradient; ``weights_t`` per layer a contiguous copy of ``W`` transposed or None.
    """

    def __init__(self, layers, grad_layers, weights_t, activation, n_rows, paired=False):
        self.paired = paired
        self._bmm, self._baddbmm = _products(paired)
        w0 = layers[0][0]
        n_flows = w0.shape[0]
        new = functools.partial(torch.empty, dtype=w0.dtype, device=w0.device)
        self.layers, self.grad_layers, self.activation = layers, grad_layers, activation
        self.acts = [new(n_flows, n_rows, w.shape[-1]) for w, _ in layers]
        self.grads = [new(a.shape) for a in self.acts[:-1]]
        self.grad_phi = new(n_flows, n_rows)
        self.phi = self.acts[-1].squeeze(-1)
        self.w_t = [
            w.transpose(1, 2) if weights_t is None or weights_t[i] is None else weights_t[i]
            for i, (w, _) in enumerate(layers)
        ]
        # Back-propagation through layer i (> 0): weight gradient (input^T g), bias
        # gradient, g through W^T into the buffer of hidden layer i - 1.
        self.hidden_steps = [
            (
                self.acts[i - 1].transpose(1, 2),
                self.grads[i],
                *grad_layers[i],
                self.w_t[i],
                self.grads[i - 1],
                self.acts[i - 1],
            )
            for i in range(len(layers) - 2, 0, -1)
        ]
        self._last_input_t = self.acts[-2].transpose(1, 2) if len(layers) > 1 else None
        # (K, 1, T) with the strides MKL takes for a transposed column (``unsqueeze(1)``'s
        # differ, and so did the last bit of some sums).
        self._grad_phi_col = self.grad_phi.unsqueeze(-1)
        self._grad_phi_t = self._grad_phi_col.transpose(1, 2)
        last = grad_layers[-1][0]
        self._grad_w_last_t = last.transpose(1, 2) if last.shape[-1] == 1 else None
        # A single output column as a row times a matrix where that is faster, and the
        # gradient back through it as an outer product (``output_column``,
        # ``parameter_gradient``).
        single = layers[-1][0].shape[-1] == 1
        self._phi_row = (
            self.acts[-1].transpose(1, 2)
            if single and len(layers) > 1 and _row_form(self.acts[-2], paired)
            else None
        )
        self._through_last = torch.mul if single else self._bmm
        self._splits = {}
        # ReLU's in-place backward op, called without the activation's method in between.
        self._threshold_into = _THRESHOLD_BACKWARD_INTO if type(activation) is ReLU else None

    def split(self, n_particles):
        """Views (phi_y, phi_x, dJ/dphi_y, dJ/dphi_x) of the rows of particles and targets."""
        views = self._splits.get(n_particles)
        if views is None:
            phi, grad = self.phi, self.grad_phi
            views = (phi[:, :n_particles], phi[:, n_particles:])
            views += (grad[:, :n_particles], grad[:, n_particles:])
            self._splits[n_particles] = views
        return views

    def forward(self, z, output=True):
        """Fill the activation buffers (and ``phi``, unless ``output`` is False)."""
        run(self.forward_ops(z, output))

    def forward_ops(self, z, output=True) -> list:
        """The calls of ``forward(z, output)``, bound to ``z`` and the buffers (``run``)."""
        ops, h, forward_, baddbmm = [], z, self.activation.forward_, self._baddbmm
        for (w, b), a in zip(self.layers[:-1], self.acts):
            ops += [partial(baddbmm, b, h, w, out=a), partial(forward_, a)]
            h = a
        if output:
            w, b = self.layers[-1]
            # The same numbers as ``baddbmm``, which is slower for a single output column
            # with many flows.
            if self._phi_row is None:
                ops.append(partial(self._bmm, h, w, out=self.acts[-1]))
            else:
                ops.append(partial(self._bmm, self.w_t[-1], self._last_input_t, out=self._phi_row))
            ops.append(partial(self.acts[-1].add_, b))
        return ops

    def parameter_gradient(self, z) -> None:
        """Back-propagate ``grad_phi`` into the gradient views (after ``forward(z)``)."""
        run(self.parameter_gradient_ops(z))

    def parameter_gradient_ops(self, z) -> list:
        """The calls of ``parameter_gradient(z)``, bound (``run``)."""
        layers, grad_layers, bmm = self.layers, self.grad_layers, self._bmm
        if len(layers) == 1:
            return [
                partial(
                    parameter_gradient,
                    layers,
                    self.activation,
                    [z],
                    [],
                    self.grad_phi,
                    grad_layers,
                    paired=self.paired,
                )
            ]
        g = self._grad_phi_col
        grad_w, grad_b = grad_layers[-1]
        if self._grad_w_last_t is not None:
            # (g^T h)^T: the same product, faster (see ``parameter_gradient``).
            ops = [partial(bmm, self._grad_phi_t, self.acts[-2], out=self._grad_w_last_t)]
        else:
            ops = [partial(bmm, self._last_input_t, g, out=grad_w)]
        ops += [
            partial(torch.sum, g, dim=1, keepdim=True, out=grad_b),
            partial(self._through_last, g, self.w_t[-1], out=self.grads[-1]),
            self._backward_op(self.grads[-1], self.acts[-2]),
        ]
        for h_t, g, grad_w, grad_b, w_t, g_out, saved in self.hidden_steps:
            ops += [
                partial(bmm, h_t, g, out=grad_w),
                partial(torch.sum, g, dim=1, keepdim=True, out=grad_b),
                partial(bmm, g, w_t, out=g_out),
                self._backward_op(g_out, saved),
            ]
        g = self.grads[0]
        grad_w, grad_b = grad_layers[0]
        ops += [
            partial(bmm, z.transpose(1, 2), g, out=grad_w),
            partial(torch.sum, g, dim=1, keepdim=True, out=grad_b),
        ]
        return ops

    def _backward_op(self, g, saved, out=None):
        """The activation's backward pass from ``g`` into ``out`` (default: ``g``), bound."""
        out = g if out is None else out
        if self._threshold_into is not None:
            # ReLU's in-place backward op, called without the activation's method in between.
            return partial(self._threshold_into, g, saved, 0.0, grad_input=out)
        return partial(self.activation.backward_into, g, saved, out)

    def input_gradient(self, y):
        """``grad_y phi`` (K, T, d) of the networks at ``y``, a fresh tensor."""
        return run(self.input_gradient_ops(y))

    def input_gradient_ops(self, y) -> list:
        """The calls of ``input_gradient(y)``, bound; the last returns the gradient."""
        ops = self.forward_ops(y, output=False)
        acts, grads, w_t = self.acts, self.grads, self.w_t
        n = len(self.layers)
        # d phi / d h of the last hidden layer is its output column, the same for every row.
        ops.append(self._backward_op(w_t[-1].expand(-1, y.shape[1], -1), acts[n - 2], grads[n - 2]))
        g = grads[n - 2]
        for i in range(n - 2, 0, -1):
            ops += [partial(self._bmm, g, w_t[i], out=grads[i - 1])]
            g = grads[i - 1]
            ops.append(self._backward_op(g, acts[i - 1]))
        ops.append(partial(self._bmm, g, w_t[0]))
        return ops


def run(ops):
    """Call the bound calls ``ops`` in turn; returns what the last returned.

    A small network's passes are mostly the cost of calling their ops: bound once (the
    buffers, views and inputs do not change from update to update), they run with no
    Python between them but the loop (``Critic._lean_step``).
    """
    result = None
    for op in ops:
        result = op()
    return result


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
