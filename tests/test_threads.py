"""The thread policy: torch threads from the problem's size and torch's setting, numpy's BLAS
threads from the data's shape, never from what other processes do."""

import builtins
import multiprocessing
import os
import threading
import time

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_info, threadpool_limits

from sklearn_gpa import GPATransporter, LatentGPA, _threadpool
from sklearn_gpa._engine import device
from sklearn_gpa.utils import stack_domains

# (32, 32, 32) hidden units on 2 features: 2 144 multiply-adds a row.
SMALL = (200, (2, 32, 32, 32, 1))  # 4.3e5 multiply-adds per evaluation
LARGE = (2_000, (2, 32, 32, 32, 1))  # 4.3e6


def _blas_threads():
    return sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


def _needs_blas():
    if not _blas_threads():
        pytest.skip("numpy has no BLAS that threadpoolctl can see")


@pytest.fixture
def torch_threads():
    """Set torch's thread count inside a test; the setting before it comes back after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _pair(n):
    rng = np.random.RandomState(0)
    X, _, sd = stack_domains(rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) + 2)
    return X, sd


def _threads_in_fit(n, **params):
    """torch's thread count and flush-to-zero flag as a fit of n + n rows in 2-D sees them."""
    seen = []
    X, sd = _pair(n)

    def look(*_):
        seen.append((torch.get_num_threads(), device._flushing_denormals()))

    GPATransporter(
        n_steps=2, log_every=1, callback=look, prealign=None, random_state=0, **params
    ).fit(X, sample_domain=sd)
    assert len(set(seen)) == 1
    return seen[0]


def test_torch_threads_follow_problem_size_and_torch_setting_only(torch_threads):
    """Small problems: one thread; large ones: exactly torch's setting at the time, whatever
    it is, never more."""
    assert device._SINGLE_THREAD_WORK == 4_000_000
    assert SMALL[0] * 2_144 < device._SINGLE_THREAD_WORK <= LARGE[0] * 2_144
    assert device.threads_for(*SMALL) == 1
    assert device.threads_for(10, 2_144) == 1  # work given as multiply-adds per row
    for n in (1, 2, 3, 5):
        torch_threads(n)
        assert device.threads_for(*SMALL) == 1
        assert device.threads_for(*LARGE) == n
        assert device.threads_for(LARGE[0], 2_144) == n
        assert device.threads_for(*SMALL, n_threads=4) == 4  # explicit, as metrics asks


def test_thread_count_reads_nothing_about_other_processes(monkeypatch, torch_threads):
    """No load average, no /proc, no sampling sleep: with all three made to fail, the
    answers (and a whole fit) are the same as without."""
    torch_threads(2)
    expected = [device.threads_for(*SMALL), device.threads_for(*LARGE)]
    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc"):
            raise AssertionError(f"read {path}")
        return real_open(path, *args, **kwargs)

    def fail(*args, **kwargs):
        raise AssertionError("looked at the machine's load")

    monkeypatch.setattr(builtins, "open", no_proc)
    monkeypatch.setattr(os, "getloadavg", fail)
    monkeypatch.setattr(time, "sleep", fail)
    assert [device.threads_for(*SMALL), device.threads_for(*LARGE)] == expected == [1, 2]
    assert _threads_in_fit(1_000)[0] == 2
    assert _threads_in_fit(100)[0] == 1


def _spin(stop):
    while not stop.is_set():
        pass


def _fit_seen(n):
    """Particles of a fit of n + n rows in 2-D, and the torch thread counts it ran on."""
    seen = set()
    X, sd = _pair(n)
    gpa = GPATransporter(
        n_steps=4,
        log_every=1,
        callback=lambda *_: seen.add(torch.get_num_threads()),
        stop=None,
        prealign=None,
        random_state=0,
    ).fit(X, sample_domain=sd)
    return gpa.particles_, seen


def test_fits_next_to_busy_processes_are_the_same_to_the_bit(torch_threads):
    """One and two torch threads round differently (``bench_busy_machine.py --part
    threads``), so a thread count chosen from the machine's load would make a fit's result
    depend on what else runs: next to two busy processes, the same threads and particles."""
    torch_threads(2)
    quiet = {n: _fit_seen(n) for n in (100, 1_000)}
    stop = multiprocessing.Event()
    busy = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(2)]
    for process in busy:
        process.start()
    try:
        time.sleep(0.2)
        for n, (particles, seen) in quiet.items():
            busy_particles, busy_seen = _fit_seen(n)
            assert busy_seen == seen == {1 if n == 100 else 2}
            np.testing.assert_array_equal(busy_particles, particles)
    finally:
        stop.set()
        for process in busy:
            process.join()


def test_a_users_torch_setting_is_respected_and_restored(torch_threads):
    torch_threads(1)
    assert _threads_in_fit(1_000) == (1, True)  # one thread: subnormals flushed too
    assert torch.get_num_threads() == 1
    torch_threads(2)
    assert _threads_in_fit(1_000)[0] == 2
    assert _threads_in_fit(100)[0] == 1
    assert torch.get_num_threads() == 2


