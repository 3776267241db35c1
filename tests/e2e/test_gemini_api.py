"""The Gemini API face with its real client over sockets: the google-genai SDK (generate,
stream, a function-calling round trip with thought signatures, JSON schema output,
count_tokens, models.list/get, errors), plus what the SDK never sends but the API serves
(the JSON-array stream, the /v1 aliases, `?key=`).

The SDK parses every answer with its own pydantic types, so a field of the wrong shape
fails the test; thought signatures are bytes there, so they must be valid base64.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import trio
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.support import RunningGateway, generation_requests
from tests.support import in_thread as call
from tests.support import raw_request as raw

GEMINI = "gemini-3-flash"
GEMINI_SIGNING = "gemini-3.1-pro-high"  # signs its function calls: replays need the signature
CLAUDE = "claude-sonnet-4-6"
CLAUDE_THINKING = "claude-opus-4-6-thinking"
WEATHER = types.FunctionDeclaration(
    name="get_weather", description="Current weather for a city",
    parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]},
)


def client_for(gateway: RunningGateway, key: str = "test") -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(
        base_url=gateway.url, timeout=30_000, retry_options=types.HttpRetryOptions(attempts=1)))




async def test_generate_text(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    response = await call(lambda: client.models.generate_content(
        model=GEMINI, contents="hi",
        config=types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=300,
                                           temperature=0.3)))
    assert response.text == "Echo: hi"
    assert response.candidates and response.candidates[0].finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage is not None and usage.prompt_token_count and usage.candidates_token_count
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count + (
        usage.thoughts_token_count or 0)
    assert response.model_version and response.response_id
    # what went upstream: the system instruction, the sampling settings
    inner = generation_requests(gateway.emulator)[-1]["request"]
    assert inner["systemInstruction"]["parts"][-1] == {"text": "Be brief."}
    assert inner["generationConfig"]["temperature"] == 0.3


@pytest.mark.parametrize("model", [GEMINI, CLAUDE])
async def test_stream(gateway: RunningGateway, model: str) -> None:
    client = client_for(gateway)

    def run() -> list[types.GenerateContentResponse]:
        return list(client.models.generate_content_stream(model=model,
                                                          contents="Stream to me"))

    chunks = await call(run)
    assert len(chunks) > 2
    assert "".join(chunk.text or "" for chunk in chunks) == "Echo: Stream to me"
    assert chunks[-1].candidates and chunks[-1].candidates[0].finish_reason == (
        types.FinishReason.STOP)
    assert chunks[-1].usage_metadata and chunks[-1].usage_metadata.total_token_count


async def test_thoughts_are_shown_when_asked(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    config = types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(include_thoughts=True))
    for model in (GEMINI, CLAUDE_THINKING):
        response = await call(lambda m=model: client.models.generate_content(  # type: ignore[misc]
            model=m, contents="Think about it", config=config))
        assert response.candidates and response.candidates[0].content
        parts = response.candidates[0].content.parts or []
        thoughts = [p for p in parts if p.thought]
        assert thoughts and thoughts[0].text, model
        assert thoughts[-1].thought_signature, "the thought's signature reaches the client"
        assert response.text == "Echo: Think about it"
    hidden = await call(lambda: client.models.generate_content(model=GEMINI, contents="Quiet"))
    assert hidden.candidates and hidden.candidates[0].content
    assert not any(p.thought for p in hidden.candidates[0].content.parts or [])


@pytest.mark.parametrize("model", [GEMINI_SIGNING, CLAUDE_THINKING])
async def test_function_calling_round_trip_keeps_signatures(
    start_gateway: Callable[..., Any], model: str
) -> None:
    """The model's turn goes back as the SDK holds it (signatures decoded to bytes and
    encoded again): the upstream must see its own signatures, even through another gateway
    process, which has none of them in its cache."""
    gateway = await start_gateway()
    client = client_for(gateway)
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER])],
        thinking_config=types.ThinkingConfig(include_thoughts=True),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    question = types.Content(role="user", parts=[types.Part(text="Use get_weather for Paris")])
    first = await call(lambda: client.models.generate_content(
        model=model, contents=[question], config=config))
    assert first.function_calls, first.text
    call_part = first.function_calls[0]
    assert call_part.name == "get_weather" and call_part.args == {"city": "Paris"}
    assert first.candidates and first.candidates[0].content
    model_turn = first.candidates[0].content
    other = await start_gateway()
    client = client_for(other)
    answer = types.Content(role="user", parts=[types.Part.from_function_response(
        name="get_weather", response={"output": "sunny, 21 C"})])
    second = await call(lambda: client.models.generate_content(
        model=model, contents=[question, model_turn, answer], config=config))
    assert second.text and "sunny, 21 C" in second.text
    assert len(other.services.signatures) == 0 or model != GEMINI_SIGNING
    replayed = generation_requests(other.emulator)[-1]["request"]["contents"][1]["parts"]
    calls = [p for p in replayed if "functionCall" in p]
    if model == GEMINI_SIGNING:
        assert calls[0]["thoughtSignature"] != "skip_thought_signature_validator"
    else:
        assert replayed[0]["thought"] is True and replayed[0]["thoughtSignature"]


async def test_automatic_function_calling(gateway: RunningGateway) -> None:
    client = client_for(gateway)

    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"rain in {city}"

    response = await call(lambda: client.models.generate_content(
        model=CLAUDE, contents="What is the weather in Oslo? Use get_weather.",
        config=types.GenerateContentConfig(tools=[get_weather])))
    assert response.text and "returned" in response.text and "rain in " in response.text
    history = response.automatic_function_calling_history or []
    assert [h.role for h in history] == ["user", "model", "user"]


async def test_json_schema_output(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"]}
    for model in (GEMINI, CLAUDE):
        response = await call(lambda m=model: client.models.generate_content(  # type: ignore[misc]
            model=m, contents="Give me a city", config=types.GenerateContentConfig(
                response_mime_type="application/json", response_json_schema=schema)))
        data = json.loads(response.text or "")
        assert set(data) == {"city", "population"}, model


async def test_count_tokens_and_models(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    before = len(gateway.emulator.state.received)
    counted = await call(lambda: client.models.count_tokens(model=GEMINI,
                                                            contents="hello world"))
    assert counted.total_tokens and counted.total_tokens > 0
    assert len(gateway.emulator.state.received) == before, "a local estimate"
    models = await call(lambda: list(client.models.list()))
    names = [m.name for m in models]
    assert f"models/{GEMINI}" in names and f"models/{CLAUDE}" in names
    one = await call(lambda: client.models.get(model=GEMINI))
    assert one.name == f"models/{GEMINI}" and one.output_token_limit
    assert "generateContent" in (one.supported_actions or [])


async def test_errors_come_in_google_shape(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    with pytest.raises(genai_errors.ClientError) as caught:
        await call(lambda: client.models.generate_content(model="no-such-model", contents="x"))
    assert caught.value.code == 404 and caught.value.status == "NOT_FOUND"
    with pytest.raises(genai_errors.ClientError) as caught:
        await call(lambda: client.models.generate_content(
            model=GEMINI, contents="x", config=types.GenerateContentConfig(
                tools=[types.Tool(google_search=types.GoogleSearch())])))
    assert caught.value.code == 400 and "built-in" in (caught.value.message or "")
    response = await raw(gateway, "POST", f"/v1beta/models/{GEMINI}:generateContent",
                         content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"code", "message", "status"}
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    response = await raw(gateway, "POST", f"/v1beta/models/{GEMINI}:embedContent", json={})
    assert response.status_code == 404 and response.json()["error"]["status"] == "NOT_FOUND"
    response = await raw(gateway, "GET", f"/v1beta/models/{GEMINI}:generateContent")
    assert response.status_code == 405 and response.json()["error"]["code"] == 405


async def test_json_array_stream_and_v1_aliases(gateway: RunningGateway) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "Array please"}]}]}
    response = await raw(gateway, "POST", f"/v1/models/{CLAUDE}:streamGenerateContent",
                         json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    chunks = json.loads(response.content)
    assert "".join(p["text"] for ch in chunks for p in ch["candidates"][0]["content"]["parts"]
                   ) == "Echo: Array please"
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    # GET /v1/models: OpenAI's list for OpenAI clients, Gemini's for Google's
    openai_list = (await raw(gateway, "GET", "/v1/models")).json()
    assert openai_list["object"] == "list"
    gemini_list = (await raw(gateway, "GET", "/v1/models",
                             headers={"x-goog-api-key": "k"})).json()
    assert "models" in gemini_list and gemini_list["models"][0]["name"].startswith("models/")
    one = (await raw(gateway, "GET", f"/v1/models/{GEMINI}", params={"key": "k"})).json()
    assert one["name"] == f"models/{GEMINI}"


async def test_api_key_as_header_or_query(start_gateway: Callable[..., Any]) -> None:
    gateway = await start_gateway(server={"api_keys": ("s3cret-key",)})
    path = f"/v1beta/models/{GEMINI}:generateContent"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    refused = await raw(gateway, "POST", path, json=body)
    assert refused.status_code == 401
    assert refused.json()["error"]["status"] == "UNAUTHENTICATED"
    assert "x-goog-api-key" in refused.json()["error"]["message"]
    wrong = await raw(gateway, "POST", path, json=body, params={"key": "nope"})
    assert wrong.status_code == 401
    by_query = await raw(gateway, "POST", path, json=body, params={"key": "s3cret-key"})
    assert by_query.status_code == 200
    client = client_for(gateway, "s3cret-key")  # held: the SDK closes its transport on del
    response = await call(lambda: client.models.generate_content(model=GEMINI, contents="hi"))
    assert response.text == "Echo: hi"


async def test_safety_settings_reach_gemini_models_only(gateway: RunningGateway) -> None:
    client = client_for(gateway)
    setting = types.SafetySetting(category=types.HarmCategory.HARM_CATEGORY_HARASSMENT,
                                  threshold=types.HarmBlockThreshold.BLOCK_ONLY_HIGH)
    config = types.GenerateContentConfig(safety_settings=[setting])
    for model in (GEMINI, CLAUDE):
        await call(lambda m=model: client.models.generate_content(  # type: ignore[misc]
            model=m, contents="hi", config=config))
        sent = generation_requests(gateway.emulator)[-1]["request"].get("safetySettings")
        expected = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]
        assert sent == (expected if model == GEMINI else None), model
    # a value the upstream does not know is its 400, in Google's shape
    response = await raw(gateway, "POST", f"/v1beta/models/{GEMINI}:generateContent", json={
        "contents": [{"parts": [{"text": "hi"}]}],
        "safetySettings": [{"category": "HARASSMENT", "threshold": "BLOCK_NONE"}]})
    assert response.status_code == 400
    assert "safety_settings[0].category" in response.json()["error"]["message"]


async def test_declarations_count_toward_the_tool_limit(gateway: RunningGateway) -> None:
    limit = gateway.config.server.max_tools
    declarations = [{"name": f"f{i}"} for i in range(limit + 1)]
    with trio.fail_after(5):  # refused before any per-declaration work
        response = await raw(gateway, "POST", f"/v1beta/models/{GEMINI}:generateContent", json={
            "contents": [{"parts": [{"text": "hi"}]}],
            "tools": [{"functionDeclarations": declarations}]})
    assert response.status_code == 400
    assert "server.max_tools" in response.json()["error"]["message"]
