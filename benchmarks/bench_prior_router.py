"""Routing by the prior: the Bayes rule of the flows' starting law against the class router.

A ``GPATransporter`` with several flows sends rows given to ``transform`` without ``y`` to a
flow.  Until issue 18 every fit trained ``baselines.class_router`` (a cross-validated choice
between a 5-nearest-neighbour vote and a ridge classifier) on the flows' starting points, also
in generation, where they are prior draws, and inside ``GPAAugmenter``, which never routes.
Now a fit whose starting points come from a fitted prior (``source="copula_fit"`` /
``"mixture_fit"`` / ``"gaussian_fit"``, and ``GPAAugmenter``'s draws) routes by that prior (a
copula by the Gaussian of its rows' values): the flow whose prior density times its share of
the particles is highest (``sklearn_gpa/_routing.py``).  The old rule is kept here only
(``old_rule``), installed for the comparison.

Part 1, routing (generation, ``fit(X_train, y_train)``, a stratified half of each data set held
out): per data set and prior, agreement of the two routers on the held-out rows, each one's
accuracy against the rows' true class, and the end result: the held-out rows moved by
``transform`` (replayed through the flow each router picks), classified by a 5-nearest-neighbour
vote of the training rows; the class router's fit time, and the fitted estimator's pickled
size with each router (the prior router adds nothing: it refers to ``prior_``).

Part 2, fit time, both rules in one process, interleaved, the order alternating (medians of
``--repeats``): ``GPAAugmenter(random_state=0).fit_resample`` on ``bench_augment.py --quick``'s
data sets (standardised) and its 1,000-row ``make_classification`` problem, and a default
generation fit of wine shortened to 100 steps.

Run: ``python benchmarks/bench_prior_router.py [--repeats 5]``.  Writes
``results/bench_prior_router.{json,md}``.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import warnings

import _common
import numpy as np
from bench_augment import QUICK, load_dataset
from sklearn.datasets import (
    load_breast_cancer,
    load_digits,
    load_iris,
    load_wine,
    make_classification,
    make_moons,
)
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from sklearn_gpa import GPATransporter
from sklearn_gpa._fitted_flow import FittedFlowMixin, flow_router
from sklearn_gpa.augment import GPAAugmenter


def routing_problems():
    moons, moon_labels = make_moons(600, noise=0.25, random_state=0)
    wide, wide_labels = make_classification(
        900, 20, n_informative=8, n_classes=3, n_clusters_per_class=2, random_state=0
    )
    yield "iris (150 x 4, 3 classes)", *load_iris(return_X_y=True)
    yield "wine (178 x 13, 3 classes)", *load_wine(return_X_y=True)
    yield "breast cancer (569 x 30, 2 classes)", *load_breast_cancer(return_X_y=True)
    yield "digits (1797 x 64, 10 classes)", *load_digits(return_X_y=True)
    yield "two moons (600 x 2, noise 0.25)", moons, moon_labels
    yield "make_classification (900 x 20, 3 classes)", wide, wide_labels


@contextlib.contextmanager
def old_rule():
    """The rule before issue 18: a class router fitted on the starting points, always."""

    def fit_router(self, starts):
        self.__dict__.pop("_source_law", None)
        return flow_router(starts)

    saved = FittedFlowMixin._fit_router
    FittedFlowMixin._fit_router = fit_router
    try:
        yield
    finally:
        FittedFlowMixin._fit_router = saved


def fit_recording_starts(estimator, X, y):
    """Fit, and return the standardised starting points of the flows."""
    recorded = {}
    starting_points = estimator._starting_points

    def record(*args, **kwargs):
        recorded["starts"] = starting_points(*args, **kwargs)
        return recorded["starts"]

    estimator._starting_points = record
    try:
        estimator.fit(X, y)
    finally:
        del estimator._starting_points
    return recorded["starts"]


def routing_row(name, X, y, source, n_steps):
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.5, stratify=y, random_state=0
    )
    gpa = GPATransporter(source=source, n_steps=n_steps, random_state=0)
    starts = fit_recording_starts(gpa, X_train, y_train)
    old, old_fit_s = _common.timed(flow_router, starts)
    Z = gpa._scaling.transform(X_test)
    flows = {"prior": gpa.flow_assigner_.predict(Z), "class router": old.predict(Z)}
    scaler = StandardScaler().fit(X_train)
    vote = KNeighborsClassifier(5).fit(scaler.transform(X_train), y_train)
    row = {"data": name, "source": source, "steps": gpa.n_steps_}
    for key, routed in flows.items():
        moved = gpa._scaling.inverse_transform(gpa._replay(Z, routed))
        row[f"{key} accuracy"] = float(np.mean(gpa.classes_[routed] == y_test))
        row[f"{key} end accuracy"] = float(np.mean(vote.predict(scaler.transform(moved)) == y_test))
    row["agreement"] = float(np.mean(flows["prior"] == flows["class router"]))
    row["class router"] = type(old).__name__
    row["class router fit s"] = old_fit_s
    row["prior router model kB"] = len(pickle.dumps(gpa)) / 1e3
    gpa.flow_assigner_ = old
    row["class router model kB"] = len(pickle.dumps(gpa)) / 1e3
    return row


def timing_cases():
    for name in QUICK:
        data = load_dataset(name)
        if data is None:
            continue
        X, y = data
        X = StandardScaler().fit_transform(X)
        yield f"GPAAugmenter.fit_resample, {name} {X.shape}", _augment(X, y)
    X, y = make_classification(
        1000, 20, n_informative=10, n_classes=3, weights=[0.7, 0.2, 0.1], random_state=0
    )
    yield "GPAAugmenter.fit_resample, make_classification (1000, 20)", _augment(X, y)
    Xw, yw = load_wine(return_X_y=True)
    yield (
        "GPATransporter(n_steps=100).fit(X, y), wine (178, 13)",
        lambda: GPATransporter(n_steps=100, random_state=0).fit(Xw, yw),
    )


def _augment(X, y):
    return lambda: GPAAugmenter(random_state=0).fit_resample(X, y)


def _under_old_rule(fn):
    with old_rule():
        fn()


def main(argv=None):
    parser = _common.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-steps", type=int, default=200)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    routing = []
    for name, X, y in routing_problems():
        for source in ("copula_fit", "mixture_fit", "gaussian_fit"):
            row = routing_row(name, X, y, source, args.n_steps)
            routing.append(row)
            print(row, flush=True)
    timing = []
    for name, fn in timing_cases():
        fn()  # warm-up
        times = _common.interleaved(
            {"new": fn, "old": lambda fn=fn: _under_old_rule(fn)}, args.repeats, alternate=True
        )
        median = _common.medians(times)
        row = {"fit": name, "new_s": median["new"], "old_s": median["old"], **times}
        row["saved"] = 1 - median["new"] / median["old"]
        timing.append(row)
        print(row, flush=True)
    columns = [
        ("data", "data", None),
        ("prior", "source", None),
        ("steps", "steps", None),
        ("agreement", "agreement", "{:.3f}"),
        ("routed right: prior", "prior accuracy", "{:.3f}"),
        ("class router", "class router accuracy", "{:.3f}"),
        ("end class right: prior", "prior end accuracy", "{:.3f}"),
        ("class router", "class router end accuracy", "{:.3f}"),
        ("class router (its fit s)", "class router", None),
        ("fit s", "class router fit s", "{:.3f}"),
        ("pickled model kB: prior", "prior router model kB", "{:.1f}"),
        ("class router", "class router model kB", "{:.1f}"),
    ]
    time_columns = [
        ("fit", "fit", None),
        ("prior router s (median)", "new_s", "{:.3f}"),
        ("class router s (median)", "old_s", "{:.3f}"),
        ("time saved", "saved", "{:.0%}"),
    ]
    text = (
        f"`{_common.command()}` ({_common.now()}, {_common.machine_line()})\n\n"
        f"{_common.grouped_table(routing, columns, group='data')}\n\n"
        f"Fit times, medians of {args.repeats} interleaved runs of each rule:\n\n"
        f"{_common.grouped_table(timing, time_columns)}\n"
    )
    print("\n" + text)
    _common.write_results(
        "bench_prior_router",
        {"command": _common.command(), "routing": routing, "timing": timing},
        text,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
