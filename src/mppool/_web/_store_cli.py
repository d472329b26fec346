"""``mppool store``: a job store, read-only, for people (user process)."""

from __future__ import annotations

import pickle
import sys
import time
from typing import Any

from .._client._store import counts, describe, listing, open_readonly
from .._errors import StoreError

STATES = ("running", "done", "failed")


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def show(path: str, key: str | None, state: str | None, limit: int, result: bool) -> int:
    """Print the store's counts and latest keys, or one key; return the exit status."""
    try:
        db = open_readonly(path)
    except StoreError as exc:
        print(f"mppool store: {exc}", file=sys.stderr)
        return 2
    try:
        if key is not None:
            return _one(db, path, key, result)
        _summary(db, path, state, limit)
        return 0
    finally:
        db.close()


def _summary(db: Any, path: str, state: str | None, limit: int) -> None:
    by_state = counts(db)
    total = sum(by_state.values())
    parts = ", ".join(f"{name} {by_state.get(name, 0)}" for name in STATES)
    print(f"{path}: {total} keys: {parts}")
    rows = listing(db, state, limit)
    if not rows:
        return
    width = min(40, max(len("KEY"), *(len(r["key"]) for r in rows)))
    print(f"{'KEY':<{width}}  {'STATE':<7}  {'TRIES':>5}  {'RUN TIME':>9}  {'FINISHED':<19}  ERROR")
    for r in rows:
        print(
            f"{r['key'][:width]:<{width}}  {r['state']:<7}  {r['attempts']:>5}  "
            f"{_seconds(r['duration']):>9}  {_when(r['finished_at']):<19}  {r['error'] or ''}"
        )
    if len(rows) == limit and total > limit:
        print(f"... {total - limit} more (--limit, --state)")


def _one(db: Any, path: str, key: str, result: bool) -> int:
    info = describe(db, path, key)
    if info is None:
        print(f"mppool store: no key {key!r} in {path}", file=sys.stderr)
        return 1
    print(f"key        {info['key']}")
    print(f"state      {info['state']}")
    if info["state"] == "running":
        print(f"owner      {info['owner']}  (process id : start time : pool)")
    print(f"attempts   {info['attempts']}")
    print(f"submitted  {_when(info['submitted_at'])}")
    print(f"finished   {_when(info['finished_at'])}")
    print(f"run time   {_seconds(info['duration'])}")
    if info["error"]:
        print(f"error      {info['error']}")
    if info["traceback"]:
        print("traceback (in the worker):")
        print("  " + info["traceback"].rstrip().replace("\n", "\n  "))
    payload = info["result"]
    if payload is not None:
        where = f"in {info['spill']}" if info["spill"] else "in the database"
        print(f"result     {len(payload)} bytes of pickle, {where}")
        if result:
            print(repr(pickle.loads(payload)))
    return 0
