"""How long until a rate-limited account may be used again, from a 429 (pure).

The upstream says it in several ways, tried here from most to least precise:
`google.rpc.RetryInfo.retryDelay` ("12.5s"), `ErrorInfo.metadata.quotaResetDelay`
("1h2m3.5s", Go duration syntax), `ErrorInfo.metadata.quotaResetTimeStamp` (RFC 3339),
the `Retry-After` header (seconds or an HTTP date), and finally free text in the message
("reset after 1h2m3s", "retry in 12s"). Time is passed in, never read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_DURATION_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|us|µs|ns|h|m|s))+$")
_TEXT_PATTERNS = (
    re.compile(r"reset (?:after|in) ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)", re.IGNORECASE),
    re.compile(r"retry (?:after|in) ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)", re.IGNORECASE),
    re.compile(r"retry (?:after|in) (\d+(?:\.\d+)?) ?seconds?", re.IGNORECASE),
)


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration ("1h2m3.5s", "250ms", "12s"); None if malformed."""
    text = text.strip()
    if not _DURATION_WHOLE.match(text):
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION.findall(text))


def _parse_timestamp(text: str, now: float) -> float | None:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _retry_after_header(headers: Mapping[str, str], now: float) -> float | None:
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _error_object(body: str) -> Mapping[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]  # some Google endpoints wrap the error in a one-element list
    if not isinstance(data, dict):
        return {}
    error = data.get("error", data)
    return error if isinstance(error, dict) else {}


def reset_seconds(
    body: str, headers: Mapping[str, str], *, now: float
) -> float | None:
    """Seconds until the limit resets, or None when the response does not say."""
    error = _error_object(body)
    details = error.get("details")
    if isinstance(details, list):
        for detail in details:
            if not isinstance(detail, dict):
                continue
            kind = str(detail.get("@type", ""))
            if kind.endswith("google.rpc.RetryInfo") and isinstance(
                detail.get("retryDelay"), str
            ):
                seconds = parse_duration(detail["retryDelay"])
                if seconds is not None:
                    return seconds
        for detail in details:
            if not isinstance(detail, dict):
                continue
            metadata = detail.get("metadata")
            if not isinstance(metadata, dict):
                continue
            delay = metadata.get("quotaResetDelay")
            if isinstance(delay, str) and (seconds := parse_duration(delay)) is not None:
                return seconds
            stamp = metadata.get("quotaResetTimeStamp")
            if isinstance(stamp, str) and (seconds := _parse_timestamp(stamp, now)) is not None:
                return seconds
    header = _retry_after_header(headers, now)
    if header is not None:
        return header
    message = error.get("message") if error else None
    text = message if isinstance(message, str) else body
    for pattern in _TEXT_PATTERNS:
        found = pattern.search(text)
        if found:
            value = found.group(1)
            seconds = parse_duration(value)
            if seconds is None:
                try:
                    seconds = float(value)
                except ValueError:
                    continue
            return seconds
    return None


def is_quota_exhausted(body: str) -> bool:
    """True when the 429 is a quota (hours-long) rather than a per-minute rate limit."""
    error = _error_object(body)
    text = json.dumps(error).upper() if error else body.upper()
    return "QUOTA_EXHAUSTED" in text or ("QUOTA" in text and "EXHAUSTED" in text)


RateLimitKind = Literal["quota", "rate_limit", "bare"]


def _reasons(error: Mapping[str, Any]) -> set[str]:
    details = error.get("details")
    if not isinstance(details, list):
        return set()
    return {
        str(d.get("reason", "")).upper()
        for d in details
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.ErrorInfo")
    }


def rate_limit_kind(body: str) -> RateLimitKind:
    """What a 429 is: "quota" (QUOTA_EXHAUSTED, or the message says the quota resets: hours),
    "rate_limit" (RATE_LIMIT_EXCEEDED, or any reset information: seconds to minutes), or
    "bare" (no details at all: "Resource has been exhausted", which the upstream also says
    for reasons that are not quota, e.g. some system prompts)."""
    error = _error_object(body)
    reasons = _reasons(error)
    if "QUOTA_EXHAUSTED" in reasons:
        return "quota"
    if reasons & {"RATE_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"}:
        return "rate_limit"
    message = str(error.get("message", "") if error else body).lower()
    if "exhausted your capacity" in message or "quota will reset" in message:
        return "quota"
    details = error.get("details")
    if isinstance(details, list) and details:
        return "rate_limit"
    return "bare"


def is_capacity_exhausted(body: str) -> bool:
    """A 503 (or 429) saying the model has no capacity now: the server's problem, not the
    account's."""
    error = _error_object(body)
    if "MODEL_CAPACITY_EXHAUSTED" in _reasons(error):
        return True
    text = str(error.get("message", "") if error else body).lower()
    return "no capacity available" in text or "capacity_exhausted" in text
