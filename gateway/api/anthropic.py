"""Anthropic Messages routes: POST /v1/messages (via the chat lifecycle) and count_tokens."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from quart import Blueprint, current_app, request

from gateway import errors
from gateway.api.chat import (
    SSE_CONTENT_TYPE,
    PreparedChat,
    Scope,
    header,
    parse_within_limits,
    run_cpu,
)
from gateway.config import ServerConfig
from gateway.translate import anthropic as wire
from gateway.translate import canonical as c
from gateway.translate.context import AppliedEdit, apply_context_edits
from gateway.translate.session import (
    claude_code_session,
    client_session_key,
    conversation_session_id,
)
from gateway.translate.tokens import estimate_tokens

if TYPE_CHECKING:
    from gateway.app import Services


def error_body(err: errors.GatewayError) -> tuple[int, dict[str, Any]]:
    return errors.anthropic_status(err), errors.render_anthropic(err)


def _user_id(body: Any) -> str | None:
    metadata = body.get("metadata") if isinstance(body, dict) else None
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    return user if isinstance(user, str) else None


def _parse(body: Any) -> tuple[c.ChatRequest, tuple[AppliedEdit, ...]]:
    return apply_context_edits(wire.parse_messages_request(body))


def thinking_asked(chat: c.ChatRequest) -> bool:
    return chat.thinking is not None and chat.thinking.enabled


class AnthropicDialect:
    name = "anthropic"
    tool_id_prefix = "toolu_"

    async def prepare(
        self, body: Any, services: Services, scope: Scope, *, offload: bool
    ) -> PreparedChat:
        chat, applied = await run_cpu(offload, _parse, body)
        model = services.resolve_model(chat.model, thinking=thinking_asked(chat))
        user = _user_id(body)
        session = conversation_session_id(chat, user=user)
        client_session = claude_code_session(user, header(scope, b"x-claude-code-session-id"))
        sticky = client_session_key(client_session) if client_session else session
        return PreparedChat(chat, model, session, sticky, context_edits=applied,
                            offload=offload)

    def error_body(self, err: errors.GatewayError) -> tuple[int, dict[str, Any]]:
        return error_body(err)

    def new_response_id(self) -> str:
        return f"msg_{secrets.token_hex(12)}"

    def stream_renderer(self, prepared: PreparedChat, response_id: str) -> _Renderer:
        encoder = wire.AnthropicStreamEncoder(
            message_id=response_id, model=prepared.request.model,
            context_management=_context_management(prepared),
        )
        return _Renderer(encoder)

    async def render(
        self, prepared: PreparedChat, response: c.ChatResponse, response_id: str
    ) -> dict[str, Any]:
        return wire.render_message(response, context_management=_context_management(prepared))


def _context_management(prepared: PreparedChat) -> dict[str, Any] | None:
    # reported when the client asked for context management, even if nothing was cleared
    if not prepared.request.context_edits:
        return None
    return wire.render_context_management(prepared.context_edits)


class _Renderer:
    content_type = SSE_CONTENT_TYPE

    def __init__(self, encoder: wire.AnthropicStreamEncoder) -> None:
        self.encoder = encoder

    def open(self) -> bytes:
        return b""  # message_start goes out with the first event, carrying input usage

    def events(self, events: Sequence[c.StreamEvent]) -> bytes:
        # Usage first: an upstream payload carries its usage after its parts, and
        # message_start (sent with the first part) should already report the input tokens.
        ordered = sorted(events, key=lambda e: not isinstance(e, c.UsageUpdate))
        return b"".join(wire.sse_bytes(self.encoder.encode(e)) for e in ordered)

    def keepalive(self) -> bytes:
        return wire.sse_bytes(self.encoder.start() + self.encoder.ping())

    def error(self, err: errors.GatewayError) -> bytes:
        return wire.sse_bytes(self.encoder.error(err))

    def close(self) -> bytes:
        return b""

    async def finish(self) -> None:
        pass


blueprint = Blueprint("anthropic", __name__)


@blueprint.post("/v1/messages/count_tokens")
async def count_tokens() -> tuple[dict[str, Any], int]:
    """A local estimate: never touches an account or the upstream."""
    services: Services = current_app.extensions["gateway"]
    raw = await request.get_data(cache=False)
    assert isinstance(raw, bytes)
    offload = len(raw) > services.config.server.offload_bytes
    chat = await run_cpu(offload, _count_tokens_request, raw, services.config.server)
    services.resolve_model(chat.model, thinking=thinking_asked(chat))
    return {"input_tokens": await run_cpu(offload, estimate_tokens, chat)}, 200


def _count_tokens_request(raw: bytes, server: ServerConfig) -> c.ChatRequest:
    body = parse_within_limits(raw, server)
    chat, _ = apply_context_edits(wire.parse_count_tokens_request(body))
    return chat
