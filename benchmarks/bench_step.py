"""Per-step speed of the GPA engine against a plain eager-torch Algorithm 1.

What is measured
----------------
Milliseconds per particle step (``n_critic`` = 3 critic updates, the velocity ``-grad phi`` at
every particle and the move; Heun does all of it twice) for

* **baseline**: the straightforward implementation of Algorithm 1 (paper 000) written below:
  ``torch.nn.Sequential`` of ``nn.Linear`` + ``nn.ReLU`` (32-32-32), ``torch.optim.Adam``
  (lr 0.005) over the weights and the scalar nu, the KL objective in Legendre form
  ``J = mean phi(Y) - mean exp(phi(X) - nu - 1) - nu`` maximised by ``(-J).backward()``, every
  weight matrix rescaled to spectral norm ``L ** (1 / depth)`` with
  ``torch.linalg.matrix_norm(W, ord=2)`` after each optimiser step, the velocity by
  ``torch.autograd.grad``, and a Python loop over K separate networks for K classes;
* **engine**: ``sklearn_gpa._engine.flow.train_flow`` (K flows batched in one computation);
  on CPU its step loop is timed by its own clock (``FlowResult.time``), which leaves out the
  once-per-call set-up (packing particles and targets into one tensor) that a fit pays once.

Both run in the same process on the same data, dtype (float32), device and thread count.
Timed blocks alternate (baseline, engine, baseline, engine, ...) after a warm-up and the median
block of each method is reported, so load from other processes hits both alike.  N = M rows
*per class*; rows with N > 20 000 train the critic on per-flow mini-batches of 2000 particle
and 2000 target rows (both methods), the velocity is always taken at every particle.  The
baseline is skipped ("-") where one of its steps would take longer than ``--max-baseline-s``,
a row is skipped where its data would not fit comfortably in memory.

Threads (CPU): the engine's own rule (``threads_for``, as ``run_gpa`` uses it: 1 thread for
small problems, torch's own setting, the process default here, above); ``--threads N``
forces N.  Where a row runs with more than one thread, the engine is also timed at 1 thread,
interleaved.  "K classes cost <= 2x one class" is measured as the engine's time(K=10) /
time(K=1) at equal per-class size, both timed interleaved, each with the threads the rule gives
it.

Peak memory is measured in a fresh subprocess per configuration and method (peak RSS above the
RSS before the method's tensors exist, read from ``/proc/self/status`` after resetting the
high-water mark; a tiny run of the same method first pays the one-off library start-up) on
CPU, and with ``torch.cuda.max_memory_allocated`` on CUDA.

How to run (from the repository root)
-------------------------------------
::

    python benchmarks/bench_step.py --quick          # headline group only, ~1 minute
    python benchmarks/bench_step.py                  # medium subset, ~5 minutes on 2 cores
    python benchmarks/bench_step.py --full           # the whole grid (long)
    python benchmarks/bench_step.py --device cuda    # the same tables on a GPU
    python benchmarks/bench_step.py --config 2000,50,10,euler   # chosen rows only
    python benchmarks/bench_step.py --profile [--config N,d,K,solver]  # torch.profiler
    python benchmarks/bench_step.py --check          # engine and baseline agree from one init
    python benchmarks/bench_step.py --quick --against /path/to/other/checkout

``--fits`` times whole ``GPATransporter(random_state=0).fit(X, y)`` calls (generation, one
flow per class) on scikit-learn's wine data (178 x 13, 3 classes) and a 2-D problem with 10
classes (``make_blobs``, 2 000 rows), with the defaults and with ``source="gaussian_fit"``
(a prior the stopping rule does not accept at once), and a fixed-length fit
(``source="normal", stop=None, n_steps=100``): the critic's lean path and its general path
(``critic.USE_LEAN``) in turn in one process, medians of ``--repeats``; the fitted particles
of both must be equal.  ``--threads 1`` runs every fit on one thread and reports thread CPU
time (the fits' own rule gives the 10-class problem two threads otherwise).

``--against DIR`` times another checkout's engine (its ``sklearn_gpa/_engine``, imported
under another name) next to this one's and the baseline, interleaved in one process with the
same data, thread rule and clocks: before/after numbers of an engine change without two
processes.  Each block alternates the order of the three; medians; the ratios K=10/K=1 of
each engine from the same run.  Rows on one thread also report the thread CPU time per step
(``time.thread_time``), which other processes on the machine do not inflate.

Results go to ``benchmarks/results/bench_step.{json,md}`` (default and ``--full``;
``bench_step_quick.*`` with ``--quick``, ``bench_step_custom.*`` with ``--config``, a ``_cuda``
suffix on a GPU), ``bench_step_profile_<problem>_<device>.txt``, ``bench_step_check.json`` and
``bench_step_against{_quick,_custom,}.{json,md}``, ``bench_step_fits.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time

import _common
import numpy as np
import torch
from torch import nn

from sklearn_gpa._engine import critic as critic_module
from sklearn_gpa._engine import divergences as divergences_module
from sklearn_gpa._engine import flow as flow_module
from sklearn_gpa._engine import integrators as integrators_module
from sklearn_gpa._engine import networks as networks_module
from sklearn_gpa._engine.device import threads_for

RESULTS = _common.RESULTS
HIDDEN = (32, 32, 32)
LIPSCHITZ = 1.0
LEARNING_RATE = 0.005
DT = 0.5
N_CRITIC = 3
DTYPE = torch.float32
MINIBATCH = 2000
MINIBATCH_ABOVE = 20_000
DEFAULT_THREADS = torch.get_num_threads()
MOG_CENTERS = np.array([[0.0, 4.0], [4.0, 0.0], [4.0, 4.0], [0.0, 0.0]])


@dataclasses.dataclass(frozen=True)
class Config:
    """One row of the grid; ``n`` rows per class on each side (N = M)."""

    n: int
    d: int
    k: int
    solver: str
    n_critic: int = N_CRITIC

    @property
    def batch_size(self):
        return MINIBATCH if self.n > MINIBATCH_ABOVE else None

    @property
    def data_bytes(self) -> int:
        return 2 * self.k * self.n * self.d * 4

    def label(self) -> str:
        return f"N={self.n} d={self.d} K={self.k} {self.solver}"


HEADLINE = Config(200, 2, 1, "euler")
QUICK = [Config(200, 2, k, s) for s in ("euler", "heun") for k in (1, 10)]
MEDIUM = QUICK + [
    Config(200, 2, 2, "euler"),
    Config(200, 50, 1, "euler"),
    Config(200, 50, 10, "euler"),
    Config(2000, 2, 1, "euler"),
    Config(2000, 2, 10, "euler"),
    Config(2000, 50, 1, "euler"),
    Config(2000, 50, 10, "euler"),
    Config(2000, 50, 1, "heun"),
    Config(2000, 784, 1, "euler"),
    Config(2000, 784, 2, "euler"),
    Config(20000, 2, 1, "euler"),
    Config(20000, 50, 1, "euler"),
    Config(200000, 2, 1, "euler"),
]
FULL_AXES = dict(n=(200, 2000, 20000, 200000), d=(2, 50, 784), k=(1, 2, 10))


def full_grid() -> list:
    rest = [
        Config(n, d, k, s)
        for n, d, k, s in itertools.product(*FULL_AXES.values(), ("euler", "heun"))
    ]
    return MEDIUM + [c for c in rest if c not in MEDIUM]


# -- data -----------------------------------------------------------------------------------


def make_class(cfg: Config, rng: np.random.Generator):
    """(source, target) of one class: the papers' 2-D mixture for d = 2, shifted normals else."""
    if cfg.d == 2:
        source = 0.5 * rng.standard_normal((cfg.n, 2), dtype=np.float32)
        centers = MOG_CENTERS[rng.integers(0, 4, cfg.n)].astype(np.float32)
        target = centers + 0.5 * rng.standard_normal((cfg.n, 2), dtype=np.float32)
        return source, target
    source = rng.standard_normal((cfg.n, cfg.d), dtype=np.float32)
    target = rng.standard_normal((cfg.n, cfg.d), dtype=np.float32)
    target += 2.0
    return source, target


