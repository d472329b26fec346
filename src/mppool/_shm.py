"""Large payloads through shared memory: arguments and results that never cross a pipe.

A task's arguments (or a result) are pickled with protocol 5. Every buffer of at least
``OOB_MIN`` bytes (a numpy array, a bytearray, anything that exposes a ``PickleBuffer``) is
taken out of band, and if what remains is still over ``INBAND_MAX`` bytes (a long ``bytes``, a
huge list) it goes too: both are written into one *segment*, a file in ``/dev/shm``, and the
payload that crosses the pipes becomes a small pickle naming it. The dispatcher forwards that
small pickle like any other; it never sees the data.

On the other side ``pickle.loads`` of that small pickle maps the segment and rebuilds the
object over the mapping: a numpy array is a view of the shared pages, not a copy.

* Arguments are mapped copy-on-write in the worker (a task may write to its argument, as it
  could to a copy, and nobody else sees it); the user process removes the segment when the
  task's outcome arrives (a retry after a crash finds it still there).
* Results are mapped copy-on-write in the user process, which removes the segment as it maps
  it: the mapping lives as long as the result does.
* :class:`Shared` (``pool.share(array)``) is placed once and mapped read-only by every task
  that uses it, each worker keeping it mapped between tasks; it is removed when the handle is
  garbage collected (tasks that use it keep it alive until their outcome) or the pool ends.

Every segment's name starts with ``mppool-<dispatcher pid>-``: whatever is left when a pool
ends (a worker killed between writing its result and sending it, the user process killed) is
removed by the dispatcher as it exits, or, if the dispatcher itself died, by the user process.

The segments are plain files in ``/dev/shm`` (POSIX shared memory on Linux), opened with
``os.open`` and mapped with :mod:`mmap`. ``multiprocessing.shared_memory`` is not used: on
Python 3.11 every process that attaches a segment registers it with a resource tracker process
of its own, which would remove segments still in use and outlive the pool.
"""

from __future__ import annotations

import io
import itertools
import mmap
import os
import pickle
import threading
import weakref
from collections.abc import Callable
from typing import Any

SHM_DIR = "/dev/shm"
OOB_MIN = 64 << 10  # a buffer at least this large travels out of band
INBAND_MAX = 1 << 20  # a pickle still larger than this (once buffers are out) travels too
OPEN_SHARED = 16  # shared objects each worker keeps mapped between tasks
ALIGN = 64  # every part of a segment starts on a cache line
MADV_POPULATE_READ = 22  # Linux 5.14+: fill a mapping's page tables, reading (no copy)
POPULATE_MIN = 1 << 20  # smaller mappings are left to fault in

_names = itertools.count()


def prefix(dispatcher_pid: int) -> str:
    """The start of the name of every segment of the pool whose dispatcher is this pid."""
    return f"mppool-{dispatcher_pid}-"


def _new_name(pool_prefix: str) -> str:
    return f"{pool_prefix}{os.getpid()}-{next(_names)}"


def _offsets(layout: list[int]) -> tuple[list[int], int]:
    """Where each part of a segment starts (every one on an ``ALIGN`` boundary, as numpy and
    BLAS want their data), and the segment's size."""
    offsets, end = [], 0
    for size in layout:
        start = -(-end // ALIGN) * ALIGN
        offsets.append(start)
        end = start + size
    return offsets, max(end, 1)


def _write(name: str, parts: list[memoryview]) -> list[int]:
    """Create segment ``name`` holding ``parts`` (one copy, by ``pwrite``); their sizes."""
    layout = [part.nbytes for part in parts]
    offsets, size = _offsets(layout)
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        for part, offset in zip(parts, offsets, strict=True):
            view = part.cast("B") if part.ndim != 1 or part.format != "B" else part
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
    except BaseException:
        os.close(fd)
        remove(name)
        raise
    os.close(fd)
    return layout


def _map(name: str, layout: list[int], writable: bool) -> mmap.mmap:
    """Map a segment whole, copy-on-write (``writable``: writes stay private to this process)
    or read-only, with its page tables filled at once: one call instead of a fault per page.
    (``MAP_POPULATE`` would do that too, but on a copy-on-write mapping it copies every page.)
    """
    size = _offsets(layout)[1]
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDONLY)
    try:
        if writable:
            flags, prot = mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE
        else:
            flags, prot = mmap.MAP_SHARED, mmap.PROT_READ
        mapping = mmap.mmap(fd, size, flags=flags, prot=prot)
    finally:
        os.close(fd)
    if size >= POPULATE_MIN:
        try:
            mapping.madvise(MADV_POPULATE_READ)
        except (OSError, ValueError):
            pass  # before Linux 5.14: pages are faulted in as they are read
    return mapping


