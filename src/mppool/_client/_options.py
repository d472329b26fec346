"""Per-task options and the pool's own arguments as the user process holds them: checked
where they are set.

``Pool(...)`` and ``options(...)`` make an :class:`_Options`; every value is checked there,
with an error that names the option, so nothing malformed reaches the dispatcher. Equal
option sets share one id (see ``_interned``): the dispatcher sees only what affects scheduling.
"""

from __future__ import annotations

import datetime
import math
import os
import time
from collections.abc import Callable
from typing import Any

from .. import _protocol as p
from .._retry import RetryPolicy
from ._serial import dumps


class _Unset:
    """The default of every ``options()`` argument: keep the value the view already has."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<unchanged>"


UNSET: Any = _Unset()


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {value!r}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{name} must be a number, not nan")
    return number


def _priority(value: Any) -> float:
    number = _number("priority", value)
    if not math.isfinite(number):
        raise ValueError(f"priority must be finite, not {value!r}")
    return number


def _timeout(value: Any) -> float | None:
    """A task timeout in seconds: None or ``inf`` mean no limit."""
    if value is None:
        return None
    number = _number("timeout", value)
    if not number > 0:
        raise ValueError(f"timeout must be > 0 seconds, not {value!r}")
    return None if math.isinf(number) else number


def _delay(value: Any) -> float | None:
    if value is None:
        return None
    number = _number("delay", value)
    if not 0 <= number < math.inf:
        raise ValueError(f"delay must be a finite number of seconds >= 0, not {value!r}")
    return number


def _at(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        value = value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"at must be a datetime or a time.time() value, not {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"at must be a finite time, not {value!r}")
    return number


def option_changes(
    priority: Any,
    timeout: Any,
    retries: Any,
    crash_retries: Any,
    kind: Any,
    key: Any,
    delay: Any,
    at: Any,
    deadline: Any,
    run_late: Any,
    after: Any,
) -> dict[str, Any]:
    """``options(...)``'s arguments as changes to an :class:`_Options` (``UNSET``: no change)."""
    changes = {
        "priority": priority,
        "timeout": timeout,
        "retry": retries if retries is UNSET else _retry_policy(retries),
        "crash_retries": crash_retries,
        "kind": kind if kind is UNSET else str(kind),
        "key": key,
        "run_late": run_late,
    }
    if delay is not UNSET:
        changes.update(delay=delay, at=None)
    if at is not UNSET:
        at = at.timestamp() if isinstance(at, datetime.datetime) else at
        changes.update(at=at, delay=None)
    if deadline is not UNSET:
        relative, absolute = _deadline(deadline)
        changes.update(deadline=relative, deadline_at=absolute)
    if after is not UNSET:
        from ._dependencies import check_after

        changes.update(after=check_after(after))
    return {name: value for name, value in changes.items() if value is not UNSET}


def _deadline(value: Any) -> tuple[float | None, float | None]:
    """A deadline as ``(seconds from submission, wall-clock time)``: one of them, or neither."""
    if value is None:
        return None, None
    if isinstance(value, datetime.datetime):
        return None, value.timestamp()
    number = _number("deadline", value)
    if not 0 < number < math.inf:
        raise ValueError(f"deadline must be a number of seconds > 0 or a datetime, not {value!r}")
    return number, None