def make_data(cfg: Config, seed: int = 0):
    """Lists of K source and K target arrays (n, d), float32."""
    rng = np.random.default_rng(seed)
    pairs = [make_class(cfg, rng) for _ in range(cfg.k)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


# -- the baseline: plain eager torch, one network per class ----------------------------------


class EagerCritic:
    """One flow's critic: nn.Sequential, scalar nu, torch.optim.Adam, exact spectral norm."""

    def __init__(self, d, device, dtype=DTYPE):
        sizes = (d, *HIDDEN, 1)
        modules = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            modules += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.net = nn.Sequential(*modules[:-1]).to(device=device, dtype=dtype)
        self.linears = [m for m in self.net if isinstance(m, nn.Linear)]
        self.nu = torch.zeros((), device=device, dtype=dtype, requires_grad=True)
        self.optimizer = torch.optim.Adam([*self.net.parameters(), self.nu], lr=LEARNING_RATE)
        self.layer_norm = LIPSCHITZ ** (1.0 / len(self.linears))
        self.normalize()

    @torch.no_grad()
    def normalize(self):
        for linear in self.linears:
            norm = torch.linalg.matrix_norm(linear.weight, ord=2)
            linear.weight.mul_(self.layer_norm / norm)

    def objective(self, y, x):
        phi_y, phi_x = self.net(y), self.net(x)
        return phi_y.mean() - torch.exp(phi_x - self.nu - 1.0).mean() - self.nu

    def train(self, y, x, n_critic, batch_size):
        for _ in range(n_critic):
            if batch_size is not None:
                y_b = y[torch.randint(len(y), (batch_size,), device=y.device)]
                x_b = x[torch.randint(len(x), (batch_size,), device=x.device)]
            else:
                y_b, x_b = y, x
            self.optimizer.zero_grad()
            value = self.objective(y_b, x_b)
            (-value).backward()
            self.optimizer.step()
            self.normalize()
        return value.detach()

    def velocity(self, y):
        y = y.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.net(y).sum(), y)
        return -grad


class EagerGPA:
    """Algorithm 1 for K classes as a Python loop over K eager critics."""

    def __init__(self, cfg: Config, sources, targets, device, seed=0, dtype=DTYPE):
        torch.manual_seed(seed)
        self.cfg = cfg
        self.y = [torch.as_tensor(s, dtype=dtype, device=device) for s in sources]
        self.x = [torch.as_tensor(t, dtype=dtype, device=device) for t in targets]
        self.critics = [EagerCritic(cfg.d, device, dtype) for _ in sources]
        self.divergence = [None] * cfg.k
        self.kinetic = [None] * cfg.k

    def _velocity(self, k, position):
        critic, cfg = self.critics[k], self.cfg
        value = critic.train(position, self.x[k], cfg.n_critic, cfg.batch_size)
        return critic.velocity(position), value

    def move_class(self, k):
        v1, value = self._velocity(k, self.y[k])
        self.divergence[k], self.kinetic[k] = value, v1.square().sum(1).mean()
        if self.cfg.solver == "euler":
            self.y[k] = self.y[k] + DT * v1
        elif self.cfg.solver == "heun":
            v2, _ = self._velocity(k, self.y[k] + DT * v1)
            self.y[k] = self.y[k] + 0.5 * DT * (v1 + v2)
        else:
            raise ValueError(f"The baseline has no solver {self.cfg.solver!r}.")

    def run(self, n_steps):
        for _ in range(n_steps):
            for k in range(self.cfg.k):
                self.move_class(k)


