"""f-divergences in their variational (Legendre) form, with hand-written gradients.

The critic objective of Algorithm 1 (paper 000, eq. 33) for K independent flows is

    J_k(phi, nu) = sum_i wY_ki phi(Y_ki) - sum_j wX_kj f*(phi(X_kj) - nu_k) - nu_k

where ``wY`` and ``wX`` are per-row weights that sum to one in each flow (zero on padding
rows, so ragged flows share one tensor).  Each divergence gives the value of J and, by hand,
its gradients with respect to ``phi(X)`` and ``nu`` (the gradient with respect to ``phi(Y)``
is ``wY``); the network code back-propagates those, so the hot loop builds no autograd graph.

The conjugates whose domain is a half line (reverse KL, Jensen-Shannon) are continued past a
point just inside the boundary by their second-order Taylor polynomial.  The continuation is
convex, finite and steep, so the optimiser is pushed back into the domain instead of meeting
``log`` of a negative number.
"""

from __future__ import annotations

import functools
import math
from functools import partial

import torch

from .networks import run

__all__ = ["DIVERGENCES", "Divergence", "get_divergence"]


class Divergence:
    """Variational form of one f-divergence.

    Subclasses define ``conjugate`` (f*) and ``conjugate_derivative`` (f*').
    ``uses_nu`` is False for the Donsker-Varadhan form, which has no shift variable.
    """

    name = "base"
    uses_nu = True

    def conjugate(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def conjugate_derivative(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def value(self, phi_y, phi_x, nu, w_y, w_x):
        """The objective J (K,); ``phi_y`` (K, M), ``phi_x`` (K, N), ``nu`` (K,)."""
        shifted = phi_x - nu[:, None]
        return (w_y * phi_y).sum(1) - (w_x * self.conjugate(shifted)).sum(1) - nu

    def target_terms(self, phi_x, nu):
        """Per-row terms ``t`` (K, N) with ``J = E_P[phi] + E_Q[t]`` for the shift ``nu``."""
        return -(nu[:, None] + self.conjugate(phi_x - nu[:, None]))

    def gradients(self, phi_x, nu, w_x):
        """``(dJ/dphi_x, dJ/dnu)``; dJ/dphi_y is ``w_y`` itself and needs no computing."""
        slope = w_x * self.conjugate_derivative(phi_x - nu[:, None])
        return -slope, slope.sum(1) - 1.0

    def gradients_into(self, phi_x, nu, w_x, grad_x, grad_nu) -> None:
        """``gradients`` written into ``grad_x`` (K, N) and ``grad_nu`` (K,), outside autograd."""
        g_x, g_nu = self.gradients(phi_x, nu, w_x)
        grad_x.copy_(g_x)
        grad_nu.copy_(g_nu)

    def value_and_gradients_into(self, phi_y, phi_x, nu, w_y, w_x, grad_x, grad_nu):
        """``value`` returned and ``gradients`` written as ``gradients_into`` does."""
        value = self.value(phi_y, phi_x, nu, w_y, w_x)
        self.gradients_into(phi_x, nu, w_x, grad_x, grad_nu)
        return value

    def gradient_ops(self, phi_y, phi_x, nu, w_y, w_x, grad_x, grad_nu, with_value) -> list:
        """The calls of ``value_and_gradients_into`` (``with_value``) or ``gradients_into``,
        bound to these tensors (``networks.run``); the last returns J where asked."""
        if with_value:
            return [
                partial(self.value_and_gradients_into, phi_y, phi_x, nu, w_y, w_x, grad_x, grad_nu)
            ]
        return [partial(self.gradients_into, phi_x, nu, w_x, grad_x, grad_nu)]


@functools.cache
def _one(dtype, device) -> torch.Tensor:
    """A 0-d tensor 1: ``t.sub_(_one(...))`` computes ``t.sub_(1.0)`` without converting
    the Python number to a tensor at every call (a microsecond each in the critic's loop)."""
    with torch.inference_mode():
        return torch.ones((), dtype=dtype, device=device)


class KL(Divergence):
    """Kullback-Leibler, f(x) = x log x, f*(y) = exp(y - 1)."""

    name = "kl"

    def conjugate(self, y):
        return torch.exp(y - 1.0)

    conjugate_derivative = conjugate

    def gradients_into(self, phi_x, nu, w_x, grad_x, grad_nu) -> None:
        run(self.gradient_ops(None, phi_x, nu, None, w_x, grad_x, grad_nu, False))

    def value_and_gradients_into(self, phi_y, phi_x, nu, w_y, w_x, grad_x, grad_nu):
        return run(self.gradient_ops(phi_y, phi_x, nu, w_y, w_x, grad_x, grad_nu, True))

    def gradient_ops(self, phi_y, phi_x, nu, w_y, w_x, grad_x, grad_nu, with_value) -> list:
        # The operations of ``gradients`` in the same order, in place: the same numbers.
        one = _one(grad_x.dtype, grad_x.device)
        slope = grad_x
        ops = [
            partial(torch.sub, phi_x, nu[:, None], out=slope),
            partial(slope.sub_, one),
            slope.exp_,
            partial(slope.mul_, w_x),
        ]
        if not with_value:
            return [
                *ops,
                partial(torch.sum, slope, 1, out=grad_nu),
                partial(grad_nu.sub_, one),
                slope.neg_,
            ]
        # The slope w_x f*'(phi - nu) is also the target term w_x f*(phi - nu) of J, and its
        # sum both J's and dJ/dnu's: computed once, the same numbers as ``value``.
        total = torch.empty_like(grad_nu)
        return [
            *ops,
            partial(torch.sum, slope, 1, out=total),
            partial(torch.sub, total, one, out=grad_nu),
            slope.neg_,
            lambda: (w_y * phi_y).sum(1) - total - nu,
        ]


class KLDonskerVaradhan(Divergence):
    """Kullback-Leibler in Donsker-Varadhan form: E_P[phi] - log E_Q[exp(phi)].

    Computed with logsumexp, so it stays finite where exp(phi) alone would overflow.
    """

    name = "kl_dv"
    uses_nu = False

    def value(self, phi_y, phi_x, nu, w_y, w_x):
        # log(0) = -inf on padding rows drops them out of the logsumexp.
        return (w_y * phi_y).sum(1) - torch.logsumexp(phi_x + torch.log(w_x), dim=1)

    def target_terms(self, phi_x, nu):
        # log E_Q e^phi = min over nu of nu + E_Q e^(phi - nu) - 1, attained at its value.
        return 1.0 - nu[:, None] - torch.exp(phi_x - nu[:, None])

    def gradients(self, phi_x, nu, w_x):
        return -torch.softmax(phi_x + torch.log(w_x), dim=1), torch.zeros_like(nu)


class Alpha(Divergence):
    """Alpha-divergence, f(x) = (x^a - 1) / (a (a - 1)), a > 1.

    f*(y) = ((a - 1) relu(y))^(a / (a - 1)) / a + 1 / (a (a - 1)); a = 2 is Pearson chi^2.
    """

    name = "alpha"

    def __init__(self, alpha: float = 2.0):
        if not alpha > 1.0:
            raise ValueError(f"alpha must be > 1 for the alpha-divergence, got {alpha!r}.")
        self.alpha = float(alpha)
        self.power = self.alpha / (self.alpha - 1.0)

    def conjugate(self, y):
        a = self.alpha
        return ((a - 1.0) * torch.relu(y)) ** self.power / a + 1.0 / (a * (a - 1.0))

    def conjugate_derivative(self, y):
        a = self.alpha
        return ((a - 1.0) * torch.relu(y)) ** (1.0 / (a - 1.0))


class _HalfLineConjugate(Divergence):
    """A conjugate finite only for y < ``boundary``, continued quadratically past ``edge``."""

    boundary = 0.0
    margin = 1e-2

    @property
    def edge(self) -> float:
        return self.boundary - self.margin

    def _inside(self, y):
        raise NotImplementedError

    def _inside_derivative(self, y):
        raise NotImplementedError

    def _inside_second_derivative(self, y):
        raise NotImplementedError

    def _taylor(self):
        e = torch.tensor(self.edge, dtype=torch.float64)
        return (
            float(self._inside(e)),
            float(self._inside_derivative(e)),
            float(self._inside_second_derivative(e)),
        )

    def conjugate(self, y):
        f0, f1, f2 = self._taylor()
        inside = self._inside(torch.clamp(y, max=self.edge))
        dy = torch.clamp(y - self.edge, min=0.0)
        return inside + f1 * dy + 0.5 * f2 * dy * dy

    def conjugate_derivative(self, y):
        _, _, f2 = self._taylor()
        inside = self._inside_derivative(torch.clamp(y, max=self.edge))
        return inside + f2 * torch.clamp(y - self.edge, min=0.0)


class ReverseKL(_HalfLineConjugate):
    """Reverse KL, f(x) = -log x, f*(y) = -1 - log(-y) for y < 0."""

    name = "reverse_kl"

    def _inside(self, y):
        return -1.0 - torch.log(-y)

    def _inside_derivative(self, y):
        return -1.0 / y

    def _inside_second_derivative(self, y):
        return 1.0 / (y * y)


class JensenShannon(_HalfLineConjugate):
    """Jensen-Shannon, f(x) = x log x - (x + 1) log((x + 1) / 2).

    f*(y) = -log(2 - e^y) for y < log 2.
    """

    name = "js"
    boundary = math.log(2.0)

    def _inside(self, y):
        return -torch.log(2.0 - torch.exp(y))

    def _inside_derivative(self, y):
        e = torch.exp(y)
        return e / (2.0 - e)

    def _inside_second_derivative(self, y):
        e = torch.exp(y)
        return 2.0 * e / (2.0 - e) ** 2


DIVERGENCES = {
    "kl": KL,
    "kl_dv": KLDonskerVaradhan,
    "alpha": Alpha,
    "chi2": Alpha,
    "reverse_kl": ReverseKL,
    "js": JensenShannon,
}


def get_divergence(name: str, alpha: float | None = None) -> Divergence:
    """Return the divergence called ``name``; ``alpha`` is used by ``"alpha"`` (default 2)."""
    if name not in DIVERGENCES:
        raise ValueError(f"Unknown f-divergence {name!r}; choose one of {sorted(DIVERGENCES)}.")
    if name == "chi2":
        return Alpha(2.0)
    if name == "alpha":
        return Alpha(2.0 if alpha is None else alpha)
    return DIVERGENCES[name]()
