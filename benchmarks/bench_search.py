"""Speed-up of a parallel grid search: 1 worker against 2, on joblib's loky and on Dask.

What is measured
----------------
Wall time of one ``GridSearchCV`` of ``Pipeline(StandardScaler(), GPATransporter())`` over
12 candidates (L in {1, 3, 10} x dt in {0.003, 0.01, 0.03, 0.1}) with 3
``DomainStratifiedKFold`` folds (36 fits, then the refit of the best candidate) on a
``make_batch_effect`` pair, with metadata routing carrying ``sample_domain``:

* **sequential**: ``n_jobs=1``;
* **loky, cold**: ``n_jobs=2`` after shutting joblib's worker pool down, so the time
  includes starting two processes and importing torch and sklearn-gpa in each (paid once
  per session: joblib reuses its workers);
* **loky, warm**: ``n_jobs=2`` again, with the workers already running;
* **dask** (``--dask``): ``joblib.parallel_backend("dask")`` on a ``LocalCluster`` of 2
  single-threaded worker processes; the cluster's start-up is reported apart, the first
  search (workers import sklearn-gpa) and a second one are timed.

Sequential and warm runs alternate ``--repeats`` times and the median is reported, so load
from other processes hits both alike.  Each run also records the CPU seconds of this
process and its descendants (the workers, via psutil); CPU seconds / wall seconds are the
cores the search actually got.  On a machine busy with other work that number, not the
worker count, bounds the speed-up, so it is reported with the 1-minute load average.
Every run must produce the same ``cv_results_`` scores (checked).  Each fit trains small
networks on one torch thread (the engine's rule), and loky starts workers with
``OMP_NUM_THREADS = cores // n_jobs``, so 2 workers use 2 cores.

How to run (from the repository root)
-------------------------------------
::

    python benchmarks/bench_search.py              # ~2 minutes on 2 cores
    python benchmarks/bench_search.py --dask       # also on a Dask LocalCluster
    python benchmarks/bench_search.py --quick      # smaller fits, ~30 s
    taskset -c 0,1 python benchmarks/bench_search.py   # 2 cores of a larger machine

Needs psutil and, for ``--dask``, ``dask[distributed]`` (which brings psutil).  Results go
to ``benchmarks/results/bench_search.{json,md}`` (``bench_search_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

import _common
import joblib
import numpy as np
import psutil
import sklearn
from joblib.externals.loky import get_reusable_executor
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_gpa import GPATransporter
from sklearn_gpa.datasets import make_batch_effect
from sklearn_gpa.model_selection import DomainStratifiedKFold
from sklearn_gpa.utils import stack_domains

GRID = {"gpatransporter__L": [1.0, 3.0, 10.0], "gpatransporter__dt": [0.003, 0.01, 0.03, 0.1]}
N_FOLDS = 3


def make_problem(n_rows: int, n_features: int):
    Xs, _, Xt, _ = make_batch_effect(n_rows, n_rows, n_features=n_features, random_state=0)
    X, _, sample_domain = stack_domains(Xs, Xt)
    return X, sample_domain


def process_tree_cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) of this process and of each of its descendants."""
    seconds = {}
    root = psutil.Process()
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[process.pid] = times.user + times.system
    return seconds


def timed_search(X, sample_domain, n_steps: int, n_jobs: int | None):
    """Wall and CPU seconds of one routed grid search, and its mean test scores.

    The CPU seconds are those of this process and its descendants (the loky or Dask
    workers); divided by the wall seconds they give the cores the search actually got.
    """
    pipeline = make_pipeline(
        StandardScaler(), GPATransporter(n_steps=n_steps, prealign=None, random_state=0)
    )
    cv = DomainStratifiedKFold(N_FOLDS, shuffle=True, random_state=0)
    search = GridSearchCV(pipeline, GRID, cv=cv, n_jobs=n_jobs)
    cpu_before = process_tree_cpu_seconds()
    start = time.perf_counter()
    with sklearn.config_context(enable_metadata_routing=True):
        search.fit(X, sample_domain=sample_domain)
    elapsed = time.perf_counter() - start
    cpu_after = process_tree_cpu_seconds()
    cpu = sum(t - cpu_before.get(pid, 0.0) for pid, t in cpu_after.items())
    return Timing(elapsed, cpu), search.cv_results_["mean_test_score"]


