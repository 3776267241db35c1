"""The emulator over a real loopback socket: OAuth, project discovery, quotas, generation
(text, thinking and signatures, tools, JSON mode, limits), every fault, stream accounting
and the control surface."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio

from gateway.accounts.oauth import discover_project
from gateway.config import UpstreamConfig
from gateway.emulator import (
    DEMO_ACCOUNTS,
    EMULATOR_CLIENT_ID,
    EMULATOR_CLIENT_SECRET,
    EmulatorState,
    Fault,
)
from gateway.emulator.catalogue import BY_ID, VERSION_REFUSAL
from gateway.emulator.content import SKIP_SIGNATURE
from gateway.upstream.client import CloudCodeClient
from gateway.upstream.ratelimit import is_quota_exhausted, reset_seconds
from gateway.upstream.sse import SSEParser
from tests.support import RunningEmulator

DEMO1 = DEMO_ACCOUNTS[0]
STREAM = "/v1internal:streamGenerateContent?alt=sse"
UNARY = "/v1internal:generateContent"
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer"},
            "hourly": {"type": "boolean"},
        },
        "required": ["city", "unit", "days", "hourly"],
    },
}
CLIENT = {"client_id": EMULATOR_CLIENT_ID, "client_secret": EMULATOR_CLIENT_SECRET}
AGENT = "antigravity/hub/2.9.1 darwin/arm64"


@asynccontextmanager
async def client(emulator: RunningEmulator, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.url, timeout=10, **kwargs) as http:
        yield http


async def token_for(http: httpx.AsyncClient, refresh_token: str = DEMO1.refresh_token) -> str:
    response = await http.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token, **CLIENT}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def envelope(
    text: str = "hello",
    *,
    model: str = "gemini-3-flash",
    project: str = DEMO1.project,
    contents: list[dict[str, Any]] | None = None,
    agent: str | None = None,
    **request: Any,
) -> dict[str, Any]:
    """A generation body; `agent` (a User-Agent) travels with it to the helpers below."""
    inner = {"contents": contents or [{"role": "user", "parts": [{"text": text}]}], **request}
    body = {"project": project, "model": model, "request": inner, "userAgent": "antigravity",
            "requestType": "agent", "requestId": "req-1"}
    if agent is not None:
        body["agent"] = agent
    return body


def _send(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The body to put on the wire, and the User-Agent to send it with."""
    body = dict(body)
    return body, body.pop("agent", AGENT)


async def stream(
    http: httpx.AsyncClient, token: str, body: dict[str, Any]
) -> tuple[int, list[dict[str, Any]]]:
    """Status and the decoded `response` objects of one streamed call."""
    parser = SSEParser()
    payloads: list[dict[str, Any]] = []
    body, agent = _send(body)
    async with http.stream("POST", STREAM, json=body, headers=bearer(token, agent)) as response:
        if response.status_code != 200:
            return response.status_code, [json.loads(await response.aread())]
        async for chunk in response.aiter_raw():
            for event in parser.feed(chunk):
                payloads.append(json.loads(event.data))
    assert all(set(p) == {"response", "traceId"} for p in payloads)
    return 200, [p["response"] for p in payloads]


async def unary(http: httpx.AsyncClient, token: str, body: dict[str, Any]) -> httpx.Response:
    body, agent = _send(body)
    return await http.post(UNARY, json=body, headers=bearer(token, agent))


def bearer(token: str, agent: str = AGENT) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "user-agent": agent}


