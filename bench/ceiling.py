"""The ceiling: what hypercorn on trio alone relays, with nothing of the gateway in the way.

`python -m bench.ceiling --port P --chunks N --chunk-chars C --delay S` serves a bare ASGI
app on hypercorn's trio worker that answers every POST with N server-sent events of C
characters, S seconds apart, one `send` each: the stack the gateway is built on, streaming
the same shape as the emulator, without an upstream, translation or accounts. The bench
measures it like a proxy (its CPU from /proc), so the gateway's chunks per CPU-second can be
read against what the stack itself allows.

`--direct` serves it the way the gateway serves: on `gateway.edge.serve`, each chunk written
by `gateway.directbody.DirectBody` (straight to the socket over HTTP/1.1, past hypercorn's
per-message path): the floor of what the gateway's own server path costs.

`--relay SPEC` makes it a relay, the floor of any proxy on this stack: each POST sends the
request SPEC describes (a JSON file: url, headers, body, ca_file) to the upstream over
`gateway.upstream.transport.Transport`, the gateway's own warm upstream connections, and
writes each piece of the upstream's body to the client as it came, with DirectBody, on
`gateway.edge`. Nothing is parsed, translated or decoded: what is left is intake, one
upstream request, and the relay of its bytes.
"""

from __future__ import annotations

import argparse
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from gateway import edge
from gateway.directbody import DirectBody
from gateway.emulator.app import _lifespan as answer_lifespan
from gateway.upstream.transport import Transport

Stream = Callable[[Any], Awaitable[None]]  # writes one POST's answer, given `send`


def _bare(stream: Stream) -> Any:
    """The ASGI app around `stream`: the emulator's empty lifespan, every request body read
    whole, GET answered "ok" (readiness), every POST answered by `stream`."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)  # the emulator's: nothing to start
            return
        if scope["type"] != "http":
            return
        while True:  # the request body
            message = await receive()
            if not message.get("more_body"):
                break
        if scope["method"] == "GET":  # readiness
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await stream(send)

    return app


def make_app(chunks: int, chunk_chars: int, delay: float, *, direct: bool = False) -> Any:
    text = "x" * chunk_chars
    event = b"data: " + json.dumps({"type": "content_block_delta", "delta": {
        "type": "text_delta", "text": text}}).encode() + b"\n\n"

    async def stream(send: Any) -> None:
        body = DirectBody(send) if direct else None
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for _ in range(chunks):
            if delay:
                await trio.sleep(delay)
            if body is not None:
                await body.write(event)
            else:
                await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return _bare(stream)


def make_relay(spec: dict[str, Any], transport: Transport) -> Any:
    url, body = spec["url"], spec["body"].encode()
    headers = [(str(k), str(v)) for k, v in spec["headers"]]

    async def stream(send: Any) -> None:
        response = await transport.request("POST", url, headers, body)
        try:
            writer = DirectBody(send)
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [(b"content-type", b"text/event-stream")]})
            async for chunk in response.chunks():
                await writer.write(chunk)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    return _bare(stream)


async def _relay(spec_path: str, config: Config) -> None:
    spec = json.loads(Path(spec_path).read_text())
    context = ssl.create_default_context(cafile=spec.get("ca_file") or None)
    transport = Transport(ssl_context=context, connect_timeout=10.0, read_timeout=600.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await edge.serve(make_relay(spec, transport), config, max_connections=20_000)
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--chunk-chars", type=int, default=24)
    parser.add_argument("--delay", type=float, default=0.001)
    parser.add_argument("--direct", action="store_true",
                        help="serve on gateway.edge and write chunks with DirectBody")
    parser.add_argument("--relay", metavar="SPEC",
                        help="relay the upstream request SPEC (a JSON file) describes")
    args = parser.parse_args()
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.accesslog = None
    config.backlog = 2048
    if args.relay:
        trio.run(_relay, args.relay, config)
        return
    app = make_app(args.chunks, args.chunk_chars, args.delay, direct=args.direct)
    if args.direct:
        trio.run(lambda: edge.serve(app, config, max_connections=20_000))
    else:
        trio.run(serve, app, config)


if __name__ == "__main__":
    main()
