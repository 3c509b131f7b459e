"""Cost and stored size of the default ``"copula_fit"`` prior on images, and what a small
default fit stores.

Part 1, the prior (``Prior.fit("copula_fit", ...)`` on every class of MNIST's training images
with 20, 200 and 2000 images per class, and of scikit-learn's 8 x 8 digits with 20 per class;
pixels scaled to [0, 1]).  Above 50 features each class gets a kernel density of its rows'
normal scores, and each feature's distribution function under it is tabulated at 257 scores.
The table is now computed on first use (never pickled): up to 100 rows per class by the
exact mean of the kernels' normal distribution functions at each grid point, as before; above,
by binning the kernel's centres and convolving (an FFT).  The quantile table of more than 1000
rows now comes from one sort.  Both new computations are timed here against the arithmetic they
replace, in the same process: the exact table and ``np.quantile`` at 1000 levels.  The binned
table's largest error against the exact sum is printed.  Sizes: ``pickle.dumps`` of the prior
now, and what the same prior stored before (the tables, float64 centres, full triangular
factors), the difference computed from the same object.

Part 2, what ``pickle.dumps`` of a default ``GPATransporter(random_state=0).fit(X, y)`` holds:
wine (178 x 13) and the 8 x 8 digits with 20 per class (200 x 64, pixels / 16), total and by
attribute.

Run: ``python benchmarks/bench_prior.py [--quick]`` (``--quick``: no 2000-per-class MNIST).
Writes ``results/bench_prior{_quick}.{json,md}``.
"""

from __future__ import annotations

import pickle

import _common
import numpy as np
from sklearn.datasets import load_digits, load_wine

from sklearn_gpa import GPATransporter
from sklearn_gpa._prior import (
    Prior,
    _binned_normal_cdf,
    _exact_normal_cdf,
    _quantile_table,
)

MAX_LEVELS = 1000


def old_extra_bytes(prior):
    """Bytes the prior's pickle had on top of today's: the float64 tables and centres (today
    float32 and not stored) and the zero upper triangles of the factors (today packed)."""
    extra = 0
    for k, kernel in enumerate(prior.kernel):
        if kernel is None:
            continue
        extra += kernel.cdf.nbytes + kernel.centres.nbytes  # float32 -> float64 doubles
        for factor in (kernel.factor, prior.factor[k]):
            if factor.ndim == 2:
                extra += 8 * (factor.size - len(factor) * (len(factor) + 1) // 2)
    return extra


def prior_rows(name, targets):
    prior, fit_seconds = _common.timed(Prior.fit, "copula_fit", targets, 0)
    binned, exact, quantile, sorted_ = 0.0, 0.0, 0.0, 0.0
    error = 0.0
    for k, kernel in enumerate(prior.kernel):
        spreads = kernel.spreads
        table, seconds = _common.timed(_binned_normal_cdf, kernel.centres, spreads)
        binned += seconds
        reference, seconds = _common.timed(_exact_normal_cdf, kernel.centres, spreads)
        exact += seconds
        error = max(error, float(np.abs(table - reference).max()))
        if len(targets[k]) > MAX_LEVELS:
            levels = (np.arange(MAX_LEVELS) + 0.5) / MAX_LEVELS
            quantile += _common.timed(np.quantile, targets[k], levels, axis=0)[1]
            sorted_ += _common.timed(_quantile_table, targets[k])[1]
    size = len(pickle.dumps(prior))
    before = size + old_extra_bytes(prior)
    return {
        "data": name,
        "rows": sum(len(t) for t in targets),
        "features": targets[0].shape[1],
        "prior fit s": round(fit_seconds, 2),
        "table: exact s": round(exact, 2),
        "table: binned s": round(binned, 3),
        "max error": float(f"{error:.1e}"),
        "quantiles: np.quantile s": round(quantile, 2) if quantile else "-",
        "quantiles: one sort s": round(sorted_, 2) if sorted_ else "-",
        "pickle MB": round(size / 1e6, 2),
        "pickle before MB": round(before / 1e6, 2),
    }


def by_class(X, y, per_class, seed=0):
    rng = np.random.RandomState(seed)
    return [X[rng.choice(np.flatnonzero(y == c), per_class, replace=False)] for c in np.unique(y)]


def fit_sizes(name, X, y):
    gpa = GPATransporter(random_state=0).fit(X, y)
    parts = {
        key: len(pickle.dumps(value))
        for key, value in gpa.__getstate__().items()
        if key in ("prior_", "critic_state_", "_final_particles_", "flow_", "history_")
    }
    return {
        "data": name,
        "shape": "x".join(map(str, X.shape)),
        "pickle MB": round(len(pickle.dumps(gpa)) / 1e6, 3),
        **{f"{key} MB": round(size / 1e6, 3) for key, size in parts.items()},
    }


def main(argv=None):
    args = _common.parser(__doc__, "no 2000-per-class MNIST").parse_args(argv)
    digits, labels = load_digits(return_X_y=True)
    data = [("digits", digits / 16, labels, (20,))]
    try:
        from sklearn_gpa.datasets import fetch_mnist

        mnist = fetch_mnist()
        images, classes = mnist if isinstance(mnist, tuple) else (mnist.data, mnist.target)
        data.append(
            (
                "MNIST",
                np.asarray(images, float) / 255,
                classes,
                (20, 200) if args.quick else (20, 200, 2000),
            )
        )
    except Exception as error:  # no network and no cached copy
        print(f"MNIST left out: {error}")
    rows = []
    for name, X, y, counts in data:
        for per_class in counts:
            rows.append(prior_rows(f"{name} {per_class}/class", by_class(X, y, per_class)))
            print(rows[-1])
    wine, wine_labels = load_wine(return_X_y=True)
    fits = [
        fit_sizes("wine", wine, wine_labels),
        fit_sizes("digits 20/class", *_stack(by_class(digits / 16, labels, 20))),
    ]
    header = list(rows[0])
    markdown = (
        f"`python benchmarks/bench_prior.py{' --quick' if args.quick else ''}` ({_common.now()}, "
        f"{_common.machine_line()})\n\nThe copula prior (every class):\n\n"
        + _common.markdown_table(header, [list(r.values()) for r in rows])
        + "\n\nA default fit's pickle:\n\n"
        + _common.markdown_table(list(fits[0]), [[r.get(k, "-") for k in fits[0]] for r in fits])
    )
    print(markdown)
    stem = _common.result_stem("bench_prior", args.quick)
    _common.write_results(
        stem, {"command": _common.command(), "prior": rows, "fits": fits}, markdown
    )


def _stack(targets):
    X = np.concatenate(targets)
    return X, np.repeat(np.arange(len(targets)), [len(t) for t in targets])


if __name__ == "__main__":
    main()
