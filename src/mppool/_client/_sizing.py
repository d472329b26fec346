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
from typing import TYPE_CHECKING

from .. import _protocol as p
from .._errors import MppoolError
from .._scaling import Autoscale

if TYPE_CHECKING:
    from ._core import _Core

log = logging.getLogger("mppool.workers")


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
    them (the reader thread has already passed the new size to the maps)."""
    with core.lock:
        core.check_open()
    core.requests.ask(lambda request_id: p.Resize(p.C_RESIZE, request_id, workers, reason))


def follow(core: _Core, workers: int) -> None:
    """The pool's size is now ``workers``: maps plan their chunks and window for it."""
    core.workers = workers
    for planner in list(core.catalog.planners.values()):
        planner.workers = workers
    with core.lock:
        maps = core.maps.all()
    for mapping in maps:
        mapping.resized(workers)


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
        while not self.stop.wait(self.autoscale.interval):
            try:
                stats = self._stats()
            except MppoolError:
                return  # the pool ended
            try:
                wanted = self.autoscale.clamp(int(policy(stats)))
            except Exception:
                log.exception("the autoscale policy raised; the pool keeps its size")
                continue
            if wanted != self._core.workers:
                try:
                    send_resize(self._core, wanted, "policy")
                except MppoolError:
                    return

    def close(self) -> None:
        self.stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=5.0)
