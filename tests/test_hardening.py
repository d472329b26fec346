"""Defects found by attacking the pool, each fixed at its root: one test per defect.

Bad input, misuse, faults from outside, and long runs: the pool must refuse what it cannot
do with a clear, typed error, lose nothing, and hold flat memory.
"""

from __future__ import annotations

import functools
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import mppool

from . import tasks
from .conftest import PoolTracker, run_python, wait_until

T = 60
MB = 1 << 20


def _rss(pool: mppool.Pool) -> tuple[int, int, int]:
    """RSS of the user process, the dispatcher, and the largest worker."""
    user = psutil.Process().memory_info().rss
    dispatcher = psutil.Process(pool.dispatcher_pid).memory_info().rss
    workers = max(psutil.Process(w.pid).memory_info().rss for w in pool.stats().workers)
    return user, dispatcher, workers


# --- 4. per-function and per-options state is bounded ----------------------------------------
@pytest.mark.slow
def test_distinct_closures_and_option_sets_hold_flat_memory(make_pool: PoolTracker) -> None:
    pool = make_pool(2)

    def run(start: int, stop: int) -> None:
        for at in range(start, stop, 5000):
            batch = range(at, at + 5000)
            futs = [pool.submit(functools.partial(tasks.add, i), 1) for i in batch]
            futs += [
                pool.options(priority=i + 0.5, kind=f"k{i}").submit(tasks.square, 2) for i in batch
            ]
            for f in futs:
                f.result(timeout=T)

    run(0, 10_000)  # warm up: every process reaches its working size
    before = _rss(pool)
    run(10_000, 110_000)
    after = _rss(pool)
    growth = [(a - b) / MB for a, b in zip(after, before, strict=True)]
    assert all(g < 8 for g in growth), f"RSS growth (MB) user, dispatcher, worker: {growth}"


def test_forgotten_functions_are_sent_again_when_used_again(make_pool: PoolTracker) -> None:
    from mppool._client import _interned

    pool = make_pool(2)
    first = functools.partial(tasks.add, 1)
    assert pool.submit(first, 1).result(timeout=T) == 2
    # Push `first` out of the tables (nothing uses it any more), then use it again.
    for i in range(_interned.MAX_FUNCTIONS + 10):
        pool.submit(functools.partial(tasks.add, i + 100), 0).result(timeout=T)
    assert pool.submit(first, 5).result(timeout=T) == 6
    core = pool._core
    assert len(core.catalog.functions.ids) <= _interned.MAX_FUNCTIONS
    assert len(core.catalog.options.ids) <= _interned.MAX_OPTIONS


# --- 2. a forked child leaves its parent's pool alone ------------------------------------
def test_a_forked_child_cannot_use_or_end_its_parents_pool(tmp_path: Any) -> None:
    script = tmp_path / "forks.py"
    script.write_text(
        "import os, sys, mppool\n"
        "def sq(x):\n"
        "    return x * x\n"
        "if __name__ == '__main__':\n"
        "    with mppool.Pool(2) as pool:\n"
        "        assert pool.submit(sq, 2).result(60) == 4\n"
        "        pending = [pool.submit(sq, i) for i in range(300)]  # in flight at the fork\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            try:\n"
        "                pool.submit(sq, 3)\n"
        "            except mppool.BrokenPoolError as exc:\n"
        "                print('child submit:', exc, flush=True)\n"
        "            try:\n"
        "                pending[-1].result(5)\n"
        "            except mppool.BrokenPoolError:\n"
        "                print('child future: broken', flush=True)\n"
        "            sys.exit(0)  # leaves the with block and runs the exit hooks\n"
        "        _, status = os.waitpid(pid, 0)\n"
        "        assert status == 0, status\n"
        "        assert [f.result(60) for f in pending] == [i * i for i in range(300)]\n"
        "        squares = list(pool.map(sq, range(2000), timeout=60))\n"
        "        assert squares == [i * i for i in range(2000)]\n"
        "        print('parent:', pool.submit(sq, 5).result(60), flush=True)\n"
    )
    done = run_python(str(script), timeout=T)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("child submit: the pool is broken: this pool belongs to process ")
    assert "forked" in lines[0]
    assert lines[1:] == ["child future: broken", "parent: 25"]


