"""Numeric work: BLAS/OpenMP thread limits, preloaded modules, CPU pinning.

Thread counts are read inside the workers with threadpoolctl; pinning with psutil from here.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest

import mppool
from mppool._client._setup import THREAD_VARIABLES

from . import tasks
from .conftest import PoolTracker, wait_until, worker_pids

T = 60.0
CORES = sorted(os.sched_getaffinity(0))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No thread variable in the user's environment (as on a fresh machine)."""
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_workers_get_their_share_of_the_cores_by_default(
    make_pool: PoolTracker, clean_env: None
) -> None:
    pool = make_pool(2)
    share = max(1, len(CORES) // 2)
    seen = pool.submit(tasks.blas_threads).result(timeout=T)
    assert seen and set(seen.values()) == {share}, seen


def test_threads_per_worker_sets_them_and_none_leaves_them(
    make_pool: PoolTracker, clean_env: None
) -> None:
    # (OpenBLAS never starts more threads than there are cores.)
    two = make_pool(2, threads_per_worker=2).submit(tasks.blas_threads).result(timeout=T)
    assert set(two.values()) == {min(2, len(CORES))}, two
    # None: the libraries' own default, one thread per core
    free = make_pool(2, threads_per_worker=None).submit(tasks.blas_threads).result(timeout=T)
    assert set(free.values()) == {len(CORES)}, free


def test_a_variable_set_by_the_user_is_kept_by_default(
    make_pool: PoolTracker, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    seen = make_pool(1).submit(tasks.blas_threads).result(timeout=T)
    assert set(seen.values()) == {1}, seen


def test_a_bad_thread_count_is_refused_at_pool() -> None:
    for bad in (0, -1, "many", 1.5, True):
        with pytest.raises(ValueError, match="threads_per_worker"):
            mppool.Pool(1, threads_per_worker=bad)  # type: ignore[arg-type]


def test_preloaded_modules_are_there_in_every_worker_and_replacement(
    make_pool: PoolTracker,
) -> None:
    pool = make_pool(1, preload=["numpy", "decimal"])
    wanted = ["numpy", "decimal"]
    assert pool.submit(tasks.modules_loaded, wanted).result(timeout=T) == dict.fromkeys(
        wanted, True
    )
    (pid,) = worker_pids(pool)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: worker_pids(pool) not in ([], [pid]))
    # The replacement was forked from the dispatcher, which has them: no import needed.
    assert pool.submit(tasks.modules_loaded, wanted).result(timeout=T) == dict.fromkeys(
        wanted, True
    )
    # numpy's core extension is mapped in the dispatcher itself
    maps = psutil.Process(pool.dispatcher_pid).memory_maps()
    assert any("_multiarray_umath" in m.path for m in maps)


def test_a_preload_that_fails_is_an_error_at_pool(leak_check: None) -> None:
    with pytest.raises(mppool.BrokenPoolError, match="could not import 'no_such_module_here'"):
        mppool.Pool(1, preload=["no_such_module_here"])


def test_cpu_affinity_pins_each_worker_and_a_replacement_keeps_its_cores(
    make_pool: PoolTracker,
) -> None:
    pool = make_pool(2, cpu_affinity=True)
    pinned = {pid: sorted(psutil.Process(pid).cpu_affinity() or []) for pid in worker_pids(pool)}
    assert sorted(pinned.values()) == sorted([[CORES[0]], [CORES[1 % len(CORES)]]])
    victim, cores = next(iter(pinned.items()))
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: len(worker_pids(pool)) == 2 and victim not in worker_pids(pool))
    replacement = next(pid for pid in worker_pids(pool) if pid not in pinned)
    assert sorted(psutil.Process(replacement).cpu_affinity() or []) == cores


def test_explicit_core_sets_and_bad_ones(make_pool: PoolTracker) -> None:
    pool = make_pool(2, cpu_affinity=[CORES, CORES[:1]])
    seen = sorted(psutil.Process(pid).cpu_affinity() or [] for pid in worker_pids(pool))
    assert seen == sorted([CORES, CORES[:1]])
    with pytest.raises(ValueError, match="core sets for 2 workers"):
        mppool.Pool(2, cpu_affinity=[CORES])
    with pytest.raises(ValueError, match="subset"):
        mppool.Pool(1, cpu_affinity=[[max(CORES) + 100]])
    with pytest.raises(ValueError, match="subset"):
        mppool.Pool(1, cpu_affinity=[[]])
