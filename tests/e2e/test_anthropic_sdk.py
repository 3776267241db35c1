"""The official `anthropic` SDK against the gateway against the emulator, all over sockets."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any, TypeVar

import anthropic
import httpx
import pytest
import trio

from gateway.emulator import Fault
from tests.support import RunningEmulator, RunningGateway, generation_requests

T = TypeVar("T")

CLAUDE = "claude-sonnet-4-6"
CLAUDE_THINKING = "claude-opus-4-6-thinking"
GEMINI = "gemini-3-flash"
GEMINI_THINKING = "gemini-3.1-pro-high"

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
}

# 1x1 transparent PNG
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082"
    )
).decode()


def client_for(gateway: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="test", max_retries=0, timeout=30)


async def call(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


async def test_text_non_streaming(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    message = await call(
        lambda: client.messages.create(
            model=CLAUDE,
            max_tokens=256,
            system="You are terse.",
            messages=[{"role": "user", "content": "Hello there"}],
        )
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == CLAUDE
    assert message.stop_reason == "end_turn"
    assert message.content and message.content[0].type == "text"
    assert message.content[0].text
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0
    assert message.id.startswith("msg_")


async def test_text_streaming_matches_event_grammar(gateway: RunningGateway) -> None:
    client = client_for(gateway)

    def run() -> tuple[list[str], str, Any, int]:
        names: list[str] = []
        start_input_tokens = -1
        with client.messages.stream(
            model=GEMINI, max_tokens=256, messages=[{"role": "user", "content": "Stream please"}]
        ) as stream:
            text = ""
            for event in stream:
                names.append(event.type)
                if event.type == "message_start":
                    start_input_tokens = event.message.usage.input_tokens
                if event.type == "text":
                    text += event.text
            return names, text, stream.get_final_message(), start_input_tokens

    names, text, final, start_input_tokens = await call(run)
    assert start_input_tokens > 0  # message_start already reports the prompt's size
    assert names[0] == "message_start"
    assert names[-1] == "message_stop"
    assert "content_block_start" in names and "content_block_delta" in names
    assert names.count("content_block_start") == names.count("content_block_stop")
    assert text and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


async def test_tool_use_round_trip(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Use the get_weather tool for Paris, please."}
    ]
    first = await call(
        lambda: client.messages.create(
            model=CLAUDE, max_tokens=512, tools=[WEATHER_TOOL], messages=messages
        )
    )
    assert first.stop_reason == "tool_use"
    tool_use = next(b for b in first.content if b.type == "tool_use")
    assert tool_use.name == "get_weather"
    assert isinstance(tool_use.input, dict) and "city" in tool_use.input
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": tool_use.id,
                    "content": [{"type": "text", "text": '{"temp_c": 21}'}],
                }
            ],
        },
    ]
    second = await call(
        lambda: client.messages.create(
            model=CLAUDE, max_tokens=512, tools=[WEATHER_TOOL], messages=messages
        )
    )
    assert second.stop_reason == "end_turn"
    assert "get_weather" in second.content[0].text
    sent = gateway_requests(gateway)[-1]
    parts = [p for c in sent["request"]["contents"] for p in c["parts"]]
    assert any("functionResponse" in p for p in parts)


async def test_tool_use_streaming_input_json(gateway: RunningGateway) -> None:
    client = client_for(gateway)

    def run() -> Any:
        with client.messages.stream(
            model=GEMINI,
            max_tokens=512,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "tool", "name": "get_weather"},
            messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
        ) as stream:
            return stream.get_final_message()

    final = await call(run)
    assert final.stop_reason == "tool_use"
    tool_use = next(b for b in final.content if b.type == "tool_use")
    assert tool_use.input.get("city")


async def test_thinking_signatures_across_turns(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    thinking = {"type": "enabled", "budget_tokens": 2048}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Think, then use the tool."}]

    def stream_turn() -> Any:
        with client.messages.stream(
            model=CLAUDE_THINKING,
            max_tokens=4096,
            thinking=thinking,  # type: ignore[arg-type]
            tools=[WEATHER_TOOL],
            messages=messages,  # type: ignore[arg-type]
        ) as stream:
            return stream.get_final_message()

    first = await call(stream_turn)
    kinds = [b.type for b in first.content]
    assert kinds[0] == "thinking"
    assert first.content[0].signature
    assert first.content[0].thinking
    tool_use = next(b for b in first.content if b.type == "tool_use")
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}
        ]},
    ]
    second = await call(stream_turn)  # the emulator checks the signature came back intact
    assert second.stop_reason == "end_turn"

    # A signature the upstream never issued (a history from another provider) is refused
    # upstream; the gateway replays the conversation without the thoughts instead of failing.
    forged = json.loads(json.dumps(messages))
    forged[1]["content"][0]["signature"] = "forged" * 20
    messages[:] = forged
    before = len(gateway_requests(gateway))
    third = await call(stream_turn)
    assert third.stop_reason == "end_turn"
    refused, replayed = gateway_requests(gateway)[before:]

    def thoughts(body: dict[str, Any]) -> list[Any]:
        return [p for content in body["request"]["contents"] for p in content["parts"]
                if p.get("thought")]

    assert thoughts(refused) and not thoughts(replayed)


async def test_gemini_thinking_tool_signature_kept_by_gateway(gateway: RunningGateway) -> None:
    """Gemini signs function calls; clients cannot carry that, the gateway remembers it."""
    client = client_for(gateway)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Use the tool for Rome."}]
    first = await call(
        lambda: client.messages.create(
            model=GEMINI_THINKING, max_tokens=2048, tools=[WEATHER_TOOL], messages=messages
        )
    )
    tool_use = next(b for b in first.content if b.type == "tool_use")
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_use.id, "content": "cloudy"}
        ]},
    ]
    second = await call(
        lambda: client.messages.create(
            model=GEMINI_THINKING, max_tokens=2048, tools=[WEATHER_TOOL], messages=messages
        )
    )
    assert second.stop_reason == "end_turn"
    sent = gateway_requests(gateway)[-1]
    calls = [p for c in sent["request"]["contents"] for p in c["parts"] if "functionCall" in p]
    assert calls and calls[0].get("thoughtSignature")
    assert calls[0]["thoughtSignature"] != "skip_thought_signature_validator"


async def test_clearing_a_gemini_calls_input_drops_its_stale_signature(
    gateway: RunningGateway,
) -> None:
    """context_management's clear_tool_inputs on a Gemini tool loop: the signature the
    gateway kept was over the old input, so the cleared call goes with Google's sentinel."""
    client = client_for(gateway)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Use the tool for Rome."}]
    first = await call(lambda: client.messages.create(
        model=GEMINI_THINKING, max_tokens=2048, tools=[WEATHER_TOOL], messages=messages))
    tool_use = next(b for b in first.content if b.type == "tool_use")
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_use.id, "content": "cloudy"}]},
    ]
    edit = {"type": "clear_tool_uses_20250919", "trigger": {"type": "input_tokens", "value": 0},
            "keep": {"type": "tool_uses", "value": 0}, "clear_tool_inputs": True}
    for _ in range(2):  # the same edit on every turn, as clients send it
        second = await call(lambda: client.messages.create(
            model=GEMINI_THINKING, max_tokens=2048, tools=[WEATHER_TOOL], messages=messages,
            extra_body={"context_management": {"edits": [edit]}}))
        assert second.stop_reason == "end_turn"
    [cleared] = [p for c in gateway_requests(gateway)[-1]["request"]["contents"]
                 for p in c["parts"] if "functionCall" in p]
    assert cleared["functionCall"]["args"] == {}
    assert cleared["thoughtSignature"] == "skip_thought_signature_validator"


