"""Divergences and distances between two samples.

``lipschitz_f_divergence`` estimates the Lipschitz-regularised f-divergence
``D_f^{Gamma_L}(P||Q)`` of paper 000 (eq. 42) by training the critic of Algorithm 1 to
convergence; ``LipschitzFDivergence`` turns it into a scorer for model selection.  The other
functions are the classical two-sample metrics used to compare integration methods: energy
distance, maximum mean discrepancy and Wasserstein distances (through POT).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
import warnings

import numpy as np
import torch
from scipy.spatial.distance import cdist, pdist
from scipy.stats import wasserstein_distance
from sklearn import get_config
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import _safe_indexing, check_array, check_random_state
from sklearn.utils.metadata_routing import MetadataRequest

from ._engine.critic import Critic
from ._engine.device import cpu_threads, resolve_device, resolve_dtype, threads_for
from ._engine.divergences import get_divergence
from ._engine.flow import _minibatch_sampler, pack_rows
from ._engine.networks import MLPLayout, forward, make_activation, spectral_norm_exact
from .utils import check_sample_domain

__all__ = [
    "LipschitzFDivergence",
    "LipschitzWitness",
    "energy_distance",
    "lipschitz_f_divergence",
    "mmd",
    "sinkhorn_w2",
    "wasserstein1",
]

F_DIVERGENCES = ("kl", "kl_dv", "alpha", "chi2", "reverse_kl", "js")

# Convergence is judged on the mean of J over consecutive windows of this many steps.
_WINDOW = 50
# Pairwise distances are computed in blocks of about this many bytes.
_CHUNK_BYTES = 64 * 2**20
# Enough network-simplex iterations for a few thousand rows per side (POT's default, 1e5,
# stops short of the optimum from about 500 rows on).
_EMD_MAX_ITER = 10_000_000
# Critics evaluated on fewer rows per step (all flows together) run on one CPU thread: 3 flows
# of 400 rows ran 7x slower with 2 threads than with 1 on a busy 2-core machine.
_SINGLE_THREAD_ROWS = 10_000
# exp(-x) underflows to 0 in float64 for x > ~745: the plain Sinkhorn kernel is unusable.
_SINKHORN_UNDERFLOW = 700.0


# ------------------------------------------------------------------------------ validation
def _check_pair(X, Y, names=("X", "Y"), min_samples=1):
    """Validate two samples: finite numeric 2-D arrays with the same number of columns."""
    X = check_array(X, dtype=np.float64, input_name=names[0], ensure_min_samples=min_samples)
    Y = check_array(Y, dtype=np.float64, input_name=names[1], ensure_min_samples=min_samples)
    if X.shape[1] != Y.shape[1]:
        raise ValueError(
            f"{names[0]} has {X.shape[1]} features but {names[1]} has {Y.shape[1]}; "
            "the two samples must describe the same features."
        )
    return X, Y


def _check_weights(weights, n_samples, name):
    """Probability weights: uniform when None, else non-negative, finite, normalised."""
    if weights is None:
        return np.full(n_samples, 1.0 / n_samples)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (n_samples,):
        raise ValueError(f"{name} must have shape ({n_samples},), got {weights.shape}.")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"{name} must hold finite non-negative numbers.")
    total = weights.sum()
    if not total > 0:
        raise ValueError(f"{name} sums to 0; at least one row needs a positive weight.")
    return weights / total


def _check_real(value, name, *, low=0.0, allow_none=False, include_low=False):
    """A finite real number above ``low`` (or None when allowed), as a float."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and math.isfinite(value) and (value >= low if include_low else value > low):
        return float(value)
    bound = f">= {low}" if include_low else f"> {low}"
    none = " or None" if allow_none else ""
    raise ValueError(f"{name} must be a finite real number {bound}{none}, got {value!r}.")


