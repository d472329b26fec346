"""Skewed CPU durations, heaviest last, via default ``map``: time against the lower bound.

Three shapes, as in ``python -m bench.compare``: lognormal, capped Pareto, and thousands of tiny
tasks followed by a few huge ones. Each task measures its own CPU time in the worker
(:func:`bench.workloads.spin_cpu`); the lower bound comes from those CPU times.
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench import workloads as wl
from bench.adapters import PoolAdapter
from bench.benchutil import WORKERS, median_seconds

TOTAL_SECONDS = 1.0
SEED = 1234

SHAPES = {
    "lognormal": lambda: wl.skewed_durations(2_000, TOTAL_SECONDS, SEED),
    "pareto": lambda: wl.pareto_durations(1_000, TOTAL_SECONDS, WORKERS, seed=SEED),
    "tail": lambda: wl.tail_durations(3_000, 0.0001, 3 * WORKERS, TOTAL_SECONDS),
}


@pytest.fixture(scope="module", params=list(SHAPES))
def durations(request: pytest.FixtureRequest) -> list[float]:
    """The task list of one shape: ascending, summing to TOTAL_SECONDS."""
    return SHAPES[request.param]()


@pytest.mark.benchmark(group="skewed-heaviest-last")
def test_skewed_map(benchmark: BenchmarkFixture, pool: PoolAdapter, durations: list[float]) -> None:
    """``map(spin_cpu, durations)``; extra_info holds time / lower bound (target <= 1.15).

    The bound is taken from the tasks' CPU times of the last timed round.
    """
    results = benchmark.pedantic(
        pool.map, args=(wl.spin_cpu, durations), rounds=3, iterations=1, warmup_rounds=1
    )
    assert [r[0] for r in results] == durations
    bound = wl.lower_bound([r[1] for r in results], WORKERS)
    benchmark.extra_info["lower_bound_seconds"] = round(bound, 4)
    median = median_seconds(benchmark)
    if median:
        benchmark.extra_info["time_over_lower_bound"] = round(median / bound, 4)
