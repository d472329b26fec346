"""Batches as the dispatcher counts them (pure: no I/O).

A task of a batch (``pool.batch(name)``) carries the batch's name in its options. The
dispatcher remembers the batch of each live task of one, counts every final outcome on its
way to the client (``D_RESULT``, ``D_CHUNK``: the one place every outcome passes), and, for a
snapshot, counts the live ones by state. A map chunk counts as one task, as in the pool's
own counters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import _protocol as p
from ._tasks import Task

ENDED = ("completed", "failed", "cancelled")


class Batches:
    """Per batch: the ids of its live tasks, and its counters."""

    def __init__(self) -> None:
        self.of: dict[int, str] = {}  # live task (client id) -> its batch
        self.counts: dict[str, dict[str, int]] = {}

    def submitted(self, task_id: int, batch: str) -> None:
        self.of[task_id] = batch
        counts = self.counts.get(batch)
        if counts is None:
            counts = self.counts[batch] = dict.fromkeys(("submitted", *ENDED), 0)
        counts["submitted"] += 1

    def ended(self, msg: p.Message) -> None:
        """A final outcome on its way to the client: count it for its task's batch."""
        batch = self.of.pop(msg[1], None)
        if batch is None:
            return
        status = msg[2] if msg[0] == p.D_RESULT else p.ChunkResult.view(msg).err_status
        if status == p.OK:
            self.counts[batch]["completed"] += 1
        elif status == p.CANCELLED:
            self.counts[batch]["cancelled"] += 1
        else:
            self.counts[batch]["failed"] += 1

    def ids(self, batch: str) -> list[int]:
        """The live tasks of ``batch``."""
        return [task_id for task_id, name in self.of.items() if name == batch]

    def snapshot(self, live: Iterable[Task]) -> dict[str, dict[str, Any]]:
        """Per batch: its counters and its live tasks by state (a chunk's parts count once)."""
        states: dict[str, dict[str, int]] = {name: {} for name in self.counts}
        seen: set[int] = set()
        for task in live:
            name = task.opts.batch
            if not name or task.client_id in seen:
                continue
            seen.add(task.client_id)
            by_state = states.setdefault(name, {})
            state = "running" if task.state == "sent" else task.state
            by_state[state] = by_state.get(state, 0) + 1
        return {
            name: {**counts, "live": states.get(name, {})} for name, counts in self.counts.items()
        }
