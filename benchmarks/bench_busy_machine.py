"""Whole fits next to a busy process and on an idle machine: the old load-based thread rule
against the size rule that replaced it, interleaved in one process.

Until this version the engine and the estimators chose threads from the machine's load:
torch threads for large problems were capped at the cores other processes left idle (read
from ``/proc/stat`` in 0.05 s samples, or the load average), and numpy's BLAS threads for
large data likewise.  Now both follow the problem's size only: one torch thread below
``device._SINGLE_THREAD_WORK`` multiply-adds per evaluation, torch's own setting above; one
BLAS thread for data of moderate size (``_threadpool.blas_limit``), BLAS's own setting for
small and large data.  The old rule is kept in this script only (``OldRule``), for this
comparison.  Data of moderate size (the gene studies) get one BLAS thread and small
problems one torch thread under both rules, so only large problems are timed here.

Each fit is timed with the old and the new rule, the order alternating from one repeat to
the next, next to ``--spinners`` other processes doing numpy matrix products on numpy's
default threads (another scientific job), next to as many pure-Python loops (one core each),
and on the machine left alone.  Each row also gives the threads the old rule chose.

Second part (``--part threads``, issue 18): one and two torch threads for problems of growing
size, below and above the one-thread threshold (2-D rows, ``(32, 32, 32)`` critic, 3 updates a
step, ``stop=None``): whether the particles are the same to the bit, and the milliseconds per
step on each, interleaved, in a fresh process per OpenMP wait policy (``OMP_WAIT_POLICY``
unset, torch's default, and ``PASSIVE``; OpenMP reads it when torch loads), on the machine as
it is and next to ``--spinners`` pure-Python loops.  If one and two threads round differently,
a thread count chosen from the machine's load would make ``random_state`` results depend on
what else runs.

Run: ``python benchmarks/bench_busy_machine.py [--repeats 3] [--spinners 1] [--part rules|threads]``
(both parts without ``--part``).  Writes ``results/bench_busy_machine.{json,md}`` and
``results/bench_busy_machine_threads.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import warnings

import _common
import numpy as np
import torch
from sklearn.decomposition import PCA

from sklearn_gpa import GPATransporter, _threadpool
from sklearn_gpa._engine import device
from sklearn_gpa.utils import stack_domains

LOADS = {"python": "pure-Python loop", "numpy": "numpy matrix products"}


def _spin(stop, kind):
    if kind == "numpy":  # another scientific job: matrix products on numpy's default threads
        a = np.random.RandomState(0).normal(size=(400, 400))
        while not stop.is_set():
            a @ a
    else:
        while not stop.is_set():
            sum(range(10_000))


@contextlib.contextmanager
def spinners(n, kind="python"):
    """``n`` processes that keep cores busy until the block ends."""
    stop = multiprocessing.Event()
    procs = [
        multiprocessing.Process(target=_spin, args=(stop, kind), daemon=True) for _ in range(n)
    ]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let the machine's CPU time show them
    try:
        yield
    finally:
        stop.set()
        for p in procs:
            p.join()


class OldRule:
    """The load-based rule of sklearn-gpa up to this version (``_engine/device.py`` at
    145558c), reduced to what chooses the thread counts: the cores other processes kept
    busy, from ``/proc/stat`` (a 0.05 s sample when the last look is stale, a look reused
    for 0.25 s), else the load average less this process's own recent CPU time."""

    def __init__(self):
        self.default_threads = torch.get_num_threads()
        self.last_stat = None
        self.last_reading = None
        self.last_look = [time.monotonic(), time.process_time()]
        self.blas_depth = 0
        self.chosen = {"torch": [], "blas": []}

    @staticmethod
    def cores():
        try:
            return len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            return os.cpu_count() or 1

    @staticmethod
    def busy_seconds():
        try:
            with open("/proc/stat") as stat:
                lines = [line.split() for line in stat if line.startswith("cpu")]
        except OSError:
            return None
        allowed = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        rows = [f for f in lines if f[0] != "cpu" and f[0] in allowed] or [
            f for f in lines if f[0] == "cpu"
        ]
        busy = 0
        for fields in rows:
            ticks = [int(x) for x in fields[1:9]] + [0] * (9 - len(fields))
            busy += ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
        return busy / os.sysconf("SC_CLK_TCK")

    def other_busy_cores(self):
        now = time.monotonic()
        if self.last_stat is not None and now - self.last_stat[0] < 0.25:
            return self.last_reading
        busy, own = self.busy_seconds(), time.process_time()
        if busy is None:
            return None
        if self.last_stat is None or now - self.last_stat[0] > 60.0:
            time.sleep(0.05)
            self.last_stat = (now, busy, own)
            now, busy, own = time.monotonic(), self.busy_seconds(), time.process_time()
        then, busy_then, own_then = self.last_stat
        self.last_stat = (now, busy, own)
        self.last_reading = max(0.0, (busy - busy_then) - (own - own_then)) / max(now - then, 1e-9)
        return self.last_reading

    def free_cores(self):
        others = self.other_busy_cores()
        if others is None:
            now, cpu = time.monotonic(), time.process_time()
            span = max(now - self.last_look[0], 1e-9)
            own = (cpu - self.last_look[1]) / span if span <= 60.0 else 0.0
            self.last_look = [now, cpu]
            others = max(0.0, os.getloadavg()[0] - min(own, self.default_threads))
        return self.cores() - math.ceil(max(0.0, others - 0.25))

    def threads_for(self, n_rows, layer_sizes, n_threads=None):
        # The size rule is the engine's; the old rule only capped its answer by free cores.
        n = device.threads_for(n_rows, layer_sizes, n_threads)
        if n_threads is not None or n == 1:
            return n
        n = max(1, min(self.default_threads, n, self.free_cores()))
        self.chosen["torch"].append(n)
        return n

    @contextlib.contextmanager
    def blas_threads(self, n_rows, n_features):
        """Moderate data: 1 thread (as now); large data: the free cores."""
        limit = _threadpool.blas_limit(n_rows, n_features)
        large = limit is None and n_rows * n_features >= _threadpool._BLAS_MIN_VALUES
        if self.blas_depth or threading.current_thread() is not threading.main_thread():
            limit = None  # a nested fit keeps its caller's limit
        elif large:
            limit = max(1, self.free_cores())
            self.chosen["blas"].append(limit)
            limit = None if limit >= self.cores() else limit
        self.blas_depth += 1
        try:
            if limit is None:
                yield
            else:
                with _threadpool._get_threadpool_controller().limit(limits=limit, user_api="blas"):
                    yield
        finally:
            self.blas_depth -= 1

    @contextlib.contextmanager
    def installed(self):
        saved = device.threads_for, _threadpool.blas_threads
        device.threads_for, _threadpool.blas_threads = self.threads_for, self.blas_threads
        try:
            yield
        finally:
            device.threads_for, _threadpool.blas_threads = saved


