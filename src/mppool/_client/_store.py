"""The job store: keyed tasks' results and failures in a SQLite file (user process).

``Pool(store="jobs.db")`` journals every task that has a key. A key's lifecycle in the store::

    (absent) ──claim──▶ running ──▶ done      (its pickled result is kept: never run again)
        ▲                  │
        └── released ◀─────┴──────▶ failed    (the dead-letter list: run again if submitted)

File format (schema version 1): an SQLite database in WAL mode, ``PRAGMA application_id`` =
0x6D70706C ("mppl") and ``PRAGMA user_version`` = the schema version, with two tables::

    tasks(key TEXT PRIMARY KEY, state TEXT,            -- 'running', 'done' or 'failed'
          owner TEXT,                                  -- "pid:start-time:token" while running
          result BLOB, spill TEXT,                     -- pickle bytes, or a file name
          fn BLOB, args BLOB,                          -- failed tasks only: to run them again
          error_type TEXT, error TEXT, traceback TEXT,
          attempts INTEGER, submitted_at REAL, finished_at REAL, duration REAL)
    meta(name TEXT PRIMARY KEY, value TEXT)

A result larger than ``SPILL_BYTES`` is written next to the database, in ``<db>.blobs/``, to a
temporary name and renamed into place (atomic), and only its name goes in the row.

Claims are written (and committed) before a task is sent, in one transaction per batch of
keys, so two pools on one store never run a key at the same time: a key claimed by a live
owner is waited for. An owner that died (its process is gone) loses its claims. Results and
failures are written by one thread, batched: a commit every ``COMMIT_SECONDS`` or
``COMMIT_ROWS`` rows, so a crash loses at most the tasks running and one commit window.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterable
from typing import Any

from .._errors import StoreError

SCHEMA_VERSION = 1
APPLICATION_ID = 0x6D70706C  # "mppl"
SPILL_BYTES = 1 << 20  # results above this size go to a file of their own
COMMIT_SECONDS = 0.05  # the journal commits at least this often while it has rows
COMMIT_ROWS = 2000  # ... or as soon as it has this many
BUSY_TIMEOUT = 30.0  # seconds to wait for another process's write lock
MAX_PARAMS = 500  # keys per IN (...) query

_SCHEMA = """
CREATE TABLE tasks (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    owner TEXT,
    result BLOB,
    spill TEXT,
    fn BLOB,
    args BLOB,
    error_type TEXT,
    error TEXT,
    traceback TEXT,
    attempts INTEGER,
    submitted_at REAL,
    finished_at REAL,
    duration REAL
);
CREATE INDEX tasks_failed ON tasks (finished_at) WHERE state = 'failed';
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT);
"""

DONE, RUN, ELSEWHERE = "done", "run", "elsewhere"
_LOG = logging.getLogger("mppool.store")


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except psutil.Error:
        return None


def _owner_alive(owner: str, cache: dict[str, bool]) -> bool:
    """Whether the process that wrote ``owner`` ("pid:start:token") still runs."""
    alive = cache.get(owner)
    if alive is None:
        pid, start, _ = owner.split(":", 2)
        alive = cache[owner] = _process_start(int(pid)) == float(start)
    return alive


class Store:
    """One pool's connection to a job store file.

    Raises:
        StoreError: if the file is not a store, comes from a newer mppool, is corrupt, or
            cannot be written (a read-only path).
    """

    _tokens = itertools.count(1)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.blobs = self.path + ".blobs"
        pid = os.getpid()
        self.owner = f"{pid}:{_process_start(pid)}:{next(self._tokens)}"
        self.lock = threading.Lock()  # one user of the connection at a time
        self._rerun = True  # whether claims look for stored results before taking the lock
        self.db = self._open()
        self.journal = Journal(self)

    # --- opening -------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, "rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    raise StoreError(f"{self.path} is not an mppool job store (not SQLite)")
        try:
            db = connect(self.path)
            try:
                self._prepare(db)
            except BaseException:
                db.close()
                raise
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot use {self.path} as a job store: {exc}") from exc
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        """WAL mode, then (under the write lock, so two new pools cannot both create it) the
        schema of a new file or the checks of an existing one. Taking the write lock is also
        what fails, here, on a file that cannot be written."""
        mode = _wal(db)
        if mode != "wal":
            raise StoreError(f"{self.path}: the store needs WAL mode (got {mode!r})")
        db.execute("BEGIN IMMEDIATE")
        try:
            app, version = self._identity(db)
            if (app, version) == (0, 0) and not _tables(db):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("INSERT INTO meta VALUES ('created', ?)", (str(time.time()),))
            elif app != APPLICATION_ID:
                raise StoreError(f"{self.path} is an SQLite database but not an mppool job store")
            elif version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer mppool (store schema {version}; "
                    f"this one reads up to {SCHEMA_VERSION})"
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _identity(db: sqlite3.Connection) -> tuple[int, int]:
        app = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        return int(app), int(version)

    # --- claims --------------------------------------------------------------------------------
    def claim(self, keys: list[str]) -> dict[str, tuple[str, Any]]:
        """Decide for each key: ``(DONE, payload)``, ``(ELSEWHERE, None)`` (a live owner runs
        it) or ``(RUN, None)`` (claimed now for this pool, committed before returning)."""
        unique = list(dict.fromkeys(keys))
        out: dict[str, tuple[str, Any]] = {}
        pending = self.journal.pending  # finished here, not yet committed: done all the same
        if pending:
            for key in unique:
                payload = pending.get(key)
                if payload is not None:
                    out[key] = (DONE, payload)
            unique = [key for key in unique if key not in out]
            if not unique:
                return out
        with self.lock:
            if self._rerun:  # the last block had stored rows: this one may need no write
                rows = self._rows(unique)
                if len(rows) == len(unique) and all(r[0] == "done" for r in rows.values()):
                    read = self._payload
                    out.update((k, (DONE, read(r))) for k, r in rows.items())
                    return out
            self.db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._rows(unique)  # under the write lock: no one else claims now
                self._rerun = bool(rows)
                decided, claims = self._decide(unique, rows)
                out.update(decided)
                self.journal.releasing.difference_update(claims)  # claimed again: keep it
                owner = self.owner
                _values(
                    self.db, _CLAIM, "(?, 'running', ?)", [v for k in claims for v in (k, owner)], 2
                )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return out

    def _decide(
        self, keys: list[str], rows: dict[str, Any]
    ) -> tuple[dict[str, tuple[str, Any]], list[str]]:
        out: dict[str, tuple[str, Any]] = {}
        claims: list[str] = []
        alive: dict[str, bool] = {}
        for key in keys:
            row = rows.get(key)
            if row is not None and row[0] == "done":
                out[key] = (DONE, self._payload(row))
            elif (
                row is not None
                and row[0] == "running"
                and row[1] != self.owner
                and row[1]
                and _owner_alive(row[1], alive)
            ):
                out[key] = (ELSEWHERE, None)
            else:
                out[key] = (RUN, None)
                claims.append(key)
        return out, claims

    def _rows(self, keys: list[str]) -> dict[str, Any]:
        """The store's rows of those ``keys`` it has: key -> (key, state, owner, result, spill)."""
        found: dict[str, Any] = {}
        for i in range(0, len(keys), MAX_PARAMS):
            part = keys[i : i + MAX_PARAMS]
            marks = ",".join("?" * len(part))
            sql = f"SELECT key, state, owner, result, spill FROM tasks WHERE key IN ({marks})"
            found.update({row[0]: row[1:] for row in self.db.execute(sql, part)})
        return found

    def _payload(self, row: Any) -> bytes:
        """A done row's result: ``row`` is (state, owner, result, spill)."""
        result = row[2]
        if result is not None:
            return result if type(result) is bytes else bytes(result)
        with open(os.path.join(self.blobs, row[3]), "rb") as f:
            return f.read()

    def state(self, key: str) -> tuple[str, Any] | None:
        """``(state, payload or None)`` of a key, or None if the store has no row for it."""
        with self.lock:
            row = self._rows([key]).get(key)
        if row is None:
            return None
        return row[0], (self._payload(row) if row[0] == "done" else None)

    def owner_alive(self, key: str) -> bool:
        """Whether the key is running under a live owner other than this pool."""
        with self.lock:
            row = self._rows([key]).get(key)
        return bool(
            row is not None
            and row[0] == "running"
            and row[1] != self.owner
            and row[1]
            and _owner_alive(row[1], {})
        )

    # --- reading for people --------------------------------------------------------------------
    def failures(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The dead-letter list, newest first."""
        with self.lock:
            return listing(self.db, "failed", limit)

    def dead_letters(self, keys: Iterable[str] | None = None) -> list[tuple[str, bytes, bytes]]:
        """``(key, function blob, arguments payload)`` of failed tasks (all, or ``keys``)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT key, fn, args FROM tasks WHERE state = 'failed' AND fn IS NOT NULL"
            ).fetchall()
        wanted = None if keys is None else set(keys)
        return [(k, bytes(f), bytes(a)) for k, f, a in rows if wanted is None or k in wanted]

    def close(self) -> None:
        """Write what is pending, then close. Idempotent."""
        self.journal.close()
        with self.lock:
            self.db.close()


