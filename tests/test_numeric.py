"""Numeric work: BLAS/OpenMP thread limits, preloaded modules, CPU pinning.

Thread counts are read inside the workers with threadpoolctl; pinning with psutil from here.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import mppool
from mppool import _shm
from mppool._client._setup import THREAD_VARIABLES

from . import tasks
from .conftest import PoolTracker, read_line, wait_until, worker_pids

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
    new: list[int] = []

    def replaced() -> bool:
        pids = worker_pids(pool)  # one look at the process table
        new[:] = [pid for pid in pids if pid not in pinned]
        return len(pids) == 2 and victim not in pids and len(new) == 1

    assert wait_until(replaced)
    assert sorted(psutil.Process(new[0]).cpu_affinity() or []) == cores


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


# --- large payloads through shared memory ------------------------------------------------------
def segments(pool: mppool.Pool) -> list[str]:
    """This pool's shared-memory segments, from /dev/shm."""
    prefix = pool._core.shm_prefix
    return sorted(n for n in os.listdir(_shm.SHM_DIR) if n.startswith(prefix))


def test_a_200_mb_array_goes_and_comes_back_bit_exact(make_pool: PoolTracker) -> None:
    pool = make_pool(1)
    sent = np.random.default_rng(7).standard_normal(25_000_000)  # 200 MB of float64
    sent[::1000] = np.nan  # bit-exact, NaNs too
    back = pool.submit(tasks.same, sent).result(timeout=T)
    assert back.dtype == sent.dtype and back.shape == sent.shape
    assert np.array_equal(back.view(np.uint64), sent.view(np.uint64))
    assert back.flags.writeable  # a result is the caller's to change
    back[0] = 1.0
    assert segments(pool) == []  # both segments are gone once the result is here
    pool.shutdown(wait=True, timeout=T)


def test_a_task_writing_to_its_argument_does_not_change_the_callers(
    make_pool: PoolTracker,
) -> None:
    pool = make_pool(1)
    mine = np.ones(1_000_000)
    assert pool.submit(tasks.scribble, mine).result(timeout=T) == -1_000_000
    assert mine.sum() == 1_000_000


def test_a_shared_array_is_placed_once_for_100_tasks(make_pool: PoolTracker) -> None:
    pool = make_pool(2)
    big = np.arange(10_000_000, dtype=np.float64)  # 80 MB
    handle = pool.share(big)
    assert segments(pool) == [handle.name]
    futures = [pool.submit(tasks.array_sum, handle) for _ in range(100)]
    assert {f.result(timeout=T) for f in futures} == {(float(big.sum()), False)}  # read-only
    assert segments(pool) == [handle.name]  # one segment, however many tasks
    prefix = pool._core.shm_prefix
    for _ in range(4):  # every worker has it mapped, once
        assert pool.submit(tasks.mapped_segments, prefix).result(timeout=T) in ([], [handle.name])
    del handle, futures
    gc.collect()
    assert segments(pool) == []  # the last user let go of it


def test_segments_are_gone_after_a_worker_is_killed_mid_task(
    make_pool: PoolTracker, tmp_path: Path
) -> None:
    pool = make_pool(1)
    pool_segments = pool._core.shm_prefix
    data = np.ones(2_000_000)
    marker = str(tmp_path / "crashed")
    assert pool.submit(tasks.crash_first_time_with, marker, data).result(timeout=T) == 2e6
    assert os.path.exists(marker)  # it did crash once, and was run again from the segment
    # The segment is removed just after the result is delivered (freeing its pages takes a
    # while, so the future does not wait for it).
    assert wait_until(lambda: segments(pool) == [])
    pool.shutdown(wait=True, timeout=T)
    assert not [n for n in os.listdir(_shm.SHM_DIR) if n.startswith(pool_segments)]


def test_segments_are_removed_when_the_user_process_is_killed(
    leak_check: None, tmp_path: Path
) -> None:
    script = tmp_path / "killed.py"
    script.write_text(
        "import os, sys, numpy as np, mppool\n"
        "def hold(a, gate):\n"
        "    open(gate).read()\n"
        "if __name__ == '__main__':\n"
        "    pool = mppool.Pool(2)\n"
        "    h = pool.share(np.ones(3_000_000))\n"
        "    pool.submit(hold, np.ones(2_000_000), sys.argv[1])\n"
        "    print(pool._core.shm_prefix, flush=True)\n"
        "    sys.stdin.read()\n"
    )
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(gate)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        prefix = read_line(proc, T).decode().strip()
        mine = lambda: [n for n in os.listdir(_shm.SHM_DIR) if n.startswith(prefix)]  # noqa: E731
        assert len(mine()) == 2  # the shared array and the running task's argument
        proc.kill()
        proc.wait(timeout=T)
        assert wait_until(lambda: not mine()), mine()
    finally:
        proc.kill()
        proc.communicate(timeout=T)


