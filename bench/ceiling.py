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
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from gateway import edge
from gateway.directbody import DirectBody
from gateway.emulator.app import _lifespan as answer_lifespan


def make_app(chunks: int, chunk_chars: int, delay: float, *, direct: bool = False) -> Any:
    text = "x" * chunk_chars
    event = b"data: " + json.dumps({"type": "content_block_delta", "delta": {
        "type": "text_delta", "text": text}}).encode() + b"\n\n"

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

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--chunk-chars", type=int, default=24)
    parser.add_argument("--delay", type=float, default=0.001)
    parser.add_argument("--direct", action="store_true",
                        help="serve on gateway.edge and write chunks with DirectBody")
    args = parser.parse_args()
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.accesslog = None
    config.backlog = 2048
    app = make_app(args.chunks, args.chunk_chars, args.delay, direct=args.direct)
    if args.direct:
        trio.run(lambda: edge.serve(app, config, max_connections=20_000))
    else:
        trio.run(serve, app, config)


if __name__ == "__main__":
    main()