def runs():
    rng = np.random.RandomState(0)
    X, _, sd = stack_domains(rng.normal(size=(5_000, 2)), rng.normal(size=(5_000, 2)) + 2)
    wide, _, wide_sd = stack_domains(
        rng.normal(size=(500, 6_000)), rng.normal(size=(500, 6_000)) + 1
    )
    return [
        (
            "GPATransporter 2-D, 5 000 + 5 000 rows, 60 steps (torch: 2.1e7 multiply-adds)",
            lambda: GPATransporter(n_steps=60, prealign=None, random_state=0).fit(
                X, sample_domain=sd
            ),
        ),
        (
            "LatentGPA PCA(20), 1 000 x 6 000, 20 steps (BLAS: SVD 6e9 multiply-adds)",
            lambda: _common.latent_gpa(encoder=PCA(20), n_steps=20, random_state=0).fit(
                wide, sample_domain=wide_sd
            ),
        ),
    ]


def under_old_rule(old, fn):
    """``fn()`` with the old thread rule installed."""
    with old.installed():
        fn()


def _fmt_threads(values):
    return "/".join(str(v) for v in sorted(set(values))) if values else "-"


# -- part 2: one or two torch threads ----------------------------------------------------
# (rows per flow and side, flows): 2-D rows, (32, 32, 32) critic: 2 144 multiply-adds a row.
THREAD_PROBLEMS = ((200, 1), (1_000, 1), (200, 10), (5_000, 1), (20_000, 1))
THREAD_STEPS = 30


def thread_problem(n, k, seed=0):
    rng = np.random.RandomState(seed)
    labels = np.repeat(np.arange(k), n)
    return stack_domains(
        rng.normal(size=(n * k, 2)), rng.normal(size=(n * k, 2)) + 2, labels, labels
    )


def fit_on_threads(problem, n_threads, steps=THREAD_STEPS):
    """Particles of a fit whose torch thread count is forced to ``n_threads``."""
    X, y, sd = problem
    rule = device.threads_for
    device.threads_for = lambda *args, **kwargs: n_threads
    try:
        gpa = GPATransporter(
            n_steps=steps, n_critic=3, stop=None, prealign=None, random_state=0
        ).fit(X, y if len(np.unique(y)) > 1 else None, sample_domain=sd)
    finally:
        device.threads_for = rule
    return gpa.particles_