# -- the engine ------------------------------------------------------------------------------


class EngineGPA:
    """The library's batched engine, driven as the estimators drive it.

    ``parts`` holds the engine's modules by name (``load_engine`` gives another checkout's).
    """

    parts = {
        "critic": critic_module,
        "divergences": divergences_module,
        "flow": flow_module,
        "integrators": integrators_module,
        "networks": networks_module,
    }

    def __init__(self, cfg: Config, sources, targets, device, seed=0, dtype=DTYPE):
        m = self.parts
        self.cfg = cfg
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.y, self.w_y = m["flow"].pack_rows(sources, dtype, device)
        self.x, self.w_x = m["flow"].pack_rows(targets, dtype, device)
        layout = m["networks"].MLPLayout(n_features=cfg.d, hidden_layer_sizes=HIDDEN, n_flows=cfg.k)
        self.critic = m["critic"].Critic(
            layout,
            m["networks"].make_activation("relu"),
            m["divergences"].get_divergence("kl"),
            lipschitz=LIPSCHITZ,
            learning_rate=LEARNING_RATE,
            generator=self.generator,
            dtype=dtype,
            device=device,
        )
        self.tableau = m["integrators"].get_tableau(cfg.solver)

    def run(self, n_steps):
        result = self.parts["flow"].train_flow(
            self.y,
            self.w_y,
            self.x,
            self.w_x,
            self.critic,
            self.tableau,
            dt=DT,
            n_steps=n_steps,
            n_critic=self.cfg.n_critic,
            batch_size=self.cfg.batch_size,
            generator=self.generator,
        )
        self.y = result.particles
        return result


RUNNERS = {"baseline": EagerGPA, "engine": EngineGPA}


def load_engine(root):
    """The ``sklearn_gpa/_engine`` package of the checkout ``root``, imported as
    ``gpa_reference_engine`` (the engine imports nothing outside its package)."""
    import importlib.util
    import pathlib

    init = pathlib.Path(root).resolve() / "sklearn_gpa" / "_engine" / "__init__.py"
    if not init.is_file():
        sys.exit(f"--against {root}: no sklearn_gpa/_engine/__init__.py there.")
    name = "gpa_reference_engine"
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return {part: importlib.import_module(f"{name}.{part}") for part in EngineGPA.parts}


class ReferenceEngineGPA(EngineGPA):
    """``EngineGPA`` on another checkout's engine (``parts`` set from ``load_engine``)."""


def bench_against(configs, device, args) -> tuple:
    """Baseline, the reference checkout's engine and this one's, interleaved per row."""
    ReferenceEngineGPA.parts = load_engine(args.against)
    rows = []
    for cfg in configs:
        threads = choose_threads(cfg, device, args)
        if threads is not None:
            torch.set_num_threads(threads)
        sources, targets = make_data(cfg)
        runners = {
            "baseline": EagerGPA(cfg, sources, targets, device),
            "reference": ReferenceEngineGPA(cfg, sources, targets, device),
            "engine": EngineGPA(cfg, sources, targets, device),
        }
        estimates = {k: warm_up(r.run, args.warmup, device) for k, r in runners.items()}
        n_steps = {k: steps_per_block(t, args.block_s) for k, t in estimates.items()}
        times = {k: [] for k in runners}
        cpu = {k: [] for k in runners}
        for repeat in range(args.repeats):
            names = list(runners) if repeat % 2 == 0 else list(runners)[::-1]
            for name in names:
                start = time.thread_time()
                times[name].append(time_block(runners[name].run, n_steps[name], device))
                cpu[name].append((time.thread_time() - start) / n_steps[name])
        median = {k: 1e3 * t for k, t in _common.medians(times).items()}
        row = dataclasses.asdict(cfg) | {"threads": threads, "load_average": os.getloadavg()}
        row |= {f"{k}_ms": v for k, v in median.items()}
        if threads == 1:
            # On one thread all the work is on this thread: its CPU time is the time the
            # step costs, whatever other processes take of the cores (wall clocks on a busy
            # machine also count the waits for a core).  It includes train_flow's set-up of
            # each block, which the wall clock above leaves out (under 1 % here).
            row |= {f"{k}_cpu_ms": 1e3 * t for k, t in _common.medians(cpu).items()}
        rows.append(row)
        print(
            f"  {cfg.label()}, {threads} thread(s): baseline {median['baseline']:.2f} ms, "
            f"reference {median['reference']:.3f} ms "
            f"({median['baseline'] / median['reference']:.2f}x), engine "
            f"{median['engine']:.3f} ms ({median['baseline'] / median['engine']:.2f}x)",
            flush=True,
        )
    header = ["N=M", "d", "K", "solver", "threads", "baseline ms", "reference ms", "engine ms"]
    header += ["baseline/reference", "baseline/engine", "reference/engine"]
    table = [
        [
            r["n"],
            r["d"],
            r["k"],
            r["solver"],
            r["threads"],
            f"{r['baseline_ms']:.2f}",
            f"{r['reference_ms']:.3f}",
            f"{r['engine_ms']:.3f}",
            f"{r['baseline_ms'] / r['reference_ms']:.2f}x",
            f"{r['baseline_ms'] / r['engine_ms']:.2f}x",
            f"{r['reference_ms'] / r['engine_ms']:.2f}x",
        ]
        for r in rows
    ]
    lines = [_common.markdown_table(header, table), ""]
    cpu_rows = [r for r in rows if "engine_cpu_ms" in r]
    if cpu_rows:
        lines += [
            "Thread CPU time per step (rows on one thread):",
            "",
            _common.markdown_table(
                ["N=M", "d", "K", "solver", "baseline ms", "reference ms", "engine ms"]
                + ["baseline/reference", "baseline/engine", "reference/engine"],
                [
                    [r["n"], r["d"], r["k"], r["solver"]]
                    + [f"{r[f'{m}_cpu_ms']:.3f}" for m in ("baseline", "reference", "engine")]
                    + [
                        f"{r['baseline_cpu_ms'] / r['reference_cpu_ms']:.2f}x",
                        f"{r['baseline_cpu_ms'] / r['engine_cpu_ms']:.2f}x",
                        f"{r['reference_cpu_ms'] / r['engine_cpu_ms']:.2f}x",
                    ]
                    for r in cpu_rows
                ],
            ),
            "",
        ]
    by_key = {(r["n"], r["d"], r["k"], r["solver"]): r for r in rows}
    for (n, d, k, solver), row in by_key.items():
        one = by_key.get((n, d, 1, solver))
        if k == 1 or one is None:
            continue
        ratios = ", ".join(
            f"{m} {row[f'{m}_ms'] / one[f'{m}_ms']:.2f}x" for m in ("reference", "engine")
        )
        if "engine_cpu_ms" in row and "engine_cpu_ms" in one:
            ratios += "; thread CPU time: " + ", ".join(
                f"{m} {row[f'{m}_cpu_ms'] / one[f'{m}_cpu_ms']:.2f}x"
                for m in ("reference", "engine")
            )
        lines.append(f"K={k} / K=1 at N={n}, d={d}, {solver} (same run): {ratios}.")
    return rows, "\n".join(lines)


