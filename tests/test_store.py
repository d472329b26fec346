"""The job store (``Pool(store=...)``): resumable keyed batches, the dead-letter list, and a
file that survives crashes and a second pool.

Real executions are counted from a side effect (a line appended per run), never from stats.
Crash and concurrency cases run the user process as a subprocess; the store is read with
plain ``sqlite3``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

import mppool

from . import tasks
from .conftest import PoolTracker, read_line, wait_until

T = 60.0  # seconds: every wait on a result
RUN_TIMEOUT = 120.0  # seconds: a whole subprocess batch


def runs(log: Path) -> Counter[int]:
    """How many times each item really ran (lines of ``tasks.logged_square``)."""
    if not log.exists():
        return Counter()
    return Counter(int(line) for line in log.read_text().split())


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db, timeout=T)) as conn:
        return conn.execute(sql, params).fetchall()


def by_state(db: Path) -> dict[str, int]:
    return dict(rows(db, "SELECT state, count(*) FROM tasks GROUP BY state"))  # type: ignore[arg-type]


def keyed(pool: mppool.Pool) -> mppool.Pool:
    return pool.options(key=lambda x: f"sq:{x}")  # type: ignore[return-value]


# --- resuming ----------------------------------------------------------------------------------
def test_a_rerun_returns_stored_results_and_runs_only_what_is_missing(
    make_pool: PoolTracker, tmp_path: Path
) -> None:
    db, log = tmp_path / "jobs.db", tmp_path / "ran.log"
    fn = functools.partial(tasks.logged_square, str(log))
    with make_pool(2, store=db) as pool:
        assert list(keyed(pool).map(fn, range(100), timeout=T)) == [x * x for x in range(100)]
    assert runs(log) == Counter(range(100))
    assert by_state(db) == {"done": 100}

    # A later run, in a new pool: 100 stored results come back in order, 50 new items run.
    with make_pool(2, store=db) as pool:
        got = list(keyed(pool).map(fn, range(150), timeout=T))
        assert got == [x * x for x in range(150)]
        # A single submit of a finished key does not run either.
        assert pool.options(key="sq:7").submit(fn, 7).result(timeout=T) == 49
        # Tasks without a key are not stored.
        assert pool.submit(fn, 1000).result(timeout=T) == 1000**2
    assert runs(log) == Counter(range(150)) + Counter([1000])
    assert by_state(db) == {"done": 150}


def test_failures_are_dead_letters_that_run_again_when_submitted_or_retried(
    make_pool: PoolTracker, tmp_path: Path
) -> None:
    db, log, fixed = tmp_path / "jobs.db", tmp_path / "ran.log", tmp_path / "fixed"
    fn = functools.partial(tasks.logged_square, str(log), fail_unless=str(fixed))
    bad = [x for x in range(40) if x % 7 == 3]
    with make_pool(2, store=db) as pool:
        futures = [pool.options(key=f"sq:{x}").submit(fn, x) for x in range(40)]
        for x, fut in zip(range(40), futures, strict=True):
            if x in bad:
                with pytest.raises(ValueError, match=f"item {x} failed"):
                    fut.result(timeout=T)
            else:
                assert fut.result(timeout=T) == x * x
    assert by_state(db) == {"done": 40 - len(bad), "failed": len(bad)}

    with make_pool(2, store=db) as pool:
        failed = pool.tasks(state="failed")
        assert sorted(i.key for i in failed if i.stored) == sorted(f"sq:{x}" for x in bad)
        one = next(i for i in failed if i.key == "sq:3")
        assert one.error == "ValueError: item 3 failed" and one.attempts == 1
        remote = rows(db, "SELECT traceback FROM tasks WHERE key = 'sq:3'")[0][0]
        assert "logged_square" in remote and "item 3 failed" in remote
        fixed.touch()
        # Submitting a failed key runs it again; retry_failed() runs every other dead letter.
        assert pool.options(key="sq:3").submit(fn, 3).result(timeout=T) == 9
        retried = pool.retry_failed()
        assert sorted(f.result(timeout=T) for f in retried) == sorted(x * x for x in bad[1:])
        assert pool.tasks(state="failed") == []
    assert by_state(db) == {"done": 40}
    assert runs(log) == Counter(range(40)) + Counter(bad)  # the bad ones ran twice, no others


def test_a_dead_letter_submitted_again_and_cancelled_stays_a_dead_letter(
    make_pool: PoolTracker, fifos: Any, tmp_path: Path
) -> None:
    db = tmp_path / "jobs.db"
    with make_pool(1, store=db) as pool, pytest.raises(ValueError):
        pool.options(key="boom").submit(tasks.raise_value_error, "no luck").result(timeout=T)
    started, gate = fifos("started"), fifos("gate")
    with make_pool(1, store=db) as pool:
        holder = pool.submit(tasks.gated, started.path, gate.path, "held")
        started.take()
        again = pool.options(key="boom").submit(tasks.raise_value_error, "no luck")
        assert again.cancel()  # queued behind the held task: it never runs
        gate.post()
        assert holder.result(timeout=T) == "held"
    assert rows(db, "SELECT state, error FROM tasks WHERE key = 'boom'") == [("failed", "no luck")]


def test_failed_keys_are_listed_over_http(make_pool: PoolTracker, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    with make_pool(1, store=db) as pool, pytest.raises(ValueError):
        pool.options(key="boom").submit(tasks.raise_value_error, "no luck").result(timeout=T)
    with make_pool(1, store=db) as pool, pool.serve() as server:
        url = server.url + "api/tasks?state=failed"
        with urllib.request.urlopen(url, timeout=T) as response:
            body = json.load(response)
    assert [(t["key"], t["stored"]) for t in body["tasks"]] == [("boom", True)]
    assert "no luck" in body["tasks"][0]["error"]


def test_an_unpicklable_result_fails_its_task_and_is_not_stored(
    make_pool: PoolTracker, tmp_path: Path
) -> None:
    db = tmp_path / "jobs.db"
    with make_pool(1, store=db) as pool:
        with pytest.raises(mppool.SerializationError):
            pool.options(key="lock").submit(tasks.unpicklable_result).result(timeout=T)
        assert pool.options(key="fine").submit(tasks.square, 3).result(timeout=T) == 9
    assert rows(db, "SELECT key, state, result FROM tasks ORDER BY key") == [
        ("fine", "done", rows(db, "SELECT result FROM tasks WHERE key = 'fine'")[0][0]),
        ("lock", "failed", None),
    ]


def test_a_large_result_is_spilled_to_a_file_beside_the_store(
    make_pool: PoolTracker, tmp_path: Path
) -> None:
    db = tmp_path / "jobs.db"
    big = "x" * (3 << 20)
    with make_pool(1, store=db) as pool:
        assert pool.options(key="big").submit(str, big).result(timeout=T) == big
    ((spill,),) = rows(db, "SELECT spill FROM tasks WHERE key = 'big'")
    assert (tmp_path / "jobs.db.blobs" / spill).stat().st_size > 3 << 20
    assert not list((tmp_path / "jobs.db.blobs").glob("*.tmp"))
    with make_pool(1, store=db) as pool:
        assert pool.options(key="big").submit(str, "not run").result(timeout=T) == big


# --- files that are not (usable) stores --------------------------------------------------------
def _foreign(path: Path) -> None:
    rows(path, "CREATE TABLE notes (text TEXT)")


def _newer(path: Path) -> None:
    mppool.Pool(1, store=path).shutdown()
    rows(path, "PRAGMA user_version = 99")


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _torn(path: Path) -> None:
    mppool.Pool(1, store=path).shutdown()
    data = bytearray(path.read_bytes())
    data[16:100] = os.urandom(84)  # the header after its magic string: page size, counters
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_foreign, "not an mppool job store"),
        (_newer, "newer mppool"),
        (_garbage, "not an mppool job store"),
        (_torn, "cannot use"),
    ],
)
def test_a_file_that_is_not_a_store_gives_a_clear_error_at_pool(
    leak_check: None, tmp_path: Path, spoil: Any, message: str
) -> None:
    db = tmp_path / "jobs.db"
    spoil(db)
    children = psutil.Process().children(recursive=True)
    with pytest.raises(mppool.StoreError, match=message):
        mppool.Pool(1, store=db)
    assert psutil.Process().children(recursive=True) == children  # no process was started


@pytest.mark.parametrize("path", ["/proc/mppool-jobs.db", "/sys/mppool-jobs.db"])
def test_a_store_that_cannot_be_written_fails_at_pool(leak_check: None, path: str) -> None:
    with pytest.raises(mppool.StoreError, match="cannot use"):
        mppool.Pool(1, store=path)


# --- crashes and a second process --------------------------------------------------------------
BATCH_SCRIPT = textwrap.dedent("""
    import functools, os, sys, time
    import mppool

    def step(log, stuck, x):
        with open(log, "a") as f:
            f.write(f"{x}\\n")
        if x == stuck:
            while True:  # never finishes: the user process is killed meanwhile
                time.sleep(0.05)
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass
        return x * x

    if __name__ == "__main__":
        db, log, stuck, n, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), \\
            int(sys.argv[4]), int(sys.argv[5])
        with mppool.Pool(workers, store=db) as pool:
            print("dispatcher", pool.dispatcher_pid, flush=True)
            if len(sys.argv) > 6:  # pools up: wait for the go-ahead on a FIFO
                with open(sys.argv[6], "rb") as gate:
                    gate.read(1)
            order = range(n) if "reverse" not in os.environ else reversed(range(n))
            keyed = pool.options(key=lambda x: f"k{x}")
            total = sum(keyed.map(functools.partial(step, log, stuck), order, timeout=600))
            print("sum", total, flush=True)