class _Options:
    """A set of per-task options; interned per pool and sent to the dispatcher once.

    Every value is checked here, where the caller set it (``Pool(...)`` or ``options()``),
    with an error that names the option: nothing malformed reaches the dispatcher.
    """

    __slots__ = (
        "_signature",
        "after",
        "at",
        "batch",
        "crash_retries",
        "deadline",
        "deadline_at",
        "delay",
        "key",
        "kind",
        "priority",
        "retry",
        "run_late",
        "timeout",
    )

    def __init__(
        self,
        priority: float,
        timeout: float | None,
        retry: RetryPolicy,
        crash_retries: int,
        kind: str,
        key: str | Callable[..., Any] | None,
        delay: float | None,
        at: float | None = None,
        deadline: float | None = None,
        deadline_at: float | None = None,
        run_late: bool = False,
        after: tuple[Any, ...] = (),
        batch: str = "",
    ) -> None:
        if isinstance(crash_retries, bool) or not isinstance(crash_retries, int):
            raise TypeError(f"crash_retries must be an int, not {crash_retries!r}")
        if crash_retries < 0:
            raise ValueError("crash_retries must be >= 0")
        if not isinstance(kind, str):
            raise TypeError(f"kind must be a string, not {kind!r}")
        if key is not None and not (isinstance(key, str) or callable(key)):
            raise TypeError("key must be a string, a callable (for map) or None")
        self.priority = _priority(priority)
        self.timeout = _timeout(timeout)
        self.retry = retry
        self.crash_retries = crash_retries
        self.kind = kind
        self.key = key
        self.delay = _delay(delay)
        self.at = _at(at)
        if self.delay is not None and self.at is not None:
            raise ValueError("give delay or at, not both")
        if not isinstance(run_late, bool):
            raise TypeError(f"run_late must be True or False, not {run_late!r}")
        self.deadline = deadline  # seconds from each submit
        self.deadline_at = deadline_at  # a wall-clock time
        self.run_late = run_late
        self.after = after  # futures every task of these options waits for (checked)
        self.batch = batch  # the batch its tasks belong to (pool.batch(name))
        # What the dispatcher sees of these options: equal signatures share one id.
        self._signature = (self.priority, self.timeout, retry, crash_retries, kind, run_late, batch)

    def message(self, opts_id: int) -> p.Options:
        retry = self.retry
        retry_on = dumps(retry.retry_on, "retry_on") if retry.max_attempts > 1 else None
        from .._errors import TaskTimeoutError

        retry_timeouts = retry.max_attempts > 1 and issubclass(TaskTimeoutError, retry.retry_on)
        return p.Options(
            p.C_OPTIONS,
            opts_id,
            self.priority,
            self.timeout or 0.0,
            retry.max_attempts,
            retry.initial_delay,
            retry.factor,
            retry.max_delay,
            retry.jitter,
            self.crash_retries,
            self.kind,
            retry_on,
            retry_timeouts,
            self.run_late,
            self.batch,
        )

    def signature(self) -> tuple[Any, ...]:
        return self._signature

    def not_before(self) -> float:
        """Dispatcher-clock time before which the task must not run (0.0: now)."""
        if self.delay:
            return time.monotonic() + self.delay
        if self.at is not None:
            return time.monotonic() + (self.at - time.time())
        return 0.0

    def deadline_time(self) -> float:
        """Dispatcher-clock time by which the task must start (0.0: no deadline)."""
        if self.deadline is not None:
            return time.monotonic() + self.deadline
        if self.deadline_at is not None:
            return time.monotonic() + (self.deadline_at - time.time())
        return 0.0

    def replace(self, **changes: Any) -> _Options:
        values = {name: getattr(self, name) for name in self.__slots__ if name != "_signature"}
        values.update(changes)
        return _Options(**values)


# --- Pool(...) arguments -------------------------------------------------------------------


def _open_store(path: str | os.PathLike[str] | None) -> Any:
    if path is None:
        return None
    from ._store import Store

    return Store(path)


def _init_timeout(value: Any) -> float:
    """Pool's ``init_timeout`` as the dispatcher takes it (0.0: no limit)."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"init_timeout must be a number of seconds > 0 or None, not {value!r}")
    return 0.0 if value == float("inf") else float(value)


def _check(
    max_queue: int,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    aging_rate: float,
    retry: RetryPolicy | None,
) -> None:
    """Raise ``ValueError`` (``TypeError``) for an out-of-range ``Pool`` argument."""
    if max_queue < 0:
        raise ValueError("max_queue must be >= 0")
    if max_tasks_per_child is not None and max_tasks_per_child < 1:
        raise ValueError("max_tasks_per_child must be >= 1")
    if max_memory_per_child is not None and max_memory_per_child < 1:
        raise ValueError("max_memory_per_child must be >= 1 byte")
    if aging_rate < 0:
        raise ValueError("aging_rate must be >= 0")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError("retry must be a mppool.RetryPolicy")


def _retry_policy(retries: int | RetryPolicy | None) -> RetryPolicy:
    """``options(retries=...)``: a number of retries with the default backoff, or a policy."""
    if retries is None:
        return RetryPolicy.none()
    if isinstance(retries, RetryPolicy):
        return retries
    if isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0:
        return RetryPolicy(max_attempts=retries + 1)
    raise ValueError(f"retries must be an int >= 0 or a RetryPolicy, not {retries!r}")


def _shares(shares: Any) -> dict[str, float]:
    """``Pool(shares=...)``: kind -> a weight > 0."""
    if shares is None:
        return {}
    if not isinstance(shares, dict):
        raise TypeError(f"shares must be a dict of kind -> weight, not {shares!r}")
    out = {}
    for kind, weight in shares.items():
        if not isinstance(kind, str):
            raise TypeError(f"shares: a kind must be a string, not {kind!r}")
        number = _number(f"shares[{kind!r}]", weight)
        if not 0 < number < math.inf:
            raise ValueError(f"shares[{kind!r}] must be a finite weight > 0, not {weight!r}")
        out[kind] = number
    return out


def _circuit_breakers(breakers: Any) -> dict[str, tuple[int, float, float, bool]]:
    """``Pool(circuit_breakers=...)``: kind -> ``CircuitBreaker.knobs()``."""
    from .._breaker import CircuitBreaker

    if breakers is None:
        return {}
    if not isinstance(breakers, dict):
        raise TypeError(
            f"circuit_breakers must be a dict of kind -> CircuitBreaker, not {breakers!r}"
        )
    out = {}
    for kind, breaker in breakers.items():
        if not isinstance(kind, str):
            raise TypeError(f"circuit_breakers: a kind must be a string, not {kind!r}")
        if not isinstance(breaker, CircuitBreaker):
            raise TypeError(
                f"circuit_breakers[{kind!r}] must be a mppool.CircuitBreaker, not {breaker!r}"
            )
        out[kind] = breaker.knobs()
    return out
