"""Every message that crosses a process boundary (and, from ``_framing``, the frames that carry
them).

Three kinds of pipe, each one-way::

    user process ──C_*──▶ dispatcher ──W_*──▶ worker
    user process ◀──D_*── dispatcher ◀──R_*── worker

Every pipe carries *frames*: an 8-byte little-endian length followed by a pickled list of
messages. One frame holds as many messages as were ready when it was written, so a burst of
small tasks or results costs one ``write`` and one ``read`` per hop, not one per task.

Each message is a tuple whose first element is its tag. Its layout is declared once, below, as
a ``NamedTuple`` class. Cold messages (configuration, options, stats, listings, schedules) are
sent as instances of those classes. Hot messages (a task, a run, a result: several per task)
travel as *plain tuples* in the same field order, because pickling a plain tuple is done
entirely in C while a NamedTuple costs about seven times as much, and per-message cost is the
whole budget of a no-op task. Each hot message therefore has exactly one builder function
here (``submit()``, ``run()``, ...) and is read through its class's ``view()``, so a field's
position is written in one place (``tests/test_protocol.py`` round-trips every message).

Payloads (a task's arguments, a result, an exception) are ``bytes`` pickled by the client or
by a worker. The dispatcher forwards them without unpickling: it never imports user code.
"""

from __future__ import annotations

from typing import Any, NamedTuple

Message = tuple[Any, ...]

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
C_FORGET = 11
C_RESIZE = 12
C_DEMAND = 13
C_CANCEL_BATCH = 14
C_ENDED = 15
# dispatcher -> client
D_READY = 20
D_RESULT = 21
D_STATS = 22
D_BROKEN = 23
D_BYE = 24
D_LIST = 25
D_FIRED = 26
D_CHUNK = 27
D_EVENT = 28
D_RESIZED = 29
D_UNLINK = 30
LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERROR = 10, 20, 30, 40  # ``logging``'s levels
# dispatcher -> worker
W_FUNCTION = 40
W_RUN = 41
W_RETRY_ON = 42
W_FORGET = 43
# worker -> dispatcher
R_HELLO = 60
R_STARTED = 61
R_RESULT = 62
R_INIT_FAILED = 63
R_RETIRE = 64
R_PART = 65
R_CUT = 66

# --- result status codes ---------------------------------------------------------------------
OK = 0
ERROR = 1  # payload: a pickled RemoteException (see mppool._serial)
ERROR_RETRYABLE = 2  # as ERROR; the worker found the exception in the task's retry_on
ABORTED = 3  # payload: pickled (description, traceback text): SystemExit / KeyboardInterrupt
SERIAL_ERROR = 4  # payload: pickled (message, traceback text): (un)pickling failed in the worker
CRASHED = 5  # payload: pickled (pid, exitcode, signal name)
TIMEOUT = 6  # payload: pickled (timeout seconds, pid)
CANCELLED = 7  # payload: b""
KILLED = 8  # payload: b"": killed at the shutdown deadline
BROKEN = 9  # payload: pickled (message, traceback text or None)
CLOSED = 10  # payload: b"": the pool ended before the task reached the dispatcher
EXPIRED = 11  # payload: pickled (seconds since submitted, failures): not started by its deadline
CIRCUIT_OPEN = 12  # payload: pickled (kind, seconds until a probe may run): failed fast
DEP_FAILED = 13  # payload: pickled (dependency id, its status, attempts, its payload)
DEP_GONE = 14  # payload: b"": a dependency had finished; the client submits the task again
UNCHAINED = 15  # worker: a chained task's dependency did not succeed just before it: not run

# Single calls carry n_items == 0; a map chunk carries its item count (> 0). A chunk payload
# is a pickled list of arguments; FLAG_STAR marks a list of argument tuples (several iterables).
SINGLE = 0
FLAG_TIMED = 1  # the worker announces R_STARTED before running (each item of) the task
FLAG_STAR = 2  # chunk items are argument tuples
FLAG_KEEP = 4  # keep the value: the next task in this batch is chained to it (mppool._deps)
FLAG_CHAINED = 8  # its dependency is the task before it in this batch (mppool._deps)


