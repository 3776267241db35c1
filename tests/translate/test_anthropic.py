"""Anthropic Messages <-> canonical: golden requests and responses, errors, the SSE encoder.

Golden files live in tests/fixtures/anthropic/. `request_*.json` and `count_tokens_*.json`
pair a client body with the ChatRequest it parses to (as attrs.asdict); `request_errors.json`
lists bad bodies (patches over a valid one) with the `param` and message they must produce;
`response_*.json` and `stream_*.json` pair canonical responses and event sequences with what
the client receives. Run with GATEWAY_UPDATE_GOLDEN=1 to rewrite the expected halves after
an intended change, then review the diff.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anthropic.types as at
import attrs
import pytest
from anthropic._streaming import SSEDecoder
from anthropic.lib.streaming._messages import accumulate_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from gateway import errors
from gateway.translate import canonical as c
from gateway.translate.anthropic import (
    AnthropicStreamEncoder,
    SSEEvent,
    parse_count_tokens_request,
    parse_messages_request,
    render_message,
    sse_bytes,
)
from gateway.translate.cloudcode import CloudCodeDecoder
from gateway.translate.models import FALLBACK
from gateway.translate.tokens import estimate_tokens
from tests.support import event_from_json

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic"
UPDATE = os.environ.get("GATEWAY_UPDATE_GOLDEN") == "1"
STREAM_EVENT = TypeAdapter[Any](at.RawMessageStreamEvent)

BASE_BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 4096,
    "messages": [{"role": "user", "content": "hi"}],
}


def as_json(value: Any) -> Any:
    """attrs instances and tuples as plain JSON, the form golden files hold."""
    if attrs.has(type(value)):
        value = attrs.asdict(value)
    return json.loads(json.dumps(value))


def check_golden(path: Path, data: dict[str, Any], actual: Any) -> None:
    if UPDATE:
        data["expected"] = actual
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return
    assert data.get("expected") is not None, f"{path.name}: run with GATEWAY_UPDATE_GOLDEN=1"
    assert actual == data["expected"]


def fixture_files(pattern: str) -> list[Path]:
    return sorted(FIXTURES.glob(pattern))


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    fixture_files("request_*.json") + fixture_files("count_tokens_*.json"),
    ids=lambda p: p.stem,
)
def test_request_golden(path: Path) -> None:
    if path.name == "request_errors.json":
        return
    data = json.loads(path.read_text())
    parse = (
        parse_count_tokens_request if data["parser"] == "count_tokens" else parse_messages_request
    )
    check_golden(path, data, as_json(parse(data["body"])))


ERROR_CASES = json.loads((FIXTURES / "request_errors.json").read_text())


@pytest.mark.parametrize("case", ERROR_CASES, ids=[case["name"] for case in ERROR_CASES])
def test_request_errors_name_the_field(case: dict[str, Any]) -> None:
    patch = case["patch"]
    body = {**BASE_BODY, **patch} if isinstance(patch, dict) else patch
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(errors.InvalidRequest) as info:
        parse_messages_request(body)
    assert info.value.param == case["param"]
    assert case["contains"] in info.value.message
    if case["param"] is not None:
        assert info.value.message.startswith(case["param"] + ": ")
    assert info.value.status == 400


def test_tool_result_takes_the_name_of_its_tool_use() -> None:
    chat = parse_messages_request(
        {
            **BASE_BODY,
            "messages": [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}],
                },
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t9"}]},
            ],
        }
    )
    first = chat.messages[2].content[0]
    orphan = chat.messages[3].content[0]
    assert isinstance(first, c.ToolResultBlock) and first.name == "lookup"
    assert first.content == ()
    # Lenient on purpose: the Cloud Code translator falls back to the id.
    assert isinstance(orphan, c.ToolResultBlock) and orphan.name is None


def test_count_tokens_ignores_max_tokens_and_budget_rule() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "thinking": {"type": "enabled", "budget_tokens": 5000},
    }
    chat = parse_count_tokens_request(body)
    assert chat.max_tokens == 1
    assert chat.thinking == c.Thinking(enabled=True, budget_tokens=5000)
    with pytest.raises(errors.InvalidRequest):
        parse_messages_request(body)


def test_nulls_count_as_absent_and_unknown_fields_are_ignored() -> None:
    chat = parse_messages_request(
        {
            **BASE_BODY,
            "system": None,
            "temperature": None,
            "tools": None,
            "stop_sequences": None,
            "metadata": {"user_id": "abc"},
            "container": "x",
            "future_field": [1, 2, 3],
        }
    )
    assert chat == c.ChatRequest(
        model="claude-sonnet-4-5",
        messages=(c.Message("user", (c.TextBlock("hi"),)),),
        max_tokens=4096,
    )


def test_first_message_may_be_assistant_and_roles_may_repeat() -> None:
    chat = parse_messages_request(
        {
            **BASE_BODY,
            "messages": [
                {"role": "assistant", "content": "Earlier answer."},
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
            ],
        }
    )
    assert [m.role for m in chat.messages] == ["assistant", "user", "user"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)

finite_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**9), 10**9)
    | st.floats(-1e9, 1e9)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)

FIELD_NAMES = [
    "model", "max_tokens", "messages", "system", "tools", "tool_choice", "thinking",
    "temperature", "top_p", "top_k", "stop_sequences", "stream", "output_config",
    "output_format", "metadata",
]  # fmt: skip


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replace(value[head], rest, new)
    return copy


RICH_BODIES = [
    json.loads((FIXTURES / f"{name}.json").read_text())["body"]
    for name in ("request_tools_thinking", "request_media", "request_text")
]


def _parses_or_invalid(body: Any) -> None:
    for parse in (parse_messages_request, parse_count_tokens_request):
        try:
            result = parse(body)
        except errors.InvalidRequest as err:
            assert type(err) is errors.InvalidRequest
            assert err.message
        else:
            assert isinstance(result, c.ChatRequest)
            assert estimate_tokens(result) >= 1  # count_tokens never fails on a valid body


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_any_json_parses_or_is_invalid_request(body: Any) -> None:
    _parses_or_invalid(body)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=8))
def test_any_top_level_fields_parse_or_are_invalid_request(body: dict[str, Any]) -> None:
    _parses_or_invalid({**BASE_BODY, **body})


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_mutation_of_a_valid_body_parses_or_is_invalid_request(data: st.DataObject) -> None:
    body = data.draw(st.sampled_from(RICH_BODIES))
    path = data.draw(st.sampled_from(list(_paths(body))))
    _parses_or_invalid(_replace(body, path, data.draw(json_values)))


# ---------------------------------------------------------------------------------------------
# Whole responses
# ---------------------------------------------------------------------------------------------

SIG = "EqQBCkYIBxgCKkD" + "x" * 40

RESPONSES = {
    "response_text": c.ChatResponse(
        id="msg_01",
        model="claude-sonnet-4-5",
        content=(c.TextBlock("Hello!"),),
        stop_reason="end_turn",
        usage=c.Usage(input_tokens=12, output_tokens=3, cache_read_input_tokens=100),
    ),
    "response_thinking_tools": c.ChatResponse(
        id="msg_02",
        model="claude-sonnet-4-5-thinking",
        content=(
            c.ThinkingBlock("Need the weather.", SIG),
            c.RedactedThinkingBlock("ZW5jcnlwdGVk"),
            c.TextBlock("Checking."),
            c.ToolUseBlock("toolu_01", "get_weather", {"city": "Paris", "days": [1, 2]}),
        ),
        stop_reason="tool_use",
        usage=c.Usage(input_tokens=50, output_tokens=80, thinking_tokens=40),
    ),
    "response_unsigned_thinking_stop_sequence": c.ChatResponse(
        id="msg_03",
        model="gemini-2.5-flash",
        content=(c.ThinkingBlock("hmm"), c.TextBlock("Done")),
        stop_reason="stop_sequence",
        stop_sequence="END",
        usage=c.Usage(),
    ),
    "response_refusal_empty": c.ChatResponse(
        id="msg_04", model="m", content=(), stop_reason="refusal", usage=c.Usage(input_tokens=5)
    ),
}


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_render_message_golden(name: str) -> None:
    path = FIXTURES / f"{name}.json"
    response = RESPONSES[name]
    data = json.loads(path.read_text()) if path.exists() else {}
    data["response"] = as_json(response)
    rendered = render_message(response)
    check_golden(path, data, rendered)
    message = at.Message.model_validate(rendered)
    assert message.usage.input_tokens == response.usage.input_tokens
    assert len(message.content) == len(response.content)


usage_st = st.builds(
    c.Usage,
    input_tokens=st.integers(0, 10**6),
    output_tokens=st.integers(0, 10**6),
    cache_read_input_tokens=st.integers(0, 10**6),
)
response_block_st: st.SearchStrategy[
    c.TextBlock | c.ThinkingBlock | c.RedactedThinkingBlock | c.ToolUseBlock
] = st.one_of(
    st.builds(c.TextBlock, st.text()),
    st.builds(c.ThinkingBlock, st.text(), st.none() | st.text()),
    st.builds(c.RedactedThinkingBlock, st.text()),
    st.builds(
        c.ToolUseBlock,
        st.text(min_size=1),
        st.text(min_size=1),
        st.dictionaries(st.text(), finite_json, max_size=3),
    ),
)
STOP_REASONS: list[c.StopReason] = [
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "refusal",
]
BLOCK_KINDS: list[c.BlockKind] = ["text", "thinking", "redacted_thinking", "tool_use"]
stop_reason_st = st.sampled_from(STOP_REASONS)


@given(
    st.builds(
        c.ChatResponse,
        id=st.text(min_size=1),
        model=st.text(min_size=1),
        content=st.lists(response_block_st, max_size=5).map(tuple),
        stop_reason=stop_reason_st,
        usage=usage_st,
        stop_sequence=st.none() | st.text(),
    )
)
def test_any_rendered_message_validates_with_the_sdk(response: c.ChatResponse) -> None:
    message = at.Message.model_validate(render_message(response))
    assert [b.type for b in message.content] == [b.type for b in response.content]
    assert message.stop_reason == response.stop_reason


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------


def encode_all(
    events: Sequence[c.StreamEvent], *, message_id: str = "msg_s", model: str = "m"
) -> list[SSEEvent]:
    encoder = AnthropicStreamEncoder(message_id=message_id, model=model)
    out: list[SSEEvent] = []
    for event in events:
        out += encoder.encode(event)
    return out


def parse_sse(raw: bytes) -> list[tuple[str, Any]]:
    """The wire bytes read back by the SDK's own SSE decoder."""
    return [(sse.event or "", sse.json()) for sse in SSEDecoder().iter_bytes(iter([raw]))]


