"""Whole fits next to other busy processes: the estimators' BLAS thread rule, or none.

The estimators' numpy and scipy work (standardisation, the encoder's SVD, the ridge
cross-validation of ``class_router``, decoding) runs on OpenBLAS, which starts one thread per
core whatever the load.  Since this version the estimators run that work on one BLAS thread
for data of moderate size and on the free cores for large data
(``sklearn_gpa._engine.device.blas_threads``).  This script measures what that buys: each
fit is timed with the rule and with it switched off, interleaved in one process (the order
alternates from one repeat to the next), while ``--spinners`` other processes keep cores
busy, first with a pure-Python loop each (one core apiece), then with numpy matrix products
on numpy's default threads (as many cores as its BLAS takes), and again with the machine
left alone.

Run: ``python benchmarks/bench_busy_machine.py [--repeats 5] [--spinners 1]``.  The gene
rows need ``survset``.  Writes ``results/bench_busy_machine.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sklearn_gpa import GPATransporter, LatentGPA, MeanStdAdjuster
from sklearn_gpa._engine import device
from sklearn_gpa.datasets import load_breast_cancer_studies
from sklearn_gpa.utils import stack_domains

RESULTS = os.path.join(os.path.dirname(__file__), "results")
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
    """``n`` processes that keep cores busy until the block ends: a pure-Python loop each
    (one core), or numpy matrix products (as many cores as numpy's BLAS takes)."""
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


@contextlib.contextmanager
def cap(enabled):
    """The estimators' BLAS rule as shipped, or switched off."""
    if enabled:
        yield
        return
    saved = device._BLAS_MIN_VALUES
    device._BLAS_MIN_VALUES = float("inf")
    try:
        yield
    finally:
        device._BLAS_MIN_VALUES = saved


def runs():
    Xs, ys, Xt, yt, _ = load_breast_cancer_studies("gse1992", "gse4335")
    X, y, sd = stack_domains(Xs, Xt, ys, yt)
    return [
        (
            "LatentGPA defaults, 300 steps (235 x 11 809 genes)",
            lambda: LatentGPA(transporter=GPATransporter(random_state=0, out_of_sample="auto")).fit(
                X, y, sample_domain=sd
            ),
        ),
        (
            "LatentGPA transform of 122 source rows",
            _transform(
                LatentGPA(transporter=GPATransporter(random_state=0, out_of_sample="auto")).fit(
                    X, y, sample_domain=sd
                ),
                Xs,
            ),
        ),
        (
            "MeanStdAdjuster fit + transform, routed (no y)",
            lambda: MeanStdAdjuster().fit(X, y, sample_domain=sd).transform(Xs),
        ),
    ]


def _transform(model, rows):
    return lambda: model.transform(rows)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--spinners", type=int, default=1)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    try:
        cases = runs()
    except ImportError:
        print("survset is not installed: pip install survset")
        return 0
    for _, fn in cases:  # warm-up: imports, first allocations
        fn()
    rows = []
    header = (
        "| fit | machine | rule on s (median) | rule off s (median) | off / on |\n"
        "|---|---|---:|---:|---:|"
    )
    print(header)
    loads = [("python", args.spinners), ("numpy", args.spinners), ("idle", 0)]
    for kind, n_spin in loads:
        with spinners(n_spin, kind):
            for name, fn in cases:
                times = {True: [], False: []}
                for repeat in range(args.repeats):
                    for enabled in (True, False) if repeat % 2 == 0 else (False, True):
                        with cap(enabled):
                            times[enabled].append(timed(fn))
                capped, uncapped = np.median(times[True]), np.median(times[False])
                row = {
                    "fit": name,
                    "machine": "idle"
                    if not n_spin
                    else f"{n_spin} other process{'es' * (n_spin != 1)}: {LOADS[kind]}",
                    "capped_s": float(capped),
                    "uncapped_s": float(uncapped),
                    "capped_all": times[True],
                    "uncapped_all": times[False],
                    "ratio": float(uncapped / capped),
                }
                rows.append(row)
                print(
                    f"| {name} | {row['machine']} | {capped:.2f} | {uncapped:.2f} "
                    f"| {row['ratio']:.1f}x |",
                    flush=True,
                )
    os.makedirs(RESULTS, exist_ok=True)
    meta = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "repeats": args.repeats,
    }
    with open(os.path.join(RESULTS, "bench_busy_machine.json"), "w") as f:
        json.dump({"machine": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(RESULTS, "bench_busy_machine.md"), "w") as f:
        f.write(f"{meta['date']}, {meta['cpus']} CPUs, ")
        f.write(f"median of {args.repeats} interleaved runs\n\n")
        f.write(header + "\n")
        for r in rows:
            f.write(
                f"| {r['fit']} | {r['machine']} | {r['capped_s']:.2f} | {r['uncapped_s']:.2f} "
                f"| {r['ratio']:.1f}x |\n"
            )
    print(f"wrote {RESULTS}/bench_busy_machine.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
