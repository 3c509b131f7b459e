"""A progress bar for a fit: rate, elapsed time, divergence, kinetic energy, and a summary.

The engine calls ``callback(step, divergence, kinetic_energy)`` every ``log_every`` steps
(``step`` 0-based, arrays with one value per flow).  :class:`FitProgress` is such a callback,
drawn with ``tqdm`` and named after the estimator::

    progress = FitProgress("GPATransporter", total=n_steps, verbose=verbose)
    ...  # run the flow with callback=progress
    progress.close(stop_reason="n_steps")

``close`` replaces the bar's last state by a one-line summary (steps run, why the run
stopped, final divergence and kinetic energy, time).
"""

from __future__ import annotations

import sys
import time

import numpy as np

__all__ = ["STOP_REASONS", "FitProgress"]

#: How the summary line words the engine's ``stop_reason`` values.
STOP_REASONS = {
    "converged": "every flow as close to its target as a fresh sample",
    "stalled": "every flow as close to its target as a fresh sample or no longer nearing it",
    "n_steps": "ran all steps",
    "tol": "kinetic energy below tol",
    "non-finite": "every flow stopped at a non-finite step",
    "interrupted": "interrupted",
}


def _mean(values):
    """Mean over the flows still finite (nan when none is): a frozen flow reports nan."""
    values = np.asarray(values, dtype=float).ravel()
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


class FitProgress:
    """Progress of a fit as a ``tqdm`` bar, closed by a one-line summary.

    An instance is the ``callback(step, divergence, kinetic_energy)`` of the engine: ``step``
    is 0-based, ``divergence`` and ``kinetic_energy`` hold one value per flow (the bar shows
    their means over the flows still finite).  The bar shows the steps done out of
    ``total``, the elapsed time, the remaining time and the rate in steps per second.

    Parameters
    ----------
    name : str
        Shown before the bar and the summary, e.g. ``"GPATransporter"``.
    total : int
        Number of steps the run is asked for.
    verbose : int, default=1
        0: draw nothing (the callback and ``close`` still record the values);
        1: the bar and the summary; 2 and more: also one line per call above the bar.
    file : file-like or None, default=None
        Where to draw; None is ``sys.stderr``, so the bar never mixes with a program's
        output on ``sys.stdout``.
    mininterval : float, default=0.2
        Least number of seconds between two redraws of the bar.

    Attributes
    ----------
    steps_done : int
        Steps finished at the last call (0 before the first).
    divergence, kinetic_energy : float
        Means over the finite flows at the last call where some flow was finite (nan
        before).
    summary : str or None
        The summary line, once ``close`` has run.

    Examples
    --------
    >>> import io
    >>> import numpy as np
    >>> out = io.StringIO()
    >>> progress = FitProgress("GPATransporter", total=100, file=out)
    >>> for step in range(49, 100, 50):
    ...     progress(step, np.array([0.5, 0.3]), np.array([1e-2, 3e-2]))
    >>> progress.close(stop_reason="n_steps")  # doctest: +ELLIPSIS
    'GPATransporter: 100/100 steps (ran all steps), divergence 0.4, kinetic energy 0.02, ... s'
    >>> out.getvalue().splitlines()[-1] == progress.summary
    True
    """

    def __init__(self, name, total, *, verbose=1, file=None, mininterval=0.2):
        self.name = str(name)
        self.total = int(total)
        self.verbose = int(verbose or 0)
        self.file = file
        self.steps_done = 0
        self.divergence = float("nan")
        self.kinetic_energy = float("nan")
        self.summary = None
        self._start = time.perf_counter()
        self._bar = None
        if self.verbose > 0:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                desc=self.name,
                unit="step",
                file=self._file(),
                mininterval=mininterval,
                dynamic_ncols=True,
                leave=False,
            )

    def _file(self):
        return self.file if self.file is not None else sys.stderr

    def __deepcopy__(self, memo):
        # A bar on a terminal is one display, not a value: the copy scikit-learn's ``clone``
        # makes of an estimator's parameters (``LatentGPA`` clones its transporter) reports
        # to the same bar.  Copying it would copy its stream, which cannot be copied.
        return self

    def __call__(self, step, divergence, kinetic_energy):
        """Record the values after ``step`` (0-based) and redraw the bar."""
        self.steps_done = int(step) + 1
        # Every flow stopped at this check (its values are nan): the last finite ones stay.
        divergence, kinetic_energy = _mean(divergence), _mean(kinetic_energy)
        if np.isfinite(divergence) or np.isfinite(kinetic_energy):
            self.divergence, self.kinetic_energy = divergence, kinetic_energy
        if self._bar is None:
            return
        values = f"divergence {self.divergence:.4g}, kinetic energy {self.kinetic_energy:.3g}"
        if self.verbose > 1:
            self._bar.write(
                f"[{self.name}] step {self.steps_done}/{self.total}  {values}", file=self._file()
            )
        self._bar.set_postfix_str(values, refresh=False)
        self._bar.update(max(0, self.steps_done - self._bar.n))

    def write(self, line):
        """Print ``line`` above the bar (the bar is drawn again below it)."""
        if self._bar is not None:
            self._bar.write(line, file=self._file())
        else:
            print(line, file=self._file(), flush=True)

    def close(self, summary=None, *, stop_reason=None, n_steps=None):
        """Remove the bar and print one summary line; returns the line.

        Parameters
        ----------
        summary : str or None, default=None
            The text after ``"<name>: "``; None builds it from the last values: steps run
            out of ``total``, the stop reason, final divergence and kinetic energy, time.
        stop_reason : str or None, default=None
            The engine's ``stop_reason`` (``"n_steps"``, ``"tol"``, ``"non-finite"``,
            ``"interrupted"``; others are shown as given).
        n_steps : int or None, default=None
            Steps actually run, when it differs from the last step reported.

        Returns
        -------
        line : str
        """
        if self.summary is not None:
            return self.summary
        if n_steps is not None:
            self.steps_done = int(n_steps)
        if summary is None:
            reason = STOP_REASONS.get(stop_reason, stop_reason)
            summary = f"{self.steps_done}/{self.total} steps" + (f" ({reason})" if reason else "")
            # No values: frozen before the first step, or stopped at an early check,
            # which does not call back (not "nan").
            if self.steps_done > 0 and np.isfinite(self.divergence):
                summary += (
                    f", divergence {self.divergence:.4g}, kinetic energy {self.kinetic_energy:.3g}"
                )
            summary += f", {time.perf_counter() - self._start:.1f} s"
        self.summary = f"{self.name}: {summary}"
        if self._bar is not None:
            self._bar.close()
            self._file().write(self.summary + "\n")
            self._file().flush()
        return self.summary

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(stop_reason="interrupted" if exc_type is KeyboardInterrupt else None)
        return False
