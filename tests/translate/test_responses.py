"""OpenAI Responses <-> canonical: golden wire fixtures, validation, and properties.

Golden files live in tests/fixtures/responses/. `request_*.json` hold a request body (with
the history items it continues and the images fetched for it) and what it parses to;
`response_*.json` hold a body and a `ChatResponse` and the response object (and kept items)
they render to; `stream_*.json` hold a body and canonical events and the streaming events
they encode to. Ids come from a counter and thoughts are "sealed" readably, so the files
are stable. Run with GATEWAY_UPDATE_GOLDEN=1 to rewrite the `expected` halves after an
intended change (then review the diff: these files are the protocol). Every rendered object
is validated by the openai SDK's own types.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway import errors
from gateway.translate import canonical as c
from gateway.translate import responses as wire
from tests.strategies import event_streams
from tests.support import GoldenFiles, event_from_json, response_from_json

GOLDEN = GoldenFiles(Path(__file__).resolve().parent.parent / "fixtures" / "responses")
load, fixture_names, check_golden = GOLDEN.load, GOLDEN.names, GOLDEN.check
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def seal(payload: dict[str, Any]) -> str:
    return "sealed:" + json.dumps(payload, sort_keys=True)


def unseal(envelope: str) -> dict[str, Any] | None:
    if not envelope.startswith("sealed:"):
        return None
    opened: dict[str, Any] = json.loads(envelope[len("sealed:"):])
    return opened


def counter() -> Any:
    numbers = itertools.count(1)
    return lambda prefix: f"{prefix}_{next(numbers)}"


def parse(body: Any, *, history: Any = (), **fetched: tuple[str, str]) -> wire.ResponsesRequest:
    return wire.parse_responses_request(
        body, history=history, fetched_images=fetched, unseal=unseal, new_id=counter()
    )








def parsed_view(request: wire.ResponsesRequest) -> dict[str, Any]:
    return {
        "chat": attrs.asdict(request.chat),
        "tool_names": {k: attrs.asdict(v) for k, v in request.tool_names.items()},
        "input_items": list(request.input_items),
        "store": request.store,
        "include_encrypted": request.include_encrypted,
        "show_summary": request.show_summary,
        "previous_response_id": request.previous_response_id,
        "prompt_cache_key": request.prompt_cache_key,
        "echo": dict(request.echo),
    }




def encode_all(
    request: wire.ResponsesRequest, events: list[c.StreamEvent]
) -> tuple[list[dict[str, Any]], wire.ResponsesStreamEncoder]:
    encoder = wire.ResponsesStreamEncoder(
        request, response_id="resp_1", created_at=1700000000, seal=seal, new_id=counter()
    )
    out = encoder.start()
    for event in events:
        out += encoder.encode(event)
    return out, encoder


# ---------------------------------------------------------------------------------------------
# Golden files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", fixture_names("request"))
def test_request_golden(name: str) -> None:
    data = load(name)
    fetched = {url: tuple(pair) for url, pair in data.get("fetched_images", {}).items()}
    assert wire.image_urls_to_fetch(data["body"]) == list(fetched)
    parsed = parse(data["body"], history=data.get("history", ()), **fetched)
    check_golden(name, parsed_view(parsed))


@pytest.mark.parametrize("name", fixture_names("response"))
def test_response_golden(name: str) -> None:
    data = load(name)
    request = parse(data["body"])
    body, kept = wire.render_response(
        response_from_json(data["response"]), request, response_id="resp_1",
        created_at=1700000000, seal=seal, new_id=counter(),
    )
    Response.model_validate(body)
    check_golden(name, {"response": body, "kept_items": kept})


@pytest.mark.parametrize("name", fixture_names("stream"))
def test_stream_golden(name: str) -> None:
    data = load(name)
    events, encoder = encode_all(parse(data["body"]), [event_from_json(e) for e in data["events"]])
    for event in events:
        EVENTS.validate_python(event)
    assert encoder.final is not None
    check_golden(name, {"events": events, "kept_items": encoder.kept_items})


def test_fixture_sets_are_present() -> None:
    assert len(fixture_names("request")) >= 3
    assert len(fixture_names("response")) >= 3
    assert len(fixture_names("stream")) >= 2


# ---------------------------------------------------------------------------------------------
# Request mapping details
# ---------------------------------------------------------------------------------------------


def test_a_codex_turn_becomes_alternating_turns() -> None:
    request = parse(load("request_codex_turn")["body"])
    chat = request.chat
    assert [b.text for b in chat.system] == ["You are a coding agent."]
    assert [m.role for m in chat.messages] == ["user", "assistant", "user", "system", "user"]
    # the harness's environment message and the prompt share the user turn, as two parts
    assert [b.text for b in chat.messages[0].content] == [  # type: ignore[union-attr]
        "<environment_context>\n  <cwd>/w</cwd>\n</environment_context>", "run it"]
    thought, *calls = chat.messages[1].content
    assert thought == c.ThinkingBlock("I will run it.", "claude.sig1")  # opened from its seal
    assert calls == [
        c.ToolUseBlock("call_a", "exec_command", {"cmd": "echo hi"}),
        c.ToolUseBlock("call_b", "multi_agent_v1__close_agent", {"id": "x"}),
        c.ToolUseBlock("call_c", "apply_patch", {"input": "*** Begin Patch"}),
    ]
    results = chat.messages[2].content
    assert [r.name for r in results if isinstance(r, c.ToolResultBlock)] == [
        "exec_command", "multi_agent_v1__close_agent", "apply_patch"]
    assert [t.name for t in chat.tools] == ["exec_command", "multi_agent_v1__close_agent",
                                           "apply_patch"]
    assert "lark grammar" in chat.tools[2].input_schema["properties"]["input"]["description"]
    assert request.tool_names["multi_agent_v1__close_agent"] == wire.ToolName(
        "close_agent", "multi_agent_v1")
    assert request.store is False and request.include_encrypted and request.show_summary
    assert request.prompt_cache_key == "01a2-session"
    # a summary asked for without an effort: the model's own amount of thinking
    assert chat.stream and chat.thinking == c.Thinking(True)


def test_previous_items_come_first_and_foreign_thoughts_are_dropped() -> None:
    data = load("request_media_and_history")
    fetched = {url: tuple(pair) for url, pair in data["fetched_images"].items()}
    chat = parse(data["body"], history=data["history"], **fetched).chat
    assert [m.role for m in chat.messages] == ["user", "assistant", "user"]
    assert chat.messages[1].content == (c.RedactedThinkingBlock("opaque"), c.TextBlock("answer"))
    assert [t.name for t in chat.tools] == ["b"]  # allowed_tools keeps only b
    assert chat.tool_choice == c.ToolChoice("any")
    kinds = [type(b).__name__ for b in chat.messages[2].content]
    assert kinds == ["TextBlock", "ImageBlock", "ImageBlock", "DocumentBlock"]


def test_string_input_and_defaults() -> None:
    request = parse({"model": "m", "input": "hi"})
    assert request.chat.messages == (c.Message("user", (c.TextBlock("hi"),)),)
    assert request.store is True and not request.include_encrypted and not request.show_summary
    assert request.chat.max_tokens == wire.DEFAULT_MAX_TOKENS
    echo = request.echo
    assert echo["tool_choice"] == "auto" and echo["tools"] == [] and echo["temperature"] == 1.0
    assert request.input_items[0]["content"] == [{"type": "input_text", "text": "hi"}]
    assert request.input_items[0]["id"] == "msg_1"


@pytest.mark.parametrize(
    ("effort", "thinking"),
    [("none", c.Thinking(False)), ("low", c.Thinking(True, 4096)),
     ("xhigh", c.Thinking(True, 24576)), (None, None)],
)
def test_reasoning_effort(effort: str | None, thinking: c.Thinking | None) -> None:
    reasoning = {} if effort is None else {"effort": effort}
    assert parse({"model": "m", "input": "x", "reasoning": reasoning}).chat.thinking == thinking


@pytest.mark.parametrize(
    ("tool", "named"),
    [({"type": "web_search", "external_web_access": False}, "web_search"),
     ({"type": "file_search", "vector_store_ids": []}, "file_search"),
     ({"type": "code_interpreter", "container": "auto"}, "code_interpreter"),
     ({"type": "computer_use_preview"}, "computer_use_preview"),
     ({"type": "mcp", "server_label": "x"}, "mcp"),
     ({"type": "local_shell"}, "local_shell"),
     ({"type": "image_generation"}, "image_generation")],
)
def test_builtin_tools_are_refused_by_name(tool: dict[str, Any], named: str) -> None:
    with pytest.raises(errors.InvalidRequest) as refused:
        parse({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}, tool]})
    assert named in refused.value.message and refused.value.param == "tools[1].type"
    if named == "web_search":
        assert 'web_search = "disabled"' in refused.value.message  # Codex's fix, spelled out


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": 3}, "input"),
        ({"model": "m", "input": [{"type": "message", "role": "robot", "content": "x"}]},
         "input[0].role"),
        ({"model": "m", "input": [{"type": "web_search_call", "id": "w"}]}, "input[0].type"),
        ({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f",
                                   "arguments": "{nope"}]}, "input[0].arguments"),
        ({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_image", "file_id": "file-1"}]}]}, "input[0].content[0].file_id"),
        ({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://x.test/a.png"}]}]},
         "input[0].content[0].image_url"),
        ({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_file", "file_url": "https://x.test/a.pdf"}]}]},
         "input[0].content[0].file_url"),
        ({"model": "m", "input": "x", "background": True}, "background"),
        ({"model": "m", "input": "x", "conversation": "conv_1"}, "conversation"),
        ({"model": "m", "input": "x", "prompt": {"id": "p"}}, "prompt"),
        ({"model": "m", "input": "x", "top_logprobs": 2}, "top_logprobs"),
        ({"model": "m", "input": "x", "include": ["message.output_text.logprobs"]}, "include"),
        ({"model": "m", "input": "x", "reasoning": {"effort": "huge"}}, "reasoning.effort"),
        ({"model": "m", "input": "x", "reasoning": {"summary": "long"}}, "reasoning.summary"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"model": "m", "input": "x", "tool_choice": "required"}, "tool_choice"),
        ({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}],
          "tool_choice": {"type": "function", "name": "g"}}, "tool_choice.name"),
        ({"model": "m", "input": "x", "tool_choice": {"type": "file_search"}},
         "tool_choice.type"),
        ({"model": "m", "input": "x", "tools": [
            {"type": "namespace", "name": "n" * 40, "tools": [
                {"type": "function", "name": "f" * 30}]}]}, "tools[0].tools[0].name"),
        ({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"},
                                               {"type": "function", "name": "f"}]},
         "tools[1].name"),
        ({"model": "m", "input": "x", "metadata": {"k": 1}}, "metadata.k"),
        # calls and their outputs are checked here, before any upstream call
        ({"model": "m", "input": [{"role": "user", "content": "hi"}, {
            "type": "function_call_output", "call_id": "nope", "output": "42"}]},
         "input[1].call_id"),
        ({"model": "m", "input": [
            {"type": "function_call_output", "call_id": "c", "output": "42"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]},
         "input[0].call_id"),
        ({"model": "m", "input": [
            {"role": "user", "content": "hi"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"role": "user", "content": "well?"}]}, "input"),
        ({"model": "m", "input": [
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]},
         "input[1].call_id"),
        ({"model": "m", "input": [
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "1"},
            {"type": "function_call_output", "call_id": "c", "output": "2"}]},
         "input[2].call_id"),
        ({"model": "m", "input": [
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "custom_tool_call_output", "call_id": "c", "output": "1"}]},
         "input[1].type"),
        ({"model": "m", "input": "x", "background": "yes"}, "background"),
        ({"model": "m", "input": "x", "include": ["bogus.value"]}, "include"),
        ({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f",
                                                "strict": "yes"}]}, "tools[0].strict"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "x"}}},
         "text.format.schema"),
        ({"model": "m", "input": "x", "text": {"format": {
            "type": "json_schema", "name": "a b/c", "schema": {}}}}, "text.format.name"),
        ({"model": "m", "input": "x", "text": {"format": {
            "type": "json_schema", "name": "x", "strict": 1, "schema": {}}}},
         "text.format.strict"),
        ({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}],
          "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": []}},
         "tool_choice"),
        ({"model": "m", "input": "x", "tools": [
            {"type": "namespace", "name": "ns", "description": "d", "tools": [
                {"type": "function", "name": "f"}]}],
          "tool_choice": {"type": "function", "name": "f", "namespace": "zz"}},
         "tool_choice.name"),
    ],
)
def test_invalid_bodies_name_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(errors.InvalidRequest) as refused:
        parse(body)
    assert refused.value.param == param, refused.value.message


def test_a_tampered_or_foreign_seal_is_dropped_not_trusted() -> None:
    for envelope in ("gAAAAB-openai", "sealed-not-json", ""):
        request = parse({"model": "m", "input": [
            {"role": "user", "content": "q"},
            {"type": "reasoning", "id": "rs", "summary": [], "encrypted_content": envelope},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "q2"}]})
        assert request.chat.messages[1].content == (c.TextBlock("a"),)


def test_an_unsealed_summary_becomes_an_unsigned_thought() -> None:
    request = parse({"model": "m", "input": [
        {"role": "user", "content": "q"},
        {"type": "reasoning", "id": "rs", "summary": [{"type": "summary_text", "text": "t"}]},
        {"role": "assistant", "content": "a"}]})
    assert request.chat.messages[1].content == (c.ThinkingBlock("t"), c.TextBlock("a"))


# ---------------------------------------------------------------------------------------------
# Rendering details
# ---------------------------------------------------------------------------------------------


def test_thoughts_are_kept_sealed_but_shown_only_when_asked() -> None:
    response = response_from_json(load("response_max_tokens_hidden_thoughts")["response"])
    body, kept = wire.render_response(
        response, parse({"model": "m", "input": "x"}), response_id="resp_1", created_at=1,
        seal=seal, new_id=counter())
    reasoning = body["output"][0]
    assert reasoning == {"id": "rs_1", "type": "reasoning", "summary": []}
    assert unseal(kept[0]["encrypted_content"]) == {"text": "Secret.", "signature": "claude.s"}
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}


def test_namespaced_and_custom_calls_come_back_in_the_clients_names() -> None:
    data = load("response_thinking_tools")
    body, _ = wire.render_response(
        response_from_json(data["response"]), parse(data["body"]), response_id="r",
        created_at=1, seal=seal, new_id=counter())
    calls = [o for o in body["output"] if o["type"] != "reasoning"]
    assert calls[0] | {"id": ""} == {"id": "", "type": "function_call", "status": "completed",
                                     "arguments": '{"x":1}', "call_id": "call_1", "name": "f",
                                     "namespace": "ns"}
    assert calls[1] | {"id": ""} == {"id": "", "type": "custom_tool_call", "call_id": "call_2",
                                     "name": "patch", "input": "*** Begin"}


def test_a_failure_mid_stream_ends_with_error_and_response_failed() -> None:
    request = parse({"model": "m", "input": "x", "stream": True})
    events, encoder = encode_all(request, [c.BlockStart(0, "text"), c.TextDelta(0, "par")])
    failed = encoder.fail(errors.RateLimited("every account is cooling down"))
    assert [e["type"] for e in failed] == ["error", "response.failed"]
    for event in events + failed:
        EVENTS.validate_python(event)
    assert failed[1]["response"]["error"] == {"code": "rate_limit_exceeded",
                                              "message": "every account is cooling down"}
    assert [e["sequence_number"] for e in events + failed] == list(range(len(events) + 2))
    assert encoder.encode(c.TextDelta(0, "more")) == [] and encoder.fail(errors.GatewayError(
        "again")) == []


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8,
)
text_parts = st.fixed_dictionaries({"type": st.just("input_text"), "text": st.text(max_size=4)})
items = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer",
                                                    "x"]),
                           "content": st.text(max_size=4) | st.lists(text_parts, max_size=2)},
                          optional={"type": st.just("message")}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": st.sampled_from(
        ["c1", "c2", ""]), "name": st.sampled_from(["f", "g"]),
        "arguments": st.sampled_from(['{"a":1}', "{}", "[1]", "x"])},
        optional={"namespace": st.sampled_from(["ns", None])}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": st.sampled_from(
        ["c1", "c2"]), "output": st.text(max_size=4) | st.lists(text_parts, max_size=2)}),
    st.fixed_dictionaries({"type": st.just("custom_tool_call"), "call_id": st.just("c3"),
                           "name": st.just("p"), "input": st.text(max_size=4)}),
    st.fixed_dictionaries({"type": st.just("reasoning"), "id": st.just("rs"),
                           "summary": st.lists(st.fixed_dictionaries({
                               "type": st.just("summary_text"), "text": st.text(max_size=4)}),
                               max_size=2)},
                          optional={"encrypted_content": st.sampled_from([
                              'sealed:{"text": "t", "signature": "claude.s"}', "foreign",
                              'sealed:{"redacted": "r"}'])}),
    json_values,
)
TOOLS = [{"type": "function", "name": "f", "parameters": {"type": "object"}},
         {"type": "custom", "name": "p"},
         {"type": "namespace", "name": "ns", "description": "", "tools": [
             {"type": "function", "name": "g"}]},
         {"type": "web_search"}]
PARAMS = {
    "instructions": st.text(max_size=4),
    "tools": st.lists(st.sampled_from(TOOLS) | json_values, max_size=3),
    "tool_choice": st.sampled_from(["auto", "none", "required", {"type": "function", "name": "f"},
                                    {"type": "allowed_tools", "mode": "auto",
                                     "tools": [{"type": "custom", "name": "p"}]}]),
    "parallel_tool_calls": st.booleans(),
    "max_output_tokens": st.integers(-1, 10**6),
    "temperature": st.floats(-1, 3),
    "reasoning": st.fixed_dictionaries({}, optional={
        "effort": st.sampled_from(["none", "low", "high", "x"]),
        "summary": st.sampled_from(["auto", "detailed", "x"])}),
    "text": st.fixed_dictionaries({"format": st.sampled_from([
        {"type": "text"}, {"type": "json_object"},
        {"type": "json_schema", "name": "n", "schema": {"type": "object"}}])}),
    "include": st.lists(st.sampled_from([wire.ENCRYPTED_REASONING, "file_search_call.results"]),
                        max_size=2),
    "store": st.booleans(),
    "metadata": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=3),
}  # fmt: skip
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"model": st.just("gemini-3-flash") | json_values,
         "input": st.text(max_size=4) | st.lists(items, max_size=6)},
        optional={key: value | json_values for key, value in PARAMS.items()},
    ),
    st.fixed_dictionaries(
        {"model": st.just("gemini-3-flash"), "input": st.lists(items, min_size=1, max_size=6)},
        optional=PARAMS,
    ),
)


@settings(max_examples=600, deadline=None)
@given(bodies)
def test_any_json_parses_or_raises_invalid_request(body: Any) -> None:
    original = copy.deepcopy(body)
    wire.image_urls_to_fetch(body)
    try:
        request = parse(body)
    except errors.InvalidRequest as err:
        assert err.message
        return
    finally:
        assert body == original  # the body is not changed by parsing it
    assert request.chat.messages and request.chat.max_tokens >= 1
    json.dumps(attrs.asdict(request.chat))
    assert all(isinstance(item.get("id"), str) for item in request.input_items)
    # what is stored parses again to the same conversation (previous_response_id)
    again = parse({"model": "m", "input": [], "instructions": body.get("instructions")},
                  history=list(request.input_items))
    assert again.chat.messages == request.chat.messages


@settings(max_examples=300, deadline=None)
@given(event_streams(), st.booleans(), st.booleans())
def test_stream_events_reassemble_to_the_rendered_response(
    events: list[c.StreamEvent], summary: bool, include: bool
) -> None:
    body: dict[str, Any] = {"model": "m", "input": "x", "stream": True,
                            "tools": [{"type": "function", "name": "f"},
                                      {"type": "function", "name": "get_weather"}]}
    if summary:
        body["reasoning"] = {"summary": "auto"}
    if include:
        body["include"] = [wire.ENCRYPTED_REASONING]
    request = parse(body)
    out, encoder = encode_all(request, events)
    for event in out:
        EVENTS.validate_python(event)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    assert [e["type"] for e in out[:2]] == ["response.created", "response.in_progress"]
    assert out[-1]["type"] in ("response.completed", "response.incomplete")
    final = out[-1]["response"]
    Response.model_validate(final)
    done = [e["item"] for e in out if e["type"] == "response.output_item.done"]
    assert final["output"] == done
    added = [e for e in out if e["type"] == "response.output_item.added"]
    assert [e["output_index"] for e in added] == list(range(len(done)))
    # deltas add up to what each finished item says
    for index, item in enumerate(done):
        if item["type"] == "message":
            text = "".join(e["delta"] for e in out if e["type"] == "response.output_text.delta"
                           and e["output_index"] == index)
            assert text == item["content"][0]["text"]
        elif item["type"] == "function_call":
            arguments = "".join(e["delta"] for e in out if e["type"] ==
                                "response.function_call_arguments.delta"
                                and e["output_index"] == index)
            assert json.loads(arguments or "{}") == json.loads(item["arguments"])
        elif item["type"] == "reasoning":
            assert ("encrypted_content" in item) == include
            shown = "".join(e["delta"] for e in out if e["type"] ==
                            "response.reasoning_summary_text.delta" and e["output_index"] == index)
            assert shown == "".join(s["text"] for s in item["summary"])
            if not summary:
                assert item["summary"] == []
    # the unary rendering of the same events says the same thing (ids aside)
    collected = c.collect(events, response_id="resp_1", model="m")
    unary, kept = wire.render_response(collected, request, response_id="resp_1",
                                       created_at=1700000000, seal=seal, new_id=counter())

    def without_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # (the stream passes the upstream's argument text on; the unary path encodes it)
        return [{k: json.loads(v) if k == "arguments" else v for k, v in item.items()
                 if k != "id"} for item in items]

    assert without_ids(unary["output"]) == without_ids(final["output"])
    assert without_ids(kept) == without_ids(encoder.kept_items)
    assert {k: v for k, v in unary.items() if k != "output"} == {
        k: v for k, v in final.items() if k != "output"}


def test_a_namespace_in_tool_choice_picks_that_tool() -> None:
    tools = [{"type": "function", "name": "get_w"},
             {"type": "namespace", "name": "ns", "description": "d",
              "tools": [{"type": "function", "name": "get_w"}]}]
    body = {"model": "m", "input": "x", "tools": tools}
    inside = parse({**body, "tool_choice": {"type": "function", "name": "get_w",
                                            "namespace": "ns"}}).chat
    assert inside.tool_choice == c.ToolChoice("tool", "ns__get_w")
    top = parse({**body, "tool_choice": {"type": "function", "name": "get_w"}}).chat
    assert top.tool_choice == c.ToolChoice("tool", "get_w")
    allowed = parse({**body, "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [
        {"type": "function", "name": "get_w", "namespace": "ns"}]}}).chat
    assert [t.name for t in allowed.tools] == ["ns__get_w"]


def test_input_items_are_kept_in_the_form_the_api_lists_them() -> None:
    from openai.types.responses import ResponseItemList

    items = parse({"model": "m", "input": [
        {"role": "developer", "content": "dev"},
        {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;"
                                      "base64," + PNG}]},
        {"role": "assistant", "content": "a1"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "ok"},
    ]}).input_items
    ResponseItemList.model_validate({"object": "list", "data": list(items), "first_id": "a",
                                     "last_id": "b", "has_more": False})
    assert items[2]["content"] == [{"type": "output_text", "text": "a1", "annotations": []}]
