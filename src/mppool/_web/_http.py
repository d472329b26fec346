"""An HTTP API and live dashboard for a pool, served by aiohttp from a background thread.

    server = mppool.serve(pool, port=8000)          # or pool.serve(port=8000)
    print(server.url)                               # http://127.0.0.1:8000/
    ...
    server.close()

Endpoints (all JSON; errors are ``{"error": "..."}`` with a 4xx/5xx status):

    GET    /api/stats            the pool's stats snapshot
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

The event loop runs in its own thread; calls into the pool (each a round trip to the
dispatcher) run on a small thread pool so a slow one never stalls other requests.
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
import ipaddress
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from .._errors import BrokenPoolError, PoolClosedError, QueueFullError
from .._stats import TaskInfo
from ._prometheus import metrics_registry, metrics_text
from ._registry import Registry, default_registry

if TYPE_CHECKING:
    from .._client._pool import Pool

__all__ = ["Server", "serve"]

log = logging.getLogger("mppool.http")

MAX_BODY_BYTES = 64 * 1024  # a task submission is a name and a few JSON arguments
TRACKED_TASKS = 10_000  # HTTP-submitted tasks whose futures (and results) are remembered
TASK_LIST_LIMIT = 1000  # most rows one /api/tasks answer carries
MAX_REPR_CHARS = 10_000  # a result that is not JSON is returned as a repr cut to this length
START_TIMEOUT = 10.0  # seconds to wait for the listening socket
STOP_TIMEOUT = 10.0  # seconds close() waits for the server thread
SHUTDOWN_GRACE = 1.0  # seconds in-flight requests get when the server stops
MAX_WAIT = 60.0  # longest ?wait= a GET /api/tasks/{id} may ask for
FINISH_WAIT = 2.0  # seconds to wait for a future the dispatcher already reports finished
EXECUTOR_THREADS = 4

TASK_STATES = frozenset({"queued", "delayed", "running", "retrying", "done", "failed", "cancelled"})
_FINISHED = frozenset({"done", "failed", "cancelled"})
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
_MAX_LABEL = 200  # longest kind or key accepted over HTTP
_SUBMIT_FIELDS = frozenset({"name", "args", "kwargs", "priority", "timeout", "kind", "key"})

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) names this machine only."""
    host = host.strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve anywhere


