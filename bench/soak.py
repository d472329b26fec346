"""Soak test: minutes of mixed, partly failing work against one mppool pool, checked and counted.

Usage (from the repository root; not part of the normal test run)::

    python -m bench.soak --minutes 3 --workers 2 [--threads 4] [--seed 1] [--json PATH]
    python -m bench.soak --minutes 3 --workers 2 --resize   # resized at random meanwhile

Driver threads share one ``mppool.Pool`` and pick operations at random until the time is up:
``submit`` batches (tiny and small CPU tasks at several priorities; ~1% crash their worker by
``os._exit``, SIGKILL or a segfault; ~1% raise a retryable ``ConnectionError`` under a 5-attempt
retry policy; some have a ``timeout=``; a few are cancelled), ``map`` and ``imap_unordered`` over
lists or generators (consumed fully or left early), keyed submits, submit-then-cancel, and now and
then a task that hangs past its timeout. Each operation waits for its results: a closed loop.

A task or map item returns ``(uid, digest(uid))`` for its unique id, so a misdelivered or corrupted
result is *wrong*; every run is recorded, which reveals duplicates (see ``bench/soak_tasks.py``).
Expected failures are counted by category (``WorkerCrashedError``, ``TaskTimeoutError``,
``ConnectionError``), with their attempts checked against the records; any other error is
*unexpected*. *Lost*: a future unresolved ``DRAIN_TIMEOUT`` s after the drivers stopped, or
results missing from a map that ended normally or hit its generous ``MAP_TIMEOUT``. Exit status:
1 if anything was lost, duplicated or wrong, or an unexpected error occurred.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import ctypes
import importlib
import json
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

if __package__ in (None, ""):
    # Run as a script (python bench/soak.py): make the ``bench`` package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mppool
from bench import soak_tasks as st
from bench import workloads as wl
from bench.adapters import prepare_environment, reap_descendants
from bench.soak_pool import LeftPids, Resizer, memory, rss

TINY, SMALL, FLAKY, EXIT, KILL, SEGV, HANG = range(7)
KIND_NAMES = ("tiny", "small", "flaky", "os._exit", "sigkill", "segfault", "hang")
CRASH_KINDS = (EXIT, KILL, SEGV)
FLAKY_POLICY = mppool.RetryPolicy(max_attempts=5, initial_delay=0.001, retry_on=(ConnectionError,))
FLAKY_P, CRASH_P = 0.3, 0.5  # chance that one run of a flaky / crashing task fails
PRIORITIES = (-5, 0, 0, 0, 0, 1, 3, 10)
TIMED = 2.0  # timeout of ordinary timed tasks (they run for at most 2 ms)
HANG_TIMEOUT, HANG_SLEEP, HANG_INTERVAL = 1.0, 60.0, 10.0  # at most one hang per interval
BATCH_WAIT = 30.0  # an operation waits this long for its futures; later ones are drained
MAP_TIMEOUT = 120.0  # generous: no map here holds more than a second or two of work
DRAIN_TIMEOUT = 120.0  # after the drivers stop, unresolved futures get this long
KEYSPACE = 40
TOTALS = ("lost", "duplicated", "wrong", "unexpected")
STATS = ("crashed", "respawns", "timed_out", "retried", "failed", "cancelled", "steals")
Expected = tuple[type[Exception], str, int, int]  # error, record tag of failed runs, min, max
# crash_retries=2 (the default) allows 3 blamed deaths; deaths in a batch are not blamed
EXPECTED_ERRORS: dict[int, Expected] = {FLAKY: (ConnectionError, "R", 5, 5)}
EXPECTED_ERRORS[HANG] = (mppool.TaskTimeoutError, "H", 1, 1)
EXPECTED_ERRORS.update(dict.fromkeys(CRASH_KINDS, (mppool.WorkerCrashedError, "C", 3, 1 << 30)))

# --- the tasks (run in the workers) --------------------------------------------------------------


def _crash(kind: int) -> None:
    if kind == EXIT:
        os._exit(70)
    if kind == KILL:
        os.kill(os.getpid(), signal.SIGKILL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the working folder
    ctypes.string_at(0)  # reads address 0: SIGSEGV
    os._exit(71)


def run_task(uid: int, kind: int, cost: float) -> tuple[int, int]:
    """One soak task: record the run, maybe fail as its kind says, return ``(uid, digest(uid))``.

    Args:
        uid: The task's unique id.
        kind: ``SMALL`` spins ``cost`` s of CPU, ``FLAKY`` raises now and then, a crash kind kills
            its worker now and then, ``HANG`` sleeps far past its timeout, ``TINY`` does nothing.
        cost: CPU seconds for ``SMALL``.

    Raises:
        ConnectionError: For a flaky task, with probability ``FLAKY_P``.
    """
    st.record("S", uid)
    if kind == SMALL:
        wl.spin(cost)
    elif kind == FLAKY and random.random() < FLAKY_P:
        st.record("R", uid)
        raise ConnectionError(f"flaky task {uid}")
    elif kind in CRASH_KINDS and random.random() < CRASH_P:
        st.record("C", uid)
        _crash(kind)
    elif kind == HANG:
        st.record("H", uid)
        time.sleep(HANG_SLEEP)
    return uid, st.digest(uid)


def run_item(item: tuple[int, int, float]) -> tuple[int, int]:
    """:func:`run_task` for ``map``: ``item`` is ``(uid, kind, cost)``."""
    return run_task(*item)


def ping(seconds: float) -> int:
    """Warm-up task: spin ``seconds`` of CPU and return the worker's pid."""
    wl.spin(seconds)
    return os.getpid()


