"""Messages that cross a process boundary, and the framing that carries them.

Every pipe carries *frames*: an 8-byte little-endian length followed by a pickled list of
messages. One frame holds as many messages as were ready when it was written, so a burst of
small tasks or results costs one ``write`` and one ``read`` per hop, not one per task.

Each message is a tuple whose first element is its tag. The layouts are declared below as
``NamedTuple`` classes, one per message, which are the schema and the documentation. Senders
build them as *plain tuples in the same field order* on the hot paths (task and result
messages): pickling a plain tuple is done entirely in C, while a NamedTuple round trip costs
about seven times as much (measured: 0.45 us against 3.4 us per message), and per-message cost
is the whole budget of a no-op task. ``tests/test_messages.py`` checks that every tag maps to
its class and that the tuple layouts and the classes agree.

Payloads (a task's arguments, a result, an exception) are ``bytes`` pickled by the client or
the worker. The dispatcher forwards them without unpickling: it never imports user code.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any, NamedTuple

# --- message tags ----------------------------------------------------------------------------
# client -> dispatcher
C_CONFIG = 1
C_OPTIONS = 2
C_FUNCTION = 3
C_SUBMIT = 4
C_CANCEL = 5
C_STATS = 6
C_SHUTDOWN = 7
C_LIST = 8
C_SCHEDULE = 9
C_UNSCHEDULE = 10
# dispatcher -> client
D_READY = 20
D_RESULT = 21
D_STATS = 22
D_BROKEN = 23
D_BYE = 24
D_LIST = 25
D_FIRED = 26
# dispatcher -> worker
W_FUNCTION = 40
W_RUN = 41
W_RETRY_ON = 42
# worker -> dispatcher
R_HELLO = 60
R_STARTED = 61
R_RESULT = 62
R_INIT_FAILED = 63
R_RETIRE = 64

# --- result status codes (R_RESULT and D_RESULT) --------------------------------------------
OK = 0
ERROR = 1  # payload: pickled (exception, traceback text)
ERROR_RETRYABLE = 2  # as ERROR; the worker found the exception in the task's retry_on
ABORTED = 3  # payload: pickled (description, traceback text): SystemExit / KeyboardInterrupt
SERIAL_ERROR = 4  # payload: pickled (message, traceback text): (un)pickling failed in the worker
CRASHED = 5  # payload: pickled (pid, exitcode, signal name)
TIMEOUT = 6  # payload: pickled (timeout seconds, pid)
CANCELLED = 7  # payload: b""
KILLED = 8  # payload: b"": killed at the shutdown deadline
BROKEN = 9  # payload: pickled (message, traceback text or None)
CLOSED = 10  # payload: b"": the pool ended before the task reached the dispatcher

# Single calls carry n_items == 0; a map chunk carries its item count (> 0). A chunk payload
# is a pickled list of arguments; STAR marks a list of argument tuples (several iterables).
SINGLE = 0
FLAG_TIMED = 1  # the worker announces R_STARTED before running the task
FLAG_STAR = 2  # chunk items are argument tuples


# --- client -> dispatcher --------------------------------------------------------------------
class Config(NamedTuple):
    """First message of a pool: how to set up the workers."""

    tag: int
    workers: int
    sys_path: list[str]
    cwd: str
    initializer: bytes | None  # cloudpickled (initializer, initargs)
    max_tasks_per_child: int  # 0: unlimited
    max_memory_per_child: int  # bytes of RSS, 0: unlimited
    aging_rate: float  # priority levels gained per second of waiting
    crash_retries: int  # default blame limit
    rate_limits: dict[str, tuple[float, float, int]]  # kind -> (rate, per seconds, burst)


class Options(NamedTuple):
    """Per-task options, interned: sent once per distinct set, then named by ``opts_id``."""

    tag: int
    opts_id: int
    priority: float
    timeout: float  # seconds, 0: none
    max_attempts: int  # 1: no retry
    initial_delay: float
    factor: float
    max_delay: float
    jitter: float
    crash_retries: int
    kind: str
    retry_on: bytes | None  # pickled tuple of exception classes, None when max_attempts == 1
    retry_timeouts: bool  # whether a timeout counts as a retryable failure


class Function(NamedTuple):
    """A function, serialised once; tasks refer to it by ``fn_id``."""

    tag: int
    fn_id: int
    blob: bytes


class Submit(NamedTuple):
    """A task (hot path: sent as a plain tuple)."""

    tag: int
    task_id: int
    fn_id: int
    opts_id: int
    n_items: int  # SINGLE, or the number of items of a map chunk
    flags: int
    not_before: float  # dispatcher clock time before which it must not run; 0: now
    payload: bytes
    key: str  # its dedup key, shown in task listings ("" if none)


class Cancel(NamedTuple):
    """Remove a task; with ``kill``, also kill the worker if the task is running."""

    tag: int
    task_id: int
    kill: bool


class ListTasks(NamedTuple):
    """Ask for the task table: one task (``task_id`` > 0) or all, live and recent."""

    tag: int
    request_id: int
    task_id: int


class Schedule(NamedTuple):
    """A recurring task: every ``interval`` seconds, or on a cron expression."""

    tag: int
    schedule_id: int
    fn_id: int
    opts_id: int
    interval: float  # > 0 for schedule_every
    cron: str  # for schedule_cron ("" otherwise)
    payload: bytes


class Unschedule(NamedTuple):
    tag: int
    schedule_id: int


class StatsRequest(NamedTuple):
    tag: int
    request_id: int


class Shutdown(NamedTuple):
    """Stop accepting work; optionally drop queued tasks and kill at a deadline."""

    tag: int
    cancel_queued: bool
    deadline: float  # seconds from receipt after which running tasks are killed; < 0: never


# --- dispatcher -> client --------------------------------------------------------------------
class Ready(NamedTuple):
    tag: int
    pids: list[int]


class Result(NamedTuple):
    """A task's outcome (hot path: sent as a plain tuple)."""

    tag: int
    task_id: int
    status: int
    attempts: int
    duration: float  # seconds the worker spent running it
    payload: bytes