# --- 1. timers beyond 24.8 days, and infinite values --------------------------------------
def test_far_timers_wait_and_the_pool_serves_on(pool: mppool.Pool) -> None:
    day = 86400.0
    schedules = [
        # Yearly, on the first of a month at least two months away (a fixed month would come
        # within days of its date once a year).
        pool.schedule_cron(f"0 0 1 {(time.localtime().tm_mon + 2) % 12 + 1} *", tasks.square, 2),
        pool.schedule_every(30 * day, tasks.square, 3),
    ]
    far = [
        pool.options(at=time.time() + 30 * day).submit(tasks.square, 4),
        pool.options(delay=30 * day).submit(tasks.square, 5),
    ]
    no_limit = pool.options(timeout=math.inf).submit(tasks.square, 6)  # inf: no limit
    backoff = mppool.RetryPolicy(max_attempts=2, initial_delay=1e9, max_delay=1e9)
    retried = pool.options(retries=backoff).submit(tasks.fail_at, 1, 1)  # retries in 31 years
    assert no_limit.result(timeout=T) == 36
    assert wait_until(lambda: pool.stats().retried == 1, T)
    assert pool.submit(tasks.square, 7).result(timeout=T) == 49  # the dispatcher lives
    assert pool.stats().queued == 3
    assert not any(f.done() for f in (*far, retried))
    for s in schedules:
        assert s.next_run is not None and s.next_run > time.time() + 24.8 * day
        s.cancel()
    for f in (*far, retried):
        assert f.cancel()
    for bad in (math.inf, math.nan):
        with pytest.raises(ValueError, match="initial_delay"):
            mppool.RetryPolicy(initial_delay=bad)
        with pytest.raises(ValueError, match="delay"):
            pool.options(delay=bad)
        with pytest.raises(ValueError, match="at"):
            pool.options(at=bad)
    with pytest.raises(ValueError, match="interval"):
        pool.schedule_every(math.inf, tasks.square, 1)
    assert pool.submit(tasks.square, 8).result(timeout=T) == 64


def test_options_of_the_wrong_type_are_refused_where_they_are_set(pool: mppool.Pool) -> None:
    for name, value in [
        ("timeout", "5"),
        ("at", "tomorrow"),
        ("priority", "high"),
        ("delay", [1]),
        ("crash_retries", 1.5),
    ]:
        with pytest.raises(TypeError, match=name):
            pool.options(**{name: value})
    assert pool.submit(tasks.square, 3).result(timeout=T) == 9


# --- 3. submitted work runs unless cancelled ---------------------------------------------
def test_shutdown_without_waiting_then_exit_runs_every_task(tmp_path: Path) -> None:
    out = tmp_path / "ran.txt"
    script = tmp_path / "leave.py"
    script.write_text(
        "import sys, mppool\n"
        "from tests import tasks\n"
        "if __name__ == '__main__':\n"
        "    pool = mppool.Pool(2)\n"
        "    for i in range(40):\n"
        "        pool.submit(tasks.spin_and_append, 0.01, sys.argv[1], str(i))\n"
        "    pool.shutdown(wait=False)\n"
    )
    done = run_python(str(script), str(out), timeout=T)
    assert done.returncode == 0, done.stderr
    assert sorted(int(x) for x in out.read_text().split()) == list(range(40))


def test_shutdown_from_another_thread_lets_a_map_in_progress_finish(
    make_pool: PoolTracker,
) -> None:
    pool = make_pool(2)
    got: list[int] = []
    halfway = threading.Event()
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            # Small chunks: the map refills its window many times after the shutdown.
            items = pool.map(tasks.square, range(5000), chunksize=5, timeout=T)
            for i, r in enumerate(items):
                got.append(r)
                if i == 100:
                    halfway.set()
        except BaseException as exc:
            failure.append(exc)
            halfway.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert halfway.wait(T)
    pool.shutdown(wait=True)
    consumer.join(T)
    assert not consumer.is_alive()
    assert not failure, failure
    assert got == [i * i for i in range(5000)]


