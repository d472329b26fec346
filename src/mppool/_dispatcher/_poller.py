"""Readiness of file descriptors for the dispatcher's loop: epoll, else the selectors module.

Each watched descriptor has a handler (a callable without arguments); :meth:`Poller.wait`
returns the handlers of the descriptors that are ready. Using ``select.epoll`` directly where
it exists spares the loop the key objects of the ``selectors`` module on every round.
"""

from __future__ import annotations

import select
from collections.abc import Callable

Handler = Callable[[], None]


class Poller:
    """Watches descriptors for reading or writing; one handler per descriptor."""

    def __init__(self) -> None:
        self._handlers: dict[int, Handler] = {}
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        if self._epoll is None:  # macOS and others
            import selectors

            self._selector: selectors.BaseSelector = selectors.DefaultSelector()

    def watch(self, fd: int, handler: Handler, *, write: bool = False) -> None:
        self._handlers[fd] = handler
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLOUT if write else select.EPOLLIN)
        else:
            import selectors

            self._selector.register(fd, selectors.EVENT_WRITE if write else selectors.EVENT_READ)

    def unwatch(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is None:
            return
        try:
            if self._epoll is not None:
                self._epoll.unregister(fd)
            else:
                self._selector.unregister(fd)
        except (KeyError, ValueError, OSError):
            pass

    def watching(self, fd: int) -> bool:
        return fd in self._handlers

    def wait(self, timeout: float | None) -> list[Handler]:
        """Handlers of the ready descriptors, after waiting at most ``timeout`` seconds."""
        handlers = self._handlers
        if self._epoll is not None:
            events = self._epoll.poll(-1 if timeout is None else timeout)
            return [handlers[fd] for fd, _ in events if fd in handlers]
        ready = self._selector.select(timeout)
        return [handlers[key.fd] for key, _ in ready if key.fd in handlers]
