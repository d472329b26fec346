"""The maps still open on a pool, and a graceful shutdown that waits for them to be fed.

Open maps are part of the work already asked for: a graceful ``shutdown()`` makes each feed
its whole input (``MapIterator.eager``), and the dispatcher is told to end only once every
map has been fed, so no item is refused for arriving after the shutdown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _protocol as p

if TYPE_CHECKING:
    from ._core import _Core


class OpenMaps:
    """A pool's open maps; those still reading their input; the shutdown held for them."""

    def __init__(self, core: _Core) -> None:
        self._core = core
        self._open: set[Any] = set()
        self._feeding: set[Any] = set()
        self._shutdown: tuple[bool, float] | None = None  # (cancel queued, deadline), held

    def add(self, mapping: Any) -> None:
        core = self._core
        with core.lock:
            core.check_open()
            self._open.add(mapping)
            self._feeding.add(mapping)

    def remove(self, mapping: Any) -> None:
        core = self._core
        with core.lock:
            present = mapping in self._open
            self._open.discard(mapping)
            self._feeding.discard(mapping)
        if present and not mapping.keyed:
            core.catalog.release(mapping.fn_id, mapping.opts_id)
        self._send_shutdown_if_fed()

    def fed(self, mapping: Any) -> None:
        """A map has read all of its input (or stopped): a held shutdown may go out."""
        with self._core.lock:
            self._feeding.discard(mapping)
        self._send_shutdown_if_fed()

    def all(self) -> list[Any]:
        """The open maps (call with the core's lock held)."""
        return list(self._open)

    def shut_down_when_fed(self, cancel_queued: bool, deadline: float) -> None:
        """Tell the dispatcher to shut down once every open map has been fed."""
        with self._core.lock:
            self._shutdown = (cancel_queued, deadline)
        self._send_shutdown_if_fed()

    def _send_shutdown_if_fed(self) -> None:
        core = self._core
        with core.lock:
            request = self._shutdown
            if request is None or self._feeding:
                return
            self._shutdown = None
        core.conn.send(p.Shutdown(p.C_SHUTDOWN, *request))
        core.conn.flush()
