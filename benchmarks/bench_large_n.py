"""Cost per particle step at large N with default parameters: linear, and memory bounded.

``GPATransporter(n_steps=5, n_critic=3)`` (every other parameter at its default:
``stop="auto"``, ``standardize="auto"``, ``batch_size="auto"``) moves N rows of a 50-D
standard normal onto N rows of a 50-D Gaussian with another mean and scales, for a small
and a large N (ten times as many), in one process.  Each is also run with the behaviour
before ``batch_size="auto"``: the critic on every row (``batch_size=None``) and the
velocity of all particles in one piece.  Reported per setting and N:

* the time per particle step, ``history_["time"][-1] / n_steps_`` (it includes the
  stopping rule's check before the first step), the smallest over the repeats (the runs
  are interleaved, so a slow spell of a shared machine hits every setting alike);
* the whole fit's wall-clock time (with the standardisation and the stopping rule's
  set-up) and the fit's peak resident memory (sampled every 5 ms);
* the ratio of the large N's per-step time to the small N's: 10 is linear.

Run: ``python benchmarks/bench_large_n.py [--quick]`` (quick: 10 000 and 100 000 rows, one
repeat).  Writes ``results/bench_large_n.{json,md}``.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import _common
import numpy as np

from sklearn_gpa import GPATransporter
from sklearn_gpa._engine import critic as critic_module
from sklearn_gpa.utils import stack_domains

D = 50
SETTINGS = {
    "default (batch_size='auto')": {},
    "before (batch_size=None, one-piece velocity)": {"batch_size": None},
}


def _rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """The largest resident set size seen while the block runs (sampled every 5 ms)."""

    def __enter__(self):
        self.start = self.peak = _rss()
        self._running = True
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while self._running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()


def problem(n, seed=0):
    rng = np.random.RandomState(seed)
    mean, scale = rng.uniform(-1.0, 1.0, D), rng.uniform(0.5, 2.0, D)
    source = rng.standard_normal((n, D))
    target = mean + scale * rng.standard_normal((n, D))
    return stack_domains(source, target)


def fit_once(n, settings, old):
    X, _, domain = problem(n)
    # prealign=None: the steps are what is timed (pre-aligned, the flows stop at once).
    gpa = GPATransporter(n_steps=5, n_critic=3, prealign=None, random_state=0, **settings)
    rows = critic_module.VELOCITY_ROWS
    if old:
        critic_module.VELOCITY_ROWS = 1 << 40
    try:
        with PeakMemory() as memory:
            start = time.perf_counter()
            gpa.fit(X, sample_domain=domain)
            seconds = time.perf_counter() - start
    finally:
        critic_module.VELOCITY_ROWS = rows
    return {
        "ms_per_step": 1000 * gpa.history_["time"][-1] / gpa.n_steps_,
        "fit_seconds": seconds,
        "steps_seconds": float(gpa.history_["time"][-1]),
        "peak_rss_gb": memory.peak / 2**30,
        "rss_increase_gb": (memory.peak - memory.start) / 2**30,
    }


def _cell(value):
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main(argv=None):
    parser = _common.parser(__doc__, quick="10 000 and 100 000 rows, one repeat")
    args = parser.parse_args(argv)
    sizes, repeats = ((10_000, 100_000), 1) if args.quick else ((20_000, 200_000), 2)
    runs = {}
    for _ in range(repeats):
        for name, settings in SETTINGS.items():
            for n in sizes:
                row = fit_once(n, settings, old=name.startswith("before"))
                runs.setdefault((name, n), []).append(row)
                print(f"{name} N={n}: {row['ms_per_step']:.0f} ms/step", flush=True)
    rows = []
    for name in SETTINGS:
        best = {
            n: {k: min(r[k] for r in runs[(name, n)]) for k in runs[(name, n)][0]} for n in sizes
        }
        small, large = sizes
        for n in sizes:
            rows.append({"setting": name, "N": n, **best[n]})
        rows.append(
            {
                "setting": name,
                "N": f"{large} / {small}",
                "ms_per_step": best[large]["ms_per_step"] / best[small]["ms_per_step"],
                "fit_seconds": best[large]["fit_seconds"] / best[small]["fit_seconds"],
                "steps_seconds": best[large]["steps_seconds"] / best[small]["steps_seconds"],
            }
        )
    columns = ["setting", "N", "ms_per_step", "steps_seconds", "fit_seconds", "peak_rss_gb"]
    columns.append("rss_increase_gb")
    text = (
        f"`python benchmarks/bench_large_n.py{' --quick' if args.quick else ''}` "
        f"({_common.now()}, {_common.machine_line()}, load average "
        f"{os.getloadavg()[0]:.1f}), {D}-D Gaussians, N source and N target rows, "
        f"n_steps=5, n_critic=3, smallest of {repeats} interleaved repeat(s); the ratio rows "
        "divide the large N's numbers by the small N's (10: linear).\n\n"
        + _common.markdown_table(
            columns, [[_cell(row.get(key)) for key in columns] for row in rows]
        )
        + "\n"
    )
    print("\n" + text)
    stem = _common.result_stem("bench_large_n", args.quick)
    _common.write_results(stem, {"sizes": list(sizes), "rows": rows}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
