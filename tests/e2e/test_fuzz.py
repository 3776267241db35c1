"""Hostile input: random and malformed bodies at every endpoint over a real socket.

Hypothesis drives a blocking httpx client from a worker thread while the gateway serves in
the test's trio loop. Every answer must be a 2xx or a 4xx in the caller's own error format:
never a 5xx, never a stack trace, never a hang (each call has a deadline).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import RunningEmulator, RunningGateway

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20,
)

ROLES = st.sampled_from(["user", "assistant", "system", "tool", "developer", "bogus", 1, None])
MODELS = st.sampled_from(["claude-sonnet-4-6", "gemini-3-flash", "gpt-4o", "", None, 3])
BLOCK_TYPES = st.sampled_from(
    ["text", "image", "document", "tool_use", "tool_result", "thinking", "image_url", "x", None]
)
BLOCKS = st.fixed_dictionaries(
    {"type": BLOCK_TYPES},
    optional={
        "text": JSON_VALUES, "source": JSON_VALUES, "id": JSON_VALUES, "input": JSON_VALUES,
        "tool_use_id": JSON_VALUES, "content": JSON_VALUES, "image_url": JSON_VALUES,
        "signature": JSON_VALUES,
    },
)
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": ROLES},
        optional={"content": st.text(max_size=30) | st.lists(BLOCKS, max_size=3) | JSON_VALUES,
                  "tool_calls": JSON_VALUES, "tool_call_id": JSON_VALUES},
    ),
    max_size=4,
)
# Near-valid requests: the right shape with wrong parts, which reaches deeper code than noise.
NEAR_VALID = st.fixed_dictionaries(
    {"model": MODELS, "messages": MESSAGES},
    optional={
        "max_tokens": JSON_VALUES | st.integers(-5, 10**9), "stream": JSON_VALUES,
        "system": JSON_VALUES, "tools": JSON_VALUES, "tool_choice": JSON_VALUES,
        "thinking": JSON_VALUES, "temperature": JSON_VALUES, "stop": JSON_VALUES,
        "stop_sequences": JSON_VALUES, "response_format": JSON_VALUES, "n": JSON_VALUES,
        "reasoning_effort": JSON_VALUES, "stream_options": JSON_VALUES,
        "max_completion_tokens": JSON_VALUES, "top_k": JSON_VALUES,
    },
)
BODIES = (
    st.binary(max_size=200).map(lambda b: ("raw", b))
    | JSON_VALUES.map(lambda v: ("json", v))
    | NEAR_VALID.map(lambda v: ("json", v))
)
POST_PATHS = ["/v1/messages", "/v1/chat/completions", "/v1/messages/count_tokens",
              "/refresh-token"]
GET_PATHS = ["/v1/models", "/health", "/account-limits", "/metrics", "/nope"]


def check(path: str, response: httpx.Response) -> None:
    assert response.status_code < 500, (path, response.status_code, response.text[:500])
    if response.status_code < 400:
        return
    assert "Traceback" not in response.text
    body = response.json()
    if path.startswith("/v1/messages"):
        assert body["type"] == "error"
        assert isinstance(body["error"]["type"], str)
        assert isinstance(body["error"]["message"], str)
    elif path == "/v1/chat/completions":
        assert set(body["error"]) >= {"message", "type", "param", "code"}
    else:
        assert "error" in body


def fuzz(url: str) -> None:
    client = httpx.Client(base_url=url, timeout=20)

    @settings(max_examples=150, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(POST_PATHS), body=BODIES)
    def post_anything(path: str, body: tuple[str, Any]) -> None:
        kind, value = body
        if kind == "raw":
            response = client.post(path, content=value,
                                    headers={"content-type": "application/json"})
        else:
            # force non-streaming: a valid stream would be a 200 with a long body, fine but slow
            if isinstance(value, dict) and "stream" in value:
                value = {**value, "stream": False}
            response = client.post(path, content=json.dumps(value),
                                   headers={"content-type": "application/json"})
        check(path, response)

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(GET_PATHS + POST_PATHS),
           query=st.dictionaries(st.sampled_from(["format", "email", "x"]), st.text(max_size=8),
                                 max_size=2),
           method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH"]))
    def other_methods(path: str, query: dict[str, str], method: str) -> None:
        response = client.request(method, path, params=query)
        check(path, response)

    with client:
        post_anything()
        other_methods()


async def test_fuzz_every_endpoint(gateway: RunningGateway, emulator: RunningEmulator) -> None:
    emulator.state.text_chunks = 1
    with trio.fail_after(300):
        await trio.to_thread.run_sync(fuzz, gateway.url)


@pytest.mark.parametrize("depth", [300, 450, 5000])
async def test_deeply_nested_json_is_a_400(gateway: RunningGateway, depth: int) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    # a tool schema deep enough to break any recursive walk (built as text: json.dumps
    # itself could not encode it)
    schema = '{"type":"object","properties":{"x":' * depth + "{}" + "}}" * depth
    tool_body = (
        '{"model":"claude-sonnet-4-6","max_tokens":16,'
        '"messages":[{"role":"user","content":"hi"}],'
        '"tools":[{"name":"deep","input_schema":' + schema + "}]}"
    )
    async with httpx.AsyncClient(timeout=30) as http:
        for path in POST_PATHS[:3]:
            response = await http.post(gateway.url + path, content=deep,
                                        headers={"content-type": "application/json"})
            assert response.status_code == 400, (path, response.text[:200])
            check(path, response)
        tools = await http.post(gateway.url + "/v1/messages", content=tool_body,
                                headers={"content-type": "application/json"})
    # shallow enough to parse, deep enough to trouble recursive code: a 400 or a real answer
    assert tools.status_code in (200, 400), tools.text[:300]
    check("/v1/messages", tools)
