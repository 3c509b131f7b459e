"""Tight (GroupSort) against spectral-ReLU critics: W1 limit, cross-fitted KL, flows.

1. At L = 0.01, D_L / L against the population W1 (Gaussians differing by a translation
   of length 1.5) and the exact empirical W1 (POT ``emd2``, Euclidean cost), 400 rows a
   side, in 2, 3 and 10 dimensions.
2. Cross-fitted KL at L = 10 (5 folds, learning rate 5e-4) against the closed form
   |shift|^2 / 2 = 1.125, and for two samples of one distribution (0), 400 rows a side,
   five seeds (one with --quick).
3. The four-well problem with GPATransporter (default parameters but the activation):
   fraction of particles within 1.5 of a well, each well's share, time per step.
4. Model selection with a known answer: GridSearchCV over GPATransporter's n_steps, scored
   by LipschitzFDivergence, on a target 3.0 away from the source.  A particle moves at most
   L * dt = 0.1 per step, so the smallest grid value that can reach the target is known
   (60 of 5, 15, 60, 240); the search should pick it.

Run: ``python benchmarks/bench_lipschitz.py [--quick]``; writes
``benchmarks/results/bench_lipschitz[_quick].{json,md}``.
"""

from __future__ import annotations

import time

import _common
import numpy as np
import sklearn
from sklearn.model_selection import GridSearchCV

from sklearn_gpa import GPATransporter
from sklearn_gpa.metrics import LipschitzFDivergence, lipschitz_f_divergence, wasserstein1
from sklearn_gpa.model_selection import DomainStratifiedKFold

NETWORKS = ("relu", "groupsort")
SHIFT = 1.5


def gaussians(d, n, seed, shift=SHIFT):
    rng = np.random.default_rng(seed)
    offset = np.zeros(d)
    offset[0] = shift
    return rng.normal(size=(n, d)), rng.normal(size=(n, d)) + offset


def w1_rows(dims, seeds, n=400, L=0.01):
    rows = []
    for d in dims:
        for seed in seeds:
            P, Q = gaussians(d, n, seed)
            empirical = wasserstein1(P, Q)
            for net in NETWORKS:
                start = time.perf_counter()
                ratio = lipschitz_f_divergence(P, Q, L=L, activation=net, random_state=0) / L
                rows.append(
                    dict(
                        d=d,
                        seed=seed,
                        network=net,
                        ratio=ratio,
                        empirical_w1=empirical,
                        vs_population=ratio / SHIFT,
                        vs_empirical=ratio / empirical,
                        seconds=time.perf_counter() - start,
                    )
                )
                print(
                    f"W1 d={d:2d} seed={seed} {net:9s} D/L={ratio:.3f} emp={empirical:.3f} "
                    f"pop={SHIFT} ratio/pop={ratio / SHIFT:.3f} ratio/emp={ratio / empirical:.3f}"
                )
    return rows


def kl_rows(dims, seeds, n=400, L=10.0):
    rows = []
    for d in dims:
        for seed in seeds:
            P, Q = gaussians(d, n, seed)
            same = gaussians(d, n, seed + 100, shift=0.0)[1]
            for net in NETWORKS:
                kw = dict(
                    L=L,
                    activation=net,
                    cross_fit=5,
                    return_std=True,
                    learning_rate=5e-4,
                    random_state=0,
                )
                start = time.perf_counter()
                value, se = lipschitz_f_divergence(P, Q, **kw)
                zero, zero_se = lipschitz_f_divergence(P, same, **kw)
                in_sample = lipschitz_f_divergence(P, Q, L=L, activation=net, random_state=0)
                truth = SHIFT**2 / 2
                rows.append(
                    dict(
                        d=d,
                        seed=seed,
                        network=net,
                        cross_fit=value,
                        std_error=se,
                        relative_error=value / truth - 1,
                        in_sample=in_sample,
                        same=zero,
                        same_std_error=zero_se,
                        seconds=time.perf_counter() - start,
                    )
                )
                print(
                    f"KL d={d:2d} seed={seed} {net:9s} cross-fit={value:.3f}+-{se:.3f} "
                    f"(truth {truth}) in-sample={in_sample:.3f} same={zero:.3f}+-{zero_se:.3f}"
                )
    return rows


def four_wells(n=300, seed=0):
    rng = np.random.default_rng(seed)
    wells = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0]])
    target = wells[rng.integers(0, 4, n)] + 0.5 * rng.normal(size=(n, 2))
    source = np.array([-12.0, 4.0]) + 0.5 * rng.normal(size=(n, 2))
    return source, target, wells


def flow_rows(seeds, n_steps=None):
    rows = []
    for seed in seeds:
        source, target, wells = four_wells(seed=seed)
        X = np.vstack([source, target])
        sample_domain = np.repeat([1, -2], len(source))
        for net in NETWORKS:
            params = dict(activation=net, random_state=seed)
            if n_steps is not None:
                params["n_steps"] = n_steps
            gpa = GPATransporter(**params)
            _, seconds = _common.timed(gpa.fit, X, sample_domain=sample_domain)
            moved = gpa.transform(source, sample_domain=np.ones(len(source), dtype=int))
            distance = np.linalg.norm(moved[:, None] - wells[None], axis=-1)
            near = distance.min(1) < 1.5
            shares = [float(np.mean(near & (distance.argmin(1) == k))) for k in range(4)]
            steps = gpa.get_params()["n_steps"]
            rows.append(
                dict(
                    seed=seed,
                    network=net,
                    within_1_5=float(near.mean()),
                    well_shares=shares,
                    seconds=seconds,
                    ms_per_step=1000 * seconds / steps,
                    n_steps=steps,
                )
            )
            print(
                f"wells seed={seed} {net:9s} within 1.5: {near.mean():.3f} shares "
                f"{np.round(shares, 3)} {1000 * seconds / steps:.1f} ms/step"
            )
    return rows


