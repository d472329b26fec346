"""Uniform ~2 ms CPU tasks via ``map``: speedup efficiency against an in-process serial run."""

from __future__ import annotations

import time

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench import workloads as wl
from bench.adapters import PoolAdapter
from bench.benchutil import WORKERS, median_seconds

TASKS = 400
EACH = 0.002


@pytest.fixture(scope="module")
def durations() -> list[float]:
    """The task list: TASKS identical durations."""
    return wl.uniform_durations(TASKS, EACH)


@pytest.fixture(scope="module")
def serial_seconds(durations: list[float]) -> float:
    """CPU time of the same calls run in this thread, without a pool (measured once).

    Thread CPU time equals wall time on an idle machine but is not inflated by other load.
    """
    start = time.thread_time()
    for d in durations:
        wl.spin(d)
    return time.thread_time() - start


@pytest.mark.benchmark(group="uniform-2ms")
def test_uniform_cpu_map(
    benchmark: BenchmarkFixture,
    pool: PoolAdapter,
    durations: list[float],
    serial_seconds: float,
) -> None:
    """``map(spin, durations)``; efficiency = serial / (workers x parallel time)."""
    results = benchmark.pedantic(
        pool.map, args=(wl.spin, durations), rounds=3, iterations=1, warmup_rounds=1
    )
    assert results == durations
    benchmark.extra_info["serial_seconds"] = round(serial_seconds, 4)
    median = median_seconds(benchmark)
    if median:
        benchmark.extra_info["efficiency"] = round(serial_seconds / (WORKERS * median), 4)
