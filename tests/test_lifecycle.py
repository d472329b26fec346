"""Lifecycle: shutdown, a dying dispatcher, the user's process ending in every way.

Interpreter-exit behaviour is tested in fresh interpreters: the child prints the pids of its
pool's processes as one JSON line, then the test ends the child and checks with psutil that
none of them is left.
"""

from __future__ import annotations

import concurrent.futures
import json
import linecache
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from mppool import BrokenPoolError, CancelledByShutdownError, PoolClosedError

from . import tasks
from .conftest import Fifo, PoolTracker, read_line, wait_until, worker_pids

N = 2
RESULT_TIMEOUT = 30.0
CHILD_TIMEOUT = 60.0  # bound on any wait for a child interpreter
PROMPT_EXIT = 10.0  # a child asked to end must be gone within this (it is usually < 1 s)
T = 60  # seconds any other wait in these tests may take
ROOT = str(Path(__file__).resolve().parent.parent)  # so a child can import tests.tasks

# Prelude of every child script: print the pool's pids, as one line, as soon as it exists.
PRELUDE = """
import json, sys
sys.path[:0] = [{root!r}, {root!r} + "/src"]
import mppool
from tests import tasks

T = 60  # seconds any wait in these tests may take

def announce(pool):
    pids = [pool.dispatcher_pid] + [w.pid for w in pool.stats().workers]
    print(json.dumps(pids), flush=True)
"""


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_child(body: str, *, new_session: bool = False) -> subprocess.Popen[bytes]:
    script = textwrap.dedent(PRELUDE).format(root=ROOT) + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=new_session,
    )


def read_pids(proc: subprocess.Popen[bytes]) -> list[int]:
    pids = json.loads(read_line(proc))
    assert len(pids) == 1 + N and all(alive(pid) for pid in pids), pids
    return [int(pid) for pid in pids]


def assert_all_gone(pids: list[int], timeout: float = 10.0) -> None:
    assert wait_until(lambda: not any(alive(pid) for pid in pids), timeout=timeout), (
        f"still alive: {[pid for pid in pids if alive(pid)]}"
    )


# --- shutdown ----------------------------------------------------------------------------------


def test_shutdown_deadline_kills_running_tasks(
    make_pool: PoolTracker, fifos: Callable[[str], Fifo]
) -> None:
    pool = make_pool(N)
    started, gate = fifos("started"), fifos("gate")
    done = pool.submit(tasks.square, 4)
    assert done.result(timeout=RESULT_TIMEOUT) == 16
    running = [pool.submit(tasks.gated, started.path, gate.path) for _ in range(N)]
    started.take(N, timeout=RESULT_TIMEOUT)  # the gate never opens: they would run 30 s
    workers = worker_pids(pool)
    t0 = time.monotonic()
    pool.shutdown(wait=True, timeout=0.5)
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 5.0, elapsed
    for fut in running:
        with pytest.raises(CancelledByShutdownError):
            fut.result(timeout=0)  # shutdown(wait=True) returned: every future is resolved
    assert done.result(timeout=0) == 16
    assert_all_gone([*workers, pool.dispatcher_pid])
    with pytest.raises(PoolClosedError):
        pool.submit(tasks.square, 1)


def test_shutdown_cancel_futures_cancels_queued_only(
    make_pool: PoolTracker, fifos: Callable[[str], Fifo]
) -> None:
    pool = make_pool(N)
    started, gate = fifos("started"), fifos("gate")
    running = [pool.submit(tasks.gated, started.path, gate.path, i) for i in range(N)]
    started.take(N, timeout=RESULT_TIMEOUT)
    queued = [pool.submit(tasks.square, i) for i in range(6)]
    pool.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(PoolClosedError):
        pool.submit(tasks.square, 1)  # closing already refuses work
    _, not_done = concurrent.futures.wait(queued, timeout=RESULT_TIMEOUT)
    assert not not_done and all(f.cancelled() for f in queued)
    assert not any(f.done() for f in running)
    gate.post(N)
    assert [f.result(timeout=RESULT_TIMEOUT) for f in running] == list(range(N))
    pool.shutdown(wait=True)


def test_shutdown_waits_for_all_work(make_pool: PoolTracker, fifos: Callable[[str], Fifo]) -> None:
    pool = make_pool(N)
    started, gate = fifos("started"), fifos("gate")
    running = [pool.submit(tasks.gated, started.path, gate.path, i) for i in range(N)]
    started.take(N, timeout=RESULT_TIMEOUT)
    queued = [pool.submit(tasks.square, i) for i in range(6)]
    pool.shutdown(wait=False)
    gate.post(N)
    pool.shutdown(wait=True)
    assert [f.result(timeout=0) for f in running] == list(range(N))
    assert [f.result(timeout=0) for f in queued] == [i * i for i in range(6)]