def parts(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(p.get("text", "") for p in parts(chunks) if not p.get("thought"))


# -- OAuth ----------------------------------------------------------------------------------


async def test_refresh_grant_issues_expiring_tokens(emulator: RunningEmulator) -> None:
    async with client(emulator) as http:
        response = await http.post("/token", data={
            "grant_type": "refresh_token", "refresh_token": DEMO1.refresh_token, **CLIENT})
        grant = response.json()
        assert grant["token_type"] == "Bearer" and grant["expires_in"] == 3600
        assert grant["access_token"].startswith("ya29.")
        assert emulator.state.email_for_access_token(grant["access_token"]) == DEMO1.email
        info = await http.get("/oauth2/v1/userinfo", params={"alt": "json"},
                              headers=bearer(grant["access_token"]))
        assert info.json()["email"] == DEMO1.email and info.json()["verified_email"] is True
        emulator.state.expire_access_tokens(DEMO1.email)
        expired = await unary(http, grant["access_token"], envelope())
        assert expired.status_code == 401
        assert expired.json()["error"]["status"] == "UNAUTHENTICATED"
        unknown = await unary(http, "ya29.nope", envelope())
        assert unknown.status_code == 401


async def test_token_endpoint_errors(emulator: RunningEmulator) -> None:
    async with client(emulator) as http:
        form = {"grant_type": "refresh_token", "refresh_token": DEMO1.refresh_token}
        bad_client = await http.post("/token", data={**form, **CLIENT, "client_secret": "x"})
        assert bad_client.status_code == 401 and bad_client.json()["error"] == "invalid_client"
        unknown = await http.post("/token", data={**form, **CLIENT, "refresh_token": "nope"})
        assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_grant"
        emulator.state.add_fault(Fault(kind="invalid_grant", account=DEMO1.email, times=1))
        faulted = await http.post("/token", data={**form, **CLIENT})
        assert faulted.json() == {
            "error": "invalid_grant", "error_description": "Token has been expired or revoked."}
        assert (await http.post("/token", data={**form, **CLIENT})).status_code == 200
        emulator.state.revoke(DEMO1.email)
        assert (await http.post("/token", data={**form, **CLIENT})).status_code == 400
    assert [r.path for r in emulator.state.received].count("/token") == 5


async def test_authorization_code_flow_with_pkce(emulator: RunningEmulator) -> None:
    emulator.state.next_login_email = "alice@example.com"
    verifier = "v" * 64
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    redirect = "http://127.0.0.1:9/oauth-callback"
    async with client(emulator) as http:
        consent = await http.get("/o/oauth2/v2/auth", params={
            "client_id": EMULATOR_CLIENT_ID, "redirect_uri": redirect, "response_type": "code",
            "state": "st8", "code_challenge": challenge, "code_challenge_method": "S256",
            "scope": "email"})
        assert consent.status_code == 302
        location = consent.headers["location"]
        assert location.startswith(redirect + "?")
        query = parse_qs(urlsplit(location).query)
        assert query["state"] == ["st8"]
        form = {"grant_type": "authorization_code", "code": query["code"][0],
                "redirect_uri": redirect, **CLIENT}
        wrong = await http.post("/token", data={**form, "code_verifier": "w" * 64})
        assert wrong.json()["error"] == "invalid_grant"  # and the code is now used up
        consent = await http.get(consent.request.url)
        form["code"] = parse_qs(urlsplit(consent.headers["location"]).query)["code"][0]
        grant = (await http.post("/token", data={**form, "code_verifier": verifier})).json()
        assert grant["refresh_token"] and grant["access_token"]
        again = await http.post("/token", data={**form, "code_verifier": verifier})
        assert again.json()["error"] == "invalid_grant"
        bad = await http.get("/o/oauth2/v2/auth", params={
            "client_id": "other", "redirect_uri": redirect, "response_type": "code",
            "state": "s", "code_challenge": challenge, "code_challenge_method": "S256"})
        assert bad.status_code == 401
        no_pkce = await http.get("/o/oauth2/v2/auth", params={
            "client_id": EMULATOR_CLIENT_ID, "redirect_uri": redirect, "response_type": "code",
            "state": "s"})
        assert no_pkce.status_code == 400
    account = emulator.state.accounts["alice@example.com"]
    assert account.refresh_token == grant["refresh_token"] and account.project is None


async def test_project_discovery_and_onboarding(emulator: RunningEmulator) -> None:
    emulator.state.add_account("new@example.com", "r-new")
    emulator.state.onboard_pending_polls = 1
    async with client(emulator) as http:
        token = await token_for(http)
        known = await http.post("/v1internal:loadCodeAssist",
                                json={"metadata": {"ideType": "ANTIGRAVITY"}},
                                headers=bearer(token))
        assert known.json()["cloudaicompanionProject"] == DEMO1.project
        assert known.json()["currentTier"]["id"] == "standard-tier"
        # the old metadata form (or none) is told the free tier, whatever the account has
        for metadata in ({}, {"ideType": "IDE_UNSPECIFIED", "pluginType": "GEMINI"}):
            wrong = await http.post("/v1internal:loadCodeAssist", json={"metadata": metadata},
                                    headers=bearer(token))
            assert wrong.json()["currentTier"]["id"] == "free-tier"
        token = await token_for(http, "r-new")
        fresh = (await http.post("/v1internal:loadCodeAssist", json={"metadata": {}},
                                 headers=bearer(token))).json()
        assert "cloudaicompanionProject" not in fresh
        assert any(t.get("isDefault") for t in fresh["allowedTiers"])
        cloud = CloudCodeClient(http, UpstreamConfig())
        project, tier = await discover_project(cloud, [emulator.url], token, poll_interval=0.01)
    assert project == emulator.state.accounts["new@example.com"].project
    assert project.startswith("emu-project-") and tier == "free-tier"
    onboards = [r for r in emulator.state.received if r.path.endswith("onboardUser")]
    assert len(onboards) == 2  # one "not done yet", then done


async def test_available_models_with_quota(emulator: RunningEmulator) -> None:
    emulator.state.set_quota(DEMO1.email, "claude-sonnet-4-6", 0.25, "2026-12-01T00:00:00Z")
    emulator.state.set_quota(DEMO1.email, "gemini-3.1-pro-high", 0, "2026-12-01T00:00:00Z")
    async with client(emulator) as http:
        token = await token_for(http)
        response = await http.post("/v1internal:fetchAvailableModels",
                                   json={"project": DEMO1.project}, headers=bearer(token))
    answer = response.json()
    models = answer["models"]
    assert set(models) == set(BY_ID)
    assert models["claude-sonnet-4-6"]["quotaInfo"] == {
        "remainingFraction": 0.25, "resetTime": "2026-12-01T00:00:00Z"}
    # an exhausted model's zero is left out, as the upstream does
    assert models["gemini-3.1-pro-high"]["quotaInfo"] == {"resetTime": "2026-12-01T00:00:00Z"}
    assert models["gemini-3-flash"]["quotaInfo"]["remainingFraction"] == 1.0
    assert models["claude-opus-4-6-thinking"]["maxOutputTokens"] == 64_000
    assert models["gemini-3-flash"]["maxTokens"] == 1_048_576
    assert "displayName" not in models["chat_20706"]  # internal ids come bare
    assert answer["deprecatedModelIds"]["claude-sonnet-4-5"] == {"newModelId": "claude-sonnet-4-6"}


# -- generation -----------------------------------------------------------------------------


async def test_streamed_text_chunks_and_usage(emulator: RunningEmulator) -> None:
    emulator.state.text_chunks = 4
    async with client(emulator) as http:
        token = await token_for(http)
        body = envelope("hello world", generationConfig={"maxOutputTokens": 100},
                        sessionId="s-1")
        status, chunks = await stream(http, token, body)
        assert status == 200 and len(chunks) == 4
        assert text_of(chunks) == "Echo: hello world"
        # earlier chunks report the prompt only; the last adds the output counts
        assert all("candidatesTokenCount" not in c["usageMetadata"] for c in chunks[:-1])
        assert all(c["usageMetadata"]["promptTokenCount"] > 0 for c in chunks[:-1])
        usage = chunks[-1]["usageMetadata"]
        assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
        assert usage["promptTokenCount"] > 0 and usage["candidatesTokenCount"] > 0
        assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage[
            "candidatesTokenCount"]
        assert "cachedContentTokenCount" not in usage
        _, again = await stream(http, token, body)  # same session: the prompt is cached
        assert again[-1]["usageMetadata"]["cachedContentTokenCount"] == usage[
            "promptTokenCount"]
        whole = (await unary(http, token, body)).json()
        assert set(whole) == {"response", "traceId"}
        assert text_of([whole["response"]]) == "Echo: hello world"
    sent = emulator.state.received[-1]
    assert sent.path == UNARY and sent.email == DEMO1.email
    assert sent.model == "gemini-3-flash" and sent.body == body
    assert sent.headers["authorization"].startswith("Bearer ")


async def test_images_tool_results_and_answer_size(emulator: RunningEmulator) -> None:
    image = {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}
    result = {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}
    async with client(emulator) as http:
        token = await token_for(http)
        seen = await unary(http, token, envelope(contents=[
            {"role": "user", "parts": [image, image, {"text": "what?"}]}]))
        assert "I see 2 image(s)" in text_of([seen.json()["response"]])
        tool = await unary(http, token, envelope(contents=[
            {"role": "user", "parts": [{"text": "weather?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}},
                                         "thoughtSignature": SKIP_SIGNATURE}]},
            {"role": "user", "parts": [result]}], tools=[{"functionDeclarations": [WEATHER]}]))
        assert text_of([tool.json()["response"]]) == (
            'Tool get_weather returned: {"result": "sunny"}')
        emulator.state.chunk_chars = 1000
        big = await unary(http, token, envelope())
        assert len(text_of([big.json()["response"]])) == 1000


async def test_stop_sequences_and_max_tokens(emulator: RunningEmulator) -> None:
    async with client(emulator) as http:
        token = await token_for(http)
        _, stopped = await stream(http, token, envelope(
            "one two three", generationConfig={"stopSequences": ["two"]}))
        assert text_of(stopped) == "Echo: one "
        assert stopped[-1]["candidates"][0]["finishReason"] == "STOP"
        _, capped = await stream(http, token, envelope(
            "x" * 100, generationConfig={"maxOutputTokens": 5}))
        assert text_of(capped) == "Echo: xxxxxxxxxxxxxx"
        assert capped[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"


async def test_tool_calls_follow_the_schema(emulator: RunningEmulator) -> None:
    other = {"name": "lookup", "parameters": {"type": "object", "properties": {
        "q": {"type": "string"}}, "required": ["q"]}}
    tools = [{"functionDeclarations": [WEATHER, other]}]
    async with client(emulator) as http:
        token = await token_for(http)
        _, chunks = await stream(http, token, envelope(
            "use get_weather please", model="claude-sonnet-4-6", tools=tools))
        (call,) = [p["functionCall"] for p in parts(chunks)]
        assert call["name"] == "get_weather" and call["id"].startswith("toolu_")
        assert call["args"] == {"city": "Paris", "unit": "celsius", "days": 1, "hourly": True}
        assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
        _, forced = await stream(http, token, envelope("hi", tools=tools, toolConfig={
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}}))
        assert [p["functionCall"]["name"] for p in parts(forced)] == ["lookup"]
        assert "id" not in parts(forced)[0]["functionCall"]  # Gemini calls carry no id
        _, twice = await stream(http, token, envelope("parallel tool calls", tools=tools))
        assert len([p for p in parts(twice) if "functionCall" in p]) == 2
        _, plain = await stream(http, token, envelope("just chat", tools=tools))
        assert text_of(plain) == "Echo: just chat"
        _, never = await stream(http, token, envelope("use a tool", tools=tools, toolConfig={
            "functionCallingConfig": {"mode": "NONE"}}))
        assert not any("functionCall" in p for p in parts(never))


async def test_json_mode(emulator: RunningEmulator) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"},
              "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["name"]}
    async with client(emulator) as http:
        token = await token_for(http)
        _, chunks = await stream(http, token, envelope("a person", generationConfig={
            "responseMimeType": "application/json", "responseSchema": schema}))
        assert json.loads(text_of(chunks)) == {"name": "Paris"}
        _, loose = await stream(http, token, envelope("hi", generationConfig={
            "responseMimeType": "application/json"}))
        assert json.loads(text_of(loose)) == {"echo": "hi"}


async def test_claude_thinking_is_signed_and_checked(emulator: RunningEmulator) -> None:
    thinking = {"include_thoughts": True, "thinking_budget": 1024}
    model = "claude-opus-4-6-thinking"
    tools = [{"functionDeclarations": [WEATHER]}]
    async with client(emulator) as http:
        token = await token_for(http)
        first = envelope("think, then use the tool", model=model, tools=tools,
                         generationConfig={"maxOutputTokens": 4096, "thinkingConfig": thinking})
        _, chunks = await stream(http, token, first)
        thoughts = [p for p in parts(chunks) if p.get("thought")]
        assert len(thoughts) == 2 and "thoughtSignature" not in thoughts[0]
        signature = thoughts[1]["thoughtSignature"]
        assert len(signature) >= 60
        assert chunks[-1]["usageMetadata"]["thoughtsTokenCount"] > 0
        call = next(p for p in parts(chunks) if "functionCall" in p)
        thought_text = "".join(p["text"] for p in thoughts)
        result = {"functionResponse": {"name": "get_weather", "id": call["functionCall"]["id"],
                                       "response": {"result": "sunny"}}}

        def replay(thought: dict[str, Any] | None) -> dict[str, Any]:
            model_parts = ([thought] if thought else []) + [call]
            return envelope(model=model, tools=tools, generationConfig=first["request"][
                "generationConfig"], contents=[
                first["request"]["contents"][0],
                {"role": "model", "parts": model_parts},
                {"role": "user", "parts": [result]}])

        signed = {"text": thought_text, "thought": True, "thoughtSignature": signature}
        ok = await unary(http, token, replay(signed))
        assert ok.status_code == 200, ok.text
        forged = await unary(http, token, replay({**signed, "thoughtSignature": "forged" * 20}))
        assert forged.status_code == 400
        assert "Invalid `signature` in `thinking` block" in forged.json()["error"]["message"]
        edited = await unary(http, token, replay({**signed, "text": "something else"}))
        assert edited.status_code == 400
        unthought = await unary(http, token, replay(None))
        assert unthought.status_code == 400
        assert "Expected `thinking`" in unthought.json()["error"]["message"]


async def test_gemini_3_signs_calls_and_requires_them_back(emulator: RunningEmulator) -> None:
    model = "gemini-3.1-pro-high"
    tools = [{"functionDeclarations": [WEATHER]}]
    async with client(emulator) as http:
        token = await token_for(http)
        _, chunks = await stream(http, token, envelope(
            "use the tool", model=model, tools=tools,
            generationConfig={"thinkingConfig": {"includeThoughts": True}}))
        assert [p.get("thought") for p in parts(chunks)][:2] == [True, True]
        call = next(p for p in parts(chunks) if "functionCall" in p)
        assert len(call["thoughtSignature"]) >= 60
        _, text = await stream(http, token, envelope(
            "hi", model=model, generationConfig={"thinkingConfig": {"thinkingLevel": "low"}}))
        first_text = next(p for p in parts(text) if not p.get("thought"))
        assert first_text["thoughtSignature"]

        async def replay(signature: str | None) -> httpx.Response:
            part = dict(call)
            part.pop("thoughtSignature")
            if signature is not None:
                part["thoughtSignature"] = signature
            return await unary(http, token, envelope(model=model, tools=tools, contents=[
                {"role": "user", "parts": [{"text": "use the tool"}]},
                {"role": "model", "parts": [part]},
                {"role": "user", "parts": [{"functionResponse": {
                    "name": "get_weather", "response": {"result": "ok"}}}]}]))

        assert (await replay(call["thoughtSignature"])).status_code == 200
        assert (await replay(SKIP_SIGNATURE)).status_code == 200
        missing = await replay(None)
        assert missing.status_code == 400
        assert "thought_signature" in missing.json()["error"]["message"]
        assert (await replay("x" * 80)).status_code == 400


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (envelope(model="no-such-model"), 404, "NOT_FOUND"),
        (envelope(model="claude-sonnet-4-5"), 404, "NOT_FOUND"),  # retired
        (envelope(model="chat_20706"), 404, "NOT_FOUND"),  # internal
        (envelope(project="someone-else"), 403, "PERMISSION_DENIED"),
        (envelope(contents=[]) | {"request": {"contents": []}}, 400, "contents"),
        (envelope(tools=[{"functionDeclarations": [{"name": "f", "parameters": {
            "type": "object", "additionalProperties": False,
            "properties": {"a": {"type": "string"}}}}]}]), 400, "additionalProperties"),
        (envelope(generationConfig={"maxOutputTokens": 10**6}), 400, "max_tokens"),
        (envelope(model="claude-sonnet-4-6", contents=[
            {"role": "user", "parts": [{"text": "a"}]},
            {"role": "user", "parts": [{"text": "b"}]}]), 400, "alternate"),
        (envelope(generationConfig={"thinkingConfig": {"thinkingLevel": "max"}}), 400,
         "thinking level"),
    ],
    ids=["model", "retired", "internal", "project", "contents", "schema", "max-output",
         "alternation", "level"],
)
async def test_refusals(
    emulator: RunningEmulator, body: dict[str, Any], status: int, needle: str
) -> None:
    async with client(emulator) as http:
        response = await unary(http, await token_for(http), body)
    assert response.status_code == status
    assert needle in json.dumps(response.json())


