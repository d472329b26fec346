"""What the soak watches and does to its pool: memory of its processes, and the ``--resize``
mode, where a thread resizes the pool at random while the drivers run.

Workers that leave a shrinking pool exit cleanly; their pids are collected from the pool's
``worker_died`` events (reason ``resized``) so that the judge treats them like the workers
alive at the end (exited, not died): a task that ran twice because of a resize is then a
duplicate, as it should be, not a re-run after a death.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any

import psutil

import mppool


class LeftPids(logging.Handler):
    """Pids of workers that left because the pool shrank (from ``mppool.workers`` events)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.pids: set[int] = set()
        self.logger = logging.getLogger("mppool.workers")
        self.root = logging.getLogger("mppool")  # the level the pool asks its events for

    def __enter__(self) -> LeftPids:
        self.logger.addHandler(self)
        self.level_before = self.root.level
        self.root.setLevel(logging.INFO)  # before the pool starts: it asks for this level
        return self

    def __exit__(self, *exc: Any) -> None:
        self.logger.removeHandler(self)
        self.root.setLevel(self.level_before)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "worker_died" and record.__dict__.get("reason") in (
            "resized",
        ):
            self.pids.add(int(record.__dict__["pid"]))


class Resizer(threading.Thread):
    """Resizes ``pool`` to a random size in ``1..most`` every 0.1 to 0.6 s until ``end``."""

    def __init__(self, pool: mppool.Pool, most: int, end: float, seed: int) -> None:
        super().__init__(name="soak-resizer", daemon=True)
        self.pool, self.most, self.end = pool, most, end
        self.rng = random.Random(seed)
        self.sizes: list[int] = []
        self.errors: list[str] = []

    def run(self) -> None:
        pause = threading.Event()
        while time.monotonic() < self.end:
            pause.wait(self.rng.uniform(0.1, 0.6))
            n = self.rng.randint(1, self.most)
            try:
                self.pool.resize(n)
            except mppool.PoolClosedError:
                return  # the run ended as this resize went out
            except mppool.MppoolError as exc:
                self.errors.append(repr(exc))
                return
            self.sizes.append(n)


def _rss(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def rss(pool: mppool.Pool) -> dict[str, Any]:
    """Resident bytes of the user process, the dispatcher and each current worker (by pid)."""
    workers = {str(w.pid): _rss(w.pid) for w in pool.stats().workers if w.pid}
    return {"user": _rss(os.getpid()), "dispatcher": _rss(pool.dispatcher_pid), "workers": workers}


def memory(start: dict[str, Any], end: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """RSS in MiB at start and end, and the growth, per process kind (workers: their mean)."""
    out: dict[str, dict[str, float | None]] = {}
    for kind in ("user", "dispatcher", "workers"):
        pair: list[float | None] = []
        for value in (start[kind], end[kind]):
            if kind == "workers":
                known = [v for v in value.values() if v]
                value = sum(known) / len(known) if known else None
            pair.append(None if value is None else round(value / 2**20, 1))
        a, b = pair
        growth = None if a is None or b is None else round(b - a, 1)
        out[kind] = {"start": a, "end": b, "growth": growth}
    return out
