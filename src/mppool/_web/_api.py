"""The HTTP API's application: its guard (authentication, Host check, JSON errors), the
dashboard page, stats, workers, functions and history; tasks are in ``_task_api``.

Calls into the pool (each a round trip to the dispatcher) run on a small thread pool, so a
slow one never stalls the event loop or other requests.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import functools
import hashlib
import hmac
import importlib.resources
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from .._errors import BrokenPoolError, PoolClosedError
from ._history import History
from ._prometheus import metrics_registry, metrics_text
from ._registry import Registry, default_registry
from ._replies import HTTPError, error, jsonable, reply
from ._server import is_loopback
from ._task_api import MAX_BODY_BYTES, TaskApi

if TYPE_CHECKING:
    from .._client._pool import Pool

log = logging.getLogger("mppool.http")

EXECUTOR_THREADS = 4
# Served without a token: the static page, and the probes a container orchestrator sends.
_OPEN_PATHS = frozenset({"/", "/healthz", "/readyz"})

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _csp(page: str) -> str:
    """A Content-Security-Policy allowing exactly the page's own inline script and style."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
            for b in blocks
        )

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


class Api:
    """What the server answers, for one pool."""

    def __init__(self, pool: Pool, host: str, token: str | None, registry: Registry | None) -> None:
        self._pool = pool
        self._host = host
        self._token = token.encode() if token is not None else None
        self._registry = registry if registry is not None else default_registry
        self._metrics = metrics_registry(pool)
        self._history = History()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            EXECUTOR_THREADS, thread_name_prefix="mppool-http"
        )
        self._tasks = TaskApi(pool, self._registry, self._call)
        page = importlib.resources.files("mppool._web").joinpath("_dashboard.html")
        self._page = page.read_text("utf-8")
        self._page_headers = {
            "Content-Security-Policy": _csp(self._page),
            "Cache-Control": "no-store",
        }

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._guard])
        app.router.add_get("/", self._dashboard)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/api/stats", self._stats)
        app.router.add_get("/api/history", self._history_page)
        app.router.add_get("/api/workers", self._workers)
        app.router.add_get("/api/functions", self._functions)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._tasks.add_routes(app)
        return app

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._tasks.forget()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking pool call on the executor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def sample_forever(self) -> None:
        """Take a history sample every interval while the server runs (cancelled at close)."""
        interval = self._history.interval
        while True:
            started = time.monotonic()
            try:
                stats = await self._call(self._pool.stats)
            except (PoolClosedError, BrokenPoolError):
                pass  # nothing more to chart; the page shows the pool's state itself
            except Exception:
                log.exception("could not sample the pool's stats")
            else:
                self._history.record(stats, time.time())
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    # --- guard ---------------------------------------------------------------------------------
    def _host_allowed(self, request: web.Request) -> bool:
        host = request.host
        # Strip a port: "[::1]:8000" -> "[::1]", "localhost:8000" -> "localhost".
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 or "]:" in host else host
        return is_loopback(name) or name.strip("[]") == self._host

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate, then turn every failure into a JSON error."""
        try:
            if self._token is None:
                if not self._host_allowed(request):
                    raise HTTPError(403, f"unexpected Host header {request.host!r}")
            elif request.path not in _OPEN_PATHS:
                given = request.headers.get("Authorization", "")
                scheme, _, credential = given.partition(" ")
                # compare_digest takes time independent of where the strings differ.
                if scheme.lower() != "bearer" or not hmac.compare_digest(
                    credential.strip().encode(), self._token
                ):
                    return error(
                        401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}
                    )
            return await handler(request)
        except HTTPError as exc:
            return error(exc.status, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status in (404, 405):
                return error(exc.status, f"{exc.reason}: {request.method} {request.path}")
            return error(exc.status, exc.text or exc.reason)
        except (PoolClosedError, BrokenPoolError) as exc:
            return error(503, f"the pool is not available: {exc}")
        except Exception:
            log.exception("error handling %s %s", request.method, request.path)
            return error(500, "internal server error")

    # --- pages ---------------------------------------------------------------------------------
    async def _dashboard(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self._page, content_type="text/html", charset="utf-8", headers=self._page_headers
        )

    async def _metrics_page(self, request: web.Request) -> web.Response:
        body = await self._call(metrics_text, self._metrics)
        return web.Response(
            body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def _stats(self, request: web.Request) -> web.Response:
        stats = await self._call(self._pool.stats)
        return reply(jsonable(dataclasses.asdict(stats)))

    async def _healthz(self, request: web.Request) -> web.Response:
        """Liveness: this process answers."""
        return reply({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        """Readiness: the pool runs and a worker is ready to take work; 503 otherwise. A
        worker starting beside ready ones (a growing pool, a replacement) does not make the
        pool unready: it serves meanwhile."""
        state = self._pool.state
        if state != "running":
            return reply({"status": state}, 503)
        try:
            stats = await self._call(self._pool.stats)
        except (PoolClosedError, BrokenPoolError) as exc:
            return reply({"status": self._pool.state, "reason": str(exc)}, 503)
        ready = sum(1 for w in stats.workers if w.state in ("idle", "busy"))
        body = {"status": "ready" if ready else "starting", "workers": ready}
        return reply(body, 200 if ready else 503)

    async def _history_page(self, request: web.Request) -> web.Response:
        return reply(self._history.as_json())

    async def _workers(self, request: web.Request) -> web.Response:
        stats = await self._call(self._pool.stats)
        return reply({"workers": [jsonable(dataclasses.asdict(w)) for w in stats.workers]})

    async def _functions(self, request: web.Request) -> web.Response:
        rows = []
        for name in self._registry.names():
            try:
                signature = str(inspect.signature(self._registry.get(name)))
            except (KeyError, TypeError, ValueError):
                signature = "(...)"
            rows.append({"name": name, "signature": signature})
        return reply({"functions": rows})