# --- client -> dispatcher --------------------------------------------------------------------
class Config(NamedTuple):
    """First message of a pool: how to set up the dispatcher and its workers."""

    tag: int
    workers: int
    sys_path: list[str]
    cwd: str
    initializer: bytes | None  # cloudpickled (initializer, initargs)
    max_tasks_per_child: int  # 0: unlimited
    max_memory_per_child: int  # bytes of RSS, 0: unlimited
    aging_rate: float  # priority levels gained per second of waiting
    rate_limits: dict[str, tuple[float, float, int]]  # kind -> (rate, per seconds, burst)
    init_timeout: float  # seconds a worker may take to start before the pool is broken
    log_level: int  # the lowest ``logging`` level of the events the client wants
    env: dict[str, str]  # set by the dispatcher before it imports anything (thread limits)
    preload: list[str]  # modules it imports before forking; worker i runs on affinity[i]
    affinity: list[list[int]]
    shm_prefix: str  # the start of every shared-memory segment name of this pool
    autoscale: tuple[Any, ...] | None  # Autoscale.knobs(), or None for a fixed size
    shares: dict[str, float]  # kind -> weight of its fair share of the workers' time
    circuit_breakers: dict[str, tuple[int, float, float, bool]]  # kind -> CircuitBreaker.knobs()


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
    run_late: bool  # a deadline orders the task only: it does not fail for being late
    batch: str  # the batch its tasks belong to ("" if none)


class Function(NamedTuple):
    """A function, serialised once; tasks refer to it by ``fn_id``."""

    tag: int
    fn_id: int
    blob: bytes


class Submit(NamedTuple):
    """A task (hot: built by :func:`submit`)."""

    tag: int
    task_id: int
    fn_id: int
    opts_id: int
    n_items: int  # SINGLE, or the number of items of a map chunk
    flags: int
    not_before: float  # dispatcher clock time before which it must not run; 0: now
    payload: bytes
    key: str  # its dedup key, shown in task listings ("" if none)
    deadline: float  # dispatcher clock time by which it must start; 0: none
    needs: tuple[int, ...]  # tasks whose results it takes (mppool._deps.DepRef i: needs[i])
    after: tuple[int, ...]  # tasks it waits for, without their results

    @staticmethod
    def view(msg: Message) -> Submit:
        return tuple.__new__(Submit, msg)


def submit(
    task_id: int, fn_id: int, opts_id: int, n_items: int, flags: int, not_before: float,
    payload: bytes, key: str, deadline: float = 0.0, needs: tuple[int, ...] = (),
    after: tuple[int, ...] = (),
) -> Message:  # fmt: skip
    """Build a :class:`Submit` as a plain tuple."""
    return (
        C_SUBMIT, task_id, fn_id, opts_id, n_items, flags, not_before, payload, key, deadline,
        needs, after,
    )  # fmt: skip


class Cancel(NamedTuple):
    """Remove a task; with ``kill``, also kill the worker if the task is running."""

    tag: int
    task_id: int
    kill: bool


class CancelBatch(NamedTuple):
    """Cancel every live task of a batch (``Batch.cancel``); with ``kill``, running ones too."""

    tag: int
    batch: str
    kill: bool


class Ended(NamedTuple):
    """A task the dispatcher answered ``DEP_GONE`` will not come back: the client failed it,
    as ``dependency`` had failed (``status``, ``payload``: how, as in a result). Tasks
    waiting for it fail in turn."""

    tag: int
    task_id: int
    dependency: int
    status: int
    payload: bytes


class Forget(NamedTuple):
    """The client dropped these functions and option sets: free them everywhere."""

    tag: int
    fn_ids: tuple[int, ...]
    opts_ids: tuple[int, ...]


