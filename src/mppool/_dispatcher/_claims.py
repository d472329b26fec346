"""Claim counters: who runs work that sits in a worker's pipe but has not started.

Work written to a worker's pipe is usually gone from the dispatcher's reach: if the worker is
busy, the tasks behind its current one wait, while an idle peer, or more urgent work that
arrives later, cannot get at them. A claim counter fixes that without a round trip.

Every *batch* (one write of one or more runs to one worker) gets a counting semaphore, armed
with one token per unit of work: a single task is one unit, a map chunk is one unit per block
of items. Before it starts a unit, the worker takes a token (``sem_trywait``, a few tens of
nanoseconds, no system call). The dispatcher may take tokens too, and what it takes is the
*end* of the batch: the worker takes units from the front, the dispatcher from the back, and
since a token can be taken only once, the two never both get the same unit. When the worker
finds the counter empty, the rest of the batch was taken: it skips it and says so (``R_CUT``).

So the dispatcher can move any unit that has not started to another worker, or back to its
queue, at once, whatever the worker is doing. Nothing blocks on these semaphores (only
``trywait``), so a worker that dies holding nothing can never leave anyone stuck.

Each worker slot has a ring of ``RING_SIZE`` semaphores; a slot is reused only after the worker
has moved past the batch that used it. They are created in the dispatcher before the workers
are forked and unlinked at once, so nothing is left in ``/dev/shm`` and they vanish with the
last process that maps them.
"""

from __future__ import annotations

import _multiprocessing
import itertools
import os
from typing import Protocol

RING_SIZE = 4  # batches in flight per worker at most (a running one, a prefetch, two closing)
_SEMAPHORE = 1  # _multiprocessing's kind for a counting semaphore
_names = itertools.count()


def new_semaphore() -> _multiprocessing.SemLock:
    """A process-shared counting semaphore with no name left behind (unlinked at once)."""
    # Short names: macOS allows 31 characters.
    name = f"/mpp{os.getpid()}-{next(_names)}"
    return _multiprocessing.SemLock(
        _SEMAPHORE, 0, _multiprocessing.SemLock.SEM_VALUE_MAX, name, True
    )


class ClaimCounters(Protocol):
    """What the scheduler needs of the claim counters (a fake one in the unit tests)."""

    def arm(self, worker: int, slot: int, tokens: int) -> None:
        """Put ``tokens`` tokens into an empty counter before its batch is written."""

    def take(self, worker: int, slot: int, want: int) -> int:
        """Take up to ``want`` tokens from the end of the batch; return how many were taken."""

    def drain(self, worker: int, slot: int) -> int:
        """Take every token left (the worker is dead); return how many there were."""

    def unclaimed(self, worker: int, slot: int) -> int | None:
        """Tokens left, if the platform can tell (a hint: it may change at once)."""


class Claims:
    """The real counters: ``RING_SIZE`` semaphores per worker slot."""

    def __init__(self, workers: int, ring: int = RING_SIZE) -> None:
        self.rings = [[new_semaphore() for _ in range(ring)] for _ in range(workers)]

    def add_worker(self, ring: int = RING_SIZE) -> None:
        self.rings.append([new_semaphore() for _ in range(ring)])

    def arm(self, worker: int, slot: int, tokens: int) -> None:
        release = self.rings[worker][slot].release
        for _ in range(tokens):
            release()

    def take(self, worker: int, slot: int, want: int) -> int:
        acquire = self.rings[worker][slot].acquire
        got = 0
        while got < want and acquire(False):
            got += 1
        return got

    def drain(self, worker: int, slot: int) -> int:
        acquire = self.rings[worker][slot].acquire
        got = 0
        while acquire(False):
            got += 1
        return got

    def unclaimed(self, worker: int, slot: int) -> int | None:
        try:
            return int(self.rings[worker][slot]._get_value())
        except (NotImplementedError, OSError):  # macOS has no sem_getvalue
            return None