def remove(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass


def remove_all(pool_prefix: str) -> int:
    """Remove every segment whose name starts with ``pool_prefix``; how many there were."""
    try:
        names = [n for n in os.listdir(SHM_DIR) if n.startswith(pool_prefix)]
    except OSError:
        return 0
    for name in names:
        remove(name)
    return len(names)


# --- packing -----------------------------------------------------------------------------------
class _Segment:
    """Pickles as a call that rebuilds the packed object from its segment."""

    __slots__ = ("consume", "layout", "name")

    def __init__(self, name: str, layout: list[int], consume: bool) -> None:
        self.name, self.layout, self.consume = name, layout, consume

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return _unpack, (self.name, self.layout, self.consume)


def out_of_band(found: list[memoryview]) -> Callable[[pickle.PickleBuffer], bool]:
    """A ``buffer_callback`` for ``pickle.dumps``: buffers of ``OOB_MIN`` bytes or more are
    left out of the pickle and appended to ``found``."""

    def callback(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OOB_MIN:
            return True  # small: in the pickle itself
        found.append(raw)
        return False

    return callback


def place(
    body: bytes, buffers: list[memoryview], pool_prefix: str, *, consume: bool
) -> tuple[bytes, str | None]:
    """The payload for a pickle ``body`` whose large ``buffers`` were left out: the body
    itself if there are none and it is small, else a small pickle naming a new segment that
    holds them all. ``consume``: the reader removes the segment as it maps it (results)."""
    if not buffers and len(body) <= INBAND_MAX:
        return body, None
    name = _new_name(pool_prefix)
    layout = _write(name, [memoryview(body), *buffers])
    return pickle.dumps(_Segment(name, layout, consume), 5), name


def names_segment(payload: bytes) -> bool:
    """Whether ``payload`` may be a segment's small pickle (a cheap test, no false negative)."""
    return len(payload) < 1024 and b"_unpack" in payload


def _rebuild(mapping: mmap.mmap, layout: list[int]) -> Any:
    """Unpickle a segment's body with its buffers, all views of ``mapping``."""
    view = memoryview(mapping)
    offsets = _offsets(layout)[0]
    parts = [view[at : at + size] for at, size in zip(offsets, layout, strict=True)]
    return pickle.loads(parts[0], buffers=parts[1:])


def _unpack(name: str, layout: list[int], consume: bool) -> Any:
    """Map a segment copy-on-write and rebuild the object over it (run by ``pickle.loads``)."""
    try:
        mapping = _map(name, layout, writable=True)
    finally:
        if consume:
            remove(name)
    return _rebuild(mapping, layout)


def inline(payload: bytes) -> bytes:
    """The same value as one self-contained pickle (for keeping, in a job store), or the
    payload itself if it names no segment. The segment is left in place."""
    segment = _peek(payload) if names_segment(payload) else None
    if segment is None:
        return payload
    name, layout = segment
    return pickle.dumps(_rebuild(_map(name, layout, writable=True), layout), 5)


def _peek(payload: bytes) -> tuple[str, list[int]] | None:
    """The (name, layout) a segment payload names, read without running anything."""

    class Reader(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) == (__name__, "_unpack"):
                return lambda name, layout, consume: (name, layout)
            raise pickle.UnpicklingError("not a segment")

    try:
        found = Reader(io.BytesIO(payload)).load()
    except Exception:
        return None
    return found if isinstance(found, tuple) else None


# --- objects placed once -----------------------------------------------------------------------
_keep = threading.local()  # Shared handles met while a task's arguments are pickled


class Shared:
    """An object placed in shared memory once and passed to tasks by reference.

    Made by ``pool.share(obj)``. Pickling it (as a task's argument) sends only its name; each
    worker maps it read-only the first time a task uses it and keeps it mapped. A numpy array
    arrives as a read-only view of the shared pages. ``handle.value`` is the object in this
    process.
    """

    __slots__ = ("__weakref__", "layout", "name", "value")

    def __init__(self, value: Any, pool_prefix: str) -> None:
        buffers: list[memoryview] = []

        def out_of_band(buffer: pickle.PickleBuffer) -> bool:
            buffers.append(buffer.raw())
            return False

        body = pickle.dumps(value, 5, buffer_callback=out_of_band)
        self.name = _new_name(pool_prefix)
        self.layout = _write(self.name, [memoryview(body), *buffers])
        self.value = value
        weakref.finalize(self, remove, self.name)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        kept = getattr(_keep, "handles", None)
        if kept is not None:
            kept.append(self)
        return _open_shared, (self.name, self.layout)

    def __repr__(self) -> str:
        return f"<mppool.Shared {self.name} {_offsets(self.layout)[1]} bytes>"


def pickling_handles() -> list[Shared]:
    """Start collecting the :class:`Shared` handles pickled on this thread; returns the list."""
    handles: list[Shared] = []
    _keep.handles = handles
    return handles


def stop_collecting() -> None:
    _keep.handles = None


_opened: dict[str, Any] = {}  # in a worker: shared objects mapped, oldest first


def _open_shared(name: str, layout: list[int]) -> Any:
    """A shared object in a worker: mapped read-only once, then kept (run by ``pickle.loads``)."""
    value = _opened.get(name)
    if value is None:
        # Let go of objects whose handles were released (their segments are gone) and,
        # past OPEN_SHARED, of the oldest: their pages are freed when no task holds them.
        for old in [n for n in _opened if not os.path.exists(os.path.join(SHM_DIR, n))]:
            del _opened[old]
        if len(_opened) >= OPEN_SHARED:
            del _opened[next(iter(_opened))]
        value = _rebuild(_map(name, layout, writable=False), layout)
        _opened[name] = value
    return value