def test_fits_on_one_thread_flush_subnormals_and_restore_the_flag():
    """The subnormal fix stays: a small fit runs with the CPU's flush-to-zero flag (a
    hundredfold slow path on Intel CPUs otherwise), which is off again afterwards."""
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals")
    assert _threads_in_fit(100) == (1, True)
    assert not device._flushing_denormals()
    assert float(torch.tensor([1e-39], dtype=torch.float32) * 1.0) > 0


def test_blas_limit_is_a_function_of_the_shape():
    assert _threadpool.blas_limit(235, 11_809) == 1  # the gene studies: 6.5e8 < 4e9
    assert _threadpool.blas_limit(11_809, 235) == 1
    assert _threadpool.blas_limit(100, 999) is None  # small: BLAS runs it on one thread
    assert _threadpool.blas_limit(2_000, 100_000) is None  # large: BLAS's own setting
    assert 235**2 * 11_809 < _threadpool._BLAS_SINGLE_THREAD_WORK < 2_000**2 * 100_000


def test_blas_threads_limit_moderate_data_and_restore():
    """Moderate data: one BLAS thread; small and large data: the setting as it was; limits
    come back after the block, nested blocks included, and a lower user limit stays."""
    _needs_blas()
    with threadpool_limits(2, user_api="blas"):
        with _threadpool.blas_threads(235, 11_809):
            assert set(_blas_threads()) == {1}
            with _threadpool.blas_threads(2_000, 100_000):  # nested: left as it is
                assert set(_blas_threads()) == {1}
            assert set(_blas_threads()) == {1}
        assert set(_blas_threads()) == {2}
        with _threadpool.blas_threads(100, 999):
            assert set(_blas_threads()) == {2}
        with _threadpool.blas_threads(2_000, 100_000):
            assert set(_blas_threads()) == {2}
        with threadpool_limits(1, user_api="blas"), _threadpool.blas_threads(235, 11_809):
            assert set(_blas_threads()) == {1}
        assert set(_blas_threads()) == {2}


class _RecordingPCA(PCA):
    seen = []

    def fit(self, X, y=None):
        self.seen.append(set(_blas_threads()))
        return super().fit(X, y)


def test_blas_limit_holds_during_a_fit_and_is_restored_after_it_ends_or_raises():
    """LatentGPA's encoder fit (the SVD of all rows) sees one BLAS thread; the caller's
    setting is back afterwards, also when the fit raises."""
    _needs_blas()
    rng = np.random.RandomState(0)
    X, _, sd = stack_domains(rng.normal(size=(40, 2_000)), rng.normal(size=(40, 2_000)) + 1)
    _RecordingPCA.seen.clear()
    with threadpool_limits(2, user_api="blas"):
        LatentGPA(
            _RecordingPCA(3),
            transporter=GPATransporter(n_steps=2, random_state=0, out_of_sample="auto"),
        ).fit(X, sample_domain=sd)
        assert _RecordingPCA.seen == [{1}]
        assert set(_blas_threads()) == {2}
        with pytest.raises(ValueError):
            LatentGPA(
                _RecordingPCA(3), transporter=GPATransporter(n_steps=2, out_of_sample="auto")
            ).fit(X, sample_domain=sd[:-1])
        assert set(_blas_threads()) == {2}


def test_blas_limit_set_and_restored_by_the_main_thread_only():
    """Fits in worker threads (joblib's threading backend) neither set nor restore the
    process-wide BLAS limit: OpenBLAS ignores a worker's calls once the main thread has set
    one, and two threads restoring in turn could leave one thread for good."""
    from joblib import Parallel, delayed

    _needs_blas()
    genes = (235, 11_809)

    def fit(i):
        with _threadpool.blas_threads(*genes):
            time.sleep(0.001 * (i % 3))
            return set(_blas_threads())

    with threadpool_limits(2, user_api="blas"):
        for _ in range(3):
            inside = Parallel(n_jobs=8, backend="threading")(delayed(fit)(i) for i in range(32))
            assert inside == [{2}] * 32
            assert set(_blas_threads()) == {2}
        worker_in, main_out, seen = threading.Event(), threading.Event(), []

        def worker():
            with _threadpool.blas_threads(*genes):
                worker_in.set()
                main_out.wait(5)
                seen.append(set(_blas_threads()))

        with _threadpool.blas_threads(*genes):
            thread = threading.Thread(target=worker)
            thread.start()
            worker_in.wait(5)
            assert set(_blas_threads()) == {1}
        main_out.set()
        thread.join(5)
        assert seen == [{2}]  # the main thread's fit ended: its limit with it
        assert set(_blas_threads()) == {2}


def test_blas_limit_reads_the_shape_of_lists_and_frames():
    """The shape that decides the limit is read as the estimators will read it: a list of
    rows or a DataFrame is limited like the array, input without a shape is left alone."""
    import pandas as pd

    _needs_blas()

    class Estimator:
        @_threadpool.limit_blas_threads
        def fit(self, X, y=None):
            return set(_blas_threads())

    X = np.zeros((200, 600))
    with threadpool_limits(2, user_api="blas"):
        assert Estimator().fit(X) == {1}
        assert Estimator().fit(X.tolist()) == {1}
        assert Estimator().fit(X=pd.DataFrame(X)) == {1}
        assert Estimator().fit(np.zeros((20, 600))) == {2}  # 12 000 values: left alone
        assert Estimator().fit("not data") == {2}
        assert Estimator().fit(np.zeros(200 * 600)) == {2}
