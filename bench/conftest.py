"""Fixtures for the pytest-benchmark suites in this folder (``pytest bench/ --benchmark-only``).

These suites record figures; they assert only that results are correct, never a speed target.
Ratios against the targets come from ``python -m bench.compare``, which measures every library in
one run on the same machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench import workloads as wl
from bench.adapters import PoolAdapter, prepare_environment, reap_descendants
from bench.benchutil import LIBS, WORKERS, make_pool


def pytest_configure(config: pytest.Config) -> None:
    """Prepare every process the pools will start, before any pool exists."""
    prepare_environment()
    wl.publish_calibration()


@pytest.fixture(scope="module", params=LIBS)
def pool(request: pytest.FixtureRequest) -> Iterator[PoolAdapter]:
    """A warmed-up pool per library, shared by the tests of one module."""
    adapter = make_pool(request.param)
    try:
        yield adapter
    finally:
        adapter.shutdown()
        reap_descendants(timeout=2.0, ignore=("resource_tracker",))


@pytest.fixture(scope="module")
def mppool_pool() -> Iterator[Any]:
    """A raw, warmed-up ``mppool.Pool`` (for benchmarks that read ``stats()``)."""
    mppool = pytest.importorskip("mppool")
    raw = mppool.Pool(workers=WORKERS)
    try:
        list(raw.map(wl.spin, [0.005] * (4 * WORKERS)))
        yield raw
    finally:
        raw.shutdown(wait=True)
        reap_descendants(timeout=2.0, ignore=("resource_tracker",))
