"""The retry backoff formula, used by ``RetryPolicy`` (user process) and the dispatcher."""

from __future__ import annotations

import math


def backoff_delay(initial: float, factor: float, max_delay: float, failures: int) -> float:
    """The wait before the attempt that follows ``failures`` failures (>= 1), without jitter.

    ``min(max_delay, initial * factor ** (failures - 1))``.
    """
    try:
        delay = initial * factor ** (failures - 1)
    except OverflowError:
        delay = math.inf
    return min(max_delay, delay)
