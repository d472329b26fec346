"""Promises the README makes, each checked where it used to break.

Priority order with several workers, no silent loss in ``map``, exceptions that keep their
message, functions that see their globals as they are, and the small things a new user
runs into first.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

import mppool

from . import tasks
from .conftest import Fifo, PoolTracker

T = 60
PRIORITIES = [0, 5, 1, 5, 9, 0, 1]


def _hold(pool: mppool.Pool, fifos: Any, n: int, tag: str) -> tuple[Fifo, list[Any]]:
    started, gate = fifos(f"started-{tag}"), fifos(f"gate-{tag}")
    blockers = [pool.submit(tasks.gated, started.path, gate.path) for _ in range(n)]
    started.take(n)
    return gate, blockers


def check_start_order(starts: list[tuple[Any, float, int]], workers: int) -> None:
    """Each worker starts its tasks in priority order (FIFO among equals), and no task
    starts after the task ``workers`` places behind it in that order has started."""
    expected = sorted((tag for tag, _, _ in starts), key=lambda t: (-t[0], t[1]))
    position = {tag: i for i, tag in enumerate(expected)}
    by_time = sorted(starts, key=lambda s: s[1])
    per_pid: dict[int, list[int]] = {}
    for tag, _, pid in by_time:
        per_pid.setdefault(pid, []).append(position[tag])
    for pid, seq in per_pid.items():
        assert seq == sorted(seq), f"worker {pid} started {seq}: {by_time}"
    start_rank = {position[tag]: i for i, (tag, _, _) in enumerate(by_time)}
    for pos, at in start_rank.items():
        behind = start_rank.get(pos + workers)
        assert behind is None or behind > at, f"#{pos} started after #{pos + workers}: {by_time}"


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("measured", [False, True], ids=["new-function", "measured-short"])
def test_priority_order_holds_with_several_workers(
    make_pool: PoolTracker, fifos: Any, n: int, measured: bool
) -> None:
    pool = make_pool(n)
    if measured:  # teach the pool that started_at is short: it may then batch and prefetch it
        list(pool.map(tasks.started_at, range(50), chunksize=1, timeout=T))
    for trial in range(5):
        gate, blockers = _hold(pool, fifos, n, f"{trial}")
        # A function the pool has never measured, or the measured one.
        fn = tasks.started_at if measured else functools.partial(tasks.started_at, trial)
        futs = [
            pool.options(priority=p).submit(fn, p, i) for i, p in enumerate(PRIORITIES)
        ]
        assert pool.stats().queued == len(PRIORITIES)  # all reached the dispatcher
        gate.post(n)
        for b in blockers:
            b.result(timeout=T)
        starts = [f.result(timeout=T) for f in futs]
        if not measured:
            starts = [(tag[1:], at, pid) for tag, at, pid in starts]
        check_start_order(starts, n)
