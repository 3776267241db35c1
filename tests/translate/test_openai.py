"""OpenAI Chat Completions <-> canonical: golden wire fixtures, validation, and properties.

Golden files live in tests/fixtures/openai/. `request_*.json` hold a request body (and the
images the web layer fetched for it) and the `ChatRequest` it parses to, as `attrs.asdict`;
`response_*.json` hold a `ChatResponse` and the completion it renders to; `stream_*.json`
hold canonical events and the chunks they encode to. Run with GATEWAY_UPDATE_GOLDEN=1 to
rewrite the `expected` halves after an intended change (then review the diff: these files
are the protocol). Every rendered object is validated by the openai SDK's own types.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway import errors
from gateway.translate import canonical as c
from gateway.translate import openai as wire
from gateway.upstream.sse import encode_event
from tests.strategies import event_streams
from tests.support import GoldenFiles, event_from_json, response_from_json

GOLDEN = GoldenFiles(Path(__file__).resolve().parent.parent / "fixtures" / "openai")
load, fixture_names, check_golden = GOLDEN.load, GOLDEN.names, GOLDEN.check

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


# -- helpers ------------------------------------------------------------------------------


def encode_all(events: list[c.StreamEvent], *, include_usage: bool) -> list[dict[str, Any]]:
    encoder = wire.OpenAIStreamEncoder(
        completion_id="chatcmpl-1", created=1700000000, model="m", include_usage=include_usage
    )
    return [chunk for event in events for chunk in encoder.encode(event)]


def parse(body: Any, **fetched: tuple[str, str]) -> c.ChatRequest:
    return wire.parse_chat_request(body, fetched_images=fetched)


def minimal(**extra: Any) -> dict[str, Any]:
    return {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "x"}], **extra}


# ---------------------------------------------------------------------------------------------
# Golden files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", fixture_names("request"))
def test_request_golden(name: str) -> None:
    data = load(name)
    fetched = {url: tuple(pair) for url, pair in data.get("fetched_images", {}).items()}
    assert wire.image_urls_to_fetch(data["body"]) == list(fetched)
    check_golden(name, attrs.asdict(wire.parse_chat_request(data["body"], fetched_images=fetched)))


@pytest.mark.parametrize("name", fixture_names("response"))
def test_response_golden(name: str) -> None:
    rendered = wire.render_completion(
        response_from_json(load(name)["response"]),
        completion_id="chatcmpl-1",
        created=1700000000,
        model="claude-sonnet-4-5",
    )
    ChatCompletion.model_validate(rendered)
    check_golden(name, rendered)


@pytest.mark.parametrize("name", fixture_names("stream"))
def test_stream_golden(name: str) -> None:
    data = load(name)
    chunks = encode_all(
        [event_from_json(e) for e in data["events"]], include_usage=data["include_usage"]
    )
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    check_golden(name, chunks)


def test_fixture_sets_are_present() -> None:
    assert len(fixture_names("request")) >= 4
    assert len(fixture_names("response")) >= 4
    assert len(fixture_names("stream")) >= 2


# ---------------------------------------------------------------------------------------------
# Request mapping details
# ---------------------------------------------------------------------------------------------


def test_tool_loop_shape() -> None:
    request = parse(load("request_tool_loop")["body"])
    roles = [m.role for m in request.messages]
    # tool, tool and the user message after them share one turn
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assistant = request.messages[1].content
    assert assistant[0] == c.ThinkingBlock("Two cities, two calls.")
    assert assistant[1] == c.ToolUseBlock("call_1", "get_weather", {"city": "Rome"})
    results = request.messages[2].content
    assert isinstance(results[0], c.ToolResultBlock) and results[0].name == "get_weather"
    assert isinstance(results[1], c.ToolResultBlock)
    assert results[1].content == (c.TextBlock("rain, "), c.TextBlock("15C"))
    assert results[2] == c.TextBlock("Which is warmer?")
    late = request.messages[4].content[0]
    assert isinstance(late, c.ToolResultBlock) and late.name is None  # unknown id: left unset
    assert request.tool_choice == c.ToolChoice("tool", "get_weather", disable_parallel=True)
    assert request.max_tokens == 2048  # max_completion_tokens wins over max_tokens
    assert request.thinking == c.Thinking(True, wire.REASONING_BUDGETS["high"])


def test_defaults() -> None:
    request = parse(minimal())
    assert request.max_tokens == wire.DEFAULT_MAX_TOKENS
    assert request.thinking is None and request.tool_choice is None
    assert request.stream is False and request.system == ()
    assert parse(minimal(max_tokens=77)).max_tokens == 77


def test_leading_system_messages_are_the_prompt_and_later_ones_keep_their_place() -> None:
    request = parse(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "one"},
                {"role": "developer", "content": "one and a half"},
                {"role": "user", "content": "hi"},
                {"role": "developer", "content": [{"type": "text", "text": "two"}]},
                {"role": "assistant", "content": "yo"},
                {"role": "system", "content": "three"},
                {"role": "system", "content": ""},  # nothing to say: dropped
            ],
        }
    )
    assert [b.text for b in request.system] == ["one", "one and a half"]
    assert [m.role for m in request.messages] == ["user", "system", "assistant", "system"]
    assert [b.text for m in request.messages[1::2] for b in m.content] == ["two", "three"]


@pytest.mark.parametrize(
    ("effort", "thinking"),
    [
        ("none", c.Thinking(False)),
        ("minimal", c.Thinking(True, 1024)),
        ("low", c.Thinking(True, 4096)),
        ("medium", c.Thinking(True, 8192)),
        ("high", c.Thinking(True, 24576)),
        ("xhigh", c.Thinking(True, 24576)),
        (None, None),
    ],
)
def test_reasoning_effort(effort: str | None, thinking: c.Thinking | None) -> None:
    assert parse(minimal(reasoning_effort=effort)).thinking == thinking


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, c.ResponseFormat("json")),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, c.ResponseFormat("json")),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            c.ResponseFormat("json_schema", {"type": "object"}),
        ),
    ],
)
def test_response_format(value: Any, expected: c.ResponseFormat | None) -> None:
    assert parse(minimal(response_format=value)).response_format == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", c.ToolChoice("auto")),
        ("none", c.ToolChoice("none")),
        ("required", c.ToolChoice("any")),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            c.ToolChoice("tool", "get_weather"),
        ),
    ],
)
def test_tool_choice(value: Any, expected: c.ToolChoice) -> None:
    assert parse(minimal(tools=[WEATHER], tool_choice=value)).tool_choice == expected


def test_parallel_tool_calls_false() -> None:
    request = parse(minimal(tools=[WEATHER], parallel_tool_calls=False))
    assert request.tool_choice == c.ToolChoice("auto", disable_parallel=True)
    assert parse(minimal(parallel_tool_calls=False)).tool_choice is None  # no tools: moot
    assert parse(minimal(tools=[WEATHER], parallel_tool_calls=True)).tool_choice is None


def test_tool_defaults_and_empty_arguments() -> None:
    request = parse(
        minimal(
            tools=[{"type": "function", "function": {"name": "ping"}}],
            messages=[
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "function": {"name": "ping", "arguments": ""}}],
                },
            ],
        )
    )
    assert request.tools == (c.Tool("ping", "", {"type": "object", "properties": {}}),)
    assert request.messages[1].content == (c.ToolUseBlock("c1", "ping", {}),)


def test_remote_images() -> None:
    url = "https://example.com/a.png"
    body = minimal(
        messages=[
            {"role": "system", "content": "s"},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "image_url", "image_url": {"url": "http://x.test/b.gif"}},
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
        ]
    )
    assert wire.image_urls_to_fetch(body) == [url, "http://x.test/b.gif"]
    with pytest.raises(errors.InvalidRequest) as info:
        parse(body)
    assert "images.allow_remote_fetch" in info.value.message
    assert info.value.param == "messages[1].content[0].image_url.url"
    fetched = {url: ("image/png", PNG), "http://x.test/b.gif": ("image/gif", "R0lG")}
    request = wire.parse_chat_request(body, fetched_images=fetched)
    assert request.messages[0].content == (
        c.ImageBlock("image/png", PNG),
        c.ImageBlock("image/gif", "R0lG"),
        c.ImageBlock("image/png", PNG),
        c.ImageBlock("image/png", PNG),
    )


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/y.png", "gopher://x", "x.png"])
def test_other_image_schemes_are_always_refused(url: str) -> None:
    body = minimal(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}])  # fmt: skip
    assert wire.image_urls_to_fetch(body) == []
    with pytest.raises(errors.InvalidRequest) as info:
        wire.parse_chat_request(body, fetched_images={url: ("image/png", PNG)})
    assert info.value.param == "messages[0].content[0].image_url.url"


@pytest.mark.parametrize(
    "body",
    [None, [], "x", {}, {"messages": "x"}, {"messages": [None, 1, {"role": "user"}]},
     {"messages": [{"role": "user", "content": [None, {"type": "image_url"},
                                                {"type": "image_url", "image_url": 5}]}]}],
)  # fmt: skip
def test_image_urls_to_fetch_never_raises(body: Any) -> None:
    assert wire.image_urls_to_fetch(body) == []


def test_stream_include_usage() -> None:
    assert wire.stream_include_usage(minimal(stream_options={"include_usage": True}))
    assert not wire.stream_include_usage(minimal(stream_options={"include_usage": False}))
    assert not wire.stream_include_usage(minimal(stream_options="yes"))
    assert not wire.stream_include_usage(None)


IMAGE_PARAM = "messages[0].content[0].image_url.url"


def image(url: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def _set(path: str, value: Any) -> dict[str, Any]:
    """A valid body with one field (dotted path, numeric parts index lists) replaced."""
    body: dict[str, Any] = {
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "x"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ],
        "tools": [copy.deepcopy(WEATHER)],
    }  # fmt: skip
    *parents, last = path.split(".")
    target: Any = body
    for key in parents:
        target = target[int(key)] if key.isdigit() else target[key]
    target[int(last) if last.isdigit() else last] = value
    return body


@pytest.mark.parametrize(
    ("path", "value", "param"),
    [
        ("model", None, "model"),
        ("model", 3, "model"),
        ("messages", [], "messages"),
        ("messages", {"role": "user"}, "messages"),
        ("messages", [{"role": "system", "content": "only system"}], "messages"),
        ("messages.0", "hi", "messages[0]"),
        ("messages.0.role", "wizard", "messages[0].role"),
        ("messages.0.role", "function", "messages[0].role"),
        ("messages.0.content", None, "messages[0].content"),
        ("messages.0.content.0", {"type": "input_audio", "input_audio": {}},
         "messages[0].content[0].type"),
        ("messages.0.content.0", {"type": "file", "file": {}}, "messages[0].content[0].type"),
        ("messages.0.content.0", {"type": "video"}, "messages[0].content[0].type"),
        ("messages.0.content.0.text", 5, "messages[0].content[0].text"),
        ("messages.0.content.0", image("data:image/png,AAAA"), IMAGE_PARAM),
        ("messages.0.content.0", image("data:text/plain;base64,AAAA"), IMAGE_PARAM),
        ("messages.0.content.0", image("data:image/png;base64,@@"), IMAGE_PARAM),
        ("messages.0.content.0", image("data:image/png;base64,"), IMAGE_PARAM),
        ("messages.0.content.0", image("data:;base64,AAAA"), IMAGE_PARAM),
        ("messages.0.content.0", image(None), IMAGE_PARAM),
        ("messages.0.content.0", {"type": "image_url", "image_url": {}},
         "messages[0].content[0].image_url.url"),
        ("messages.1.content", 5, "messages[1].content"),
        ("messages.1.content", [{"type": "image_url"}], "messages[1].content[0]"),
        ("messages.1.reasoning_content", ["x"], "messages[1].reasoning_content"),
        ("messages.1.function_call", {"name": "f"}, "messages[1].function_call"),
        ("messages.1.tool_calls", {}, "messages[1].tool_calls"),
        ("messages.1.tool_calls.0.id", None, "messages[1].tool_calls[0].id"),
        ("messages.1.tool_calls.0.type", "custom", "messages[1].tool_calls[0].type"),
        ("messages.1.tool_calls.0.function", "f", "messages[1].tool_calls[0].function"),
        ("messages.1.tool_calls.0.function.name", "", "messages[1].tool_calls[0].function.name"),
        ("messages.1.tool_calls.0.function.arguments", "{oops",
         "messages[1].tool_calls[0].function.arguments"),
        ("messages.1.tool_calls.0.function.arguments", "[1]",
         "messages[1].tool_calls[0].function.arguments"),
        ("messages.1.tool_calls.0.function.arguments", {"city": "x"},
         "messages[1].tool_calls[0].function.arguments"),
        ("messages.1.tool_calls.0.function.arguments", "[" * 100_000,
         "messages[1].tool_calls[0].function.arguments"),
        ("messages.2.tool_call_id", 7, "messages[2].tool_call_id"),
        ("messages.2.content", None, "messages[2].content"),
        ("messages.2.content", [{"type": "image_url", "image_url": {"url": "x"}}],
         "messages[2].content[0]"),
        ("tools", {}, "tools"),
        ("tools.0", "get_weather", "tools[0]"),
        ("tools.0.type", "custom", "tools[0].type"),
        ("tools.0.function", None, "tools[0].function"),
        ("tools.0.function.name", "has space", "tools[0].function.name"),
        ("tools.0.function.name", "x" * 65, "tools[0].function.name"),
        ("tools.0.function.name", "ok\n", "tools[0].function.name"),
        ("tools.0.function.description", 1, "tools[0].function.description"),
        ("tools.0.function.parameters", [], "tools[0].function.parameters"),
        ("tools", [WEATHER, WEATHER], "tools[1]"),
        ("tool_choice", "sometimes", "tool_choice"),
        ("tool_choice", {"type": "function", "function": {"name": "other"}},
         "tool_choice.function.name"),
        ("tool_choice", {"type": "function"}, "tool_choice.function.name"),
        ("tool_choice", {"type": "allowed_tools", "allowed_tools": {}}, "tool_choice"),
        ("parallel_tool_calls", "no", "parallel_tool_calls"),
        ("functions", [{"name": "f"}], "functions"),
        ("function_call", "auto", "function_call"),
        ("n", 2, "n"),
        ("n", "1", "n"),
        ("n", True, "n"),
        ("logprobs", True, "logprobs"),
        ("logprobs", "yes", "logprobs"),
        ("max_tokens", 0, "max_tokens"),
        ("max_tokens", 1.5, "max_tokens"),
        ("max_tokens", True, "max_tokens"),
        ("max_completion_tokens", -1, "max_completion_tokens"),
        ("temperature", 2.5, "temperature"),
        ("temperature", -0.1, "temperature"),
        ("temperature", float("nan"), "temperature"),
        ("temperature", 10**400, "temperature"),
        ("temperature", "hot", "temperature"),
        ("top_p", 1.01, "top_p"),
        ("top_k", 0, "top_k"),
        ("stop", 5, "stop"),
        ("stop", ["a", 5], "stop"),
        ("stop", [str(i) for i in range(17)], "stop"),
        ("stream", "yes", "stream"),
        ("stream_options", [], "stream_options"),
        ("stream_options", {"include_usage": 1}, "stream_options.include_usage"),
        ("reasoning_effort", "extreme", "reasoning_effort"),
        ("reasoning_effort", 3, "reasoning_effort"),
        ("response_format", {"type": "xml"}, "response_format.type"),
        ("response_format", "json", "response_format.type"),
        ("response_format", {"type": "json_schema"}, "response_format.json_schema"),
        ("response_format", {"type": "json_schema", "json_schema": {"schema": []}},
         "response_format.json_schema.schema"),
    ],
)  # fmt: skip
def test_invalid_requests_name_the_param(path: str, value: Any, param: str) -> None:
    body = _set(path, value)
    with pytest.raises(errors.InvalidRequest) as info:
        parse(body)
    assert info.value.param == param
    assert info.value.status == 400
    assert "x" * 65 not in info.value.message  # messages never echo client text


def test_the_base_body_of_the_error_table_is_valid() -> None:
    request = parse(_set("model", "gemini-2.5-flash"))
    assert request.messages[2].content == (
        c.ToolResultBlock("c1", (c.TextBlock("ok"),), name="get_weather"),
    )


@pytest.mark.parametrize("body", [None, [], "x", 3])
def test_non_object_body(body: Any) -> None:
    with pytest.raises(errors.InvalidRequest):
        parse(body)


def test_required_tool_choice_needs_tools() -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        parse(minimal(tool_choice="required"))
    assert info.value.param == "tool_choice"
    assert parse(minimal(tool_choice="none")).tool_choice == c.ToolChoice("none")


def test_ignored_parameters() -> None:
    ignored = {
        "seed": 1, "user": "u", "store": True, "metadata": {"a": "b"}, "frequency_penalty": 1,
        "presence_penalty": 1, "logit_bias": {"1": 2}, "service_tier": "auto",
        "top_logprobs": 3, "logprobs": False, "n": None, "modalities": ["text"],
    }  # fmt: skip
    assert parse(minimal(**ignored)) == parse(minimal())


# ---------------------------------------------------------------------------------------------
# Response and stream details
# ---------------------------------------------------------------------------------------------


def test_usage_and_finish_reasons() -> None:
    usage = c.Usage(input_tokens=10, output_tokens=5, cache_read_input_tokens=90, thinking_tokens=2)
    assert wire.render_usage(usage) == {
        "prompt_tokens": 100,
        "completion_tokens": 5,
        "total_tokens": 105,
        "prompt_tokens_details": {"cached_tokens": 90},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    assert [wire.finish_reason(r) for r in
            ("end_turn", "stop_sequence", "max_tokens", "tool_use", "refusal")] == [
        "stop", "stop", "length", "tool_calls", "content_filter"]  # fmt: skip


def test_done_is_the_sentinel_and_errors_render_openai() -> None:
    encoder = wire.OpenAIStreamEncoder(completion_id="x", created=1, model="m")
    assert encode_event(encoder.done()) == b"data: [DONE]\n\n"
    err = errors.RateLimited("slow down")
    assert encoder.error_chunk(err) == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


def test_first_chunk_carries_the_role_even_for_a_silent_event() -> None:
    chunks = encode_all([c.UsageUpdate(c.Usage(1))], include_usage=False)
    assert [ch["choices"][0]["delta"] for ch in chunks] == [{"role": "assistant", "content": ""}]
    assert "usage" not in chunks[0]


def test_completion_message_feeds_back_as_history() -> None:
    response = response_from_json(load("response_tool_calls")["response"])
    rendered = wire.render_completion(response, completion_id="x", created=1, model="m")
    message = ChatCompletion.model_validate(rendered).choices[0].message
    history = minimal(
        messages=[{"role": "user", "content": "x"}, message.model_dump(exclude_none=True)]
    )
    assert parse(history).messages[1].content == response.content


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["user", "assistant", "tool", "system", "text", "image_url", "function"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
ROLES = ["system", "developer", "user", "assistant", "tool", "function", "wizard"]
parts = st.one_of(
    json_values,
    st.fixed_dictionaries({"type": st.just("text"), "text": json_values | st.text(max_size=4)}),
    st.fixed_dictionaries(
        {
            "type": st.just("image_url"),
            "image_url": st.fixed_dictionaries(
                {
                    "url": st.sampled_from(
                        [f"data:image/png;base64,{PNG}", "https://e.x/a.png", "data:,", "file:x",
                         "data:image/png;base64,@", "HTTP://e.x/b", "data:image/jpg;base64;x,AAAA"]
                    )
                    | json_values
                }
            ),
        }
    ),
)  # fmt: skip
tool_calls = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(["c1", "c2"]) | json_values,
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["get_weather", "f"]) | json_values,
                    "arguments": st.sampled_from(["{}", '{"a": 1}', "", "{", "1", "[]"])
                    | json_values,
                }
            ),
        }
    )
    | json_values,
    max_size=3,
)
messages_strategy = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(ROLES)},
        optional={
            "content": st.text(max_size=5) | st.lists(parts, max_size=3) | json_values,
            "tool_calls": tool_calls,
            "tool_call_id": st.sampled_from(["c1", "c2"]) | json_values,
            "reasoning_content": st.text(max_size=5) | json_values,
        },
    )
    | json_values,
    max_size=5,
)
PARAMS = {
    "max_tokens": st.integers(-2, 10**6),
    "max_completion_tokens": st.integers(-2, 10**6),
    "temperature": st.floats(-1, 3),
    "top_p": st.floats(-1, 2),
    "top_k": st.integers(-1, 100),
    "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=20),
    "tools": st.lists(st.just(WEATHER) | json_values, max_size=3),
    "tool_choice": st.sampled_from(["auto", "none", "required", "x"])
    | st.just({"type": "function", "function": {"name": "get_weather"}}),
    "parallel_tool_calls": st.booleans(),
    "reasoning_effort": st.sampled_from(["none", "minimal", "low", "medium", "high", "x"]),
    "response_format": st.sampled_from(
        [{"type": "text"}, {"type": "json_object"}, {"type": "json_schema"},
         {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}]
    ),
    "n": st.sampled_from([1, 1, 1, 2]),
    "logprobs": st.sampled_from([False, False, True]),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "functions": st.just([]),
}  # fmt: skip
# Mostly well-formed conversations, so the property also reaches the success paths.
plausible_messages = st.lists(
    st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["system", "developer"]),
                               "content": st.text(max_size=4)}),
        st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=4)
                               | st.lists(parts, max_size=2)}),
        st.fixed_dictionaries(
            {"role": st.just("assistant"), "content": st.none() | st.text(max_size=4)},
            optional={"tool_calls": tool_calls, "reasoning_content": st.text(max_size=4)},
        ),
        st.fixed_dictionaries({"role": st.just("tool"), "content": st.text(max_size=4),
                               "tool_call_id": st.sampled_from(["c1", "c2"])}),
    ),
    min_size=1,
    max_size=6,
)  # fmt: skip
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"model": st.just("gemini-2.5-flash") | json_values, "messages": messages_strategy},
        optional={key: value | json_values for key, value in PARAMS.items()},
    ),
    st.fixed_dictionaries(
        {"model": st.just("gemini-2.5-flash"), "messages": plausible_messages},
        optional={key: value for key, value in PARAMS.items() if key != "functions"},
    ),
)


@settings(max_examples=600, deadline=None)
@given(bodies)
def test_any_json_parses_or_raises_invalid_request(body: Any) -> None:
    urls = wire.image_urls_to_fetch(body)
    assert all(u.lower().startswith(("http://", "https://")) for u in urls)
    wire.stream_include_usage(body)
    fetched = {url: ("image/png", PNG) for url in urls}
    try:
        request = wire.parse_chat_request(body, fetched_images=fetched)
    except errors.InvalidRequest as err:
        assert err.message
        return
    assert request.messages and request.max_tokens >= 1
    json.dumps(attrs.asdict(request))  # plain data all the way down


# -- stream encoder ---------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(event_streams(), st.booleans())
def test_stream_chunks_reassemble_to_the_collected_response(
    events: list[c.StreamEvent], include_usage: bool
) -> None:
    chunks = encode_all(events, include_usage=include_usage)
    parsed = [ChatCompletionChunk.model_validate(chunk) for chunk in chunks]
    assert {(p.id, p.created, p.model, p.object) for p in parsed} == {
        ("chatcmpl-1", 1700000000, "m", "chat.completion.chunk")
    }
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    end = events[-1]
    assert isinstance(end, c.MessageEnd)
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == wire.render_usage(end.usage)
        assert all(chunk["usage"] is None for chunk in chunks[:-1])
        chunks = chunks[:-1]
    else:
        assert all("usage" not in chunk for chunk in chunks)
    finals = [ch for ch in chunks if ch["choices"][0]["finish_reason"] is not None]
    assert finals == [chunks[-1]] and chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == wire.finish_reason(end.stop_reason)

    deltas = [ch["choices"][0]["delta"] for ch in chunks]
    text = "".join(d.get("content") or "" for d in deltas)
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        for call in delta.get("tool_calls", []):
            if "id" in call:
                assert call["index"] == len(calls), "tool call indices are dense, in order"
                calls[call["index"]] = {"id": call["id"], "name": call["function"]["name"],
                                        "arguments": ""}  # fmt: skip
            calls[call["index"]]["arguments"] += call["function"]["arguments"]

    response = c.collect(events, response_id="r", model="m")
    blocks = response.content
    assert text == "".join(b.text for b in blocks if isinstance(b, c.TextBlock))
    assert reasoning == "".join(b.thinking for b in blocks if isinstance(b, c.ThinkingBlock))
    tools = [b for b in blocks if isinstance(b, c.ToolUseBlock)]
    reassembled = [(cl["id"], cl["name"], json.loads(cl["arguments"])) for cl in calls.values()]
    assert reassembled == [(t.id, t.name, dict(t.input)) for t in tools]
    # The non-streaming rendering of the same events says the same thing.
    whole = wire.render_completion(response, completion_id="chatcmpl-1", created=1, model="m")
    message = ChatCompletion.model_validate(whole).choices[0].message
    assert (message.content or "") == text
    assert [
        (t.id, t.function.name, json.loads(t.function.arguments))  # type: ignore[union-attr]
        for t in message.tool_calls or []
    ] == [(call["id"], call["name"], json.loads(call["arguments"])) for call in calls.values()]
    late = encode_all([*events, c.TextDelta(0, "late")], include_usage=include_usage)
    assert late == encode_all(events, include_usage=include_usage)  # nothing after the end
