"""Helpers shared by the pytest-benchmark suites (kept out of conftest so tests can import them)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import workloads as wl
from bench.adapters import MppoolAdapter, MultiprocessingAdapter, PoolAdapter

#: Worker processes per pool. The targets are defined for 2 workers.
WORKERS = 2

#: Libraries benchmarked side by side; ``pool`` fixtures are parametrised over these.
LIBS = ("mppool", "multiprocessing")


def make_pool(lib: str) -> PoolAdapter:
    """Create a warmed-up pool of :data:`WORKERS` workers for ``lib``.

    Skips the test when mppool is not importable, so that the peer half still runs.

    Args:
        lib: ``"mppool"`` or ``"multiprocessing"``.

    Returns:
        A pool adapter whose workers have all started and imported the workload module.
    """
    if lib == "mppool":
        pytest.importorskip("mppool")
        pool: PoolAdapter = MppoolAdapter(WORKERS)
    else:
        pool = MultiprocessingAdapter(WORKERS)
    handles = [pool.submit(wl.spin, 0.01) for _ in range(2 * WORKERS)]
    for handle in handles:
        pool.result(handle, 30)
    return pool


def median_seconds(benchmark: Any) -> float | None:
    """Median round time of a finished benchmark, or None when benchmarking is disabled.

    Args:
        benchmark: The pytest-benchmark fixture, after its run.

    Returns:
        Seconds, or None.
    """
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return None
    return float(stats.stats.median)


def round_times(benchmark: Any) -> list[float]:
    """All round times of a finished benchmark (empty when benchmarking is disabled).

    Args:
        benchmark: The pytest-benchmark fixture, after its run.

    Returns:
        Round times in seconds.
    """
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return []
    return list(stats.stats.data)