def sdk_accumulate(raw: bytes) -> Any:
    """The SDK's final message for a stream, asserting every event validates on the way."""
    snapshot = None
    buffers: dict[int, bytes] = {}
    for name, data in parse_sse(raw):
        assert name == data["type"]
        if name in ("ping", "error"):
            continue
        event = STREAM_EVENT.validate_python(data)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    return snapshot


def comparable(message: Any) -> dict[str, Any]:
    return message.model_dump(exclude_none=True)  # type: ignore[no-any-return]


def check_grammar(out: Sequence[SSEEvent], *, complete: bool) -> None:
    """Anthropic's event grammar: start, blocks 0..n-1 one at a time, delta, stop."""
    names = [name for name, _ in out if name != "ping"]
    if not names:
        assert not complete
        return
    assert names[0] == "message_start"
    assert names.count("message_start") == 1
    if complete:
        assert names[-2:] == ["message_delta", "message_stop"]
        assert names.count("message_delta") == 1
    open_index: int | None = None
    next_index = 0
    for name, data in out:
        assert data["type"] == name
        if name == "content_block_start":
            assert open_index is None
            assert data["index"] == next_index
            open_index = next_index
            next_index += 1
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        elif name in ("message_delta", "message_stop"):
            assert open_index is None
    if complete:
        assert open_index is None


