"""``/api/tasks``: list, submit by name, read and cancel tasks over HTTP.

Only functions registered by name can run, with JSON arguments; nothing received is ever
unpickled. The futures of tasks submitted here are remembered (a bounded number of them) so
``GET /api/tasks/{id}`` can return their results.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .._errors import QueueFullError
from .._stats import TaskInfo
from ._registry import Registry
from ._replies import HTTPError, dumps, load, reply

if TYPE_CHECKING:
    from .._client._pool import Pool

MAX_BODY_BYTES = 64 * 1024  # a task submission is a name and a few JSON arguments
TRACKED_TASKS = 10_000  # HTTP-submitted tasks whose futures (and results) are remembered
TASK_LIST_LIMIT = 1000  # most rows one /api/tasks answer carries
MAX_REPR_CHARS = 10_000  # a result that is not JSON is returned as a repr cut to this length
MAX_WAIT = 60.0  # longest ?wait= a GET /api/tasks/{id} may ask for
FINISH_WAIT = 2.0  # seconds to wait for a future the dispatcher already reports finished

TASK_STATES = frozenset(
    {"queued", "delayed", "running", "retrying", "waiting", "held", "done", "failed", "cancelled"}
)
_FINISHED = frozenset({"done", "failed", "cancelled"})
_MAX_LABEL = 200  # longest kind or key accepted over HTTP
_SUBMIT_FIELDS = frozenset(
    {"name", "args", "kwargs", "priority", "timeout", "kind", "key", "batch"}
)

Call = Callable[..., Awaitable[Any]]  # runs a blocking pool call off the event loop


@dataclasses.dataclass(slots=True)
class _Tracked:
    """A task submitted over HTTP: its function name and its future."""

    name: str
    future: concurrent.futures.Future[Any]


class TaskApi:
    """The handlers of ``/api/tasks`` and ``/api/tasks/{id}``."""

    def __init__(self, pool: Pool, registry: Registry, call: Call) -> None:
        self._pool = pool
        self._registry = registry
        self._call = call
        self._tracked: OrderedDict[int, _Tracked] = OrderedDict()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/tasks", self.list)
        app.router.add_post("/api/tasks", self.submit)
        app.router.add_get(r"/api/tasks/{id:-?\d{1,18}}", self.get)
        app.router.add_delete(r"/api/tasks/{id:-?\d{1,18}}", self.cancel)
        app.router.add_get("/api/batches", self.batches)
        app.router.add_delete("/api/batches/{name}", self.cancel_batch)

    def forget(self) -> None:
        self._tracked.clear()

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

    async def list(self, request: web.Request) -> web.Response:
        state = request.query.get("state")
        if state is not None and state not in TASK_STATES:
            raise HTTPError(400, f"unknown state {state!r}; one of {sorted(TASK_STATES)}")
        limit = TASK_LIST_LIMIT
        if "limit" in request.query:
            try:
                limit = int(request.query["limit"])
            except ValueError:
                raise HTTPError(400, "limit must be an integer") from None
            if not 1 <= limit <= TASK_LIST_LIMIT:
                raise HTTPError(400, f"limit must be between 1 and {TASK_LIST_LIMIT}")
        infos = await self._call(self._pool.tasks)
        if state is not None:
            infos = [i for i in infos if i.state == state]
        batch = request.query.get("batch")
        if batch is not None:
            infos = [i for i in infos if i.batch == batch]
        rows = [self._row(i) for i in infos[:limit]]
        return reply({"tasks": rows, "count": len(rows)})

    async def _info(self, task_id: int) -> TaskInfo | None:
        try:
            info: TaskInfo = await self._call(self._pool.task, task_id)
        except KeyError:
            return None
        return info

    async def get(self, request: web.Request) -> web.Response:
        task_id = int(request.match_info["id"])
        tracked = self._tracked.get(task_id)
        if "wait" in request.query:
            # Long poll: a client can wait for the result instead of asking repeatedly.
            try:
                wait = float(request.query["wait"])
            except ValueError:
                raise HTTPError(400, "wait must be a number of seconds") from None
            if not 0 <= wait <= MAX_WAIT:
                raise HTTPError(400, f"wait must be between 0 and {MAX_WAIT} seconds")
            if tracked is not None:
                await _wait_for(tracked.future, wait)
        info = await self._info(task_id)
        if info is None and tracked is None:
            raise HTTPError(404, f"no task with id {task_id}")
        if info is not None:
            row = dataclasses.asdict(info)
        else:  # out of the pool's history, but its future is still here
            row = {f.name: None for f in dataclasses.fields(TaskInfo)}
            row["id"] = task_id
        if tracked is None:
            return reply(row)
        fut = tracked.future
        if info is not None and info.state in _FINISHED and not fut.done():
            # The dispatcher has finished it; the result is a moment away in the client.
            await _wait_for(fut, FINISH_WAIT)
        row["name"] = tracked.name
        row.update(_outcome(fut))
        return reply(row)

    async def submit(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            raise HTTPError(415, "send the task as Content-Type: application/json")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise HTTPError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        body = load(await request.read())  # read() raises 413 past client_max_size
        name, args, kwargs, options = parse_submission(body)
        try:
            fn = self._registry.bind(name, args, kwargs)
        except KeyError:
            known = ", ".join(self._registry.names())
            raise HTTPError(400, f"unknown task function {name!r} (known: {known})") from None
        except TypeError as exc:
            raise HTTPError(400, f"bad arguments for {name!r}: {exc}") from None
        try:
            fut = await self._call(_submit, self._pool, fn, args, kwargs, options)
        except QueueFullError as exc:
            raise HTTPError(503, f"the pool's queue is full: {exc}") from None
        except (TypeError, ValueError) as exc:  # an option the pool rejects
            raise HTTPError(400, str(exc)) from None
        task_id: int = fut.task_id
        self._tracked[task_id] = _Tracked(name, fut)
        self._tracked.move_to_end(task_id)
        while len(self._tracked) > TRACKED_TASKS:
            self._tracked.popitem(last=False)  # the oldest submission's result is forgotten
        location = f"/api/tasks/{task_id}"
        return reply({"id": task_id, "name": name, "url": location}, 202, {"Location": location})

    async def cancel(self, request: web.Request) -> web.Response:
        task_id = int(request.match_info["id"])
        kill = request.query.get("kill", "false").lower() in ("1", "true", "yes")
        tracked = self._tracked.get(task_id)
        if tracked is not None:
            cancelled = await self._call(
                functools.partial(self._pool.cancel, tracked.future, kill=kill)
            )
            return reply({"id": task_id, "cancelled": cancelled})
        info = await self._info(task_id)
        if info is None:
            raise HTTPError(404, f"no task with id {task_id}")
        if info.state in _FINISHED:
            return reply({"id": task_id, "cancelled": False})
        # A task submitted in-process has no future here; cancel it by id.
        await self._call(functools.partial(self._pool.cancel_task, task_id, kill=kill))
        return reply({"id": task_id, "cancelled": True})

    async def batches(self, request: web.Request) -> web.Response:
        """Every batch the pool has seen: its counts by outcome and state, and progress."""
        stats = await self._call(self._pool.stats)
        rows = {
            name: {**dataclasses.asdict(b), "progress": b.progress}
            for name, b in sorted(stats.batches.items())
        }
        return reply({"batches": rows})

    async def cancel_batch(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kill = request.query.get("kill", "false").lower() in ("1", "true", "yes")
        stats = await self._call(self._pool.stats)
        if name not in stats.batches:
            raise HTTPError(404, f"no batch named {name!r}")
        from .._client._batch import cancel_by_name

        await self._call(cancel_by_name, self._pool._core, name, kill)
        return reply({"batch": name, "cancelled": True})


def parse_submission(body: Any) -> tuple[str, list[Any], dict[str, Any], dict[str, Any]]:
    """A POSTed task as (name, args, kwargs, options); a 400 for anything malformed."""
    if not isinstance(body, dict):
        raise HTTPError(400, "the body must be a JSON object")
    unknown = set(body) - _SUBMIT_FIELDS
    if unknown:
        raise HTTPError(400, f"unknown fields: {sorted(unknown)}")
    name = body.get("name")
    if not isinstance(name, str):
        raise HTTPError(400, "'name' (a string) is required")
    args = body.get("args", [])
    if not isinstance(args, list):
        raise HTTPError(400, "'args' must be a JSON array")
    kwargs = body.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise HTTPError(400, "'kwargs' must be a JSON object")
    options: dict[str, Any] = {}
    if "priority" in body:
        priority = body["priority"]
        if not _is_finite(priority):
            raise HTTPError(400, "'priority' must be a finite number")
        options["priority"] = float(priority)
    if "timeout" in body:
        timeout = body["timeout"]
        if timeout is not None and (not _is_finite(timeout) or not timeout > 0):
            raise HTTPError(400, "'timeout' must be a positive number or null")
        options["timeout"] = None if timeout is None else float(timeout)
    for field in ("kind", "key", "batch"):
        if body.get(field) is not None:
            value = body[field]
            if not isinstance(value, str) or not value or len(value) > _MAX_LABEL:
                raise HTTPError(
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


def _is_finite(value: object) -> bool:
    # Python's json accepts integers of any size: float() of a huge one overflows.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _outcome(fut: concurrent.futures.Future[Any]) -> dict[str, Any]:
    """The state, result and error fields of a tracked task's row."""
    if fut.cancelled():
        return {"state": "cancelled", "result": None, "result_is_repr": False, "error": None}
    if not fut.done():
        return {"result": None, "result_is_repr": False, "error": None}
    exc = fut.exception()
    if exc is not None:
        error = {
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": getattr(exc.__cause__, "tb", None),  # the worker's, if it raised there
        }
        return {"state": "failed", "result": None, "result_is_repr": False, "error": error}
    value = fut.result()
    try:
        dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
        if len(text) > MAX_REPR_CHARS:
            text = text[:MAX_REPR_CHARS] + "..."
        return {"state": "done", "result": text, "result_is_repr": True, "error": None}
    return {"state": "done", "result": value, "result_is_repr": False, "error": None}


async def _wait_for(fut: concurrent.futures.Future[Any], timeout: float) -> None:
    """Wait until ``fut`` is done or ``timeout`` passes, holding no thread.

    ``asyncio.wait`` never cancels what it waits for, so a timeout (or the client hanging up)
    leaves the task alone; cancelling a wrapped future would cancel the pool's task.
    """
    if not fut.done() and timeout > 0:
        await asyncio.wait([asyncio.wrap_future(fut)], timeout=timeout)


def _submit(
    pool: Pool,
    fn: Callable[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
) -> Any:
    batch = options.pop("batch", None)
    view: Any = pool.options(**options) if options else pool
    if batch is not None:
        view = view.batch(batch)
    if "timeout" in kwargs:
        # try_submit's own ``timeout`` keyword would swallow the task's argument.
        fn, kwargs = functools.partial(fn, **kwargs), {}
    # Never wait for room in a bounded queue: a full pool answers 503 instead of piling up
    # blocked request threads.
    return view.try_submit(fn, *args, timeout=0.0, **kwargs)
