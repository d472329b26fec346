"""The dispatcher's records of work: options, tasks, map chunks, batches (pure data).

A *task* is what the scheduler queues and hands to a worker: a single call, or a *part* of a
map chunk (a range of its items). A chunk starts as one part covering all its items; it is
split when an idle worker takes the unstarted end of it, when an item fails in a way that is
retried, or when a worker dies in the middle of it. The :class:`ChunkJob` collects the parts'
results and reports the chunk once, in item order, when no part is left.

A *batch* is one write to one worker: one or more tasks, and the claim counter that lets the
dispatcher take back the units of work the worker has not started (see ``mppool._claims``).
"""

from __future__ import annotations

import bisect
import math
import pickle
import random
from typing import NamedTuple

from .. import _protocol as p
from .._backoff import CRASH_RETRIES, FACTOR, INITIAL_DELAY, MAX_DELAY, backoff_delay

# --- task states ------------------------------------------------------------------------------
DELAYED = "delayed"  # waiting for its not-before time
QUEUED = "queued"  # in the heap
SENT = "sent"  # in a worker's pipe (running, or claimable by the worker)
BACKOFF = "retrying"  # waiting out a retry delay
RATE_LIMITED = "rate-limited"  # waiting for a token of its kind
HELD = "held"  # waiting for its kind's circuit to close (a circuit breaker with wait=True)
WAITING = "waiting"  # waiting for the tasks it depends on
DONE = "done"
CANCELLED = "cancelled"
LOCAL_STATES = frozenset({DELAYED, QUEUED, SENT, BACKOFF, RATE_LIMITED, HELD, WAITING})

PART_IDS_FROM = 1 << 62  # ids of parts made by splitting a chunk (clients count up from 1)


class TaskOptions(NamedTuple):
    """Options shared by many tasks (interned by the client, named by an id)."""

    priority: float = 0.0
    timeout: float = 0.0  # 0: none
    max_attempts: int = 1
    initial_delay: float = INITIAL_DELAY
    factor: float = FACTOR
    max_delay: float = MAX_DELAY
    jitter: float = 0.0
    crash_retries: int = CRASH_RETRIES
    kind: str = ""
    retry_timeouts: bool = False
    run_late: bool = False  # a deadline only orders the task: it never fails for being late
    batch: str = ""  # the batch (pool.batch(name)) its tasks belong to

    @classmethod
    def from_message(cls, msg: p.Options) -> TaskOptions:
        return cls(
            priority=msg.priority,
            timeout=msg.timeout,
            max_attempts=msg.max_attempts,
            initial_delay=msg.initial_delay,
            factor=msg.factor,
            max_delay=msg.max_delay,
            jitter=msg.jitter,
            crash_retries=msg.crash_retries,
            kind=msg.kind,
            retry_timeouts=msg.retry_timeouts,
            run_late=msg.run_late,
            batch=msg.batch,
        )

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait before the attempt that follows ``failures`` failures (>= 1)."""
        delay = backoff_delay(self.initial_delay, self.factor, self.max_delay, failures)
        if self.jitter:
            delay *= 1.0 + rng.uniform(-self.jitter, self.jitter)
        return max(0.0, delay)


class ChunkJob:
    """One map chunk as the client sees it (one id), whatever parts it was split into."""

    __slots__ = ("attempts", "duration", "err", "n_items", "parts", "pieces", "task_id")

    def __init__(self, task_id: int, n_items: int) -> None:
        self.task_id = task_id
        self.n_items = n_items
        self.pieces: dict[int, tuple[int, bytes]] = {}  # first item -> (items, results)
        self.err: tuple[int, int, bytes] | None = None  # (item, status, payload), earliest
        self.parts: set[Task] = set()  # parts not finished
        self.attempts = 1
        self.duration = 0.0

    def add_piece(self, start: int, n_done: int, results: bytes) -> None:
        if n_done:
            self.pieces[start] = (n_done, results)

    def add_error(self, item: int, status: int, payload: bytes) -> None:
        if self.err is None or item < self.err[0]:
            self.err = (item, status, payload)

    def message(self) -> p.Message:
        """The chunk's result for the client: its pieces in order up to the first error."""
        limit = self.n_items if self.err is None else self.err[0]
        pieces: list[bytes] = []
        at = 0
        while at < limit:
            piece = self.pieces.get(at)
            if piece is None:  # a gap before any error: never expected; report, never guess
                item, status, payload = at, p.SERIAL_ERROR, _GAP
                return p.chunk_result(
                    self.task_id, self.attempts, self.duration, pieces, item, status, payload
                )
            pieces.append(piece[1])
            at += piece[0]
        if self.err is None:
            return p.chunk_result(
                self.task_id, self.attempts, self.duration, pieces, self.n_items, p.OK, b""
            )
        item, status, payload = self.err
        return p.chunk_result(
            self.task_id, self.attempts, self.duration, pieces, item, status, payload
        )


