"""Per-conversation memory of Gemini thought signatures attached to function calls.

Clients cannot carry these (neither Anthropic's tool_use nor OpenAI's tool_calls has a field
for them), yet the upstream wants them back on the next turn. The gateway keeps them here,
keyed by conversation, bounded in size and age so memory stays flat under load.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping


class SignatureCache:
    """A bounded LRU of conversation id → {tool call id → signature}, with expiry."""

    def __init__(
        self,
        *,
        max_sessions: int = 10_000,
        ttl_seconds: float = 6 * 3600,
        clock: Callable[[], float],
    ) -> None:
        self._sessions: OrderedDict[str, tuple[float, dict[str, str]]] = OrderedDict()
        self._max = max_sessions
        self._ttl = ttl_seconds
        self._clock = clock

    def remember(self, session_id: str, tool_id: str, signature: str) -> None:
        now = self._clock()
        _, entries = self._sessions.pop(session_id, (now, {}))
        entries[tool_id] = signature
        if len(entries) > 512:  # a runaway conversation must not grow without bound
            del entries[next(iter(entries))]
        self._sessions[session_id] = (now, entries)
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)

    def lookup(self, session_id: str) -> Mapping[str, str]:
        found = self._sessions.get(session_id)
        if found is None:
            return {}
        stamp, entries = found
        if self._clock() - stamp > self._ttl:
            del self._sessions[session_id]
            return {}
        self._sessions.move_to_end(session_id)
        return dict(entries)

    def __len__(self) -> int:
        return len(self._sessions)
