"""OpenAI Responses routes: POST /v1/responses (via the chat lifecycle), and the stored
responses: GET and DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items,
POST /v1/responses/{id}/cancel and POST /v1/responses/input_tokens.

A response is stored when it completes (`store`, true by default), with its output as the
gateway keeps it (thoughts sealed), so `previous_response_id` continues it and a stateless
client's sealed reasoning works across turns either way.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from quart import Blueprint, current_app, request

from gateway import errors
from gateway.api.auth import owner_of
from gateway.api.chat import SSE_CONTENT_TYPE, PreparedChat, Scope, parse_within_limits, run_cpu
from gateway.api.images import fetch_images
from gateway.state.responses import BrokenChain, StoredResponse, items_size
from gateway.translate import canonical as c
from gateway.translate import responses as wire
from gateway.translate.session import client_session_key, conversation_session_id
from gateway.translate.tokens import estimate_tokens
from gateway.upstream.sse import encode_comment

if TYPE_CHECKING:
    from gateway.app import Services


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def error_body(err: errors.GatewayError) -> tuple[int, dict[str, Any]]:
    return errors.openai_status(err), errors.render_openai(err)


async def _history(services: Services, body: Any, owner: str) -> list[dict[str, Any]]:
    previous = body.get("previous_response_id") if isinstance(body, dict) else None
    if not isinstance(previous, str) or not previous:
        return []
    try:
        head = await services.responses.get(previous)
        if head is None or head.owner != owner:  # another key's is not there for this one
            raise BrokenChain(previous)
        return await services.responses.history(previous)
    except BrokenChain as gone:
        raise errors.NotFound(
            f"Previous response with id '{gone.missing[:100]}' not found: deleted, expired "
            "or evicted (responses are kept in memory, within responses.store_max_responses "
            "and store_max_bytes, and not across restarts)",
            param="previous_response_id",
        ) from None


async def parse(
    body: Any, services: Services, *, offload: bool, owner: str
) -> wire.ResponsesRequest:
    history = await _history(services, body, owner)
    urls = wire.image_urls_to_fetch(body)
    fetched = await fetch_images(urls, services.config.images) if urls else {}
    return await run_cpu(offload, partial(
        wire.parse_responses_request, history=history, fetched_images=fetched,
        unseal=services.sealer.unseal, new_id=new_item_id,
    ), body)


class ResponsesDialect:
    name = "responses"
    tool_id_prefix = "call_"

    async def prepare(
        self, body: Any, services: Services, scope: Scope, *, offload: bool
    ) -> PreparedChat:
        owner = owner_of(scope, services.config.server.api_keys)
        parsed = await parse(body, services, offload=offload, owner=owner)
        chat = parsed.chat
        thinking = chat.thinking is not None and chat.thinking.enabled
        model = services.resolve_model(chat.model, thinking=thinking)
        session = conversation_session_id(chat)
        sticky = client_session_key(parsed.prompt_cache_key) if parsed.prompt_cache_key else (
            session)
        return PreparedChat(chat, model, session, sticky, offload=offload,
                            face=_Face(parsed, services, owner))

    def error_body(self, err: errors.GatewayError) -> tuple[int, dict[str, Any]]:
        return error_body(err)

    def new_response_id(self) -> str:
        return f"resp_{secrets.token_hex(24)}"

    def stream_renderer(self, prepared: PreparedChat, response_id: str) -> _Renderer:
        face: _Face = prepared.face
        encoder = wire.ResponsesStreamEncoder(
            face.request, response_id=response_id, created_at=int(time.time()),
            seal=face.services.sealer.seal, new_id=new_item_id,
        )
        return _Renderer(encoder, face)

    async def render(
        self, prepared: PreparedChat, response: c.ChatResponse, response_id: str
    ) -> dict[str, Any]:
        face: _Face = prepared.face
        body, kept = wire.render_response(
            response, face.request, response_id=response_id, created_at=int(time.time()),
            seal=face.services.sealer.seal, new_id=new_item_id,
        )
        await face.store(body, kept)
        return body


class _Face:
    """What rendering a Responses answer needs: the parsed request, and where to store."""

    def __init__(self, request: wire.ResponsesRequest, services: Services, owner: str) -> None:
        self.request = request
        self.services = services
        self.owner = owner

    async def store(self, body: dict[str, Any], kept: Sequence[dict[str, Any]]) -> None:
        if not self.request.store or body.get("status") not in ("completed", "incomplete"):
            return
        size = items_size(self.request.input_items, kept, [body])
        await self.services.responses.put(StoredResponse(
            id=body["id"], created_at=self.services.clock(), response=body,
            input_items=self.request.input_items, output_items=tuple(kept),
            previous_id=self.request.previous_response_id, size=size, owner=self.owner,
        ))


def _sse(events: Sequence[dict[str, Any]]) -> bytes:
    return b"".join(
        b"event: " + event["type"].encode() + b"\ndata: "
        + c.compact_json(event).encode() + b"\n\n"
        for event in events
    )


class _Renderer:
    content_type = SSE_CONTENT_TYPE

    def __init__(self, encoder: wire.ResponsesStreamEncoder, face: _Face) -> None:
        self.encoder = encoder
        self.face = face

    def open(self) -> bytes:
        return _sse(self.encoder.start())

    def events(self, events: Sequence[c.StreamEvent]) -> bytes:
        return _sse([out for event in events for out in self.encoder.encode(event)])

    def keepalive(self) -> bytes:
        return encode_comment("keep-alive")

    def error(self, err: errors.GatewayError) -> bytes:
        return _sse(self.encoder.fail(err))

    def close(self) -> bytes:
        return b""

    async def finish(self) -> None:
        if self.encoder.final is not None:
            await self.face.store(self.encoder.final, self.encoder.kept_items)


blueprint = Blueprint("responses", __name__)


def _services() -> Services:
    services: Services = current_app.extensions["gateway"]
    return services


async def _owned(response_id: str) -> StoredResponse | None:
    """The stored response, if the caller's key made it (another key's does not exist)."""
    services = _services()
    stored = await services.responses.get(response_id)
    if stored is None or stored.owner != owner_of(request.scope,
                                                  services.config.server.api_keys):
        return None
    return stored


def _not_found(response_id: str) -> errors.NotFound:
    return errors.NotFound(f"No response found with id '{response_id[:100]}'.",
                           param="response_id")


@blueprint.get("/v1/responses/<response_id>")
async def retrieve(response_id: str) -> tuple[dict[str, Any], int]:
    if request.args.get("stream") in ("true", "1"):
        raise errors.InvalidRequest("replaying a stored response as a stream is not "
                                    "supported; retrieve it without stream", param="stream")
    stored = await _owned(response_id)
    if stored is None:
        raise _not_found(response_id)
    return stored.response, 200


@blueprint.delete("/v1/responses/<response_id>")
async def delete(response_id: str) -> tuple[dict[str, Any], int]:
    if await _owned(response_id) is None or not await _services().responses.delete(response_id):
        raise _not_found(response_id)
    return {"id": response_id, "object": "response", "deleted": True}, 200


@blueprint.post("/v1/responses/<response_id>/cancel")
async def cancel(response_id: str) -> tuple[dict[str, Any], int]:
    if await _owned(response_id) is None:
        raise _not_found(response_id)
    raise errors.InvalidRequest("Only responses created with background=true can be "
                                "cancelled, and this gateway does not run background "
                                "responses.")


@blueprint.get("/v1/responses/<response_id>/input_items")
async def input_items(response_id: str) -> tuple[dict[str, Any], int]:
    stored = await _owned(response_id)
    if stored is None:
        raise _not_found(response_id)
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise errors.InvalidRequest("order must be asc or desc", param="order")
    try:
        limit = int(request.args.get("limit", "20"))
    except ValueError:
        limit = -1
    if not 1 <= limit <= 100:
        raise errors.InvalidRequest("limit must be an integer from 1 to 100", param="limit")
    items = list(stored.input_items)
    if order == "desc":
        items.reverse()
    after = request.args.get("after")
    if after:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0].get("id") if page else None,
        "last_id": page[-1].get("id") if page else None,
        "has_more": len(items) > limit,
    }, 200


@blueprint.post("/v1/responses/input_tokens")
async def input_tokens() -> tuple[dict[str, Any], int]:
    """A local estimate: never touches an account or the upstream."""
    services = _services()
    raw = await request.get_data(cache=False)
    assert isinstance(raw, bytes)
    offload = len(raw) > services.config.server.offload_bytes
    body = await run_cpu(offload, parse_within_limits, raw, services.config.server)
    if isinstance(body, dict) and body.get("input") is not None and "model" not in body:
        body = {**body, "model": "-"}  # the count does not depend on the model
    owner = owner_of(request.scope, services.config.server.api_keys)
    parsed = await parse(body, services, offload=offload, owner=owner)
    count = await run_cpu(offload, estimate_tokens, parsed.chat)
    return {"object": "response.input_tokens", "input_tokens": count}, 200