# -- timing ----------------------------------------------------------------------------------


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_block(run, n_steps, device) -> float:
    """Seconds per step of ``run(n_steps)``.

    On CPU, a ``FlowResult`` returned by ``run`` gives the time inside the step loop (its
    ``time[-1]``), leaving out what ``train_flow`` does once per call (packing particles and
    targets into one tensor, allocating the stored-flow buffer): a fit pays that once, a
    benchmark block would pay it every block.  On CUDA that clock does not wait for the device,
    so the block is timed from outside, over enough steps to amortise the set-up.
    """
    synchronize(device)
    start = time.perf_counter()
    result = run(n_steps)
    synchronize(device)
    inside = getattr(result, "time", None)
    if inside is not None and torch.device(device).type == "cpu":
        return float(inside[-1]) / n_steps
    return (time.perf_counter() - start) / n_steps


def estimate_baseline_step(runner: EagerGPA, device) -> float:
    """One baseline step, extrapolated from two single-class moves (the second is timed)."""
    runner.move_class(0)
    return runner.cfg.k * time_block(lambda _: runner.move_class(0), 1, device)


def warm_up(run, n_warmup, device, budget_s=2.0) -> float:
    """Run up to ``n_warmup`` single steps (stopping after ``budget_s``); last step's time."""
    spent, last = 0.0, math.inf
    for _ in range(n_warmup):
        last = time_block(run, 1, device)
        spent += last
        if spent > budget_s:
            break
    return last


def steps_per_block(seconds_per_step, block_s, max_steps=200) -> int:
    return int(min(max_steps, max(1, round(block_s / max(seconds_per_step, 1e-6)))))


def thread_cap(args) -> int:
    """``--threads``, or torch's default: the engine's rule takes at most torch's setting."""
    return DEFAULT_THREADS if args.threads == "auto" else int(args.threads)


def choose_threads(cfg: Config, device, args):
    """``--threads`` if given, else run_gpa's choice for this problem.

    ``threads_for`` answers torch's current setting for large problems, so ask it at the
    process default.
    """
    if torch.device(device).type != "cpu":
        return None
    if args.threads != "auto":
        return int(args.threads)
    rows = 2 * (cfg.n if cfg.batch_size is None else cfg.batch_size)
    torch.set_num_threads(DEFAULT_THREADS)
    return min(args.thread_cap, threads_for(rows * cfg.k, (cfg.d, *HIDDEN, 1)))


def interleave(plan, n_steps, repeats, device) -> dict:
    """Alternate timed blocks of every ``name: (runner, threads)``; seconds per step."""
    times = {name: [] for name in plan}
    for _ in range(repeats):
        for name, (runner, threads) in plan.items():
            if threads is not None:
                torch.set_num_threads(threads)
            times[name].append(time_block(runner.run, n_steps[name], device))
    return times


def build_runners(cfg, device, args):
    """Engine and (unless too slow) baseline, both warmed up; also their step estimates."""
    sources, targets = make_data(cfg)
    runners, estimates = {}, {}
    baseline = EagerGPA(cfg, sources, targets, device)
    estimates["baseline"] = estimate_baseline_step(baseline, device)
    if estimates["baseline"] <= args.max_baseline_s:
        estimates["baseline"] = warm_up(baseline.run, args.warmup, device)
        runners["baseline"] = baseline
    else:
        del baseline
    runners["engine"] = EngineGPA(cfg, sources, targets, device)
    estimates["engine"] = warm_up(runners["engine"].run, args.warmup, device)
    return runners, estimates


