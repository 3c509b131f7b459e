"""Size of a stored flow against its replay error, for each ``store_encoding``.

A fitted ``GPATransporter`` keeps its discriminator at every step: that sequence is the
model, what ``transform`` and ``sample`` replay and what ``pickle.dumps`` writes.  For
each encoding (``"float32"``, ``"float16"``, ``"delta16"``, ``"delta8"``) this script fits
the same flows on scikit-learn's wine data (178 x 13; the encoding does not change the
fit, only what is kept) and reports

* the size of ``pickle.dumps(estimator)`` and of the stored states (``flow_.nbytes``);
* the replay error: the training starting points replayed through the stored flow
  against the particles the fit produced (``particles_``), each particle's distance
  divided by the root mean square distance of the data to its mean (the data's spread):
  root mean square, median and 99th percentile over the particles; 0 would be an exact
  replay.  float32 replay differs from the fit by rounding already (replay runs in
  float64).  The flows amplify small changes of the weights: a particle near where a
  ReLU unit switches can take another path;
* the largest error of a decoded weight, relative to the largest weight.

Fits: class-conditional generation ``fit(X, y)`` (three flows, 534 particles) and
integration of one half of the rows onto the other (by class), each with the default
``stop="auto"`` and with the papers' fixed 300 steps (``stop=None``).

Run: ``python benchmarks/bench_flow_storage.py``.  Writes ``results/bench_flow_storage.{json,md}``.
"""

from __future__ import annotations

import pickle
import sys

import _common
import numpy as np
from sklearn.datasets import load_wine

from sklearn_gpa import GPATransporter

ENCODINGS = ("float32", "float16", "delta16", "delta8")


def fit_recording_starts(estimator, X, **fit_kwargs):
    """Fit, and return the standardised starting points of the flows' particles."""
    recorded = {}
    starting_points = estimator._starting_points

    def record(*args, **kwargs):
        recorded["starts"] = starting_points(*args, **kwargs)
        return recorded["starts"]

    estimator._starting_points = record
    try:
        estimator.fit(X, **fit_kwargs)
    finally:
        del estimator._starting_points
    return recorded["starts"]


def replay_errors(estimator, starts, X):
    """Distances of replayed starting points to ``particles_``, over the data's spread:
    root mean square, median and 99th percentile."""
    flows = np.repeat(np.arange(len(starts)), [len(s) for s in starts])
    moved = np.concatenate(
        [estimator._scaling.inverse_transform(np.asarray(m)) for m in estimator._final_particles_]
    )
    aligned = np.concatenate([estimator._prealign(s, k) for k, s in enumerate(starts)])
    replayed = estimator._scaling.inverse_transform(estimator._replay(aligned, flows))
    spread = np.sqrt(np.mean(np.sum((X - X.mean(0)) ** 2, 1)))
    error = np.linalg.norm(replayed - moved, axis=1) / spread
    return {
        "replay_rms": float(np.sqrt(np.mean(error**2))),
        "replay_median": float(np.median(error)),
        "replay_p99": float(np.quantile(error, 0.99)),
    }


def problems():
    X, y = load_wine(return_X_y=True)
    domain = np.where(np.arange(len(X)) % 2 == 0, 1, -1)
    yield "generation fit(X, y)", X, {"y": y}
    yield "integration, halves by class", X, {"y": y, "sample_domain": domain}


def main(argv=None):
    parser = _common.parser(__doc__)
    parser.parse_args(argv)
    rows = []
    for name, X, fit_kwargs in problems():
        for stop in ("auto", None):
            reference = None
            for encoding in ENCODINGS:
                gpa = GPATransporter(stop=stop, store_encoding=encoding, random_state=0)
                starts = fit_recording_starts(gpa, X, **fit_kwargs)
                states = gpa.flow_.states
                if encoding == "float32":
                    reference = states
                weight_error = 0.0
                if states.size:
                    weight_error = np.abs(states - reference).max() / np.abs(reference).max()
                row = {
                    "fit": name,
                    "stop": str(stop),
                    "steps": gpa.n_steps_,
                    "flows": gpa.n_flows_,
                    "store_encoding": encoding,
                    "pickle_mb": len(pickle.dumps(gpa)) / 1e6,
                    "states_mb": gpa.flow_.nbytes / 1e6,
                    **replay_errors(gpa, starts, X),
                    "weight_error": float(weight_error),
                }
                rows.append(row)
                print(row, flush=True)
    columns = [
        ("fit", "fit", None),
        ("stop", "stop", None),
        ("steps", "steps", None),
        ("flows", "flows", None),
        ("store_encoding", "store_encoding", None),
        ("pickle (MB)", "pickle_mb", "{:.3f}"),
        ("states (MB)", "states_mb", "{:.3f}"),
        ("replay error / spread: RMS", "replay_rms", "{:.1e}"),
        ("median", "replay_median", "{:.1e}"),
        ("99th percentile", "replay_p99", "{:.1e}"),
        ("max weight error / max weight", "weight_error", "{:.1e}"),
    ]
    header = "| " + " | ".join(c[0] for c in columns) + " |"
    rule = "|---|---|---:|---:|---|" + "---:|" * 6
    body = "\n".join(_common.format_row(r, columns) for r in rows)
    text = (
        f"`python benchmarks/bench_flow_storage.py` ({_common.now()}, "
        f"{_common.machine_line()}), scikit-learn's wine (178 x 13), "
        "`GPATransporter(random_state=0)` defaults but `stop` and `store_encoding`.\n\n"
        f"{header}\n{rule}\n{body}\n"
    )
    print("\n" + text)
    _common.write_results("bench_flow_storage", {"rows": rows}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
