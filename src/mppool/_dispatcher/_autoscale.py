"""The elastic pool's rules: when to grow and when to shrink (pure: no I/O, injected time).

The dispatcher calls :meth:`Autoscaler.decide` every ``CHECK_SECONDS`` while the pool could
change size (work is queued, or it is above its minimum) with what it sees: the target, the
estimated seconds of queued work, which workers are idle, and the load average per core.

* **Grow** when the queued work would keep every worker busy for longer than ``backlog``
  seconds, and that has held for ``grow_after`` seconds in a row: to as many workers as the
  backlog needs (``ceil(work / backlog)``), at least one more, at most ``max``; not while the
  machine's load per core is above ``max_load``.
* **Shrink** by the workers that have been idle for ``idle_after`` seconds, down to ``min``.

The two waits are the hysteresis. A steady load at the threshold cannot flap: growing needs
queued work that outlasts ``grow_after``, shrinking needs a worker with nothing to do for
``idle_after``, and a load that keeps every worker busy leaves none idle.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import NamedTuple

CHECK_SECONDS = 0.05  # how often the dispatcher looks, while the size could change
MAX_EVENTS = 32  # scaling events kept for stats()


class Knobs(NamedTuple):
    """``Autoscale.knobs()`` as the dispatcher receives it."""

    min: int
    max: int
    backlog: float
    grow_after: float
    idle_after: float
    max_load: float  # 0: no limit
    rules: bool  # False: a user policy in the client decides; the dispatcher only obeys


class Decision(NamedTuple):
    target: int
    reason: str  # "backlog" or "idle"
    retire: tuple[int, ...]  # when shrinking: the idle workers to retire, longest idle first


class Autoscaler:
    """The grow and shrink rules, with the state their waits need."""

    def __init__(self, knobs: Knobs) -> None:
        self.k = knobs
        self.backlog_since: float | None = None  # since when the grow condition holds
        self.idle_since: dict[int, float] = {}  # worker -> since when it has been idle

    def active(self, target: int, queued: int) -> bool:
        """Whether a look could change anything (else the dispatcher need not wake up)."""
        return self.k.rules and (queued > 0 or target > self.k.min)

    def decide(
        self,
        now: float,
        target: int,
        backlog_seconds: float,
        idle: Collection[int],
        load_per_core: float | None,
        held_back: float = 0.0,
    ) -> Decision | None:
        """The new size, or ``None`` to keep it.

        Args:
            now: the clock.
            target: workers wanted now.
            backlog_seconds: estimated run time of the queued work.
            idle: the workers (indexes) that are up and hold nothing.
            load_per_core: the one-minute load average per core (None if unknown).
            held_back: estimated work that waits outside the queue (maps' unread input):
                it counts towards growing, never against shrinking.
        """
        k = self.k
        for w in [w for w in self.idle_since if w not in idle]:
            del self.idle_since[w]
        for w in idle:
            self.idle_since.setdefault(w, now)
        wanted = backlog_seconds + held_back
        if wanted > k.backlog * target and target < k.max:
            if self.backlog_since is None:
                self.backlog_since = now
            loaded = bool(k.max_load) and load_per_core is not None and load_per_core > k.max_load
            if now - self.backlog_since >= k.grow_after and not loaded:
                self.backlog_since = None
                need = math.ceil(wanted / k.backlog)
                return Decision(min(k.max, max(target + 1, need)), "backlog", ())
            return None
        self.backlog_since = None
        if target <= k.min or backlog_seconds > 0:
            return None
        long_idle = sorted(
            (since, w) for w, since in self.idle_since.items() if now - since >= k.idle_after
        )
        retire = tuple(w for _, w in long_idle[: target - k.min])
        if not retire:
            return None
        for w in retire:
            del self.idle_since[w]
        return Decision(target - len(retire), "idle", retire)