class _HTTPError(Exception):
    """Raised by handlers to answer with a JSON error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _dumps(obj: Any) -> str:
    # NaN and infinities are not JSON; refusing them here surfaces a bug instead of sending
    # text that strict parsers (browsers' JSON.parse included) reject.
    return json.dumps(obj, allow_nan=False, separators=(",", ":"))


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps, headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": message}, status=status, headers=headers)


def _jsonable(obj: Any) -> Any:
    """``dataclasses.asdict`` output with dict keys made strings (priorities as ``"10"``)."""
    if isinstance(obj, dict):
        return {
            (f"{k:g}" if isinstance(k, float) else str(k)): _jsonable(v) for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _encode_result(value: Any) -> tuple[Any, bool]:
    """``(value, False)`` if it is JSON, else ``(repr, True)``."""
    try:
        _dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
        if len(text) > MAX_REPR_CHARS:
            text = text[:MAX_REPR_CHARS] + "..."
        return text, True
    return value, False


def _encode_error(exc: BaseException) -> dict[str, Any]:
    cause = exc.__cause__
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": getattr(cause, "tb", None),  # the worker's, when it raised there
    }


@dataclasses.dataclass(slots=True)
class _Tracked:
    """A task submitted over HTTP: its function name and its future."""

    name: str
    future: concurrent.futures.Future[Any]


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
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string")
        if not is_loopback(host) and token is None:
            raise ValueError(
                f"binding to {host!r} exposes the pool beyond this machine: pass a token "
                "(clients then send 'Authorization: Bearer <token>')"
            )
        self.host = host
        self.port = port
        self._pool = pool
        self._token = token.encode() if token is not None else None
        self._registry = registry if registry is not None else default_registry
        self._metrics = metrics_registry(pool)
        self._tracked: OrderedDict[int, _Tracked] = OrderedDict()
        self._page = (
            importlib.resources.files("mppool._web").joinpath("_dashboard.html").read_text("utf-8")
        )
        self._page_headers = {
            "Content-Security-Policy": _csp(self._page),
            "Cache-Control": "no-store",
        }
        self._executor = concurrent.futures.ThreadPoolExecutor(
            EXECUTOR_THREADS, thread_name_prefix="mppool-http"
        )
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

    # --- lifecycle -----------------------------------------------------------------------------
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._guard])
        app.router.add_get("/", self._dashboard)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/api/stats", self._stats)
        app.router.add_get("/api/workers", self._workers)
        app.router.add_get("/api/functions", self._functions)
        app.router.add_get("/api/tasks", self._tasks)
        app.router.add_post("/api/tasks", self._submit)
        app.router.add_get(r"/api/tasks/{id:-?\d{1,18}}", self._task)
        app.router.add_delete(r"/api/tasks/{id:-?\d{1,18}}", self._cancel)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE
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
        try:
            await self._stop.wait()
        finally:
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
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._tracked.clear()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return f"<mppool.Server {self.host}:{self.port} {state}>"

    # --- plumbing ------------------------------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking pool call on the executor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _host_allowed(self, request: web.Request) -> bool:
        host = request.host
        # Strip a port: "[::1]:8000" -> "[::1]", "localhost:8000" -> "localhost".
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 or "]:" in host else host
        return is_loopback(name) or name.strip("[]") == self.host

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate, then turn every failure into a JSON error."""
        try:
            if self._token is None:
                if not self._host_allowed(request):
                    raise _HTTPError(403, f"unexpected Host header {request.host!r}")
            elif request.path != "/":  # the page itself is static and carries no data
                given = request.headers.get("Authorization", "")
                scheme, _, credential = given.partition(" ")
                # compare_digest takes time independent of where the strings differ.
                if scheme.lower() != "bearer" or not hmac.compare_digest(
                    credential.strip().encode(), self._token
                ):
                    return _error(
                        401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}
                    )
            return await handler(request)
        except _HTTPError as exc:
            return _error(exc.status, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status in (404, 405):
                return _error(exc.status, f"{exc.reason}: {request.method} {request.path}")
            return _error(exc.status, exc.text or exc.reason)
        except (PoolClosedError, BrokenPoolError) as exc:
            return _error(503, f"the pool is not available: {exc}")
        except Exception:
            log.exception("error handling %s %s", request.method, request.path)
            return _error(500, "internal server error")

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
        return _json(_jsonable(dataclasses.asdict(stats)))

    async def _workers(self, request: web.Request) -> web.Response:
        stats = await self._call(self._pool.stats)
        return _json({"workers": [_jsonable(dataclasses.asdict(w)) for w in stats.workers]})

    async def _functions(self, request: web.Request) -> web.Response:
        rows = []
        for name in self._registry.names():
            try:
                signature = str(inspect.signature(self._registry.get(name)))
            except (KeyError, TypeError, ValueError):
                signature = "(...)"
            rows.append({"name": name, "signature": signature})
        return _json({"functions": rows})

    # --- tasks ---------------------------------------------------------------------------------
    def _row(self, info: TaskInfo) -> dict[str, Any]:
        row = dataclasses.asdict(info)
        tracked = self._tracked.get(info.id)
        if tracked is not None:
            row["name"] = tracked.name
            fut = tracked.future
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                exc = fut.exception()
                assert exc is not None
                row["error"] = {"type": type(exc).__name__, "message": str(exc)}
        return row

    async def _tasks(self, request: web.Request) -> web.Response:
        state = request.query.get("state")
        if state is not None and state not in TASK_STATES:
            raise _HTTPError(400, f"unknown state {state!r}; one of {sorted(TASK_STATES)}")
        limit = TASK_LIST_LIMIT
        if "limit" in request.query:
            try:
                limit = int(request.query["limit"])
            except ValueError:
                raise _HTTPError(400, "limit must be an integer") from None
            if not 1 <= limit <= TASK_LIST_LIMIT:
                raise _HTTPError(400, f"limit must be between 1 and {TASK_LIST_LIMIT}")
        infos = await self._call(self._pool.tasks)
        if state is not None:
            infos = [i for i in infos if i.state == state]
        rows = [self._row(i) for i in infos[:limit]]
        return _json({"tasks": rows, "count": len(rows)})

    async def _task_info(self, task_id: int) -> TaskInfo | None:
        try:
            return await self._call(self._pool.task, task_id)
        except KeyError:
            return None

    async def _task(self, request: web.Request) -> web.Response:
        task_id = int(request.match_info["id"])
        tracked = self._tracked.get(task_id)
        if "wait" in request.query:
            # Long poll: a client can wait for the result instead of asking repeatedly.
            try:
                wait = float(request.query["wait"])
            except ValueError:
                raise _HTTPError(400, "wait must be a number of seconds") from None
            if not 0 <= wait <= MAX_WAIT:
                raise _HTTPError(400, f"wait must be between 0 and {MAX_WAIT} seconds")
            if tracked is not None:
                await _wait_for(tracked.future, wait)
        info = await self._task_info(task_id)
        if info is None and tracked is None:
            raise _HTTPError(404, f"no task with id {task_id}")
        if info is not None:
            row = dataclasses.asdict(info)
        else:  # out of the pool's history, but its future is still here
            row = {f.name: None for f in dataclasses.fields(TaskInfo)}
            row["id"] = task_id
        if tracked is None:
            return _json(row)
        fut = tracked.future
        if info is not None and info.state in _FINISHED and not fut.done():
            # The dispatcher has finished it; the result is a moment away in the client.
            await _wait_for(fut, FINISH_WAIT)
        row["name"] = tracked.name
        row["result"], row["result_is_repr"], row["error"] = None, False, None
        if fut.cancelled():
            row["state"] = "cancelled"
        elif fut.done():
            exc = fut.exception()
            if exc is None:
                row["state"] = "done"
                row["result"], row["result_is_repr"] = _encode_result(fut.result())
            else:
                row["state"] = "failed"
                row["error"] = _encode_error(exc)
        return _json(row)

    async def _submit(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            raise _HTTPError(415, "send the task as Content-Type: application/json")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise _HTTPError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        raw = await request.read()  # raises 413 past client_max_size
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _HTTPError(400, f"malformed JSON: {exc}") from None
        name, args, kwargs, options = self._parse_submission(body)
        try:
            fn = self._registry.bind(name, args, kwargs)
        except KeyError:
            known = ", ".join(self._registry.names())
            raise _HTTPError(400, f"unknown task function {name!r} (known: {known})") from None
        except TypeError as exc:
            raise _HTTPError(400, f"bad arguments for {name!r}: {exc}") from None
        try:
            fut = await self._call(_submit, self._pool, fn, args, kwargs, options)
        except QueueFullError as exc:
            raise _HTTPError(503, f"the pool's queue is full: {exc}") from None
        except ValueError as exc:  # an option the pool rejects
            raise _HTTPError(400, str(exc)) from None
        task_id: int = fut.task_id  # type: ignore[attr-defined]
        self._tracked[task_id] = _Tracked(name, fut)
        self._tracked.move_to_end(task_id)
        while len(self._tracked) > TRACKED_TASKS:
            self._tracked.popitem(last=False)  # the oldest submission's result is forgotten
        location = f"/api/tasks/{task_id}"
        return _json({"id": task_id, "name": name, "url": location}, 202, {"Location": location})

    @staticmethod
    def _parse_submission(
        body: Any,
    ) -> tuple[str, list[Any], dict[str, Any], dict[str, Any]]:
        if not isinstance(body, dict):
            raise _HTTPError(400, "the body must be a JSON object")
        unknown = set(body) - _SUBMIT_FIELDS
        if unknown:
            raise _HTTPError(400, f"unknown fields: {sorted(unknown)}")
        name = body.get("name")
        if not isinstance(name, str):
            raise _HTTPError(400, "'name' (a string) is required")
        args = body.get("args", [])
        if not isinstance(args, list):
            raise _HTTPError(400, "'args' must be a JSON array")
        kwargs = body.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise _HTTPError(400, "'kwargs' must be a JSON object")
        options: dict[str, Any] = {}
        if "priority" in body:
            priority = body["priority"]
            if not _is_number(priority):
                raise _HTTPError(400, "'priority' must be a number")
            options["priority"] = float(priority)
        if "timeout" in body:
            timeout = body["timeout"]
            if timeout is not None and (not _is_number(timeout) or not timeout > 0):
                raise _HTTPError(400, "'timeout' must be a positive number or null")
            options["timeout"] = None if timeout is None else float(timeout)
        for field in ("kind", "key"):
            if body.get(field) is not None:
                value = body[field]
                if not isinstance(value, str) or not value or len(value) > _MAX_LABEL:
                    raise _HTTPError(
                        400,
                        f"'{field}' must be a non-empty string of at most {_MAX_LABEL} "
                        "characters, or null",
                    )
                options[field] = value
        if "key" in options:
            # Keys from HTTP live in their own namespace, per function: a request must never
            # join (and so read the result of) a task the program submitted in-process.
            options["key"] = f"http:{name}:{options['key']}"
        return name, args, kwargs, options

    async def _cancel(self, request: web.Request) -> web.Response:
        task_id = int(request.match_info["id"])
        kill = request.query.get("kill", "false").lower() in ("1", "true", "yes")
        tracked = self._tracked.get(task_id)
        if tracked is not None:
            cancelled = await self._call(
                functools.partial(self._pool.cancel, tracked.future, kill=kill)
            )
            return _json({"id": task_id, "cancelled": cancelled})
        info = await self._task_info(task_id)
        if info is None:
            raise _HTTPError(404, f"no task with id {task_id}")
        if info.state in _FINISHED:
            return _json({"id": task_id, "cancelled": False})
        await self._call(_cancel_by_id, self._pool, task_id, kill)
        return _json({"id": task_id, "cancelled": True})


async def _wait_for(fut: concurrent.futures.Future[Any], timeout: float) -> None:
    """Wait until ``fut`` is done or ``timeout`` passes, holding no thread.

    ``asyncio.wait`` never cancels what it waits for, so a timeout (or the client hanging up)
    leaves the task alone; cancelling a wrapped future would cancel the pool's task.
    """
    if not fut.done() and timeout > 0:
        await asyncio.wait([asyncio.wrap_future(fut)], timeout=timeout)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _submit(
    pool: Pool,
    fn: Callable[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
) -> concurrent.futures.Future[Any]:
    view = pool.options(**options) if options else pool
    if "timeout" in kwargs:
        # try_submit's own ``timeout`` keyword would swallow the task's argument.
        fn, kwargs = functools.partial(fn, **kwargs), {}
    # Never wait for room in a bounded queue: a full pool answers 503 instead of piling up
    # blocked request threads.
    return view.try_submit(fn, *args, timeout=0.0, **kwargs)


def _cancel_by_id(pool: Pool, task_id: int, kill: bool) -> None:
    # A task submitted in-process has no future here; cancel it by id.
    pool.cancel_task(task_id, kill=kill)


def serve(
    pool: Pool,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: str | None = None,
    registry: Registry | None = None,
) -> Server:
    """Serve ``pool``'s HTTP API and dashboard from a background thread.

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
    """
    return Server(pool, host, port, token=token, registry=registry)
