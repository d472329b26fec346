"""The dispatcher's events in the user process's logs: fields a log shipper can read, and
silence until logging is configured."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import mppool

from . import tasks
from .conftest import PoolTracker, run_python, wait_until

T = 60


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[Any]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def test_a_crash_a_timeout_and_a_retry_are_logged(
    make_pool: PoolTracker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mppool")  # before the pool starts: it asks then
    pool = make_pool(1)
    (first,) = pool.stats().workers
    with pytest.raises(mppool.WorkerCrashedError):
        pool.options(crash_retries=0).submit(tasks.exit_now, 3).result(timeout=T)
    crash_future = pool.options(timeout=0.3).submit(tasks.spin, 30)
    with pytest.raises(mppool.TaskTimeoutError):
        crash_future.result(timeout=T)
    policy = mppool.RetryPolicy(max_attempts=2, initial_delay=0.0, retry_on=(ValueError,))
    with pytest.raises(ValueError):
        pool.options(retries=policy).submit(tasks.fail_on, 1, 1).result(timeout=T)
    assert wait_until(lambda: len(events(caplog, "worker_respawned")) == 2, T)

    (died, killed) = events(caplog, "worker_died")
    assert (died.name, died.levelno, died.pid, died.exitcode, died.reason) == (
        "mppool.workers",
        logging.WARNING,
        first.pid,
        3,
        "crashed",
    )
    assert (killed.levelno, killed.signal, killed.reason) == (logging.INFO, "SIGKILL", "timeout")
    (timed_out,) = events(caplog, "task_timed_out")
    assert (timed_out.name, timed_out.levelno) == ("mppool.tasks", logging.WARNING)
    assert (timed_out.task_id, timed_out.timeout) == (crash_future.task_id, 0.3)
    (retried,) = events(caplog, "task_retried")
    assert (retried.levelno, retried.attempt, retried.cause) == (logging.INFO, 2, "error")
    respawned = events(caplog, "worker_respawned")[0]
    assert respawned.old_pid == first.pid and respawned.pid != first.pid
    assert "worker_started" not in {getattr(r, "event", None) for r in caplog.records}  # DEBUG


def test_a_broken_pool_is_an_error_record(
    make_pool: PoolTracker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mppool")
    pool = make_pool(1, initializer=tasks.raise_value_error, initargs=("no config",))
    with pytest.raises(mppool.BrokenPoolError):
        pool.submit(tasks.square, 2).result(timeout=T)
    assert wait_until(lambda: bool(events(caplog, "pool_broken")), T)
    (broken,) = events(caplog, "pool_broken")
    assert broken.levelno == logging.ERROR and "no config" in broken.reason


def test_nothing_reaches_stderr_by_default(tmp_path: Path) -> None:
    script = tmp_path / "quiet.py"
    script.write_text(
        "import mppool\n"
        "from tests import tasks\n"
        "with mppool.Pool(1) as pool:\n"
        "    for fn, args, opts in [(tasks.exit_now, (3,), {'crash_retries': 0}),\n"
        "                           (tasks.spin, (30,), {'timeout': 0.3})]:\n"
        "        try:\n"
        "            pool.options(**opts).submit(fn, *args).result(60)\n"
        "        except mppool.MppoolError as exc:\n"
        "            print(type(exc).__name__)\n"
        "    fut = pool.submit(tasks.square, 2)\n"
        "    fut.add_done_callback(lambda f: 1 / 0)\n"
        "    fut.result(60)\n"
    )
    done = run_python(str(script), timeout=T)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["WorkerCrashedError", "TaskTimeoutError"]
    assert "mppool" not in done.stderr


def test_a_clean_shutdown_logs_no_warning(
    make_pool: PoolTracker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mppool")
    pool = make_pool(2)
    assert list(pool.map(tasks.square, range(20), timeout=T)) == [x * x for x in range(20)]
    pool.shutdown(wait=True, timeout=T)
    ended = events(caplog, "worker_died")
    assert len(ended) == 2  # each worker's end is still recorded, at INFO, with its reason
    assert {(r.levelno, r.reason) for r in ended} == {(logging.INFO, "exit")}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_resize_is_logged_and_its_leaving_workers_are_no_crash(
    make_pool: PoolTracker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mppool")
    pool = make_pool(3)
    pool.resize(1)
    assert wait_until(lambda: len(events(caplog, "worker_died")) == 2, T)
    (resized,) = events(caplog, "pool_resized")
    assert (resized.name, resized.levelno) == ("mppool.workers", logging.INFO)
    assert (resized.from_workers, resized.to_workers, resized.reason) == (3, 1, "resize")
    for died in events(caplog, "worker_died"):
        assert (died.levelno, died.exitcode, died.reason) == (logging.INFO, 0, "resized")
    assert not events(caplog, "worker_respawned")
