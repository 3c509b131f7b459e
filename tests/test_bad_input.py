"""Bad input through every public entry point: a named error, never a torch traceback or NaN."""

import warnings

import numpy as np
import pytest
from sklearn.base import clone

from sklearn_gpa import (
    GPAAugmenter,
    GPATransporter,
    LatentGPA,
    MeanStdAdjuster,
    lipschitz_f_divergence,
)
from sklearn_gpa.utils import known_labels, stack_domains

RNG = np.random.RandomState(0)
XS, XT = RNG.normal(0, 1, (30, 3)), RNG.normal(2, 1, (30, 3))
X, Y, SD = stack_domains(XS, XT, np.arange(30) % 2, np.arange(30) % 2)

BAD_X = {
    "nan": (np.where(np.eye(60, 3, dtype=bool), np.nan, X), "NaN"),
    "inf": (np.where(np.eye(60, 3, dtype=bool), np.inf, X), "infinity"),
    "1-D": (X[:, 0], "2D array"),
    "3-D": (X[:, :, None], "dim 3"),
    "no rows": (X[:0], "0 sample"),
    "no features": (X[:, :0], "0 feature"),
    "text": (np.full((60, 3), "a", dtype=object), "could not convert"),
    "complex": (X + 1j, "omplex"),
    "huge": (X * 1e300, "overflow"),
}
BAD_DOMAIN = {
    "short": (SD[:-1], "one entry per row"),
    "2-D": (SD[:, None], "1-D array"),
    "fractional": (SD + 0.5, "integers"),
    "text": (SD.astype(str), "integers"),
    "one side": (np.ones(60, dtype=int), "no target"),
}


def _estimators():
    flow = GPATransporter(n_steps=2, random_state=0)
    return [flow, LatentGPA(transporter=flow), MeanStdAdjuster()]


def _entry_points(estimator, bad):
    fitted = estimator.__class__(**estimator.get_params(deep=False)).fit(X, Y, sample_domain=SD)
    return {
        "fit": lambda: estimator.fit(bad, sample_domain=SD),
        "fit_transform": lambda: estimator.fit_transform(bad, sample_domain=SD),
        "transform": lambda: fitted.transform(bad),
        "score": lambda: fitted.score(bad, sample_domain=SD),
    }


