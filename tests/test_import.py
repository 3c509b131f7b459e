"""``import sklearn_gpa`` is light: the estimators load on first use (PEP 562)."""

import os
import subprocess
import sys

import pytest

import sklearn_gpa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("torch", "sklearn", "imblearn", "ot", "matplotlib")


def _loaded_after(statement):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = f"import sys\n{statement}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return result.stdout.split("\n")[-2]


def test_import_loads_no_heavy_package():
    assert _loaded_after("import sklearn_gpa; sklearn_gpa.__version__") == "[]"


@pytest.mark.parametrize(
    "statement, loaded",
    [
        ("from sklearn_gpa import GPATransporter", "['sklearn', 'torch']"),
        ("from sklearn_gpa import LipschitzFDivergence", "['sklearn', 'torch']"),
        ("from sklearn_gpa import GPAAugmenter", "['imblearn', 'sklearn', 'torch']"),
        ("import sklearn_gpa.cli", "[]"),
    ],
)
def test_each_name_loads_what_it_needs(statement, loaded):
    assert _loaded_after(statement) == loaded


def test_public_names_still_resolve():
    assert set(sklearn_gpa.__all__) <= set(dir(sklearn_gpa))
    from sklearn_gpa import GPATransporter, LatentGPA, lipschitz_f_divergence
    from sklearn_gpa.latent import LatentGPA as Direct

    assert LatentGPA is Direct and GPATransporter.__name__ == "GPATransporter"
    assert callable(lipschitz_f_divergence)
    namespace = {}
    exec("from sklearn_gpa import *", namespace)
    assert set(sklearn_gpa.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        sklearn_gpa.Nope  # noqa: B018
