"""Retry policy: how often a failing task is tried again, and how long to wait in between."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RetryPolicy"]

from ._backoff import FACTOR, INITIAL_DELAY, MAX_DELAY, backoff_delay


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff for tasks that raise.

    The wait before retry ``k`` (1-based) is ``min(max_delay, initial_delay * factor**(k-1))``,
    multiplied by a random factor in ``[1 - jitter, 1 + jitter]`` when ``jitter`` is set. With
    the defaults the waits are 1 s, 2 s, 4 s, ... The wait happens in the dispatcher's timers:
    a backing-off task never holds a worker.

    Args:
        max_attempts: total tries including the first (1 means no retry).
        initial_delay: seconds before the first retry.
        factor: growth of the delay per retry.
        max_delay: cap on any single delay (``math.inf``: no cap).
        jitter: relative randomisation of each delay, from 0 (none) to 1.
        retry_on: exception classes that are retried; anything else fails at once. A task that
            times out is retried when ``mppool.TaskTimeoutError`` matches one of them.

    Raises:
        ValueError: if a field is out of range or not finite.
        TypeError: if a delay, factor or jitter is not a number.
    """

    max_attempts: int = 4
    initial_delay: float = INITIAL_DELAY
    factor: float = FACTOR
    max_delay: float = MAX_DELAY
    jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, not {self.max_attempts!r}")
        for name in ("initial_delay", "factor", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, not {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, not {value!r}")
        if isinstance(self.max_delay, bool) or not isinstance(self.max_delay, int | float):
            raise TypeError(f"max_delay must be a number, not {self.max_delay!r}")
        if math.isnan(self.max_delay):
            raise ValueError("max_delay must be a number of seconds (or inf: no cap), not nan")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must be >= 0")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, not {self.factor!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, not {self.jitter!r}")
        retry_on = self.retry_on
        if isinstance(retry_on, type):
            object.__setattr__(self, "retry_on", (retry_on,))
            retry_on = (retry_on,)
        if not all(isinstance(c, type) and issubclass(c, BaseException) for c in retry_on):
            raise ValueError("retry_on must be exception classes")

    @classmethod
    def none(cls) -> RetryPolicy:
        """A policy that never retries."""
        return cls(max_attempts=1)

    def delays(self) -> list[float]:
        """The waits before each retry, without jitter (``max_attempts - 1`` of them)."""
        return [
            backoff_delay(self.initial_delay, self.factor, self.max_delay, k)
            for k in range(1, self.max_attempts)
        ]
