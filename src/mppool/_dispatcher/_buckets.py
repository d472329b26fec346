"""Token buckets: one per rate-limited kind, in the dispatcher (pure; the clock is passed in).

A limit of ``rate`` starts per ``per`` seconds with bursts of ``burst`` refills continuously
at ``rate / per`` tokens per second up to ``burst`` tokens; starting a task of the kind takes
one token. The bucket starts full.
"""

from __future__ import annotations

MIN_WAIT_SECONDS = 1e-4  # shortest wait for a token


class TokenBucket:
    """Tokens refill continuously; ``take`` removes one if available."""

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
        self._refill(now)
        if self.tokens >= 1.0 - 1e-9:
            self.tokens -= 1.0
            return True
        return False

    def next_token_at(self, now: float) -> float:
        """When the next whole token will be available."""
        self._refill(now)
        # Strictly in the future: a token a rounding error short would otherwise give "now",
        # and a timer due now that finds no token would re-arm itself at now, forever.
        return now + max(MIN_WAIT_SECONDS, (1.0 - self.tokens) / self.rate)
