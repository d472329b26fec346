"""Scheduling policies with real processes: deadlines, fair share, circuit breakers.

The pure decisions are tested in ``test_policies`` on a fake clock; these check that the
pool carries them end to end (options, messages, errors, stats) and keeps serving.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

import mppool

from . import tasks
from .conftest import PoolTracker

T = 60


def test_deadlines_order_a_level_and_fail_what_cannot_start_in_time(
    make_pool: PoolTracker, fifos: Any
) -> None:
    pool = make_pool(1)
    started, gate = fifos("started"), fifos("gate")
    blocker = pool.submit(tasks.gated, started.path, gate.path)
    started.take(1)  # the only worker is held: everything below waits
    later = pool.options(deadline=60).submit(tasks.started_at, "later")
    sooner = pool.options(deadline=datetime.datetime.now() + datetime.timedelta(seconds=30))
    early = sooner.submit(tasks.started_at, "sooner")
    plain = pool.submit(tasks.started_at, "none")
    doomed = pool.options(deadline=0.3).submit(tasks.square, 2)
    doomed_map = pool.options(deadline=0.3).map(tasks.square, range(10))
    relaxed = pool.options(deadline=0.3, run_late=True).submit(tasks.started_at, "relaxed")
    err = doomed.exception(timeout=T)
    assert isinstance(err, mppool.DeadlineExceededError) and err.waited > 0.2
    with pytest.raises(mppool.DeadlineExceededError):
        next(iter(doomed_map))
    gate.post()
    blocker.result(timeout=T)
    starts = [f.result(timeout=T) for f in (later, early, plain, relaxed)]
    order = [tag for (tag,), _, _ in sorted(starts, key=lambda s: s[1])]
    # The earliest deadline first; relaxed (deadline passed, run_late) is the earliest.
    assert order == ["relaxed", "sooner", "later", "none"]
    assert pool.submit(tasks.square, 7).result(timeout=T) == 49  # the pool serves on
    stats = pool.stats()
    assert stats.expired == 2 and stats.failed == 2
    with pytest.raises(ValueError, match="deadline"):
        pool.options(deadline=0)
    with pytest.raises(TypeError, match="run_late"):
        pool.options(run_late="yes")  # type: ignore[arg-type]
