"""Generative flows that stop nearing their target: the stall rule against running to n_steps.

Issue 17: ``GPATransporter(random_state=0).fit(X, y)`` on KEEL vehicle3 (846 rows, 18 strongly
collinear features) ran all 2000 steps: class 0's flow fell from a score of 28 to 10 in 150
steps, hovered there, and its ReLU critic went flat at step 493; nothing moved for the last 1500
steps.  With the stall rule (``stopping.STALL_STEPS``, generation only) a flow whose score has
not fallen by ``STALL_GAIN`` (10 %) within 400 steps stops and goes back to its best check.

What is measured
----------------
Per table, size and seed, ``GPATransporter(random_state=seed).fit(X_train, y_train)`` with
every default, with the rule ("new", the default) and without it ("old": ``STALL_STEPS =
None``), in one process on the same split: the stopping step of each class flow, the
``stop_reason_``, the steps run, seconds (fit + sample, one thread, busy 2-core machine),
the pickled size, and ``bench_generation.py``'s C2ST, efficacy and memorisation of
``sample(len(y_train), y=y_train)`` against the held-out rows.  The rule changes a run only
from the check where a flow stalls (its own random stream, and the flows that go on keep
their path): where the run without it has no flow that would stall (its checks replayed
through the rule), the run with it is the same run and is not repeated (marked "same").

Sizes: ``full`` is ``bench_generation.py``'s split with no cap (60 % of the rows for
training, the rest held out); ``300`` caps the training rows at 300 (skipped where 60 % is
fewer).  ``--all-rows`` adds fits on every row of each table (no held-out rows: steps,
seconds and size only), as the issue's reproduction did.

How to run (from the repository root)
-------------------------------------
``OMP_NUM_THREADS=1 python benchmarks/bench_stall.py`` (17 tables, 2 seeds: about an hour on
a busy 2-core machine); ``--quick``: vehicle3 and segment0, seeds 0 and 1, full size only.
Results: ``benchmarks/results/bench_stall[_quick].json`` and ``.md``.
"""

from __future__ import annotations

import pickle
import time
import warnings

import _common
import bench_generation as bg
import numpy as np
import torch

from sklearn_gpa import GPATransporter
from sklearn_gpa import _engine as engine
from sklearn_gpa._engine.stopping import STALL_GAIN

TABLES = [
    "vehicle0",
    "vehicle1",
    "vehicle2",
    "vehicle3",
    "segment0",
    "page_blocks0",
    "page_blocks_1_3_vs_4",
    "shuttle_c0_vs_c4",
    "wdbc",
    "cm1",
    "pc1",
    "ionosphere",
    "glass0",
    "abalone9_18",
    "winequality_white_3_vs_7",
    "yeast1",
    "pima",
]
FULL = 10**9  # no cap on the training rows: bench_generation's 60 % split


def would_stall(row, patience):
    """Whether the stall rule stops a flow of ``row`` (a run without it) before its end."""
    checks, scores = np.array(row["checks"]), np.array(row["scores"])
    for k, stop in enumerate(row["stop"]):
        # A flow that went back to its best check (``ROLLBACK_RATIO``) ran to the end.
        end = checks[-1] if stop < 0 or row["rolled_back"][k] else stop
        mark, mark_step = np.inf, 0
        for step, score in zip(checks, scores[:, k]):
            if step > end or score <= 1 or stop == 0:
                break
            if score < mark * (1 - STALL_GAIN):
                mark, mark_step = score, step
            if step - mark_step >= patience:
                return True
    return False


def fit(X, y, seed, held=None):
    """One default fit (and its samples' scores against ``held``): a result row."""
    start = time.perf_counter()
    gpa = GPATransporter(random_state=seed).fit(X, y)
    samples = gpa.sample(len(y), y=y, random_state=seed)
    seconds = time.perf_counter() - start
    history = gpa.history_
    row = {
        "steps": int(gpa.n_steps_),
        "reason": gpa.stop_reason_,
        "stop": history["stop_step"].tolist(),
        "stalled": history.get("stop_stalled", np.zeros(gpa.n_flows_, bool)).tolist(),
        "rolled_back": history["stop_rolled_back"].tolist(),
        "seconds": seconds,
        "mb": len(pickle.dumps(gpa)) / 1e6,
        "checks": history["stop_check_step"].tolist(),
        "scores": np.round(history["stop_score"], 3).tolist(),
    }
    if held is not None:
        Xh, yh = held
        row["c2st"] = bg.c2st(samples, y, Xh, yh, seed)
        row["efficacy"] = bg.efficacy(samples, y, X, y, Xh, yh, seed)
        row["memorisation"] = bg.memorisation(samples, X, Xh)
    return row


def old_and_new(X, y, seed, held=None):
    """The run without the rule and with it (the same run where no flow stalls)."""
    patience = engine.STALL_STEPS
    try:
        engine.STALL_STEPS = None
        old = fit(X, y, seed, held)
    finally:
        engine.STALL_STEPS = patience
    if not would_stall(old, patience):
        return old, {**old, "same": True}
    return old, fit(X, y, seed, held)