def _task_module() -> ModuleType:
    """This module under its importable name (not ``__main__``): workers import it by name."""
    return importlib.import_module("bench.soak")


# --- bookkeeping (user process) ------------------------------------------------------------------


@dataclass(slots=True)
class Pending:
    """A single-task future awaiting classification."""

    fut: cf.Future[Any]
    uid: int
    kind: int
    owner: int  # the uid whose result the future carries (another one when a key was shared)
    cancel_code: int = st.AT_MOST_ONCE  # allowed runs if the future ends cancelled


@dataclass(slots=True)
class MapRun:
    """One ``map`` or ``imap_unordered`` call and what became of its input."""

    items: list[tuple[int, int, float]]
    ordered: bool
    label: str
    stopped: bool = False  # the consumer left early
    timed_out: bool = False  # the map ran into MAP_TIMEOUT
    pulled: list[int] = field(default_factory=lambda: [0])  # items the map took from its input

    def generate(self) -> Iterator[tuple[int, int, float]]:
        """The items as a generator that counts how many were taken."""
        for item in self.items:
            self.pulled[0] += 1
            yield item


class Ledger:
    """Bookkeeping shared by the driver threads: uids, allowed runs, counters, stragglers."""

    def __init__(self, end: float) -> None:
        """Start empty; drivers stop starting operations at monotonic time ``end``."""
        self.end, self.lock, self.key_lock = end, threading.Lock(), threading.Lock()
        self.expect = bytearray()  # per uid: allowed runs (st.ONCE ... st.ANY)
        self.kinds = bytearray()  # per uid: kind | st.MAP_ITEM for map items
        self.counts: Counter[str] = Counter()
        self.samples: list[str] = []
        self.checks: dict[int, tuple[str, int, int]] = {}  # uid -> (record tag, min, max)
        self.stragglers: list[Pending] = []
        self.holders: dict[str, tuple[cf.Future[Any], int]] = {}  # key -> (future, uid)
        self.last_hang = -HANG_INTERVAL

    def allocate(self, kinds: list[int]) -> int:
        """Reserve one uid per entry of ``kinds``; returns the first (they are consecutive)."""
        with self.lock:
            first = len(self.expect)
            self.expect.extend(bytes([st.AT_MOST_ONCE]) * len(kinds))
            self.kinds.extend(bytes(kinds))
        return first

    def add(self, counts: dict[str, Any], codes: dict[int, int] | None = None) -> None:
        """Merge counters and set allowed-run codes."""
        with self.lock:
            self.counts.update(counts)
            for uid, code in (codes or {}).items():
                self.expect[uid] = code

    def note(self, key: str, text: str, n: int = 1) -> None:
        """Count ``key`` (``n`` times) and keep ``text`` as one of the first examples."""
        with self.lock:
            self.counts[key] += n
            if len(self.samples) < 40:
                self.samples.append(f"{key}: {text}"[:300])

    def unexpected(self, where: str, exc: BaseException) -> None:
        """Count an error that nothing in the operation could legitimately cause."""
        self.note(f"unexpected.{where}.{type(exc).__name__}", repr(exc))

    def classify(self, p: Pending) -> None:
        """Count the outcome of a resolved single-task future and set its uid's allowed runs."""
        shared = p.owner != p.uid
        failed_code = st.NEVER if shared else st.ANY
        if p.fut.cancelled():
            return self.add({"single.cancelled": 1}, {p.uid: p.cancel_code})
        exc = p.fut.exception(timeout=0)
        if exc is None:
            value = p.fut.result(timeout=0)
            if value != (p.owner, st.digest(p.owner)):
                self.note("wrong.single", f"uid {p.owner} got {value!r}")
                return self.add({}, {p.uid: failed_code})
            if p.kind == HANG:
                self.note("unexpected.single.hang_not_timed_out", f"uid {p.uid}")
            key = "single.ok_shared" if shared else "single.ok"
            return self.add({key: 1}, {p.uid: st.NEVER if shared else st.ONCE})
        want = EXPECTED_ERRORS.get(p.kind)
        if want is not None and isinstance(exc, want[0]) and not shared:
            with self.lock:
                self.checks[p.uid] = want[1:]
            self.add({f"single.failed.{type(exc).__name__}": 1})
        else:
            self.unexpected(f"single.{KIND_NAMES[p.kind]}", exc)
        self.add({}, {p.uid: failed_code})

    def settle(self, pending: list[Pending], timeout: float, last: bool = False) -> None:
        """Wait for ``pending``, classify what resolved; keep the rest for later (lost if last)."""
        cf.wait({p.fut for p in pending}, timeout=timeout)
        for p in pending:
            if p.fut.done():
                self.classify(p)
            elif last:
                self.note("lost.single", f"uid {p.uid} ({KIND_NAMES[p.kind]}) never resolved")
                self.add({}, {p.uid: st.ANY})
            else:
                self.stragglers.append(p)  # list.append is atomic

    def check_map(self, run: MapRun, got: list[Any], error: BaseException | None) -> None:
        """Verify what a map delivered and account for every item it was given."""
        handed = run.pulled[0]
        given = run.items[:handed]
        wrong, delivered = st.match(given, got, run.ordered)
        c: dict[str, float] = {"map_items.submitted": handed, "map_items.delivered": len(delivered)}
        if wrong:
            self.note("wrong.map_items", f"{wrong} of {len(got)} results ({run.label})", wrong)
        codes = dict.fromkeys(delivered, st.ONCE)
        codes.update((item[0], st.NEVER) for item in run.items[handed:])
        missing = [item for item in given if item[0] not in delivered]
        if run.timed_out or (error is None and not run.stopped):
            short = len(missing) if run.timed_out else max(0, handed - len(got))
            if short:
                self.note("lost.map_items", f"{short} of {handed} items ({run.label})", short)
            codes.update((item[0], st.ANY) for item in missing)
        elif error is not None:
            c["map_items.undelivered_after_error"] = len(missing)
            left = {kind for _, kind, _ in missing}
            if isinstance(error, mppool.WorkerCrashedError) and left & set(CRASH_KINDS):
                c["maps.failed.WorkerCrashedError"] = 1
            elif isinstance(error, ConnectionError) and FLAKY in left:
                c["maps.failed.ConnectionError"] = 1
            else:
                self.unexpected(f"map.{run.label}", error)
        else:
            c["map_items.undelivered_after_break"] = len(missing)
        flaky = sum(kind == FLAKY for _, kind, _ in given)
        if flaky and not run.stopped and not run.timed_out:  # how per-item retries would fare
            c["flaky_maps.count"] = 1
            c["flaky_maps.failed"] = int(isinstance(error, ConnectionError))
            c["flaky_maps.expected_failures"] = 1 - (1 - FLAKY_P**5) ** flaky
        self.add(c, codes)


