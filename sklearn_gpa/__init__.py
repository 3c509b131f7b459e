"""sklearn-gpa: Lipschitz-regularised generative particle algorithms for scikit-learn.

The estimators are imported on first use (PEP 562), so ``import sklearn_gpa`` loads neither
torch, scikit-learn, imbalanced-learn nor POT; ``from sklearn_gpa import GPATransporter``
imports what ``GPATransporter`` needs and nothing more.
"""

import importlib

__version__ = "0.1.0"

# Public name -> the submodule that defines it.
_LAZY = {
    "Autoencoder": "autoencoder",
    "GPAAugmenter": "augment",
    "GPATransporter": "transport",
    "LatentGPA": "latent",
    "LipschitzFDivergence": "metrics",
    "MeanStdAdjuster": "baselines",
    "lipschitz_f_divergence": "metrics",
}

__all__ = [
    "Autoencoder",
    "GPAAugmenter",
    "GPATransporter",
    "LatentGPA",
    "LipschitzFDivergence",
    "MeanStdAdjuster",
    "__version__",
    "lipschitz_f_divergence",
]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
