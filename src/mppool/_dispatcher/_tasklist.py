"""The dispatcher's task table: live tasks by state, and a bounded history of finished ones.

Tasks are listed as the client knows them: a map chunk is one row, whatever parts it runs in.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from ._tasks import (
    BACKOFF,
    DELAYED,
    HELD,
    LOCAL_STATES,
    RATE_LIMITED,
    SENT,
    WAITING,
    ChunkJob,
    Task,
)

if TYPE_CHECKING:
    from ._scheduler import Scheduler

HISTORY_SIZE = 1000  # finished tasks remembered for listings

_LIVE_STATE = {
    DELAYED: "delayed",
    RATE_LIMITED: "queued",
    BACKOFF: "retrying",
    WAITING: "waiting",  # for the tasks it depends on
    HELD: "held",  # by its kind's open circuit
}


class TaskTable:
    """Remembers finished tasks (a few numbers each) and lists live and finished ones."""

    def __init__(self, size: int = HISTORY_SIZE) -> None:
        self.history: deque[tuple[Any, ...]] = deque(maxlen=size)

    def finished(
        self,
        task: Task,
        state: str,
        now: float,
        duration: float = 0.0,
        pid: int = 0,
        job: ChunkJob | None = None,
    ) -> None:
        """Record the end of ``task`` (``state``: done, failed) or of its whole chunk."""
        o = task.opts
        if job is not None:
            attempts = job.attempts
            items = job.n_items
        else:
            # Starts made: every failure was one, plus the final run if it succeeded.
            attempts = task.failures + (1 if state == "done" else 0)
            items = 0
        self.history.append(
            (
                task.client_id,
                task.dedup_key,
                o.kind,
                o.priority,
                state,
                attempts,
                task.submitted_at,
                task.started_at,
                now,
                duration,
                pid,
                items,
                o.batch,
            )
        )

    def cancelled(self, task_id: int, now: float, batch: str = "") -> None:
        self.history.append((task_id, "", "", 0.0, "cancelled", 0, 0.0, 0.0, now, 0.0, 0, 0, batch))

    def listing(
        self, sched: Scheduler, pids: list[int], now: float, wall_now: float, task_id: int = 0
    ) -> list[dict[str, Any]]:
        """Live tasks, then finished ones (newest first); or just ``task_id`` if given.

        Times are kept on the dispatcher's clock (``now``) and shown on the wall clock.
        """
        offset = wall_now - now

        def wall(t: float) -> float | None:
            return t + offset if t else None

        out = [self._live_row(task, state, pid, wall) for task, state, pid in _live(sched, pids)]
        if task_id:
            out = [row for row in out if row["id"] == task_id]
            if out:
                return out
        for rec in reversed(self.history):
            if task_id and rec[0] != task_id:
                continue
            (tid, key, kind, prio, state, attempts, sub_at, start_at, fin_at, dur, pid, items) = (
                rec[:12]
            )
            out.append(
                {
                    "id": tid,
                    "key": key or None,
                    "kind": kind or None,
                    "priority": prio,
                    "state": state,
                    "attempts": attempts,
                    "items": items,
                    "submitted_at": wall(sub_at),
                    "started_at": wall(start_at),
                    "finished_at": wall(fin_at),
                    "duration": dur,
                    "pid": pid or None,
                    "batch": rec[12] or None,
                }
            )
            if task_id:
                break
        return out

    @staticmethod
    def _live_row(task: Task, state: str, pid: int, wall: Any) -> dict[str, Any]:
        o = task.opts
        return {
            "id": task.client_id,
            "key": task.dedup_key or None,
            "kind": o.kind or None,
            "priority": o.priority,
            "state": state,
            "attempts": task.attempts,
            "items": task.job.n_items if task.job is not None else 0,
            "submitted_at": wall(task.submitted_at),
            "started_at": wall(task.started_at) if state == "running" else None,
            "finished_at": None,
            "duration": None,
            "pid": pid or None,
            "batch": o.batch or None,
        }


def _live(sched: Scheduler, pids: list[int]) -> list[tuple[Task, str, int]]:
    """Each live client task once, with its listed state and worker pid."""
    firsts = {w: sched.pipes.first_live(w) for w in range(sched.workers)}
    rows: dict[int, tuple[Task, str, int]] = {}
    rank = {"running": 0, "queued": 1, "retrying": 2, "delayed": 3}
    for task in sched.tasks.values():
        if task.state == SENT:
            running = firsts.get(task.worker) is task
            state, pid = ("running" if running else "queued"), pids[task.worker]
        else:
            state, pid = _LIVE_STATE.get(task.state, "queued"), 0
            if task.state not in LOCAL_STATES:
                continue
        seen = rows.get(task.client_id)
        if seen is None or rank.get(state, 9) < rank.get(seen[1], 9):
            rows[task.client_id] = (task, state, pid)
    return list(rows.values())
