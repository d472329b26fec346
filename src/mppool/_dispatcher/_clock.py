"""Where the dispatcher reads the time: one injected clock, so tests can drive it by hand.

``now`` (monotonic seconds) measures every interval and deadline: timeouts, delays,
backoffs, rate limits, schedules. ``wall`` (``time.time()``) is read only to speak to people
(start times in stats, a schedule's next run) and for cron expressions, which are wall-clock
by nature.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Clock:
    now: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
