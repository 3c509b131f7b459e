"""The sklearn-gpa command."""

import os

import numpy as np
import pytest

from sklearn_gpa.cli import main


def _write(path, rows, header=None, delimiter=","):
    with open(path, "w") as handle:
        if header:
            handle.write(delimiter.join(header) + "\n")
        for row in rows:
            handle.write(delimiter.join(str(v) for v in row) + "\n")


def test_demo_saves_a_figure_and_reports(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--n-steps", "30", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kinetic energy" in printed and str(out) in printed
    assert out.stat().st_size > 10_000


def test_transport_csv_with_labels(tmp_path):
    rng = np.random.RandomState(0)
    source = np.column_stack([rng.normal(0, 1, (60, 2)), np.repeat([0, 1], 30)])
    target = np.column_stack([rng.normal(4, 1, (50, 2)), np.repeat([0, 1], 25)])
    _write(tmp_path / "s.csv", source.tolist(), ["g1", "g2", "er"])
    _write(tmp_path / "t.csv", target.tolist(), ["g1", "g2", "er"])
    out = tmp_path / "out.csv"
    code = main(
        [
            "transport", "--source", str(tmp_path / "s.csv"), "--target", str(tmp_path / "t.csv"),
            "--source-labels", "er", "--target-labels", "er", "-o", str(out), "--n-steps", "100",
            "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "g1,g2"
    moved = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    assert moved.shape == (60, 2)
    assert np.linalg.norm(moved.mean(0) - target[:, :2].mean(0)) < 1.0


def test_transport_tsv_without_header(tmp_path):
    rng = np.random.RandomState(1)
    _write(tmp_path / "s.tsv", rng.normal(0, 1, (20, 3)).tolist(), delimiter="\t")
    _write(tmp_path / "t.tsv", rng.normal(2, 1, (20, 3)).tolist(), delimiter="\t")
    out = tmp_path / "out.tsv"
    args = ["transport", "--source", str(tmp_path / "s.tsv"), "--target", str(tmp_path / "t.tsv")]
    assert main(args + ["-o", str(out), "--n-steps", "5", "--quiet"]) == 0
    assert len(out.read_text().splitlines()) == 20


@pytest.mark.parametrize(
    "source_rows, message",
    [
        (None, "no such file"),
        ([], "empty"),
        ([["a", "b"], [1, "x"]], "non-numeric"),
        ([[1, 2, 3], [4, 5]], "different numbers of columns"),
        ([[1, 2, 3], [4, 5, 6]], "3 columns but target has 2"),
        ([[1, "nan"], [2, 3]], "NaN"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, capsys, source_rows, message):
    source = tmp_path / "s.csv"
    if source_rows is not None:
        _write(source, source_rows)
    _write(tmp_path / "t.csv", [[0, 1], [1, 0], [2, 2]])
    code = main(
        ["transport", "--source", str(source), "--target", str(tmp_path / "t.csv"), "-o",
         os.fspath(tmp_path / "o.csv"), "--quiet"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("sklearn-gpa: error:") and message in err and "\n" not in err
