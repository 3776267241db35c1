"""What gateway/edge.py relies on in hypercorn and h2, checked so an upgrade that changes it
fails here (and not in production), plus the edge's own pieces on fakes."""

from __future__ import annotations

import errno
import inspect
import logging
from importlib.metadata import version
from typing import Any

import pytest
import trio

from gateway import edge


def _tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def test_versions_are_in_the_tested_ranges() -> None:
    assert (0, 17) <= _tuple(version("hypercorn")) < (0, 19)
    assert (4, 1) <= _tuple(version("h2")) < (4, 5)
    assert (0, 14) <= _tuple(version("h11")) < (0, 17)  # gateway/directbody.py frames it


def test_hypercorn_pieces_keep_their_shape() -> None:
    from hypercorn.config import Config, Sockets
    from hypercorn.trio.lifespan import Lifespan
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.utils import raise_shutdown, wrap_app

    def params(func: Any) -> list[str]:
        return [p for p in inspect.signature(func).parameters if p != "self"]

    assert params(TCPServer.__init__) == ["app", "config", "context", "state", "stream"]
    assert params(Lifespan.__init__) == ["app", "config", "state"]
    assert params(WorkerContext.__init__) == ["max_requests"]
    assert params(wrap_app)[:3] == ["app", "wsgi_max_body_size", "mode"]
    assert params(raise_shutdown) == ["shutdown_event"]
    assert "insecure_sockets" in Sockets.__annotations__
    assert callable(Config.create_sockets)
    for name in ("handle_lifespan", "wait_for_startup", "wait_for_shutdown"):
        assert callable(getattr(Lifespan, name))
    # TCPServer tells plain streams from TLS ones by do_handshake's absence
    assert "do_handshake" in inspect.getsource(TCPServer.run)
    # the write deadline relies on a broken send being taken as the client gone
    assert "BrokenResourceError" in inspect.getsource(TCPServer.protocol_send)
    # a new h2 connection's idle timer: started by Updated(idle=True), from initiate
    from hypercorn.protocol.h2 import H2Protocol

    assert params_of(edge._original_h2_initiate) == ["self", "headers", "settings"]
    assert isinstance(H2Protocol.idle, property)
    assert "idle_task.restart" in inspect.getsource(TCPServer.protocol_send)
    # ClosingTCPServer: reading ends in _read_data, inside run's task group, which the idle
    # task (stopped there) would otherwise hold open
    run = inspect.getsource(TCPServer.run)
    assert run.index("TaskGroup()") < run.index("self._read_data()") < run.index("_close()")
    assert callable(TCPServer._read_data) and hasattr(TCPServer(
        None, None, None, None, None), "idle_task")  # type: ignore[arg-type]


def test_h2_pieces_keep_their_shape() -> None:
    import h2.connection
    import h2.exceptions

    assert issubclass(h2.exceptions.InvalidBodyLengthError, h2.exceptions.ProtocolError)
    assert params_of(edge._original_receive_data_frame) == ["self", "frame"]
    assert params_of(edge._original_receive_headers_frame) == ["self", "frame"]
    # malformed request headers are refused inside the stream, after it exists
    source = inspect.getsource(edge._original_receive_headers_frame)
    assert source.index("_get_or_create_stream") < source.index("receive_headers(")
    assert callable(h2.connection.H2Connection.reset_stream)
    assert callable(h2.connection.H2Connection.acknowledge_received_data)


def params_of(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_content_length_mismatch_resets_one_server_stream_only() -> None:
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    edge.install_h2_stream_errors()
    edge.install_h2_stream_errors()  # idempotent
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    headers = [(":method", "POST"), (":path", "/"), (":scheme", "http"),
               (":authority", "x"), ("content-length", "3")]
    client.send_headers(1, headers)
    client.send_data(1, b"too long", end_stream=True)
    events = server.receive_data(client.data_to_send())
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert [r.stream_id for r in resets] == [1]
    client_events = client.receive_data(server.data_to_send())
    assert any(isinstance(e, h2.events.StreamReset) for e in client_events)
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in client_events)
    # a client connection still treats it as h2 always did
    other = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    other.initiate_connection()
    other.send_headers(1, headers[:4])
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    peer.initiate_connection()
    peer.receive_data(other.data_to_send())
    other.receive_data(peer.data_to_send())
    peer.send_headers(1, [(":status", "200"), ("content-length", "2")])
    peer.send_data(1, b"four", end_stream=True)
    with pytest.raises(h2.exceptions.InvalidBodyLengthError):
        other.receive_data(peer.data_to_send())