# --- 5. map retries the items that failed, not their chunk --------------------------------
def test_map_retries_only_the_items_that_failed(pool: mppool.Pool, tmp_path: Path) -> None:
    policy = mppool.RetryPolicy(max_attempts=5, initial_delay=0.0, retry_on=(ConnectionError,))
    fn = functools.partial(tasks.flaky_first, str(tmp_path))
    results = list(pool.options(retries=policy).map(fn, range(500), chunksize=50, timeout=T))
    assert results == [x * x for x in range(500)]
    runs = {x: len((tmp_path / f"{x}.runs").read_text()) for x in range(500)}
    assert {x: n for x, n in runs.items() if n != (2 if x % 7 == 0 else 1)} == {}


# --- 6. a slow input does not hold back finished results ----------------------------------
@pytest.mark.parametrize("ordered", [True, False], ids=["map", "imap_unordered"])
def test_a_map_fed_by_its_own_results_does_not_deadlock(pool: mppool.Pool, ordered: bool) -> None:
    feedback: queue.Queue[int] = queue.Queue()
    feedback.put(1)

    def inputs() -> Iterator[int]:
        for _ in range(30):
            yield feedback.get(timeout=T)  # the next input is made from the last result

    run = pool.map if ordered else pool.imap_unordered
    seen = []
    for r in run(tasks.add_one, inputs(), timeout=T):
        seen.append(r)
        feedback.put(r)
    assert seen == list(range(2, 32))


# --- 7. a done callback that waits for another result -------------------------------------
def test_a_callback_waiting_for_another_result_gets_an_error_not_a_deadlock(
    pool: mppool.Pool, fifos: Any
) -> None:
    started, gate = fifos("started"), fifos("gate")
    slow = pool.submit(tasks.gated, started.path, gate.path, "slow")
    started.take()
    seen: queue.Queue[BaseException | None] = queue.Queue()

    def callback(_: Any) -> None:
        try:
            slow.result()
            seen.put(None)
        except BaseException as exc:
            seen.put(exc)

    pool.submit(tasks.square, 2).add_done_callback(callback)
    err = seen.get(timeout=T)
    assert isinstance(err, RuntimeError) and "done callback" in str(err)
    gate.post()
    assert slow.result(timeout=T) == "slow"
    assert pool.submit(tasks.square, 3).result(timeout=T) == 9


# --- 8. a new function raced by another thread's submit -----------------------------------
def test_threads_submitting_new_functions_at_once(pool: mppool.Pool) -> None:
    # Several threads submit each new function at the same moment: one of them registers it,
    # and no task for it may reach the dispatcher before the function itself.
    fns = [eval(f"lambda x: x + {i}") for i in range(300)]  # new to the pool, one by one
    barrier = threading.Barrier(4)
    results: list[list[Any]] = [[] for _ in range(4)]

    def submitter(k: int) -> None:
        barrier.wait(T)
        for fn in fns:
            results[k].append(pool.submit(fn, k))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=submitter, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(T)
    finally:
        sys.setswitchinterval(old)
    for k in range(4):
        assert [f.result(timeout=T) for f in results[k]] == [k + i for i in range(300)]


# --- 9. a killed task's own children go with it -------------------------------------------
def _read_pid(fifo: Any) -> int:
    import select

    ready, _, _ = select.select([fifo.fd], [], [], T)
    assert ready, "the task did not start its child"
    return int(os.read(fifo.fd, 10))