def event_to_json(event: c.StreamEvent) -> dict[str, Any]:
    return {"event": type(event).__name__, **as_json(event)}


STREAMS: dict[str, list[c.StreamEvent]] = {
    "stream_thinking_text_tool": [
        c.UsageUpdate(c.Usage(input_tokens=20, cache_read_input_tokens=4)),
        c.BlockStart(0, "thinking"),
        c.ThinkingDelta(0, "Let me "),
        c.ThinkingDelta(0, "think."),
        c.SignatureDelta(0, SIG),
        c.BlockStop(0),
        c.BlockStart(1, "text"),
        c.TextDelta(1, "Checking "),
        c.TextDelta(1, "the weather."),
        c.BlockStop(1),
        c.BlockStart(2, "tool_use", tool_id="toolu_9", tool_name="get_weather"),
        c.ToolInputDelta(2, '{"city":'),
        c.ToolInputDelta(2, '"Paris"}'),
        c.BlockStop(2),
        c.ToolSignature("toolu_9", "sig-for-gemini"),
        c.UsageUpdate(c.Usage(input_tokens=20, output_tokens=30, cache_read_input_tokens=4)),
        c.MessageEnd(
            "tool_use", c.Usage(input_tokens=20, output_tokens=31, cache_read_input_tokens=4)
        ),
    ],
    "stream_redacted_and_gap_indices": [
        c.BlockStart(3, "redacted_thinking", data="b3BhcXVl"),
        c.BlockStop(3),
        c.BlockStart(7, "text"),
        c.TextDelta(7, "Hi ✓"),
        c.MessageEnd("max_tokens", c.Usage(input_tokens=2, output_tokens=9)),
    ],
    "stream_refusal_without_content": [
        c.MessageEnd("refusal", c.Usage(input_tokens=5)),
    ],
}


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_stream_golden(name: str) -> None:
    path = FIXTURES / f"{name}.json"
    if UPDATE or not path.exists():
        data: dict[str, Any] = {"events": [event_to_json(e) for e in STREAMS[name]]}
    else:
        data = json.loads(path.read_text())
    events = [event_from_json(e) for e in data["events"]]
    assert events == STREAMS[name]
    out = encode_all(events, message_id="msg_golden", model="claude-sonnet-4-5")
    check_golden(path, data, [[n, d] for n, d in out])
    check_grammar(out, complete=True)
    final = sdk_accumulate(sse_bytes(out))
    expected = render_message(
        c.collect(events, response_id="msg_golden", model="claude-sonnet-4-5")
    )
    assert comparable(final) == comparable(at.Message.model_validate(expected))


