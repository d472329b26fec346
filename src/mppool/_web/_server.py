"""An HTTP API and live dashboard for a pool, served by aiohttp from a background thread.

    server = mppool.serve(pool, port=8000)          # or pool.serve(port=8000)
    print(server.url)                               # http://127.0.0.1:8000/
    ...
    server.close()

Endpoints (all JSON; errors are ``{"error": "..."}`` with a 4xx/5xx status):

    GET    /api/stats            the pool's stats snapshot
    GET    /api/history          the last few minutes of samples the dashboard charts
    GET    /api/workers          {"workers": [...]}
    GET    /api/functions        {"functions": [{"name", "signature"}]}
    GET    /api/tasks            {"tasks": [...]}; ?state=failed, ?limit=50
    POST   /api/tasks            {"name": "primes", "args": [5000], "kwargs": {}, "priority": 0,
                                  "timeout": null, "kind": null, "key": null} -> 202 {"id": 7}
    GET    /api/tasks/{id}       state and timings; for tasks submitted here also the result
                                 (?wait=10 waits up to 10 s for it to finish)
    DELETE /api/tasks/{id}       cancel; ?kill=true also kills a running task's worker
    GET    /metrics              Prometheus text
    GET    /                     the dashboard page

Safety. Only JSON is accepted and only functions registered by name can run: nothing received
is ever unpickled. The server binds to loopback unless told otherwise, and binding elsewhere
requires a bearer token. Without a token, requests must name a loopback host (a web page
cannot rebind its own DNS name to 127.0.0.1 and reach the API), and a submit must be
``Content-Type: application/json``, which browsers never send cross-origin without a CORS
preflight that this server does not grant.

This module is the server's life (its thread, event loop and socket); ``_api`` and
``_task_api`` answer the requests, ``_history`` keeps the samples. aiohttp comes with the
``http`` extra: without it, :func:`serve` says which extra to install.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._client._pool import Pool
    from ._registry import Registry

__all__ = ["Server", "is_loopback", "require_http", "serve"]

START_TIMEOUT = 10.0  # seconds to wait for the listening socket
STOP_TIMEOUT = 10.0  # seconds close() waits for the server thread
SHUTDOWN_GRACE = 1.0  # seconds in-flight requests get when the server stops

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def require_http(what: str) -> None:
    """Raise a ModuleNotFoundError naming the extra to install if aiohttp is missing."""
    try:
        import aiohttp  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"{what} needs aiohttp, which comes with the 'http' extra: pip install 'mppool[http]'",
            name="aiohttp",
        ) from exc


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) names this machine only."""
    host = host.strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve anywhere


class Server:
    """An HTTP server for one pool, running in a background thread (see :func:`serve`).

    Attributes:
        host: the address it listens on.
        port: the port it listens on (the real one when 0 was asked for).
        url: the dashboard's address, e.g. ``http://127.0.0.1:8000/``.
    """

    def __init__(
        self,
        pool: Pool,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        registry: Registry | None = None,
    ) -> None:
        require_http("mppool.serve()")
        from ._api import Api

        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string")
        if not is_loopback(host) and token is None:
            raise ValueError(
                f"binding to {host!r} exposes the pool beyond this machine: pass a token "
                "(clients then send 'Authorization: Bearer <token>')"
            )
        self.host = host
        self.port = port
        self._api = Api(pool, host, token, registry)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mppool-http", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            self.close()
            raise TimeoutError("the HTTP server did not start in time")
        if self._startup_error is not None:
            self.close()
            raise self._startup_error
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        from aiohttp import web

        self._stop = asyncio.Event()
        runner = web.AppRunner(
            self._api.app(), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE
        )
        try:
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            self.port = int(runner.addresses[0][1])
        except BaseException as exc:  # e.g. the port is taken: report it to the caller
            self._startup_error = exc
            self._ready.set()
            await runner.cleanup()
            return
        self._ready.set()
        sampler = asyncio.ensure_future(self._api.sample_forever())
        try:
            await self._stop.wait()
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            await runner.cleanup()

    def close(self) -> None:
        """Stop serving: close the socket, end the thread, forget tracked tasks. Idempotent.

        Tasks submitted over HTTP are not cancelled; they belong to the pool.
        """
        if self._closed:
            return
        self._closed = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread.is_alive():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop already closed (it failed to start)
        self._thread.join(STOP_TIMEOUT)
        self._api.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return f"<mppool.Server {self.host}:{self.port} {state}>"


def serve(
    pool: Pool,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: str | None = None,
    registry: Registry | None = None,
) -> Server:
    """Serve ``pool``'s HTTP API and dashboard from a background thread.

    Needs the ``http`` extra (``pip install 'mppool[http]'``).

    Args:
        pool: the pool to expose.
        host: the address to bind; loopback by default.
        port: the port; 0 picks a free one (read it from ``server.port``).
        token: a bearer token every API request must carry (``Authorization: Bearer ...``);
            the dashboard accepts it as ``/?token=...``. Required unless ``host`` is loopback.
        registry: the task functions that ``POST /api/tasks`` may run (default: the
            built-ins plus whatever was added with ``mppool.register``).

    Returns:
        The running :class:`Server`; ``close()`` it (or use it as a context manager).

    Raises:
        ValueError: for a non-loopback ``host`` without a token, or an empty token.
        OSError: if the address cannot be bound.
        ModuleNotFoundError: without the ``http`` extra.
    """
    return Server(pool, host, port, token=token, registry=registry)