class _NoDescriptors(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose accept fails with EMFILE `failures` times, then hangs."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    async def accept(self) -> trio.abc.Stream:
        if self.failures > 0:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        await trio.sleep_forever()
        raise AssertionError

    async def aclose(self) -> None:
        pass


async def test_running_out_of_descriptors_is_said_once(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        listener = edge.GuardedListener(_NoDescriptors(50), 10, nursery)  # type: ignore[arg-type]
        with caplog.at_level(logging.WARNING, logger="gateway.edge"):
            with trio.move_on_after(30):
                await listener.accept()
        nursery.cancel_scope.cancel()
    warnings = [r for r in caplog.records if r.name == "gateway.edge"]
    assert len(warnings) == 1 and "EMFILE" in warnings[0].getMessage()
    assert warnings[0].exc_info is None  # no traceback ten times a second


def test_connection_limit_follows_the_open_file_limit() -> None:
    assert edge.connection_limit(123) == 123
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert edge.connection_limit(0) == max(16, min(20_000, (soft - 256) // 2))


def _stuck_stream() -> tuple[trio.SocketStream, trio.socket.SocketType]:
    """A real connection whose peer never reads (the peer is returned, to keep it open)."""
    ours, peer = trio.socket.socketpair()
    return trio.SocketStream(ours), peer


async def test_a_send_to_a_client_that_never_reads_ends_at_the_write_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        listener = edge.GuardedListener(_NoDescriptors(0), 10, nursery,  # type: ignore[arg-type]
                                        write_timeout=30)
        inner, peer = _stuck_stream()
        counted = edge._Counted(inner, listener)
        started = trio.current_time()
        # shielded, as hypercorn sends; far more than the kernel buffers
        with pytest.raises(trio.BrokenResourceError), trio.CancelScope(shield=True):
            await counted.send_all(b"x" * 20_000_000)
        assert trio.current_time() - started == pytest.approx(30)
        assert inner.socket.fileno() == -1  # hung up, not just reported
        # what the kernel takes at once is written without waiting (no deadline involved)
        quick, quick_peer = _stuck_stream()
        assert edge._Counted(quick, listener).send_nowait(b"y" * 100) == 100
        # at shutdown a send gets the grace period, not the whole write deadline
        other_inner, other_peer = _stuck_stream()
        other = edge._Counted(other_inner, listener)

        async def shut_down_soon() -> None:
            await trio.sleep(1)
            listener.closing(trio.current_time() + 2)

        nursery.start_soon(shut_down_soon)
        started = trio.current_time()
        with pytest.raises(trio.BrokenResourceError), trio.CancelScope(shield=True):
            await other.send_all(b"y" * 20_000_000)
        assert trio.current_time() - started == pytest.approx(3)
        # a closed connection is Closed (never a write to a reused descriptor number), one
        # whose client is gone Broken
        quick_counted = edge._Counted(quick, listener)
        await quick.aclose()
        with pytest.raises(trio.ClosedResourceError):
            quick_counted.send_nowait(b"z")
        gone, gone_peer = _stuck_stream()
        gone_peer.close()
        with pytest.raises(trio.BrokenResourceError):
            edge._Counted(gone, listener).send_nowait(b"z")
        for sock in (peer, quick_peer, other_peer):
            sock.close()
        nursery.cancel_scope.cancel()


def test_h2_goaway_override_still_lets_streams_below_the_last_id_finish() -> None:
    """gateway/upstream/transport.py overrides h2's private `_receive_goaway_frame` so a
    connection told GOAWAY still takes the answers of the streams the server finishes. If
    h2 renames it or changes what it returns, this fails (pinned: h2 in pyproject.toml)."""
    import struct

    import h2.config
    import h2.connection
    import h2.events

    from gateway.upstream.transport import _DrainingH2Connection

    assert callable(getattr(h2.connection.H2Connection, "_receive_goaway_frame", None))
    client = _DrainingH2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    request = [(":method", "POST"), (":path", "/"), (":scheme", "https"), (":authority", "x")]
    client.send_headers(1, request, end_stream=True)
    client.send_headers(3, request, end_stream=True)
    server.receive_data(client.data_to_send())
    payload = struct.pack(">II", 1, 0)  # GOAWAY: last stream 1, NO_ERROR
    goaway = struct.pack(">I", len(payload))[1:] + b"\x07\x00" + struct.pack(">I", 0) + payload
    server.send_headers(1, [(":status", "200")])
    server.send_data(1, b"done", end_stream=True)
    events = client.receive_data(goaway + server.data_to_send())
    kinds = [type(e) for e in events]
    assert kinds[0] is h2.events.ConnectionTerminated
    assert events[0].last_stream_id == 1
    assert h2.events.ResponseReceived in kinds and h2.events.StreamEnded in kinds
    data = [e for e in events if isinstance(e, h2.events.DataReceived)]
    assert data and data[0].data == b"done"
    client.acknowledge_received_data(data[0].flow_controlled_length, 1)  # still usable