# --- reading, for people and the command line ---------------------------------------------------
_LISTED = "key, state, error_type, error, attempts, submitted_at, finished_at, duration"


def listing(db: sqlite3.Connection, state: str | None, limit: int) -> list[dict[str, Any]]:
    """Rows of the store (of one state, or all), the most recently finished first."""
    where, params = ("WHERE state = ?", (state,)) if state else ("", ())
    cursor = db.execute(
        f"SELECT {_LISTED} FROM tasks {where} ORDER BY finished_at DESC LIMIT ?", (*params, limit)
    )
    return [_listed(row) for row in cursor]


def _listed(row: tuple[Any, ...]) -> dict[str, Any]:
    key, state, etype, error, attempts, submitted, finished, duration = row
    return {
        "key": key,
        "state": state,
        "error": f"{etype}: {error}" if etype else None,
        "attempts": attempts or 0,
        "submitted_at": submitted,
        "finished_at": finished,
        "duration": duration,
    }


def counts(db: sqlite3.Connection) -> dict[str, int]:
    """How many keys the store has in each state."""
    return dict(db.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())


def describe(db: sqlite3.Connection, path: str, key: str) -> dict[str, Any] | None:
    """One key in full (its result as pickle bytes), or None if the store has no such key."""
    row = db.execute(
        f"SELECT {_LISTED}, traceback, owner, result, spill FROM tasks WHERE key = ?", (key,)
    ).fetchone()
    if row is None:
        return None
    info = _listed(row[:8])
    traceback, owner, result, spill = row[8:]
    info.update(traceback=traceback, owner=owner, spill=spill, result=None)
    if result is not None:
        info["result"] = bytes(result)
    elif spill is not None:
        with open(os.path.join(path + ".blobs", spill), "rb") as f:
            info["result"] = f.read()
    return info


