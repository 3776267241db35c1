"""The Cloud Code HTTP client: one account's calls to the upstream, over httpx on trio.

It knows URLs, headers, deadlines and status classification, nothing about accounts or
selection (that is `accounts.dispatch`). Each call takes the base URL explicitly so the
dispatcher can fall back from the daily endpoint to prod. Non-2xx answers raise
`UpstreamHTTPError` carrying status, headers and a bounded body for classification.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

from gateway.config import UpstreamConfig
from gateway.upstream.sse import SSEParser
from gateway.upstream.transport import Response, Transport, TransportError, TransportTimeout

_MAX_ERROR_BODY = 64 * 1024


class UpstreamHTTPError(Exception):
    """A non-2xx answer (or a broken one) from the upstream."""

    def __init__(
        self,
        status: int,
        body: str,
        headers: dict[str, str] | None = None,
        base_url: str = "",
    ) -> None:
        super().__init__(status, body)
        self.status = status  # 0 for transport failures and malformed answers
        self.body = body
        self.headers = headers or {}
        self.base_url = base_url

    def __str__(self) -> str:
        if self.status:
            return f"upstream answered {self.status}"
        # transport bodies are the gateway's own words ("timeout", "stream broken: ..."),
        # never upstream text, so they are safe to show
        return f"upstream {self.body}" if self.body else "upstream unreachable"


ONBOARD_CLIENT_LIBRARY = "google-api-nodejs-client/10.3.0"
ONBOARD_API_CLIENT = "gl-node/22.21.1"

# httpcore's pool re-scans every connection on each request and each close, so its cost per
# request grows with the number of open connections (one per HTTP/1.1 stream). Spreading
# streams over a few pools keeps each scan short; at a few hundred concurrent streams the
# scans were most of the gateway's CPU.
POOL_SHARDS = 16


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several connection pools (each uncapped, keep-alive shared out), each request sent
    through the least busy one, the first of them on a tie.

    So a steady trickle of requests goes through the first pool and reuses its warm
    connection (a round-robin sent nine sequential calls through nine pools: nine TCP and
    TLS handshakes), while concurrent streams still spread over all pools. A request is busy
    until its response body is closed.
    """

    def __init__(self, shards: int, *, keepalive: int, ca_file: str = "") -> None:
        per_shard = max(1, keepalive // shards)
        # one context: building each loads the CA bundle (~30 ms)
        tls = ssl.create_default_context(cafile=ca_file) if ca_file else (
            httpx.create_ssl_context())  # (as upstream_ssl_context: one per transport)
        self._shards = [
            httpx.AsyncHTTPTransport(
                verify=tls,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=per_shard),
            )
            for _ in range(shards)
        ]
        self._busy = [0] * shards

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._shards)), key=self._busy.__getitem__)
        self._busy[index] += 1
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            self._busy[index] -= 1
            raise
        response.stream = _Released(response.stream, lambda: self._release(index))
        return response

    def _release(self, index: int) -> None:
        self._busy[index] -= 1

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


class _Released(httpx.AsyncByteStream):
    """A response body that says once when it is closed."""

    def __init__(self, inner: Any, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    def __aiter__(self) -> AsyncIterator[bytes]:
        # the inner stream's own iterator: no extra hop per chunk on the hot path
        iterator: AsyncIterator[bytes] = self._inner.__aiter__()
        return iterator

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if self._release is not None:
                self._release()
                self._release = None


def _transport_failure(exc: httpx.TransportError) -> str:
    """What went wrong reaching the upstream, in a few words an operator can act on."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return ("ConnectError: its TLS certificate is not trusted (upstream.ca_file names "
                    "the CA of a proxy or test upstream)")
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def upstream_ssl_context(config: UpstreamConfig) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=config.ca_file) if config.ca_file else (
        httpx.create_ssl_context())


def make_transport(config: UpstreamConfig) -> Transport:
    """The generation calls' transport (HTTP/2 where offered); it serves once `run`."""
    return Transport(
        ssl_context=upstream_ssl_context(config),
        connect_timeout=config.connect_timeout_seconds,
        read_timeout=config.read_timeout_seconds,
        http2=config.http2,
    )


def make_http_client(config: UpstreamConfig) -> httpx.AsyncClient:
    timeout = httpx.Timeout(
        connect=config.connect_timeout_seconds,
        read=config.read_timeout_seconds,
        write=config.read_timeout_seconds,
        pool=config.connect_timeout_seconds,
    )
    # No cap on connections: over HTTP/1.1 each open upstream stream is one connection, and a
    # cap would queue streams behind each other (and delay a disconnect's close) long before
    # any real limit; the bound is the number of client streams, i.e. file descriptors.
    transport = ShardedTransport(POOL_SHARDS, keepalive=128, ca_file=config.ca_file)
    return httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=False)


