"""Stable conversation ids, so one conversation keeps one account and one upstream session.

The id is a hash of what does not change as a conversation grows: the system prompt and the
first user turn (plus an optional client-supplied user id). Every later turn of the same
conversation therefore maps to the same id, which keeps it on the same account (sticky
selection) and lets the upstream's prompt cache hit. Pure: no clock, no randomness.
"""

from __future__ import annotations

import hashlib
import json

import attrs

from gateway.translate.canonical import ChatRequest


def conversation_session_id(request: ChatRequest, *, user: str | None = None) -> str:
    first_user = next((m for m in request.messages if m.role == "user"), None)
    seed = {
        "system": [b.text for b in request.system],
        "first": [attrs.asdict(b) for b in first_user.content] if first_user else [],
        "user": user or "",
    }
    digest = hashlib.sha256(
        json.dumps(seed, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()
    return f"sess-{digest[:32]}"
