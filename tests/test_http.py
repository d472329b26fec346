"""The HTTP API: every endpoint's status codes and JSON shapes, bad requests, the token check.

Each server listens on an ephemeral loopback port and is closed before the pool's leak check
runs, so a thread, socket or event loop left behind fails the test.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import mppool
from mppool._web import _history
from mppool._web._registry import Registry
from mppool._web._server import Server, serve
from mppool._web._task_api import MAX_BODY_BYTES

from . import tasks
from .conftest import wait_until

TIMEOUT = 10.0  # seconds for any one HTTP request
JSON = "application/json"
WAIT = "10"  # ?wait= seconds for a result


class Client:
    """A tiny JSON client over urllib (every call has a timeout)."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base.rstrip("/")
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        hdrs = dict(headers or {})
        if data is not None:
            hdrs["Content-Type"] = content_type
        if self.token is not None:
            hdrs["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, data, hdrs, method=method)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                status, text, got = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            with exc:
                status, text, got = exc.code, exc.read(), dict(exc.headers)
        is_json = got.get("Content-Type", "").startswith("application/json")
        return status, json.loads(text) if is_json else text.decode(), got

    def get(self, path: str) -> tuple[int, Any]:
        status, body, _ = self.call("GET", path)
        return status, body

    def submit(self, body: Any) -> int:
        status, answer, headers = self.call("POST", "/api/tasks", body)
        assert status == 202, answer
        assert headers["Location"] == f"/api/tasks/{answer['id']}"
        return int(answer["id"])


def make_registry() -> Registry:
    registry = Registry.with_builtins()
    registry.register("gated", tasks.gated)
    registry.register("make_set", make_set)
    registry.register("raise_value_error", tasks.raise_value_error)
    return registry


def make_set(n: int) -> set[int]:
    """A result JSON cannot carry: the server returns its repr."""
    return set(range(n))


@pytest.fixture
def server(pool: mppool.Pool) -> Iterator[Server]:
    with serve(pool, registry=make_registry()) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Client:
    return Client(server.url)


def test_server_binds_an_ephemeral_loopback_port(server: Server) -> None:
    assert server.host == "127.0.0.1"
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}/"


def test_stats(client: Client, pool: mppool.Pool) -> None:
    pool.submit(tasks.square, 3).result(TIMEOUT)
    status, stats = client.get("/api/stats")
    assert status == 200
    for field in ("submitted", "completed", "failed", "queued", "running", "uptime"):
        assert isinstance(stats[field], int | float), field
    assert stats["completed"] >= 1
    assert set(stats["latency"]) == {"queue_wait", "run_time", "end_to_end"}
    assert set(stats["latency"]["run_time"]) == {"count", "p50", "p95", "p99"}
    assert isinstance(stats["queue_by_priority"], dict)
    assert len(stats["workers"]) == 2


def test_workers(client: Client) -> None:
    status, body = client.get("/api/workers")
    assert status == 200
    workers = body["workers"]
    assert [w["index"] for w in workers] == [0, 1]
    for w in workers:
        assert {"pid", "state", "current_task", "tasks_done", "rss_bytes", "cpu_percent"} <= set(w)
        assert w["state"] in ("starting", "idle", "busy")


def test_functions(client: Client) -> None:
    status, body = client.get("/api/functions")
    assert status == 200
    names = [f["name"] for f in body["functions"]]
    assert {"primes", "sha256", "fib", "gated"} <= set(names)
    assert names == sorted(names)


def test_submit_primes_and_get_the_result(client: Client) -> None:
    task_id = client.submit({"name": "primes", "args": [5000]})
    status, task = client.get(f"/api/tasks/{task_id}?wait={WAIT}")
    assert status == 200
    assert task["id"] == task_id
    assert task["name"] == "primes"
    assert task["state"] == "done"
    assert task["result"] == 669
    assert task["result_is_repr"] is False
    assert task["error"] is None
    assert task["duration"] >= 0 and task["pid"] and task["attempts"] == 1

    status, listing = client.get("/api/tasks")
    assert status == 200
    assert listing["count"] == len(listing["tasks"])
    row = next(t for t in listing["tasks"] if t["id"] == task_id)
    assert row["name"] == "primes" and row["state"] == "done"
    status, done = client.get("/api/tasks?state=done&limit=1")
    assert status == 200 and len(done["tasks"]) == 1


