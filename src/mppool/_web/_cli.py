"""The ``mppool`` command (also ``python -m mppool``).

    mppool serve --host 127.0.0.1 --port 8000 --workers 4 [--token T]
    mppool serve --import mypkg.tasks:count_words --import mypkg.more
    mppool run primes --n small --workers 2
    mppool run hashes --n 500
    mppool store primes.db [--state failed] [--limit 50]
    mppool store primes.db --key primes:3 [--result]

``serve`` runs a pool with the HTTP API and dashboard until Ctrl-C or SIGTERM, then shuts both
down. ``run`` runs an example workload from the built-in task functions with a progress bar
and prints a stats summary. ``store`` looks into a job store (read-only): counts by state and
the latest keys, or one key in full.
"""

from __future__ import annotations

import argparse
import functools
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Any

from .._client._pool import Pool
from ._registry import primes, sha256

__all__ = ["main"]

SHUTDOWN_TIMEOUT = 5.0  # seconds running tasks get when `serve` stops before they are killed
SIZES = {"small": 100, "medium": 1_000, "large": 10_000}  # tasks per `run` workload
HASH_ROUNDS = 20_000  # SHA-256 rounds per `run hashes` task (about 20 ms)


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, not {value}")
    return value


def _size(text: str) -> int:
    if text in SIZES:
        return SIZES[text]
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"--n takes {', '.join(SIZES)} or a number of tasks, not {text!r}"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mppool", description="A multiprocessing pool for CPU-bound work."
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"mppool {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    default_workers = os.cpu_count() or 1

    srv = sub.add_parser("serve", help="run a pool with the HTTP API and live dashboard")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    srv.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0: any free)")
    srv.add_argument(
        "--workers", type=_positive_int, default=default_workers, help="worker processes"
    )
    srv.add_argument(
        "--token",
        default=os.environ.get("MPPOOL_TOKEN"),
        help="bearer token required by the API (default: $MPPOOL_TOKEN; generated when "
        "binding beyond loopback without one)",
    )

    srv.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE[:FUNCTION]",
        help="make a function runnable over HTTP under its name (MODULE:FUNCTION), or import "
        "a module whose mppool.register() calls do that (MODULE); repeatable. Modules are "
        "looked up from the current directory too",
    )

    run = sub.add_parser("run", help="run an example workload with a progress bar")
    run.add_argument("workload", choices=["primes", "hashes"], help="what to compute")
    run.add_argument(
        "--n",
        type=_size,
        default=SIZES["medium"],
        help=f"number of tasks: {', '.join(SIZES)} or a number (default medium)",
    )
    run.add_argument(
        "--workers", type=_positive_int, default=default_workers, help="worker processes"
    )
    run.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")

    store = sub.add_parser("store", help="look into a job store: counts, keys, one key")
    store.add_argument("path", help="the store's file (Pool(store=...))")
    store.add_argument("--key", help="show this key in full")
    store.add_argument("--state", choices=["running", "done", "failed"], help="only this state")
    store.add_argument("--limit", type=_positive_int, default=20, help="keys listed (default 20)")
    store.add_argument(
        "--result",
        action="store_true",
        help="with --key, unpickle the stored result and print it (only for stores you trust)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            _import_tasks(args.imports)
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            print(f"mppool: --import: {exc}", file=sys.stderr)
            return 2
        return _serve(args.host, args.port, args.workers, args.token)
    if args.command == "store":
        from ._store_cli import show

        return show(args.path, args.key, args.state, args.limit, args.result)
    return _run(args.workload, args.n, args.workers, not args.no_progress)


# --- serve -------------------------------------------------------------------------------------
def _import_tasks(specs: list[str]) -> None:
    """Register ``MODULE:FUNCTION`` specs (or import ``MODULE``s that register their own)."""
    if not specs:
        return
    import importlib

    from ._registry import register

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the project's own modules
    for spec in specs:
        module_name, _, attr = spec.partition(":")
        module = importlib.import_module(module_name)
        if not attr:
            continue
        fn: Any = module
        for part in attr.split("."):
            fn = getattr(fn, part)
        if not callable(fn):
            raise TypeError(f"{spec} is not callable")
        register(attr.rsplit(".", 1)[-1], fn)


def _serve(host: str, port: int, workers: int, token: str | None) -> int:
    # Imported here so `mppool run` works without the optional HTTP dependency.
    from ._server import is_loopback, require_http, serve

    try:
        require_http("mppool serve")
    except ModuleNotFoundError as exc:
        print(f"mppool: {exc}", file=sys.stderr)
        return 1

    if token is None and not is_loopback(host):
        # Like a notebook server: safe by default, and the link printed below carries it.
        token = secrets.token_urlsafe(24)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Installed before the pool exists, so a signal during start-up still ends in a clean stop.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        pool = Pool(workers)
        try:
            with serve(pool, host, port, token=token) as server:
                link = server.url + (f"?token={token}" if token else "")
                print(f"mppool: {workers} workers, dashboard at {link}", flush=True)
                print(f"mppool: API at {server.url}api/ ; Ctrl-C to stop", flush=True)
                stop.wait()
                print("mppool: stopping", flush=True)
        finally:
            pool.shutdown(wait=True, cancel_futures=True, timeout=SHUTDOWN_TIMEOUT)
    except OSError as exc:
        print(f"mppool: cannot serve on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


# --- run ---------------------------------------------------------------------------------------
def _workload(name: str, count: int) -> tuple[Callable[..., Any], Iterable[Any], str]:
    """The function, its inputs and a description of what the results mean."""
    if name == "primes":
        # Limits of uneven size (the multiplier scatters them over 5,000-45,000), so the
        # pool's chunking and stealing have a skewed job to spread.
        limits = [5_000 + (i * 7_919) % 40_000 for i in range(count)]
        return primes, limits, "primes found (summed over all limits)"
    seeds = [f"seed-{i}" for i in range(count)]
    return functools.partial(sha256, HASH_ROUNDS), seeds, "distinct digests"


def _run(workload: str, count: int, workers: int, progress: bool) -> int:
    fn, inputs, meaning = _workload(workload, count)
    started = time.monotonic()
    try:
        with Pool(workers) as pool:
            results = list(pool.imap_unordered(fn, inputs, progress=progress))
            elapsed = time.monotonic() - started
            stats = pool.stats()  # while the pool is open: after shutdown there is none
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    answer = sum(results) if workload == "primes" else len(set(results))
    print(
        f"{workload}: {len(results):,} tasks on {workers} workers in {elapsed:.2f}s "
        f"({len(results) / elapsed:,.1f} tasks/s)"
        if elapsed > 0
        else f"{workload}: done"
    )
    print(f"{meaning}: {answer:,}")
    print()
    print(stats)
    return 0
