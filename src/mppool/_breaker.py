"""Circuit breakers per task kind: the public ``CircuitBreaker`` and the pure ``Circuit``.

A kind whose tasks keep failing (a database down, an API refusing) should stop taking
workers and stop piling up work that will fail too. ``Pool(circuit_breakers={"io":
CircuitBreaker(failures=5, within=30, reset_after=60)})`` gives kind ``"io"`` a circuit::

    closed ──(failures within `within` s)──▶ open ──(reset_after s)──▶ half-open
      ▲                                       ▲                            │
      └──────────── the probe succeeds ───────┼──── the probe fails ◀──────┘

* **closed**: tasks run; each failed attempt (an error, a crash, a timeout) is counted.
* **open**: the kind's queued tasks and new ones fail at once with ``CircuitOpenError``
  (or, with ``wait=True``, wait holding no worker); running ones go on.
* **half-open**: one task (the most urgent) runs as a probe; its success closes the circuit,
  its failure opens it again for ``reset_after`` seconds. The others fail (or wait) meanwhile.

``Circuit`` is the state machine, with time passed in; the dispatcher owns one per kind.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

__all__ = ["CircuitBreaker"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """When a kind's circuit opens, and for how long.

    Args:
        failures: failed attempts (errors, crashes, timeouts) that open the circuit (>= 1).
        within: ... when they happen within this many seconds (> 0).
        reset_after: seconds the circuit stays open before one probe task may run (> 0).
        wait: while the circuit is not closed, hold the kind's tasks (they wait, holding no
            worker, and run once it closes) instead of failing them with ``CircuitOpenError``.

    Raises:
        TypeError, ValueError: if a value is of the wrong type or out of range.
    """

    failures: int = 5
    within: float = 30.0
    reset_after: float = 60.0
    wait: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.failures, bool) or not isinstance(self.failures, int):
            raise TypeError(f"failures must be an int, not {self.failures!r}")
        if self.failures < 1:
            raise ValueError(f"failures must be >= 1, not {self.failures}")
        for name in ("within", "reset_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number of seconds, not {value!r}")
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds > 0, not {value!r}")
        if not isinstance(self.wait, bool):
            raise TypeError(f"wait must be True or False, not {self.wait!r}")

    def knobs(self) -> tuple[int, float, float, bool]:
        """The values the dispatcher needs (sent in the pool's configuration)."""
        return (self.failures, float(self.within), float(self.reset_after), self.wait)


class Circuit:
    """One kind's circuit (pure: every method takes the current time).

    Args:
        failures, within, reset_after, wait: see :class:`CircuitBreaker`.
    """

    def __init__(self, failures: int, within: float, reset_after: float, wait: bool) -> None:
        self.threshold = failures
        self.within = within
        self.reset_after = reset_after
        self.wait = wait
        self.state = CLOSED
        self.recent: collections.deque[float] = collections.deque()  # failure times, closed
        self.half_open_at = math.inf  # when an open circuit lets a probe through
        self.probe: object | None = None  # the task running as the probe, half-open
        self.opened = 0  # times it opened
        self.rejected = 0  # tasks failed fast (or held) because it was not closed

    def admits(self, task: object, now: float) -> bool:
        """Whether ``task`` may run now; a half-open circuit takes it as its probe."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and now >= self.half_open_at:
            self.state = HALF_OPEN
        if self.state == HALF_OPEN and self.probe is None:
            self.probe = task
            return True
        return self.probe is task

    def failed(self, task: object, now: float) -> bool:
        """An attempt of ``task`` failed. Returns True if that opened the circuit."""
        if self.state == CLOSED:
            recent = self.recent
            recent.append(now)
            while recent and recent[0] <= now - self.within:
                recent.popleft()
            if len(recent) < self.threshold:
                return False
        elif self.probe is not task:
            return False  # a task that started before the circuit opened
        self._open(now)
        return True

    def succeeded(self, task: object) -> bool:
        """An attempt of ``task`` succeeded. Returns True if that closed the circuit."""
        if self.state == CLOSED or self.probe is not task:
            return False
        self.state = CLOSED
        self.probe = None
        self.recent.clear()
        return True

    def probe_gone(self, task: object) -> None:
        """The probe ended without an outcome (cancelled, expired): another may probe."""
        if self.probe is task:
            self.probe = None

    def _open(self, now: float) -> None:
        self.state = OPEN
        self.opened += 1
        self.probe = None
        self.recent.clear()
        self.half_open_at = now + self.reset_after

    def retry_at(self) -> float | None:
        """When an open circuit lets a probe through (``None`` unless open)."""
        return self.half_open_at if self.state == OPEN else None

    def failures_in_window(self, now: float) -> int:
        return sum(1 for at in self.recent if at > now - self.within)