# -- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "google_status"),
    [
        ("unauthorized", 401, "UNAUTHENTICATED"),
        ("forbidden", 403, "PERMISSION_DENIED"),
        ("bad_request", 400, "INVALID_ARGUMENT"),
        ("server_error", 500, "INTERNAL"),
        ("unavailable", 503, "UNAVAILABLE"),
        ("rate_limit", 429, "RESOURCE_EXHAUSTED"),
    ],
)
@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
async def test_status_faults(
    emulator: RunningEmulator, kind: str, status: int, google_status: str, streamed: bool
) -> None:
    emulator.state.add_fault(Fault(kind=kind, times=1))
    async with client(emulator) as http:
        token = await token_for(http)
        if streamed:
            got, payloads = await stream(http, token, envelope())
            error = payloads[0]
        else:
            response = await unary(http, token, envelope())
            got, error = response.status_code, response.json()
        assert got == status
        assert error["error"]["status"] == google_status and error["error"]["code"] == status
        assert (await unary(http, token, envelope())).status_code == 200  # used up
    assert emulator.state.faults == []


@pytest.mark.parametrize("reset_format", ["retry_info", "quota_reset_delay", "retry_after",
                                          "text"])
@pytest.mark.parametrize("seconds", [0.5, 90.0, 7384.0])
async def test_rate_limit_reset_formats_parse(
    emulator: RunningEmulator, reset_format: str, seconds: float
) -> None:
    emulator.state.add_fault(Fault(kind="rate_limit", reset_format=reset_format,
                                   reset_seconds=seconds))
    async with client(emulator) as http:
        response = await unary(http, await token_for(http), envelope())
    assert response.status_code == 429
    parsed = reset_seconds(response.text, dict(response.headers), now=time.time())
    assert parsed is not None
    slack = 1.0 if reset_format == "retry_after" else 0.01  # the header is whole seconds
    assert seconds <= parsed <= seconds + slack
    assert is_quota_exhausted(response.text) == (reset_format in ("text", "quota_reset_delay"))


