"""Gemini API routes: POST /v1beta/models/{model}:generateContent and :streamGenerateContent
(via the chat lifecycle), :countTokens (a local estimate), GET /v1beta/models and
/v1beta/models/{model}; the same under /v1/ (a Gemini client's GET /v1/models is told from
an OpenAI one by its Google headers).

`streamGenerateContent` answers in server-sent events with `?alt=sse` (what the SDKs ask
for) and as one JSON array written piece by piece without it, as the API does.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
from quart import Blueprint, current_app, request

from gateway import errors
from gateway.api.auth import query
from gateway.api.chat import (
    SSE_CONTENT_TYPE,
    PreparedChat,
    Scope,
    header,
    parse_within_limits,
    run_cpu,
)
from gateway.config import ServerConfig
from gateway.translate import canonical as c
from gateway.translate import gemini as wire
from gateway.translate.session import conversation_session_id
from gateway.translate.tokens import estimate_tokens

if TYPE_CHECKING:
    from gateway.app import Services

# /v1beta/models/gemini-3-flash:generateContent (the model may carry its "models/" prefix
# once more, or be percent-encoded: the path arrives decoded)
_ACTION = re.compile(r"/(?:v1beta|v1|v1alpha)/models/(?P<model>[^:]+):(?P<method>[A-Za-z]+)")
GENERATE_METHODS = frozenset({"generateContent", "streamGenerateContent"})


def route(path: str) -> tuple[str, str] | None:
    """(model, method) of a Gemini action path, else None."""
    found = _ACTION.fullmatch(path)
    if found is None:
        return None
    return found.group("model").removeprefix("models/"), found.group("method")


def is_gemini_client(scope: Scope) -> bool:
    """A request from a Google SDK or CLI: its API key header or query, or its client tag."""
    if header(scope, b"x-goog-api-key") is not None or header(scope, b"x-goog-api-client"):
        return True
    return "key" in query(scope)


def is_gemini_path(path: str) -> bool:
    return path.startswith(("/v1beta/", "/v1alpha/")) or path in ("/v1beta", "/v1alpha") or (
        route(path) is not None)


def error_body(err: errors.GatewayError) -> tuple[int, dict[str, Any]]:
    return errors.gemini_status(err), errors.render_gemini(err)


@attrs.frozen(slots=True)
class _Face:
    include_thoughts: bool
    sse: bool  # alt=sse; else the stream is one JSON array


class GeminiDialect:
    name = "gemini"
    tool_id_prefix = "call_"

    async def prepare(
        self, body: Any, services: Services, scope: Scope, *, offload: bool
    ) -> PreparedChat:
        found = route(scope["path"])
        assert found is not None and found[1] in GENERATE_METHODS  # the edge routed it here
        model_name, method = found
        stream = method == "streamGenerateContent"
        parsed = await run_cpu(offload, _parse, body, model_name, stream)
        chat = parsed.chat
        thinking = chat.thinking is not None and chat.thinking.enabled
        model = services.resolve_model(chat.model, thinking=thinking)
        session = conversation_session_id(chat)
        alt = query(scope).get("alt", ["json"])[-1].lower()
        if alt not in ("json", "sse"):
            raise errors.InvalidRequest(f"alt must be json or sse, not {alt[:20]!r}",
                                        param="alt")
        return PreparedChat(chat, model, session, session, offload=offload,
                            face=_Face(parsed.include_thoughts, sse=alt == "sse"))

    def error_body(self, err: errors.GatewayError) -> tuple[int, dict[str, Any]]:
        return error_body(err)

    def new_response_id(self) -> str:
        return secrets.token_urlsafe(18)

    def stream_renderer(self, prepared: PreparedChat, response_id: str) -> _Renderer:
        face: _Face = prepared.face
        encoder = wire.GeminiStreamEncoder(
            response_id=response_id, model_version=prepared.model.id,
            include_thoughts=face.include_thoughts,
        )
        return _Renderer(encoder, sse=face.sse)

    async def render(
        self, prepared: PreparedChat, response: c.ChatResponse, response_id: str
    ) -> dict[str, Any]:
        face: _Face = prepared.face
        return wire.render_response(response, response_id=response_id,
                                    model_version=prepared.model.id,
                                    include_thoughts=face.include_thoughts)


def _parse(body: Any, model: str, stream: bool) -> wire.GeminiRequest:
    return wire.parse_generate_request(body, model=model, stream=stream)


def _dumps(value: Any) -> bytes:
    return c.compact_json(value).encode()


class _Renderer:
    """SSE (`data: {...}` events, CRLF as the API writes them) or one JSON array."""

    def __init__(self, encoder: wire.GeminiStreamEncoder, *, sse: bool) -> None:
        self.encoder = encoder
        self.sse = sse
        self.content_type = SSE_CONTENT_TYPE if sse else b"application/json; charset=utf-8"
        self.written = 0  # array elements so far

    def _element(self, value: Any) -> bytes:
        if self.sse:
            return b"data: " + _dumps(value) + b"\r\n\r\n"
        comma = b",\r\n" if self.written else b""
        self.written += 1
        return comma + _dumps(value)

    def open(self) -> bytes:
        return b"" if self.sse else b"["

    def events(self, events: Sequence[c.StreamEvent]) -> bytes:
        return b"".join(self._element(chunk) for chunk in self.encoder.encode(events))

    def keepalive(self) -> bytes:
        # A blank line: an SSE comment (": ...") breaks the Google SDKs' stream parsers,
        # and whitespace between array elements is still JSON.
        return b"\r\n"

    def error(self, err: errors.GatewayError) -> bytes:
        return self._element(error_body(err)[1]) + self.close()

    def close(self) -> bytes:
        return b"" if self.sse else b"]"

    async def finish(self) -> None:
        pass


blueprint = Blueprint("gemini", __name__)


def _services() -> Services:
    services: Services = current_app.extensions["gateway"]
    return services


@blueprint.get("/v1beta/models")
async def list_models() -> dict[str, Any]:
    services = _services()
    catalogue = services.catalogue()
    models = [wire.render_model(info) for info in catalogue.models]
    for alias in services.config.models.aliases:
        if "*" in alias or alias in catalogue:
            continue
        try:
            models.append(wire.render_model(services.resolve_model(alias), name=alias))
        except errors.GatewayError:
            continue
    return {"models": models}


@blueprint.get("/v1beta/models/<path:name>")
async def get_model(name: str) -> dict[str, Any]:
    name = name.removeprefix("models/")
    return wire.render_model(_services().resolve_model(name), name=name)


@blueprint.post("/v1beta/models/<path:target>")
async def model_action(target: str) -> tuple[dict[str, Any], int]:
    """countTokens (a local estimate: never touches an account or the upstream); the
    generation methods are served before Quart, so anything else here is unsupported."""
    found = route(f"/v1beta/models/{target}")
    if found is None:
        raise errors.NotFound(f"no route for POST {request.path}; use "
                              "models/{model}:generateContent, :streamGenerateContent or "
                              ":countTokens")
    model, method = found
    if method != "countTokens":
        raise errors.NotFound(f"method {method[:40]!r} is not served by this gateway (it serves "
                              "generateContent, streamGenerateContent and countTokens)")
    services = _services()
    raw = await request.get_data(cache=False)
    assert isinstance(raw, bytes)
    offload = len(raw) > services.config.server.offload_bytes
    chat = await run_cpu(offload, _count_tokens_request, raw, model, services.config.server)
    services.resolve_model(chat.model)
    return {"totalTokens": await run_cpu(offload, estimate_tokens, chat)}, 200


def _count_tokens_request(raw: bytes, model: str, server: ServerConfig) -> c.ChatRequest:
    return wire.parse_count_tokens_request(parse_within_limits(raw, server), model=model)
