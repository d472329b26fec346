"""Functions and option sets, sent once and named by an id afterwards (user process).

A task refers to its function and its options by id: the blob of a function is pickled and
sent to the dispatcher (and on to each worker) once, however many tasks use it. Each id
counts the tasks, maps and schedules that use it; when more than ``MAX_FUNCTIONS`` (or
``MAX_OPTIONS``) ids exist, the oldest ones nothing uses any more are forgotten, here and, by
a ``Forget`` message, in the dispatcher and the workers. So a long-running service that
submits ever new closures or option values holds flat memory in all three processes.

A function sent *by value* (defined in ``__main__``, a lambda, a closure) carries the values
of the globals it reads as they were when it was pickled. :class:`_Watch` remembers them;
when one is rebound (``THRESH = 2`` in a notebook), the next submit pickles the function
anew, so a task always sees its function's globals as they are when it is submitted. (An
object mutated in place keeps its identity and is not noticed: rebind the name instead.)
"""

from __future__ import annotations

import hashlib
import pickle
import sys
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, TypeGuard

import cloudpickle

from .. import _protocol as p
from .._errors import SerializationError

MAX_FUNCTIONS = 256  # function ids kept when nothing uses the older ones
MAX_OPTIONS = 256  # option-set ids kept likewise
OBJECT_CACHE = 4096  # function objects remembered (to skip pickling them again)
_MISSING = object()


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _by_value(fn: object) -> TypeGuard[types.FunctionType]:
    """Whether cloudpickle sends ``fn`` by value (its globals travel with it)."""
    if not isinstance(fn, types.FunctionType):
        return False
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is None or module.__name__ == "__main__":
        return True
    obj: Any = module
    for part in fn.__qualname__.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return True
    return obj is not fn


def _code_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


class _Watch:
    """The globals, closure cells and defaults a by-value function was pickled with."""

    __slots__ = ("cells", "defaults", "fn", "names")

    def __init__(self, fn: types.FunctionType) -> None:
        self.fn = fn
        self.names: list[tuple[dict[str, Any], str, Any]] = []
        self.cells: list[tuple[Any, Any]] = []
        self.defaults = (fn.__defaults__, fn.__kwdefaults__)
        self._collect(fn, set())

    def _collect(self, fn: types.FunctionType, seen: set[int]) -> None:
        if id(fn) in seen or len(seen) > 32:
            return
        seen.add(id(fn))
        glob = fn.__globals__
        for name in set(_code_names(fn.__code__)):
            value = glob.get(name, _MISSING)
            if value is _MISSING:
                continue
            self.names.append((glob, name, value))
            if _by_value(value):
                self._collect(value, seen)  # a helper sent by value with it: its globals too
        for cell in fn.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell
                contents = _MISSING
            self.cells.append((cell, contents))
            if _by_value(contents):
                self._collect(contents, seen)

    def unchanged(self) -> bool:
        fn = self.fn
        for glob, name, value in self.names:
            if glob.get(name, _MISSING) is not value:
                return False
        for cell, value in self.cells:
            try:
                if cell.cell_contents is not value:
                    return False
            except ValueError:
                if value is not _MISSING:
                    return False
        return (fn.__defaults__, fn.__kwdefaults__) == self.defaults


class _ByIdentity:
    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ByIdentity) and other.obj is self.obj


class _Uses:
    """One id's users, and what to unlink when it is forgotten."""

    __slots__ = ("count", "digest", "keys")

    def __init__(self, digest: Any) -> None:
        self.count = 0
        self.digest = digest
        self.keys: list[Any] = []


