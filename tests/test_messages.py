"""Wire messages: every tag has a schema, hot tuples match their classes, framing round-trips."""

from __future__ import annotations

import os

import pytest

from mppool import _messages as m


def test_every_tag_has_a_class_and_tags_are_unique() -> None:
    tags = {name: value for name, value in vars(m).items() if name[:2] in ("C_", "D_", "W_", "R_")}
    assert len(set(tags.values())) == len(tags)
    assert set(tags.values()) == set(m.MESSAGE_TYPES)


@pytest.mark.parametrize(
    ("cls", "fields"),
    [
        (
            m.Submit,
            (
                "tag",
                "task_id",
                "fn_id",
                "opts_id",
                "n_items",
                "flags",
                "not_before",
                "payload",
                "key",
            ),
        ),
        (m.Run, ("tag", "task_id", "attempt", "fn_id", "opts_id", "n_items", "flags", "payload")),
        (m.WorkerResult, ("tag", "task_id", "attempt", "status", "duration", "payload")),
        (m.Result, ("tag", "task_id", "status", "attempts", "duration", "payload")),
    ],
)
def test_hot_tuple_layouts_match_their_schema(cls: type, fields: tuple[str, ...]) -> None:
    # The senders build these as plain tuples in this order; the receivers unpack them so.
    assert cls._fields == fields  # type: ignore[attr-defined]


def test_frames_round_trip_through_partial_reads() -> None:
    msgs = [(m.C_SUBMIT, i, 1, 0, 0, 0, 0.0, os.urandom(i % 50), "") for i in range(200)]
    data = m.encode(msgs[:120]) + m.encode(msgs[120:])
    buf = m.FrameBuffer()
    got: list[tuple[object, ...]] = []
    for i in range(0, len(data), 7):  # feed in awkward pieces
        buf.feed(data[i : i + 7])
        for frame in buf.frames():
            got.extend(frame)
    assert got == msgs


def test_blocking_reader_returns_none_at_eof() -> None:
    r, w = os.pipe()
    try:
        m.write_all(w, m.encode([(m.D_BYE,)]) + m.encode([(m.D_BYE,), (m.D_BYE,)]))
        os.close(w)
        reader = m.BlockingReader(r)
        assert reader.read() == [(m.D_BYE,)] * 3
        assert reader.read() is None
    finally:
        os.close(r)