def test_sse_bytes_frames() -> None:
    raw = sse_bytes([("ping", {"type": "ping"}), ("x", {"type": "x", "t": "é"})])
    assert raw == (
        b'event: ping\ndata: {"type":"ping"}\n\nevent: x\ndata: {"type":"x","t":"\xc3\xa9"}\n\n'
    )
    assert sse_bytes([]) == b""


def test_sse_bytes_survives_a_lone_surrogate() -> None:
    raw = sse_bytes([("content_block_delta", {"text": "a\ud800b"})])
    assert raw == b'event: content_block_delta\ndata: {"text":"a\\ud800b"}\n\n'


def test_usage_before_start_feeds_message_start() -> None:
    encoder = AnthropicStreamEncoder(message_id="msg_1", model="claude-x")
    assert encoder.encode(c.UsageUpdate(c.Usage(input_tokens=42, cache_read_input_tokens=7))) == []
    out = encoder.encode(c.BlockStart(0, "text"))
    assert [n for n, _ in out] == ["message_start", "content_block_start"]
    message = out[0][1]["message"]
    assert message["id"] == "msg_1" and message["model"] == "claude-x"
    assert message["content"] == [] and message["stop_reason"] is None
    assert message["usage"]["input_tokens"] == 42
    assert message["usage"]["cache_read_input_tokens"] == 7
    at.RawMessageStartEvent.model_validate(out[0][1])


