"""The HTTP edge under attack: raw sockets sending what well-behaved clients never do."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from tests.support import RunningGateway


def _port(gateway: RunningGateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


def exchange(port: int, data: bytes, wait: float = 3.0) -> tuple[bytes, float | None]:
    """Send `data`; return what came back and how long until the server closed (None: it
    kept the connection open for `wait` seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as conn:
        conn.sendall(data)
        received = b""
        start = time.monotonic()
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return received, time.monotonic() - start
                received += chunk
        except TimeoutError:
            return received, None


async def test_websocket_upgrades_are_refused_cleanly(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    request = (b"GET /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n")
    with caplog.at_level(logging.INFO):
        for path in (b"/v1/messages", b"/health", b"/nowhere"):
            answer, _ = await trio.to_thread.run_sync(
                exchange, _port(gateway), request.replace(b"/v1/messages", path, 1))
            assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert "Traceback" not in caplog.text and "ERROR" not in caplog.text


MESSAGE = (b'{"model":"claude-sonnet-4-6","max_tokens":16,'
           b'"messages":[{"role":"user","content":"hi"}]}')


def request(path: bytes, body: bytes, *, extra: bytes = b"",
            content_type: bytes = b"application/json", version: bytes = b"1.1") -> bytes:
    return (b"POST " + path + b" HTTP/" + version + b"\r\nHost: 127.0.0.1\r\n"
            + (b"Content-Type: " + content_type + b"\r\n" if content_type else b"")
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


@pytest.mark.parametrize("after", [b"x", b"\x88\x80\x00\x00\x00\x00"], ids=["byte", "close-frame"])
async def test_a_websocket_upgrade_with_bytes_after_it_does_not_take_the_server_down(
    gateway: RunningGateway, after: bytes
) -> None:
    request = (b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n" + after)
    for _ in range(3):
        answer, _ = await trio.to_thread.run_sync(exchange, _port(gateway), request, 2.0)
        assert answer.startswith((b"HTTP/1.1 4", b"")), answer[:200]
    health, _ = await trio.to_thread.run_sync(
        exchange, _port(gateway), b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  b"Connection: close\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200"), health[:200]


@pytest.mark.parametrize(
    ("path", "marker"),
    [(b"/v1/messages", b'"type":"error"'), (b"/v1/chat/completions", b'"code":"request_timeout"'),
     (b"/v1/messages/count_tokens", b'"type":"error"'), (b"/refresh-token", b'"error"')],
)
@pytest.mark.parametrize("framing", ["short-length", "unfinished-chunks"])
async def test_bodies_that_never_finish_get_408_and_the_connection_closes(
    start_gateway: Any, path: bytes, marker: bytes, framing: str
) -> None:
    gateway = await start_gateway(server={"body_timeout_seconds": 0.5})
    if framing == "short-length":
        data = (b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    else:
        data = (b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n")
    answer, closed_after = await trio.to_thread.run_sync(exchange, _port(gateway), data, 5.0)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert marker in answer
    assert closed_after is not None and closed_after < 3  # not held open after the 408


async def test_a_request_head_that_trickles_in_is_cut_off_at_the_idle_deadline(
    start_gateway: Any,
) -> None:
    """Slowloris on the head: one header byte every 0.2 s must not hold the connection past
    server.idle_timeout_seconds, however long the trickle goes on."""
    gateway = await start_gateway(server={"idle_timeout_seconds": 1.0})

    def trickle(port: int) -> float | None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            start = time.monotonic()
            try:
                for _ in range(40):  # 8 s of trickle
                    conn.sendall(b"X")
                    time.sleep(0.2)
                    conn.setblocking(False)
                    try:
                        if conn.recv(65536) == b"":
                            return time.monotonic() - start
                    except BlockingIOError:
                        pass
                    finally:
                        conn.setblocking(True)
            except OSError:
                return time.monotonic() - start
        return None

    closed_after = await trio.to_thread.run_sync(trickle, _port(gateway))
    assert closed_after is not None and closed_after < 4


@pytest.mark.parametrize(
    "data",
    [
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        request(b"/v1/messages", MESSAGE, extra=b"Connection: close\r\n"),
        request(b"/v1/messages", MESSAGE, version=b"1.0"),
    ],
    ids=["health-close", "health-1.0", "models-close", "chat-close", "chat-1.0"],
)
async def test_connections_close_when_the_client_says_so(
    gateway: RunningGateway, data: bytes
) -> None:
    answer, closed_after = await trio.to_thread.run_sync(exchange, _port(gateway), data)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert closed_after is not None and closed_after < 2


async def test_content_length_with_transfer_encoding_is_refused_and_closed(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    smuggled = b"GET /account-limits HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    data = (b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + body)
    answer, closed_after = await trio.to_thread.run_sync(exchange, _port(gateway), data)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"Transfer-Encoding" in answer
    assert answer.count(b"HTTP/1.1 ") == 1  # the smuggled request never ran
    assert closed_after is not None
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    ("path", "content_type", "anthropic"),
    [
        (b"/v1/messages", b"text/plain", True),
        (b"/v1/messages", b"application/x-www-form-urlencoded", True),
        (b"/v1/messages", b"", True),
        (b"/v1/chat/completions", b"text/plain;charset=UTF-8", False),
        (b"/v1/messages/count_tokens", b"multipart/form-data; boundary=x", True),
        (b"/refresh-token", b"text/plain", False),
    ],
)
async def test_bodies_that_are_not_json_are_415_in_the_callers_format(
    gateway: RunningGateway, path: bytes, content_type: bytes, anthropic: bool
) -> None:
    """A web page can send these cross-site without asking (a "simple" request)."""
    body = MESSAGE if path != b"/refresh-token" else b"{}"
    answer, _ = await trio.to_thread.run_sync(
        exchange, _port(gateway), request(path, body, content_type=content_type,
                                          extra=b"Connection: close\r\n"))
    assert answer.startswith(b"HTTP/1.1 415"), answer[:300]
    assert (b'"type":"error"' in answer) == anthropic
    assert b"application/json" in answer
    assert not list(gateway.emulator.state.generation_requests())


@pytest.mark.parametrize("host", [b"evil.example.com", b"attacker.test:8080", b"10.0.0.1",
                                  b"127.0.0.1.rebind.attacker.example:8080",
                                  b"127.attacker.example", b"0x7f.0.0.1"])
async def test_foreign_hosts_are_refused_on_a_loopback_gateway(
    gateway: RunningGateway, host: bytes
) -> None:
    """DNS rebinding: a page whose name now points at 127.0.0.1 must not read the pool."""
    data = b"GET /account-limits HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    answer, _ = await trio.to_thread.run_sync(exchange, _port(gateway), data)
    assert answer.startswith(b"HTTP/1.1 421"), answer[:300]
    assert b"demo1@example.com" not in answer
    assert b"server.allowed_hosts" in answer


@pytest.mark.parametrize("host", [b"localhost", b"127.0.0.1:1234", b"[::1]:80", b"localhost."])
async def test_loopback_hosts_are_served(gateway: RunningGateway, host: bytes) -> None:
    data = b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    answer, _ = await trio.to_thread.run_sync(exchange, _port(gateway), data)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


async def test_allowed_hosts_extend_the_list(start_gateway: Any) -> None:
    gateway = await start_gateway(server={"allowed_hosts": ("gw.example.com", "*.corp.test")})
    for host, status in ((b"gw.example.com", b"200"), (b"a.corp.test:443", b"200"),
                         (b"corp.test.evil", b"421")):
        data = b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        answer, _ = await trio.to_thread.run_sync(exchange, _port(gateway), data)
        assert answer.startswith(b"HTTP/1.1 " + status), (host, answer[:200])


async def test_a_burst_past_the_limit_is_refused_fast_and_health_answers(
    start_gateway: Any,
) -> None:
    gateway = await start_gateway(server={"max_concurrent_requests": 3})
    gateway.emulator.state.chunk_delay_seconds = 0.5  # held streams: ~1.5 s each
    body = {"model": "claude-sonnet-4-6", "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "hold on"}]}
    statuses: list[int] = []

    async def one(path: str, payload: dict[str, Any]) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(gateway.url + path, json=payload)
            statuses.append(response.status_code)
            if response.status_code != 200:
                refused.append(response)

    refused: list[httpx.Response] = []
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one, "/v1/messages", body)
        await gateway.emulator.state.wait_open_streams(3, timeout=5)
        started = trio.current_time()
        async with httpx.AsyncClient(timeout=5) as http:
            over = await http.post(gateway.url + "/v1/messages", json=body)
            over_openai = await http.post(gateway.url + "/v1/chat/completions", json={
                "model": "gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]})
            health = await http.get(gateway.url + "/health")
        assert trio.current_time() - started < 1.0  # answered at once, not queued
    assert over.status_code == 529 and over.json()["error"]["type"] == "overloaded_error"
    assert over_openai.status_code == 503
    assert "server.max_concurrent_requests" in over.text
    assert over.headers["retry-after"] == "1"
    assert health.status_code == 200
    assert sorted(statuses) == [200, 200, 200]  # the admitted ones finish normally


def h2_exchange(port: int, streams: list[tuple[list[tuple[str, str]], bytes]]) -> list[Any]:
    """Open one h2c connection, send each (headers, body) on its own stream, and return the
    h2 events the server's answers make, until every stream ended or was reset."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(conn.data_to_send())
        ids = []
        for headers, body in streams:
            stream_id = conn.get_next_available_stream_id()
            ids.append(stream_id)
            conn.send_headers(stream_id, headers, end_stream=not body)
            if body:
                conn.send_data(stream_id, body, end_stream=True)
            sock.sendall(conn.data_to_send())
        return h2_events_until_ended(conn, sock, set(ids))


def h2_events_until_ended(conn: Any, sock: socket.socket, pending: set[int]) -> list[Any]:
    """The h2 events the server sends until each of `pending` ended or was reset (or the
    connection was)."""
    import h2.events

    events: list[Any] = []
    while pending:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            events.append(event)
            if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                pending.discard(event.stream_id)
            if isinstance(event, h2.events.ConnectionTerminated):
                pending.clear()
        sock.sendall(conn.data_to_send())
    return events


async def test_one_malformed_h2_stream_is_reset_alone(gateway: RunningGateway) -> None:
    """A content-length that the DATA does not match is that stream's error (RFC 9113
    8.1.1), not the connection's: the other streams on it are answered."""
    import h2.errors
    import h2.events

    authority = gateway.url.removeprefix("http://")
    def headers(method: str, path: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
        return [(":method", method), (":path", path), (":scheme", "http"),
                (":authority", authority), *extra]

    events = await trio.to_thread.run_sync(h2_exchange, _port(gateway), [
        (headers("POST", "/v1/messages", ("content-type", "application/json"),
                 ("content-length", "10")), MESSAGE),
        (headers("GET", "/health"), b""),
    ])
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
    [reset] = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert reset.stream_id == 1 and reset.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    answered = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert [e.stream_id for e in answered] == [3]
    assert (b":status", b"200") in answered[0].headers


async def test_connections_past_the_limit_get_503_and_the_held_ones_go_on(
    start_gateway: Any,
) -> None:
    gateway = await start_gateway(server={"max_connections": 4})
    port = _port(gateway)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        await trio.sleep(0.2)  # accepted and counted
        busy, closed_after = await trio.to_thread.run_sync(
            exchange, port, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert busy.startswith(b"HTTP/1.1 503"), busy[:200]
        assert b"server.max_connections" in busy and b"retry-after: 1" in busy
        assert closed_after is not None
        # a health probe past the limit is still answered, on a reserved place, and closed
        for path in (b"/health", b"/metrics", b"/health?format=json"):
            probe, closed_after = await trio.to_thread.run_sync(
                exchange, port, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert probe.startswith(b"HTTP/1.1 200"), probe[:200]
            assert closed_after is not None
        # ... but only a probe: a chat request on one gets the 503 too
        chat, _ = await trio.to_thread.run_sync(
            exchange, port, b"POST /health/../v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"content-length: 2\r\n\r\n{}")
        assert chat.startswith(b"HTTP/1.1 503"), chat[:200]
        # a held connection is served as usual (off the loop: the gateway runs on it)
        def ask(sock: socket.socket) -> bytes:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            sock.settimeout(5)
            return sock.recv(65536)

        assert (await trio.to_thread.run_sync(ask, held[0])).startswith(b"HTTP/1.1 200")
        held.pop(0).close()
        await trio.sleep(0.2)  # its place is free again
        again, _ = await trio.to_thread.run_sync(
            exchange, port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert again.startswith(b"HTTP/1.1 200"), again[:200]
    finally:
        for sock in held:
            sock.close()


def test_a_flood_of_stuck_clients_under_a_low_fd_limit_leaves_health_answering(
    tmp_path: Any,
) -> None:
    """1,100 clients that never finish their body, 1,024 descriptors (here 300 and 256): the
    gateway must keep answering /health at once and not spin on EMFILE."""
    import os
    import re
    import resource
    import subprocess
    import sys

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, preexec_fn=low_limit)
    stuck: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        url = None
        for _ in range(60):
            line = proc.stdout.readline()
            found = re.search(r"base URL \(Anthropic\):\s+http://127\.0\.0\.1:(\d+)", line)
            if found:
                url = int(found.group(1))
                break
        assert url, "demo did not start"
        port = url
        for _ in range(300):
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=2)
                conn.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
                stuck.append(conn)
            except OSError:
                break
        started = time.monotonic()
        answer, _ = exchange(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   b"Connection: close\r\n\r\n", 5.0)
        assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 503")), answer[:200]
        assert time.monotonic() - started < 3
        for conn in stuck:
            conn.close()
        stuck.clear()
        time.sleep(0.5)
        answer, _ = exchange(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   b"Connection: close\r\n\r\n", 5.0)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    finally:
        for conn in stuck:
            conn.close()
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert output.count("out of file descriptors") <= 1
    assert "Traceback" not in output


async def test_requests_still_uploading_hold_no_admission_place(start_gateway: Any) -> None:
    """h2 streams that never send their body must not use up max_concurrent_requests:
    a place is taken once the body is in."""
    import h2.config
    import h2.connection

    gateway = await start_gateway(server={"max_concurrent_requests": 2,
                                          "body_timeout_seconds": 30})
    authority = gateway.url.removeprefix("http://")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock = socket.create_connection(("127.0.0.1", _port(gateway)), timeout=5)
    try:
        for _ in range(4):
            conn.send_headers(conn.get_next_available_stream_id(), [
                (":method", "POST"), (":path", "/v1/messages"), (":scheme", "http"),
                (":authority", authority), ("content-type", "application/json")])
        sock.sendall(conn.data_to_send())
        await trio.sleep(0.3)
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.post(gateway.url + "/v1/messages", json={
                "model": "claude-sonnet-4-6", "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text
    finally:
        sock.close()


async def test_an_h2_connection_that_opens_no_stream_idles_out(start_gateway: Any) -> None:
    gateway = await start_gateway(server={"idle_timeout_seconds": 0.5})

    def hold() -> float | None:
        with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=5) as conn:
            settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings)
            start = time.monotonic()
            try:
                while conn.recv(65536):
                    pass
            except TimeoutError:
                return None
            return time.monotonic() - start

    closed_after = await trio.to_thread.run_sync(hold)
    assert closed_after is not None and closed_after < 3


async def test_a_client_that_never_reads_is_hung_up_on(start_gateway: Any) -> None:
    """Pipelined requests whose answers are never read fill the socket buffers; after
    server.write_timeout_seconds without progress the gateway lets the connection go."""
    import threading

    gateway = await start_gateway(server={"write_timeout_seconds": 0.5,
                                          "idle_timeout_seconds": 60})

    def flood() -> tuple[int, bool]:
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.connect(("127.0.0.1", _port(gateway)))
        request = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

        def send() -> None:
            with contextlib.suppress(OSError):
                conn.sendall(request * 3000)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        time.sleep(3)  # reading nothing
        conn.settimeout(5)
        received = b""
        try:
            while chunk := conn.recv(1 << 20):
                received += chunk
            ended = True
        except TimeoutError:
            ended = False
        except OSError:
            ended = True
        conn.close()
        return received.count(b"HTTP/1.1 200"), ended

    answered, ended = await trio.to_thread.run_sync(flood)
    assert ended, f"the connection is still open after {answered} answers"
    assert answered < 3000


async def test_malformed_h2_request_headers_are_a_stream_error(gateway: RunningGateway) -> None:
    """Headers h2 refuses (here a connection-specific field) reset that stream only."""
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events

    authority = gateway.url.removeprefix("http://")
    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                       normalize_outbound_headers=False)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()

    def run() -> list[Any]:
        with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=5) as sock:
            base = [(":method", "GET"), (":path", "/health"), (":scheme", "http"),
                    (":authority", authority)]
            conn.send_headers(1, [*base, ("connection", "keep-alive")], end_stream=True)
            conn.send_headers(3, [*base, ("content-length", "ten")], end_stream=True)
            conn.send_headers(5, base, end_stream=True)
            sock.sendall(conn.data_to_send())
            return h2_events_until_ended(conn, sock, {1, 3, 5})

    events = await trio.to_thread.run_sync(run)
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
    resets = {e.stream_id: e.error_code for e in events if isinstance(e, h2.events.StreamReset)}
    assert resets == {1: h2.errors.ErrorCodes.PROTOCOL_ERROR,
                      3: h2.errors.ErrorCodes.PROTOCOL_ERROR}
    answered = [e.stream_id for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert answered == [5]


@pytest.mark.parametrize(
    ("origin", "status"),
    [(b"https://evil.example", b"403"), (b"null", b"403"), (b"http://127.0.0.1:1", b"403"),
     (None, b"200"), (b"SELF", b"200")],
)
async def test_cross_site_posts_are_refused_whatever_their_body(
    gateway: RunningGateway, origin: bytes | None, status: bytes
) -> None:
    """A web page can POST to /refresh-token with no body at all (no preflight, no content
    type): its Origin says where it comes from."""
    own = gateway.url.removeprefix("http://").encode()
    extra = b"" if origin is None else b"Origin: " + (
        b"http://" + own if origin == b"SELF" else origin) + b"\r\n"
    data = (b"POST /refresh-token HTTP/1.1\r\nHost: " + own + b"\r\n" + extra
            + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    answer, _ = await trio.to_thread.run_sync(exchange, _port(gateway), data)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:300]


async def test_a_closed_connection_gives_its_place_back_at_once(
    start_gateway: Callable[..., Any],
) -> None:
    """A client that hangs up after its answer frees its connection slot then, not when the
    keep-alive timer would have run out (hypercorn held such sockets in CLOSE-WAIT for
    idle_timeout_seconds, and 20 of them filled a 20-connection gateway)."""
    gateway = await start_gateway(server={"max_connections": 20})
    statuses = []
    for _ in range(60):
        async with httpx.AsyncClient(timeout=10) as http:  # a new connection each time
            statuses.append((await http.get(gateway.url + "/v1/models")).status_code)
    assert statuses == [200] * 60
