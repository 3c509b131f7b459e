"""Explicit Runge-Kutta schemes for the particle ODE dY/dt = -grad phi*_t(Y).

Each scheme is a Butcher tableau.  In training, the critic is re-trained at every stage
position before the stage velocity is taken (paper 000, App. B: Heun "involves two
calculations of the discriminator").  Replaying a learned flow uses the same tableau with the
stored critic of each stage, so training and replay share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SOLVERS", "Tableau", "get_tableau"]


@dataclass(frozen=True)
class Tableau:
    """``stage_weights[s]`` combines earlier stage velocities into stage s's position;
    ``final_weights`` combines all stage velocities into the step."""

    name: str
    stage_weights: tuple
    final_weights: tuple

    @property
    def n_stages(self) -> int:
        return len(self.final_weights)

    def stage_position(self, y, dt, velocities):
        """Position of the next stage: ``y + dt * sum_j a_sj k_j``."""
        weights = self.stage_weights[len(velocities)]
        position = y
        for a, k in zip(weights, velocities):
            if a:
                position = position + (dt * a) * k
        return position

    def increment(self, dt, velocities):
        """The step ``dt * sum_s b_s k_s``."""
        step = (dt * self.final_weights[0]) * velocities[0]
        for b, k in zip(self.final_weights[1:], velocities[1:]):
            step = step + (dt * b) * k
        return step


SOLVERS = {
    "euler": Tableau("euler", ((),), (1.0,)),
    "heun": Tableau("heun", ((), (1.0,)), (0.5, 0.5)),
    "rk4": Tableau(
        "rk4",
        ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
        (1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0),
    ),
}


def get_tableau(name: str) -> Tableau:
    if name not in SOLVERS:
        raise ValueError(f"Unknown solver {name!r}; choose one of {sorted(SOLVERS)}.")
    return SOLVERS[name]
