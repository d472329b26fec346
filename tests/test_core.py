"""The core engine through the public API: workers, priorities, stealing, map, errors."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import mppool
from mppool._client import _map, _planner

from . import tasks
from .conftest import PoolTracker, wait_until, worker_pids

T = 60  # seconds any wait in these tests may take

RESULT_TIMEOUT = 60


def test_public_names_are_exported_and_sorted() -> None:
    names = {n for n in dir(mppool) if not n.startswith("_")} - {"annotations", "TYPE_CHECKING"}
    # Submodules imported on purpose (``import mppool.joblib``) are not names of the package.
    public = {n for n in names if not isinstance(getattr(mppool, n), types.ModuleType)}
    assert callable(mppool.serve) and mppool.Server  # imported lazily (optional aiohttp)
    assert set(mppool.__all__) - {"__version__"} == public
    assert mppool.__all__ == sorted(mppool.__all__)
    for name in (
        "WorkerCrashedError",
        "TaskTimeoutError",
        "PoolClosedError",
        "BrokenPoolError",
        "QueueFullError",
    ):
        assert issubclass(getattr(mppool, name), mppool.MppoolError)
    assert issubclass(mppool.TaskTimeoutError, TimeoutError)


def test_pool_is_an_executor(pool: mppool.Pool) -> None:
    assert isinstance(pool, concurrent.futures.Executor)
    fut = pool.submit(tasks.add, 2, 3)
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=RESULT_TIMEOUT) == 5


@pytest.mark.parametrize("n", [1, 2, 4])
def test_exactly_n_workers_also_after_thousands_of_tasks(make_pool: PoolTracker, n: int) -> None:
    pool = make_pool(n)
    assert len(worker_pids(pool)) == n
    assert len(pool.stats().workers) == n
    results = list(pool.map(tasks.square, range(3000), chunksize=1, timeout=T))
    assert results == [x * x for x in range(3000)]
    futs = [pool.submit(tasks.getpid) for _ in range(2000)]
    pids_used = {f.result(timeout=RESULT_TIMEOUT) for f in futs}
    live = worker_pids(pool)
    assert len(live) == n
    assert pids_used <= set(live)
    assert {w.pid for w in pool.stats().workers} == set(live)


def test_gated_single_worker_runs_queue_in_priority_order_fifo_within(
    make_pool: PoolTracker, fifos: object, tmp_path: Path
) -> None:
    make_fifo = fifos
    started, gate = make_fifo("started"), make_fifo("gate")  # type: ignore[operator]
    pool = make_pool(1)
    blocker = pool.submit(tasks.gated, started.path, gate.path)
    started.take(1)  # the only worker is now held
    log = str(tmp_path / "order.log")
    priorities = [0, 3, 1, 3, 0, 7, 1, 7, 3, 0]
    futs = [
        pool.options(priority=p).submit(tasks.record, log, f"{p}:{i}")
        for i, p in enumerate(priorities)
    ]
    assert pool.stats().queued == len(priorities)
    gate.post(1)
    blocker.result(timeout=RESULT_TIMEOUT)
    for f in futs:
        f.result(timeout=RESULT_TIMEOUT)
    ran = [line.split()[1] for line in Path(log).read_text().splitlines()]
    expected = [f"{p}:{i}" for i, p in sorted(enumerate(priorities), key=lambda x: (-x[1], x[0]))]
    assert ran == expected


def test_gated_workers_each_run_in_priority_order(
    make_pool: PoolTracker, fifos: object, tmp_path: Path
) -> None:
    make_fifo = fifos
    started, gate = make_fifo("started"), make_fifo("gate")  # type: ignore[operator]
    pool = make_pool(2)
    blockers = [pool.submit(tasks.gated, started.path, gate.path) for _ in range(2)]
    started.take(2)  # both workers are held
    log = str(tmp_path / "order.log")
    priorities = [i % 5 for i in range(40)]
    # Tasks of 3 ms: longer than the pipe window, so none is batched behind another. (Tiny
    # tasks of one priority level are batched up to 1 ms of work per pipe; such a batch may
    # still be running while a peer starts the next level: a bounded, documented inversion.)
    futs = [
        pool.options(priority=p).submit(tasks.record, log, (p, i), 0.003)
        for i, p in enumerate(priorities)
    ]
    # Every submission has reached the dispatcher (stats travels the same ordered pipe)
    # before the gate opens; otherwise late arrivals would legitimately run late.
    assert pool.stats().queued == 40
    gate.post(2)
    for f in blockers + futs:
        f.result(timeout=RESULT_TIMEOUT)
    per_pid: dict[str, list[tuple[int, int]]] = {}
    for line in Path(log).read_text().splitlines():
        pid, rest = line.split(" ", 1)
        per_pid.setdefault(pid, []).append(eval(rest))  # "(p, i)" written by tasks.record
    assert sum(len(v) for v in per_pid.values()) == 40
    # Two workers run concurrently, so start order across them interleaves; but neither ever
    # starts a task while a more urgent one is still queued for it.
    for seq in per_pid.values():
        prios = [p for p, _ in seq]
        assert prios == sorted(prios, reverse=True), repr(per_pid)


def test_skewed_work_is_stolen_from_a_busy_worker(make_pool: PoolTracker) -> None:
    pool = make_pool(2)
    list(pool.map(tasks.spin, [0.001] * 20, chunksize=1, timeout=T))  # teach it spin's duration
    heavy = pool.submit(tasks.spin, 0.5)
    light = [pool.submit(tasks.spin, 0.001) for _ in range(200)]
    for f in [heavy, *light]:
        f.result(timeout=RESULT_TIMEOUT)
    stats = pool.stats()
    assert stats.steals >= 1 and stats.stolen_tasks >= 1


def test_lambdas_and_closures_run(pool: mppool.Pool) -> None:
    offset = 17

    def closure(x: int) -> int:
        return x + offset

    assert pool.submit(lambda x: x * 3, 5).result(timeout=RESULT_TIMEOUT) == 15
    assert pool.submit(closure, 1).result(timeout=RESULT_TIMEOUT) == 18
    assert list(pool.map(lambda x: -x, range(5), timeout=T)) == [0, -1, -2, -3, -4]
    # A lambda as an argument needs cloudpickle too.
    assert pool.submit(tasks.kwargs_echo, f=None).result(timeout=RESULT_TIMEOUT) == (
        (),
        {"f": None},
    )
    apply = pool.submit(lambda f, x: f(x), lambda y: y + 1, 1)
    assert apply.result(timeout=RESULT_TIMEOUT) == 2


def test_functions_and_classes_defined_in_main_work(tmp_path: Path) -> None:
    script = tmp_path / "main_script.py"
    script.write_text(
        textwrap.dedent("""
        import dataclasses
        import mppool

        @dataclasses.dataclass
        class Point:
            x: int
            y: int

        def norm1(p):
            return Point(abs(p.x), abs(p.y))

        if __name__ == "__main__":
            with mppool.Pool(2) as pool:
                got = list(pool.map(norm1, [Point(-1, 2), Point(3, -4)], timeout=60))
                print([(p.x, p.y) for p in got], pool.submit(norm1, Point(-5, -5)).result(60).x)
    """)
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=RESULT_TIMEOUT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[(1, 2), (3, 4)] 5"


def test_exceptions_keep_their_type_and_carry_the_remote_traceback(pool: mppool.Pool) -> None:
    with pytest.raises(tasks.CustomError) as info:
        pool.submit(tasks.raise_custom, 42).result(timeout=RESULT_TIMEOUT)
    assert info.value.code == 42
    cause = info.value.__cause__
    assert isinstance(cause, mppool.RemoteTraceback)
    assert "raise_custom" in cause.tb and "CustomError" in cause.tb
    # The pool keeps serving.
    assert pool.submit(tasks.square, 9).result(timeout=RESULT_TIMEOUT) == 81


def test_kwargs_and_positional_only(pool: mppool.Pool) -> None:
    fut = pool.submit(tasks.kwargs_echo, 1, 2, fn="x", self=3)
    assert fut.result(timeout=RESULT_TIMEOUT) == ((1, 2), {"fn": "x", "self": 3})


def test_map_is_ordered_and_accepts_several_iterables(pool: mppool.Pool) -> None:
    assert list(pool.map(tasks.square, range(10_000), timeout=T)) == [x * x for x in range(10_000)]
    assert list(pool.map(tasks.add, range(5), range(100, 105), timeout=T)) == [
        100,
        102,
        104,
        106,
        108,
    ]
    assert list(pool.map(tasks.add, range(5), range(3), timeout=T)) == [0, 2, 4]  # like zip
    assert list(pool.map(tasks.square, [], timeout=T)) == []


def test_imap_unordered_returns_everything(pool: mppool.Pool) -> None:
    got = list(pool.imap_unordered(tasks.square, range(5000), timeout=T))
    assert sorted(got) == [x * x for x in range(5000)]


def test_map_raises_at_the_failing_position(pool: mppool.Pool) -> None:
    it = pool.map(tasks.fail_at, range(100), itertools.repeat(37), timeout=T)
    seen = []
    with pytest.raises(KeyError, match="item 37"):
        for x in it:
            seen.append(x)
    assert seen == list(range(37))
    assert pool.submit(tasks.square, 3).result(timeout=RESULT_TIMEOUT) == 9


def test_map_over_an_endless_generator_is_lazy_and_bounded(pool: mppool.Pool) -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    # At most a window of chunks in flight, plus the chunk whose results are being yielded.
    bound = (_map.WINDOW_PER_WORKER * pool.workers + 1) * _planner.MAX_CHUNK_ITEMS
    it = pool.map(tasks.square, endless(), timeout=T)
    first = [next(it) for _ in range(100)]
    assert first == [i * i for i in range(100)]
    assert pulled <= 100 + bound
    consumed = 100
    for _ in range(200_000):
        next(it)
        consumed += 1
    assert pulled <= consumed + bound
    it.close()  # type: ignore[attr-defined]


def test_map_timeout(pool: mppool.Pool) -> None:
    it = pool.map(tasks.spin, [1.0], timeout=0.2)
    with pytest.raises(TimeoutError):
        next(it)


def test_run_in_executor(pool: mppool.Pool) -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(*(loop.run_in_executor(pool, tasks.square, i) for i in range(20)))
        )

    assert asyncio.run(main()) == [i * i for i in range(20)]


def test_options_view_has_the_same_methods(pool: mppool.Pool) -> None:
    view = pool.options(priority=5, timeout=30.0, retries=2, kind="k")
    assert isinstance(view, mppool.PoolView)
    assert view.submit(tasks.square, 4).result(timeout=RESULT_TIMEOUT) == 16
    assert list(view.map(tasks.square, range(4), timeout=T)) == [0, 1, 4, 9]
    assert sorted(view.imap_unordered(tasks.square, range(4), timeout=T)) == [0, 1, 4, 9]
    assert view.options(priority=1).submit(tasks.add, 1, 1).result(timeout=RESULT_TIMEOUT) == 2
    with pytest.raises(ValueError):
        pool.options(retries=-1)
    with pytest.raises(ValueError):
        pool.options(timeout=0)


def test_stats_snapshot(pool: mppool.Pool) -> None:
    list(pool.map(tasks.square, range(100), chunksize=10, timeout=T))
    futs = [pool.submit(tasks.square, i) for i in range(50)]
    for f in futs:
        f.result(timeout=RESULT_TIMEOUT)
    # A worker that got no task may still be starting on a loaded machine: wait for it.
    assert wait_until(lambda: all(w.state == "idle" for w in pool.stats().workers))
    stats = pool.stats()
    assert isinstance(stats, mppool.PoolStats)
    assert stats.submitted == 60 and stats.completed == 60
    assert stats.queued == 0 and stats.running == 0 and stats.failed == 0
    assert len(stats.workers) == 2
    assert sum(w.tasks_done for w in stats.workers) == 60
    for w in stats.workers:
        assert w.pid > 0 and w.state == "idle" and w.busy_seconds >= 0, w
    with pytest.raises(AttributeError):
        stats.completed = 0  # type: ignore[misc]


def test_submit_after_shutdown_raises(make_pool: PoolTracker) -> None:
    pool = make_pool(1)
    pool.shutdown()
    with pytest.raises(mppool.PoolClosedError):
        pool.submit(tasks.square, 1)
    with pytest.raises(mppool.PoolClosedError):
        pool.map(tasks.square, [1], timeout=T)
    pool.shutdown()  # a second call is harmless


def test_context_manager_waits_for_work(make_pool: PoolTracker) -> None:
    with make_pool(2) as pool:
        futs = [pool.submit(tasks.spin, 0.01) for _ in range(10)]
    assert all(f.done() and f.result() == 0.01 for f in futs)


def test_cancel_queued_future(make_pool: PoolTracker, fifos: object) -> None:
    make_fifo = fifos
    started, gate = make_fifo("started"), make_fifo("gate")  # type: ignore[operator]
    pool = make_pool(1)
    blocker = pool.submit(tasks.gated, started.path, gate.path)
    started.take(1)
    queued = pool.submit(tasks.square, 3)
    assert queued.cancel()
    gate.post(1)
    blocker.result(timeout=RESULT_TIMEOUT)
    assert queued.cancelled()
    assert pool.submit(tasks.square, 4).result(timeout=RESULT_TIMEOUT) == 16
    stats = pool.stats()
    assert stats.cancelled == 1 and stats.completed == 2


def test_shutdown_cancel_futures(make_pool: PoolTracker, fifos: object) -> None:
    make_fifo = fifos
    started, gate = make_fifo("started"), make_fifo("gate")  # type: ignore[operator]
    pool = make_pool(1)
    blocker = pool.submit(tasks.gated, started.path, gate.path)
    started.take(1)
    queued = [pool.submit(tasks.square, i) for i in range(5)]
    pool.shutdown(wait=False, cancel_futures=True)
    gate.post(1)
    assert blocker.result(timeout=RESULT_TIMEOUT) > 0
    concurrent.futures.wait(queued, timeout=RESULT_TIMEOUT)
    assert all(f.cancelled() for f in queued)
    pool.shutdown(wait=True)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        mppool.Pool(0)
    with pytest.raises(ValueError):
        mppool.Pool(2, max_queue=-1)
    with pytest.raises(TypeError):
        mppool.Pool(2, retry=3)  # type: ignore[arg-type]


def test_not_callable_is_a_type_error(pool: mppool.Pool) -> None:
    with pytest.raises(TypeError):
        pool.submit(42)  # type: ignore[arg-type]
    assert pool.submit(tasks.square, 2).result(timeout=RESULT_TIMEOUT) == 4


def test_workers_run_with_the_interpreters_default_gc_settings(pool: mppool.Pool) -> None:
    import gc

    # The dispatcher tunes its own collector; workers (forked from it) must not inherit that.
    assert pool.submit(tasks.gc_threshold).result(timeout=RESULT_TIMEOUT) == gc.get_threshold()