async def test_quota_exhausted_flavour(emulator: RunningEmulator) -> None:
    emulator.state.add_fault(Fault(kind="quota_exhausted", reset_seconds=3600))
    async with client(emulator) as http:
        response = await unary(http, await token_for(http), envelope())
    assert response.status_code == 429 and is_quota_exhausted(response.text)
    assert reset_seconds(response.text, {}, now=0) == 3600


async def test_faults_match_account_model_and_method(emulator: RunningEmulator) -> None:
    state = emulator.state
    state.add_fault(Fault(kind="server_error", model="claude-sonnet-4-6"))
    state.add_fault(Fault(kind="forbidden", account=DEMO_ACCOUNTS[1].email))
    state.add_fault(Fault(kind="unavailable", method="fetchAvailableModels", times=1))
    async with client(emulator) as http:
        token = await token_for(http)
        assert (await unary(http, token, envelope())).status_code == 200
        claude = await unary(http, token, envelope(model="claude-sonnet-4-6"))
        assert claude.status_code == 500
        other = await token_for(http, DEMO_ACCOUNTS[1].refresh_token)
        assert (await unary(http, other, envelope(
            project=DEMO_ACCOUNTS[1].project))).status_code == 403
        models = await http.post("/v1internal:fetchAvailableModels", json={},
                                 headers=bearer(token))
        assert models.status_code == 503
        assert (await http.post("/v1internal:fetchAvailableModels", json={},
                                headers=bearer(token))).status_code == 200
    state.clear_faults()
    assert state.faults == []


