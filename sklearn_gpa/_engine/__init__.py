"""The torch engine of sklearn-gpa: no scikit-learn in here.

``run_gpa`` builds the batched critic for K flows and runs Algorithm 1; ``LearnedFlow``
holds what is needed to replay the flow on new particles.  ``estimate_divergence`` and
``cross_fit_divergence`` train critics to convergence on fixed samples (the divergence
estimates of ``sklearn_gpa.metrics``).  ``activation="groupsort"`` selects the tight
Lipschitz network (MaxMin activations, orthonormal weights) for both.
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import torch

from .conv import ConvCritic, ConvLayout
from .critic import CONSTRAINTS, Critic
from .device import resolve_device, resolve_dtype, threads_context
from .divergences import DIVERGENCES, get_divergence
from .estimate import (
    CrossFitEstimate,
    DivergenceEstimate,
    cross_fit_divergence,
    estimate_divergence,
    standardization,
)
from .flow import (
    AUTO_BATCH_ROWS,
    ROLLBACK_RATIO,
    FlowResult,
    LearnedFlow,
    pack_rows,
    replay_flow,
    resolve_batch_size,
    train_flow,
)
from .integrators import SOLVERS, get_tableau
from .networks import ACTIVATIONS, MLPLayout, make_activation
from .stopping import STALL_STEPS, START_FACTOR, EnergyStopping, rows_compared
from .storage import STATE_ENCODINGS, StoredStates

__all__ = [
    "ACTIVATIONS",
    "AUTO_BATCH_ROWS",
    "ROLLBACK_RATIO",
    "CONSTRAINTS",
    "DIVERGENCES",
    "SOLVERS",
    "STATE_ENCODINGS",
    "CrossFitEstimate",
    "DivergenceEstimate",
    "STOPPING_RULES",
    "StoredStates",
    "FlowResult",
    "LearnedFlow",
    "cross_fit_divergence",
    "estimate_divergence",
    "pack_rows",
    "replay_flow",
    "resolve_batch_size",
    "resolve_device",
    "resolve_dtype",
    "run_gpa",
    "standardization",
    "unpack_rows",
]


STOPPING_RULES = ("auto",)


def run_gpa(sources, targets, **settings):
    """Run Algorithm 1 for K flows at once.

    ``sources`` and ``targets`` are lists of K NumPy arrays (rows of flow k).  Returns the
    ``FlowResult`` and the ``LearnedFlow`` (NumPy) that replays it.  ``critic_state`` (a
    previous ``FlowResult.critic_state``) continues a run: weights, Adam moments and power-
    iteration vectors carry on as if the run had never stopped.  With ``image_shape``
    (channels, height, width) the critics are CNNs (``conv.ConvLayout``) with convolutions
    of ``conv_channels`` channels and a dense head of ``hidden_layer_sizes``.

    ``batch_size`` is the critic's rows per flow and side (None: every row; "auto": every
    row up to ``AUTO_BATCH_ROWS``, that many above, see ``flow.resolve_batch_size``).

    ``store_encoding`` (``storage.STATE_ENCODINGS``) is how the ``LearnedFlow`` keeps the
    critic states: replay uses the decoded states, the same before and after pickling.

    ``stop="auto"`` stops each flow when its particles are as close to its target as a fresh
    sample of the target would be (``stopping.EnergyStopping``); ``stop="evidence"`` does
    the same, but at the first check of a fresh run (not a continued one) at
    ``stopping.START_FACTOR`` (integration: rows move only where the data show a
    difference); None runs ``n_steps``.
    ``frozen`` (K,) marks flows that do not move (those a continued run had stopped).
    ``far_particles``: whether the rule counts the far particles (``stopping``'s fifth
    statistic); the estimators leave it out of integration after a pre-alignment.

    With ``stop="auto"``, flows that are done before their first step (their particles as
    close to their targets as a fresh sample: a fitted prior often is) get no critic: the
    others run alone, and the ``LearnedFlow`` keeps their critics with ``slots`` naming
    their flows, so a fit whose classes mostly start where they should costs and stores
    what the others need.  The ``FlowResult`` still has K flows: the untrained ones have
    ``stop_step`` 0, are never alive, and their per-step divergence and kinetic energy
    are NaN.  A continued run (``critic_state`` of such a run) keeps the same slots.

    A flow that stops later (or turns non-finite) leaves the run at that check
    (``flow.train_flow``): its critic is no longer trained nor stored, its per-step values
    are NaN from then on (``FlowResult.trained_steps``), and the ``LearnedFlow`` stores the
    rest of the run for the flows that went on (``StoredStates.pieces``).  ``critic_state``
    holds every flow's critic as it was when the flow left, so a continued run starts from
    it; the flows it is given ``frozen`` leave its batch before its first step.
    """
    arguments = inspect.signature(_run_flows).bind(sources, targets, **settings)
    arguments.apply_defaults()
    arguments = arguments.arguments
    slots, start, rule = _trained_slots(arguments)
    if slots is None:  # every flow trains: with the rule the check above built, if any
        return _run_flows(**{**arguments, "_rule": rule})
    frozen, callback = arguments["frozen"], arguments["callback"]
    result, flow = _run_flows(
        **{
            **arguments,
            "_rule": rule,
            "sources": [sources[k] for k in slots],
            "targets": [targets[k] for k in slots],
            "frozen": None if frozen is None else np.asarray(frozen)[slots],
            "callback": None if callback is None else _widened(callback, slots, len(sources)),
        }
    )
    result.critic_state["slots"] = slots
    return _widen_result(result, slots, start, sources), dataclasses.replace(flow, slots=slots)


def _trained_slots(arguments):
    """The flows to train (None: all), the rule's first check of all flows (or None), and
    the rule the run goes on with (None: the run builds its own): the one built for all
    flows, or its part for the flows that train, so that the run's first check decides as
    this one did (a rule rebuilt for them drew other subsamples and floors, and a
    borderline flow could stop at step 0 after all)."""
    state, n_flows = arguments["critic_state"], len(arguments["sources"])
    if state is not None:
        slots = state.get("slots")
        return (None, None, None) if slots is None else (np.asarray(slots), None, None)
    if arguments["stop"] is None or arguments["frozen"] is not None or n_flows < 2:
        return None, None, None
    device = resolve_device(arguments["device"])
    dtype = resolve_dtype(arguments["dtype"])
    y, w_y = pack_rows(arguments["sources"], dtype, device)
    x, w_x = pack_rows(arguments["targets"], dtype, device)
    # The run's own rule: the same decision as its check before the first step.
    rule = _stopping_rule(
        y, w_y, x, w_x, arguments["seed"], arguments["stop"], arguments["far_particles"]
    )
    values, score, converged = rule.check(y, first=True)
    done = converged.cpu().numpy()
    if not done.any() or done.all():
        return None, None, rule
    start = (score.cpu().numpy(), values[0].cpu().numpy(), rule.floor[0].cpu().numpy())
    slots = np.flatnonzero(~done)
    return slots, start, rule.select(slots)


def _stopping_rule(y, w_y, x, w_x, seed, stop, far_particles=True):
    """The rule ``stop`` ("auto" or "evidence") runs for packed flows: a fixed subsample of
    each flow's rows, compared at factor 1, on its own random stream (the particles' path
    does not depend on whether the rule is on); with "evidence", at ``START_FACTOR`` at the
    first check.  "auto" (generation) also stops a flow that has stalled (``STALL_STEPS``).
    ``far_particles``: whether the far particles' statistic counts."""
    return EnergyStopping(
        y,
        w_y,
        x,
        w_x,
        max_rows=rows_compared(x.shape[2]),
        factor=1.0,
        start_factor=START_FACTOR if stop == "evidence" else None,
        patience=STALL_STEPS if stop == "auto" else None,
        generator=torch.Generator().manual_seed(int(seed) + 1),
        far=far_particles,
    )


