"""Rate limits per task kind: the public ``RateLimit``, its parsing, and the token bucket.

A limit such as ``"50/s"`` or ``RateLimit(50, per=1.0, burst=10)`` is a token bucket that
refills at ``rate / per`` tokens per second up to ``burst`` tokens. Starting a task of that
kind takes one token. The bucket starts full, so up to ``burst`` tasks may start at once;
the default burst is 1, which spaces starts evenly (``"50/s"`` starts one task every 20 ms).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["RateLimit"]

MIN_WAIT_SECONDS = 1e-4  # shortest wait for a token

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``rate`` task starts per ``per`` seconds, with bursts of up to ``burst``.

    Args:
        rate: tasks allowed per period (> 0).
        per: the period in seconds (> 0).
        burst: how many starts may happen back to back when the bucket is full (>= 1).

    Raises:
        ValueError: if a value is out of range.
    """

    rate: float
    per: float = 1.0
    burst: int = 1

    def __post_init__(self) -> None:
        if not self.rate > 0 or not self.per > 0:
            raise ValueError("a rate limit needs rate > 0 and per > 0")
        if not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError("burst must be an int >= 1")

    @property
    def per_second(self) -> float:
        """Tokens added per second."""
        return self.rate / self.per

    @classmethod
    def parse(cls, spec: str | RateLimit) -> RateLimit:
        """Read ``"N/s"``, ``"N/m"``, ``"N/h"`` or ``"N/10s"`` (or pass a RateLimit through).

        Raises:
            ValueError: if the text is not a rate.
        """
        if isinstance(spec, RateLimit):
            return spec
        match = _PATTERN.match(str(spec).lower())
        if not match or match.group(3) not in _UNITS:
            raise ValueError(f"not a rate limit: {spec!r} (expected e.g. '100/s', '10/m')")
        count = float(match.group(1))
        periods = float(match.group(2) or 1)
        return cls(count, per=periods * _UNITS[match.group(3)])


class TokenBucket:
    """Tokens refill continuously; ``take`` removes one if available (pure: the clock is
    passed in). Used by the dispatcher, and by a cluster pool in the user process."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, per: float, burst: int, now: float) -> None:
        self.rate = rate / per
        self.burst = float(burst)
        self.tokens = self.burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float) -> bool:
        """Take a token if one is available at ``now``."""
        if self.tokens_now(now):
            self.tokens -= 1.0
            return True
        return False

    def tokens_now(self, now: float) -> bool:
        """Whether ``take`` would succeed at ``now`` (nothing is taken)."""
        self._refill(now)
        return self.tokens >= 1.0 - 1e-9

    def next_token_at(self, now: float) -> float:
        """When the next whole token will be available."""
        self._refill(now)
        # Strictly in the future: a token a rounding error short would otherwise give "now",
        # and a timer due now that finds no token would re-arm itself at now, forever.
        return now + max(MIN_WAIT_SECONDS, (1.0 - self.tokens) / self.rate)
