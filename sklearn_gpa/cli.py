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
import csv
import os
import re
import sys
import tempfile
import warnings

__all__ = ["main"]

# Written out here so that --help needs no torch import; tests/test_cli.py checks they match
# the engine's tables.
F_CHOICES = ("kl", "kl_dv", "alpha", "chi2", "reverse_kl", "js")
SOLVER_CHOICES = ("euler", "heun", "rk4")

# Column names that usually hold labels or identifiers rather than measurements.
_LABEL_LIKE = {
    "id", "label", "labels", "class", "target", "y", "group", "batch", "sample", "subject",
    "patient", "diagnosis", "outcome", "status", "name",
}  # fmt: skip
_DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "bar", " ": "space"}
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
    "device": "--device",
    "random_state": "--seed",
}


class CLIError(Exception):
    """A problem with the user's input, reported as one line."""


def _say(kind, message):
    print(f"sklearn-gpa: {kind}: {message}", file=sys.stderr, flush=True)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings of the library as one line each: what happened and what to do."""
    _say("warning", " ".join(str(message).split()))


# ------------------------------------------------------------------------------- demo
def run_demo(n_steps=500, output="gpa_demo.png", seed=0):
    """The papers' 2-D mixture of four Gaussians (000 Fig. 2-3): KL, L = 1, raw units.

    dt = 0.5, 3 critic updates per step and Adam at 5e-3, as in the authors' configuration
    of this example.
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
    progress = FitProgress("GPATransporter", total=n_steps)
    gpa = GPATransporter(
        f="kl",
        L=1.0,
        dt=0.5,
        n_steps=n_steps,
        n_critic=3,
        learning_rate=5e-3,
        standardize=False,
        log_every=max(1, n_steps // 100),
        random_state=seed,
        callback=progress,
    )
    print(f"GPA demo: 200 particles from N(0, 0.5^2) onto 4 Gaussian wells, {n_steps} steps")
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
class Table:
    """A table as read: cells as text, a header or None, the file line of every row."""

    def __init__(self, path, delimiter, header, rows, lines):
        self.path, self.delimiter, self.header = path, delimiter, header
        self.rows, self.lines = rows, lines
        self.width = len(header) if header is not None else len(rows[0])
        # Without a header, columns are called by their 1-based number.
        self.names = header if header is not None else [str(j + 1) for j in range(self.width)]

    def column(self, name):
        """Index of a column given by name, or by 1-based number when no column has that name."""
        if name in self.names:
            return self.names.index(name)
        if name.isdigit() and 1 <= int(name) <= self.width:
            return int(name) - 1
        return None

    def describe(self, j):
        return f"column {self.names[j]!r}" if self.header else f"column {j + 1}"


def _is_number(cell):
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _detect_delimiter(path, lines):
    """The separator that splits the first lines into the same number (> 1) of cells.

    Tries the one the extension suggests first (tab for .tsv/.tab, comma otherwise), then
    tab, comma, semicolon, bar and runs of spaces; a one-column file gets the suggested one.
    """
    preferred = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    candidates = [preferred] + [d for d in ("\t", ",", ";", "|", " ") if d != preferred]
    for delimiter in candidates:
        widths = {len(row) for row in _reader(lines, delimiter)}
        if len(widths) == 1 and widths.pop() > 1:
            return delimiter
    # No separator splits the lines evenly: the one splitting most lines in two or more
    # cells (the ragged rows are reported by line), else a single column.
    best = max(candidates, key=lambda d: sum(len(r) > 1 for r in _reader(lines, d)))
    return best if any(len(r) > 1 for r in _reader(lines, best)) else preferred


def _reader(lines, delimiter):
    if delimiter == " ":
        lines = (line.strip() for line in lines)
        return csv.reader(lines, delimiter=" ", skipinitialspace=True)
    return csv.reader(lines, delimiter=delimiter)


def _has_header(rows):
    """A first row is a header when one of its cells is text above a column of numbers."""
    first, rest = rows[0], rows[1:21]
    if not rest:
        return not any(_is_number(c) for c in first)
    for j, cell in enumerate(first):
        below = [row[j].strip() for row in rest if j < len(row) and row[j].strip()]
        if cell.strip() and not _is_number(cell) and below and all(map(_is_number, below)):
            return True
    return False


def read_table(path):
    """Read a delimited text file into a :class:`Table` (cells as text).

    The separator is detected (see ``_detect_delimiter``), a UTF-8 byte-order mark is
    skipped, blank lines are skipped, and trailing empty cells beyond the header are dropped.
    """
    if not os.path.isfile(path):
        raise CLIError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        text = handle.read()
    lines = text.splitlines(keepends=True)
    sample = [line for line in lines[:200] if line.strip()]
    if not sample:
        raise CLIError(f"{path}: the file is empty")
    delimiter = _detect_delimiter(path, sample)
    reader = _reader(lines, delimiter)
    rows, numbers = [], []
    for row in reader:
        if any(cell.strip() for cell in row):
            rows.append(row)
            numbers.append(reader.line_num)
    header = None
    if _has_header(rows):
        header = [cell.strip() for cell in rows[0]]
        while len(header) > 1 and not header[-1]:  # a trailing separator on the header line
            header.pop()
        rows, numbers = rows[1:], numbers[1:]
    if not rows:
        raise CLIError(f"{path}: the file has a header but no data rows")
    width = len(header) if header is not None else len(rows[0])
    for row, line in zip(rows, numbers):
        while len(row) > width and not row[-1].strip():
            row.pop()
        if len(row) != width:
            expected = "the header has" if header is not None else f"line {numbers[0]} has"
            raise CLIError(
                f"{path}, line {line}: {len(row)} cells where {expected} {width} "
                f"(read as {_DELIMITER_NAMES[delimiter]}-separated)"
            )
    return Table(path, delimiter, header, rows, numbers)


def _numeric_block(table, columns):
    """The cells of ``columns`` as a float array; errors name the line and the column."""
    import numpy as np

    values = np.empty((len(table.rows), len(columns)))
    for k, j in enumerate(columns):
        for i, row in enumerate(table.rows):
            cell = row[j].strip()
            where = f"{table.path}, line {table.lines[i]}, {table.describe(j)}"
            if not cell:
                raise CLIError(
                    f"{where}: empty cell; GPA needs every feature of every row: fill it in "
                    "or remove the row"
                )
            try:
                value = float(cell)
            except ValueError:
                name = table.names[j]
                if re.fullmatch(r"[-+]?\d*,\d+", cell):
                    raise CLIError(
                        f"{where}: {cell!r} is not a number: write decimals with a point"
                    ) from None
                raise CLIError(
                    f"{where}: {cell!r} is not a number; if {name!r} holds labels, declare it "
                    f"with --labels {name}, if it holds IDs or other text, with --id-column {name}"
                ) from None
            if not np.isfinite(value):
                raise CLIError(f"{where}: {cell!r} is not a finite number")
            values[i, k] = value
    return values


def _split_columns(table, label_column, id_columns, role):
    """Indices of the label column (or None), the carried columns and the feature columns."""
    label = None
    if label_column is not None:
        label = table.column(label_column)
        if label is None:
            raise CLIError(
                f"{table.path}: no column named {label_column!r} for --{role}-labels "
                f"(columns: {_list(table.names)})"
            )
    carried = {table.column(name) for name in id_columns} - {None}
    if table.header is not None:  # an unnamed column: a row index written by pandas or R
        carried |= {j for j, name in enumerate(table.header) if not name}
    carried.discard(label)
    features = [j for j in range(table.width) if j != label and j not in carried]
    if not features:
        raise CLIError(f"{table.path}: no feature columns left once labels and IDs are set aside")
    return label, sorted(carried), features


def _list(names, limit=8):
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _align(source, target, s_features, t_features, quiet):
    """Target feature columns in the source's order, matched by name when both have headers."""
    s_names = [source.names[j] for j in s_features]
    t_names = [target.names[j] for j in t_features]
    if source.header is None or target.header is None:
        if len(s_features) != len(t_features):
            raise CLIError(
                f"the source has {len(s_features)} feature columns but the target has "
                f"{len(t_features)}: both files must hold the same features"
            )
        if source.header is not target.header and not quiet:
            _say("note", "only one file has a header: columns matched by position")
        return t_features
    missing = [n for n in s_names if n not in t_names]
    extra = [n for n in t_names if n not in s_names]
    if missing:
        message = f"feature columns of the source missing from the target: {_list(missing)}"
        if extra:
            message += f"; only in the target: {_list(extra)}"
        raise CLIError(
            message + ". Rename them to match, or declare non-feature columns with --id-column"
        )
    if extra and not quiet:
        _say("note", f"ignoring target columns that the source does not have: {_list(extra)}")
    if t_names != s_names and not quiet:
        order = [n for n in t_names if n in s_names]
        if order != s_names:
            _say("note", "target columns matched to the source's by name (different order)")
    return [t_features[t_names.index(n)] for n in s_names]


def _note_label_like(table, features, values):
    """Name feature columns that look like labels or IDs (by name, or 0/1 only)."""
    import numpy as np

    suspects = []
    for k, j in enumerate(features):
        name = table.names[j].lower()
        column = values[:, k]
        binary = len(column) > 2 and set(np.unique(column)) <= {0.0, 1.0}
        if name in _LABEL_LIKE or name.endswith("_id") or binary:
            suspects.append(table.names[j])
    if suspects:
        _say(
            "note",
            f"{table.path}: treating {_list(suspects)} as features; if a column holds labels or "
            "IDs, declare it with --labels or --id-column",
        )


def _note_scales(table, features, Xs, Xt):
    """Say when features differ in scale so much that one common scale cannot suit them all
    (the flow then scales each feature by its own spread: ``standardize="auto"``)."""
    import numpy as np

    from ._scaling import resolve_scaling

    X = np.concatenate([Xs, Xt])
    spread = X.std(0)
    if len(spread) < 2 or spread.min() <= 0 or spread.max() / spread.min() < 100:
        return
    big, small = table.names[features[spread.argmax()]], table.names[features[spread.argmin()]]
    how = (
        "the flow divides each feature by its own robust spread, so small features move as "
        "well as large ones"
        if resolve_scaling("auto", X) == "per_feature"
        else "most features' ranges agree, so the flow divides all features by one common "
        "scale and the small ones can move far out of their range: --latent standardises "
        "each feature, or give the features comparable units"
    )
    _say(
        "note",
        f"feature spreads differ by a factor of {spread.max() / spread.min():.0f} ({big!r} "
        f"against {small!r}); {how}",
    )


def _labels(table, column):
    import numpy as np

    if column is None:
        return None
    labels = [row[column].strip() for row in table.rows]
    for i, label in enumerate(labels):
        if not label:
            raise CLIError(
                f"{table.path}, line {table.lines[i]}, {table.describe(column)}: empty label; "
                "every row needs one when labels are given"
            )
    return np.array(labels)


# -------------------------------------------------------------------------- transport
def _estimator_params(args, callback=None):
    return {
        "f": args.f,
        "alpha": args.alpha,
        "L": args.L,
        "dt": args.dt,
        "n_steps": args.n_steps,
        "solver": args.solver,
        "tol": args.tol,
        "standardize": args.standardize,
        "device": args.device,
        "random_state": args.seed,
        "log_every": max(1, args.n_steps // 100),
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
        from .latent import LatentGPA

        # Codes share the encoder's unit: one common scale keeps the latent geometry.
        latent_scaling = "common" if args.standardize else False
        return LatentGPA(
            transporter=transporter.set_params(out_of_sample="auto", standardize=latent_scaling)
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


def _write_table(table, moved, features, path):
    """The source table with its feature cells replaced, written next to ``path`` then moved."""
    lower = path.lower()
    if lower.endswith((".tsv", ".tab")):
        delimiter = "\t"
    elif lower.endswith(".csv"):
        delimiter = ","
    else:
        delimiter = table.delimiter
    folder = os.path.dirname(os.path.abspath(path))
    handle = tempfile.NamedTemporaryFile(
        "w", newline="", encoding="utf-8", dir=folder, suffix=".part", delete=False
    )
    try:
        with handle:
            writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
            if table.header is not None:
                writer.writerow(table.header)
            for row, values in zip(table.rows, moved.tolist()):
                row = list(row)
                for j, value in zip(features, values):
                    row[j] = repr(float(value))
                writer.writerow(row)
        os.replace(handle.name, path)
    except BaseException:
        os.unlink(handle.name)
        raise


def run_transport(args):
    """Read, align, transport, write; every problem a :class:`CLIError` or a ValueError."""
    from ._progress import FitProgress

    _make_estimator(args)  # a bad option fails before the files are read
    for given in (args.source, args.target):
        if os.path.exists(args.output) and os.path.samefile(args.output, given):
            raise CLIError(f"--output {args.output} would overwrite an input file")

    source, target = read_table(args.source), read_table(args.target)
    s_label_name = args.source_labels or args.labels
    t_label_name = args.target_labels or args.labels
    ids = args.id_column or []
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
            kept = [table.names[j] for j in carried] + (
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
    if (ys is None) != (yt is None):
        raise CLIError(
            "labels given for one file only: class flows need a label column in both files "
            "(--labels COL for both, or --source-labels and --target-labels); to carry a "
            "label column through without using it, use --id-column"
        )
    if not args.quiet:
        _note_label_like(source, s_features, Xs)
        if not args.latent and args.standardize:
            _note_scales(source, s_features, Xs, Xt)

    from .utils import stack_domains

    X, y, sample_domain = stack_domains(Xs, Xt, ys, yt)
    name = "LatentGPA" if args.latent else "GPATransporter"
    progress = FitProgress(name, total=args.n_steps, verbose=0 if args.quiet else 1)
    estimator = _make_estimator(args, callback=progress)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            moved = estimator.fit_transform(X, y, sample_domain=sample_domain)[: len(Xs)]
        finally:
            reason, steps = _stop_reason(estimator)
            progress.close(stop_reason=reason, n_steps=steps)
    if reason == "interrupted":
        raise KeyboardInterrupt
    _write_table(source, moved, s_features, args.output)
    print(
        f"wrote {len(moved)} rows to {os.path.abspath(args.output)}: {len(s_features)} feature "
        f"columns moved, {source.width - len(s_features)} kept as they were"
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
        "--labels", metavar="COL", help="label column of both files: one flow per class"
    )
    files.add_argument(
        "--source-labels", metavar="COL", help="label column of the source (overrides --labels)"
    )
    files.add_argument(
        "--target-labels", metavar="COL", help="label column of the target (overrides --labels)"
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
        help="run the flow in a PCA space (LatentGPA): for many features and few rows",
    )
    gpa.add_argument("--f", default="kl", choices=F_CHOICES, help="f-divergence")
    gpa.add_argument("--alpha", type=_finite, help="order of --f alpha (2 when not given)")
    gpa.add_argument("--L", type=_finite, default=10.0, help="Lipschitz bound: the speed limit")
    gpa.add_argument("--dt", type=_finite, default=0.01, help="time step")
    gpa.add_argument("--n-steps", type=_integer, default=300, help="particle steps")
    gpa.add_argument("--solver", default="euler", choices=SOLVER_CHOICES, help="integrator")
    gpa.add_argument(
        "--tol", type=_finite, help="stop once the kinetic energy is below this (never if unset)"
    )
    gpa.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the flow on centred, scaled data: each feature by its own robust spread when "
        "the features' ranges differ by more than 10x, else one common scale (raw units if not)",
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
