"""Snapshots of a pool's state, as returned by ``Pool.stats()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._scaling import ScalingEvent

__all__ = [
    "BatchStats",
    "CircuitStats",
    "ShareStats",
    "LatencyStats",
    "Percentiles",
    "PoolStats",
    "TaskInfo",
    "WorkerStats",
]


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Percentiles of a duration over the recent window, in seconds (None when empty)."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Where recent tasks spent their time.

    Attributes:
        queue_wait: from reaching the dispatcher to starting in a worker.
        run_time: running in the worker (as the worker measured it).
        end_to_end: from reaching the dispatcher to the dispatcher receiving the result.
    """

    queue_wait: Percentiles
    run_time: Percentiles
    end_to_end: Percentiles


@dataclass(frozen=True, slots=True)
class CircuitStats:
    """One kind's circuit breaker (``Pool(circuit_breakers=...)``).

    Attributes:
        state: ``"closed"``, ``"open"`` or ``"half-open"`` (the next task, or the one
            running, is the probe).
        failures: failed attempts within the breaker's window (while closed).
        opened: times the circuit opened.
        rejected: tasks failed fast (or held) because it was not closed.
        held: tasks waiting for it to close (a breaker with ``wait=True``).
        retry_at: wall-clock time an open circuit lets a probe through (None otherwise).
    """

    state: str
    failures: int
    opened: int
    rejected: int
    held: int
    retry_at: float | None


@dataclass(frozen=True, slots=True)
class BatchStats:
    """One batch (``pool.batch(name)``), as the dispatcher counts it (a map chunk is one).

    Attributes:
        submitted: its tasks that reached the dispatcher.
        completed: those that succeeded.
        failed: those that failed (after any retries; a dependency's failure included).
        cancelled: those cancelled.
        live: its unfinished tasks by state (``queued``, ``running``, ``waiting``,
            ``delayed``, ``retrying``, ``held``).
    """

    submitted: int
    completed: int
    failed: int
    cancelled: int
    live: dict[str, int]

    @property
    def finished(self) -> int:
        """Tasks that have ended, one way or another."""
        return self.completed + self.failed + self.cancelled

    @property
    def progress(self) -> float:
        """The share of its tasks that have ended (1.0 for a batch with none yet)."""
        return self.finished / self.submitted if self.submitted else 1.0


