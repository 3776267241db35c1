"""Fetching client-named image URLs (images.allow_remote_fetch): what is refused, what is
bounded, and that the connection goes to the address that was checked."""

from __future__ import annotations

from functools import partial
from typing import Any

import attrs
import pytest
import trio

from gateway import errors
from gateway.api.images import fetch_images, is_public_address
from gateway.config import ImagesConfig

PNG = bytes.fromhex("89504e470d0a1a0a") + b"\0" * 100


@attrs.define
class ImageServer:
    port: int
    seen: list[bytes] = attrs.field(factory=list)  # request heads
    size: int = len(PNG)


async def serve_images(server: ImageServer, stream: trio.SocketStream) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        head += chunk
    server.seen.append(head)
    body = (PNG * (server.size // len(PNG) + 1))[: server.size]
    await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: "
                          + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
    await stream.aclose()


@pytest.fixture
async def image_server(nursery: trio.Nursery) -> ImageServer:
    server = ImageServer(0)
    listeners = await nursery.start(partial(trio.serve_tcp, lambda s: serve_images(server, s),
                                            0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server


def config(**changes: Any) -> ImagesConfig:
    return attrs.evolve(ImagesConfig(allow_remote_fetch=True), **changes)


async def test_off_by_default_fetches_nothing() -> None:
    assert await fetch_images(["http://example.com/a.png"], ImagesConfig()) == {}


async def test_private_addresses_are_refused() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return {"meta.test": ["169.254.169.254"], "mixed.test": ["8.8.8.8", "10.0.0.1"]}[host]

    for url in ("http://meta.test/x.png", "http://mixed.test/x.png"):
        with pytest.raises(errors.InvalidRequest, match="private or reserved"):
            await fetch_images([url], config(), resolve=resolve)
    assert not is_public_address("::ffff:127.0.0.1")
    # IPv6 forms that carry an IPv4 address: NAT64's well-known prefix, 6to4
    assert not is_public_address("64:ff9b::7f00:1") and not is_public_address("2002:7f00:1::")
    assert not is_public_address("64:ff9b::a9fe:a9fe")  # 169.254.169.254
    assert is_public_address("64:ff9b::808:808") and is_public_address("2606:4700::1111")


@pytest.mark.parametrize("url", ["http://[/x.png", "http://a" + "b" * 70 + ".com/x.png",
                                 "http://a..b/x.png", "http://exa mple.com/x.png"])
async def test_malformed_urls_are_400s(url: str) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["8.8.8.8"]

    with pytest.raises(errors.InvalidRequest):
        await fetch_images([url], config(timeout_seconds=0.5), resolve=resolve)


async def test_the_connection_goes_to_the_checked_address(image_server: ImageServer) -> None:
    """DNS rebinding: the name is looked up once, and that answer is where we connect."""
    answers = iter([["127.0.0.1"], ["10.66.66.66"]])  # a second lookup would answer otherwise
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        return next(answers)

    url = f"http://rebind.test:{image_server.port}/cat.png"
    fetched = await fetch_images([url], config(), resolve=resolve, allow_private=True)
    assert fetched[url][0] == "image/png"
    assert lookups == ["rebind.test"]
    [head] = image_server.seen
    assert f"host: rebind.test:{image_server.port}".encode() in head.lower()


async def test_count_and_total_bytes_are_capped(image_server: ImageServer) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    urls = [f"http://img.test:{image_server.port}/{i}.png" for i in range(5)]
    with pytest.raises(errors.InvalidRequest, match=r"images\.max_count"):
        await fetch_images(urls, config(max_count=4), resolve=resolve, allow_private=True)
    assert image_server.seen == []  # refused before fetching anything
    image_server.size = 1000
    with pytest.raises(errors.InvalidRequest, match=r"images\.max_total_bytes"):
        await fetch_images(urls[:4], config(max_total_bytes=2500), resolve=resolve,
                           allow_private=True)
    assert len(image_server.seen) == 3  # the third one crossed the total
    with pytest.raises(errors.InvalidRequest, match=r"images\.max_bytes"):
        await fetch_images(urls[:1], config(max_bytes=999), resolve=resolve,
                           allow_private=True)
    fine = await fetch_images(urls[:2], config(max_total_bytes=2000), resolve=resolve,
                              allow_private=True)
    assert len(fine) == 2