_GAP = pickle.dumps(("mppool lost track of part of a map chunk (a bug)", None))


class Task:
    """One unit the scheduler queues: a single call, or a part of a map chunk.

    ``start``/``stop`` are the items of the chunk this part covers (both 0 for a single call)
    and ``block`` the items per claim token. ``heap_key``/``order`` fix its place in the heap.
    """

    __slots__ = (
        "arrived",
        "attempt",
        "batch",
        "block",
        "chain_failure",
        "chained_to",
        "charged",
        "crashes",
        "deadline",
        "dedup_key",
        "dep_places",
        "dep_results",
        "deps",
        "failures",
        "flags",
        "fn_id",
        "gen",
        "given",
        "has_token",
        "heap_key",
        "id",
        "job",
        "not_before",
        "opts",
        "opts_id",
        "order",
        "payload",
        "pending",
        "plain_payload",
        "running_item",
        "start",
        "started_at",
        "state",
        "stop",
        "submitted_at",
        "worker",
    )

    def __init__(
        self,
        task_id: int,
        fn_id: int,
        opts_id: int,
        opts: TaskOptions,
        payload: bytes,
        *,
        n_items: int = 0,
        flags: int = 0,
        not_before: float = 0.0,
        dedup_key: str = "",
        deadline: float = math.inf,
    ) -> None:
        self.id = task_id
        self.fn_id = fn_id
        self.opts_id = opts_id
        self.opts = opts
        self.payload = payload
        self.flags = flags
        self.start = 0
        self.stop = n_items
        self.block = 1
        self.job: ChunkJob | None = ChunkJob(task_id, n_items) if n_items else None
        self.attempt = 1  # dispatch generation: a message from another attempt is stale
        self.failures = 0  # errors, crashes and timeouts so far
        self.crashes = 0
        self.heap_key = 0.0  # heap key, fixed at first enqueue (aging folded in)
        self.order = 0  # arrival order among equal keys, fixed at first enqueue
        self.arrived = 0  # number of its latest entry into the heap (see RunQueue.arrivals)
        self.given = 0  # the heap's entry count when it was last written to a worker
        self.state = QUEUED
        self.worker = -1
        self.batch: Batch | None = None
        self.submitted_at = 0.0
        self.started_at = 0.0
        self.running_item = -1  # for timed parts: the item announced as started
        self.not_before = not_before
        self.has_token = False
        self.dedup_key = dedup_key
        self.deadline = deadline  # start before this (dispatcher clock), or fail; inf: none
        self.charged = 0.0  # run time charged to its kind's fair share, not yet measured
        # The entry that stands for it in the heap or a rate-limit queue: an entry left behind
        # when it moved out otherwise than by a pop is skipped, even once it is queued again.
        self.gen = 0
        self.deps: tuple[int, ...] = ()  # tasks whose results it takes (see _dependencies)
        self.dep_results: list[bytes] | None = None  # their result payloads, while waiting
        self.dep_places: dict[int, list[int]] | None = None  # id -> places in ``deps``
        self.pending: set[int] | None = None  # tasks it still waits for
        # Sent right behind its one dependency, to run on its value (see _dependencies):
        self.chained_to: Task | None = None  # that dependency
        self.plain_payload: bytes | None = None  # its payload when not chained
        self.chain_failure: bytes | None = None  # the dependency's failure, once known

    @property
    def n_items(self) -> int:
        """Items this task covers (0 for a single call)."""
        return self.stop - self.start

    @property
    def client_id(self) -> int:
        """The id the client knows: the task's own, or its chunk's."""
        return self.job.task_id if self.job is not None else self.id

    @property
    def attempts(self) -> int:
        """Times the task was started (failures so far, plus the current or last try)."""
        return self.failures + 1

    def tokens(self) -> int:
        """Claim tokens this task needs: one, or one per block of items."""
        if self.job is None:
            return 1
        return -(-(self.stop - self.start) // self.block)

    def split(self, at: int, part_id: int) -> Task:
        """Cut off items ``[at, stop)`` into a new part (same chunk, same place in line)."""
        assert self.job is not None and self.start < at < self.stop
        part = Task(part_id, self.fn_id, self.opts_id, self.opts, self.payload, flags=self.flags)
        part.job = self.job
        part.start, part.stop, part.block = at, self.stop, self.block
        part.heap_key, part.order, part.arrived = self.heap_key, self.order, self.arrived
        part.deadline = self.deadline
        part.submitted_at = self.submitted_at
        part.dedup_key = self.dedup_key
        part.has_token = True  # a rate-limited chunk paid once for all its parts
        self.stop = at
        self.job.parts.add(part)
        return part

    def __repr__(self) -> str:
        items = f", items={self.start}:{self.stop}" if self.job is not None else ""
        return f"Task(id={self.id}, state={self.state}, attempt={self.attempt}{items})"


class Batch:
    """One write of tasks to one worker, and its claim counter (ring ``slot``).

    Task ``i`` owns claim tokens ``ends[i-1]`` to ``ends[i]``. The worker takes tokens from
    the front; the dispatcher has taken ``stolen`` from the back, so the worker will run
    tokens ``[0, cut)`` at most. ``reported`` tasks (from the front) have sent their result.
    """

    __slots__ = (
        "closed",
        "ends",
        "id",
        "reported",
        "slot",
        "stolen",
        "tasks",
        "worker",
        "written_at",
    )

    def __init__(self, batch_id: int, worker: int, slot: int, tasks: list[Task]) -> None:
        self.id = batch_id
        self.worker = worker
        self.slot = slot
        self.tasks = tasks
        self.ends: list[int] = []
        total = 0
        for task in tasks:
            total += task.tokens()
            self.ends.append(total)
        self.stolen = 0
        self.reported = 0
        self.closed = False  # the worker reported the cut: it is past this batch
        self.written_at = 0.0  # dispatcher clock

    @property
    def tokens(self) -> int:
        return self.ends[-1] if self.ends else 0

    @property
    def cut(self) -> int:
        """Tokens the worker may still get: everything before this index."""
        return self.tokens - self.stolen

    def begin(self, index: int) -> int:
        """First token of task ``index``."""
        return self.ends[index - 1] if index else 0

    def live_end(self) -> int:
        """Number of tasks (from the front) that still own at least one token."""
        if not self.stolen:
            return len(self.tasks)
        cut = self.cut
        if cut <= 0:
            return 0
        # Task i starts at ends[i - 1]: count the tasks that start before the cut.
        return 1 + bisect.bisect_left(self.ends, cut, 0, len(self.tasks) - 1)

    def live(self) -> list[Task]:
        """Tasks still the worker's that have not reported, in pipe order."""
        return self.tasks[self.reported : self.live_end()]

    def has_live(self) -> bool:
        return self.reported < self.live_end()

    def finished(self) -> bool:
        """The worker will not touch this batch's counter again (its slot can be reused).

        With nothing taken back, that is when every task has reported. Once tokens were
        taken, the worker is bound to find the counter empty, and says so (``R_CUT``).
        """
        if self.stolen:
            return self.closed
        return self.reported >= len(self.tasks)


class Retry(NamedTuple):
    """Outcome: the task will run again at ``at`` (dispatcher clock)."""

    task: Task
    at: float


class Fail(NamedTuple):
    """Outcome: a single task is finished with an error."""

    task: Task


class JobDone(NamedTuple):
    """Outcome: every part of a map chunk has finished; report ``job.message()``."""

    job: ChunkJob
    task: Task  # the part that finished last


class Unstarted(NamedTuple):
    """A task fails without running: past its deadline, or its kind's circuit is open.

    ``outcome`` says what to report: the task's failure, or its map chunk's end.
    """

    task: Task
    outcome: Fail | JobDone
    status: int  # p.EXPIRED or p.CIRCUIT_OPEN
    payload: bytes


class Timeout(NamedTuple):
    """A running task passed its timeout: kill ``worker``; ``outcome`` says what to report."""

    worker: int
    task: Task
    outcome: Retry | Fail | JobDone | None
