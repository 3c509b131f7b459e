"""Reading and writing the tables of ``sklearn-gpa transport`` (standard library and numpy).

A table is read as text, its separator detected, its header recognised; feature columns are
converted with errors that name the file, line and column; the source table is written back
with only its feature cells replaced.
"""

from __future__ import annotations

import csv
import os
import re
import sys
import tempfile

# Column names that usually hold labels or identifiers rather than measurements.
_LABEL_LIKE = {
    "id", "label", "labels", "class", "target", "y", "group", "batch", "sample", "subject",
    "patient", "diagnosis", "outcome", "status", "name",
}  # fmt: skip
_DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "bar", " ": "space"}


class CLIError(Exception):
    """A problem with the user's input, reported as one line."""


def _say(kind, message):
    print(f"sklearn-gpa: {kind}: {message}", file=sys.stderr, flush=True)


class Table:
    """A table as read: cells as text, a header or None, the file line of every row."""

    def __init__(self, path, delimiter, header, rows, lines, decimal_comma=False):
        self.path, self.delimiter, self.header = path, delimiter, header
        self.rows, self.lines = rows, lines
        self.decimal_comma = decimal_comma  # numbers read with decimal commas: written so
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


# How R, pandas, spreadsheets and ARFF write a missing value (compared in lower case).
_MISSING = frozenset({"na", "n/a", "#n/a", "nan", "null", "none", "?"})
# A decimal comma ("1,5", as pandas' to_csv(sep=";", decimal=",") and spreadsheets in many
# locales write it), a decimal point, and a number in thousands groups ("1,234"), which may
# be either: a file's numbers are read with decimal commas only where the comma is not its
# separator, no number has a decimal point, and some comma is not a thousands separator.
_DECIMAL_COMMA = re.compile(r"[-+]?\d*,\d+(?:[eE][-+]?\d+)?")
_DECIMAL_POINT = re.compile(r"[-+]?\d*\.\d+(?:[eE][-+]?\d+)?")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+")


def _decimal_comma(rows, delimiter):
    """Whether the cells of ``rows`` write numbers with decimal commas (see above)."""
    if delimiter == ",":
        return False
    cells = [cell.strip() for row in rows for cell in row]
    commas = [cell for cell in cells if _DECIMAL_COMMA.fullmatch(cell)]
    if not commas or any(_DECIMAL_POINT.fullmatch(cell) for cell in cells):
        return False
    return not all(_THOUSANDS.fullmatch(cell) for cell in commas)


def _number(cell, decimal_comma=False):
    """The float a cell holds, or None (with ``decimal_comma``, "1,5" is 1.5)."""
    cell = cell.strip()
    if decimal_comma and _DECIMAL_COMMA.fullmatch(cell):
        cell = cell.replace(",", ".")
    try:
        return float(cell)
    except ValueError:
        return None


def _is_number(cell, decimal_comma=False):
    return _number(cell, decimal_comma) is not None


def _detect_delimiter(path, lines):
    """The separator that splits the first lines into the same number (> 1) of cells.

    Tries the one the extension suggests first (tab for .tsv/.tab, comma otherwise), then
    tab, comma, semicolon, bar and runs of spaces; where several split every line evenly,
    the one whose cells are numbers most often (decimal commas count where the comma is not
    the separator: "1,5;2,5" is two numbers, not "1", "5;2" and "5"); a one-column file
    gets the suggested one.
    """
    preferred = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    candidates = [preferred] + [d for d in ("\t", ",", ";", "|", " ") if d != preferred]
    even = []
    for delimiter in candidates:
        widths = {len(row) for row in _reader(lines, delimiter)}
        if len(widths) == 1 and widths.pop() > 1:
            even.append(delimiter)
    if even:  # the first of the most numeric (max keeps the first of equals)
        return max(even, key=lambda d: _numeric_share(lines, d))
    # No separator splits the lines evenly: the one splitting most lines in two or more
    # cells (the ragged rows are reported by line), else a single column.
    best = max(candidates, key=lambda d: sum(len(r) > 1 for r in _reader(lines, d)))
    return best if any(len(r) > 1 for r in _reader(lines, best)) else preferred


def _numeric_share(lines, delimiter):
    """The share of the cells of ``lines`` split at ``delimiter`` that are numbers."""
    cells = [cell for row in _reader(lines, delimiter) for cell in row]
    return sum(_is_number(cell, delimiter != ",") for cell in cells) / max(len(cells), 1)


def _reader(lines, delimiter):
    if delimiter == " ":
        lines = (line.strip() for line in lines)
        return csv.reader(lines, delimiter=" ", skipinitialspace=True)
    return csv.reader(lines, delimiter=delimiter)


