"""scikit-learn's (and imbalanced-learn's) estimator checks, once for every public estimator.

The instances are small and fast (``conftest.fast_estimators``).  The checks run with the
BLAS rule of ``sklearn_gpa._threadpool`` switched on for every input (their data are far
below its 100 000 values), so they also show that no BLAS limit outlives a call, whatever
the input (lists, frames, read-only arrays, bad input that raises).
"""

import pytest
from conftest import fast_augmenter, fast_estimators
from imblearn.utils.estimator_checks import (
    parametrize_with_checks as parametrize_with_imblearn_checks,
)
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_info

from sklearn_gpa import _threadpool

# The adjuster's fit_transform leaves the target rows as they are, while transform without
# sample_domain moves every row as a source row: the two differ on the target rows.
_TRANSFORM_IS_NOT_FIT_TRANSFORM = (
    "fit_transform keeps target rows; transform without sample_domain moves every row"
)
# The checks' adapter puts every other row in the target; on these checks' data the target
# rows then hold a single class, which the classifier cannot be trained on.
_ONE_TARGET_CLASS = "the alternating split leaves one class among the target rows"

EXPECTED_FAILURES = {
    "MeanStdAdjusterWithDomains": {
        "check_transformer_general": _TRANSFORM_IS_NOT_FIT_TRANSFORM,
        "check_transformer_data_not_an_array": _TRANSFORM_IS_NOT_FIT_TRANSFORM,
    },
    "IntegratedClassifierWithDomains": {
        "check_estimators_dtypes": _ONE_TARGET_CLASS,
        "check_classifiers_classes": _ONE_TARGET_CLASS,
    },
}


def _expected_failures(estimator):
    return EXPECTED_FAILURES.get(type(estimator).__name__, {})


def _blas_threads():
    return sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


@pytest.fixture
def blas_rule_always_on(monkeypatch):
    monkeypatch.setattr(_threadpool, "_BLAS_MIN_VALUES", 0)
    before = _blas_threads()
    yield
    assert _blas_threads() == before


@parametrize_with_checks(fast_estimators(), expected_failed_checks=_expected_failures)
def test_sklearn_compatible(estimator, check, blas_rule_always_on):
    check(estimator)


# imbalanced-learn passes pytest a generator of checks, which pytest deprecates: a list.
_imblearn_checks = parametrize_with_imblearn_checks([fast_augmenter()])


@pytest.mark.parametrize(
    _imblearn_checks.args[0], list(_imblearn_checks.args[1]), **_imblearn_checks.kwargs
)
def test_imblearn_compatible(estimator, check):
    check(estimator)
