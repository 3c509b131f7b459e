"""Device, dtype and CPU-thread choices for one fit."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time

import torch

__all__ = [
    "DTYPES",
    "blas_threads",
    "cpu_threads",
    "flush_denormals",
    "resolve_device",
    "resolve_dtype",
    "threads_context",
    "threads_for",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Below this many multiply-adds per network evaluation, a second thread gains nothing (the
# 2-D mixture, 400 rows: 0.61 ms per step with 1 or 2 threads on an idle 2-core machine);
# above it, on idle cores, it does (K = 10 flows of 400 rows, 8.6e6: 3.8 -> 2.2-2.7 ms;
# one flow of 2 000 rows, 4.3e6: 1.57 -> 1.22 ms).  On busy cores more threads are far worse
# than fewer, which ``_free_cores`` guards against.
_SINGLE_THREAD_WORK = 4_000_000

# torch's own choice at import time (one per physical core), before anyone changed it.
_DEFAULT_THREADS = torch.get_num_threads()

# (wall time, CPU time) of this process when the load-average fallback last looked, to tell
# its own recent share of the load average from other processes'.
_LAST_LOOK = [time.monotonic(), time.process_time()]

# (wall time, busy CPU seconds of the machine, CPU seconds of this process) when
# ``_other_busy_cores`` last looked; None before the first look.
_LAST_STAT = None
_LAST_READING = None
_SAMPLE_S = 0.05  # the window when there is no recent look
_REUSE_S = 0.25  # a look younger than this is reused: 10 ms clock ticks make shorter windows noisy
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _forget_looks() -> None:
    """A forked child starts its own clocks: the parent's looks would count the parent's CPU
    time as other processes' load."""
    global _LAST_STAT, _LAST_READING
    _LAST_STAT = _LAST_READING = None
    _LAST_LOOK[:] = [time.monotonic(), time.process_time()]
    # A child forked during a fit keeps the fit's BLAS limit (it is the library's state, as
    # after threadpoolctl's own limits) but not its count: the parent's fit does not run in
    # the child, whose own fits must limit and restore.
    _BLAS_STATE[:] = [0, None]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_looks)


def resolve_device(device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything torch accepts otherwise."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a device torch understands.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available here.")
    return resolved


def resolve_dtype(dtype) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    return DTYPES[dtype]


def threads_for(n_rows: int, layer_sizes, n_threads=None) -> int:
    """The number of CPU threads for a problem: 1 for small networks and few rows.

    ``layer_sizes`` is an MLP's widths ``(d, h_1, ..., 1)`` or, for any other network, its
    number of multiply-adds per row.  Never more than ``torch.get_num_threads()``: a user
    who sets ``torch.set_num_threads(1)`` gets one thread, and with it results that do not
    depend on the machine's load (multi-threaded sums round differently).
    """
    if n_threads is not None:
        return max(1, int(n_threads))
    if isinstance(layer_sizes, int):
        work = n_rows * layer_sizes
    else:
        work = n_rows * sum(a * b for a, b in zip(layer_sizes[:-1], layer_sizes[1:]))
    if work < _SINGLE_THREAD_WORK:
        return 1
    return max(1, min(_DEFAULT_THREADS, torch.get_num_threads(), _free_cores()))


def _cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _own_recent_load() -> float:
    """This process's CPU use (in cores) since the last look, if that was within a minute.

    Older looks say nothing about the last minute, which the load average covers: then 0,
    which can only make the caller take fewer threads.
    """
    now, cpu = time.monotonic(), time.process_time()
    span = now - _LAST_LOOK[0]
    if span < 1.0:
        return max(0.0, (cpu - _LAST_LOOK[1]) / max(span, 1e-9)) if span > 0.05 else 0.0
    own = (cpu - _LAST_LOOK[1]) / span if span <= 60.0 else 0.0
    _LAST_LOOK[:] = [now, cpu]
    return own


def _machine_busy_seconds(path="/proc/stat"):
    """CPU seconds that the cores this process may use spent busy since boot (Linux
    ``/proc/stat``), or None.

    Busy is user, nice, system, interrupts and steal (time a hypervisor gave to other
    machines); idle and I/O wait are not.  Cores outside the affinity mask (a cpuset, a
    batch scheduler's allocation) do not count: their load takes nothing from this process.
    """
    try:
        with open(path) as stat:
            lines = [line.split() for line in stat if line.startswith("cpu")]
    except OSError:
        return None
    try:
        allowed = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except (AttributeError, OSError):
        allowed = None
    rows = [f for f in lines if f[0] != "cpu" and (allowed is None or f[0] in allowed)]
    if not rows:
        rows = [f for f in lines if f[0] == "cpu"]
    if not rows or any(len(f) < 5 for f in rows):
        return None
    busy = 0
    for fields in rows:
        ticks = [int(x) for x in fields[1:9]] + [0] * (9 - len(fields))
        busy += ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
    return busy / _CLOCK_TICKS