def _widened(callback, slots, n_flows):
    """``callback`` called with per-flow arrays of all flows (NaN for untrained ones)."""

    def call(step, divergence, kinetic_energy):
        callback(
            step,
            _columns(divergence[None], slots, n_flows)[0],
            _columns(kinetic_energy[None], slots, n_flows)[0],
        )

    return call


def _columns(values, slots, n_flows, fill=np.nan):
    """``values`` (rows, len(slots)) spread to (rows, n_flows) columns, ``fill`` elsewhere."""
    values = np.asarray(values)
    out = np.full((values.shape[0], n_flows), fill, dtype=np.result_type(values, float))
    out[:, slots] = values
    return out


def _per_flow(values, slots, n_flows, fill):
    """Per-flow ``values`` of the flows ``slots`` as a list over ``n_flows``, ``fill`` (whose
    type they keep) elsewhere."""
    out = np.full(n_flows, fill)
    out[slots] = values
    return out.tolist()


def _widen_result(result, slots, start, sources):
    """The ``FlowResult`` of the trained flows ``slots`` as one of all flows."""
    n_flows = len(sources)
    untrained = np.setdiff1d(np.arange(n_flows), slots)
    particles, _ = pack_rows(sources, result.particles.dtype, result.particles.device)
    particles[slots, : result.particles.shape[1]] = result.particles
    alive = torch.zeros(
        result.alive.shape[0], n_flows, dtype=torch.bool, device=result.alive.device
    )
    alive[:, slots] = result.alive
    widened = dataclasses.replace(
        result,
        particles=particles,
        alive=alive,
        divergence=_columns(result.divergence, slots, n_flows),
        kinetic_energy=_columns(result.kinetic_energy, slots, n_flows),
        # The untrained flows were done before their first step.
        stop_step=_per_flow(result.stop_step, slots, n_flows, 0),
        failed_step=_per_flow(result.failed_step, slots, n_flows, -1),
        rolled_back=_per_flow(result.rolled_back, slots, n_flows, False),
        stalled=_per_flow(result.stalled, slots, n_flows, False),
        trained_steps=_per_flow(result.trained_steps, slots, n_flows, 0),
        redrawn=_per_flow(result.redrawn, slots, n_flows, 0),
    )
    if result.stop_score is not None:
        score = _columns(result.stop_score, slots, n_flows)
        statistic = _columns(result.stop_statistic, slots, n_flows)
        floor = _columns(result.stop_floor[None], slots, n_flows)[0]
        if start is not None and len(score):  # the first check is before the first step
            score[0, untrained] = start[0][untrained]
            statistic[0, untrained] = start[1][untrained]
            floor[untrained] = start[2][untrained]
        widened.stop_score, widened.stop_statistic, widened.stop_floor = score, statistic, floor
    return widened


