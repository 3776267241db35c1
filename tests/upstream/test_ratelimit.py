"""Reset-time parsing for every way the upstream states it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream.ratelimit import is_quota_exhausted, parse_duration, reset_seconds

NOW = 1_800_000_000.0


def _error(details: list[dict[str, object]], message: str = "Resource has been exhausted") -> str:
    return json.dumps(
        {"error": {"code": 429, "message": message, "status": "RESOURCE_EXHAUSTED",
                   "details": details}}
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("12s", 12.0), ("12.5s", 12.5), ("1h2m3s", 3723.0), ("250ms", 0.25), ("1h", 3600.0),
     ("2m0.5s", 120.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "12", "abc", "1x", "-5s"])
def test_parse_duration_rejects_malformed(text: str) -> None:
    assert parse_duration(text) is None


def test_retry_info_wins() -> None:
    body = _error(
        [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo",
             "metadata": {"quotaResetDelay": "1h"}},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7.5s"},
        ]
    )
    assert reset_seconds(body, {"Retry-After": "99"}, now=NOW) == 7.5


def test_quota_reset_delay() -> None:
    body = _error([{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "QUOTA_EXHAUSTED", "metadata": {"quotaResetDelay": "1h2m3.5s"}}])
    assert reset_seconds(body, {}, now=NOW) == pytest.approx(3723.5)
    assert is_quota_exhausted(body)


def test_quota_reset_timestamp() -> None:
    body = _error([{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "metadata": {"quotaResetTimeStamp": "2027-01-15T08:00:30Z"}}])
    from datetime import UTC, datetime

    now = datetime(2027, 1, 15, 8, 0, 0, tzinfo=UTC).timestamp()
    assert reset_seconds(body, {}, now=now) == pytest.approx(30.0)


def test_retry_after_header_seconds_and_date() -> None:
    assert reset_seconds("{}", {"retry-after": "42"}, now=NOW) == 42.0
    assert reset_seconds("", {"Retry-After": "Fri, 15 Jan 2027 08:00:10 GMT"},
                         now=1_800_000_000.0) is not None


def test_text_forms() -> None:
    assert reset_seconds(_error([], "Quota exceeded. Your quota will reset after 2h3m."), {},
                         now=NOW) == 7380.0
    assert reset_seconds("rate limited, please retry in 17s", {}, now=NOW) == 17.0
    assert reset_seconds("retry after 3 seconds", {}, now=NOW) == 3.0


def test_unknown_is_none() -> None:
    assert reset_seconds(_error([]), {}, now=NOW) is None
    assert reset_seconds("not json at all", {}, now=NOW) is None


@given(st.text(), st.dictionaries(st.text(), st.text(), max_size=3))
def test_never_raises(body: str, headers: dict[str, str]) -> None:
    result = reset_seconds(body, headers, now=NOW)
    assert result is None or result >= 0