def _other_busy_cores():
    """Cores that other processes kept busy since the last look, or None where unknown.

    The window is the time since the previous look when that was 0.25 s to a minute ago;
    within 0.25 s of it, that look's reading is reused; else a 0.05 s sample is taken now.
    This process's own CPU time is left out.
    """
    global _LAST_STAT, _LAST_READING
    now = time.monotonic()
    if _LAST_STAT is not None and _LAST_READING is not None and now - _LAST_STAT[0] < _REUSE_S:
        return _LAST_READING
    busy, own = _machine_busy_seconds(), time.process_time()
    if busy is None:
        return None
    if _LAST_STAT is None or now - _LAST_STAT[0] > 60.0:
        time.sleep(_SAMPLE_S)
        _LAST_STAT = (now, busy, own)
        now, busy, own = time.monotonic(), _machine_busy_seconds(), time.process_time()
    then, busy_then, own_then = _LAST_STAT
    _LAST_STAT = (now, busy, own)
    _LAST_READING = max(0.0, (busy - busy_then) - (own - own_then)) / max(now - then, 1e-9)
    return _LAST_READING


def _free_cores() -> int:
    """Cores that other processes leave idle (all where the OS won't say).

    Measured from the machine's CPU time (``/proc/stat``) where there is one: the 1-minute
    load average also counts tasks that are runnable for an instant, and read about 1 on an
    idle virtual machine here, which kept fits at one thread on two idle cores.  Elsewhere
    the load average, less this process's own CPU time since the last look (within a
    minute).  A thread more than the free cores is far worse than a thread less: torch's
    threads meet at every operation, and one that waits for a time slice stalls the others
    (2 threads on a 2-core machine with 5 runnable processes: 7-9x slower per step than 1
    thread, measured on the 2-D mixture with 20 000 particles).
    """
    others = _other_busy_cores()
    if others is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return _cores()
        others = max(0.0, load - min(_own_recent_load(), _DEFAULT_THREADS))
    return _cores() - math.ceil(max(0.0, others - 0.25))


@contextlib.contextmanager
def cpu_threads(n: int):
    """Run with ``n`` torch CPU threads, restoring the previous setting afterwards; on one
    thread, with subnormal numbers flushed to zero (:func:`flush_denormals`).

    Not on more: a thread starts with its creator's floating-point flags, so torch's worker
    threads started inside the block would keep flushing after it, in the caller's own
    work.  Fits on several threads rely on the critic's own flushing (``critic.py``).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with flush_denormals() if n == 1 else contextlib.nullcontext():
            yield
    finally:
        torch.set_num_threads(previous)


def _flushing_denormals() -> bool:
    """Whether this thread's CPU flushes subnormal floats to zero now (torch has no getter:
    a subnormal float32 times one reads zero when it does)."""
    return float(torch.tensor([1e-39], dtype=torch.float32).mul_(1.0)) == 0.0


@contextlib.contextmanager
def flush_denormals():
    """Flush subnormal floats to zero on this thread's CPU while the block runs.

    On Intel CPUs every operation on a subnormal number (below 1.2e-38 in float32) takes a
    microcode path a hundred times slower: products of the critic's small weights and
    gradients fall there, and a 100-step fit of the 12-D mixture ran 0.73 s instead of 0.37 s
    with the critic's state flushed in code alone (``critic._FLUSH_EVERY``), 3.4 s with
    neither.  The flag covers the calling thread only, and threads it starts.  A setting
    the caller already has is left as it is.  TensorFlow runs its CPU kernels this way.
    """
    if _flushing_denormals() or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def threads_context(device, n_rows: int, layer_sizes):
    """The thread setting for work of this size on ``device`` (nothing to set on a GPU).

    Everything the engine runs, set-up and replay included, goes through it: tiny batched
    matrix products on two threads of a busy machine took milliseconds each instead of
    microseconds.
    """
    if torch.device(device).type != "cpu":
        return contextlib.nullcontext()
    return cpu_threads(threads_for(n_rows, layer_sizes))


# The estimators' numpy work on fewer values than this is left alone: OpenBLAS runs small
# products on one thread anyway.
_BLAS_MIN_VALUES = 100_000
# Below this many multiply-adds for an SVD of the data (min(n, d)^2 max(n, d)), numpy's BLAS
# runs on one thread whatever the load: the gene studies (235 x 11 809, 6.5e8) fit in 1.31 s
# with one thread and 1.16 s with two on an idle 2-core AMD EPYC, 2.5 s and 6.9 s next to a
# numpy job, and one thread rounds the same way whatever else runs.  Above it, on the cores
# other processes leave idle.
_BLAS_SINGLE_THREAD_WORK = 4_000_000_000
# [the main thread's fits inside a limit (nested), the limiter that restores the limits
# when the outermost one leaves].
_BLAS_STATE = [0, None]
_BLAS_CONTROLLER = []  # threadpoolctl's view of the BLAS libraries, found once (4 ms a look)


def _blas_controller():
    if not _BLAS_CONTROLLER:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER.append(ThreadpoolController().select(user_api="blas"))
    return _BLAS_CONTROLLER[0]


def _enter_blas_limit(n_rows: int, n_features: int) -> bool:
    """Limit the BLAS threads for one fit; True when the fit counts in ``_BLAS_STATE``."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if _BLAS_STATE[0]:  # an outer fit set the limit
        _BLAS_STATE[0] += 1
        return True
    if n_rows * n_features < _BLAS_MIN_VALUES:
        return False
    if min(n_rows, n_features) ** 2 * max(n_rows, n_features) < _BLAS_SINGLE_THREAD_WORK:
        limit = 1
    else:
        limit = max(1, _free_cores())
        if limit >= _cores():
            return False
    controller = _blas_controller()
    # threadpoolctl reports None for a library whose threads it cannot read.
    above = [c.filepath for c in controller.lib_controllers if (c.num_threads or 0) > limit]
    if not above:
        return False
    _BLAS_STATE[:] = [1, controller.select(filepath=above).limit(limits=limit)]
    return True


