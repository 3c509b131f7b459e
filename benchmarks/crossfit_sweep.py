"""Cross-fitted KL at L = 10 per seed, against the exact log density ratio on the same draws.

The engine's ``cross_fit_divergence`` (5 folds, spectral-ReLU critic, learning rate 5e-4,
critic seed 0) on the data of ``bench_lipschitz.gaussians`` (400 rows a side, means 1.5
apart, closed-form KL 1.125), and, with ``--same``, on two samples of one distribution.
``oracle`` is the KL objective of the exact log density ratio on all rows of the same draw:
what an estimate that knew the answer would give on that sample.  ``--population N`` also
evaluates each fold's trained critic (capped, with its shift) on N fresh rows of each
distribution: ``pop`` is the mean of those values, the expectation of the estimate given the
trained critics, free of the held-out rows' noise; ``best_shift`` the same critics with the
shift optimal on the fresh rows (the part lost to the shift).  ``--ladder 1.0``,
``--no-clip`` and ``--no-linear`` switch off the ladder of bounds, the cap and the linear
part of the critic (``--no-linear``: the estimator of branch crossfit-3); ``--no-test``
switches off the linearity test that decides how far a network must beat the linear critic
(the selection rule of branch crossfit-4; the test of the slope itself stays).
``--case quadratic``: P = N(0, I / 2) against Q = N(e_1, I) instead, whose log density
ratio is quadratic (closed-form KL ``(d ln 2 - d / 2 + 1) / 2``, 1.466 in 10 dimensions);
``--case bimodal``: P bimodal along e_1 with Q's mean and variance against Q = N(0, I) (KL
0.475, by quadrature), a log ratio that no quadratic shows.

Torch runs on ``--threads`` threads (default 1): on the shared 2-core machine, two threads
made every small operation wait for a busy core (``torch.exp`` of 5 000 numbers took 11 ms
instead of 3 us) and a draw took 321 s instead of 43 s.

Run: ``python benchmarks/crossfit_sweep.py --dims 2,3,5,10 --seeds 0,1,2,3,4 [--same]
[--population 20000] [--case quadratic|bimodal]``; prints one line per draw and a summary
per dimension (``benchmarks/results/crossfit_sweep.log`` holds the runs quoted in
``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from bench_lipschitz import SHIFT, gaussians

from sklearn_gpa._engine import estimate


class Translation:
    """N(0, I) against N(SHIFT e_1, I): the data of ``bench_lipschitz.gaussians``."""

    def sample(self, d, n, seed):
        return gaussians(d, n, seed)

    def truth(self, d):
        return SHIFT**2 / 2

    def second_p(self, d, n, seed):
        """Another sample of P's distribution."""
        return gaussians(d, n, seed, shift=0.0)[1]

    def log_ratio(self, x):
        return -SHIFT * x[:, 0] + SHIFT**2 / 2


class Quadratic:
    """N(0, I / 2) against N(e_1, I): a quadratic log density ratio."""

    def sample(self, d, n, seed):
        rng = np.random.default_rng(seed)
        return np.sqrt(0.5) * rng.normal(size=(n, d)), rng.normal(size=(n, d)) + np.eye(d)[0]

    def truth(self, d):
        return (d * np.log(2.0) - d / 2 + 1.0) / 2

    def second_p(self, d, n, seed):
        return self.sample(d, n, seed)[0]

    def log_ratio(self, x):
        shifted = x - np.eye(x.shape[1])[0]
        return -(x**2).sum(1) + (shifted**2).sum(1) / 2 + x.shape[1] * np.log(2.0) / 2


class Bimodal:
    """P bimodal along e_1 (+-0.95 plus N(0, 0.312^2): Q's mean and variance) against N(0, I)."""

    CENTRES, SPREAD = 0.95, 0.312

    def sample(self, d, n, seed):
        rng = np.random.default_rng(seed)
        P = rng.normal(size=(n, d))
        P[:, 0] = rng.choice([-self.CENTRES, self.CENTRES], n) + self.SPREAD * P[:, 0]
        return P, rng.normal(size=(n, d))

    def truth(self, d):
        x = np.linspace(-8.0, 8.0, 160001)
        p = np.exp(self.log_p(x))
        return float(np.sum(p * (self.log_p(x) + x**2 / 2 + np.log(2 * np.pi) / 2)) * (x[1] - x[0]))

    def log_p(self, x):
        a = -((x[:, None] - [self.CENTRES, -self.CENTRES]) ** 2) / (2 * self.SPREAD**2)
        return np.logaddexp(a[:, 0], a[:, 1]) - np.log(2 * self.SPREAD * np.sqrt(2 * np.pi))

    def log_ratio(self, x):
        return self.log_p(x[:, 0]) + x[:, 0] ** 2 / 2 + np.log(2 * np.pi) / 2

    def second_p(self, d, n, seed):
        return self.sample(d, n, seed)[0]