# --- the drivers ---------------------------------------------------------------------------------

OPS = {"op_submit": 40, "op_map": 36, "op_keyed": 10, "op_cancel": 8, "op_hang": 6}


class Driver(threading.Thread):
    """A user thread that runs random operations against the pool until the ledger's end."""

    def __init__(self, pool: mppool.Pool, ledger: Ledger, seed: int, index: int) -> None:
        """Prepare driver ``index``, without starting it."""
        super().__init__(name=f"soak-driver-{index}", daemon=True)
        self.pool, self.ledger, self.rng = pool, ledger, random.Random(seed * 1_000_003 + index)
        self.run_task, self.run_item = _task_module().run_task, _task_module().run_item
        self.views: dict[tuple[float, bool, float | None], mppool.PoolView] = {}

    def run(self) -> None:
        """Pick and run operations until the end; stop if the pool breaks."""
        while time.monotonic() < self.ledger.end:
            try:
                getattr(self, self.rng.choices(list(OPS), list(OPS.values()))[0])()
            except (mppool.BrokenPoolError, mppool.PoolClosedError) as exc:
                return self.ledger.unexpected("driver", exc)
            except Exception as exc:
                self.ledger.unexpected("driver", exc)

    def view(self, priority: float, retry: bool = False, timeout: float | None = None) -> Any:
        """A cached ``pool.options(...)`` view."""
        key = (priority, retry, timeout)
        if key not in self.views:
            policy = FLAKY_POLICY if retry else None
            self.views[key] = self.pool.options(priority=priority, retries=policy, timeout=timeout)
        return self.views[key]

    def submit_all(self, specs: list[tuple[int, float, Any, int | None]]) -> None:
        """Submit ``(kind, cost, view, cancel)`` specs, cancel where asked, then settle them.

        ``cancel`` is None (leave the task alone) or the task's allowed runs once cancelled.
        """
        first = self.ledger.allocate([kind for kind, _, _, _ in specs])
        pending = []
        for uid, (kind, cost, view, cancel) in enumerate(specs, first):
            pending.append(Pending(view.submit(self.run_task, uid, kind, cost), uid, kind, uid))
            if cancel is not None:
                pending[-1].fut.cancel()
                pending[-1].cancel_code = cancel
        self.ledger.add({"single.submitted": len(pending)})
        self.ledger.settle(pending, BATCH_WAIT)

    def op_submit(self) -> None:
        """A batch of single submits: mixed kinds and priorities, a few cancelled at once."""
        rng, specs = self.rng, list[tuple[int, float, Any, int | None]]()
        for _ in range(rng.randint(10, 150)):
            priority, r = rng.choice(PRIORITIES), rng.random()
            if r < 0.01:
                specs.append((rng.choice(CRASH_KINDS), 0.0, self.view(priority), None))
            elif r < 0.02:
                specs.append((FLAKY, 0.0, self.view(priority, retry=True), None))
            else:
                kind, cost = (SMALL, rng.uniform(0.0002, 0.002)) if r < 0.3 else (TINY, 0.0)
                view = self.view(priority, timeout=TIMED if rng.random() < 0.05 else None)
                specs.append((kind, cost, view, st.AT_MOST_ONCE if rng.random() < 0.02 else None))
        self.submit_all(specs)

    def op_cancel(self) -> None:
        """Submit, then cancel most at once: delayed tasks (which must never run) or queued ones."""
        delayed = self.rng.random() < 0.5
        view = self.pool.options(delay=0.5) if delayed else self.view(self.rng.choice(PRIORITIES))
        code = st.NEVER_CANCELLED if delayed else st.AT_MOST_ONCE
        n = self.rng.randint(5, 30)
        cancels = [code if self.rng.random() < 0.7 else None for _ in range(n)]
        self.submit_all([(SMALL, 0.001, view, cancel) for cancel in cancels])

    def op_hang(self) -> None:
        """A task that hangs past its timeout, among quick timed ones (rate-limited)."""
        with self.ledger.lock:  # each hang holds a worker for HANG_TIMEOUT s
            now = time.monotonic()
            due = now >= self.ledger.last_hang + HANG_INTERVAL
            self.ledger.last_hang = now if due else self.ledger.last_hang
        if not due:
            return self.op_submit()
        view = self.view(0, timeout=HANG_TIMEOUT)
        self.submit_all([(kind, 0.001, view, None) for kind in (HANG, TINY, TINY, SMALL)])

    def op_keyed(self) -> None:
        """Keyed submits over a key space shared by all drivers: some join a running task."""
        n = self.rng.randint(3, 12)
        first = self.ledger.allocate([SMALL] * n)
        pending, shared = [], 0
        for uid in range(first, first + n):
            key = f"soak-{self.rng.randrange(KEYSPACE)}"
            view = self.pool.options(key=key)
            with self.ledger.key_lock:  # so that every keyed submit knows the holder it joined
                fut = view.submit(self.run_task, uid, SMALL, 0.003)
                holder = self.ledger.holders.get(key)
                if holder is not None and holder[0] is fut:
                    pending.append(Pending(fut, uid, SMALL, holder[1], cancel_code=st.NEVER))
                    shared += 1
                else:
                    self.ledger.holders[key] = (fut, uid)
                    pending.append(Pending(fut, uid, SMALL, uid))
        self.ledger.add({"single.submitted": n, "keyed.submitted": n, "keyed.shared": shared})
        self.ledger.settle(pending, BATCH_WAIT)

    def op_map(self) -> None:
        """One ``map`` or ``imap_unordered``, over a list or a generator, maybe left early."""
        rng = self.rng
        ordered, retry = rng.random() < 0.5, rng.random() < 0.5
        n = rng.choice((rng.randint(2, 50), rng.randint(50, 500), rng.randint(500, 5000)))
        kinds = [FLAKY if retry and rng.random() < 0.01 else TINY for _ in range(n)]
        kinds = [SMALL if k == TINY and rng.random() < 0.2 else k for k in kinds]
        if rng.random() < 0.3:
            kinds[rng.randrange(n)] = rng.choice(CRASH_KINDS)
        first = self.ledger.allocate([k | st.MAP_ITEM for k in kinds])
        items = [
            (first + i, k, rng.uniform(1e-4, 5e-4) * (k == SMALL)) for i, k in enumerate(kinds)
        ]
        use_gen = rng.random() < 0.5
        stop_after = rng.randint(1, n - 1) if rng.random() < 0.25 else 0
        label = ("map" if ordered else "imap_unordered") + (".generator" if use_gen else ".list")
        run = MapRun(items, ordered, label + ".retry" * retry + ".left_early" * bool(stop_after))
        view = self.view(rng.choice(PRIORITIES), retry=retry)
        method = view.map if ordered else view.imap_unordered
        results = method(self.run_item, run.generate() if use_gen else items, timeout=MAP_TIMEOUT)
        got: list[Any] = []
        error: BaseException | None = None
        try:
            for value in results:
                got.append(value)
                if len(got) == stop_after:
                    run.stopped = True
                    break
        except mppool.TaskTimeoutError as exc:  # a TimeoutError too, but a task's outcome
            error = exc
        except TimeoutError:
            run.timed_out = True
        except Exception as exc:
            error = exc
        finally:
            results.close()  # leaving early cancels the map's unfinished chunks
        if not use_gen:
            run.pulled[0] = n  # a list counts as handed over whole
        self.ledger.add({f"map_calls.{run.label}": 1})
        self.ledger.check_map(run, got, error)


