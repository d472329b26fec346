"""Dependencies between tasks: what the three processes share about them.

A future of the same pool passed as an argument makes the new task depend on it. In the
user process the future is replaced by a :class:`DepRef` (its place in the task's list of
dependencies) before the arguments are pickled, and the task carries the dependencies' ids.
The dispatcher holds the task, holding no worker, until every dependency has succeeded; it
then *bundles* the task's payload with the dependencies' result payloads, as it received them
from the workers (opaque bytes, never unpickled there), and the worker that runs the task
unbundles them and puts each result in its :class:`DepRef`'s place.

Only top-level arguments are looked at (``submit(fn, fut)`` or ``submit(fn, x=fut)``, not a
future inside a list); ``options(after=[...])`` orders without passing results.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

from . import _shm

BUNDLE = b"mppool-deps\x00"  # a bundled payload starts with this (no pickle or segment does)
CHAINED = b"mppool-chained\x00"  # a chained payload: the dependency runs just before it
_PREVIOUS = struct.Struct("<qq")  # a chained payload's dependency: run id, attempt


class DepRef:
    """The place of a dependency's result in a task's arguments."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (DepRef, (self.index,))

    def __repr__(self) -> str:
        return f"DepRef({self.index})"


def bundle(payload: bytes, results: list[bytes]) -> bytes:
    """The task's payload with its dependencies' result payloads (dispatcher: opaque bytes)."""
    return BUNDLE + pickle.dumps((payload, results), pickle.HIGHEST_PROTOCOL)


def chained(payload: bytes, run_id: int, attempt: int) -> bytes:
    """The payload of a task sent right behind its one dependency, to the same worker: the
    worker takes that task's value as it is, if it ran there just before and succeeded."""
    return CHAINED + _PREVIOUS.pack(run_id, attempt) + payload


def unchain_call(
    data: bytes, last: tuple[int, int, Any] | None
) -> tuple[tuple[Any, ...], dict[str, Any] | None] | None:
    """A chained payload's ``(args, kwargs)`` with the previous task's value in every
    ``DepRef``'s place; ``None`` unless ``last`` (run id, attempt, value) is that task."""
    run_id, attempt = _PREVIOUS.unpack_from(data, len(CHAINED))
    if last is None or last[0] != run_id or last[1] != attempt:
        return None
    args, kwargs = _load(data[len(CHAINED) + _PREVIOUS.size :])
    value = last[2]
    args = tuple(value if isinstance(a, DepRef) else a for a in args)
    if kwargs:
        kwargs = {k: value if isinstance(v, DepRef) else v for k, v in kwargs.items()}
    return args, kwargs


def _load(payload: bytes) -> Any:
    return _shm.loads(payload) if payload.startswith(_shm.MAGIC) else pickle.loads(payload)


def unbundle_call(data: bytes) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    """A bundled payload's ``(args, kwargs)``, each :class:`DepRef` replaced by its result
    (worker). A result in shared memory is mapped, not removed: the dispatcher removes it
    once no task needs it."""
    payload, results = pickle.loads(data[len(BUNDLE) :])
    args, kwargs = _load(payload)
    values = [_load(result) for result in results]
    args = tuple(values[a.index] if isinstance(a, DepRef) else a for a in args)
    if kwargs:
        kwargs = {k: values[v.index] if isinstance(v, DepRef) else v for k, v in kwargs.items()}
    return args, kwargs