async def test_switching_model_families_mid_conversation(gateway: RunningGateway) -> None:
    """Gemini, then Claude, then Gemini again, thinking all along and in a tool loop: each
    family's thoughts go back only to that family (the strict emulator refuses foreign
    signatures), at the first try, not after a refusal."""
    client = client_for(gateway)
    thinking = {"type": "adaptive"}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Hello Gemini."}]

    def turn(model: str) -> Any:
        before = len(gateway_requests(gateway))
        with client.messages.stream(
            model=model, max_tokens=4096, thinking=thinking,  # type: ignore[arg-type]
            tools=[WEATHER_TOOL], messages=messages,  # type: ignore[arg-type]
        ) as stream:
            message = stream.get_final_message()
        assert len(gateway_requests(gateway)) == before + 1  # no refusal, no replay
        messages.append({"role": "assistant", "content": [b.model_dump() for b in message.content]})
        return message

    hello = await call(lambda: turn("gemini-3-flash"))
    thought = next(b for b in hello.content if b.type == "thinking")
    assert thought.signature.startswith("gemini.")  # tagged with the family that signed it
    messages.append({"role": "user", "content": "Use the tool for Rome."})
    gemini = await call(lambda: turn("gemini-3-flash"))
    tool_use = next(b for b in gemini.content if b.type == "tool_use")
    messages.append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": tool_use.id, "content": "cloudy"}]})
    claude = await call(lambda: turn(CLAUDE_THINKING))  # continues Gemini's tool loop
    assert claude.stop_reason == "end_turn"
    sent = gateway_requests(gateway)[-1]
    assert not [p for c in sent["request"]["contents"] for p in c["parts"] if p.get("thought")]
    messages.append({"role": "user", "content": "And now think about Paris."})
    claude_thinks = await call(lambda: turn(CLAUDE_THINKING))
    assert next(b for b in claude_thinks.content if b.type == "thinking").signature.startswith(
        "claude.")
    messages.append({"role": "user", "content": "Back to Gemini."})
    await call(lambda: turn("gemini-3.1-pro-low"))
    replayed = [p for c in gateway_requests(gateway)[-1]["request"]["contents"]
                for p in c["parts"] if p.get("thought")]
    assert len(replayed) == 1  # Gemini's own thought only; Claude's stayed out


