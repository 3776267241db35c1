"""The upstream's client version gate, recognised wherever it shows up (pure).

Cloud Code refuses an outdated Antigravity client with a sentence, not a status: it came
as an error body and, through 2026, as the whole "answer" of an ordinary 200 stream ("This
version of Antigravity is no longer supported. Please update...", later "Your current
version of Antigravity is out of date..."). `is_version_refusal` checks a body;
`RefusalWatch` decides from the start of a streamed answer, reading only as far as it must:
an answer whose first words are not the refusal's is cleared at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

__all__ = ["RefusalWatch", "is_version_refusal"]

_MARKERS = (
    "this version of antigravity is no longer supported",
    "your current version of antigravity is out of date",
)
_ANYWHERE = re.compile(
    r"version of antigravity is (?:no longer supported|out of date)", re.IGNORECASE
)

Verdict = Literal["refused", "clear", "undecided"]


def is_version_refusal(text: str) -> bool:
    return _ANYWHERE.search(text) is not None


class RefusalWatch:
    """Feed a stream's payloads until `verdict` is no longer "undecided"."""

    def __init__(self) -> None:
        self._text = ""
        self.verdict: Verdict = "undecided"

    def feed(self, payload: Mapping[str, Any]) -> Verdict:
        if self.verdict != "undecided":
            return self.verdict
        for part in _parts(payload):
            if part.get("thought") is True or "functionCall" in part:
                self.verdict = "clear"  # the refusal is plain text, nothing else
                return self.verdict
            text = part.get("text")
            if isinstance(text, str):
                self._text += text
        start = " ".join(self._text.split()).lower()
        if any(start.startswith(marker) for marker in _MARKERS):
            self.verdict = "refused"
        elif start and not any(marker.startswith(start) for marker in _MARKERS):
            self.verdict = "clear"
        return self.verdict

    def finish(self) -> Verdict:
        if self.verdict == "undecided":
            self.verdict = "clear"
        return self.verdict


def _parts(payload: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    inner = payload.get("response")
    body = inner if isinstance(inner, Mapping) else payload
    candidates = body.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        return ()
    content = candidates[0].get("content") if isinstance(candidates[0], Mapping) else None
    parts = content.get("parts") if isinstance(content, Mapping) else None
    return [p for p in parts if isinstance(p, Mapping)] if isinstance(parts, list) else ()