class StatsReply(NamedTuple):
    tag: int
    request_id: int
    snapshot: dict[str, Any]


class Broken(NamedTuple):
    """The pool cannot run tasks any more (for example: the initializer failed)."""

    tag: int
    message: str
    traceback: str | None


class TaskList(NamedTuple):
    tag: int
    request_id: int
    tasks: list[dict[str, Any]]


class Fired(NamedTuple):
    """A schedule started a run as task ``task_id``; its result follows as a ``Result``."""

    tag: int
    schedule_id: int
    task_id: int
    next_run: float  # wall-clock time of the next run (0: none)
    skipped: int  # runs skipped so far because the previous one was still going


class Bye(NamedTuple):
    """Last message of a dispatcher: every task is resolved and every worker is gone."""

    tag: int


# --- dispatcher -> worker --------------------------------------------------------------------
class WorkerFunction(NamedTuple):
    tag: int
    fn_id: int
    blob: bytes


class WorkerRetryOn(NamedTuple):
    """The exception classes an options set retries on, so the worker can classify errors."""

    tag: int
    opts_id: int
    blob: bytes  # pickled tuple of exception classes


class Run(NamedTuple):
    """A task for a worker (hot path: sent as a plain tuple)."""

    tag: int
    task_id: int
    attempt: int
    fn_id: int
    opts_id: int
    n_items: int
    flags: int
    payload: bytes


# --- worker -> dispatcher --------------------------------------------------------------------
class Hello(NamedTuple):
    tag: int
    pid: int


class Started(NamedTuple):
    """Sent before a timed task runs, so its timeout counts from its real start."""

    tag: int
    task_id: int
    attempt: int


class WorkerResult(NamedTuple):
    """A finished task (hot path: sent as a plain tuple)."""

    tag: int
    task_id: int
    attempt: int
    status: int
    duration: float
    payload: bytes


class InitFailed(NamedTuple):
    tag: int
    message: str
    traceback: str


class Retire(NamedTuple):
    """The worker is leaving after its last result (memory limit); nothing it holds started."""

    tag: int
    reason: str


MESSAGE_TYPES: dict[int, type[tuple[Any, ...]]] = {
    C_CONFIG: Config,
    C_OPTIONS: Options,
    C_FUNCTION: Function,
    C_SUBMIT: Submit,
    C_CANCEL: Cancel,
    C_STATS: StatsRequest,
    C_SHUTDOWN: Shutdown,
    C_LIST: ListTasks,
    C_SCHEDULE: Schedule,
    C_UNSCHEDULE: Unschedule,
    D_READY: Ready,
    D_RESULT: Result,
    D_STATS: StatsReply,
    D_BROKEN: Broken,
    D_BYE: Bye,
    D_LIST: TaskList,
    D_FIRED: Fired,
    W_FUNCTION: WorkerFunction,
    W_RUN: Run,
    W_RETRY_ON: WorkerRetryOn,
    R_HELLO: Hello,
    R_STARTED: Started,
    R_RESULT: WorkerResult,
    R_INIT_FAILED: InitFailed,
    R_RETIRE: Retire,
}


# --- framing ---------------------------------------------------------------------------------
_LEN = struct.Struct("<Q")
HEADER_SIZE = _LEN.size
READ_SIZE = 1 << 18  # bytes asked of each os.read: large enough that a burst is one call


def encode(messages: list[tuple[Any, ...]]) -> bytes:
    """Serialise messages into one frame (length prefix + pickled list)."""
    body = pickle.dumps(messages, pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(body)) + body


class FrameBuffer:
    """Accumulates bytes read from a pipe and yields the complete frames in it."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def frames(self) -> list[list[tuple[Any, ...]]]:
        """Remove and decode every complete frame buffered so far."""
        buf = self._buf
        out: list[list[tuple[Any, ...]]] = []
        offset = 0
        end = len(buf)
        with memoryview(buf) as view:
            while end - offset >= HEADER_SIZE:
                (size,) = _LEN.unpack_from(buf, offset)
                stop = offset + HEADER_SIZE + size
                if stop > end:
                    break
                out.append(pickle.loads(view[offset + HEADER_SIZE : stop]))
                offset = stop
        if offset:
            del buf[:offset]
        return out


class BlockingReader:
    """Reads frames from a blocking file descriptor (used by workers and the client).

    ``read()`` returns the messages of every complete frame available, blocking until there
    is at least one; it returns ``None`` at end of file.
    """

    __slots__ = ("_fd", "_frames")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._frames = FrameBuffer()

    @property
    def buffer(self) -> FrameBuffer:
        """Bytes read but not yet decoded (to hand the pipe over to a non-blocking reader)."""
        return self._frames

    def read(self) -> list[tuple[Any, ...]] | None:
        while True:
            frames = self._frames.frames()
            if frames:
                if len(frames) == 1:
                    return frames[0]
                return [msg for frame in frames for msg in frame]
            data = os.read(self._fd, READ_SIZE)
            if not data:
                return None
            self._frames.feed(data)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte to a blocking file descriptor."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
