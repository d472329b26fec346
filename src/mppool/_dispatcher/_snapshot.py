"""The dispatcher's stats snapshot: counters, queue, workers, latency, taken in one step.

Everything is read in one pass of the (single-threaded) dispatcher, so the counters agree
with each other. Tasks are counted as the client knows them: a map chunk is one task however
many parts it runs in. Worker RSS and CPU use come from psutil (imported on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._tasks import SENT

if TYPE_CHECKING:
    from ._loop import Dispatcher


class ProcessUsage:
    """RSS and CPU% of worker processes, CPU% since the previous look (or since start)."""

    def __init__(self) -> None:
        self._procs: dict[int, Any] = {}  # pid -> (psutil.Process, cpu seconds, wall time)

    def forget_except(self, live: set[int]) -> None:
        for pid in [p for p in self._procs if p not in live]:
            del self._procs[pid]

    def usage(self, pid: int, now: float) -> tuple[int | None, float | None]:
        """RSS and CPU% of ``pid`` (``now``: the wall clock, as psutil's times are)."""
        if not pid:
            return None, None
        import psutil

        try:
            entry = self._procs.get(pid)
            if entry is None:
                proc = psutil.Process(pid)
                # First look: the average since the process started, not psutil's 0.0.
                since = proc.create_time()
            else:
                proc, _, since = entry
            times = proc.cpu_times()
            cpu = times.user + times.system
            before = 0.0 if entry is None else entry[1]
            percent = 100.0 * (cpu - before) / max(1e-6, now - since)
            self._procs[pid] = (proc, cpu, now)
            return int(proc.memory_info().rss), round(max(0.0, percent), 1)
        except psutil.Error:
            return None, None


def _queue_counts(d: Dispatcher) -> tuple[int, int, dict[float, int], dict[str, int]]:
    """Client tasks waiting and running, and the waiting ones by priority and kind."""
    queued = running = 0
    by_priority: dict[float, int] = {}
    by_kind: dict[str, int] = {}
    seen_jobs: set[int] = set()
    for task in d.sched.tasks.values():
        job = task.job
        if job is not None:
            if job.task_id in seen_jobs:
                continue
            seen_jobs.add(job.task_id)
            sent = any(part.state == SENT for part in job.parts)
        else:
            sent = task.state == SENT
        if sent:
            running += 1
            continue
        queued += 1
        prio, kind = task.opts.priority, task.opts.kind
        by_priority[prio] = by_priority.get(prio, 0) + 1
        by_kind[kind] = by_kind.get(kind, 0) + 1
    return queued, running, by_priority, by_kind


def _workers(d: Dispatcher, uptime: float) -> list[dict[str, Any]]:
    sched = d.sched
    d.usage.forget_except({w.pid for w in d.workers.slots})
    out = []
    for w in d.workers.slots:
        if w.vacant:
            continue
        current = sched.pipes.first_live(w.index)
        rss, cpu = d.usage.usage(w.pid, d.wall())
        if w.leaving or w.draining or w.retired or w.kill_reason:
            state = "leaving"  # takes no new work and exits soon
        elif not w.pid or not w.ready:
            state = "starting"
        elif current is not None:
            state = "busy"
        else:
            state = "idle"
        out.append(
            {
                "index": w.index,
                "pid": w.pid,
                "state": state,
                "current_task": current.client_id if current is not None and w.ready else None,
                "busy_fraction": min(1.0, sched.busy_by[w.index] / uptime),
                "rss_bytes": rss,
                "cpu_percent": cpu,
                "started_at": w.started_at,
                "ready_at": w.ready_at,
                "tasks_done": sched.done_by[w.index],
                "busy_seconds": sched.busy_by[w.index],
                "in_pipe": sum(1 for _ in sched.pipes.live(w.index)),
                "local_queue": max(0, sum(1 for _ in sched.pipes.live(w.index)) - 1),
            }
        )
    return out


def snapshot(d: Dispatcher) -> dict[str, Any]:
    """The dispatcher's state as one dictionary (``PoolStats.from_snapshot`` reads it)."""
    sched = d.sched
    uptime = max(1e-9, d.clock() - d.started_at)
    queued, running, by_priority, by_kind = _queue_counts(d)
    snap: dict[str, Any] = dict(sched.counts)
    snap.update(
        respawns=d.workers.respawns,
        queued=queued,
        running=running,
        steals=sched.pipes.steals,
        stolen_tasks=sched.pipes.stolen_tasks,
        rate_limited_waits=sched.waiting.rate_limited_waits,
        started=sched.starts,
        queue_by_priority=by_priority,
        queue_by_kind=by_kind,
        uptime=uptime,
        latency=d.latency.snapshot(),
        workers=_workers(d, uptime),
        circuits=sched.circuits.snapshot(d.clock(), d.wall()),
        shares=sched.fair.snapshot() if sched.fair is not None else {},
        batches=d.batches.snapshot(sched.tasks.values()),
    )
    snap.update(d.sizing.snapshot())
    return snap
