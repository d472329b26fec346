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

**Chaining.** When a task is handed to a worker and a task waits for it alone, that one is
written right behind it in the same batch (``FLAG_CHAINED``; the first gets ``FLAG_KEEP``),
and so on down a chain: the worker runs it on the value it has just computed, and the
dispatcher is off the path between the two. It is only an offer: if the worker did not just
run the dependency successfully (it failed, or the chained task was moved to another worker)
it answers ``UNCHAINED`` without running it, and the task goes back to waiting (or runs on
the stored result, or fails with its dependency), as does a chained task taken back from the
pipe. A task is chained only when no more urgent task waits in the heap, so chaining never
starts work out of priority order.

The client only names futures that were not done when it looked, but one may have finished
since (its outcome is then on its way to the client). So once a pool has seen a dependency,
the outcomes of recent tasks are kept (``RECENT_OUTCOMES``, at most ``RECENT_BYTES`` of
payloads; not results in shared memory, which their reader removes): a task arriving after
its dependency ended takes the outcome from there. A dependency found nowhere (its result
was in shared memory, or is too old) is answered ``DEP_GONE``: the client, which has that
outcome by then, submits the task again with the value. A task can only depend on tasks
submitted before it, so no cycle can form.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from typing import TYPE_CHECKING

from .. import _deps, _shm
from .. import _protocol as p
from ._runqueue import rank
from ._tasks import SENT, WAITING, Task

CHAIN_MAX = 64  # tasks chained behind one task handed out, at most
RECENT_OUTCOMES = 4096  # outcomes of finished tasks kept for dependents arriving late
RECENT_BYTES = 16 << 20  # ... holding at most this many bytes of payloads

if TYPE_CHECKING:
    from ._scheduler import Scheduler


def cause(dep_id: int, status: int, attempts: int, payload: bytes) -> bytes:
    """A ``DEP_FAILED`` payload: the failed dependency and its outcome. Down a chain, the
    outcome is the one that started it (a 1,000-link chain does not nest 1,000 levels)."""
    if status == p.DEP_FAILED:
        _, status, attempts, payload = pickle.loads(payload)  # our own message, not user data
    return pickle.dumps((dep_id, status, attempts, payload))


def _place(task: Task, dep_id: int, payload: bytes) -> bool:
    """Keep a dependency's result where ``task`` takes it; False if it takes none."""
    places = task.dep_places.get(dep_id) if task.dep_places else None
    if not places:
        return False
    results = task.dep_results
    assert results is not None
    for i in places:
        results[i] = payload
    return True


