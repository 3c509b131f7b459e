"""Device, dtype and CPU-thread choices for one fit."""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["DTYPES", "cpu_threads", "resolve_device", "resolve_dtype", "threads_for"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Below this many multiply-adds per network evaluation, a second thread costs more in
# synchronisation than it gains (a 2-D run measured 40x slower with 2 threads on a busy
# 2-core machine than with 1).
_SINGLE_THREAD_WORK = 2_000_000


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
    """The number of CPU threads for a problem: 1 for small networks and few rows."""
    if n_threads is not None:
        return max(1, int(n_threads))
    work = n_rows * sum(a * b for a, b in zip(layer_sizes[:-1], layer_sizes[1:]))
    if work < _SINGLE_THREAD_WORK:
        return 1
    return torch.get_num_threads() or (os.cpu_count() or 1)


@contextlib.contextmanager
def cpu_threads(n: int):
    """Run with ``n`` torch CPU threads, restoring the previous setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
