"""The discriminator's mini-batch size: its cost per step and its effect on accuracy.

``GPATransporter(batch_size=b)`` trains the discriminator on ``b`` rows per flow and side,
drawn with replacement, at every update; particles still all move every step (their velocity
is evaluated on all of them).  This script runs the same transport with the full batch and
with smaller batches, in one process, and reports per step time relative to the full batch
and how close the moved particles come to the target:

* the papers' 2-D mixture of four Gaussians (L=1, dt=0.5, raw units, 3 critic steps), with
  the share of particles within one unit of a well;
* a 50-D Gaussian target (shifted mean, unequal scales) from a standard normal source, with
  the error of the moved particles' mean and standard deviations.

Both report the energy distance between 2 000 moved particles and 2 000 fresh target rows
(0 = indistinguishable; the last row gives the value for two target samples, the floor),
and the energy distance between the same 2 000 particles moved with this batch size and
with the full batch ("vs full").  ``"auto"`` is the default rule (every row up to 16 384
rows per flow and side, 16 384 above; at N = 20 000 it trains on 16 384 rows).

Run: ``python benchmarks/bench_batch_size.py [--quick] [--batch-sizes full auto 500]``.
Writes ``results/bench_batch_size.{json,md}``.
"""

from __future__ import annotations

import sys

import _common
import numpy as np

from sklearn_gpa import GPATransporter
from sklearn_gpa.datasets import make_gaussian_mixture
from sklearn_gpa.metrics import energy_distance
from sklearn_gpa.utils import stack_domains

WELLS = np.array([[0.0, 4.0], [4.0, 0.0], [4.0, 4.0], [0.0, 0.0]])
EVAL_ROWS = 2000


def mixture_problem(n, seed=0):
    target = make_gaussian_mixture(n, random_state=seed)
    source = 0.5 * np.random.RandomState(seed + 100).standard_normal((n, 2))
    fresh = make_gaussian_mixture(EVAL_ROWS, random_state=seed + 1)
    settings = dict(L=1.0, dt=0.5, n_critic=3, standardize=False)

    def quality(moved):
        near = np.min(np.linalg.norm(moved[:, None, :] - WELLS[None], axis=-1), axis=1) < 1.0
        return {"within 1 of a well": float(near.mean())}

    return "2-D mixture (papers' Fig. 2-3)", source, target, fresh, settings, quality


def gaussian_problem(n, d=50, seed=0):
    rng = np.random.RandomState(seed)
    mean, scale = rng.uniform(-1.0, 1.0, d), rng.uniform(0.5, 2.0, d)
    target = mean + scale * rng.standard_normal((n, d))
    source = rng.standard_normal((n, d))
    fresh = mean + scale * rng.standard_normal((EVAL_ROWS, d))
    settings = dict(n_critic=3)

    def quality(moved):
        return {
            "mean error": float(np.linalg.norm(moved.mean(0) - mean) / np.linalg.norm(mean)),
            "std error": float(np.abs(moved.std(0) / scale - 1.0).mean()),
        }

    return f"{d}-D Gaussian", source, target, fresh, settings, quality


def run(problem, n, batch_sizes, n_steps):
    name, source, target, fresh, settings, quality = problem
    X, _, domain = stack_domains(source, target)
    rows, reference, full_moved = [], None, None
    pick = np.random.RandomState(5).choice(n, EVAL_ROWS, replace=False)
    for batch in batch_sizes:
        gpa = GPATransporter(
            n_steps=n_steps, batch_size=batch, prealign=None, random_state=0, **settings
        )
        moved, seconds = _common.timed(gpa.fit_transform, X, sample_domain=domain)
        moved = moved[domain == 1]
        per_step = 1000 * gpa.history_["time"][-1] / gpa.n_steps_
        reference = per_step if batch is None else reference
        full_moved = moved[pick] if batch is None else full_moved
        row = {
            "problem": name,
            "N": n,
            "batch_size": batch,
            "ms_per_step": per_step,
            "time_vs_full": per_step / reference,
            "energy_distance": energy_distance(moved[pick], fresh),
            "vs_full": None if full_moved is None else energy_distance(moved[pick], full_moved),
            "seconds": seconds,
            **quality(moved),
        }
        rows.append(row)
        print(
            f"{name} N={n} batch={batch or 'full'}: {per_step:.1f} ms/step "
            f"({row['time_vs_full']:.2f}x full), energy distance {row['energy_distance']:.4f}",
            flush=True,
        )
    floor = energy_distance(target[pick], fresh)
    rows.append(
        {"problem": name, "N": n, "batch_size": "target vs target", "energy_distance": floor}
    )
    return rows


def _batch(text):
    return None if text == "full" else text if text == "auto" else int(text)


def table(rows):
    keys = sorted({k for r in rows for k in r} - {"problem", "N", "batch_size", "seconds"})
    order = ["ms_per_step", "time_vs_full", "energy_distance", "vs_full"]
    keys = order + [k for k in keys if k not in order]
    head = "| problem | N | batch | " + " | ".join(keys) + " |"
    rule = "|---|---:|---:|" + "---:|" * len(keys)
    lines = [head, rule]
    for r in rows:
        cells = [
            f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k) or "-") for k in keys
        ]
        batch = r["batch_size"] if r["batch_size"] is not None else "full"
        lines.append(f"| {r['problem']} | {r['N']} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = _common.parser(__doc__, quick="N = 2 000, 100 steps")
    parser.add_argument(
        "--batch-sizes",
        nargs="+",
        default=None,
        help="batch sizes to run: 'full' (None), 'auto' or integers; the first must be full",
    )
    args = parser.parse_args(argv)
    n, n_steps = (2000, 100) if args.quick else (20000, 300)
    batch_sizes = [None, "auto", 5000, 2000, 500, 100] if not args.quick else [None, 500, 100]
    if args.batch_sizes:
        batch_sizes = [_batch(b) for b in args.batch_sizes]
    rows = []
    for problem in (mixture_problem(n), gaussian_problem(n)):
        rows += run(problem, n, batch_sizes, n_steps)
    text = (
        f"`python benchmarks/{' '.join(['bench_batch_size.py', *(argv or sys.argv[1:])])}` "
        f"({_common.now()}, {_common.machine_line()}), {n_steps} steps, "
        f"energy distance on {EVAL_ROWS} rows.\n\n{table(rows)}\n"
    )
    print("\n" + text)
    suffix = "" if not args.batch_sizes else "_" + "_".join(args.batch_sizes)
    stem = _common.result_stem("bench_batch_size", args.quick, suffix)
    _common.write_results(stem, {"n_steps": n_steps, "rows": rows}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
