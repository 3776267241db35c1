"""The gateway's pure per-chunk work, timed in the bench's own process.

One answer is fetched from the emulator as the gateway would ask for it (the baseline's
request), and each step the gateway takes per upstream chunk is timed on it, in a loop,
with no I/O and no scheduler: h11 reading the chunked HTTP/1.1 framing, SSE parsing, JSON
decoding, Cloud Code -> canonical decoding, and rendering as Anthropic SSE. Against the
proxy's measured CPU per chunk, it says how much of that is the translation itself and how
much the serving around it (sockets, trio, hypercorn).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import h11
import httpx

from bench.loadgen import tls_context
from bench.workload import Target
from gateway.api.anthropic import _Renderer
from gateway.translate import anthropic as wire
from gateway.translate.cloudcode import CloudCodeDecoder
from gateway.translate.models import FALLBACK
from gateway.upstream.client import _decode
from gateway.upstream.sse import SSEParser

_LOOPS = 200


async def fetch_answer(target: Target) -> bytes:
    async with httpx.AsyncClient(timeout=30, verify=tls_context()) as client:
        response = await client.post(target.url, content=target.body,
                                     headers=list(target.headers))
        response.raise_for_status()
        return response.content


def _per_chunk(work: Callable[[], Any], chunks: int) -> float:
    work()  # warm
    started = time.perf_counter()
    for _ in range(_LOOPS):
        work()
    return round((time.perf_counter() - started) / _LOOPS / chunks * 1e6, 1)


def stage_costs(raw: bytes, model: str) -> dict[str, Any]:
    """Microseconds per upstream chunk for each pure step, on the answer `raw`."""
    events = [piece + b"\r\n\r\n" for piece in raw.split(b"\r\n\r\n") if piece.strip()]
    count = len(events)
    framed = [b"%x\r\n%b\r\n" % (len(e), e) for e in events]
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n" \
           b"transfer-encoding: chunked\r\n\r\n"

    def read_h11() -> None:
        connection = h11.Connection(h11.CLIENT)
        connection.send(h11.Request(method="POST", target="/",
                                    headers=[("host", "x"), ("content-length", "0")]))
        connection.send(h11.EndOfMessage())
        connection.receive_data(head)
        connection.next_event()
        for frame in framed:
            connection.receive_data(frame)
            while connection.next_event() is not h11.NEED_DATA:
                pass

    def parse_sse() -> None:
        parser = SSEParser()
        for event in events:
            parser.feed(event)

    parser = SSEParser()
    texts = [event.data for chunk in events for event in parser.feed(chunk)]

    def decode_json() -> None:
        for text in texts:
            _decode(text, "bench")

    payloads = [p for p in (_decode(t, "bench") for t in texts) if p is not None]
    info = FALLBACK.resolve(model)

    def decode_cloudcode() -> None:
        decoder = CloudCodeDecoder(model=info, tool_id_prefix="toolu_bench_")
        for payload in payloads:
            decoder.feed(payload)
        decoder.finish()

    decoder = CloudCodeDecoder(model=info, tool_id_prefix="toolu_bench_")
    canonical = [decoder.feed(p) for p in payloads] + [decoder.finish()]

    def render_anthropic() -> None:
        renderer = _Renderer(wire.AnthropicStreamEncoder(message_id="msg_bench", model=model))
        for batch in canonical:
            renderer.events(batch)

    stages = {
        "h11 chunked read": _per_chunk(read_h11, count),
        "SSE parse": _per_chunk(parse_sse, count),
        "JSON decode": _per_chunk(decode_json, count),
        "Cloud Code -> canonical": _per_chunk(decode_cloudcode, count),
        "render Anthropic SSE": _per_chunk(render_anthropic, count),
    }
    return {"chunks": count, "us_per_chunk": stages,
            "total_us_per_chunk": round(sum(stages.values()), 1)}
