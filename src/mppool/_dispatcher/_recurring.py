"""Recurring tasks in the dispatcher: when each schedule fires next (pure; clock passed in).

``every`` schedules run at fixed rate from their creation: ``start + k * interval``; a run
time that has already passed when the dispatcher gets to it is not made up (one run, not a
burst). ``cron`` schedules use ``croniter`` on the local wall clock. A schedule never runs
twice at once: a firing that comes while the previous run is still queued or running is
skipped and counted.
"""

from __future__ import annotations

import math
from typing import Any


class Recurring:
    """One schedule as the dispatcher keeps it."""

    __slots__ = (
        "_cron",
        "cron",
        "fn_id",
        "interval",
        "next_at",
        "opts_id",
        "payload",
        "running",
        "runs",
        "schedule_id",
        "skipped",
        "start",
    )

    def __init__(
        self,
        schedule_id: int,
        fn_id: int,
        opts_id: int,
        payload: bytes,
        *,
        interval: float = 0.0,
        cron: str = "",
    ) -> None:
        self.schedule_id = schedule_id
        self.fn_id = fn_id
        self.opts_id = opts_id
        self.payload = payload
        self.interval = interval
        self.cron = cron
        self.start = 0.0  # monotonic time of creation
        self.next_at = 0.0  # monotonic time of the next firing
        self.runs = 0
        self.skipped = 0
        self.running = 0  # task id of the current run, 0 if none
        self._cron: Any = None

    def first(self, now: float, wall_now: float) -> None:
        """Set the first firing time, from ``now`` (monotonic) and the wall clock."""
        self.start = now
        if self.cron:
            from croniter import croniter  # only for a pool that has cron schedules

            self._cron = croniter(self.cron, wall_now)
            self.next_at = now + (self._cron.get_next(float) - wall_now)
        else:
            self.next_at = now + self.interval

    def advance(self, now: float, wall_now: float) -> None:
        """Move ``next_at`` past ``now``."""
        if self._cron is not None:
            nxt = self._cron.get_next(float)
            while nxt <= wall_now:
                nxt = self._cron.get_next(float)
            self.next_at = now + (nxt - wall_now)
        else:
            periods = math.floor((now - self.start) / self.interval) + 1
            self.next_at = self.start + periods * self.interval

    def next_wall(self, now: float, wall_now: float) -> float:
        """The next firing as wall-clock time."""
        return wall_now + (self.next_at - now)
