"""``Pool(cluster=...)`` against a real Dask ``LocalCluster``: two Dask worker processes with
one thread each, started by these tests. No mocks: tasks cross the scheduler, run in each
Dask worker's own mppool pool, and come back through Dask."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import mppool

from . import faults, tasks
from .conftest import Fifo, _fds, run_python, wait_until

distributed = pytest.importorskip("distributed")

TIMEOUT = 60.0  # the longest any blocking call here may wait


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as c:
        # Dask starts process-wide threads (its offload pool) on first use and keeps them,
        # and its connection pools grow on first use of each path: they are the cluster's,
        # so that happens here, before any test's leak baseline.
        for _ in range(2):
            with mppool.Pool(cluster=c) as pool:
                pool.submit(faults.raise_error, "warm-up").exception(TIMEOUT)
                list(pool.map(tasks.square, range(100), timeout=TIMEOUT))
                pool.cancel(pool.submit(tasks.spin, 5.0), kill=True)
                pool.stats()
        yield c


@pytest.fixture(scope="module")
def client(cluster: Any) -> Iterator[Any]:
    """A client of the tests' own, to look at the cluster."""
    with distributed.Client(cluster, set_as_default=False) as c:
        c.wait_for_workers(2, timeout=TIMEOUT)
        yield c


@pytest.fixture(scope="module")
def dask_workers(client: Any) -> dict[str, int]:
    """The Dask workers' addresses and pids (their processes belong to the cluster)."""
    pids: dict[str, int] = client.run(os.getpid)
    return pids


@pytest.fixture
def fifos(tmp_path: Any) -> Iterator[Callable[[str], Fifo]]:
    """FIFOs as in conftest, closed before ``make_cluster_pool`` checks for leaks."""
    made: list[Fifo] = []

    def make(name: str) -> Fifo:
        made.append(Fifo(str(tmp_path / name)))
        return made[-1]

    yield make
    for fifo in made:
        fifo.close()


def _not_ours(ports: set[int], folder: str) -> set[str]:
    """Descriptors that are not a cluster pool's: this process's connections to the Dask
    workers (the in-process scheduler's connection pool opens them on first use and keeps
    them: the cluster's), and the test's FIFOs in ``folder`` (closed after this check)."""
    process = psutil.Process()
    sockets = {str(c.fd) for c in process.net_connections() if c.raddr and c.raddr.port in ports}
    files = {str(f.fd) for f in process.open_files() if f.path.startswith(folder)}
    return sockets | files


