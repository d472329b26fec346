"""Cancelling tasks and map chunks by the id the client knows (pure).

A task nothing has started leaves the heap, its wait or the pipe it was written to (taken
back through its claim counter). A task already running cannot be taken back: it is
*forgotten* (it finishes and its result is dropped), or, with ``kill``, its worker is
killed and replaced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._tasks import CANCELLED, SENT, Task

if TYPE_CHECKING:
    from ._scheduler import Scheduler


class Cancelling:
    """Cancellation, applied to the scheduler's state."""

    def __init__(self, sched: Scheduler) -> None:
        self.s = sched

    def cancel(self, client_id: int, kill: bool) -> tuple[bool, list[int]]:
        """Cancel a task (or a whole map chunk) by the id the client knows.

        Returns whether it was cancelled, and the workers to kill: those running it, when
        ``kill`` is set. Without ``kill`` a running task is forgotten: it finishes, and its
        result is dropped.
        """
        s = self.s
        job = s.jobs.get(client_id)
        parts = list(job.parts) if job is not None else []
        single = s.tasks.get(client_id) if job is None else None
        if single is not None and single.job is None:
            parts = [single]
        if not parts:
            return False, []
        kills: list[int] = []
        now = s.clock()
        for part in parts:
            worker = self._cancel_one(part, now)
            if worker is not None and kill:
                kills.append(worker)
        if job is not None:
            job.parts.clear()
            s.jobs.pop(client_id, None)
        s.counts["cancelled"] += 1
        return True, kills

    def _cancel_one(self, task: Task, now: float) -> int | None:
        """Remove one task; return the worker running it, if it could not be taken back."""
        s = self.s
        running_on: int | None = None
        if task.state == SENT:
            moved = s.pipes.take_task(task) or []
            if not moved or moved[0] is not task:
                running_on = task.worker
                s.outcomes.forgotten[task.id] = task
            for other in moved:
                if other.job is not None and other.job is task.job:
                    other.state = CANCELLED  # the rest of this very chunk: cancelled too
                    s.tasks.pop(other.id, None)
                elif other is not task:
                    s.requeue(other, now)
        else:
            s.leave_queue(task)
        if s.circuits.by_kind:
            s.circuits.ended(task)  # cancelled: it judges nothing (if it probed, another may)
        if s.fair is not None:
            s.fair.settle(task, 0.0)
        task.state = CANCELLED
        s.tasks.pop(task.id, None)
        return running_on

    def drop_queued(self) -> list[int]:
        """Cancel every task nothing has started (shutdown with ``cancel_futures``)."""
        dropped = []
        for task in list(self.s.tasks.values()):
            if task.state == SENT or task.state == CANCELLED:
                continue
            job = task.job
            if job is not None and any(t.state == SENT for t in job.parts):
                continue  # a chunk with a running part finishes
            if self.cancel(task.client_id, kill=False)[0]:
                dropped.append(task.client_id)
        return dropped
