"""Streamed response bodies written straight to an HTTP/1.1 client, past hypercorn's
per-message path.

An SSE answer is dozens of small body messages. Through ASGI, each one goes through
hypercorn's stream (`HTTPStream.app_send`), its h11 protocol, h11's own framing, the
connection's `protocol_send` (a lock and a shielding cancel scope) and the socket; the
profile of issue 12 put that path first among the gateway's costs. `DirectBody` writes the
chunk frame itself (`<hex length>\\r\\n<data>\\r\\n`, byte for byte what h11's chunked writer
makes) onto the connection's socket, under the connection's own send lock, and arms the
write deadline only when the kernel does not take the frame at once. The response's start
and its end still go through ASGI, so hypercorn's and h11's states are never skipped: h11's
chunked writer keeps no count that the frames written here would leave behind.

It applies only where that holds: an HTTP/1.1 response hypercorn frames as chunked, on a
connection `gateway.edge` accepted, with nobody else writing at that moment. Anywhere else
(h2, HTTP/1.0, a test harness that is not hypercorn, a 100-continue being written) a write
goes through the ASGI `send` as before. Everything here leans on hypercorn and h11
internals: the tested ranges are pinned in pyproject.toml (and checked by
tests/test_edge_contract.py), and tests/test_directbody.py fails if the pieces it relies on
change shape or behaviour.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import h11
import trio
from h11._writers import ChunkedWriter
from hypercorn.events import Closed
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.trio.tcp_server import TCPServer

from gateway.edge import _Counted

__all__ = ["DirectBody", "chunk_frame"]

Send = Callable[[dict[str, Any]], Awaitable[None]]


def chunk_frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunk: what h11's chunked writer writes for `data` (non-empty)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class DirectBody:
    """Writes body messages of one streamed HTTP/1.1 response (after its start was sent
    through ASGI); `frames` counts those written directly, for the tests and the bench."""

    __slots__ = ("_connection", "_send", "_server", "_socket", "_stream", "frames")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._stream: HTTPStream | None = None
        self._connection: h11.Connection | None = None
        self._server: TCPServer | None = None
        self._socket: _Counted | None = None
        self.frames = 0
        # hypercorn hands the app `HTTPStream.app_send`; the stream sends through
        # `H11Protocol.stream_send`, which sends through `TCPServer.protocol_send`
        stream = getattr(send, "__self__", None)
        if not isinstance(stream, HTTPStream):
            return
        protocol = getattr(stream.send, "__self__", None)
        if not isinstance(protocol, H11Protocol):
            return  # h2 has flow control of its own: its DATA frames stay with hypercorn
        server = getattr(protocol.send, "__self__", None)
        if not isinstance(server, TCPServer) or not isinstance(server.stream, _Counted):
            return
        if not isinstance(protocol.connection, h11.Connection):
            return
        self._stream, self._connection = stream, protocol.connection
        self._server, self._socket = server, server.stream

    @property
    def direct(self) -> bool:
        """Whether writes can go straight to the socket (checked again on each write)."""
        return self._socket is not None

    def _framed_chunked(self) -> bool:
        stream, connection = self._stream, self._connection
        return (
            stream is not None and connection is not None
            and not stream.closed and stream.state is ASGIHTTPState.RESPONSE
            and connection.our_state is h11.SEND_BODY
            and type(connection._writer) is ChunkedWriter
        )

    async def write(self, data: bytes) -> None:
        """Send `data` as one more body message of the response (`more_body`)."""
        server, socket = self._server, self._socket
        if not data:
            return
        if server is None or socket is None or not self._framed_chunked():
            await self._asgi(data)
            return
        lock = server.send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await self._asgi(data)  # someone else is writing: wait in hypercorn's queue
            return
        try:
            frame = chunk_frame(data)
            try:
                sent = socket.send_nowait(frame)
                if sent < len(frame):
                    # as hypercorn's own sends: never cancelled half-way through a frame
                    # (the socket's write deadline still ends a client that stopped reading)
                    with trio.CancelScope(shield=True):
                        await socket.send_all(memoryview(frame)[sent:])
                self.frames += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # what hypercorn does when its send finds the client gone: the request
                # hears http.disconnect
                await server.protocol.handle(Closed())
        finally:
            lock.release()
        # No checkpoint of its own: the relay's next upstream read is one, and a write the
        # kernel took at once has nothing to wait for.

    @asynccontextmanager
    async def coalesced(self) -> AsyncIterator[None]:
        """What the response writes inside this block (its start through ASGI, body frames
        here) goes to the socket as one write when the block ends: the head and the first
        events of an answer, or the head and body of a JSON answer, in one system call
        instead of two. Only around writes that do not wait (no upstream read inside), and
        never around the response's end: hypercorn may close the connection, recycle it
        for the next request or restart its idle timer from inside the end's send, which
        must find the answer written. Anywhere writes are not direct (h2, not hypercorn's),
        it changes nothing."""
        server, socket = self._server, self._socket
        if server is None or socket is None or socket.holding:
            yield
            return
        socket.hold()
        try:
            yield
        finally:
            # as hypercorn's sends: not cancelled half-way (the write deadline still ends a
            # client that stopped reading), and a broken one is the client gone
            gone = False
            with trio.CancelScope(shield=True):
                try:
                    async with server.send_lock:
                        await socket.release()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    gone = True
            if gone:
                await server.protocol.handle(Closed())

    async def _asgi(self, data: bytes) -> None:
        message: dict[str, Any] = {"type": "http.response.body", "body": data, "more_body": True}
        await self._send(message)
