"""Rate limits per task kind: the public ``RateLimit`` and its parsing (user process).

A limit such as ``"50/s"`` or ``RateLimit(50, per=1.0, burst=10)`` is a token bucket that
refills at ``rate / per`` tokens per second up to ``burst`` tokens. Starting a task of that
kind takes one token. The bucket starts full, so up to ``burst`` tasks may start at once;
the default burst is 1, which spaces starts evenly (``"50/s"`` starts one task every 20 ms).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["RateLimit"]

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
