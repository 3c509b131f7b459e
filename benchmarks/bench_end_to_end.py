"""Wall time of whole runs: the gene-expression integration and the papers' demonstrations.

Each row is one complete ``fit`` (encoder included for LatentGPA) at the papers' published step
counts, timed once; "flow s" is the particle loop alone, and its per-step rate lets runs of other
lengths be estimated.  The gene rows need ``survset`` (``pip install survset``) and are
skipped without it.

Run: ``python benchmarks/bench_end_to_end.py``.  Writes ``results/bench_end_to_end.{json,md}``.
"""

from __future__ import annotations

import sys

import _common
import numpy as np
from bench_gene_integration import load_studies, papers_settings

from sklearn_gpa import GPATransporter
from sklearn_gpa.datasets import (
    make_gaussian_mixture,
    make_sierpinski_carpet,
)
from sklearn_gpa.utils import stack_domains


def gene_runs():
    studies = load_studies("the gene rows")
    if studies is None:
        return []
    Xs, ys, Xt, yt, _ = studies
    X, y, sd = stack_domains(Xs, Xt, ys, yt)
    papers = _common.latent_gpa(random_state=0, **papers_settings(5000))
    return [
        ("gene integration, papers' setting (PCA-50, both ER classes)", papers, (X, y, sd)),
        (
            "gene integration, library defaults (at most 2000 steps)",
            _common.latent_gpa(random_state=0),
            (X, y, sd),
        ),
    ]


def demo_runs():
    target = make_gaussian_mixture(200, random_state=0)
    source = 0.5 * np.random.RandomState(100).standard_normal((200, 2))
    mixture = stack_domains(source, target)
    target12 = make_gaussian_mixture(600, n_features=12, random_state=0)
    source12 = 8.0 + 0.5 * np.random.RandomState(1).standard_normal((600, 12))
    embedded = stack_domains(source12, target12)
    carpet = make_sierpinski_carpet(1000, random_state=0)
    start = 3.0 * np.random.RandomState(2).standard_normal((1000, 2))
    raw = dict(standardize=False, prealign=None, random_state=0)
    return [
        (
            "2-D mixture of Gaussians (Fig. 2-3), 500 steps",
            GPATransporter(L=1.0, dt=0.5, n_steps=500, n_critic=3, **raw),
            (mixture[0], None, mixture[2]),
        ),
        (
            "mixture embedded in 12-D, Heun (Fig. 10), 1000 steps",
            GPATransporter(L=1.0, dt=0.25, n_steps=1000, n_critic=5, solver="heun", **raw),
            (embedded[0], None, embedded[2]),
        ),
        (
            "Sierpinski carpet 2-D (Fig. 1), 1000 particles, 5000 steps",
            GPATransporter(L=1.0, dt=0.1, n_steps=5000, n_critic=3, **raw),
            (np.vstack([start, carpet]), None, np.repeat([1, -2], 1000)),
        ),
    ]


def main(argv=None):
    _common.parser(__doc__).parse_args(argv)
    rows = []
    for name, estimator, (X, y, sd) in gene_runs() + demo_runs():
        _, seconds = _common.timed(estimator.fit, X, y, sample_domain=sd)
        steps = estimator.n_steps_
        flow = estimator.history_["time"][-1]
        rows.append(
            {
                "run": name,
                "steps": int(steps),
                "seconds": seconds,
                "flow_seconds": float(flow),
                "ms_per_step": 1000 * float(flow) / steps,
            }
        )
        print(f"{name}: {seconds:.1f} s ({1000 * flow / steps:.2f} ms per step)", flush=True)
    header = "| run | steps | wall s | flow s | ms per step |\n|---|---:|---:|---:|---:|"
    lines = [
        f"| {r['run']} | {r['steps']} | {r['seconds']:.1f} | {r['flow_seconds']:.1f} "
        f"| {r['ms_per_step']:.2f} |"
        for r in rows
    ]
    text = f"{_common.now()}, {_common.machine_line()}.\n\n{header}\n" + "\n".join(lines)
    print("\n" + text)
    _common.write_results("bench_end_to_end", {"rows": rows}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
