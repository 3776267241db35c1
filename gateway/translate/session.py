"""Stable conversation ids, so one conversation keeps one account and one upstream session.

`conversation_session_id` hashes what does not change as a conversation grows: the system
prompt and the first user turn (plus an optional client-supplied user id). Every later turn
of the same conversation therefore maps to the same id, which is the upstream `sessionId`
(its prompt cache scope) and, unless the client names its session, the key that keeps the
conversation on one account. Clients that do name one (Claude Code: the `session_id` inside
`metadata.user_id`, also sent as `X-Claude-Code-Session-Id`) get `client_session_key`: all
the conversations of that session (its main thread and subagents) then share an account
and its cache. Pure: no clock, no randomness.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import attrs

from gateway.translate.canonical import ChatRequest

_MAX_CLIENT_SESSION = 256


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


def claude_code_session(user_id: Any, header: str | None) -> str | None:
    """Claude Code's session id: the header, else `session_id` in the JSON string it puts
    in `metadata.user_id`; None for other clients (or a value that is not one)."""
    if isinstance(header, str) and 0 < len(header.strip()) <= _MAX_CLIENT_SESSION:
        return header.strip()
    # opaque client data: only a small JSON object is looked into, and never refused
    if not isinstance(user_id, str) or not user_id.startswith("{") or len(user_id) > 4096:
        return None
    try:
        data = json.loads(user_id)
    except (ValueError, RecursionError):
        return None
    session = data.get("session_id") if isinstance(data, dict) else None
    if isinstance(session, str) and 0 < len(session) <= _MAX_CLIENT_SESSION:
        return session
    return None


def client_session_key(session: str) -> str:
    """The account-affinity key for a client-named session (hashed: it is client text)."""
    raw = session.encode("utf-8", "surrogatepass")
    return "client-" + hashlib.sha256(raw).hexdigest()[:32]
