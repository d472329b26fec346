"""Frames: how messages cross a pipe (an 8-byte little-endian length, then a pickled list of
messages). Belongs to no process: the user process, the dispatcher and the workers all use it,
through ``mppool._protocol``.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

Message = tuple[Any, ...]

_LEN = struct.Struct("<Q")
HEADER_SIZE = _LEN.size
READ_SIZE = 1 << 18  # bytes asked of each os.read: large enough that a burst is one call


def encode(messages: list[Message]) -> bytes:
    """Serialise messages into one frame (length prefix + pickled list)."""
    body = pickle.dumps(messages, pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(body)) + body


class FrameBuffer:
    """Accumulates bytes read from a pipe and yields the complete frames in it."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def frames(self) -> list[list[Message]]:
        """Remove and decode every complete frame buffered so far."""
        buf = self._buf
        out: list[list[Message]] = []
        offset = 0
        end = len(buf)
        with memoryview(buf) as view:
            while end - offset >= HEADER_SIZE:
                (size,) = _LEN.unpack_from(buf, offset)
                stop = offset + HEADER_SIZE + size
                if stop > end:
                    break
                out.append(pickle.loads(view[offset + HEADER_SIZE : stop]))
                offset = stop
        if offset:
            del buf[:offset]
        return out


class BlockingReader:
    """Reads frames from a blocking file descriptor (used by workers and the client).

    ``read()`` returns the messages of every complete frame available, blocking until there
    is at least one; it returns ``None`` at end of file.
    """

    __slots__ = ("_fd", "_frames")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._frames = FrameBuffer()

    @property
    def buffer(self) -> FrameBuffer:
        """Bytes read but not yet decoded (to hand the pipe over to a non-blocking reader)."""
        return self._frames

    def read(self) -> list[Message] | None:
        while True:
            frames = self._frames.frames()
            if frames:
                if len(frames) == 1:
                    return frames[0]
                return [msg for frame in frames for msg in frame]
            data = os.read(self._fd, READ_SIZE)
            if not data:
                return None
            self._frames.feed(data)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte to a blocking file descriptor."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
