"""Shared fixtures: every pool made through ``make_pool`` is checked for leaks at teardown.

After a test, no thread, file descriptor, child process or worker process that the pools
created may remain. Waits are bounded; nothing here sleeps to synchronise.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import mppool

SETTLE_SECONDS = 10.0  # longest wait for processes to disappear after shutdown(wait=True)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float = SETTLE_SECONDS) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (for process-table checks only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def run_python(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a child that imports this checkout's mppool (and ``tests``), its
    output captured as text, within ``timeout`` seconds."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(root / "src"), str(root)))}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def read_line(proc: subprocess.Popen[Any], timeout: float = 60.0) -> bytes:
    """One line of a child's stdout, read byte by byte (so ``communicate`` gets the rest),
    within ``timeout`` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(f"child printed only {line!r} in {timeout} s")
        byte = os.read(fd, 1)
        if not byte:
            _, err = proc.communicate(timeout=timeout)
            text = err if isinstance(err, str) else (err or b"").decode()
            raise AssertionError(f"child ended early; stderr:\n{text}")
        line += byte
    return line


def _segments() -> set[str]:
    """mppool's shared-memory segments in /dev/shm (every pool's names start so)."""
    try:
        return {name for name in os.listdir("/dev/shm") if name.startswith("mppool-")}
    except OSError:
        return set()


class PoolTracker:
    """Creates pools and remembers every process id they showed."""

    def __init__(self) -> None:
        self.pools: list[mppool.Pool] = []
        self.pids: set[int] = set()

    def __call__(self, workers: int = 2, **kwargs: Any) -> mppool.Pool:
        pool = mppool.Pool(workers, **kwargs)
        self.pools.append(pool)
        self.note(pool)
        return pool

    def note(self, pool: mppool.Pool) -> None:
        """Record the dispatcher and current worker pids of ``pool``."""
        self.pids.add(pool.dispatcher_pid)
        try:
            self.pids.update(w.pid for w in pool.stats().workers if w.pid)
        except mppool.MppoolError:
            pass


def worker_pids(pool: mppool.Pool) -> list[int]:
    """Process ids of the pool's live worker processes, from the OS (not from stats)."""
    try:
        dispatcher = psutil.Process(pool.dispatcher_pid)
        return [p.pid for p in dispatcher.children() if p.status() != psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def leak_check() -> Iterator[None]:
    """Fail the test if it leaves threads, fds, child processes or shared-memory segments
    behind."""
    threads = set(threading.enumerate())
    segments = _segments()
    fds = _fds()
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    extra = [t for t in threading.enumerate() if t not in threads]
    for t in extra:
        t.join(SETTLE_SECONDS)
    assert not [t for t in extra if t.is_alive()], f"threads left: {extra}"
    assert wait_until(
        lambda: {p.pid for p in psutil.Process().children(recursive=True)} <= children
    ), "child processes left behind"
    assert _fds() <= fds, f"file descriptors left open: {sorted(_fds() - fds)}"
    assert wait_until(lambda: _segments() <= segments), (
        f"shared-memory segments left: {sorted(_segments() - segments)}"
    )


@pytest.fixture
def make_pool(leak_check: None) -> Iterator[PoolTracker]:
    """Make pools; at teardown shut them down and check every process they had is gone."""
    tracker = PoolTracker()
    yield tracker
    for pool in tracker.pools:
        tracker.note(pool)
        pool.shutdown(wait=True, cancel_futures=True, timeout=5.0)
    assert wait_until(lambda: not any(_alive(pid) for pid in tracker.pids)), (
        f"processes left: {[pid for pid in tracker.pids if _alive(pid)]}"
    )


@pytest.fixture
def pool(make_pool: PoolTracker) -> mppool.Pool:
    """A 2-worker pool, leak-checked."""
    return make_pool(2)


class Fifo:
    """A named pipe used as a cross-process semaphore: workers take tokens, the test posts."""

    def __init__(self, path: str) -> None:
        os.mkfifo(path)
        self.path = path
        # Held open for the whole test so tokens posted before a reader opens are kept.
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)

    def post(self, count: int = 1) -> None:
        """Release ``count`` waiters."""
        os.write(self.fd, b"x" * count)

    def take(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait for ``count`` tokens (for example "started" notes from tasks)."""
        import select

        deadline = time.monotonic() + timeout
        got = 0
        while got < count:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError(f"only {got} of {count} tokens on {self.path}")
            try:
                got += len(os.read(self.fd, count - got))
            except BlockingIOError:
                continue

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def fifos(leak_check: None, tmp_path: Any) -> Iterator[Callable[[str], Fifo]]:
    """Make FIFOs in a temporary folder; closed before the leak check runs."""
    made: list[Fifo] = []

    def make(name: str) -> Fifo:
        fifo = Fifo(str(tmp_path / name))
        made.append(fifo)
        return fifo

    yield make
    for fifo in made:
        fifo.close()


def hold(pool: mppool.Pool, fifos: Any, n: int = 1, tag: str = "") -> tuple[Fifo, list[Any]]:
    """Occupy ``n`` workers with gated tasks, started for sure; post the gate to end them."""
    started, gate = fifos(f"started-{tag}"), fifos(f"gate-{tag}")
    from . import tasks

    blockers = [pool.submit(tasks.gated, started.path, gate.path) for _ in range(n)]
    started.take(n)
    return gate, blockers
