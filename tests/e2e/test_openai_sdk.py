"""The official `openai` SDK against the gateway against the emulator, all over sockets.

Every response is validated by the SDK's own pydantic types as it parses them; the tests
also check the fields the types leave optional.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import openai
import pytest
import trio

from gateway.emulator import Fault
from tests.e2e.test_anthropic_sdk import PNG
from tests.support import RunningGateway, generation_requests

T = TypeVar("T")

GEMINI = "gemini-3-flash"
CLAUDE = "claude-sonnet-4-6"
CLAUDE_THINKING = "claude-opus-4-6-thinking"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def client_for(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="test", max_retries=0, timeout=30)


async def call(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


async def test_text_non_streaming(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    completion = await call(lambda: client.chat.completions.create(
        model=GEMINI,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hello there"}],
    ))
    assert completion.object == "chat.completion"
    assert completion.model == GEMINI
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.message.tool_calls is None
    assert completion.usage is not None
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


async def test_streaming_with_usage(gateway: RunningGateway) -> None:
    client = client_for(gateway)

    def run() -> list[Any]:
        stream = client.chat.completions.create(
            model=CLAUDE, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Stream please"}],
        )
        return list(stream)

    chunks = await call(run)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_ends_with_done(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient() as http, http.stream(
        "POST", f"{gateway.url}/v1/chat/completions",
        json={"model": GEMINI, "stream": True, "messages": [{"role": "user", "content": "x"}]},
    ) as response:
        body = b"".join([chunk async for chunk in response.aiter_bytes()]).decode()
    assert response.headers["content-type"].startswith("text/event-stream")
    assert body.rstrip().endswith("data: [DONE]")


async def test_tools_round_trip(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Use the get_weather tool for Paris."}
    ]
    first = await call(lambda: client.chat.completions.create(
        model=GEMINI, messages=messages, tools=[WEATHER]))  # type: ignore[arg-type]
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    tool_call = choice.message.tool_calls[0]
    assert tool_call.function.name == "get_weather"
    assert "city" in json.loads(tool_call.function.arguments)
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": tool_call.id, "content": '{"temp_c": 19}'},
    ]
    second = await call(lambda: client.chat.completions.create(
        model=GEMINI, messages=messages, tools=[WEATHER]))  # type: ignore[arg-type]
    assert second.choices[0].finish_reason == "stop"
    assert "get_weather" in (second.choices[0].message.content or "")


async def test_streamed_tool_calls(gateway: RunningGateway) -> None:
    client = client_for(gateway)

    def run() -> list[Any]:
        return list(client.chat.completions.create(
            model=CLAUDE, stream=True, tools=[WEATHER], tool_choice="required",  # type: ignore[list-item]
            messages=[{"role": "user", "content": "Weather in Lima?"}],
        ))

    chunks = await call(run)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].index == 0 and calls[0].id and calls[0].function.name == "get_weather"
    arguments = "".join(tc.function.arguments or "" for tc in calls)
    assert json.loads(arguments)["city"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_json_mode(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    completion = await call(lambda: client.chat.completions.create(
        model=GEMINI, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give me JSON"}],
    ))
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)
    sent = generation_requests(gateway.emulator)[-1]
    assert sent["request"]["generationConfig"]["responseMimeType"] == "application/json"


async def test_json_schema_mode(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    schema = {"type": "object", "properties": {"name": {"type": "string"}},
              "required": ["name"], "additionalProperties": False}
    completion = await call(lambda: client.chat.completions.create(
        model=GEMINI,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": schema, "strict": True}},
        messages=[{"role": "user", "content": "A person"}],
    ))
    assert "name" in json.loads(completion.choices[0].message.content or "")


async def test_reasoning_content(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    completion = await call(lambda: client.chat.completions.create(
        model=CLAUDE_THINKING, reasoning_effort="low",
        messages=[{"role": "user", "content": "Think about it"}],
    ))
    message = completion.choices[0].message
    assert getattr(message, "reasoning_content", None)
    assert completion.usage is not None
    details = completion.usage.completion_tokens_details
    assert details is not None and (details.reasoning_tokens or 0) > 0


async def test_image_data_url(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    completion = await call(lambda: client.chat.completions.create(
        model=GEMINI,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "Describe"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ]}],
    ))
    assert "1 image" in (completion.choices[0].message.content or "")


async def test_remote_image_url_refused_by_default(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    with pytest.raises(openai.BadRequestError) as info:
        await call(lambda: client.chat.completions.create(
            model=GEMINI,
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://169.254.169.254/x.png"}},
            ]}],
        ))
    assert info.value.body["type"] == "invalid_request_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": GEMINI, "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
        ({"model": GEMINI}, 400, "messages"),
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"model": GEMINI, "messages": [{"role": "wizard", "content": "x"}]}, 400, None),
    ],
)
async def test_bad_input_gets_openai_errors(
    gateway: RunningGateway, body: dict[str, Any], status: int, param: str | None
) -> None:
    # raw HTTP: the SDK itself refuses some of these bodies before sending them
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{gateway.url}/v1/chat/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert isinstance(error, dict)
    assert set(error) >= {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] and param in error["param"]


async def test_invalid_json_body(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{gateway.url}/v1/chat/completions", content=b"{oops",
                                   headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_rate_limit_in_openai_format(gateway: RunningGateway) -> None:
    gateway.emulator.state.add_fault(
        Fault(kind="rate_limit", reset_format="quota_reset_delay", reset_seconds=7200)
    )
    client = client_for(gateway)
    with pytest.raises(openai.RateLimitError) as info:
        await call(lambda: client.chat.completions.create(
            model=GEMINI, messages=[{"role": "user", "content": "x"}]))
    assert info.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert int(info.value.response.headers["retry-after"]) > 3600