def _ended(proc: psutil.Process) -> bool:
    """Exited (a zombie waiting for init to reap it has ended too)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("how", ["timeout", "kill", "shutdown"])
def test_killing_a_task_ends_the_processes_it_started(
    make_pool: PoolTracker, fifos: Any, how: str
) -> None:
    pool = make_pool(1)
    started = fifos("started")
    opts = {"timeout": 0.5} if how == "timeout" else {}
    fut = pool.options(**opts).submit(tasks.spawn_sleeper, started.path, 3600)
    sleeper = psutil.Process(_read_pid(started))
    assert sleeper.name() == "sleep"
    if how == "timeout":
        with pytest.raises(mppool.TaskTimeoutError):
            fut.result(timeout=T)
    elif how == "kill":
        assert pool.cancel(fut, kill=True)
    else:
        pool.shutdown(wait=True, timeout=0.0)
    assert wait_until(lambda: _ended(sleeper), T), "the task's child outlived it"
    if how != "shutdown":
        assert pool.submit(tasks.square, 3).result(timeout=T) == 9


# --- 10. Ctrl-C while a pool starts ------------------------------------------------------
def test_ctrl_c_while_a_pool_starts_leaves_nothing_behind(tmp_path: Path) -> None:
    script = tmp_path / "interrupt.py"
    script.write_text(
        "import os, signal, threading, psutil, mppool\n"
        "def interrupt(signum, frame):\n"
        "    raise KeyboardInterrupt\n"
        "signal.signal(signal.SIGALRM, interrupt)\n"
        "me = psutil.Process()\n"
        "fds = me.num_fds()\n"
        "interrupted = 0\n"
        "for delay in (0.0005, 0.001, 0.002, 0.004, 0.008, 0.012, 0.016, 0.024):\n"
        "    signal.setitimer(signal.ITIMER_REAL, delay)\n"
        "    try:\n"
        "        pool = mppool.Pool(2)\n"
        "        signal.setitimer(signal.ITIMER_REAL, 0)\n"
        "        pool.shutdown()\n"
        "    except KeyboardInterrupt:\n"
        "        interrupted += 1\n"
        "    signal.setitimer(signal.ITIMER_REAL, 0)\n"
        "    left = me.children(recursive=True)\n"
        "    assert not left, left\n"
        "    assert threading.active_count() == 1, threading.enumerate()\n"
        "    assert me.num_fds() == fds, (me.num_fds(), fds)\n"
        "print(interrupted)\n"
    )
    done = run_python(str(script), timeout=T)
    assert done.returncode == 0, done.stdout + done.stderr
    assert int(done.stdout) >= 4  # most interrupts landed inside Pool()


# --- 11. non-finite priorities ------------------------------------------------------------
def test_non_finite_priorities_are_refused(pool: mppool.Pool) -> None:
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="priority"):
            pool.options(priority=bad)
    assert pool.options(priority=1e300).submit(tasks.square, 2).result(timeout=T) == 4
    assert all(math.isfinite(t.priority) for t in pool.tasks())


# --- 12. BaseException on the result thread ----------------------------------------------
def test_system_exit_on_the_result_thread_stays_with_its_future(pool: mppool.Pool) -> None:
    first = pool.submit(tasks.square, 2)
    first.add_done_callback(lambda _: sys.exit(5))
    unpicklable = pool.submit(tasks.exits_when_unpickled)
    with pytest.raises(mppool.SerializationError, match="SystemExit"):
        unpicklable.result(timeout=T)
    assert first.result(timeout=T) == 4
    assert [pool.submit(tasks.square, i).result(timeout=T) for i in range(5)] == [0, 1, 4, 9, 16]


# --- 13. too few file descriptors -------------------------------------------------------
def test_a_pool_that_cannot_get_its_pipes_fails_typed_and_leaks_nothing(tmp_path: Path) -> None:
    script = tmp_path / "fds.py"
    script.write_text(
        "import resource, psutil, mppool\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "me = psutil.Process()\n"
        "fds = me.num_fds()\n"
        "try:\n"
        "    mppool.Pool(30)\n"
        "except mppool.BrokenPoolError as exc:\n"
        "    print(exc, flush=True)\n"
        "    print(exc.__cause__.__cause__, flush=True)\n"
        "assert not me.children(recursive=True)\n"
        "assert me.num_fds() == fds, (me.num_fds(), fds)\n"
        "with mppool.Pool(2) as pool:\n"
        "    print(pool.submit(pow, 2, 5).result(60))\n"
    )
    done = run_python(str(script), timeout=T)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("the pool could not start: could not start a worker process:")
    assert "Too many open files" in lines[0]
    assert "OSError: [Errno 24] Too many open files" in done.stdout  # the dispatcher's traceback
    assert lines[-1] == "32"
    assert done.stderr == ""


# --- 14. an initializer that never returns ------------------------------------------------
def test_an_initializer_that_hangs_breaks_the_pool_at_init_timeout(
    leak_check: None, fifos: Any
) -> None:
    gate = fifos("gate")
    hangs = {"initializer": tasks.fifo_take, "initargs": (gate.path, 3600)}
    with mppool.Pool(1, init_timeout=0.5, **hangs) as pool:  # type: ignore[arg-type]
        fut = pool.submit(tasks.square, 2)
        with pytest.raises(mppool.BrokenPoolError, match="init_timeout"):
            fut.result(timeout=T)
