"""The transport of generation calls: HTTP/2 or HTTP/1.1 on trio streams, sans-IO h2/h11.

Generation is the gateway's hot path (every chunk of every answer), so it gets a transport of
its own; the low-rate calls (OAuth, quota probes, onboarding) stay on httpx.

- **HTTP/2** where TLS ALPN offers it (the real upstream does): one warm connection per
  origin carries every concurrent stream; a second opens only when the server's
  `SETTINGS_MAX_CONCURRENT_STREAMS` is reached. Each connection has one reader task (in the
  transport's nursery, owned by the app's lifespan) that feeds `h2` and hands events to the
  streams; writes share one lock. Flow-control windows are sized for streaming
  (`STREAM_WINDOW` per stream, `CONNECTION_WINDOW` for the connection), and data is
  acknowledged as the consumer reads it, so a slow client slows its own stream only. An
  idle connection is PINGed every `ping_seconds` and closed when no answer comes within
  `ping_timeout_seconds`, or after `idle_seconds` without streams. On GOAWAY the connection
  takes no new streams; streams the server says it never processed (id above its last
  stream id) are retried on a new connection, the others finish. Closing a response early
  (a client gone) sends RST_STREAM(CANCEL) at once.
- **HTTP/1.1** otherwise (plain `http://` URLs, or ALPN picked http/1.1): a keep-alive pool
  of idle connections per origin (at most `max_idle_h1` kept); a response read to its end
  returns its connection, one closed early closes it (the server sees the client go). A
  request on a reused connection that the server closed meanwhile (EOF before any response
  byte) is sent again once, on a new connection.

Deadlines: connect (TCP + TLS) within `connect_timeout`, the response head within
`read_timeout`, and every body read too: a body read that waits longer is ended by the
transport's read watchdog (one task, no cancel scope per chunk; within a second of the
deadline). Each failure is a `TransportError` with a short reason.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11
import trio

__all__ = ["Response", "Transport", "TransportError", "TransportTimeout"]

log = logging.getLogger("gateway.upstream")

STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 32 * 1024 * 1024
READ_SIZE = 64 * 1024
# A GOAWAY'd stream is retried this many times (each on a new connection).
MAX_REFUSED_RETRIES = 2


class TransportError(Exception):
    """The upstream could not be reached, or the connection broke."""


class TransportTimeout(TransportError):
    """A connect, a response head or a body read took longer than its deadline."""


class _Refused(TransportError):
    """The server never processed this stream (GOAWAY, REFUSED_STREAM): safe to resend."""


class _BodyRead:
    """One response body being read: when its current wait began (None: not waiting)."""

    __slots__ = ("expire", "stalled", "waiting_since")

    def __init__(self, expire: Callable[[], Awaitable[None]]) -> None:
        self.waiting_since: float | None = None
        self.stalled = False
        self.expire = expire  # ends the read the watchdog found stalled


class _ReadWatchdog:
    """Ends body reads that wait longer than the read timeout, with no cancel scope per
    read: a read marks when it began waiting, and one task (in the transport's nursery)
    looks over the open bodies every `interval` seconds. A stalled read ends within
    `timeout + interval`."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.interval = min(1.0, max(timeout / 4, 0.01))
        self.reads: set[_BodyRead] = set()
        self._work = trio.Event()

    def open(self, expire: Callable[[], Awaitable[None]]) -> _BodyRead:
        read = _BodyRead(expire)
        self.reads.add(read)
        self._work.set()
        return read

    def close(self, read: _BodyRead) -> None:
        self.reads.discard(read)

    async def run(self) -> None:
        while True:
            if not self.reads:
                self._work = trio.Event()
                await self._work.wait()
            await trio.sleep(self.interval)
            limit = trio.current_time() - self.timeout
            for read in [r for r in self.reads
                         if r.waiting_since is not None and r.waiting_since <= limit]:
                # asked again: an expiry before this one may have let this read go on
                since = read.waiting_since
                if read not in self.reads or since is None or since > limit:
                    continue
                self.reads.discard(read)
                read.stalled = True
                try:
                    await read.expire()
                except Exception:  # never the watchdog's end: other reads still need it
                    log.exception("ending a stalled upstream read failed")


@attrs.frozen(slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> tuple[Origin, str]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"not an http(s) URL: {parts.scheme}://...")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port), target

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class Response:
    """A response whose head has arrived; read `chunks()`, then (or instead) `aclose()`."""

    status: int
    headers: dict[str, str]
    http_version: str

    async def chunks(self) -> AsyncIterator[bytes]:
        raise NotImplementedError
        yield b""  # pragma: no cover

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body (an error answer's), then close."""
        out = bytearray()
        try:
            async for chunk in self.chunks():
                out += chunk
                if len(out) >= limit:
                    break
        except TransportError:
            pass
        finally:
            await self.aclose()
        return bytes(out[:limit])

    async def aclose(self) -> None:
        raise NotImplementedError


class Transport:
    """Connections to upstream origins, for requests with a body and a streamed answer."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        connect_timeout: float,
        read_timeout: float,
        ping_seconds: float = 30.0,
        ping_timeout_seconds: float = 10.0,
        idle_seconds: float = 300.0,
        max_idle_h1: int = 1024,
        http2: bool = True,
    ) -> None:
        self.ssl_context = ssl_context
        self.http2 = http2
        ssl_context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.ping_seconds = ping_seconds
        self.ping_timeout = ping_timeout_seconds
        self.idle_seconds = idle_seconds
        self.max_idle_h1 = max_idle_h1
        self._nursery: trio.Nursery | None = None
        self._h2: dict[Origin, list[_H2Connection]] = {}
        self._h1_idle: dict[Origin, deque[_H1Connection]] = {}
        # origins whose ALPN said http/1.1: no h2 attempt each time
        self._h1_only: set[Origin] = set()
        self._connecting: dict[Origin, trio.Event] = {}
        self.connections_opened = 0
        self.watchdog = _ReadWatchdog(read_timeout)

    @property
    def running(self) -> bool:
        return self._nursery is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connections' tasks until cancelled; then close every connection."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.watchdog.run, name="upstream read watchdog")
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                for connections in self._h2.values():
                    for connection in connections:
                        await connection.close()
                for idle in self._h1_idle.values():
                    for h1 in idle:
                        await h1.close()
            self._h2.clear()
            self._h1_idle.clear()

    def stats(self) -> dict[str, int]:
        return {
            "h2_connections": sum(len(c) for c in self._h2.values()),
            "h2_streams": sum(c.open_streams for cs in self._h2.values() for c in cs),
            "h1_idle": sum(len(c) for c in self._h1_idle.values()),
            "opened": self.connections_opened,
        }

    async def request(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> Response:
        """Send the request; return once the response head is in (or raise)."""
        origin, target = Origin.of(url)
        for attempt in range(MAX_REFUSED_RETRIES + 1):
            try:
                return await self._request_once(origin, method, target, headers, body)
            except _Refused:
                if attempt == MAX_REFUSED_RETRIES:
                    raise TransportError("the upstream refused the stream") from None
        raise AssertionError("unreachable")

    async def _request_once(
        self, origin: Origin, method: str, target: str, headers: list[tuple[str, str]],
        body: bytes,
    ) -> Response:
        if origin.scheme == "https" and self.http2 and origin not in self._h1_only:
            connection = await self._h2_connection(origin)
            if connection is not None:
                return await connection.request(method, target, headers, body)
        return await self._h1_request(origin, method, target, headers, body)

    # -- HTTP/2 ----------------------------------------------------------------------------

    async def _h2_connection(self, origin: Origin) -> _H2Connection | None:
        """A connection with room for one more stream, opened if need be; None when the
        origin speaks HTTP/1.1 only (its socket then serves this request)."""
        while True:
            for connection in self._h2.get(origin, ()):
                if connection.has_room():
                    return connection
            pending = self._connecting.get(origin)
            if pending is not None:
                await pending.wait()  # one handshake at a time per origin: no stampede
                continue
            done = trio.Event()
            self._connecting[origin] = done
            try:
                stream, protocol = await self._connect(origin)
                if protocol != "h2":
                    self._h1_only.add(origin)
                    self._h1_idle.setdefault(origin, deque()).append(
                        _H1Connection(self, origin, stream))
                    return None
                connection = _H2Connection(self, origin, stream)
                await connection.start()
                self._h2.setdefault(origin, []).append(connection)
                nursery = self._nursery
                assert nursery is not None, "the transport is not running"
                nursery.start_soon(connection.serve, name=f"h2 {origin.authority}")
            finally:
                del self._connecting[origin]
                done.set()

    def _forget(self, connection: _H2Connection) -> None:
        connections = self._h2.get(connection.origin, [])
        if connection in connections:
            connections.remove(connection)

    async def _connect(self, origin: Origin) -> tuple[trio.abc.Stream, str]:
        try:
            with trio.fail_after(self.connect_timeout):
                tcp = await trio.open_tcp_stream(origin.host, origin.port)
                self.connections_opened += 1
                if origin.scheme == "http":
                    return tcp, "http/1.1"
                tls = trio.SSLStream(tcp, self.ssl_context, server_hostname=origin.host,
                                     https_compatible=True)
                try:
                    await tls.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(tcp)
                    raise
                return tls, tls.selected_alpn_protocol() or "http/1.1"
        except trio.TooSlowError:
            raise TransportTimeout("connect timed out") from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            cause: BaseException | None = exc
            while cause is not None:  # trio wraps the TLS error in BrokenResourceError
                if isinstance(cause, ssl.SSLCertVerificationError):
                    raise TransportError("its TLS certificate is not trusted") from None
                cause = cause.__cause__ or cause.__context__
            raise TransportError(f"connect failed: {type(exc).__name__}") from None

    # -- HTTP/1.1 --------------------------------------------------------------------------

    async def _h1_request(
        self, origin: Origin, method: str, target: str, headers: list[tuple[str, str]],
        body: bytes,
    ) -> Response:
        idle = self._h1_idle.setdefault(origin, deque())
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be stale
            if connection.stale():
                await connection.close()
                continue
            try:
                return await connection.request(method, target, headers, body)
            except _Refused:
                continue  # the server closed it while idle: the next one, or a new one
        stream, _ = await self._connect(origin)
        connection = _H1Connection(self, origin, stream)
        try:
            return await connection.request(method, target, headers, body)
        except _Refused:
            raise TransportError("the upstream closed the connection") from None

    def _return_h1(self, connection: _H1Connection) -> None:
        idle = self._h1_idle.setdefault(connection.origin, deque())
        if len(idle) >= self.max_idle_h1 or self._nursery is None:
            connection.discard()
            return
        idle.append(connection)


def _request_headers(
    method: str, target: str, origin: Origin, headers: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", origin.scheme), (":authority", origin.authority),
            (":path", target), *((k.lower(), v) for k, v in headers
                                 if k.lower() not in ("host", "connection", "content-length",
                                                      "transfer-encoding", "keep-alive"))]


# -- HTTP/2 connection -----------------------------------------------------------------------


class _DrainingH2Connection(h2.connection.H2Connection):
    """h2's client connection, except that a received GOAWAY does not close it.

    h2 moves to CLOSED on GOAWAY and then refuses the frames of the streams the server still
    finishes (those up to its last stream id), which RFC 9113 6.8 says it will finish. Here
    the connection stays open for them; `_H2Connection` opens no new stream once told
    (`going_away`). This overrides a private method of h2: tests/test_edge_contract.py
    checks it still exists and behaves so, within the pinned h2 range.
    """

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[h2.events.Event]]:
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors._error_code_from_int(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


@attrs.define(slots=True, eq=False)
class _H2Stream:
    id: int
    head: trio.Event = attrs.field(factory=trio.Event)
    status: int = 0
    headers: dict[str, str] = attrs.field(factory=dict)
    chunks: deque[tuple[bytes, int]] = attrs.field(factory=deque)  # (data, flow length)
    readable: trio.Event = attrs.field(factory=trio.Event)
    ended: bool = False
    error: TransportError | None = None
    window_open: trio.Event = attrs.field(factory=trio.Event)

    def fail(self, error: TransportError) -> None:
        if self.error is None and not self.ended:
            self.error = error
        self.head.set()
        self.readable.set()
        self.window_open.set()


class _H2Connection:
    def __init__(self, transport: Transport, origin: Origin, stream: trio.abc.Stream) -> None:
        self.transport = transport
        self.origin = origin
        self.stream = stream
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.h2 = _DrainingH2Connection(config=config)
        self.streams: dict[int, _H2Stream] = {}
        self.send_lock = trio.StrictFIFOLock()
        self.closed = False
        self.going_away = False
        self.last_activity = trio.current_time()
        self.ping_answered = trio.Event()
        self.changed = trio.Event()  # a stream ended or settings moved: the pinger looks

    @property
    def open_streams(self) -> int:
        return len(self.streams)

    def has_room(self) -> bool:
        if self.closed or self.going_away:
            return False
        limit = self.h2.remote_settings.max_concurrent_streams
        return self.h2.open_outbound_streams < limit

    async def start(self) -> None:
        self.h2.initiate_connection()
        self.h2.update_settings({
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65_535)
        await self.flush()
        # The server's SETTINGS (its stream limit above all) before any stream: a limit
        # learned after opening streams past it costs refused streams.
        try:
            with trio.fail_after(self.transport.connect_timeout):
                settled = False
                while not settled:
                    data = await self.stream.receive_some(READ_SIZE)
                    if not data:
                        raise TransportError("stream broken: the upstream closed the connection")
                    for event in self.h2.receive_data(data):
                        settled = settled or isinstance(event, h2.events.RemoteSettingsChanged)
                        self._handle(event)
                    await self.flush()
        except trio.TooSlowError:
            await trio.aclose_forcefully(self.stream)
            raise TransportTimeout("no HTTP/2 settings from the upstream in time") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                h2.exceptions.ProtocolError, TransportError) as exc:
            await trio.aclose_forcefully(self.stream)
            if isinstance(exc, TransportError):
                raise
            raise TransportError(f"connect failed: {type(exc).__name__}") from None

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if not data or self.closed:
            return
        async with self.send_lock:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._broken(TransportError(f"stream broken: {type(exc).__name__}"))

    async def serve(self) -> None:
        """The connection's reader, and its PINGs while idle; ends when it closes."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keepalive)
                await self._read()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.close()

    async def _read(self) -> None:
        while not self.closed:
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._broken(TransportError(f"stream broken: {type(exc).__name__}"))
                return
            if not data:
                self._broken(TransportError("stream broken: the upstream closed the "
                                            "connection"))
                return
            self.last_activity = trio.current_time()
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                self._broken(TransportError(f"HTTP/2 protocol error: {type(exc).__name__}"))
                return
            for event in events:
                self._handle(event)
            await self.flush()
            if self.going_away and not self.streams:
                return

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                for name, value in event.headers or ():
                    key = name if isinstance(name, str) else name.decode()
                    text = value if isinstance(value, str) else value.decode()
                    if key == ":status":
                        stream.status = int(text)
                    else:
                        stream.headers[key] = text
                stream.head.set()
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                # a stream we reset: its window must still be given back
                if event.flow_controlled_length:
                    self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                      event.stream_id)
                return
            stream.chunks.append((event.data or b"", event.flow_controlled_length or 0))
            stream.readable.set()
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.ended = True
                stream.head.set()
                stream.readable.set()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM and not (
                        stream.head.is_set()):
                    stream.fail(_Refused("refused"))
                else:
                    stream.fail(TransportError(f"stream broken: reset ({event.error_code})"))
        elif isinstance(event, h2.events.WindowUpdated):
            targets = (self.streams.values() if not event.stream_id
                       else [s for s in (self.streams.get(event.stream_id),) if s])
            for stream in targets:
                stream.window_open.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            last = event.last_stream_id or 0
            for stream_id, stream in list(self.streams.items()):
                if stream_id > last:
                    stream.fail(_Refused("goaway"))
            self.changed.set()
        elif isinstance(event, h2.events.PingAckReceived):
            self.ping_answered.set()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.changed.set()

    async def _keepalive(self) -> None:
        transport = self.transport
        while not self.closed:
            self.changed = trio.Event()
            idle_for = trio.current_time() - self.last_activity
            if self.streams:
                with trio.move_on_after(transport.ping_seconds):
                    await self.changed.wait()
                continue
            if idle_for >= transport.idle_seconds or self.going_away:
                await self.close()
                return
            wait = min(transport.ping_seconds, transport.idle_seconds - idle_for)
            with trio.move_on_after(wait):
                await self.changed.wait()
            if self.streams or self.closed:
                continue
            if trio.current_time() - self.last_activity >= transport.ping_seconds:
                self.ping_answered = trio.Event()
                self.h2.ping(b"gateway!")
                await self.flush()
                with trio.move_on_after(transport.ping_timeout) as waited:
                    await self.ping_answered.wait()
                if waited.cancelled_caught:
                    self._broken(TransportError("stream broken: PING unanswered"))
                    await self.close()
                    return

    def _broken(self, error: TransportError) -> None:
        if not self.closed:
            self.closed = True
            self.transport._forget(self)
        for stream in self.streams.values():
            stream.fail(error)

    async def close(self) -> None:
        was_open = not self.closed
        self.closed = True
        self.transport._forget(self)
        for stream in self.streams.values():
            stream.fail(TransportError("stream broken: connection closed"))
        if was_open:
            try:
                self.h2.close_connection()
                data = self.h2.data_to_send()
                with trio.move_on_after(1.0):
                    async with self.send_lock:
                        await self.stream.send_all(data)
            except (h2.exceptions.ProtocolError, trio.BrokenResourceError,
                    trio.ClosedResourceError, OSError):
                pass
        await trio.aclose_forcefully(self.stream)

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> Response:
        try:
            stream_id = self.h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self.going_away = True
            raise _Refused("stream ids used up") from None
        stream = _H2Stream(stream_id)
        self.streams[stream_id] = stream
        self.last_activity = trio.current_time()
        try:
            self.h2.send_headers(
                stream_id, _request_headers(method, target, self.origin, headers),
                end_stream=not body)
            await self.flush()
            if body:
                await self._send_body(stream, body)
            with trio.move_on_after(self.transport.read_timeout) as waited:
                await stream.head.wait()
            if waited.cancelled_caught:
                raise TransportTimeout("no answer in time")
            if stream.error is not None:
                raise stream.error
            return _H2Response(self, stream)
        except BaseException:
            await self.reset(stream)
            raise

    async def _send_body(self, stream: _H2Stream, body: bytes) -> None:
        view = memoryview(body)
        while view:
            if stream.error is not None:
                raise stream.error
            window = min(self.h2.local_flow_control_window(stream.id),
                         self.h2.max_outbound_frame_size)
            if window <= 0:
                stream.window_open = trio.Event()
                with trio.move_on_after(self.transport.read_timeout) as waited:
                    await stream.window_open.wait()
                if waited.cancelled_caught:
                    raise TransportTimeout("the upstream's flow-control window stayed shut")
                continue
            piece, view = view[:window], view[window:]
            self.h2.send_data(stream.id, piece.tobytes(), end_stream=not view)
            await self.flush()

    async def reset(self, stream: _H2Stream) -> None:
        """Done with `stream`, read to the end or not: forget it; RST_STREAM if it runs."""
        if self.streams.pop(stream.id, None) is None:
            return
        self.changed.set()
        if not stream.ended and not self.closed:
            # (a ProtocolError: closed on the server's side meanwhile)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream.id, h2.errors.ErrorCodes.CANCEL)
        # what the stream read but nobody consumed still counts against the connection
        unread = sum(length for _, length in stream.chunks)
        if unread and not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.acknowledge_received_data(unread, stream.id)
        with trio.CancelScope(shield=True):
            await self.flush()