class _Table:
    """Ids with use counts; the oldest unused ones are forgotten past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.lock = threading.Lock()
        self.limit = limit
        self.ids: OrderedDict[int, _Uses] = OrderedDict()
        self.by_digest: dict[Any, int] = {}
        self.next_id = 1
        self.forgotten: list[int] = []

    def release(self, ident: int) -> None:
        with self.lock:
            uses = self.ids.get(ident)
            if uses is not None:
                uses.count -= 1

    def _new(self, digest: Any) -> tuple[int, _Uses]:
        ident = self.next_id
        self.next_id += 1
        uses = self.ids[ident] = _Uses(digest)
        self.by_digest[digest] = ident
        return ident, uses

    def _evict(self, keep: int) -> list[Any]:
        """Forget unused ids beyond the limit (oldest first); return their object keys."""
        dropped: list[Any] = []
        excess = len(self.ids) - self.limit
        if excess <= 0:
            return dropped
        for ident in list(self.ids):
            if excess <= 0:
                break
            uses = self.ids[ident]
            if uses.count > 0 or ident == keep:
                continue
            del self.ids[ident]
            self.by_digest.pop(uses.digest, None)
            dropped.extend(uses.keys)
            self.forgotten.append(ident)
            excess -= 1
        return dropped

    def take_forgotten(self) -> list[int]:
        with self.lock:
            out, self.forgotten = self.forgotten, []
            return out


class FunctionTable(_Table):
    """Function ids: pickled once, re-pickled when a by-value function's globals change."""

    def __init__(self, limit: int = MAX_FUNCTIONS) -> None:
        super().__init__(limit)
        self.by_object: OrderedDict[Any, tuple[int, _Watch | None]] = OrderedDict()

    def acquire(self, fn: Callable[..., Any], publish: Callable[[int, bytes], None]) -> int:
        """The id of ``fn``, counting one more user.

        A new id's blob is handed to ``publish`` while the table is locked, so no other
        thread can use the id before its blob is on its way (ahead of any task using it).

        Raises:
            TypeError: if ``fn`` is not callable.
            SerializationError: if it cannot be pickled.
        """
        key: Any = fn
        try:
            entry = self.by_object.get(key)
        except TypeError:  # unhashable callable: key it by identity
            key = _ByIdentity(fn)
            entry = self.by_object.get(key)
        if entry is not None and (entry[1] is None or entry[1].unchanged()):
            with self.lock:
                uses = self.ids.get(entry[0])
                if uses is not None:
                    uses.count += 1
                    return entry[0]
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        try:
            # cloudpickle sends importable functions by reference and the rest (``__main__``,
            # lambdas, closures) by value.
            blob = cloudpickle.dumps(fn, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise SerializationError(
                f"the function {_name(fn)} could not be pickled: {exc!r}"
            ) from exc
        watch = _Watch(fn) if _by_value(fn) else None
        digest = hashlib.blake2b(blob, digest_size=16).digest()
        with self.lock:
            known = self.by_digest.get(digest)
            if known is not None:
                fn_id, uses = known, self.ids[known]
            else:
                fn_id, uses = self._new(digest)
                publish(fn_id, blob)
            uses.count += 1
            uses.keys.append(key)
            self.by_object[key] = (fn_id, watch)
            if len(self.by_object) > OBJECT_CACHE:
                self.by_object.popitem(last=False)
            for dropped in self._evict(fn_id):
                self.by_object.pop(dropped, None)
        return fn_id


class OptionsTable(_Table):
    """Option-set ids, interned by value (equal options share one id)."""

    def __init__(self, limit: int = MAX_OPTIONS) -> None:
        super().__init__(limit)

    def acquire(self, signature: tuple[Any, ...], publish: Callable[[int], None]) -> int:
        """The id of options with this signature, counting one more user; a new id is
        handed to ``publish`` under the table's lock (see FunctionTable.acquire)."""
        with self.lock:
            known = self.by_digest.get(signature)
            if known is not None:
                self.ids[known].count += 1
                return known
            opts_id, uses = self._new(signature)
            uses.count += 1
            publish(opts_id)
            self._evict(opts_id)
            return opts_id


class Catalog:
    """A pool's functions and option sets: ids handed out, published to the dispatcher
    before any task uses them, and forgotten (there and in the workers) when unused.

    Args:
        send: queues a message for the dispatcher.
    """

    def __init__(self, send: Callable[[Any], None]) -> None:
        self._send = send
        self.functions = FunctionTable()
        self.options = OptionsTable()
        self.planners: dict[int, Any] = {}  # fn id -> ChunkPlanner of its maps

    def options_id(self, opts: Any) -> int:
        """The id of ``opts`` (an ``_Options``), counting one more user (see :meth:`release`).

        Interned by value: ``pool.options(priority=1)`` called a million times (or once per
        HTTP request) is one options set in the dispatcher and the workers, not a million.
        """

        def publish(opts_id: int) -> None:
            self._send(opts.message(opts_id))

        opts_id = self.options.acquire(opts.signature(), publish)
        self._send_forgets()
        return opts_id

    def function_id(self, fn: Callable[..., Any]) -> int:
        """The id of ``fn``, counting one more user (see :meth:`release`)."""

        def publish(fn_id: int, blob: bytes) -> None:
            self._send(p.Function(p.C_FUNCTION, fn_id, blob))

        fn_id = self.functions.acquire(fn, publish)
        self._send_forgets()
        return fn_id

    def release(self, fn_id: int, opts_id: int) -> None:
        """A task, map or schedule no longer needs this function and these options."""
        if fn_id:
            self.functions.release(fn_id)
        if opts_id:
            self.options.release(opts_id)

    def _send_forgets(self) -> None:
        if self.functions.forgotten or self.options.forgotten:
            fn_ids = tuple(self.functions.take_forgotten())
            opts_ids = tuple(self.options.take_forgotten())
            if fn_ids or opts_ids:
                self._send(p.Forget(p.C_FORGET, fn_ids, opts_ids))
                for fn_id in fn_ids:
                    self.planners.pop(fn_id, None)