def timing_plan(runners, estimates, threads, args):
    """What to time, at how many threads and steps: the engine again at 1 thread if > 1."""
    plan = {name: (runner, threads) for name, runner in runners.items()}
    if threads is not None and threads > 1:
        plan["engine_1thread"] = (runners["engine"], 1)
        estimates = estimates | {"engine_1thread": estimates["engine"]}
    n_steps = {name: steps_per_block(estimates[name], args.block_s) for name in plan}
    slow = max(estimates.values()) > args.block_s
    return plan, n_steps, max(3, args.repeats // 2) if slow else args.repeats


def bench_config(cfg: Config, device, args) -> dict:
    """Time one configuration; a dict of every number measured."""
    threads = choose_threads(cfg, device, args)
    if threads is not None:
        torch.set_num_threads(threads)
    runners, estimates = build_runners(cfg, device, args)
    plan, n_steps, repeats = timing_plan(runners, estimates, threads, args)
    times = interleave(plan, n_steps, repeats, device)
    median = {name: 1e3 * t for name, t in _common.medians(times).items()}
    row = dataclasses.asdict(cfg) | {
        "batch_size": cfg.batch_size,
        "threads": threads,
        "steps_per_block": n_steps,
        "repeats": repeats,
        "block_ms_per_step": {k: [1e3 * s for s in v] for k, v in times.items()},
        "baseline_ms": median.get("baseline"),
        "engine_ms": median["engine"],
        "engine_1thread_ms": median.get("engine_1thread", median["engine"] if threads else None),
    }
    row["ratio"] = row["baseline_ms"] / row["engine_ms"] if row["baseline_ms"] else None
    return row


# -- memory ----------------------------------------------------------------------------------


def _status_kib(field) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+)", status.read()).group(1))


def probe_memory(cfg: Config, method, device, n_steps=2) -> float:
    """MiB of peak memory above the pre-run level for ``n_steps`` of ``method``, in-process.

    A tiny run of the same method first pays the one-off costs (lazily loaded kernels,
    thread pools, LAPACK workspaces) that do not grow with the problem.
    """
    tiny = dataclasses.replace(cfg, n=16, k=1)
    RUNNERS[method](tiny, *make_data(tiny), device).run(1)
    sources, targets = make_data(cfg)
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        RUNNERS[method](cfg, sources, targets, device).run(n_steps)
        synchronize(device)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    RUNNERS[method](cfg, sources, targets, device).run(n_steps)
    return (_status_kib("VmHWM") - before) / 1024