async def test_empty_fault(emulator: RunningEmulator) -> None:
    emulator.state.add_fault(Fault(kind="empty", times=2))
    async with client(emulator) as http:
        token = await token_for(http)
        status, chunks = await stream(http, token, envelope())
        assert status == 200 and chunks == []
        response = await unary(http, token, envelope())
        assert response.status_code == 200 and response.json() == {}


async def test_cut_fault_breaks_the_stream(emulator: RunningEmulator) -> None:
    emulator.state.add_fault(Fault(kind="cut", cut_after=2, times=1))
    emulator.state.text_chunks = 5
    parser = SSEParser()
    events = []
    async with client(emulator) as http:
        token = await token_for(http)
        with pytest.raises(httpx.RemoteProtocolError):
            async with http.stream("POST", STREAM, json=envelope(), headers=bearer(token)) as r:
                async for chunk in r.aiter_raw():
                    events += parser.feed(chunk)
        assert len(events) == 2
        assert all("finishReason" not in e.data for e in events)
    await emulator.state.wait_open_streams(0, timeout=2)


async def test_slow_and_stall_faults(emulator: RunningEmulator) -> None:
    state = emulator.state
    state.add_fault(Fault(kind="slow", delay_seconds=0.1, times=1))
    async with client(emulator) as http:
        token = await token_for(http)
        start = trio.current_time()
        status, chunks = await stream(http, token, envelope())
        assert status == 200 and len(chunks) == 3
        assert trio.current_time() - start >= 0.3  # before each of the three chunks
        state.add_fault(Fault(kind="stall", times=1))
        with pytest.raises(httpx.ReadTimeout):
            async with http.stream("POST", STREAM, json=envelope(), headers=bearer(token),
                                   timeout=httpx.Timeout(10, read=0.3)) as response:
                assert response.status_code == 200
                async for _ in response.aiter_raw():
                    pass
    await state.wait_open_streams(0, timeout=2)


