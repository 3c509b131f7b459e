"""Every gallery example runs as a plain script, in its fast mode, and saves a figure.

The examples honour ``SKLEARN_GPA_EXAMPLES_FAST=1`` (fewer particles and steps); each runs in
its own interpreter, in a temporary working directory, with the non-interactive Agg backend.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sklearn_gpa

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("plot_*.py"))
# Fast modes take well under 20 s on two CPU cores; the limit leaves room for a slow or busy
# CI machine (importing torch alone can take several seconds there).
TIMEOUT_S = 180


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs_and_saves_a_figure(example, tmp_path):
    env = dict(os.environ, SKLEARN_GPA_EXAMPLES_FAST="1", MPLBACKEND="Agg")
    # The script must import the same sklearn_gpa as this test session.
    package_root = str(Path(sklearn_gpa.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    try:
        result = subprocess.run(
            [sys.executable, str(example)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{example.name} ran longer than {TIMEOUT_S} s in its fast mode")
    assert result.returncode == 0, f"{example.name} failed:\n{result.stderr[-4000:]}"
    if "is not installed" in result.stdout:  # an example on optional real data
        pytest.skip(f"{example.name}: {result.stdout.strip().splitlines()[-1]}")
    figures = list(tmp_path.glob("*.png"))
    assert figures, f"{example.name} saved no PNG figure in its working directory"
