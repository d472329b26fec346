"""Heavy-tailed CPU durations, heaviest last, via default ``map``: time against the lower bound."""

from __future__ import annotations

import time

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench import workloads as wl
from bench.adapters import PoolAdapter
from bench.benchutil import WORKERS, median_seconds

TASKS = 2_000
TOTAL_SECONDS = 1.0
SEED = 1234


@pytest.fixture(scope="module")
def durations() -> list[float]:
    """The task list: heavy-tailed, ascending, summing to TOTAL_SECONDS."""
    return wl.skewed_durations(TASKS, TOTAL_SECONDS, SEED)


@pytest.fixture(scope="module")
def bound(durations: list[float]) -> float:
    """Lower bound on the makespan, from each task's CPU time measured in this thread."""
    measured = []
    for d in durations:
        start = time.thread_time()
        wl.spin(d)
        measured.append(time.thread_time() - start)
    return wl.lower_bound(measured, WORKERS)


@pytest.mark.benchmark(group="skewed-heaviest-last")
def test_skewed_map(
    benchmark: BenchmarkFixture, pool: PoolAdapter, durations: list[float], bound: float
) -> None:
    """``map(spin, durations)``; extra_info holds time / lower bound (target <= 1.15 for mppool)."""
    results = benchmark.pedantic(
        pool.map, args=(wl.spin, durations), rounds=3, iterations=1, warmup_rounds=1
    )
    assert results == durations
    benchmark.extra_info["lower_bound_seconds"] = round(bound, 4)
    median = median_seconds(benchmark)
    if median:
        benchmark.extra_info["time_over_lower_bound"] = round(median / bound, 4)