async def test_client_disconnect_closes_the_stream_at_once(emulator: RunningEmulator) -> None:
    state = emulator.state
    state.chunk_delay_seconds = 30.0  # far longer than the test: only a disconnect ends it
    async with client(emulator) as http:
        token = await token_for(http)
        async with http.stream("POST", STREAM, json=envelope(), headers=bearer(token)):
            await state.wait_open_streams(1, timeout=2)
            assert state.stream_counts() == {"open": 1, "opened": 1, "closed": 0,
                                             "connections": state.connections_opened}
            dropped = trio.current_time()
    await state.wait_open_streams(0, timeout=1)
    assert state.stream_closed_times[-1] - dropped < 0.5
    assert state.stream_counts() == {"open": 0, "opened": 1, "closed": 1,
                                     "connections": state.connections_opened}


async def test_h2c_prior_knowledge(emulator: RunningEmulator) -> None:
    async with client(emulator, http1=False, http2=True) as http:
        token = await token_for(http)
        status, chunks = await stream(http, token, envelope("over h2"))
    assert status == 200 and text_of(chunks) == "Echo: over h2"


# -- control surface ------------------------------------------------------------------------


async def test_control_surface(emulator: RunningEmulator) -> None:
    async with client(emulator) as http:
        added = await http.post("/__emulator/faults", json={
            "kind": "rate_limit", "reset_format": "text", "reset_seconds": 5, "times": 1})
        assert added.status_code == 201
        assert (await http.get("/__emulator/faults")).json()[0]["kind"] == "rate_limit"
        bad = await http.post("/__emulator/faults", json={"kind": "meteor"})
        assert bad.status_code == 400 and "kind" in bad.json()["error"]
        assert (await http.delete("/__emulator/faults")).json() == {"cleared": 1}

        account = await http.post("/__emulator/accounts", json={
            "email": "zed@example.com", "refresh_token": "r-zed", "project": "p-zed"})
        assert account.status_code == 201
        quota = await http.post("/__emulator/quota", json={
            "email": "zed@example.com", "model": "gemini-3.1-pro-low", "fraction": 0,
            "reset_time": "2026-12-01T00:00:00Z"})
        assert quota.json()["quotas"]["gemini-3.1-pro-low"]["fraction"] == 0
        token = await token_for(http, "r-zed")
        await unary(http, token, envelope(project="p-zed"))
        requests = (await http.get("/__emulator/requests")).json()
        assert requests[-1]["path"] == UNARY and requests[-1]["email"] == "zed@example.com"
        assert requests[-1]["body"]["project"] == "p-zed"

        config = await http.post("/__emulator/config", json={
            "chunk_delay_seconds": 0.01, "text_chunks": 2, "chunk_chars": 10,
            "token_lifetime_seconds": 60, "next_login_email": "x@example.com"})
        assert config.json()["text_chunks"] == 2
        assert emulator.state.chunk_chars == 10 and emulator.state.token_lifetime_seconds == 60
        refused = await http.post("/__emulator/config", json={"text_chunks": 0})
        assert refused.status_code == 400
        assert (await http.post("/__emulator/config", json={"nope": 1})).status_code == 400
        streams = (await http.get("/__emulator/streams")).json()
        assert streams == {"open": 0, "opened": 0, "closed": 0,
                           "connections": streams["connections"]}
        assert streams["connections"] >= 1  # this client's own, at least

        assert (await http.post("/__emulator/reset")).status_code == 200
        assert "zed@example.com" not in emulator.state.accounts
        assert DEMO1.email in emulator.state.accounts
        assert emulator.state.text_chunks == 3 and emulator.state.received == []
        assert (await http.get("/__emulator/requests")).json() == []
        assert (await http.delete("/__emulator/requests")).status_code == 200
        index = (await http.get("/__emulator")).json()
        assert "POST /__emulator/faults" in index["endpoints"]


def test_demo_accounts_read_both_ways() -> None:
    assert DEMO1.email == DEMO1["email"] == "demo1@example.com"
    assert dict(DEMO_ACCOUNTS[1]) == {"email": "demo2@example.com",
                                      "refresh_token": "demo-refresh-2",
                                      "project": "demo-project-2"}
    state = EmulatorState.with_demo_accounts()
    assert set(state.accounts) == {"demo1@example.com", "demo2@example.com"}


# -- today's upstream: the client gate, the lineup, the stricter checks ---------------------


@pytest.mark.parametrize("agent", ["antigravity/1.11.5 linux/amd64",
                                   "antigravity/1.20.6 darwin/arm64",
                                   "antigravity/cli/1.0.1 windows/amd64", "python-httpx/0.28"])
