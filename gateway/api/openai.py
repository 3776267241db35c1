"""OpenAI Chat Completions route: POST /v1/chat/completions (via the chat lifecycle)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from gateway import errors
from gateway.api.chat import SSE_CONTENT_TYPE, PreparedChat, Scope, run_cpu
from gateway.api.images import fetch_images
from gateway.translate import canonical as c
from gateway.translate import openai as wire
from gateway.translate.session import conversation_session_id
from gateway.upstream.sse import encode_comment, encode_event

if TYPE_CHECKING:
    from gateway.app import Services


def error_body(err: errors.GatewayError) -> tuple[int, dict[str, Any]]:
    return errors.openai_status(err), errors.render_openai(err)


class OpenAIDialect:
    name = "openai"
    tool_id_prefix = "call_"

    async def prepare(
        self, body: Any, services: Services, scope: Scope, *, offload: bool
    ) -> PreparedChat:
        urls = wire.image_urls_to_fetch(body)
        fetched = await fetch_images(urls, services.config.images) if urls else {}
        chat = await run_cpu(offload, partial(wire.parse_chat_request, fetched_images=fetched),
                             body)
        thinking = chat.thinking is not None and chat.thinking.enabled
        model = services.resolve_model(chat.model, thinking=thinking)
        user = body.get("user") if isinstance(body, dict) else None
        session = conversation_session_id(chat, user=user if isinstance(user, str) else None)
        return PreparedChat(
            chat, model, session, session, include_usage=wire.stream_include_usage(body),
            offload=offload,
        )

    def error_body(self, err: errors.GatewayError) -> tuple[int, dict[str, Any]]:
        return error_body(err)

    def new_response_id(self) -> str:
        return f"chatcmpl-{secrets.token_hex(12)}"

    def stream_renderer(self, prepared: PreparedChat, response_id: str) -> _Renderer:
        return _Renderer(
            wire.OpenAIStreamEncoder(
                completion_id=response_id,
                created=int(time.time()),
                model=prepared.request.model,
                include_usage=prepared.include_usage,
            )
        )

    async def render(
        self, prepared: PreparedChat, response: c.ChatResponse, response_id: str
    ) -> dict[str, Any]:
        return wire.render_completion(
            response, completion_id=response_id, created=int(time.time()),
            model=prepared.request.model,
        )


class _Renderer:
    content_type = SSE_CONTENT_TYPE

    def __init__(self, encoder: wire.OpenAIStreamEncoder) -> None:
        self.encoder = encoder

    def open(self) -> bytes:
        return b""

    def events(self, events: Sequence[c.StreamEvent]) -> bytes:
        return b"".join(encode_event(chunk) for e in events for chunk in self.encoder.encode(e))

    def keepalive(self) -> bytes:
        return encode_comment("keep-alive")

    def error(self, err: errors.GatewayError) -> bytes:
        return encode_event(self.encoder.error_chunk(err)) + encode_event(self.encoder.done())

    def close(self) -> bytes:
        return encode_event(self.encoder.done())

    async def finish(self) -> None:
        pass
