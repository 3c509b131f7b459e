"""The default of LipschitzFDivergence's cross_fit: model selection with known answers, and cost.

Part 1 runs ``GridSearchCV`` with one ``LipschitzFDivergence`` per setting of ``cross_fit``
(None: in-sample; 2, 3, 5 folds; and ``cf3/500``, 3 folds with ``n_iter=500``; the scorer's
other parameters at their defaults) as the
metrics of one multi-metric search (``refit=False``: every candidate is fitted once per split
and scored by every scorer), on problems whose right answer is known:

* ``n_steps``: ``GPATransporter(prealign=None)`` over ``n_steps`` in (5, 15, 60, 240), 100
  rows a side in 2-D, the target 3.0 away (the problem of
  ``tests/test_metrics.py::test_grid_search_picks_the_smallest_n_steps_that_reaches_the_target``):
  60 is the smallest value that reaches the target, and 240 stops at the same or a nearby
  step under ``stop="auto"``; right: 60 or 240 (the test asks for 60, the first of equal
  scores).
* ``L``: ``GPATransporter(prealign=None, n_steps=60)`` over ``L`` in (1, 1.5, 5, 10), 100 rows
  a side in 2-D, the target 4.0 away.  Fitted on the 50 rows a side of a split, the moved
  mean stops 1.7-1.9 short of the target at ``L = 1`` and 0.7-1.0 short at ``L = 1.5``; 5
  and 10 reach it; right: 5 or 10.
* ``shift``: a transformer adding a shift, over (0, 1, 2, 3), 150 rows a side in 1-D, the
  target 2 away (``tests/test_metrics.py::test_grid_search_with_routing_finds_the_right_shift``);
  right: 2.
* ``copy``: generative fits of 5-D Gaussian rows (200 rows; 3-fold ``KFold``) whose
  ``sample`` returns ``"fresh"``: draws from the Gaussian fitted to the training rows,
  ``"copy"``: the training rows themselves (particles that landed on them), ``"wide"``:
  the fitted Gaussian with 1.5 times the spread.  Scored on held-out rows, fresh and copy are
  both right (training rows are draws of the distribution too).  ``copy (on training rows)``
  scores the three fitted on all rows on those same rows, as a generation benchmark that
  scores its samples on the rows it trained on would: there the copy is over-fitting;
  right: fresh.  Equal scores go to the first candidate of the grid (fresh).

For each: the candidate each scorer picks, the mean test scores, and the mean standard error
of the cross-fitted scores (over the splits).  Part 2 times one score per setting, in one
process, on Gaussians 0.5 apart (200 and 1000 rows a side, 2, 10 and 50 features).

The cross-fitted estimate trains several networks as one batch (folds x 3 bounds), enough
work for the engine to take torch's own number of threads where the in-sample estimate
takes one; on a busy machine those threads wait for each other (a 200-row 1-D score: 0.9 s
on one thread, 15 s on two, measured while other jobs ran).  ``--threads 1`` times both on
one thread.

Run: ``python benchmarks/bench_scorer_default.py [--quick] [--seeds 0,1,2] [--threads N]
[--no-cost | --no-selection]``; writes ``benchmarks/results/bench_scorer_default.md`` (and
``.json``; ``_cost`` for ``--no-selection``, ``_threadsN`` with ``--threads``).
"""

from __future__ import annotations

import time
import warnings

import _common
import numpy as np
import sklearn
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import GridSearchCV, KFold

from sklearn_gpa import GPATransporter
from sklearn_gpa.metrics import LipschitzFDivergence, lipschitz_f_divergence
from sklearn_gpa.model_selection import DomainStratifiedKFold

#: The scorers compared: name -> LipschitzFDivergence's settings.  ``cf3/500``: the 3-fold
#: estimate with its critics' training capped at 500 steps (a cheaper cross-fit).
SCORERS = {
    "in-sample": dict(cross_fit=None),
    "cf2": dict(cross_fit=2),
    "cf3": dict(cross_fit=3),
    "cf5": dict(cross_fit=5),
    "cf3/500": dict(cross_fit=3, n_iter=500),
}


class Recording(LipschitzFDivergence):
    """The scorer, recording each call's parameter value, score, standard error and time."""

    def __init__(self, param, **kwargs):
        super().__init__(**kwargs)
        self.param = param
        self.calls = []

    def __call__(self, estimator, X, y=None, *, sample_domain=None):
        start = time.perf_counter()
        if self.cross_fit is None:
            value, error = self.divergence(estimator, X, sample_domain=sample_domain), np.nan
        else:
            value, error = self.divergence(
                estimator, X, sample_domain=sample_domain, return_std=True
            )
        seconds = time.perf_counter() - start
        self.calls.append((estimator.get_params()[self.param], -value, error, seconds))
        return -value


class ShiftTransporter(TransformerMixin, BaseEstimator):
    """Adds ``shift`` to the first feature of the source rows."""

    __metadata_request__fit = {"sample_domain": True}
    __metadata_request__transform = {"sample_domain": True}

    def __init__(self, shift=0.0):
        self.shift = shift

    def fit(self, X, y=None, *, sample_domain=None):
        return self

    def transform(self, X, *, sample_domain=None):
        moved = np.array(X, dtype=float)
        moved[np.asarray(sample_domain) >= 0, 0] += self.shift
        return moved