def thread_child(repeats):
    """Per problem: ms per step on 1 and 2 threads (interleaved, medians) and whether the
    particles agree to the bit; printed as one JSON line (run in a fresh process)."""
    out = []
    for n, k in THREAD_PROBLEMS:
        problem = thread_problem(n, k)
        same = bool(np.array_equal(fit_on_threads(problem, 1), fit_on_threads(problem, 2)))
        candidates = {t: functools.partial(fit_on_threads, problem, t) for t in (1, 2)}
        times = _common.medians(_common.interleaved(candidates, repeats, alternate=True))
        work = 2 * n * k * 2_144
        out.append(
            {
                "problem": f"K={k}, {n} + {n} rows a flow",
                "work": work,
                "rule_threads": device.threads_for(2 * n * k, 2_144),
                "ms_1": times[1] / THREAD_STEPS * 1e3,
                "ms_2": times[2] / THREAD_STEPS * 1e3,
                "same_bits": same,
            }
        )
    print(json.dumps(out))


def thread_part(args):
    rows = []
    for n_spin in (0, args.spinners):
        for policy in (None, "PASSIVE"):
            env = dict(os.environ)
            env.pop("OMP_WAIT_POLICY", None)
            if policy:
                env["OMP_WAIT_POLICY"] = policy
            command = [sys.executable, __file__, "--thread-child", "--repeats", str(args.repeats)]
            with spinners(n_spin, "python"):
                load = os.getloadavg()[0]
                result = subprocess.run(
                    command, env=env, capture_output=True, text=True, check=True
                )
            machine = "as it is" if not n_spin else f"+{n_spin} pure-Python loop"
            for row in json.loads(result.stdout.strip().splitlines()[-1]):
                row.update(machine=machine, policy=policy or "unset", load_average=load)
                row["ratio"] = row["ms_2"] / row["ms_1"]
                rows.append(row)
                print(row, flush=True)
    columns = [
        ("problem", "problem", None),
        ("multiply-adds per evaluation", "work", "{:.1e}"),
        ("rule's threads", "rule_threads", None),
        ("machine", "machine", None),
        ("load avg at start", "load_average", "{:.1f}"),
        ("OMP_WAIT_POLICY", "policy", None),
        ("1 thread ms/step", "ms_1", "{:.2f}"),
        ("2 threads ms/step", "ms_2", "{:.2f}"),
        ("2 / 1", "ratio", "{:.2f}"),
        ("same particles", "same_bits", None),
    ]
    text = (
        f"`{_common.command()}` ({_common.now()}, {_common.machine_line()}), "
        f"{THREAD_STEPS} steps, medians of {args.repeats} interleaved fits\n\n"
        f"{_common.grouped_table(rows, columns)}\n"
    )
    print(text)
    _common.write_results("bench_busy_machine_threads", {"rows": rows}, text)


def main(argv=None):
    parser = _common.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spinners", type=int, default=1)
    parser.add_argument("--part", choices=("rules", "threads"))
    parser.add_argument("--thread-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.thread_child:
        thread_child(args.repeats)
        return 0
    if args.part != "rules":
        thread_part(args)
    if args.part != "threads":
        rules_part(args)
    return 0


def rules_part(args):
    cases = runs()
    old = OldRule()
    for _, fn in cases:  # warm-up: imports, first allocations
        fn()
    rows = []
    header = (
        "| fit | machine | load avg at start | new rule s (median) | old rule s (median) "
        "| old / new | old rule's threads (torch; BLAS) |\n|---|---|---:|---:|---:|---:|---|"
    )
    print(f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs\n{header}")
    loads = [("numpy", args.spinners), ("python", args.spinners), ("idle", 0)]
    for kind, n_spin in loads:
        with spinners(n_spin, kind):
            load = os.getloadavg()[0]
            for name, fn in cases:
                old.chosen = {"torch": [], "blas": []}
                candidates = {"new": fn, "old": functools.partial(under_old_rule, old, fn)}
                times = _common.interleaved(candidates, args.repeats, alternate=True)
                median = _common.medians(times)
                new, was = median["new"], median["old"]
                chosen = f"{_fmt_threads(old.chosen['torch'])}; {_fmt_threads(old.chosen['blas'])}"
                row = {
                    "fit": name,
                    "machine": "idle"
                    if not n_spin
                    else f"{n_spin} other process{'es' * (n_spin != 1)}: {LOADS[kind]}",
                    "load_average": load,
                    "new_s": new,
                    "old_s": was,
                    "new_all": times["new"],
                    "old_all": times["old"],
                    "ratio": was / new,
                    "old_threads": old.chosen,
                }
                rows.append(row)
                line = (
                    f"| {name} | {row['machine']} | {load:.1f} | {new:.2f} | {was:.2f} "
                    f"| {row['ratio']:.2f}x | {chosen} |"
                )
                row["line"] = line
                print(line, flush=True)
    text = f"{_common.now()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
    text += f"median of {args.repeats} interleaved runs of each rule\n\n{header}\n"
    text += "".join(r["line"] + "\n" for r in rows)
    _common.write_results("bench_busy_machine", {"repeats": args.repeats, "rows": rows}, text)
    print(f"wrote {_common.RESULTS}/bench_busy_machine.md")


if __name__ == "__main__":
    sys.exit(main())
