"""Handles for recurring tasks (``Pool.schedule_every`` and ``Pool.schedule_cron``).

The timers live in the dispatcher; a handle is the user's view: it learns of each run
when the dispatcher starts it, and keeps that run's outcome in a bounded history.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import _protocol as p
from ._serial import decode_error, decode_value, dumps

if TYPE_CHECKING:
    from ._core import _Core
    from ._options import _Options

HISTORY = 100  # outcomes kept per schedule


def validate_cron(expr: str) -> None:
    """Raise ``ValueError`` unless ``expr`` is a cron expression croniter accepts."""
    from croniter import croniter

    if not isinstance(expr, str) or not croniter.is_valid(expr):
        raise ValueError(f"not a valid cron expression: {expr!r}")


def check_interval(interval: Any) -> float:
    """``schedule_every``'s interval: a finite number of seconds > 0."""
    if isinstance(interval, bool) or not isinstance(interval, int | float):
        raise TypeError(f"interval must be a number of seconds, not {interval!r}")
    if not 0 < interval < math.inf:
        raise ValueError(f"interval must be a finite number of seconds > 0, not {interval!r}")
    return float(interval)


def first_run(interval: float, cron: str, now: float) -> float:
    """Wall-clock time of a new schedule's first run (the dispatcher keeps the real clock)."""
    if cron:
        from croniter import croniter

        return float(croniter(cron, now).get_next(float))
    return now + interval


@dataclass(frozen=True, slots=True)
class Run:
    """One finished run of a schedule.

    Attributes:
        task_id: the run's task id (negative: made by the dispatcher).
        ok: whether it succeeded.
        value: its result, if it succeeded.
        error: its exception, if it failed.
    """

    task_id: int
    ok: bool
    value: Any = None
    error: BaseException | None = None


class Schedule:
    """A recurring task. Cancel it with :meth:`cancel`; inspect its runs meanwhile."""

    def __init__(self, core: _Core, schedule_id: int, description: str) -> None:
        self._core = core
        self._owner: Any = None  # the Pool, kept alive while this handle is
        self.id = schedule_id
        self.description = description
        self._lock = threading.Lock()
        self._history: deque[Run] = deque(maxlen=HISTORY)
        self._next_run: float | None = None
        self._runs = 0
        self._skipped = 0
        self._cancelled = False
        self._changed = threading.Condition(self._lock)

    @property
    def next_run(self) -> float | None:
        """Wall-clock time (``time.time()``) of the next run, or None once cancelled."""
        return None if self._cancelled else self._next_run

    @property
    def runs(self) -> int:
        """Runs started so far."""
        return self._runs

    @property
    def skipped(self) -> int:
        """Firings skipped because the previous run was still queued or running."""
        return self._skipped

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def history(self) -> list[Run]:
        """Finished runs, oldest first (the last ``HISTORY`` of them)."""
        with self._lock:
            return list(self._history)

    def results(self) -> list[Any]:
        """Values of the successful runs kept in the history."""
        return [r.value for r in self.history() if r.ok]

    def errors(self) -> list[BaseException]:
        """Exceptions of the failed runs kept in the history."""
        return [r.error for r in self.history() if r.error is not None]

    def wait_for_runs(self, count: int, timeout: float | None = None) -> bool:
        """Block until ``count`` runs have finished in total; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._finished >= count, timeout)

    _finished = 0

    def cancel(self) -> bool:
        """Stop firing. A run already started finishes. Returns False if already cancelled."""
        if self._cancelled:
            return False
        self._cancelled = True
        self._core.schedules.cancel(self.id)
        return True

    def _fired(self, task_id: int, next_run: float, skipped: int) -> _RunEntry:
        self._next_run = next_run or None
        self._runs += 1
        self._skipped = skipped
        return _RunEntry(self, task_id)

    def _record(self, run: Run) -> None:
        with self._changed:
            self._history.append(run)
            self._finished += 1
            self._changed.notify_all()

    def __repr__(self) -> str:
        return (
            f"<mppool.Schedule {self.description} runs={self._runs} "
            f"next_run={self.next_run} cancelled={self._cancelled}>"
        )


class _RunEntry:
    """Receives the result of one run (registered with the reader thread by task id)."""

    __slots__ = ("handle", "task_id")

    def __init__(self, handle: Schedule, task_id: int) -> None:
        self.handle = handle
        self.task_id = task_id

    def _mppool_resolve(self, status: int, attempts: int, duration: float, payload: bytes) -> None:
        try:
            if status == p.OK:
                run = Run(self.task_id, True, value=decode_value(payload))
            elif status == p.CANCELLED:
                return
            else:
                run = Run(self.task_id, False, error=decode_error(status, attempts, payload))
        except Exception as exc:
            run = Run(self.task_id, False, error=exc)
        self.handle._record(run)


class Schedules:
    """A pool's schedules: made here, fired by the dispatcher, runs delivered to handles."""

    def __init__(self, core: _Core) -> None:
        self._core = core
        self._handles: dict[int, Schedule] = {}
        self._refs: dict[int, tuple[int, int]] = {}  # the function and options ids it holds

    def add(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: _Options,
        interval: float,
        cron: str,
        description: str,
    ) -> Schedule:
        core = self._core
        core.check_open()
        fn_id = core.catalog.function_id(fn)
        opts_id = core.catalog.options_id(opts)
        try:
            payload = dumps((args, kwargs or None), "the arguments of a scheduled task")
        except BaseException:
            core.catalog.release(fn_id, opts_id)
            raise
        schedule_id = next(core.ids)
        handle = Schedule(core, schedule_id, description)
        handle._next_run = first_run(interval, cron, time.time())
        self._handles[schedule_id] = handle
        self._refs[schedule_id] = (fn_id, opts_id)
        core.send(p.Schedule(p.C_SCHEDULE, schedule_id, fn_id, opts_id, interval, cron, payload))
        return handle

    def cancel(self, schedule_id: int) -> None:
        self._handles.pop(schedule_id, None)
        refs = self._refs.pop(schedule_id, None)
        core = self._core
        if core.alive():
            core.send(p.Unschedule(p.C_UNSCHEDULE, schedule_id))
        if refs is not None:
            core.catalog.release(*refs)

    def fired(self, schedule_id: int, task_id: int, next_run: float, skipped: int) -> Any:
        """The dispatcher started a run: the entry that will receive its result, if any."""
        handle = self._handles.get(schedule_id)
        if handle is None:
            return None
        return handle._fired(task_id, next_run, skipped)
