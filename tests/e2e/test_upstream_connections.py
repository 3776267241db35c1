"""Upstream connections are reused: sequential requests ride one warm connection (on the
real upstream each new one costs a TCP and a TLS handshake), concurrent ones spread over
the pools, and every request gives its pool back when its answer is read or dropped."""

from __future__ import annotations

import httpx
import trio

from tests.support import RunningGateway

BODY = {"model": "gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]}


def generation_peers(gateway: RunningGateway) -> list[str]:
    return [r.peer for r in gateway.emulator.state.received
            if "generatecontent" in r.path.lower()]


def busy(gateway: RunningGateway) -> list[int]:
    transport = gateway.services.http._transport
    return list(transport._busy)


async def test_sequential_requests_reuse_one_connection(gateway: RunningGateway) -> None:
    before = len(generation_peers(gateway))
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(9):
            response = await http.post(gateway.url + "/v1/chat/completions",
                                       json={**BODY, "stream": i % 2 == 0})
            assert response.status_code == 200
    peers = generation_peers(gateway)[before:]
    assert len(peers) == 9
    assert len(set(peers)) == 1, f"{len(set(peers))} upstream connections for 9 requests"
    assert busy(gateway) == [0] * len(busy(gateway))


async def test_concurrent_streams_spread_and_give_their_pool_back(
    gateway: RunningGateway,
) -> None:
    gateway.emulator.state.chunk_delay_seconds = 0.05
    gateway.emulator.state.text_chunks = 10

    async def one(http: httpx.AsyncClient, drop: bool) -> None:
        async with http.stream("POST", gateway.url + "/v1/chat/completions",
                               json={**BODY, "stream": True}) as response:
            async for _ in response.aiter_raw():
                if drop:
                    break  # the client goes away mid-answer

    async with httpx.AsyncClient(timeout=30) as http, trio.open_nursery() as nursery:
        for i in range(24):
            nursery.start_soon(one, http, i % 3 == 0)
    with trio.fail_after(5):
        while gateway.emulator.state.open_streams or any(busy(gateway)):
            await trio.sleep(0.01)
    assert len(set(generation_peers(gateway))) > 1
