"""Two probes that are not throughput: memory per idle stream, and disconnect propagation.

`idle_streams` opens N streams through the gateway while the emulator holds every answer
back (a long chunk delay), counts them open at the emulator, and reads the gateway's RSS
before and with them open. `disconnect_latency` opens one stream at a time, reads its first
chunk, drops it and times how long until the emulator sees its side of the stream close —
through the gateway, and directly as the baseline. A drop is either the client closing its
connection (what httpx does, over HTTP/1.1 or h2c) or, over h2c, an RST_STREAM that ends
only that stream and keeps the connection open (what multiplexing clients do). Both probes
are bounded in count and time, and report what they reached rather than fail at a bound.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from functools import partial
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import httpx
import trio

from bench.loadgen import H2_STREAMS_PER_CONNECTION, Http, new_client, percentile
from bench.workload import Target, open_streams

POLL = 0.002  # seconds between reads of the emulator's stream counter


async def _wait_open(
    control: httpx.AsyncClient, emulator_url: str, predicate: Callable[[int], bool], within: float
) -> tuple[bool, int]:
    """Poll the emulator's open-stream count until `predicate` holds or `within` s pass."""
    count = await open_streams(control, emulator_url)
    with trio.move_on_after(within):
        while not predicate(count):
            await trio.sleep(POLL)
            count = await open_streams(control, emulator_url)
    return predicate(count), count


async def _quiet(control: httpx.AsyncClient, emulator_url: str) -> int:
    """Wait (a little) for earlier streams to end, so a try counts only its own stream."""
    _, count = await _wait_open(control, emulator_url, lambda n: n == 0, 5.0)
    return count


@attrs.frozen(slots=True)
class IdleResult:
    http: Http
    requested: int
    opened: int  # streams the emulator counted open at the RSS reading
    stalled: bool  # a batch did not open in time, so no more were sent
    client_errors: int
    first_error: str
    rss_before_kib: int
    rss_open_kib: int
    rss_per_stream_kib: float | None
    seconds_to_open: float
    drained: bool  # the emulator saw every stream close after the clients went away
    seconds_to_drain: float
    still_open: int  # streams the emulator still served when the drain wait ended

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


async def idle_streams(
    http: Http,
    target: Target,
    emulator_url: str,
    rss_kib: Callable[[], int],
    *,
    count: int,
    batch: int = 100,
    batch_within: float = 10.0,
) -> IdleResult:
    """Open `count` streams in batches, read RSS with them open, then drop them all.

    Batches keep the listen backlog from overflowing; a batch that the emulator does not see
    open within `batch_within` seconds means a limit was hit, and no further batch is sent.
    """
    errors: list[str] = []

    async def hold(client: httpx.AsyncClient) -> None:
        request = client.build_request(
            "POST", target.url, content=target.body, headers=list(target.headers)
        )
        try:
            response = await client.send(request, stream=True)
        except Exception as exc:  # a failed stream is a count, never a crash
            errors.append(type(exc).__name__)
            return
        try:
            if response.status_code != 200:
                errors.append(f"HTTP {response.status_code}")
                return
            await trio.sleep_forever()
        finally:
            await response.aclose()

    # several small clients: one httpx pool scanning thousands of connections costs the
    # load generator CPU that the process under test should get (see loadgen.client_set)
    clients = [
        new_client(http, 1 if http == "h2c" else H2_STREAMS_PER_CONNECTION)
        for _ in range(math.ceil(count / H2_STREAMS_PER_CONNECTION))
    ]
    stalled = False
    async with httpx.AsyncClient(timeout=10.0) as control:
        before_open = await open_streams(control, emulator_url)
        rss_before = rss_kib()
        started = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                for first in range(0, count, batch):
                    size = min(batch, count - first)
                    for index in range(first, first + size):
                        nursery.start_soon(hold, clients[index % len(clients)])
                    # operator.le(want, n) is `n >= want`, bound now rather than per loop
                    want = partial(operator.le, before_open + first + size)
                    reached, _ = await _wait_open(control, emulator_url, want, batch_within)
                    if not reached:
                        stalled = True
                        break
                seconds_to_open = trio.current_time() - started
                await trio.sleep(1.0)  # let allocations settle before reading RSS
                opened = await open_streams(control, emulator_url) - before_open
                rss_open = rss_kib()
                # some holders may still wait for headers, so cancel rather than release
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for client in clients:
                    with trio.move_on_after(5):
                        await client.aclose()
        closing = trio.current_time()
        drained, left = await _wait_open(control, emulator_url, lambda n: n <= before_open, 30.0)
        seconds_to_drain = trio.current_time() - closing
    return IdleResult(
        http=http,
        requested=count,
        opened=opened,
        stalled=stalled,
        client_errors=len(errors),
        first_error=errors[0] if errors else "",
        rss_before_kib=rss_before,
        rss_open_kib=rss_open,
        rss_per_stream_kib=round((rss_open - rss_before) / opened, 2) if opened > 0 else None,
        seconds_to_open=round(seconds_to_open, 3),
        drained=drained,
        seconds_to_drain=round(seconds_to_drain, 3),
        still_open=max(left - before_open, 0),
    )


Drop = Literal["close", "reset"]