def test_submit_with_kwargs_and_options(client: Client) -> None:
    task_id = client.submit(
        {"name": "sha256", "args": [3], "kwargs": {"seed": "x"}, "priority": 5, "timeout": 30}
    )
    _, task = client.get(f"/api/tasks/{task_id}?wait={WAIT}")
    assert task["state"] == "done"
    assert task["result"] == mppool._web._registry.sha256(3, "x")
    assert task["priority"] == 5


def test_failed_task_reports_its_error(client: Client) -> None:
    task_id = client.submit({"name": "fib", "args": [-1]})  # out of range: fails in the worker
    _, task = client.get(f"/api/tasks/{task_id}?wait={WAIT}")
    assert task["state"] == "failed"
    assert task["result"] is None
    assert task["error"]["type"] == "ValueError"
    assert "between 0 and" in task["error"]["message"]
    assert "Traceback" in task["error"]["traceback"]
    _, failed = client.get("/api/tasks?state=failed")
    row = next(t for t in failed["tasks"] if t["id"] == task_id)
    assert row["error"]["type"] == "ValueError"


def test_result_that_is_not_json_comes_back_as_repr(client: Client) -> None:
    task_id = client.submit({"name": "make_set", "args": [3]})
    _, task = client.get(f"/api/tasks/{task_id}?wait={WAIT}")
    assert task["state"] == "done"
    assert task["result"] == "{0, 1, 2}"
    assert task["result_is_repr"] is True


def test_tasks_submitted_in_process_are_listed_and_found(client: Client, pool: mppool.Pool) -> None:
    fut = pool.submit(tasks.square, 4)
    assert fut.result(TIMEOUT) == 16
    status, task = client.get(f"/api/tasks/{fut.task_id}")  # type: ignore[attr-defined]
    assert status == 200
    assert task["state"] == "done"
    assert "result" not in task  # only results of tasks submitted over HTTP are kept here


def test_cancel_queued_and_kill_running(client: Client, fifos: Any) -> None:
    started, gate = fifos("started"), fifos("gate")
    gated = {"name": "gated", "args": [started.path, gate.path]}
    running = [client.submit(gated) for _ in range(2)]
    started.take(2)  # both workers are now held
    queued = client.submit({"name": "primes", "args": [10]})

    status, answer, _ = client.call("DELETE", f"/api/tasks/{queued}")
    assert (status, answer) == (200, {"id": queued, "cancelled": True})
    _, task = client.get(f"/api/tasks/{queued}?wait={WAIT}")
    assert task["state"] == "cancelled"

    status, answer, _ = client.call("DELETE", f"/api/tasks/{running[0]}?kill=true")
    assert (status, answer) == (200, {"id": running[0], "cancelled": True})
    _, task = client.get(f"/api/tasks/{running[0]}")
    assert task["state"] == "cancelled"

    gate.post(2)  # the other one finishes normally
    _, task = client.get(f"/api/tasks/{running[1]}?wait={WAIT}")
    assert task["state"] == "done"
    status, answer, _ = client.call("DELETE", f"/api/tasks/{running[1]}")
    assert (status, answer) == (200, {"id": running[1], "cancelled": False})


# (case, body, raw body, content type, expected status, part of the error message)
def _nested(depth: int) -> list[Any]:
    value: list[Any] = [1]
    for _ in range(depth):
        value = [value]
    return value