@dataclass(frozen=True, slots=True)
class ShareStats:
    """One kind's fair share (``Pool(shares=...)``).

    Attributes:
        weight: its weight (1.0 for a kind ``shares`` does not list).
        busy_seconds: run time its tasks have had, measured by the workers.
        queued: its tasks waiting in the heap.
    """

    weight: float
    busy_seconds: float
    queued: int


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """One worker slot.

    Attributes:
        index: slot number (a replacement keeps the slot; a pool that grew and shrank
            may leave gaps).
        pid: process id of the worker now in the slot (0 while none is alive).
        state: ``"starting"``, ``"idle"``, ``"busy"`` or ``"leaving"`` (it takes no new
            work and exits soon: the pool shrinks, it reached ``max_tasks_per_child`` or its
            memory limit, or it is being killed; a replacement follows unless the pool
            shrank).
        current_task: id of the task it is running, or None.
        started_at: wall-clock time (``time.time()``) the current process was forked.
        ready_at: wall-clock time it reported ready (0 while starting).
        tasks_done: tasks finished in this slot, across replacements.
        busy_seconds: time spent running them.
        busy_fraction: busy_seconds over the pool's uptime.
        rss_bytes: resident memory of the worker process (None if unknown).
        cpu_percent: its CPU use since the previous snapshot, in percent of one core.
        in_pipe: tasks written to this worker and not yet finished.
        local_queue: tasks in its local deque (stealable).
    """

    index: int
    pid: int
    state: str
    current_task: int | None
    started_at: float
    ready_at: float
    tasks_done: int
    busy_seconds: float
    busy_fraction: float
    rss_bytes: int | None
    cpu_percent: float | None
    in_pipe: int
    local_queue: int


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A consistent snapshot taken by the dispatcher in one step.

    A map chunk counts as one task in these counters. For tasks that were not deduplicated,
    ``submitted == queued + running + completed + failed + cancelled`` holds in a snapshot.

    Attributes:
        submitted: tasks received.
        started: task starts (sends to a worker; retries and requeues count again).
        queued: tasks waiting (heap, local deques, delays, backoffs).
        running: tasks written to a worker and not yet finished.
        completed: tasks that succeeded.
        failed: tasks that finished with an error (after any retries).
        retried: retries scheduled (errors, crashes and timeouts).
        crashed: worker deaths blamed on the task they were running.
        timed_out: tasks killed at their timeout.
        cancelled: tasks removed before they ran.
        respawns: workers replaced.
        steals: steal operations between local deques.
        stolen_tasks: tasks moved by them.
        deduplicated: submits that returned the future of a task with the same key.
        rate_limited_waits: times a rate-limited kind found its bucket empty.
        queue_by_priority: waiting tasks per priority.
        queue_by_kind: waiting tasks per kind ("" for tasks without one).
        uptime: seconds since the pool started.
        latency: percentiles of queue wait, run time and end-to-end time of recent tasks.
        workers: one entry per worker (those leaving a shrinking pool included).
        target_workers: the number of workers the pool is meant to have now.
        live_workers: worker processes alive (more than the target while leaving ones
            finish their task; fewer for the milliseconds of a fork).
        worker_seconds: seconds lived by all worker processes so far, summed (what an
            elastic pool saves over a fixed one).
        resizes: changes of the target so far.
        scaling_events: the latest changes of the target (at most 32), oldest first.
        expired: tasks that failed because they had not started by their deadline (also
            counted in ``failed``).
        refused: tasks failed fast by an open circuit (also counted in ``failed``).
        circuits: per kind with a circuit breaker, its state.
        shares: with ``Pool(shares=...)``, per kind seen: its weight and busy time.
        batches: per batch (``pool.batch(name)``): its tasks by outcome and state.
    """

    submitted: int
    started: int
    queued: int
    running: int
    completed: int
    failed: int
    retried: int
    crashed: int
    timed_out: int
    cancelled: int
    respawns: int
    steals: int
    stolen_tasks: int
    deduplicated: int
    rate_limited_waits: int
    queue_by_priority: dict[float, int]
    queue_by_kind: dict[str, int]
    uptime: float
    latency: LatencyStats
    workers: tuple[WorkerStats, ...]
    target_workers: int
    live_workers: int
    worker_seconds: float
    resizes: int
    scaling_events: tuple[ScalingEvent, ...]
    expired: int = 0
    refused: int = 0
    circuits: dict[str, CircuitStats] = field(default_factory=dict)
    shares: dict[str, ShareStats] = field(default_factory=dict)
    batches: dict[str, BatchStats] = field(default_factory=dict)

    @property
    def succeeded(self) -> int:
        """Same as ``completed``."""
        return self.completed

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any]) -> PoolStats:
        """Build from the dispatcher's snapshot dictionary."""
        workers = tuple(WorkerStats(**w) for w in snap["workers"])
        latency = LatencyStats(**{k: Percentiles(*v) for k, v in snap["latency"].items()})
        events = tuple(ScalingEvent(*row) for row in snap["scaling_events"])
        circuits = {k: CircuitStats(**v) for k, v in snap.get("circuits", {}).items()}
        shares = {k: ShareStats(**v) for k, v in snap.get("shares", {}).items()}
        batches = {k: BatchStats(**v) for k, v in snap.get("batches", {}).items()}
        skip = ("workers", "latency", "scaling_events", "circuits", "shares", "batches")
        fields = {k: snap[k] for k in cls.__dataclass_fields__ if k not in skip}
        return cls(
            workers=workers,
            latency=latency,
            scaling_events=events,
            circuits=circuits,
            shares=shares,
            batches=batches,
            **fields,
        )

    def __str__(self) -> str:
        """A readable summary: counters, latency percentiles and one row per worker.

        ``print(pool.stats())`` shows it; ``repr()`` keeps every field.
        """
        counters = [
            ("submitted", self.submitted),
            ("completed", self.completed),
            ("failed", self.failed),
            ("retried", self.retried),
            ("crashed", self.crashed),
            ("timed out", self.timed_out),
            ("cancelled", self.cancelled),
            ("queued", self.queued),
            ("running", self.running),
            ("steals", self.steals),
            ("stolen tasks", self.stolen_tasks),
            ("respawns", self.respawns),
        ]
        lines = [f"pool stats (uptime {self.uptime:.2f}s; a map chunk counts as one task)"]
        if self.expired:
            counters.insert(7, ("expired", self.expired))
        if self.circuits or self.refused:
            counters.insert(7, ("refused", self.refused))
        if self.resizes:
            counters.append(("workers", self.target_workers))
            counters.append(("resizes", self.resizes))
        width = max(len(name) for name, _ in counters)
        lines += [f"  {name:<{width}}  {value:>10,}" for name, value in counters]
        lines += ["", f"  {'latency':<12}{'p50':>12}{'p95':>12}{'p99':>12}{'tasks':>8}"]
        stages = [
            ("queue wait", self.latency.queue_wait),
            ("run time", self.latency.run_time),
            ("end to end", self.latency.end_to_end),
        ]
        for label, p in stages:
            lines.append(
                f"  {label:<12}{_ms(p.p50):>12}{_ms(p.p95):>12}{_ms(p.p99):>12}{p.count:>8}"
            )
        lines += [
            "",
            f"  {'worker':>6}{'pid':>9}{'state':>10}{'tasks':>8}{'busy s':>9}{'busy':>7}"
            f"{'CPU':>7}{'RSS MiB':>9}",
        ]
        for w in self.workers:
            rss = "-" if w.rss_bytes is None else f"{w.rss_bytes / 2**20:.1f}"
            cpu = "-" if w.cpu_percent is None else f"{w.cpu_percent:.0f}%"
            lines.append(
                f"  {w.index:>6}{w.pid:>9}{w.state:>10}{w.tasks_done:>8}{w.busy_seconds:>9.2f}"
                f"{w.busy_fraction:>7.0%}{cpu:>7}{rss:>9}"
            )
        if self.circuits:
            lines += ["", f"  {'circuit':<12}{'state':>10}{'failures':>10}{'opened':>8}{'held':>8}"]
            for kind, c in sorted(self.circuits.items()):
                lines.append(f"  {kind:<12}{c.state:>10}{c.failures:>10}{c.opened:>8}{c.held:>8}")
        if self.shares:
            total = sum(s.busy_seconds for s in self.shares.values()) or 1.0
            lines += ["", f"  {'share':<12}{'weight':>10}{'busy s':>10}{'of all':>8}{'queued':>8}"]
            for kind, s in sorted(self.shares.items()):
                lines.append(
                    f"  {kind or '(none)':<12}{s.weight:>10g}{s.busy_seconds:>10.2f}"
                    f"{s.busy_seconds / total:>8.0%}{s.queued:>8}"
                )
        if self.batches:
            lines += [
                "",
                f"  {'batch':<16}{'done':>8}{'failed':>8}{'cancelled':>10}{'of':>8}{'live':>8}",
            ]
            for name, b in sorted(self.batches.items()):
                lines.append(
                    f"  {name:<16}{b.completed:>8}{b.failed:>8}{b.cancelled:>10}"
                    f"{b.submitted:>8}{sum(b.live.values()):>8}"
                )
        return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """One task as listed by ``Pool.tasks()`` / ``Pool.task(id)``.

    Attributes:
        id: the task id (``future.task_id``; runs of schedules have negative ids).
        key: its dedup key, if any.
        kind: its kind, if any.
        priority: its priority.
        state: ``queued``, ``delayed``, ``running``, ``retrying``, ``done``, ``failed`` or
            ``cancelled``.
        attempts: times it was started (retries and crash recoveries included).
        items: 0 for a single call, else the number of items in the map chunk.
        submitted_at: wall-clock time it reached the dispatcher.
        started_at: when its current or last run started (None while waiting).
        finished_at: when it finished (None while live).
        duration: run time of its last attempt in seconds (None while live).
        pid: the worker that runs or ran it (None while waiting).
        error: for a failure kept in a job store: ``"TypeName: message"``.
        stored: whether the row comes from the job store (an earlier run; ``id`` is 0).
        batch: the batch it belongs to (``pool.batch(name)``), if any.
    """

    id: int
    key: str | None
    kind: str | None
    priority: float
    state: str
    attempts: int
    items: int
    submitted_at: float | None
    started_at: float | None
    finished_at: float | None
    duration: float | None
    pid: int | None
    error: str | None = None
    stored: bool = False
    batch: str | None = None
