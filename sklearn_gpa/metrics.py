"""Divergences and distances between two samples.

``lipschitz_f_divergence`` estimates the Lipschitz-regularised f-divergence
``D_f^{Gamma_L}(P||Q)`` of paper 000 (eq. 42) with the critic of Algorithm 1, trained to
convergence by the engine (``_engine.estimate``); ``LipschitzFDivergence`` turns it into a
scorer for model selection.  The classical two-sample metrics used to compare integration
methods (energy distance, maximum mean discrepancy and Wasserstein distances through POT)
live in ``_two_sample`` and are imported from here.
"""

from __future__ import annotations

import inspect
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn import get_config
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import _safe_indexing, check_random_state
from sklearn.utils._param_validation import (
    StrOptions,
    validate_parameter_constraints,
    validate_params,
)
from sklearn.utils.metadata_routing import MetadataRequest

from ._engine import cross_fit_divergence, estimate_divergence, standardization
from ._two_sample import energy_distance, mmd, sinkhorn_w2, wasserstein1
from ._witness import LipschitzWitness
from .utils import NumberInterval, check_pair, check_sample_domain, check_sizes

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
#: The critic's networks: a spectrally normalised ReLU network, or the tight GroupSort
#: (MaxMin) network with orthonormal weights.
NETWORKS = ("relu", "groupsort")
#: ``activation="auto"`` takes GroupSort where ``L`` times the rows' scale (the root of
#: their mean feature variance) is at most this: the W1 regime, where ReLU's estimate of
#: ``D / L`` falls 20-57 % short of W1 and GroupSort's is within 7 % (2-10 dimensions);
#: ReLU above, where GroupSort fits the samples themselves (10-D, L = 1: above the
#: closed-form KL).  Measurements: the user guide.
AUTO_GROUPSORT_MAX_L = 0.5
#: The scorer's ``n_iter="auto"``: the steps of a cross-fitted score's critics (whose weights
#: are the best on their validation rows whenever they stop) and of an in-sample one.
SCORER_CROSS_FIT_N_ITER = 500
SCORER_IN_SAMPLE_N_ITER = 3000


#: Constraints of the critic's settings, shared by the function and the scorer.
_DIVERGENCE_CONSTRAINTS = {
    "f": [StrOptions(set(F_DIVERGENCES))],
    "L": [NumberInterval(Real, 0, None, closed="neither"), None],
    "alpha": [NumberInterval(Real, 1, None, closed="neither"), None],
    "activation": [StrOptions({"auto", *NETWORKS})],
    "hidden_layer_sizes": ["array-like"],
    "n_iter": [NumberInterval(Integral, 1, None, closed="left")],
    "learning_rate": [NumberInterval(Real, 0, None, closed="neither")],
    "batch_size": [NumberInterval(Integral, 1, None, closed="left"), None],
    "tol": [NumberInterval(Real, 0, None, closed="left"), None],
    "cross_fit": [NumberInterval(Integral, 2, None, closed="left"), None],
    "random_state": ["random_state"],
    "dtype": [StrOptions({"float32", "float64"})],
}


#: The scorer's: ``n_iter`` may also be "auto".
_SCORER_CONSTRAINTS = {
    **_DIVERGENCE_CONSTRAINTS,
    "n_iter": [*_DIVERGENCE_CONSTRAINTS["n_iter"], StrOptions({"auto"})],
}


def _check_critic(*, f, alpha, activation, hidden_layer_sizes):
    """What ``validate_params`` cannot say: the widths, and settings that go together."""
    if alpha is not None and f != "alpha":
        raise ValueError(f"alpha={alpha!r} is only used with f='alpha', not with f={f!r}.")
    sizes = check_sizes(hidden_layer_sizes, "hidden_layer_sizes", minimum=1)
    if activation == "groupsort" and any(s % 2 for s in sizes):
        raise ValueError(
            "activation='groupsort' sorts pairs of units: hidden_layer_sizes must be even, "
            f"got {hidden_layer_sizes!r}."
        )
    return sizes


