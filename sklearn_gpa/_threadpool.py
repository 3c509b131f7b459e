"""numpy's and scipy's BLAS threads for the estimators' own numpy work.

The estimators' numpy work (standardisation, the encoder's SVD, the class router's ridge
cross-validation, decoding) runs on the BLAS numpy links (OpenBLAS, MKL), which starts a
thread per core whatever else runs, and its threads wait for each other at every barrier.
For data of moderate size one thread is about as fast on an idle machine and much faster
next to another busy process (``doc/user_guide.rst``, "Threads and reproducibility";
``benchmarks/bench_busy_machine.py``).  So, as scikit-learn's ``KMeans`` does with
``threadpoolctl``, the estimators' public methods run under a BLAS limit chosen from the
size of ``X`` alone, never from the machine's load.
"""

from __future__ import annotations

import contextlib
import functools
import threading

from sklearn.utils.validation import _num_features, _num_samples

__all__ = ["blas_limit", "blas_threads", "limit_blas_threads", "one_thread"]

# Data with fewer values than this are left alone: OpenBLAS runs small products on one
# thread anyway, and looking costs more than it saves.
_BLAS_MIN_VALUES = 100_000
# Data whose SVD costs fewer multiply-adds than this (min(n, d)^2 max(n, d)) run on one BLAS
# thread; larger data on BLAS's own setting.  The gene studies (235 x 11 809) take 6.5e8.
_BLAS_SINGLE_THREAD_WORK = 4_000_000_000

_controller = None  # threadpoolctl's view of the loaded libraries, found once (ms a look)


def _get_threadpool_controller():
    """The process's ``ThreadpoolController``, made on first use (scikit-learn's idiom)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


def blas_limit(n_rows: int, n_features: int) -> int | None:
    """The BLAS thread limit for the estimators' work on an ``n_rows x n_features`` X.

    1 for data of moderate size (at least ``_BLAS_MIN_VALUES`` values and an SVD under
    ``_BLAS_SINGLE_THREAD_WORK`` multiply-adds), None (BLAS's own setting) for smaller and
    larger data.  A pure function of the shape.

    Examples
    --------
    >>> from sklearn_gpa._threadpool import blas_limit
    >>> blas_limit(235, 11_809)  # the gene-expression studies
    1
    >>> blas_limit(100, 10) is None, blas_limit(2_000, 100_000) is None
    (True, True)
    """
    if n_rows * n_features < _BLAS_MIN_VALUES:
        return None
    if min(n_rows, n_features) ** 2 * max(n_rows, n_features) < _BLAS_SINGLE_THREAD_WORK:
        return 1
    return None


def blas_threads(n_rows: int, n_features: int):
    """Context manager: the BLAS limit of :func:`blas_limit` while the block runs.

    threadpoolctl restores the previous limits when the block ends or raises.  A limit of
    one never raises a lower setting of the user's own.  Only the main thread sets a
    limit: BLAS limits are process-wide, OpenBLAS ignores ``openblas_set_num_threads`` from
    other threads once the main thread has called it, and two threads restoring in turn
    could leave the process on one thread for good; fits in other threads (joblib's
    threading backend) run under whatever the main thread has.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa._threadpool import blas_threads
    >>> with blas_threads(235, 11_809):
    ...     _ = np.ones((235, 300)) @ np.ones((300, 235))
    """
    limit = blas_limit(n_rows, n_features)
    if limit is None or threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    return _get_threadpool_controller().limit(limits=limit, user_api="blas")


def one_thread():
    """Context manager: BLAS and OpenMP on one thread while the block runs (main thread only,
    as :func:`blas_threads`), for many small fits, such as a Gaussian mixture's on a few
    hundred rows, where two BLAS threads next to busy processes were 10-20 times slower."""
    if threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    return _get_threadpool_controller().limit(limits=1)


def _data_shape(X) -> tuple[int, int]:
    """(rows, features) of array-like X as the estimators will see it; (0, 0) when it has
    no such shape (validation will say why)."""
    try:
        return int(_num_samples(X)), int(_num_features(X))
    except (TypeError, ValueError, IndexError):
        return 0, 0


def limit_blas_threads(method):
    """Decorator: run an estimator method ``method(self, X, ...)`` under :func:`blas_threads`
    for the shape of its ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_gpa._threadpool import limit_blas_threads
    >>> class Centerer:
    ...     @limit_blas_threads
    ...     def fit(self, X, y=None):
    ...         self.mean_ = np.mean(X, axis=0)
    ...         return self
    >>> Centerer().fit(np.ones((3, 2))).mean_
    array([1., 1.])
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        rows, features = _data_shape(args[0] if args else kwargs.get("X"))
        with blas_threads(rows, features):
            return method(self, *args, **kwargs)

    return wrapper
