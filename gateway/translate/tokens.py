"""A local estimate of a request's input tokens, for count_tokens (no network, no tokenizer).

Text is split into runs of one character class and each run is priced like a BPE tokenizer
prices it: an ASCII word costs one token per started 5 letters (common words are one token),
digits one per started 3 (Claude groups numbers by three), punctuation one per started 2,
whitespace nothing for a single space and one per started 4 otherwise (indentation),
CJK/kana/Hangul one per character, other letters one per started 2 and other symbols
(emoji) two per character. The rest follows Anthropic's published accounting: a fixed
framing cost per request and per message, the tool-use system prompt when tools are
declared (346 tokens, or 313 when a tool is forced) plus each tool's JSON definition,
tool calls priced as their name and JSON input, tool results as their content. Images cost
(width x height) / 750 after Anthropic's downscaling (long edge at most 1568 px, about
1.15 megapixels), with dimensions read from the PNG/JPEG/GIF/WebP header, else the 1,600
token ceiling. PDFs cost 1,500 per page, pages counted from the `/Type /Page` objects, else
guessed from the size (one page per started 100 KB); plain-text documents are their text.
Signatures and redacted thinking are opaque and not counted. Every part adds a
non-negative amount, so adding content never lowers the estimate.
"""

from __future__ import annotations

import binascii
import json
import math
import re
import struct
from collections.abc import Iterable
from typing import Any

from gateway.translate import canonical as c

__all__ = ["estimate_tokens", "image_dimensions", "image_tokens", "pdf_pages", "text_tokens"]

REQUEST_OVERHEAD = 7
MESSAGE_OVERHEAD = 4
SYSTEM_OVERHEAD = 3
TOOLS_PROMPT = 346
TOOLS_PROMPT_FORCED = 313
TOOL_DEFINITION_OVERHEAD = 6
TOOL_USE_OVERHEAD = 8
TOOL_RESULT_OVERHEAD = 6
IMAGE_MAX_TOKENS = 1600
IMAGE_PIXELS_PER_TOKEN = 750
IMAGE_MAX_EDGE = 1568
IMAGE_MAX_PIXELS = 1_150_000
PDF_TOKENS_PER_PAGE = 1500
PDF_BYTES_PER_PAGE_GUESS = 100_000

# Enough of an image to find its header: JPEG's frame header can sit behind a 64 KB EXIF block.
_HEADER_BASE64_CHARS = 4 * 32 * 1024

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_RUN = re.compile(
    r"(?P<word>[A-Za-z]+)"
    r"|(?P<digits>[0-9]+)"
    r"|(?P<space>[ \t]+)"
    r"|(?P<newline>[\r\n]+)"
    r"|(?P<punct>[!-/:-@\[-`{-~]+)"
    rf"|(?P<cjk>[{_CJK}]+)"
    rf"|(?P<letters>[^\W\d_\x00-\x7f{_CJK}]+)"
    r"|(?P<other>.)",
    re.DOTALL,
)
_CHARS_PER_TOKEN = {"word": 5, "digits": 3, "newline": 2, "punct": 2, "letters": 2}


def _ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def text_tokens(text: str) -> int:
    """Estimated tokens for a piece of text (0 for the empty string)."""
    total = 0
    for match in _RUN.finditer(text):
        kind = match.lastgroup or "other"
        n = match.end() - match.start()
        if kind == "space":
            total += 0 if n == 1 else _ceil_div(n, 4)
        elif kind == "cjk":
            total += n
        elif kind == "other":
            total += 2 * n
        else:
            total += _ceil_div(n, _CHARS_PER_TOKEN[kind])
    return total


