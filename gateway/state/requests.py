"""What happened to each request, for the people running the gateway.

Every request, whatever its route, ends as one `RequestRecord` handed to `RequestLog.add`
(the access log line says the same in text). The log keeps the last few hundred records and
per-minute counts over the last hour (what the dashboard shows), and passes each record to
its listeners (the usage history). It holds no prompt text, no keys and no tokens: models,
account handles, statuses, timings and token counts only. Adding is synchronous and cheap
(no I/O): listeners that write somewhere must queue and write elsewhere.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["MinuteCounts", "RequestLog", "RequestRecord", "error_class"]

log = logging.getLogger("gateway")

HOUR_MINUTES = 60


@attrs.frozen(slots=True)
class RequestRecord:
    at: float  # epoch seconds when it ended
    face: str  # anthropic, openai, responses, gemini, admin, models, count_tokens, ...
    method: str
    route: str  # the path, or its pattern where the path holds ids
    status: int
    latency_ms: float
    model_asked: str | None = None  # the model the client named (clipped)
    model_served: str | None = None  # the upstream model that answered
    account: str | None = None  # the account's handle (hashed), never its email
    key_label: str = "-"  # which API key (a digest-based label), "-" without keys
    stream: bool | None = None
    input_tokens: int = 0  # not served from the cache
    output_tokens: int = 0  # thinking included
    cached_tokens: int = 0
    thinking_tokens: int = 0
    error: str | None = None  # the error's type, when it failed

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def error_class(status: int) -> str | None:
    """What kind of failure a status is, for the per-minute error counts."""
    if status < 400:
        return None
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status == 499:
        return "client_closed"
    if status < 500:
        return "client_error"
    if status in (503, 529):
        return "overloaded"
    if status == 504:
        return "timeout"
    return "upstream_error"


@attrs.define(slots=True)
class MinuteCounts:
    minute: int  # epoch minute
    requests: int = 0
    errors: dict[str, int] = attrs.field(factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"minute": self.minute * 60, "requests": self.requests,
                "errors": dict(self.errors)}


class RequestLog:
    def __init__(self, *, keep: int = 200) -> None:
        self.recent: deque[RequestRecord] = deque(maxlen=keep)
        self._minutes: deque[MinuteCounts] = deque(maxlen=HOUR_MINUTES)
        self._listeners: list[Callable[[RequestRecord], None]] = []
        self.version = 0  # bumped on every add: a cheap "anything new?" for watchers

    def listen(self, listener: Callable[[RequestRecord], None]) -> None:
        self._listeners.append(listener)

    def add(self, record: RequestRecord) -> None:
        self.recent.append(record)
        minute = int(record.at // 60)
        if not self._minutes or self._minutes[-1].minute < minute:
            self._minutes.append(MinuteCounts(minute))
        counts = self._minutes[-1]
        if counts.minute == minute:  # (a record of an earlier minute ends late: skipped)
            counts.requests += 1
            kind = error_class(record.status)
            if kind is not None:
                counts.errors[kind] = counts.errors.get(kind, 0) + 1
        self.version += 1
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:  # a broken listener must not fail the request it records
                log.exception("a request-log listener failed")

    def minutes(self, now: float) -> list[dict[str, Any]]:
        """Counts for each of the last 60 minutes, oldest first (empty minutes as zeros)."""
        current = int(now // 60)
        by_minute = {m.minute: m for m in self._minutes}
        return [
            (by_minute.get(m) or MinuteCounts(m)).as_json()
            for m in range(current - HOUR_MINUTES + 1, current + 1)
        ]
