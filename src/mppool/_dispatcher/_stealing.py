"""Moving unstarted work between workers' pipes (pure: the scheduler's state, no I/O).

What a worker has been handed sits in its pipe, yet stays within reach until the worker
claims it (see ``_claims``). Three moves use that:

* **Urgent steal** (:meth:`Stealing.urgent`): an idle worker takes, from a peer's pipe, work
  that must start before the heap's top: a higher priority, or work stuck behind a worker
  that has not got to it. Taken from the *front* of what the peer has not started, so that
  priority order holds across workers.
* **Load balancing** (:meth:`Stealing.half`): with the heap empty, an idle worker takes the
  busiest peer's unstarted work; the unstarted blocks of a single map chunk are shared by
  halves, which is how the heavy tail of a map is spread.
* **Taking back** (:meth:`Stealing.take_back_behind`): when a task enters the heap while
  every worker is busy, unstarted work in pipes that ranks behind it returns to the heap.

A peer's next task written less than ``WAKE_SECONDS`` ago is left alone (its worker is
waking up): the idle worker is reconsidered shortly instead (``Scheduler.recheck``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _deps
from ._runqueue import rank
from ._tasks import Batch, Task

if TYPE_CHECKING:
    from ._scheduler import Scheduler

WAKE_SECONDS = 0.001  # a peer's untouched next task is taken only after this long
RECHECK_SECONDS = 0.0002  # how soon a worker left waiting for that is reconsidered
CROWDED_PER_WORKER = 4  # a level with this many tasks queued per worker keeps its batches put
UNKNOWN_COST = 1.0  # what a never-measured task counts as when weighing work


class Stealing:
    """The moves of unstarted work, over the scheduler's pipes and heap."""

    def __init__(self, sched: Scheduler) -> None:
        self.s = sched

    def eligible(self, w: int, task: Task) -> bool:
        """Whether ``w`` may take ``task`` from a peer without starting tasks out of order.

        ``w`` must not start a task that ranks before the last one it holds (or ran), unless
        that task came into the queue after it was given to ``w`` (new work may be more
        urgent, rightly so).
        """
        last = self.s.pipes.last_live(w)
        kept_rank, kept_seq = (rank(last), last.given) if last is not None else self.s.ran[w]
        # Equal ranks are parts of one map chunk, whose items have no order among them.
        return rank(task) >= kept_rank or task.arrived > kept_seq

    def urgent(self, w: int, best: Task | None) -> list[Task] | None:
        """Unstarted work in peers' pipes that must start before ``best``.

        A peer that has not started its next task gives up everything it holds, in order
        (else it would start later work first); a busy peer gives up what it has not started
        of a batch queued behind its current task. The most urgent candidate that ranks
        before ``best`` goes to ``w``, if ``w`` may take it (see :meth:`eligible`).

        Returns ``None`` when the only candidate's worker is waking up (``w`` gets nothing
        now rather than start something less urgent first). Within one priority level with
        plenty queued, batches are left where they are: the level's order is kept batch by
        batch, and moving work between pipes would only write it twice.
        """
        if best is None:
            return []
        s = self.s
        crowded = s.queue.level(best.opts.priority) >= CROWDED_PER_WORKER * s.n_up()
        chosen: tuple[int, Batch | None, Task] | None = None
        wait = False
        for v in range(s.workers):
            if v == w:
                continue
            for batch, cand in self._candidates(v):
                if rank(cand) >= rank(best) or not self.eligible(w, cand):
                    continue
                if crowded and cand.opts.priority == best.opts.priority:
                    continue
                if batch is None and self._fresh(self._head_batch(v)):
                    wait = True
                elif chosen is None or rank(cand) < rank(chosen[2]):
                    chosen = (v, batch, cand)
        if chosen is None:
            if wait:
                s.recheck = True
                return None
            return []
        v, batch, cand = chosen
        # Everything the peer has not started from there on: the peer would otherwise start
        # its later work before ``w`` gets to this.
        return self._moved_to(w, self._take_tail(v, batch))

    def half(self, w: int) -> list[Task]:
        """Load balancing when the heap is empty: the unstarted work of the busiest peer.

        All of it, in order, so that the peer does not start later work while ``w`` holds
        earlier work (they will share it again as each runs dry); only the blocks of one
        chunk, which rank alike, are shared by halves.
        """
        s = self.s
        best: tuple[float, int, int] | None = None
        for v in range(s.workers):
            if v == w:
                continue
            work, unclaimed = self._unstarted_work(w, v)
            if unclaimed and (best is None or work > best[0]):
                best = (work, v, unclaimed)
        if best is None:
            return []
        _, v, unclaimed = best
        tail = [(b, t) for b in s.pipes.batches[v] for t in b.live()]
        unstarted = [t for b, t in tail if s.pipes.first_unclaimed(b) is not None]
        if len({t.client_id for t in unstarted}) == 1 and unstarted[0].job is not None:
            batch = s.pipes.batches[v][-1]
            return self._moved_to(w, s.pipes.take_back(batch, (unclaimed + 1) // 2))
        return self._moved_to(w, self._take_tail(v))

    def take_back_behind(self, task: Task) -> None:
        """Unstarted work in pipes that ranks behind ``task`` goes back to the heap.

        Not needed while some worker is idle: ``task`` goes to it in this same round. Cheap
        in the common case (a stream of equal tasks): each pipe ends with earlier work.
        """
        s = self.s
        mine = rank(task)
        if mine > s.max_given:
            return  # ranks behind everything ever handed out (a stream of equal tasks)
        behind: list[int] = []
        for w in range(s.workers):
            last = s.pipes.last_live(w)
            if last is None:
                if s.is_up(w):
                    return  # an idle worker: task goes there
            elif rank(last) > mine:
                behind.append(w)
        now = s.clock()
        for w in behind:
            for batch in reversed(s.pipes.batches[w]):
                while True:
                    back = s.pipes.back(batch)
                    if back is None or rank(back) <= mine:
                        break
                    index = batch.tasks.index(back)
                    moved = s.pipes.take_back(batch, batch.cut - batch.begin(index))
                    for t in moved:
                        s.requeue(t, now)
                    if not moved or moved[0] is not back:
                        break  # the worker had started it

    def give_back(self, v: int) -> None:
        """Worker ``v`` is leaving (the pool shrinks): it takes no new work, and what it holds
        and has not started goes back to the heap. What it runs, it finishes."""
        s = self.s
        s.worker_down(v)
        now = s.clock()
        for task in self._take_tail(v):
            s.requeue(task, now)

    # --- helpers -------------------------------------------------------------------------------
    def _take_tail(self, v: int, first: Batch | None = None) -> list[Task]:
        """Take back all unstarted work of ``v`` from batch ``first`` on (``None``: all)."""
        moved: list[Task] = []
        for other in reversed(self.s.pipes.batches[v]):
            moved[:0] = self.s.pipes.take_back(other, other.cut)
            if other is first:
                break
        return moved

    def _fresh(self, batch: Batch) -> bool:
        """Written so recently that its worker may simply not have woken up yet."""
        return self.s.clock() - batch.written_at < WAKE_SECONDS

    def _head_batch(self, v: int) -> Batch:
        head = self.s.pipes.first_live(v)
        assert head is not None and head.batch is not None
        return head.batch

    def _candidates(self, v: int) -> list[tuple[Batch | None, Task]]:
        """What could be taken from worker ``v``: ``(None, next task)`` if it has not
        started it, else ``(batch, its first unstarted task)`` for each batch behind what
        runs."""
        pipes = self.s.pipes
        head = pipes.first_live(v)
        if head is None or head.batch is None:
            return []
        batch = head.batch
        index = batch.tasks.index(head)
        unclaimed = pipes.claims.unclaimed(v, batch.slot)
        if unclaimed is not None and unclaimed >= batch.cut - batch.begin(index):
            return [(None, head)]
        out: list[tuple[Batch | None, Task]] = []
        for other in pipes.batches[v]:
            first = pipes.first_unclaimed(other)
            # A chained task stays behind its dependency (it would only come back unrun).
            if first is not None and first is not head and first.chained_to is None:
                out.append((other, first))
        return out

    def _keep_chains(self, moved: list[Task]) -> list[Task]:
        """A chained task moves with the task it follows (re-addressed to that task's new
        attempt); one whose dependency stays behind comes back unrun instead."""
        s = self.s
        now = s.clock()
        kept: list[Task] = []
        for task in moved:
            head = task.chained_to
            if head is not None:
                if not kept or kept[-1] is not head or task.plain_payload is None:
                    s.tasks[task.id] = task
                    s.requeue(task, now)  # unchained: it waits, or runs on the stored result
                    continue
                task.payload = _deps.chained(task.plain_payload, head.id, head.attempt)
            kept.append(task)
        return kept

    def _unstarted_work(self, w: int, v: int) -> tuple[float, int]:
        """Estimated seconds and claim tokens of what ``v`` holds and ``w`` could take."""
        s = self.s
        candidates = self._candidates(v)
        if candidates and candidates[0][0] is None:
            if self._fresh(self._head_batch(v)):
                # Just written: v is waking up. Look again shortly, unless v holds a single
                # unit: taking a waking worker's only work would just swap the two.
                if sum(b.cut - b.begin(b.reported) for b in s.pipes.batches[v]) > 1:
                    s.recheck = True
                return 0.0, 0
            if not self.eligible(w, candidates[0][1]):
                return 0.0, 0
        work = 0.0
        total = 0
        for batch in s.pipes.batches[v]:
            unclaimed = s.pipes.unclaimed(batch)
            back = s.pipes.back(batch)
            if back is None or unclaimed <= 0 or not self.eligible(w, back):
                continue
            if back.chained_to is not None:
                continue  # a chain runs where its head runs (see _dependencies)
            est = s.estimates.of(back)
            work += unclaimed * (UNKNOWN_COST if est is None else est / max(1, back.tokens()))
            total += unclaimed
        return work, total

    def _moved_to(self, w: int, moved: list[Task]) -> list[Task]:
        s = self.s
        if any(t.chained_to is not None for t in moved):
            moved = self._keep_chains(moved)
        if moved:
            s.pipes.steals += 1
            s.pipes.stolen_tasks += len(moved)
            for task in moved:
                if task.job is not None and task not in task.job.parts:
                    task.job.parts.add(task)
                s.tasks[task.id] = task
        return moved
