"""The ``sklearn-gpa`` command: ``demo`` and ``transport``.

``sklearn-gpa transport`` moves the rows of one table (CSV, TSV, or a text file with tabs,
semicolons, bars or spaces between the cells) onto the distribution of another and writes
the source table back with its feature cells moved: every other column (labels, IDs,
anything declared with ``--id-column``) stays as it was, in place.

numpy, scikit-learn and torch are imported by the commands that need them, so ``--help``
and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings

from ._tables import (
    _DELIMITER_NAMES,
    CLIError,
    _align,
    _labels,
    _list,
    _note_label_like,
    _note_scales,
    _numeric_block,
    _say,
    _split_columns,
    _write_table,
    check_file,
    read_table,
)

__all__ = ["main"]

# Written out here so that --help needs no torch import; tests/test_cli.py checks they match
# the engine's tables.
F_CHOICES = ("kl", "kl_dv", "alpha", "chi2", "reverse_kl", "js")
SOLVER_CHOICES = ("euler", "heun", "rk4")

# Estimator parameters as the options that set them, for the errors of parameter validation.
_OPTION_OF = {
    "f": "--f",
    "alpha": "--alpha",
    "L": "--L",
    "dt": "--dt",
    "n_steps": "--n-steps",
    "solver": "--solver",
    "tol": "--tol",
    "standardize": "--standardize",
    "prealign": "--prealign",
    "device": "--device",
    "random_state": "--seed",
}


def _warning_line(message):
    """A warning of the library as one line: what happened and what to do (the step
    parameters named as the options that set them)."""
    text = re.sub(r"\b(n_steps|dt)\b", lambda m: _OPTION_OF[m.group(1)], str(message))
    return "sklearn-gpa: warning: " + " ".join(text.split())


# ------------------------------------------------------------------------------- demo
def run_demo(n_steps=500, output="gpa_demo.png", seed=0):
    """The papers' 2-D mixture of four Gaussians (000 Fig. 2-3): KL, L = 1, raw units.

    dt = 0.5, 3 critic updates per step and Adam at 5e-3, and a fixed number of steps
    (``stop=None``), as in the authors' configuration of this example.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ._progress import FitProgress
    from .datasets import make_gaussian_mixture
    from .plotting import plot_history, plot_trajectories
    from .transport import GPATransporter
    from .utils import stack_domains

    target = make_gaussian_mixture(200, random_state=seed)
    source = 0.5 * np.random.RandomState(seed + 100).standard_normal((200, 2))
    X, _, sample_domain = stack_domains(source, target)
    print(f"GPA demo: 200 particles from N(0, 0.5^2) onto 4 Gaussian wells, {n_steps} steps")
    progress = FitProgress("GPATransporter", total=n_steps)
    gpa = GPATransporter(
        f="kl",
        L=1.0,
        dt=0.5,
        n_steps=n_steps,
        stop=None,
        n_critic=3,
        learning_rate=5e-3,
        standardize=False,
        prealign=None,
        log_every=max(1, n_steps // 100),
        random_state=seed,
        callback=progress,
    )
    gpa.fit(X, sample_domain=sample_domain)
    progress.close(stop_reason=gpa.stop_reason_, n_steps=gpa.n_steps_)
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


# ----------------------------------------------------------------------------- tables
# --n-steps when not given: GPATransporter's n_steps, the most steps of a flow, direct or
# LatentGPA's (the stopping rule ends most flows earlier), written here so that --help does
# not import torch (tests/test_cli.py checks that they agree).
DEFAULT_STEPS = 2000


def _estimator_params(args, callback=None):
    n_steps = args.n_steps
    return {
        "f": args.f,
        "alpha": args.alpha,
        "L": args.L,
        "dt": args.dt,
        "n_steps": n_steps,
        "solver": args.solver,
        "tol": args.tol,
        "standardize": args.standardize,
        "prealign": None if args.prealign == "none" else args.prealign,
        "device": args.device,
        "random_state": args.seed,
        # The estimator's own log_every: the stopping rule checks every log_every steps, so
        # another one (a hundredth of n_steps, once) made the CLI stop flows elsewhere than
        # the API with the same defaults.
        "callback": callback,
    }


def _make_estimator(args, callback=None):
    """The estimator the options ask for, its parameters validated (the one place building it)."""
    from .transport import GPATransporter

    params = _estimator_params(args, callback)
    transporter = GPATransporter(**params)
    try:
        transporter._validate_params()
    except ValueError as exc:
        raise CLIError(_option_message(str(exc))) from None
    if args.latent:
        from .latent import LatentGPA, _default_flow

        # Codes share the encoder's unit: one common scale keeps the latent geometry.
        params["standardize"] = "common" if args.standardize else False
        # LatentGPA pre-aligns the rows themselves, before its encoder ("auto": its default),
        # and its flow the codes (as the API's default flow does; none with --prealign none).
        prealign = params["prealign"]
        params["prealign"] = None if prealign is None else "auto"
        return LatentGPA(
            transporter=_default_flow(**params),
            prealign="shrunk" if prealign == "auto" else prealign,
        )
    return transporter


def _option_message(message):
    """scikit-learn's parameter error, worded with the option that set the parameter."""
    found = re.match(r"The '(\w+)' parameter of \w+ must be (.*)\. Got (.*) instead\.$", message)
    if found is None or found.group(1) not in _OPTION_OF:
        return message
    name, rule, value = found.groups()
    rule = rule.removesuffix(" or None")  # None is not an option's value
    return f"{_OPTION_OF[name]} must be {rule}; got {value}"


def _stop_reason(estimator):
    inner = getattr(estimator, "transporter_", estimator)
    return getattr(inner, "stop_reason_", None), getattr(inner, "n_steps_", None)


def run_transport(args):
    """Read, align, transport, write; every problem a :class:`CLIError` or a ValueError."""
    from ._progress import FitProgress

    for path in (args.source, args.target):
        check_file(path)  # a missing file fails at once, before torch is imported
    for given in (args.source, args.target):
        if os.path.exists(args.output) and os.path.samefile(args.output, given):
            raise CLIError(f"--output {args.output} would overwrite an input file")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):  # found before the fit, not after it
        raise CLIError(f"--output {args.output}: there is no folder {folder}")
    if os.path.isdir(args.output):
        raise CLIError(f"--output {args.output} is a folder; give a file name in it")

    source, target = read_table(args.source), read_table(args.target)
    s_label_name = args.source_labels or args.labels
    t_label_name = args.target_labels or args.labels
    ids = list(args.id_column or [])
    if args.batch is not None:
        if source.column(args.batch) is None:
            raise CLIError(
                f"{source.path}: no column named {args.batch!r} for --batch "
                f"(columns: {_list(source.names)})"
            )
        if args.batch == s_label_name:
            raise CLIError(f"--batch and the labels name the same column, {args.batch!r}")
        ids.append(args.batch)  # carried through unchanged
    for column in ids:
        if source.column(column) is None and target.column(column) is None:
            raise CLIError(
                f"--id-column {column}: no such column in {source.path} ({_list(source.names)}) "
                f"or {target.path}"
            )
    s_label, s_carried, s_features = _split_columns(source, s_label_name, ids, "source")
    t_label, _, t_features = _split_columns(target, t_label_name, ids, "target")
    if not args.quiet:
        for table, label, carried, features in (
            (source, s_label, s_carried, s_features),
            (target, t_label, [], t_features),
        ):
            kept = [table.names[j] or f"column {j + 1}" for j in carried] + (
                [table.names[label]] if label is not None else []
            )
            _say(
                "note",
                f"{table.path}: {len(table.rows)} rows, {len(features)} features, "
                f"{_DELIMITER_NAMES[table.delimiter]}-separated"
                + (f"; labels {table.names[label]!r}" if label is not None else "")
                + (f"; kept as they are: {_list(kept)}" if table is source and kept else ""),
            )
    t_features = _align(source, target, s_features, t_features, args.quiet)
    Xs = _numeric_block(source, s_features)
    Xt = _numeric_block(target, t_features)
    ys, yt = _labels(source, s_label), _labels(target, t_label)
    if ys is None and yt is not None and args.latent:
        # Semi-labelled integration: the source rows' labels are unknown (skada's -1).
        import numpy as np

        ys, yt = np.full(len(source.rows), -1, dtype=object), yt.astype(object)
        if not args.quiet:
            _say("note", "labels for the target only: the source rows' are unknown")
    elif (ys is None) != (yt is None):
        raise CLIError(
            "labels given for one file only: flows per class need a label column in both "
            "files (--labels COL for both, or --source-labels and --target-labels), and "
            "--latent takes the target's alone; to carry a label column through without "
            "using it, use --id-column"
        )
    if not args.quiet:
        _note_label_like(source, s_features, Xs)
        if not args.latent and args.standardize:
            _note_scales(source, s_features, Xs, Xt)

    # Options are checked once the tables are: a problem in the data is reported before
    # torch is imported (seconds on a busy machine), a bad option before the fit starts.
    _make_estimator(args)
    from .utils import stack_domains

    X, y, sample_domain = stack_domains(Xs, Xt, ys, yt)
    if args.batch is not None:  # one way of moving per batch
        import numpy as np

        names, sample_domain[: len(Xs)] = np.unique(
            _labels(source, source.column(args.batch), "batch", "batches"), return_inverse=True
        )
        if not args.quiet:
            _say("note", f"{len(names)} batches in {args.batch!r}, each moved its own way")
    name = "LatentGPA" if args.latent else "GPATransporter"
    progress = FitProgress(name, total=args.n_steps, verbose=0 if args.quiet else 1)
    estimator = _make_estimator(args, callback=progress)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        # Above the progress bar, not onto its line.
        warnings.showwarning = lambda message, *_, **__: progress.write(_warning_line(message))
        try:
            moved = estimator.fit_transform(X, y, sample_domain=sample_domain)[: len(Xs)]
        finally:
            reason, steps = _stop_reason(estimator)
            progress.close(stop_reason=reason, n_steps=steps)
    if reason == "interrupted":
        raise KeyboardInterrupt
    from ._discrete import unmoved

    # Cells the fit left alone (a source as close to its target as a fresh sample of it is
    # left as it is) keep their text, and their columns are not called moved.
    same = unmoved(moved, Xs)
    _write_table(source, moved, s_features, args.output, unmoved=same)
    changed = int((~same.all(axis=0)).sum())
    print(
        f"wrote {len(moved)} rows to {os.path.abspath(args.output)}: {changed} of "
        f"{len(s_features)} feature columns moved, {source.width - changed} kept as they were"
    )