class _H2Response(Response):
    http_version = "HTTP/2"

    def __init__(self, connection: _H2Connection, stream: _H2Stream) -> None:
        self._connection = connection
        self._stream = stream
        self.status = stream.status
        self.headers = stream.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        stream, connection = self._stream, self._connection

        async def expire() -> None:
            stream.fail(TransportTimeout("stream stalled"))

        watchdog = connection.transport.watchdog
        read = watchdog.open(expire)
        try:
            while True:
                if stream.chunks:
                    # everything that came meanwhile: one chunk, one acknowledgement
                    pieces, length = [], 0
                    while stream.chunks:
                        data, flow = stream.chunks.popleft()
                        pieces.append(data)
                        length += flow
                    if length and not connection.closed and stream.id in connection.streams:
                        connection.h2.acknowledge_received_data(length, stream.id)
                        await connection.flush()
                    joined = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                    if joined:
                        yield joined
                    continue
                if stream.error is not None:
                    raise stream.error
                if stream.ended:
                    await connection.reset(stream)
                    return
                stream.readable = trio.Event()
                read.waiting_since = trio.current_time()  # the watchdog's deadline
                await stream.readable.wait()
                read.waiting_since = None
        finally:
            watchdog.close(read)

    async def aclose(self) -> None:
        await self._connection.reset(self._stream)