BAD_SUBMISSIONS: list[tuple[str, Any, bytes | None, str, int, str]] = [
    ("malformed", None, b"{not json", "application/json", 400, "malformed JSON"),
    ("not an object", [1, 2], None, "application/json", 400, "JSON object"),
    ("no name", {"args": [1]}, None, "application/json", 400, "'name'"),
    ("unknown name", {"name": "nope"}, None, "application/json", 400, "unknown task function"),
    ("wrong type", {"name": "primes", "args": ["many"]}, None, JSON, 400, "must be int"),
    ("too many args", {"name": "primes", "args": [1, 2]}, None, JSON, 400, "too many"),
    ("missing arg", {"name": "primes"}, None, JSON, 400, "missing a required"),
    (
        "unknown kwarg",
        {"name": "primes", "args": [5], "kwargs": {"m": 1}},
        None,
        JSON,
        400,
        "unexpected",
    ),
    ("args not a list", {"name": "primes", "args": 5}, None, JSON, 400, "'args'"),
    ("unknown field", {"name": "primes", "args": [5], "extra": 1}, None, JSON, 400, "unknown"),
    (
        "bad priority",
        {"name": "primes", "args": [5], "priority": "hi"},
        None,
        JSON,
        400,
        "priority",
    ),
    ("bad timeout", {"name": "primes", "args": [5], "timeout": -1}, None, JSON, 400, "timeout"),
    ("not JSON content", {"name": "primes", "args": [5]}, None, "text/plain", 415, JSON),
    ("too large", None, b"[" + b"1," * MAX_BODY_BYTES + b"1]", JSON, 413, "larger"),
    # Python's json reads NaN and Infinity; they are not JSON, and not priorities.
    ("NaN priority", None, b'{"name": "primes", "args": [5], "priority": NaN}', JSON, 400, "NaN"),
    (
        "infinite priority",
        None,
        b'{"name": "primes", "args": [5], "priority": -Infinity}',
        JSON,
        400,
        "Infinity",
    ),
    (
        "huge priority",
        None,
        b'{"name": "primes", "args": [5], "priority": 1e999}',
        JSON,
        400,
        "priority",
    ),
    (
        "huge int priority",
        {"name": "primes", "args": [5], "priority": 10**400},
        None,
        JSON,
        400,
        "priority",
    ),
    (
        "deep nesting",
        None,
        b'{"name": "primes", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        JSON,
        400,
        "nested",
    ),
    ("nested args", {"name": "primes", "args": _nested(40)}, None, JSON, 400, "nested"),
]

BAD_REQUESTS = [
    ("GET", "/api/tasks/987654", 404),
    ("DELETE", "/api/tasks/987654", 404),
    ("GET", "/api/tasks/abc", 404),
    ("GET", "/api/nothing", 404),
    ("PUT", "/api/stats", 405),
    ("GET", "/api/tasks?state=sleeping", 400),
    ("GET", "/api/tasks?limit=0", 400),
    ("GET", "/api/tasks/1?wait=soon", 400),
]


def test_bad_submissions_get_json_errors(client: Client) -> None:
    # One server for the whole table: a pool per case would cost more than the cases.
    for case, body, raw, content_type, status, message in BAD_SUBMISSIONS:
        got, answer, _ = client.call("POST", "/api/tasks", body, raw=raw, content_type=content_type)
        assert got == status, case
        assert set(answer) == {"error"}, case
        assert message in answer["error"], (case, answer)
    status, stats = client.get("/api/stats")
    assert status == 200 and stats["submitted"] == 0  # none of them reached the pool


def test_far_timeout_over_http_runs_and_the_pool_serves_on(client: Client) -> None:
    task_id = client.submit({"name": "primes", "args": [100], "timeout": 1e10})
    status, row = client.get(f"/api/tasks/{task_id}?wait={WAIT}")
    assert status == 200 and row["state"] == "done" and row["result"] == 25
    status, listing = client.get("/api/tasks")
    assert status == 200 and listing["count"] >= 1
    assert client.submit({"name": "primes", "args": [10], "priority": 1e300}) > task_id


def test_bad_requests_get_json_errors(client: Client) -> None:
    for method, path, status in BAD_REQUESTS:
        got, answer, _ = client.call(method, path)
        assert got == status, (method, path)
        assert isinstance(answer["error"], str) and answer["error"], (method, path)