# ------------------------------------------------------------------------------- main
def _finite(text):
    """An argparse type: a finite float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _integer(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


_EPILOG = """\
examples:
  sklearn-gpa transport --source batch2.csv --target batch1.csv -o batch2_moved.csv
  sklearn-gpa transport --source s.tsv --target t.tsv --labels er --id-column patient -o out.tsv
  sklearn-gpa transport --source s.csv --target t.csv --latent --n-steps 500 -o out.csv

The output is the source table with its feature cells moved: labels, IDs and every column
declared with --id-column (or with an empty header name, such as a row index written by
pandas or R) stay as they were. Target columns are matched to the source's by name.
"""


def _parser():
    from . import __version__

    formatter = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="sklearn-gpa",
        description="Lipschitz-regularised generative particle algorithms (GPA).",
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,transport}")
    demo = sub.add_parser(
        "demo",
        help="the papers' 2-D mixture of Gaussians; saves a PNG",
        description="Move 200 particles onto a mixture of four Gaussians and plot the flow.",
        formatter_class=formatter,
    )
    demo.add_argument("--n-steps", type=_integer, default=500, help="particle steps")
    demo.add_argument("-o", "--output", default="gpa_demo.png", help="the figure to write")
    demo.add_argument("--seed", type=_integer, default=0, help="random seed")
    tr = sub.add_parser(
        "transport",
        help="move the rows of one table onto the distribution of another",
        description=(
            "Move the rows of SOURCE onto the distribution of the rows of TARGET and write\n"
            "SOURCE with its feature columns moved."
        ),
        epilog=_EPILOG,
        formatter_class=_HelpFormatter,
    )
    files = tr.add_argument_group("files and columns")
    files.add_argument(
        "--source", required=True, metavar="FILE", help="rows to move (CSV, TSV, delimited text)"
    )
    files.add_argument(
        "--target", required=True, metavar="FILE", help="reference rows (the same features)"
    )
    files.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="where to write the moved table"
    )
    files.add_argument(
        "--labels",
        metavar="COL",
        help="label column of both files: one flow per class (with --latent, labels "
        "steer the directions of the one flow)",
    )
    files.add_argument(
        "--source-labels", metavar="COL", help="label column of the source (overrides --labels)"
    )
    files.add_argument(
        "--target-labels", metavar="COL", help="label column of the target (overrides --labels)"
    )
    files.add_argument(
        "--batch",
        metavar="COL",
        help="batch column of the source (studies, plates, sites): each batch is moved onto "
        "the target its own way; kept in the output as it is",
    )
    files.add_argument(
        "--id-column",
        metavar="COL",
        nargs="+",
        action="extend",
        help="columns to carry through unchanged (IDs, unused labels), in either file: a name, "
        "or in files without a header a 1-based column number",
    )
    gpa = tr.add_argument_group("flow")
    gpa.add_argument(
        "--latent",
        action="store_true",
        help="run the flow in a few dimensions (LatentGPA): along the directions in which the "
        "source's covariance differs from the target's beyond noise, the rest of each row kept "
        "(none found: per-feature mean/std alignment only); for many features and few rows",
    )
    gpa.add_argument("--f", default="kl", choices=F_CHOICES, help="f-divergence")
    gpa.add_argument("--alpha", type=_finite, help="order of --f alpha (2 when not given)")
    gpa.add_argument("--L", type=_finite, default=10.0, help="Lipschitz bound: the speed limit")
    gpa.add_argument("--dt", type=_finite, default=0.01, help="time step")
    gpa.add_argument(
        "--n-steps",
        type=_integer,
        default=DEFAULT_STEPS,
        help="most particle steps; each flow stops earlier once its particles are as close "
        "to the target as a fresh sample of it",
    )
    gpa.add_argument("--solver", default="euler", choices=SOLVER_CHOICES, help="integrator")
    gpa.add_argument(
        "--tol",
        type=_finite,
        help="stop once the kinetic energy is below this (never if unset); looked at every "
        "50 steps",
    )
    gpa.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the flow on centred, scaled data: each feature by its own robust spread when "
        "the features' ranges differ by more than 10x, else one common scale, a feature of "
        "over 10x the median range by its own (raw units if not)",
    )
    gpa.add_argument(
        "--prealign",
        default="auto",
        choices=("auto", "shrunk", "meanstd", "none"),
        help="start from the source rows with each feature's mean and std matched to the "
        "target's (auto: shrunk as ComBat does; none: the raw source, as the papers)",
    )
    gpa.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1")
    gpa.add_argument("--seed", type=_integer, default=0, help="random seed")
    gpa.add_argument("--quiet", action="store_true", help="no progress bar and no notes")
    return parser


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """The default of every option that has one; descriptions and examples kept as written."""

    def _get_help_string(self, action):
        if action.required or action.default in (None, False):
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        return "".join(indent + line for line in text.splitlines(keepends=True))


def main(argv=None):
    """Entry point of the ``sklearn-gpa`` command; returns the exit status.

    0 on success, 2 for a problem with the input or the options (one line on stderr,
    ``sklearn-gpa: error: ...``), 1 for an unexpected failure (one line too; set
    ``SKLEARN_GPA_TRACEBACK=1`` to see the traceback), 130 when interrupted.

    Examples
    --------
    >>> main(["transport", "--source", "missing.csv", "--target", "t.csv", "-o", "o.csv"])
    2
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            if args.n_steps < 1:
                raise CLIError(f"--n-steps must be at least 1; got {args.n_steps}")
            run_demo(args.n_steps, args.output, args.seed)
        else:
            run_transport(args)
    except KeyboardInterrupt:
        _say("error", "interrupted; nothing written")
        return 130
    except (CLIError, ValueError, OSError) as exc:
        _say("error", " ".join(str(exc).split()))
        return 2
    except Exception as exc:
        if os.environ.get("SKLEARN_GPA_TRACEBACK"):
            raise
        _say(
            "error",
            f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())} "
            "(set SKLEARN_GPA_TRACEBACK=1 to see where)",
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
