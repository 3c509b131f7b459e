"""Table 1 of paper 000 (section 5) as a test table: heavy tails with KL and alpha = 2.

Eight source/target pairs between N((10, 10), 0.5^2 I) and heavy-tailed laws centred at 0
(a generalised Gaussian exp(-|x|^0.5), Student-t with nu = 3, 1.5, 0.5), each with f = "kl"
and f = "alpha" (alpha = 2), L = 1, raw units, a fixed number of steps as in the paper
(``stop=None``).  Whatever a run does, its output must be
finite; when it stops on non-finite values it must say so (``stop_reason_`` and a
RuntimeWarning naming the step); alpha = 2 must never stop.
"""

import re
import warnings

import numpy as np
import pytest

from sklearn_gpa import GPATransporter
from sklearn_gpa.datasets import make_generalized_gaussian, make_student_t
from sklearn_gpa.utils import stack_domains

N_SAMPLES = 100
N_STEPS = 200

SAMPLERS = {
    "gaussian": lambda n, seed: np.random.RandomState(seed).normal(10.0, 0.5, (n, 2)),
    "ggm(0.5)": lambda n, seed: make_generalized_gaussian(n, beta=0.5, random_state=seed),
    "t(3)": lambda n, seed: make_student_t(n, df=3.0, random_state=seed),
    "t(1.5)": lambda n, seed: make_student_t(n, df=1.5, random_state=seed),
    "t(0.5)": lambda n, seed: make_student_t(n, df=0.5, random_state=seed),
}
HEAVY = ["ggm(0.5)", "t(3)", "t(1.5)", "t(0.5)"]
# Cases 1-4: heavy-tailed source onto the Gaussian; cases 5-8: the reverse.
CASES = [(heavy, "gaussian") for heavy in HEAVY] + [("gaussian", heavy) for heavy in HEAVY]
DIVERGENCES = {"kl": {"f": "kl"}, "alpha": {"f": "alpha", "alpha": 2.0}}
NON_FINITE_WARNING = re.compile(r"non-finite values \(flow 0 at step (\d+)\)")


def _problem(source_name, target_name):
    source = SAMPLERS[source_name](N_SAMPLES, 1)
    target = SAMPLERS[target_name](N_SAMPLES, 0)
    return source, target, stack_domains(source, target)


def _fit(X, sample_domain, **params):
    gpa = GPATransporter(
        standardize=False, device="cpu", stop=None, prealign=None, random_state=0, **params
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gpa.fit(X, sample_domain=sample_domain)
    steps = [
        int(match.group(1))
        for w in caught
        if issubclass(w.category, RuntimeWarning)
        and (match := NON_FINITE_WARNING.search(str(w.message)))
    ]
    return gpa, steps


def _check_outcome(gpa, warned_steps, X, sample_domain, new_rows, n_steps=N_STEPS):
    """What must hold for every run, whether it finished or stopped on non-finite values."""
    assert np.isfinite(gpa.particles_).all()
    out = gpa.transform(X, sample_domain=sample_domain)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[sample_domain < 0], X[sample_domain < 0])
    assert np.isfinite(gpa.transform(new_rows)).all()

    history = gpa.history_
    finite = np.isfinite(history["divergence"]) & np.isfinite(history["kinetic_energy"])
    assert len(finite) == gpa.n_steps_
    if gpa.stop_reason_ == "non-finite":
        # The warning names the first step that turned non-finite; everything before it
        # was finite, and the run stopped at the next look of the host.
        assert len(warned_steps) == 1
        step = warned_steps[0]
        assert finite[:step].all() and not finite[step]
        assert step < gpa.n_steps_ <= n_steps
    else:
        assert gpa.stop_reason_ == "n_steps" and gpa.n_steps_ == n_steps
        assert warned_steps == [] and finite.all()


@pytest.mark.parametrize("divergence", list(DIVERGENCES))
@pytest.mark.parametrize(
    ("source_name", "target_name"),
    CASES,
    ids=[f"case{k}-{s}-to-{t}" for k, (s, t) in enumerate(CASES, start=1)],
)
def test_heavy_tail_table(source_name, target_name, divergence):
    source, target, (X, _, sample_domain) = _problem(source_name, target_name)
    gpa, warned_steps = _fit(
        X, sample_domain, **DIVERGENCES[divergence], L=1.0, dt=1.0, n_steps=N_STEPS
    )
    new_rows = SAMPLERS[source_name](N_SAMPLES, 2)
    _check_outcome(gpa, warned_steps, X, sample_domain, new_rows)
    if divergence == "alpha":
        assert gpa.stop_reason_ == "n_steps"
    if gpa.stop_reason_ == "n_steps":
        # The bulk of the particles reached the target: the gap between the coordinatewise
        # medians of particles and targets (14 at the start) shrank more than tenfold.
        target_median = np.median(target, axis=0)
        before = np.linalg.norm(np.median(source, axis=0) - target_median)
        after = np.linalg.norm(np.median(gpa.particles_, axis=0) - target_median)
        assert after < before / 10


def test_unconstrained_kl_on_heavy_tails_stops_with_the_step():
    # A control row that does blow up (L = None, a steep critic): the same guarantees.
    target = make_student_t(N_SAMPLES, df=0.5, random_state=0)
    source = make_student_t(N_SAMPLES, df=0.5, random_state=5) + 50.0
    X, _, sample_domain = stack_domains(source, target)
    gpa, warned_steps = _fit(X, sample_domain, L=None, dt=1.0, learning_rate=0.05, n_steps=300)
    assert gpa.stop_reason_ == "non-finite"
    _check_outcome(gpa, warned_steps, X, sample_domain, source + 1.0, n_steps=300)