def _print(data, size, seed, variant, row):
    quality = ""
    if "c2st" in row:
        quality = (
            f"C2ST {row['c2st']:.3f} efficacy {row['efficacy']:.3f} "
            f"memorisation {row['memorisation']:.2f} "
        )
    same = " (same)" if row.get("same") else ""
    print(
        f"{data:24s} {size:>4} s{seed} {variant}{same:7s} steps {row['steps']:4d} "
        f"{row['reason']:9s} stop {row['stop']} {quality}{row['seconds']:6.1f} s "
        f"{row['mb']:.2f} MB",
        flush=True,
    )


def main(argv=None):
    parser = _common.parser(__doc__, quick="vehicle3 and segment0, 2 seeds, full size")
    parser.add_argument("--tables", nargs="*", default=None)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--sizes", default="full,300")
    parser.add_argument("--all-rows", action="store_true", help="also fit on every row")
    parser.add_argument("--name", default=None, help="results file stem")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    tables = args.tables or (["vehicle3", "segment0"] if args.quick else TABLES)
    sizes = ["full"] if args.quick else [size for size in args.sizes.split(",") if size]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, record = [], _common.run_record()
    for data in tables:
        X, y = bg.load_tabular(data)
        for size in sizes:
            cap = FULL if size == "full" else int(size)
            for seed in seeds:
                Xt, Xh, yt, yh = bg.split_tabular(X, y, cap, seed)
                if size != "full" and len(Xt) == int(0.6 * len(X)):
                    continue  # the full split already
                pair = old_and_new(Xt, yt, seed, (Xh, yh))
                for variant, row in zip(("old", "new"), pair):
                    row.update(data=data, size=size, n=len(Xt), seed=seed, variant=variant)
                    rows.append(row)
                    _print(data, size, seed, variant, row)
        if args.all_rows:
            for seed in seeds:
                for variant, row in zip(("old", "new"), old_and_new(X, y, seed)):
                    row.update(data=data, size="all", n=len(X), seed=seed, variant=variant)
                    rows.append(row)
                    _print(data, "all", seed, variant, row)
        # After each table: a long run cut short keeps what it measured.
        text = summary(rows)
        stem = args.name or _common.result_stem("bench_stall", args.quick)
        _common.write_results(stem, {**record, "rows": rows}, text)
    print(text)


def summary(rows):
    """The runs where the rule changed something, and the means over every split."""
    pairs = {}
    for row in rows:
        pairs.setdefault((row["data"], row["size"], row["seed"]), {})[row["variant"]] = row
    changed = [p for p in pairs.values() if not p["new"].get("same")]
    columns = [
        "data",
        "rows",
        "seed",
        "steps",
        "stop reason",
        "C2ST",
        "efficacy",
        "memo.",
        "s",
        "MB",
    ]
    lines = ["Runs the stall rule changed (old -> new):", ""]
    table = []
    for p in changed:
        old, new = p["old"], p["new"]

        def both(key, pattern, old=old, new=new):
            if key not in old:
                return "-"
            return f"{pattern.format(old[key])} -> {pattern.format(new[key])}"

        table.append(
            [
                old["data"],
                f"{old['n']} ({old['size']})",
                old["seed"],
                both("steps", "{}"),
                both("reason", "{}"),
                both("c2st", "{:.3f}"),
                both("efficacy", "{:.3f}"),
                both("memorisation", "{:.2f}"),
                both("seconds", "{:.1f}"),
                both("mb", "{:.2f}"),
            ]
        )
    lines.append(_common.markdown_table(columns, table, align="llr" + "l" * 7))
    scored = [p for p in pairs.values() if "c2st" in p["old"]]
    n_changed = sum(not p["new"].get("same") for p in scored)
    lines += ["", f"Over all {len(scored)} held-out splits ({n_changed} changed), means:", ""]
    means = []
    for variant in ("old", "new"):
        runs = [p[variant] for p in scored]
        means.append(
            [
                variant,
                f"{np.mean([r['c2st'] for r in runs]):.3f}",
                f"{np.mean([r['efficacy'] for r in runs]):.3f}",
                f"{np.mean([r['memorisation'] for r in runs]):.2f} "
                f"({np.min([r['memorisation'] for r in runs]):.2f})",
                f"{np.mean([r['steps'] for r in runs]):.0f}",
                sum(r["reason"] == "n_steps" for r in runs),
                f"{np.sum([r['seconds'] for r in runs]):.0f}",
                f"{np.mean([r['mb'] for r in runs]):.2f}",
            ]
        )
    header = ["rule", "C2ST", "efficacy", "memo. (min)", "steps", "n_steps runs", "s (sum)", "MB"]
    lines.append(_common.markdown_table(header, means))
    lines += ["", f"Command: `{_common.command()}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
