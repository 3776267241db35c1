"""The fault matrix: every emulator fault, through each API, streaming and not.

For each fault the client gets either a successful answer (the gateway retried or failed
over) or the documented error in its own format, the account pool is in the state it should
be afterwards, and nothing is left open: no upstream stream, no in-flight request.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from gateway.emulator import Fault
from tests.support import RunningEmulator, RunningGateway, generation_requests

MODEL = "claude-sonnet-4-6"
DEMO1, DEMO2 = "demo1@example.com", "demo2@example.com"


@attrs.frozen
class Api:
    name: str
    path: str

    def url(self, stream: bool) -> str:
        if self.name == "gemini":
            return f"{self.path}:streamGenerateContent?alt=sse" if stream else (
                f"{self.path}:generateContent")
        return self.path

    def body(self, stream: bool) -> dict[str, Any]:
        messages = [{"role": "user", "content": "Hello through a fault"}]
        if self.name == "gemini":
            return {"contents": [{"role": "user", "parts": [{"text": "Hello through a fault"}]}]}
        if self.name == "anthropic":
            return {"model": MODEL, "max_tokens": 256, "stream": stream, "messages": messages}
        if self.name == "responses":
            return {"model": MODEL, "stream": stream, "input": "Hello through a fault"}
        return {"model": MODEL, "stream": stream, "messages": messages}

    def error_type(self, response: httpx.Response) -> str:
        body = response.json()
        if self.name == "anthropic":
            assert body["type"] == "error"
            return str(body["error"]["type"])
        if self.name == "gemini":
            assert set(body["error"]) == {"code", "message", "status"}
            assert body["error"]["code"] == response.status_code
            return str(body["error"]["status"])
        assert set(body["error"]) >= {"message", "type", "param", "code"}
        return str(body["error"]["type"])

    def ok(self, response: httpx.Response, stream: bool) -> None:
        assert response.status_code == 200, response.text
        if not stream:
            body = response.json()
            if self.name == "anthropic":
                text = body["content"][0]["text"]
            elif self.name == "responses":
                text = body["output"][-1]["content"][0]["text"]
            elif self.name == "gemini":
                text = body["candidates"][0]["content"]["parts"][0]["text"]
            else:
                text = body["choices"][0]["message"]["content"]
            assert text.startswith("Echo")
        elif self.name == "responses":
            assert b"event: response.completed" in response.content
            assert b"event: response.failed" not in response.content
        elif self.name == "anthropic":
            assert b"event: message_stop" in response.content
            assert b"event: error" not in response.content
        elif self.name == "gemini":
            chunks = gemini_chunks(response)
            assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
            assert not any("error" in chunk for chunk in chunks)
        else:
            assert response.content.rstrip().endswith(b"data: [DONE]")
            assert b'"error"' not in response.content


APIS = [Api("anthropic", "/v1/messages"), Api("openai", "/v1/chat/completions"),
        Api("responses", "/v1/responses"), Api("gemini", f"/v1beta/models/{MODEL}")]
API_IDS = [a.name for a in APIS]


def gemini_chunks(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in response.content.splitlines()
            if line.startswith(b"data: ")]


async def send(gateway: RunningGateway, api: Api, stream: bool) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        with trio.fail_after(25):
            return await http.post(gateway.url + api.url(stream), json=api.body(stream))


async def assert_quiet(gateway: RunningGateway, emulator: RunningEmulator) -> None:
    """No upstream stream and no gateway request is left running."""
    with trio.fail_after(2):
        while emulator.state.open_streams or gateway.services.metrics.open_streams._value.get():
            await trio.sleep(0.005)


def cooldowns(gateway: RunningGateway) -> dict[str, dict[str, float]]:
    return {e.email: dict(e.cooldowns) for e in gateway.services.pool.snapshot().entries}


def tried_accounts(emulator: RunningEmulator) -> list[str | None]:
    return [r.email for r in emulator.state.received if "generatecontent" in r.path.lower()]


@pytest.mark.parametrize("api", APIS, ids=API_IDS)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("reset_format", ["retry_info", "quota_reset_delay", "retry_after", "text"])
async def test_429_on_one_account_fails_over_and_cools_it(
    gateway: RunningGateway, emulator: RunningEmulator, api: Api, stream: bool, reset_format: str
) -> None:
    emulator.state.add_fault(
        Fault(kind="rate_limit", times=1, reset_format=reset_format, reset_seconds=1800)
    )
    response = await send(gateway, api, stream)
    api.ok(response, stream)
    first, second = tried_accounts(emulator)[-2:]
    assert first != second, "the second attempt must use the other account"
    cooling = cooldowns(gateway)
    assert cooling[second] == {}
    assert first is not None
    assert MODEL in cooling[first]
    assert 1700 <= cooling[first][MODEL] <= 1800
    await assert_quiet(gateway, emulator)


@pytest.mark.parametrize("api", APIS, ids=API_IDS)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_429_everywhere_is_a_429_with_retry_after(
    gateway: RunningGateway, emulator: RunningEmulator, api: Api, stream: bool
) -> None:
    emulator.state.add_fault(Fault(kind="rate_limit", reset_seconds=3600))
    response = await send(gateway, api, stream)
    assert response.status_code == 429
    assert api.error_type(response) in ("rate_limit_error", "rate_limit_exceeded",
                                        "RESOURCE_EXHAUSTED")
    assert 3000 <= int(response.headers["retry-after"]) <= 3600
    assert all(MODEL in c for c in cooldowns(gateway).values())
    # a second request does not spend upstream calls on accounts known to be cooling
    before = len(generation_requests(emulator))
    again = await send(gateway, api, stream)
    assert again.status_code == 429
    assert len(generation_requests(emulator)) == before
    await assert_quiet(gateway, emulator)


@pytest.mark.parametrize("api", APIS, ids=API_IDS)
async def test_short_cooldown_is_waited_out(
    start_gateway: Callable[..., Any], emulator: RunningEmulator, api: Api
) -> None:
    gateway = await start_gateway(accounts={"max_cooldown_wait_seconds": 5})
    emulator.state.add_fault(Fault(kind="rate_limit", times=2, reset_seconds=0.5))
    response = await send(gateway, api, False)
    api.ok(response, False)
    await assert_quiet(gateway, emulator)


# (fault, times, expected status per API, expected error type per API) — times=None: always
ERROR_FAULTS = [
    ("unauthorized", {"anthropic": (401, "authentication_error"),
                      "openai": (401, "invalid_request_error")}),
    ("forbidden", {"anthropic": (403, "permission_error"),
                   "openai": (403, "invalid_request_error")}),
    ("bad_request", {"anthropic": (400, "invalid_request_error"),
                     "openai": (400, "invalid_request_error")}),
    ("server_error", {"anthropic": (500, "api_error"), "openai": (500, "server_error")}),
    ("unavailable", {"anthropic": (529, "overloaded_error"), "openai": (503, "server_error")}),
    ("empty", {"anthropic": (500, "api_error"), "openai": (500, "server_error")}),
]
# the Responses face answers errors as the OpenAI API does; the Gemini face as Google's
_GOOGLE = {"unauthorized": (401, "UNAUTHENTICATED"), "forbidden": (403, "PERMISSION_DENIED"),
           "bad_request": (400, "INVALID_ARGUMENT"), "server_error": (500, "INTERNAL"),
           "unavailable": (503, "UNAVAILABLE"), "empty": (500, "INTERNAL")}
for _kind, _expected in ERROR_FAULTS:
    _expected["responses"] = _expected["openai"]
    _expected["gemini"] = _GOOGLE[_kind]


@pytest.mark.parametrize("api", APIS, ids=API_IDS)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(("kind", "expected"), ERROR_FAULTS, ids=[f[0] for f in ERROR_FAULTS])
async def test_persistent_fault_gives_documented_error(
    gateway: RunningGateway, emulator: RunningEmulator, api: Api, stream: bool, kind: str,
    expected: dict[str, tuple[int, str]],
) -> None:
    emulator.state.add_fault(Fault(kind=kind))
    response = await send(gateway, api, stream)
    status, error_type = expected[api.name]
    assert response.status_code == status, response.text
    assert api.error_type(response) == error_type
    assert "Traceback" not in response.text
    # none of these faults is the accounts' fault for good: both stay usable
    assert {e.status for e in gateway.services.pool.snapshot().entries} == {"ok"}
    await assert_quiet(gateway, emulator)


@pytest.mark.parametrize("api", APIS, ids=API_IDS)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("kind", ["unauthorized", "server_error", "unavailable", "empty"])
async def test_transient_fault_is_retried(
    gateway: RunningGateway, emulator: RunningEmulator, api: Api, stream: bool, kind: str
) -> None:
    emulator.state.add_fault(Fault(kind=kind, times=1))
    response = await send(gateway, api, stream)
    api.ok(response, stream)
    assert not any(cooldowns(gateway).values())
    await assert_quiet(gateway, emulator)


@pytest.mark.parametrize("api", APIS, ids=API_IDS)
async def test_bad_request_is_not_retried(
    gateway: RunningGateway, emulator: RunningEmulator, api: Api
) -> None:
    emulator.state.add_fault(Fault(kind="bad_request"))
    before = len(tried_accounts(emulator))
    response = await send(gateway, api, False)
    assert response.status_code == 400
    assert len(tried_accounts(emulator)) == before + 1


@pytest.mark.parametrize("api", APIS, ids=API_IDS)
async def test_cut_stream_ends_with_an_error_event(
    gateway: RunningGateway, emulator: RunningEmulator, api: Api
) -> None:
    emulator.state.text_chunks = 6
    emulator.state.add_fault(Fault(kind="cut", cut_after=2))
    response = await send(gateway, api, True)
    assert response.status_code == 200  # the stream had begun: the error travels in it
    if api.name == "anthropic":
        assert b"event: error" in response.content
        assert b"event: message_stop" not in response.content
    elif api.name == "responses":
        last = [line[6:] for line in response.content.splitlines() if line.startswith(b"data: ")]
        failed = json.loads(last[-1])
        assert failed["type"] == "response.failed"
        assert failed["response"]["status"] == "failed" and failed["response"]["error"]
        assert b"event: response.completed" not in response.content
    elif api.name == "gemini":
        chunks = gemini_chunks(response)
        assert set(chunks[-1]["error"]) == {"code", "message", "status"}
        assert not any("finishReason" in c for chunk in chunks for c in chunk.get("candidates", []))
    else:
        events = [line[6:] for line in response.content.splitlines() if line.startswith(b"data: ")]
        assert events[-1] == b"[DONE]"
        assert "error" in json.loads(events[-2])
    await assert_quiet(gateway, emulator)


@pytest.mark.parametrize("api", APIS, ids=API_IDS)
async def test_cut_before_anything_was_sent_is_retried_for_unary(
    gateway: RunningGateway, emulator: RunningEmulator, api: Api
) -> None:
    emulator.state.text_chunks = 6
    emulator.state.add_fault(Fault(kind="cut", cut_after=2, times=1))
    response = await send(gateway, api, False)
    api.ok(response, False)
    await assert_quiet(gateway, emulator)


@pytest.mark.parametrize("api", APIS, ids=API_IDS)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_slow_stream_still_completes(
    gateway: RunningGateway, emulator: RunningEmulator, api: Api, stream: bool
) -> None:
    emulator.state.add_fault(Fault(kind="slow", delay_seconds=0.1))
    response = await send(gateway, api, stream)
    api.ok(response, stream)
    await assert_quiet(gateway, emulator)


async def test_invalid_grant_marks_account_and_persists(
    start_gateway: Callable[..., Any], emulator: RunningEmulator
) -> None:
    emulator.state.add_fault(Fault(kind="invalid_grant", account=DEMO1))
    gateway = await start_gateway()
    with trio.fail_after(5):
        while True:
            status = {e.email: e.status for e in gateway.services.pool.snapshot().entries}
            if status[DEMO1] == "invalid":
                break
            await trio.sleep(0.01)
    assert status[DEMO2] == "ok"
    stored = json.loads(Path(gateway.config.accounts.file).read_text())
    by_email = {a["email"]: a for a in stored["accounts"]}
    assert by_email[DEMO1]["invalid_reason"]
    assert by_email[DEMO1]["refresh_token"] == "demo-refresh-1"  # kept, for the record
    assert by_email[DEMO2]["invalid_reason"] is None
    async with httpx.AsyncClient() as http:
        health = (await http.get(gateway.url + "/health")).json()
    assert health["activeAccounts"] == 1
    assert health["invalidAccounts"] == 1
    for api in APIS:
        response = await send(gateway, api, False)
        api.ok(response, False)
    assert set(tried_accounts(emulator)) == {DEMO2}
