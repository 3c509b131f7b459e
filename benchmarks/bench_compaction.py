"""Flows that stop during a run leave its batch: fit time and stored size, before and after.

With ``stop="auto"`` each class flow stops when its particles are as close to its target as
a fresh sample.  Before 2026-12-06 a flow that stopped during the run stayed in the batch:
its critic was trained and stored at every step until the last flow stopped.  Now the run
leaves it out at the check where it stopped (``_engine.flow._Batch.leave_out``).  This
script fits ``GPATransporter(random_state=seed)`` (every default: class-conditional
generation) both ways in one process, "before" being the same code with
``_engine.flow._COMPACT = False``, and reports the fit's seconds, the steps run, the
flow-steps trained (the sum over classes of the steps its critic was trained), the seconds
of ``sample`` (a replay of the stored flow; the 2-D row: the training rows replayed), the
stored flow's size, the C2ST of the samples against held-out rows
(``bench_generation.c2st``) and whether the fitted particles are the same both ways.

The fits run on one torch thread (``torch.set_num_threads(1)``): there the flows that go on
mostly follow the same path to the bit either way (vehicle0 does; in the 2-D row a batched
kernel rounds one flow's sum differently from step 501 on), so the two settings do the same
work but for what the stopped flows cost.  On several threads torch splits the sums over
one flow's rows differently when fewer flows share the batch, and a flow's path then
drifts from rounding on (vehicle0 on 2 threads: class 0 stopped at step 300 instead of
1650); ``--threads N`` runs the same table on N threads.

The 2-D row is ``bench_step.py``'s data (200 rows per class, 10 classes of the papers'
mixture) run by ``run_gpa(stop="auto", n_steps=2000)`` directly (no C2ST).  MNIST needs
``openml`` access or its cache (``bench_generation.load_mnist_split``).

Each fit runs ``--repeats`` times (3) per setting, the settings in turn; the median seconds.
``--quick``: vehicle0, MNIST and the 2-D row, seed 0 each.

``--generation ARGS``: instead, ``bench_generation.py ARGS`` (its GPA rows) with the
compaction on, then off, in this process; results ``bench_generation_compaction_now`` and
``_before`` (quality where the paths do drift: e.g. ``--threads 0``, torch's own threads).

Run: ``python benchmarks/bench_compaction.py [--quick] [--threads N]``, or e.g.
``python benchmarks/bench_compaction.py --generation --quick --seeds 3 --gpa default
--digits-per-class 0 --no-transport --no-baselines --threads 0``.
"""

from __future__ import annotations

import time
import warnings

import _common
import numpy as np
import torch
from bench_generation import (
    c2st,
    load_digits_split,
    load_mnist_split,
    load_tabular,
    split_tabular,
)
from bench_step import Config, make_data

import sklearn_gpa._engine.flow as engine_flow
from sklearn_gpa import GPATransporter
from sklearn_gpa._engine import run_gpa

SETTINGS = {"now": True, "before": False}


def data_sets(quick):
    X, y = load_tabular("vehicle0")
    for seed in (0,) if quick else (0, 1, 2):
        Xt, Xh, yt, yh = split_tabular(X, y, 500, seed)
        yield "vehicle0, 500 rows", seed, (Xt, yt, Xh, yh)
    per_class = 20
    for seed in (0,) if quick else (0, 1):
        Xt, yt, Xh, yh, _ = load_mnist_split(per_class, 30, seed)
        yield f"MNIST, {per_class} per class", seed, (Xt, yt, Xh, yh)
    if not quick:
        Xt, yt, Xh, yh, _ = load_digits_split(20, 30, 0)
        yield "8 x 8 digits, 20 per class", 0, (Xt, yt, Xh, yh)
    yield "2-D, 10 classes x 200 rows", 0, None


def _trained_flow_steps(stop_step, n_steps, compact):
    """Flow-steps whose critic was trained: a flow stopped at step s trains s steps now,
    every step before (flows stopped at step 0 get no critic either way)."""
    stop_step = np.asarray(stop_step)
    ran = stop_step != 0
    if not compact:
        return int(ran.sum() * n_steps)
    return int(np.where(stop_step > 0, stop_step, n_steps)[ran].sum())


