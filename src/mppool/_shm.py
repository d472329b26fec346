"""Large payloads through shared memory: arguments and results that never cross a pipe.

A task's arguments (or a result) are pickled with protocol 5. Every buffer of at least
``OOB_MIN`` bytes (numpy arrays, and anything else that pickles its data as a
``PickleBuffer``) is taken out of band, and if what remains is still over ``INBAND_MAX`` bytes
(a long ``bytes``, a huge list) it goes too: both are written into one *segment*, a file in
``/dev/shm``, and the payload that crosses the pipes becomes ``MAGIC`` and the segment's name.
The dispatcher forwards it like any other payload; it never sees the data.

On the other side :func:`loads` maps the segment and rebuilds the object over the mapping: a
numpy array is a view of the shared pages, not a copy.

* Arguments are mapped copy-on-write in the worker (a task may write to its argument, as it
  could to a copy, and nobody else sees it); the user process removes the segment when the
  task's outcome arrives (a retry after a crash finds it still there).
* Results are mapped copy-on-write in the user process, which removes the segment as it maps
  it: the mapping lives as long as the result does. A result the dispatcher drops (stale, or
  its task cancelled) has its segment removed there.
* :class:`Shared` (``pool.share(array)``) is placed once and mapped read-only by every task
  that uses it, each worker keeping it mapped between tasks; the file is removed when the
  handle is garbage collected (tasks that use it keep it alive until their outcome) or the
  pool ends, and a worker lets go of its mapping when it next opens a shared object or exits.

Every segment's name starts with the pool's random prefix: whatever is left when a pool ends
(a worker killed between writing its result and sending it, the user process killed) is
removed by the user process, or by the dispatcher if the user process is gone. Where there is
no ``/dev/shm`` (macOS), or a segment cannot be written (``/dev/shm`` full: 64 MB in a default
Docker container), the payload goes through the pipes, as everything did before.

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
import re
import secrets
import threading
import weakref
from collections.abc import Callable
from typing import Any

SHM_DIR = "/dev/shm"
AVAILABLE = os.path.isdir(SHM_DIR)  # POSIX shared memory as files (Linux); else the pipes
OOB_MIN = 64 << 10  # a buffer at least this large travels out of band
INBAND_MAX = 1 << 20  # a pickle still larger than this (once buffers are out) travels too
OPEN_SHARED = 16  # shared objects each worker keeps mapped between tasks
ALIGN = 64  # every part of a segment starts on a cache line
MADV_POPULATE_READ = 22  # Linux 5.14+: fill a mapping's page tables, reading (no copy)
POPULATE_MIN = 1 << 20  # smaller mappings are left to fault in

_names = itertools.count()


def new_prefix() -> str:
    """The start of the name of every segment of a new pool: random, so pools in containers
    that share ``/dev/shm`` but not process ids never touch each other's segments."""
    return f"mppool-{secrets.token_hex(8)}-"


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
# A payload that names a segment starts with MAGIC (no pickle does: a pickle starts with its
# PROTO opcode, 0x80), then a pickle of (name, sizes, consume) made of a str, ints and a bool,
# read by an unpickler that loads no class or function at all.
MAGIC = b"mppool-segment\x00"
_VALID_NAME = re.compile(r"mppool-[0-9a-f]+-[0-9]+-[0-9]+")


