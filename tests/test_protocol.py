"""The wire protocol: every tag has a schema, builders and views agree, framing round-trips."""

from __future__ import annotations

import inspect
import os
import pickle
from typing import Any

import pytest

from mppool import _protocol as p

HOT = [
    (p.submit, p.Submit, p.C_SUBMIT),
    (p.result, p.Result, p.D_RESULT),
    (p.chunk_result, p.ChunkResult, p.D_CHUNK),
    (p.run, p.Run, p.W_RUN),
    (p.worker_result, p.WorkerResult, p.R_RESULT),
    (p.part_result, p.PartResult, p.R_PART),
]


def test_every_tag_has_a_class_and_tags_are_unique() -> None:
    tags = {name: value for name, value in vars(p).items() if name[:2] in ("C_", "D_", "W_", "R_")}
    assert len(set(tags.values())) == len(tags)
    assert set(tags.values()) == set(p.MESSAGE_TYPES)


@pytest.mark.parametrize(("build", "cls", "tag"), HOT, ids=[c.__name__ for _, c, _ in HOT])
def test_hot_builders_and_views_agree_field_by_field(build: Any, cls: Any, tag: int) -> None:
    """Build with a distinct value per parameter (by name), read back through the view."""
    names = list(inspect.signature(build).parameters)
    assert ["tag", *names] == list(cls._fields), "builder parameters must follow the schema"
    values = {name: (name, i) for i, name in enumerate(names)}
    msg = build(**values)
    assert type(msg) is tuple and msg[0] == tag and p.MESSAGE_TYPES[tag] is cls
    view = cls.view(pickle.loads(pickle.dumps(msg)))
    assert view.tag == tag
    for name, value in values.items():
        assert getattr(view, name) == value


@pytest.mark.parametrize(
    "cls", sorted(set(p.MESSAGE_TYPES.values()) - {c for _, c, _ in HOT}, key=str)
)
def test_cold_messages_travel_as_their_named_type(cls: Any) -> None:
    tag = next(t for t, c in p.MESSAGE_TYPES.items() if c is cls)
    fields = cls._fields
    msg = cls(tag, *[(name, i) for i, name in enumerate(fields[1:])])
    got = pickle.loads(pickle.dumps([msg]))[0]
    assert type(got) is cls and got == msg and got[0] == tag


def test_frames_round_trip_through_partial_reads() -> None:
    msgs = [p.submit(i, 1, 0, 0, 0, 0.0, os.urandom(i % 50), "") for i in range(200)]
    data = p.encode(msgs[:120]) + p.encode(msgs[120:])
    buf = p.FrameBuffer()
    got: list[tuple[object, ...]] = []
    for i in range(0, len(data), 7):  # feed in awkward pieces
        buf.feed(data[i : i + 7])
        for frame in buf.frames():
            got.extend(frame)
    assert got == msgs


def test_blocking_reader_returns_none_at_eof() -> None:
    r, w = os.pipe()
    bye = p.Bye(p.D_BYE)
    try:
        p.write_all(w, p.encode([bye]) + p.encode([bye, bye]))
        os.close(w)
        reader = p.BlockingReader(r)
        assert reader.read() == [bye] * 3
        assert reader.read() is None
    finally:
        os.close(r)
