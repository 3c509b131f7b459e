"""Device, dtype and CPU-thread choices for one fit.

The thread count is a pure function of the problem's size and torch's own setting: one
thread for small problems, ``torch.get_num_threads()`` otherwise.  Nothing here looks at
other processes, so the same fit on the same machine rounds the same way whatever else runs.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = [
    "DTYPES",
    "cpu_threads",
    "flush_denormals",
    "resolve_device",
    "resolve_dtype",
    "threads_context",
    "threads_for",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Below this many multiply-adds per network evaluation (rows x the network's multiply-adds
# per row), a second thread gains nothing and its start-up and barriers cost time; above it,
# torch's threads pay.  Measurements: ``doc/user_guide`` (threads) and ``benchmarks/README.md``.
_SINGLE_THREAD_WORK = 4_000_000


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
    """The number of torch CPU threads for a problem: 1 when it is small, else torch's own.

    ``layer_sizes`` is an MLP's widths ``(d, h_1, ..., 1)`` or, for any other network, its
    number of multiply-adds per row.  The answer depends on nothing but these and
    ``torch.get_num_threads()`` at the time of the call, which it never exceeds: a user who
    sets ``torch.set_num_threads(1)`` gets one thread, and results that do not depend on the
    number of cores (multi-threaded sums round differently).  An explicit ``n_threads``
    is returned as it is (at least 1).

    Examples
    --------
    >>> import torch
    >>> from sklearn_gpa._engine.device import threads_for
    >>> threads_for(400, (2, 32, 32, 1))  # the 2-D mixture: 1 thread
    1
    >>> threads_for(20_000, (2, 32, 32, 1)) == torch.get_num_threads()
    True
    """
    if n_threads is not None:
        return max(1, int(n_threads))
    if isinstance(layer_sizes, int):
        work = n_rows * layer_sizes
    else:
        work = n_rows * sum(a * b for a, b in zip(layer_sizes[:-1], layer_sizes[1:]))
    if work < _SINGLE_THREAD_WORK:
        return 1
    return max(1, torch.get_num_threads())


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
    microcode path about a hundred times slower, and products of the critic's small weights
    and gradients fall there (``benchmarks/bench_denormals.py``).  The flag covers the
    calling thread only, and threads it starts.  A setting the caller already has is left
    as it is.  TensorFlow runs its CPU kernels this way.
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

    Everything the engine runs, set-up and replay included, goes through it, so the rule of
    :func:`threads_for` holds for the whole fit.
    """
    if torch.device(device).type != "cpu":
        return contextlib.nullcontext()
    return cpu_threads(threads_for(n_rows, layer_sizes))
