"""The load generator: `concurrency` trio tasks sending one `Target` until `total` are done.

Each request is timed from just before it is sent to its first body byte and to its last;
SSE `data:` lines are counted as they arrive (across read boundaries) to give the chunks the
client actually received. Clients are httpx AsyncClients, HTTP/1.1 with one connection per
concurrent task, or h2c by prior knowledge; httpcore caps one HTTP/2 connection at 100
concurrent streams, so h2c uses one client per 100 tasks rather than queueing behind that cap.
Every run is bounded twice: by the request count and by a wall-clock deadline.
"""

from __future__ import annotations

import functools
import math
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Literal

import attrs
import httpx
import trio

from bench.workload import Target

Http = Literal["1.1", "h2c"]
H2_STREAMS_PER_CONNECTION = 100  # httpcore's local SETTINGS_MAX_CONCURRENT_STREAMS
REQUEST_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


_EXTRA_CA: list[str] = []


def trust_ca(path: str) -> None:
    """Trust this CA too (the TLS profile's emulator certificate)."""
    _EXTRA_CA.append(path)
    _tls.cache_clear()


def tls_context() -> ssl.SSLContext:
    """The one TLS context of every client the harness makes (the run's CA trusted)."""
    return _tls()


@functools.cache
def _tls() -> ssl.SSLContext:
    # one context for every client: httpx builds one per client unless given one, and
    # loading the CA bundle 500 times takes longer than the run it prepares
    context = ssl.create_default_context()
    for path in _EXTRA_CA:
        context.load_verify_locations(path)
    return context


def new_client(http: Http, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=max(connections, 1), max_keepalive_connections=max(connections, 1)
    )
    # http1=False makes httpx speak HTTP/2 with prior knowledge over plain http://
    return httpx.AsyncClient(
        http1=http != "h2c", http2=http == "h2c", limits=limits, timeout=REQUEST_TIMEOUT,
        verify=_tls(),
    )


@asynccontextmanager
async def client_set(http: Http, concurrency: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Clients enough for `concurrency` requests in flight at once without queueing.

    HTTP/1.1 gets one client per connection: one httpx pool serving 100 connections spends
    so much CPU on its bookkeeping that it, not the server, sets the pace (measured on
    httpcore 1.0: 80 req/s from one pool of 100 against 320 req/s from 100 pools of one).
    """
    per_client = H2_STREAMS_PER_CONNECTION if http == "h2c" else 1
    count = math.ceil(concurrency / per_client)
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(new_client(http, 1)) for _ in range(count)]
        yield clients


@attrs.frozen(slots=True)
class Sample:
    ok: bool
    first_byte: float  # seconds from send to first body byte
    last_byte: float  # seconds from send to the end of the body
    events: int  # SSE data lines received
    error: str = ""


_DATA = b"\ndata:"


async def send_one(client: httpx.AsyncClient, target: Target) -> Sample:
    start = trio.current_time()
    first: float | None = None
    events = 0
    tail = b"\n"  # a body starts at a line start
    try:
        request = client.build_request(
            "POST", target.url, content=target.body, headers=list(target.headers)
        )
        response = await client.send(request, stream=True)
        try:
            async for raw in response.aiter_raw():
                if first is None:
                    first = trio.current_time() - start
                # the tail is shorter than the marker, so no match is counted twice
                events += (tail + raw).count(_DATA)
                tail = (tail + raw)[-(len(_DATA) - 1) :]
            last = trio.current_time() - start
            status = response.status_code
        finally:
            await response.aclose()
    except Exception as exc:  # a failed request is a sample, never a crash
        elapsed = trio.current_time() - start
        return Sample(False, elapsed, elapsed, events, type(exc).__name__)
    if first is None or target.first_byte_at_end:
        first = last
    if status != 200:
        return Sample(False, first, last, events, f"HTTP {status}")
    return Sample(True, first, last, events)


@attrs.frozen(slots=True)
class LoadResult:
    samples: tuple[Sample, ...]
    seconds: float
    timed_out: bool


async def run_load(
    clients: Sequence[httpx.AsyncClient],
    target: Target,
    *,
    concurrency: int,
    total: int,
    deadline: float,
) -> LoadResult:
    """Keep `concurrency` requests in flight until `total` have been sent or time runs out."""
    samples: list[Sample] = []
    issued = 0

    async def worker(index: int) -> None:
        nonlocal issued
        client = clients[index % len(clients)]
        while issued < total:
            issued += 1
            samples.append(await send_one(client, target))

    start = trio.current_time()
    with trio.move_on_after(deadline) as scope:
        async with trio.open_nursery() as nursery:
            for index in range(min(concurrency, total)):
                nursery.start_soon(worker, index)
    return LoadResult(tuple(samples), trio.current_time() - start, scope.cancelled_caught)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks; `values` must be non-empty."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary_ms(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    return {
        "p50": round(percentile(values, 0.50) * 1000, 3),
        "p90": round(percentile(values, 0.90) * 1000, 3),
        "p99": round(percentile(values, 0.99) * 1000, 3),
    }
