"""Promises the README makes, each checked where it used to break.

Priority order with several workers, no silent loss in ``map``, exceptions that keep their
message, functions that see their globals as they are, and the small things a new user
runs into first.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import mppool
from mppool._client import _map, _planner

from . import tasks
from .conftest import PoolTracker, hold, run_python

T = 60
PRIORITIES = [0, 5, 1, 5, 9, 0, 1]


def check_start_order(starts: list[tuple[Any, float, int]], workers: int) -> None:
    """Each worker starts its tasks in priority order (FIFO among equals), and no task
    starts after the task ``workers`` places behind it in that order has started."""
    expected = sorted((tag for tag, _, _ in starts), key=lambda t: (-t[0], t[1]))
    position = {tag: i for i, tag in enumerate(expected)}
    by_time = sorted(starts, key=lambda s: s[1])
    per_pid: dict[int, list[int]] = {}
    for tag, _, pid in by_time:
        per_pid.setdefault(pid, []).append(position[tag])
    for pid, seq in per_pid.items():
        assert seq == sorted(seq), f"worker {pid} started {seq}: {by_time}"
    start_rank = {position[tag]: i for i, (tag, _, _) in enumerate(by_time)}
    for pos, at in start_rank.items():
        behind = start_rank.get(pos + workers)
        assert behind is None or behind > at, f"#{pos} started after #{pos + workers}: {by_time}"


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("measured", [False, True], ids=["new-function", "measured-short"])
def test_priority_order_holds_with_several_workers(
    make_pool: PoolTracker, fifos: Any, n: int, measured: bool
) -> None:
    pool = make_pool(n)
    if measured:  # teach the pool that started_at is short: it may then batch and prefetch it
        list(pool.map(tasks.started_at, range(50), chunksize=1, timeout=T))
    for trial in range(5):
        gate, blockers = hold(pool, fifos, n, f"{trial}")
        # A function the pool has never measured, or the measured one.
        fn = tasks.started_at if measured else functools.partial(tasks.started_at, trial)
        futs = [pool.options(priority=p).submit(fn, p, i) for i, p in enumerate(PRIORITIES)]
        assert pool.stats().queued == len(PRIORITIES)  # all reached the dispatcher
        gate.post(n)
        for b in blockers:
            b.result(timeout=T)
        starts = [f.result(timeout=T) for f in futs]
        if not measured:
            starts = [(tag[1:], at, pid) for tag, at, pid in starts]
        check_start_order(starts, n)


# --- 2. a map used for its side effects runs every item -----------------------------------
@pytest.mark.parametrize("ordered", [True, False], ids=["map", "imap_unordered"])
@pytest.mark.parametrize("sized", [True, False], ids=["list", "generator"])
def test_a_map_never_iterated_runs_every_item(
    make_pool: PoolTracker, tmp_path: Any, ordered: bool, sized: bool
) -> None:
    log = str(tmp_path / "saved.log")
    texts = [str(i) for i in range(1000)]
    with make_pool(2) as pool:
        items = texts if sized else (t for t in texts)
        method = pool.map if ordered else pool.imap_unordered
        method(tasks.append_line, itertools.repeat(log), items)  # dropped at once
    with open(log) as f:
        assert sorted(f.read().split(), key=int) == texts


def test_leaving_a_loop_over_an_endless_input_stays_bounded_and_cancels_the_rest(
    make_pool: PoolTracker,
) -> None:
    pool = make_pool(2)
    pulled = 0

    def endless() -> Any:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    for x in pool.map(tasks.square, endless(), timeout=T):
        if x >= 10_000:
            break  # the generator is closed here: the rest is cancelled
    at_close = pulled
    # The input's reader thread ends; it may finish the one ``next()`` it was in (and drop
    # that item), never more.
    for thread in threading.enumerate():
        if thread.name == "mppool-map-input":
            thread.join(timeout=T)
            assert not thread.is_alive()
    assert pulled - at_close <= 1
    after = pulled
    # Nothing more is read, and the pool has nothing left to do.
    assert pool.submit(tasks.square, 3).result(timeout=T) == 9
    assert pulled == after
    assert pulled < 10_000 + (_map.WINDOW_PER_WORKER * 2 + 2) * _planner.MAX_CHUNK_ITEMS


# --- 3. exceptions keep their message and traceback ---------------------------------------
def test_an_exception_that_cannot_be_rebuilt_keeps_its_type_name_text_and_traceback(
    pool: mppool.Pool,
) -> None:
    from . import faults

    for fn, name, text in [
        (faults.raise_two_arg, "tests.faults.TwoArgError", "first"),
        (faults.raise_locked, "tests.faults.LockedError", "holding a lock"),
    ]:
        with pytest.raises(mppool.RemoteError) as info:
            pool.submit(fn).result(timeout=T)
        err = info.value
        assert (err.type_name, err.message) == (name, text)
        assert fn.__name__ in err.traceback
        assert isinstance(err.__cause__, mppool.RemoteTraceback)
    assert pool.submit(tasks.square, 4).result(timeout=T) == 16  # and the pool serves on


# --- 4. a function sees its globals as they are at submit ---------------------------------
def test_rebinding_a_global_or_a_closure_variable_reaches_the_next_task(tmp_path: Any) -> None:
    script = tmp_path / "notebook.py"
    script.write_text(
        "import mppool\n"
        "THRESH = 1\n"
        "def above(x):\n"
        "    return x > THRESH\n"
        "def helper(x):\n"
        "    return x + OFFSET\n"
        "OFFSET = 10\n"
        "def uses_helper(x):\n"
        "    return helper(x)\n"
        "def make():\n"
        "    limit = 3\n"
        "    def below(x):\n"
        "        return x < limit\n"
        "    def set_limit(v):\n"
        "        nonlocal limit\n"
        "        limit = v\n"
        "    return below, set_limit\n"
        "if __name__ == '__main__':\n"
        "    below, set_limit = make()\n"
        "    with mppool.Pool(1) as pool:\n"
        "        out = [pool.submit(above, 2).result(60), pool.submit(uses_helper, 1).result(60),\n"
        "               pool.submit(below, 2).result(60)]\n"
        "        THRESH = 5\n"
        "        OFFSET = 100\n"
        "        set_limit(1)\n"
        "        out += [pool.submit(above, 2).result(60),\n"
        "                pool.submit(uses_helper, 1).result(60),\n"
        "                pool.submit(below, 2).result(60)]\n"
        "    print(out)\n"
    )
    done = run_python(str(script), timeout=T)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[True, 11, True, False, 101, False]"


# --- 5. small things a new user hit -------------------------------------------------------
def test_without_the_http_extra_serving_names_the_extra_to_install(
    pool: mppool.Pool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mppool._web import _cli

    monkeypatch.setitem(sys.modules, "aiohttp", None)  # import aiohttp now fails
    for start in (pool.serve, lambda: mppool.serve(pool)):
        with pytest.raises(ModuleNotFoundError, match=r"pip install 'mppool\[http\]'"):
            start()
    assert _cli.main(["serve", "--port", "0", "--workers", "1"]) == 1
    assert "pip install 'mppool[http]'" in capsys.readouterr().err


def test_version_option(capsys: pytest.CaptureFixture[str]) -> None:
    from mppool._web import _cli

    with pytest.raises(SystemExit) as exit_info:
        _cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mppool {mppool.__version__}"


def test_printed_stats_are_a_readable_table(pool: mppool.Pool) -> None:
    assert list(pool.map(tasks.square, range(3), chunksize=1, timeout=T)) == [0, 1, 4]
    stats = pool.stats()
    text = str(stats)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    rows = {line.split()[0]: line.split()[-1] for line in lines if line.strip()}
    assert rows["completed"] == str(stats.completed) == "3"
    assert rows["failed"] == "0"
    assert sum(1 for line in lines if line.split()[:1] in (["0"], ["1"])) == 2  # worker rows
    assert repr(stats).startswith("PoolStats(")  # repr keeps every field


def test_futures_have_a_public_type_with_task_id(pool: mppool.Pool) -> None:
    fut = pool.submit(tasks.square, 5)
    assert isinstance(fut, mppool.Future)
    assert isinstance(fut.task_id, int) and fut.task_id > 0
    assert pool.task(fut.task_id).id == fut.task_id
    assert fut.result(timeout=T) == 25


def test_a_users_mypy_finds_the_installed_package(tmp_path: Path) -> None:
    # As after README's `pip install -e .`: no PYTHONPATH, no config, run from elsewhere.
    (tmp_path / "user.py").write_text(
        "import mppool\n"
        "def double(x: int) -> int:\n"
        "    return 2 * x\n"
        "def main() -> int:\n"
        "    with mppool.Pool(1) as pool:\n"
        "        fut = pool.submit(double, 2)\n"
        "        reveal_type(fut)\n"
        "        task_id: int = fut.task_id\n"
        "        return task_id + fut.result()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", ".cache", "user.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(
        r'Revealed type is "mppool\._client\._future\.Future\[(builtins\.)?int\]"', done.stdout
    )


def test_help_shows_what_an_unset_option_means() -> None:
    import inspect

    shown = str(inspect.signature(mppool.Pool.options))
    assert "object at 0x" not in shown
    assert "priority: 'float' = <unchanged>" in shown


def test_cpu_percent_of_a_busy_worker_is_not_zero_on_the_first_look(
    leak_check: None, fifos: Any
) -> None:
    started, gate = fifos("started"), fifos("gate")
    # Not make_pool: it looks at the stats once itself, and this is about the first look.
    with mppool.Pool(1) as pool:
        busy = pool.submit(tasks.spin_then_wait, 0.3, started.path, gate.path)
        started.take()  # it has used 0.3 s of CPU and is still spinning
        (worker,) = pool.stats().workers
        gate.post()
        assert busy.result(timeout=T) >= 0.3
    assert worker.state == "busy"
    assert worker.cpu_percent is not None and worker.cpu_percent > 20


def test_processes_are_named_in_ps(pool: mppool.Pool) -> None:
    import psutil

    name = " ".join(psutil.Process(pool.dispatcher_pid).cmdline()).strip()
    assert name == "mppool: dispatcher"
    for w in pool.stats().workers:
        name = " ".join(psutil.Process(w.pid).cmdline()).strip()
        assert name == f"mppool: worker {w.index}"
