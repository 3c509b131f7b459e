"""Class flows that are done before their first step get no discriminator: time and size.

With ``stop="auto"`` a class whose particles already look like a fresh sample of its rows
before the first step (generative classes often do, starting from their fitted prior) is
frozen at step 0.  Before 2026-12-06 its discriminator was still trained with the others at
every step (the K flows run as one batch) and stored for replay; now ``run_gpa`` trains only
the other flows.  This script fits ``GPATransporter(random_state=seed)`` (every default) for
class-conditional generation, both ways in one process: "before" is the same code with the
step-0 split switched off (``_engine._trained_slots`` returning no split), so every flow is
trained.  It reports the fit's seconds, the steps run, the stored flow's size, how many
classes had a discriminator trained (none when every class was done at step 0), and the
samples' quality (share recognised by a classifier trained on other images, C2ST against
held-out images; ``bench_generation.py``'s scores).

MNIST needs ``openml`` access or its cache (``bench_generation.load_mnist_split``); the 8 x 8
digits and two tables run anywhere.  ``--quick``: MNIST seed 0 only.

Run: ``python benchmarks/bench_untrained_flows.py [--quick]``.
"""

from __future__ import annotations

import time
import warnings

import _common
import numpy as np
from bench_generation import (
    c2st,
    load_digits_split,
    load_mnist_split,
    load_tabular,
    split_tabular,
)

import sklearn_gpa._engine as engine
from sklearn_gpa import GPATransporter

TRAINED_SLOTS = engine._trained_slots


def _every_flow(arguments):
    return None, None, None  # (slots, first check, rule): every flow trains


def data_sets(quick):
    yield "MNIST, 20 per class", 0, load_mnist_split(20, 30, 0)
    if quick:
        return
    for seed in (1, 2):
        yield "MNIST, 20 per class", seed, load_mnist_split(20, 30, seed)
    yield "8 x 8 digits, 20 per class", 0, load_digits_split(20, 30, 0)
    for name in ("wine", "vehicle0"):
        X, y = load_tabular(name)
        Xt, Xh, yt, yh = split_tabular(X, y, 300, 0)
        yield name, 0, (Xt, yt, Xh, yh, None)


def fit_row(data, seed, setting):
    X, y, Xh, yh, recogniser = data
    engine._trained_slots = TRAINED_SLOTS if setting == "now" else _every_flow
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            gpa = GPATransporter(random_state=seed).fit(X, y)
            seconds = time.perf_counter() - start
            samples = gpa.sample(len(y), y=y, random_state=seed)
    finally:
        engine._trained_slots = TRAINED_SLOTS
    # A flow with a discriminator that ran at least one step (all flows done before the
    # first step: none is trained, either way).
    trained = len(gpa.classes_) if gpa.flow_.slots is None else len(gpa.flow_.slots)
    trained = trained if gpa.n_steps_ else 0
    row = {
        "setting": setting,
        "seconds": seconds,
        "steps": int(gpa.n_steps_),
        "flows trained": trained,
        "flows": len(gpa.classes_),
        "stored MB": gpa.flow_.nbytes / 1e6,
        "c2st": c2st(samples, y, Xh, yh, seed),
    }
    if recogniser is not None:
        samples = np.clip(samples, X.min(), X.max())
        row["recognised"] = float(np.mean(recogniser.predict(samples) == y))
    return row


COLUMNS = [
    ("data", "data", None),
    ("seed", "seed", "{}"),
    ("setting", "setting", None),
    ("fit s", "seconds", "{:.1f}"),
    ("steps", "steps", "{}"),
    ("flows trained", "trained", None),
    ("flow_ MB", "stored MB", "{:.1f}"),
    ("C2ST", "c2st", "{:.3f}"),
    ("recognised", "recognised", "{:.3f}"),
]


def main():
    args = _common.parser(__doc__, quick="MNIST seed 0 only").parse_args()
    rows = []
    for name, seed, data in data_sets(args.quick):
        for setting in ("now", "before"):
            row = {"data": name, "seed": seed, **fit_row(data, seed, setting)}
            row["trained"] = f"{row['flows trained']} of {row['flows']}"
            rows.append(row)
            print(_common.format_row(row, COLUMNS), flush=True)
    table = _common.grouped_table(rows, COLUMNS, group="data")
    print(table)
    stem = _common.result_stem("bench_untrained_flows", args.quick)
    _common.write_results(stem, {"command": _common.command(), "rows": rows}, table)


if __name__ == "__main__":
    main()