def out_of_band(found: list[memoryview]) -> Callable[[pickle.PickleBuffer], bool] | None:
    """A ``buffer_callback`` for ``pickle.dumps``: buffers of ``OOB_MIN`` bytes or more are
    left out of the pickle and appended to ``found`` (None where there is no shared memory)."""
    if not AVAILABLE:
        return None

    def callback(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OOB_MIN:
            return True  # small: in the pickle itself
        found.append(raw)
        return False

    return callback


def place(
    body: bytes,
    buffers: list[memoryview],
    pool_prefix: str,
    inband: Callable[[], bytes],
    *,
    consume: bool,
) -> tuple[bytes, str | None]:
    """The payload for a pickle ``body`` whose large ``buffers`` were left out: the body
    itself if there are none and it is small, else MAGIC and the name of a new segment that
    holds them all. ``consume``: the reader removes the segment as it maps it (results).

    If the segment cannot be written (``/dev/shm`` full, or missing), the payload is
    ``inband()``, the object pickled whole, and goes through the pipes as it always could.
    """
    if not buffers and (len(body) <= INBAND_MAX or not AVAILABLE):
        return body, None
    name = _new_name(pool_prefix)
    try:
        layout = _write(name, [memoryview(body), *buffers])
    except OSError:
        return (inband() if buffers else body), None
    return MAGIC + pickle.dumps((name, layout, consume), 5), name


def names_segment(payload: bytes) -> bool:
    return payload.startswith(MAGIC)


class _Plain(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError("a segment header names no class")


def _header(payload: bytes) -> tuple[str, list[int], bool]:
    """(name, sizes, consume) of a segment payload, checked: the name is one of ours (no path
    can be smuggled in), the sizes are non-negative ints."""
    header = _Plain(io.BytesIO(payload[len(MAGIC) :])).load()
    name, layout, consume = header
    if not (isinstance(name, str) and _VALID_NAME.fullmatch(name)):
        raise pickle.UnpicklingError(f"not a segment name: {name!r}")
    if not (isinstance(layout, list) and layout and all(type(n) is int and n >= 0 for n in layout)):
        raise pickle.UnpicklingError("bad segment layout")
    return name, layout, bool(consume)


def loads(payload: bytes) -> Any:
    """Unpickle a payload: a plain pickle, or the object in the segment it names (mapped
    copy-on-write; a result's segment is removed as it is mapped)."""
    if not names_segment(payload):
        return pickle.loads(payload)
    name, layout, consume = _header(payload)
    try:
        mapping = _map(name, layout, writable=True)
    finally:
        if consume:
            remove(name)
    return _rebuild(mapping, layout)


def kept(payload: bytes) -> tuple[bytes, str | None]:
    """A segment payload whose readers leave the segment in place, and the segment's name
    (the caller removes it); any other payload as it is, and ``None``. For a result that
    several readers map: the user process and the tasks that depend on it."""
    if not names_segment(payload):
        return payload, None
    name, layout, _ = _header(payload)
    return MAGIC + pickle.dumps((name, layout, False), 5), name


def discard(payload: bytes) -> None:
    """A payload nobody will read (a stale or dropped result): remove its segment, if any."""
    if names_segment(payload):
        try:
            remove(_header(payload)[0])
        except Exception:
            pass


def _rebuild(mapping: mmap.mmap, layout: list[int]) -> Any:
    """Unpickle a segment's body with its buffers, all views of ``mapping``."""
    view = memoryview(mapping)
    offsets = _offsets(layout)[0]
    parts = [view[at : at + size] for at, size in zip(offsets, layout, strict=True)]
    return pickle.loads(parts[0], buffers=parts[1:])


def inline(payload: bytes) -> bytes:
    """The same value as one self-contained pickle (to keep, in a job store), or the payload
    itself if it names no segment. The segment is left in place. Pickled again whole: this is
    the one place a result is."""
    if not names_segment(payload):
        return payload
    name, layout, _ = _header(payload)
    return pickle.dumps(_rebuild(_map(name, layout, writable=True), layout), 5)


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


SHARED = b"_open_shared"  # in every pickle that holds a Shared handle (and in few others)


def handles_in(body: bytes, dumps: Callable[..., bytes], *args: Any) -> list[Shared]:
    """The :class:`Shared` handles in a pickle ``body`` that names ``SHARED`` (tasks keep them
    alive until their outcome): ``dumps(*args, [])`` pickles it again, collecting them."""
    handles: list[Shared] = []
    _keep.handles = handles
    try:
        dumps(*args, [])
    finally:
        _keep.handles = None
    return handles


_opened: dict[str, Any] = {}  # in a worker: shared objects mapped, oldest first


def _open_shared(name: str, layout: list[int]) -> Any:
    """A shared object in a worker: mapped read-only once, then kept (run by ``pickle.loads``)."""
    if not _VALID_NAME.fullmatch(name):
        raise pickle.UnpicklingError(f"not a segment name: {name!r}")
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
