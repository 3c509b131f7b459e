"""One run of the engine for an estimator: its settings in, the fitted flow and diagnostics out."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from ._engine import run_gpa
from .utils import warn_at_caller

__all__ = ["TrainedFlows", "append_history", "engine_arguments", "train_flows"]

# The estimator parameters that the engine takes under the same name.
_ENGINE_PARAMETERS = frozenset(inspect.signature(run_gpa).parameters) - {
    "sources",
    "targets",
    "seed",
    "callback",
    "critic_state",
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


@dataclass
class TrainedFlows:
    """What one engine run leaves to the estimator (the history in its public form)."""

    flow: object  # LearnedFlow
    history: dict
    failed_step: np.ndarray
    stop_reason: str
    critic_state: dict
    particles: list  # per flow, the final positions of its particles (standardised units)


def train_flows(params, sources, targets, *, image_shape, device, seed, callback, critic_state):
    """Run the engine on K flows; warn about what went wrong in a way a user can act on."""
    result, flow = run_gpa(
        sources,
        targets,
        **engine_arguments(params),
        image_shape=image_shape,
        device=device,
        seed=seed,
        callback=callback,
        critic_state=critic_state,
    )
    counts = [len(s) for s in sources]
    weights = np.asarray(counts, dtype=float) / sum(counts)
    history = {
        "divergence": result.divergence @ weights,
        "kinetic_energy": result.kinetic_energy @ weights,
        "divergence_per_flow": result.divergence,
        "kinetic_energy_per_flow": result.kinetic_energy,
        "time": result.time,
    }
    _warn_about(result, params["n_steps"])
    particles = result.particles.cpu().numpy().astype(np.float64)
    return TrainedFlows(
        flow=flow,
        history=history,
        failed_step=np.array(result.failed_step),
        stop_reason=result.stop_reason,
        critic_state=result.critic_state,
        particles=[particles[k, :n] for k, n in enumerate(counts)],
    )


def append_history(before: dict, after: dict) -> dict:
    """The history of a run continued by ``after`` (times offset by the earlier run's)."""
    offset = before["time"][-1] if len(before["time"]) else 0.0
    return {
        key: np.concatenate([before[key], value + (offset if key == "time" else 0)])
        for key, value in after.items()
    }


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
    if result.stop_reason == "interrupted":
        warn_at_caller(
            f"fit interrupted after {result.n_steps} of {n_steps} steps; the estimator "
            "keeps the finished steps and is usable.",
            RuntimeWarning,
        )


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
