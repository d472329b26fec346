"""Work handed to each worker: batches in its pipe, and taking back what has not started.

This is each worker's *local queue*: what the dispatcher wrote to its pipe and has not heard
back about. It stays within the dispatcher's reach through claim counters (``_claims``): any
unit of work the worker has not claimed can be taken back from the end of its batch, to move
it to an idle peer (stealing), back to the heap (when more urgent work arrives), or out of the
pool (cancelled). Pure bookkeeping: the counters are injected, nothing here does I/O.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator

from ._claims import RING_SIZE, ClaimCounters
from ._tasks import SENT, Batch, Task

MAX_BATCHES = 2  # batches in one worker's pipe: the running one and one prefetched


class Claimed:
    """How far a dead worker got with one of its tasks (see :meth:`Pipes.lost`)."""

    __slots__ = ("claimed", "running", "task")

    def __init__(self, task: Task, claimed: int, running: bool) -> None:
        self.task = task
        self.claimed = claimed  # tokens it had taken of this task's
        self.running = running  # it held the last token taken: the unit it was running


class Pipes:
    """Per-worker batches in flight, their ring slots, and taking work back."""

    def __init__(self, workers: int, claims: ClaimCounters, part_ids: Callable[[], int]) -> None:
        self.claims = claims
        self.part_ids = part_ids
        self.batches: list[deque[Batch]] = [deque() for _ in range(workers)]
        self.free: list[list[int]] = [list(range(RING_SIZE)) for _ in range(workers)]
        self._ids = itertools.count(1)
        self.steals = 0  # take-backs that moved work to another worker
        self.stolen_tasks = 0

    def add_worker(self) -> None:
        self.batches.append(deque())
        self.free.append(list(range(RING_SIZE)))

    # --- writing -------------------------------------------------------------------------------
    def room(self, w: int) -> bool:
        """Whether another batch may be written to worker ``w``."""
        return len(self.batches[w]) < MAX_BATCHES and bool(self.free[w])

    def open(self, w: int, tasks: list[Task]) -> Batch:
        """Record a batch for worker ``w`` and arm its counter (before it is written)."""
        slot = self.free[w].pop()
        batch = Batch(next(self._ids), w, slot, tasks)
        for task in tasks:
            task.state = SENT
            task.worker = w
            task.batch = batch
        self.claims.arm(w, slot, batch.tokens)
        self.batches[w].append(batch)
        return batch

    # --- reading -------------------------------------------------------------------------------
    def live(self, w: int) -> Iterator[Task]:
        """Worker ``w``'s tasks that have not reported, in the order it runs them."""
        for batch in self.batches[w]:
            yield from batch.live()

    def busy(self, w: int) -> bool:
        return any(batch.has_live() for batch in self.batches[w])

    def first_live(self, w: int) -> Task | None:
        for batch in self.batches[w]:
            if batch.has_live():
                return batch.tasks[batch.reported]
        return None

    def last_live(self, w: int) -> Task | None:
        for batch in reversed(self.batches[w]):
            if batch.has_live():
                return batch.tasks[batch.live_end() - 1]
        return None

    def reported(self, task: Task) -> None:
        """``task`` sent its result (a chunk part cut short reports once too)."""
        batch = task.batch
        if batch is None:
            return
        task.batch = None
        try:
            index = batch.tasks.index(task, batch.reported)
        except ValueError:
            return
        batch.reported = index + 1
        self._release_finished(batch.worker)

    def cut(self, w: int, batch_id: int) -> None:
        """Worker ``w`` found batch ``batch_id``'s counter empty: it is past that batch."""
        for batch in self.batches[w]:
            if batch.id == batch_id:
                batch.closed = True
                break
        self._release_finished(w)

    def _release_finished(self, w: int) -> None:
        batches = self.batches[w]
        while batches and batches[0].finished():
            self.free[w].append(batches.popleft().slot)

    # --- taking back ---------------------------------------------------------------------------
    def take_back(self, batch: Batch, want: int) -> list[Task]:
        """Take up to ``want`` unclaimed tokens from the end of ``batch``.

        Returns the tasks moved out of the worker's hands, in pipe order: whole tasks, or the
        end part of a chunk task whose first blocks stay with the worker. Their state is left
        as it is (the caller decides where they go).
        """
        if want <= 0 or batch.closed or not batch.has_live():
            return []
        got = self.claims.take(batch.worker, batch.slot, min(want, batch.cut))
        if not got:
            return []
        old_cut = batch.cut
        batch.stolen += got
        new_cut = batch.cut
        moved: list[Task] = []
        for index in range(len(batch.tasks) - 1, -1, -1):
            begin, end = batch.begin(index), min(batch.ends[index], old_cut)
            if begin >= old_cut:
                continue  # taken before
            if end <= new_cut:
                break
            task = batch.tasks[index]
            if begin >= new_cut:
                task.batch = None
                task.attempt += 1  # anything the worker says about it now is stale
                moved.append(task)
            else:  # the worker keeps this chunk task's first blocks
                at = task.start + (new_cut - begin) * task.block
                moved.append(task.split(at, self.part_ids()))
        moved.reverse()
        return moved

    def back(self, batch: Batch) -> Task | None:
        """The task owning the last token the worker could still claim in ``batch``."""
        cut = batch.cut
        for index in range(len(batch.tasks) - 1, batch.reported - 1, -1):
            if batch.begin(index) < cut:
                return batch.tasks[index]
        return None

    def first_unclaimed(self, batch: Batch) -> Task | None:
        """The first task of ``batch`` the worker has not started (or a best guess)."""
        first_token = batch.cut - self.unclaimed(batch)
        for index in range(batch.reported, len(batch.tasks)):
            if batch.begin(index) >= batch.cut:
                return None
            if batch.ends[index] > first_token:
                return batch.tasks[index]
        return None

    def take_task(self, task: Task) -> list[Task] | None:
        """Take ``task`` (and everything behind it in its batch) back, if none has started.

        Returns the tasks taken, in pipe order: ``task`` first if it had not started. If the
        worker had started it, the result is ``None``, or only what was behind it (or the end
        of a chunk task it is running, split off), which the caller must put somewhere.
        """
        batch = task.batch
        if batch is None:
            return None
        index = batch.tasks.index(task)
        want = batch.cut - batch.begin(index)
        unclaimed = self.claims.unclaimed(batch.worker, batch.slot)
        if unclaimed is not None and unclaimed < want:
            return None  # the worker is on it (or past it): taking would only split it
        return self.take_back(batch, want) or None

    def unclaimed(self, batch: Batch) -> int:
        """Tokens of ``batch`` the worker has not taken (an estimate where it cannot be read)."""
        peek = self.claims.unclaimed(batch.worker, batch.slot)
        if peek is not None:
            return peek
        reported_tokens = batch.begin(batch.reported) if batch.reported < len(batch.tasks) else 0
        # Without a way to read the counter, assume the worker is on its next token.
        return max(0, batch.cut - reported_tokens - 1)

    # --- a worker died -------------------------------------------------------------------------
    def lost(self, w: int) -> list[Claimed]:
        """Empty worker ``w``'s pipe after its death: how far it got with each task.

        Every counter of its ring is drained, so the replacement starts clean. Tasks are
        returned in pipe order with the tokens the worker had claimed; the one holding the
        last claimed token is marked ``running``.
        """
        out: list[Claimed] = []
        last: Claimed | None = None
        for batch in self.batches[w]:
            remaining = self.claims.drain(w, batch.slot)
            claimed_end = max(0, batch.cut - remaining)
            for index in range(batch.reported, batch.live_end()):
                task = batch.tasks[index]
                begin = batch.begin(index)
                end = min(batch.ends[index], batch.cut)
                claimed = max(0, min(end, claimed_end) - begin)
                entry = Claimed(task, claimed, False)
                if claimed:
                    last = entry
                task.batch = None
                out.append(entry)
        for slot in range(RING_SIZE):  # counters of batches already finished are empty
            self.claims.drain(w, slot)
        if last is not None:
            last.running = True
        self.batches[w].clear()
        self.free[w] = list(range(RING_SIZE))
        return out