def selection_rows(seeds, n=100, distance=3.0, grid=(5, 15, 60, 240)):
    rows = []
    reach = distance / (10.0 * 0.01)  # steps at the top speed L * dt of the defaults
    right = min(g for g in grid if g >= reach)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        X = np.vstack([rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) + [distance, 0.0]])
        sample_domain = np.repeat([1, -2], n)
        for cross_fit in (None, 5):
            search = GridSearchCV(
                GPATransporter(random_state=seed),
                {"n_steps": list(grid)},
                scoring=LipschitzFDivergence(cross_fit=cross_fit),
                cv=DomainStratifiedKFold(2, shuffle=True, random_state=seed),
                error_score="raise",
            )
            start = time.perf_counter()
            with sklearn.config_context(enable_metadata_routing=True):
                search.fit(X, sample_domain=sample_domain)
            picked = search.best_params_["n_steps"]
            scores = search.cv_results_["mean_test_score"]
            rows.append(
                dict(
                    seed=seed,
                    scorer="in-sample" if cross_fit is None else f"cross_fit={cross_fit}",
                    picked=picked,
                    right=right,
                    correct=float(picked == right),
                    scores=[float(v) for v in scores],
                    seconds=time.perf_counter() - start,
                )
            )
            print(
                f"selection seed={seed} cross_fit={cross_fit} picked n_steps={picked} "
                f"(right {right}) scores {np.round(scores, 3)}"
            )
    return rows


def summarise(rows, keys, group=("d", "network")):
    table = {}
    for row in rows:
        table.setdefault(tuple(row[g] for g in group if g in row), []).append(row)
    return [
        {
            **dict(zip([g for g in group if g in rows[0]], k)),
            **{key: float(np.mean([r[key] for r in v])) for key in keys},
        }
        for k, v in table.items()
    ]


def markdown(title, rows, keys):
    header = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    body = "".join(
        "| "
        + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys)
        + " |\n"
        for r in rows
    )
    return f"### {title}\n\n{header}{body}\n"


def main(argv=None):
    parser = _common.parser(__doc__, quick="one seed, fewer dimensions")
    args = parser.parse_args(argv)
    seeds = (0,) if args.quick else (0, 1)
    start = time.perf_counter()
    w1 = w1_rows((2, 3, 10), seeds)
    kl = kl_rows((2, 10) if args.quick else (2, 3, 5, 10), seeds if args.quick else range(5))
    flows = flow_rows(seeds, n_steps=100 if args.quick else None)
    selection = selection_rows(seeds)
    w1_table = summarise(w1, ("ratio", "empirical_w1", "vs_population", "vs_empirical"))
    kl_table = summarise(
        kl, ("cross_fit", "std_error", "relative_error", "in_sample", "same", "same_std_error")
    )
    flow_table = summarise(flows, ("within_1_5", "ms_per_step"), group=("network",))
    for row, shares in zip(
        flow_table,
        [np.mean([r["well_shares"] for r in flows if r["network"] == net], 0) for net in NETWORKS],
    ):
        row["min_well_share"] = float(min(shares))
    machine = _common.machine_line()
    result = dict(
        seeds=list(seeds),
        seconds=time.perf_counter() - start,
        w1=w1,
        kl=kl,
        flows=flows,
        selection=selection,
        w1_table=w1_table,
        kl_table=kl_table,
        flow_table=flow_table,
    )
    text = (
        f"# bench_lipschitz{' --quick' if args.quick else ''}\n\nMachine: {machine}; "
        f"seeds {list(seeds)} (means); {result['seconds']:.0f} s.\n\n"
        + markdown(
            "D_L / L at L = 0.01 (population W1 = 1.5)",
            w1_table,
            ("d", "network", "ratio", "empirical_w1", "vs_population", "vs_empirical"),
        )
        + markdown(
            "Cross-fitted KL at L = 10 (5 folds; truth 1.125; same distribution: 0)",
            kl_table,
            (
                "d",
                "network",
                "cross_fit",
                "std_error",
                "relative_error",
                "in_sample",
                "same",
                "same_std_error",
            ),
        )
        + markdown(
            "Four wells (GPATransporter defaults but activation)",
            flow_table,
            ("network", "within_1_5", "min_well_share", "ms_per_step"),
        )
    )
    text += "### Model selection: GridSearchCV over n_steps (right answer 60)\n\n"
    text += "| seed | scorer | picked | scores (5, 15, 60, 240) |\n|---|---|---|---|\n"
    text += "".join(
        f"| {r['seed']} | {r['scorer']} | {r['picked']} | "
        + ", ".join(f"{v:.3f}" for v in r["scores"])
        + " |\n"
        for r in selection
    )
    _common.write_results(_common.result_stem("bench_lipschitz", args.quick), result, text)
    print(text)


if __name__ == "__main__":
    main()
