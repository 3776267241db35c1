"""The generation transport (gateway/upstream/transport.py) against real servers.

HTTP/2: the emulator over TLS (trustme certificates, h2 by ALPN, as the real upstream), with
its streams counted; a purpose-built h2 server where the emulator cannot do what a test needs
on command (a GOAWAY in the middle of two streams). HTTP/1.1: the plain emulator.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import trio
import trustme

from gateway.emulator import DEMO_ACCOUNTS, EmulatorState, serve_emulator
from gateway.upstream.transport import Transport, TransportError, TransportTimeout

USER_AGENT = "antigravity/hub/2.9.1 darwin/arm64"


@pytest.fixture
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_files(authority: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    cert = authority.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key))
    with chain.open("wb") as out:
        for blob in cert.cert_chain_pems:
            out.write(blob.bytes())
    return str(chain), str(key)


def client_context(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


@pytest.fixture
async def transport(
    nursery: trio.Nursery, authority: trustme.CA
) -> AsyncIterator[Transport]:
    made = Transport(ssl_context=client_context(authority), connect_timeout=5,
                     read_timeout=10)
    scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await made.run(task_status=task_status)

    await nursery.start(run)
    yield made
    scope.cancel()


async def emulator_at(nursery: trio.Nursery, *, tls: tuple[str, str] | None = None,
                      max_streams: int = 10_000) -> tuple[str, EmulatorState]:
    state = EmulatorState.with_demo_accounts()
    url = await nursery.start(partial(serve_emulator, state, host="127.0.0.1", tls=tls,
                                      max_streams=max_streams))
    return url, state


def generation(url: str, state: EmulatorState, text: str = "hello"
               ) -> tuple[str, list[tuple[str, str]], bytes]:
    account = DEMO_ACCOUNTS[0]
    token = state.issue_access_token(account.email)
    body = {"project": account.project, "model": "gemini-3-flash", "request": {
        "contents": [{"role": "user", "parts": [{"text": text}]}]},
        "userAgent": "antigravity", "requestType": "agent", "requestId": "agent-test"}
    headers = [("authorization", f"Bearer {token}"), ("content-type", "application/json"),
               ("accept", "text/event-stream"), ("user-agent", USER_AGENT)]
    return (f"{url}/v1internal:streamGenerateContent?alt=sse", headers,
            json.dumps(body).encode())


async def read_all(transport: Transport, url: str, headers: list[tuple[str, str]],
                   body: bytes) -> tuple[int, str, bytes]:
    response = await transport.request("POST", url, headers, body)
    try:
        data = b"".join([chunk async for chunk in response.chunks()])
    finally:
        await response.aclose()
    return response.status, response.http_version, data


async def test_h2_multiplexes_concurrent_streams_on_one_warm_connection(
    nursery: trio.Nursery, transport: Transport, server_files: tuple[str, str]
) -> None:
    url, state = await emulator_at(nursery, tls=server_files)
    state.configure({"chunk_delay_seconds": 0.01, "text_chunks": 5})
    answers: list[tuple[int, str, bytes]] = []

    async def one(index: int) -> None:
        answers.append(await read_all(transport, *generation(url, state, f"q{index}")))

    async with trio.open_nursery() as inner:
        for index in range(20):
            inner.start_soon(one, index)
    assert [(status, version) for status, version, _ in answers] == [(200, "HTTP/2")] * 20
    assert all(b"STOP" in data for _, _, data in answers)  # each answer whole
    assert state.connections_opened == 1
    for index in range(5):  # and sequential ones ride the same connection
        status, _, _ = await read_all(transport, *generation(url, state, f"again {index}"))
        assert status == 200
    assert state.connections_opened == 1
    assert transport.stats()["h2_streams"] == 0


async def test_h2_opens_a_second_connection_at_the_servers_stream_limit(
    nursery: trio.Nursery, transport: Transport, server_files: tuple[str, str]
) -> None:
    url, state = await emulator_at(nursery, tls=server_files, max_streams=2)
    state.configure({"chunk_delay_seconds": 0.05, "text_chunks": 6})
    statuses: list[int] = []

    async def one(index: int) -> None:
        statuses.append((await read_all(transport, *generation(url, state, f"q{index}")))[0])

    async with trio.open_nursery() as inner:
        for index in range(5):
            inner.start_soon(one, index)
    assert statuses == [200] * 5
    assert state.connections_opened == 3  # 2 + 2 + 1 streams


async def test_h2_closing_a_response_early_resets_only_its_stream(
    nursery: trio.Nursery, transport: Transport, server_files: tuple[str, str]
) -> None:
    url, state = await emulator_at(nursery, tls=server_files)
    state.configure({"chunk_delay_seconds": 0.2, "text_chunks": 50})
    response = await transport.request("POST", *generation(url, state))
    chunks = response.chunks()
    assert await chunks.__anext__()
    assert state.open_streams == 1
    await response.aclose()  # the client went away
    with trio.fail_after(2):
        while state.open_streams:
            await trio.sleep(0.005)
    state.configure({"chunk_delay_seconds": 0.0, "text_chunks": 3})
    status, _, _ = await read_all(transport, *generation(url, state))
    assert status == 200
    assert state.connections_opened == 1  # the connection outlived the reset stream


async def test_h2_flow_control_carries_a_large_answer_and_a_large_body(
    nursery: trio.Nursery, transport: Transport, server_files: tuple[str, str]
) -> None:
    url, state = await emulator_at(nursery, tls=server_files)
    state.configure({"text_chunks": 512, "chunk_chars": 8 << 20})  # an 8 MiB answer
    target, headers, _ = generation(url, state)
    # a 1 MiB prompt: far beyond the server's initial 64 KiB window
    _, _, body = generation(url, state, "x" * (1 << 20))
    status, version, data = await read_all(transport, target, headers, body)
    assert (status, version) == (200, "HTTP/2")
    assert len(data) > 6 << 20


async def test_h1_keeps_connections_alive_and_closes_a_dropped_one(
    nursery: trio.Nursery, transport: Transport
) -> None:
    url, state = await emulator_at(nursery)
    for index in range(5):
        status, version, data = await read_all(transport, *generation(url, state, f"{index}"))
        assert (status, version) == (200, "HTTP/1.1") and b"STOP" in data
    assert state.connections_opened == 1  # keep-alive
    state.configure({"chunk_delay_seconds": 0.2, "text_chunks": 50})
    response = await transport.request("POST", *generation(url, state))
    assert await response.chunks().__anext__()
    await response.aclose()
    with trio.fail_after(2):
        while state.open_streams:
            await trio.sleep(0.005)
    assert transport.stats()["h1_idle"] == 0  # a connection closed mid-answer is not reused


async def test_errors_are_transport_errors(nursery: trio.Nursery, transport: Transport,
                                           server_files: tuple[str, str]) -> None:
    with pytest.raises(TransportError):  # nothing listens there
        await transport.request("POST", "https://127.0.0.1:9/x", [], b"{}")
    url, state = await emulator_at(nursery, tls=server_files)
    state.configure({"chunk_delay_seconds": 30, "text_chunks": 2})
    slow = Transport(ssl_context=transport.ssl_context, connect_timeout=5, read_timeout=0.3)
    async with trio.open_nursery() as inner:
        await inner.start(slow.run)
        # a body read that waits past the read timeout ends (its watchdog's), over h2 and
        # over h1, whose connection is then closed rather than pooled
        plain_url, plain = await emulator_at(nursery)
        plain.configure({"chunk_delay_seconds": 30, "text_chunks": 2})
        for where, its_state in ((url, state), (plain_url, plain)):
            response = await slow.request("POST", *generation(where, its_state))  # head in
            assert response.status == 200
            with trio.fail_after(5), pytest.raises(TransportTimeout):
                async for _ in response.chunks():
                    pass
            await response.aclose()
        assert not slow.watchdog.reads and slow.stats()["h1_idle"] == 0
        inner.cancel_scope.cancel()


# -- GOAWAY ---------------------------------------------------------------------------------


def goaway_frame(last_stream_id: int) -> bytes:
    payload = struct.pack(">II", last_stream_id, 0)  # NO_ERROR
    return struct.pack(">I", len(payload))[1:] + b"\x07\x00" + struct.pack(">I", 0) + payload


class GoawayServer:
    """An h2 server over TLS: its first connection answers the first stream, but says
    GOAWAY (last stream = that one) once a second stream has arrived; later connections
    answer every stream."""

    def __init__(self, server_files: tuple[str, str]) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(*server_files)
        self.context.set_alpn_protocols(["h2"])
        self.connections = 0
        self.answered: list[tuple[int, int]] = []  # (connection, stream id)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        tls = [trio.SSLListener(listener, self.context) for listener in listeners]
        await trio.serve_listeners(self.connection, tls)

    async def connection(self, stream: trio.SSLStream[Any]) -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # a hang-up without TLS goodbye
            await self.converse(stream)

    async def converse(self, stream: trio.SSLStream[Any]) -> None:
        self.connections += 1
        number = self.connections
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        pending: list[int] = []
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    pending.append(event.stream_id)
            if number == 1 and len(pending) == 2:
                first, _ = sorted(pending)
                # GOAWAY first, then the answer it lets finish (h2's own close_connection
                # would not let this side send that answer)
                await stream.send_all(conn.data_to_send() + goaway_frame(first))
                self.respond(conn, first, number)
                pending.clear()
            elif number > 1:
                for stream_id in pending:
                    self.respond(conn, stream_id, number)
                pending.clear()
            await stream.send_all(conn.data_to_send())

    def respond(self, conn: h2.connection.H2Connection, stream_id: int, number: int) -> None:
        conn.send_headers(stream_id, [(":status", "200"), ("content-type", "text/plain")])
        conn.send_data(stream_id, f"connection {number}".encode(), end_stream=True)
        self.answered.append((number, stream_id))


async def test_a_goaway_retries_the_streams_the_server_never_processed(
    nursery: trio.Nursery, transport: Transport, server_files: tuple[str, str]
) -> None:
    server = GoawayServer(server_files)
    port = await nursery.start(server.serve)
    url = f"https://127.0.0.1:{port}/generate"
    bodies: list[bytes] = []

    async def one() -> None:
        response = await transport.request("POST", url, [], b"{}")
        bodies.append(b"".join([c async for c in response.chunks()]))
        await response.aclose()

    async with trio.open_nursery() as inner:
        inner.start_soon(one)
        inner.start_soon(one)
    assert sorted(bodies) == [b"connection 1", b"connection 2"]
    assert server.connections == 2


async def test_the_read_watchdog_asks_again_before_each_expiry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two reads stalled in one sweep; the first one's expiry lets the other's data in (it
    stops waiting and ends): that one is then left alone, not closed under a later
    request."""
    from gateway.upstream.transport import _BodyRead, _ReadWatchdog

    watchdog = _ReadWatchdog(1.0)
    expired: list[str] = []
    went_on = trio.Event()
    reads: dict[str, _BodyRead] = {}

    def expiry(name: str) -> Callable[[], Awaitable[None]]:
        async def expire() -> None:
            expired.append(name)
            await went_on.wait()  # (closing a connection checkpoints: others run meanwhile)
        return expire

    for name in ("a", "b"):
        reads[name] = watchdog.open(expiry(name))
        reads[name].waiting_since = trio.current_time()

    async def the_other_reads_on() -> None:
        while not expired:
            await trio.sleep(0.01)
        other = reads["b" if expired[0] == "a" else "a"]
        other.waiting_since = None
        watchdog.close(other)
        went_on.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog.run)
        nursery.start_soon(the_other_reads_on)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert len(expired) == 1
    first, other = expired[0], "b" if expired[0] == "a" else "a"
    assert reads[first].stalled and not reads[other].stalled


async def test_good_payloads_before_a_malformed_event_are_kept() -> None:
    from gateway.upstream.client import UpstreamHTTPError, _sse_payloads

    async def chunks() -> AsyncIterator[bytes]:
        yield b'data: {"response": {"candidates": []}}\n\ndata: {not json\n\n'

    got: list[list[dict[str, Any]]] = []
    with pytest.raises(UpstreamHTTPError, match="malformed"):
        async for batch in _sse_payloads(chunks(), "https://up", lambda exc: None):
            got.append(batch)
    assert got == [[{"candidates": []}]]