def open_readonly(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A read-only connection to an existing store (for looking, never for running).

    Raises:
        StoreError: if there is no such file, or it is not a store this mppool can read.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise StoreError(f"no job store at {path}")
    try:
        db = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    try:
        app, version = Store._identity(db)
        if app != APPLICATION_ID:
            raise StoreError(f"{path} is not an mppool job store")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path} was written by a newer mppool (store schema {version})")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise StoreError(f"cannot read {path}: {exc}") from exc
    except BaseException:
        db.close()
        raise
    return db


# Rows are written many to a statement: one step per statement, not per row, so the writing
# thread gives the GIL back and takes it again once per statement (executemany: once per row,
# each time waiting for the busy main thread to let go of it).
ROWS_PER_STATEMENT = 256
_CLAIM = (
    "INSERT INTO tasks (key, state, owner) VALUES {} "
    "ON CONFLICT (key) DO UPDATE SET state = 'running', owner = excluded.owner"
)
_DONE = (
    "INSERT INTO tasks (key, state, result, spill, attempts, duration, submitted_at, "
    "finished_at) VALUES {} ON CONFLICT (key) DO UPDATE SET state = 'done', owner = NULL, "
    "result = excluded.result, spill = excluded.spill, attempts = excluded.attempts, "
    "duration = excluded.duration, submitted_at = excluded.submitted_at, "
    "finished_at = excluded.finished_at, fn = NULL, args = NULL, error_type = NULL, "
    "error = NULL, traceback = NULL"
)


