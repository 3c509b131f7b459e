"""FitProgress: the tqdm bar of a fit and its one-line summary."""

import io
import re

import numpy as np
import pytest

from sklearn_gpa import GPATransporter
from sklearn_gpa._progress import FitProgress
from sklearn_gpa.utils import stack_domains


def _last_line(out):
    return out.getvalue().replace("\r", "\n").rstrip("\n").split("\n")[-1]


def test_bar_shows_rate_values_and_ends_with_the_summary():
    out = io.StringIO()
    progress = FitProgress("LatentGPA", total=40, file=out, mininterval=0)
    for step in (9, 19, 29, 39):
        progress(step, np.array([4.0, 2.0]) / (step + 1), np.array([1.0, 3.0]))
    line = progress.close(stop_reason="n_steps")
    text = out.getvalue()
    assert "LatentGPA:" in text and "step/s" in text and "40/40" in text
    assert "divergence 0.075, kinetic energy 2" in text  # means over the two flows
    assert line.startswith("LatentGPA: 40/40 steps (ran all steps), divergence 0.075, ")
    assert line.endswith(" s") and "kinetic energy 2," in line
    assert _last_line(out) == line
    assert progress.close() == line  # closing twice prints nothing more
    assert out.getvalue() == text


def test_summary_reports_early_stops_and_ignores_frozen_flows():
    out = io.StringIO()
    progress = FitProgress("GPAAugmenter", total=500, file=out)
    progress(49, np.array([0.2, np.nan]), np.array([1e-5, np.nan]))
    line = progress.close(stop_reason="tol")
    assert line.startswith(
        "GPAAugmenter: 50/500 steps (kinetic energy below tol), divergence 0.2, "
        "kinetic energy 1e-05"
    )
    # Every flow stopped at the last check (nan there): the summary keeps the last values
    # (the CLI printed "divergence nan, kinetic energy nan" after a fit that converged).
    progress = FitProgress("GPATransporter", total=2000, file=io.StringIO())
    progress(0, np.array([0.5]), np.array([0.1]))
    progress(9, np.array([np.nan]), np.array([np.nan]))
    assert progress.close(stop_reason="converged").startswith(
        "GPATransporter: 10/2000 steps (every flow as close to its target as a fresh sample), "
        "divergence 0.5, kinetic energy 0.1"
    )
    # Stopped at an early check (every 10 steps before log_every, no call back): no values.
    progress = FitProgress("GPATransporter", total=2000, file=io.StringIO())
    assert re.fullmatch(
        r"GPATransporter: 10/2000 steps \(every flow as close to its target as a fresh "
        r"sample\), \d+\.\d s",
        progress.close(stop_reason="converged", n_steps=10),
    )
    # A fit frozen before its first step has no divergence to show (not "nan").
    assert re.fullmatch(
        r"X: 0/10 steps \(new\), \d+\.\d s",
        FitProgress("X", 10, file=io.StringIO()).close(stop_reason="new"),
    )


def test_custom_summary_and_silence():
    out = io.StringIO()
    quiet = FitProgress("GPATransporter", total=10, verbose=0, file=out)
    quiet(9, np.array([0.5]), np.array([0.25]))
    assert quiet.steps_done == 10 and quiet.divergence == 0.5 and quiet.kinetic_energy == 0.25
    assert quiet.close("done") == "GPATransporter: done"
    assert out.getvalue() == ""


def test_verbose_two_adds_a_line_per_call():
    out = io.StringIO()
    progress = FitProgress("GPATransporter", total=20, verbose=2, file=out)
    progress(9, np.array([1.0]), np.array([2.0]))
    progress.close(stop_reason="interrupted", n_steps=13)
    lines = out.getvalue().replace("\r", "\n").split("\n")
    assert "[GPATransporter] step 10/20  divergence 1, kinetic energy 2" in lines
    assert progress.summary.startswith("GPATransporter: 13/20 steps (interrupted)")


@pytest.mark.parametrize("tol", [None, 1e6])
def test_as_the_callback_of_a_fit(tol):
    rng = np.random.RandomState(0)
    X, _, sd = stack_domains(rng.normal(0, 1, (40, 2)), rng.normal(2, 1, (40, 2)))
    out = io.StringIO()
    progress = FitProgress("GPATransporter", total=20, file=out)
    gpa = GPATransporter(
        n_steps=20, log_every=5, tol=tol, prealign=None, random_state=0, callback=progress
    )
    gpa.fit(X, sample_domain=sd)
    line = progress.close(stop_reason=gpa.stop_reason_, n_steps=gpa.n_steps_)
    steps = 20 if tol is None else 5
    reason = "ran all steps" if tol is None else "kinetic energy below tol"
    history = gpa.history_
    assert line.startswith(
        f"GPATransporter: {steps}/20 steps ({reason}), "
        f"divergence {history['divergence'][steps - 1]:.4g}, "
        f"kinetic energy {history['kinetic_energy'][steps - 1]:.3g}, "
    )
    assert _last_line(out) == line
