"""Security: API keys, exposure check, CORS, body limit, secrets kept out of logs and errors."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio

from gateway.config import Config, ConfigError
from gateway.emulator import Fault
from gateway.server import check_exposure
from tests.support import RunningEmulator, RunningGateway, fast_config, generation_requests

KEY = "sk-gw-test-key-1234567890"
CHAT = {"model": "gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {**CHAT, "max_tokens": 32}


async def test_api_keys_required_when_configured(start_gateway: Callable[..., Any]) -> None:
    gateway = await start_gateway(server={"api_keys": (KEY, "second-key")})
    async with httpx.AsyncClient() as http:
        missing = await http.post(gateway.url + "/v1/messages", json=MESSAGE)
        wrong = await http.post(
            gateway.url + "/v1/chat/completions", json=CHAT,
            headers={"authorization": "Bearer nope"},
        )
        health = await http.get(gateway.url + "/health")
        models = await http.get(gateway.url + "/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    # only a person can fix a key: SDKs (and Claude Code) are told not to retry for minutes
    assert missing.headers["x-should-retry"] == "false" and missing.headers["request-id"]
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert "nope" not in wrong.text
    assert health.status_code == 200  # load balancers probe without keys
    assert models.status_code == 401  # everything else is closed

    # both SDKs send the key their own way: Bearer (openai) and x-api-key (anthropic)
    oa = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
    an = anthropic.Anthropic(base_url=gateway.url, api_key="second-key", max_retries=0)
    completion = await trio.to_thread.run_sync(
        lambda: oa.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    )
    message = await trio.to_thread.run_sync(
        lambda: an.messages.create(**MESSAGE)  # type: ignore[call-overload]
    )
    assert completion.choices[0].message.content
    assert message.content


def test_non_loopback_bind_without_keys_refuses() -> None:
    exposed = fast_config(Config(), server={"host": "0.0.0.0"})
    with pytest.raises(ConfigError, match="without API keys"):
        check_exposure(exposed, insecure_no_auth=False)
    check_exposure(exposed, insecure_no_auth=True)  # explicit opt-out
    check_exposure(fast_config(exposed, server={"api_keys": (KEY,)}), insecure_no_auth=False)
    check_exposure(Config(), insecure_no_auth=False)  # 127.0.0.1 by default


def test_serve_command_refuses_open_public_bind(tmp_path: Any) -> None:
    env = {**os.environ, "GATEWAY_ACCOUNTS_FILE": str(tmp_path / "a.json")}
    env.pop("GATEWAY_API_KEYS", None)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert result.returncode != 0
    assert "without API keys" in result.stderr
    assert "Traceback" not in result.stderr


async def test_cors_is_off_by_default(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(
            gateway.url + "/v1/models", headers={"origin": "https://evil.example"}
        )
        preflight = await http.options(
            gateway.url + "/v1/messages",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in preflight.headers


async def test_cors_allows_configured_origins(start_gateway: Callable[..., Any]) -> None:
    gateway = await start_gateway(server={"cors_origins": ("https://app.example",)})
    async with httpx.AsyncClient() as http:
        ok = await http.options(
            gateway.url + "/v1/messages",
            headers={"origin": "https://app.example", "access-control-request-method": "POST"},
        )
        other = await http.get(
            gateway.url + "/v1/models", headers={"origin": "https://evil.example"}
        )
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/messages", "request_too_large"),
        ("/v1/chat/completions", "invalid_request_error"),
        ("/v1/messages/count_tokens", "request_too_large"),
    ],
)
async def test_body_limit_is_413_in_callers_format(
    start_gateway: Callable[..., Any], path: str, kind: str
) -> None:
    gateway = await start_gateway(server={"max_body_bytes": 2048})
    big = {**MESSAGE, "messages": [{"role": "user", "content": "x" * 10_000}]}
    async with httpx.AsyncClient() as http:
        response = await http.post(gateway.url + path, json=big)
        # also without a content-length: a chunked body is counted as it arrives
        async def chunks() -> Any:
            for _ in range(10):
                yield b" " * 1000
        chunked = await http.post(gateway.url + path, content=chunks(),
                                  headers={"content-type": "application/json"})
    for r in (response, chunked):
        assert r.status_code == 413
        assert r.json()["error"]["type"] == kind


async def test_secrets_never_reach_logs_or_errors(
    start_gateway: Callable[..., Any], emulator: RunningEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = await start_gateway(server={"api_keys": (KEY,)})
    prompt = "PROMPT-SECRET-7f3a9 what is the capital of France"
    headers = {"authorization": f"Bearer {KEY}"}
    seen_errors: list[str] = []
    async with httpx.AsyncClient(timeout=30) as http:
        for path, body in (("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGE)):
            body = {**body, "messages": [{"role": "user", "content": prompt}]}
            ok = await http.post(gateway.url + path, json=body, headers=headers)
            assert ok.status_code == 200
            for fault in ("unauthorized", "bad_request", "server_error", "rate_limit"):
                # a short reset: the accounts must be usable again for the next request
                emulator.state.add_fault(Fault(kind=fault, reset_seconds=0.05))
                failed = await http.post(gateway.url + path, json=body, headers=headers)
                emulator.state.clear_faults()
                assert failed.status_code >= 400
                seen_errors.append(failed.text)
            wrong_key = await http.post(
                gateway.url + path, json=body, headers={"x-api-key": KEY + "x"}
            )
            seen_errors.append(wrong_key.text)
        refresh = await http.post(gateway.url + "/refresh-token", headers=headers)
        seen_errors.append(refresh.text)
    emulator.state.add_fault(Fault(kind="invalid_grant"))
    async with httpx.AsyncClient(timeout=30) as http:
        refresh = await http.post(gateway.url + "/refresh-token", headers=headers)
    seen_errors.append(refresh.text)

    access_tokens = list(emulator.state.issued_access_tokens())
    assert access_tokens, "the emulator issued tokens during the test"
    secrets = [KEY, "demo-refresh-1", "demo-refresh-2", "PROMPT-SECRET-7f3a9", *access_tokens]
    logged = "\n".join(
        record.getMessage() + (str(record.exc_info) if record.exc_info else "")
        for record in caplog.records
    )
    assert "request id=" in logged  # the access log did run
    for secret in secrets:
        assert secret not in logged, f"a secret reached the log: {secret[:6]}..."
        for text in seen_errors:
            assert secret not in text, f"a secret reached an error body: {secret[:6]}..."


async def test_remote_image_urls_are_not_fetched(
    gateway: RunningGateway, emulator: RunningEmulator
) -> None:
    before = len(generation_requests(emulator))
    body = {
        "model": "gemini-3-flash",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": f"{emulator.url}/__emulator/streams"}},
        ]}],
    }
    async with httpx.AsyncClient() as http:
        response = await http.post(gateway.url + "/v1/chat/completions", json=body)
        file_url = await http.post(
            gateway.url + "/v1/chat/completions",
            json={**body, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]},
        )
    assert response.status_code == 400
    assert file_url.status_code == 400
    assert "root:" not in file_url.text
    assert len(generation_requests(emulator)) == before  # nothing was fetched, nothing sent


async def test_non_ascii_api_keys_match_their_utf8_bytes(
    start_gateway: Callable[..., Any],
) -> None:
    key = "clé-secrète-ключ-🔑"
    gateway = await start_gateway(server={"api_keys": (key,)})
    raw = key.encode("utf-8")
    async with httpx.AsyncClient() as http:
        as_x_api_key = await http.post(gateway.url + "/v1/messages", json=MESSAGE,
                                       headers=[(b"x-api-key", raw)])
        as_bearer = await http.post(gateway.url + "/v1/chat/completions", json=CHAT,
                                    headers=[(b"authorization", b"Bearer " + raw)])
        wrong = await http.post(gateway.url + "/v1/messages", json=MESSAGE,
                                headers=[(b"x-api-key", raw[:-1] + b"x")])
    assert as_x_api_key.status_code == 200, as_x_api_key.text
    assert as_bearer.status_code == 200, as_bearer.text
    assert wrong.status_code == 401
    async with httpx.AsyncClient() as http:
        # an empty x-api-key beside a good bearer token is no key at all, not a wrong one
        both = await http.post(gateway.url + "/v1/chat/completions", json=CHAT,
                               headers=[(b"x-api-key", b""), (b"authorization", b"Bearer " + raw)])
    assert both.status_code == 200, both.text