def test_keepalive_start_is_sent_once_then_pings() -> None:
    encoder = AnthropicStreamEncoder(message_id="msg_1", model="m")
    first = encoder.start() + encoder.ping()
    assert [n for n, _ in first] == ["message_start", "ping"]
    assert encoder.start() + encoder.ping() == [("ping", {"type": "ping"})]
    out = encoder.encode(c.BlockStart(0, "text"))
    assert [n for n, _ in out] == ["content_block_start"]  # no second message_start


def test_nothing_after_message_stop() -> None:
    encoder = AnthropicStreamEncoder(message_id="msg_1", model="m")
    out = encoder.encode(c.MessageEnd("end_turn", c.Usage()))
    assert [n for n, _ in out] == ["message_start", "message_delta", "message_stop"]
    assert encoder.finished
    assert encoder.encode(c.BlockStart(0, "text")) == []
    assert encoder.start() == [] and encoder.ping() == []


def test_error_event() -> None:
    encoder = AnthropicStreamEncoder(message_id="msg_1", model="m")
    encoder.encode(c.BlockStart(0, "text"))
    out = encoder.error(errors.Overloaded("upstream 503 UNAVAILABLE"))
    assert out == [
        (
            "error",
            {
                "type": "error",
                "error": {"type": "overloaded_error", "message": "upstream 503 UNAVAILABLE"},
            },
        )
    ]
    assert encoder.encode(c.TextDelta(0, "late")) == []
    assert encoder.error(errors.UpstreamError("again")) == []


def test_no_error_after_a_complete_message() -> None:
    encoder = AnthropicStreamEncoder(message_id="msg_1", model="m")
    encoder.encode(c.MessageEnd("end_turn", c.Usage()))
    assert encoder.error(errors.UpstreamError("late failure")) == []


# A strategy for event sequences shaped like CloudCodeDecoder's output.
@st.composite
def decoder_streams(draw: st.DrawFn) -> list[c.StreamEvent]:
    events: list[c.StreamEvent] = []
    index = draw(st.integers(0, 3))  # the encoder must renumber from 0 regardless
    text = st.text(max_size=8)

    def usage() -> None:
        if draw(st.booleans()):
            events.append(c.UsageUpdate(draw(usage_st)))

    usage()
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(BLOCK_KINDS))
        if kind == "tool_use":
            tool_id = f"toolu_{index}"
            events.append(c.BlockStart(index, "tool_use", tool_id=tool_id, tool_name="f"))
            args = json.dumps(draw(st.dictionaries(st.text(max_size=4), finite_json, max_size=3)))
            cut = draw(st.integers(0, len(args)))
            for piece in (args[:cut], args[cut:]):
                if piece:
                    events.append(c.ToolInputDelta(index, piece))
            events.append(c.BlockStop(index))
            if draw(st.booleans()):
                events.append(c.ToolSignature(tool_id, "sig"))
        elif kind == "redacted_thinking":
            events += [c.BlockStart(index, kind, data=draw(text)), c.BlockStop(index)]
        else:
            events.append(c.BlockStart(index, kind))
            for piece in draw(st.lists(text, max_size=3)):
                delta = c.TextDelta if kind == "text" else c.ThinkingDelta
                events.append(delta(index, piece))
            if kind == "thinking" and draw(st.booleans()):
                events.append(c.SignatureDelta(index, draw(st.text(min_size=1, max_size=8))))
            events.append(c.BlockStop(index))
        usage()
        index += draw(st.integers(1, 2))
    events.append(
        c.MessageEnd(draw(stop_reason_st), draw(usage_st), draw(st.none() | st.text(max_size=4)))
    )
    return events


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(decoder_streams())
def test_decoder_shaped_streams_round_trip_through_the_sdk(events: list[c.StreamEvent]) -> None:
    out = encode_all(events)
    check_grammar(out, complete=True)
    raw = sse_bytes(out)
    assert [(n, d) for n, d in parse_sse(raw)] == [(n, d) for n, d in out]
    final = sdk_accumulate(raw)
    collected = c.collect(events, response_id="msg_s", model="m")
    # Block indices may have gaps upstream; collect sorts by index, the encoder renumbers.
    assert comparable(final) == comparable(at.Message.model_validate(render_message(collected)))


