"""What the benchmark scripts share: the machine, timing, result files, estimator settings.

Every ``bench_*.py`` script imports this module (it sits next to them, so ``import _common``
works when a script is run as ``python benchmarks/bench_x.py``).  It holds, once each:

* the checkout's root first on ``sys.path``, so a script measures this tree's ``sklearn_gpa``;
* :func:`machine_info` / :func:`machine_line`: the machine a result was measured on (CPU model
  from ``/proc/cpuinfo``, cores, Python, torch, numpy, scikit-learn, torch threads), for the
  JSON record and for the first line of a Markdown table;
* :func:`timed` and :func:`interleaved`: wall-clock timing; ``interleaved`` runs candidates in
  turn, repeat after repeat, so a slow spell of a shared machine hits all of them alike, and
  :func:`medians` summarises the repeats;
* :func:`parser`: an ``argparse`` parser with the shared ``--quick`` switch;
* :func:`write_results`: the one writer of ``results/<stem>.json`` and ``results/<stem>.md``
  (quick runs write ``<stem>_quick``, see :func:`result_stem`), and :func:`markdown_table`;
* :func:`latent_gpa` and :func:`gpa_augmenter`: a ``LatentGPA`` or ``GPAAugmenter`` from one
  flat dict of settings, so a benchmark's settings table reads as one list.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
# The scripts measure this checkout's sklearn_gpa, not an installed one.
sys.path.insert(0, str(REPO))


# -- the machine ------------------------------------------------------------------------
@functools.cache
def cpu_name():
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as info:
            found = re.search(r"model name\s*:\s*(.+)", info.read())
    except OSError:
        found = None
    if found:
        return found.group(1).strip()
    return platform.processor() or platform.machine()


def machine_info(**extra):
    """The machine and library versions, as a dict for a result's JSON; ``extra`` is added."""
    import numpy
    import sklearn
    import torch

    import sklearn_gpa

    info = {
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "sklearn": sklearn.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "sklearn_gpa": getattr(sklearn_gpa, "__version__", "unknown"),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    info.update(extra)
    return info


def machine_line():
    """One line naming the machine, for the top of a Markdown table."""
    import torch

    return f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def now():
    """The local date and time as ``YYYY-MM-DD HH:MM``, the stamp of every result file."""
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")


def command():
    """The command line that ran this script, from the repository root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
    return " ".join(["python", script, *sys.argv[1:]])


def run_record():
    """``{"command", "machine", "date"}`` of this run, taken now (at the start of a run, the
    load average is the one the run started under)."""
    return {"command": command(), "machine": machine_info(), "date": now()}


# -- timing -----------------------------------------------------------------------------
def timed(function, *args, **kwargs):
    """``(function(*args, **kwargs), seconds)`` by the wall clock."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def interleaved(candidates, repeats, *, alternate=False):
    """Seconds of each of ``candidates`` (a dict name -> callable), ``repeats`` times each,
    in turn: repeat 1 of every candidate, then repeat 2, ...; with ``alternate``, odd
    repeats run the candidates in reverse order, so neither always runs first.

    Returns a dict name -> list of seconds."""
    times = {name: [] for name in candidates}
    names = list(candidates)
    for repeat in range(repeats):
        order = names[::-1] if alternate and repeat % 2 else names
        for name in order:
            times[name].append(timed(candidates[name])[1])
    return times


def medians(times):
    """The median of each list of a dict name -> list of numbers."""
    return {name: statistics.median(values) for name, values in times.items()}


# -- command line -----------------------------------------------------------------------
def parser(doc, quick=None):
    """An ``argparse`` parser described by the first paragraph of ``doc`` (a script's
    ``__doc__``); with ``quick`` (its help text), the shared ``--quick`` switch."""
    result = argparse.ArgumentParser(description=doc.strip().split("\n\n")[0])
    if quick is not None:
        result.add_argument("--quick", action="store_true", help=quick)
    return result


def result_stem(name, quick=False, suffix=""):
    """``name`` + ``_quick`` for a quick run + ``suffix``: the stem of a script's result files."""
    return name + ("_quick" if quick else "") + suffix


# -- result files -----------------------------------------------------------------------
def markdown_table(header, rows, align=None):
    """A Markdown table: ``header`` a list of column names, ``rows`` lists of cells (strings
    or numbers, written with ``str``), ``align`` a string of ``l``/``r`` per column (default:
    first column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def format_row(row, columns):
    """A markdown row of ``row[key]`` for each ``(name, key, pattern)`` column ("-" if absent)."""
    cells = []
    for _, key, pattern in columns:
        value = row.get(key)
        if value is None:
            cells.append("-")
        else:
            cells.append(str(value) if pattern is None else pattern.format(value))
    return "| " + " | ".join(cells) + " |"


def grouped_table(rows, columns, group=None):
    """Markdown table of dict rows; the ``group`` column is written on each group's first row.

    ``columns`` are ``(name, key, pattern)``: text columns (pattern None) align left.
    """
    aligns = ["---" if c[2] is None else "---:" for c in columns]
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "|".join(aligns) + "|"]
    last = None
    for row in rows:
        shown = dict(row)
        if group is not None and row.get(group) == last:
            shown[group] = ""
        last = None if group is None else row.get(group)
        lines.append(format_row(shown, columns))
    return "\n".join(lines)


def write_results(stem, record, markdown, *, machine=True, indent=1):
    """Write ``results/<stem>.json`` (``record``, with ``machine_info()`` under "machine"
    and the date under "date" unless ``record`` has them, or ``machine=False``) and
    ``results/<stem>.md`` (``markdown``; ``None`` writes none).  Returns the JSON path."""
    RESULTS.mkdir(exist_ok=True)
    if machine:
        record = {"machine": machine_info(), "date": now(), **record}
    path = RESULTS / f"{stem}.json"
    path.write_text(json.dumps(record, indent=indent, default=str) + "\n")
    if markdown is not None:
        (RESULTS / f"{stem}.md").write_text(markdown.rstrip("\n") + "\n")
    return path


# -- estimator settings -----------------------------------------------------------------
def _split(estimator, settings):
    own = set(estimator().get_params(deep=False)) - {"transporter"}
    mine = {key: value for key, value in settings.items() if key in own}
    flow = {key: value for key, value in settings.items() if key not in own}
    return mine, flow


def latent_gpa(**settings):
    """``LatentGPA`` from one flat dict: its own parameters (``encoder``, ``residual``,
    ``latent_scale``, ``prealign``, ``random_state``) go to it, every other key changes the
    flow it builds when given no transporter (none: that default flow, as a user meets it).
    ``prealign`` is ``LatentGPA``'s.

    >>> latent_gpa(residual="drop", L=1.0, random_state=0).transporter.L
    1.0
    >>> latent_gpa(random_state=0).transporter is None
    True
    """
    from sklearn_gpa import LatentGPA
    from sklearn_gpa.latent import _default_flow

    mine, flow = _split(LatentGPA, settings)
    return LatentGPA(transporter=_default_flow(**flow) if flow else None, **mine)


def gpa_augmenter(**settings):
    """``GPAAugmenter`` from one flat dict: its own parameters (``random_state``,
    ``sampling_strategy``, ``oversampling_factor``, ...) go to it, every other key to its
    ``GPATransporter(source="gaussian_fit", ...)``; with no such key, its default
    transporter.  ``random_state`` is the augmenter's (it seeds the transporter).

    >>> gpa_augmenter(random_state=0, n_steps=50).transporter.n_steps
    50
    """
    from sklearn_gpa import GPATransporter
    from sklearn_gpa.augment import GPAAugmenter

    mine, flow = _split(GPAAugmenter, settings)
    transporter = GPATransporter(**{"source": "gaussian_fit", **flow}) if flow else None
    return GPAAugmenter(transporter=transporter, **mine)
