"""Inputs a hostile tester sent to today's request shapes: each gets a clean answer in the
caller's format (never a 500 or a traceback), over a real socket to the gateway."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
import trio

from tests.support import RunningGateway, generation_requests

MESSAGE = {"model": "claude-sonnet-4-6", "max_tokens": 64,
           "messages": [{"role": "user", "content": "hi"}]}


async def post(gateway: RunningGateway, path: str, body: Any) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(gateway.url + path, content=raw,
                               headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/messages", b'{"model":"claude-sonnet-4-6","max_tokens":9,"messages":'
                         b'[{"role":"user","content":"hi \\ud800"}]}', "messages.0.content"),
        ("/v1/messages", b'{"model":"claude-sonnet-4-6","max_tokens":9,"system":"\\udfff x",'
                         b'"messages":[{"role":"user","content":"hi"}]}', "system"),
        ("/v1/messages", b'{"model":"claude-sonnet-4-6","max_tokens":9,"metadata":{"user_id":'
                         b'"{\\"session_id\\":\\"\\\\ud800\\"}"},"messages":[{"role":"user",'
                         b'"content":"\\ud800"}]}', "messages.0.content"),
        ("/v1/chat/completions", b'{"model":"gemini-3-flash","messages":[{"role":"user",'
                                 b'"content":"\\ud83d"}]}', "messages.0.content"),
        ("/v1/messages/count_tokens", b'{"model":"claude-sonnet-4-6","messages":[{"role":'
                                      b'"user","content":"\\ud800"}]}', "messages.0.content"),
    ],
    ids=["message", "system", "message-not-metadata", "openai", "count-tokens"],
)
async def test_a_lone_surrogate_is_a_400_naming_the_field(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture, path: str, raw: bytes, param: str
) -> None:
    with caplog.at_level(logging.INFO):
        response = await post(gateway, path, raw)
    assert response.status_code == 400
    body = response.json()
    error = body["error"]
    assert "lone UTF-16 surrogate" in error["message"]
    assert error["message"].startswith(param)
    assert (body.get("type") == "error") != path.startswith("/v1/chat")  # the caller's format
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions", "/v1/responses"])
async def test_bodies_not_in_utf8_are_400s(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture, encoding: str, path: str
) -> None:
    """json.loads would read UTF-16 and UTF-32 (and a lone surrogate inside them); JSON on
    the wire is UTF-8, and anything else is refused before it is read."""
    body = ('{"model":"claude-sonnet-4-6","max_tokens":5,"input":"\\ud800",'
            '"messages":[{"role":"user","content":"\\ud800"}]}')
    with caplog.at_level(logging.INFO):
        response = await post(gateway, path, body.encode(encoding))
    assert response.status_code == 400, response.text
    assert "UTF-8" in response.json()["error"]["message"]
    assert "Traceback" not in caplog.text and "ERROR" not in caplog.text


async def test_a_surrogate_pair_is_fine(gateway: RunningGateway) -> None:
    body = {**MESSAGE, "messages": [{"role": "user", "content": "smile \U0001f600"}]}
    raw = json.dumps(body).encode()  # ensure_ascii: the emoji travels as a surrogate pair
    assert b"\\ud83d\\ude00" in raw
    response = await post(gateway, "/v1/messages", raw)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("model", "status"), [
    ("claude-opus-" + "9" * 5000, 200),  # "claude-opus-*": the Opus family, whatever follows
    ("gemini-" + "9" * 5000 + "-pro", 404),
    ("claude-" + "9" * 5000 + "-opus", 404),
])
async def test_absurd_version_numbers_are_not_versions(
    gateway: RunningGateway, model: str, status: int
) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions"):
        response = await post(gateway, path, {**MESSAGE, "model": model})
        assert response.status_code == status, (path, response.text[:300])


async def test_odd_metadata_user_ids_are_opaque(gateway: RunningGateway) -> None:
    for user_id in ('{"a":' + "[" * 50_000 + "]" * 50_000 + "}", "{not json", "[1,2]",
                    json.dumps({"session_id": {"nested": True}}), "x" * 100_000):
        response = await post(gateway, "/v1/messages",
                              {**MESSAGE, "metadata": {"user_id": user_id}})
        assert response.status_code == 200, response.text[:200]


async def test_blank_system_messages_are_not_sent(gateway: RunningGateway) -> None:
    body = {**MESSAGE, "messages": [
        {"role": "user", "content": "hi"}, {"role": "system", "content": "   "},
        {"role": "assistant", "content": "yo"}, {"role": "system", "content": [
            {"type": "text", "text": " \n "}]}, {"role": "user", "content": "again"}]}
    response = await post(gateway, "/v1/messages", body)
    assert response.status_code == 200, response.text
    sent = generation_requests(gateway.emulator)[-1]
    assert "system-reminder" not in json.dumps(sent)


async def test_the_log_names_an_unknown_model(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        response = await post(gateway, "/v1/messages", {**MESSAGE, "model": "no\nsuch model"})
        for _ in range(100):  # the line is written once the answer is out
            lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
            if lines:
                break
            await trio.sleep(0.01)
    assert response.status_code == 404
    [line] = lines
    assert "requested=no?such?model" in line and "status=404" in line


async def test_effort_is_checked_whatever_else_the_body_says(gateway: RunningGateway) -> None:
    body = {**MESSAGE, "output_config": {"effort": 7}, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "x", "output_config": {"effort": "low"}}]}
    response = await post(gateway, "/v1/messages", body)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("output_config.effort")
    dropped = {**MESSAGE, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "x", "clear_at": "next_user_message",
         "output_config": {"effort": 7}},
        {"role": "user", "content": "again"}]}
    response = await post(gateway, "/v1/messages", dropped)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("messages.1.output_config.effort")


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate"])
async def test_compressed_bodies_are_415_naming_the_encoding(
    gateway: RunningGateway, encoding: str
) -> None:
    import gzip

    body = json.dumps({"model": "gemini-3-flash", "messages": [
        {"role": "user", "content": "hi"}]}).encode()
    sent = gzip.compress(body) if encoding == "gzip" else body
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(gateway.url + "/v1/chat/completions", content=sent, headers={
            "content-type": "application/json", "content-encoding": encoding})
    assert response.status_code == 415
    assert encoding in response.json()["error"]["message"]


async def test_a_huge_integer_is_refused_without_python_internals(
    gateway: RunningGateway,
) -> None:
    raw = b'{"model": "gemini-3-flash", "max_tokens": ' + b"9" * 5000 + b', "messages": []}'
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(gateway.url + "/v1/chat/completions", content=raw,
                                   headers={"content-type": "application/json"})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "4300 digits" in message and "sys." not in message
