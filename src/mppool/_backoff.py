"""Retry defaults and the backoff formula: one definition for ``RetryPolicy`` (user process)
and the dispatcher's per-task options."""

from __future__ import annotations

import math

INITIAL_DELAY = 1.0  # seconds before the first retry
FACTOR = 2.0  # growth of the delay per retry
MAX_DELAY = 60.0  # cap on any single delay
CRASH_RETRIES = 2  # times a task may kill its worker and be run again


def backoff_delay(initial: float, factor: float, max_delay: float, failures: int) -> float:
    """The wait before the attempt that follows ``failures`` failures (>= 1), without jitter.

    ``min(max_delay, initial * factor ** (failures - 1))``.
    """
    try:
        delay = initial * factor ** (failures - 1)
    except OverflowError:
        delay = math.inf
    return min(max_delay, delay)
