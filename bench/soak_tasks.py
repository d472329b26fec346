"""What the soak's tasks (``bench/soak.py``) return and record, and the checks of both.

A task or map item with unique id ``uid`` returns ``(uid, digest(uid))``; :func:`match` finds the
wrong results of a map (misdelivered, corrupted, delivered twice). Every run of a task appends
``S <uid> <time>`` (``time.monotonic()``, one clock for all processes on Linux) to a file of its
own process with one unbuffered ``os.write``, so a crash right after loses nothing; a task about
to raise, crash or hang first appends ``R``, ``C`` or ``H``. After the run :func:`read_logs`
counts every uid's runs and :func:`judge` compares them with what the uid's outcome allows (one of
the ``ONCE`` ... ``ANY`` codes, set by the soak).

A uid that never failed itself (no R, C or H record) but ran more than once is a duplicate,
unless every earlier run was followed, within ``RERUN_WINDOW`` seconds and before the next run,
by the death of the process that ran it: results a worker has not sent yet die with it, and
running those tasks again is at-least-once delivery (counted as ``rerun_after_worker_death``). A
worker that died without a C or H record (killed for another reason) counts as a death too, and
is counted itself.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG_ENV = "MPPOOL_SOAK_LOG"  # the folder of the records, inherited by the dispatcher and workers
ONCE, AT_MOST_ONCE, NEVER, NEVER_CANCELLED, ANY = 1, 2, 3, 4, 5  # allowed runs of a uid
MAP_ITEM = 0x80  # flag on a uid's kind: it is a map item
RERUN_WINDOW = 2.0  # a worker death this soon after a run explains a re-run of it

_log_fds: dict[int, int] = {}


def digest(uid: int) -> int:
    """The value a task must return with its uid: a 64-bit hash of it."""
    return int.from_bytes(hashlib.blake2b(uid.to_bytes(8, "little"), digest_size=8).digest())


def match(
    items: list[tuple[int, int, float]], got: list[Any], ordered: bool
) -> tuple[int, set[int]]:
    """Check a map's results against its items (``(uid, kind, cost)``, in input order).

    Args:
        items: The items the map took from its input.
        got: The results it yielded.
        ordered: ``map`` (results in input order) rather than ``imap_unordered``.

    Returns:
        The number of wrong results (foreign, corrupted, out of place or delivered twice) and
        the uids whose correct result was delivered.
    """
    delivered: set[int] = set()
    wrong = 0
    if ordered:
        for item, value in zip(items, got, strict=False):
            if value == (item[0], digest(item[0])):
                delivered.add(item[0])
            else:
                wrong += 1
        return wrong + max(0, len(got) - len(items)), delivered
    allowed = {item[0] for item in items}
    for value in got:
        uid = value[0] if isinstance(value, tuple) and len(value) == 2 else None
        if uid in allowed and uid not in delivered and value == (uid, digest(uid)):
            delivered.add(uid)
        else:
            wrong += 1
    return wrong, delivered


def record(tag: str, uid: int) -> None:
    """Append one record for ``uid`` to this process's file (in the workers).

    Args:
        tag: ``S`` (a run starts), ``R`` (it is about to raise), ``C`` (crash), ``H`` (hang).
        uid: The task's or map item's unique id.
    """
    pid = os.getpid()
    fd = _log_fds.get(pid)
    if fd is None:  # one file per process; the open time keeps a reused pid apart
        name = os.path.join(os.environ[LOG_ENV], f"exec-{pid}-{time.monotonic_ns()}.log")
        fd = _log_fds[pid] = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"{tag} {uid} {time.monotonic():.6f}\n".encode())


@dataclass
class Logs:
    """What the records say."""

    runs: bytearray  # per uid: S records (capped at 255)
    flags: bytearray  # per uid: 1 raised, 2 crashed, 4 hung (in any of its runs)
    events: list[list[tuple[float, str]]]  # per file: its R, C, H and D (died) events, by time
    multi: dict[int, list[tuple[float, int]]]  # uid -> (time, file) of each run, if it ran twice
    tags: Counter[str]  # records per tag, malformed lines, deaths without a record
    checks: Counter[int]  # per uid under check: its records of the checked tag


def read_logs(
    folder: Path, size: int, checks: dict[int, tuple[str, int, int]], final: set[int]
) -> Logs:
    """Parse every process's records; a worker that died without a C or H record gets a D event.

    Args:
        folder: The records' folder.
        size: Number of uids handed out.
        checks: Uids whose records of one tag (the first field) are counted.
        final: Pids of the workers alive at the end (they exited at shutdown, not died).

    Returns:
        The parsed :class:`Logs`.
    """
    files = sorted(folder.glob("exec-*.log"), key=lambda p: int(p.stem.split("-")[2]))
    newest = {int(p.stem.split("-")[1]): p for p in files}  # a reused pid: its last process
    logs = Logs(bytearray(size), bytearray(size), [[] for _ in files], {}, Counter(), Counter())
    first_time, first_file = array("d", bytes(8 * size)), array("i", bytes(4 * size))
    for index, path in enumerate(files):
        last, died = 0.0, False
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= size:
                    logs.tags["malformed"] += 1
                    continue
                tag, uid, last = parts[0], int(parts[1]), float(parts[2])
                logs.tags[tag] += 1
                if tag == "S":
                    runs = logs.runs[uid]
                    if runs == 0:
                        first_time[uid], first_file[uid] = last, index
                    elif runs == 1:
                        logs.multi[uid] = [(first_time[uid], first_file[uid]), (last, index)]
                    else:
                        logs.multi[uid].append((last, index))
                    logs.runs[uid] = min(255, runs + 1)
                    continue
                logs.flags[uid] |= {"R": 1, "C": 2, "H": 4}.get(tag, 0)
                logs.events[index].append((last, tag))
                died = died or tag in "CH"
                if uid in checks and checks[uid][0] == tag:
                    logs.checks[uid] += 1
        pid = int(path.stem.split("-")[1])
        if not died and not (pid in final and newest[pid] == path):
            logs.events[index].append((last, "D"))
            logs.tags["worker_deaths_without_C_or_H"] += 1
    return logs


def rerun_cause(logs: Logs, uid: int) -> str:
    """Why a uid that never failed ran more than once, judged from the events after each run.

    Returns:
        ``rerun_after_worker_death`` if each run's process died soon after it;
        ``after_retryable_error_in_same_worker`` if some run was followed by another task's
        retryable error instead (a map chunk retried whole); else ``unexplained``.
    """
    runs, seen = sorted(logs.multi[uid]), set()
    for (t, index), (t_next, _) in itertools.pairwise(runs):
        events = logs.events[index]
        i, cause = bisect.bisect_left(events, (t, "")), "unexplained"
        while i < len(events) and events[i][0] <= min(t + RERUN_WINDOW, t_next):
            if events[i][1] in "CHD":
                cause = "worker_died"
                break
            cause, i = "after_retryable_error_in_same_worker", i + 1
        seen.add(cause)
    if seen == {"worker_died"}:
        return "rerun_after_worker_death"
    return "unexplained" if "unexplained" in seen else "after_retryable_error_in_same_worker"


def judge(
    expect: bytearray, kinds: bytearray, checks: dict[int, tuple[str, int, int]], logs: Logs
) -> tuple[Counter[str], list[str]]:
    """Compare every uid's runs with what its outcome allows, and the checked record counts.

    Args:
        expect: Per uid, its allowed runs (``ONCE`` ... ``ANY``).
        kinds: Per uid, its kind, with ``MAP_ITEM`` set for map items.
        checks: Uid -> (tag, min, max): how many records of that tag it must have.
        logs: The parsed records.

    Returns:
        Counters (``duplicated.*``, ``wrong.*``, ``unexpected.*``, ``rerun_after_worker_death.*``)
        and descriptions of the first attempt-count mismatches.
    """
    c: Counter[str] = Counter()
    for uid, (code, runs, flags) in enumerate(zip(expect, logs.runs, logs.flags, strict=True)):
        where = "map_item" if kinds[uid] & MAP_ITEM else "single"
        if code == ONCE and runs == 0:
            c[f"wrong.{where}.delivered_without_a_logged_run"] += 1
        elif code == NEVER and runs:
            c[f"duplicated.{where}.ran_although_it_should_not"] += 1
        elif code == NEVER_CANCELLED and runs:
            c["unexpected.single.ran_after_cancel_while_delayed"] += 1
        elif code in (ONCE, AT_MOST_ONCE) and runs > 1 and not flags:
            cause = rerun_cause(logs, uid)
            c[
                f"{cause}.{where}" if cause.startswith("rerun") else f"duplicated.{where}.{cause}"
            ] += 1
    samples = []
    for uid, (tag, low, high) in checks.items():
        if not low <= logs.checks[uid] <= high:
            c["unexpected.single.attempts_mismatch"] += 1
            samples.append(f"uid {uid}: {logs.checks[uid]} {tag} records, expected {low}-{high}")
    return c, samples[:10]