class CloudCodeClient:
    """Calls to `v1internal` methods on a given base URL with a given access token."""

    def __init__(
        self, http: httpx.AsyncClient, config: UpstreamConfig, transport: Transport | None = None
    ) -> None:
        self.http = http
        self.config = config
        # generation streams go through it while it runs (the app's lifespan runs it);
        # through httpx otherwise (a client built without a lifespan, in tests)
        self.transport = transport

    def _headers(
        self, access_token: str, *, method: str = "", stream: bool = False, model: str = ""
    ) -> dict[str, str]:
        # The identity the Antigravity client presents, as the newest peers send it: the
        # User-Agent alone on generation and quota calls; onboarding goes through Google's
        # Node client library, which adds itself. (The old Client-Metadata and
        # x-goog-api-client headers are no longer sent by anyone.)
        user_agent = self.config.user_agent
        headers = {
            "authorization": f"Bearer {access_token}",
            "content-type": "application/json",
            "user-agent": user_agent,
        }
        if method == "loadCodeAssist":
            headers["accept"] = "*/*"
        elif method == "onboardUser":
            headers["user-agent"] = f"{user_agent} {ONBOARD_CLIENT_LIBRARY}"
            headers["x-goog-api-client"] = ONBOARD_API_CLIENT
        if stream:
            headers["accept"] = "text/event-stream"
        if model.startswith("claude") and "thinking" in model:
            # Claude thinking models on Cloud Code think between tool calls only with this beta
            headers["anthropic-beta"] = "interleaved-thinking-2025-05-14"
        for name, value in self.config.extra_headers.items():
            headers[name.lower()] = value
        return headers

    async def call(
        self, base_url: str, method: str, body: dict[str, Any], access_token: str
    ) -> dict[str, Any]:
        """POST a unary `v1internal:<method>` call and return its JSON answer."""
        url = f"{base_url}/v1internal:{method}"
        headers = self._headers(access_token, method=method)
        try:
            response = await self.http.post(url, json=body, headers=headers)
        except httpx.TimeoutException:
            raise UpstreamHTTPError(0, "timeout", base_url=base_url) from None
        except httpx.TransportError as exc:
            raise UpstreamHTTPError(0, _transport_failure(exc), base_url=base_url) from None
        if response.status_code // 100 != 2:
            raise UpstreamHTTPError(
                response.status_code,
                response.text[:_MAX_ERROR_BODY],
                dict(response.headers),
                base_url,
            )
        try:
            data = response.json()
        except ValueError:
            raise UpstreamHTTPError(0, "answer is not JSON", base_url=base_url) from None
        if not isinstance(data, dict):
            raise UpstreamHTTPError(0, "answer is not a JSON object", base_url=base_url)
        return data

    @asynccontextmanager
    async def stream(
        self, base_url: str, body: bytes, access_token: str, *, model: str
    ) -> AsyncIterator[AsyncIterator[list[dict[str, Any]]]]:
        """Open `streamGenerateContent?alt=sse`; yield an iterator of decoded SSE payloads.

        `body` is the JSON already encoded (big ones are encoded off the event loop).
        The status is checked before anything is yielded, so a caller can still fail over on
        a 429 or 5xx. Leaving the context (normally, by error or by cancellation) closes the
        upstream connection at once.
        """
        url = f"{base_url}/v1internal:streamGenerateContent?alt=sse"
        headers = self._headers(access_token, stream=True, model=model)
        transport = self.transport
        if transport is not None and transport.running:
            try:
                answer = await transport.request("POST", url, list(headers.items()), body)
            except TransportTimeout:
                raise UpstreamHTTPError(0, "timeout", base_url=base_url) from None
            except TransportError as exc:
                raise UpstreamHTTPError(0, _failure_text(exc), base_url=base_url) from None
            try:
                if answer.status // 100 != 2:
                    error_body = await answer.read(_MAX_ERROR_BODY)
                    raise UpstreamHTTPError(answer.status,
                                            error_body.decode("utf-8", "replace"),
                                            dict(answer.headers), base_url)
                yield _transport_payloads(answer, base_url)
            finally:
                with trio.CancelScope(shield=True):
                    await answer.aclose()
            return
        request = self.http.build_request(
            "POST",
            url,
            content=body,
            headers=headers,
        )
        try:
            response = await self.http.send(request, stream=True)
        except httpx.TimeoutException:
            raise UpstreamHTTPError(0, "timeout", base_url=base_url) from None
        except httpx.TransportError as exc:
            raise UpstreamHTTPError(0, _transport_failure(exc), base_url=base_url) from None
        try:
            if response.status_code // 100 != 2:
                raw = await _read_bounded(response)
                raise UpstreamHTTPError(
                    response.status_code, raw, dict(response.headers), base_url
                )
            yield _payloads(response, base_url)
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()


