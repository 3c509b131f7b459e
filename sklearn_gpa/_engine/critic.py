"""The warm-started, Lipschitz-constrained discriminator of Algorithm 1.

``Critic`` owns one flat parameter vector for K networks (see ``networks.MLPLayout``), the
Adam moments of that vector, and the persistent power-iteration vectors of the spectral
normalisation.  All of it persists across particle steps: the papers' warm start.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from .networks import (
    PAIRED_BMM,
    MLPLayout,
    MLPPass,
    flow_mask,
    forward,
    input_gradient,
    orthonormal_init,
    orthonormalize,
    parameter_gradient,
    run,
    spectral_norm_exact,
)
from .optim import adam_step

__all__ = ["Critic", "CONSTRAINTS"]

CONSTRAINTS = ("hard", "soft", None)

_POWER_ITERATIONS_AT_START = 50
# Adam's first updates change the weights faster than a power iteration can follow (the
# network's Lipschitz bound reached 1.35 L in the first steps with one iteration per update,
# 1.08 L with three): the first updates normalise by the exact norm (an SVD) instead.
_EXACT_UPDATES = 30
# Bjorck iterations per update for orthonormal weights: an Adam step moves a singular value
# by up to about ``learning_rate * width`` and each iteration squares that error, so three
# bring it below rounding; more while Adam's first, largest steps are taken.
_BJORCK_ITERATIONS = 3
_BJORCK_ITERATIONS_AT_START = 8

# Every this many updates, values of the persistent state below the smallest normal number
# are set to zero.  Weights that no longer get a gradient shrink geometrically under the
# spectral rescale, and their Adam moments under the betas, into the subnormal range, where
# every multiplication takes a slow microcode path on Intel CPUs: on a Xeon the 12-D mixture
# (Heun, 1 000 steps) took 97 s instead of 4 s, with 798 subnormal weights.  Fits on one
# thread also run with the CPU's flush-to-zero flag (``device.flush_denormals``), which
# makes this a no-op there; on several threads the flag is off and this is what keeps the
# state out of the subnormal range.
_FLUSH_EVERY = 32

# Flows run in one batch while their activations (rows x widest layer) fit in about this
# many bytes, a core's L2 cache on the machines measured (AMD EPYC: 1 MiB per core).
_CACHE_BYTES = 1 << 20

# The velocity of more particles per flow than this is evaluated in chunks of this many, so
# the activations it keeps (rows x layer widths) stay bounded whatever the number of
# particles; fewer particles go in one piece, as they always did.
VELOCITY_ROWS = 32768

# A graph-free critic keeps, per number of rows it meets, buffers for its activations and
# the gradients of its backward pass while they take at most this many bytes (``MLPPass``):
# reused from update to update they stay in cache and save an allocation and a few views
# per layer, which on small problems cost as much as the arithmetic.  Larger problems
# allocate per call, as their cost is the arithmetic.
_WORKSPACE_BYTES = 32 << 20


@dataclass
class _Chunk:
    """A group of flows run together on one number of rows, with views and buffers.

    ``flows`` is a slice (None: all flows); ``layers`` and ``grad_layers`` are views of
    their weights and gradients, ``weights_t`` contiguous transposed copies of the hidden
    layers' weights (None per layer without one); ``passes`` the preallocated passes over
    its ``n_rows`` rows (``networks.MLPPass``), made at their first use in inference mode
    where they ``fit``; the critic allocates per call otherwise.
    """

    flows: slice | None
    layers: list
    grad_layers: list
    weights_t: list | None
    n_rows: int = 0
    fits: bool = False  # whether its buffers are small enough to keep (``_WORKSPACE_BYTES``)
    paired: bool = False  # thin products as in a batch (a flow left alone in its group)
    passes: MLPPass | None = None


# Up to this many parameters (all flows), a critic's Adam step and normalisation run on the
# calling thread in a multi-threaded fit (``Critic._lean_step``): ten flows of the default
# MLP on 2-D or 50-D rows have 22 000 and 40 000; a 784-D input layer alone 25 000 per flow,
# where the thread team pays for itself.
_SMALL_PARAMS = 1 << 16

# Whether ``Critic.train_step`` takes its lean path where it can (``Critic._lean_step``);
# benchmarks and tests switch it off to run the general one.
USE_LEAN = True


@contextlib.contextmanager
def _calling_thread(enabled=True):
    """Run the block's torch ops on the calling thread alone (where ``enabled`` and torch
    has several CPU threads): for many small ops, such as the power iterations, whose
    results do not depend on the thread count (see ``Critic._lean_step``)."""
    threads = torch.get_num_threads() if enabled else 1
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


class _Lean:
    """What ``Critic._lean_step`` needs, bound once: the chunk and its passes, Adam's
    argument lists, the power iteration's views and constants as 0-d tensors (an op with a
    Python number converts it to a tensor at every call; with a tensor of the same value and
    dtype it computes the same numbers without that).

    Its ops are bound calls (``networks.run``): ``project`` (Adam and the normalisation)
    once, an update's gradient and the velocity for the tensors they last ran on, kept while
    the same tensors come back (a run's full batch and particles: every update and step),
    built anew for others (mini-batches).
    """

    def __init__(self, critic: Critic, chunk: _Chunk, passes: MLPPass):
        self.chunk, self.passes = chunk, passes
        params = critic.params
        self.one_thread = critic._small_ops_on_one_thread(params.device)
        self.one = torch.ones((), dtype=params.dtype, device=params.device)
        self.adam = (
            [params],
            [critic.grad],
            [critic.exp_avg],
            [critic.exp_avg_sq],
            [],
            [critic.n_updates],
        )
        self.adam_settings = dict(
            lr=critic.learning_rate,
            beta1=critic.betas[0],
            beta2=critic.betas[1],
            weight_decay=0.0,
            eps=critic.adam_eps,
            amsgrad=False,
            maximize=True,
        )
        # Per weight group: the weights, their transposed view (None for a single column,
        # whose norm is a vector norm), the persistent vector, and buffers for the products
        # and norms (an op writing into a buffer skips an allocation).
        new = functools.partial(torch.empty, dtype=params.dtype, device=params.device)
        self.power = []
        for w, u in zip(critic.weight_groups, critic._left_vectors):
            n, fan_in, fan_out = w.shape
            sigma = new(n, 1, 1)
            if fan_out == 1:
                self.power.append((w, None, u, None, None, None, sigma))
                continue
            v, v_norm, wv = new(n, 1, fan_in), new(n, 1, 1), new(n, 1, fan_out)
            self.power.append((w, w.transpose(1, 2), u, v, v_norm, wv, sigma))
        self.layer_norm = (
            None
            if critic.layer_norm == 1.0
            else torch.tensor(critic.layer_norm, dtype=params.dtype, device=params.device)
        )
        self.project = self._project_ops(critic)
        self._updates, self._velocity = {}, None

    def _project_ops(self, critic: Critic) -> list:
        """``_adam_ascent`` then ``spectral_normalize`` (after the exact updates), bound."""
        ops = [
            partial(critic.n_updates.add_, self.one),
            partial(torch._fused_adam_, *self.adam, **self.adam_settings),
        ]
        # spectral_normalize, by the persistent power iteration
        bmm, vector_norm = torch.bmm, torch.linalg.vector_norm
        for w, w_t, u, v, v_norm, wv, sigma in self.power:
            if w_t is None:
                ops.append(partial(vector_norm, w, dim=(1, 2), keepdim=True, out=sigma))
                continue
            ops += [
                partial(bmm, u, w_t, out=v),
                partial(vector_norm, v, dim=-1, keepdim=True, out=v_norm),
                partial(v.div_, v_norm),
                partial(bmm, v, w, out=wv),
                partial(vector_norm, wv, dim=-1, keepdim=True, out=sigma),
                partial(torch.div, wv, sigma, out=u),
            ]
        for w, _, _, _, _, _, sigma in self.power:
            if self.layer_norm is not None:
                ops.append(partial(sigma.div_, self.layer_norm))
            ops.append(partial(w.div_, sigma))
        return ops

    def update_ops(self, critic: Critic, z, n_particles, w_y, w_x, with_value):
        """An update's gradient on these inputs, bound: the calls up to J (the last
        returns it where asked) and the backward pass."""
        kept = self._updates.get((n_particles, with_value))
        if kept is not None and kept[0] is z and kept[1] is w_y and kept[2] is w_x:
            return kept[3]
        passes = self.passes
        head = [partial(buffer.copy_, view) for buffer, view in critic._transposed_pairs]
        head += passes.forward_ops(z)
        head += critic._objective_ops(passes, n_particles, w_y, w_x, with_value, self.chunk)
        ops = (head, passes.parameter_gradient_ops(z))
        self._updates[n_particles, with_value] = (z, w_y, w_x, ops)
        return ops

    def velocity_ops(self, critic: Critic, y) -> list:
        """``grad phi`` at ``y``, bound (``Critic.gradient``); the last call returns it."""
        if self._velocity is None or self._velocity[0] is not y:
            ops = [partial(buffer.copy_, view) for buffer, view in critic._transposed_pairs]
            self._velocity = (y, ops + self.passes.input_gradient_ops(y))
        return self._velocity[1]


class Critic:
    """K Lipschitz MLP critics trained together.

    Parameters
    ----------
    layout : MLPLayout
    activation : callable
        ``a -> (act(a), act'(a))``.
    divergence : Divergence
    lipschitz : float or None
        The bound L; ``None`` leaves the network unconstrained.
    constraint : {"hard", "soft"}
        ``"hard"``: every weight matrix is rescaled to spectral norm ``L ** (1 / depth)``
        after each optimiser step, or, for an ``orthonormal`` activation (GroupSort), has
        all its singular values moved to ``L ** (1 / depth)`` (Bjorck iterations).
        ``"soft"``: a gradient penalty ``penalty * mean(relu(|grad phi|^2 / L^2 - 1))`` on
        the particles.
    learning_rate, betas, adam_eps : Adam settings (ascent on the objective).
    """

    # No transposed copies of the weights unless ``_bind_transposed`` makes them.
    _transposed_pairs = ()
    weights_t = None
    #: None, or (index, total) for a ``select``-ed critic: its flows' index among the
    #: ``total`` flows whose random draws (mini-batches, dropout) it takes its share of.
    draws = None
    #: Whether the power iteration's thin products run as in a batch (``networks._paired``):
    #: for the critic of the one flow left in a run, which then trains as among the others.
    paired = False

    def __init__(
        self,
        layout: MLPLayout,
        activation,
        divergence,
        *,
        lipschitz,
        constraint="hard",
        penalty=10.0,
        learning_rate=5e-3,
        betas=(0.9, 0.999),
        adam_eps=1e-8,
        generator: torch.Generator,
        dtype=torch.float32,
        device="cpu",
    ):
        self.layout = layout
        self.activation = activation
        self.divergence = divergence
        self.lipschitz = lipschitz
        self.constraint = constraint if lipschitz is not None else None
        self.orthonormal = activation.orthonormal and self.constraint == "hard"
        if activation.orthonormal and any(h % 2 for h in layout.hidden_layer_sizes):
            raise ValueError(
                f"activation={activation.name!r} sorts pairs of units: every hidden layer "
                f"needs an even width, got hidden_layer_sizes={layout.hidden_layer_sizes}."
            )
        self.penalty = penalty
        self.learning_rate = learning_rate
        self.betas = betas
        self.adam_eps = adam_eps
        self.generator = generator
        self._left_vectors = None
        self._power_plan = None
        self._exact_left = _EXACT_UPDATES
        self._updates = 0  # n_updates on the host, for _flush_subnormals' schedule
        with self.no_graph():
            self.params = layout.initialize(generator, dtype, device)
            self.grad = torch.zeros_like(self.params)
            self.exp_avg = torch.zeros_like(self.params)
            self.exp_avg_sq = torch.zeros_like(self.params)
            self.n_updates = torch.zeros((), dtype=dtype, device=device)
            self._bind_views()
            if self.constraint is not None:
                self.layer_norm = float(lipschitz) ** (1.0 / layout.depth)
                # 50 power iterations of small products: on the calling thread.
                with _calling_thread(self._small_ops_on_one_thread(device)):
                    self._init_normalisation(generator)

    @property
    def needs_autograd(self) -> bool:
        """Whether training builds autograd graphs (a CNN, or the soft gradient penalty)."""
        return self.layout.needs_autograd or self.constraint == "soft"

    def no_graph(self):
        """``torch.inference_mode`` where the critic needs no autograd, else no change.

        A graph-free critic's tensors are created in inference mode and must be changed in
        place only inside this context (``train_flow`` and the divergence scorer run in it).
        """
        return torch.inference_mode(not self.needs_autograd)

    def _bind_views(self) -> None:
        self._chunks = {}
        self._lean = {}
        self.layers = self.layout.layers(self.params)
        self.grad_layers = self.layout.layers(self.grad)
        self.nu = self.layout.nu(self.params)
        self.grad_nu = self.layout.nu(self.grad)
        self._bind_transposed()

    def _bind_transposed(self) -> None:
        """Buffers for contiguous transposed copies of the hidden-to-hidden weights.

        The backward passes multiply by every hidden layer's transposed weights; ``bmm`` is
        faster on a contiguous factor than on a transposed view (same result to
        the bit).  ``_transpose_weights`` refreshes the copies, one kernel per run of layers
        of one shape, before every pass that uses them.
        """
        self._transposed_pairs, self.weights_t = [], None
        if self.needs_autograd:
            return
        weights_t, first = [], 0
        for (w, _), (n, fan_in, fan_out) in zip(
            self.layout._blocks(self.params), self.layout.shape_runs
        ):
            if first > 0 and fan_in > 1 and fan_out > 1:
                buffer = torch.empty_like(
                    w.transpose(-1, -2), memory_format=torch.contiguous_format
                )
                self._transposed_pairs.append((buffer, w.transpose(-1, -2)))
                weights_t += [buffer.select(0, j) for j in range(n)]
            else:
                weights_t += [None] * n
            first += n
        if self._transposed_pairs:
            self.weights_t = weights_t

    def _transpose_weights(self) -> None:
        for buffer, view in self._transposed_pairs:
            buffer.copy_(view)

    def _bind_weight_groups(self) -> None:
        self.weight_groups = self.layout.weight_groups(self.params)

    def _init_normalisation(self, generator) -> None:
        self._bind_weight_groups()
        if self.orthonormal:
            self._left_vectors = []
            for w in self.weight_groups:
                orthonormal_init(w, self.layer_norm, generator)
            return
        self._left_vectors = self._head_vectors(generator)
        self._init_normalisation_head()

    def _head_vectors(self, generator) -> list:
        """A random unit left vector per matrix of every weight group."""
        return [
            torch.nn.functional.normalize(
                torch.randn(
                    w.shape[0], 1, w.shape[2], generator=generator, dtype=w.dtype, device=w.device
                ),
                dim=-1,
            )
            for w in self.weight_groups
        ]

    def _init_normalisation_head(self) -> None:
        for w in self.weight_groups:
            w.mul_(self.layer_norm / spectral_norm_exact(w)[:, None, None])
        if self.constraint == "hard":
            for _ in range(_POWER_ITERATIONS_AT_START):
                self._power_iteration()

    # -- persistence (warm start) -------------------------------------------------------------
    def state(self) -> dict:
        """Everything that persists across particle steps, as NumPy arrays."""
        # Before the first update the Adam moments are zeros: None stands for them (a fit
        # whose flows all start where they should stores a third of the state).
        moments = [m.cpu().numpy() for m in (self.exp_avg, self.exp_avg_sq)]
        moments = [m.copy() if m.any() else None for m in moments]
        return {
            "params": self.params.cpu().numpy().copy(),
            "exp_avg": moments[0],
            "exp_avg_sq": moments[1],
            "n_updates": float(self.n_updates),
            "left_vectors": [u.cpu().numpy().copy() for u in self._left_vectors or []],
            "exact_left": self._exact_left,
            # Dropout masks and mini-batches come from this generator: a continued run
            # draws what the uninterrupted run would have drawn.
            "generator": self.generator.get_state().numpy().copy(),
        }

    def load_state(self, state: dict) -> None:
        """Continue from ``state()`` of a critic with the same layout."""
        with self.no_graph():
            for name in ("params", "exp_avg", "exp_avg_sq"):
                if state[name] is None:
                    getattr(self, name).zero_()
                else:
                    getattr(self, name).copy_(torch.as_tensor(state[name]))
            self.n_updates.fill_(state["n_updates"])
            for u, saved in zip(self._left_vectors or [], state["left_vectors"]):
                u.copy_(torch.as_tensor(saved))
        self._exact_left = state["exact_left"]
        self._updates = int(state["n_updates"])
        if "generator" in state:
            self.generator.set_state(torch.from_numpy(state["generator"].copy()))

    # -- compaction: the critics of some of the flows ---------------------------------------
    def _flow_vectors(self) -> list:
        """Views of the power-iteration vectors with the flows as dimension 1: a dense
        group's (n * K, 1, fan_out) as (n, K, 1, fan_out)."""
        k = self.layout.n_flows
        return [u.unflatten(0, (-1, k)) for u in self._left_vectors or []]

    def _join_vectors(self, views) -> list:
        """The inverse of ``_flow_vectors`` (on views of fewer flows)."""
        return [v.flatten(0, 1) for v in views]

    def select(self, flows) -> Critic:
        """The critic of ``flows`` (increasing indices) alone, as it would go on in this one.

        Weights, Adam moments, power-iteration vectors and counters are copied; the
        generator is shared, and the mini-batch and dropout draws stay those of every flow
        (``draws``), so each selected flow trains exactly as it would among all of them.
        """
        flows = torch.as_tensor(np.asarray(flows), dtype=torch.long)
        new = copy.copy(self)
        new.layout = dataclasses.replace(self.layout, n_flows=len(flows))
        drawn, total = (
            (torch.arange(self.layout.n_flows), self.layout.n_flows)
            if self.draws is None
            else self.draws
        )
        new.draws = (drawn[flows], total)
        new.paired = len(flows) == 1
        mask = flow_mask(self.layout, flows).to(self.params.device)
        with self.no_graph():
            new.params, new.exp_avg, new.exp_avg_sq = (
                t[mask] for t in (self.params, self.exp_avg, self.exp_avg_sq)
            )
            new.grad = torch.zeros_like(new.params)
            new.n_updates = self.n_updates.clone()
            new._bind_views()
            new._power_plan = None
            if self.constraint is not None:
                new._bind_weight_groups()
            if self._left_vectors is not None:
                index = flows.to(self.params.device)
                new._left_vectors = self._join_vectors(
                    [v.index_select(1, index) for v in self._flow_vectors()]
                )
        return new

    def absorb(self, part: Critic, flows) -> None:
        """Write ``part`` (``select(flows)`` of this critic, trained on) back into this one."""
        mask = flow_mask(self.layout, flows).to(self.params.device)
        with self.no_graph():
            for name in ("params", "exp_avg", "exp_avg_sq"):
                getattr(self, name)[mask] = getattr(part, name)
            self.n_updates.copy_(part.n_updates)
            index = torch.as_tensor(np.asarray(flows), dtype=torch.long, device=mask.device)
            for full, selected in zip(self._flow_vectors(), part._flow_vectors()):
                full.index_copy_(1, index, selected)
        self._exact_left, self._updates = part._exact_left, part._updates

    def redraw(self, flows, generator) -> None:
        """New weights for the critics of ``flows``, drawn and normalised as at the start.

        A ReLU critic whose units are all inactive at every particle has a zero gradient
        there, for the particles and for its own weights: no ascent step brings the units
        back, and the flow stays where it is, short of its target.  A fresh draw starts that
        flow's critic again; its Adam moments and the run's counters are kept (the moments
        of dead units have decayed towards zero; the others' scale the first steps).
        """
        part = self.select(flows)
        device = part.params.device
        with self.no_graph():
            part.params.copy_(part.layout.initialize(generator, part.params.dtype, device))
            if self.constraint is not None:
                with _calling_thread(self._small_ops_on_one_thread(device)):
                    part._init_normalisation(generator)
        self.absorb(part, flows)

    # -- spectral normalisation -------------------------------------------------------------
    def _power_iteration(self):
        """One power iteration per layer with persistent vectors; the norms per weight group,
        shaped (n_layers * K, 1, 1).

        A single-column layer is a vector, whose spectral norm is its Euclidean norm.
        """
        plan = self._power_plan
        if plan is None:
            # The views each iteration needs, taken once: the weights and vectors are
            # changed only in place.
            plan = self._power_plan = [
                (w, None if w.shape[2] == 1 else w.transpose(1, 2), u)
                for w, u in zip(self.weight_groups, self._left_vectors)
            ]
        norms, bmm = [], PAIRED_BMM if self.paired else torch.bmm
        for w, w_t, u in plan:
            if w_t is None:
                norms.append(torch.linalg.vector_norm(w, dim=(1, 2), keepdim=True))
                continue
            v = bmm(u, w_t)
            v.div_(torch.linalg.vector_norm(v, dim=-1, keepdim=True))
            wv = bmm(v, w)
            sigma = torch.linalg.vector_norm(wv, dim=-1, keepdim=True)
            torch.div(wv, sigma, out=u)
            norms.append(sigma)
        return norms

    def spectral_normalize(self) -> None:
        """Rescale every weight matrix to spectral norm ``L ** (1 / depth)`` (Algorithm 1, l. 9)."""
        estimates = self._power_iteration()
        if self._exact_left > 0:
            self._exact_left -= 1
            estimates = [spectral_norm_exact(w)[:, None, None] for w in self.weight_groups]
        for w, sigma in zip(self.weight_groups, estimates):
            # One kernel for the default L = 1 (two otherwise) instead of three for
            # ``w *= layer_norm / sigma``: sigma is a fresh tensor of this step.
            w.div_(sigma if self.layer_norm == 1.0 else sigma.div_(self.layer_norm))

    def orthonormalize(self) -> None:
        """Move every singular value of every weight matrix to ``L ** (1 / depth)``."""
        start = self._exact_left > 0
        self._exact_left -= start
        n_iterations = _BJORCK_ITERATIONS_AT_START if start else _BJORCK_ITERATIONS
        for w in self.weight_groups:
            orthonormalize(w, self.layer_norm, n_iterations)

    def project(self) -> None:
        """Put the weights back into the hard constraint's set after an optimiser step."""
        if self.orthonormal:
            self.orthonormalize()
        else:
            self.spectral_normalize()

    def enforce_exact_lipschitz(self) -> None:
        """Shrink any weight matrix whose exact spectral norm exceeds ``L ** (1 / depth)``.

        Power and Bjorck iterations leave norms a little off; after this the network is
        L-Lipschitz for sure (an SVD per matrix: for final evaluations, not every step).
        """
        if self.orthonormal:
            for w in self.weight_groups:
                orthonormalize(w, self.layer_norm, _BJORCK_ITERATIONS_AT_START)
        for w, _ in self.layers:
            shrink = torch.clamp(self.layer_norm / spectral_norm_exact(w), max=1.0)
            w.mul_(shrink[:, None, None])

    # -- optimisation -----------------------------------------------------------------------
    def _adam_ascent(self) -> None:
        # One kernel for the whole flat vector of the K critics.
        adam_step(
            [self.params],
            [self.grad],
            [self.exp_avg],
            [self.exp_avg_sq],
            [self.n_updates],
            learning_rate=self.learning_rate,
            betas=self.betas,
            eps=self.adam_eps,
            maximize=True,
        )

    def train_step(self, z, n_particles, w_y, w_x, with_value=False):
        """One ascent step on J; ``z`` = particles then targets (K, M + N, d).

        With ``with_value``, returns J (K,) at the weights before the step: the divergence
        estimate of Algorithm 1; otherwise returns None and skips computing it.
        """
        lean = self._lean_plan(z.shape[1]) if self._exact_left <= 0 else None
        if lean is not None:
            value = self._lean_step(lean, z, n_particles, w_y, w_x, with_value)
        elif self.constraint == "soft":
            value = self._train_step_penalised(z, n_particles, w_y, w_x)
        else:
            value = self._write_gradient(z, n_particles, w_y, w_x, with_value)
            with _calling_thread(self._small_ops_on_one_thread(self.params.device)):
                self._adam_ascent()
                if self.constraint == "hard":
                    self.project()
        self._updates += 1
        if self._updates % _FLUSH_EVERY == 0:
            self._flush_subnormals()
        return value

    def _lean_plan(self, n_rows):
        """The ``_Lean`` plan of an update on ``n_rows`` rows, or None where the general
        path must run (``_lean_step``): it repeats this class's own methods, so a subclass
        (the CNN critic) takes the general path."""
        if type(self) is not Critic or not torch.is_inference_mode_enabled():
            return None
        plan = self._lean.get(n_rows, False)
        if plan is False:
            plan = None
            chunks = self._flow_chunks(n_rows)
            passes = self._passes(chunks[0]) if len(chunks) == 1 else None
            if (
                USE_LEAN
                and passes is not None
                and self.constraint == "hard"
                and not self.orthonormal
                and not self.paired
            ):
                plan = _Lean(self, chunks[0], passes)
            self._lean[n_rows] = plan
        return plan

    def _small_ops_on_one_thread(self, device) -> bool:
        """Whether this critic's Adam step and normalisation run on the calling thread:
        an MLP critic's (``_lean_step``) of at most ``_SMALL_PARAMS`` parameters, on the
        CPU, unless ``USE_LEAN`` is off."""
        return (
            USE_LEAN
            and type(self) is Critic
            and torch.device(device).type == "cpu"
            and self.params.numel() <= _SMALL_PARAMS
        )

    def _lean_step(self, lean: _Lean, z, n_particles, w_y, w_x, with_value):
        """``_write_gradient``, ``_adam_ascent`` and ``spectral_normalize`` after the first
        exact updates, for one chunk with preallocated passes: the same ops in the same order
        (tested to the bit), bound once and called in turn (``_Lean``).  A small update is
        mostly the cost of calling its ops, and a tenth of that was the Python between
        them."""
        head, backward = lean.update_ops(self, z, n_particles, w_y, w_x, with_value)
        value = run(head)
        run(backward)
        # Adam and the power iteration are small ops (a few thousand numbers, products of a
        # vector and a few matrices): on several threads each costs a fork and a join of the
        # thread team, more than its arithmetic, and far more where other processes keep
        # the cores busy.  They run on the calling thread; their results do not depend on it
        # (no reduction splits across threads at these sizes: tested to the bit).
        threads = torch.get_num_threads() if lean.one_thread else 1
        if threads > 1:
            torch.set_num_threads(1)
        try:
            run(lean.project)
        finally:
            if threads > 1:
                torch.set_num_threads(threads)
        return value if with_value else None

    def _flush_subnormals(self) -> None:
        """Set the persistent state's subnormal values to zero (see ``_FLUSH_EVERY``)."""
        tiny = torch.finfo(self.params.dtype).tiny
        for t in (self.params, self.exp_avg, self.exp_avg_sq, *(self._left_vectors or ())):
            t.masked_fill_(t.abs() < tiny, 0.0)

    def _flow_chunks(self, n_rows):
        """Groups of flows to run together on ``n_rows`` rows each (``_Chunk``), with views
        of their layers and, where small enough, buffers for their passes.

        All K flows go in one batch while their activations fit in a core's cache; beyond,
        each op would stream every flow's activations through memory, and flows go in
        groups that fit (about twice as fast for 10 flows of 4 000 rows: ``bench_step.py``,
        ``benchmarks/README.md``).
        """
        chunks = self._chunks.get(n_rows)
        if chunks is None:
            k = self.layout.n_flows
            index, total = (np.arange(k), k) if self.draws is None else self.draws
            index = np.asarray(index)
            per_flow = n_rows * max(self.layout.sizes) * self.params.element_size()
            # A GPU has no such cache to fit, and every group costs kernel launches.
            size = max(1, _CACHE_BYTES // per_flow) if self.params.device.type == "cpu" else total
            # Groups of ``size`` consecutive flows of the run.  The critic of some of them
            # (``select``) keeps each flow in its group, a flow left alone in a group of
            # several computing its thin products as in a batch (``networks._paired``):
            # every flow's products take the kernels they took with all flows.
            group = index // size
            starts = [0, *np.flatnonzero(np.diff(group)) + 1, k]
            if len(starts) == 2:
                chunks = [_Chunk(None, self.layers, self.grad_layers, self.weights_t)]
            else:
                chunks = [
                    _Chunk(
                        flows,
                        [(w[flows], b[flows]) for w, b in self.layers],
                        [(w[flows], b[flows]) for w, b in self.grad_layers],
                        None
                        if self.weights_t is None
                        else [None if w is None else w[flows] for w in self.weights_t],
                    )
                    for flows in (slice(a, b) for a, b in zip(starts[:-1], starts[1:]))
                ]
            for c, a, b in zip(chunks, starts[:-1], starts[1:]):
                c.paired = b - a == 1 and min(size, total - group[a] * size) >= 2
            widths = self.layout.sizes[1:]
            workspace = (2 * sum(widths) + 1) * n_rows * k * self.params.element_size()
            fits = (
                self.activation.inplace
                and not self.needs_autograd
                and self.layout.depth > 1
                and workspace <= _WORKSPACE_BYTES
            )
            for c in chunks:
                c.n_rows, c.fits = n_rows, fits
            self._chunks[n_rows] = chunks
        return chunks

    def _passes(self, chunk: _Chunk) -> MLPPass | None:
        """The preallocated passes of ``chunk`` where they can run, else None.

        They write into inference tensors: only in inference mode (``train_flow`` and the
        divergence estimates run there); a call outside takes the allocating path.
        """
        if not chunk.fits or not torch.is_inference_mode_enabled():
            return None
        if chunk.passes is None:
            chunk.passes = MLPPass(
                chunk.layers,
                chunk.grad_layers,
                chunk.weights_t,
                self.activation,
                chunk.n_rows,
                chunk.paired,
            )
        return chunk.passes

    def _weights_t(self, chunk: _Chunk):
        """The chunk's transposed weights, refreshed, in inference mode; else None."""
        if chunk.weights_t is None or not torch.is_inference_mode_enabled():
            return None
        return chunk.weights_t

    def _write_gradient(self, z, n_particles, w_y, w_x, with_value):
        """dJ/dparams into ``self.grad`` by the hand-written backward pass; J if asked."""
        chunks = self._flow_chunks(z.shape[1])
        if self.weights_t is not None and torch.is_inference_mode_enabled():
            self._transpose_weights()
        if len(chunks) == 1:
            return self._chunk_gradient(z, n_particles, w_y, w_x, with_value, chunks[0])
        values = [
            self._chunk_gradient(z[c.flows], n_particles, w_y[c.flows], w_x[c.flows], with_value, c)
            for c in chunks
        ]
        return torch.cat(values) if with_value else None

    def _chunk_gradient(self, z, n_particles, w_y, w_x, with_value, chunk: _Chunk):
        passes = self._passes(chunk)
        if passes is not None:
            passes.forward(z)
            value = self._objective_into(passes, n_particles, w_y, w_x, with_value, chunk)
            passes.parameter_gradient(z)
            return value
        phi, inputs, saved = forward(chunk.layers, self.activation, z, paired=chunk.paired)
        value, grad_phi = self._objective_gradient(
            phi, n_particles, w_y, w_x, with_value, chunk.flows
        )
        parameter_gradient(
            chunk.layers,
            self.activation,
            inputs,
            saved,
            grad_phi,
            chunk.grad_layers,
            self._weights_t(chunk),
            paired=chunk.paired,
        )
        return value

    def _objective_into(self, passes: MLPPass, n_particles, w_y, w_x, with_value, chunk):
        """``_objective_gradient`` with dJ/dphi written into the buffer of ``passes``."""
        value = run(self._objective_ops(passes, n_particles, w_y, w_x, with_value, chunk))
        return value if with_value else None

    def _objective_ops(self, passes: MLPPass, n_particles, w_y, w_x, with_value, chunk):
        """The calls of ``_objective_into``, bound; the last returns J where asked."""
        flows = chunk.flows
        nu, grad_nu = (
            (self.nu, self.grad_nu) if flows is None else (self.nu[flows], self.grad_nu[flows])
        )
        phi_y, phi_x, grad_y, grad_x = passes.split(n_particles)
        # dJ/dphi_y is w_y itself
        return [
            partial(grad_y.copy_, w_y),
            *self.divergence.gradient_ops(phi_y, phi_x, nu, w_y, w_x, grad_x, grad_nu, with_value),
        ]

    def _objective_gradient(self, phi, n_particles, w_y, w_x, with_value, flows=None):
        """J (if asked) and dJ/dphi (K, M + N) from phi on particles then targets; writes
        dJ/dnu into the gradient (of the flows in the slice ``flows``; None: all)."""
        nu, grad_nu_out = (
            (self.nu, self.grad_nu) if flows is None else (self.nu[flows], self.grad_nu[flows])
        )
        phi_y, phi_x = phi[:, :n_particles], phi[:, n_particles:]
        value = self.divergence.value(phi_y, phi_x, nu, w_y, w_x) if with_value else None
        grad_x, grad_nu = self.divergence.gradients(phi_x, nu, w_x)
        grad_nu_out.copy_(grad_nu)
        return value, torch.cat([w_y, grad_x], 1)

    def _train_step_penalised(self, z, n_particles, w_y, w_x):
        params = self.params.detach().requires_grad_(True)
        with torch.enable_grad():
            phi, grad_y = self._phi_and_particle_gradient(params, z, n_particles)
            nu = self.layout.nu(params)
            value = self.divergence.value(phi[:, :n_particles], phi[:, n_particles:], nu, w_y, w_x)
            excess = torch.relu(grad_y.square().sum(-1) / self.lipschitz**2 - 1.0)
            penalty = self.penalty * (w_y * excess).sum(1)
            (grad,) = torch.autograd.grad((value - penalty).sum(), params)
        self.grad.copy_(grad)
        self._adam_ascent()
        return value.detach()

    def _phi_and_particle_gradient(self, params, z, n_particles):
        """phi on every row and grad phi on the particles, differentiable in ``params``."""
        layers = self.layout.layers(params)
        phi, _, saved = forward(layers, self.activation, z)
        grad_y = input_gradient(layers, self.activation, [s[:, :n_particles] for s in saved])
        return phi, grad_y

    def gradient(self, y):
        """``grad phi`` at ``y`` (K, M, d) with the current weights.

        More than ``VELOCITY_ROWS`` rows per flow are evaluated in chunks of that many.
        """
        if y.shape[1] <= VELOCITY_ROWS:
            lean = self._lean_plan(y.shape[1])
            if lean is not None:
                # ``_gradient`` for one chunk with preallocated passes, less its Python.
                return run(lean.velocity_ops(self, y))
            return self._gradient(y)
        out = torch.empty_like(y)
        for start in range(0, y.shape[1], VELOCITY_ROWS):
            out[:, start : start + VELOCITY_ROWS] = self._gradient(
                y[:, start : start + VELOCITY_ROWS]
            )
        return out

    def _gradient(self, y):
        grads = []
        chunks = self._flow_chunks(y.shape[1])
        if self.weights_t is not None and torch.is_inference_mode_enabled():
            self._transpose_weights()
        for c in chunks:
            rows = y if c.flows is None else y[c.flows]
            passes = self._passes(c)
            if passes is not None:
                grads.append(passes.input_gradient(rows))
                continue
            _, _, saved = forward(c.layers, self.activation, rows, output=False, paired=c.paired)
            grads.append(
                input_gradient(
                    c.layers, self.activation, saved, self._weights_t(c), paired=c.paired
                )
            )
        return grads[0] if len(grads) == 1 else torch.cat(grads)
