"""The sklearn-gpa command: round trips on real tables, column handling, errors, help."""

import csv
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_wine

import sklearn_gpa
from sklearn_gpa import GPATransporter, cli
from sklearn_gpa import latent as latent_module
from sklearn_gpa.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, rows, header=None, delimiter=","):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def _read(path, delimiter=","):
    with open(path, newline="") as handle:
        return list(csv.reader(handle, delimiter=delimiter))


def _split_study(X, y, names, seed=0):
    """A source study (shifted and scaled) with IDs and labels, and a target study."""
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(X))
    s, t = order[: len(X) // 2], order[len(X) // 2 :]
    Xs = X[s] * 1.2 + X.std(0)  # a batch effect the flow must remove
    return Xs, y[s], [f"P{i:03d}" for i in s], X[t], y[t], names


def _transport(tmp_path, *extra):
    return main(["transport", *extra, "--quiet"])


def test_a_fresh_sample_of_the_target_comes_back_as_it_was(tmp_path, capsys):
    # Two halves of one table: no map and no flow, so every cell is written as it was read
    # ("65", not "65.00000000000001") and the summary does not call the columns moved.
    rng = np.random.RandomState(3)
    table = np.column_stack(
        [rng.randint(30, 90, 300), rng.normal(120.0, 20.0, 300).round(1), rng.randint(0, 5, 300)]
    )
    text = {}
    for name, rows in (("s", table[:150]), ("t", table[150:])):
        lines = ["age,pressure,visits"] + [f"{int(a)},{p:g},{int(v)}" for a, p, v in rows]
        text[name] = "\n".join(lines) + "\n"
        (tmp_path / f"{name}.csv").write_text(text[name])
    out = tmp_path / "o.csv"
    args = ["--source", str(tmp_path / "s.csv"), "--target", str(tmp_path / "t.csv")]
    assert _transport(tmp_path, *args, "-o", str(out), "--seed", "0") == 0
    assert out.read_text() == text["s"]
    assert "0 of 3 feature columns moved" in capsys.readouterr().out


def test_a_cell_given_back_to_rounding_counts_as_unmoved():
    # The standardisation's round trip moves a value by ~1e-16 of its feature's centre, not
    # of the value: 0.00043 in a feature centred near 3 came back 1e-10 of itself off, and
    # the CLI wrote it out as moved.
    from sklearn_gpa._discrete import unmoved

    original = np.array([[0.00044421549832769717, 12.5], [3.7, 0.0], [6.1, 40.0]])
    centre, scale = np.array([3.9767476761184524, 17.0]), np.array([0.7551120268700702, 13.0])
    back = ((original - centre) / scale) * scale + centre
    assert back[0, 0] != original[0, 0]  # 0.00044421549832707186: off by 1.4e-12 of itself
    assert unmoved(back, original).all()
    moved = original + [[1e-6, 0.0], [0.0, 1e-6], [0.0, 0.0]]
    assert unmoved(moved, original).tolist() == [[False, True], [True, False], [True, True]]


def test_wine_round_trip_keeps_ids_and_labels_in_place(tmp_path, capsys):
    data = load_wine()
    names = [n.replace("/", "_") for n in data.feature_names]
    Xs, ys, ids, Xt, yt, names = _split_study(data.data, data.target, names)
    # Source: ID first, label between features; target: other column order, tab-separated,
    # with an extra column the source does not have.
    s_header = ["patient", *names[:4], "cultivar", *names[4:]]
    s_rows = [
        [pid, *row[:4].tolist(), f"c{label}", *row[4:].tolist()]
        for pid, row, label in zip(ids, Xs, ys)
    ]
    _write(tmp_path / "s.csv", s_rows, s_header)
    t_header = ["cultivar", *names[::-1], "site"]
    t_rows = [[f"c{label}", *row[::-1].tolist(), "B"] for row, label in zip(Xt, yt)]
    _write(tmp_path / "t.tsv", t_rows, t_header, delimiter="\t")
    out = tmp_path / "out.csv"
    code = main([
        "transport", "--source", str(tmp_path / "s.csv"), "--target", str(tmp_path / "t.tsv"),
        "--labels", "cultivar", "--id-column", "patient", "-o", str(out), "--n-steps", "200",
    ])  # fmt: skip
    assert code == 0
    notes = " ".join(capsys.readouterr().err.split())
    assert "13 features, comma-separated; labels 'cultivar'; kept as they are" in notes
    assert "tab-separated" in notes and "ignoring target columns" in notes and "'site'" in notes
    # Wine's features span four orders of magnitude (proline against hue): the CLI says so,
    # and that each feature is scaled by its own spread.
    assert "feature spreads differ by a factor of" in notes and "its own robust" in notes
    table = _read(out)
    assert table[0] == s_header
    body = table[1:]
    assert [row[0] for row in body] == ids
    assert [row[5] for row in body] == [f"c{label}" for label in ys]
    feature_idx = [1, 2, 3, 4, *range(6, 6 + len(names) - 4)]
    moved = np.array([[float(row[j]) for j in feature_idx] for row in body])
    assert moved.shape == Xs.shape
    assert not np.allclose(moved, Xs)
    # Class by class, the moved rows' means are much closer to the target's than before
    # (in raw units; each feature scaled by its own spread, see the note).
    for label in np.unique(ys):
        goal = Xt[yt == label].mean(0)
        before = np.linalg.norm(Xs[ys == label].mean(0) - goal)
        after = np.linalg.norm(moved[ys == label].mean(0) - goal)
        assert after < 0.2 * before


def test_breast_cancer_latent_tsv_round_trip(tmp_path):
    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    Xs, ys, ids, Xt, yt, names = _split_study(data.data, data.target, names, seed=1)
    header = ["id", "diagnosis", *names]
    _write(
        tmp_path / "s.tsv",
        [[pid, label, *row.tolist()] for pid, label, row in zip(ids, ys, Xs)],
        header,
        delimiter="\t",
    )
    # The target is a .txt file with tabs, and carries no ID column.
    _write(
        tmp_path / "t.txt",
        [[label, *row.tolist()] for label, row in zip(yt, Xt)],
        ["diagnosis", *names],
        delimiter="\t",
    )
    out = tmp_path / "out.tsv"
    code = _transport(
        tmp_path, "--source", str(tmp_path / "s.tsv"), "--target", str(tmp_path / "t.txt"),
        "--labels", "diagnosis", "--id-column", "id", "--latent", "--n-steps", "60",
        "-o", str(out),
    )  # fmt: skip
    assert code == 0
    table = _read(out, delimiter="\t")
    assert table[0] == header
    assert [row[0] for row in table[1:]] == ids
    assert [int(row[1]) for row in table[1:]] == ys.tolist()
    moved = np.array([[float(v) for v in row[2:]] for row in table[1:]])
    # LatentGPA first matches every feature's mean and spread to the target's (one map for
    # all rows, shrunk by empirical Bayes: no mean moves by more than its standard error,
    # about 0.08 pooled sd here); the per-gene affine batch effect is then gone, and so is
    # most of each class's offset.
    scale = Xt.std(0)
    before = np.abs(Xs.mean(0) - Xt.mean(0)) / scale
    after = np.abs(moved.mean(0) - Xt.mean(0)) / scale
    assert before.min() > 0.8 and after.max() < 0.15
    for label in (0, 1):
        goal = Xt[yt == label].mean(0)
        before = np.abs(Xs[ys == label].mean(0) - goal) / scale
        after = np.abs(moved[ys == label].mean(0) - goal) / scale
        assert after.max() < 0.5 * before.min()


def test_unnamed_index_column_is_carried(tmp_path):
    # pandas' to_csv writes the row index under an empty header name.
    rng = np.random.RandomState(0)
    rows_s = [[i, *rng.normal(0, 1, 2).tolist()] for i in range(40)]
    rows_t = [[i, *rng.normal(3, 1, 2).tolist()] for i in range(40)]
    _write(tmp_path / "s.csv", rows_s, ["", "a", "b"])
    _write(tmp_path / "t.csv", rows_t, ["", "a", "b"])
    out = tmp_path / "o.csv"
    args = ["--source", str(tmp_path / "s.csv"), "--target", str(tmp_path / "t.csv")]
    assert _transport(tmp_path, *args, "-o", str(out), "--n-steps", "30") == 0
    body = _read(out)[1:]
    assert [row[0] for row in body] == [str(i) for i in range(40)]
    assert np.mean([float(row[1]) for row in body]) > 1.0


def test_transport_tsv_without_header_and_id_by_number(tmp_path):
    rng = np.random.RandomState(1)
    source = [[f"s{i}", *rng.normal(0, 1, 3).tolist()] for i in range(20)]
    _write(tmp_path / "s.tsv", source, delimiter="\t")
    target = [[f"t{i}", *rng.normal(2, 1, 3).tolist()] for i in range(20)]
    _write(tmp_path / "t.tsv", target, delimiter="\t")
    out = tmp_path / "out.tsv"
    args = ["--source", str(tmp_path / "s.tsv"), "--target", str(tmp_path / "t.tsv")]
    assert _transport(tmp_path, *args, "--id-column", "1", "-o", str(out), "--n-steps", "5") == 0
    table = _read(out, delimiter="\t")
    assert len(table) == 20 and [row[0] for row in table] == [f"s{i}" for i in range(20)]
    assert all(len(row) == 4 for row in table)


@pytest.mark.parametrize(
    "name, text, delimiter",
    [
        ("a.csv", "x,y\n1,2\n3,4\n", ","),
        ("a.tsv", "x\ty\n1\t2\n3\t4\n", "\t"),
        ("a.txt", "x\ty\n1\t2\n3\t4\n", "\t"),
        ("a.csv", "x\ty\n1\t2\n3\t4\n", "\t"),  # a .csv that holds tabs
        ("a.csv", "x;y\n1.5;2.5\n3;4\n", ";"),
        ("a.csv", "1,5;2,25\n3,5;4,75\n", ";"),  # no header, every number a decimal comma
        ("a.txt", "x  y\n1  2\n 3 4\n", " "),
        ("a.csv", '"a, b",y\n1,2\n3,4\n', ","),  # a quoted separator
    ],
)
def test_separator_detection(tmp_path, name, text, delimiter):
    (tmp_path / name).write_text(text)
    table = cli.read_table(str(tmp_path / name))
    assert table.delimiter == delimiter
    assert table.width == 2 and len(table.rows) == 2


def test_byte_order_mark_and_blank_lines(tmp_path):
    (tmp_path / "a.csv").write_bytes("\ufeffid,x\n\nA,1\n\nB,2\n".encode())
    table = cli.read_table(str(tmp_path / "a.csv"))
    assert table.header == ["id", "x"] and table.lines == [3, 5]


def _files(tmp_path, source_rows, source_header=None, target_rows=None, target_header=None):
    source = tmp_path / "s.csv"
    if source_rows is not None:
        _write(source, source_rows, source_header)
    target_rows = target_rows or [[0, 1], [1, 0], [2, 2], [1, 1]]
    _write(tmp_path / "t.csv", target_rows, target_header)
    return ["--source", str(source), "--target", str(tmp_path / "t.csv")]


def _error(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("sklearn-gpa: error:") and "\n" not in err
    return err


@pytest.mark.parametrize(
    "rows, header, message",
    [
        (None, None, "no such file"),
        ([], None, "empty"),
        ([], ["a", "b"], "header but no data rows"),
        ([[1, "x"], [2, 3]], ["a", "b"], "line 2, column 'b': 'x' is not a number"),
        ([[1, ""], [2, 3]], ["a", "b"], "line 2, column 'b': empty cell"),
        ([[1, 2], [2, 3], [4, 5, 6]], ["a", "b"], "line 4: 3 cells where the header has 2"),
        ([[1, 2, 3], [4, 5, 6]], None, "source has 3 feature columns but the target has 2"),
        ([[1, "nan"], [2, 3]], None, "line 1, column 2: 'nan', a missing value"),
        ([[1, "inf"], [2, 3]], None, "line 1, column 2: 'inf' is not a finite number"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, capsys, rows, header, message):
    args = _files(tmp_path, rows, header)
    err = _error(capsys, _transport(tmp_path, *args, "-o", str(tmp_path / "o.csv")))
    assert message in err
    assert not (tmp_path / "o.csv").exists()


def test_undeclared_label_column_gets_a_hint(tmp_path, capsys):
    args = _files(
        tmp_path, [[1, 2, "ER+"], [3, 4, "ER-"]], ["g1", "g2", "er"], [[1, 2, "ER+"]],
        ["g1", "g2", "er"],
    )  # fmt: skip
    err = _error(capsys, _transport(tmp_path, *args, "-o", str(tmp_path / "o.csv")))
    assert "column 'er': 'ER+' is not a number" in err
    assert "--labels er" in err and "--id-column er" in err


def test_missing_and_extra_columns_are_named(tmp_path, capsys):
    args = _files(
        tmp_path, [[1, 2, 3], [4, 5, 6]], ["g1", "g2", "g3"], [[1, 2, 3], [3, 4, 5]],
        ["g1", "g2", "G3"],
    )  # fmt: skip
    err = _error(capsys, _transport(tmp_path, *args, "-o", str(tmp_path / "o.csv")))
    assert "missing from the target: 'g3'" in err and "only in the target: 'G3'" in err


def test_extra_target_columns_are_ignored_with_a_note(tmp_path, capsys):
    rng = np.random.RandomState(0)
    args = _files(
        tmp_path, rng.normal(size=(20, 2)).tolist(), ["g2", "g1"],
        rng.normal(size=(20, 3)).tolist(), ["g1", "g2", "g9"],
    )  # fmt: skip
    code = main(["transport", *args, "-o", str(tmp_path / "o.csv"), "--n-steps", "3"])
    err = capsys.readouterr().err
    assert code == 0
    assert "ignoring target columns that the source does not have: 'g9'" in err
    assert "matched to the source's by name" in err
    assert _read(tmp_path / "o.csv")[0] == ["g2", "g1"]


def test_label_column_in_one_file_only(tmp_path, capsys):
    args = _files(tmp_path, [[1, 2, "a"], [3, 4, "b"]], ["g1", "g2", "y"], None, None)
    code = _transport(tmp_path, *args, "--source-labels", "y", "-o", str(tmp_path / "o.csv"))
    assert "labels given for one file only" in _error(capsys, code)


def test_latent_takes_the_targets_labels_alone(tmp_path, capsys):
    # Semi-labelled integration (a new study against a labelled reference): the source
    # rows' labels are unknown; the result is LatentGPA's with source labels -1.
    from sklearn_gpa import LatentGPA
    from sklearn_gpa.utils import stack_domains

    rng = np.random.RandomState(0)
    source = rng.normal(size=(40, 12)) + rng.normal(size=(40, 1)) * rng.normal(size=12)
    target = rng.normal(size=(40, 12))
    labels = np.array(["neg", "pos"])[rng.randint(2, size=40)]
    header = [f"g{j}" for j in range(12)]
    _write(tmp_path / "s.csv", source.tolist(), header)
    _write(
        tmp_path / "t.csv", [[*row, label] for row, label in zip(target, labels)], header + ["er"]
    )
    out = tmp_path / "o.csv"
    code = main(
        ["transport", "--source", str(tmp_path / "s.csv"), "--target", str(tmp_path / "t.csv"),
         "--target-labels", "er", "--latent", "--seed", "0", "-o", str(out)]
    )  # fmt: skip
    assert code == 0 and "labels for the target only" in capsys.readouterr().err
    X, y, sd = stack_domains(source, target, np.full(40, -1, dtype=object), labels.astype(object))
    expected = LatentGPA(random_state=0).fit_transform(X, y, sample_domain=sd)[:40]
    np.testing.assert_allclose(np.array(_read(out)[1:], dtype=float), expected, atol=1e-5)
    # Without --latent, flows per class need the source's labels too.
    code = main(
        ["transport", "--source", str(tmp_path / "s.csv"), "--target", str(tmp_path / "t.csv"),
         "--target-labels", "er", "--quiet", "-o", str(out)]
    )  # fmt: skip
    assert "--latent takes the target's alone" in _error(capsys, code)


def test_unknown_columns_are_named(tmp_path, capsys):
    args = _files(tmp_path, [[1, 2], [3, 4]], ["g1", "g2"], [[1, 2], [3, 4]], ["g1", "g2"])
    err = _error(capsys, _transport(tmp_path, *args, "--labels", "er", "-o", "o.csv"))
    assert "no column named 'er' for --source-labels (columns: 'g1', 'g2')" in err
    err = _error(capsys, _transport(tmp_path, *args, "--id-column", "pid", "-o", "o.csv"))
    assert "--id-column pid: no such column" in err


def test_batch_column_moves_each_batch_its_own_way(tmp_path, capsys):
    """Two plates with opposite shifts in one source file: ``--batch plate`` corrects each;
    without it (the plate carried as an ID) they are moved as one source."""
    data = load_wine()
    rng = np.random.RandomState(0)
    order = rng.permutation(len(data.data))
    truth, Xt = data.data[order[:100]], data.data[order[100:]]
    plate = np.where(rng.rand(100) < 0.5, "A", "B")
    Xs = truth + np.where(plate == "A", 1.5, -1.5)[:, None] * data.data.std(0)
    names = [f"f{j}" for j in range(13)]
    _write(tmp_path / "s.csv", [[p, *row] for p, row in zip(plate, Xs.tolist())], ["plate", *names])
    _write(tmp_path / "t.csv", Xt.tolist(), names)
    files = ["--source", str(tmp_path / "s.csv"), "--target", str(tmp_path / "t.csv")]
    errors = {}
    for name, option in (("batches", ["--batch", "plate"]), ("one", ["--id-column", "plate"])):
        out = tmp_path / f"{name}.csv"
        assert main(["transport", *files, *option, "-o", str(out), "--n-steps", "50"]) == 0
        table = _read(out)
        assert table[0] == ["plate", *names] and [row[0] for row in table[1:]] == plate.tolist()
        moved = np.array([[float(x) for x in row[1:]] for row in table[1:]])
        errors[name] = np.sqrt(np.mean(((moved - truth) / truth.std(0)) ** 2))
    assert "2 batches in 'plate', each moved its own way" in capsys.readouterr().err
    assert errors["batches"] < 0.25 < errors["one"]
    err = _error(capsys, _transport(tmp_path, *files, "--batch", "lab", "-o", "o.csv"))
    assert "no column named 'lab' for --batch (columns: 'plate', 'f0'" in err
    err = _error(
        capsys, _transport(tmp_path, *files, "--batch", "plate", "--labels", "plate", "-o", "o.csv")
    )
    assert "--batch and the labels name the same column, 'plate'" in err


def test_output_never_overwrites_an_input(tmp_path, capsys):
    args = _files(tmp_path, [[1, 2], [3, 4]], ["g1", "g2"], [[1, 2], [3, 4]], ["g1", "g2"])
    before = (tmp_path / "s.csv").read_text()
    err = _error(capsys, _transport(tmp_path, *args, "-o", str(tmp_path / "s.csv")))
    assert "would overwrite an input file" in err
    assert (tmp_path / "s.csv").read_text() == before


@pytest.mark.parametrize(
    "option, value, rule",
    [
        ("--n-steps", "0", "an int in the range [1, inf)"),
        ("--L", "-1", "a float in the range (0"),
        ("--L", "0", "a float in the range (0"),
        ("--dt", "-0.01", "a float in the range (0"),
        ("--alpha", "0.5", "a float in the range (1"),
        ("--tol", "-1", "a float in the range [0"),
    ],
)
def test_bad_parameters_are_named(tmp_path, capsys, option, value, rule):
    args = _files(tmp_path, [[1, 2], [3, 4]])
    code = _transport(tmp_path, *args, option, value, "-o", str(tmp_path / "o.csv"))
    err = _error(capsys, code)
    assert err.startswith(f"sklearn-gpa: error: {option} must be {rule}")
    assert err.endswith((f"got {value}", f"got {float(value)}"))


def test_decimal_commas_are_read_where_the_comma_is_no_separator(tmp_path, capsys):
    # pandas' to_csv(sep=";", decimal=",") and many spreadsheets: the header was not found
    # (its cells were not above numbers) and every cell was "not a number".
    rng = np.random.RandomState(0)
    for name, shift in (("s", 1.0), ("t", 0.0)):
        frame = pd.DataFrame(rng.normal(shift, 1, (30, 2)), columns=["a", "b"])
        frame["group"] = np.where(np.arange(30) % 2, "x", "y")
        frame.to_csv(tmp_path / f"{name}.csv", sep=";", decimal=",")
    args = ["--source", str(tmp_path / "s.csv"), "--target", str(tmp_path / "t.csv")]
    args += ["--labels", "group", "--n-steps", "5"]
    assert _transport(tmp_path, *args, "-o", str(tmp_path / "o.txt")) == 0
    capsys.readouterr()  # its notes and warnings are not the errors below
    back = pd.read_csv(tmp_path / "o.txt", sep=";", decimal=",", index_col=0)
    assert back.dtypes.tolist()[:2] == [np.float64, np.float64]  # written as they came
    assert (back["group"] == np.where(np.arange(30) % 2, "x", "y")).all()
    # Where a comma cannot be a decimal comma (a comma-separated file, decimal points in
    # the same file) or may be a thousands separator ("1,234" was read as 1.234), a hint.
    for text, hint in (
        ('a,b\n"1,5",2\n3,4\n', "'1,5' is not a number: write decimals with a point"),
        ("a;b\n1,5;2\n3.5;4\n", "'1,5' is not a number: write decimals with a point"),
        ("a\tb\n1,234\t2\n999\t4\n", "'1,234' is not a number: write numbers without thou"),
    ):
        (tmp_path / "c.txt").write_text(text)
        args = ["--source", str(tmp_path / "c.txt"), "--target", str(tmp_path / "c.txt")]
        err = _error(capsys, _transport(tmp_path, *args, "-o", str(tmp_path / "o.csv")))
        assert f"line 2, column 'a': {hint}" in err


@pytest.mark.parametrize("cell", ["NA", "nan", "?", ""])
def test_a_missing_value_is_named(tmp_path, capsys, cell):
    (tmp_path / "s.csv").write_text(f"a,b\n1,2\n{cell},4\n5,6\n")
    args = ["--source", str(tmp_path / "s.csv"), "--target", str(tmp_path / "s.csv")]
    err = _error(capsys, _transport(tmp_path, *args, "-o", str(tmp_path / "o.csv")))
    missing = "empty cell" if not cell else f"{cell!r}, a missing value"
    assert f"line 3, column 'a': {missing}; GPA needs every feature" in err


@pytest.mark.parametrize("option, value", [("--L", "inf"), ("--dt", "nan"), ("--n-steps", "1.5")])
def test_non_finite_and_non_integer_options_are_refused_by_argparse(capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["transport", "--source", "s", "--target", "t", "-o", "o", option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: not a" in capsys.readouterr().err


@pytest.mark.parametrize("latent", [False, True])
def test_transport_with_its_progress_bar(tmp_path, capsys, latent):
    """Without --quiet the progress bar is the flow's callback; LatentGPA clones its
    transporter, and the clone must report to the same bar (copying the bar failed: its
    stream cannot be copied)."""
    data = load_wine()
    Xs, _, _, Xt, _, names = _split_study(data.data, data.target, list(data.feature_names))
    _write(tmp_path / "s.csv", Xs.tolist(), names)
    _write(tmp_path / "t.csv", Xt.tolist(), names)
    args = ["--source", str(tmp_path / "s.csv"), "--target", str(tmp_path / "t.csv")]
    args += ["-o", str(tmp_path / "o.csv"), "--n-steps", "20"] + ["--latent"] * latent
    assert main(["transport", *args]) == 0
    name = "LatentGPA" if latent else "GPATransporter"
    assert f"{name}: " in capsys.readouterr().err  # the bar's summary line
    assert len(_read(tmp_path / "o.csv")) == len(Xs) + 1


def test_a_warning_is_written_on_a_line_of_its_own(tmp_path, capsys):
    # A blob onto four wells in 5 steps: the flow cannot get there, and its
    # ConvergenceWarning was printed onto the progress bar's line.
    rng = np.random.RandomState(0)
    wells = np.array([[-4.0, -4.0], [-4.0, 4.0], [4.0, -4.0], [4.0, 4.0]])
    _write(tmp_path / "s.csv", (0.5 * rng.standard_normal((60, 2))).tolist(), ["a", "b"])
    target = wells[rng.randint(4, size=60)] + 0.5 * rng.standard_normal((60, 2))
    _write(tmp_path / "t.csv", target.tolist(), ["a", "b"])
    args = ["--source", str(tmp_path / "s.csv"), "--target", str(tmp_path / "t.csv")]
    args += ["-o", str(tmp_path / "o.csv"), "--n-steps", "5", "--prealign", "none"]
    assert main(["transport", *args]) == 0
    lines = capsys.readouterr().err.splitlines()
    warned = [line for line in lines if "ran all 5 steps" in line]
    assert len(warned) == 1 and warned[0].startswith("sklearn-gpa: warning: 1 flow ran")
    assert "A larger --n-steps may take them there" in warned[0]  # the option, not n_steps


def test_a_missing_output_folder_is_named_before_the_fit(tmp_path, capsys):
    args = _files(tmp_path, [[1, 2], [3, 4], [5, 6]])
    out = tmp_path / "nowhere" / "o.csv"
    err = _error(capsys, _transport(tmp_path, *args, "-o", str(out)))
    assert err == f"sklearn-gpa: error: --output {out}: there is no folder {out.parent}"
    err = _error(capsys, _transport(tmp_path, *args, "-o", str(tmp_path)))
    assert err == f"sklearn-gpa: error: --output {tmp_path} is a folder; give a file name in it"


def test_make_estimator_latent_and_standardize():
    parse = cli._parser().parse_args
    base = ["transport", "--source", "s", "--target", "t", "-o", "o"]
    gpa = cli._make_estimator(parse(base + ["--n-steps", "7", "--no-standardize"]))
    assert type(gpa).__name__ == "GPATransporter"
    assert gpa.n_steps == 7 and gpa.standardize is False
    # Without --n-steps, the estimators' own maxima (the stopping rule ends flows earlier).
    assert cli._make_estimator(parse(base)).n_steps == GPATransporter().n_steps == 2000
    # ... and their own log_every: the stopping rule checks every log_every steps, and the
    # CLI's own (a hundredth of n_steps) stopped a KEEL glass flow at 80 steps, the API at 100.
    assert cli._make_estimator(parse(base)).log_every == GPATransporter().log_every
    assert cli._make_estimator(parse(base + ["--latent"])).transporter.log_every == 50
    latent = cli._make_estimator(parse(base + ["--latent", "--f", "chi2", "--seed", "3"]))
    assert type(latent).__name__ == "LatentGPA"
    flow = latent.transporter
    assert flow.n_steps == GPATransporter().n_steps == 2000 and flow.stop == "auto"
    assert flow.n_critic == latent_module.FLOW_CRITIC == 10
    assert flow.f == "chi2" and flow.random_state == 3 and flow.standardize == "common"
    assert flow.out_of_sample == "auto"  # LatentGPA's own default for its flow
    # Rows aligned in gene space, codes by the flow's own pre-alignment (as the API does).
    assert latent.prealign == "shrunk" and flow.prealign == "auto"
    assert flow.prealign == latent_module._default_flow().prealign


@pytest.mark.parametrize(
    "option, direct, latent, codes",
    [
        ("auto", "auto", "shrunk", "auto"),
        ("meanstd", "meanstd", "meanstd", "auto"),
        ("none", None, None, None),
    ],
)
def test_prealign_option(option, direct, latent, codes):
    parse = cli._parser().parse_args
    base = ["transport", "--source", "s", "--target", "t", "-o", "o", "--prealign", option]
    assert cli._make_estimator(parse(base)).prealign == direct
    model = cli._make_estimator(parse(base + ["--latent"]))
    assert model.prealign == latent and model.transporter.prealign == codes


def test_choices_match_the_engine():
    from sklearn_gpa._engine import DIVERGENCES, SOLVERS

    assert set(cli.F_CHOICES) == set(DIVERGENCES)
    assert set(cli.SOLVER_CHOICES) == set(SOLVERS)


def _run(*code):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", "\n".join(code)], capture_output=True, text=True, env=env
    )


def test_help_shows_defaults_and_every_choice_without_heavy_imports():
    result = _run(
        "import sys",
        "from sklearn_gpa.cli import main",
        "try:",
        "    main(['transport', '--help'])",
        "except SystemExit as exc:",
        "    assert exc.code == 0",
        "print('loaded:', sorted(m for m in ('torch', 'sklearn', 'numpy') if m in sys.modules))",
    )
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "{kl,kl_dv,alpha,chi2,reverse_kl,js}" in out
    assert "(default: 2000)" in out
    assert "(default: 10.0)" in out and "(default: 0.01)" in out
    assert "--standardize, --no-standardize" in out and "--latent" in out
    assert "loaded: []" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sklearn-gpa {sklearn_gpa.__version__}"


def test_progress_and_summary_on_stderr(tmp_path, capsys):
    rng = np.random.RandomState(0)
    args = _files(
        tmp_path, rng.normal(size=(30, 2)).tolist(), ["a", "b"],
        rng.normal(2, 1, size=(30, 2)).tolist(), ["a", "b"],
    )  # fmt: skip
    out = ["-o", str(tmp_path / "o.csv"), "--n-steps", "20", "--prealign", "none"]
    assert main(["transport", *args, *out]) == 0
    captured = capsys.readouterr()
    summary = [line for line in captured.err.splitlines() if line.startswith("GPATransporter: ")]
    assert summary and summary[-1].startswith("GPATransporter: 20/20 steps (ran all steps)")
    assert "wrote 30 rows" in captured.out and "GPATransporter" not in captured.out


def test_demo_saves_a_figure_and_reports(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--n-steps", "30", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kinetic energy" in printed and str(out) in printed
    assert out.stat().st_size > 10_000


def test_library_warnings_print_as_one_line(tmp_path, capsys, monkeypatch):
    import warnings

    from sklearn_gpa.transport import GPATransporter

    fit_transform = GPATransporter.fit_transform

    def warning_fit_transform(self, *args, **kwargs):
        warnings.warn("the critic went flat;\n  try a smaller L", RuntimeWarning, stacklevel=2)
        return fit_transform(self, *args, **kwargs)

    monkeypatch.setattr(GPATransporter, "fit_transform", warning_fit_transform)
    rng = np.random.RandomState(0)
    args = _files(
        tmp_path, rng.normal(size=(20, 2)).tolist(), ["a", "b"],
        rng.normal(size=(20, 2)).tolist(), ["a", "b"],
    )  # fmt: skip
    assert _transport(tmp_path, *args, "-o", str(tmp_path / "o.csv"), "--n-steps", "3") == 0
    err = capsys.readouterr().err
    assert "sklearn-gpa: warning: the critic went flat; try a smaller L\n" in err
    assert "RuntimeWarning" not in err


def test_a_missing_input_file_is_named_before_torch_is_imported(tmp_path):
    target = tmp_path / "t.csv"
    target.write_text("a,b\n1,2\n3,4\n")
    result = _run(
        "import sys",
        "from sklearn_gpa.cli import main",
        f"code = main(['transport', '--source', 'missing.csv', '--target', {str(target)!r},"
        " '-o', 'o.csv'])",
        "print('code', code, 'torch' in sys.modules)",
    )
    assert result.returncode == 0, result.stderr
    assert "code 2 False" in result.stdout
    assert "missing.csv: no such file" in result.stderr
