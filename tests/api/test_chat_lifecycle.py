"""The chat lifecycle's stream writer and client watcher, on fakes: what must not happen
between the last events of an answer and its final body message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import trio
import trio.testing

from gateway.api import chat
from gateway.metrics import Metrics
from gateway.translate import canonical as c


class _Renderer:
    content_type = b"text/event-stream"

    def __init__(self, finishing: float) -> None:
        self.finishing = finishing

    def open(self) -> bytes:
        return b""

    def events(self, events: Any) -> bytes:
        return b"data: events\n\n"

    def close(self) -> bytes:
        return b""

    def keepalive(self) -> bytes:
        return b": keep-alive\n\n"

    def error(self, err: Any) -> bytes:
        return b"data: error\n\n"

    async def finish(self) -> None:
        await trio.sleep(self.finishing)  # the Responses face stores the answer here


class _Body:
    frames = 0

    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.written.append(data)

    @asynccontextmanager
    async def coalesced(self) -> AsyncIterator[None]:
        yield


def _writer(keepalive: float, finishing: float) -> tuple[chat._StreamWriter, _Body]:
    dialect = SimpleNamespace(stream_renderer=lambda prepared, rid: _Renderer(finishing),
                              new_response_id=lambda: "id")
    services = SimpleNamespace(config=SimpleNamespace(server=SimpleNamespace(
        keepalive_seconds=keepalive)), metrics=Metrics())
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    body = _Body()
    writer = chat._StreamWriter(send, body, None, dialect, services,  # type: ignore[arg-type]
                                chat._Outcome(), 0.0)
    return writer, body


async def test_no_keep_alive_and_no_spin_after_the_answer_ended() -> None:
    # the real clock: a watcher looping on a past deadline would keep a mock one still
    writer, body = _writer(keepalive=0.02, finishing=0.3)
    calls = 0
    keep_alive = writer.keep_alive

    async def counted() -> None:
        nonlocal calls
        calls += 1
        await keep_alive()

    writer.keep_alive = counted  # type: ignore[method-assign]
    to_app, from_client = trio.open_memory_channel[dict[str, Any]](10)
    outcome = chat._Outcome()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(chat._watch_client, from_client.receive, nursery.cancel_scope,
                           outcome, writer)
        await writer.events([c.MessageEnd(stop_reason="end_turn", usage=c.Usage())])
        # the answer is closed; finishing it takes 15 keep-alive intervals
        await writer.finish()
        # the watcher still hears the client go
        await to_app.send({"type": "http.disconnect"})
        with trio.fail_after(5):
            await trio.sleep_forever()  # ended by the watcher's cancel
    assert calls == 0  # it waited for the client, it did not loop on a past deadline
    assert body.written == [b"data: events\n\n"]


async def test_keep_alives_while_waiting_and_none_after_a_bug_ended_the_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    writer, body = _writer(keepalive=1.0, finishing=0)
    _to_app, from_client = trio.open_memory_channel[dict[str, Any]](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(chat._watch_client, from_client.receive, nursery.cancel_scope,
                           chat._Outcome(), writer)
        await trio.sleep(3.5)  # the upstream says nothing for a while
        assert body.written.count(b": keep-alive\n\n") == 3
        writer.abandon()  # handle_chat ends the response itself after a bug
        await trio.sleep(5)
        assert body.written.count(b": keep-alive\n\n") == 3
        nursery.cancel_scope.cancel()
