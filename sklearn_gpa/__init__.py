"""sklearn-gpa: Lipschitz-regularised generative particle algorithms for scikit-learn."""

from .baselines import MeanStdAdjuster
from .latent import LatentGPA
from .transport import GPATransporter

__version__ = "0.1.0"

__all__ = ["GPATransporter", "LatentGPA", "MeanStdAdjuster", "__version__"]
