"""Fetching http(s) image URLs named by OpenAI clients, when the operator allows it.

Off by default: a gateway that fetches any URL a client names is a server-side request
forgery tool. When `images.allow_remote_fetch` is on, each URL must be http(s), every address
its host resolves to must be globally routable (no loopback, private, link-local, multicast
or reserved ranges, so no cloud metadata endpoints), redirects are not followed, and the body
is bounded in size and time. Only image/* content is accepted.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx
import trio

from gateway import errors
from gateway.config import ImagesConfig

_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


def is_public_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def _check_host(host: str, port: int) -> None:
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise errors.InvalidRequest(f"image host {host!r} does not resolve") from None
    addresses = {info[4][0] for info in infos}
    if not addresses or not all(is_public_address(str(a)) for a in addresses):
        raise errors.InvalidRequest(
            f"image host {host!r} resolves to a private or reserved address; refused"
        )


async def fetch_images(
    urls: Sequence[str], config: ImagesConfig, *, allow_private: bool = False
) -> dict[str, tuple[str, str]]:
    """Map each URL to (media type, base64 data), or raise InvalidRequest.

    `allow_private` exists for tests that serve images on loopback; the web layer never
    sets it.
    """
    if not config.allow_remote_fetch:
        return {}
    fetched: dict[str, tuple[str, str]] = {}
    timeout = httpx.Timeout(config.timeout_seconds)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        for url in dict.fromkeys(urls):
            fetched[url] = await _fetch_one(client, url, config, allow_private)
    return fetched


async def _fetch_one(
    client: httpx.AsyncClient, url: str, config: ImagesConfig, allow_private: bool
) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.InvalidRequest("image URLs must be http(s) or data: URLs")
    if not allow_private:
        await _check_host(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    shown = f"{parts.scheme}://{parts.hostname}"
    try:
        with trio.fail_after(config.timeout_seconds):
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise errors.InvalidRequest(
                        f"image at {shown} answered HTTP {response.status_code}"
                    )
                media_type = response.headers.get("content-type", "").split(";")[0].strip()
                if media_type not in _IMAGE_TYPES:
                    raise errors.InvalidRequest(
                        f"image at {shown} is not a supported image type ({media_type or '?'})"
                    )
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > config.max_bytes:
                        raise errors.InvalidRequest(
                            f"image at {shown} exceeds the {config.max_bytes} byte limit"
                        )
    except trio.TooSlowError:
        raise errors.InvalidRequest(f"image at {shown} took too long to fetch") from None
    except httpx.HTTPError as exc:
        reason = type(exc).__name__
        raise errors.InvalidRequest(f"image at {shown} could not be fetched: {reason}") from None
    return media_type, base64.b64encode(bytes(data)).decode()
