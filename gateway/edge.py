"""The network edge: hypercorn's trio worker, with the guards the gateway needs in front.

Everything here leans on hypercorn and h2 internals, so it lives in this one module, the
tested version ranges are pinned in pyproject.toml, and tests/test_edge_contract.py fails if
the pieces it uses change shape.

* `serve` runs hypercorn's per-connection server (`TCPServer`) and lifespan exactly as
  `hypercorn.trio.serve` does, but on `GuardedListener`s: at most `max_connections` client
  connections at a time. One past that has its request head read (for at most a second): a
  `GET /health` or `/metrics` is served on one of `reserve` extra places (and closed after
  its answer), anything else is answered `503` and closed, so file descriptors never run
  out under a flood of slow clients and a load balancer's probe still gets its answer.
  Running out of descriptors anyway (EMFILE) is logged once per episode, not ten times a
  second with a traceback as trio's own loop does.
  A connection's handler failing (hypercorn raised on a WebSocket upgrade with bytes after
  it) closes that connection and is logged in one line; it never reaches the server's
  nursery, which would take the whole process down. A send that makes no progress for
  `write_timeout` seconds (a client that stopped reading) hangs the connection up, and at
  shutdown every send gets at most the grace period.
* `install_h2_stream_errors` makes a malformed request a stream error (RST_STREAM
  PROTOCOL_ERROR), as RFC 9113 8.1.1 says, where h2 made it a connection error (GOAWAY)
  that killed every other stream of the connection: DATA that does not add up to the
  content-length, and request headers h2 refuses (connection-specific fields, bad
  pseudo-headers, a content-length that is not a number...). It also starts hypercorn's
  idle timer on a new h2 connection, which otherwise only starts once a stream has closed:
  a connection that never opens a stream is closed after the idle timeout like any other.
* `ClosingTCPServer` closes a connection as soon as its client has: hypercorn's own
  keeps the socket (in CLOSE-WAIT, holding one of `max_connections`) until its keep-alive
  timer runs out, 75 s later, because the timer task stays in the connection's task group.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import resource
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.events import Updated
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

__all__ = ["GuardedListener", "install_h2_stream_errors", "raise_fd_limit", "serve"]

log = logging.getLogger("gateway.edge")

_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# A connection past the limit is told so in a body both SDKs read as an error.
_BUSY_BODY = (
    b'{"type":"error","error":{"type":"overloaded_error","code":"overloaded","param":null,'
    b'"message":"the gateway is at its connection limit (server.max_connections); retry '
    b'shortly"},"status":"overloaded"}'
)
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
    + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)
_MAX_TRIAGE = 64  # connections past the limit being read or answered at once; a newer one
# takes the place of the oldest, so a flood cannot keep a probe from being read
_HEAD_SECONDS = 1.0  # for the request head of a connection past the limit
_HEAD_BYTES = 8192
_DRAIN_SECONDS = 0.5  # after the 503, for the client to read it and hang up
_WRITE_PIECE = 64 * 1024  # the write deadline is per piece: progress, not total time
_FAILURE_LOG_SECONDS = 10.0
_PROBE = re.compile(rb"(?:GET|HEAD) /(?:health|metrics)(?:[?][^ ]*)? HTTP/1\.[01]\r\n")


def raise_fd_limit(wanted: int = 65_536) -> int:
    """Lift the soft open-file limit towards the hard one; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_limit(configured: int) -> int:
    """`server.max_connections`, or (0) what the open-file limit leaves: each client
    connection may hold an upstream one too, and some descriptors are for everything else."""
    if configured > 0:
        return configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(20_000, (soft - 256) // 2))


class _Counted(trio.abc.HalfCloseableStream):
    """A client connection that gives its place back when closed; `head` is what was read
    of it already (a probe's request head), handed to hypercorn first."""

    def __init__(
        self, inner: trio.SocketStream, listener: GuardedListener, *,
        head: bytes = b"", reserved: bool = False,
    ) -> None:
        self._inner = inner
        self._listener = listener
        self._counted = True
        self._head = head
        self._reserved = reserved
        self._held: bytearray | None = None

    @property
    def holding(self) -> bool:
        return self._held is not None

    def hold(self) -> None:
        """Collect what is written from now until `release`, instead of writing it: a
        response's head and its first body then go out in one system call (and wake the
        client once). Only for a stretch that does not wait on anything."""
        if self._held is None:
            self._held = bytearray()

    async def release(self) -> None:
        """Write what `hold` collected (with the write deadline, as any send)."""
        held, self._held = self._held, None
        if held:
            await self.send_all(held)

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._inner.socket  # hypercorn reads the peer and local addresses here

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Write what the kernel takes now, without waiting: the bytes written (0 when its
        buffer is full). A client gone is `trio.BrokenResourceError`, as from `send_all`.
        The caller holds the connection's send lock (hypercorn's): nothing else writes."""
        if self._held is not None:
            self._held += data
            return len(data)
        try:
            # the descriptor is asked for each time: -1 once closed, never a reused number
            return os.write(self._inner.socket.fileno(), data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise trio.ClosedResourceError("the connection is closed") from None
            raise trio.BrokenResourceError(f"the client is gone ({exc})") from None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # What the kernel takes at once is written with no cancel scope and no wait: the
        # common case for a client that reads. The write deadline is armed only to wait.
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._held is not None or not data:  # held, or nothing (h11's end of a sized body)
            if self._held is not None:
                self._held += data
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        view = memoryview(data)
        sent = self.send_nowait(view)
        if sent == len(view):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        await self._send_rest(view[sent:])

    async def _send_rest(self, view: memoryview) -> None:
        listener = self._listener
        while view:
            piece = view[:_WRITE_PIECE]
            # hypercorn shields its sends from cancellation; this scope's own deadline still
            # applies, and shutdown can pull it in
            with trio.CancelScope(deadline=listener.send_deadline()) as scope:
                listener.sending.add(scope)
                try:
                    await self._inner.send_all(piece)
                finally:
                    listener.sending.discard(scope)
            if scope.cancelled_caught:
                # hypercorn takes a broken send as the client gone but goes on reading it:
                # close the socket too, so the connection really ends
                await trio.aclose_forcefully(self._inner)
                raise trio.BrokenResourceError("the client read nothing for the write deadline")
            view = view[len(piece):]

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._head:
            await trio.lowlevel.checkpoint()
            cut = len(self._head) if max_bytes is None else max_bytes
            data, self._head = self._head[:cut], self._head[cut:]
            return data
        return await self._inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        # nothing is held at a response's end (DirectBody.coalesced); if anything were, it
        # goes before the FIN
        await self.release()
        await self._inner.send_eof()

    async def aclose(self) -> None:
        if self._held:  # closed with no send_eof first: what the kernel takes now, if any
            held, self._held = self._held, None
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                self.send_nowait(held)
        self._held = None
        if self._counted:
            self._counted = False
            if self._reserved:
                self._listener.probe_connections -= 1
            else:
                self._listener.open_connections -= 1
        await self._inner.aclose()


class GuardedListener(trio.abc.Listener[trio.abc.Stream]):
    """A socket listener that admits at most `limit` connections at a time, and `reserve`
    more for health probes."""

    def __init__(
        self, inner: trio.SocketListener, limit: int, nursery: trio.Nursery, *,
        reserve: int = 16, write_timeout: float = 60.0,
    ) -> None:
        self._inner = inner
        self.limit = limit
        self.reserve = reserve
        self.write_timeout = write_timeout
        self.sending: set[trio.CancelScope] = set()  # sends under way, with their deadlines
        self._closing_deadline = float("inf")
        self.open_connections = 0
        self.probe_connections = 0
        self.refused = 0
        # serves a probe admitted on a reserved place (set by `serve`: hypercorn's handler)
        self.handler: Callable[[trio.abc.Stream], Awaitable[None]] | None = None
        self._nursery = nursery
        self._triage: dict[int, trio.CancelScope] = {}  # oldest first
        self._triage_ids = 0
        self._starved = False  # out of descriptors, and said so

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._inner.socket

    def send_deadline(self) -> float:
        return min(trio.current_time() + self.write_timeout, self._closing_deadline)

    def closing(self, deadline: float) -> None:
        """Shutting down: no send may outlast `deadline`."""
        self._closing_deadline = deadline
        for scope in self.sending:
            scope.deadline = min(scope.deadline, deadline)

    async def accept(self) -> trio.abc.Stream:
        while True:
            try:
                stream = await self._inner.accept()
            except OSError as exc:
                if exc.errno not in _OUT_OF_FDS:
                    raise
                if not self._starved:
                    self._starved = True
                    log.warning(
                        "out of file descriptors (%s): new connections wait; raise the "
                        "open-file limit (ulimit -n) or lower server.max_connections",
                        errno.errorcode.get(exc.errno or 0, exc.errno),
                    )
                await trio.sleep(0.1)
                continue
            if self._starved:
                self._starved = False
                log.info("file descriptors available again")
            if self.open_connections >= self.limit:
                self._past_limit(stream)
                continue
            self.open_connections += 1
            return _Counted(stream, self)

    def _past_limit(self, stream: trio.SocketStream) -> None:
        if len(self._triage) >= _MAX_TRIAGE:
            oldest = next(iter(self._triage))
            self._triage.pop(oldest).cancel()  # it has had its answer, or its second
        self._triage_ids += 1
        scope = trio.CancelScope()
        self._triage[self._triage_ids] = scope
        self._nursery.start_soon(self._sort_out, stream, self._triage_ids, scope)

    async def _sort_out(self, stream: trio.SocketStream, key: int, scope: trio.CancelScope) -> None:
        """Serve a probe on a reserved place, answer anything else 503."""
        handed = False
        try:
            with scope:
                head = b""
                with trio.move_on_after(_HEAD_SECONDS):
                    while b"\r\n\r\n" not in head and len(head) < _HEAD_BYTES:
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        head += chunk
                if (self.handler is not None and self.probe_connections < self.reserve
                        and _PROBE.match(head) and b"\r\n\r\n" in head):
                    # one answer, then the place is free again
                    end = head.index(b"\r\n\r\n")
                    head = head[:end] + b"\r\nconnection: close" + head[end:]
                    self.probe_connections += 1
                    self._nursery.start_soon(
                        self._serve_probe, _Counted(stream, self, head=head, reserved=True))
                    handed = True
                    return
                self.refused += 1
                with trio.move_on_after(_DRAIN_SECONDS):
                    await stream.send_all(_BUSY)
                    # Half-close, then read what the client sent until it closes: closing
                    # with its request unread would reset the connection, and the reset can
                    # reach the client before the answer does.
                    await stream.send_eof()
                    while await stream.receive_some(4096):
                        pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._triage.pop(key, None)
            if not handed:
                await trio.aclose_forcefully(stream)

    async def _serve_probe(self, stream: _Counted) -> None:
        assert self.handler is not None
        try:
            await self.handler(stream)
        finally:
            await trio.aclose_forcefully(stream)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def serve(
    app: Any,
    hyper: HyperConfig,
    *,
    max_connections: int,
    probe_connections: int = 16,
    write_timeout: float = 60.0,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    on_listening: Callable[[list[GuardedListener]], None] | None = None,
) -> None:
    """Serve the ASGI `app` as hypercorn's trio worker does, on guarded listeners (plain
    HTTP/1.1 and h2c: the gateway terminates no TLS). Returns after a graceful shutdown."""
    wrapped = wrap_app(app, hyper.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, hyper, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sockets = hyper.create_sockets()
            listeners: list[GuardedListener] = []
            binds: list[str] = []
            for sock in sockets.insecure_sockets:
                sock.listen(hyper.backlog)
                listeners.append(GuardedListener(
                    trio.SocketListener(trio.socket.from_stdlib_socket(sock)),
                    max_connections, server_nursery, reserve=probe_connections,
                    write_timeout=write_timeout,
                ))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            if on_listening is not None:
                on_listening(listeners)
            task_status.started(binds)
            handler = partial(_serve_connection, partial(
                ClosingTCPServer, wrapped, hyper, context,
                ConnectionState(lifespan_state.copy()),
            ), _FailureLog())
            for listener in listeners:
                listener.handler = handler
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    if shutdown_trigger is not None:
                        nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(partial(
                        trio.serve_listeners, handler, listeners,
                        handler_nursery=server_nursery,
                    ))
                    await trio.sleep_forever()
            except BaseExceptionGroup as group:
                _, others = group.split((ShutdownError, KeyboardInterrupt))
                if others is not None:
                    raise others from None
            finally:
                await context.terminated.set()
                # in-flight connections get the grace period, then are cancelled (and a
                # send to a client that stopped reading, shielded by hypercorn, too)
                deadline = trio.current_time() + hyper.graceful_timeout
                server_nursery.cancel_scope.deadline = deadline
                for listener in listeners:
                    listener.closing(deadline)
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


class ClosingTCPServer(TCPServer):
    """hypercorn's connection server, but done when the client's end is: the keep-alive
    timer is stopped once reading ends (EOF, a reset, the read deadline), so the task group
    it sits in can close and the socket with it, instead of waiting the timer out."""

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            with trio.CancelScope(shield=True):
                await self.idle_task.stop()


class _FailureLog:
    """One line per failed connection, at most one every few seconds (with a count)."""

    def __init__(self) -> None:
        self._last = -float("inf")
        self._unsaid = 0

    def failed(self, exc: BaseException) -> None:
        now = trio.current_time()
        self._unsaid += 1
        if now - self._last < _FAILURE_LOG_SECONDS:
            return
        log.warning("closed a client connection the HTTP server failed on (%s)%s",
                    type(exc).__name__,
                    f"; {self._unsaid} such since the last report" if self._unsaid > 1 else "")
        self._last, self._unsaid = now, 0


async def _serve_connection(
    server: Callable[[trio.abc.Stream], Any], failures: _FailureLog, stream: trio.abc.Stream
) -> None:
    """hypercorn's per-connection server, kept from taking the process down with it."""
    try:
        await server(stream)  # TCPServer is awaitable, not a coroutine function
    except Exception as exc:
        failures.failed(exc)
        await trio.aclose_forcefully(stream)


