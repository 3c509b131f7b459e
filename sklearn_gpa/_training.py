"""One run of the engine for an estimator: its settings in, the fitted flow and diagnostics out."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from numbers import Integral, Real

import joblib
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions

from ._engine import (
    ACTIVATIONS,
    DIVERGENCES,
    ROLLBACK_RATIO,
    SOLVERS,
    STATE_ENCODINGS,
    resolve_device,
    resolve_dtype,
    run_gpa,
)
from ._prior import SOURCES
from ._progress import FitProgress
from ._scaling import SCALINGS
from .utils import check_image_shape, check_sizes, warn_at_caller

__all__ = [
    "FLOW_CONSTRAINTS",
    "TrainedFlows",
    "append_history",
    "check_continuation",
    "check_flow_settings",
    "engine_arguments",
    "train_flows",
]

# The valid values of every flow parameter: GPATransporter's constraints.  LatentGPA and
# GPAAugmenter hold a GPATransporter, so these are declared once.
FLOW_CONSTRAINTS = {
    "f": [StrOptions(set(DIVERGENCES))],
    "alpha": [Interval(Real, 1, None, closed="neither"), None],
    "L": [Interval(Real, 0, None, closed="neither"), None],
    "dt": [Interval(Real, 0, None, closed="neither")],
    "n_steps": [Interval(Integral, 1, None, closed="left")],
    "solver": [StrOptions(set(SOLVERS))],
    "hidden_layer_sizes": ["array-like"],
    "discriminator": [StrOptions({"mlp", "cnn"})],
    "image_shape": ["array-like", None],
    "conv_channels": ["array-like"],
    "activation": [StrOptions(set(ACTIVATIONS))],
    "n_critic": [Interval(Integral, 1, None, closed="left")],
    "learning_rate": [Interval(Real, 0, None, closed="neither")],
    "constraint": [StrOptions({"hard", "soft"})],
    "penalty": [Interval(Real, 0, None, closed="left")],
    "tol": [Interval(Real, 0, None, closed="left"), None],
    "stop": [StrOptions({"auto"}), None],
    "source": [StrOptions(set(SOURCES))],
    "n_particles": [Interval(Integral, 1, None, closed="left"), None],
    "conditional": [StrOptions({"auto"}), "boolean"],
    "standardize": [StrOptions(set(SCALINGS)), "boolean"],
    "store_every": [Interval(Integral, 1, None, closed="left")],
    "store_encoding": [StrOptions({"auto", *STATE_ENCODINGS})],
    "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"}), None],
    "device": [str, None],
    "dtype": [StrOptions({"float32", "float64"})],
    "log_every": [Interval(Integral, 1, None, closed="left")],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
    "callback": [callable, None],
    "prealign": [StrOptions({"auto", "shrunk", "meanstd"}), None],
    "out_of_sample": [StrOptions({"replay", "nearest", "barycentric", "auto"})],
    "warm_start": ["boolean"],
}

# The estimator parameters that the engine takes under the same name.
_ENGINE_PARAMETERS = frozenset(inspect.signature(run_gpa).parameters) - {
    "sources",
    "targets",
    "seed",
    "callback",
    "critic_state",
    "frozen",
    "image_shape",
    "device",
}


def engine_arguments(params: dict) -> dict:
    """The engine's keyword arguments among an estimator's parameters."""
    arguments = {name: value for name, value in params.items() if name in _ENGINE_PARAMETERS}
    for name in ("hidden_layer_sizes", "conv_channels"):
        if name in arguments:
            arguments[name] = tuple(int(size) for size in arguments[name])
    return arguments


def _mode_settings(params: dict, mode: str) -> dict:
    """The estimator's parameters with the "auto" settings a fit in ``mode`` resolves.

    ``store_encoding="auto"``: "delta16" for generation, "float32" for integration, whose
    ``transform`` must give back the training rows' particles.  ``stop="auto"``: in
    integration the engine's "evidence" rule, under which a flow moves only if its
    (pre-aligned) source rows differ from its target rows by more than a fresh sample
    of the target would (``stopping.START_FACTOR``); moving rows that are already where
    they should be costs each row its identity.
    """
    params = dict(params)
    if params["store_encoding"] == "auto":
        params["store_encoding"] = "delta16" if mode == "generation" else "float32"
    if params["stop"] == "auto" and mode == "integration":
        params["stop"] = "evidence"
    return params


def _counts_far_particles(params: dict, mode: str) -> bool:
    """Whether the stopping rule counts the far particles (``stopping``'s fifth statistic):
    in generation, and in integration without a pre-alignment, where the flow alone brings
    the source's spread onto the target's.  After a pre-alignment a row still far out is a
    row of its own: pulling it in cost a latent flow's rows their identity (SurvSet vdv,
    one row's error 2.26 -> 3.07; recovery 0.365 -> 0.402 of the distortion).
    """
    return mode == "generation" or params["prealign"] is None


@dataclass
class TrainedFlows:
    """What one engine run leaves to the estimator (the history in its public form)."""

    flow: object  # LearnedFlow
    history: dict
    failed_step: np.ndarray
    stop_reason: str
    critic_state: dict
    particles: list  # per flow, the final positions of its particles (standardised units)

    def continuing(self, flow, history, failed_step):
        """This run as the continuation of an earlier one (its flow, history, failures)."""
        failed = np.where(
            failed_step >= 0,
            failed_step,
            np.where(self.failed_step >= 0, self.failed_step + flow.n_steps, -1),
        )
        return replace(
            self,
            flow=flow.extend(self.flow),
            history=append_history(history, self.history, flow.n_steps),
            failed_step=failed,
        )


def check_flow_settings(params, n_features):
    """Check what parameter constraints cannot; return the CNN's input shape (None: MLP)."""
    check_sizes(params["hidden_layer_sizes"], "hidden_layer_sizes", minimum=1)
    check_sizes(params["conv_channels"], "conv_channels", minimum=1)
    cnn = params["discriminator"] == "cnn"
    if cnn and params["image_shape"] is None:
        raise ValueError("discriminator='cnn' needs image_shape, e.g. image_shape=(28, 28).")
    if not cnn and params["image_shape"] is not None:
        raise ValueError("image_shape is used by discriminator='cnn' only; set both or neither.")
    if params["constraint"] == "soft" and params["L"] is None:
        raise ValueError("constraint='soft' penalises gradients above L: give a finite L.")
    resolve_device(params["device"])
    resolve_dtype(params["dtype"])
    return check_image_shape(params["image_shape"], n_features) if cnn else None


def check_continuation(fitted, resume, params, mode, groups, image_shape, data):
    """The fingerprint of a fit's ``data`` (X, y, source mask, ``sample_domain``) grouped
    into flows by ``groups``; with ``resume``, first checks that warm start can continue
    ``fitted``'s flows: same mode, classes, discriminators and data (where ``fitted`` kept
    a fingerprint)."""
    X, y, source, domains = data
    # Labels as text: the same labels as a list, a Series or int32 / int64 are the same data.
    labels = None if y is None else [str(label) for label in np.asarray(y).tolist()]
    # The domains' values matter only where they make flows of their own (and then the
    # source ones: any negative value is the target).
    sides = source if groups.domains is None else np.where(source, domains, -1)
    fingerprint = joblib.hash((np.asarray(X, dtype=np.float64), labels, sides))
    classes = groups.classes
    if not resume:
        return fingerprint
    if mode != fitted.mode_:
        raise ValueError(
            f"warm_start=True continues the previous {fitted.mode_} fit, but this call is "
            f"a {mode} fit; set warm_start=False to start afresh."
        )
    if (classes is None) != (fitted.classes_ is None) or (
        classes is not None and not np.array_equal(classes, fitted.classes_)
    ):
        raise ValueError(
            "warm_start=True continues the previous flows, but y defines different "
            "classes now; set warm_start=False to start afresh."
        )
    cnn = params["discriminator"] == "cnn"
    now = {
        "hidden_layer_sizes": tuple(int(h) for h in params["hidden_layer_sizes"]),
        "image_shape": image_shape,
        "conv_channels": tuple(int(c) for c in params["conv_channels"]) if cnn else None,
        "activation": params["activation"],
        "solver": params["solver"],
    }
    flow = fitted.flow_
    before = {**flow.architecture(), "activation": flow.activation, "solver": flow.solver}
    changed = [name for name in now if before[name] != now[name]]
    if changed:
        raise ValueError(
            f"warm_start=True continues the previous fit's discriminators, but "
            f"{', '.join(changed)} changed; set warm_start=False to start afresh."
        )
    if getattr(fitted, "_fingerprint", fingerprint) != fingerprint:
        # The particles are the previous data's: new rows would be silently ignored.
        raise ValueError(
            "warm_start=True continues the flows of the data fitted before, but this call "
            "passes other data (rows, labels or sample_domain); set warm_start=False to "
            "fit these data afresh."
        )
    return fingerprint


def train_flows(
    params,
    sources,
    targets,
    *,
    name,
    mode,
    image_shape,
    device,
    seed,
    critic_state=None,
    frozen=None,
):
    """Run the engine on K flows; show progress; warn in a way a user can act on.

    ``params`` are the estimator's parameters: the engine's settings, ``callback`` (the
    user's, called every ``log_every`` steps) and ``verbose`` (a progress bar named
    ``name``, closed by a one-line summary).  ``device`` is the resolved torch device;
    ``mode`` ("integration" or "generation") resolves the "auto" settings (``_mode_settings``).
    """
    params = _mode_settings(params, mode)
    single = np.array([len(rows) < 2 for rows in sources])
    if frozen is None and mode == "integration" and params["stop"] is not None and single.any():
        # One source row is no sample: the rule cannot tell it from the target's, and its
        # flow ran every step (a batch of one row: 4.7 s, its row moved on noise).
        frozen = single
    progress = None
    callback = params["callback"]
    if callback is None and params["verbose"]:
        progress = callback = FitProgress(name, total=params["n_steps"], verbose=params["verbose"])
    result, flow = run_gpa(
        sources,
        targets,
        **engine_arguments(params),
        image_shape=image_shape,
        device=device,
        seed=seed,
        callback=callback,
        critic_state=critic_state,
        frozen=frozen,
        far_particles=_counts_far_particles(params, mode),
    )
    if progress is not None:
        progress.close(stop_reason=result.stop_reason, n_steps=result.n_steps)
    counts = [len(s) for s in sources]
    # Flows done before their first step get no critic, and flows that stopped leave the
    # run (NaN per step from then on): each step's means are over the flows trained at that
    # step, weighted by their rows (a trained flow's non-finite value shows in the mean).
    trained = np.arange(result.n_steps)[:, None] < np.asarray(result.trained_steps)
    weights = np.where(trained, np.asarray(counts, dtype=float), 0.0)
    weights /= np.maximum(weights.sum(1, keepdims=True), 1.0)
    history = {
        "divergence": (np.where(trained, result.divergence, 0.0) * weights).sum(1),
        "kinetic_energy": (np.where(trained, result.kinetic_energy, 0.0) * weights).sum(1),
        "divergence_per_flow": result.divergence,
        "kinetic_energy_per_flow": result.kinetic_energy,
        "time": result.time,
        "stop_step": np.array(result.stop_step),
        "critic_redrawn": np.array(result.redrawn, dtype=int),
    }
    if result.stop_statistic is not None:
        history.update(
            stop_check_step=result.stop_check_step,
            stop_score=result.stop_score,
            stop_statistic=result.stop_statistic,
            stop_floor=np.tile(result.stop_floor, (len(result.stop_statistic), 1)),
            stop_rolled_back=np.array(result.rolled_back, dtype=bool),
            stop_stalled=np.array(result.stalled, dtype=bool),
        )
    _warn_about(result, params["n_steps"])
    particles = result.particles.cpu().numpy().astype(np.float64)
    return TrainedFlows(
        flow=flow,
        history=history,
        failed_step=np.array(result.failed_step),
        stop_reason=result.stop_reason,
        critic_state=result.critic_state,
        particles=exact_where_still(sources, [particles[k, :n] for k, n in enumerate(counts)]),
    )


def exact_where_still(sources, moved):
    """Each flow's particles ``moved``, with those of a flow that never moved replaced by its
    starting rows ``sources``: the engine keeps particles in float32, which rounds rows by
    1e-7 of their size (a value of 1600 came back as 1600.00007, and a forest's split
    between two target values then sent a row the other way)."""
    still = [np.array_equal(end, start.astype(np.float32)) for start, end in zip(sources, moved)]
    return [start if s else end for start, end, s in zip(sources, moved, still)]


def append_history(before: dict, after: dict, n_steps_before: int) -> dict:
    """The history of a run of ``n_steps_before`` steps continued by ``after``.

    Times and the stopping rule's check steps are offset by the earlier run's; a key of
    one run only keeps its values; each flow keeps the step it stopped at first.
    """
    offsets = {
        "time": before["time"][-1] if len(before["time"]) else 0.0,
        "stop_check_step": n_steps_before,
    }
    history = {}
    for key in dict.fromkeys([*before, *after]):
        parts = [before[key]] if key in before else []
        if key in after:
            parts.append(after[key] + offsets.get(key, 0))
        history[key] = np.concatenate(parts)
    later = np.where(after["stop_step"] >= 0, after["stop_step"] + n_steps_before, -1)
    history["stop_step"] = np.where(before["stop_step"] >= 0, before["stop_step"], later)
    for key, combine in (
        ("stop_rolled_back", np.logical_or),
        ("stop_stalled", np.logical_or),
        ("critic_redrawn", np.add),
    ):
        if key in before and key in after:
            history[key] = combine(before[key], after[key])
    return history


def _warn_about(result, n_steps):
    failed = [(k, s) for k, s in enumerate(result.failed_step) if s >= 0]
    if failed:
        where = ", ".join(f"flow {k} at step {s}" for k, s in failed)
        warn_at_caller(
            f"GPA produced non-finite values ({where}); the particles of those flows were "
            "kept at their last finite positions and the flow stops there. Try a smaller dt, "
            "a finite L, or f='alpha' (KL diverges on heavy-tailed data).",
            RuntimeWarning,
        )
    _warn_dead_critic(result.kinetic_energy)
    back = [(k, result.stop_step[k]) for k, rolled in enumerate(result.rolled_back) if rolled]
    if back:
        where = ", ".join(f"flow {k} to step {s}" for k, s in back)
        warn_at_caller(
            f"flows that the stopping rule never stopped ended more than {ROLLBACK_RATIO:g} "
            "times as far from their targets (by its score) as at their best check, and go "
            f"back there ({where}): the flow swung past its target. A smaller dt or more "
            "n_critic steadies it.",
            ConvergenceWarning,
        )
    running = [
        k
        for k, step in enumerate(result.stop_step)
        if step < 0 and result.failed_step[k] < 0 and not result.rolled_back[k]
    ]
    if result.stop_reason == "n_steps" and result.stop_score is not None and running:
        # As scikit-learn's iterative estimators at max_iter: the fit is usable, unfinished.
        last = result.stop_score[-1]
        where = ", ".join(f"flow {k}: {last[k]:.3g}" for k in running)
        flows = "1 flow" if len(running) == 1 else f"{len(running)} flows"
        advice = (
            "A larger n_steps may take them there: their score was still falling "
            "(history_['stop_score'])."
        )
        if not any(_still_falling(result.stop_score[:, k]) for k in running):
            # More steps would not help (a score stuck at 3-5 for 1 900 steps, rising at the
            # end, was a pre-alignment that had put a feature far off).
            advice = (
                "Their score stopped falling (history_['stop_score']): more steps will not "
                "take them there. What is left may come from the start (prealign='meanstd' "
                "matches plain moments; a row or feature far off), or be more than the flow "
                "can move."
            )
        warn_at_caller(
            f"{flows} ran all {n_steps} steps without their particles coming "
            f"as close to the target as a fresh sample of it (the stopping rule's score at "
            f"the last check, 1 for a fresh sample: {where}). {advice}",
            ConvergenceWarning,
        )
    if result.stop_reason == "interrupted":
        warn_at_caller(
            f"fit interrupted after {result.n_steps} of {n_steps} steps; the estimator "
            "keeps the finished steps and is usable.",
            RuntimeWarning,
        )


def _still_falling(scores, min_checks=4):
    """Whether a flow's stopping scores (one per check) were still falling: the last is
    the lowest.  Fewer than ``min_checks`` checks show no trend (a short run may still be
    on its way)."""
    scores = scores[np.isfinite(scores)]
    if len(scores) < min_checks:
        return True
    return bool(scores[-1] <= scores[:-1].min())


def _warn_dead_critic(kinetic_energy):
    """Warn when a flow's particles stopped because its critic went flat for good."""
    for k in np.flatnonzero(kinetic_energy[-1] == 0) if len(kinetic_energy) else []:
        moving = np.flatnonzero(kinetic_energy[:, k] != 0)
        since = moving[-1] + 1 if len(moving) else 0
        if since < len(kinetic_energy) - 1:
            warn_at_caller(
                f"the critic of flow {k} went flat at step {since} (kinetic energy exactly "
                "0: every ReLU unit inactive on the particles), so they stopped there; "
                "activation='leaky_relu' or 'smooth_relu' avoids this.",
                RuntimeWarning,
            )