def test_submit_after_shutdown_raises(make_pool: PoolTracker) -> None:
    pool = make_pool(N)
    view = pool.options(priority=1)
    pool.shutdown(wait=True)
    with pytest.raises(PoolClosedError):
        pool.submit(tasks.square, 1)
    with pytest.raises(PoolClosedError):
        view.submit(tasks.square, 1)
    with pytest.raises(PoolClosedError):
        list(pool.map(tasks.square, range(3), timeout=T))
    pool.shutdown(wait=True)  # a second shutdown is harmless


def test_context_manager_interrupted_kills_running_tasks(
    make_pool: PoolTracker, fifos: Callable[[str], Fifo]
) -> None:
    pool = make_pool(N)
    started, gate = fifos("started"), fifos("gate")
    running: list[concurrent.futures.Future[object]] = []
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt), pool:
        running.extend(pool.submit(tasks.gated, started.path, gate.path) for _ in range(N))
        started.take(N, timeout=RESULT_TIMEOUT)
        raise KeyboardInterrupt
    assert time.monotonic() - t0 < 5.0
    for fut in running:
        with pytest.raises(CancelledByShutdownError):
            fut.result(timeout=0)


# --- the dispatcher dies -----------------------------------------------------------------------


def test_dispatcher_killed_breaks_pool(
    make_pool: PoolTracker, fifos: Callable[[str], Fifo]
) -> None:
    pool = make_pool(N)
    started, gate = fifos("started"), fifos("gate")
    running = [pool.submit(tasks.gated, started.path, gate.path) for _ in range(N)]
    started.take(N, timeout=RESULT_TIMEOUT)
    queued = [pool.submit(tasks.square, i) for i in range(5)]
    workers = worker_pids(pool)
    assert len(workers) == N
    t0 = time.monotonic()
    os.kill(pool.dispatcher_pid, signal.SIGKILL)
    for fut in running + queued:
        with pytest.raises(BrokenPoolError):
            fut.result(timeout=10)
    assert time.monotonic() - t0 < 5.0
    with pytest.raises(BrokenPoolError):
        pool.submit(tasks.square, 1)
    with pytest.raises(BrokenPoolError):
        pool.stats()
    # The workers have a parent-death signal: they go although their gate never opens.
    assert_all_gone(workers, timeout=5.0)


# --- the user's process ends -------------------------------------------------------------------


def test_garbage_collected_pool_ends_its_processes() -> None:
    proc = start_child("""
        import gc, weakref
        import psutil
        pool = mppool.Pool(2)
        announce(pool)
        assert pool.submit(tasks.square, 7).result(timeout=30) == 49
        dispatcher = psutil.Process(pool.dispatcher_pid)
        ref = weakref.ref(pool)
        del pool
        gc.collect()
        print("collected" if ref() is None else "still referenced", flush=True)
        # Dropping the pool starts a graceful shutdown: the dispatcher ends by itself. (Polled,
        # not waited for: waiting would reap it from under the pool's own thread.)
        import time
        def ended():
            try:
                return dispatcher.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True
        deadline = time.monotonic() + 10
        while not ended() and time.monotonic() < deadline:
            time.sleep(0.01)
        print("dispatcher ended" if ended() else "dispatcher still running", flush=True)
    """)
    try:
        pids = read_pids(proc)
        out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == ["collected", "dispatcher", "ended"], out
    assert b"Traceback" not in err, err.decode()
    assert_all_gone(pids)


def test_pool_open_at_exit_does_not_hang(fifos: Callable[[str], Fifo]) -> None:
    started, gate = fifos("started"), fifos("gate")
    proc = start_child(f"""
        pool = mppool.Pool(2)
        futs = [pool.submit(tasks.gated, {started.path!r}, {gate.path!r}) for _ in range(4)]
        announce(pool)
        sys.stdin.readline()  # the test says when to fall off the end, pool still open
    """)
    try:
        pids = read_pids(proc)
        started.take(N, timeout=RESULT_TIMEOUT)  # both workers are inside a 30 s task
        t0 = time.monotonic()
        _, err = proc.communicate(input=b"exit\n", timeout=CHILD_TIMEOUT)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert elapsed < PROMPT_EXIT, elapsed
    assert b"Traceback" not in err, err.decode()
    assert_all_gone(pids)


def test_user_process_sigkilled_leaves_nothing(fifos: Callable[[str], Fifo]) -> None:
    started, gate = fifos("started"), fifos("gate")
    proc = start_child(f"""
        pool = mppool.Pool(2)
        futs = [pool.submit(tasks.gated, {started.path!r}, {gate.path!r}) for _ in range(4)]
        announce(pool)
        sys.stdin.readline()  # blocks until killed
    """)
    try:
        pids = read_pids(proc)
        started.take(N, timeout=RESULT_TIMEOUT)  # both workers are busy
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=CHILD_TIMEOUT)
        assert wait_until(lambda: not any(alive(pid) for pid in pids), timeout=2.0), (
            f"left behind: {[pid for pid in pids if alive(pid)]}"
        )
    finally:
        proc.kill()
        proc.communicate()