# --- measuring, running, reporting ---------------------------------------------------------------


def warm_up(pool: mppool.Pool, timeout: float = 30.0) -> None:
    """Run pings until every worker has run one (and so imported this module)."""
    deadline, seen = time.monotonic() + timeout, set[int]()
    while time.monotonic() < deadline:
        futs = [pool.submit(_task_module().ping, 0.02) for _ in range(4 * pool.workers)]
        seen.update(f.result(timeout=timeout) for f in futs)
        if {w.pid for w in pool.stats().workers} <= seen:
            return
    raise TimeoutError("not every worker ran a warm-up task")


def shutdown(pool: mppool.Pool, timeout: float = 60.0) -> list[str]:
    """Shut the pool down within ``timeout`` (kill its dispatcher if not); return problems."""
    kwargs = {"cancel_futures": True, "timeout": 10.0}
    closer = threading.Thread(target=pool.shutdown, kwargs=kwargs, daemon=True)
    closer.start()
    closer.join(timeout)
    problems = [f"left behind, killed: {p}" for p in reap_descendants(timeout=5.0)]
    if closer.is_alive():
        problems.append(f"shutdown did not finish within {timeout} s")
    return problems


def run_soak(pool: mppool.Pool, ledger: Ledger, args: argparse.Namespace) -> dict[str, Any]:
    """Measure, drive the pool for ``args.minutes``, drain the stragglers, measure again."""
    fig: dict[str, Any] = {"rss_start": rss(pool)}
    start = time.monotonic()
    ledger.end = start + args.minutes * 60
    drivers = [Driver(pool, ledger, args.seed, i) for i in range(args.threads)]
    for driver in drivers:
        driver.start()
    for driver in drivers:  # each operation is bounded by BATCH_WAIT or MAP_TIMEOUT
        driver.join(max(0.0, ledger.end - time.monotonic()) + MAP_TIMEOUT + BATCH_WAIT + 30)
        if driver.is_alive():
            ledger.note("unexpected.driver.stuck", f"{driver.name} did not finish its operation")
    fig["elapsed"] = time.monotonic() - start
    ledger.settle(list(ledger.stragglers), DRAIN_TIMEOUT, last=True)
    stats = pool.stats()
    fig["rss_end"] = rss(pool)
    fig["memory"] = memory(fig["rss_start"], fig["rss_end"])
    fig["stats"] = {k: getattr(stats, k) for k in stats.__dataclass_fields__ if k != "workers"}
    fig["stats"]["queue_by_priority"] = {str(k): v for k, v in stats.queue_by_priority.items()}
    fig["final_pids"] = [w.pid for w in stats.workers if w.pid]
    return fig


