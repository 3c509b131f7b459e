"""Estimate Lipschitz-regularised f-divergences between samples with trained critics.

``estimate_divergence`` trains the critic of Algorithm 1 from scratch to convergence on K
pairs of samples at once (one flow per pair) and returns the attained objective on the
same rows: the supremum over the empirical measures.  ``cross_fit_divergence`` trains one
critic per fold on the other folds and evaluates it on its own fold only, so the estimate
is an average of values of fixed functions on rows they never saw: it does not exceed the
population divergence on average, and it comes with a standard error.

Rows are standardised with one centre and one scale for all pairs (and ``L`` converted),
which is the same problem, better conditioned.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from .critic import Critic
from .device import resolve_device, resolve_dtype, threads_context
from .divergences import get_divergence
from .flow import minibatch_sampler, pack_rows
from .networks import MLPLayout, forward, make_activation

__all__ = [
    "CrossFitEstimate",
    "DivergenceEstimate",
    "cross_fit_divergence",
    "estimate_divergence",
    "standardization",
]

# Convergence is judged on the mean of J over consecutive windows of this many steps.
_WINDOW = 50
# Cross-fitting validates each critic on this share (1 / 3) of its training rows, and stops
# after this many checks without a better validation score.
_VALIDATION_SHARE = 3
# Cross-fitted critics are trained with the bounds L times these, the best kept per fold.
_LADDER = (1.0, 0.3, 0.1)
_VALIDATE_EVERY = 10
_PATIENCE = 20
# Divergences whose optimal critic is the log density ratio (up to a constant): the
# cross-fitted critic of these can be a linear function, the log-odds of a classifier.
_LOG_RATIO = ("kl", "kl_dv")
# The logistic regression that gives the linear part: Newton steps, and a ridge (on the mean
# loss, standardised rows) that keeps it finite on separable rows.
_LOGISTIC_ITERATIONS = 50
_LOGISTIC_RIDGE = 1e-4
# Its slope is set to 0 unless a Wald test finds it non-zero at this level.
_SLOPE_LEVEL = 0.01
# A fold keeps a network only where its validation score beats the linear part's by more
# than this many standard errors of the paired difference: _SELECT_SE where a Wald test of
# non-linear terms added to the logistic regression rejects a linear log density ratio at
# the level _LINEARITY_LEVEL, _SELECT_SE_LINEAR where it does not.  The test needs
# _LINEARITY_ROWS_PER_PARAMETER training rows of each sample per coefficient; with fewer,
# _SELECT_SE applies.
_SELECT_SE = 1.0
_SELECT_SE_LINEAR = 5.0
_LINEARITY_LEVEL = 0.01
_LINEARITY_ROWS_PER_PARAMETER = 5


@dataclass
class DivergenceEstimate:
    """K in-sample estimates and the critics that attain them (NumPy).

    ``layers[k]`` lists flow k's ``(W, b)`` with ``W`` (fan_in, fan_out), acting on
    ``(x - center) / scale``; ``nu[k]`` is its optimal shift; ``converged`` whether the
    stopping rule was met within ``n_iter`` steps.
    """

    values: np.ndarray
    layers: list
    nu: np.ndarray
    center: np.ndarray
    scale: float
    converged: bool


@dataclass
class CrossFitEstimate:
    """A cross-fitted estimate: ``value`` with its ``std_error`` and the per-fold values."""

    value: float
    std_error: float
    fold_values: np.ndarray
    converged: bool


@dataclass
class _Settings:
    f: str = "kl"
    alpha: float | None = None
    L: float | None = 1.0
    activation: str = "relu"
    hidden_layer_sizes: tuple = (32, 32, 32)
    n_iter: int = 3000
    learning_rate: float = 2e-3
    batch_size: int | None = None
    tol: float | None = 1e-4
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float64"


def estimate_divergence(samples_p, samples_q, **settings) -> DivergenceEstimate:
    """Train K critics at once, one per pair ``(samples_p[k], samples_q[k])``, same ``L``.

    ``settings``: ``f``, ``alpha``, ``L`` (data units; None: unconstrained),
    ``activation`` (``"groupsort"``: the tight network), ``hidden_layer_sizes``, ``n_iter``,
    ``learning_rate``, ``batch_size`` (None: every row every step), ``tol`` (None: always
    ``n_iter`` steps), ``seed``, ``device``, ``dtype``.  The value of each pair is the
    objective of its final critic, made exactly L-Lipschitz, with the exact optimal shift,
    on all rows.  Raises ``FloatingPointError`` when the objective turns non-finite.
    """
    s = _Settings(**settings)
    samples_p = [np.asarray(p, dtype=np.float64) for p in samples_p]
    samples_q = [np.asarray(q, dtype=np.float64) for q in samples_q]
    center, scale = standardization(samples_p + samples_q)
    with _trained_critics(samples_p, samples_q, center, scale, s) as trained:
        critic = trained.critic
        values = objective(critic, trained.z, trained.n_particles, trained.w_y, trained.w_x)
        values = values.cpu().numpy()
        if not np.all(np.isfinite(values)):
            raise FloatingPointError(
                _non_finite_message(
                    s.f, s.L, "non-finite at the final evaluation", critic.lipschitz
                )
            )
        steep = critic.lipschitz is not None and critic.lipschitz > _STEEP
        if steep and np.any(values < 0):
            # A constant critic attains 0: a negative supremum is a training that failed
            # (L=1 on rows of spread 1e5 gave -169, silently).
            when = f"unreliable at the final evaluation (negative: {values.min():.4g})"
            raise FloatingPointError(_non_finite_message(s.f, s.L, when, critic.lipschitz))
        layers = [(w.cpu().numpy(), b.cpu().numpy()) for w, b in critic.layers]
        nu = critic.nu.cpu().numpy() if critic.divergence.uses_nu else np.zeros(len(values))
    return DivergenceEstimate(
        values=values,
        layers=[[(w[k], b[k, 0]) for w, b in layers] for k in range(len(values))],
        nu=nu,
        center=center,
        scale=scale,
        converged=trained.converged,
    )


def cross_fit_divergence(
    X_p,
    X_q,
    *,
    n_folds: int = 2,
    clip: bool = True,
    ladder=_LADDER,
    linear: bool = True,
    **settings,
) -> CrossFitEstimate:
    """Cross-fitted estimate of the divergence between the samples ``X_p`` and ``X_q``.

    The rows of each sample are split at random (``settings["seed"]``) into ``n_folds``
    folds.  Fold k's critic trains on the other folds: on two thirds of those rows, keeping
    the weights that scored best on the last third (checked every 10 steps), which stops it
    from fitting the rows themselves.  One network per rung ``c`` of ``ladder`` is trained
    (all folds and rungs as one batch), bounded by ``c * L`` (its rows squeezed by ``c``
    towards the centre), and the fold keeps, by the validation score, one rung or the mean
    of all of them: every candidate is L-Lipschitz, and the lower rungs fit the rows less.

    With ``linear`` (KL and its Donsker-Varadhan form only: their optimal critic is the log
    density ratio), each fold has one more candidate, the linear critic ``w . x``: ``w`` the
    slope of a logistic regression of the fold's training rows of P against those of Q (its
    log-odds is the log density ratio wherever that is linear, as between Gaussians that
    differ by a translation), set to 0 unless it differs from 0 at the 1 % level, shrunk
    towards 0 where it is not clearly more than noise (``_shrunk``) and to norm ``L`` where
    longer.  The fold keeps the linear critic unless a network candidate beats it on the
    validation third by more than one standard error of the paired difference where the
    same regression with squares, products, cubes and fourth powers of the coordinates
    added finds them non-zero (a Wald test at the 1 % level on the fold's training rows,
    ``_linear_log_ratio``), by more than five where it does not.  Where the log density
    ratio is linear the networks fit it worse than d + 1 parameters do, and the validation
    third (107 heavy-tailed rows on which early stopping chose the networks' weights) is a
    poor judge: networks won there by 3 to 4 standard errors on folds where they lost on
    the held-out rows.  A difference that no polynomial of degree 4 shows passes the test,
    and the networks must then win by five.

    With ``clip``, the critic is capped below at its lowest value on the training rows of P
    and above at its highest on those of Q (a capped L-Lipschitz function is L-Lipschitz),
    so that a held-out Q row cannot reach values of ``f*`` that no training row of Q had.
    The critic is evaluated on fold k with the shift ``nu`` optimal on the validation third
    of Q for a network (fitted to be low on its fit rows of Q, it would make a shift taken
    there too low for rows it never saw), on all training rows of Q for the linear critic
    (d + 1 parameters barely fit the rows; three times as many rows make a less noisy
    shift).  The estimate is a mean of per-row terms,
    ``phi(x)`` on P rows and ``-(nu + f*(phi(y) - nu))`` on Q rows, of a function fixed
    before it saw them, whose expectation is the population objective of that function, at
    most the population divergence; its standard error is ``sqrt(var_P / n_P + var_Q /
    n_Q)`` of those terms.  Each sample needs at least ``2 * n_folds`` rows.
    """
    s = _Settings(**settings)
    X_p, X_q = np.asarray(X_p, dtype=np.float64), np.asarray(X_q, dtype=np.float64)
    rng = np.random.default_rng(s.seed)
    folds_p = np.array_split(rng.permutation(len(X_p)), n_folds)
    folds_q = np.array_split(rng.permutation(len(X_q)), n_folds)
    train_p = [np.delete(X_p, fold, 0) for fold in folds_p]
    train_q = [np.delete(X_q, fold, 0) for fold in folds_q]
    center, scale = standardization([X_p, X_q])
    # A network fed (x - center) * c + center is (c * L)-Lipschitz in x: rung c.
    rungs = tuple(ladder) if s.L is not None else (1.0,)
    n_rungs = len(rungs)
    # Each training set shuffled, a third of it (the first of three parts) moved last: the
    # validation rows.
    train_p, n_fit_p = _validation_last(train_p, rng)
    train_q, n_fit_q = _validation_last(train_q, rng)
    # The linear part of each fold's critic, in standardised units (F, d).
    linear = linear and s.f in _LOG_RATIO
    if linear:
        slopes = _logistic_slopes(
            [(p - center) / scale for p in train_p],
            [(q - center) / scale for q in train_q],
            None if s.L is None else s.L * scale,
        )
        looks_linear = torch.as_tensor(
            _linear_log_ratio(
                [(p - center) / scale for p in train_p], [(q - center) / scale for q in train_q]
            )
        )

    def per_rung(groups):
        """Rows of network (k, r): ``groups[k]`` squeezed by rung r."""
        return [center + (g - center) * c for g in groups for c in rungs]

    validation = ([n for n in n_fit_p for _ in rungs], [n for n in n_fit_q for _ in rungs])
    nets_p, nets_q = per_rung(train_p), per_rung(train_q)
    with _trained_critics(nets_p, nets_q, center, scale, s, validation) as trained:
        dtype, device = trained.z.dtype, trained.z.device

        def linear_on(groups):
            """The linear part of fold k on ``groups[k]``, for each of its networks (K, T)."""
            values = [((g - center) / scale) @ w for g, w in zip(groups, slopes) for _ in rungs]
            return pack_rows([v[:, None] for v in values], dtype, device)[0][..., 0]

        def candidates(phi, lin):
            """Each fold's candidates (F, C, T) from the networks' values ``phi`` (K, T) and
            the linear parts ``lin`` (K, T; None without one): its rungs, their mean, and the
            linear part (C = R + 2; R + 1 without it)."""
            phi = phi.reshape(n_folds, n_rungs, -1)
            phi = torch.cat([phi, phi.mean(1, keepdim=True)], 1)
            if lin is None:
                return phi
            return torch.cat([phi, lin.reshape(n_folds, n_rungs, -1)[:, :1]], 1)

        offset_z = torch.cat([linear_on(train_p), linear_on(train_q)], 1) if linear else None
        best = _best_candidates(
            trained, candidates, offset_z, looks_linear.to(device) if linear else None
        )[:, None, None]

        def critic_on(groups):
            """Fold k's critic (its best candidate) on ``groups[k]``, and the row weights."""
            rows, weights = pack_rows(per_rung(groups), dtype, device)
            lin = linear_on(groups) if linear else None
            phi = torch.take_along_dim(candidates(trained.phi(rows), lin), best, 1)
            return phi[:, 0], weights[::n_rungs]

        # The shift: on the validation third of Q for a network (fitted to be low on the
        # other rows), on all training rows of Q for the linear part.
        alone = (best[:, 0, 0] == n_rungs + 1).cpu().numpy()
        shift_q = [q if a else q[n:] for q, n, a in zip(train_q, n_fit_q, alone)]
        terms_p, terms_q = _held_out_terms(
            critic_on,
            trained.critic.divergence,
            (train_p, train_q),
            ([X_p[f] for f in folds_p], [X_q[f] for f in folds_q]),
            shift_q,
            clip,
        )
        converged = trained.converged
    terms_p = [terms_p[k, : len(f)] for k, f in enumerate(folds_p)]
    terms_q = [terms_q[k, : len(f)] for k, f in enumerate(folds_q)]
    fold_values = np.array([p.mean() + q.mean() for p, q in zip(terms_p, terms_q)])
    all_p, all_q = np.concatenate(terms_p), np.concatenate(terms_q)
    if not (np.all(np.isfinite(all_p)) and np.all(np.isfinite(all_q))):
        steep = None if s.L is None else s.L * scale
        raise FloatingPointError(
            _non_finite_message(s.f, s.L, "non-finite on the held-out rows", steep)
        )
    std_error = math.sqrt(all_p.var(ddof=1) / len(all_p) + all_q.var(ddof=1) / len(all_q))
    return CrossFitEstimate(
        value=float(all_p.mean() + all_q.mean()),
        std_error=std_error,
        fold_values=fold_values,
        converged=converged,
    )


def _held_out_terms(critic_on, divergence, train, held_out, shift_q, clip):
    """Per-row terms (F, T) of each fold's critic on its held-out rows of P and of Q.

    ``train``, ``held_out``: per-fold row groups ``(groups_p, groups_q)``; ``shift_q``: per
    fold, the Q rows whose optimal shift ``nu`` the critic is evaluated with.  With
    ``clip``, the critic is capped at its range on the training rows (see
    ``cross_fit_divergence``).
    """
    held_p, _ = critic_on(held_out[0])
    held_q, _ = critic_on(held_out[1])
    phi_shift, w_shift = critic_on(shift_q)
    if clip:
        phi_p, w_p = critic_on(train[0])
        phi_q, w_q = critic_on(train[1])
        low, high = _masked(phi_p, w_p, min), _masked(phi_q, w_q, max)
        high = torch.maximum(high, low)
        held_p = torch.clamp(held_p, low[:, None], high[:, None])
        held_q = torch.clamp(held_q, low[:, None], high[:, None])
        phi_shift = torch.clamp(phi_shift, low[:, None], high[:, None])
    nu = _shift_for(divergence, phi_shift, w_shift)
    return held_p.cpu().numpy(), divergence.target_terms(held_q, nu).cpu().numpy()


def _best_candidates(trained, candidates, offset=None, looks_linear=None):
    """Index (F,) of each fold's candidate critic with the best validation objective.

    ``candidates`` maps the networks' values on their packed rows (K, T) and ``offset``
    (the linear parts on those rows, (K, T), or None) to candidates (F, C, T); the rows of
    one fold's networks are the same rows, differently squeezed.  ``looks_linear`` (F,):
    the folds where a network must beat the linear part by ``_SELECT_SE_LINEAR`` standard
    errors rather than ``_SELECT_SE``.
    Each candidate is scored like early stopping scores a network: the objective on the
    fold's validation rows, at the shift optimal on its fit rows.
    """
    z, n = trained.z, trained.n_particles
    phi = candidates(_phi(trained.critic, z), offset)
    n_folds, n_candidates, _ = phi.shape

    def per_candidate(w):
        """Row weights of network (k, rung 0) for each candidate (F * C, T)."""
        w = w.reshape(n_folds, -1, w.shape[1])[:, :1]
        return w.expand(-1, n_candidates, -1).reshape(-1, w.shape[-1])

    phi = phi.reshape(-1, phi.shape[-1])
    (v_y, v_x), w_x = trained.held_out, per_candidate(trained.w_x)
    v_y, v_x = per_candidate(v_y), per_candidate(v_x)
    divergence = trained.critic.divergence
    nu = _shift_for(divergence, phi[:, n:], w_x)
    terms_q = torch.where(v_x > 0, divergence.target_terms(phi[:, n:], nu), 0.0)
    score = (v_y * phi[:, :n]).sum(1) + (v_x * terms_q).sum(1)
    score = score.reshape(n_folds, n_candidates)
    if offset is None:
        return score.argmax(1)
    # The last candidate (the linear part alone) is kept unless another beats it by more
    # than `threshold` standard errors of the paired difference on the validation rows.
    terms = torch.cat([phi[:, :n], terms_q], 1).reshape(n_folds, n_candidates, -1)
    weights = torch.cat([v_y, v_x], 1).reshape(n_folds, n_candidates, -1)[:, :1]
    diff = terms - terms[:, -1:]
    var = 0.0
    for part, w in ((slice(0, n), weights[..., :n]), (slice(n, None), weights[..., n:])):
        mean = (w * diff[..., part]).sum(-1, keepdim=True)
        count = (w > 0).sum(-1)
        var = var + (w * (diff[..., part] - mean) ** 2).sum(-1) / (count - 1).clamp(min=1)
    gain = score - score[:, -1:]
    threshold = torch.full_like(gain[:, :1], _SELECT_SE)
    if looks_linear is not None:
        threshold[looks_linear] = _SELECT_SE_LINEAR
    eligible = gain > threshold * var.sqrt()
    eligible[:, -1] = True
    return torch.where(eligible, score, -math.inf).argmax(1)


def _validation_last(samples, rng):
    """Each sample shuffled with its validation third last, and the rows before it."""
    shuffled, n_fit = [], []
    for rows in samples:
        parts = np.array_split(rng.permutation(len(rows)), _VALIDATION_SHARE)
        shuffled.append(rows[np.concatenate([*parts[1:], parts[0]])])
        n_fit.append(len(rows) - len(parts[0]))
    return shuffled, n_fit


def _masked(phi, w, reduce):
    """Min or max of each flow's ``phi`` over its real rows (``w > 0``)."""
    fill = math.inf if reduce is min else -math.inf
    values = torch.where(w > 0, phi, fill)
    return values.min(1).values if reduce is min else values.max(1).values


def _shift_for(divergence, phi_x, w_x):
    """The optimal shift of fixed critic values ``phi_x`` on Q rows with weights ``w_x``."""
    if divergence.uses_nu:
        return _optimal_shift(divergence, phi_x, w_x)
    return _log_mean_exp(phi_x, w_x)


@dataclass
class _Trained:
    """Critics trained on packed, standardised rows (tensors on the run's device)."""

    critic: Critic
    z: torch.Tensor  # (K, M + N, d): P rows then Q rows
    n_particles: int
    w_y: torch.Tensor
    w_x: torch.Tensor
    center: torch.Tensor
    scale: float
    converged: bool
    validation_score: torch.Tensor | None = None  # (K,) best score on validation rows
    held_out: tuple | None = None  # (v_y, v_x): validation row weights, each (K, T)

    def phi(self, rows):
        """The K critics on unstandardised packed rows (K, T, d)."""
        return _phi(self.critic, (rows - self.center) / self.scale)

    def target_terms(self, rows):
        """The Q-row terms of the objective (K, T) at the critics' shift ``nu``."""
        return self.critic.divergence.target_terms(self.phi(rows), self.critic.nu)


def _fit_weights(w, n_fit):
    """Row weights ``w`` (K, T) split into the first ``n_fit[k]`` rows of each flow and the
    rest, each part's weights summing to one."""
    position = torch.arange(w.shape[1], device=w.device)[None, :]
    fit = (position < torch.as_tensor(n_fit, device=w.device)[:, None]) & (w > 0)
    rest = ~fit & (w > 0)
    fit, rest = fit.to(w.dtype), rest.to(w.dtype)
    return fit / fit.sum(1, keepdim=True), rest / rest.sum(1, keepdim=True)


def _logistic_slopes(fit_p, fit_q, bound):
    """Slopes (F, d) of balanced logistic regressions of P rows against Q rows, one per fold.

    The log-odds of a balanced classifier is the log density ratio, the optimal KL critic up
    to a constant.  Each slope is shrunk towards 0 (``_shrunk``), then to norm ``bound`` (None:
    no bound) where it exceeds it.
    """
    slopes = []
    for p, q in zip(fit_p, fit_q):
        w = _shrunk(*_logistic_slope(p, q))
        norm = float(np.linalg.norm(w))
        if bound is not None and norm > bound:
            w = w * (bound / norm)
        slopes.append(w)
    return np.array(slopes)


def _linear_log_ratio(fit_p, fit_q):
    """Per fold (F,) bool: whether the log density ratio of rows ``fit_p`` against ``fit_q``
    passes as linear.

    The logistic regression of ``_logistic_slope`` on the coordinates and on non-linear
    terms (``_non_linear_terms``); the Wald statistic of the non-linear coefficients,
    ``g' C^-1 g`` with their sandwich covariance ``C``, is about chi-square with as many
    degrees of freedom where the log ratio is linear (Gaussians that differ by a
    translation), and large where it has a quadratic part (variances that differ) or P is
    bimodal where Q is not.  False (not tested: the validation rule decides) with fewer than
    ``_LINEARITY_ROWS_PER_PARAMETER`` rows of each sample per coefficient, or where the
    covariance is singular.
    """
    passes = []
    for p, q in zip(fit_p, fit_q):
        d, rows = p.shape[1], min(len(p), len(q))
        terms = _non_linear_terms(d, rows)
        if terms is None:
            passes.append(False)
            continue
        beta, covariance = _logistic_slope(np.hstack([p, terms(p)]), np.hstack([q, terms(q)]))
        g, c = beta[d:], covariance[d:, d:]
        wald = _wald(g, c)
        passes.append(math.isfinite(wald) and _chi2_survival(wald, len(g)) >= _LINEARITY_LEVEL)
    return np.array(passes, dtype=bool)


def _non_linear_terms(d, rows):
    """The non-linear terms of the linearity test for d coordinates and ``rows`` rows of each
    sample: squares, products of pairs, cubes and fourth powers of the coordinates; without
    the products where the rows are too few for them (``_LINEARITY_ROWS_PER_PARAMETER`` per
    coefficient, the intercept and the d slopes included); None where they are too few even
    then."""
    pairs = np.triu_indices(d, 1)

    def with_pairs(z):
        return np.hstack([z**2, z[:, pairs[0]] * z[:, pairs[1]], z**3, z**4])

    def without_pairs(z):
        return np.hstack([z**2, z**3, z**4])

    for terms, count in ((with_pairs, 3 * d + len(pairs[0])), (without_pairs, 3 * d)):
        if rows >= _LINEARITY_ROWS_PER_PARAMETER * (1 + d + count):
            return terms
    return None


def _logistic_slope(p, q):
    """The slope (d,) and its covariance (d, d) of a logistic regression of rows ``p`` (label
    1) against ``q`` (label 0), the two classes weighted equally: Newton steps with step
    halving on the mean loss plus ``_LOGISTIC_RIDGE * |w|^2 / 2`` (the intercept not
    penalised); the covariance is the sandwich estimate."""
    X = torch.as_tensor(np.concatenate([p, q]), dtype=torch.float64)
    X = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    y = torch.cat([torch.ones(len(p)), torch.zeros(len(q))]).to(X.dtype)
    weight = torch.cat([torch.full((len(p),), 0.5 / len(p)), torch.full((len(q),), 0.5 / len(q))])
    weight = weight.to(X.dtype)
    ridge = torch.full((X.shape[1],), _LOGISTIC_RIDGE, dtype=X.dtype)
    ridge[-1] = 0.0

    def loss(beta):
        a = X @ beta
        fit = (weight * (torch.nn.functional.softplus(a) - y * a)).sum()
        return fit + 0.5 * (ridge * beta**2).sum()

    def hessian(prob):
        return (X.T * (weight * prob * (1.0 - prob))) @ X + torch.diag(ridge + 1e-12)

    beta = torch.zeros(X.shape[1], dtype=X.dtype)
    current = loss(beta)
    for _ in range(_LOGISTIC_ITERATIONS):
        prob = torch.sigmoid(X @ beta)
        gradient = X.T @ (weight * (prob - y)) + ridge * beta
        step = torch.linalg.solve(hessian(prob), gradient)
        t = 1.0
        trial = loss(beta - step)
        while trial > current and t > 1e-6:
            t *= 0.5
            trial = loss(beta - t * step)
        if trial > current:
            break
        beta, gain, current = beta - t * step, float(current - trial), trial
        if gain <= 1e-12 * max(1.0, abs(float(current))):
            break
    # The sandwich covariance of the estimate: H^-1 J H^-1, J the per-row scores' second moment.
    prob = torch.sigmoid(X @ beta)
    scores = X * (weight * (prob - y))[:, None]
    inverse = torch.linalg.inv(hessian(prob))
    covariance = inverse @ (scores.T @ scores) @ inverse
    return beta[:-1].numpy(), covariance[:-1, :-1].numpy()


def _shrunk(slope, covariance):
    """``slope`` set to 0 unless it differs from 0 at the level ``_SLOPE_LEVEL``, then shrunk
    towards 0 by the factor ``max(0, 1 - d / T)``; ``T = w' C^-1 w`` is its squared length in
    units of its covariance ``C``, the Wald statistic (chi-square with d degrees of freedom
    for a slope that is noise).

    A slope that is noise costs the held-out objective about ``e' Cov_P e / 2`` (e the slope
    error): on two samples of one distribution a value below 0 by more than its standard
    error reflects (the rows of a fold whose slope is 0 add terms that are exactly 0).  The
    test removes such slopes; the positive-part James-Stein factor (with d where James and
    Stein have d - 2, so that it also acts in 1 to 3 dimensions) shrinks the weak ones that
    pass.  A real slope (T in the hundreds for Gaussians 1.5 apart, 400 rows) loses a few
    percent.
    """
    d = len(slope)
    t = _wald(slope, covariance)
    if not math.isfinite(t) or t <= 0:
        return slope
    if _chi2_survival(t, d) >= _SLOPE_LEVEL:
        return np.zeros_like(slope)
    return slope * max(0.0, 1.0 - d / t)


def _wald(coefficients, covariance) -> float:
    """The Wald statistic ``g' C^-1 g`` of ``coefficients`` with their ``covariance``; NaN
    where the covariance is singular."""
    try:
        return float(coefficients @ np.linalg.solve(covariance, coefficients))
    except np.linalg.LinAlgError:
        return math.nan


def _chi2_survival(x, dof):
    """P(X > x) for X chi-square with ``dof`` degrees of freedom."""
    half = torch.tensor(dof / 2.0, dtype=torch.float64)
    return float(torch.special.gammaincc(half, torch.tensor(x / 2.0, dtype=torch.float64)))


@contextlib.contextmanager
def _trained_critics(samples_p, samples_q, center, scale, s: _Settings, validation=None):
    """Train one critic per pair to convergence, exactly L-Lipschitz with the optimal shift;
    the context keeps the engine's thread setting and graph-free mode for evaluating them.

    With ``validation = (n_fit_p, n_fit_q)``, flow k trains on the first ``n_fit_p[k]`` and
    ``n_fit_q[k]`` rows and keeps the weights that did best on the rest (early stopping).
    """
    device, dtype = resolve_device(s.device), resolve_dtype(s.dtype)
    y, w_y = pack_rows([(p - center) / scale for p in samples_p], dtype, device)
    x, w_x = pack_rows([(q - center) / scale for q in samples_q], dtype, device)
    held_out = None
    if validation is not None:
        (w_y, v_y), (w_x, v_x) = _fit_weights(w_y, validation[0]), _fit_weights(w_x, validation[1])
        held_out = (v_y, v_x)
    n_particles = y.shape[1]
    layout = MLPLayout(y.shape[2], tuple(s.hidden_layer_sizes), len(samples_p))
    rows = n_particles + x.shape[1] if s.batch_size is None else 2 * s.batch_size
    threads = threads_context(
        device, min(rows, y.shape[1] + x.shape[1]) * len(samples_p), layout.macs_per_row
    )
    with threads, torch.inference_mode():
        generator = torch.Generator(device=device).manual_seed(int(s.seed))
        critic = Critic(
            layout,
            make_activation(s.activation),
            get_divergence(s.f, s.alpha),
            # phi(x) = psi((x - center) / scale) is L-Lipschitz iff psi is (L * scale)-Lipschitz.
            lipschitz=None if s.L is None else s.L * scale,
            learning_rate=s.learning_rate,
            generator=generator,
            dtype=dtype,
            device=device,
        )
        z = torch.cat([y, x], 1)
        batch = None
        if s.batch_size is not None and s.batch_size < max(n_particles, x.shape[1]):
            counts_y, counts_x = (w_y > 0).sum(1).to(dtype), (w_x > 0).sum(1).to(dtype)
            batch = minibatch_sampler(n_particles, counts_y, counts_x, s.batch_size, generator)
        problem = (z, n_particles, w_y, w_x)
        converged, validation_score = _train_critic(critic, problem, batch, s, held_out)
        if critic.constraint is not None:
            critic.enforce_exact_lipschitz()
        set_optimal_shift(critic, z, n_particles, w_x)
        shift = torch.as_tensor(center, dtype=dtype, device=device)
        yield _Trained(
            critic,
            z,
            n_particles,
            w_y,
            w_x,
            shift,
            scale,
            converged,
            validation_score,
            held_out,
        )


def _phi(critic, z):
    phi, _, _ = forward(critic.layers, critic.activation, z)
    return phi


def standardization(samples):
    """One centre and one scale for all rows, so a single L serves every flow."""
    rows = np.concatenate(samples)
    center = rows.mean(0)
    scale = float(np.sqrt(np.mean(rows.var(0))))
    if not (np.all(np.isfinite(center)) and math.isfinite(scale)):
        raise ValueError(
            "The samples are too large in magnitude to standardise in float64; rescale them."
        )
    return center, (scale if scale > 0 else 1.0)


def _train_critic(critic, problem, batch, s: _Settings, held_out=None) -> bool:
    """Adam ascent on J until the windowed mean of J stops improving by more than tol.

    With ``held_out = (v_y, v_x)`` (validation row weights), every window also scores each
    critic on its validation rows; training stops once no critic improved that score for
    ``_PATIENCE`` windows, and each critic returns to its best-scoring weights.  Returns
    whether a stopping rule was met within ``n_iter`` steps (always True with ``tol=None``),
    and the best validation scores (K,) (None without ``held_out``).
    """
    z, n_particles, w_y, w_x = problem
    history = torch.empty(s.n_iter, critic.layout.n_flows, dtype=z.dtype, device=z.device)
    previous = None
    early = None if held_out is None else _EarlyStopping(critic, problem, held_out)
    set_optimal_shift(critic, z, n_particles, w_x)
    converged = s.tol is None
    for step in range(s.n_iter):
        data = problem if batch is None else batch(z)
        history[step] = critic.train_step(*data, with_value=True)
        if early is not None and (step + 1) % _VALIDATE_EVERY == 0:
            set_optimal_shift(critic, z, n_particles, w_x)
            if early.stalled():
                converged = True
                break
        if (step + 1) % _WINDOW and step + 1 < s.n_iter:
            continue
        window = history[max(0, step + 1 - _WINDOW) : step + 1].cpu().numpy()
        if not np.all(np.isfinite(window)):
            when = f"non-finite after {step + 1} steps"
            raise FloatingPointError(_non_finite_message(s.f, s.L, when, critic.lipschitz))
        set_optimal_shift(critic, z, n_particles, w_x)
        mean = window.mean(0)
        if s.tol is not None and previous is not None:
            if np.all(mean - previous <= s.tol * np.abs(mean)):
                converged = True
                break
        previous = mean
    if early is None:
        return converged, None
    early.restore_best()
    return converged, early.best_score


class _EarlyStopping:
    """The best weights of each critic by its objective on validation rows."""

    def __init__(self, critic, problem, held_out):
        self.critic, self.problem, self.held_out = critic, problem, held_out
        self.best = critic.params.clone()
        self.best_score = torch.full_like(critic.nu, -math.inf)
        self.stale = 0

    def score(self):
        """Each critic's objective on its validation rows, at the shift of its fit rows."""
        z, n_particles, _, _ = self.problem
        v_y, v_x = self.held_out
        critic = self.critic
        phi = _phi(critic, z)
        terms_q = critic.divergence.target_terms(phi[:, n_particles:], critic.nu)
        return (v_y * phi[:, :n_particles]).sum(1) + (v_x * terms_q).sum(1)

    def stalled(self) -> bool:
        """Record the current weights where they score best; True after ``_PATIENCE``
        windows without any critic improving."""
        score = self.score()
        improved = score > self.best_score
        self.best_score = torch.where(improved, score, self.best_score)
        _copy_flows(self.best, self.critic.params, self.critic.layout, improved)
        self.stale = 0 if bool(improved.any()) else self.stale + 1
        return self.stale >= _PATIENCE

    def restore_best(self) -> None:
        self.critic.params.copy_(self.best)


def _copy_flows(destination, source, layout, flows) -> None:
    """Copy the parameters of the flows where ``flows`` (K,) is True, in place."""
    for (w_to, b_to), (w_from, b_from) in zip(layout.layers(destination), layout.layers(source)):
        w_to.copy_(torch.where(flows[:, None, None], w_from, w_to))
        b_to.copy_(torch.where(flows[:, None, None], b_from, b_to))
    nu_to = layout.nu(destination)
    nu_to.copy_(torch.where(flows, layout.nu(source), nu_to))


def _log_mean_exp(phi, w):
    return torch.logsumexp(phi + torch.log(w), dim=1)


# L in standardised units beyond which a critic is steep enough to overflow exp under KL.
_STEEP = 30.0


def _non_finite_message(f, L, when, lipschitz):
    """The error for a non-finite estimate; ``lipschitz``: L in standardised units."""
    steep = ""
    if lipschitz is not None:
        # L is in data units: on rows of spread 1e5, L=1 lets the critic change by 1e5
        # across one spread, and exp(phi) overflows under KL.
        steep = (
            f" Here L times the rows' spread (the root of their mean feature variance) is "
            f"{lipschitz:.3g}, the critic's possible change across one spread; values of a "
            "few tens and more make exp(phi) overflow: use L of about 1 / spread, or rescale "
            "the features (one of large scale drowns the others)."
        )
    return (
        f"The estimate of the {f!r} divergence (L={L}) became {when}. This happens "
        "when the divergence is infinite or nearly so: an unconstrained or very steep critic "
        "on samples whose supports barely overlap, or heavy tails under KL. Use a finite (or "
        f"smaller) L, or the alpha-divergence (f='alpha').{steep}"
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
        below = _shift_slope(divergence, phi_x, w_x, low) < 0
        above = _shift_slope(divergence, phi_x, w_x, high) > 0
        if not bool((below | above).any()):
            break
        low, high = torch.where(below, low - width, low), torch.where(above, high + width, high)
        width = 2.0 * width
    for step in range(200):
        mid = 0.5 * (low + high)
        # Every 8 halvings, stop once no interval has a float64 number strictly inside.
        if step % 8 == 0 and not bool(((mid > low) & (mid < high)).any()):
            break
        above = _shift_slope(divergence, phi_x, w_x, mid) > 0
        low, high = torch.where(above, mid, low), torch.where(above, high, mid)
    return 0.5 * (low + high)


def set_optimal_shift(critic, z, n_particles, w_x) -> None:
    """Set the critic's shift ``nu`` to its exact optimum for the current network.

    The Donsker-Varadhan form has no shift in its objective; its ``nu`` is set to
    ``log E_Q e^phi``, the shift that makes its per-row terms (``target_terms``) exact.
    """
    phi_x = _phi(critic, z)[:, n_particles:]
    if critic.divergence.uses_nu:
        critic.nu.copy_(_optimal_shift(critic.divergence, phi_x, w_x))
    else:
        critic.nu.copy_(_log_mean_exp(phi_x, w_x))


def objective(critic, z, n_particles, w_y, w_x) -> torch.Tensor:
    """J (K,) of the current network with the exact optimal shift, on all rows."""
    set_optimal_shift(critic, z, n_particles, w_x)
    phi = _phi(critic, z)
    return critic.divergence.value(phi[:, :n_particles], phi[:, n_particles:], critic.nu, w_y, w_x)