# -- HTTP/1.1 connection ---------------------------------------------------------------------


class _H1Connection:
    def __init__(self, transport: Transport, origin: Origin, stream: trio.abc.Stream) -> None:
        self.transport = transport
        self.origin = origin
        self.stream = stream
        self.h11 = h11.Connection(our_role=h11.CLIENT)
        self.idle_since = trio.current_time()
        self.reused = False

    def stale(self) -> bool:
        return trio.current_time() - self.idle_since > self.transport.idle_seconds

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> Response:
        reused = self.reused
        self.reused = True
        fields = [("host", self.origin.authority), *(
            (k, v) for k, v in headers if k.lower() not in ("host", "content-length",
                                                           "transfer-encoding", "connection"))]
        fields.append(("content-length", str(len(body))))
        try:
            data = self.h11.send(h11.Request(method=method, target=target, headers=fields))
            data = (data or b"") + (self.h11.send(h11.Data(data=body)) or b"")
            data += self.h11.send(h11.EndOfMessage()) or b""
            await self.stream.send_all(data)
            with trio.move_on_after(self.transport.read_timeout) as waited:
                event = await self._next_event(first=reused)
            if waited.cancelled_caught:
                raise TransportTimeout("no answer in time")
        except BaseException:
            await self.close()
            raise
        if not isinstance(event, h11.Response):
            await self.close()
            raise TransportError("stream broken: no HTTP response")
        headers_out = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in event.headers}
        return _H1Response(self, event.status_code, headers_out)

    async def _next_event(self, *, first: bool = False) -> Any:
        """The next h11 event, reading as needed; on a reused connection, EOF before any
        byte of the answer means the server closed it while idle (`_Refused`)."""
        got_bytes = False
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError:
                raise TransportError("stream broken: malformed HTTP/1.1 answer") from None
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    if first and not got_bytes:
                        raise _Refused("closed while idle") from None
                    raise TransportError(f"stream broken: {type(exc).__name__}") from None
                if not data and first and not got_bytes:
                    raise _Refused("closed while idle")
                got_bytes = got_bytes or bool(data)
                self.h11.receive_data(bytes(data))
                continue
            if isinstance(event, h11.ConnectionClosed):
                if first and not got_bytes:
                    raise _Refused("closed while idle")
                raise TransportError("stream broken: the upstream closed the connection")
            return event

    def done(self) -> None:
        """The answer was read to its end: back to the pool, if the connection allows."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            try:
                self.h11.start_next_cycle()
            except h11.LocalProtocolError:
                self.discard()
                return
            self.idle_since = trio.current_time()
            self.transport._return_h1(self)
        else:
            self.discard()

    def discard(self) -> None:
        # Closing a trio stream needs no await for a plain socket; for TLS, forcefully.
        stream = self.stream
        if isinstance(stream, trio.SocketStream):
            stream.socket.close()
        else:
            nursery = self.transport._nursery
            if nursery is not None:
                nursery.start_soon(trio.aclose_forcefully, stream)

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)


class _H1Response(Response):
    http_version = "HTTP/1.1"

    def __init__(self, connection: _H1Connection, status: int, headers: dict[str, str]) -> None:
        self._connection: _H1Connection | None = connection
        self.status = status
        self.headers = headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: what one socket read brought is one chunk (events
        h11 already holds are taken without waiting). The read deadline is the transport's
        watchdog's: it closes the connection of a read that waited too long."""
        connection = self._connection
        if connection is None:
            return
        h11_connection, stream = connection.h11, connection.stream
        watchdog = connection.transport.watchdog
        read = watchdog.open(connection.close)
        pending: list[bytes] = []
        try:
            while True:
                try:
                    event = h11_connection.next_event()
                except h11.RemoteProtocolError:
                    raise TransportError("stream broken: malformed HTTP/1.1 answer") from None
                if isinstance(event, h11.Data):
                    pending.append(bytes(event.data))
                    continue
                if event is h11.NEED_DATA:
                    if pending:
                        yield b"".join(pending) if len(pending) > 1 else pending[0]
                        pending = []
                    read.waiting_since = trio.current_time()
                    try:
                        data = await stream.receive_some(READ_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError,
                            OSError) as exc:
                        if read.stalled:
                            raise TransportTimeout("stream stalled") from None
                        raise TransportError(f"stream broken: {type(exc).__name__}") from None
                    read.waiting_since = None
                    h11_connection.receive_data(bytes(data))
                    continue
                if pending:
                    yield b"".join(pending)
                    pending = []
                if isinstance(event, h11.EndOfMessage):
                    self._connection = None
                    connection.done()
                    return
                if isinstance(event, h11.ConnectionClosed):
                    raise TransportError("stream broken: the upstream closed the connection")
        finally:
            watchdog.close(read)

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            # read to its end? then `chunks` returned it; else the server must see us go
            with trio.CancelScope(shield=True):
                await connection.close()