def summarize(fig: dict[str, Any]) -> str:
    """The human-readable report."""
    c, s = Counter(fig["counts"]), fig["stats"]

    def group(prefix: str) -> str:
        items = sorted((k[len(prefix) :], v) for k, v in c.items() if k.startswith(prefix) and v)
        return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in items)

    flaky, maps = c["kinds.single.flaky"], sum(v for k, v in c.items() if k.startswith("map_calls"))
    delivered = c["map_items.delivered"]
    lines = [
        f"mppool soak: {fig['minutes']} min, {fig['workers']} workers, {fig['threads']} driver "
        f"threads, seed {fig['seed']}: {'FAIL' if fig['failed'] else 'PASS'}",
        f"submitted:  {c['single.submitted']} single tasks ({group('kinds.single.')}; keyed "
        f"{c['keyed.submitted']}, of which {c['keyed.shared']} joined a running task)",
        f"            {c['map_items.submitted']} map items in {maps} maps (generated: "
        f"{group('kinds.map_item.')})",
        f"completed:  {c['single.ok']} single (+{c['single.ok_shared']} shared), {delivered} map "
        f"items: {fig['throughput']:,.0f}/s in {fig['elapsed']:.1f} s",
        f"failed as expected: single {group('single.failed.') or 'none'}; "
        f"maps {group('maps.failed.') or 'none'}",
        f"flaky:      singles {c['single.failed.ConnectionError']} of {flaky} failed (per-item "
        f"retries: ~{flaky * FLAKY_P**5:.1f}); maps with flaky items {c['flaky_maps.failed']} of "
        f"{c['flaky_maps.count']} (per-item retries: ~{c['flaky_maps.expected_failures']:.1f})",
        f"cancelled:  {c['single.cancelled']}; map items not delivered: "
        f"{c['map_items.undelivered_after_break']} after leaving early, "
        f"{c['map_items.undelivered_after_error']} after a map error",
        *(f"{t.upper() + ':':11} {fig[t]} ({group(t + '.') or '-'})" for t in TOTALS),
        f"re-run after their worker died (not errors): {group('rerun_after_worker_death.') or 0}",
        f"resized:    {fig['resizes']} times at random (1 to {2 * fig['workers']} workers), "
        f"errors: {fig['resize_errors'] or 'none'}",
        f"records:    {group('log.')}",
        "pool.stats(): " + ", ".join(f"{k} {s[k]}" for k in STATS) + " (a map chunk is one task)",
        f"RSS MiB start -> end (growth); workers: the mean of pids "
        f"{', '.join(fig['rss_start']['workers'])} -> {', '.join(fig['rss_end']['workers'])}",
        *(f"  {k:11} {v['start']} -> {v['end']} ({v['growth']})" for k, v in fig["memory"].items()),
    ]
    if fig["samples"]:
        lines += ["first problems:", *(f"  {t}" for t in fig["samples"][:15])]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="Soak test of mppool (see bench/soak.py).")
    parser.add_argument("--minutes", type=float, default=3.0, help="how long to drive the pool")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=4, help="driver threads")
    parser.add_argument("--seed", type=int, default=1, help="seed of the drivers' choices")
    parser.add_argument("--json", metavar="PATH", help="write the figures to this file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the execution records")
    parser.add_argument("--resize", action="store_true", help="resize at random meanwhile")
    return parser.parse_args(argv)