def measure_memory(cfg: Config, method, device, threads) -> float | None:
    """Peak MiB of ``method``: a fresh subprocess on CPU, in-process on CUDA."""
    if torch.device(device).type == "cuda":
        return probe_memory(cfg, method, device)
    command = [
        sys.executable,
        __file__,
        "--memory-probe",
        json.dumps(dataclasses.asdict(cfg)),
        "--probe-method",
        method,
        "--device",
        device,
        "--threads",
        str(threads or 1),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"  memory probe failed for {cfg.label()} {method}: {done.stderr[-300:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


def add_memory(rows, configs, device):
    for row, cfg in zip(rows, configs):
        if row.get("skipped"):
            continue
        methods = ["engine"] + (["baseline"] if row["baseline_ms"] is not None else [])
        for method in methods:
            row[f"{method}_peak_mib"] = measure_memory(cfg, method, device, row["threads"])
        print(
            f"  memory {cfg.label()}: "
            + ", ".join(
                f"{m} {row[f'{m}_peak_mib']:.1f} MiB"
                for m in methods
                if row[f"{m}_peak_mib"] is not None
            )
        )


# -- reporting -------------------------------------------------------------------------------


def machine_info(device, args) -> dict:
    rule = (
        "the engine's rule (threads_for, as in run_gpa: by problem size and torch's setting)"
        if args.threads == "auto"
        else f"fixed {args.threads}"
    )
    info = _common.machine_info(
        device=device, thread_rule=rule, thread_cap=args.thread_cap, date=_common.now()
    )
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _fmt(value, pattern="{:.2f}"):
    return "-" if value is None else pattern.format(value)


def class_ratios(rows) -> list:
    """time(K=10) / time(K=1) per method from the table rows (measured at different times)."""
    by_key = {(r["n"], r["d"], r["k"], r["solver"]): r for r in rows if not r.get("skipped")}
    ratios = []
    for (n, d, k, solver), row in by_key.items():
        one = by_key.get((n, d, 1, solver))
        if k != 10 or one is None:
            continue
        entry = {"n": n, "d": d, "solver": solver}
        for method in ("engine", "engine_1thread", "baseline"):
            a, b = row[f"{method}_ms"], one[f"{method}_ms"]
            entry[method] = a / b if a and b else None
        ratios.append(entry)
    return ratios


def bench_class_scaling(cfg: Config, device, args) -> dict:
    """Engine time(K) / time(K=1) at equal per-class size, K and 1 flows timed interleaved,
    each with the threads the engine's rule gives it (one flow is too small for two)."""
    threads = choose_threads(cfg, device, args)
    if threads is not None:
        torch.set_num_threads(threads)
    sources, targets = make_data(cfg)
    one = dataclasses.replace(cfg, k=1)
    threads_one = choose_threads(one, device, args)
    runners = {
        "k1": EngineGPA(one, sources[:1], targets[:1], device),
        f"k{cfg.k}": EngineGPA(cfg, sources, targets, device),
    }
    estimates = {name: warm_up(r.run, args.warmup, device) for name, r in runners.items()}
    n_steps = {name: steps_per_block(t, args.block_s) for name, t in estimates.items()}
    plan = {"k1": (runners["k1"], threads_one), f"k{cfg.k}": (runners[f"k{cfg.k}"], threads)}
    times = interleave(plan, n_steps, args.repeats, device)
    median = {name: 1e3 * t for name, t in _common.medians(times).items()}
    return {
        "n": cfg.n,
        "d": cfg.d,
        "k": cfg.k,
        "solver": cfg.solver,
        "threads": threads,
        "threads_k1": threads_one,
        "k1_ms": median["k1"],
        "k_ms": median[f"k{cfg.k}"],
        "ratio": median[f"k{cfg.k}"] / median["k1"],
    }


def run_class_scaling(configs, device, args) -> list:
    """The interleaved K=10 / K=1 engine ratio for every K=10 row that was run."""
    out = []
    for cfg in configs:
        if cfg.k == 10 and cfg.data_bytes <= args.data_limit:
            out.append(bench_class_scaling(cfg, device, args))
            entry = out[-1]
            print(
                f"  classes {cfg.label()}: K=1 {entry['k1_ms']:.2f} ms, K=10 "
                f"{entry['k_ms']:.2f} ms, ratio {entry['ratio']:.2f}x (threads {entry['threads']})"
            )
    return out


TABLE_HEAD = (
    "| N=M | d | K | solver | batch | threads | baseline ms/step | engine ms/step "
    "| baseline/engine | engine ms/step, 1 thread | baseline peak MiB | engine peak MiB |\n"
    "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def table_row(row) -> str:
    if row.get("skipped"):
        cells = [row["n"], row["d"], row["k"], row["solver"], "", "", *"------"]
        return "| " + " | ".join(map(str, cells)) + f" |  <!-- {row['skipped']} -->"
    cells = [
        row["n"],
        row["d"],
        row["k"],
        row["solver"],
        row["batch_size"] or "full",
        row["threads"] or "-",
        _fmt(row["baseline_ms"]),
        _fmt(row["engine_ms"]),
        _fmt(row["ratio"], "{:.1f}x"),
        _fmt(row["engine_1thread_ms"]) if row["threads"] != 1 else "=",
        _fmt(row.get("baseline_peak_mib"), "{:.1f}"),
        _fmt(row.get("engine_peak_mib"), "{:.1f}"),
    ]
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown(rows, scaling, info) -> str:
    lines = [
        f"Per particle step, {N_CRITIC} critic updates, MLP {'-'.join(map(str, HIDDEN))}, float32,"
        f" device {info['device']}, {info['cpu']} ({info['cpus']} cores),"
        f" torch {info['torch']}, {info['date']}. N = M rows per class; median of interleaved"
        " blocks; '-' = not run (baseline slower than the cut-off, or data too large);"
        f" threads: {info['thread_rule']} (cap {info['thread_cap']}), the same for both methods;"
        " '=' = that run already used 1 thread.",
        "",
        TABLE_HEAD,
        *map(table_row, rows),
        "",
    ]
    head = next((r for r in rows if _is_headline(r) and r.get("ratio")), None)
    if head is not None:
        lines.append(
            f"**Headline** (N=M=200, d=2, K=1, euler): baseline {head['baseline_ms']:.2f} ms, "
            f"engine {head['engine_ms']:.2f} ms per step: **{head['ratio']:.1f}x**."
        )
    for entry in scaling:
        lines.append(
            f"K=10 / K=1 engine time at N={entry['n']}, d={entry['d']}, {entry['solver']} "
            f"(interleaved; threads {entry.get('threads_k1') or '-'} and "
            f"{entry['threads'] or '-'}): {entry['k1_ms']:.2f} -> "
            f"{entry['k_ms']:.2f} ms, **{entry['ratio']:.2f}x** (goal <= 2x)."
        )
    for entry in class_ratios(rows):
        lines.append(
            f"From the table rows, K=10 / K=1 at N={entry['n']}, d={entry['d']}, "
            f"{entry['solver']}: engine {_fmt(entry['engine'])}x, baseline "
            f"{_fmt(entry['baseline'])}x."
        )
    return "\n".join(lines) + "\n"


def _is_headline(row) -> bool:
    keys = ("n", "d", "k", "solver")
    return all(row[k] == v for k, v in zip(keys, dataclasses.astuple(HEADLINE)))


# -- whole fits, lean and general critic path -------------------------------------------------

FIT_CASES = {
    "default": {},
    "gaussian_fit": {"source": "gaussian_fit"},
    "normal, 100 steps": {"source": "normal", "stop": None, "n_steps": 100},
}


def fit_data():
    from sklearn.datasets import load_wine, make_blobs

    wine = load_wine(return_X_y=True)
    blobs = make_blobs(2000, 2, centers=10, random_state=0)
    return {"wine": wine, "2-D, 10 classes": blobs}


def bench_fits(args) -> tuple:
    """Seconds per ``GPATransporter(random_state=0, **case).fit(X, y)``, lean and general
    critic path in turn (the order alternating), medians of ``args.repeats``."""
    import warnings

    from sklearn_gpa import GPATransporter

    if args.threads != "auto":
        # The fits' own thread rule never exceeds torch's setting.
        torch.set_num_threads(int(args.threads))
    one_thread = torch.get_num_threads() == 1
    rows = []
    for data_name, (X, y) in fit_data().items():
        for case, params in FIT_CASES.items():
            times, cpu, fitted = {"lean": [], "general": []}, {"lean": [], "general": []}, {}
            for repeat in range(args.repeats):
                order = ["lean", "general"] if repeat % 2 == 0 else ["general", "lean"]
                for path in order:
                    critic_module.USE_LEAN = path == "lean"
                    start, start_cpu = time.perf_counter(), time.thread_time()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model = GPATransporter(random_state=0, **params).fit(X, y)
                    times[path].append(time.perf_counter() - start)
                    cpu[path].append(time.thread_time() - start_cpu)
                    fitted[path] = model
            critic_module.USE_LEAN = True
            # On one thread, the thread CPU time is what the fit cost (see --against).
            median = _common.medians(cpu if one_thread else times)
            lean, general = fitted["lean"], fitted["general"]
            rows.append(
                {
                    "data": data_name,
                    "case": case,
                    "n_steps": int(lean.n_steps_),
                    "stop_reason": lean.stop_reason_,
                    "general_s": median["general"],
                    "lean_s": median["lean"],
                    "ratio": median["general"] / median["lean"],
                    "same_particles": bool(np.array_equal(lean.particles_, general.particles_)),
                    "clock": "thread CPU time" if one_thread else "wall clock",
                    "times": times,
                    "thread_cpu_times": cpu,
                }
            )
            r = rows[-1]
            print(
                f"  {data_name}, {case}: {r['n_steps']} steps ({r['stop_reason']}), general "
                f"{r['general_s']:.3f} s, lean {r['lean_s']:.3f} s, {r['ratio']:.3f}x, "
                f"same particles {r['same_particles']}",
                flush=True,
            )
    clock = "thread CPU" if one_thread else "wall-clock"
    header = ["data", "fit", "steps", f"general {clock} s", f"lean {clock} s", "general/lean"]
    header.append("same particles")
    table = [
        [
            r["data"],
            r["case"],
            r["n_steps"],
            f"{r['general_s']:.3f}",
            f"{r['lean_s']:.3f}",
            f"{r['ratio']:.3f}x",
            "yes" if r["same_particles"] else "NO",
        ]
        for r in rows
    ]
    return rows, _common.markdown_table(header, table)


# -- diagnostics: profile and agreement ------------------------------------------------------


def profile(device, args, n_steps=5) -> str:
    """torch.profiler tables of ``n_steps`` warm steps of each method (headline problem)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cfg = HEADLINE if not args.config else args.config[0]
    torch.set_num_threads(choose_threads(cfg, device, args) or 1)
    sources, targets = make_data(cfg)
    activities = [ProfilerActivity.CPU]
    if torch.device(device).type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    report = []
    for name, runner_class in RUNNERS.items():
        runner = runner_class(cfg, sources, targets, device)
        runner.run(10)
        for _ in range(2):  # the first session pays the profiler's start-up: discard it
            with torch_profile(activities=activities) as prof:
                runner.run(n_steps)
                synchronize(device)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        plain = 1e3 * time_block(runner.run, n_steps, device)
        report.append(
            f"## {name}: {n_steps} steps of {cfg.label()} ({plain:.2f} ms/step unprofiled)"
            f"\n\n{table}"
        )
    return "\n\n".join(report)


def copy_engine_init(engine: EngineGPA, baseline: EagerGPA):
    """Give the baseline's K networks the engine critic's initial weights."""
    with torch.no_grad():
        for k, critic in enumerate(baseline.critics):
            for linear, (w, b) in zip(critic.linears, engine.critic.layers):
                linear.weight.copy_(w[k].T)
                linear.bias.copy_(b[k, 0])


def use_exact_norm(engine: EngineGPA):
    """Make this one engine critic normalise by the exact spectral norm (the library is intact)."""
    critic = engine.critic

    def normalize():
        for w, _ in critic.layers:
            w.mul_(critic.layer_norm / torch.linalg.matrix_norm(w, ord=2)[:, None, None])

    critic.spectral_normalize = normalize


def lipschitz_bound(engine: EngineGPA) -> float:
    """Largest, over flows, product of the exact layer spectral norms, divided by L."""
    norms = torch.stack([torch.linalg.matrix_norm(w, ord=2) for w, _ in engine.critic.layers])
    return norms.prod(0).max().item() / LIPSCHITZ


def compare(cfg, dtype, exact_norm, device, steps=(1, 5, 20, 100)) -> dict:
    """Both methods from one initial critic: particle gaps and the engine's Lipschitz bound."""
    sources, targets = make_data(cfg)
    engine = EngineGPA(cfg, sources, targets, device, dtype=dtype)
    baseline = EagerGPA(cfg, sources, targets, device, dtype=dtype)
    copy_engine_init(engine, baseline)
    if exact_norm:
        use_exact_norm(engine)
    gaps, worst = [], 0.0
    for step in range(1, max(steps) + 1):
        engine.run(1)
        baseline.run(1)
        worst = max(worst, lipschitz_bound(engine))
        if step in steps:
            gap = max((engine.y[k] - baseline.y[k]).abs().max().item() for k in range(cfg.k))
            gaps.append({"step": step, "max_abs_particle_gap": gap})
    return {
        "config": cfg.label(),
        "dtype": str(dtype).removeprefix("torch."),
        "engine_spectral_norm": "exact (patched here)" if exact_norm else "as shipped",
        "gaps": gaps,
        "max_engine_lipschitz_bound_over_L": worst,
    }


def check(device) -> list:
    """Engine against baseline: as shipped, and with the engine's norm made exact."""
    euler, heun = Config(200, 2, 2, "euler"), Config(200, 2, 2, "heun")
    cases = [
        (euler, torch.float32, False),
        (euler, torch.float64, False),
        (euler, torch.float64, True),
        (heun, torch.float64, True),
    ]
    return [compare(cfg, dtype, exact, device) for cfg, dtype, exact in cases]


# -- main ------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = _common.parser(__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="only the headline group")
    size.add_argument("--full", action="store_true", help="the whole grid")
    parser.add_argument("--device", default="cpu", help='"cpu" (default) or "cuda"')
    parser.add_argument(
        "--threads",
        default="auto",
        help="CPU threads for both methods; auto (default): the engine's rule, capped by the"
        " cores other processes leave free at start",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per method")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up steps per method")
    parser.add_argument("--block-s", type=float, default=0.3, help="target seconds per block")
    parser.add_argument(
        "--max-baseline-s",
        type=float,
        default=2.0,
        help="skip the baseline where one step would take longer",
    )
    parser.add_argument(
        "--max-data-fraction",
        type=float,
        default=0.08,
        help="skip configurations whose data exceed this share of free RAM (the engine peaks"
        " at about 4.5x its data on CPU)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory probes")
    parser.add_argument(
        "--profile", action="store_true", help="profile a few steps of each method and exit"
    )
    parser.add_argument(
        "--config",
        type=_config,
        action="append",
        metavar="N,d,K,solver",
        help="run only this grid row (repeatable); with --profile, the problem to profile",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare engine and baseline from one initial critic and exit",
    )
    parser.add_argument(
        "--against",
        default=None,
        metavar="DIR",
        help="also time the engine of the checkout DIR, interleaved (before/after a change)",
    )
    parser.add_argument(
        "--fits",
        action="store_true",
        help="time whole GPATransporter fits with the lean and the general critic path and exit",
    )
    parser.add_argument(
        "--general",
        action="store_true",
        help="run the critic's general update path (critic.USE_LEAN = False) instead of its"
        " lean one: the same numbers, the code before the lean path",
    )
    parser.add_argument("--output", default=None, help="basename of the result files")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe-method", default="engine", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _config(text) -> Config:
    n, d, k, solver = text.split(",")
    return Config(int(n), int(d), int(k), solver)


def available_bytes() -> float:
    try:
        with open("/proc/meminfo") as info:
            return 1024 * int(re.search(r"MemAvailable:\s+(\d+)", info.read()).group(1))
    except (OSError, AttributeError):
        return math.inf


def data_limit(device, args) -> float:
    """Largest data size (bytes) to attempt: a share of the free host (and device) memory."""
    limit = args.max_data_fraction * available_bytes()
    if torch.device(device).type == "cuda":
        limit = min(limit, args.max_data_fraction * torch.cuda.mem_get_info()[0])
    return limit


def run_grid(configs, device, args) -> list:
    rows = []
    for i, cfg in enumerate(configs, 1):
        if cfg.data_bytes > args.data_limit:
            rows.append(dataclasses.asdict(cfg) | {"skipped": "data too large for this machine"})
            print(f"[{i}/{len(configs)}] {cfg.label()}: skipped (data too large)")
            continue
        start = time.perf_counter()
        rows.append(bench_config(cfg, device, args))
        row = rows[-1]
        print(
            f"[{i}/{len(configs)}] {cfg.label()}: baseline {_fmt(row['baseline_ms'])} ms, "
            f"engine {row['engine_ms']:.2f} ms, ratio {_fmt(row['ratio'], '{:.1f}x')}, "
            f"threads {row['threads']} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        gc.collect()
    return rows


def write_results(rows, scaling, info, name):
    text = markdown(rows, scaling, info)
    payload = {
        "machine": info,
        "settings": {
            "hidden_layer_sizes": HIDDEN,
            "n_critic": N_CRITIC,
            "dt": DT,
            "lipschitz": LIPSCHITZ,
            "learning_rate": LEARNING_RATE,
            "dtype": "float32",
            "minibatch": f"{MINIBATCH} rows per side when N > {MINIBATCH_ABOVE}",
        },
        "rows": rows,
        "class_scaling_interleaved": scaling,
        "class_ratios_from_rows": class_ratios(rows),
    }
    _common.write_results(name, payload, text, machine=False, indent=2)
    return text


def main(argv=None):
    args = parse_args(argv)
    args.thread_cap = thread_cap(args)
    critic_module.USE_LEAN = not args.general
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda was asked for but CUDA is not available.")
    if args.memory_probe is not None:
        torch.set_num_threads(int(args.threads))
        cfg = Config(**json.loads(args.memory_probe))
        print(json.dumps({"peak_mib": probe_memory(cfg, args.probe_method, args.device)}))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.profile:
        text = profile(args.device, args)
        cfg = args.config[0] if args.config else HEADLINE
        name = f"bench_step_profile_N{cfg.n}_d{cfg.d}_K{cfg.k}_{cfg.solver}_{args.device}.txt"
        (RESULTS / name).write_text(text + "\n")
        print(text)
        return
    if args.fits:
        info = machine_info(args.device, args)
        rows, text = bench_fits(args)
        info["load_average_after"] = os.getloadavg()
        _common.write_results(
            args.output or "bench_step_fits", {"machine": info, "rows": rows}, text
        )
        print(text)
        return
    if args.check:
        torch.set_num_threads(1 if args.threads == "auto" else int(args.threads))
        result = check(args.device)
        _common.write_results("bench_step_check", result, None, machine=False, indent=2)
        print(json.dumps(result, indent=2))
        return
    configs = args.config or (QUICK if args.quick else full_grid() if args.full else MEDIUM)
    if args.against:
        mode = "_custom" if args.config else "_quick" if args.quick else ""
        info = machine_info(args.device, args) | {"against": str(args.against)}
        rows, text = bench_against(configs, args.device, args)
        info["load_average_after"] = os.getloadavg()
        stem = args.output or f"bench_step_against{mode}"
        _common.write_results(stem, {"machine": info, "rows": rows}, text)
        print(text)
        return
    args.data_limit = data_limit(args.device, args)
    info = machine_info(args.device, args)
    rows = run_grid(configs, args.device, args)
    scaling = run_class_scaling(configs, args.device, args)
    if not args.no_memory:
        add_memory(rows, configs, args.device)
    mode = "_custom" if args.config else "_quick" if args.quick else ""
    suffix = mode + ("_cuda" if args.device != "cpu" else "")
    print(write_results(rows, scaling, info, args.output or f"bench_step{suffix}"))


if __name__ == "__main__":
    main()
