"""The command line, run as ``python -m mppool`` in a subprocess."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from .conftest import wait_until

RUN_TIMEOUT = 60.0  # seconds for a whole `run`
START_TIMEOUT = 30.0  # seconds for `serve` to print its address and answer
STOP_TIMEOUT = 15.0  # seconds for `serve` to exit after a signal
REQUEST_TIMEOUT = 10.0


def mppool_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mppool", *args]


def test_run_primes_prints_a_stats_summary(leak_check: None) -> None:
    done = subprocess.run(
        mppool_command("run", "primes", "--n", "small", "--workers", "2"),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "primes: 100 tasks on 2 workers" in out
    assert "pool stats" in out
    assert re.search(r"completed\s+[1-9]", out)  # map chunks, so not necessarily 100
    assert re.search(r"failed\s+0\b", out)
    for stage in ("queue wait", "run time", "end to end"):
        assert stage in out
    assert "100/100" in done.stderr  # the progress bar reached the end


def test_run_rejects_a_bad_size(leak_check: None) -> None:
    done = subprocess.run(
        mppool_command("run", "primes", "--n", "huge"),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 2
    assert "--n" in done.stderr


def read_line(proc: subprocess.Popen[bytes], pattern: str, timeout: float) -> re.Match[str]:
    """Read the child's stdout until a line matches ``pattern`` (bounded by ``timeout``)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buffer = b""
    while True:
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            match = re.search(pattern, line.decode())
            if match:
                return match
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, left))
        if not ready:
            raise TimeoutError(f"no line matching {pattern!r} within {timeout} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise EOFError(f"the process ended (code {proc.wait(STOP_TIMEOUT)}) before {pattern!r}")
        buffer += chunk


def http(method: str, url: str, body: object = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data else {}
    request = urllib.request.Request(url, data, headers, method=method)
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
        return response.status, json.loads(response.read())


@pytest.fixture
def serving(leak_check: None) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``mppool serve`` on a free port (``--port 0``): the process and its base URL."""
    with subprocess.Popen(
        mppool_command("serve", "--port", "0", "--workers", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            match = read_line(proc, r"dashboard at (http://127\.0\.0\.1:\d+/)", START_TIMEOUT)
            yield proc, match.group(1)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(STOP_TIMEOUT)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_answers_then_stops_cleanly_on_a_signal(
    serving: tuple[subprocess.Popen[bytes], str], sig: signal.Signals
) -> None:
    proc, url = serving

    def answers() -> bool:
        try:
            return http("GET", url + "api/stats")[0] == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    assert wait_until(answers, START_TIMEOUT), "the server never answered"
    status, answer = http("POST", url + "api/tasks", {"name": "primes", "args": [5000]})
    assert status == 202
    assert isinstance(answer, dict)
    status, task = http("GET", f"{url}api/tasks/{answer['id']}?wait=10")
    assert isinstance(task, dict)
    assert (task["state"], task["result"]) == ("done", 669)

    descendants = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert len(descendants) >= 3  # the dispatcher and two workers

    started = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(STOP_TIMEOUT) == 0
    assert time.monotonic() - started < STOP_TIMEOUT
    assert proc.stderr is not None
    assert b"Traceback" not in proc.stderr.read()

    def all_gone() -> bool:
        return not any(psutil.pid_exists(pid) and _alive(pid) for pid in descendants)

    assert wait_until(all_gone), "processes left behind by `mppool serve`"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_serve_runs_your_own_functions(leak_check: None, tmp_path: Path) -> None:
    (tmp_path / "wordtasks.py").write_text("def count_words(text):\n    return len(text.split())\n")
    (tmp_path / "moretasks.py").write_text(
        "import mppool\n\n"
        "def shout(text):\n    return text.upper()\n\n"
        "mppool.register('shout', shout)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # this mppool, not the cwd's
    command = mppool_command(
        "serve",
        "--port",
        "0",
        "--workers",
        "1",
        "--import",
        "wordtasks:count_words",
        "--import",
        "moretasks",
    )
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        try:
            url = read_line(proc, r"dashboard at (http://127\.0\.0\.1:\d+/)", START_TIMEOUT)[1]
            _, functions = http("GET", url + "api/functions")
            assert isinstance(functions, dict)
            names = {f["name"] for f in functions["functions"]}
            assert {"count_words", "shout", "primes"} <= names
            for body, want in (
                ({"name": "count_words", "args": ["to be or not to be"]}, 6),
                ({"name": "shout", "kwargs": {"text": "hi"}}, "HI"),
            ):
                status, answer = http("POST", url + "api/tasks", body)
                assert status == 202 and isinstance(answer, dict)
                _, task = http("GET", f"{url}api/tasks/{answer['id']}?wait=10")
                assert isinstance(task, dict) and (task["state"], task["result"]) == ("done", want)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(STOP_TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(STOP_TIMEOUT)


def test_serve_import_errors_are_reported(leak_check: None, tmp_path: Path) -> None:
    done = subprocess.run(
        mppool_command("serve", "--port", "0", "--import", "no_such_module:fn"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 2
    assert "--import" in done.stderr and "no_such_module" in done.stderr
