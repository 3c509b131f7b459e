"""The critic of a divergence estimate, as a NumPy function of the rows."""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_array

__all__ = ["LipschitzWitness"]


class LipschitzWitness:
    """The optimal critic ``phi`` of a Lipschitz f-divergence estimate, in NumPy.

    A network ``phi(x) = W_D act(... act(W_1 (x - center) / scale + b_1) ...) + b_D``
    whose weights were trained by :func:`lipschitz_f_divergence`, with ``act`` ReLU or
    MaxMin (each pair of units sorted, larger first).  With a finite ``L`` it is
    ``L``-Lipschitz in the units of the data (the product of the spectral norms of its
    weights, divided by ``scale``, is at most ``L``).  ``-grad phi`` is the direction in which
    the particles of Algorithm 1 would move.  It holds plain arrays only, so it pickles.

    Parameters
    ----------
    weights : list of ndarray of shape (fan_in, fan_out)
    biases : list of ndarray of shape (fan_out,)
    center : ndarray of shape (n_features,)
    scale : float
        The input map ``(x - center) / scale`` under which the network was trained.
    nu : float, default=0.0
        The optimal shift ``nu`` of the variational formula for this ``phi``.
    lipschitz : float or None, default=None
        The bound ``L`` the network was trained under (None: unconstrained).
    activation : {"relu", "groupsort"}, default="relu"

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.metrics import LipschitzWitness
    >>> phi = LipschitzWitness([np.ones((1, 1)), np.ones((1, 1))], [np.zeros(1), np.zeros(1)],
    ...                        center=np.zeros(1), scale=1.0)
    >>> phi(np.array([[-1.0], [2.0]]))
    array([0., 2.])
    """

    def __init__(self, weights, biases, center, scale, nu=0.0, lipschitz=None, activation="relu"):
        self.weights = [np.asarray(w, dtype=np.float64) for w in weights]
        self.biases = [np.asarray(b, dtype=np.float64).ravel() for b in biases]
        self.center = np.asarray(center, dtype=np.float64)
        self.scale = float(scale)
        self.nu = float(nu)
        self.lipschitz = lipschitz
        self.activation = activation

    @property
    def n_features_in_(self) -> int:
        return self.weights[0].shape[0]

    def __call__(self, X) -> np.ndarray:
        """Values ``phi(X)``, shape (n_samples,)."""
        X = check_array(X, dtype=np.float64, input_name="X")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but this witness was trained on "
                f"{self.n_features_in_}."
            )
        h = (X - self.center) / self.scale
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = h @ w + b
            if self.activation == "groupsort":
                pairs = h.reshape(len(h), -1, 2)
                h = np.sort(pairs, axis=-1)[..., ::-1].reshape(h.shape)
            else:
                h = np.maximum(h, 0.0)
        return h @ self.weights[-1][:, 0] + self.biases[-1][0]

    def __repr__(self) -> str:
        hidden = tuple(w.shape[1] for w in self.weights[:-1])
        return (
            f"LipschitzWitness(n_features={self.n_features_in_}, hidden_layer_sizes={hidden}, "
            f"lipschitz={self.lipschitz}, activation={self.activation!r})"
        )
