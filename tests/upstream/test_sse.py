"""SSE parsing: any split of the byte stream gives the same events."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream.sse import SSEEvent, SSEParser, encode_comment, encode_event

STREAM = (
    b": comment\r\n"
    b"event: message_start\r\n"
    b'data: {"a": 1}\r\n'
    b"\r\n"
    b"data: line one\n"
    b"data: line two\n"
    b"\n"
    b"data: caf\xc3\xa9\r"
    b"\r"
    b"id: 7\n"
    b"retry: 10\n"
    b"data:no-space\n\n"
)
EXPECTED = [
    SSEEvent('{"a": 1}', "message_start"),
    SSEEvent("line one\nline two"),
    SSEEvent("café"),
    SSEEvent("no-space"),
]


def test_parses_all_line_endings_and_fields() -> None:
    parser = SSEParser()
    assert parser.feed(STREAM) + parser.close() == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_gives_same_events(cuts: list[int]) -> None:
    parser = SSEParser()
    events = []
    points = sorted(set(cuts))
    start = 0
    for point in [*points, len(STREAM)]:
        events += parser.feed(STREAM[start:point])
        start = point
    assert events + parser.close() == EXPECTED


def test_final_event_without_blank_line_is_flushed_on_close() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: tail") == []
    assert parser.close() == [SSEEvent("tail")]
    assert parser.close() == []


@given(st.dictionaries(st.text(), st.text() | st.integers(), max_size=4), st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=10
))
def test_encode_round_trips(data: dict[str, object], name: str) -> None:
    parser = SSEParser()
    event_name = name.strip() or None
    if event_name is not None and (event_name.startswith(":") or ":" in event_name):
        event_name = None
    events = parser.feed(encode_comment() + encode_event(data, event_name))
    assert len(events) == 1
    assert json.loads(events[0].data) == data
