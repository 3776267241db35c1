"""Canonical <-> Cloud Code: golden wire fixtures, the decoder state machine, and properties.

Golden files live in tests/fixtures/cloudcode/. `request_*.json` hold the exact upstream body
for a request built below; `stream_*.json` hold upstream payloads and the events they decode
to. Run with GATEWAY_UPDATE_GOLDEN=1 to rewrite them after an intended change (then review
the diff: these files are the protocol).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import errors
from gateway.translate import canonical as c
from gateway.translate.cloudcode import (
    SKIP_SIGNATURE,
    CloudCodeDecoder,
    EmptyUpstreamResponse,
    decode_generate_response,
    tag_signature,
    to_cloudcode,
    untag_signature,
)
from gateway.translate.models import ModelInfo, describe_model

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cloudcode"
UPDATE = os.environ.get("GATEWAY_UPDATE_GOLDEN") == "1"

# translation traits only (these tests never reach an upstream)
CLAUDE = describe_model("claude-sonnet-4-5", thinking=False)
CLAUDE_THINKING = describe_model("claude-sonnet-4-5-thinking")
GEMINI = describe_model("gemini-2.5-flash")
GEMINI_3 = describe_model("gemini-3-pro-high")
SIG = "EqQBCkYIBxgCKkD" + "x" * 60  # looks like a real (long) signature
GEMINI_SIG = "CiQB" + "y" * 60

WEATHER = c.Tool(
    name="get_weather",
    description="Current weather for a city",
    input_schema={
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
        "additionalProperties": False,
        "$schema": "http://json-schema.org/draft-07/schema#",
    },
)
PNG = "iVBORw0KGgo="


def golden(name: str, actual: Any) -> None:
    path = FIXTURES / f"{name}.json"
    text = json.dumps(actual, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"missing golden file {path.name}; run with GATEWAY_UPDATE_GOLDEN=1")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert json.loads(path.read_text()) == json.loads(text)


def body(request: c.ChatRequest, model: ModelInfo, **kw: Any) -> dict[str, Any]:
    return to_cloudcode(
        request,
        model=model,
        project="proj-1",
        session_id="sess-abc",
        request_id="agent-req-1",
        **kw,
    )


def replayable(signature: str | None, model: ModelInfo) -> bool:
    """Whether a thought with this signature may go to `model`: minted by its family, or
    (untagged, from before tagging) to Claude, which checks it."""
    if not signature:
        return False
    family, _ = untag_signature(signature)
    return family == model.family or (family is None and model.family == "claude")


def user(*blocks: c.ContentBlock | str) -> c.Message:
    return c.Message("user", tuple(c.TextBlock(b) if isinstance(b, str) else b for b in blocks))


def assistant(*blocks: c.ContentBlock | str) -> c.Message:
    return c.Message(
        "assistant", tuple(c.TextBlock(b) if isinstance(b, str) else b for b in blocks)
    )


def tool_loop(thinking: c.ThinkingBlock | None = None) -> tuple[c.Message, ...]:
    first = [thinking] if thinking else []
    return (
        user("Weather in Rome and Paris?"),
        assistant(
            *first,
            "Checking.",
            c.ToolUseBlock("toolu_1", "get_weather", {"city": "Rome"}),
            c.ToolUseBlock("toolu_2", "get_weather", {"city": "Paris"}),
        ),
        user(
            c.ToolResultBlock("toolu_1", (c.TextBlock("sunny"),), name="get_weather"),
            # no name: found from the tool_use earlier in the conversation
            c.ToolResultBlock(
                "toolu_2", (c.TextBlock("no data"), c.ImageBlock("image/png", PNG)), True
            ),
        ),
    )


# ---------------------------------------------------------------------------------------------
# Request golden files
# ---------------------------------------------------------------------------------------------

REQUESTS: dict[str, Callable[[], dict[str, Any]]] = {
    "request_claude_text": lambda: body(
        c.ChatRequest(
            model="claude-sonnet-4-5",
            system=(c.TextBlock("You are terse."), c.TextBlock("  ")),
            messages=(user("Hello"), assistant("Hi."), user("How are you?")),
            max_tokens=100_000,  # capped to the model's limit
            temperature=0.3,
            top_p=0.9,
            top_k=40,
            stop_sequences=("END",),
        ),
        CLAUDE,
    ),
    "request_claude_thinking_tools": lambda: body(
        c.ChatRequest(
            model="claude-sonnet-4-5-thinking",
            messages=tool_loop(c.ThinkingBlock("Two cities.", SIG)),
            max_tokens=4096,
            tools=(WEATHER,),
            tool_choice=c.ToolChoice("auto"),
            thinking=c.Thinking(True, 2048),
            temperature=0.5,  # Claude refuses it while thinking: dropped
        ),
        CLAUDE_THINKING,
    ),
    "request_claude_forced_tool": lambda: body(
        c.ChatRequest(
            model="claude-sonnet-4-5-thinking",
            messages=(user("Rome?"),),
            max_tokens=1024,
            tools=(WEATHER,),
            tool_choice=c.ToolChoice("tool", name="get_weather"),
            response_format=c.ResponseFormat("json"),
        ),
        CLAUDE_THINKING,
    ),
    "request_gemini_tool_signatures": lambda: body(
        c.ChatRequest(
            model="gemini-3-pro-high",
            messages=tool_loop(c.ThinkingBlock("unsigned thoughts are dropped")),
            max_tokens=2048,
            tools=(WEATHER,),
            tool_choice=c.ToolChoice("any"),
        ),
        GEMINI_3,
        tool_signatures={"toolu_1": GEMINI_SIG},
    ),
    "request_gemini_media_json": lambda: body(
        c.ChatRequest(
            model="gemini-2.5-flash",
            messages=(
                user(
                    c.ImageBlock("image/png", PNG),
                    c.DocumentBlock("application/pdf", "JVBERi0x"),
                    "Extract the title.",
                ),
            ),
            max_tokens=512,
            thinking=c.Thinking(True, 8192),
            response_format=c.ResponseFormat(
                "json_schema",
                {
                    "type": "object",
                    "properties": {"title": {"type": ["string", "null"]}},
                    "required": ["title"],
                    "additionalProperties": False,
                },
            ),
        ),
        GEMINI,
    ),
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_request_golden(name: str) -> None:
    golden(name, REQUESTS[name]())


def test_envelope_fields() -> None:
    out = REQUESTS["request_claude_text"]()
    assert out["project"] == "proj-1"
    assert out["model"] == "claude-sonnet-4-5"
    assert out["requestId"] == "agent-req-1"
    assert out["userAgent"] == "antigravity"
    assert out["requestType"] == "agent"
    inner = out["request"]
    assert inner["sessionId"] == "sess-abc"
    assert inner["systemInstruction"] == {"role": "user", "parts": [{"text": "You are terse."}]}
    assert [x["role"] for x in inner["contents"]] == ["user", "model", "user"]
    assert inner["generationConfig"]["maxOutputTokens"] == CLAUDE.max_output_tokens


def test_claude_tool_loop_details() -> None:
    inner = REQUESTS["request_claude_thinking_tools"]()["request"]
    model_turn, results = inner["contents"][1]["parts"], inner["contents"][2]["parts"]
    assert model_turn[0] == {"text": "Two cities.", "thought": True, "thoughtSignature": SIG}
    assert model_turn[2] == {
        "functionCall": {"name": "get_weather", "args": {"city": "Rome"}, "id": "toolu_1"}
    }
    assert results[0]["functionResponse"] == {
        "name": "get_weather",
        "response": {"result": "sunny"},
        "id": "toolu_1",
    }
    assert results[1]["functionResponse"]["response"] == {"error": "no data"}
    assert results[1]["functionResponse"]["name"] == "get_weather"
    assert results[2] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
    config = inner["generationConfig"]
    assert config["thinkingConfig"] == {"include_thoughts": True, "thinking_budget": 2048}
    assert "temperature" not in config
    params = inner["tools"][0]["functionDeclarations"][0]["parameters"]
    assert "additionalProperties" not in params and "$schema" not in params
    # Claude's free tool choice is VALIDATED, as the Antigravity client sends it
    assert inner["toolConfig"] == {"functionCallingConfig": {"mode": "VALIDATED"}}


def test_a_call_signature_the_client_carried_wins_over_the_cache() -> None:
    def call(signature: str | None) -> c.ToolUseBlock:
        return c.ToolUseBlock("t1", "f", {}, signature=signature)

    def sent(block: c.ToolUseBlock, cache: dict[str, str]) -> str:
        request = c.ChatRequest(model="m", max_tokens=100, messages=(
            c.Message("user", (c.TextBlock("go"),)), c.Message("assistant", (block,)),
            c.Message("user", (c.ToolResultBlock("t1", (c.TextBlock("ok"),), name="f"),))))
        parts = body(request, GEMINI_3, tool_signatures=cache)["request"]["contents"][1]["parts"]
        signature: str = parts[0]["thoughtSignature"]
        return signature

    cached = {"t1": tag_signature("gemini", "from-cache")}
    assert sent(call(tag_signature("gemini", "carried")), cached) == "carried"
    assert sent(call("untagged-from-google"), {}) == "untagged-from-google"
    # another family's is left out: the cache's, else Google's sentinel
    assert sent(call(tag_signature("claude", "x")), cached) == "from-cache"
    assert sent(call(tag_signature("claude", "x")), {}) == SKIP_SIGNATURE
    assert sent(call(None), {"t1": "raw-cached"}) == "raw-cached"  # older cache entries


def test_safety_settings_go_to_gemini_only() -> None:
    setting = {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}
    request = c.ChatRequest(model="m", max_tokens=10, safety_settings=(setting,),
                            messages=(c.Message("user", (c.TextBlock("hi"),)),))
    assert body(request, GEMINI)["request"]["safetySettings"] == [setting]
    assert "safetySettings" not in body(request, CLAUDE)["request"]


def test_gemini_calls_carry_signatures_or_the_sentinel() -> None:
    inner = REQUESTS["request_gemini_tool_signatures"]()["request"]
    calls = [p for x in inner["contents"] for p in x["parts"] if "functionCall" in p]
    assert [p["thoughtSignature"] for p in calls] == [GEMINI_SIG, SKIP_SIGNATURE]
    assert all("id" not in p["functionCall"] for p in calls)
    responses = [p for x in inner["contents"] for p in x["parts"] if "functionResponse" in p]
    assert all("id" not in p["functionResponse"] for p in responses)
    assert not any(p.get("thought") for x in inner["contents"] for p in x["parts"])
    assert inner["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


def test_forced_tool_on_claude_disables_thinking() -> None:
    inner = REQUESTS["request_claude_forced_tool"]()["request"]
    assert inner["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }
    assert "thinkingConfig" not in inner["generationConfig"]
    # No JSON mode on Claude here: it is asked for in the system instruction instead.
    assert "responseMimeType" not in inner["generationConfig"]
    assert "JSON" in inner["systemInstruction"]["parts"][-1]["text"]


def test_gemini_json_schema_and_media() -> None:
    inner = REQUESTS["request_gemini_media_json"]()["request"]
    config = inner["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"]["properties"]["title"]["type"] == "string"
    parts = inner["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0x"}}
    # The budget did not fit under max_tokens, so it was added on top.
    assert config["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 8192}
    assert config["maxOutputTokens"] == 512 + 8192


@pytest.mark.parametrize(
    ("model", "thinking", "max_tokens", "expected", "max_out"),
    [
        (CLAUDE, c.Thinking(True, 5000), 8000, None, 8000),  # not a thinking model
        # Claude thinks only when the client enabled thinking, whatever the model id says
        (CLAUDE_THINKING, None, 32000, None, 32000),
        (CLAUDE_THINKING, c.Thinking(True), 32000, {"include_thoughts": True,
                                                     "thinking_budget": 16384}, 32000),
        (CLAUDE_THINKING, c.Thinking(True), 100, {"include_thoughts": True,
                                                   "thinking_budget": 16384}, 16484),
        (CLAUDE_THINKING, c.Thinking(True, 10), 4000, {"include_thoughts": True,
                                                        "thinking_budget": 1024}, 4000),
        (CLAUDE_THINKING, c.Thinking(True, 60000), 64000, {"include_thoughts": True,
                                                            "thinking_budget": 60000}, 64000),
        (CLAUDE_THINKING, c.Thinking(True, 64000), 64000, {"include_thoughts": True,
                                                            "thinking_budget": 63999}, 64000),
        (CLAUDE_THINKING, c.Thinking(False), 4000, None, 4000),
        (GEMINI, None, 4000, {"includeThoughts": False}, 4000),
        (GEMINI, c.Thinking(True, 0), 4000, {"includeThoughts": True, "thinkingBudget": 0}, 4000),
        (GEMINI, c.Thinking(False), 4000, {"includeThoughts": False}, 4000),
        (GEMINI_3, c.Thinking(True, 70000), 1000, {"includeThoughts": True,
                                                   "thinkingBudget": 65534}, 65535),
    ],
)  # fmt: skip
def test_thinking_budget_rules(
    model: ModelInfo,
    thinking: c.Thinking | None,
    max_tokens: int,
    expected: dict[str, Any] | None,
    max_out: int,
) -> None:
    request = c.ChatRequest(
        model=model.id, messages=(user("hi"),), max_tokens=max_tokens, thinking=thinking
    )
    config = body(request, model)["request"]["generationConfig"]
    assert config.get("thinkingConfig") == expected
    assert config["maxOutputTokens"] == max_out
    if expected and "thinking_budget" in expected:
        assert expected["thinking_budget"] < config["maxOutputTokens"]


def test_claude_tool_loop_without_signed_thinking_does_not_think() -> None:
    # OpenAI clients cannot carry thinking blocks; Claude would refuse the turn otherwise.
    request = c.ChatRequest(
        model=CLAUDE_THINKING.id, messages=tool_loop(), max_tokens=4096, tools=(WEATHER,),
        thinking=c.Thinking(True, 2048),
    )
    assert "thinkingConfig" not in body(request, CLAUDE_THINKING)["request"]["generationConfig"]
    signed = attrs.evolve(request, messages=tool_loop(c.ThinkingBlock("t", SIG)))
    assert "thinkingConfig" in body(signed, CLAUDE_THINKING)["request"]["generationConfig"]


def test_same_role_turns_merge_and_empty_turns_vanish() -> None:
    request = c.ChatRequest(
        model=CLAUDE.id,
        messages=(
            user("one"),
            user("two"),
            assistant(c.ThinkingBlock("unsigned"), "   "),  # nothing left to send
            user("three"),
            assistant(c.RedactedThinkingBlock("opaque"), "answer"),
        ),
        max_tokens=10,
    )
    contents = body(request, CLAUDE)["request"]["contents"]
    assert contents == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}, {"text": "three"}]},
        {"role": "model", "parts": [{"text": "answer"}]},
    ]


def test_tool_results_lead_merged_user_turns() -> None:
    request = c.ChatRequest(
        model=CLAUDE.id,
        messages=(
            assistant(c.ToolUseBlock("t1", "f", {})),
            user("extra words"),
            user(c.ToolResultBlock("t1", (c.TextBlock("ok"),))),
        ),
        max_tokens=10,
    )
    parts = body(request, CLAUDE)["request"]["contents"][1]["parts"]
    assert "functionResponse" in parts[0]
    assert parts[0]["functionResponse"]["name"] == "f"
    assert parts[1] == {"text": "extra words"}


def test_no_content_at_all_is_the_clients_error() -> None:
    request = c.ChatRequest(model=CLAUDE.id, messages=(user("  "),), max_tokens=10)
    with pytest.raises(errors.InvalidRequest) as info:
        body(request, CLAUDE)
    assert info.value.param == "messages"


def test_tool_choice_none_and_no_tools() -> None:
    request = c.ChatRequest(
        model=GEMINI.id,
        messages=(user("hi"),),
        max_tokens=10,
        tools=(WEATHER,),
        tool_choice=c.ToolChoice("none"),
    )
    inner = body(request, GEMINI)["request"]
    assert inner["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}
    bare = body(attrs.evolve(request, tools=()), GEMINI)["request"]
    assert "tools" not in bare and "toolConfig" not in bare


# ---------------------------------------------------------------------------------------------
# Decoder golden files
# ---------------------------------------------------------------------------------------------


def event_json(event: c.StreamEvent) -> dict[str, Any]:
    return {"event": type(event).__name__, **attrs.asdict(event)}


def wrap(inner: dict[str, Any]) -> dict[str, Any]:
    return {"response": inner, "traceId": "abc"}


def candidate(*parts: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}}
    if finish:
        cand["finishReason"] = finish
    return {"candidates": [cand]}


STREAMS: dict[str, tuple[ModelInfo, list[dict[str, Any]]]] = {
    "stream_claude_thinking_tool": (
        CLAUDE_THINKING,
        [
            wrap(candidate({"thought": True, "text": "Let me "})),
            wrap(candidate({"thought": True, "text": "check."})),
            wrap(candidate({"thought": True, "text": "", "thoughtSignature": SIG})),
            wrap(candidate({"text": "Checking the "}, {"text": "weather."})),
            wrap(
                {
                    **candidate(
                        {
                            "functionCall": {
                                "name": "get_weather",
                                "args": {"city": "Rome"},
                                "id": "toolu_vrtx_01",
                            }
                        },
                        finish="STOP",
                    ),
                    "usageMetadata": {
                        "promptTokenCount": 120,
                        "candidatesTokenCount": 30,
                        "thoughtsTokenCount": 12,
                        "cachedContentTokenCount": 100,
                        "totalTokenCount": 162,
                    },
                }
            ),
        ],
    ),
    "stream_gemini_signed_call": (
        GEMINI_3,
        [
            candidate({"thought": True, "text": "**Planning**\nUse the tool."}),
            candidate(
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Rome"}},
                    "thoughtSignature": GEMINI_SIG,
                },
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
            ),
            {
                **candidate({"text": ""}, finish="STOP"),
                "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 20},
            },
        ],
    ),
    "stream_gemini_max_tokens": (
        GEMINI,
        [
            {
                **candidate({"text": "Once upon"}),
                "usageMetadata": {"promptTokenCount": 8},
            },
            {
                **candidate({"text": " a time"}, finish="MAX_TOKENS"),
                "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 4},
            },
        ],
    ),
    "stream_safety_refusal": (
        GEMINI,
        [candidate(finish="SAFETY")],
    ),
}


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_stream_golden(name: str) -> None:
    model, payloads = STREAMS[name]
    decoder = CloudCodeDecoder(model=model, tool_id_prefix="toolu_gw_")
    events: list[c.StreamEvent] = []
    for payload in payloads:
        events.extend(decoder.feed(payload))
    events.extend(decoder.finish())
    check_invariants(events)
    events_json = [event_json(e) for e in events]
    golden(name, {"model": model.id, "payloads": payloads, "events": events_json})


def test_claude_stream_collects() -> None:
    model, payloads = STREAMS["stream_claude_thinking_tool"]
    response = c.collect(decode(model, payloads), response_id="msg_1", model=model.id)
    assert response.content == (
        c.ThinkingBlock("Let me check.", tag_signature("claude", SIG)),
        c.TextBlock("Checking the weather."),
        c.ToolUseBlock("toolu_vrtx_01", "get_weather", {"city": "Rome"}),
    )
    assert response.stop_reason == "tool_use"
    assert response.usage == c.Usage(
        input_tokens=20, output_tokens=42, cache_read_input_tokens=100, thinking_tokens=12
    )


def test_gemini_signed_call_reports_signature_and_ids() -> None:
    model, payloads = STREAMS["stream_gemini_signed_call"]
    events = decode(model, payloads)
    assert [e for e in events if isinstance(e, c.ToolSignature)] == [
        c.ToolSignature("toolu_gw_0", tag_signature("gemini", GEMINI_SIG))
    ]
    starts = [e for e in events if isinstance(e, c.BlockStart) and e.kind == "tool_use"]
    assert [s.tool_id for s in starts] == ["toolu_gw_0", "toolu_gw_1"]
    assert events[-1] == c.MessageEnd("tool_use", c.Usage(input_tokens=50, output_tokens=20))


def test_max_tokens_and_refusal() -> None:
    model, payloads = STREAMS["stream_gemini_max_tokens"]
    end = decode(model, payloads)[-1]
    assert isinstance(end, c.MessageEnd) and end.stop_reason == "max_tokens"
    model, payloads = STREAMS["stream_safety_refusal"]
    assert decode(model, payloads) == [c.MessageEnd("refusal", c.Usage())]
    blocked = decode(GEMINI, [{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}])
    assert blocked == [c.MessageEnd("refusal", c.Usage())]


def decode(model: ModelInfo, payloads: Sequence[dict[str, Any]]) -> list[c.StreamEvent]:
    decoder = CloudCodeDecoder(model=model, tool_id_prefix="toolu_gw_")
    events = [e for p in payloads for e in decoder.feed(p)]
    return events + decoder.finish()


def test_empty_stream_raises_for_retry() -> None:
    decoder = CloudCodeDecoder(model=GEMINI, tool_id_prefix="t")
    assert decoder.feed(candidate({"text": ""})) == []
    decoder.feed({"usageMetadata": {"promptTokenCount": 3}})
    with pytest.raises(EmptyUpstreamResponse) as info:
        decoder.finish()
    assert isinstance(info.value, errors.UpstreamError)


def test_finish_reason_without_content_is_an_empty_answer() -> None:
    assert decode(GEMINI, [candidate(finish="STOP")]) == [c.MessageEnd("end_turn", c.Usage())]


def test_decode_generate_response_unwraps_and_finishes() -> None:
    payload = wrap(
        {
            **candidate({"text": "Hi"}, {"thought": True, "text": "hmm"}, finish="STOP"),
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1},
        }
    )
    events = decode_generate_response(payload, model=GEMINI, tool_id_prefix="x")
    check_invariants(events)
    response = c.collect(events, response_id="r", model="m")
    assert response.content == (c.TextBlock("Hi"), c.ThinkingBlock("hmm"))
    assert response.usage.input_tokens == 5


def test_signature_on_empty_text_part_signs_the_open_thought() -> None:
    events = decode(
        GEMINI_3,
        [
            candidate({"thought": True, "text": "a"}),
            candidate({"text": "", "thoughtSignature": GEMINI_SIG}),
            candidate({"thought": True, "text": "b", "thoughtSignature": "second"}),
            candidate({"thought": True, "text": "c"}),  # after a signed block: a new block
        ],
    )
    response = c.collect(events, response_id="r", model="m")
    assert response.content == (
        c.ThinkingBlock("a", tag_signature("gemini", GEMINI_SIG)),
        c.ThinkingBlock("b", tag_signature("gemini", "second")),
        c.ThinkingBlock("c"),
    )


@pytest.mark.parametrize(
    ("error", "kind", "retry_after"),
    [
        (
            {
                "code": 429,
                "status": "RESOURCE_EXHAUSTED",
                "message": "Resource has been exhausted",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3.5s"}
                ],
            },
            errors.RateLimited,
            3.5,
        ),
        ({"code": 400, "status": "INVALID_ARGUMENT"}, errors.UpstreamInvalidRequest, None),
        ({"code": 401, "status": "UNAUTHENTICATED"}, errors.UpstreamAuthError, None),
        ({"code": 503, "status": "UNAVAILABLE"}, errors.Overloaded, None),
        ({"code": 504, "status": "DEADLINE_EXCEEDED"}, errors.UpstreamTimeout, None),
        ({"code": 500, "status": "INTERNAL"}, errors.UpstreamError, None),
        ({}, errors.UpstreamError, None),
    ],
)  # fmt: skip
def test_error_payloads_raise_gateway_errors(
    error: dict[str, Any], kind: type[errors.GatewayError], retry_after: float | None
) -> None:
    decoder = CloudCodeDecoder(model=GEMINI, tool_id_prefix="t")
    decoder.feed(candidate({"text": "partial"}))
    with pytest.raises(kind) as info:
        decoder.feed({"error": error})
    assert type(info.value) is kind
    assert info.value.retry_after == retry_after
    assert len(info.value.message) < 400
    with pytest.raises(kind):
        CloudCodeDecoder(model=GEMINI, tool_id_prefix="t").feed(wrap({"error": error}))


def test_malformed_payload_pieces_are_ignored() -> None:
    events = decode(
        GEMINI,
        [
            {"candidates": "nope"},
            {"candidates": [None]},
            {"candidates": [{"content": {"parts": [1, None, {"inlineData": {}}]}}]},
            candidate({"functionCall": {"name": 3, "args": [1]}}, finish="STOP"),
            {"usageMetadata": {"promptTokenCount": "many", "candidatesTokenCount": True}},
        ],
    )
    check_invariants(events)
    assert events[-1] == c.MessageEnd("tool_use", c.Usage())


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


def check_invariants(events: Sequence[c.StreamEvent]) -> None:
    """What every encoder relies on."""
    assert isinstance(events[-1], c.MessageEnd)
    assert sum(isinstance(e, c.MessageEnd) for e in events) == 1
    open_index: int | None = None
    started: list[int] = []
    stopped: set[int] = set()
    for event in events:
        if isinstance(event, c.BlockStart):
            assert open_index is None, "a block starts while another is open"
            assert event.index == len(started), "indices are 0..n-1 in order"
            started.append(event.index)
            open_index = event.index
            assert (event.tool_id is not None) == (event.kind == "tool_use")
        elif isinstance(event, c.BlockStop):
            assert event.index == open_index and event.index not in stopped
            stopped.add(event.index)
            open_index = None
        elif isinstance(event, c.TextDelta | c.ThinkingDelta | c.SignatureDelta | c.ToolInputDelta):
            assert event.index == open_index, "deltas go to the open block"
    assert open_index is None
    assert stopped == set(started)


part_texts = st.text(alphabet="ab \n\u00e9\U0001f600", min_size=0, max_size=6)
parts = st.one_of(
    st.builds(lambda t: {"text": t}, part_texts),
    st.builds(lambda t: {"text": t, "thought": True}, part_texts),
    st.builds(
        lambda t, s: {"text": t, "thought": True, "thoughtSignature": s},
        part_texts,
        st.sampled_from(["sigA", "sigB"]),
    ),
    st.builds(
        lambda n, a, sig, with_id: {
            "functionCall": {"name": n, "args": a, **({"id": f"call_{n}"} if with_id else {})},
            **({"thoughtSignature": sig} if sig else {}),
        },
        st.sampled_from(["f", "g"]),
        st.dictionaries(st.sampled_from("xyz"), st.integers() | st.text(max_size=3), max_size=2),
        st.sampled_from([None, "csig"]),
        st.booleans(),
    ),
    st.just({"text": "", "thoughtSignature": "lonely"}),
)


@st.composite
def split_stream(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    all_parts = draw(st.lists(parts, min_size=1, max_size=12))
    cuts = sorted(draw(st.sets(st.integers(0, len(all_parts)), max_size=5)))
    chunks = [all_parts[a:b] for a, b in zip([0, *cuts], [*cuts, len(all_parts)], strict=True)]
    return all_parts, chunks


@settings(max_examples=300, deadline=None)
@given(split_stream(), st.sampled_from([CLAUDE_THINKING, GEMINI_3]), st.booleans())
def test_decoder_invariants_and_reassembly(
    stream: tuple[list[dict[str, Any]], list[list[dict[str, Any]]]],
    model: ModelInfo,
    wrapped: bool,
) -> None:
    all_parts, chunks = stream
    payloads = [candidate(*chunk) for chunk in chunks]
    payloads[-1]["candidates"][0]["finishReason"] = "STOP"
    if wrapped:
        payloads = [wrap(p) for p in payloads]
    events = decode(model, payloads)
    check_invariants(events)
    response = c.collect(events, response_id="r", model=model.id)

    def joined(kind: type[Any], attr: str) -> str:
        return "".join(getattr(b, attr) for b in response.content if isinstance(b, kind))

    assert joined(c.TextBlock, "text") == "".join(
        p.get("text", "") for p in all_parts if "functionCall" not in p and not p.get("thought")
    )
    assert joined(c.ThinkingBlock, "thinking") == "".join(
        p.get("text", "") for p in all_parts if p.get("thought")
    )
    calls = [p["functionCall"] for p in all_parts if "functionCall" in p]
    tools = [b for b in response.content if isinstance(b, c.ToolUseBlock)]
    assert [(t.name, dict(t.input)) for t in tools] == [(f["name"], f["args"]) for f in calls]
    assert response.stop_reason == ("tool_use" if calls else "end_turn")
    # Consecutive text parts never split into separate blocks.
    kinds = [type(b) for b in response.content]
    assert all(not (a is b is c.TextBlock) for a, b in itertools.pairwise(kinds))
    # Each thinking block has at most one signature, and every thought signature survives.
    thought_sigs = [p["thoughtSignature"] for p in all_parts if p.get("thought")
                    and "thoughtSignature" in p]  # fmt: skip
    kept = [b.signature for b in response.content if isinstance(b, c.ThinkingBlock)]
    # every one tagged with the family that minted it
    assert [s for s in kept if s and not s.endswith(".lonely")] == [
        tag_signature(model.family, sig) for sig in thought_sigs]
    signed_calls = [e for e in events if isinstance(e, c.ToolSignature)]
    call_sigs = [p["thoughtSignature"] for p in all_parts if "functionCall" in p
                 and "thoughtSignature" in p]  # fmt: skip
    assert [e.signature for e in signed_calls] == [
        tag_signature(model.family, sig) for sig in call_sigs]


blocks_user = st.one_of(
    st.builds(c.TextBlock, st.sampled_from(["hi", " ", "", "q"])),
    st.builds(c.ImageBlock, st.just("image/png"), st.just(PNG)),
    st.builds(
        c.ToolResultBlock,
        st.sampled_from(["t1", "t2"]),
        st.lists(st.builds(c.TextBlock, st.sampled_from(["r", ""])), max_size=2).map(tuple),
        st.booleans(),
    ),
)
blocks_assistant = st.one_of(
    st.builds(c.TextBlock, st.sampled_from(["ok", " ", ""])),
    st.builds(c.ThinkingBlock, st.just("th"), st.sampled_from(
        [None, SIG, tag_signature("claude", SIG), tag_signature("gemini", GEMINI_SIG)])),
    st.builds(c.RedactedThinkingBlock, st.just("opaque")),
    st.builds(
        c.ToolUseBlock, st.sampled_from(["t1", "t2"]), st.sampled_from(["f", "g"]), st.just({})
    ),
)
messages = st.lists(
    st.one_of(
        st.builds(c.Message, st.just("user"), st.lists(blocks_user, max_size=3).map(tuple)),
        st.builds(
            c.Message, st.just("assistant"), st.lists(blocks_assistant, max_size=3).map(tuple)
        ),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(
    messages,
    st.sampled_from([CLAUDE, CLAUDE_THINKING, GEMINI, GEMINI_3]),
    st.integers(1, 200_000),
    st.none() | st.builds(c.Thinking, st.booleans(), st.none() | st.integers(0, 100_000)),
)
def test_request_properties(
    history: list[c.Message], model: ModelInfo, max_tokens: int, thinking: c.Thinking | None
) -> None:
    request = c.ChatRequest(
        model=model.id,
        messages=tuple(history),
        max_tokens=max_tokens,
        thinking=thinking,
        tools=(WEATHER,),
    )
    try:
        out = body(request, model, tool_signatures={"t1": "known"})
    except errors.InvalidRequest:
        assert not any(
            (isinstance(b, c.TextBlock) and b.text.strip())
            or isinstance(b, c.ImageBlock | c.ToolResultBlock | c.ToolUseBlock)
            or (isinstance(b, c.ThinkingBlock) and replayable(b.signature, model))
            for m in history
            for b in m.content
        )
        return
    json.dumps(out)
    contents = out["request"]["contents"]
    roles = [x["role"] for x in contents]
    assert all(a != b for a, b in itertools.pairwise(roles)), "roles alternate"
    for content in contents:
        assert content["parts"], "no empty turns"
        kinds = [next(iter(p)) for p in content["parts"]]
        if content["role"] == "user":
            firsts = kinds[: kinds.count("functionResponse")]
            assert all(k == "functionResponse" for k in firsts), "tool results lead"
            assert "functionCall" not in kinds and "thought" not in content["parts"]
        else:
            assert "functionResponse" not in kinds
            calls = [p for p in content["parts"] if "functionCall" in p]
            assert content["parts"][len(content["parts"]) - len(calls) :] == calls, "calls last"
            for part in calls:
                if model.family == "gemini":
                    assert part["thoughtSignature"] in ("known", SKIP_SIGNATURE)
                    assert "id" not in part["functionCall"]
                else:
                    assert "thoughtSignature" not in part and part["functionCall"]["id"]
        for part in content["parts"]:
            if part.get("thought"):
                assert part["thoughtSignature"], "only signed thinking is replayed"
                assert "." not in part["thoughtSignature"], "the upstream's own signature"
                assert part["thoughtSignature"] == (SIG if model.family == "claude"
                                                    else GEMINI_SIG), "never another family's"
            if "text" in part and not part.get("thought"):
                assert part["text"].strip()
    config = out["request"]["generationConfig"]
    assert 1 <= config["maxOutputTokens"] <= model.max_output_tokens
    budget = config.get("thinkingConfig", {})
    budget = budget.get("thinking_budget", budget.get("thinkingBudget"))
    if budget is not None:
        assert 0 <= budget < config["maxOutputTokens"]


def test_history_tools_are_declared_uncallable_when_no_tools_are_sent() -> None:
    request = c.ChatRequest(model=CLAUDE.id, messages=tool_loop(), max_tokens=10)
    inner = body(request, CLAUDE)["request"]
    [declaration] = inner["tools"][0]["functionDeclarations"]
    assert declaration["name"] == "get_weather"
    assert declaration["parameters"]["type"] == "object"
    assert inner["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}


def test_plain_text_documents_travel_as_text() -> None:
    text = base64.b64encode("Ünïcode notes".encode()).decode()
    request = c.ChatRequest(
        model=CLAUDE.id,
        messages=(
            user(c.DocumentBlock("text/plain", text), c.DocumentBlock("text/plain", "%%%")),
        ),
        max_tokens=10,
    )
    parts = body(request, CLAUDE)["request"]["contents"][0]["parts"]
    assert parts == [
        {"text": "Ünïcode notes"},
        {"inlineData": {"mimeType": "text/plain", "data": "%%%"}},  # not base64: left as is
    ]