def test_metrics(client: Client, pool: mppool.Pool) -> None:
    pool.submit(tasks.square, 2).result(TIMEOUT)
    status, text, headers = client.call("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert "mppool_up 1.0" in text
    assert "mppool_tasks_completed_total" in text
    assert 'mppool_worker_state{state="idle",worker="0"}' in text


def test_dashboard_page(client: Client) -> None:
    status, page, headers = client.call("GET", "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "<canvas" in page and "/api/stats" in page
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # self-contained: no CDN


def test_history_keeps_what_the_charts_show(
    pool: mppool.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_history, "SAMPLE_SECONDS", 0.05)
    with serve(pool) as server:
        client = Client(server.url)

        def samples() -> list[dict[str, Any]]:
            status, body = client.get("/api/history")
            assert status == 200 and body["interval"] == 0.05
            return list(body["samples"])

        assert wait_until(lambda: len(samples()) >= 1, TIMEOUT)  # sampled before the work
        futs = [pool.submit(tasks.square, i) for i in range(20)]
        assert [f.result(TIMEOUT) for f in futs] == [i * i for i in range(20)]
        completed = pool.stats().completed
        assert wait_until(lambda: samples()[-1]["t"] > samples()[0]["t"], TIMEOUT)

        def settled() -> bool:
            last = samples()[-1]
            return last["queued"] == 0 and last["running"] == 0 and len(samples()) >= 3

        assert wait_until(settled, TIMEOUT)
        got = samples()
    # The rates add up to the work done between the first sample and the last.
    done = sum(s["done"] * (s["t"] - p["t"]) for p, s in itertools.pairwise(got))
    assert round(done) == completed == 20
    assert all(set(s["util"]) == {"0", "1"} for s in got[1:])
    assert all(0 <= u <= 1 for s in got[1:] for u in s["util"].values())
    assert [s["t"] for s in got] == sorted(s["t"] for s in got)


def test_unexpected_host_header_is_refused(client: Client) -> None:
    # A page on another site that rebinds its DNS name to 127.0.0.1 sends its own Host.
    status, answer, _ = client.call("GET", "/api/stats", headers={"Host": "evil.example:80"})
    assert status == 403
    assert "Host" in answer["error"]


def test_token_is_required_when_set(pool: mppool.Pool) -> None:
    with serve(pool, token="s3cret") as srv:
        anonymous, wrong, right = (
            Client(srv.url),
            Client(srv.url, "nope"),
            Client(srv.url, "s3cret"),
        )
        for path in ("/api/stats", "/api/tasks", "/metrics"):
            status, answer, headers = anonymous.call("GET", path)
            assert status == 401, path
            assert headers["WWW-Authenticate"] == "Bearer"
            assert "token" in answer["error"]
            assert wrong.get(path)[0] == 401
            assert right.get(path)[0] == 200
        status, answer, _ = anonymous.call("POST", "/api/tasks", {"name": "primes", "args": [5]})
        assert status == 401
        task_id = right.submit({"name": "primes", "args": [5000]})
        assert right.get(f"/api/tasks/{task_id}?wait={WAIT}")[1]["result"] == 669
        assert anonymous.get("/")[0] == 200  # the page is static; it asks for the token


def test_health_and_readiness_for_orchestrators(make_pool: Any) -> None:
    pool = make_pool(2)
    with serve(pool, token="s3cret") as srv:
        probe = Client(srv.url)  # probes carry no token
        assert probe.get("/healthz") == (200, {"status": "ok"})
        assert probe.get("/readyz") == (200, {"status": "ready", "workers": 2})
        assert probe.get("/api/stats")[0] == 401  # only the probes are open
        pool._core.conn.proc.kill()  # the dispatcher dies: the pool is broken
        assert wait_until(lambda: pool.state == "broken", TIMEOUT)
        assert probe.get("/healthz") == (200, {"status": "ok"})  # this process still answers
        status, body = probe.get("/readyz")
        assert (status, body["status"]) == (503, "broken")


def test_readiness_while_shutting_down(make_pool: Any, fifos: Any) -> None:
    pool = make_pool(1)
    started, gate = fifos("started"), fifos("gate")
    held = pool.submit(tasks.gated, started.path, gate.path)
    started.take()
    with serve(pool) as srv:
        pool.shutdown(wait=False)
        assert Client(srv.url).get("/readyz") == (503, {"status": "closing"})
        gate.post()
        assert held.result(timeout=TIMEOUT) > 0
        pool.shutdown(wait=True)
        assert Client(srv.url).get("/readyz") == (503, {"status": "closed"})


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.com"])
def test_non_loopback_bind_needs_a_token(pool: mppool.Pool, host: str) -> None:
    with pytest.raises(ValueError, match="token"):
        serve(pool, host=host)


def test_empty_token_is_refused(pool: mppool.Pool) -> None:
    with pytest.raises(ValueError, match="token"):
        serve(pool, token="")


def test_port_in_use_raises_and_leaks_nothing(server: Server, pool: mppool.Pool) -> None:
    with pytest.raises(OSError):
        serve(pool, port=server.port)


def test_close_is_idempotent_and_frees_the_port(pool: mppool.Pool) -> None:
    srv = serve(pool)
    port = srv.port
    srv.close()
    srv.close()
    with serve(pool, port=port) as again:  # the socket was released
        assert again.port == port


def test_a_growing_pool_stays_ready(make_pool: Any, tmp_path: Any, fifos: Any) -> None:
    marker, gate = str(tmp_path / "slow-start"), fifos("gate")
    pool = make_pool(1, initializer=tasks.wait_if_marked, initargs=(marker, gate.path))
    with serve(pool) as srv:
        probe = Client(srv.url)
        assert probe.get("/readyz") == (200, {"status": "ready", "workers": 1})
        open(marker, "w").close()
        pool.resize(2)  # the new worker waits in its initializer
        assert [w.state for w in pool.stats().workers].count("starting") == 1
        assert probe.get("/readyz") == (200, {"status": "ready", "workers": 1})
        assert pool.submit(tasks.square, 4).result(TIMEOUT) == 16  # it serves meanwhile
        gate.post()
        assert wait_until(lambda: probe.get("/readyz")[1].get("workers") == 2, TIMEOUT)


def test_batches_over_http_list_filter_and_cancel(
    client: Client, pool: mppool.Pool, fifos: Any
) -> None:
    started, gate = fifos("started"), fifos("gate")
    blockers = [pool.submit(tasks.gated, started.path, gate.path) for _ in range(pool.workers)]
    started.take(pool.workers)  # every worker is held: the batch's tasks wait
    with_batch = client.submit({"name": "primes", "args": [100], "batch": "nightly"})
    in_process = pool.batch("nightly")
    queued = [in_process.submit(tasks.square, x) for x in range(3)]
    status, listing = client.get("/api/batches")
    assert status == 200
    nightly = listing["batches"]["nightly"]
    assert nightly["submitted"] == 4 and nightly["live"] == {"queued": 4}
    assert nightly["progress"] == 0.0
    status, rows = client.get("/api/tasks?batch=nightly")
    assert status == 200 and {r["id"] for r in rows["tasks"]} == {
        with_batch,
        *(f.task_id for f in queued),
    }
    assert all(r["batch"] == "nightly" for r in rows["tasks"])
    status, answer, _ = client.call("DELETE", "/api/batches/nightly")
    assert status == 200 and answer == {"batch": "nightly", "cancelled": True}
    for f in queued:
        with pytest.raises(concurrent.futures.CancelledError):
            f.result(timeout=TIMEOUT)
    status, listing = client.get("/api/batches")
    assert listing["batches"]["nightly"]["cancelled"] == 4
    assert client.call("DELETE", "/api/batches/nope")[0] == 404
    gate.post(pool.workers)
    for b in blockers:
        b.result(timeout=TIMEOUT)