def soak(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Run the soak against a new pool, then judge the records in ``folder``; the figures."""
    ledger = Ledger(end=0.0)
    with LeftPids() as left:
        pool = mppool.Pool(workers=args.workers)
        try:
            warm_up(pool)
            resizer = Resizer(pool, 2 * args.workers, time.monotonic() + args.minutes * 60, 7)
            if args.resize:
                resizer.start()
            fig = run_soak(pool, ledger, args)
            fig.update(resizes=len(resizer.sizes), resize_errors=resizer.errors)
        finally:
            for problem in shutdown(pool):
                ledger.note("unexpected.shutdown", problem)
    exited = set(fig["final_pids"]) | left.pids  # left a shrinking pool: exited, not died
    logs = st.read_logs(folder, len(ledger.expect), ledger.checks, exited)
    judged, mismatches = st.judge(ledger.expect, ledger.kinds, ledger.checks, logs)
    counts = ledger.counts + judged
    counts.update({f"log.{tag}": n for tag, n in logs.tags.items()})
    for kind, name in enumerate(KIND_NAMES):
        counts[f"kinds.single.{name}"] = ledger.kinds.count(kind)
        counts[f"kinds.map_item.{name}"] = ledger.kinds.count(kind | st.MAP_ITEM)
    totals = {t: sum(v for k, v in counts.items() if k.startswith(t + ".")) for t in TOTALS}
    done = counts["single.ok"] + counts["single.ok_shared"] + counts["map_items.delivered"]
    fig.update(vars(args), counts=dict(sorted(counts.items())), **totals)
    fig.update(samples=ledger.samples + mismatches, failed=any(totals.values()))
    fig["throughput"] = done / max(fig["elapsed"], 1e-9)
    return fig


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print its summary; 1 if anything was lost, duplicated, wrong or unexpected."""
    args = parse_args(argv)
    prepare_environment()
    wl.publish_calibration()
    folder = Path(tempfile.mkdtemp(prefix="mppool-soak-"))
    os.environ[st.LOG_ENV] = str(folder)  # before the pool starts: its processes inherit it
    try:
        fig = soak(args, folder)
    finally:
        if args.keep_logs:
            print(f"execution records kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(summarize(fig))
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2, default=str) + "\n")
    return 1 if fig["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
