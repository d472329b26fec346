"""Worker processes as the dispatcher sees them: forking, pipes, reaping, and slot records.

A worker is forked from the (single-threaded) dispatcher. The child closes every descriptor
it inherited except its own two pipe ends: holding a sibling's pipe open would hide that
sibling's death from the dispatcher, which learns of a death from the pidfd or from
end-of-file on the worker's result pipe. Each worker leads its own process group, so that
killing it (a timeout, ``cancel(kill=True)``, a shutdown deadline) also ends any process its
task started, and a worker that exits takes its task's stray children with it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from .. import _protocol as p

PIPE_SIZE = 1 << 20  # ask Linux for 1 MiB pipes so a batch fits in one write
REAP_POLL_SECONDS = 0.1  # longest wait for a worker whose pipe closed to become reapable

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


def grow_pipe(fd: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: keep the default


class Outbox:
    """Bytes waiting to be written to one non-blocking fd."""

    __slots__ = ("chunks", "fd", "registered")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.chunks: list[bytes | memoryview] = []
        self.registered = False

    def flush(self) -> bool:
        """Write what the pipe takes. Returns True when everything was written."""
        chunks = self.chunks
        while chunks:
            try:
                written = os.writev(self.fd, chunks[:64])
            except BlockingIOError:
                return False
            while written:
                first = chunks[0]
                if written >= len(first):
                    written -= len(first)
                    chunks.pop(0)
                else:
                    chunks[0] = memoryview(first)[written:]
                    written = 0
        return True


class WorkerSlot:
    """The dispatcher's record of one worker slot."""

    __slots__ = (
        "closing_since",
        "draining",
        "fns",
        "forked_at",
        "frames",
        "grown",
        "index",
        "kill_reason",
        "leaving",
        "opts",
        "outbox",
        "pid",
        "pidfd",
        "pin",
        "ready",
        "ready_at",
        "result_fd",
        "retired",
        "sent_total",
        "started_at",
        "task_fd",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.reset(0, -1, -1, 0.0, 0.0)

    def reset(self, pid: int, task_fd: int, result_fd: int, now: float, wall: float) -> None:
        """Take a worker forked at ``now`` (``wall``) into this slot (pid 0: an empty slot)."""
        self.pid = pid
        self.task_fd = task_fd
        self.result_fd = result_fd
        self.pidfd = -1
        self.frames = p.FrameBuffer()
        self.outbox = Outbox(task_fd)
        self.fns: set[int] = set()
        self.opts: set[int] = set()
        self.ready = False
        self.started_at = wall
        self.forked_at = now
        self.ready_at = 0.0
        self.sent_total = 0
        self.draining = False  # max_tasks_per_child reached: no new work, leave when empty
        self.kill_reason = ""  # why the dispatcher killed it (timeout / shutdown), if it did
        self.retired = False
        self.leaving = False  # the pool shrinks: finish the current task, then leave for good
        self.pin = -1  # which of the configured core sets it runs on (-1: none)
        self.grown = False  # forked to grow the pool (not to start or replace a worker)
        self.closing_since = 0.0

    @property
    def vacant(self) -> bool:
        """A slot whose worker left as the pool shrank (reused when it grows)."""
        return not self.pid and self.leaving


def fork_worker(
    initializer: bytes | None,
    max_memory: int,
    sems: Sequence[Any],
    title: str,
    cores: list[int] | None = None,
) -> tuple[int, int, int]:
    """Fork a worker (pinned to ``cores``, if given). Returns ``(pid, task pipe write end,
    result pipe read end)``.

    Both returned descriptors are non-blocking. The child never returns from this call.

    Raises:
        OSError: if the pipes or the process cannot be made (no descriptor is left open).
    """
    fds: list[int] = []
    try:
        task_r, task_w = os.pipe()
        fds += (task_r, task_w)
        result_r, result_w = os.pipe()
        fds += (result_r, result_w)
        grow_pipe(task_w)
        grow_pipe(result_w)
        pid = os.fork()
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    if pid == 0:  # the child: become a worker and never return into the dispatcher's loop
        _become_worker(task_r, result_w, initializer, max_memory, sems, title, cores)
    os.close(task_r)
    os.close(result_w)
    set_nonblocking(task_w)
    set_nonblocking(result_r)
    return pid, task_w, result_r


def _become_worker(
    task_r: int,
    result_w: int,
    initializer: bytes | None,
    max_memory: int,
    sems: Sequence[Any],
    title: str,
    cores: list[int] | None,
) -> None:
    status = 1
    try:
        os.setpgid(0, 0)  # its own group: killed with whatever its task started
        if cores is not None:
            os.sched_setaffinity(0, cores)  # what the task starts inherits it too
        keep = sorted((task_r, result_w))
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, 1 << 16)
        set_title(title)
        from .._worker import worker_main

        status = worker_main(task_r, result_w, initializer, max_memory, sems)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(status)


def set_title(title: str) -> None:
    """Name this process as ``ps`` shows it (when setproctitle is there)."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        return
    setproctitle(title)


def kill_group(pid: int) -> None:
    """SIGKILL a worker and every process of its group (what its task started)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def open_pidfd(pid: int) -> int:
    """A descriptor that becomes readable when ``pid`` exits (Linux 5.3+), or -1."""
    if not hasattr(os, "pidfd_open"):
        return -1
    try:
        return os.pidfd_open(pid)
    except OSError:
        return -1


def reap(pid: int) -> tuple[int | None, str | None]:
    """Collect a dead worker's exit status: ``(exit code, signal name)``.

    Called once the worker is known to be gone (its pidfd fired or its pipe closed). If it
    still lives after ``REAP_POLL_SECONDS`` it is useless without its pipe and is killed.
    Processes its task left in its group are killed first (the group lives on while its
    leader is a zombie, so its id cannot have been reused).
    """
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + REAP_POLL_SECONDS
    status = 0
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None, None
        if done:
            break
        if time.monotonic() >= deadline:
            kill_group(pid)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.001)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return None, signal.Signals(sig).name
        except ValueError:
            return None, f"signal {sig}"
    return os.waitstatus_to_exitcode(status), None