def _json_tokens(value: Any) -> int:
    return text_tokens(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def _decode_prefix(data: str, chars: int | None) -> bytes:
    """The bytes behind (a prefix of) base64 `data`, tolerating whitespace and bad padding."""
    text = data if chars is None else data[:chars]
    cleaned = re.sub(r"[^A-Za-z0-9+/]", "", text)
    cleaned = cleaned[: len(cleaned) - len(cleaned) % 4]
    try:
        return binascii.a2b_base64(cleaned)
    except (binascii.Error, ValueError):
        return b""


def image_dimensions(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the start of a PNG, GIF, WebP or JPEG file, if readable."""
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            return _plausible(width, height)
        if head[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", head[6:10])
            return _plausible(width, height)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp_dimensions(head)
        if head[:2] == b"\xff\xd8":
            return _jpeg_dimensions(head)
    except struct.error:
        return None
    return None


def _plausible(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if width > 0 and height > 0 else None


def _webp_dimensions(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return _plausible(width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and head[20:21] == b"\x2f":
        bits = int.from_bytes(head[21:25], "little")
        return _plausible((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return _plausible(width, height)
    return None


_JPEG_FRAMES = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)


def _jpeg_dimensions(head: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        length = int.from_bytes(head[pos + 2 : pos + 4], "big")
        if marker in _JPEG_FRAMES:
            height, width = struct.unpack(">HH", head[pos + 5 : pos + 9])
            return _plausible(width, height)
        if length < 2:
            return None
        pos += 2 + length
    return None


def image_tokens(data: str) -> int:
    """Anthropic's (w*h)/750 after its downscaling; the ceiling when the size is unknown."""
    size = image_dimensions(_decode_prefix(data, _HEADER_BASE64_CHARS))
    if size is None:
        return IMAGE_MAX_TOKENS
    width, height = size
    scale = min(
        1.0,
        IMAGE_MAX_EDGE / max(width, height),
        math.sqrt(IMAGE_MAX_PIXELS / (width * height)),
    )
    pixels = (width * scale) * (height * scale)
    return max(1, min(IMAGE_MAX_TOKENS, math.ceil(pixels / IMAGE_PIXELS_PER_TOKEN)))


# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------

_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def pdf_pages(pdf: bytes) -> int | None:
    """Pages counted from the page objects, or None when they are hidden (object streams)."""
    count = len(_PDF_PAGE.findall(pdf))
    return count or None


def _document_tokens(block: c.DocumentBlock) -> int:
    raw = _decode_prefix(block.data, None)
    if block.media_type.startswith("text/"):
        return text_tokens(raw.decode("utf-8", "replace"))
    pages = pdf_pages(raw)
    if pages is None:
        pages = max(1, _ceil_div(len(raw), PDF_BYTES_PER_PAGE_GUESS))
    return pages * PDF_TOKENS_PER_PAGE


# ---------------------------------------------------------------------------------------------
# The request
# ---------------------------------------------------------------------------------------------


def _block_tokens(block: c.ContentBlock) -> int:
    if isinstance(block, c.TextBlock):
        return text_tokens(block.text)
    if isinstance(block, c.ImageBlock):
        return image_tokens(block.data)
    if isinstance(block, c.DocumentBlock):
        return _document_tokens(block)
    if isinstance(block, c.ThinkingBlock):
        return text_tokens(block.thinking)
    if isinstance(block, c.RedactedThinkingBlock):
        return 0
    if isinstance(block, c.ToolUseBlock):
        return TOOL_USE_OVERHEAD + text_tokens(block.name) + _json_tokens(dict(block.input))
    return TOOL_RESULT_OVERHEAD + sum(_block_tokens(item) for item in block.content)


def _tool_tokens(tools: Iterable[c.Tool]) -> int:
    return sum(
        TOOL_DEFINITION_OVERHEAD
        + text_tokens(tool.name)
        + text_tokens(tool.description)
        + _json_tokens(dict(tool.input_schema))
        for tool in tools
    )


def estimate_tokens(chat: c.ChatRequest) -> int:
    """The estimated input tokens of `chat` as Anthropic would bill them (always >= 1)."""
    total = REQUEST_OVERHEAD
    if chat.system:
        total += SYSTEM_OVERHEAD + sum(text_tokens(block.text) for block in chat.system)
    if chat.tools:
        forced = chat.tool_choice is not None and chat.tool_choice.mode in ("any", "tool")
        total += TOOLS_PROMPT_FORCED if forced else TOOLS_PROMPT
        total += _tool_tokens(chat.tools)
    for message in chat.messages:
        total += MESSAGE_OVERHEAD + sum(_block_tokens(block) for block in message.content)
    if chat.response_format is not None and chat.response_format.schema is not None:
        total += _json_tokens(dict(chat.response_format.schema))
    return total
