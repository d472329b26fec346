"""Tasks waiting for other tasks (pure: the scheduler's state, no I/O).

A task submitted with dependencies (futures passed as arguments, or ``options(after=...)``)
waits here in state ``WAITING``, outside the heap, holding no worker. Each dependency's
outcome is applied once it is final (the dispatcher sees it on its way to the client):

* success: a result the task needs is kept (the worker's payload bytes, never unpickled);
  once the last dependency has succeeded the payload is bundled with those results
  (``mppool._deps.bundle``) and the task enters the pool as if just submitted;
* anything else (an error, a crash, a timeout, a cancel, an expired deadline, an open
  circuit, another dependency failing): the task fails with ``DEP_FAILED``, carrying that
  outcome as its cause, and so, in turn, do the tasks waiting for it.

A dependency must be live when its dependent arrives: the client only names futures that
were not done when it looked, but one may have finished since (its result is then on its way
to the client, ahead of the answer). Such a task is not taken: the client gets ``DEP_GONE``
and submits it again with the values it now has. A task can only depend on tasks submitted
before it, so no cycle can form.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING

from .. import _deps
from .. import _protocol as p
from ._tasks import WAITING, Task

if TYPE_CHECKING:
    from ._scheduler import Scheduler


class Dependencies:
    """Tasks waiting for others, by the id of the task they wait for."""

    def __init__(self, sched: Scheduler) -> None:
        self.s = sched
        self.dependents: dict[int, list[Task]] = {}  # dependency id -> tasks waiting for it
        self.waiting = 0
        self.released = 0  # tasks whose dependencies all succeeded, so far

    def missing(self, ids: tuple[int, ...]) -> bool:
        """Whether any of these tasks is no longer live here (finished, or unknown)."""
        tasks = self.s.tasks
        for task_id in ids:
            task = tasks.get(task_id)
            if task is None or task.job is not None:
                return True
        return False

    def wait(self, task: Task, needs: tuple[int, ...], after: tuple[int, ...]) -> None:
        """``task`` waits for ``needs`` (whose results it takes, in that order) and ``after``."""
        task.state = WAITING
        task.deps = needs
        task.dep_results = [b""] * len(needs)
        task.pending = set(needs) | set(after)
        for dep_id in task.pending:
            self.dependents.setdefault(dep_id, []).append(task)
        self.waiting += 1

    def leave(self, task: Task) -> None:
        """A waiting task leaves (cancelled, expired); its entries are skipped later."""
        self.waiting -= 1
        task.dep_results = None

    def finished(self, dep_id: int, status: int, attempts: int, payload: bytes) -> list[Task]:
        """Task ``dep_id`` has its final outcome. Returns the tasks that now need ``payload``
        (a success's result; the caller accounts for a segment it names)."""
        s = self.s
        now = s.clock()
        readers: list[Task] = []
        for task in self.dependents.pop(dep_id, ()):
            if task.state != WAITING or task.dep_results is None:
                continue  # it left meanwhile
            if status != p.OK:
                self.leave(task)
                cause = pickle.dumps((dep_id, status, attempts, payload))
                s.outcomes.refuse(task, p.DEP_FAILED, cause)
                continue
            for i, needed in enumerate(task.deps):
                if needed == dep_id:
                    task.dep_results[i] = payload
                    if not readers or readers[-1] is not task:
                        readers.append(task)
            pending = task.pending
            assert pending is not None
            pending.discard(dep_id)
            if not pending:
                self.waiting -= 1
                if task.deps:
                    task.payload = _deps.bundle(task.payload, task.dep_results)
                task.dep_results = None
                self.released += 1
                s.enter(task, now)
        return readers

    def clear(self) -> None:
        self.dependents.clear()
        self.waiting = 0
