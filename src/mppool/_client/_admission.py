"""What a submit must get past before it becomes a task: its key, and room in the queue.

* **Keys** (``options(key=...)``): while a task with a key is queued or running, a submit
  with the same key returns that task's future instead of making a new task. Once the task
  has finished, the key is free again.
* **Slots** (``Pool(max_queue=M)``): at most ``M`` tasks wait besides the running ones (at
  most one per worker); a submit waits for room, ``try_submit`` gives up with
  ``QueueFullError``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
from typing import Any

from .._errors import QueueFullError


class Keys:
    """Deduplication keys: key -> the unfinished future holding it."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._holders: dict[str, concurrent.futures.Future[Any]] = {}
        self.deduplicated = 0  # submits answered by another task's future

    def holder(self, key: str) -> concurrent.futures.Future[Any] | None:
        """The unfinished future holding ``key``, if any (counted as a deduplication)."""
        holder = self._holders.get(key)
        if holder is not None and not holder.done():
            self.deduplicated += 1
            return holder
        return None

    def claim(
        self, key: str, fut: concurrent.futures.Future[Any]
    ) -> concurrent.futures.Future[Any] | None:
        """Make ``fut`` the holder of ``key``; or return the holder another thread just made."""
        with self._lock:
            holder = self.holder(key)
            if holder is not None:
                return holder
            self._holders[key] = fut
        fut.add_done_callback(functools.partial(self._free, key))
        return None

    def _free(self, key: str, fut: concurrent.futures.Future[Any]) -> None:
        # The key is free again once its task is finished: a later submit runs anew.
        with self._lock:
            if self._holders.get(key) is fut:
                del self._holders[key]


class Slots:
    """The bounded queue: one slot per unfinished task, ``max_queue + workers`` in all.

    ``set_workers`` follows a resize: a larger pool frees slots at once; a smaller one keeps
    back slots as tasks finish (``owed``) until the count is right.
    """

    def __init__(self, max_queue: int, workers: int) -> None:
        self.max_queue = max_queue
        self._capacity = max_queue + workers
        self._free = threading.Semaphore(self._capacity)
        self._lock = threading.Lock()
        self._owed = 0  # slots to keep back as tasks finish (the pool shrank)

    def acquire(self, block: bool, timeout: float | None) -> None:
        if not self._free.acquire(block, timeout if block else None):
            raise QueueFullError("the pool's queue is full (max_queue tasks are waiting)")

    def release(self, _fut: concurrent.futures.Future[Any] | None = None) -> None:
        with self._lock:  # uncontended but for a resize: set_workers may owe this slot
            if self._owed:
                self._owed -= 1
                return
        self._free.release()

    def set_workers(self, workers: int) -> None:
        with self._lock:
            change = self.max_queue + workers - self._capacity
            self._capacity += change
            while change > 0 and self._owed:
                self._owed -= 1
                change -= 1
            if change > 0:
                self._free.release(change)
            for _ in range(-change):
                if not self._free.acquire(blocking=False):
                    self._owed += 1
