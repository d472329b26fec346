"""Defects found by attacking the pool, each fixed at its root: one test per defect.

Bad input, misuse, faults from outside, and long runs: the pool must refuse what it cannot
do with a clear, typed error, lose nothing, and hold flat memory.
"""

from __future__ import annotations

import functools

import psutil
import pytest

import mppool

from . import tasks
from .conftest import PoolTracker

T = 60
MB = 1 << 20


def _rss(pool: mppool.Pool) -> tuple[int, int, int]:
    """RSS of the user process, the dispatcher, and the largest worker."""
    user = psutil.Process().memory_info().rss
    dispatcher = psutil.Process(pool.dispatcher_pid).memory_info().rss
    workers = max(psutil.Process(w.pid).memory_info().rss for w in pool.stats().workers)
    return user, dispatcher, workers


# --- 4. per-function and per-options state is bounded ----------------------------------------
@pytest.mark.slow
def test_distinct_closures_and_option_sets_hold_flat_memory(make_pool: PoolTracker) -> None:
    pool = make_pool(2)

    def run(start: int, stop: int) -> None:
        for at in range(start, stop, 5000):
            batch = range(at, at + 5000)
            futs = [pool.submit(functools.partial(tasks.add, i), 1) for i in batch]
            futs += [
                pool.options(priority=i + 0.5, kind=f"k{i}").submit(tasks.square, 2) for i in batch
            ]
            for f in futs:
                f.result(timeout=T)

    run(0, 10_000)  # warm up: every process reaches its working size
    before = _rss(pool)
    run(10_000, 110_000)
    after = _rss(pool)
    growth = [(a - b) / MB for a, b in zip(after, before, strict=True)]
    assert all(g < 8 for g in growth), f"RSS growth (MB) user, dispatcher, worker: {growth}"


def test_forgotten_functions_are_sent_again_when_used_again(make_pool: PoolTracker) -> None:
    from mppool._client import _interned

    pool = make_pool(2)
    first = functools.partial(tasks.add, 1)
    assert pool.submit(first, 1).result(timeout=T) == 2
    # Push `first` out of the tables (nothing uses it any more), then use it again.
    for i in range(_interned.MAX_FUNCTIONS + 10):
        pool.submit(functools.partial(tasks.add, i + 100), 0).result(timeout=T)
    assert pool.submit(first, 5).result(timeout=T) == 6
    core = pool._core
    assert len(core.functions.ids) <= _interned.MAX_FUNCTIONS
    assert len(core.options_table.ids) <= _interned.MAX_OPTIONS