def _check_int(value, name, *, low=1, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low:
        return int(value)
    none = " or None" if allow_none else ""
    raise ValueError(f"{name} must be an integer >= {low}{none}, got {value!r}.")


def _check_divergence_params(
    f, L, alpha, hidden_layer_sizes, n_iter, learning_rate, batch_size, tol
):
    """Validate the critic's settings; raise a ValueError naming the bad one."""
    if f not in F_DIVERGENCES:
        raise ValueError(f"Unknown f-divergence f={f!r}; choose one of {list(F_DIVERGENCES)}.")
    if alpha is not None and f != "alpha":
        raise ValueError(f"alpha={alpha!r} is only used with f='alpha', not with f={f!r}.")
    if f == "alpha" and alpha is not None:
        _check_real(alpha, "alpha", low=1.0)
    sizes = hidden_layer_sizes
    if (
        isinstance(sizes, numbers.Integral | str)
        or not hasattr(sizes, "__len__")
        or len(sizes) == 0
        or not all(isinstance(s, numbers.Integral) and s >= 1 for s in sizes)
    ):
        raise ValueError(
            "hidden_layer_sizes must be a non-empty tuple of positive integers, "
            f"got {hidden_layer_sizes!r}."
        )
    _check_real(L, "L", allow_none=True)
    _check_int(n_iter, "n_iter")
    _check_real(learning_rate, "learning_rate")
    _check_int(batch_size, "batch_size", allow_none=True)
    _check_real(tol, "tol", include_low=True, allow_none=True)


# ----------------------------------------------------------------- Lipschitz f-divergence
class LipschitzWitness:
    """The optimal critic ``phi`` of a Lipschitz f-divergence estimate, in NumPy.

    A ReLU network ``phi(x) = W_D relu(... relu(W_1 (x - center) / scale + b_1) ...) + b_D``
    whose weights were trained by :func:`lipschitz_f_divergence`.  With a finite ``L`` it is
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

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.metrics import LipschitzWitness
    >>> phi = LipschitzWitness([np.ones((1, 1)), np.ones((1, 1))], [np.zeros(1), np.zeros(1)],
    ...                        center=np.zeros(1), scale=1.0)
    >>> phi(np.array([[-1.0], [2.0]]))
    array([0., 2.])
    """

    def __init__(self, weights, biases, center, scale, nu=0.0, lipschitz=None):
        self.weights = [np.asarray(w, dtype=np.float64) for w in weights]
        self.biases = [np.asarray(b, dtype=np.float64).ravel() for b in biases]
        self.center = np.asarray(center, dtype=np.float64)
        self.scale = float(scale)
        self.nu = float(nu)
        self.lipschitz = lipschitz

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
            h = np.maximum(h @ w + b, 0.0)
        return h @ self.weights[-1][:, 0] + self.biases[-1][0]

    def __repr__(self) -> str:
        hidden = tuple(w.shape[1] for w in self.weights[:-1])
        return (
            f"LipschitzWitness(n_features={self.n_features_in_}, hidden_layer_sizes={hidden}, "
            f"lipschitz={self.lipschitz})"
        )


def lipschitz_f_divergence(
    X_p,
    X_q,
    *,
    f: str = "kl",
    L: float | None = 1.0,
    alpha: float | None = None,
    hidden_layer_sizes: tuple = (32, 32, 32),
    n_iter: int = 3000,
    learning_rate: float = 2e-3,
    batch_size: int | None = None,
    tol: float | None = 1e-4,
    return_witness: bool = False,
    random_state=None,
    device="auto",
    dtype: str = "float64",
):
    r"""Estimate the Lipschitz-regularised f-divergence :math:`D_f^{\Gamma_L}(P \| Q)`.

    .. math::

        D_f^{\Gamma_L}(P\|Q) = \sup_{\phi \in \mathrm{Lip}_L}
        \Big\{ E_P[\phi] - \inf_{\nu \in \mathbb{R}} \big(\nu + E_Q[f^*(\phi - \nu)]\big) \Big\}

    is computed between the empirical measures of ``X_p`` and ``X_q`` by training the critic
    of Algorithm 1 (paper 000) from scratch to convergence: a ReLU network whose weight
    matrices are rescaled to spectral norm ``L ** (1 / depth)`` after every Adam step.  Every
    ``50`` steps the shift ``nu`` is set to its exact optimum for the current network (a
    one-dimensional convex problem, solved by bisection), and training stops when the mean of
    the objective over the last 50 steps exceeds that of the 50 before by less than
    ``tol * |mean|``.  The returned value is the objective of the final network, made exactly
    ``L``-Lipschitz (exact spectral norms), with the exact optimal ``nu``, on all rows.  It
    is therefore an attained value of the supremum: for superlinear ``f`` (``"kl"``,
    ``"kl_dv"``, ``"alpha"``, ``"chi2"``) it lies below both ``L * W1(X_p, X_q)`` and the
    empirical ``D_f``, up to rounding.

    Properties (paper 000, Theorem A.1, superlinear ``f``): ``D >= 0`` with equality iff
    ``P = Q``; ``D <= min(D_f(P||Q), L * W1(P, Q))``; ``D`` increases with ``L``; ``D / L``
    tends to ``W1`` as ``L -> 0`` and ``D`` to ``D_f`` as ``L -> inf``.  Unlike ``D_f``, it
    is finite for mutually singular samples.  ``L`` is in the units of the data: rescaling
    the data by ``c`` changes ``D`` like rescaling ``L`` by ``1 / c`` (internally the data are
    standardised and ``L`` is converted, which is the same problem, better conditioned).

    Parameters
    ----------
    X_p : array-like of shape (n_samples_p, n_features)
        Sample of ``P`` (in the flow: the particles).
    X_q : array-like of shape (n_samples_q, n_features)
        Sample of ``Q`` (in the flow: the target).  The sizes may differ.
    f : {"kl", "kl_dv", "alpha", "chi2", "reverse_kl", "js"}, default="kl"
        The f-divergence.  ``"kl"`` and ``"kl_dv"`` are the same divergence (the second in
        Donsker-Varadhan form, ``E_P[phi] - log E_Q[exp(phi)]``); ``"chi2"`` is ``"alpha"``
        with ``alpha=2``; ``"js"`` uses ``f(x) = x log x - (x + 1) log((x + 1) / 2)``
        (twice the Jensen-Shannon divergence, at most ``2 log 2``).  ``"reverse_kl"`` and
        ``"js"`` are not superlinear: Theorem A.1 does not cover them, and on (nearly)
        mutually singular samples their estimate follows ``L * W1`` and may exceed ``D_f``.
    L : float or None, default=1.0
        Lipschitz bound of the critic, in data units.  None leaves the critic unconstrained:
        the classical f-divergence, infinite for mutually singular samples (the value then
        only reflects the training budget).
    alpha : float or None, default=None
        Order of the alpha-divergence (``f="alpha"`` only, > 1); None means 2.
    hidden_layer_sizes : tuple of int, default=(32, 32, 32)
        Widths of the critic's hidden layers (the papers' critic for low dimensions).
    n_iter : int, default=3000
        Maximum number of Adam steps.
    learning_rate : float, default=2e-3
        Adam step size.
    batch_size : int or None, default=None
        Rows of each sample per step, drawn with replacement.  None uses every row at every
        step: deterministic and the most accurate.  The final value always uses every row.
        Minibatch critics are noisier, so their value comes out slightly lower; for large
        samples they are much faster (measured on CPU, 5000 rows per sample in 2-D: 20 s
        with None, 1 s and 2 % lower with ``batch_size=1000``).
    tol : float or None, default=1e-4
        Relative improvement of the windowed mean objective below which training stops.
        None always runs ``n_iter`` steps.
    return_witness : bool, default=False
        Also return the trained critic as a :class:`LipschitzWitness`.
    random_state : int, RandomState instance or None, default=None
        Seeds the critic's initialisation (and the batches).
    device : str, default="auto"
        Torch device; "auto" picks CUDA when available.
    dtype : {"float64", "float32"}, default="float64"

    Returns
    -------
    divergence : float
        The estimate of :math:`D_f^{\Gamma_L}(P\|Q)`.
    witness : LipschitzWitness
        Only with ``return_witness=True``: the trained critic ``phi``.

    Raises
    ------
    FloatingPointError
        When the objective becomes non-finite (an unconstrained or very steep critic on
        barely overlapping samples, or heavy tails under KL).
    sklearn.exceptions.ConvergenceWarning
        Warned when ``n_iter`` steps ran without meeting ``tol``.

    See Also
    --------
    LipschitzFDivergence : The same estimate as a scorer for model selection.
    wasserstein1 : The limit ``D / L`` as ``L -> 0``.

    References
    ----------
    .. [1] H. Gu, P. Birmpa, Y. Pantazis, L. Rey-Bellet, M. A. Katsoulakis, "Lipschitz
       regularized gradient flows and generative particle algorithms for high-dimensional
       scarce data", SIAM J. Math. Data Sci. (2024), Algorithm 1 and Theorem A.1.
    .. [2] J. Birrell, P. Dupuis, M. A. Katsoulakis, Y. Pantazis, L. Rey-Bellet,
       "(f, Gamma)-divergences: interpolating between f-divergences and integral
       probability metrics", JMLR 23 (2022).

    Examples
    --------
    For two unit Gaussians a distance ``mu`` apart the answer is known: the KL divergence
    ``mu ** 2 / 2`` when ``L >= mu``, and ``L * mu - L ** 2 / 2`` otherwise.

    >>> import numpy as np
    >>> from sklearn_gpa.metrics import lipschitz_f_divergence
    >>> rng = np.random.RandomState(0)
    >>> P, Q = rng.normal(0, 1, (300, 1)), rng.normal(2, 1, (300, 1))
    >>> d = lipschitz_f_divergence(P, Q, L=1.0, random_state=0)
    >>> bool(abs(d - 1.5) < 0.25)
    True
    """
    X_p, X_q = _check_pair(X_p, X_q, names=("X_p", "X_q"))
    _check_divergence_params(
        f, L, alpha, hidden_layer_sizes, n_iter, learning_rate, batch_size, tol
    )
    seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
    values, witnesses = _estimate_divergences(
        [X_p],
        [X_q],
        f=f,
        L=None if L is None else float(L),
        alpha=alpha,
        hidden_layer_sizes=tuple(int(s) for s in hidden_layer_sizes),
        n_iter=int(n_iter),
        learning_rate=float(learning_rate),
        batch_size=None if batch_size is None else int(batch_size),
        tol=tol,
        seed=seed,
        device=device,
        dtype=dtype,
    )
    value = float(values[0])
    return (value, witnesses[0]) if return_witness else value


def _standardization(samples):
    """One centre and one scale for all rows, so a single L serves every flow."""
    rows = np.concatenate(samples)
    center = rows.mean(0)
    scale = float(np.sqrt(np.mean(rows.var(0))))
    if not (np.all(np.isfinite(center)) and math.isfinite(scale)):
        raise ValueError(
            "The samples are too large in magnitude to standardise in float64; rescale them."
        )
    return center, (scale if scale > 0 else 1.0)


def _estimate_divergences(
    samples_p,
    samples_q,
    *,
    f,
    L,
    alpha,
    hidden_layer_sizes,
    n_iter,
    learning_rate,
    batch_size,
    tol,
    seed,
    device,
    dtype,
):
    """Train K critics at once (one per pair ``(samples_p[k], samples_q[k])``, same L).

    Returns the K estimates (ndarray) and the K witnesses.
    """
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    center, scale = _standardization(list(samples_p) + list(samples_q))
    y, w_y = pack_rows([(p - center) / scale for p in samples_p], torch_dtype, torch_device)
    x, w_x = pack_rows([(q - center) / scale for q in samples_q], torch_dtype, torch_device)
    generator = torch.Generator(device=torch_device).manual_seed(int(seed))
    layout = MLPLayout(y.shape[2], hidden_layer_sizes, len(samples_p))
    rows = 2 * layout.n_flows * (max(y.shape[1], x.shape[1]) if batch_size is None else batch_size)
    single = 1 if rows <= _SINGLE_THREAD_ROWS else None
    cpu = torch_device.type == "cpu"
    threads = threads_for(rows, layout.sizes, n_threads=single) if cpu else None
    with cpu_threads(threads) if cpu else contextlib.nullcontext(), torch.inference_mode():
        critic = Critic(
            layout,
            make_activation("relu"),
            get_divergence(f, alpha),
            # phi(x) = psi((x - center) / scale) is L-Lipschitz iff psi is (L * scale)-Lipschitz.
            lipschitz=None if L is None else L * scale,
            learning_rate=learning_rate,
            generator=generator,
            dtype=torch_dtype,
            device=torch_device,
        )
        z = torch.cat([y, x], 1)
        batch = None
        if batch_size is not None and batch_size < max(y.shape[1], x.shape[1]):
            counts_y = (w_y > 0).sum(1).to(torch_dtype)
            counts_x = (w_x > 0).sum(1).to(torch_dtype)
            batch = _minibatch_sampler(y.shape[1], counts_y, counts_x, batch_size, generator)
        _train_critic(critic, z, y.shape[1], w_y, w_x, batch, n_iter=n_iter, tol=tol, f=f, L=L)
        if critic.constraint is not None:
            _enforce_exact_lipschitz(critic)
        values = _objective(critic, z, y.shape[1], w_y, w_x).cpu().numpy()
    if not np.all(np.isfinite(values)):
        raise FloatingPointError(_non_finite_message(f, L, "at the final evaluation"))
    return values, _witnesses(critic, center, scale, L)


def _train_critic(critic, z, n_particles, w_y, w_x, batch, *, n_iter, tol, f, L):
    """Adam ascent on J until the windowed mean of J stops improving by more than tol."""
    history = torch.empty(n_iter, critic.layout.n_flows, dtype=z.dtype, device=z.device)
    previous = None
    _set_optimal_shift(critic, z, n_particles, w_x)
    for step in range(n_iter):
        data = (z, n_particles, w_y, w_x) if batch is None else batch(z)
        history[step] = critic.train_step(*data, with_value=True)
        if (step + 1) % _WINDOW and step + 1 < n_iter:
            continue
        window = history[max(0, step + 1 - _WINDOW) : step + 1].cpu().numpy()
        if not np.all(np.isfinite(window)):
            raise FloatingPointError(_non_finite_message(f, L, f"after {step + 1} steps"))
        _set_optimal_shift(critic, z, n_particles, w_x)
        mean = window.mean(0)
        if tol is not None and previous is not None:
            if np.all(mean - previous <= tol * np.abs(mean)):
                return
        previous = mean
    if tol is not None:
        warnings.warn(
            f"lipschitz_f_divergence: the {f!r} critic did not converge in n_iter={n_iter} "
            f"steps (tol={tol}); increase n_iter or learning_rate."
            + (" With L=None the divergence may be infinite." if L is None else ""),
            ConvergenceWarning,
            stacklevel=4,
        )


def _non_finite_message(f, L, when):
    return (
        f"The estimate of the {f!r} divergence (L={L}) became non-finite {when}. This happens "
        "when the divergence is infinite or nearly so: an unconstrained or very steep critic "
        "on samples whose supports barely overlap, or heavy tails under KL. Use a finite (or "
        "smaller) L, or the alpha-divergence (f='alpha')."
    )


def _shift_slope(divergence, phi_x, w_x, nu):
    """``E_Q f*'(phi - nu) - 1``: minus the nu-derivative of ``nu + E_Q f*(phi - nu)``.

    Non-increasing in nu (f* is convex); the optimal shift is its root.
    """
    slope = torch.where(w_x > 0, w_x * divergence.conjugate_derivative(phi_x - nu[:, None]), 0.0)
    return slope.sum(1) - 1.0


def _optimal_shift(divergence, phi_x, w_x):
    """The nu minimising ``nu + E_Q f*(phi - nu)`` for each flow, by bisection."""
    real = w_x > 0
    low = torch.where(real, phi_x, math.inf).min(1).values - 1.0
    high = torch.where(real, phi_x, -math.inf).max(1).values + 1.0
    width = torch.ones_like(low)
    for _ in range(64):  # widen until the root is bracketed
        low = torch.where(_shift_slope(divergence, phi_x, w_x, low) < 0, low - width, low)
        high = torch.where(_shift_slope(divergence, phi_x, w_x, high) > 0, high + width, high)
        width = 2.0 * width
    for _ in range(100):
        mid = 0.5 * (low + high)
        above = _shift_slope(divergence, phi_x, w_x, mid) > 0
        low, high = torch.where(above, mid, low), torch.where(above, high, mid)
    return 0.5 * (low + high)


def _set_optimal_shift(critic, z, n_particles, w_x):
    if critic.divergence.uses_nu:
        phi, _, _ = forward(critic.layers, critic.activation, z)
        critic.nu.copy_(_optimal_shift(critic.divergence, phi[:, n_particles:], w_x))


def _objective(critic, z, n_particles, w_y, w_x):
    """J (K,) of the current network with the exact optimal shift, on all rows."""
    _set_optimal_shift(critic, z, n_particles, w_x)
    phi, _, _ = forward(critic.layers, critic.activation, z)
    return critic.divergence.value(phi[:, :n_particles], phi[:, n_particles:], critic.nu, w_y, w_x)


def _enforce_exact_lipschitz(critic):
    """Shrink any weight matrix whose exact spectral norm exceeds ``L ** (1 / depth)``.

    Power iteration slightly underestimates spectral norms; after this, the network is
    L-Lipschitz for sure, so the final value is an attained value of the supremum.
    """
    for w, _ in critic.layers:
        shrink = torch.clamp(critic.layer_norm / spectral_norm_exact(w), max=1.0)
        w.mul_(shrink[:, None, None])


def _witnesses(critic, center, scale, L):
    nu = critic.nu.cpu().numpy() if critic.divergence.uses_nu else np.zeros(critic.nu.shape)
    layers = [(w.cpu().numpy(), b.cpu().numpy()) for w, b in critic.layers]
    return [
        LipschitzWitness(
            [w[k] for w, _ in layers],
            [b[k, 0] for _, b in layers],
            center=center,
            scale=scale,
            nu=nu[k],
            lipschitz=L,
        )
        for k in range(critic.layout.n_flows)
    ]


# -------------------------------------------------------------------------------- scorer
class LipschitzFDivergence:
    r"""Scorer: minus the Lipschitz f-divergence between moved rows and target rows.

    ``scorer(estimator, X, y=None, *, sample_domain=None)`` returns
    :math:`-D_f^{\Gamma_L}(\text{moved} \| \text{target})` (higher is better), estimated by
    :func:`lipschitz_f_divergence` with this scorer's own, fixed ``L``, independent of the
    estimator's, so that a grid search over the estimator's ``L`` compares like with like.

    - With ``sample_domain`` (skada's convention: ``>= 0`` source, ``< 0`` target): the
      moved rows are ``estimator.transform(X[source], sample_domain=sample_domain[source])``
      and the target rows are ``X[target]``.
    - Without: the estimator is generative; the moved rows are
      ``estimator.sample(len(X))`` (with ``random_state`` when ``sample`` accepts it) and
      the target rows are all of ``X``.

    The scorer requests ``sample_domain`` for ``score`` through scikit-learn's metadata
    routing, so inside ``GridSearchCV(..., scoring=LipschitzFDivergence())`` or
    ``cross_validate`` the ``sample_domain`` passed to ``fit`` reaches it once routing is
    enabled (``sklearn.config_context(enable_metadata_routing=True)``); nothing needs to be
    set on the scorer.

    Parameters
    ----------
    f, L, alpha : see :func:`lipschitz_f_divergence`
        Defaults ``"kl"``, ``1.0`` and None.
    hidden_layer_sizes, n_iter, learning_rate, batch_size, tol, device, dtype
        Passed to :func:`lipschitz_f_divergence`.
    random_state : int, RandomState instance or None, default=0
        Seed of the critic (and of ``estimator.sample``): fixed by default, so that every
        candidate of a search is scored with the same critic initialisation.

    See Also
    --------
    lipschitz_f_divergence : The estimate itself.
    energy_distance : A parameter-free alternative (the estimators' own ``score``).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.metrics import LipschitzFDivergence
    >>> class Shift:
    ...     def __init__(self, shift):
    ...         self.shift = shift
    ...     def transform(self, X, sample_domain=None):
    ...         return X + self.shift
    >>> rng = np.random.RandomState(0)
    >>> X = np.vstack([rng.normal(0, 1, (100, 1)), rng.normal(2, 1, (100, 1))])
    >>> sample_domain = np.repeat([1, -2], 100)
    >>> scorer = LipschitzFDivergence()
    >>> good = scorer(Shift(2.0), X, sample_domain=sample_domain)
    >>> bad = scorer(Shift(0.5), X, sample_domain=sample_domain)
    >>> bool(good > bad)
    True
    """

    def __init__(
        self,
        f: str = "kl",
        L: float | None = 1.0,
        alpha: float | None = None,
        *,
        hidden_layer_sizes: tuple = (32, 32, 32),
        n_iter: int = 3000,
        learning_rate: float = 2e-3,
        batch_size: int | None = None,
        tol: float | None = 1e-4,
        random_state=0,
        device="auto",
        dtype: str = "float64",
    ):
        _check_divergence_params(
            f, L, alpha, hidden_layer_sizes, n_iter, learning_rate, batch_size, tol
        )
        self.f = f
        self.L = L
        self.alpha = alpha
        self.hidden_layer_sizes = hidden_layer_sizes
        self.n_iter = n_iter
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.tol = tol
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self._sample_domain_request = True

    def __repr__(self) -> str:
        alpha = "" if self.alpha is None else f", alpha={self.alpha!r}"
        return f"LipschitzFDivergence(f={self.f!r}, L={self.L!r}{alpha})"

    def __call__(self, estimator, X, y=None, *, sample_domain=None) -> float:
        """Minus the divergence between the estimator's moved rows and the target rows.

        Parameters
        ----------
        estimator : fitted transformer (with ``sample_domain``) or generative estimator
        X : array-like of shape (n_samples, n_features)
            Held-out rows: source and target rows together, or target rows only.
        y : ignored
        sample_domain : array-like of shape (n_samples,), default=None

        Returns
        -------
        score : float
        """
        n_samples = _num_rows(X)
        if sample_domain is None:
            if not _is_generative(estimator):
                raise ValueError(self._missing_sample_domain_message(estimator))
            moved, target = _draw(estimator, n_samples, self.random_state), X
        else:
            source = check_sample_domain(sample_domain, n_samples)
            domains = np.asarray(sample_domain)
            moved = estimator.transform(
                _safe_indexing(X, np.flatnonzero(source)), sample_domain=domains[source]
            )
            target = _safe_indexing(X, np.flatnonzero(~source))
        return -lipschitz_f_divergence(
            moved,
            target,
            f=self.f,
            L=self.L,
            alpha=self.alpha,
            hidden_layer_sizes=self.hidden_layer_sizes,
            n_iter=self.n_iter,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            tol=self.tol,
            random_state=self.random_state,
            device=self.device,
            dtype=self.dtype,
        )

    @staticmethod
    def _missing_sample_domain_message(estimator):
        routing = (
            "Pass sample_domain to the fit of the search (or to cross_validate's params)."
            if get_config()["enable_metadata_routing"]
            else "Call scorer(estimator, X, sample_domain=...) directly, or, inside "
            "GridSearchCV / cross_validate, enable metadata routing with "
            "sklearn.set_config(enable_metadata_routing=True) (or sklearn.config_context) "
            "and pass sample_domain to fit."
        )
        return (
            f"LipschitzFDivergence needs sample_domain to tell the source rows of X from its "
            f"target rows: {type(estimator).__name__} is not a generative fit that could "
            f"sample() new rows instead. {routing}"
        )

    # -- metadata routing: the scorer consumes ``sample_domain`` in "score" -------------
    def get_metadata_routing(self) -> MetadataRequest:
        """The metadata this scorer requests: ``sample_domain`` for ``score``.

        Returns
        -------
        routing : sklearn.utils.metadata_routing.MetadataRequest
        """
        request = MetadataRequest(owner=self)
        request.score.add_request(param="sample_domain", alias=self._sample_domain_request)
        return request

    def set_score_request(self, *, sample_domain: bool | str | None = True):
        """Change the ``sample_domain`` request (requested by default).

        Only available when metadata routing is enabled, like scikit-learn's scorers.

        Parameters
        ----------
        sample_domain : bool, str or None, default=True
            True: requested; False: not requested; a str: the alias it is passed under.

        Returns
        -------
        self : LipschitzFDivergence
        """
        if not get_config()["enable_metadata_routing"]:
            raise RuntimeError(
                "set_score_request is only available when metadata routing is enabled: "
                "sklearn.set_config(enable_metadata_routing=True)."
            )
        MetadataRequest(owner=self).score.add_request(param="sample_domain", alias=sample_domain)
        self._sample_domain_request = sample_domain
        return self


def _num_rows(X) -> int:
    shape = getattr(X, "shape", None)
    return int(shape[0]) if shape is not None else len(X)


def _is_generative(estimator) -> bool:
    # An estimator fitted for integration may still define sample() (GPATransporter does).
    sample = getattr(estimator, "sample", None)
    return callable(sample) and getattr(estimator, "mode_", "generation") != "integration"


def _draw(estimator, n_samples, random_state):
    parameters = inspect.signature(estimator.sample).parameters
    if "random_state" in parameters:
        return estimator.sample(n_samples, random_state=random_state)
    return estimator.sample(n_samples)


# ------------------------------------------------------------------ two-sample metrics
def _mean_pairwise(A, B, weights_a, weights_b, kernel=None):
    """``sum_ij a_i b_j k(|A_i - B_j|)`` in row blocks of about ``_CHUNK_BYTES``."""
    rows = max(1, _CHUNK_BYTES // (8 * len(B)))
    total = 0.0
    for start in range(0, len(A), rows):
        block = cdist(A[start : start + rows], B)
        if kernel is not None:
            block = kernel(block)
        total += float(weights_a[start : start + rows] @ block @ weights_b)
    return total


def energy_distance(X, Y, *, sample_weight_x=None, sample_weight_y=None) -> float:
    r"""Squared energy distance :math:`2E|X-Y| - E|X-X'| - E|Y-Y'|` between two samples.

    Exact (every pair, Euclidean norm), computed in blocks so that memory stays bounded
    (about 64 MB) whatever the sample sizes; ``O(n m d)`` time.  This is the V-statistic of
    the weighted empirical measures, which is never negative (rounding below zero is
    returned as 0) and is 0 exactly when the two weighted samples are equal.  In one
    dimension it equals ``scipy.stats.energy_distance(x, y) ** 2`` (SciPy returns the
    square root).

    Parameters
    ----------
    X : array-like of shape (n_samples_x, n_features)
    Y : array-like of shape (n_samples_y, n_features)
    sample_weight_x : array-like of shape (n_samples_x,), default=None
        Non-negative weights of the rows of X (normalised to sum to one); None: uniform.
    sample_weight_y : array-like of shape (n_samples_y,), default=None

    Returns
    -------
    distance : float
        The squared energy distance, in the units of the data.

    See Also
    --------
    mmd : Kernel two-sample statistic.

    References
    ----------
    .. [1] G. J. Szekely, M. L. Rizzo, "Energy statistics: a class of statistics based on
       distances", J. Stat. Plan. Inference 143 (2013).

    Examples
    --------
    >>> from sklearn_gpa.metrics import energy_distance
    >>> energy_distance([[0.0], [1.0]], [[0.0], [1.0]])
    0.0
    >>> energy_distance([[0.0]], [[3.0]])
    6.0
    """
    X, Y = _check_pair(X, Y)
    a = _check_weights(sample_weight_x, len(X), "sample_weight_x")
    b = _check_weights(sample_weight_y, len(Y), "sample_weight_y")
    cross = _mean_pairwise(X, Y, a, b)
    within_x = _mean_pairwise(X, X, a, a)
    within_y = _mean_pairwise(Y, Y, b, b)
    return max(2.0 * cross - within_x - within_y, 0.0)


def _gaussian_kernel(distances, bandwidth):
    return np.exp(-(distances**2) / (2.0 * bandwidth**2))


def _median_heuristic(Z, max_rows=1000):
    """Median of the non-zero pairwise distances (of at most ``max_rows`` fixed rows)."""
    if len(Z) > max_rows:
        Z = Z[np.random.RandomState(0).choice(len(Z), max_rows, replace=False)]
    distances = pdist(Z)
    distances = distances[distances > 0]
    return float(np.median(distances)) if distances.size else 1.0


def mmd(X, Y, *, bandwidth="median", unbiased: bool = True) -> float:
    r"""Squared maximum mean discrepancy with a Gaussian kernel.

    :math:`\mathrm{MMD}^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y)` with
    :math:`k(x, y) = \exp(-|x - y|^2 / (2 \sigma^2))`.  By default the **unbiased**
    U-statistic of Gretton et al. (2012): the within-sample means leave out the diagonal,
    so its expectation is the population MMD^2 and it can be slightly negative when the
    distributions agree.  ``unbiased=False`` gives the biased V-statistic (all pairs),
    never negative.  Exact over all pairs, computed in blocks of bounded memory.

    Parameters
    ----------
    X : array-like of shape (n_samples_x, n_features)
    Y : array-like of shape (n_samples_y, n_features)
    bandwidth : "median" or float, default="median"
        The kernel width :math:`\sigma`.  "median": the median heuristic, the median of
        the non-zero pairwise distances of the pooled rows (of 1000 rows fixed by a seeded
        draw when there are more).  It depends on both samples: to compare several
        methods against one target, compute it once and pass the number.
    unbiased : bool, default=True
        U-statistic (True, needs two rows per sample) or V-statistic (False).

    Returns
    -------
    mmd2 : float
        The squared MMD (unitless, at most 2).

    See Also
    --------
    energy_distance : MMD with the distance kernel, without a bandwidth.

    References
    ----------
    .. [1] A. Gretton, K. M. Borgwardt, M. J. Rasch, B. Schoelkopf, A. Smola, "A kernel
       two-sample test", JMLR 13 (2012).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.metrics import mmd
    >>> rng = np.random.RandomState(0)
    >>> X, Y = rng.normal(0, 1, (200, 2)), rng.normal(0, 1, (200, 2))
    >>> bool(abs(mmd(X, Y)) < 0.01), bool(mmd(X, Y + 2) > 0.3)
    (True, True)
    """
    if not isinstance(unbiased, bool | np.bool_):
        raise ValueError(f"unbiased must be True or False, got {unbiased!r}.")
    X, Y = _check_pair(X, Y, min_samples=2 if unbiased else 1)
    if isinstance(bandwidth, str) and bandwidth == "median":
        bandwidth = _median_heuristic(np.concatenate([X, Y]))
    else:
        bandwidth = _check_real(bandwidth, 'bandwidth (or "median")')
    kernel = functools.partial(_gaussian_kernel, bandwidth=bandwidth)
    n, m = len(X), len(Y)
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    within_x = _mean_pairwise(X, X, a, a, kernel)
    within_y = _mean_pairwise(Y, Y, b, b, kernel)
    if unbiased:  # drop the n diagonal terms k(x, x) = 1 from the n^2 pairs
        within_x = (n * within_x - 1.0) / (n - 1)
        within_y = (m * within_y - 1.0) / (m - 1)
    return within_x + within_y - 2.0 * _mean_pairwise(X, Y, a, b, kernel)


def _uniform(n):
    return np.full(n, 1.0 / n)


def sinkhorn_w2(X, Y, *, reg: float = 0.01, exact_below: int = 5000) -> float:
    r"""2-Wasserstein distance :math:`W_2` between two samples (uniform weights), via POT.

    - One feature: exact, from sorted samples (``ot.wasserstein_1d``), any size.
    - At most ``exact_below`` rows per sample: exact optimal transport (``ot.emd2``, the
      network simplex) on the squared Euclidean cost.  Measured on CPU: 0.8 s at 2000 x
      2000 rows, 3-5 s at 4000 x 4000, faster than Sinkhorn at the same accuracy.
    - More rows: entropic optimal transport (``ot.sinkhorn2``) with
      :math:`\varepsilon` = ``reg`` x the mean squared distance between X and Y rows, so
      the regularisation does not depend on the data's units.  The value is the
      transport cost of the entropic plan, which overestimates :math:`W_2`: by about 1 %
      at ``reg=0.01`` on 2-D Gaussians (2.5 % at 0.02, 6 % at 0.05).  The log-domain solver
      is used when the kernel ``exp(-cost / eps)`` would underflow.

    Both non-trivial paths hold the dense ``n x m`` cost matrix (8 n m bytes).

    Parameters
    ----------
    X : array-like of shape (n_samples_x, n_features)
    Y : array-like of shape (n_samples_y, n_features)
    reg : float, default=0.01
        Relative entropic regularisation (Sinkhorn path only).
    exact_below : int, default=5000
        Largest sample size solved exactly.

    Returns
    -------
    distance : float
        :math:`W_2` itself (not squared), in the units of the data.

    See Also
    --------
    wasserstein1 : The exact 1-Wasserstein distance.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.metrics import sinkhorn_w2
    >>> X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> round(sinkhorn_w2(X, X + [3.0, 4.0]), 6)
    5.0
    """
    import ot  # POT takes half a second to import: only when needed

    X, Y = _check_pair(X, Y)
    reg = _check_real(reg, "reg")
    exact_below = _check_int(exact_below, "exact_below", low=0)
    a, b = _uniform(len(X)), _uniform(len(Y))
    if X.shape[1] == 1:
        squared = ot.wasserstein_1d(X[:, 0], Y[:, 0], p=2)
    else:
        cost = ot.dist(X, Y)
        if max(len(X), len(Y)) <= exact_below:
            squared = ot.emd2(a, b, cost, numItermax=_EMD_MAX_ITER)
        else:
            squared = _sinkhorn_cost(a, b, cost, reg)
    return math.sqrt(max(float(squared), 0.0))


def _sinkhorn_cost(a, b, cost, reg):
    """Transport cost of the entropic plan with epsilon = reg * mean cost."""
    import ot  # POT takes half a second to import: only when needed

    epsilon = reg * float(cost.mean())
    if epsilon == 0.0:  # every row of X and Y is one and the same point
        return 0.0
    nearest = max(cost.min(1).max(), cost.min(0).max())
    method = "sinkhorn_log" if nearest / epsilon > _SINKHORN_UNDERFLOW else "sinkhorn"
    value = ot.sinkhorn2(a, b, cost, epsilon, method=method, numItermax=10_000, stopThr=1e-6)
    if not np.isfinite(value) and method == "sinkhorn":
        value = ot.sinkhorn2(a, b, cost, epsilon, method="sinkhorn_log", numItermax=10_000)
    return float(value)


def wasserstein1(X, Y) -> float:
    r"""Exact 1-Wasserstein distance :math:`W_1` between two samples (uniform weights).

    Optimal transport with the Euclidean cost, solved exactly by POT's network simplex
    (``ot.emd2``), which holds the dense ``n x m`` cost matrix (8 n m bytes; about a second
    at 2000 x 2000 rows on CPU).  With one feature the exact value comes from the sorted
    samples instead (``scipy.stats.wasserstein_distance``), at any size.  :math:`W_1` is
    the limit of ``lipschitz_f_divergence(X, Y, L=L) / L`` as ``L -> 0``.

    Parameters
    ----------
    X : array-like of shape (n_samples_x, n_features)
    Y : array-like of shape (n_samples_y, n_features)

    Returns
    -------
    distance : float
        :math:`W_1`, in the units of the data.

    See Also
    --------
    sinkhorn_w2 : The 2-Wasserstein distance.
    lipschitz_f_divergence : Interpolates between an f-divergence and ``L * W1``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa.metrics import wasserstein1
    >>> X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> round(wasserstein1(X, X + [3.0, 4.0]), 6)
    5.0
    """
    import ot  # POT takes half a second to import: only when needed

    X, Y = _check_pair(X, Y)
    if X.shape[1] == 1:
        return float(wasserstein_distance(X[:, 0], Y[:, 0]))
    cost = ot.dist(X, Y, metric="euclidean")
    return float(ot.emd2(_uniform(len(X)), _uniform(len(Y)), cost, numItermax=_EMD_MAX_ITER))
