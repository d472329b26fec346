"""An elastic pool on the user's side: ``pool.resize(n)``, following the dispatcher's
resizes, and the thread that runs a user's ``Autoscale(policy=...)``.

The dispatcher owns the size (it forks and retires the workers); the client keeps the
current target so that maps size their window and chunks for it (``_Core.resized``). A user
policy is user code, which the dispatcher never runs: it is called here, on a thread of the
pool, with ``pool.stats()``, and its answer is sent as a resize.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from .. import _protocol as p
from .._errors import BrokenPoolError, MppoolError, PoolClosedError
from .._scaling import Autoscale

if TYPE_CHECKING:
    from ._core import _Core

log = logging.getLogger("mppool.workers")
DEMAND_SECONDS = 0.05  # least time between two reports of a map's demand that both differ
JOIN_SECONDS = 10.0  # longest wait for a policy call under way when the pool shuts down


def check_size(workers: int, autoscale: Autoscale | None) -> int:
    """``workers`` as a valid target for ``resize``.

    Raises:
        ValueError: if it is not an int >= 1, or outside an autoscaled pool's bounds.
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, not {workers!r}")
    if autoscale is not None and not autoscale.min <= workers <= autoscale.max:
        raise ValueError(
            f"an autoscaled pool stays within min={autoscale.min} and max={autoscale.max} "
            f"workers; resize({workers}) is outside"
        )
    return workers


def sizes(workers: int | Autoscale | None) -> tuple[Autoscale | None, int, int]:
    """``Pool(workers=...)`` read: ``(autoscale or None, workers at start, most workers)``.

    Raises:
        ValueError: for a count that is not an int >= 1.
    """
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, Autoscale):
        return workers, workers.min, workers.max
    workers = check_size(workers, None)
    return None, workers, workers


def send_resize(core: _Core, workers: int, reason: str) -> None:
    """Ask the dispatcher for ``workers`` workers; return once it has forked or retired
    them (the reader thread has already passed the new size to the maps).

    Raises:
        PoolClosedError: the pool is shutting down (it may grow then, not shrink).
        BrokenPoolError: the pool is broken.
        MppoolError: a worker could not be started; the pool keeps the workers it has.
    """
    with core.lock:
        core.check_open()
    _, error = core.requests.ask(
        lambda request_id: p.Resize(p.C_RESIZE, request_id, workers, reason)
    )
    if error == "closed":
        raise PoolClosedError("the pool is shutting down: it cannot shrink now")
    if error == "broken":
        core.check_answering()  # raises the pool's BrokenPoolError, with its cause
        raise BrokenPoolError("the pool is broken")
    if error:
        raise MppoolError(f"resize({workers}): {error}; the pool has {core.workers} workers")


def follow(core: _Core, workers: int) -> None:
    """The pool's size is now ``workers``: maps plan their chunks and window for it."""
    if core.slots is not None and not core.autoscaled:
        core.slots.set_workers(workers)  # max_queue waiting besides one running per worker
    core.workers = workers
    for planner in list(core.catalog.planners.values()):
        planner.workers = workers
    with core.lock:
        maps = core.maps.all()
    for mapping in maps:
        mapping.resized(workers)


class Demand:
    """What a map on an autoscaled pool has not read of its input yet, told to the
    dispatcher: a map keeps only a small window of chunks in the queue, so the queue alone
    would never show the work a long map holds back.

    Sent when it starts or stops being zero, or has changed by a quarter and
    ``DEMAND_SECONDS`` have passed since the last report.
    """

    def __init__(self, core: _Core) -> None:
        self.core = core
        self.id = next(core.ids)
        self.sent = 0.0
        self.at = 0.0

    def report(self, seconds: float) -> None:
        last, now = self.sent, time.monotonic()
        if (seconds > 0) == (last > 0) and (
            abs(seconds - last) <= 0.25 * last or now - self.at < DEMAND_SECONDS
        ):
            return
        self.sent, self.at = seconds, now
        if self.core.alive():
            self.core.send(p.Demand(p.C_DEMAND, self.id, seconds))


class PolicyThread:
    """Calls ``autoscale.policy(pool.stats())`` every ``interval`` seconds and resizes."""

    def __init__(self, core: _Core, autoscale: Autoscale) -> None:
        self.autoscale = autoscale
        self.stop = threading.Event()
        # The thread holds the core, not the pool, so a dropped pool is still collected.
        self._stats = core.requests.stats
        self._core = core
        self.thread = threading.Thread(target=self._run, name="mppool-autoscale", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        policy = self.autoscale.policy
        assert policy is not None
        core = self._core
        while not self.stop.wait(self.autoscale.interval):
            try:
                wanted = self.autoscale.clamp(int(policy(self._stats())))
                if wanted != core.workers and not self.stop.is_set():
                    send_resize(core, wanted, "policy")
            except Exception:
                if self.stop.is_set() or not core.alive():
                    return  # the pool is ending: nothing more to decide
                log.exception("the autoscale policy failed; the pool keeps its size")

    def close(self, wait: bool) -> None:
        """Stop calling the policy (at once, or after the call under way if ``wait``)."""
        self.stop.set()
        if wait and self.thread is not threading.current_thread():
            self.thread.join(timeout=JOIN_SECONDS)
