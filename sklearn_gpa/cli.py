"""The ``sklearn-gpa`` command: ``demo`` and ``transport``."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import warnings

import numpy as np

__all__ = ["main"]


class CLIError(Exception):
    """A problem with the user's input, reported as one line."""


# ------------------------------------------------------------------------------- demo
def _progress_bar(total, width=30):
    """A callback drawing a one-line bar on a terminal, or a line per 10 % elsewhere."""
    start = time.perf_counter()
    live = sys.stdout.isatty()
    shown = [-1]

    def show(step, divergence, kinetic_energy):
        done = (step + 1) / total
        if not live and int(10 * done) == shown[0] and step + 1 != total:
            return
        shown[0] = int(10 * done)
        bar = "#" * int(width * done) + "-" * (width - int(width * done))
        line = (
            f"[{bar}] step {step + 1:>5}/{total}  divergence {np.mean(divergence):9.4g}  "
            f"kinetic energy {np.mean(kinetic_energy):9.3g}  {time.perf_counter() - start:5.1f}s"
        )
        last = step + 1 == total
        print("\r" + line if live else line, end="\n" if last or not live else "", flush=True)

    return show


def run_demo(n_steps=500, output="gpa_demo.png", seed=0):
    """The papers' 2-D mixture of four Gaussians (000 Fig. 2-3): KL, L = 1, raw units.

    dt = 0.5, 3 critic updates per step and Adam at 5e-3, as in the authors' configuration
    of this example.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .datasets import make_gaussian_mixture
    from .plotting import plot_history, plot_trajectories
    from .transport import GPATransporter
    from .utils import stack_domains

    target = make_gaussian_mixture(200, random_state=seed)
    source = 0.5 * np.random.RandomState(seed + 100).standard_normal((200, 2))
    X, _, sample_domain = stack_domains(source, target)
    gpa = GPATransporter(
        f="kl",
        L=1.0,
        dt=0.5,
        n_steps=n_steps,
        n_critic=3,
        learning_rate=5e-3,
        standardize=False,
        log_every=max(1, n_steps // 50),
        random_state=seed,
        callback=_progress_bar(n_steps),
    )
    print(f"GPA demo: 200 particles from N(0, 0.5^2) onto 4 Gaussian wells, {n_steps} steps")
    gpa.fit(X, sample_domain=sample_domain)
    path = gpa.trajectories(source, every=max(1, n_steps // 50))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    plot_trajectories(path, target=target, ax=left)
    left.set_title("(f_KL, Gamma_1)-GPA trajectories")
    plot_history(gpa.history_, ax=right)
    right.set_title("kinetic energy of the particles")
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    kinetic = gpa.history_["kinetic_energy"]
    print(
        f"final divergence {gpa.history_['divergence'][-1]:.4g}, kinetic energy "
        f"{kinetic[-1]:.3g} (peak {kinetic.max():.3g}), {gpa.history_['time'][-1]:.1f}s"
    )
    print(f"saved figure to {os.path.abspath(output)}")
    return gpa


# -------------------------------------------------------------------------- transport
def _read_table(path, label_column=None):
    """Read a CSV/TSV of numbers with an optional header; returns (header, X, labels)."""
    if not os.path.isfile(path):
        raise CLIError(f"{path}: no such file")
    delimiter = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle, delimiter=delimiter) if row]
    if not rows:
        raise CLIError(f"{path}: the file is empty")
    header = None
    if not _is_numeric_row(rows[0]):
        header, rows = [h.strip() for h in rows[0]], rows[1:]
    if not rows:
        raise CLIError(f"{path}: the file has a header but no data rows")
    labels = None
    if label_column is not None:
        if header is None or label_column not in header:
            raise CLIError(f"{path}: no column named {label_column!r} for the labels")
        index = header.index(label_column)
        labels = np.array([row[index].strip() for row in rows])
        rows = [row[:index] + row[index + 1 :] for row in rows]
        header = header[:index] + header[index + 1 :]
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        raise CLIError(f"{path}: rows have different numbers of columns {sorted(widths)}")
    try:
        values = np.array([[float(v) for v in row] for row in rows])
    except ValueError as exc:
        raise CLIError(f"{path}: non-numeric value ({exc})") from None
    if not np.isfinite(values).all():
        raise CLIError(f"{path}: the data contain NaN or infinite values")
    return header, values, labels


def _is_numeric_row(row):
    try:
        [float(v) for v in row]
    except ValueError:
        return False
    return True


def run_transport(args):
    from .transport import GPATransporter
    from .utils import stack_domains

    header_s, Xs, ys = _read_table(args.source, args.source_labels)
    header_t, Xt, yt = _read_table(args.target, args.target_labels)
    if Xs.shape[1] != Xt.shape[1]:
        raise CLIError(
            f"source has {Xs.shape[1]} columns but target has {Xt.shape[1]}: "
            "both files must hold the same features"
        )
    if header_s and header_t and header_s != header_t:
        raise CLIError("source and target files have different column names")
    X, y, sample_domain = stack_domains(Xs, Xt, ys, yt)
    gpa = GPATransporter(
        f=args.f,
        L=args.L,
        dt=args.dt,
        n_steps=args.n_steps,
        random_state=args.seed,
        log_every=max(1, args.n_steps // 50),
        callback=None if args.quiet else _progress_bar(args.n_steps),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        moved = gpa.fit_transform(X, y, sample_domain=sample_domain)[: len(Xs)]
    delimiter = "\t" if args.output.lower().endswith((".tsv", ".tab")) else ","
    with open(args.output, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        if header_s:
            writer.writerow(header_s)
        writer.writerows(moved.tolist())
    print(f"wrote {len(moved)} transported rows to {os.path.abspath(args.output)}")


# ------------------------------------------------------------------------------- main
def _parser():
    parser = argparse.ArgumentParser(
        prog="sklearn-gpa", description="Lipschitz-regularised generative particle algorithms."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the papers' 2-D mixture of Gaussians; saves a PNG")
    demo.add_argument("--n-steps", type=int, default=500)
    demo.add_argument("-o", "--output", default="gpa_demo.png")
    demo.add_argument("--seed", type=int, default=0)
    tr = sub.add_parser("transport", help="transport a CSV/TSV data set onto another")
    tr.add_argument("--source", required=True, help="rows to move (CSV or TSV)")
    tr.add_argument("--target", required=True, help="reference rows (CSV or TSV)")
    tr.add_argument("--source-labels", help="name of a label column in the source file")
    tr.add_argument("--target-labels", help="name of a label column in the target file")
    tr.add_argument("-o", "--output", required=True, help="where to write the moved rows")
    tr.add_argument("--f", default="kl", help="f-divergence (kl, kl_dv, alpha, reverse_kl, js)")
    tr.add_argument("--L", type=float, default=10.0, help="Lipschitz bound (speed limit)")
    tr.add_argument("--dt", type=float, default=0.01, help="time step")
    tr.add_argument("--n-steps", type=int, default=300)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--quiet", action="store_true")
    return parser


def main(argv=None):
    """Entry point of the ``sklearn-gpa`` command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            if args.n_steps < 1:
                raise CLIError("--n-steps must be at least 1")
            run_demo(args.n_steps, args.output, args.seed)
        else:
            run_transport(args)
    except (CLIError, ValueError, OSError) as exc:
        print(f"sklearn-gpa: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