CASES = {"translation": Translation(), "quadratic": Quadratic(), "bimodal": Bimodal()}


def oracle(P, Q, case=CASES["translation"]):
    """The KL objective of the exact log density ratio on the rows (its optimal critic)."""
    return float(case.log_ratio(P).mean() - np.exp(case.log_ratio(Q)).mean() + 1.0)


class Population:
    """Wraps the engine's held-out evaluation to also evaluate the critics on fresh rows."""

    def __init__(self, n_rows, case):
        self.n_rows, self.case, self.last, self.enabled = n_rows, case, None, True
        self.original = estimate._held_out_terms
        estimate._held_out_terms = self

    def __call__(self, critic_on, divergence, train, held_out, shift_q, clip):
        terms = self.original(critic_on, divergence, train, held_out, shift_q, clip)
        if not self.enabled:
            return terms
        n_folds, d = len(held_out[0]), held_out[0][0].shape[1]
        P, Q = self.case.sample(d, self.n_rows, 12345)
        fresh = ([P] * n_folds, [Q] * n_folds)
        t_p, t_q = self.original(critic_on, divergence, train, fresh, shift_q, clip)
        best_p, best_q = self.original(critic_on, divergence, train, fresh, fresh[1], clip)
        self.last = ((t_p.mean(1) + t_q.mean(1)).mean(), (best_p.mean(1) + best_q.mean(1)).mean())
        return terms


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="2,3,5,10")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--same", action="store_true")
    parser.add_argument("--ladder", default=None, help="comma-separated rungs, e.g. 1.0")
    parser.add_argument("--no-clip", action="store_true")
    parser.add_argument("--no-linear", action="store_true", help="no linear part (crossfit-3)")
    parser.add_argument("--no-test", action="store_true", help="no linearity test (crossfit-4)")
    parser.add_argument("--case", choices=sorted(CASES), default="translation")
    parser.add_argument("--population", type=int, default=0, help="fresh rows (0: off)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.no_test:
        estimate._LINEARITY_LEVEL = math.inf  # no p-value reaches it: never linear-only
    case = CASES[args.case]
    options = dict(clip=not args.no_clip, linear=not args.no_linear)
    if args.ladder is not None:
        options["ladder"] = tuple(float(c) for c in args.ladder.split(","))
    settings = dict(f="kl", L=10.0, learning_rate=5e-4, seed=0, device="cpu")
    population = Population(args.population, case) if args.population else None
    for d in (int(v) for v in args.dims.split(",")):
        truth = case.truth(d)
        values, pops, oracles, seconds = [], [], [], 0.0
        for seed in (int(v) for v in args.seeds.split(",")):
            P, Q = case.sample(d, 400, seed)
            start = time.perf_counter()
            r = estimate.cross_fit_divergence(P, Q, n_folds=5, **options, **settings)
            seconds += time.perf_counter() - start
            values.append(r.value)
            oracles.append(oracle(P, Q, case))
            line = (
                f"d={d} seed={seed} kl={r.value:.3f}+-{r.std_error:.3f} "
                f"rel={r.value / truth - 1:+.3f} oracle={oracles[-1]:.3f}"
            )
            if population is not None:
                pop, best = population.last
                pops.append(pop)
                line += f" pop={pop:.3f} best_shift={best:.3f}"
            line += f" {time.perf_counter() - start:.0f}s"
            if args.same:
                S = case.second_p(d, 400, seed + 100)
                if population is not None:
                    population.enabled = False  # fresh rows of P and Q mean nothing here
                z = estimate.cross_fit_divergence(P, S, n_folds=5, **options, **settings)
                if population is not None:
                    population.enabled = True
                # A standard error of 0: every fold's critic is constant (its slope shrunk to 0).
                ratio = f"{z.value / z.std_error:+.2f}" if z.std_error > 0 else "n/a"
                line += f" same={z.value:.3f}+-{z.std_error:.3f} z={ratio}"
            print(line, flush=True)
        spread = np.std(values, ddof=min(1, len(values) - 1))
        summary = (
            f"# d={d} draws={len(values)} mean={np.mean(values):.3f} "
            f"sem={spread / np.sqrt(len(values)):.3f} "
            f"rel={np.mean(values) / truth - 1:+.3f} sd={spread:.3f} "
            f"oracle_mean={np.mean(oracles):.3f} "
            f"min={min(values):.3f} max={max(values):.3f} estimator_s={seconds:.0f}"
        )
        if pops:
            summary += f" pop_rel={np.mean(pops) / truth - 1:+.3f}"
        print(summary, flush=True)


if __name__ == "__main__":
    main()