@pytest.fixture
def make_cluster_pool(
    cluster: Any, client: Any, dask_workers: dict[str, int], tmp_path: Any
) -> Iterator[Any]:
    """Make cluster pools; at teardown, shut them down and check that nothing of theirs is
    left: no thread, no process beyond the cluster's own, no file descriptor but the
    cluster's, and the same Dask workers."""
    before, fds = _descendants(), _fds()
    threads = set(threading.enumerate())
    made: list[mppool.Pool] = []

    def make(**kwargs: Any) -> mppool.Pool:
        pool = mppool.Pool(cluster=cluster, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.shutdown(wait=True, cancel_futures=True, timeout=5.0)
        assert pool.client.status == "closed"  # the client it made
    assert wait_until(lambda: _descendants() <= before), (
        f"processes left: {sorted(_descendants() - before)}"
    )
    assert client.run(os.getpid) == dask_workers, "a Dask worker was lost or replaced"
    extra = [t for t in threading.enumerate() if t not in threads]
    for t in extra:
        t.join(TIMEOUT)
    assert not [t for t in extra if t.is_alive()], f"threads left: {extra}"
    ports = {int(address.rsplit(":", 1)[1]) for address in dask_workers}
    # The in-process scheduler closes its end of a client's connection just after the
    # client has gone.
    folder = str(tmp_path)
    assert wait_until(lambda: _fds() - _not_ours(ports, folder) <= fds), (
        f"file descriptors left open: {sorted(_fds() - _not_ours(ports, folder) - fds)}"
    )


def test_results_come_back_in_order(make_cluster_pool: Any) -> None:
    pool = make_cluster_pool()
    assert isinstance(pool, mppool.Pool)
    assert pool.workers == 2
    futures = [pool.submit(tasks.square, i) for i in range(50)]
    assert [f.result(TIMEOUT) for f in futures] == [i * i for i in range(50)]
    assert list(pool.map(tasks.add, range(300), range(300), timeout=TIMEOUT)) == [
        2 * i for i in range(300)
    ]
    assert sorted(pool.imap_unordered(tasks.square, range(300), timeout=TIMEOUT)) == [
        i * i for i in range(300)
    ]
    with pytest.raises(ValueError, match="boom") as info:
        pool.submit(faults.raise_error, "boom").result(TIMEOUT)
    # The node worker's traceback is the cause, as with a local pool.
    assert isinstance(info.value.__cause__, mppool.RemoteTraceback)
    assert "raise_error" in str(info.value.__cause__)


def test_both_dask_workers_get_work(make_cluster_pool: Any, fifos: Any) -> None:
    pool = make_cluster_pool()
    started, gate = fifos("started"), fifos("gate")
    # Two tasks that only finish together: they can only both start on two Dask workers
    # (one thread each), each in its own node pool (a different dispatcher: getppid).
    futures = [pool.submit(tasks.gated, started.path, gate.path) for _ in range(2)]
    started.take(2, TIMEOUT)
    gate.post(2)
    pids = [f.result(TIMEOUT) for f in futures]
    parents = {psutil.Process(pid).ppid() for pid in pids if psutil.pid_exists(pid)}
    assert len(set(pids)) == 2 and len(parents) == 2
    stats = pool.stats()
    assert len(stats.workers) == 2 and stats.target_workers == 2
    assert stats.completed == 2 and stats.submitted == 2


def test_priorities_order_queued_work(make_cluster_pool: Any, fifos: Any) -> None:
    pool = make_cluster_pool()
    started, gate = fifos("started"), fifos("gate")
    blockers = [pool.submit(tasks.gated, started.path, gate.path) for _ in range(2)]
    started.take(2, TIMEOUT)
    low = [pool.options(priority=0).submit(tasks.started_at, "low", i) for i in range(8)]
    high = [pool.options(priority=10).submit(tasks.started_at, "high", i) for i in range(8)]

    # The pool keeps two tasks per Dask thread in Dask (one running, one next): two low
    # tasks went there before the urgent ones arrived, and run first. The rest leave this
    # process by priority; each Dask worker runs what it was given in order, so a low task
    # may start on one worker while the other still runs its last highs. In submission
    # order, the next eight would be six lows and two highs.
    gate.post(2)
    for f in blockers:
        f.result(TIMEOUT)
    starts = sorted(
        (f.result(TIMEOUT)[1], label)
        for f, label in zip(low + high, ["low"] * 8 + ["high"] * 8, strict=True)
    )
    after_the_first_two = [label for _, label in starts[2:10]]
    assert after_the_first_two.count("high") >= 6, starts


def test_a_hung_task_times_out_and_the_cluster_keeps_its_workers(
    make_cluster_pool: Any, tmp_path: Any
) -> None:
    pool = make_cluster_pool()
    pid_file = str(tmp_path / "pid")
    t0 = time.monotonic()
    future = pool.options(timeout=0.5).submit(faults.hang, pid_file)
    with pytest.raises(mppool.TaskTimeoutError):
        future.result(TIMEOUT)
    assert time.monotonic() - t0 < 5.0
    hung = int(Path(pid_file).read_text())
    assert wait_until(lambda: not psutil.pid_exists(hung))  # the node's worker was killed
    assert pool.stats().timed_out == 1
    # Both Dask workers still serve (the fixture checks they are the same processes).
    assert pool.submit(tasks.square, 3).result(TIMEOUT) == 9


@pytest.mark.parametrize("fault", [faults.segfault_once, faults.crash_once])
def test_a_task_that_kills_its_worker_once_is_retried_on_the_node(
    make_cluster_pool: Any, tmp_path: Any, fault: Any
) -> None:
    pool = make_cluster_pool()
    path = str(tmp_path / "attempts")
    assert pool.submit(fault, path, "survived").result(TIMEOUT) == "survived"
    assert faults.attempts_in(path) == 2
    stats = pool.stats()
    assert stats.crashed == 1 and stats.respawns >= 1


def test_retries_back_off(make_cluster_pool: Any, tmp_path: Any) -> None:
    pool = make_cluster_pool()
    path = str(tmp_path / "attempts")
    policy = mppool.RetryPolicy(max_attempts=3, initial_delay=0.3, factor=2.0)
    assert (
        pool.options(retries=policy).submit(faults.fail_until_timed, path, 2).result(TIMEOUT)
        == "ok"
    )
    times = [float(line) for line in Path(path + ".times").read_text().split()]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.3 and times[2] - times[1] >= 0.6
    assert pool.stats().retried == 2


def test_dedup_by_key(make_cluster_pool: Any, fifos: Any) -> None:
    pool = make_cluster_pool()
    started, gate = fifos("started"), fifos("gate")
    keyed = pool.options(key="job-42")
    first = keyed.submit(tasks.gated, started.path, gate.path, "first")
    started.take(1, TIMEOUT)
    second = keyed.submit(tasks.gated, started.path, gate.path, "second")
    assert second is first
    assert pool.stats().deduplicated == 1
    gate.post(1)
    assert first.result(TIMEOUT) == "first"
    # Once finished, the key is free: the same key runs again.
    gate.post(1)
    third = keyed.submit(tasks.gated, started.path, gate.path, "third")
    assert third is not first and third.result(TIMEOUT) == "third"
    assert any(t.key == "job-42" for t in pool.tasks())


def test_a_rate_limit_holds_across_both_nodes(make_cluster_pool: Any) -> None:
    pool = make_cluster_pool(rate_limits={"hash": "5/s"})
    limited = pool.options(kind="hash")
    # Each task holds its worker 0.3 s: the next, 0.2 s later, finds it busy and goes to the
    # other node.
    futures = [limited.submit(tasks.stamp_then_hold, 0.3, i) for i in range(8)]
    results = [f.result(TIMEOUT) for f in futures]
    starts = sorted(start for start, _ in results)
    assert len({ppid for _, ppid in results}) == 2  # both nodes ran some of them
    # Tasks leave this process one per 0.2 s; each then takes Dask's variable time to start
    # (milliseconds). Without the limit, two workers would start 8 tasks of 0.3 s in 0.9 s.
    assert starts[-1] - starts[0] >= 1.0, starts
    for i, first in enumerate(starts):
        in_a_second = sum(1 for t in starts[i:] if t < first + 1.0)
        assert in_a_second <= 5 + 1, starts  # the rate, plus one for a late start
    assert pool.stats().rate_limited_waits > 0


def test_a_delayed_task_waits(make_cluster_pool: Any) -> None:
    pool = make_cluster_pool()
    submitted = time.time()
    future = pool.options(delay=0.5).submit(tasks.now)
    assert pool.tasks("delayed")[0].id == future.task_id
    assert future.result(TIMEOUT) >= submitted + 0.5


def test_a_map_of_100000_tiny_items(make_cluster_pool: Any) -> None:
    pool = make_cluster_pool()
    seen: list[tuple[int, int | None]] = []
    total = sum(
        pool.map(
            tasks.square, range(100_000), timeout=TIMEOUT, progress=lambda d, t: seen.append((d, t))
        )
    )
    assert total == sum(i * i for i in range(100_000))
    assert seen[-1] == (100_000, 100_000)
    # Carried many to a Dask task: far fewer chunks than items.
    assert pool.stats().submitted < 200


def test_a_failing_item_stops_the_map_at_its_position(make_cluster_pool: Any) -> None:
    pool = make_cluster_pool()
    got: list[int] = []
    with pytest.raises(ValueError, match="bad item 500") as info:
        for value in pool.map(tasks.fail_on, range(2000), [500] * 2000, timeout=TIMEOUT):
            got.append(value)
    assert got == [i * i for i in range(500)]
    assert isinstance(info.value.__cause__, mppool.RemoteTraceback)
    assert not [name for name in vars(info.value) if name.startswith("_mppool")]


def _hanging(pool: Any, folder: Any) -> tuple[Any, int]:
    """A task that hangs, once it runs: its future and the pid of the node worker running it."""
    folder.mkdir(exist_ok=True)
    pid_file = str(folder / "pid")
    future = pool.submit(faults.hang, pid_file)
    assert wait_until(lambda: os.path.exists(pid_file), TIMEOUT)
    return future, int(Path(pid_file).read_text())


def test_cancel_with_kill_stops_a_running_task(make_cluster_pool: Any, tmp_path: Any) -> None:
    pool = make_cluster_pool()
    future, hung = _hanging(pool, tmp_path)
    assert pool.cancel(future, kill=True)
    assert future.cancelled()
    assert wait_until(lambda: not psutil.pid_exists(hung), TIMEOUT)
    # The Dask thread it held is free again: both workers take work at once.
    assert list(pool.map(tasks.square, range(10), timeout=TIMEOUT)) == [i * i for i in range(10)]


def test_shutdown_deadline_kills_what_runs(make_cluster_pool: Any, tmp_path: Any) -> None:
    pool = make_cluster_pool()
    futures, hung = zip(*(_hanging(pool, tmp_path / name) for name in ("a", "b")), strict=True)
    seen: list[BaseException] = []

    def callback(_: Any) -> None:
        try:
            futures[1].result(5)  # resolved by the same thread, after this one
        except BaseException as exc:
            seen.append(exc)

    futures[0].add_done_callback(callback)
    pool.shutdown(wait=True, timeout=0.5)
    for future in futures:  # each, not one "dropped by Dask" (its cancel raced the deadline)
        with pytest.raises(mppool.CancelledByShutdownError):
            future.result(0)
    assert [type(e) for e in seen] == [RuntimeError]
    assert wait_until(lambda: not any(psutil.pid_exists(pid) for pid in hung), TIMEOUT)
    assert pool.state == "closed" and "closed" in repr(pool)
    with pytest.raises(mppool.PoolClosedError):
        pool.submit(tasks.square, 2)


def test_schedules_fire_on_the_cluster(make_cluster_pool: Any) -> None:
    pool = make_cluster_pool()
    handle = pool.schedule_every(0.1, tasks.square, 4)
    assert handle.wait_for_runs(3, timeout=TIMEOUT)
    assert handle.results()[:3] == [16, 16, 16]
    assert handle.cancel()


def test_asyncio_on_the_cluster(make_cluster_pool: Any) -> None:
    pool = make_cluster_pool()

    async def main() -> tuple[int, list[int]]:
        one = await asyncio.wait_for(pool.asubmit(tasks.square, 6), TIMEOUT)
        many = [x async for x in pool.amap(tasks.square, range(20), timeout=TIMEOUT)]
        return one, many

    assert asyncio.run(main()) == (36, [i * i for i in range(20)])


def test_the_http_api_and_metrics_serve_a_cluster_pool(make_cluster_pool: Any) -> None:
    pytest.importorskip("aiohttp")
    import json
    import urllib.request

    pool = make_cluster_pool()
    pool.submit(tasks.square, 2).result(TIMEOUT)
    with pool.serve() as server:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/api/stats", timeout=TIMEOUT) as reply:
            stats = json.load(reply)
        with urllib.request.urlopen(f"{base}/metrics", timeout=TIMEOUT) as reply:
            metrics = reply.read().decode()
        with urllib.request.urlopen(f"{base}/readyz", timeout=TIMEOUT) as reply:
            assert reply.status == 200
    assert stats["completed"] == 1 and len(stats["workers"]) == 2
    assert "mppool_tasks_completed_total 1.0" in metrics


def test_what_a_cluster_cannot_do_is_refused(make_cluster_pool: Any, cluster: Any) -> None:
    for kwargs in (
        {"max_queue": 10},
        {"store": "jobs.db"},
        {"aging_rate": 1.0},
        {"cpu_affinity": True},
        {"shares": {"etl": 3}},
        {"circuit_breakers": {"io": mppool.CircuitBreaker()}},
    ):
        with pytest.raises(ValueError, match="not available with cluster="):
            mppool.Pool(cluster=cluster, **kwargs)
    with pytest.raises(ValueError, match="workers="):
        mppool.Pool(4, cluster=cluster)
    with pytest.raises(TypeError, match="cluster must be"):
        mppool.Pool(cluster=42)
    pool = make_cluster_pool()
    with pytest.raises(NotImplementedError, match="scale the Dask cluster"):
        pool.resize(3)
    with pytest.raises(NotImplementedError):
        pool.share(b"x")
    with pytest.raises(ValueError, match="map on a cluster"):
        pool.options(key=lambda x: x).map(tasks.square, [1])
    with pytest.raises(ValueError, match="deadline"):
        pool.options(deadline=5)
    # The pool serves on.
    assert pool.submit(tasks.square, 5).result(TIMEOUT) == 25


def test_importing_mppool_does_not_import_dask() -> None:
    code = (
        "import sys, mppool; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )
    out = run_python("-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- from a review: each fails on the code before its fix ------------------------------------


def test_a_result_that_cannot_be_received_fails_visibly(
    make_cluster_pool: Any, monkeypatch: Any
) -> None:
    pool = make_cluster_pool()
    monkeypatch.setattr(faults, "REFUSE_HERE", True)  # in this process only
    with pytest.raises(mppool.SerializationError, match="could not be received"):
        pool.submit(faults.make_refused_here).result(10)
    assert pool.submit(tasks.square, 3).result(TIMEOUT) == 9  # the pool serves on


def test_a_done_callback_cannot_wait_for_another_result(make_cluster_pool: Any, fifos: Any) -> None:
    pool = make_cluster_pool()
    started, gate, later = fifos("started"), fifos("gate"), fifos("later")
    first = pool.submit(tasks.gated, started.path, gate.path, "first")
    other = pool.submit(tasks.gated, started.path, later.path, "other")
    started.take(2, TIMEOUT)
    seen: list[BaseException] = []
    called = threading.Event()

    def callback(_: Any) -> None:
        try:
            other.result(5)  # waiting here would stop every result of the pool
        except BaseException as exc:
            seen.append(exc)
        called.set()

    first.add_done_callback(callback)
    gate.post(1)
    assert called.wait(TIMEOUT)
    later.post(1)
    assert first.result(TIMEOUT) == "first" and other.result(TIMEOUT) == "other"
    assert [type(e) for e in seen] == [RuntimeError]


def test_a_node_pool_that_broke_is_replaced(make_cluster_pool: Any) -> None:
    import signal

    pool = make_cluster_pool()
    workers = pool.stats().workers
    dispatchers = {psutil.Process(w.pid).ppid() for w in workers}
    assert len(dispatchers) == 2
    victim = min(dispatchers)
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: not psutil.pid_exists(victim))
    errors = [pool.submit(tasks.getpid).exception(TIMEOUT) for _ in range(20)]
    # A task that reached the broken pool before its Dask worker saw it break fails, visibly;
    # after that the node has a new pool.
    assert sum(1 for e in errors if e is not None) <= 2, errors
    assert all(isinstance(e, mppool.BrokenPoolError) for e in errors if e is not None)
    parents = {psutil.Process(w.pid).ppid() for w in pool.stats().workers if w.pid}
    assert len(parents) == 2 and victim not in parents


def test_an_urgent_task_of_a_limited_kind_is_not_starved(make_cluster_pool: Any) -> None:
    pool = make_cluster_pool(rate_limits={"io": "100/s"})
    low = [pool.submit(tasks.started_at, "low", i) for i in range(300)]
    urgent = pool.options(kind="io", priority=100).submit(tasks.started_at, "urgent")
    at = urgent.result(TIMEOUT)[1]
    later = sum(1 for f in low if f.result(TIMEOUT)[1] > at)
    assert later >= 150, later  # it went ahead of most of the backlog


def test_a_map_is_read_after_the_pool_is_shut_down(make_cluster_pool: Any, tmp_path: Any) -> None:
    pool = make_cluster_pool()
    path = str(tmp_path / "lines")
    with pool:
        results = pool.map(tasks.square, range(50))
        dropped = pool.map(tasks.append_line, [path] * 20, [str(i) for i in range(20)])
        del dropped  # never iterated: it runs anyway, as on a local pool
    assert list(results) == [i * i for i in range(50)]
    assert sorted(Path(path).read_text().split(), key=int) == [str(i) for i in range(20)]


def test_a_dropped_pool_finishes_its_work(make_cluster_pool: Any, cluster: Any) -> None:
    import gc

    pool = mppool.Pool(cluster=cluster)
    core, dropped = pool._core, weakref.ref(pool)
    future = pool.submit(tasks.spin_then_stamp_value, 0.2, 7)
    del pool
    gc.collect()
    assert dropped() is None  # nothing holds the pool: its finaliser has started its end
    assert future.result(TIMEOUT) == 7
    # It closes in the background once its work is done: wait for that here, so that the
    # fixture's checks (threads, descriptors) see it finished.
    assert wait_until(lambda: core.state == "closed" and core.client.status == "closed", TIMEOUT)


def test_map_items_that_need_cloudpickle(make_cluster_pool: Any) -> None:
    pool = make_cluster_pool()
    items = [lambda i=i: i * 10 for i in range(5)]
    assert list(pool.map(tasks.call, items, timeout=TIMEOUT)) == [0, 10, 20, 30, 40]


def test_shutdown_with_cancel_futures_does_not_feed_an_open_map(
    make_cluster_pool: Any, tmp_path: Any
) -> None:
    pool = make_cluster_pool()
    path = str(tmp_path / "lines")
    items = pool.map(tasks.spin_and_append, [0.05] * 200, [path] * 200, map(str, range(200)))
    next(items)
    pool.shutdown(wait=True, cancel_futures=True)
    assert len(Path(path).read_text().split()) < 100  # not the whole input


def test_a_map_fed_at_shutdown_is_sent_in_chunks(make_cluster_pool: Any) -> None:
    pool = make_cluster_pool()
    with pool:
        results = pool.map(tasks.square, range(5000))  # nobody reads it before the shutdown
    assert sum(results) == sum(i * i for i in range(5000))
    assert pool._core.counts["submitted"] < 100  # chunks, not one Dask task per item


def test_a_map_nobody_reads_does_not_stall_the_timers(make_cluster_pool: Any) -> None:
    pool = make_cluster_pool()
    go = threading.Event()

    def slow_input() -> Iterator[int]:
        yield 1
        go.wait(TIMEOUT)  # the map's feeder waits here
        yield 2

    pool.map(tasks.square, slow_input())  # dropped unread: fed in the background
    try:
        assert pool.options(delay=0.1).submit(tasks.square, 3).result(10) == 9
    finally:
        go.set()


def test_a_pool_whose_cluster_goes_away_breaks_and_loses_nothing_silently(
    make_cluster_pool: Any, fifos: Any
) -> None:
    # A cluster of its own, closed under the pool: every task the pool held fails, visibly.
    started, gate = fifos("started"), fifos("gate")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as own:
        pool = mppool.Pool(cluster=own)
        running = pool.submit(tasks.gated, started.path, gate.path)
        started.take(1, TIMEOUT)
        queued = [pool.submit(tasks.square, i) for i in range(5)]
    # The cluster is closed: its scheduler and worker are gone.
    for future in [running, *queued]:
        assert isinstance(future.exception(TIMEOUT), mppool.BrokenPoolError)
    assert pool.state == "broken"
    with pytest.raises(mppool.BrokenPoolError):
        pool.submit(tasks.square, 1)
    pool.shutdown(wait=True, timeout=5.0)
    gate.post(1)
