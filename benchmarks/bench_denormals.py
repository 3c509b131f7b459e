"""What flushing subnormal numbers buys: whole fits with the engine's flushing on and off.

The critic's weights that stop getting a gradient shrink geometrically under the spectral
rescale, and their Adam moments under the betas, until they are subnormal (below 1.2e-38 in
float32); products with them fall there too.  On Intel CPUs each operation on a subnormal
takes a microcode path about a hundred times slower.  The engine guards against it twice
(``sklearn_gpa._engine.device.flush_denormals``: the CPU's flush-to-zero flag on the thread
that runs the fit; ``critic._FLUSH_EVERY``: the critic's state set to zero below the smallest
normal number every 32 updates, which reaches every thread).  This script times fits with
both guards, with the state flush alone (what torch's other threads get), and with neither,
interleaved in one process, and reports how far the moved particles differ from the guarded
run's.

Run: ``python benchmarks/bench_denormals.py [--repeats 1]``.  The gene row needs ``survset``.
Writes ``results/bench_denormals.{json,md}``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import _common
import numpy as np
from bench_gene_integration import load_studies, papers_settings

from sklearn_gpa import GPATransporter
from sklearn_gpa._engine import critic, device
from sklearn_gpa.datasets import make_gaussian_mixture
from sklearn_gpa.utils import stack_domains

MODES = {
    "both guards (shipped)": (True, True),
    "state flush only": (False, True),
    "neither": (False, False),
}


@contextlib.contextmanager
def guards(cpu_flag, state_flush):
    """The engine with its CPU flag and its state flush each on or off."""
    saved = device.flush_denormals, critic._FLUSH_EVERY
    if not cpu_flag:
        device.flush_denormals = contextlib.nullcontext
    if not state_flush:
        critic._FLUSH_EVERY = 1 << 62
    try:
        yield
    finally:
        device.flush_denormals, critic._FLUSH_EVERY = saved


def fit_guarded(mode, make, data, particles):
    """Fit ``make()`` on ``data`` under ``MODES[mode]``; its particles go to ``particles``."""
    X, y, sd = data
    with guards(*MODES[mode]):
        particles[mode] = np.asarray(make().fit(X, y, sample_domain=sd).particles_)


def runs():
    target = make_gaussian_mixture(600, n_features=12, random_state=0)
    source = 8.0 + 0.5 * np.random.RandomState(1).standard_normal((600, 12))
    X12, _, sd12 = stack_domains(source, target)
    out = [
        (
            "mixture embedded in 12-D, Heun (Fig. 10), 400 steps",
            lambda: GPATransporter(
                L=1.0,
                dt=0.25,
                n_steps=400,
                n_critic=5,
                solver="heun",
                standardize=False,
                prealign=None,
                random_state=0,
            ),
            (X12, None, sd12),
        )
    ]
    studies = load_studies("the gene row")
    if studies is None:
        return out
    Xs, ys, Xt, yt, _ = studies
    X, y, sd = stack_domains(Xs, Xt, ys, yt)
    out.append(
        (
            "gene integration, papers' setting (PCA-50), 2000 steps",
            lambda: _common.latent_gpa(random_state=0, **papers_settings(2000)),
            (X, y, sd),
        )
    )
    return out


def main(argv=None):
    parser = _common.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    header = (
        "| fit | " + " | ".join(f"{m} s" for m in MODES) + " | neither / shipped "
        "| state flush only / shipped | max abs particle difference, neither vs shipped |\n"
        "|---|" + "---:|" * (len(MODES) + 3)
    )
    print(header)
    rows = []
    for name, make, data in runs():
        particles = {}
        candidates = {
            mode: functools.partial(fit_guarded, mode, make, data, particles) for mode in MODES
        }
        times = _common.interleaved(candidates, args.repeats, alternate=True)
        median = _common.medians(times)
        shipped = median["both guards (shipped)"]
        diff = float(np.max(np.abs(particles["neither"] - particles["both guards (shipped)"])))
        row = {
            "fit": name,
            "seconds": median,
            "all_seconds": times,
            "neither_over_shipped": median["neither"] / shipped,
            "state_only_over_shipped": median["state flush only"] / shipped,
            "max_abs_particle_difference": diff,
        }
        rows.append(row)
        print(format_row(row), flush=True)
    text = f"{_common.now()}, {_common.cpu_name()}, {os.cpu_count()} CPUs, "
    text += f"median of {args.repeats} interleaved run(s)\n\n{header}\n"
    text += "\n".join(format_row(r) for r in rows)
    _common.write_results("bench_denormals", {"repeats": args.repeats, "rows": rows}, text)
    print(f"wrote {_common.RESULTS}/bench_denormals.md")
    return 0


def format_row(row):
    seconds = " | ".join(f"{row['seconds'][m]:.2f}" for m in MODES)
    return (
        f"| {row['fit']} | {seconds} | {row['neither_over_shipped']:.1f}x "
        f"| {row['state_only_over_shipped']:.1f}x | {row['max_abs_particle_difference']:.2g} |"
    )


if __name__ == "__main__":
    sys.exit(main())
