"""Algorithm 1: train a warm-started critic and move particles along -grad phi.

K flows (one per class) run in one batched computation.  Rows of different flows are packed
into padded ``(K, rows, d)`` tensors with per-row weights that are zero on padding, so the
critic objective, its gradients and the kinetic energy ignore the padding without branches.

The learned flow, the critic weights at every stage of every (or every k-th) step, is kept so
that ``replay_flow`` can move particles the fit never saw.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .networks import flow_mask
from .stopping import STALL_GAIN
from .storage import StoredStates

__all__ = [
    "AUTO_BATCH_ROWS",
    "FlowResult",
    "minibatch_sampler",
    "pack_rows",
    "replay_flow",
    "resolve_batch_size",
    "train_flow",
]

# batch_size="auto": the critic trains on every row while no flow has more than this many
# particle or target rows, and on this many rows per flow and side (drawn with replacement)
# above.  The cost of a critic update is then bounded, and a particle step costs the
# velocity on every particle (linear in N) plus a constant.
AUTO_BATCH_ROWS = 16384


def resolve_batch_size(batch_size, n_particles, n_targets):
    """The critic's rows per flow and side: an int, or None for every row.

    ``batch_size`` is an int, None (every row) or "auto": None while ``n_particles`` and
    ``n_targets`` (the largest flow's rows) are at most ``AUTO_BATCH_ROWS``, that many above.
    """
    if batch_size == "auto":
        return None if max(n_particles, n_targets) <= AUTO_BATCH_ROWS else AUTO_BATCH_ROWS
    return batch_size


def pack_rows(groups, dtype, device):
    """Stack a list of K arrays (n_k, d) into a zero-padded (K, max n_k, d) tensor.

    Returns the tensor and row weights (K, max n_k) equal to 1 / n_k on real rows, 0 on padding.
    """
    n_max = max(len(g) for g in groups)
    d = groups[0].shape[1]
    packed = torch.zeros(len(groups), n_max, d, dtype=dtype, device=device)
    weights = torch.zeros(len(groups), n_max, dtype=dtype, device=device)
    for k, g in enumerate(groups):
        packed[k, : len(g)] = torch.as_tensor(np.asarray(g), dtype=dtype, device=device)
        weights[k, : len(g)] = 1.0 / len(g)
    return packed, weights


@dataclass
class FlowResult:
    """What one run of Algorithm 1 leaves behind (tensors on the run's device).

    ``states`` are the critic states of all K flows up to the first check where a flow
    stopped (every state when none did); ``later_states`` lists, after each such check,
    ``(flows, states)``: the states of the flows still moving from then on, stored every
    ``store_every`` steps as before (``LearnedFlow`` replays them piece by piece).
    """

    particles: torch.Tensor  # (K, M, d) final positions
    states: torch.Tensor  # (n_stored, n_stages, n_params) critic weights per stored step
    alive: torch.Tensor  # (n_steps, K) False from the step a flow turned non-finite or stopped
    divergence: np.ndarray  # (n_steps, K) objective J after critic training, per step
    kinetic_energy: np.ndarray  # (n_steps, K) mean |grad phi|^2 over the particles
    time: np.ndarray  # (n_steps,) seconds since the start, at the end of each step
    n_steps: int
    stop_reason: str
    failed_step: list = field(default_factory=list)  # per flow, first non-finite step or -1
    critic_state: dict = field(default_factory=dict)  # to continue the run (warm start)
    stop_step: list = field(default_factory=list)  # per flow, step the rule froze it, or -1
    rolled_back: list = field(default_factory=list)  # per flow, whether it went back to its best
    stalled: list = field(default_factory=list)  # per flow, whether it stopped for lack of gain
    stop_check_step: np.ndarray = None  # (n_checks,) steps run at each check of the rule
    stop_score: np.ndarray = None  # (n_checks, K) the rule's score at each check (<= 1: done)
    stop_statistic: np.ndarray = None  # (n_checks, K) energy distance particles - target
    stop_floor: np.ndarray = None  # (K,) the energy distance's fresh-sample floor
    later_states: list = field(default_factory=list)  # [(flows, states)] after compactions
    trained_steps: list = field(default_factory=list)  # per flow, steps its critic trained
    redrawn: list = field(default_factory=list)  # per flow, times its flat critic was redrawn


@dataclass
class _Problem:
    """What every step of one run needs: the particle + target buffer and the settings."""

    z: torch.Tensor  # (K, M + N, d): the particles' current stage position, then targets
    n_particles: int
    w_y: torch.Tensor
    w_x: torch.Tensor
    dt: float
    n_critic: int
    batch: object  # None, or a function z -> (rows, n_particles, w_y, w_x) mini-batch
    particles: torch.Tensor = field(init=False)  # the view z[:, :n_particles]

    def __post_init__(self):
        # One view for the whole run: the critic keeps its bound velocity ops while the
        # same tensor comes back (``critic._Lean``).
        self.particles = self.z[:, : self.n_particles]


@dataclass
class _Record:
    """Where the steps' diagnostics (K-wide) and critic states (by segment) go.

    ``columns`` are the batch's flows among the K (None: all K are in the batch);
    ``states`` holds the stored states from stored index ``first`` on.
    """

    states: torch.Tensor
    first: int
    store_every: int
    divergence: torch.Tensor  # (n_steps, K), NaN where a flow was not in the batch
    kinetic_energy: torch.Tensor
    alive: torch.Tensor  # (n_steps, K), False where a flow was not in the batch
    n_stored: int
    trained_steps: np.ndarray  # (K,) steps each flow's critic trained (n_steps: to the end)
    redrawn: np.ndarray  # (K,) times each flow's flat critic was drawn anew
    columns: torch.Tensor | None = None
    later: list = field(default_factory=list)  # closed segments: (first, columns, states)

    def write(self, table, step, values):
        if self.columns is None:
            table[step] = values
        else:
            table[step].index_copy_(0, self.columns, values)


# Whether a run leaves the flows that stopped out of its batch (``_Batch.leave_out``);
# benchmarks switch it off to time the run that keeps every flow to the end.
_COMPACT = True
# Whether a moving flow whose critic went flat gets a fresh one (``_redraw_flat_critics``);
# benchmarks switch it off to measure what it changes.
_REDRAW_FLAT = True
# A flow that the rule never stopped goes back to its best check when its score at the end
# is more than this many times that check's (None: never).  Flows whose critic lags behind
# their particles can swing past their target and back (a one-dimensional latent flow went
# from a score of 1575 down to 69 and up to 3010); the ratio leaves flows that only drift.
ROLLBACK_RATIO = 2.0
# Flows that move only on evidence (integration) are also checked every EARLY_EVERY steps
# before the first ``log_every`` (None: at ``log_every`` only).  They start near their
# targets, and a flow of a few rows in many dimensions has a critic that separates its
# particles from the target rows completely and pushes them at its speed limit: 30 rows in
# 20-D went from 0.19 to 0.56 of their raw error to the truth in the 50 steps before the
# first check (0.27 stopped at step 20).
EARLY_EVERY = 10


class _Batch:
    """The flows a run still trains: their critic, particles, problem and flags.

    ``flows`` are their indices among the run's K flows.  ``leave_out`` drops the flows
    that no longer move (stopped by the rule, or non-finite) at a check: their critics are
    no longer trained, their particles no longer moved and their states no longer stored;
    what is left runs as it would have among all K (``Critic.select``).
    """

    def __init__(self, critic, y, problem, live, running):
        self.origin = self.critic = critic
        self.y, self.problem, self.live, self.running = y, problem, live, running
        self.flows = np.arange(len(y))
        self.particles = None  # K-wide final positions, once a flow has left

    def final_particles(self):
        if self.particles is None:
            return self.y
        self.particles[torch.as_tensor(self.flows, device=self.y.device)] = self.y
        return self.particles

    def final_critic(self):
        """The run's critic of all K flows, each as it was when it left the batch."""
        if self.critic is not self.origin:
            self.origin.absorb(self.critic, self.flows)
        return self.origin

    def leave_out(self, steps_run, record: _Record, rule) -> None:
        """Drop the flows that no longer move, after ``steps_run`` steps."""
        moving = (self.live & self.running).cpu().numpy()
        if not _COMPACT or moving.all() or not moving.any():
            return
        device = self.y.device
        keep = np.flatnonzero(moving)
        index = torch.as_tensor(keep, device=device)
        self.particles = self.y.clone() if self.particles is None else self.final_particles()
        self.final_critic()
        record.trained_steps[self.flows[~moving]] = steps_run
        self.flows = self.flows[keep]
        self.critic = self.origin.select(self.flows)
        self.y = self.y.index_select(0, index)
        self.live, self.running = self.live[index], self.running[index]
        p = self.problem
        self.problem = dataclasses.replace(
            p,
            z=p.z.index_select(0, index),
            w_y=p.w_y.index_select(0, index),
            w_x=p.w_x.index_select(0, index),
            batch=None if p.batch is None else p.batch.select(keep, self.critic.draws),
        )
        if rule.stopping is not None:
            rule.stopping = rule.stopping.select(index)
        # The states stored so far stay in their segment; the batch's go to a new one.
        first = -(-steps_run // record.store_every)
        record.later.append((record.first, record.columns, record.states[: first - record.first]))
        record.states = torch.empty(
            record.n_stored - first,
            *record.states.shape[1:2],
            self.critic.params.numel(),
            dtype=record.states.dtype,
            device=device,
        )
        record.first = first
        record.columns = torch.as_tensor(self.flows, device=device)


def _stage_gradient(critic, tableau, y, gradients, p: _Problem):
    """Train the critic at the stage position, then return (grad phi there, J, kinetic
    energy).

    The stage velocity is ``-grad phi``: the tableau takes the gradients with the step
    ``-dt`` instead, the same numbers (a change of sign is exact) without a negation per
    stage.
    """
    p.particles.copy_(tableau.stage_position(y, -p.dt, gradients))
    for m in range(p.n_critic):
        data = (p.z, p.n_particles, p.w_y, p.w_x) if p.batch is None else p.batch(p.z)
        value = critic.train_step(*data, with_value=m == p.n_critic - 1)
    grad = critic.gradient(p.particles)
    # (w_y * (grad ** 2).sum(-1)).sum(1) in two calls: ``vecdot`` is that product and sum.
    kinetic = torch.linalg.vecdot(p.w_y, torch.linalg.vecdot(grad, grad))
    return grad, value, kinetic


def _particle_step(tableau, batch: _Batch, step, record: _Record):
    """One step of the batch's flows; records diagnostics and critic states; moves ``y``.

    ``batch.live`` (finite so far) is updated in place; flows not ``running`` (stopped by
    the rule) are frozen like non-finite ones.
    """
    critic, y, p = batch.critic, batch.y, batch.problem
    gradients = []
    for stage in range(tableau.n_stages):
        grad, value, kinetic = _stage_gradient(critic, tableau, y, gradients, p)
        gradients.append(grad)
        if stage == 0:
            record.write(record.divergence, step, value)
            record.write(record.kinetic_energy, step, kinetic)
            # The kinetic energy is non-finite exactly when some velocity of the flow is,
            # and a sum is non-finite exactly when a term is: a check on K numbers instead
            # of on every coordinate of every particle.
            health = kinetic + value
        else:
            health = health + kinetic
        if step % record.store_every == 0:
            record.states[step // record.store_every - record.first, stage] = critic.params
    increment = tableau.increment(-p.dt, gradients)
    # A flow whose step is not finite is frozen where it is, on the device, at once.
    batch.live &= torch.isfinite(health)
    moving = batch.live & batch.running
    record.write(record.alive, step, moving)
    y.add_(increment.masked_fill_(~moving[:, None, None], 0.0))


def _check_progress(step, batch: _Batch, rule, record: _Record, tol, callback):
    """The host's look at the device every ``log_every`` steps; returns a stop reason."""
    moving = (batch.live & batch.running).cpu().numpy()
    if callback is not None:
        # The user's code runs as it would outside the fit, autograd included.
        with torch.inference_mode(False):
            callback(
                step,
                record.divergence[step].cpu().numpy(),
                record.kinetic_energy[step].cpu().numpy(),
            )
    if not moving.any():
        if rule.stalled.any():
            return "stalled"
        return "converged" if (rule.stop_step >= 0).any() else "non-finite"
    energy = record.kinetic_energy[step].cpu().numpy()[batch.flows]
    if tol is not None and np.all(energy[moving] < tol):
        return "tol"
    return None


def _redraw_flat_critics(step, batch: _Batch, record: _Record) -> None:
    """Give a fresh critic to each moving flow whose particles had no velocity at ``step``.

    Exactly zero kinetic energy means the critic's gradient is zero at every particle (a
    ReLU critic with all its units inactive there): it can no longer learn or move them
    (``Critic.redraw``).  Checked at the host's looks only.  Each flow's draw has its own
    seed: the critic generator's, the critic's update count (kept in its state, so a
    continued run draws what the whole run drew) and the flow's index among the run's K
    (so a flow's new critic does not depend on the others, nor on which left the batch).
    """
    if not _REDRAW_FLAT:
        return
    moving = (batch.live & batch.running).cpu().numpy()
    energy = record.kinetic_energy[step].cpu().numpy()[batch.flows]
    flat = np.flatnonzero(moving & (energy == 0.0))
    critic = batch.critic
    for j in flat:
        seed = [critic.generator.initial_seed(), int(critic.n_updates), int(batch.flows[j])]
        generator = torch.Generator(device=critic.params.device)
        generator.manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        critic.redraw([j], generator)
    record.redrawn[batch.flows[flat]] += 1


class _RuleRecord:
    """The stopping rule's checks on the host: steps, statistics, each flow's stopping step.

    ``stopping`` is the rule of the batch's flows; a flow out of the batch keeps the score
    and statistics of its last check (its particles no longer move).  Each flow's best check
    (lowest score without the far particles', ``EnergyStopping.ranking``) and its particles
    there are kept, for ``roll_back``.
    """

    def __init__(self, stopping, running):
        self.stopping = stopping
        self.floor = None if stopping is None else stopping.floor[0].cpu().numpy()
        self.steps, self.scores, self.values = [], [], []
        self.stop_step = np.where(running.cpu().numpy(), -1, 0)
        n_flows = len(self.stop_step)
        self.score, self.value = np.full(n_flows, np.nan), np.full(n_flows, np.nan)
        self.ranked = np.full(n_flows, np.nan)  # the score that ranks checks (``ranking``)
        self.best_score, self.best_step = np.full(n_flows, np.inf), np.zeros(n_flows, dtype=int)
        self.best_particles = None
        self.rolled_back = np.zeros(n_flows, dtype=bool)
        # The stall rule's "mark" per flow: the last check whose score fell below
        # (1 - STALL_GAIN) times the mark before it (the first check is the first mark).
        self.patience = None if stopping is None else stopping.patience
        self.mark_score = np.full(n_flows, np.inf)
        self.mark_step = np.zeros(n_flows, dtype=int)
        self.stalled = np.zeros(n_flows, dtype=bool)

    def checks_early(self, steps_run, log_every) -> bool:
        """Whether the rule looks after ``steps_run`` steps, before the first ``log_every``
        (every ``EARLY_EVERY`` steps, for flows that move only on evidence)."""
        if EARLY_EVERY is None or self.stopping is None or not self.stopping.on_evidence:
            return False
        return steps_run < log_every and steps_run % EARLY_EVERY == 0

    def check(self, steps_run, batch: _Batch):
        """Apply the rule after ``steps_run`` steps: freeze the flows that are done."""
        if self.stopping is None:
            return
        values, score, converged = self.stopping.check(batch.y, first=steps_run == 0)
        newly = (converged & batch.live & batch.running).cpu().numpy()
        self.stop_step[batch.flows[newly]] = steps_run
        batch.running &= ~torch.as_tensor(newly, device=batch.running.device)
        score = score.cpu().numpy()
        self.score[batch.flows] = score
        self.value[batch.flows] = values[0].cpu().numpy()
        self.steps.append(steps_run)
        self.scores.append(self.score.copy())
        self.values.append(self.value.copy())
        if ROLLBACK_RATIO is None and self.patience is None:
            return
        ranked = self.stopping.ranking(values).cpu().numpy()
        self.ranked[batch.flows] = ranked
        better = (ranked < self.best_score[batch.flows]) & batch.live.cpu().numpy()
        if better.any():
            if self.best_particles is None:  # K-wide, whatever the batch holds now
                shape = (len(self.stop_step), *batch.y.shape[1:])
                self.best_particles = batch.y.new_zeros(shape)
            flows = batch.flows[better]
            self.best_score[flows], self.best_step[flows] = ranked[better], steps_run
            index = torch.as_tensor(np.flatnonzero(better), device=batch.y.device)
            self.best_particles[torch.as_tensor(flows, device=batch.y.device)] = (
                batch.y.index_select(0, index)
            )
        self._stop_stalled(steps_run, batch, score)

    def _stop_stalled(self, steps_run, batch: _Batch, score):
        """Freeze the moving flows whose score has not fallen by ``STALL_GAIN`` in
        ``patience`` steps (they go back to their best check at the end, ``roll_back``)."""
        if self.patience is None:
            return
        flows = batch.flows
        gained = score < self.mark_score[flows] * (1.0 - STALL_GAIN)
        self.mark_score[flows[gained]] = score[gained]
        self.mark_step[flows[gained]] = steps_run
        moving = (batch.live & batch.running).cpu().numpy()
        stalled = moving & (steps_run - self.mark_step[flows] >= self.patience)
        if stalled.any():
            self.stalled[flows[stalled]] = True
            self.stop_step[flows[stalled]] = steps_run
            batch.running &= ~torch.as_tensor(stalled, device=batch.running.device)

    def roll_back(self, particles, alive):
        """Send the flows that never stopped and ended worse than their best check (a score
        more than ``ROLLBACK_RATIO`` times its), and the stalled ones, back to it: their
        particles there, frozen from then on (in ``alive`` (steps, K), so replay stops
        there too), stopped there."""
        if self.stopping is None or self.best_particles is None:
            return
        live = alive[-1].cpu().numpy() if len(alive) else np.ones(len(self.score), dtype=bool)
        worse = np.zeros(len(self.score), dtype=bool)
        if ROLLBACK_RATIO is not None:
            worse = (self.stop_step < 0) & live & (self.ranked > self.best_score * ROLLBACK_RATIO)
        # A stalled flow keeps its best check (the dead critic's, or the swing's, low point);
        # one without a finite score at any check has none to go back to.
        back = worse | (self.stalled & (self.best_step < self.stop_step))
        back &= np.isfinite(self.best_score)
        for k in np.flatnonzero(back):
            particles[k] = self.best_particles[k]
            alive[self.best_step[k] :, k] = False
            self.stop_step[k] = self.best_step[k]
        self.rolled_back |= worse

    def fill(self, result):
        result.stop_step = self.stop_step.tolist()
        result.rolled_back = self.rolled_back.tolist()
        result.stalled = self.stalled.tolist()
        if self.stopping is not None:
            result.stop_check_step = np.array(self.steps, dtype=int)
            result.stop_score = np.array(self.scores).reshape(len(self.steps), -1)
            result.stop_statistic = np.array(self.values).reshape(len(self.steps), -1)
            result.stop_floor = self.floor


class _Sampler:
    """Per flow, ``batch_size`` particle and target rows drawn uniformly with replacement.

    ``draws`` (index, total): the flows are flows ``index`` of ``total`` and take their
    share of the draws for all ``total`` (a batch that some flows have left draws what it
    drew before they left).
    """

    def __init__(self, n_particles, counts_y, counts_x, batch_size, generator, draws=None):
        self.n_particles, self.counts_y, self.counts_x = n_particles, counts_y, counts_x
        self.batch_size, self.generator, self.draws = batch_size, generator, draws

    def __call__(self, z):
        k, batch_size = z.shape[0], self.batch_size
        total = k if self.draws is None else self.draws[1]
        rand = torch.rand(
            total, 2, batch_size, generator=self.generator, device=z.device, dtype=z.dtype
        )
        if self.draws is not None:
            rand = rand.index_select(0, self.draws[0].to(z.device))
        idx_y = (rand[:, 0] * self.counts_y[:, None]).long()
        idx_x = (rand[:, 1] * self.counts_x[:, None]).long() + self.n_particles
        idx = torch.cat([idx_y, idx_x], 1).unsqueeze(-1).expand(-1, -1, z.shape[2])
        w = torch.full((k, batch_size), 1.0 / batch_size, dtype=z.dtype, device=z.device)
        return torch.gather(z, 1, idx), batch_size, w, w

    def select(self, keep, draws):
        """The sampler of flows ``keep`` (indices among these), drawing as ``draws``."""
        index = torch.as_tensor(keep, device=self.counts_y.device)
        counts_y, counts_x = self.counts_y[index], self.counts_x[index]
        return _Sampler(
            self.n_particles, counts_y, counts_x, self.batch_size, self.generator, draws
        )


def minibatch_sampler(n_particles, counts_y, counts_x, batch_size, generator):
    """Per flow, draw ``batch_size`` particle and target rows uniformly with replacement."""
    return _Sampler(n_particles, counts_y, counts_x, batch_size, generator)


def _graph_free_when_possible(run):
    """Run ``run(y0, w_y, x, w_x, critic, ...)`` inside ``critic.no_graph()``."""

    @functools.wraps(run)
    def wrapped(y0, w_y, x, w_x, critic, *args, **kwargs):
        with critic.no_graph():
            return run(y0, w_y, x, w_x, critic, *args, **kwargs)

    return wrapped


@_graph_free_when_possible
def train_flow(
    y0,
    w_y,
    x,
    w_x,
    critic,
    tableau,
    *,
    dt: float,
    n_steps: int,
    n_critic: int,
    tol=None,
    store_every: int = 1,
    log_every: int = 50,
    batch_size=None,
    generator=None,
    callback=None,
    stopping=None,
    frozen=None,
) -> FlowResult:
    """Run Algorithm 1 on K packed flows.

    ``y0`` (K, M, d) and ``x`` (K, N, d) are padded particle and target rows with weights
    ``w_y``, ``w_x``.  Every ``log_every`` steps (and at the end) the host looks at the
    device once: to stop when every live flow's kinetic energy is below ``tol``, to stop when
    no flow is finite any more, and to call ``callback(step, divergence, kinetic_energy)``.
    A flow whose step turns non-finite is frozen at its last finite particles at once, on
    the device, without waiting for the host.  Ctrl-C stops the run after the last finished
    step (``stop_reason="interrupted"``).  The run is in ``torch.inference_mode`` unless
    the critic needs autograd (``Critic.no_graph``): its tensors are then inference tensors.

    ``stopping`` (a ``stopping.EnergyStopping``) is checked before the first step and at
    every look of the host: the flows it declares converged are frozen (their particles stop
    and ``alive`` is False from then on, so replay freezes them too) while the others go
    on; the run stops when none moves (``stop_reason="converged"``).  ``frozen`` (K,) marks
    flows that do not move at all (a continued run's flows that had stopped).

    At each look, the flows that no longer move (stopped or non-finite) leave the batch:
    the rest of the run costs what the moving flows cost, and each of them follows the
    path it would have followed among all K (same critic draws).  Their per-step
    divergence and kinetic energy are NaN from then on, and ``critic`` ends with each
    flow's critic as it was when the flow left.
    """
    n_flows, n_particles, _ = y0.shape
    device, dtype = y0.device, y0.dtype
    z = torch.cat([y0, x], 1)
    y = y0.clone()
    batch = None
    batch_size = resolve_batch_size(batch_size, n_particles, x.shape[1])
    if batch_size is not None and batch_size < max(n_particles, x.shape[1]):
        counts_y = (w_y > 0).sum(1).to(dtype)
        counts_x = (w_x > 0).sum(1).to(dtype)
        batch = minibatch_sampler(n_particles, counts_y, counts_x, batch_size, generator)

    n_stored = -(-n_steps // store_every)
    record = _Record(
        states=torch.empty(
            n_stored, tableau.n_stages, critic.params.numel(), dtype=dtype, device=device
        ),
        first=0,
        store_every=store_every,
        divergence=torch.full((n_steps, n_flows), math.nan, dtype=dtype, device=device),
        kinetic_energy=torch.full((n_steps, n_flows), math.nan, dtype=dtype, device=device),
        alive=torch.zeros(n_steps, n_flows, dtype=torch.bool, device=device),
        n_stored=n_stored,
        trained_steps=np.full(n_flows, n_steps),
        redrawn=np.zeros(n_flows, dtype=int),
    )
    now = np.empty(n_steps)
    live = torch.ones(n_flows, dtype=torch.bool, device=device)
    running = torch.ones(n_flows, dtype=torch.bool, device=device)
    if frozen is not None:
        running &= ~torch.as_tensor(frozen, dtype=torch.bool, device=device)
    rule = _RuleRecord(stopping, running)
    start, stop_reason, steps_run = time.perf_counter(), "n_steps", n_steps

    flows = _Batch(
        critic, y, _Problem(z, n_particles, w_y, w_x, dt, n_critic, batch), live, running
    )
    step = 0
    try:
        rule.check(0, flows)
        if not flows.running.any():
            stop_reason, steps_run = "converged", 0
        else:
            flows.leave_out(0, record, rule)
        for step in range(steps_run):
            _particle_step(tableau, flows, step, record)
            now[step] = time.perf_counter() - start
            if (step + 1) % log_every == 0 or step + 1 == n_steps:
                rule.check(step + 1, flows)
                reason = _check_progress(step, flows, rule, record, tol, callback)
                if reason is not None:
                    stop_reason, steps_run = reason, step + 1
                    break
                _redraw_flat_critics(step, flows, record)
                if step + 1 < n_steps:
                    flows.leave_out(step + 1, record, rule)
            elif rule.checks_early(step + 1, log_every):
                rule.check(step + 1, flows)
                reason = _check_progress(step, flows, rule, record, tol, None)
                if reason is not None:
                    stop_reason, steps_run = reason, step + 1
                    break
    except KeyboardInterrupt:
        # The particles of the interrupted step were not written yet: keep the finished steps.
        stop_reason, steps_run = "interrupted", step

    alive = record.alive[:steps_run]
    particles = flows.final_particles()
    if stop_reason != "interrupted":
        rule.roll_back(particles, alive)
    failed = [
        _first_non_finite(column, stopped)
        for column, stopped in zip(alive.cpu().numpy().T, rule.stop_step)
    ]
    segments = [*record.later, (record.first, record.columns, record.states)]
    end = -(-steps_run // store_every)
    segments = [(first, columns, states[: end - first]) for first, columns, states in segments]
    first_states = segments[0][2]
    later = [(c.cpu().numpy(), states) for _, c, states in segments[1:] if len(states)]
    flows.final_critic()
    result = FlowResult(
        particles=particles,
        states=first_states,
        alive=alive,
        divergence=record.divergence[:steps_run].cpu().numpy(),
        kinetic_energy=record.kinetic_energy[:steps_run].cpu().numpy(),
        time=now[:steps_run],
        n_steps=steps_run,
        stop_reason=stop_reason,
        failed_step=failed,
        later_states=later,
        trained_steps=np.minimum(record.trained_steps, steps_run).tolist(),
        redrawn=record.redrawn.tolist(),
    )
    rule.fill(result)
    return result


def _first_non_finite(alive, stop_step):
    """The step a flow turned non-finite, or -1: its first frozen step before the rule's."""
    frozen = np.flatnonzero(~alive)
    if len(frozen) == 0 or (stop_step >= 0 and frozen[0] >= stop_step):
        return -1
    return int(frozen[0])


def replay_flow(
    y, states, alive, layout, activation, tableau, *, dt, store_every=1, path=None, offset=0
):
    """Move packed particles ``y`` (K, M, d) along a stored flow; returns new positions.

    Step ``n`` uses the critic stored at step ``store_every * (n // store_every)``.
    A flow stops moving at the step it turned non-finite during training.  With ``path``
    an integer k, returns instead the positions before step 0, k, 2k, ... and at the end;
    ``offset``: the steps are the flow's from step ``offset`` on (a multiple of
    ``store_every``), and the positions are those before its steps that are multiples of k.
    """
    states = states.to(device=y.device, dtype=y.dtype)
    alive = alive.to(y.device)
    snapshots = []
    for step in range(alive.shape[0]):
        if path is not None and (offset + step) % path == 0:
            snapshots.append(y)
        stored = states[step // store_every]
        velocities = []
        for stage in range(tableau.n_stages):
            position = tableau.stage_position(y, dt, velocities)
            velocities.append(-layout.gradient(stored[stage], activation, position))
        y = torch.where(alive[step][:, None, None], y + tableau.increment(dt, velocities), y)
    if path is not None:
        return torch.stack(snapshots + [y])
    return y


@dataclass
class LearnedFlow:
    """A trained flow in plain NumPy arrays: what an estimator keeps, clones and pickles.

    ``layout`` describes the K critics (an ``MLPLayout`` or a ``ConvLayout``), ``stored``
    (``storage.StoredStates``) their weights at every stored step and stage, encoded
    (``states`` decodes them: (n_stored, n_stages, n_params)), ``alive`` (n_steps, K)
    whether each flow still moved at that step.  ``slots`` (K,) is the estimator's flow
    index of each critic when only some flows were trained (the others were done before
    their first step and never move); None: critic k is flow k.  Where flows stopped during
    the run, the states after each such stop hold the critics of the flows that went on
    (``StoredStates.pieces``); replay moves each piece's flows only.
    """

    layout: object
    activation: str
    activation_eps: float
    solver: str
    dt: float
    store_every: int
    stored: StoredStates
    alive: np.ndarray
    slots: np.ndarray | None = None

    @property
    def states(self) -> np.ndarray:
        """The critic states (n_stored, n_stages, n_params), float32, as replay uses them.

        Where the run had left stopped flows out of its batch, their parameters keep their
        last stored values (NaN where none was stored).
        """
        if self.stored.every_flow:
            return self.stored.decode()
        pieces = self.stored.pieces()
        shape = (self.stored.shape[0], pieces[0][2].shape[1], self.layout.size)
        out = np.full(shape, np.nan, dtype=np.float32)
        for first, flows, states in pieces:
            part = out[first : first + len(states)]
            if flows is None:
                part[...] = states
                continue
            if first:
                part[...] = out[first - 1]
            part[..., flow_mask(self.layout, flows).numpy()] = states
        return out

    @property
    def n_steps(self) -> int:
        return self.alive.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored (encoded) critic states and the alive flags."""
        return self.stored.nbytes + self.alive.nbytes

    def architecture(self) -> dict:
        """The critics' shape: what a continuation of this flow must keep."""
        return {
            "hidden_layer_sizes": tuple(self.layout.hidden_layer_sizes),
            "image_shape": getattr(self.layout, "image_shape", None),
            "conv_channels": getattr(self.layout, "channels", None),
        }

    def extend(self, later: LearnedFlow) -> LearnedFlow:
        """This flow followed by ``later``, a continuation of it (a warm-started run).

        A flow that had stopped stays stopped.  The continuation must store every
        ``store_every``-th step like this one, and this one's length must be a multiple of it.
        """
        if later.store_every != self.store_every or self.n_steps % self.store_every:
            raise ValueError(
                "warm_start=True needs the same store_every, and a previous run whose length "
                f"is a multiple of it ({self.n_steps} steps, store_every={self.store_every})."
            )
        return dataclasses.replace(
            later,
            stored=self.stored.append(later.stored),
            alive=np.concatenate([self.alive, later.alive & self.alive[-1:]]),
        )

    def steps_moved(self, n_flows: int) -> np.ndarray:
        """Per estimator flow (``n_flows`` of them), the number of steps it moved (0 for a
        flow that was never trained)."""
        steps = np.zeros(n_flows, dtype=int)
        steps[slice(None) if self.slots is None else self.slots] = self.alive.sum(0)
        return steps

    def truncate(self, stops) -> LearnedFlow:
        """The same flow with flow k stopped after ``stops[k]`` steps (one per estimator flow)."""
        if self.slots is not None:
            stops = np.asarray(stops)[self.slots]
        alive = self.alive.copy()
        for k, stop in enumerate(stops):
            alive[int(stop) :, k] = False
        return dataclasses.replace(self, alive=alive)

    def replay_rows(self, rows, flows, *, device="cpu", path=None):
        """Move rows ``rows`` (n, d) whose flow index is ``flows`` (n,); NumPy out.

        The replay runs in float64 whatever the training precision, so a row's result does
        not depend (beyond 1e-12) on which other rows share its batch.  A flow trained on a
        GPU replays on the CPU where CUDA is missing.  With ``path`` = k, returns the
        positions every k steps, shaped (n_snapshots, n, d).
        """
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        slots = range(self.layout.n_flows) if self.slots is None else self.slots
        groups = [np.flatnonzero(flows == k) for k in slots]
        packed, _ = pack_rows(
            [rows[g] if len(g) else rows[:1] for g in groups], torch.float64, "cpu"
        )
        moved = self.replay(packed, dtype=torch.float64, device=device, path=path)
        out = np.empty(moved.shape[:-3] + rows.shape)
        out[...] = rows  # rows of a flow without a critic never move
        for k, g in enumerate(groups):
            out[..., g, :] = moved[..., k, : len(g), :]
        return out

    def replay(self, y, *, dtype=torch.float32, device="cpu", chunk_rows=65536, path=None):
        """Move packed particles ``y`` (K, M, d) (NumPy or tensor) along the flow; NumPy out.

        With ``path`` = k, returns the positions every k steps, shaped (n_snapshots, K, M, d).
        """
        from .device import threads_context
        from .integrators import get_tableau
        from .networks import make_activation

        # Chunks small enough that their activations (kept for the input gradient) stay
        # within about 512 MiB: 65 536 rows for the MLPs, a few hundred MNIST-sized images.
        per_row = 16 * self.layout.n_flows * self.layout.values_per_row
        chunk_rows = max(1, min(chunk_rows, 2**29 // per_row))
        rows = min(len(y[0]), chunk_rows) * self.layout.n_flows
        with (
            threads_context(device, rows, self.layout.macs_per_row),
            torch.inference_mode(not self.layout.needs_autograd),
        ):
            return self._replay(
                y,
                make_activation(self.activation, self.activation_eps),
                get_tableau(self.solver),
                dtype,
                device,
                chunk_rows,
                path,
            )

    def _replay(self, y, activation, tableau, dtype, device, chunk_rows, path):
        alive = torch.as_tensor(self.alive, device=device)
        pieces = []
        for first, flows, states in self.stored.pieces():
            if flows is not None:
                flows = torch.as_tensor(flows, device=device)
            states = torch.as_tensor(states, dtype=dtype, device=device)
            pieces.append((first, flows, states))
        y = torch.as_tensor(np.asarray(y), dtype=dtype, device=device)
        moved = [
            self._replay_pieces(
                y[:, start : start + chunk_rows], pieces, alive, activation, tableau, path
            )
            for start in range(0, max(y.shape[1], 1), chunk_rows)
        ]
        return torch.cat(moved, -2).cpu().numpy()

    def _replay_pieces(self, y, pieces, alive, activation, tableau, path):
        """Replay piece by piece: each moves the flows whose critics it stored."""
        snapshots, n_steps = [], self.n_steps
        for j, (first, flows, states) in enumerate(pieces):
            begin = first * self.store_every
            end = n_steps if j + 1 == len(pieces) else pieces[j + 1][0] * self.store_every
            end = min(end, n_steps)
            if begin >= end:
                continue
            moved = replay_flow(
                y if flows is None else y.index_select(0, flows),
                states,
                alive[begin:end] if flows is None else alive[begin:end].index_select(1, flows),
                self.layout
                if flows is None
                else dataclasses.replace(self.layout, n_flows=len(flows)),
                activation,
                tableau,
                dt=self.dt,
                store_every=self.store_every,
                path=path,
                offset=begin,
            )
            if path is not None:
                moved, path_moved = moved[-1], moved[:-1]
                snapshots += [
                    snap if flows is None else y.index_copy(0, flows, snap) for snap in path_moved
                ]
            y = moved if flows is None else y.index_copy(0, flows, moved)
        if path is not None:
            return torch.stack(snapshots + [y])
        return y
