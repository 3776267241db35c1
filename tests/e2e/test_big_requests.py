"""One big request must not stop the gateway: counts are bounded with clear 400s, and a big
body within them is taken apart off the event loop while other requests go on."""

from __future__ import annotations

import gc
import json
import time
from typing import Any

import httpx
import pytest
import trio

from tests.support import RunningGateway


class LongestStep(trio.abc.Instrument):
    """The longest stretch the event loop spent in one task step (nobody else ran)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.task = ""
        self._started: float | None = None  # the step running when added is not seen whole

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._started is None:
            return
        spent = time.perf_counter() - self._started
        if spent > self.longest:
            self.longest, self.task = spent, task.name


def conversation(messages: int, blocks: int, chars: int) -> bytes:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [
        {"role": "user" if i % 2 == 0 else "assistant",
         "content": [{"type": "text", "text": "x" * chars + str(j)} for j in range(blocks)]}
        for i in range(messages)]}
    body["messages"][-1]["role"] = "user"
    return json.dumps(body).encode()


async def post(gateway: RunningGateway, path: str, raw: bytes) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(gateway.url + path, content=raw,
                               headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("raw", "limit"),
    [
        (json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [
            {"role": "user", "content": "x"}] * 600_000}).encode(), "server.max_messages"),
        (conversation(2, 60_000, 1), "server.max_content_blocks"),
        (b'{"model":"claude-sonnet-4-6","max_tokens":8,"messages":[{"role":"user","content":'
         b'"x"}],"metadata":{"a":[' + b",".join([b'{"b":1}'] * 400_000) + b"]}}",
         "JSON objects"),
        (json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8,
                     "messages": [{"role": "user", "content": "x"}],
                     "tools": [{"name": f"t{i}", "input_schema": {"type": "object"}}
                               for i in range(5_000)]}).encode(), "server.max_tools"),
        *[(b'{"model":"claude-sonnet-4-6","max_tokens":8,"messages":[{"role":"user",'
           b'"content":"x"}],"metadata":{"a":[' + b",".join([b"{" + space + b'"b":1}'] * 400_000)
           + b"]}}", "JSON objects") for space in (b"\t", b"\r", b"\n", b" ")],
    ],
    ids=["600k-messages", "120k-blocks", "5k-tools", "400k-objects", "400k-objects-tab",
         "400k-objects-cr", "400k-objects-lf", "400k-objects-space"],
)
async def test_counts_past_the_limits_are_400s_naming_them(
    gateway: RunningGateway, raw: bytes, limit: str
) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = await post(gateway, path, raw)
        assert response.status_code == 400, response.text[:300]
        assert limit in response.json()["error"]["message"]
    assert not list(gateway.emulator.state.generation_requests())


def work_of(raw: bytes) -> float:
    """Seconds of CPU the gateway spends taking `raw` apart (decode, parse, translate,
    encode), measured here on this machine."""
    from gateway.api.chat import encode_upstream
    from gateway.translate.anthropic import parse_messages_request
    from gateway.translate.cloudcode import to_cloudcode
    from gateway.translate.models import FALLBACK

    started = time.perf_counter()
    chat = parse_messages_request(json.loads(raw))
    encode_upstream(to_cloudcode(chat, model=FALLBACK.resolve(chat.model), project="p",
                                 session_id="s", request_id="r"))
    return time.perf_counter() - started


async def test_a_big_valid_request_leaves_the_loop_free(gateway: RunningGateway) -> None:
    raw = conversation(5_000, 9, 140)  # 8 MB, 45k blocks: just within the limits
    work = work_of(raw)
    # What is measured is where the work runs, not the collector: a collection of the whole
    # test process's heap (large after hundreds of tests) would land in some step.
    gc.collect()
    gc.disable()
    probes: list[float] = []
    answer: dict[str, Any] = {}
    watch = LongestStep()

    async def big() -> None:
        answer["response"] = await post(gateway, "/v1/messages", raw)

    async def health(until: trio.Event) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            while not until.is_set():
                started = trio.current_time()
                await http.get(gateway.url + "/health")
                probes.append(trio.current_time() - started)
                await trio.sleep(0.02)

    done = trio.Event()
    trio.lowlevel.add_instrument(watch)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(health, done)
            await big()
            done.set()
    finally:
        trio.lowlevel.remove_instrument(watch)
        gc.enable()
    response = answer["response"]
    assert response.status_code == 200, response.text[:300]
    assert response.json()["content"][0]["text"].startswith("Echo")
    # on the loop, decoding and parsing would be one step of most of `work`, during which
    # nothing else runs; off it, the longest step is a fraction (decoding, which holds the
    # GIL). Relative to this machine's own speed, so a slow CI machine does not fail it.
    assert watch.longest < max(0.05, 0.4 * work), (watch.longest, work, watch.task)
    assert len(probes) > 3 and max(probes) < max(0.1, work)
