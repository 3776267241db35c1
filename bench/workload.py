"""What the load generator sends: one request shape per target, and the emulator's controls.

A `Target` is a ready-to-send request (URL, headers, body bytes) for one face: the gateway's
Anthropic `/v1/messages`, its OpenAI `/v1/chat/completions`, or the baseline — the same prompt
as a Cloud Code envelope posted straight to the emulator's `streamGenerateContent` (what the
gateway itself calls) with a Bearer token the emulator issued for a demo refresh token.
Bodies are encoded once so the client spends its CPU on the wire, not on JSON. The emulator
helpers set its streaming shape and read its open-stream
counter, which the disconnect and idle-stream probes rely on.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import httpx

from gateway.config import UpstreamConfig

# "workers-N": the gateway's Anthropic face served by `serve --workers N` sharing Redis
Face = str
PROMPT = "Benchmark: reply with the configured text."
MAX_TOKENS = 1024


@attrs.frozen(slots=True)
class Target:
    face: Face
    stream: bool  # what the client asked for: an SSE stream, or one whole (unary) answer
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    # the unary baseline reads a stream whole: its answer exists only at the last byte
    first_byte_at_end: bool = False


@attrs.frozen(slots=True)
class Upstream:
    """What the baseline needs to talk to the emulator as the gateway would."""

    url: str
    access_token: str
    project: str


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def anthropic_target(gateway_url: str, model: str, *, stream: bool) -> Target:
    body = {
        "model": model,
        "max_tokens": MAX_TOKENS,
        "stream": stream,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    headers = (
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
        ("x-api-key", "bench"),
    )
    return Target("anthropic", stream, f"{gateway_url}/v1/messages", headers, _encode(body))


def openai_target(
    base_url: str, model: str, *, stream: bool, face: Face = "openai"
) -> Target:
    body = {
        "model": model,
        "max_tokens": MAX_TOKENS,
        "stream": stream,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    # "sk-bench": the LiteLLM proxy's master key (it refuses to start without one); the
    # gateway without API keys takes any
    headers = (("content-type", "application/json"), ("authorization", "Bearer sk-bench"))
    return Target(face, stream, f"{base_url}/v1/chat/completions", headers, _encode(body))


def baseline_target(upstream: Upstream, model: str, *, stream: bool) -> Target:
    body = {
        "project": upstream.project,
        "model": model,
        "request": {
            "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
            "generationConfig": {"maxOutputTokens": MAX_TOKENS},
            "sessionId": "bench-session",
        },
        "userAgent": "antigravity",
        "requestType": "agent",
        "requestId": "agent-bench",
    }
    # The gateway always streams from the upstream (a unary answer is collected from
    # streamGenerateContent), and a real upstream takes as long to generate either way; the
    # emulator's generateContent instead answers at once, ignoring its chunk delay. So both
    # baselines use the stream, and the unary one counts its first byte at the last, which
    # is when a real generateContent would answer.
    # the headers the gateway sends (an outdated identity would get the version gate's
    # one-line refusal instead of the answer, and measure nothing)
    headers = [
        ("authorization", f"Bearer {upstream.access_token}"),
        ("accept", "text/event-stream"),
        ("content-type", "application/json"),
        ("user-agent", UpstreamConfig().user_agent),
    ]
    url = f"{upstream.url}/v1internal:streamGenerateContent?alt=sse"
    return Target(
        "baseline", stream, url, tuple(headers), _encode(body), first_byte_at_end=not stream
    )


async def fetch_upstream(emulator_url: str) -> Upstream:
    """Trade the first demo account's refresh token for an access token at the emulator."""
    from gateway.emulator import DEMO_ACCOUNTS, EMULATOR_CLIENT_ID, EMULATOR_CLIENT_SECRET

    account = DEMO_ACCOUNTS[0]
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(
            f"{emulator_url}/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": account.refresh_token,
                "client_id": EMULATOR_CLIENT_ID,
                "client_secret": EMULATOR_CLIENT_SECRET,
            },
        )
    if response.status_code != 200:
        raise RuntimeError(f"emulator /token answered {response.status_code}")
    token = response.json().get("access_token")
    if not isinstance(token, str) or not token:
        raise RuntimeError("emulator /token gave no access_token")
    return Upstream(emulator_url, token, account.project)


@attrs.frozen(slots=True)
class StreamShape:
    """How the emulator streams a text answer: `chunks` events of `chunk_chars` characters,
    each sent `delay` seconds after the one before (the first too)."""

    delay: float
    chunks: int
    chunk_chars: int


async def configure_emulator(
    emulator_url: str, shape: StreamShape, *, token_lifetime_seconds: float | None = None,
    rtt_seconds: float | None = None,
) -> None:
    """Set how the emulator streams from now on (and, if given, how long its tokens live)."""
    config: dict[str, Any] = {
        "chunk_delay_seconds": shape.delay,
        "text_chunks": shape.chunks,
        # the emulator's knob is the answer's whole text length, split over the chunks
        "chunk_chars": shape.chunk_chars * shape.chunks,
    }
    if token_lifetime_seconds is not None:
        config["token_lifetime_seconds"] = token_lifetime_seconds
    if rtt_seconds is not None:
        config["rtt_seconds"] = rtt_seconds
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(f"{emulator_url}/__emulator/config", json=config)
    if response.status_code // 100 != 2:
        raise RuntimeError(f"emulator config answered {response.status_code}: {response.text}")


async def emulator_connections(emulator_url: str) -> int:
    """Connections the emulator has accepted so far."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(f"{emulator_url}/__emulator/streams")
    response.raise_for_status()
    return int(response.json()["connections"])


async def open_streams(control: httpx.AsyncClient, emulator_url: str) -> int:
    """How many generation streams the emulator is serving right now."""
    response = await control.get(f"{emulator_url}/__emulator/streams")
    response.raise_for_status()
    value = response.json()["open"]
    return int(value)


async def forget_requests(emulator_url: str) -> None:
    """Clear the emulator's request log, so it does not grow over a long run."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.delete(f"{emulator_url}/__emulator/requests")
    response.raise_for_status()
