"""Settings shared by the test files: small, fast instances of every public estimator."""

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import _num_samples

from sklearn_gpa import Autoencoder, GPAAugmenter, GPATransporter, LatentGPA, MeanStdAdjuster
from sklearn_gpa.model_selection import IntegratedClassifier

# A flow short enough for scikit-learn's estimator checks (dozens of fits each).
FAST_TRANSPORTER = dict(n_steps=5, random_state=0)
FAST_AUTOENCODER = dict(n_components=2, hidden_layer_sizes=(8,), max_iter=3, random_state=0)


def alternating_domains(n_samples):
    """``sample_domain`` with even rows in the source (0) and odd rows in the target (-1)."""
    return np.where(np.arange(n_samples) % 2 == 0, 0, -1)


class MeanStdAdjusterWithDomains(MeanStdAdjuster):
    """``MeanStdAdjuster`` whose ``fit`` splits the rows by ``alternating_domains`` when
    given no ``sample_domain``: scikit-learn's checks call ``fit(X, y)``, and the adjuster
    needs source and target rows."""

    def fit(self, X, y=None, *, sample_domain=None):
        if sample_domain is None:
            sample_domain = alternating_domains(_num_samples(X))
        return super().fit(X, y, sample_domain=sample_domain)

    def fit_transform(self, X, y=None, *, sample_domain=None):
        if sample_domain is None:
            sample_domain = alternating_domains(_num_samples(X))
        return super().fit_transform(X, y, sample_domain=sample_domain)

    def score(self, X, y=None, *, sample_weight=None, sample_domain=None):
        if sample_domain is None:
            sample_domain = alternating_domains(_num_samples(X))
        return super().score(X, y, sample_weight=sample_weight, sample_domain=sample_domain)


class IntegratedClassifierWithDomains(IntegratedClassifier):
    """``IntegratedClassifier`` whose ``fit`` splits the rows by ``alternating_domains``
    when given no ``sample_domain`` (the checks call ``fit(X, y)``)."""

    def fit(self, X, y, *, sample_domain=None):
        if sample_domain is None:
            sample_domain = alternating_domains(_num_samples(X))
        return super().fit(X, y, sample_domain=sample_domain)


def fast_transporter(**params):
    """A ``GPATransporter`` with a short flow."""
    return GPATransporter(**FAST_TRANSPORTER, **params)


def fast_augmenter():
    """A ``GPAAugmenter`` with a short flow."""
    return GPAAugmenter(transporter=GPATransporter(n_steps=5), random_state=0)


def fast_estimators():
    """One small instance of each public estimator, for ``tests/test_common.py``."""
    return [
        fast_transporter(),
        LatentGPA(transporter=fast_transporter(out_of_sample="auto")),
        MeanStdAdjusterWithDomains(),
        IntegratedClassifierWithDomains(MeanStdAdjuster(), LogisticRegression()),
        Autoencoder(**FAST_AUTOENCODER),
        fast_augmenter(),
    ]
