"""gateway/directbody.py: what it relies on in hypercorn and h11 (so an upgrade that changes
it fails here), and its behaviour on a real socket behind `gateway.edge.serve`: framing
byte-identical to h11's, keep-alive intact, the fallbacks (HTTP/1.0, h2c, a foreign
`send`), a client gone or not reading."""

from __future__ import annotations

import inspect
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import httpx
import pytest
import trio
from hypercorn.config import Config as HyperConfig

from gateway import edge
from gateway.api.chat import send_json
from gateway.directbody import DirectBody, chunk_frame
from tests.support import RunningGateway


def test_hypercorn_and_h11_pieces_keep_their_shape() -> None:
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
    from hypercorn.trio.task_group import TaskGroup
    from hypercorn.trio.tcp_server import TCPServer

    # the app's send is the stream's bound app_send, handed over unwrapped
    assert "self.app_send" in inspect.getsource(HTTPStream.handle)
    assert "send" in inspect.signature(TaskGroup.spawn_app).parameters
    # the stream sends its events through `self.send` (H11Protocol.stream_send), body
    # messages only in the RESPONSE state, the end through EndBody
    app_send = inspect.getsource(HTTPStream.app_send)
    assert "ASGIHTTPState.RESPONSE" in app_send and "Body(" in app_send
    assert {"REQUEST", "RESPONSE", "CLOSED"} <= set(ASGIHTTPState.__members__)
    create_stream = inspect.getsource(H11Protocol._create_stream)
    assert "HTTPStream(" in create_stream and "self.stream_send" in create_stream
    # a body event is h11's Data, framed by h11 and written as RawData: nothing else
    send_event = inspect.getsource(H11Protocol._send_h11_event)
    assert "self.connection.send(event)" in send_event and "RawData" in send_event
    stream_send = inspect.getsource(H11Protocol.stream_send)
    assert "h11.Data(data=event.data)" in stream_send
    # the connection writes under its send lock, and a broken write is Closed()
    protocol_send = inspect.getsource(TCPServer.protocol_send)
    assert "self.send_lock" in protocol_send and "self.stream.send_all" in protocol_send
    assert "self.protocol.handle(Closed())" in protocol_send
    assert "self.protocol_send" in inspect.getsource(TCPServer.run)


def _h11_response(http_version: bytes) -> h11.Connection:
    server = h11.Connection(h11.SERVER)
    server.receive_data(
        b"POST / HTTP/" + http_version + b"\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
    assert isinstance(server.next_event(), h11.Request)
    server.next_event()  # EndOfMessage
    server.send(h11.Response(status_code=200, headers=[(b"content-type", b"text/plain")]))
    return server


def test_frames_are_what_h11_writes_and_only_for_chunked_responses() -> None:
    from h11._writers import ChunkedWriter

    connection = _h11_response(b"1.1")
    assert type(connection._writer) is ChunkedWriter
    assert connection.our_state is h11.SEND_BODY
    for data in (b"x", b"data: {}\n\n", bytes(range(256)) * 70):
        assert chunk_frame(data) == connection.send(h11.Data(data=data))
    # the frames skipped h11, and it does not mind: its end is still right
    assert connection.send(h11.EndOfMessage()) == b"0\r\n\r\n"
    # HTTP/1.0: close-delimited, not chunked (DirectBody leaves that to hypercorn)
    assert type(_h11_response(b"1.0")._writer) is not ChunkedWriter


# -- on a real socket ---------------------------------------------------------------------

CHUNKS = [f"data: chunk {n}\n\n".encode() for n in range(20)]


class _App:
    """Streams CHUNKS through DirectBody; keeps what it saw for the test."""

    def __init__(self, pause: float = 0.0, chunks: list[bytes] = CHUNKS, *,
                 coalesce: bool = False, unary: bytes | None = None) -> None:
        self.pause = pause
        self.chunks = chunks
        self.coalesce = coalesce  # the start and the first chunk in one `coalesced` block
        self.unary = unary  # a whole answer of these bytes instead (coalesced)
        self.frames: list[int] = []
        self.disconnected = trio.Event()
        self.wrote_all = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        while (await receive()).get("more_body"):
            pass
        direct = DirectBody(send)
        if self.unary is not None:  # as the gateway answers JSON
            await send_json(send, 200, json.loads(self.unary), direct=direct)
            return
        chunks = self.chunks
        async with direct.coalesced() if self.coalesce else _nothing():
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            if self.coalesce:
                await direct.write(chunks[0])
                chunks = chunks[1:]
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.disconnected.set()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            for chunk in chunks:
                await direct.write(chunk)
                await trio.sleep(self.pause)
            self.wrote_all.set()
            self.frames.append(direct.frames)
            # shielded, as the gateway's final send (hypercorn closes an HTTP/1.0
            # connection inside it, after saying http.disconnect, which ends `watch`)
            with trio.CancelScope(shield=True):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


@asynccontextmanager
async def _serving(app: _App, *, write_timeout: float = 60.0) -> AsyncIterator[int]:
    hyper = HyperConfig()
    hyper.bind = ["127.0.0.1:0"]
    hyper.accesslog = None
    hyper.graceful_timeout = 0.5
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: edge.serve(
            app, hyper, max_connections=50, write_timeout=write_timeout,
            shutdown_trigger=stop.wait, task_status=task_status))
        yield int(binds[0].rsplit(":", 1)[1])
        stop.set()


