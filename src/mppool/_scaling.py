"""An elastic pool's size: the public ``Autoscale`` policy and ``ScalingEvent`` (value types).

``Pool(workers=Autoscale(min=1, max=8))`` starts ``min`` workers; the dispatcher then grows
the pool when queued work would keep every worker busy for longer than ``backlog`` seconds
(for at least ``grow_after`` seconds in a row), and retires a worker that has been idle for
``idle_after`` seconds, never going below ``min`` or above ``max``. The two waits are the
hysteresis: a pool grown for a burst does not shrink in the lull between two tasks, and a
queue that empties within ``grow_after`` forks nothing.

``policy=`` replaces the built-in rule with a function of a stats snapshot: it is called in
the user's process every ``interval`` seconds with ``pool.stats()`` and returns the number
of workers wanted (clamped to ``[min, max]``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._stats import PoolStats

__all__ = ["Autoscale", "ScalingEvent"]


@dataclass(frozen=True, slots=True)
class Autoscale:
    """How an elastic pool sizes itself.

    Args:
        min: workers kept even when idle (>= 1); the pool starts with this many.
        max: most workers (>= min; default ``os.cpu_count()``).
        backlog: grow when the queued work, by the measured run times of its functions,
            would keep every worker busy for longer than this many seconds. A task of a
            function not yet measured counts as one second. Growing adds as many workers
            as the backlog needs at once (up to ``max``), not one at a time.
        grow_after: ... and that has held for this many seconds in a row.
        idle_after: a worker idle (nothing running, nothing queued for it) for this many
            seconds is retired, down to ``min``.
        max_load: if set, do not grow while the machine's one-minute load average per core
            is above this (the pool's own workers count towards it).
        policy: a function ``(PoolStats) -> int`` deciding the size instead of the rules
            above; called in the user's process every ``interval`` seconds. It must not
            block for long: it runs on a thread of the pool.
        interval: seconds between two calls of ``policy``.

    Raises:
        ValueError: if a value is out of range.
    """

    min: int = 1
    max: int = 0  # 0: os.cpu_count()
    backlog: float = 0.5
    grow_after: float = 0.1
    idle_after: float = 10.0
    max_load: float | None = None
    policy: Callable[[PoolStats], int] | None = None
    interval: float = 1.0

    def __post_init__(self) -> None:
        if self.max == 0:
            object.__setattr__(self, "max", max(self.min, os.cpu_count() or 1))
        if not isinstance(self.min, int) or isinstance(self.min, bool) or self.min < 1:
            raise ValueError(f"Autoscale min must be an int >= 1, not {self.min!r}")
        if not isinstance(self.max, int) or isinstance(self.max, bool) or self.max < self.min:
            raise ValueError(f"Autoscale max must be an int >= min ({self.min}), not {self.max!r}")
        for name in ("backlog", "grow_after", "idle_after", "interval"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Autoscale {name} must be a finite number >= 0, not {value!r}")
        if self.backlog <= 0 or self.interval <= 0:
            raise ValueError("Autoscale backlog and interval must be > 0")
        if self.max_load is not None and not (
            isinstance(self.max_load, int | float) and 0 < self.max_load < math.inf
        ):
            raise ValueError(f"Autoscale max_load must be a number > 0, not {self.max_load!r}")
        if self.policy is not None and not callable(self.policy):
            raise TypeError(f"Autoscale policy must be callable, not {self.policy!r}")

    def clamp(self, workers: int) -> int:
        """``workers`` brought within ``[min, max]``."""
        return max(self.min, min(self.max, workers))

    def knobs(self) -> tuple[int, int, float, float, float, float, bool]:
        """What the dispatcher needs (it never sees ``policy``: that is user code)."""
        return (
            self.min,
            self.max,
            float(self.backlog),
            float(self.grow_after),
            float(self.idle_after),
            float(self.max_load or 0.0),
            self.policy is None,  # whether the dispatcher's own rules are on
        )


@dataclass(frozen=True, slots=True)
class ScalingEvent:
    """One change of an elastic pool's size, as ``PoolStats.scaling_events`` lists them.

    Attributes:
        time: wall-clock time (``time.time()``) of the change.
        from_workers: the target before.
        to_workers: the target after.
        reason: ``"resize"`` (``pool.resize``), ``"backlog"`` (grown for queued work),
            ``"idle"`` (idle workers retired) or ``"policy"`` (a user policy's decision).
    """

    time: float
    from_workers: int
    to_workers: int
    reason: str