async def test_outdated_clients_get_the_refusal_as_an_answer(
    emulator: RunningEmulator, agent: str
) -> None:
    async with client(emulator) as http:
        token = await token_for(http)
        status, chunks = await stream(http, token, envelope(agent=agent))
        assert status == 200  # as in 2026: the refusal is the model's whole "answer"
        assert text_of(chunks) == VERSION_REFUSAL
        assert chunks[-1]["usageMetadata"]["promptTokenCount"] == 0
        whole = await unary(http, token, envelope(agent=agent))
        assert text_of([whole.json()["response"]]) == VERSION_REFUSAL
        emulator.state.version_gate = "error"
        refused = await unary(http, token, envelope(agent=agent))
        assert refused.status_code == 400
        assert refused.json()["error"]["status"] == "FAILED_PRECONDITION"
        assert "no longer supported" in refused.json()["error"]["message"]


@pytest.mark.parametrize("agent", ["antigravity/2.0.3 linux/x64", AGENT,
                                   "antigravity/cli/1.1.12 windows/amd64"])
async def test_current_clients_are_served(emulator: RunningEmulator, agent: str) -> None:
    async with client(emulator) as http:
        token = await token_for(http)
        status, chunks = await stream(http, token, envelope(agent=agent))
    assert status == 200 and text_of(chunks) == "Echo: hello"


async def test_new_models_need_a_new_client(emulator: RunningEmulator) -> None:
    async with client(emulator) as http:
        token = await token_for(http)
        old = "antigravity/2.2.1 darwin/arm64"
        assert (await unary(http, token, envelope(agent=old))).status_code == 200
        newer = envelope(model="gemini-3.5-flash-low", agent=old)
        missing = await unary(http, token, newer)
        assert missing.status_code == 404
        assert missing.json()["error"]["message"] == "Requested entity was not found."
        newer["agent"] = AGENT
        assert (await unary(http, token, envelope(model="gemini-3.5-flash-low"))
                ).status_code == 200


async def signed_claude_thought(http: httpx.AsyncClient, token: str) -> tuple[str, str]:
    """A signed Claude thought: its text and its signature."""
    _, chunks = await stream(http, token, envelope(
        "think", model="claude-opus-4-6-thinking",
        generationConfig={"maxOutputTokens": 4096, "thinkingConfig": {
            "include_thoughts": True, "thinking_budget": 1024}}))
    thought = "".join(p["text"] for p in parts(chunks) if p.get("thought"))
    signature = next(p["thoughtSignature"] for p in parts(chunks) if p.get("thought")
                     and "thoughtSignature" in p)
    return thought, signature


async def test_signatures_belong_to_the_family_that_minted_them(
    emulator: RunningEmulator,
) -> None:
    """A Claude thought replayed to Gemini, or a Gemini one to Claude, is refused."""
    async with client(emulator) as http:
        token = await token_for(http)
        claude_thought, claude_sig = await signed_claude_thought(http, token)
        _, gemini = await stream(http, token, envelope(
            "think", model="gemini-3-flash",
            generationConfig={"thinkingConfig": {"includeThoughts": True}}))
        gemini_thought = "".join(p["text"] for p in parts(gemini) if p.get("thought"))
        # Gemini's thought signature rides on a part of its own after the thoughts
        gemini_sig = next(p["thoughtSignature"] for p in parts(gemini)
                          if "thoughtSignature" in p and not p.get("thought"))

        def history(model: str, thought: str, signature: str) -> dict[str, Any]:
            return envelope(model=model, contents=[
                {"role": "user", "parts": [{"text": "think"}]},
                {"role": "model", "parts": [
                    {"text": thought, "thought": True, "thoughtSignature": signature},
                    {"text": "answer"}]},
                {"role": "user", "parts": [{"text": "more"}]}],
                generationConfig={"maxOutputTokens": 4096, "thinkingConfig": {
                    "include_thoughts": True, "thinking_budget": 1024}})

        ok = await unary(http, token, history("claude-sonnet-4-6", claude_thought, claude_sig))
        assert ok.status_code == 200, ok.text
        ok = await unary(http, token, history("gemini-3.1-pro-low", gemini_thought, gemini_sig))
        assert ok.status_code == 200, ok.text
        to_claude = await unary(http, token,
                                history("claude-sonnet-4-6", gemini_thought, gemini_sig))
        assert to_claude.status_code == 400
        assert "Invalid `signature` in `thinking` block" in to_claude.json()["error"]["message"]
        to_gemini = await unary(http, token,
                                history("gemini-3-flash", claude_thought, claude_sig))
        assert to_gemini.status_code == 400
        assert to_gemini.json()["error"]["message"] == "Corrupted thought signature."
        unsigned = history("claude-sonnet-4-6", claude_thought, claude_sig)
        del unsigned["request"]["contents"][1]["parts"][0]["thoughtSignature"]
        missing = await unary(http, token, unsigned)
        assert "thinking.signature: Field required" in missing.json()["error"]["message"]


async def test_signatures_are_bytes_in_either_base64_alphabet(emulator: RunningEmulator) -> None:
    """thoughtSignature is a bytes field: the URL-safe, unpadded spelling of a signature is
    the same signature; other bytes are not."""
    async with client(emulator) as http:
        token = await token_for(http)
        thought, signature = await signed_claude_thought(http, token)

        async def replay(sig: str) -> httpx.Response:
            return await unary(http, token, envelope(model="claude-sonnet-4-6", contents=[
                {"role": "user", "parts": [{"text": "think"}]},
                {"role": "model", "parts": [
                    {"text": thought, "thought": True, "thoughtSignature": sig},
                    {"text": "answer"}]},
                {"role": "user", "parts": [{"text": "more"}]}]))

        url_safe = signature.replace("+", "-").replace("/", "_").rstrip("=")
        assert (await replay(url_safe)).status_code == 200
        other = base64.b64encode(b"gemini." + base64.b64decode(signature)).decode()
        assert (await replay(other)).status_code == 400