def _raw_exchange(port: int, requests: bytes, *, answers: int) -> bytes:
    """Send `requests` on one connection; what came back once `answers` chunked bodies
    ended (or the server closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(requests)
        got = b""
        while got.count(b"\r\n0\r\n\r\n") < answers:
            piece = sock.recv(65536)
            if not piece:
                break
            got += piece
        return got


def _bodies(raw: bytes, count: int) -> list[bytes]:
    """The bodies of `count` responses in `raw`, read by h11 as a client does."""
    client = h11.Connection(h11.CLIENT)
    bodies: list[bytes] = []
    for _ in range(count):
        client.send(h11.Request(method="POST", target="/",
                                headers=[("host", "x"), ("content-length", "0")]))
        client.send(h11.EndOfMessage())
        client.receive_data(raw)
        raw = b""
        body = b""
        while not isinstance(event := client.next_event(), h11.EndOfMessage):
            assert event is not h11.NEED_DATA, "truncated response"
            if isinstance(event, h11.Response):
                assert (b"transfer-encoding", b"chunked") in event.headers
            if isinstance(event, h11.Data):
                body += event.data
        bodies.append(body)
        client.start_next_cycle()
    return bodies


async def test_http11_chunks_go_straight_to_the_socket_framed_as_h11_frames_them() -> None:
    app = _App()
    async with _serving(app) as port:
        request = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
        # two requests pipelined on one connection: both answered, each framed right
        raw = await trio.to_thread.run_sync(
            lambda: _raw_exchange(port, request * 2, answers=2))
    assert _bodies(raw, 2) == [b"".join(CHUNKS)] * 2
    assert app.frames == [len(CHUNKS)] * 2  # every chunk went the direct way


async def test_two_responses_on_one_connection_are_both_whole() -> None:
    app = _App()
    async with _serving(app) as port, httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}"
    ) as client:
        for _ in range(3):
            answer = await client.post("/", content=b"{}")
            assert answer.status_code == 200
            assert answer.content == b"".join(CHUNKS)
            assert answer.headers["transfer-encoding"] == "chunked"
    assert app.frames == [len(CHUNKS)] * 3


async def test_http10_and_h2c_take_hypercorns_path() -> None:
    app = _App()
    async with _serving(app) as port:
        raw = await trio.to_thread.run_sync(lambda: _raw_exchange(
            port, b"POST / HTTP/1.0\r\nhost: x\r\ncontent-length: 0\r\n\r\n", answers=1))
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"chunked" not in head.lower() and body == b"".join(CHUNKS)
        async with httpx.AsyncClient(http1=False, http2=True,
                                     base_url=f"http://127.0.0.1:{port}") as client:
            answer = await client.post("/", content=b"{}")
            assert answer.http_version == "HTTP/2" and answer.content == b"".join(CHUNKS)
    assert app.frames == [0, 0]


async def test_a_send_that_is_not_hypercorns_is_used_as_is() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    direct = DirectBody(send)
    assert not direct.direct
    await direct.write(b"abc")
    await direct.write(b"")  # an empty body message says nothing: not sent
    assert sent == [{"type": "http.response.body", "body": b"abc", "more_body": True}]
    assert direct.frames == 0


async def test_a_client_gone_mid_stream_is_heard_as_a_disconnect() -> None:
    app = _App(pause=0.02, chunks=CHUNKS * 50)
    async with _serving(app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            got = b""
            while b"chunk 0" not in got:  # the head and the first chunk: two writes
                got += await trio.to_thread.run_sync(lambda: sock.recv(65536))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        with trio.fail_after(5):
            await app.disconnected.wait()
        assert not app.wrote_all.is_set()


async def test_a_client_that_stops_reading_is_hung_up_on_at_the_write_deadline() -> None:
    big = [b"x" * 65536] * 400  # far more than the socket buffers hold
    app = _App(chunks=big)
    async with _serving(app, write_timeout=0.5) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            with trio.fail_after(10):
                await app.disconnected.wait()
    assert not app.wrote_all.is_set()


@pytest.mark.parametrize("size", [1, 100, 70_000])
def test_chunk_frame_sizes(size: int) -> None:
    data = b"y" * size
    frame = chunk_frame(data)
    head, _, rest = frame.partition(b"\r\n")
    assert int(head, 16) == size and rest == data + b"\r\n"


async def test_the_gateway_streams_http11_answers_the_direct_way(
    gateway: RunningGateway,
) -> None:
    """Through the real gateway (its ASGI front door, not a test app): an HTTP/1.1 stream's
    chunks go straight to the socket, an h2c one's through hypercorn; /metrics says which."""
    body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "Say hi"}]}
    counter = gateway.services.metrics.streamed_bodies
    for http2, path in ((False, "direct"), (True, "asgi")):
        before = counter.labels(path)._value.get()
        async with httpx.AsyncClient(http1=not http2, http2=http2, timeout=30) as client:
            answer = await client.post(f"{gateway.url}/v1/messages", json=body)
        assert answer.status_code == 200 and b"event: message_stop" in answer.content
        assert counter.labels(path)._value.get() == before + 1
    async with httpx.AsyncClient(timeout=30) as client:
        metrics = (await client.get(f"{gateway.url}/metrics")).text
    assert 'gateway_streamed_bodies_total{path="direct"} 1.0' in metrics


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What `gateway.edge` wrote to client sockets, one item per system call."""
    written: list[bytes] = []
    real = edge.os.write

    def write(fd: int, data: Any) -> int:
        sent = real(fd, data)
        written.append(bytes(data[:sent]))
        return sent

    monkeypatch.setattr(edge.os, "write", write)
    return written


@pytest.mark.parametrize("coalesce", [False, True])
async def test_a_coalesced_head_and_first_chunk_leave_in_one_write(
    writes: list[bytes], coalesce: bool
) -> None:
    app = _App(coalesce=coalesce)
    async with _serving(app) as port:
        request = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
        raw = await trio.to_thread.run_sync(lambda: _raw_exchange(port, request, answers=1))
    assert _bodies(raw, 1) == [b"".join(CHUNKS)]  # the same answer, framed the same way
    assert b"".join(writes) == raw
    head_and_first = writes[0].startswith(b"HTTP/1.1 200") and b"chunk 0" in writes[0]
    assert head_and_first is coalesce
    # then one write per chunk, and the end
    assert len(writes) == len(CHUNKS) + (1 if coalesce else 2)
    assert app.frames == [len(CHUNKS)]


async def test_a_coalesced_whole_answer_is_one_write(writes: list[bytes]) -> None:
    answer = b'{"ok":true}'
    async with _serving(_App(unary=answer)) as port, httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}"
    ) as client:
        for _ in range(2):  # keep-alive holds after it
            got = await client.post("/", content=b"{}")
            assert got.status_code == 200 and got.content == answer
            assert got.headers["content-length"] == str(len(answer))
    assert len(writes) == 2 and all(w.endswith(answer) for w in writes)


async def test_coalescing_changes_nothing_over_h2c(writes: list[bytes]) -> None:
    app = _App(coalesce=True)
    async with _serving(app) as port, httpx.AsyncClient(
        http1=False, http2=True, base_url=f"http://127.0.0.1:{port}"
    ) as client:
        got = await client.post("/", content=b"{}")
    assert got.http_version == "HTTP/2" and got.content == b"".join(CHUNKS)
    assert app.frames == [0]


async def test_a_client_gone_before_a_coalesced_write_is_heard_as_a_disconnect() -> None:
    gone = trio.Event()

    class Late(_App):
        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                await gone.wait()
                await trio.sleep(0.1)  # the reset has reached the server's socket
            await super().__call__(scope, receive, send)

    app = Late(coalesce=True, pause=0.01)
    async with _serving(app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            await trio.sleep(0.1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        gone.set()
        with trio.fail_after(5):
            await app.disconnected.wait()
        assert not app.wrote_all.is_set()


@pytest.mark.parametrize("request_head", [
    b"POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
    b"POST / HTTP/1.0\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
])
async def test_a_coalesced_answer_on_a_connection_that_then_closes_is_whole(
    writes: list[bytes], request_head: bytes
) -> None:
    # hypercorn closes such a connection from inside the send of the answer's end, while
    # the answer is still held: it must be written before the close, not lost
    answer = b'{"ok":true}'

    def exchange(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request_head)
            got = b""
            while piece := sock.recv(65536):  # to the server's FIN
                got += piece
            return got

    async with _serving(_App(unary=answer)) as port:
        raw = await trio.to_thread.run_sync(exchange, port)
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"\r\n\r\n" + answer)
    assert len(writes) == 1


async def test_a_big_answer_to_a_slow_reader_on_a_closing_connection_is_whole() -> None:
    # far more than the kernel takes before the client reads (a receive buffer starts at
    # 128 KiB, a send buffer grows to 4 MiB): the head and body's write waits on the client,
    # and the close hypercorn makes at the answer's end must come after all of it
    answer = json.dumps({"text": "y" * 24_000_000}, separators=(",", ":")).encode()

    def exchange(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                         b"content-length: 0\r\n\r\n")
            time.sleep(0.3)  # the server's write fills the buffers and waits
            got = b""
            while piece := sock.recv(65536):
                got += piece
            return got

    async with _serving(_App(unary=answer)) as port:
        raw = await trio.to_thread.run_sync(exchange, port)
    assert raw.endswith(b"\r\n\r\n" + answer)