def _run_flows(
    sources,
    targets,
    *,
    f="kl",
    alpha=None,
    L=1.0,
    constraint="hard",
    penalty=10.0,
    dt=0.1,
    n_steps=500,
    solver="euler",
    hidden_layer_sizes=(32, 32, 32),
    image_shape=None,
    conv_channels=(16, 32, 64),
    activation="relu",
    activation_eps=0.5,
    n_critic=5,
    learning_rate=5e-3,
    tol=None,
    store_every=1,
    store_encoding="float32",
    batch_size=None,
    log_every=50,
    seed=0,
    device="cpu",
    dtype="float32",
    callback=None,
    critic_state=None,
    stop=None,
    frozen=None,
    far_particles=True,
    _rule=None,
):
    """Algorithm 1 on all K flows given (see ``run_gpa``); ``_rule``: the stopping rule
    ``run_gpa`` already built for these flows (else one is built here)."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    n_features, hidden = sources[0].shape[1], tuple(hidden_layer_sizes)
    if image_shape is None:
        layout, critic_class = MLPLayout(n_features, hidden, len(sources)), Critic
    else:
        layout = ConvLayout(
            n_features, tuple(image_shape), tuple(conv_channels), hidden, len(sources)
        )
        critic_class = ConvCritic
    batch_size = resolve_batch_size(
        batch_size, max(len(s) for s in sources), max(len(t) for t in targets)
    )
    rows = max(len(s) for s in sources) + max(len(t) for t in targets)
    if batch_size is not None:
        rows = min(rows, 2 * batch_size)
    with threads_context(torch_device, rows * len(sources), layout.macs_per_row):
        generator = torch.Generator(device=torch_device).manual_seed(int(seed))
        critic = critic_class(
            layout,
            make_activation(activation, activation_eps),
            get_divergence(f, alpha),
            lipschitz=L,
            constraint=constraint,
            penalty=penalty,
            learning_rate=learning_rate,
            generator=generator,
            dtype=torch_dtype,
            device=torch_device,
        )
        if critic_state is not None:
            critic.load_state(critic_state)
        y, w_y = pack_rows(sources, torch_dtype, torch_device)
        x, w_x = pack_rows(targets, torch_dtype, torch_device)
        stopping = None
        if stop is not None:
            # A continued run's flows already moved: "evidence" is for a run's start only.
            rule_stop = stop if critic_state is None else "auto"
            stopping = _rule or _stopping_rule(y, w_y, x, w_x, seed, rule_stop, far_particles)
        result = train_flow(
            y,
            w_y,
            x,
            w_x,
            critic,
            get_tableau(solver),
            dt=dt,
            n_steps=n_steps,
            n_critic=n_critic,
            tol=tol,
            store_every=store_every,
            log_every=log_every,
            batch_size=batch_size,
            generator=generator,
            callback=callback,
            stopping=stopping,
            frozen=frozen,
        )
        result.critic_state = critic.state()
    flow = LearnedFlow(
        layout=layout,
        activation=activation,
        activation_eps=activation_eps,
        solver=solver,
        dt=dt,
        store_every=store_every,
        stored=StoredStates.encode(
            result.states.cpu().numpy(),
            store_encoding,
            [(flows, states.cpu().numpy()) for flows, states in result.later_states],
        ),
        alive=result.alive.cpu().numpy(),
    )
    return result, flow


# run_gpa takes _run_flows' public keywords (and introspection, e.g. the estimators', sees them).
run_gpa.__signature__ = inspect.signature(_run_flows).replace(
    parameters=[p for p in inspect.signature(_run_flows).parameters.values() if p.name != "_rule"]
)


def unpack_rows(packed: np.ndarray, counts) -> list:
    """Inverse of ``pack_rows``: the first ``counts[k]`` rows of each flow k."""
    return [packed[k, :n] for k, n in enumerate(counts)]
