"""Incremental Server-Sent Events parsing and encoding, sans I/O.

`SSEParser.feed(bytes)` accepts arbitrary byte chunks (split anywhere, even inside a UTF-8
sequence or a CRLF) and returns the complete events seen so far; `encode_event` renders one.
Only the fields the gateway needs are kept: `event` and the joined `data` lines.
"""

from __future__ import annotations

import json
from typing import Any

import attrs


@attrs.frozen(slots=True)
class SSEEvent:
    data: str
    event: str | None = None


class SSEParser:
    """Feed bytes in, get events out. Comments (`:` lines) and `id`/`retry` are ignored."""

    __slots__ = ("_buffer", "_data", "_event", "_pending_cr")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data: list[str] = []
        self._event: str | None = None
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across two chunks
        self._pending_cr = chunk.endswith(b"\r")
        self._buffer += chunk
        events: list[SSEEvent] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                break
            end, skip = cut
            line = bytes(self._buffer[:end]).decode("utf-8", errors="replace")
            del self._buffer[: end + skip]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a final event not followed by a blank line still counts."""
        events = self.feed(b"\n\n") if self._buffer or self._data else []
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data and self._event is None:
                return None
            event = SSEEvent(data="\n".join(self._data), event=self._event)
            self._data = []
            self._event = None
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


def _line_end(buffer: bytearray) -> tuple[int, int] | None:
    """Index of the first line terminator (CR, LF or CRLF) and its length."""
    lf = buffer.find(b"\n")
    cr = buffer.find(b"\r")
    if cr == -1 and lf == -1:
        return None
    if cr == -1 or (lf != -1 and lf < cr):
        return lf, 1
    if cr + 1 < len(buffer):
        return cr, 2 if buffer[cr + 1] == 0x0A else 1
    return cr, 1  # a trailing CR; feed() drops the LF if it arrives next


# made once: json.dumps with options builds an encoder per call (here: per chunk)
_compact_ascii = json.JSONEncoder(separators=(",", ":")).encode


def encode_event(data: Any, event: str | None = None) -> bytes:
    """One SSE event with compact JSON data (or a raw string such as `[DONE]`)."""
    payload = data if isinstance(data, str) else _compact_ascii(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def encode_comment(text: str = "keep-alive") -> bytes:
    return f": {text}\n\n".encode()