@attrs.frozen(slots=True)
class DisconnectResult:
    http: Http
    path: str  # "gateway" or "baseline"
    drop: Drop  # "close": the client closes its connection; "reset": h2 RST_STREAM only
    tries: int
    measured: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    failures: int
    first_failure: str

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


async def _one_close(
    control: httpx.AsyncClient, http: Http, target: Target, emulator_url: str
) -> float | str:
    """One try: the seconds from closing the connection to the upstream close, or why not."""
    before = await _quiet(control, emulator_url)
    client = new_client(http, 1)
    dropped_at: float | None = None
    reason = "no first chunk within 10s"
    try:
        with trio.move_on_after(10):
            request = client.build_request(
                "POST", target.url, content=target.body, headers=list(target.headers)
            )
            response = await client.send(request, stream=True)
            try:
                if response.status_code != 200:
                    return f"HTTP {response.status_code}"
                # keep the iterator referenced: a `break` out of `async for` would let it be
                # collected, and its finaliser closes the connection before we mean to drop
                chunks = response.aiter_raw()
                await anext(chunks)
                seen, count = await _wait_open(control, emulator_url, lambda n: n > before, 5.0)
                if not seen:
                    return f"stream never counted open ({before} before, {count} after)"
                dropped_at = trio.current_time()
            finally:
                # HTTP/1.1: closing an unfinished response closes its connection
                await response.aclose()
    except httpx.HTTPError as exc:
        reason = type(exc).__name__
    except StopAsyncIteration:
        reason = "the stream ended before its first chunk"
    finally:
        # h2c: closing the client closes the connection, the only way httpx ends the
        # stream, since httpcore sends no RST_STREAM when a response is closed early
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await client.aclose()
    if dropped_at is None:
        return reason
    closed, _ = await _wait_open(control, emulator_url, lambda n: n <= before, 10.0)
    return trio.current_time() - dropped_at if closed else "upstream still open after 10s"


async def _h2_first_data(
    sock: trio.SocketStream, conn: h2.connection.H2Connection, stream_id: int
) -> str:
    """Read until the stream's first DATA frame; "" when it came, else why not."""
    status = ""
    while True:
        data = await sock.receive_some(65536)
        if not data:
            return "connection closed before the first chunk"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                status = dict(event.headers).get(b":status", b"").decode()
                if status != "200":
                    return f"HTTP {status}"
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                await sock.send_all(conn.data_to_send())
                return ""
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                return "stream ended before the first chunk"
        pending = conn.data_to_send()
        if pending:
            await sock.send_all(pending)


async def _one_reset(control: httpx.AsyncClient, target: Target, emulator_url: str) -> float | str:
    """One try over h2c: RST_STREAM the stream, keep the connection, time the upstream close."""
    before = await _quiet(control, emulator_url)
    url = urlsplit(target.url)
    assert url.hostname is not None and url.port is not None
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    path = url.path + (f"?{url.query}" if url.query else "")
    headers = [
        (":method", "POST"), (":scheme", "http"), (":authority", url.netloc), (":path", path),
        *target.headers, ("content-length", str(len(target.body))),
    ]
    dropped_at: float | None = None
    reason = "no first chunk within 10s"
    sock = await trio.open_tcp_stream(url.hostname, url.port)
    try:
        with trio.move_on_after(10):
            conn.send_headers(stream_id, headers)
            conn.send_data(stream_id, target.body, end_stream=True)
            await sock.send_all(conn.data_to_send())
            reason = await _h2_first_data(sock, conn, stream_id)
            if reason:
                return reason
            seen, _ = await _wait_open(control, emulator_url, lambda n: n > before, 5.0)
            if not seen:
                return "stream never counted open"
            dropped_at = trio.current_time()
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            await sock.send_all(conn.data_to_send())
        if dropped_at is None:
            return reason
        # the connection stays open (unread) while we wait: only the reset may end the stream
        closed, _ = await _wait_open(control, emulator_url, lambda n: n <= before, 10.0)
        return trio.current_time() - dropped_at if closed else "upstream still open after 10s"
    except (OSError, trio.BrokenResourceError, h2.exceptions.ProtocolError) as exc:
        return type(exc).__name__
    finally:
        with trio.CancelScope(shield=True):
            await sock.aclose()


async def disconnect_latency(
    http: Http, path: str, target: Target, emulator_url: str, *, tries: int, drop: Drop = "close"
) -> DisconnectResult:
    """Per try: open, read the first chunk, drop the stream, time the upstream close."""
    if drop == "reset" and http != "h2c":
        raise ValueError("a stream reset needs h2c")
    latencies: list[float] = []
    failures: list[str] = []
    async with httpx.AsyncClient(timeout=10.0) as control:
        for _ in range(tries):
            if drop == "reset":
                outcome = await _one_reset(control, target, emulator_url)
            else:
                outcome = await _one_close(control, http, target, emulator_url)
            if isinstance(outcome, str):
                failures.append(outcome)
            else:
                latencies.append(outcome)
    return DisconnectResult(
        http=http,
        path=path,
        drop=drop,
        tries=tries,
        measured=len(latencies),
        p50_ms=round(percentile(latencies, 0.5) * 1000, 3) if latencies else None,
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3) if latencies else None,
        max_ms=round(max(latencies) * 1000, 3) if latencies else None,
        failures=len(failures),
        first_failure=failures[0] if failures else "",
    )