@pytest.mark.parametrize(
    ("setting", "status", "needle"),
    [
        ({"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}, 200, ""),
        ({"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "OFF", "method": "SEVERITY"},
         200, ""),
        ({"category": "HARASSMENT", "threshold": "BLOCK_NONE"}, 400,
         "Invalid value at 'request.safety_settings[0].category'"),
        ({"category": "HARM_CATEGORY_HARASSMENT", "threshold": "NONE"}, 400,
         "safety_settings[0].threshold"),
    ],
)
async def test_safety_settings_are_enums(
    emulator: RunningEmulator, setting: dict[str, str], status: int, needle: str
) -> None:
    async with client(emulator) as http:
        token = await token_for(http)
        response = await unary(http, token, envelope(safetySettings=[setting]))
    assert response.status_code == status, response.text
    if needle:
        assert needle in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("model", "calls", "responses", "needle"),
    [
        ("gemini-3-flash", ["get_weather"], ["get_weather", "get_weather"],
         "number of function response parts is equal"),
        ("gemini-3-flash", ["get_weather"], ["lookup"], "Request contains an invalid argument."),
        ("gemini-3-flash", [], ["get_weather"], "comes immediately after a function call"),
        ("claude-sonnet-4-6", ["get_weather"], [], "without `tool_result` blocks"),
        ("claude-sonnet-4-6", ["get_weather"], ["lookup"],
         "Request contains an invalid argument."),
    ],
    ids=["gemini-count", "gemini-name", "gemini-orphan", "claude-missing", "claude-name"],
)
async def test_function_responses_must_answer_their_calls(
    emulator: RunningEmulator, model: str, calls: list[str], responses: list[str], needle: str
) -> None:
    claude = model.startswith("claude")
    model_parts: list[dict[str, Any]] = [
        {"functionCall": {"name": n, "args": {}, **({"id": f"t{i}"} if claude else {})},
         "thoughtSignature": SKIP_SIGNATURE}
        for i, n in enumerate(calls)
    ] or [{"text": "no call"}]
    answers: list[dict[str, Any]] = [
        {"functionResponse": {"name": n, "response": {"result": "x"},
                              **({"id": f"t{i}"} if claude else {})}}
        for i, n in enumerate(responses)
    ] or [{"text": "no results"}]
    body = envelope(model=model, contents=[
        {"role": "user", "parts": [{"text": "go"}]},
        {"role": "model", "parts": model_parts},
        {"role": "user", "parts": answers}], tools=[{"functionDeclarations": [WEATHER]}])
    async with client(emulator) as http:
        response = await unary(http, await token_for(http), body)
    assert response.status_code == 400
    assert needle in response.json()["error"]["message"]


async def test_capacity_and_bare_429_faults(emulator: RunningEmulator) -> None:
    emulator.state.add_fault(Fault(kind="capacity", reset_seconds=2.5, times=1))
    emulator.state.add_fault(Fault(kind="bare_rate_limit", times=1))
    async with client(emulator) as http:
        token = await token_for(http)
        busy = await unary(http, token, envelope())
        assert busy.status_code == 503
        error = busy.json()["error"]
        assert error["status"] == "UNAVAILABLE"
        assert "No capacity available for model gemini-3-flash" in error["message"]
        assert error["details"][0]["reason"] == "MODEL_CAPACITY_EXHAUSTED"
        assert reset_seconds(busy.text, {}, now=0) == 2.5
        bare = await unary(http, token, envelope())
        assert bare.status_code == 429
        assert bare.json() == {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                                         "message": "Resource has been exhausted (e.g. check "
                                                    "quota)."}}


async def test_prompt_cache_hits_only_a_real_prefix(emulator: RunningEmulator) -> None:
    def turn(*texts: str, system: str = "be brief") -> dict[str, Any]:
        contents = [{"role": "user" if i % 2 == 0 else "model", "parts": [{"text": t}]}
                    for i, t in enumerate(texts)]
        return envelope(contents=contents, sessionId="s-cache",
                        systemInstruction={"role": "user", "parts": [{"text": system}]})

    async def cached(body: dict[str, Any]) -> tuple[int, int]:
        response = await unary(http, token, body)
        usage = response.json()["response"]["usageMetadata"]
        return usage.get("cachedContentTokenCount", 0), usage["promptTokenCount"]

    async with client(emulator) as http:
        token = await token_for(http)
        assert (await cached(turn("a" * 400)))[0] == 0
        hit, prompt = await cached(turn("a" * 400, "ok", "b" * 400))
        assert 0 < hit < prompt  # the first turn repeats, the rest is new
        miss, _ = await cached(turn("c" * 400, "ok", "b" * 400))
        assert 0 < miss < hit / 4  # same length, a new first turn: only the system repeats
        other_system, _ = await cached(turn("c" * 400, "ok", "b" * 400, system="be long"))
        assert other_system == 0