class ListTasks(NamedTuple):
    """Ask for the task table: one task (``task_id`` != 0) or all, live and recent."""

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


class Resize(NamedTuple):
    """From now on, ``workers`` workers (``reason``: "resize" or "policy"); answered by
    ``Resized`` with the same ``request_id`` once the workers are forked or retired."""

    tag: int
    request_id: int
    workers: int
    reason: str


class Demand(NamedTuple):
    """A map on an autoscaled pool: the estimated seconds of work in the input it has not
    read yet (0: none left; the dispatcher forgets it)."""

    tag: int
    demand_id: int
    seconds: float


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
    """A single task's outcome (hot: built by :func:`result`)."""

    tag: int
    task_id: int
    status: int
    attempts: int
    duration: float  # seconds the worker spent running it
    payload: bytes

    @staticmethod
    def view(msg: Message) -> Result:
        return tuple.__new__(Result, msg)


def result(task_id: int, status: int, attempts: int, duration: float, payload: bytes) -> Message:
    """Build a :class:`Result` as a plain tuple."""
    return (D_RESULT, task_id, status, attempts, duration, payload)


class ChunkResult(NamedTuple):
    """A map chunk's outcome (hot: built by :func:`chunk_result`).

    ``pieces`` are pickled result lists covering the chunk's items from the first, in order,
    without gaps up to ``err_at`` (or to the end); a chunk may have run in several parts.
    ``err_status`` is OK when no item failed; otherwise item ``err_at`` failed with that
    status and ``err_payload``, and nothing after it is reported.
    """

    tag: int
    task_id: int
    attempts: int
    duration: float
    pieces: list[bytes]
    err_at: int
    err_status: int
    err_payload: bytes

    @staticmethod
    def view(msg: Message) -> ChunkResult:
        return tuple.__new__(ChunkResult, msg)


def chunk_result(
    task_id: int, attempts: int, duration: float, pieces: list[bytes], err_at: int,
    err_status: int, err_payload: bytes,
) -> Message:  # fmt: skip
    """Build a :class:`ChunkResult` as a plain tuple."""
    return (D_CHUNK, task_id, attempts, duration, pieces, err_at, err_status, err_payload)


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


class Event(NamedTuple):
    """Something the dispatcher saw that the user process logs (see ``_client._events``)."""

    tag: int
    level: int  # a ``logging`` level
    name: str  # e.g. "worker_died": the record's ``event`` field
    message: str
    fields: dict[str, Any]  # the record's other fields: pid, worker, task_id, ...


class Resized(NamedTuple):
    """The pool's target size changed (the client's maps plan for it); ``request_id`` 0
    when the dispatcher's autoscaler changed it."""

    tag: int
    request_id: int
    workers: int
    error: str  # why the size asked for was not reached: "closed", "broken", an OS error


class Unlink(NamedTuple):
    """Remove a result's segment: the tasks that read it have ended, and this message comes
    after the result itself, so the client has mapped it."""

    tag: int
    name: str


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


class WorkerForget(NamedTuple):
    """Functions and retry classes the worker may drop."""

    tag: int
    fn_ids: tuple[int, ...]
    opts_ids: tuple[int, ...]


class Run(NamedTuple):
    """Work for a worker (hot: built by :func:`run`).

    Every run belongs to a *batch* (one write to the worker) whose claim counter is semaphore
    ``slot`` of the worker's ring. Before each unit of work (a whole single task, or ``block``
    items of a chunk) the worker takes one token; the dispatcher may take tokens from the
    other end to move work that has not started to another worker. ``start`` and ``stop``
    select the chunk's items this run covers (both 0 for a single call).
    """

    tag: int
    run_id: int
    attempt: int
    fn_id: int
    opts_id: int
    flags: int
    payload: bytes
    batch: int
    slot: int
    start: int
    stop: int
    block: int

    @staticmethod
    def view(msg: Message) -> Run:
        return tuple.__new__(Run, msg)


