"""Recurring tasks in the dispatcher: when each schedule fires next (pure; clock passed in).

``every`` schedules run at fixed rate from their creation: ``start + k * interval``; a run
time that has already passed when the dispatcher gets to it is not made up (one run, not a
burst). ``cron`` schedules use ``croniter`` on the local wall clock. A schedule never runs
twice at once: a firing that comes while the previous run is still queued or running is
skipped and counted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from croniter import croniter


@dataclass(slots=True)
class Recurring:
    """One schedule as the dispatcher keeps it."""

    schedule_id: int
    fn_id: int
    opts_id: int
    payload: bytes
    interval: float = 0.0
    cron: str = ""
    start: float = 0.0  # monotonic time of creation
    next_at: float = 0.0  # monotonic time of the next firing
    runs: int = 0
    skipped: int = 0
    running: int = 0  # task id of the current run, 0 if none
    _cron: croniter | None = field(default=None, repr=False)

    def first(self, now: float, wall_now: float) -> None:
        """Set the first firing time, from ``now`` (monotonic) and the wall clock."""
        self.start = now
        if self.cron:
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

    def next_wall(self, now: float) -> float:
        """The next firing as wall-clock time."""
        return time.time() + (self.next_at - now)


def validate_cron(expr: str) -> None:
    """Raise ``ValueError`` unless ``expr`` is a cron expression croniter accepts."""
    if not isinstance(expr, str) or not croniter.is_valid(expr):
        raise ValueError(f"not a valid cron expression: {expr!r}")
