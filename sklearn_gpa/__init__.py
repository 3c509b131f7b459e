"""sklearn-gpa: Lipschitz-regularised generative particle algorithms for scikit-learn."""

from .augment import GPAAugmenter
from .baselines import MeanStdAdjuster
from .latent import LatentGPA
from .transport import GPATransporter

__version__ = "0.1.0"

__all__ = ["GPAAugmenter", "GPATransporter", "LatentGPA", "MeanStdAdjuster", "__version__"]
