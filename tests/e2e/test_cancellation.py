"""A client that goes away stops the upstream stream at once (quota is money).

For each API and each HTTP version the client opens a long, slow stream, reads its first
bytes, then drops it: an HTTP/1.1 client closes its connection; an h2 client resets just
that stream (RST_STREAM) and keeps the connection open, the harder case. The emulator's
open-stream counter must fall to zero within 100 ms of the drop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trio

from tests.support import RunningEmulator, RunningGateway

ANTHROPIC_BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 4096,
    "stream": True,
    "messages": [{"role": "user", "content": "Tell me a long story"}],
}
OPENAI_BODY = {
    "model": "gemini-3-flash",
    "stream": True,
    "messages": [{"role": "user", "content": "Tell me a long story"}],
}
RESPONSES_BODY = {"model": "claude-opus-4-6-thinking", "stream": True,
                  "input": "Tell me a long story", "reasoning": {"summary": "auto"}}
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "Tell me a long story"}]}],
               "generationConfig": {"thinkingConfig": {"includeThoughts": True}}}
ROUTES = {
    "anthropic": ("/v1/messages", ANTHROPIC_BODY),
    "openai": ("/v1/chat/completions", OPENAI_BODY),
    "responses": ("/v1/responses", RESPONSES_BODY),
    "gemini": ("/v1beta/models/gemini-3-flash:streamGenerateContent?alt=sse", GEMINI_BODY),
    "gemini-array": ("/v1beta/models/claude-sonnet-4-6:streamGenerateContent", GEMINI_BODY),
}

DROP_DEADLINE = 0.1


def slow_long_streams(emulator: RunningEmulator) -> None:
    emulator.state.text_chunks = 200
    emulator.state.chunk_delay_seconds = 0.05


async def wait_until_closed(emulator: RunningEmulator, dropped_at: float) -> float:
    with trio.fail_after(5):
        while emulator.state.open_streams:
            await trio.sleep(0.001)
    return trio.current_time() - dropped_at


async def h1_drop(url: str, path: str, body: dict[str, Any]) -> float:
    """Read the first SSE bytes over HTTP/1.1, then close the connection."""
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream("POST", url + path, json=body) as response,
    ):
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            if chunk:
                break
    # leaving both contexts closed the socket mid-stream
    return trio.current_time()


async def h2_reset(url: str, path: str, body: dict[str, Any]) -> tuple[float, trio.SocketStream]:
    """Speak h2c with prior knowledge, read the first DATA frame, then RST_STREAM it.

    Returns the drop time and the still-open connection (closed by the caller afterwards),
    so what is tested is the stream reset, not a closed socket.
    """
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    sock = await trio.open_tcp_stream(parts.hostname, parts.port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    payload = json.dumps(body).encode()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(
        stream_id,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", f"{parts.hostname}:{parts.port}"),
            (":path", path),
            ("content-type", "application/json"),
            ("content-length", str(len(payload))),
        ],
    )
    conn.send_data(stream_id, payload, end_stream=True)
    await sock.send_all(conn.data_to_send())
    status = None
    with trio.fail_after(10):
        while True:
            data = await sock.receive_some(65536)
            assert data, "gateway closed the h2 connection"
            got_data = False
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                    got_data = True
            if got_data:
                break
            await sock.send_all(conn.data_to_send())
    assert status == b"200"
    conn.reset_stream(stream_id)
    await sock.send_all(conn.data_to_send())
    return trio.current_time(), sock


@pytest.mark.parametrize("api", list(ROUTES))
@pytest.mark.parametrize("version", ["http1", "h2"])
async def test_client_drop_closes_upstream_stream(
    gateway: RunningGateway, emulator: RunningEmulator, api: str, version: str
) -> None:
    slow_long_streams(emulator)
    path, body = ROUTES[api]
    opened_before = emulator.state.streams_opened
    if version == "http1":
        dropped_at = await h1_drop(gateway.url, path, body)
        elapsed = await wait_until_closed(emulator, dropped_at)
    else:
        dropped_at, sock = await h2_reset(gateway.url, path, body)
        try:
            elapsed = await wait_until_closed(emulator, dropped_at)
        finally:
            await sock.aclose()
    assert emulator.state.streams_opened == opened_before + 1
    assert elapsed < DROP_DEADLINE, f"upstream stream outlived the client by {elapsed:.3f}s"
    # and the gateway itself holds nothing open
    with trio.fail_after(2):
        while gateway.services.metrics.open_streams._value.get():
            await trio.sleep(0.005)


async def test_stalled_upstream_gives_timeout_not_hang(
    start_gateway: Callable[..., Any], emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    gateway = await start_gateway(upstream={"read_timeout_seconds": 0.5, "max_retries": 0})
    emulator.state.add_fault(Fault(kind="stall"))
    async with httpx.AsyncClient(timeout=10) as http:
        with trio.fail_after(8):
            response = await http.post(
                gateway.url + "/v1/messages", json={**ANTHROPIC_BODY, "stream": False}
            )
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "api_error"
    assert "timed out" in response.json()["error"]["message"]
    assert emulator.state.open_streams == 0


@pytest.mark.parametrize(
    ("api", "marker"),
    [("anthropic", b"event: ping"), ("openai", b": keep-alive"), ("responses", b": keep-alive"),
     ("gemini", b"\r\n\r\n\r\n"), ("gemini-array", b"[\r\n")],
)
async def test_idle_streams_get_keepalives(
    start_gateway: Callable[..., Any], emulator: RunningEmulator, api: str, marker: bytes
) -> None:
    from gateway.emulator import Fault

    gateway = await start_gateway(server={"keepalive_seconds": 0.1})
    emulator.state.add_fault(Fault(kind="slow", delay_seconds=0.35))
    path, body = ROUTES[api]
    async with httpx.AsyncClient(timeout=20) as http:
        response = await http.post(gateway.url + path, json=body)
    assert response.status_code == 200
    assert marker in response.content
    # the keep-alives did not break the stream's grammar: it still finishes properly
    tail = {"anthropic": b"event: message_stop", "openai": b"data: [DONE]",
            "responses": b"event: response.completed", "gemini": b'"finishReason":"STOP"',
            "gemini-array": b'"finishReason":"STOP"'}[api]
    assert tail in response.content
    if api == "gemini-array":  # blank lines inside the array are still one JSON document
        assert json.loads(response.content)[-1]["candidates"][0]["finishReason"] == "STOP"



async def test_h2_connections_closing_under_load_leave_no_upstream_open(
    start_gateway: Callable[..., Any], emulator: RunningEmulator
) -> None:
    """Many h2 streams per connection, committed by keep-alives, then every client goes.

    Regression: when a keep-alive's status line found the connection broken, hypercorn
    closed the connection's streams from inside that send; the request's own disconnect
    cancelled it half-way and one stream per connection never heard of the disconnect, so
    its upstream stream stayed open for ever.
    """
    gateway = await start_gateway(server={"keepalive_seconds": 1.0})
    emulator.state.chunk_delay_seconds = 600  # the upstream says nothing: keep-alives only
    streams, connections = 1200, 12
    clients = [httpx.AsyncClient(http1=False, http2=True, timeout=None)
               for _ in range(connections)]

    async def hold(client: httpx.AsyncClient) -> None:
        request = client.build_request("POST", gateway.url + "/v1/messages", json=ANTHROPIC_BODY)
        await client.send(request, stream=True)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        # streams keep arriving, so keep-alive status lines are being written (committing
        # each stream a second after it opened) at the moment the clients go away
        for i in range(streams):
            nursery.start_soon(hold, clients[i % connections])
            if i % 100 == 99:
                await trio.sleep(0.1)
        await trio.sleep(0.6)
        nursery.cancel_scope.cancel()
    for client in clients:
        await client.aclose()
    with trio.fail_after(10):
        while emulator.state.open_streams:
            await trio.sleep(0.05)
    with trio.fail_after(5):
        while gateway.services.metrics.open_streams._value.get():
            await trio.sleep(0.05)