def run(
    run_id: int, attempt: int, fn_id: int, opts_id: int, flags: int, payload: bytes,
    batch: int, slot: int, start: int, stop: int, block: int,
) -> Message:  # fmt: skip
    """Build a :class:`Run` as a plain tuple."""
    return (W_RUN, run_id, attempt, fn_id, opts_id, flags, payload, batch, slot, start, stop, block)


# --- worker -> dispatcher --------------------------------------------------------------------
class Hello(NamedTuple):
    tag: int


class Started(NamedTuple):
    """Sent before a timed task (or item) runs, so its timeout counts from its real start."""

    tag: int
    run_id: int
    attempt: int
    item: int  # the chunk item starting (0 for a single call)


class WorkerResult(NamedTuple):
    """A finished single task (hot: built by :func:`worker_result`)."""

    tag: int
    run_id: int
    attempt: int
    status: int
    duration: float
    payload: bytes

    @staticmethod
    def view(msg: Message) -> WorkerResult:
        return tuple.__new__(WorkerResult, msg)


def worker_result(
    run_id: int, attempt: int, status: int, duration: float, payload: bytes
) -> Message:
    """Build a :class:`WorkerResult` as a plain tuple."""
    return (R_RESULT, run_id, attempt, status, duration, payload)


class PartResult(NamedTuple):
    """What a run of chunk items did (hot: built by :func:`part_result`).

    The first ``n_done`` items succeeded (their results pickled in ``results``). Then either
    the run ended (``err_status`` OK: finished, or cut because its remaining items were taken
    by another worker) or the next item failed with ``err_status`` / ``err_payload``.
    """

    tag: int
    run_id: int
    attempt: int
    duration: float
    n_done: int
    results: bytes
    err_status: int
    err_payload: bytes

    @staticmethod
    def view(msg: Message) -> PartResult:
        return tuple.__new__(PartResult, msg)


def part_result(
    run_id: int, attempt: int, duration: float, n_done: int, results: bytes, err_status: int,
    err_payload: bytes,
) -> Message:  # fmt: skip
    """Build a :class:`PartResult` as a plain tuple."""
    return (R_PART, run_id, attempt, duration, n_done, results, err_status, err_payload)


class Cut(NamedTuple):
    """The worker found a batch's claim counter empty: the rest of the batch was taken."""

    tag: int
    batch: int


class InitFailed(NamedTuple):
    tag: int
    message: str
    traceback: str


class Retire(NamedTuple):
    """The worker leaves after its last result (memory limit); nothing it holds started."""

    tag: int


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
    C_FORGET: Forget,
    C_RESIZE: Resize,
    C_DEMAND: Demand,
    C_CANCEL_BATCH: CancelBatch,
    C_ENDED: Ended,
    D_READY: Ready,
    D_RESULT: Result,
    D_STATS: StatsReply,
    D_BROKEN: Broken,
    D_BYE: Bye,
    D_LIST: TaskList,
    D_FIRED: Fired,
    D_CHUNK: ChunkResult,
    D_EVENT: Event,
    D_RESIZED: Resized,
    D_UNLINK: Unlink,
    W_FUNCTION: WorkerFunction,
    W_RUN: Run,
    W_RETRY_ON: WorkerRetryOn,
    W_FORGET: WorkerForget,
    R_HELLO: Hello,
    R_STARTED: Started,
    R_RESULT: WorkerResult,
    R_INIT_FAILED: InitFailed,
    R_RETIRE: Retire,
    R_PART: PartResult,
    R_CUT: Cut,
}


# The framing that carries the messages, re-exported: every process writes ``p.encode`` etc.
from ._framing import HEADER_SIZE as HEADER_SIZE  # noqa: E402
from ._framing import READ_SIZE as READ_SIZE  # noqa: E402
from ._framing import BlockingReader as BlockingReader  # noqa: E402
from ._framing import FrameBuffer as FrameBuffer  # noqa: E402
from ._framing import encode as encode  # noqa: E402
from ._framing import write_all as write_all  # noqa: E402