""")


def _start(tmp_path: Path, *args: Any, **env: str) -> subprocess.Popen[str]:
    script = tmp_path / "batch.py"
    script.write_text(BATCH_SCRIPT)
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def _dispatcher(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    line = read_line(proc, T).decode()  # the script prints it first thing
    assert line.startswith("dispatcher"), proc.stderr.read() if proc.stderr else line
    return int(line.split()[1])


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _integrity(db: Path) -> str:
    return str(rows(db, "PRAGMA integrity_check")[0][0])


def test_a_killed_user_process_loses_only_the_running_task(
    leak_check: None, tmp_path: Path
) -> None:
    db, log = tmp_path / "jobs.db", tmp_path / "first.log"
    proc = _start(tmp_path, db, log, 30, 40, 1)
    try:
        dispatcher = _dispatcher(proc)
        family = [dispatcher, *(c.pid for c in psutil.Process(dispatcher).children())]
        # Items 0..29 finish; item 30 runs forever. Once the journal has committed the 30,
        # the user process is killed mid-batch.
        assert wait_until(lambda: db.exists() and by_state(db).get("done") == 30, timeout=T)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=T)
    finally:
        proc.kill()
        proc.communicate(timeout=T)
    assert wait_until(lambda: all(_gone(pid) for pid in family)), "pool processes outlived it"
    assert _integrity(db) == "ok"
    assert runs(log) == Counter(range(31))
    # The claims of the dead process are free again: a rerun runs exactly the 10 not done.
    again = tmp_path / "second.log"
    proc = _start(tmp_path, db, again, -1, 40, 2)
    out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err
    assert f"sum {sum(x * x for x in range(40))}" in out
    assert runs(again) == Counter(range(30, 40))
    assert by_state(db) == {"done": 40}


def test_a_kill_while_results_stream_in_leaves_a_sound_store(
    leak_check: None, tmp_path: Path
) -> None:
    db, log = tmp_path / "jobs.db", tmp_path / "first.log"
    n = 3000
    proc = _start(tmp_path, db, log, -1, n, 2)
    try:
        dispatcher = _dispatcher(proc)
        family = [dispatcher, *(c.pid for c in psutil.Process(dispatcher).children())]
        assert wait_until(lambda: by_state(db).get("done", 0) >= 300, timeout=T)
        proc.send_signal(signal.SIGKILL)  # while the journal keeps committing
        proc.wait(timeout=T)
    finally:
        proc.kill()
        proc.communicate(timeout=T)
    assert wait_until(lambda: all(_gone(pid) for pid in family))
    assert _integrity(db) == "ok"
    done = {int(k[1:]) for (k,) in rows(db, "SELECT key FROM tasks WHERE state = 'done'")}
    assert done <= set(runs(log)) and len(done) >= 300
    again = tmp_path / "second.log"
    proc = _start(tmp_path, db, again, -1, n, 2)
    out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err
    assert f"sum {sum(x * x for x in range(n))}" in out
    assert not done & set(runs(again))  # nothing stored was run again
    assert set(runs(log)) | set(runs(again)) == set(range(n))
    assert _integrity(db) == "ok"


def test_two_processes_on_one_store_never_run_a_key_twice(leak_check: None, tmp_path: Path) -> None:
    db, n = tmp_path / "jobs.db", 1000
    gates = [tmp_path / "gate-a", tmp_path / "gate-b"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    for gate in gates:
        os.mkfifo(gate)
    procs = [
        _start(tmp_path, db, logs[0], -1, n, 2, gates[0]),
        _start(tmp_path, db, logs[1], -1, n, 2, gates[1], reverse="1"),
    ]
    # Held open (read-write: opening never blocks) until both are done, so the byte waits
    # in each FIFO for its process, which reads it once its pool is up.
    fds = [os.open(gate, os.O_RDWR) for gate in gates]
    try:
        for proc in procs:  # both pools are up (a slow start must not let one do it all)
            _dispatcher(proc)
        for fd in fds:  # let both go at once
            os.write(fd, b"x")
        outs = [proc.communicate(timeout=RUN_TIMEOUT) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate(timeout=T)
        for fd in fds:
            os.close(fd)
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
        assert f"sum {sum(x * x for x in range(n))}" in out
    ran = [runs(log) for log in logs]
    twice = [key for key, count in (ran[0] + ran[1]).items() if count > 1]
    assert not twice, f"ran more than once: {twice[:10]}"
    assert set(ran[0]) | set(ran[1]) == set(range(n))  # every key ran, here or there
    assert ran[0] and ran[1], [len(r) for r in ran]  # and both did part of the work
    assert _integrity(db) == "ok"
    assert by_state(db) == {"done": n}


# --- the command line --------------------------------------------------------------------------
def _cli(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mppool", "store", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def test_the_store_command_counts_lists_and_shows_one_key(
    make_pool: PoolTracker, tmp_path: Path
) -> None:
    db = tmp_path / "jobs.db"
    with make_pool(1, store=db) as pool:
        assert list(keyed(pool).map(tasks.square, range(30), timeout=T))[-1] == 29 * 29
        with pytest.raises(ValueError):
            pool.options(key="bad").submit(tasks.raise_value_error, "no luck").result(timeout=T)
    listed = _cli(db, "--limit", "5")
    assert listed.returncode == 0, listed.stderr
    assert "31 keys: running 0, done 30, failed 1" in listed.stdout
    assert len(listed.stdout.splitlines()) == 1 + 1 + 5 + 1  # summary, header, 5 rows, "more"
    failed = _cli(db, "--state", "failed")
    assert failed.stdout.splitlines()[2].split()[:2] == ["bad", "failed"]
    assert "ValueError: no luck" in failed.stdout
    one = _cli(db, "--key", "bad")
    assert one.returncode == 0
    assert "state      failed" in one.stdout and "raise_value_error" in one.stdout
    value = _cli(db, "--key", "sq:7", "--result")
    assert value.stdout.splitlines()[-1] == "49"
    assert _cli(db, "--key", "nope").returncode == 1
    missing = _cli(tmp_path / "other.db")
    assert missing.returncode == 2 and "no job store" in missing.stderr
    assert not (tmp_path / "other.db").exists()  # looking never creates a file


def test_a_stored_result_that_no_longer_unpickles_fails_in_its_place(
    make_pool: PoolTracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Results of a class from a module that is gone by the next run (renamed, uninstalled).
    module = tmp_path / "vanishing.py"
    module.write_text("class Box:\n    def __init__(self, v):\n        self.v = v\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import vanishing  # type: ignore[import-not-found]

    db = tmp_path / "jobs.db"
    with make_pool(1, store=db) as pool:
        box = pool.options(key="box").submit(vanishing.Box, 5).result(timeout=T)
        assert box.v == 5
        assert pool.options(key="plain").submit(tasks.square, 3).result(timeout=T) == 9
    module.unlink()
    monkeypatch.delitem(sys.modules, "vanishing")
    with make_pool(1, store=db) as pool:
        keys = {"plain": "plain", 1: "box"}
        got: list[Any] = []
        with pytest.raises(mppool.SerializationError, match="vanishing"):
            for value in pool.options(key=lambda k: keys[k]).map(tasks.square, ["plain", 1]):
                got.append(value)
        assert got == [9]  # the stored result before it came back, in order