async def _read_bounded(response: httpx.Response) -> str:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= _MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass
    return b"".join(chunks)[:_MAX_ERROR_BODY].decode("utf-8", errors="replace")


def _payloads(response: httpx.Response, base_url: str) -> AsyncIterator[list[dict[str, Any]]]:
    return _sse_payloads(response.aiter_raw(), base_url, _httpx_failure)


def _httpx_failure(exc: Exception) -> str | None:
    if isinstance(exc, httpx.TimeoutException):
        return "stream stalled"
    if isinstance(exc, httpx.TransportError):
        return f"stream broken: {type(exc).__name__}"
    return None


async def _sse_payloads(
    chunks: AsyncIterator[bytes], base_url: str, failure: Callable[[Exception], str | None]
) -> AsyncIterator[list[dict[str, Any]]]:
    """The decoded SSE payloads of a body, in batches: those one network read brought
    (never an empty batch); a transport failure (what `failure` names) is an
    UpstreamHTTPError with status 0. One generator: no extra hop per payload."""
    parser = SSEParser()
    try:
        async for chunk in chunks:
            batch: list[dict[str, Any]] = []
            for event in parser.feed(chunk):
                try:
                    payload = _decode(event.data, base_url)
                except UpstreamHTTPError:
                    if batch:
                        yield batch  # what came before a malformed event still counts
                    raise
                if payload is not None:
                    batch.append(payload)
            if batch:
                yield batch
    except UpstreamHTTPError:
        raise
    except Exception as exc:
        reason = failure(exc)
        if reason is None:
            raise
        raise UpstreamHTTPError(0, reason, base_url=base_url) from None
    batch = []
    for event in parser.close():
        payload = _decode(event.data, base_url)
        if payload is not None:
            batch.append(payload)
    if batch:
        yield batch


def _failure_text(exc: TransportError) -> str:
    text = str(exc)
    if "not trusted" in text:
        return ("ConnectError: its TLS certificate is not trusted (upstream.ca_file names "
                "the CA of a proxy or test upstream)")
    return text


def _transport_payloads(
    response: Response, base_url: str
) -> AsyncIterator[list[dict[str, Any]]]:
    return _sse_payloads(response.chunks(), base_url, _transport_failure_reason)


def _transport_failure_reason(exc: Exception) -> str | None:
    if isinstance(exc, TransportTimeout):
        return "stream stalled"
    if isinstance(exc, TransportError):
        return _failure_text(exc)
    return None


def _decode(data: str, base_url: str) -> dict[str, Any] | None:
    if not data.strip() or data.strip() == "[DONE]":
        return None
    try:
        payload = json.loads(data)
    except ValueError:
        raise UpstreamHTTPError(0, "malformed stream event", base_url=base_url) from None
    if not isinstance(payload, dict):
        raise UpstreamHTTPError(0, "malformed stream event", base_url=base_url)
    # Cloud Code wraps each Gemini response in {"response": ...}; accept both shapes.
    inner = payload.get("response", payload)
    return inner if isinstance(inner, dict) else None