@pytest.mark.parametrize("estimator", _estimators(), ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("kind", list(BAD_X))
@pytest.mark.parametrize("entry", ["fit", "fit_transform", "transform", "score"])
def test_bad_rows_get_a_named_error_everywhere(estimator, kind, entry):
    bad, message = BAD_X[kind]
    before = np.array(bad, copy=True)
    with pytest.raises(ValueError, match=message):
        _entry_points(estimator, bad)[entry]()
    np.testing.assert_array_equal(np.asarray(bad), before)  # the caller's array is untouched


@pytest.mark.parametrize("estimator", _estimators(), ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("kind", list(BAD_DOMAIN))
def test_bad_sample_domain_gets_a_named_error(estimator, kind):
    domain, message = BAD_DOMAIN[kind]
    with pytest.raises(ValueError, match=message):
        estimator.fit(X, Y, sample_domain=domain)
    if kind != "one side":  # transform moves source rows only: one side is fine there
        fitted = estimator.fit(X, Y, sample_domain=SD)
        with pytest.raises(ValueError, match=message):
            fitted.transform(X, sample_domain=domain)


@pytest.mark.parametrize("estimator", _estimators(), ids=lambda e: type(e).__name__)
def test_a_source_domain_that_was_not_fitted_is_named(estimator):
    # Several source domains are moved each its own way: a row of another domain has no
    # way fitted for it, and transform, score and fit_transform say so.
    domains = np.where(SD >= 0, np.arange(len(SD)) % 2, SD)
    fitted = estimator.fit(X, Y, sample_domain=domains)
    message = r"domains \[3\] that were not fitted as source domains; .* \[0, 1\]"
    with pytest.raises(ValueError, match=message):
        fitted.transform(X[:4], sample_domain=[0, 1, 3, -1])
    with pytest.raises(ValueError, match=message):
        fitted.score(X, sample_domain=np.where(domains == 1, 3, domains))


@pytest.mark.parametrize("estimator", _estimators(), ids=lambda e: type(e).__name__)
def test_labels_of_the_wrong_shape_are_named(estimator):
    with pytest.raises(ValueError, match="y must have shape"):
        estimator.fit(X, Y[:-1], sample_domain=SD)
    fitted = estimator.fit(X, Y, sample_domain=SD)
    with pytest.raises(ValueError, match="y must have shape"):
        fitted.transform(X, Y[:, None])


@pytest.mark.parametrize("estimator", _estimators(), ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("entry", ["fit", "fit_transform"])
def test_a_continuous_y_is_not_taken_as_class_labels(estimator, entry):
    """A regression target would make one class (and flow) per distinct value."""
    continuous = X[:, 0].copy()
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        getattr(estimator, entry)(X, continuous, sample_domain=SD)
    # Also with skada's unknown-label markers among the values.
    continuous[::3] = -1
    continuous[1::3] = np.nan
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        getattr(estimator, entry)(X, continuous, sample_domain=SD)


@pytest.mark.parametrize("estimator", _estimators(), ids=lambda e: type(e).__name__)
def test_unknown_labels_are_not_a_continuous_target(estimator):
    """-1 and NaN (skada's unknown labels) next to whole-number float classes still fit."""
    labels = (np.arange(60) % 2).astype(float)
    labels[~(SD >= 0)] = -1
    labels[np.flatnonzero(SD < 0)[::2]] = np.nan
    fitted = estimator.fit(X, labels, sample_domain=SD)
    assert fitted.transform(X[SD >= 0], sample_domain=SD[SD >= 0]).shape == (30, 3)


@pytest.mark.parametrize("estimator", _estimators(), ids=lambda e: type(e).__name__)
def test_labels_all_unknown_are_said_and_ignored(estimator):
    """y of -1 and NaN only: a fit as with y=None, and a warning that says so."""
    labels = np.full(60, -1.0)
    labels[::2] = np.nan
    with pytest.warns(UserWarning, match="no known label"):
        fitted = clone(estimator).fit(X, labels, sample_domain=SD)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = clone(estimator).fit(X, sample_domain=SD)
    assert not [w for w in caught if "no known label" in str(w.message)]
    rows = X[SD >= 0]
    np.testing.assert_array_equal(
        fitted.transform(rows, sample_domain=SD[SD >= 0]),
        plain.transform(rows, sample_domain=SD[SD >= 0]),
    )


def test_generation_rejects_a_continuous_y():
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        GPATransporter(n_steps=2, random_state=0).fit(XT, XT[:, 0])
    generator = GPATransporter(n_steps=2, random_state=0).fit(XT, np.arange(30) % 2 - 1.0)
    assert generator.classes_.tolist() == [0.0]


@pytest.mark.parametrize("n_samples", [0, -1, 2.5, "3", None, True])
def test_sample_count_is_checked(n_samples):
    generator = GPATransporter(n_steps=2, random_state=0).fit(XT)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        generator.sample(n_samples)


@pytest.mark.parametrize("every", [0, -1, 2.5, "3"])
def test_trajectory_spacing_is_checked(every):
    # every=0 was a ZeroDivisionError from the replay, every=-1 silently every step.
    generator = GPATransporter(n_steps=4, stop=None, random_state=0).fit(XT)
    with pytest.raises((ValueError, TypeError), match="every"):
        generator.trajectories(XT[:3], every=every)


def test_sample_classes_are_checked():
    generator = GPATransporter(n_steps=2, random_state=0).fit(XT, np.arange(30) % 2)
    with pytest.raises(ValueError, match="not fitted"):
        generator.sample(3, y=[0, 1, 5])
    with pytest.raises(ValueError, match="shape"):
        generator.sample(3, y=[0, 1])
    unconditional = GPATransporter(n_steps=2, random_state=0).fit(XT)
    with pytest.raises(ValueError, match="not class-conditional"):
        unconditional.sample(3, y=[0, 1, 0])


@pytest.mark.parametrize("kind", list(BAD_X))
def test_augmenter_and_divergence_name_bad_rows(kind):
    bad, message = BAD_X[kind]
    labels = np.r_[np.zeros(45, dtype=int), np.ones(15, dtype=int)][: len(bad)]
    augmenter = GPAAugmenter(transporter=GPATransporter(n_steps=2), random_state=0)
    with pytest.raises(ValueError):
        augmenter.fit_resample(bad, labels)
    with pytest.raises(ValueError):
        lipschitz_f_divergence(bad, XT, n_iter=2)


def test_stack_domains_matches_table_columns_by_name():
    pd = pytest.importorskip("pandas")
    # Two studies' tables with the same columns in other orders were stacked by position.
    source = pd.DataFrame({"a": [1.0, 2.0], "b": [10.0, 20.0]})
    target = pd.DataFrame({"b": [30.0, 40.0], "a": [3.0, 4.0]})
    X, _, _ = stack_domains(source, target)
    np.testing.assert_array_equal(X, [[1, 10], [2, 20], [3, 30], [4, 40]])
    with pytest.raises(ValueError, match=r"Xt lacks \['b'\] and has \['c'\]"):
        stack_domains(source, target.rename(columns={"b": "c"}))
    assert target.columns.tolist() == ["b", "a"]  # the caller's table is left as it was
    # Non-string column names are no names (scikit-learn's rule): stacked by position.
    X, _, _ = stack_domains(pd.DataFrame([[1.0, 2.0]]), pd.DataFrame([[3.0, 4.0]], columns=[5, 6]))
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])


def test_stack_domains_of_several_source_tables_and_text_labels():
    pd = pytest.importorskip("pandas")
    first = pd.DataFrame({"a": [1.0, 2.0], "b": [10.0, 20.0]})
    second = pd.DataFrame({"b": [50.0], "a": [5.0]})  # its own column order
    target = pd.DataFrame({"b": [30.0, 40.0], "a": [3.0, 4.0]})
    X, y, sample_domain = stack_domains([first, second], target, [["u", "v"], None], ["u", "v"])
    np.testing.assert_array_equal(X, [[1, 10], [2, 20], [5, 50], [3, 30], [4, 40]])
    assert sample_domain.tolist() == [1, 1, 2, -3, -3]
    # -1 stays skada's unknown marker next to text labels (NumPy made it the class "-1").
    assert y.tolist() == ["u", "v", -1, "u", "v"]
    assert known_labels(y).tolist() == [True, True, False, True, True]
    _, y, _ = stack_domains(np.zeros((2, 2)), np.ones((2, 2)), None, ["a", "b"])
    assert known_labels(y).tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="ys must be a list of as many label arrays"):
        stack_domains([first, second], target, ["u", "v", "w"])
    with pytest.raises(ValueError, match=r"different numbers of features: \[2, 3\]"):
        stack_domains([np.zeros((2, 2)), np.zeros((2, 3))], np.zeros((2, 2)))
