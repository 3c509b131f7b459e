"""Cross-fitted KL at L = 10 per seed, against the exact log density ratio on the same draws.

The engine's ``cross_fit_divergence`` (5 folds, spectral-ReLU critic, learning rate 5e-4,
critic seed 0) on the data of ``bench_lipschitz.gaussians`` (400 rows a side, means 1.5
apart, closed-form KL 1.125), and, with ``--same``, on two samples of one distribution.
``oracle`` is the KL objective of the exact log density ratio on all rows of the same draw:
what an estimate that knew the answer would give on that sample.  ``--ladder 1.0`` and
``--no-clip`` switch off the ladder of bounds and the cap; ``--members 1,3`` runs each draw
with committees of one and of three members per fold (the default), in this order, so that
values and times compare within one process.

Torch runs on ``--threads`` threads (default 1): on the shared 2-core machine, two threads
made every small operation wait for a busy core (``torch.exp`` of 5 000 numbers took 11 ms
instead of 3 us) and a draw took 321 s instead of 43 s.

Run: ``python benchmarks/crossfit_sweep.py --dims 2,3,5,10 --seeds 0,1,2,3,4 [--same]``;
prints one line per draw (``benchmarks/results/crossfit_sweep.log`` holds the runs quoted in
``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_lipschitz import SHIFT, gaussians

from sklearn_gpa._engine import estimate


def oracle(P, Q):
    log_ratio = lambda x: -SHIFT * x[:, 0] + SHIFT**2 / 2  # noqa: E731
    return float(log_ratio(P).mean() - np.exp(log_ratio(Q)).mean() + 1.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="2,3,5,10")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--same", action="store_true")
    parser.add_argument("--ladder", default=None, help="comma-separated rungs, e.g. 1.0")
    parser.add_argument("--no-clip", action="store_true")
    parser.add_argument("--members", default="3", help="committee sizes, e.g. 1,3")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    options = dict(clip=not args.no_clip)
    if args.ladder is not None:
        options["ladder"] = tuple(float(c) for c in args.ladder.split(","))
    settings = dict(f="kl", L=10.0, learning_rate=5e-4, seed=0, device="cpu")
    truth = SHIFT**2 / 2
    for d in (int(v) for v in args.dims.split(",")):
        for seed in (int(v) for v in args.seeds.split(",")):
            for members in (int(v) for v in args.members.split(",")):
                run = dict(options, n_members=members)
                P, Q = gaussians(d, 400, seed)
                start = time.perf_counter()
                r = estimate.cross_fit_divergence(P, Q, n_folds=5, **run, **settings)
                line = (
                    f"members={members} d={d} seed={seed} kl={r.value:.3f}+-{r.std_error:.3f} "
                    f"rel={r.value / truth - 1:+.3f} oracle={oracle(P, Q):.3f}"
                )
                if args.same:
                    S = gaussians(d, 400, seed + 100, shift=0.0)[1]
                    z = estimate.cross_fit_divergence(P, S, n_folds=5, **run, **settings)
                    line += f" same={z.value:.3f}+-{z.std_error:.3f} z={z.value / z.std_error:+.2f}"
                print(line + f" {time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
