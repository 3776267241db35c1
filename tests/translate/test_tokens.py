"""The local token estimator: golden values, media headers, and monotonicity properties."""

from __future__ import annotations

import base64
import struct
import zlib

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.translate import canonical as c
from gateway.translate.anthropic import parse_count_tokens_request
from gateway.translate.tokens import (
    IMAGE_MAX_TOKENS,
    PDF_TOKENS_PER_PAGE,
    estimate_tokens,
    image_dimensions,
    image_tokens,
    pdf_pages,
    text_tokens,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00;"


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    exif = b"\xff\xe1" + struct.pack(">H", 2 + 3000) + b"E" * 3000  # a large segment to skip
    sof = b"\xff\xc2" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + exif + sof + b"\xff\xd9"


def webp_vp8x(width: int, height: int) -> bytes:
    payload = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little")
    payload += (height - 1).to_bytes(3, "little")
    return (
        b"RIFF"
        + struct.pack("<I", 4 + 8 + 10)
        + b"WEBP"
        + b"VP8X"
        + struct.pack("<I", 10)
        + payload
    )


def webp_lossy(width: int, height: int) -> bytes:
    frame = b"\x00\x00\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height)
    return (
        b"RIFF"
        + struct.pack("<I", 4 + 8 + len(frame))
        + b"WEBP"
        + b"VP8 "
        + struct.pack("<I", len(frame))
        + frame
    )


def webp_lossless(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    frame = b"\x2f" + bits.to_bytes(4, "little")
    return (
        b"RIFF"
        + struct.pack("<I", 4 + 8 + len(frame))
        + b"WEBP"
        + b"VP8L"
        + struct.pack("<I", len(frame))
        + frame
    )


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("Hello, world", 3),
        ("The quick brown fox jumps over the lazy dog.", 10),
        ("internationalization", 4),
        ("1234567890", 4),
        ("def foo(x):\n    return x + 1\n", 13),
        ("日本語のテキスト", 8),
        ("Привет, как дела?", 9),
        ("😀😀", 4),
    ],
)
def test_text_tokens_golden(text: str, tokens: int) -> None:
    assert text_tokens(text) == tokens


def test_prose_is_about_four_characters_per_token() -> None:
    prose = (
        "Tokenizers split common English words into single tokens, while rare or long words "
        "are broken into several pieces. Punctuation, digits and whitespace follow rules "
        "of their own, which is why a simple division by four is only a rough guide. "
    ) * 20
    ratio = len(prose) / text_tokens(prose)
    assert 3.5 < ratio < 6


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (png(800, 600), (800, 600)),
        (gif(31, 17), (31, 17)),
        (jpeg(1920, 1080), (1920, 1080)),
        (webp_vp8x(4000, 3000), (4000, 3000)),
        (webp_lossy(640, 480), (640, 480)),
        (webp_lossless(300, 200), (300, 200)),
        (b"not an image at all", None),
        (b"\x89PNG\r\n\x1a\n", None),  # truncated
        (b"\xff\xd8\xff\xe0\x00", None),  # truncated
        (b"", None),
    ],
)
def test_image_dimensions(data: bytes, size: tuple[int, int] | None) -> None:
    assert image_dimensions(data) == size