@dataclasses.dataclass
class Timing:
    wall_s: float
    cpu_s: float


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run(args) -> dict:
    X, sample_domain = make_problem(args.n_rows, args.n_features)
    runs: dict[str, list[Timing]] = {"sequential": [], "loky_warm": []}
    scores = {}
    load_before = os.getloadavg()[0]

    get_reusable_executor().shutdown(wait=True)
    cold, scores["loky_cold"] = timed_search(X, sample_domain, args.n_steps, 2)
    runs["loky_cold"] = [cold]
    for _ in range(args.repeats):
        for name, n_jobs in (("sequential", 1), ("loky_warm", 2)):
            timing, scores[name] = timed_search(X, sample_domain, args.n_steps, n_jobs)
            runs[name].append(timing)
    extra = {}
    if args.dask:
        extra["dask_cluster_start_s"], dask_runs, scores["dask"] = run_dask(
            X, sample_domain, args.n_steps
        )
        runs.update(dask_runs)
    load_after = os.getloadavg()[0]

    reference = scores["sequential"]
    largest_gap = max(float(np.max(np.abs(s - reference))) for s in scores.values())
    summary = {
        name: {
            "wall_s": statistics.median(t.wall_s for t in timings),
            "cpu_s": statistics.median(t.cpu_s for t in timings),
        }
        for name, timings in runs.items()
    }
    for row in summary.values():
        row["cores_used"] = row["cpu_s"] / row["wall_s"]
        row["speedup"] = summary["sequential"]["wall_s"] / row["wall_s"]
    return {
        "config": vars(args) | {"n_candidates": 12, "n_folds": N_FOLDS},
        "machine": _common.machine_info(
            cores=cores(),
            joblib=joblib.__version__,
            load_average_1min_before=load_before,
            load_average_1min_after=load_after,
        ),
        "date": _common.now(),
        "runs": {name: [dataclasses.asdict(t) for t in timings] for name, timings in runs.items()},
        "summary": summary,
        **extra,
        "largest_score_difference_between_runs": largest_gap,
    }


def run_dask(X, sample_domain, n_steps: int):
    """Cluster start-up seconds, the first and second searches' timings, the scores."""
    from distributed import Client, LocalCluster

    start = time.perf_counter()
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        started = time.perf_counter() - start
        with joblib.parallel_backend("dask"):
            first, _ = timed_search(X, sample_domain, n_steps, None)
            second, scores = timed_search(X, sample_domain, n_steps, None)
    return started, {"dask_first": [first], "dask_second": [second]}, scores


LABELS = {
    "sequential": ("sequential (n_jobs=1)", 1),
    "loky_warm": ("loky, workers running", 2),
    "loky_cold": ("loky, incl. worker start", 2),
    "dask_second": ("dask LocalCluster, 2nd search", 2),
    "dask_first": ("dask LocalCluster, 1st search", 2),
}


def write_results(result: dict, name: str) -> str:
    m, c = result["machine"], result["config"]
    lines = [
        f"12-candidate GridSearchCV (L x dt), {N_FOLDS} domain-stratified folds, "
        f"GPATransporter n_steps={c['n_steps']} on {2 * c['n_rows']} rows x "
        f"{c['n_features']} features; {m['cores']} cores ({m['cpu']}), torch "
        f"{m['torch']}, joblib {m['joblib']}, {result['date']}. 1-minute load average "
        f"{m['load_average_1min_before']:.2f} before, {m['load_average_1min_after']:.2f} after. "
        f"Median of {c['repeats']} alternated runs (sequential, loky warm). 'cores used' = "
        "CPU seconds of the process tree / wall seconds: what the machine gave the search.",
        "",
        "| backend | workers | wall s | CPU s | cores used | speed-up vs 1 worker |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, (label, workers) in LABELS.items():
        if key in result["summary"]:
            row = result["summary"][key]
            lines.append(
                f"| {label} | {workers} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | "
                f"{row['cores_used']:.2f} | {row['speedup']:.2f}x |"
            )
    if "dask_cluster_start_s" in result:
        lines += [
            "",
            f"Dask cluster start-up (not timed above): {result['dask_cluster_start_s']:.2f} s.",
        ]
    lines += [
        "",
        "Largest difference in mean test score between runs: "
        f"{result['largest_score_difference_between_runs']:.1e} (same candidates, same scores).",
    ]
    text = "\n".join(lines) + "\n"
    _common.write_results(name, result, text, machine=False, indent=2)
    return text


def main(argv=None):
    parser = _common.parser(__doc__, quick="smaller fits")
    parser.add_argument("--dask", action="store_true", help="also on a Dask LocalCluster")
    parser.add_argument("--repeats", type=int, default=2, help="at least 1")
    parser.add_argument("--n-rows", type=int, default=None, help="rows per domain")
    parser.add_argument("--n-features", type=int, default=10)
    parser.add_argument("--n-steps", type=int, default=None)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.n_rows = args.n_rows or (150 if args.quick else 300)
    args.n_steps = args.n_steps or (100 if args.quick else 300)
    if args.dask:
        import distributed  # noqa: F401  (fail now, not after the loky runs)
    result = run(args)
    print(write_results(result, _common.result_stem("bench_search", args.quick)))
    if result["largest_score_difference_between_runs"] > 1e-6:
        raise SystemExit("The parallel runs did not reproduce the sequential scores.")


if __name__ == "__main__":
    main()
