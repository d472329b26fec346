"""Uniform ~2 ms CPU tasks via ``map``: efficiency against the tasks' own CPU time."""

from __future__ import annotations

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


@pytest.mark.benchmark(group="uniform-2ms")
def test_uniform_cpu_map(
    benchmark: BenchmarkFixture, pool: PoolAdapter, durations: list[float]
) -> None:
    """``map(spin_cpu, durations)``; efficiency = (task CPU / workers) / parallel time.

    The task CPU time is what the tasks measured in the workers in the last timed round.
    """
    results = benchmark.pedantic(
        pool.map, args=(wl.spin_cpu, durations), rounds=3, iterations=1, warmup_rounds=1
    )
    assert [r[0] for r in results] == durations
    cpu = sum(r[1] for r in results)
    benchmark.extra_info["task_cpu_seconds"] = round(cpu, 4)
    median = median_seconds(benchmark)
    if median:
        benchmark.extra_info["efficiency"] = round(cpu / WORKERS / median, 4)