def _values(db: sqlite3.Connection, sql: str, row: str, flat: list[Any], width: int) -> None:
    """Run ``sql`` (an INSERT with a ``{}`` for its VALUES) over rows of ``width`` values laid
    end to end in ``flat``, many rows per step."""
    limit = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # 999 before SQLite 3.32
    step = max(1, min(ROWS_PER_STATEMENT, limit // width)) * width
    for i in range(0, len(flat), step):
        part = flat[i : i + step]
        db.execute(sql.format(",".join([row] * (len(part) // width))), part)


def connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), shared across threads
    under the store's lock."""
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never corrupt
    except BaseException:
        db.close()
        raise
    return db


def _wal(db: sqlite3.Connection) -> str:
    """Switch to WAL mode. SQLite answers "locked" at once (no busy wait) while another
    connection is switching the same new file, so this waits here, up to ``BUSY_TIMEOUT``."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            return str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def _tables(db: sqlite3.Connection) -> list[str]:
    return [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]


def spill_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest() + ".pickle"


class Journal:
    """Writes results and failures to the store from a thread of its own, in batches.

    The hot path (:meth:`done`, on the pool's reader thread) is one ``deque.append``: no lock,
    no wake-up. The writer looks every ``COMMIT_SECONDS`` and writes whatever has come in, in
    one transaction; a result's ``finished_at`` is the time of that commit (within
    ``COMMIT_SECONDS`` of the truth).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._done: collections.deque[tuple[str, bytes, int, float, float]] = collections.deque()
        self._other: collections.deque[tuple[str, tuple[Any, ...]]] = collections.deque()
        self._stop = threading.Event()
        # Keys finished here and not yet committed, with their results: a claim in this
        # process answers them as done (the row still says running until the commit).
        self.pending: dict[str, bytes] = {}
        # Keys given back and not yet written; a new claim of one takes it off, so the delete
        # to come does not remove the new claim (both happen under the store's lock).
        self.releasing: set[str] = set()
        self._db = connect(store.path)
        self._thread = threading.Thread(target=self._run, name="mppool-journal", daemon=True)
        self._thread.start()

    def done(self, key: str, payload: bytes, attempts: int, duration: float, sub: float) -> None:
        self.pending[key] = payload
        self._done.append((key, payload, attempts, duration, sub))

    def failed(self, key: str, fields: tuple[Any, ...]) -> None:
        """``fields``: error type, message, traceback, attempts, duration, submitted_at,
        function blob, arguments payload."""
        self._other.append(("failed", (*fields, time.time(), key)))

    def released(self, key: str) -> None:
        """A claimed key will not run here (cancelled, or the pool ended first)."""
        self.releasing.add(key)
        self._other.append(("released", (key, self._store.owner)))

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(COMMIT_SECONDS)
            done = [self._done.popleft() for _ in range(len(self._done))]
            other = [self._other.popleft() for _ in range(len(self._other))]
            if done or other:
                try:
                    self._write(done, other)
                except Exception:  # the disk is full, the file was removed, ...: say so loudly
                    _LOG.exception(
                        "job store %s: %d results and %d other rows could not be written",
                        self._store.path,
                        len(done),
                        len(other),
                    )
            elif stopping:
                return

    def _write(
        self, done: list[tuple[str, bytes, int, float, float]], other: list[tuple[str, Any]]
    ) -> None:
        now = time.time()
        flat: list[Any] = []
        for key, payload, attempts, duration, sub in done:
            if len(payload) > SPILL_BYTES:
                flat += (key, None, self._spill(key, payload), attempts, duration, sub, now)
            else:
                flat += (key, payload, None, attempts, duration, sub, now)
        failed = [row for kind, row in other if kind == "failed"]
        with self._store.lock:
            released = [
                row for kind, row in other if kind == "released" and row[0] in self.releasing
            ]
            self.releasing.difference_update(row[0] for row in released)
            self._commit(flat, failed, released)
        pending = self.pending
        for key, payload, *_ in done:
            if pending.get(key) is payload:  # not finished again meanwhile
                del pending[key]

    def _commit(self, flat: list[Any], failed: list[Any], released: list[Any]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            _values(db, _DONE, "(?, 'done', ?, ?, ?, ?, ?, ?)", flat, 7)
            db.executemany(
                "UPDATE tasks SET state = 'failed', owner = NULL, result = NULL, spill = NULL, "
                "error_type = ?, error = ?, traceback = ?, attempts = ?, duration = ?, "
                "submitted_at = ?, fn = ?, args = ?, finished_at = ? WHERE key = ?",
                failed,
            )
            # A released key that had failed before stays a dead letter; others are forgotten.
            db.executemany(
                "UPDATE tasks SET state = 'failed', owner = NULL WHERE key = ? "
                "AND state = 'running' AND owner = ? AND error_type IS NOT NULL",
                released,
            )
            db.executemany(
                "DELETE FROM tasks WHERE key = ? AND state = 'running' AND owner = ?", released
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _spill(self, key: str, payload: bytes) -> str:
        os.makedirs(self._store.blobs, exist_ok=True)
        name = spill_name(key)
        final = os.path.join(self._store.blobs, name)
        temp = f"{final}.{os.getpid()}.tmp"
        with open(temp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)  # atomic: a reader sees the whole file or none
        return name

    def close(self) -> None:
        """Write what has come in, then stop. Idempotent."""
        self._stop.set()
        self._thread.join()
        self._db.close()