_original_receive_data_frame = h2.connection.H2Connection._receive_data_frame


def _receive_data_frame(self: h2.connection.H2Connection, frame: Any) -> Any:
    try:
        return _original_receive_data_frame(self, frame)
    except h2.exceptions.InvalidBodyLengthError:
        if self.config.client_side:
            raise
        # one malformed request: reset its stream (and free the connection window its bytes
        # took), the connection and its other streams go on
        stream_id = frame.stream_id
        self.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self.acknowledge_received_data(frame.flow_controlled_length, stream_id)
        reset = h2.events.StreamReset(
            stream_id=stream_id, error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR,
            remote_reset=False,
        )
        return [], [reset]


_original_receive_headers_frame = h2.connection.H2Connection._receive_headers_frame


def _receive_headers_frame(self: h2.connection.H2Connection, frame: Any) -> Any:
    opened_before = frame.stream_id in self.streams
    try:
        return _original_receive_headers_frame(self, frame)
    except h2.exceptions.ProtocolError as original:
        # Only a request that this very frame opened, refused once its headers were decoded
        # (the stream exists by then), is a stream error; everything else h2 raises here
        # (stream ids, HPACK, too many streams) stays a connection error.
        if self.config.client_side or opened_before or frame.stream_id not in self.streams:
            raise
        stream_id = frame.stream_id
        try:
            self.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR)
        except h2.exceptions.ProtocolError:
            raise original from None
        reset = h2.events.StreamReset(
            stream_id=stream_id, error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR,
            remote_reset=False,
        )
        return [], [reset]


_original_h2_initiate = H2Protocol.initiate


async def _h2_initiate(
    self: H2Protocol, headers: Any = None, settings: bytes | None = None
) -> None:
    await _original_h2_initiate(self, headers, settings)
    if self.idle:
        await self.send(Updated(idle=True))  # idle from the start: the timer runs


def install_h2_stream_errors() -> None:
    """Make malformed requests stream errors in every h2 server connection of this process,
    and let new h2 connections idle out (idempotent)."""
    h2.connection.H2Connection._receive_data_frame = _receive_data_frame  # type: ignore[method-assign]
    h2.connection.H2Connection._receive_headers_frame = _receive_headers_frame  # type: ignore[method-assign]
    H2Protocol.initiate = _h2_initiate  # type: ignore[method-assign]
