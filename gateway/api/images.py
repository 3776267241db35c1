"""Fetching http(s) image URLs named by OpenAI clients, when the operator allows it.

Off by default: a gateway that fetches any URL a client names is a server-side request
forgery tool. When `images.allow_remote_fetch` is on, each URL must be http(s), every address
its host resolves to must be globally routable (no loopback, private, link-local, multicast
or reserved ranges, so no cloud metadata endpoints), and the connection goes to the address
that was checked (a second lookup could answer otherwise: DNS rebinding), with the URL's
host kept for the Host header and TLS. Redirects are not followed; each body is bounded in
size and time, and a request in the number of URLs and their total bytes. Only image/*
content is accepted.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

import httpx
import trio

from gateway import errors
from gateway.config import ImagesConfig

_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: IPv4 inside


def is_public_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address reach that address: judge it instead
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not ip.is_multicast


Resolve = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def _checked_address(host: str, port: int, resolve: Resolve, allow_private: bool) -> str:
    """The one address to connect to: every address the host resolves to must be public."""
    try:
        addresses = list(dict.fromkeys(await resolve(host, port)))
    except OSError:
        raise errors.InvalidRequest(f"image host {host!r} does not resolve") from None
    if not addresses:
        raise errors.InvalidRequest(f"image host {host!r} does not resolve")
    if not allow_private and not all(is_public_address(a) for a in addresses):
        raise errors.InvalidRequest(
            f"image host {host!r} resolves to a private or reserved address; refused"
        )
    return addresses[0]


async def fetch_images(
    urls: Sequence[str],
    config: ImagesConfig,
    *,
    allow_private: bool = False,
    resolve: Resolve = system_resolve,
) -> dict[str, tuple[str, str]]:
    """Map each URL to (media type, base64 data), or raise InvalidRequest.

    `allow_private` and `resolve` exist for tests that serve images on loopback under made-up
    names; the web layer sets neither.
    """
    if not config.allow_remote_fetch:
        return {}
    unique = list(dict.fromkeys(urls))
    if len(unique) > config.max_count:
        raise errors.InvalidRequest(
            f"at most {config.max_count} image URLs are fetched per request "
            f"(images.max_count), got {len(unique)}"
        )
    fetched: dict[str, tuple[str, str]] = {}
    budget = config.max_total_bytes
    timeout = httpx.Timeout(config.timeout_seconds)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        for url in unique:
            media_type, data = await _fetch_one(
                client, url, config, allow_private, resolve, min(config.max_bytes, budget)
            )
            budget -= len(data)
            fetched[url] = media_type, base64.b64encode(data).decode()
    return fetched


async def _fetch_one(
    client: httpx.AsyncClient,
    url: str,
    config: ImagesConfig,
    allow_private: bool,
    resolve: Resolve,
    limit: int,
) -> tuple[str, bytes]:
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        if hostname:
            hostname.encode("idna")  # a label too long or empty fails here, not later
    except (ValueError, UnicodeError):
        raise errors.InvalidRequest("an image URL is malformed (its host cannot be read)") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise errors.InvalidRequest("image URLs must be http(s) or data: URLs")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise errors.InvalidRequest("image URL has an invalid port") from None
    address = await _checked_address(hostname, port, resolve, allow_private)
    # connect to the checked address; the URL's own host names the site and the TLS peer
    try:
        target = httpx.URL(url).copy_with(host=address)
    except (httpx.InvalidURL, ValueError, UnicodeError):
        raise errors.InvalidRequest("an image URL is malformed") from None
    host_header = parts.netloc.rpartition("@")[2]
    extensions = {"sni_hostname": hostname} if parts.scheme == "https" else {}
    shown = f"{parts.scheme}://{hostname}"
    too_big = (
        f"image at {shown} exceeds the {config.max_bytes} byte limit (images.max_bytes)"
        if limit == config.max_bytes
        else f"the images of this request exceed {config.max_total_bytes} bytes in all "
             "(images.max_total_bytes)"
    )
    try:
        with trio.fail_after(config.timeout_seconds):
            async with client.stream("GET", target, headers={"host": host_header},
                                     extensions=extensions) as response:
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
                    if len(data) > limit:
                        raise errors.InvalidRequest(too_big)
    except trio.TooSlowError:
        raise errors.InvalidRequest(f"image at {shown} took too long to fetch") from None
    except httpx.HTTPError as exc:
        reason = type(exc).__name__
        raise errors.InvalidRequest(f"image at {shown} could not be fetched: {reason}") from None
    return media_type, bytes(data)
