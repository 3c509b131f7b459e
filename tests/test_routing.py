"""Routing rows given without a class: the Bayes rule of the prior where the flows start from
one (generation, GPAAugmenter), the class router where they start from data (integration)."""

import pickle

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from sklearn_gpa import GPAAugmenter, GPATransporter, baselines
from sklearn_gpa._prior import _MIXTURE_REG, Prior
from sklearn_gpa._routing import PriorRouter
from sklearn_gpa._scaling import Standardization
from sklearn_gpa.utils import stack_domains

CENTRES = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])


def _blobs(n=60, seed=0):
    """Three classes of n rows around CENTRES, the last one ten times wider in feature 2."""
    rng = np.random.RandomState(seed)
    X = np.vstack(
        [c + rng.normal(size=(n, 3)) * [1, 1, 1 + 9 * (k == 2)] for k, c in enumerate(CENTRES)]
    )
    return X, np.repeat(["a", "b", "c"], n)


@pytest.fixture
def no_class_router(monkeypatch):
    """Fits that would train the class router fail."""

    def refuse(*args, **kwargs):
        raise AssertionError("class_router was trained")

    monkeypatch.setattr(baselines, "class_router", refuse)
    monkeypatch.setattr("sklearn_gpa._fitted_flow.class_router", refuse)


@pytest.mark.parametrize("source", ["gaussian_fit", "mixture_fit", "copula_fit"])
def test_prior_log_density_is_the_fitted_gaussians(source):
    """Up to one constant for all flows: the (regularised) Gaussian of each flow, or its
    mixture, as scipy evaluates them; a copula by the Gaussian of its rows' values."""
    rng = np.random.RandomState(0)
    two_modes = np.vstack([rng.normal(-3, 0.5, (60, 2)), rng.normal(3, 0.5, (60, 2))])
    targets = [rng.normal(size=(80, 2)) @ [[1.0, 0.5], [0.0, 0.7]], two_modes]
    prior = Prior.fit(source, targets, random_state=0)
    Z = rng.normal(0, 3, (50, 2))
    reg = _MIXTURE_REG * np.mean([np.trace(f @ f.T) / 2 for f in prior.factor])
    for k in range(2):
        if prior.mixture and prior.mixture[k] is not None and source == "mixture_fit":
            weights, means, factors = prior.mixture[k]
            expected = logsumexp(
                [
                    np.log(w) + multivariate_normal(m, f @ f.T).logpdf(Z)
                    for w, m, f in zip(weights, means, factors)
                ],
                axis=0,
            )
        else:
            covariance = prior.factor[k] @ prior.factor[k].T + reg * np.eye(2)
            expected = multivariate_normal(prior.mean[k], covariance).logpdf(Z)
        np.testing.assert_allclose(prior.log_density(k, Z), expected, rtol=1e-9)
    # The two modes get a mixture (a copula: a mixture or a kernel density of their scores).
    fitted_mixture = bool(prior.mixture) and prior.mixture[1] is not None
    kernel = bool(prior.kernel) and prior.kernel[1] is not None
    assert (fitted_mixture or kernel) == (source in ("mixture_fit", "copula_fit"))


def test_fixed_law_routes_every_row_to_the_flow_of_most_particles():
    prior = Prior.fit("normal", [np.zeros((3, 2))] * 3)
    rows = np.random.RandomState(0).normal(size=(20, 2))
    assert np.all(prior.log_density(1, rows) == 0)
    np.testing.assert_array_equal(PriorRouter(prior, [5, 9, 2]).predict(rows), 1)


def test_router_between_units_equals_converting_the_rows_first():
    X, y = _blobs()
    prior_units = Standardization.fit(X, "common")
    row_units = Standardization.fit(X * 3 + 1, "per_feature")  # any other centre and scales
    targets = [prior_units.transform(X[y == c]) for c in "abc"]
    prior = Prior.fit("gaussian_fit", targets)
    rows = np.random.RandomState(1).normal(2, 3, (40, 3))
    direct = PriorRouter(prior, [60, 60, 60]).predict(prior_units.transform(rows))
    router = PriorRouter.between(prior, [60, 60, 60], row_units, prior_units)
    converted = router.predict(row_units.transform(rows))
    np.testing.assert_array_equal(converted, direct)
    assert len(set(direct)) == 3


@pytest.mark.parametrize("source", ["gaussian_fit", "mixture_fit", "copula_fit"])
def test_generative_fit_routes_by_its_prior_without_training_a_router(no_class_router, source):
    X, y = _blobs()
    gpa = GPATransporter(source=source, n_steps=5, random_state=0).fit(X, y)
    assert isinstance(gpa.flow_assigner_, PriorRouter)
    assert gpa.flow_assigner_.prior is gpa.prior_  # refers to it: nothing more to store
    flows = gpa.flow_index(X)
    assert np.mean(gpa.classes_[flows] == y) > 0.95
    # Far along feature 2, only the wide class has density: the Bayes rule's answer, where
    # a vote of the nearest draws (and most linear rules) would pick by features 0 and 1.
    far = np.array([[4.0, 0.0, 25.0], [0.0, 0.0, -25.0]])
    np.testing.assert_array_equal(gpa.classes_[gpa.flow_index(far)], ["c", "c"])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(gpa)).flow_index(X), flows)


def test_integration_fit_keeps_the_class_router():
    X, y = _blobs()
    both, labels, domain = stack_domains(X, X + 1, y, y)
    gpa = GPATransporter(n_steps=2, random_state=0).fit(both, labels, sample_domain=domain)
    assert type(gpa.flow_assigner_).__name__ in ("KNeighborsClassifier", "RidgeClassifierCV")
    assert np.mean(gpa.classes_[gpa.flow_index(X)] == y) > 0.95


def test_augmenter_routes_by_its_prior_without_training_a_router(no_class_router):
    X, y = _blobs()
    keep = np.r_[0:60, 60:90, 120:150]  # "a" is the majority: "b" and "c" are augmented
    X, y = X[keep], y[keep]
    augmenter = GPAAugmenter(random_state=0)
    augmenter.fit_resample(X, y)
    transporter = augmenter.transporter_
    assert isinstance(transporter.flow_assigner_, PriorRouter)
    assert "_source_law" not in vars(transporter)  # used once, by that fit
    minority = np.isin(y, ["b", "c"])
    flows = transporter.flow_index(augmenter._scale(X[minority]))
    assert np.mean(augmenter.augmented_classes_[flows] == y[minority]) > 0.95
