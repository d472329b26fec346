"""The dispatcher's task table: live tasks by state, and a bounded history of finished ones."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from . import _scheduler as s

HISTORY_SIZE = 1000  # finished tasks remembered for listings

_LIVE_STATE = {
    s.DELAYED: "delayed",
    s.QUEUED: "queued",
    s.LOCAL: "queued",
    s.RATE_LIMITED: "queued",
    s.BACKOFF: "retrying",
}


class TaskTable:
    """Remembers finished tasks (a few numbers each) and lists live and finished ones."""

    def __init__(self, size: int = HISTORY_SIZE) -> None:
        self.history: deque[tuple[Any, ...]] = deque(maxlen=size)

    def finished(
        self, task: s.Task, state: str, now: float, duration: float = 0.0, pid: int = 0
    ) -> None:
        """Record the end of ``task`` (``state``: done, failed, cancelled)."""
        o = task.opts
        # Starts made: every failure was one, plus the final run if it succeeded. (A task
        # cancelled before it ran made none.)
        attempts = task.failures + (1 if state == "done" else 0)
        self.history.append(
            (
                task.id,
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
                task.n_items,
            )
        )

    def listing(
        self, sched: s.Scheduler, pids: list[int], now: float, task_id: int = 0
    ) -> list[dict[str, Any]]:
        """Live tasks, then finished ones (newest first); or just ``task_id`` if given."""
        offset = time.time() - now  # dispatcher clock -> wall clock

        def wall(t: float) -> float | None:
            return t + offset if t else None

        out: list[dict[str, Any]] = []
        live = [sched.tasks[task_id]] if task_id in sched.tasks else []
        if not task_id:
            live = list(sched.tasks.values())
        for task in live:
            if task.state == s.SENT:
                w = task.worker
                running = bool(sched.sent[w]) and sched.sent[w][0] is task
                state, pid = ("running" if running else "queued"), pids[w]
            else:
                state, pid = _LIVE_STATE.get(task.state, task.state), 0
            o = task.opts
            out.append(
                {
                    "id": task.id,
                    "key": task.dedup_key or None,
                    "kind": o.kind or None,
                    "priority": o.priority,
                    "state": state,
                    "attempts": task.attempts,
                    "items": task.n_items,
                    "submitted_at": wall(task.submitted_at),
                    "started_at": wall(task.started_at) if state == "running" else None,
                    "finished_at": None,
                    "duration": None,
                    "pid": pid or None,
                }
            )
        if task_id and out:
            return out
        for rec in reversed(self.history):
            if task_id and rec[0] != task_id:
                continue
            (tid, key, kind, prio, state, attempts, sub_at, start_at, fin_at, dur, pid, items) = rec
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
                }
            )
            if task_id:
                break
        return out