class Sampler(BaseEstimator):
    """A generative fit: ``"copy"`` draws training rows, ``"fresh"`` the fitted Gaussian,
    ``"wide"`` the fitted Gaussian with 1.5 times the spread."""

    def __init__(self, kind="fresh"):
        self.kind = kind

    def fit(self, X, y=None):
        self.rows_ = np.asarray(X, dtype=float)
        self.mean_ = self.rows_.mean(0)
        self.cov_ = np.cov(self.rows_, rowvar=False)
        return self

    def sample(self, n_samples, random_state=None):
        rng = np.random.default_rng(random_state)
        if self.kind == "copy":
            # Distinct training rows while they last (the trained particles themselves).
            n_rows = len(self.rows_)
            rounds = -(-n_samples // n_rows)
            order = np.concatenate([rng.permutation(n_rows) for _ in range(rounds)])
            return self.rows_[order[:n_samples]]
        spread = 1.5 if self.kind == "wide" else 1.0
        return rng.multivariate_normal(self.mean_, spread**2 * self.cov_, size=n_samples)


def two_domains(n, d, distance, seed):
    rng = np.random.default_rng(seed)
    offset = np.zeros(d)
    offset[0] = distance
    X = np.vstack([rng.normal(size=(n, d)), rng.normal(size=(n, d)) + offset])
    return X, np.repeat([1, -2], n)


def cases():
    """name -> (estimator, param, grid, right answers, data(seed), cv(seed), routed)."""
    return {
        "n_steps": (
            GPATransporter(prealign=None, random_state=0),
            "n_steps",
            [5, 15, 60, 240],
            {60, 240},
            lambda seed: two_domains(100, 2, 3.0, seed),
            lambda seed: DomainStratifiedKFold(2, shuffle=True, random_state=seed),
        ),
        "L": (
            GPATransporter(prealign=None, random_state=0, n_steps=60),
            "L",
            [1.0, 1.5, 5.0, 10.0],
            {5.0, 10.0},
            lambda seed: two_domains(100, 2, 4.0, seed),
            lambda seed: DomainStratifiedKFold(2, shuffle=True, random_state=seed),
        ),
        "shift": (
            ShiftTransporter(),
            "shift",
            [0.0, 1.0, 2.0, 3.0],
            {2.0},
            lambda seed: two_domains(150, 1, 2.0, seed),
            lambda seed: KFold(3, shuffle=True, random_state=seed),
        ),
        "copy": (
            Sampler(),
            "kind",
            ["fresh", "copy", "wide"],
            {"fresh", "copy"},
            lambda seed: (gaussian_rows(200, 5, seed), None),
            lambda seed: KFold(3, shuffle=True, random_state=seed),
        ),
    }


def gaussian_rows(n, d, seed):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    return rng.normal(size=(n, d)) @ mixing


def summary(name, seed, scorer_name, scorer, grid, right, fit_seconds):
    """One row: what ``scorer`` picked from its recorded calls (the first of equal means)."""
    calls = scorer.calls
    means = [np.mean([c[1] for c in calls if c[0] == g]) for g in grid]
    errors = [np.mean([c[2] for c in calls if c[0] == g]) for g in grid]
    picked = grid[int(np.argmax(means))]
    return dict(
        case=name,
        seed=seed,
        scorer=scorer_name,
        picked=picked,
        right=picked in right,
        scores=[float(m) for m in means],
        std_errors=[float(e) for e in errors],
        seconds_per_score=float(np.mean([c[3] for c in calls])),
        fit_seconds=fit_seconds,
    )


def selection_rows(seeds, names):
    rows = []
    for name in names:
        estimator, param, grid, right, data, cv = cases()[name]
        for seed in seeds:
            X, sample_domain = data(seed)
            scorers = {k: Recording(param, **v) for k, v in SCORERS.items()}
            search = GridSearchCV(
                estimator,
                {param: grid},
                scoring=scorers,
                refit=False,
                cv=cv(seed),
                error_score="raise",
            )
            with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if sample_domain is None:
                    search.fit(X)
                else:
                    search.fit(X, sample_domain=sample_domain)
            # Seconds to fit one candidate on one split (mean over the grid).
            seconds = float(np.mean(search.cv_results_["mean_fit_time"]))
            for key, scorer in scorers.items():
                rows.append(summary(name, seed, key, scorer, grid, right, seconds))
                print(_line(rows[-1]), flush=True)
            if name == "copy":
                rows += on_training_rows(estimator, param, grid, right, X, seed)
    return rows


def on_training_rows(estimator, param, grid, right, X, seed):
    """The candidates fitted on all of ``X`` and scored on ``X`` itself."""
    rows = []
    fitted = [sklearn.clone(estimator).set_params(**{param: g}).fit(X) for g in grid]
    for key, settings in SCORERS.items():
        scorer = Recording(param, **settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for model in fitted:
                scorer(model, X)
        rows.append(summary("copy (on training rows)", seed, key, scorer, grid, {"fresh"}, 0.0))
        print(_line(rows[-1]), flush=True)
    return rows


def _line(row):
    scores = ", ".join(f"{s:.3f}" for s in row["scores"])
    errors = ", ".join(f"{e:.3f}" for e in row["std_errors"])
    return (
        f"{row['case']} seed={row['seed']} {row['scorer']}: picked {row['picked']} "
        f"({'right' if row['right'] else 'WRONG'}); scores {scores}; s.e. {errors}; "
        f"{row['seconds_per_score']:.2f} s/score, {row['fit_seconds']:.2f} s/fit"
    )


def cost_rows(sizes, repeats=1):
    """Seconds per score of each setting, in turn, on Gaussians 0.5 apart."""
    rows = []
    for n, d in sizes:
        rng = np.random.default_rng(0)
        P, Q = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        Q[:, 0] += 0.5

        def score(settings, P=P, Q=Q):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return lipschitz_f_divergence(P, Q, random_state=0, **settings)

        times = _common.interleaved(
            {k: (lambda v=v: score(v)) for k, v in SCORERS.items()}, repeats
        )
        seconds = _common.medians(times)
        row = dict(n=n, d=d, **{k: seconds[k] for k in SCORERS})
        row.update({f"{k}/in-sample": seconds[k] / seconds["in-sample"] for k in SCORERS})
        rows.append(row)
        print(
            f"cost n={n} d={d}: " + ", ".join(f"{k} {seconds[k]:.2f} s" for k in SCORERS),
            flush=True,
        )
    return rows


def markdown(selection, cost, seeds):
    return (_selection_markdown(selection) if selection else "") + (
        _cost_markdown(cost) if cost else ""
    )


def _selection_markdown(selection):
    text = "## Model selection (the candidate each scorer picks; mean test scores, mean s.e.)\n\n"
    header = [
        "case",
        "seed",
        "scorer",
        "picked",
        "right",
        "scores",
        "std errors",
        "s/score",
        "s/fit",
    ]
    body = [
        [
            r["case"],
            str(r["seed"]),
            r["scorer"],
            str(r["picked"]),
            "yes" if r["right"] else "NO",
            ", ".join(f"{s:.3f}" for s in r["scores"]),
            ", ".join("-" if np.isnan(e) else f"{e:.3f}" for e in r["std_errors"]),
            f"{r['seconds_per_score']:.2f}",
            f"{r['fit_seconds']:.2f}",
        ]
        for r in selection
    ]
    text += _common.markdown_table(header, body) + "\n"
    text += "## Right picks per scorer (all seeds)\n\n"
    names = list(dict.fromkeys(r["case"] for r in selection))
    body = [
        [key]
        + [
            f"{sum(r['right'] for r in selection if r['case'] == c and r['scorer'] == key)}"
            f"/{sum(1 for r in selection if r['case'] == c and r['scorer'] == key)}"
            for c in names
        ]
        for key in SCORERS
    ]
    text += _common.markdown_table(["scorer", *names], body) + "\n"
    return text


def _cost_markdown(cost):
    text = "## Seconds per score (one process, in turn)\n\n"
    header = ["n", "d", *SCORERS, *(f"{k}/in-sample" for k in list(SCORERS)[1:])]
    body = [
        [str(r["n"]), str(r["d"])]
        + [f"{r[k]:.2f}" for k in SCORERS]
        + [f"{r[f'{k}/in-sample']:.1f}" for k in list(SCORERS)[1:]]
        for r in cost
    ]
    text += _common.markdown_table(header, body) + "\n"
    return text


def main(argv=None):
    parser = _common.parser(__doc__, quick="seed 0, the shift and copy cases, 200 rows only")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cases", default="n_steps,L,shift,copy")
    parser.add_argument("--no-cost", action="store_true")
    parser.add_argument("--no-selection", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's own)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    seeds = (0,) if args.quick else tuple(int(s) for s in args.seeds.split(","))
    names = ("shift", "copy") if args.quick else tuple(args.cases.split(","))
    record = _common.run_record()
    selection = [] if args.no_selection else selection_rows(seeds, names)
    sizes = (
        [(200, 2), (200, 10)]
        if args.quick
        else [(200, 2), (200, 10), (200, 50), (1000, 2), (1000, 10), (1000, 50)]
    )
    cost = [] if args.no_cost else cost_rows(sizes)
    text = (
        f"# bench_scorer_default{' --quick' if args.quick else ''}\n\n"
        f"`{record['command']}`; {_common.machine_line()}; {record['date']}.\n\n"
        + markdown(selection, cost, seeds)
    )
    suffix = "_cost" if args.no_selection else ""
    suffix += "" if args.threads is None else f"_threads{args.threads}"
    _common.write_results(
        _common.result_stem("bench_scorer_default", args.quick, suffix),
        dict(record, selection=selection, cost=cost),
        text,
    )
    print(text)


if __name__ == "__main__":
    main()