# ----------------------------------------------------------------- Lipschitz f-divergence
@validate_params(
    {
        "X_p": ["array-like"],
        "X_q": ["array-like"],
        **_DIVERGENCE_CONSTRAINTS,
        "return_std": ["boolean"],
        "return_witness": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def lipschitz_f_divergence(
    X_p,
    X_q,
    *,
    f: str = "kl",
    L: float | None = 1.0,
    alpha: float | None = None,
    activation: str = "auto",
    hidden_layer_sizes: tuple = (32, 32, 32),
    n_iter: int = 3000,
    learning_rate: float = 2e-3,
    batch_size: int | None = None,
    tol: float | None = 1e-4,
    cross_fit: int | None = None,
    return_std: bool = False,
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
    of Algorithm 1 (paper 000) from scratch to convergence: a network whose weight matrices
    are projected back onto the constraint (see ``activation``) after every Adam step.  Every
    ``50`` steps the shift ``nu`` is set to its exact optimum for the current network (a
    one-dimensional convex problem, solved by bisection), and training stops when the mean of
    the objective over the last 50 steps exceeds that of the 50 before by less than
    ``tol * |mean|``.  The returned value is the objective of the final network, made exactly
    ``L``-Lipschitz (exact spectral norms), with the exact optimal ``nu``, on all rows
    (unless ``cross_fit``).  It
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
    activation : {"auto", "relu", "groupsort"}, default="auto"
        The critic's network.  ``"auto"``: ``"groupsort"`` where ``L`` times the rows'
        scale (the root of their mean feature variance) is at most 0.5, the regime where
        ``D / L`` approaches ``W1``; ``"relu"`` otherwise (and for ``L=None`` or odd
        hidden widths).  ``"relu"``: ReLU with each weight matrix rescaled to spectral
        norm ``L ** (1 / depth)``; its gradient norm stays well below ``L`` (ReLU drops half
        the gradient at each layer), so it cannot attain every L-Lipschitz function and
        ``D / L`` falls short of ``W1`` at small ``L``.  ``"groupsort"``: MaxMin activations
        (each pair of units sorted) with orthonormal weight matrices (Anil, Lucas & Grosse,
        2019), a network whose gradient norm can reach ``L``: use it for ``W1``-like
        estimates (small ``L``).  It needs even hidden widths and fits the samples
        themselves more easily at large ``L``.  See the user guide for measurements.
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
        samples (thousands of rows) they are much faster: try ``batch_size=1000`` (timings
        in the :ref:`User Guide <user_guide>`, section "Measurements behind the defaults").
    tol : float or None, default=1e-4
        Relative improvement of the windowed mean objective below which training stops.
        None always runs ``n_iter`` steps.
    cross_fit : int or None, default=None
        None: the supremum over the empirical measures, attained on the very rows it is computed
        on, which exceeds the population divergence when the critic can fit the samples
        themselves (large ``L``, few rows).  An int k >= 2: the k-fold cross-fitted estimate.  Each
        fold's critic trains on the other folds only: on two thirds of those rows, keeping the
        weights that did best on the remaining third.  Networks bounded by ``L``, ``0.3 * L``
        and ``0.1 * L`` are trained side by side and the fold keeps, by its score on that third,
        one of the three or their mean: all of them are L-Lipschitz, and the smaller bounds fit
        the rows themselves less.  For ``f="kl"`` and ``"kl_dv"`` a linear critic competes
        with them: the log-odds of a logistic regression of the fold's training rows of P
        against Q (the log density ratio wherever that is linear, e.g. Gaussians that differ
        by a translation), its slope set to 0 where it is not significant (1 %), shrunk where
        it is hardly more than noise and bounded by ``L``.  The fold keeps it unless a network
        scores better on the validation third by more than one standard error where the same
        regression with squares, products, cubes and fourth powers of the coordinates added
        finds a non-linear log ratio (a Wald test at the 1 % level, on the fold's training
        rows), by more than five where it does not.  On two samples of one distribution the
        estimate is then often exactly 0, with a standard error of 0.  The critic is capped,
        below at its lowest value on the training rows of P and above at its highest on those
        of Q (a capped L-Lipschitz function is L-Lipschitz), so that a held-out Q row beyond
        the training rows cannot weigh with an exponential term (KL) it never had in training.
        It is evaluated on its own fold with the shift ``nu`` optimal on the validation third
        of Q for a network (fitted to be low on the other training rows of Q, where the shift
        would come out too low), on all training rows of Q for the linear critic; the estimate
        averages those held-out values, which do not exceed the population divergence
        on average.  It is noisier and lower than the in-sample value (the critics saw fewer
        rows and are capped); for KL at large ``L`` the held-out terms ``exp(phi - nu - 1)`` are
        heavy-tailed even for the exact log density ratio, so compare several draws or seeds,
        not one.  5 folds are a good choice.  Each sample needs ``2 * k`` rows.
    return_std : bool, default=False
        Also return the standard error of the cross-fitted estimate (``cross_fit`` only).
    return_witness : bool, default=False
        Also return the trained critic as a :class:`LipschitzWitness` (not with
        ``cross_fit``).
    random_state : int, RandomState instance or None, default=None
        Seeds the critic's initialisation (and the batches).
    device : str, default="auto"
        Torch device; "auto" picks CUDA when available.
    dtype : {"float64", "float32"}, default="float64"

    Returns
    -------
    divergence : float
        The estimate of :math:`D_f^{\Gamma_L}(P\|Q)`.
    std_error : float
        Only with ``return_std=True``: its standard error (0 where every fold's critic is
        constant, as is common for two samples of one distribution under KL).
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

    The cross-fitted estimate comes with a standard error; for two samples of one
    distribution it is close to 0.

    >>> d, se = lipschitz_f_divergence(P, rng.normal(0, 1, (300, 1)), cross_fit=5,
    ...                                return_std=True, random_state=0)
    >>> bool(abs(d) < 2 * se + 0.01)
    True
    """
    sizes = _check_critic(
        f=f, alpha=alpha, activation=activation, hidden_layer_sizes=hidden_layer_sizes
    )
    if return_std and cross_fit is None:
        raise ValueError(
            "return_std=True needs a cross-fitted estimate: set cross_fit=2 (or more)."
        )
    if return_witness and cross_fit is not None:
        raise ValueError(
            "return_witness=True needs cross_fit=None: a cross-fitted estimate has one "
            "critic per fold."
        )
    X_p, X_q = check_pair(
        X_p, X_q, names=("X_p", "X_q"), min_samples=1 if cross_fit is None else 2 * cross_fit
    )
    activation = _resolve_activation(activation, L, X_p, X_q, sizes)
    settings = dict(
        f=f,
        L=None if L is None else float(L),
        alpha=alpha,
        activation=activation,
        hidden_layer_sizes=sizes,
        n_iter=n_iter,
        learning_rate=learning_rate,
        batch_size=batch_size,
        tol=tol,
        seed=check_random_state(random_state).randint(np.iinfo(np.int32).max),
        device=device,
        dtype=dtype,
    )
    if cross_fit is not None:
        estimate = cross_fit_divergence(X_p, X_q, n_folds=int(cross_fit), **settings)
        _warn_unless_converged(estimate.converged, f, n_iter, tol, L)
        return (estimate.value, estimate.std_error) if return_std else estimate.value
    estimate = estimate_divergence([X_p], [X_q], **settings)
    _warn_unless_converged(estimate.converged, f, n_iter, tol, L)
    value = float(estimate.values[0])
    if not return_witness:
        return value
    weights, biases = zip(*estimate.layers[0])
    witness = LipschitzWitness(
        weights,
        biases,
        center=estimate.center,
        scale=estimate.scale,
        nu=estimate.nu[0],
        lipschitz=L,
        activation=activation,
    )
    return value, witness


def _resolve_activation(activation, L, X_p, X_q, sizes):
    """``activation``, with ``"auto"`` resolved from ``L`` and the rows' scale (ReLU for
    odd hidden widths, which GroupSort cannot pair)."""
    if activation != "auto":
        return activation
    if L is None or any(size % 2 for size in sizes):
        return "relu"
    # The bound the critic has in the units the estimate trains in.
    _, scale = standardization([X_p, X_q])
    return "groupsort" if L * scale <= AUTO_GROUPSORT_MAX_L else "relu"


def _warn_unless_converged(converged, f, n_iter, tol, L):
    if not converged:
        warnings.warn(
            f"lipschitz_f_divergence: the {f!r} critic did not converge in n_iter={n_iter} "
            f"steps (tol={tol}); increase n_iter or learning_rate."
            + (" With L=None the divergence may be infinite." if L is None else ""),
            ConvergenceWarning,
            stacklevel=3,
        )


# -------------------------------------------------------------------------------- scorer
class LipschitzFDivergence:
    r"""Scorer: minus the Lipschitz f-divergence between moved rows and target rows.

    ``scorer(estimator, X, y=None, *, sample_domain=None)`` returns
    :math:`-D_f^{\Gamma_L}(\text{moved} \| \text{target})` (higher is better), estimated by
    :func:`lipschitz_f_divergence` with this scorer's own, fixed ``L``, independent of the
    estimator's, so that a grid search over the estimator's ``L`` compares like with like.
    By default the estimate is 3-fold cross-fitted (``cross_fit``): each critic is scored on
    rows it did not train on, so a candidate gains nothing from rows a critic can only tell
    apart by fitting them, nor from samples that copy the rows they are scored on.
    :meth:`divergence` gives the estimate with its standard error.

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
    activation, hidden_layer_sizes, learning_rate, batch_size, tol, device, dtype
        Passed to :func:`lipschitz_f_divergence`.
    n_iter : int or "auto", default="auto"
        Maximum number of Adam steps of each critic.  "auto": 500 with ``cross_fit``, 3000
        without.  A cross-fitted critic returns to its best weights on its validation rows
        whenever it stops, so capping its training leaves the score a held-out estimate; it
        bounds the time of critics that would otherwise run all 3000 steps, and gave the
        same picks as 3000 steps in the user guide's searches.  The capped critics raise no
        ``ConvergenceWarning``; an int is passed as it is, with the warning.
    cross_fit : int or None, default=3
        Passed to :func:`lipschitz_f_divergence`.  An int k (default 3) scores with the
        k-fold cross-fitted estimate: each fold's critic trains on the other folds and is
        evaluated on its own.  It does not reward candidates whose moved rows a critic can
        separate from the target rows only by fitting the rows themselves, nor generative
        fits whose samples copy the rows they are scored on (in-sample, an exact copy scores
        a perfect 0).  It is cautious: a difference the held-out rows cannot show comes out
        as exactly 0 (the linear critic's slope is set to 0 unless significant), so close
        candidates often tie, and ``GridSearchCV`` keeps the first of equal scores: list
        the grid from the simplest candidate (fewest steps, smallest ``L``) up.  Each
        sample (moved and target rows of a test split) needs ``2 * k`` rows, and on a few
        tens of rows a side a moderately wrong candidate may tie with the right one: prefer
        few, large test splits (2 or 3).  On a busy machine, ``torch.set_num_threads(1)``
        keeps the batched critics of a cross-fitted score from waiting for each other's
        threads.  None: the in-sample supremum, several times faster (the cheap choice for
        many rows, where its bias is smaller) and more sensitive to small differences on
        few rows, but biased upwards by how well the critic fits each candidate's own rows;
        it rewards copies of the scored rows.  With 2 folds the copies can still win by
        noise; 5 cost more than 3 without picking better (measurements: the user guide).
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
        activation: str = "auto",
        hidden_layer_sizes: tuple = (32, 32, 32),
        n_iter: int | str = "auto",
        learning_rate: float = 2e-3,
        batch_size: int | None = None,
        tol: float | None = 1e-4,
        cross_fit: int | None = 3,
        random_state=0,
        device="auto",
        dtype: str = "float64",
    ):
        self.f = f
        self.L = L
        self.alpha = alpha
        self.activation = activation
        self.cross_fit = cross_fit
        self.hidden_layer_sizes = hidden_layer_sizes
        self.n_iter = n_iter
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.tol = tol
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self._sample_domain_request = True
        # Checked here, as scikit-learn checks a function's arguments: this is a scorer, not
        # an estimator, and no fit comes to check them later.
        validate_parameter_constraints(
            _SCORER_CONSTRAINTS, vars(self), caller_name=type(self).__name__
        )
        _check_critic(
            f=f, alpha=alpha, activation=activation, hidden_layer_sizes=hidden_layer_sizes
        )

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
        return -self.divergence(estimator, X, sample_domain=sample_domain)

    def divergence(self, estimator, X, y=None, *, sample_domain=None, return_std=False):
        """The divergence the score is minus, optionally with its standard error.

        Parameters
        ----------
        estimator, X, y, sample_domain
            As for calling the scorer.
        return_std : bool, default=False
            Also return the standard error of the cross-fitted estimate (needs
            ``cross_fit``): differences between candidates smaller than about twice
            it are noise.

        Returns
        -------
        divergence : float
        std_error : float
            Only with ``return_std=True``.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_gpa.metrics import LipschitzFDivergence
        >>> class Sampler:
        ...     def sample(self, n_samples, random_state=None):
        ...         return np.random.RandomState(random_state).normal(1.0, 1, (n_samples, 1))
        >>> X = np.random.RandomState(1).normal(0, 1, (100, 1))
        >>> d, se = LipschitzFDivergence().divergence(Sampler(), X, return_std=True)
        >>> bool(d > 2 * se)
        True
        """
        n_samples = _num_rows(X)
        if sample_domain is None:
            if not _is_generative(estimator):
                raise ValueError(self._missing_sample_domain_message(estimator))
            moved, target = _draw(estimator, n_samples, self.random_state), X
            n_features, width = np.shape(X)[1:], np.shape(moved)[1:]
            if len(n_features) == len(width) == 1 and n_features != width:
                raise ValueError(  # said of the user's X, not of "X_p" and "X_q"
                    f"X has {n_features[0]} features, but {type(estimator).__name__} "
                    f"samples rows of {width[0]}."
                )
        else:
            source = check_sample_domain(sample_domain, n_samples)
            domains = np.asarray(sample_domain)
            moved = estimator.transform(
                _safe_indexing(X, np.flatnonzero(source)), sample_domain=domains[source]
            )
            target = _safe_indexing(X, np.flatnonzero(~source))
        n_iter, capped = self.n_iter, False
        if n_iter == "auto":
            capped = self.cross_fit is not None
            n_iter = SCORER_CROSS_FIT_N_ITER if capped else SCORER_IN_SAMPLE_N_ITER
        with warnings.catch_warnings():
            if capped:
                # The cap is deliberate: the critics keep their best validation weights.
                warnings.simplefilter("ignore", ConvergenceWarning)
            return lipschitz_f_divergence(
                moved,
                target,
                f=self.f,
                L=self.L,
                alpha=self.alpha,
                activation=self.activation,
                hidden_layer_sizes=self.hidden_layer_sizes,
                n_iter=n_iter,
                learning_rate=self.learning_rate,
                batch_size=self.batch_size,
                tol=self.tol,
                cross_fit=self.cross_fit,
                return_std=return_std,
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
