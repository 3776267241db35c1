"""The request log: recent records, per-minute counts over the hour, listeners."""

from __future__ import annotations

from typing import Any

from gateway.state.requests import RequestLog, RequestRecord, error_class


def record(at: float, status: int = 200, **fields: Any) -> RequestRecord:
    return RequestRecord(at=at, face="openai", method="POST", route="/v1/chat/completions",
                         status=status, latency_ms=1.0, **fields)


def test_recent_is_bounded_and_minutes_cover_the_hour() -> None:
    log = RequestLog(keep=3)
    for i in range(5):
        log.add(record(600.0 + i, status=429 if i == 4 else 200))
    log.add(record(660.0, status=503))
    assert [r.at for r in log.recent] == [603.0, 604.0, 660.0]
    minutes = log.minutes(now=700.0)
    assert len(minutes) == 60 and minutes[-1]["minute"] == 660
    assert minutes[-2] == {"minute": 600, "requests": 5, "errors": {"rate_limited": 1}}
    assert minutes[-1] == {"minute": 660, "requests": 1, "errors": {"overloaded": 1}}
    assert all(m["requests"] == 0 for m in minutes[:-2])


def test_listeners_see_every_record_and_cannot_break_it() -> None:
    log = RequestLog()
    seen: list[RequestRecord] = []

    def broken(_: RequestRecord) -> None:
        raise RuntimeError("boom")

    log.listen(broken)
    log.listen(seen.append)
    log.add(record(1.0))
    assert len(seen) == 1 and log.version == 1


def test_error_classes() -> None:
    assert [error_class(s) for s in (200, 400, 401, 429, 499, 500, 503, 504, 529)] == [
        None, "client_error", "auth", "rate_limited", "client_closed", "upstream_error",
        "overloaded", "timeout", "overloaded"]