def _leave_blas_limit() -> None:
    if _BLAS_STATE[0] <= 0:  # a forked child leaving its parent's fit: not its limit
        return
    _BLAS_STATE[0] -= 1
    if _BLAS_STATE[0] == 0:
        limiter, _BLAS_STATE[1] = _BLAS_STATE[1], None
        limiter.restore_original_limits()


@contextlib.contextmanager
def blas_threads(n_rows: int, n_features: int):
    """numpy's and scipy's BLAS threads for the estimators' work on an n_rows x n_features X.

    The estimators' numpy work (standardisation, the encoder's SVD, ridge cross-validation
    in ``class_router``, decoding) runs on OpenBLAS, which starts one thread per core
    whatever the load, and its threads spin at every barrier: next to a process doing numpy
    matrix products on a 2-core machine, a ``LatentGPA`` fit of 235 x 11 809 genes took
    6.9 s with two BLAS threads and 2.5 s with one on an AMD EPYC, 4.1 s and 2.2 s on an
    Intel Xeon (``benchmarks/bench_busy_machine.py``; idle, the one thread cost 2-15 %).  So
    data of moderate size (an SVD under ``_BLAS_SINGLE_THREAD_WORK`` multiply-adds) get one
    thread, always, which also keeps their rounding independent of the load (one or two
    threads changed the encoder's components in the last digits, enough to change a long
    flow); larger data get the free cores, as the torch engine's large problems do.  A lower
    limit set by the user (``threadpoolctl``, ``OMP_NUM_THREADS``) is never raised.

    Only fits in the main thread set a limit; a nested fit keeps its caller's.  BLAS limits
    are process-wide, so fits in other threads (joblib's threading backend) run under
    whatever the main thread has: OpenBLAS 0.3.31 ignores ``openblas_set_num_threads`` from
    other threads once the main thread has called it, so a limit set there could neither
    be relied on nor restored.  A limit the user changes from another thread while a fit
    runs in the main thread is overwritten when the fit ends.
    """
    counted = _enter_blas_limit(n_rows, n_features)
    try:
        yield
    finally:
        if counted:
            _leave_blas_limit()


def _data_shape(X) -> tuple[int, int]:
    """(rows, features) of array-like X as the estimators will see it; (0, 0) when it has
    no such shape (validation will say why)."""
    from sklearn.utils.validation import _num_features, _num_samples

    try:
        return int(_num_samples(X)), int(_num_features(X))
    except (TypeError, ValueError, IndexError):
        return 0, 0


def limit_blas_threads(method):
    """Run an estimator method ``method(self, X, ...)`` under :func:`blas_threads`."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        rows, features = _data_shape(args[0] if args else kwargs.get("X"))
        with blas_threads(rows, features):
            return method(self, *args, **kwargs)

    return wrapper