def test_image_tokens_follow_anthropics_formula() -> None:
    assert image_tokens(b64(png(1, 1))) == 1
    assert image_tokens(b64(png(200, 200))) == 54  # 40,000 / 750 = 53.3
    assert image_tokens(b64(png(1000, 1000))) == 1334
    assert image_tokens(b64(jpeg(1092, 1092))) == 1534  # scaled to about 1.15 MP
    big = image_tokens(b64(webp_vp8x(8000, 2000)))  # long edge capped at 1568 px
    assert big == -(-1568 * 392 // 750)
    assert image_tokens(b64(b"garbage bytes")) == IMAGE_MAX_TOKENS
    assert image_tokens("!!! not base64 !!!") == IMAGE_MAX_TOKENS


def test_pdf_pages() -> None:
    pdf = b"%PDF-1.4 /Type /Pages /Count 3 /Type /Page /Type/Page /Type /Page %%EOF"
    assert pdf_pages(pdf) == 3
    assert pdf_pages(b"%PDF-1.7 compressed object streams") is None


def chat(*messages: c.Message, **kw: object) -> c.ChatRequest:
    return c.ChatRequest(model="m", messages=messages, max_tokens=100, **kw)  # type: ignore[arg-type]


def user(*blocks: c.ContentBlock) -> c.Message:
    return c.Message("user", blocks)


def test_estimate_golden_values() -> None:
    hello = parse_count_tokens_request(
        {"model": "m", "messages": [{"role": "user", "content": "Hello, world"}]}
    )
    assert estimate_tokens(hello) == 14  # what Anthropic's count_tokens reports for it
    pdf = b64(b"%PDF-1.4 /Type /Page /Type /Page %%EOF")
    assert estimate_tokens(chat(user(c.DocumentBlock("application/pdf", pdf)))) == (
        7 + 4 + 2 * PDF_TOKENS_PER_PAGE
    )
    unknown_pdf = b64(b"%PDF-1.7 " + b"x" * 250_000)
    assert estimate_tokens(chat(user(c.DocumentBlock("application/pdf", unknown_pdf)))) == (
        7 + 4 + 3 * PDF_TOKENS_PER_PAGE
    )
    notes = b64(b"Hello, world")
    assert estimate_tokens(chat(user(c.DocumentBlock("text/plain", notes)))) == 14


def test_tools_add_the_tool_prompt_and_definitions() -> None:
    base = chat(user(c.TextBlock("hi")))
    tool = c.Tool("get_weather", "Weather", {"type": "object", "properties": {}})
    with_tool = attrs.evolve(base, tools=(tool,))
    assert estimate_tokens(with_tool) - estimate_tokens(base) > 346
    forced = attrs.evolve(with_tool, tool_choice=c.ToolChoice("tool", "get_weather"))
    assert estimate_tokens(forced) == estimate_tokens(with_tool) - 33


text_st = st.text(max_size=40)
block_st: st.SearchStrategy[c.ContentBlock] = st.one_of(
    st.builds(c.TextBlock, text_st),
    st.builds(c.ImageBlock, st.just("image/png"), st.sampled_from([b64(png(64, 64)), "AAAA"])),
    st.builds(c.ThinkingBlock, text_st, st.none() | text_st),
    st.builds(c.RedactedThinkingBlock, text_st),
    st.builds(
        c.ToolUseBlock,
        st.just("t1"),
        st.just("f"),
        st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=10), max_size=3),
    ),
    st.builds(
        c.ToolResultBlock,
        st.just("t1"),
        st.lists(st.builds(c.TextBlock, text_st), max_size=2).map(tuple),
    ),
)
message_st = st.builds(
    c.Message,
    st.sampled_from(["user", "assistant"]),
    st.lists(block_st, max_size=3).map(tuple),
)
request_st = st.builds(
    c.ChatRequest,
    model=st.just("m"),
    messages=st.lists(message_st, min_size=1, max_size=4).map(tuple),
    max_tokens=st.just(100),
    system=st.lists(st.builds(c.TextBlock, text_st), max_size=2).map(tuple),
    tools=st.lists(
        st.builds(c.Tool, st.just("f"), text_st, st.just({"type": "object"})), max_size=2
    ).map(tuple),
)


@settings(max_examples=200)
@given(request_st, st.data())
def test_adding_text_never_lowers_the_estimate(
    chat_request: c.ChatRequest, data: st.DataObject
) -> None:
    before = estimate_tokens(chat_request)
    assert before >= 1
    extra = data.draw(st.text(min_size=1, max_size=40))
    index = data.draw(st.integers(0, len(chat_request.messages) - 1))
    message = chat_request.messages[index]
    texts = [i for i, b in enumerate(message.content) if isinstance(b, c.TextBlock)]
    if texts:
        # Append to an existing text block: runs at the seam may merge, never shrink.
        i = data.draw(st.sampled_from(texts))
        old = message.content[i]
        assert isinstance(old, c.TextBlock)
        content = list(message.content)
        content[i] = c.TextBlock(old.text + extra)
    else:
        content = [*message.content, c.TextBlock(extra)]
    messages = list(chat_request.messages)
    messages[index] = attrs.evolve(message, content=tuple(content))
    grown = attrs.evolve(chat_request, messages=tuple(messages))
    assert estimate_tokens(grown) >= before


@settings(max_examples=200)
@given(request_st, message_st, block_st, text_st)
def test_adding_parts_never_lowers_the_estimate(
    chat_request: c.ChatRequest, message: c.Message, block: c.ContentBlock, system: str
) -> None:
    before = estimate_tokens(chat_request)
    more_messages = attrs.evolve(chat_request, messages=(*chat_request.messages, message))
    assert estimate_tokens(more_messages) >= before + 4
    first = chat_request.messages[0]
    more_blocks = attrs.evolve(
        chat_request,
        messages=(attrs.evolve(first, content=(*first.content, block)), *chat_request.messages[1:]),
    )
    assert estimate_tokens(more_blocks) >= before
    more_system = attrs.evolve(chat_request, system=(*chat_request.system, c.TextBlock(system)))
    assert estimate_tokens(more_system) >= before


@given(st.text(), st.text())
def test_text_tokens_are_monotone_under_concatenation(left: str, right: str) -> None:
    both = text_tokens(left + right)
    assert both >= text_tokens(left)
    assert both >= text_tokens(right)
