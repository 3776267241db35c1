"""The canonical conversation model shared by both client dialects.

Requests from OpenAI and Anthropic clients are parsed into a `ChatRequest`; the Cloud Code
translator turns that into the upstream body. Upstream responses are decoded into a flat
sequence of `StreamEvent`s (block start, deltas, block stop, message end), which the
Anthropic and OpenAI encoders render as their own SSE events or, collected by `collect`,
as a whole `ChatResponse`. The shape follows Anthropic's Messages API because it is the
richest of the three: every other format maps into it without loss.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import attrs

JSON = Any

# Compact JSON with text as it is (not \u-escaped), as every face writes it on the wire;
# one encoder made once (json.dumps with options builds a new one per call, per chunk).
compact_json: Callable[[Any], str] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":")
).encode

# ---------------------------------------------------------------------------------------------
# Request side
# ---------------------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class TextBlock:
    text: str
    type: Literal["text"] = "text"


@attrs.frozen(slots=True)
class ImageBlock:
    media_type: str
    data: str  # base64, as sent by the client
    type: Literal["image"] = "image"


@attrs.frozen(slots=True)
class DocumentBlock:
    media_type: str  # application/pdf or text/plain
    data: str  # base64
    type: Literal["document"] = "document"


@attrs.frozen(slots=True)
class ThinkingBlock:
    thinking: str
    signature: str | None = None
    type: Literal["thinking"] = "thinking"


@attrs.frozen(slots=True)
class RedactedThinkingBlock:
    data: str
    type: Literal["redacted_thinking"] = "redacted_thinking"


@attrs.frozen(slots=True)
class ToolUseBlock:
    id: str
    name: str
    input: Mapping[str, JSON]
    # The thought signature Gemini attached to this call, tagged with its family (see
    # `cloudcode.tag_signature`): the Gemini face carries it to and from its clients; the
    # other faces cannot, and the signature cache stands in for them.
    signature: str | None = None
    type: Literal["tool_use"] = "tool_use"


@attrs.frozen(slots=True)
class ToolResultBlock:
    tool_use_id: str
    content: tuple[TextBlock | ImageBlock, ...]
    is_error: bool = False
    # The tool's name: Gemini's functionResponse needs it, Anthropic's tool_result omits it,
    # so the parser fills it from the matching tool_use earlier in the conversation.
    name: str | None = None
    type: Literal["tool_result"] = "tool_result"


ContentBlock = (
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | ToolUseBlock
    | ToolResultBlock
)


@attrs.frozen(slots=True)
class Message:
    """One turn. A `system` message is an instruction given mid-conversation (Anthropic's
    mid-conversation system messages, OpenAI system/developer messages after the first
    turn): it holds text only and keeps its place; instructions before the first turn are
    `ChatRequest.system` instead."""

    role: Literal["user", "assistant", "system"]
    content: tuple[ContentBlock, ...]


@attrs.frozen(slots=True)
class Tool:
    name: str
    description: str
    input_schema: Mapping[str, JSON]


@attrs.frozen(slots=True)
class ToolChoice:
    # auto: model decides; any: must call some tool; tool: must call `name`; none: no tools.
    mode: Literal["auto", "any", "tool", "none"] = "auto"
    name: str | None = None
    disable_parallel: bool = False


@attrs.frozen(slots=True)
class Thinking:
    enabled: bool
    budget_tokens: int | None = None
    # Anthropic's adaptive thinking: the model decides how much; `ChatRequest.effort`
    # (when given) says how hard to try.
    adaptive: bool = False


Effort = Literal["low", "medium", "high", "max"]


@attrs.frozen(slots=True)
class ClearThinking:
    """Context edit: drop thinking from all but the last `keep_turns` assistant turns
    (None keeps every turn's thinking)."""

    keep_turns: int | None = 1


@attrs.frozen(slots=True)
class ClearToolUses:
    """Context edit: once the prompt exceeds `trigger_tokens`, replace the results of all
    but the last `keep` tool uses with a placeholder (their inputs too with `clear_inputs`),
    clearing at least `clear_at_least` tokens' worth when it clears at all."""

    trigger_tokens: int = 100_000
    keep: int = 3
    clear_at_least: int = 0
    exclude_tools: tuple[str, ...] = ()
    clear_inputs: bool = False


ContextEdit = ClearThinking | ClearToolUses


@attrs.frozen(slots=True)
class ResponseFormat:
    # "json": any JSON object; "json_schema": JSON matching `schema`.
    kind: Literal["json", "json_schema"]
    schema: Mapping[str, JSON] | None = None


@attrs.frozen(slots=True)
class ChatRequest:
    model: str
    messages: tuple[Message, ...]
    max_tokens: int
    system: tuple[TextBlock, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    effort: Effort | None = None
    response_format: ResponseFormat | None = None
    context_edits: tuple[ContextEdit, ...] = ()
    # Gemini API safetySettings ({category, threshold} objects), for Gemini models only
    safety_settings: tuple[Mapping[str, JSON], ...] = ()
    stream: bool = False


# ---------------------------------------------------------------------------------------------
# Response side: the event stream every encoder consumes
# ---------------------------------------------------------------------------------------------

BlockKind = Literal["text", "thinking", "redacted_thinking", "tool_use"]
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]


@attrs.frozen(slots=True)
class Usage:
    input_tokens: int = 0  # prompt tokens not served from the cache
    output_tokens: int = 0  # candidates + thinking tokens
    cache_read_input_tokens: int = 0
    thinking_tokens: int = 0  # already counted in output_tokens


@attrs.frozen(slots=True)
class BlockStart:
    index: int
    kind: BlockKind
    tool_id: str | None = None  # tool_use only
    tool_name: str | None = None  # tool_use only
    data: str | None = None  # redacted_thinking only


@attrs.frozen(slots=True)
class TextDelta:
    index: int
    text: str


@attrs.frozen(slots=True)
class ThinkingDelta:
    index: int
    thinking: str


@attrs.frozen(slots=True)
class SignatureDelta:
    index: int
    signature: str


@attrs.frozen(slots=True)
class ToolInputDelta:
    index: int
    partial_json: str


@attrs.frozen(slots=True)
class BlockStop:
    index: int


@attrs.frozen(slots=True)
class ToolSignature:
    """A Gemini thoughtSignature attached to a function call (tagged with its family).

    Most clients cannot carry it (tool_use and tool_calls have no field for it), so the web
    layer keeps it per conversation and hands it back to the request translator on the next
    turn. Only the Gemini encoder shows it to its client.
    """

    tool_id: str
    signature: str


@attrs.frozen(slots=True)
class UsageUpdate:
    usage: Usage


@attrs.frozen(slots=True)
class MessageEnd:
    stop_reason: StopReason
    usage: Usage
    stop_sequence: str | None = None


StreamEvent = (
    BlockStart
    | TextDelta
    | ThinkingDelta
    | SignatureDelta
    | ToolInputDelta
    | BlockStop
    | ToolSignature
    | UsageUpdate
    | MessageEnd
)


@attrs.frozen(slots=True)
class ChatResponse:
    id: str
    model: str
    content: tuple[TextBlock | ThinkingBlock | RedactedThinkingBlock | ToolUseBlock, ...]
    stop_reason: StopReason
    usage: Usage
    stop_sequence: str | None = None


def without_thinking(request: ChatRequest) -> ChatRequest:
    """The request with every thinking block (and call signature) removed from its history.

    For a history whose signatures the upstream refuses (written by another provider or
    another gateway): the conversation goes on, without the replayed thoughts.
    """
    messages = tuple(
        attrs.evolve(
            message,
            content=tuple(
                attrs.evolve(block, signature=None)
                if isinstance(block, ToolUseBlock) and block.signature else block
                for block in message.content
                if not isinstance(block, ThinkingBlock | RedactedThinkingBlock)
            ),
        )
        for message in request.messages
    )
    return attrs.evolve(request, messages=messages)


def has_thinking(request: ChatRequest) -> bool:
    """Whether the history replays thoughts or signed calls (which the upstream may refuse)."""
    return any(
        isinstance(block, ThinkingBlock | RedactedThinkingBlock)
        or (isinstance(block, ToolUseBlock) and block.signature)
        for message in request.messages
        for block in message.content
    )


def collect(
    events: Iterable[StreamEvent], *, response_id: str, model: str
) -> ChatResponse:
    """Fold a complete event sequence into a whole response (the non-streaming path)."""
    import json

    kinds: dict[int, BlockKind] = {}
    texts: dict[int, list[str]] = {}
    sigs: dict[int, str] = {}
    tools: dict[int, tuple[str, str]] = {}
    redacted: dict[int, str] = {}
    call_signatures: dict[str, str] = {}
    end: MessageEnd | None = None
    for ev in events:
        if isinstance(ev, BlockStart):
            kinds[ev.index] = ev.kind
            texts[ev.index] = []
            if ev.kind == "tool_use":
                tools[ev.index] = (ev.tool_id or "", ev.tool_name or "")
            if ev.kind == "redacted_thinking":
                redacted[ev.index] = ev.data or ""
        elif isinstance(ev, TextDelta):
            texts[ev.index].append(ev.text)
        elif isinstance(ev, ThinkingDelta):
            texts[ev.index].append(ev.thinking)
        elif isinstance(ev, ToolInputDelta):
            texts[ev.index].append(ev.partial_json)
        elif isinstance(ev, SignatureDelta):
            sigs[ev.index] = sigs.get(ev.index, "") + ev.signature
        elif isinstance(ev, ToolSignature):
            call_signatures[ev.tool_id] = ev.signature
        elif isinstance(ev, MessageEnd):
            end = ev
    if end is None:
        raise ValueError("event stream ended without MessageEnd")
    content: list[TextBlock | ThinkingBlock | RedactedThinkingBlock | ToolUseBlock] = []
    for index in sorted(kinds):
        kind = kinds[index]
        body = "".join(texts[index])
        if kind == "text":
            content.append(TextBlock(body))
        elif kind == "thinking":
            content.append(ThinkingBlock(body, sigs.get(index)))
        elif kind == "redacted_thinking":
            content.append(RedactedThinkingBlock(redacted[index]))
        else:
            tool_id, name = tools[index]
            content.append(ToolUseBlock(tool_id, name, json.loads(body) if body else {},
                                        signature=call_signatures.get(tool_id)))
    return ChatResponse(
        id=response_id,
        model=model,
        content=tuple(content),
        stop_reason=end.stop_reason,
        usage=end.usage,
        stop_sequence=end.stop_sequence,
    )