def _has_header(rows, decimal_comma):
    """A first row is a header when one of its cells is text above a column of numbers."""
    first, rest = rows[0], rows[1:21]
    if not rest:
        return not any(_is_number(c, decimal_comma) for c in first)
    for j, cell in enumerate(first):
        below = [row[j].strip() for row in rest if j < len(row) and row[j].strip()]
        numbers = below and all(_is_number(c, decimal_comma) for c in below)
        if cell.strip() and not _is_number(cell, decimal_comma) and numbers:
            return True
    return False


def check_file(path):
    """A :class:`CLIError` naming ``path`` unless it is a file."""
    if not os.path.isfile(path):
        raise CLIError(f"{path}: no such file")


def read_table(path):
    """Read a delimited text file into a :class:`Table` (cells as text).

    The separator is detected (see ``_detect_delimiter``), a UTF-8 byte-order mark is
    skipped, blank lines are skipped, and trailing empty cells beyond the header are dropped.
    """
    check_file(path)
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
    decimal_comma = _decimal_comma(rows, delimiter)
    if _has_header(rows, decimal_comma):
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
    return Table(path, delimiter, header, rows, numbers, decimal_comma)


def _numeric_block(table, columns):
    """The cells of ``columns`` as a float array; errors name the line and the column."""
    import numpy as np

    values = np.empty((len(table.rows), len(columns)))
    for k, j in enumerate(columns):
        for i, row in enumerate(table.rows):
            cell = row[j].strip()
            where = f"{table.path}, line {table.lines[i]}, {table.describe(j)}"
            if not cell or cell.lower() in _MISSING:
                missing = "empty cell" if not cell else f"{cell!r}, a missing value"
                raise CLIError(
                    f"{where}: {missing}; GPA needs every feature of every row: fill it in "
                    "or remove the row"
                )
            value = _number(cell, table.decimal_comma)
            if value is None:
                name = table.names[j]
                if _THOUSANDS.fullmatch(cell):
                    raise CLIError(
                        f"{where}: {cell!r} is not a number: write numbers without thousands "
                        "separators"
                    )
                if _DECIMAL_COMMA.fullmatch(cell):  # a comma separator, or decimal points too
                    raise CLIError(
                        f"{where}: {cell!r} is not a number: write decimals with a point"
                    )
                raise CLIError(
                    f"{where}: {cell!r} is not a number; if {name!r} holds labels, declare it "
                    f"with --labels {name}, if it holds IDs or other text, with --id-column {name}"
                )
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

    from ._scaling import odd_unit_features, resolve_scaling

    X = np.concatenate([Xs, Xt])
    spread = X.std(0)
    if len(spread) < 2 or spread.min() <= 0 or spread.max() / spread.min() < 100:
        return
    big, small = table.names[features[spread.argmax()]], table.names[features[spread.argmin()]]
    # The flow's scale is fitted on the target rows where it pre-aligns (the default).
    odd = [table.names[features[j]] for j in np.flatnonzero(odd_unit_features(Xt))]
    if resolve_scaling("auto", X) == "per_feature":
        how = (
            "the flow divides each feature by its own robust spread, so small features move "
            "as well as large ones"
        )
    elif odd:
        how = (
            f"most features' ranges agree, so the flow divides them by one common scale, and "
            f"{len(odd)} of over 10 times their median range ({_list(odd)}) each by its own "
            "spread"
        )
    else:
        how = (
            "most features' ranges agree, so the flow divides all features by one common "
            "scale and the small ones can move far out of their range: --latent standardises "
            "each feature, or give the features comparable units"
        )
    _say(
        "note",
        f"feature spreads differ by a factor of {spread.max() / spread.min():.0f} ({big!r} "
        f"against {small!r}); {how}",
    )


def _labels(table, column, what="label", whats="labels"):
    """The text of ``column`` in every row (None for no column); an empty cell is an error."""
    import numpy as np

    if column is None:
        return None
    labels = [row[column].strip() for row in table.rows]
    for i, label in enumerate(labels):
        if not label:
            raise CLIError(
                f"{table.path}, line {table.lines[i]}, {table.describe(column)}: empty {what}; "
                f"every row needs one when {whats} are given"
            )
    return np.array(labels)


# -------------------------------------------------------------------------- transport
def _write_table(table, moved, features, path, unmoved=None):
    """The source table with its feature cells replaced, written next to ``path`` then moved;
    a cell that ``unmoved`` marks (the fit gave it back as it was) keeps its text (``7``,
    not ``7.000000000000001``)."""
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
            # Numbers read with decimal commas are written so, where the comma is no separator.
            point = "," if table.decimal_comma and delimiter != "," else "."
            if table.header is not None:
                writer.writerow(table.header)
            kept = [[False] * len(features)] * len(moved) if unmoved is None else unmoved
            for row, values, keep_row in zip(table.rows, moved.tolist(), kept):
                row = list(row)
                for j, value, keep in zip(features, values, keep_row):
                    if not keep:
                        row[j] = repr(float(value)).replace(".", point)
                writer.writerow(row)
        os.replace(handle.name, path)
    except BaseException:
        os.unlink(handle.name)
        raise