any_event_st: st.SearchStrategy[c.StreamEvent] = st.one_of(
    st.builds(
        c.BlockStart,
        st.integers(0, 4),
        st.sampled_from(BLOCK_KINDS),
        st.none() | st.text(max_size=4),
        st.none() | st.text(max_size=4),
        st.none() | st.text(max_size=4),
    ),
    st.builds(c.TextDelta, st.integers(0, 4), st.text(max_size=4)),
    st.builds(c.ThinkingDelta, st.integers(0, 4), st.text(max_size=4)),
    st.builds(c.SignatureDelta, st.integers(0, 4), st.text(max_size=4)),
    st.builds(c.ToolInputDelta, st.integers(0, 4), st.just("")),
    st.builds(c.BlockStop, st.integers(0, 4)),
    st.builds(c.ToolSignature, st.text(max_size=4), st.text(max_size=4)),
    st.builds(c.UsageUpdate, usage_st),
    st.builds(c.MessageEnd, stop_reason_st, usage_st),
)


@settings(max_examples=300)
@given(st.lists(any_event_st, max_size=25), st.booleans())
def test_any_event_order_keeps_the_grammar(events: list[c.StreamEvent], keepalive: bool) -> None:
    encoder = AnthropicStreamEncoder(message_id="msg_r", model="m")
    out: list[SSEEvent] = encoder.start() + encoder.ping() if keepalive else []
    for event in events:
        out += encoder.encode(event)
    complete = any(isinstance(e, c.MessageEnd) for e in events)
    check_grammar(out, complete=complete)
    if complete:
        sdk_accumulate(sse_bytes(out))
    else:
        for name, data in out:
            if name != "ping":
                STREAM_EVENT.validate_python(data)


@pytest.mark.parametrize(
    "path",
    sorted((FIXTURES.parent / "cloudcode").glob("stream_*.json")),
    ids=lambda p: p.stem,
)
def test_cloudcode_streams_reach_the_sdk_intact(path: Path) -> None:
    """The real pipeline: upstream payloads -> CloudCodeDecoder -> encoder -> SDK."""
    data = json.loads(path.read_text())
    model = FALLBACK.resolve(data["model"])
    decoder = CloudCodeDecoder(model=model, tool_id_prefix="toolu_x_")
    encoder = AnthropicStreamEncoder(message_id="msg_cc", model=data["model"])
    events: list[c.StreamEvent] = []
    raw = b""
    for payload in data["payloads"]:
        batch = decoder.feed(payload)
        events += batch
        raw += b"".join(sse_bytes(encoder.encode(e)) for e in batch)
    batch = decoder.finish()
    events += batch
    raw += b"".join(sse_bytes(encoder.encode(e)) for e in batch)
    check_grammar(parse_sse(raw), complete=True)
    final = sdk_accumulate(raw)
    collected = c.collect(events, response_id="msg_cc", model=data["model"])
    assert comparable(final) == comparable(at.Message.model_validate(render_message(collected)))