def fit_row(data, seed, setting):
    engine_flow._COMPACT = SETTINGS[setting]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if data is None:
                sources, targets = make_data(Config(200, 2, 10, "euler"), seed)
                start = time.perf_counter()
                result, flow = run_gpa(sources, targets, stop="auto", n_steps=2000, seed=seed)
                seconds = time.perf_counter() - start
                stop_step, n_steps = result.stop_step, result.n_steps
                particles, score = result.particles.numpy(), None
                rows, labels = np.vstack(sources), np.repeat(np.arange(10), 200)
                start = time.perf_counter()
                flow.replay_rows(rows, labels)
                sample_seconds = time.perf_counter() - start
            else:
                X, y, Xh, yh = data
                start = time.perf_counter()
                gpa = GPATransporter(random_state=seed).fit(X, y)
                seconds = time.perf_counter() - start
                start = time.perf_counter()
                samples = gpa.sample(len(y), y=y, random_state=seed)
                sample_seconds = time.perf_counter() - start
                stop_step, n_steps, flow = gpa.history_["stop_step"], gpa.n_steps_, gpa.flow_
                particles, score = gpa.particles_, c2st(samples, y, Xh, yh, seed)
    finally:
        engine_flow._COMPACT = True
    row = {
        "setting": setting,
        "seconds": seconds,
        "sample seconds": sample_seconds,
        "steps": int(n_steps),
        "flow steps": _trained_flow_steps(stop_step, n_steps, SETTINGS[setting]),
        "stopped": ", ".join(str(s) for s in sorted(stop_step) if s >= 0) or "-",
        "stored MB": flow.nbytes / 1e6,
        "c2st": score,
    }
    return row, particles


COLUMNS = [
    ("data", "data", None),
    ("seed", "seed", "{}"),
    ("setting", "setting", None),
    ("fit s", "seconds", "{:.1f}"),
    ("sample s", "sample seconds", "{:.2f}"),
    ("steps", "steps", "{}"),
    ("flow-steps trained", "flow steps", "{}"),
    ("stop steps", "stopped", None),
    ("flow_ MB", "stored MB", "{:.2f}"),
    ("C2ST", "c2st", "{:.3f}"),
    ("same particles", "same", None),
    ("time now / before", "ratio", "{:.2f}"),
]


def generation(argv):
    """``bench_generation.main(argv)`` with the compaction on, then off."""
    import bench_generation

    for setting, compact in SETTINGS.items():
        engine_flow._COMPACT = compact
        try:
            bench_generation.main([*argv, "--name", f"bench_generation_compaction_{setting}"])
        finally:
            engine_flow._COMPACT = True


def main():
    parser = _common.parser(__doc__, quick="vehicle0, MNIST and 2-D: seed 0 each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="fits per setting (median s)")
    parser.add_argument("--only", default=None, help="the data sets whose name starts so")
    parser.add_argument(
        "--generation", action="store_true", help="bench_generation.py's rows, both ways"
    )
    args, rest = parser.parse_known_args()
    if args.generation:
        generation([*rest, *(["--quick"] if args.quick else [])])
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    torch.set_num_threads(args.threads)
    rows = []
    for name, seed, data in data_sets(args.quick):
        if args.only is not None and not name.startswith(args.only):
            continue
        pair = {}
        seconds, sampled = ({setting: [] for setting in SETTINGS} for _ in range(2))
        # Repeats in turn (now, before, before, now, ...): a busy spell hits both alike.
        for repeat in range(args.repeats):
            for setting in list(SETTINGS)[:: -1 if repeat % 2 else 1]:
                row, particles = fit_row(data, seed, setting)
                pair[setting] = (row, particles)
                seconds[setting].append(row["seconds"])
                sampled[setting].append(row["sample seconds"])
        for setting, (row, _) in pair.items():
            row["seconds"] = float(np.median(seconds[setting]))
            row["all seconds"] = seconds[setting]
            row["sample seconds"] = float(np.median(sampled[setting]))
        now, before = pair["now"][0], pair["before"][0]
        difference = np.abs(pair["now"][1] - pair["before"][1]).max()
        now["same"] = "yes" if difference == 0 else f"max diff {difference:.2g}"
        now["ratio"] = now["seconds"] / before["seconds"]
        for row in (now, before):
            row.update(data=name, seed=seed)
            rows.append(row)
            print(_common.format_row(row, COLUMNS), flush=True)
    table = _common.grouped_table(rows, COLUMNS, group="data")
    print(table)
    suffix = "" if args.threads == 1 else f"_threads{args.threads}"
    suffix += "" if args.only is None else "_" + args.only.split(",")[0].split()[0]
    stem = _common.result_stem("bench_compaction", args.quick, suffix)
    record = {"command": _common.command(), "threads": args.threads, "rows": rows}
    _common.write_results(stem, record, table)


if __name__ == "__main__":
    main()
