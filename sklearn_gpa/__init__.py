"""sklearn-gpa: Lipschitz-regularised generative particle algorithms for scikit-learn."""

from .augment import GPAAugmenter
from .autoencoder import Autoencoder
from .baselines import MeanStdAdjuster
from .latent import LatentGPA
from .metrics import LipschitzFDivergence, lipschitz_f_divergence
from .transport import GPATransporter

__version__ = "0.1.0"

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