async def test_image_input(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    message = await call(
        lambda: client.messages.create(
            model=CLAUDE,
            max_tokens=256,
            messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}},
                {"type": "text", "text": "What is in this picture?"},
            ]}],
        )
    )
    assert "1 image" in message.content[0].text
    sent = gateway_requests(gateway)[-1]
    parts = [p for c in sent["request"]["contents"] for p in c["parts"]]
    assert any(p.get("inlineData", {}).get("mimeType") == "image/png" for p in parts)


async def test_count_tokens_is_local(gateway: RunningGateway, emulator: RunningEmulator) -> None:
    client = client_for(gateway)
    before = len(generation_requests(emulator))
    short = await call(lambda: client.messages.count_tokens(
        model=CLAUDE, messages=[{"role": "user", "content": "hi"}]))
    long = await call(lambda: client.messages.count_tokens(
        model=CLAUDE, messages=[{"role": "user", "content": "hello world " * 200}]))
    assert 0 < short.input_tokens < long.input_tokens
    assert len(generation_requests(emulator)) == before


async def test_models_list(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    page = await call(lambda: client.models.list())
    ids = [m.id for m in page.data]
    assert CLAUDE in ids and GEMINI in ids


@pytest.mark.parametrize(
    ("body", "status", "kind", "needle"),
    [
        (b"{not json", 400, "invalid_request_error", "JSON"),
        (b'{"model": "claude-sonnet-4-6", "messages": []}', 400, "invalid_request_error",
         "max_tokens"),
        (b'{"model": "claude-sonnet-4-6", "max_tokens": "ten", "messages": '
         b'[{"role": "user", "content": "x"}]}', 400, "invalid_request_error", "max_tokens"),
        (b'{"model": "no-such-model", "max_tokens": 10, "messages": '
         b'[{"role": "user", "content": "x"}]}', 404, "not_found_error", "no-such-model"),
        (b"[1, 2]", 400, "invalid_request_error", "object"),
    ],
)
async def test_bad_input_gets_anthropic_errors(
    gateway: RunningGateway, body: bytes, status: int, kind: str, needle: str
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway.url}/v1/messages", content=body,
            headers={"content-type": "application/json"},
        )
    assert response.status_code == status
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == kind
    assert needle in error["error"]["message"]


async def test_oversize_body_is_413(start_gateway: Callable[..., Any]) -> None:
    gateway = await start_gateway(server={"max_body_bytes": 1000})
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{gateway.url}/v1/messages", content=b"x" * 5000,
                                   headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


@pytest.mark.parametrize(
    ("fault", "status", "kind", "sdk_error"),
    [
        (Fault(kind="rate_limit", reset_format="retry_info", reset_seconds=3600), 429,
         "rate_limit_error", anthropic.RateLimitError),
        (Fault(kind="unavailable"), 529, "overloaded_error", anthropic.InternalServerError),
        (Fault(kind="server_error"), 500, "api_error", anthropic.InternalServerError),
        (Fault(kind="unauthorized"), 401, "authentication_error", anthropic.AuthenticationError),
    ],
)
async def test_upstream_failures_map_to_anthropic_errors(
    gateway: RunningGateway, emulator: RunningEmulator, fault: Fault, status: int, kind: str,
    sdk_error: type[Exception],
) -> None:
    emulator.state.add_fault(fault)  # every account, every model, until cleared
    client = client_for(gateway)
    with pytest.raises(sdk_error) as info:
        await call(lambda: client.messages.create(
            model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "hi"}]))
    error = info.value
    assert getattr(error, "status_code", None) == status
    assert error.body["error"]["type"] == kind  # type: ignore[attr-defined]
    if status == 429:
        assert int(error.response.headers["retry-after"]) > 0  # type: ignore[attr-defined]


def gateway_requests(gateway: RunningGateway) -> list[dict[str, Any]]:
    return generation_requests(gateway.emulator)