class Dependencies:
    """Tasks waiting for others, by the id of the task they wait for."""

    def __init__(self, sched: Scheduler) -> None:
        self.s = sched
        self.dependents: dict[int, list[Task]] = {}  # dependency id -> tasks waiting for it
        self.waiting = 0
        self.released = 0  # tasks whose dependencies all succeeded, so far
        self.enabled = False  # a task with dependencies has arrived: recent outcomes are kept
        self.recent: OrderedDict[int, tuple[int, int, bytes]] = OrderedDict()
        self.recent_bytes = 0
        self.bounced: set[int] = set()  # answered DEP_GONE: the client will send them again
        self.failed_chains = 0  # chained tasks whose dependency failed (a cheap gate; may run high)

    def missing(self, ids: tuple[int, ...]) -> bool:
        """Whether any of these tasks is neither live here nor among the recent outcomes."""
        self.enabled = True
        tasks, recent, bounced = self.s.tasks, self.recent, self.bounced
        for task_id in ids:
            task = tasks.get(task_id)
            gone = task is None or task.job is not None
            if gone and task_id not in recent and task_id not in bounced:
                return True
        return False

    def record(self, task_id: int, status: int, attempts: int, payload: bytes) -> None:
        """A task's final outcome, kept for a dependent that may still arrive."""
        if status == p.OK and _shm.names_segment(payload):
            return  # its reader removes the segment: a late dependent goes through the client
        recent = self.recent
        recent[task_id] = (status, attempts, payload)
        self.recent_bytes += len(payload)
        while len(recent) > RECENT_OUTCOMES or self.recent_bytes > RECENT_BYTES:
            _, (_, _, old) = recent.popitem(last=False)
            self.recent_bytes -= len(old)

    def wait(self, task: Task, needs: tuple[int, ...], after: tuple[int, ...]) -> None:
        """``task`` waits for ``needs`` (whose results it takes, in that order) and ``after``
        (each live, or among the recent outcomes: see :meth:`missing`)."""
        task.state = WAITING
        task.deps = needs
        task.dep_results = [b""] * len(needs)
        if needs:
            places: dict[int, list[int]] = {}
            for i, dep_id in enumerate(needs):
                places.setdefault(dep_id, []).append(i)
            task.dep_places = places  # a sink of 2,000 results takes each in O(1)
        task.pending = set(needs) | set(after)
        self.waiting += 1
        live = self.s.tasks
        for dep_id in list(task.pending):
            if dep_id in live or dep_id not in self.recent:  # (or on its way back: bounced)
                self.dependents.setdefault(dep_id, []).append(task)
        for dep_id in list(task.pending):
            if dep_id not in live and dep_id in self.recent and task.state == WAITING:
                self.dependents.setdefault(dep_id, []).append(task)
                self.finished(dep_id, *self.recent[dep_id])  # ended before it arrived

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
            if task.chained_to is not None and task.state == SENT:
                self._chained_dependency_ended(task, dep_id, status, attempts, payload, readers)
                continue
            if task.state != WAITING or task.dep_results is None:
                continue  # it left meanwhile
            if status != p.OK:
                self.leave(task)
                s.outcomes.refuse(task, p.DEP_FAILED, cause(dep_id, status, attempts, payload))
                continue
            if _place(task, dep_id, payload):
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

    # --- chaining -------------------------------------------------------------------------------
    def chain_behind(self, tasks: list[Task], limit: int) -> None:
        """Append to ``tasks`` (about to be handed to one worker) the tasks waiting for its
        last one alone, one behind the other, while no more urgent task is in the heap."""
        if tasks[-1].job is not None:
            return
        s = self.s
        now = s.clock()
        top = s.queue.peek()
        for _ in range(min(CHAIN_MAX, limit - len(tasks))):
            prev = tasks[-1]
            waiting = self.dependents.get(prev.id, ())
            nxt = next((t for t in waiting if self._chainable(t, prev.id)), None)
            if nxt is None:
                return
            s.queue.place(nxt, now)  # its rank, as if it had been queued now
            if top is not None and rank(top) < rank(nxt):
                return
            self.waiting -= 1
            nxt.chained_to = prev
            nxt.plain_payload = nxt.payload
            nxt.payload = _deps.chained(nxt.payload, prev.id, prev.attempt)
            nxt.flags |= p.FLAG_CHAINED
            prev.flags |= p.FLAG_KEEP
            tasks.append(nxt)

    def _chainable(self, task: Task, head: int) -> bool:
        """Whether ``task`` may run right behind task ``head``: it waits for that one alone,
        and every result it takes is that one's (the worker puts the value it has in every
        place; results received earlier are not in the chained payload)."""
        s = self.s
        return (
            task.state == WAITING
            and task.pending is not None
            and len(task.pending) == 1
            and all(d == head for d in task.deps)
            and task.not_before <= 0.0
            and task.job is None
            and s.fair is None
            and not s.waiting.needs_token(task)
            and task.opts.kind not in s.circuits.by_kind
        )

    def _chained_dependency_ended(
        self,
        task: Task,
        dep_id: int,
        status: int,
        attempts: int,
        payload: bytes,
        readers: list[Task],
    ) -> None:
        """``task`` sits behind its dependency in a pipe; the dependency has ended."""
        pending = task.pending
        assert pending is not None and task.dep_results is not None
        if status == p.OK:
            pending.discard(dep_id)  # should it come back unrun, it runs on this result
            if _place(task, dep_id, payload):
                readers.append(task)
            return
        task.chain_failure = cause(dep_id, status, attempts, payload)
        self.failed_chains += 1
        s = self.s
        moved = s.pipes.take_task(task) or []
        now = s.clock()
        for other in moved:
            if other is not task:
                s.requeue(other, now)
        if moved and moved[0] is task:
            self.unchain(task)  # it fails now; otherwise it answers UNCHAINED, and fails then

    def unchain(self, task: Task) -> None:
        """A chained task came back unrun (``UNCHAINED``, or taken back from the pipe): it
        fails with its dependency, runs on the stored result, or waits again."""
        s = self.s
        task.chained_to = None
        task.flags &= ~p.FLAG_CHAINED
        if task.plain_payload is not None:
            task.payload, task.plain_payload = task.plain_payload, None
        task.batch = None
        failure, task.chain_failure = task.chain_failure, None
        if failure is not None:
            self.failed_chains -= 1
            task.dep_results = None
            s.outcomes.refuse(task, p.DEP_FAILED, failure)
        elif not task.pending:
            if task.deps:
                assert task.dep_results is not None
                task.payload = _deps.bundle(task.payload, task.dep_results)
            task.dep_results = None
            self.released += 1
            s.enter(task, s.clock())
        else:
            task.state = WAITING
            task.worker = -1
            self.waiting += 1

    def clear(self) -> None:
        self.bounced.clear()
        self.dependents.clear()
        self.waiting = 0