def test_a_large_result_kept_in_a_job_store_is_whole(
    make_pool: PoolTracker, tmp_path: Path
) -> None:
    db = tmp_path / "jobs.db"
    data = np.arange(1_000_000, dtype=np.int64)  # 8 MB: through shared memory
    with make_pool(1, store=db) as pool:
        first = pool.options(key="big").submit(tasks.same, data).result(timeout=T)
    with make_pool(1, store=db) as pool:  # from the store: the segment is long gone
        again = pool.options(key="big").submit(tasks.same, None).result(timeout=T)
    assert np.array_equal(first, data) and np.array_equal(again, data)


# --- what a review of the shared-memory path found (each failed before its fix) ----------------
def test_a_result_of_hundreds_of_arrays_is_kept_whole_and_survives_the_pool(
    make_pool: PoolTracker, tmp_path: Path
) -> None:
    db = tmp_path / "jobs.db"
    with make_pool(1, store=db) as pool:
        first = pool.options(key="many").submit(tasks.many_arrays, 250).result(timeout=T)
        mapped = pool.map(tasks.many_arrays, [250, 250], chunksize=2, timeout=T)
        head = next(mapped)
    rest = list(mapped)  # read after the pool ended: mapped as they arrived
    with make_pool(1, store=db) as pool:  # from the store, long after the segment went
        again = pool.options(key="many").submit(tasks.many_arrays, 0).result(timeout=T)
    for arrays in (first, head, *rest, again):
        assert len(arrays) == 250 and all(a[0] == i for i, a in enumerate(arrays))


def test_a_small_result_is_never_taken_for_a_segment(
    make_pool: PoolTracker, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere.pickle"
    elsewhere.write_bytes(pickle.dumps("the contents of another file"))
    with make_pool(1, store=tmp_path / "jobs.db") as pool:
        for text in ("struct_unpack", str(elsewhere), "mppool-segment\x00"):
            fut = pool.options(key=text).submit(tasks.tuple_with, text)
            assert fut.result(timeout=T) == (text, [42])
    with make_pool(1, store=tmp_path / "jobs.db") as pool:
        stored = pool.options(key=str(elsewhere)).submit(tasks.tuple_with, "not run")
        assert stored.result(timeout=T) == (str(elsewhere), [42])


def test_without_shared_memory_large_arguments_go_through_the_pipes(
    make_pool: PoolTracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool(1)
    monkeypatch.setattr(_shm, "SHM_DIR", str(tmp_path / "no-such-dir"))  # as on a full disk
    data = np.arange(500_000, dtype=np.float64)
    assert pool.submit(tasks.array_sum, data).result(timeout=T) == (float(data.sum()), True)
    chunks = (np.full(100_000, float(i)) for i in range(6))  # a generator: read by a thread
    got = list(pool.map(tasks.array_sum, chunks, timeout=T))
    assert got == [(100_000.0 * i, True) for i in range(6)]


def test_the_result_of_a_task_cancelled_while_running_leaves_no_segment(
    make_pool: PoolTracker, fifos: Any
) -> None:
    pool = make_pool(1)
    started, gate = fifos("started"), fifos("gate")
    fut = pool.submit(tasks.gated_array, started.path, gate.path, 1_000_000)
    started.take()
    pool.cancel(fut, kill=False)  # it runs on; its result will be dropped
    gate.post()
    assert pool.submit(tasks.square, 3).result(timeout=T) == 9  # ran after the dropped result
    assert wait_until(lambda: segments(pool) == [], T), segments(pool)


def test_a_dead_letter_with_a_large_argument_can_be_retried(
    make_pool: PoolTracker, tmp_path: Path
) -> None:
    db = tmp_path / "jobs.db"
    data = np.ones(200_000)
    with make_pool(1, store=db) as pool, pytest.raises(ValueError, match="bad input"):
        pool.options(key="k").submit(tasks.fail_with_array, data).result(timeout=T)
    with make_pool(1, store=db) as pool:
        (retried,) = pool.retry_failed()
        with pytest.raises(ValueError, match="bad input of 200000 values"):
            retried.result(timeout=T)  # it ran again, with its argument


def test_a_key_finished_a_moment_ago_is_not_run_again(
    make_pool: PoolTracker, tmp_path: Path
) -> None:
    log = tmp_path / "runs"
    with make_pool(1, store=tmp_path / "jobs.db") as pool:
        for _ in range(3):  # within the journal's commit window of the first
            assert pool.options(key="once").submit(tasks.counted, str(log), 7).result(T) == 7
    assert log.read_text().count("ran") == 1


def test_a_shared_object_lives_while_a_task_that_uses_it_is_pending(
    make_pool: PoolTracker, fifos: Any
) -> None:
    pool = make_pool(1)
    started, gate = fifos("started"), fifos("gate")
    holder = pool.submit(tasks.gated, started.path, gate.path, "held")  # the worker is busy
    started.take()
    data = np.arange(1_000_000, dtype=np.float64)
    fut = pool.submit(tasks.array_sum, pool.share(data))  # no reference kept here
    gc.collect()
    assert len(segments(pool)) == 1  # the queued task keeps its handle, so the segment stays
    gate.post()
    assert holder.result(timeout=T) == "held"
    assert fut.result(timeout=T) == (float(data.sum()), False)
    gc.collect()
    assert segments(pool) == []  # and goes once that task has its outcome