def test_ctrl_c_interrupts_map_promptly() -> None:
    # A new session makes the child its own process group, as a terminal's foreground job:
    # SIGINT goes to the whole group (user process, dispatcher, workers) like a real Ctrl-C.
    proc = start_child(
        """
        import itertools
        try:
            with mppool.Pool(2) as pool:
                results = pool.map(tasks.spin, itertools.repeat(0.01), timeout=T)
                next(results)
                announce(pool)
                for _ in results:
                    pass
        except KeyboardInterrupt:
            print("caught KeyboardInterrupt", flush=True)
    """,
        new_session=True,
    )
    try:
        pids = read_pids(proc)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=CHILD_TIMEOUT)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
        proc.communicate()
    assert out.decode().strip() == "caught KeyboardInterrupt", (out, err.decode())
    assert proc.returncode == 0, err.decode()
    assert elapsed < PROMPT_EXIT, elapsed
    # Workers and dispatcher ignore SIGINT: no traceback from them.
    assert b"Traceback" not in err, err.decode()
    assert_all_gone(pids)


# --- many pools --------------------------------------------------------------------------------


@pytest.mark.slow
def test_many_pool_cycles_leak_nothing(make_pool: PoolTracker) -> None:
    """200 create/use/shutdown cycles, in two threads of 100 (two cores: half the wall time)."""
    threads = threading.active_count()
    fds = len(os.listdir("/proc/self/fd"))
    # Children from before stay (multiprocessing's resource tracker, once another test's Dask
    # cluster started it, lives as long as this process): the pools add none.
    children = {p.pid for p in psutil.Process().children()}
    errors: list[BaseException] = []

    def cycles(first: int) -> None:
        try:
            for i in range(first, first + 100):
                pool = make_pool(N)
                assert pool.submit(tasks.square, i).result(timeout=RESULT_TIMEOUT) == i * i
                pool.shutdown(wait=True)
                with pytest.raises(PoolClosedError):
                    pool.submit(tasks.square, i)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    runners = [threading.Thread(target=cycles, args=(k * 100,)) for k in range(2)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join(240)
    assert not any(r.is_alive() for r in runners), "cycles did not finish"
    assert not errors, errors
    # shutdown(wait=True) returns once everything is released, not eventually: no waiting.
    assert threading.active_count() == threads
    assert len(os.listdir("/proc/self/fd")) == fds
    assert {p.pid for p in psutil.Process().children()} <= children
    assert len(make_pool.pools) == 200
    # make_pool and leak_check repeat the checks for every pool's processes at teardown.


def test_ctrl_c_while_a_map_waits_for_its_own_lock_raises_keyboard_interrupt(
    make_pool: PoolTracker,
) -> None:
    # A map's consumer pickles input with the map's lock released, then takes it back. If
    # Ctrl-C arrives while it waits for that lock (the reader thread holds it to deliver a
    # result), the wait must not end without the lock: the `with` around it would then fail
    # with "cannot release un-acquired lock" and the Ctrl-C would be lost behind it.
    # Reproduced exactly: a helper thread holds the lock, a real SIGINT reaches the main
    # thread while it is blocked, and the lock is let go only after the handler ran.
    pool = make_pool(1)
    pickling, held, handled = threading.Event(), threading.Event(), threading.Event()
    main = threading.main_thread()

    class Slow:
        def __reduce__(self) -> tuple[Any, ...]:
            pickling.set()
            assert held.wait(T)
            return (int, (3,))

    def blocked_on_the_lock() -> bool:
        frame = sys._current_frames().get(main.ident or 0)
        if frame is None:
            return False
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
        return frame.f_code.co_name == "reacquire" or ".acquire()" in line

    def helper() -> None:
        assert pickling.wait(T)
        (mapping,) = pool._core.maps._open
        with mapping.cond:
            held.set()
            assert wait_until(blocked_on_the_lock, T)
            signal.pthread_kill(main.ident or 0, signal.SIGINT)
            assert handled.wait(T)

    def on_sigint(signum: int, frame: Any) -> None:
        handled.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    thread = threading.Thread(target=helper)
    try:
        thread.start()
        with pytest.raises(KeyboardInterrupt):
            list(pool.map(tasks.square, [Slow(), 4], chunksize=1, timeout=T))
    finally:
        signal.signal(signal.SIGINT, previous)
        thread.join(T)
    assert handled.is_set() and not thread.is_alive()
    assert pool.submit(tasks.square, 5).result(timeout=T) == 25  # still serving
