"""Anthropic Messages API <-> canonical: request parsing, whole responses, the SSE encoder.

`parse_messages_request` validates a `/v1/messages` body the way Anthropic does and returns a
`ChatRequest`; any JSON value either parses or raises `errors.InvalidRequest` naming the
offending field path in `param` (e.g. "messages.2.content.0.source.media_type"), never
anything else. Unknown fields and `cache_control` are ignored, as are features the upstream
cannot honour silently (metadata); features it cannot honour at all (URL images, server
tools, file ids) are refused with a message that says so. A `tool_result` gets its tool's
name from the `tool_use` with the same id earlier in the conversation; when there is none
(a client that truncated its history) the name stays None and the Cloud Code translator
falls back to the id. `render_message` builds the non-streaming `Message` object and
`AnthropicStreamEncoder` turns canonical stream events into Anthropic's exact SSE grammar
(message_start, content blocks numbered 0..n-1 each opened and closed once, message_delta,
message_stop), robust to any event order it is fed. Pure: no I/O, ids are passed in.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from gateway import errors
from gateway.translate import canonical as c
from gateway.translate.context import AppliedEdit
from gateway.translate.fields import describe_json
from gateway.translate.fields import expect_list as _list
from gateway.translate.fields import expect_object as _object
from gateway.translate.fields import expect_string as _string
from gateway.translate.fields import fail as _fail

__all__ = [
    "IMAGE_MEDIA_TYPES",
    "AnthropicStreamEncoder",
    "SSEEvent",
    "parse_count_tokens_request",
    "parse_messages_request",
    "render_context_management",
    "render_message",
    "sse_bytes",
]

SSEEvent = tuple[str, dict[str, Any]]

IMAGE_MEDIA_TYPES: Final = ("image/jpeg", "image/png", "image/gif", "image/webp")
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_MIN_THINKING_BUDGET = 1024
_ROLES = ("user", "assistant", "system")
_CHOICE_MODES: Final[dict[str, Literal["auto", "any", "tool", "none"]]] = {
    "auto": "auto",
    "any": "any",
    "tool": "tool",
    "none": "none",
}

# ---------------------------------------------------------------------------------------------
# Request parsing
# ---------------------------------------------------------------------------------------------


def parse_messages_request(body: Any) -> c.ChatRequest:
    """A validated `/v1/messages` body as a canonical request (raises InvalidRequest)."""
    return _parse(body, require_max_tokens=True)


def parse_count_tokens_request(body: Any) -> c.ChatRequest:
    """A `/v1/messages/count_tokens` body: the same rules, but max_tokens is not asked for."""
    return _parse(body, require_max_tokens=False)






def _quote(value: Any) -> str:
    """A short, safe rendering of a client value for an error message."""
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:40] + "..."
        return json.dumps(text)
    return describe_json(value)








def _integer(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 1024.0 is what some JSON encoders write for 1024
        _fail(path, f"expected an integer, got {describe_json(value)}")
    return value


def _number(value: Any, path: str, low: float, high: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(path, f"expected a number, got {describe_json(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = float("inf")
    if not (number >= low and (high is None or number <= high)):
        limit = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        _fail(path, f"must be {limit}, got {value!r}")
    return number


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        _fail(path, f"expected a boolean, got {describe_json(value)}")
    return value


def _parse(body: Any, *, require_max_tokens: bool) -> c.ChatRequest:
    if not isinstance(body, dict):
        _fail(None, f"request body must be a JSON object, got {describe_json(body)}")

    if body.get("model") is None:
        _fail("model", "field required")
    model = _string(body["model"], "model", non_empty=True)

    max_tokens = 1
    raw_max = body.get("max_tokens")
    if raw_max is None:
        if require_max_tokens:
            _fail("max_tokens", "field required (a positive integer)")
    elif require_max_tokens:
        max_tokens = _integer(raw_max, "max_tokens")
        if max_tokens < 1:
            _fail("max_tokens", f"must be at least 1, got {max_tokens}")

    if "messages" not in body:
        _fail("messages", "field required")
    raw_messages = _list(body["messages"], "messages")
    if not raw_messages:
        _fail("messages", "at least one message is required")
    declared, deferred = _tools(body.get("tools"))
    toolbox = _Toolbox(declared, deferred)
    leading_system, messages, turn_effort = _messages(raw_messages, toolbox)
    system = (
        *(_system_content(body["system"], "system") if body.get("system") is not None else ()),
        *leading_system,
    )

    temperature = None
    if (value := body.get("temperature")) is not None:
        temperature = _number(value, "temperature", 0.0, 1.0)
    top_p = None
    if (value := body.get("top_p")) is not None:
        top_p = _number(value, "top_p", 0.0, 1.0)
    top_k = None
    if (value := body.get("top_k")) is not None:
        top_k = _integer(value, "top_k")
        if top_k < 0:
            _fail("top_k", f"must be at least 0, got {top_k}")

    stop_sequences: tuple[str, ...] = ()
    if (value := body.get("stop_sequences")) is not None:
        stop_sequences = tuple(
            _string(item, f"stop_sequences.{i}")
            for i, item in enumerate(_list(value, "stop_sequences"))
        )

    stream = False
    if (value := body.get("stream")) is not None:
        stream = _boolean(value, "stream")

    tools = tuple(toolbox.active.values())
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    thinking = _thinking(body.get("thinking"), max_tokens if require_max_tokens else None)
    response_format = _response_format(body)
    top_effort = _effort(body.get("output_config"), "output_config")
    effort = turn_effort or top_effort
    context_edits = _context_edits(body.get("context_management"))

    return c.ChatRequest(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        system=system,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop_sequences=stop_sequences,
        tools=tools,
        tool_choice=tool_choice,
        thinking=thinking,
        effort=effort,
        response_format=response_format,
        context_edits=context_edits,
        stream=stream,
    )


class _Toolbox:
    """The tools offered to the model, as the conversation changes them.

    Tools with `defer_loading` start hidden; a `tool_reference` in a tool result (a tool
    search found them) or a `tool_addition` in a system message offers them from then on,
    a `tool_removal` withdraws one. The upstream takes one fixed tool list per request, so
    what is offered at the end of the conversation (where the model answers) is declared.
    """

    def __init__(self, tools: Sequence[c.Tool], deferred: Sequence[c.Tool]) -> None:
        self.known: dict[str, c.Tool] = {t.name: t for t in (*tools, *deferred)}
        self.active: dict[str, c.Tool] = {t.name: t for t in tools}

    def offer(self, tool: c.Tool) -> None:
        self.known.setdefault(tool.name, tool)
        self.active[tool.name] = tool

    def offer_named(self, name: str) -> bool:
        tool = self.known.get(name)
        if tool is None:
            return False
        self.active[name] = tool
        return True

    def withdraw(self, name: str) -> None:
        self.active.pop(name, None)


def _messages(
    raw: list[Any], toolbox: _Toolbox
) -> tuple[tuple[c.TextBlock, ...], tuple[c.Message, ...], c.Effort | None]:
    """Leading system messages (folded into the system prompt), the conversation, and the
    effort a system message set for the current turn (`output_config.effort`)."""
    tool_names: dict[str, str] = {}
    leading_system: list[c.TextBlock] = []
    messages: list[c.Message] = []
    turn_effort: c.Effort | None = None
    later_user = [False] * len(raw)
    seen_user = False
    for i in range(len(raw) - 1, -1, -1):
        later_user[i] = seen_user
        item = raw[i]
        seen_user = seen_user or (isinstance(item, Mapping) and item.get("role") == "user")
    for i, item in enumerate(raw):
        path = f"messages.{i}"
        message = _object(item, path)
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            _fail(f"{path}.role", f'must be "user", "assistant" or "system", got {_quote(role)}')
        if "content" not in message:
            _fail(f"{path}.content", "field required")
        content = message["content"]
        if role == "system":
            texts = _system_message(message, path, toolbox)
            effort = _effort(message.get("output_config"), f"{path}.output_config")
            if message.get("clear_at") == "next_user_message" and later_user[i]:
                continue  # shown only for the user turn it followed, which is over
            if effort:
                turn_effort = effort
            if not messages:
                leading_system.extend(texts)
            elif texts:
                messages.append(c.Message(role="system", content=tuple(texts)))
            continue
        if role == "assistant":
            turn_effort = None  # a system message's effort applies to the turn it precedes
        blocks: list[c.ContentBlock] = []
        if isinstance(content, str):
            blocks.append(c.TextBlock(content))
        else:
            for j, raw_block in enumerate(_list(content, f"{path}.content")):
                blocks.extend(
                    _content_block(raw_block, f"{path}.content.{j}", role, tool_names, toolbox)
                )
        for block in blocks:
            if isinstance(block, c.ToolUseBlock):
                tool_names[block.id] = block.name
        messages.append(
            c.Message(role="user" if role == "user" else "assistant", content=tuple(blocks))
        )
    if not messages:
        _fail("messages", "at least one user or assistant message is required")
    return tuple(leading_system), tuple(messages), turn_effort


# Claude Code puts a line for Anthropic's billing first in its system prompt; it means
# nothing to another upstream and would cost tokens on every request.
_BILLING_HEADER = "x-anthropic-billing-header:"


def _system_content(value: Any, path: str) -> list[c.TextBlock]:
    """Text of the system prompt: a string or text blocks (cache_control is ignored, as is
    Claude Code's billing line)."""
    if isinstance(value, str):
        return [c.TextBlock(value)] if value else []
    blocks: list[c.TextBlock] = []
    for i, item in enumerate(_list(value, path)):
        inner = f"{path}.{i}"
        block = _object(item, inner)
        kind = block.get("type")
        if kind != "text":
            _fail(f"{inner}.type", f'system blocks must have type "text", got {_quote(kind)}')
        text = _string(block.get("text"), f"{inner}.text")
        if text and not text.startswith(_BILLING_HEADER):
            blocks.append(c.TextBlock(text))
    return blocks


def _system_message(message: Mapping[str, Any], path: str, toolbox: _Toolbox) -> list[c.TextBlock]:
    """A mid-conversation system message: its text, with tool changes applied to `toolbox`
    and told to the model in words (the upstream only sees the final tool list)."""
    content = message["content"]
    if isinstance(content, str):
        return [c.TextBlock(content)] if content.strip() else []
    blocks: list[c.TextBlock] = []
    for i, item in enumerate(_list(content, f"{path}.content")):
        inner = f"{path}.content.{i}"
        block = _object(item, inner)
        kind = block.get("type")
        if kind == "text":
            text = _string(block.get("text"), f"{inner}.text")
            if text.strip():
                blocks.append(c.TextBlock(text))
        elif kind in ("tool_addition", "tool_removal"):
            name = _tool_change(block, inner, toolbox, add=kind == "tool_addition")
            state = "now available" if kind == "tool_addition" else "no longer available"
            blocks.append(c.TextBlock(f"The tool `{name}` is {state}."))
        else:
            _fail(f"{inner}.type", "system messages hold text, tool_addition and tool_removal "
                                   f"blocks only, got {_quote(kind)}")
    return blocks


def _tool_change(block: Mapping[str, Any], path: str, toolbox: _Toolbox, *, add: bool) -> str:
    ref = _object(block.get("tool"), f"{path}.tool")
    kind = ref.get("type")
    if kind == "tool_definition" and add:
        tool = _tool(_object(ref.get("definition"), f"{path}.tool.definition"),
                     f"{path}.tool.definition")[0]
        toolbox.offer(tool)
        return tool.name
    if kind != "tool_reference":
        allowed = "tool_reference or tool_definition" if add else "tool_reference"
        _fail(f"{path}.tool.type", f"must be {allowed}, got {_quote(kind)}")
    name = _string(ref.get("name"), f"{path}.tool.name", non_empty=True)
    if add:
        if not toolbox.offer_named(name):
            _fail(f"{path}.tool.name", f"no tool named {_quote(name)} is defined in tools")
    else:
        toolbox.withdraw(name)
    return name


def _content_block(
    value: Any, path: str, role: str, tool_names: Mapping[str, str], toolbox: _Toolbox
) -> list[c.ContentBlock]:
    block = _object(value, path)
    kind = block.get("type")
    if not isinstance(kind, str):
        _fail(f"{path}.type", f"expected a content block type, got {_quote(kind)}")
    if kind == "text":
        return [c.TextBlock(_string(block.get("text"), f"{path}.text"))]
    if kind == "image":
        return [_image(block, path)]
    if kind == "document":
        return _document(block, path)
    if kind in ("tool_use", "thinking", "redacted_thinking") and role != "assistant":
        _fail(f"{path}.type", f"{kind} blocks may only appear in assistant messages")
    if kind == "tool_use":
        tool_id = _string(block.get("id"), f"{path}.id", non_empty=True)
        name = _string(block.get("name"), f"{path}.name", non_empty=True)
        tool_input = block.get("input")
        if tool_input is None:
            tool_input = {}
        return [c.ToolUseBlock(tool_id, name, _object(tool_input, f"{path}.input"))]
    if kind == "thinking":
        thinking = _string(block.get("thinking"), f"{path}.thinking")
        signature = block.get("signature")
        if signature is not None:
            signature = _string(signature, f"{path}.signature")
        return [c.ThinkingBlock(thinking, signature or None)]
    if kind == "redacted_thinking":
        return [c.RedactedThinkingBlock(_string(block.get("data"), f"{path}.data"))]
    if kind == "tool_result":
        if role != "user":
            _fail(f"{path}.type", "tool_result blocks may only appear in user messages")
        return [_tool_result(block, path, tool_names, toolbox)]
    _fail(
        f"{path}.type",
        f"content block type {_quote(kind)} is not supported by this gateway "
        "(supported: text, image, document, tool_use, tool_result, thinking, "
        "redacted_thinking)",
    )


def _base64(value: Any, path: str) -> str:
    data = _string(value, path, non_empty=True)
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        _fail(path, "is not valid base64 data")
    return data


def _source(block: Mapping[str, Any], path: str) -> tuple[Mapping[str, Any], str]:
    source = _object(block.get("source"), f"{path}.source")
    kind = source.get("type")
    if not isinstance(kind, str):
        _fail(f"{path}.source.type", f"expected a source type, got {_quote(kind)}")
    if kind == "url":
        _fail(
            f"{path}.source.type",
            'URL sources are not fetched by this gateway; send the data with source type "base64"',
        )
    if kind == "file":
        _fail(
            f"{path}.source.type",
            'file sources (Files API) are not supported; send the data with source type "base64"',
        )
    return source, kind


def _image(block: Mapping[str, Any], path: str) -> c.ImageBlock:
    source, kind = _source(block, path)
    if kind != "base64":
        _fail(f"{path}.source.type", f'image sources must be "base64", got {_quote(kind)}')
    media_type = source.get("media_type")
    if not isinstance(media_type, str) or media_type not in IMAGE_MEDIA_TYPES:
        _fail(
            f"{path}.source.media_type",
            f"must be one of {', '.join(IMAGE_MEDIA_TYPES)}, got {_quote(media_type)}",
        )
    return c.ImageBlock(media_type, _base64(source.get("data"), f"{path}.source.data"))


def _text_document(text: str) -> c.DocumentBlock:
    return c.DocumentBlock("text/plain", base64.b64encode(text.encode("utf-8", "replace")).decode())


def _document(block: Mapping[str, Any], path: str) -> list[c.ContentBlock]:
    source, kind = _source(block, path)
    if kind == "base64":
        media_type = source.get("media_type")
        if media_type != "application/pdf":
            _fail(
                f"{path}.source.media_type",
                f'base64 documents must be "application/pdf", got {_quote(media_type)}',
            )
        return [
            c.DocumentBlock("application/pdf", _base64(source.get("data"), f"{path}.source.data"))
        ]
    if kind == "text":
        media_type = source.get("media_type", "text/plain")
        if media_type != "text/plain":
            _fail(
                f"{path}.source.media_type",
                f'text documents must be "text/plain", got {_quote(media_type)}',
            )
        return [_text_document(_string(source.get("data"), f"{path}.source.data"))]
    if kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            return [_text_document(content)]
        texts: list[str] = []
        images: list[c.ContentBlock] = []
        for i, item in enumerate(_list(content, f"{path}.source.content")):
            inner = f"{path}.source.content.{i}"
            part = _object(item, inner)
            if part.get("type") == "text":
                texts.append(_string(part.get("text"), f"{inner}.text"))
            elif part.get("type") == "image":
                images.append(_image(part, inner))
            else:
                _fail(f"{inner}.type", f'must be "text" or "image", got {_quote(part.get("type"))}')
        return [_text_document("\n".join(texts)), *images] if texts else images
    _fail(
        f"{path}.source.type",
        f'must be "base64", "text" or "content", got {_quote(kind)}',
    )


def _tool_result(
    block: Mapping[str, Any], path: str, tool_names: Mapping[str, str], toolbox: _Toolbox
) -> c.ToolResultBlock:
    tool_use_id = _string(block.get("tool_use_id"), f"{path}.tool_use_id", non_empty=True)
    is_error = False
    if (flag := block.get("is_error")) is not None:
        is_error = _boolean(flag, f"{path}.is_error")
    content = block.get("content")
    items: list[c.TextBlock | c.ImageBlock] = []
    if isinstance(content, str):
        if content:
            items.append(c.TextBlock(content))
    elif content is not None:
        for i, item in enumerate(_list(content, f"{path}.content")):
            items.extend(_tool_result_part(item, f"{path}.content.{i}", toolbox))
    return c.ToolResultBlock(
        tool_use_id=tool_use_id,
        content=tuple(items),
        is_error=is_error,
        name=tool_names.get(tool_use_id),
    )


def _tool_result_part(
    value: Any, path: str, toolbox: _Toolbox
) -> list[c.TextBlock | c.ImageBlock]:
    part = _object(value, path)
    kind = part.get("type")
    if kind == "text":
        return [c.TextBlock(_string(part.get("text"), f"{path}.text"))]
    if kind == "image":
        return [_image(part, path)]
    if kind == "tool_reference":
        # a (client-side) tool search found this tool: it is offered from now on
        name = _string(part.get("tool_name"), f"{path}.tool_name", non_empty=True)
        if not toolbox.offer_named(name):
            _fail(f"{path}.tool_name", f"no tool named {_quote(name)} is defined in tools")
        return [c.TextBlock(f"Tool `{name}` loaded.")]
    if kind == "search_result":
        title = part.get("title")
        texts = [title] if isinstance(title, str) and title else []
        for j, inner in enumerate(_list(part.get("content", []), f"{path}.content")):
            texts.append(_string(_object(inner, f"{path}.content.{j}").get("text"),
                                 f"{path}.content.{j}.text"))
        source = part.get("source")
        if isinstance(source, str) and source:
            texts.append(f"(source: {source})")
        return [c.TextBlock("\n".join(texts))]
    if kind == "document":
        parts: list[c.TextBlock | c.ImageBlock] = []
        for doc in _document(part, path):
            if isinstance(doc, c.DocumentBlock) and doc.media_type == "text/plain":
                parts.append(c.TextBlock(base64.b64decode(doc.data).decode("utf-8", "replace")))
            elif isinstance(doc, c.ImageBlock):
                parts.append(doc)
            else:
                _fail(f"{path}.source.type", "PDF documents inside tool results are not "
                                             "supported; send text, or the PDF in a user turn")
        return parts
    _fail(
        f"{path}.type",
        "tool_result content blocks must be text, image, document, search_result or "
        f"tool_reference, got {_quote(kind)}",
    )


def _tools(value: Any) -> tuple[list[c.Tool], list[c.Tool]]:
    """The declared tools: those offered from the start, and the deferred ones."""
    if value is None:
        return [], []
    tools: list[c.Tool] = []
    deferred: list[c.Tool] = []
    seen: set[str] = set()
    for i, item in enumerate(_list(value, "tools")):
        path = f"tools.{i}"
        tool, defer = _tool(_object(item, path), path)
        if tool.name in seen:
            _fail(f"{path}.name", f"tool names must be unique; {_quote(tool.name)} appears twice")
        seen.add(tool.name)
        (deferred if defer else tools).append(tool)
    return tools, deferred


def _tool(raw: Mapping[str, Any], path: str) -> tuple[c.Tool, bool]:
    """One client tool definition and whether its loading is deferred."""
    kind = raw.get("type")
    if kind is not None and kind != "custom":
        _fail(
            f"{path}.type",
            f"server tool {_quote(kind)} is not supported by this gateway; "
            "only client tools (name, description, input_schema) are",
        )
    name = _string(raw.get("name"), f"{path}.name")
    if not _TOOL_NAME.fullmatch(name):
        _fail(f"{path}.name", f"must match ^[a-zA-Z0-9_-]{{1,64}}$, got {_quote(name)}")
    description = raw.get("description")
    description = "" if description is None else _string(description, f"{path}.description")
    if "input_schema" not in raw:
        _fail(f"{path}.input_schema", "field required")
    schema = _object(raw["input_schema"], f"{path}.input_schema")
    schema_type = schema.get("type")
    if schema_type is not None and schema_type != "object":
        _fail(f"{path}.input_schema.type", f'must be "object", got {_quote(schema_type)}')
    defer = raw.get("defer_loading")
    deferred = defer is not None and _boolean(defer, f"{path}.defer_loading")
    return c.Tool(name=name, description=description, input_schema=schema), deferred


def _tool_choice(value: Any, tools: Sequence[c.Tool]) -> c.ToolChoice | None:
    if value is None:
        return None
    raw = _object(value, "tool_choice")
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in _CHOICE_MODES:
        _fail("tool_choice.type", f'must be "auto", "any", "tool" or "none", got {_quote(kind)}')
    disable_parallel = False
    if (flag := raw.get("disable_parallel_tool_use")) is not None:
        disable_parallel = _boolean(flag, "tool_choice.disable_parallel_tool_use")
    name = None
    if kind == "tool":
        name = _string(raw.get("name"), "tool_choice.name", non_empty=True)
        if not any(tool.name == name for tool in tools):
            _fail("tool_choice.name", f"no tool named {_quote(name)} is defined in tools")
    elif kind == "any" and not tools:
        _fail("tool_choice.type", '"any" requires at least one tool in tools')
    return c.ToolChoice(mode=_CHOICE_MODES[kind], name=name, disable_parallel=disable_parallel)


def _thinking(value: Any, max_tokens: int | None) -> c.Thinking | None:
    if value is None:
        return None
    raw = _object(value, "thinking")
    kind = raw.get("type")
    if kind == "disabled":
        return c.Thinking(enabled=False)
    if kind == "adaptive":
        # The model decides how much to think (the translator turns effort into a budget
        # or level). `display: "omitted"` is not honoured: the upstream's signatures are
        # bound to the thinking text, so the client must be able to replay it.
        return c.Thinking(enabled=True, adaptive=True)
    if kind != "enabled":
        _fail("thinking.type", f'must be "enabled", "disabled" or "adaptive", got {_quote(kind)}')
    if "budget_tokens" not in raw:
        _fail("thinking.budget_tokens", "field required when thinking is enabled")
    budget = _integer(raw["budget_tokens"], "thinking.budget_tokens")
    if budget < _MIN_THINKING_BUDGET:
        _fail("thinking.budget_tokens", f"must be at least {_MIN_THINKING_BUDGET}, got {budget}")
    if max_tokens is not None and budget >= max_tokens:
        _fail(
            "thinking.budget_tokens",
            f"must be less than max_tokens ({max_tokens}), got {budget}",
        )
    return c.Thinking(enabled=True, budget_tokens=budget)


_EFFORTS: Final[dict[str, c.Effort]] = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "max",
    "max": "max",
}


def _effort(config: Any, path: str) -> c.Effort | None:
    """`output_config.effort`; a value newer than this gateway is ignored, not refused
    (Claude Code adds levels before proxies learn them)."""
    if config is None:
        return None
    raw = _object(config, path).get("effort")
    if raw is None:
        return None
    return _EFFORTS.get(_string(raw, f"{path}.effort").lower())


_DEFAULT_TOOL_TRIGGER = 100_000
_DEFAULT_TOOLS_KEPT = 3


def _amount(value: Any, kinds: tuple[str, ...], default: int | None) -> int | None:
    """The `value` of a `{"type": ..., "value": n}` setting of one of `kinds`, else default."""
    if isinstance(value, Mapping) and value.get("type") in kinds:
        number = value.get("value")
        if isinstance(number, float) and number.is_integer():
            number = int(number)  # 1024.0 is what some JSON encoders write for 1024
        if isinstance(number, int) and not isinstance(number, bool) and number >= 0:
            return number
    return default


def _context_edits(value: Any) -> tuple[c.ContextEdit, ...]:
    """`context_management.edits` as canonical edits.

    Never refused: an edit type this gateway does not know, or a malformed setting, is
    ignored (defaults apply) rather than failing a request over context housekeeping.
    """
    if not isinstance(value, Mapping) or not isinstance(value.get("edits"), list):
        return ()
    edits: list[c.ContextEdit] = []
    for edit in value["edits"]:
        if not isinstance(edit, Mapping) or not isinstance(edit.get("type"), str):
            continue
        kind = edit["type"]
        if kind.startswith("clear_thinking_"):
            keep = edit.get("keep")
            turns = None if keep == "all" else _amount(keep, ("thinking_turns",), 1)
            edits.append(c.ClearThinking(keep_turns=turns))
        elif kind.startswith("clear_tool_uses_"):
            excluded = edit.get("exclude_tools")
            edits.append(
                c.ClearToolUses(
                    trigger_tokens=_amount(edit.get("trigger"), ("input_tokens",),
                                           _DEFAULT_TOOL_TRIGGER) or 0,
                    keep=_amount(edit.get("keep"), ("tool_uses",), _DEFAULT_TOOLS_KEPT) or 0,
                    clear_at_least=_amount(edit.get("clear_at_least"), ("input_tokens",), 0)
                    or 0,
                    exclude_tools=tuple(t for t in excluded if isinstance(t, str))
                    if isinstance(excluded, list) else (),
                    clear_inputs=edit.get("clear_tool_inputs") is True,
                )
            )
    return tuple(edits)


def _response_format(body: Mapping[str, Any]) -> c.ResponseFormat | None:
    # Structured outputs: output_config.format (GA) or output_format (the beta spelling).
    config = body.get("output_config")
    if config is not None:
        fmt, path = _object(config, "output_config").get("format"), "output_config.format"
    else:
        fmt, path = body.get("output_format"), "output_format"
    if fmt is None:
        return None
    raw = _object(fmt, path)
    if raw.get("type") != "json_schema":
        _fail(f"{path}.type", f'must be "json_schema", got {_quote(raw.get("type"))}')
    return c.ResponseFormat("json_schema", _object(raw.get("schema"), f"{path}.schema"))


# ---------------------------------------------------------------------------------------------
# Whole responses
# ---------------------------------------------------------------------------------------------


def _usage(usage: c.Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation_input_tokens": 0,
    }


def _render_block(
    block: c.TextBlock | c.ThinkingBlock | c.RedactedThinkingBlock | c.ToolUseBlock,
) -> dict[str, Any]:
    if isinstance(block, c.TextBlock):
        return {"type": "text", "text": block.text}
    if isinstance(block, c.ThinkingBlock):
        return {"type": "thinking", "thinking": block.thinking, "signature": block.signature or ""}
    if isinstance(block, c.RedactedThinkingBlock):
        return {"type": "redacted_thinking", "data": block.data}
    return {"type": "tool_use", "id": block.id, "name": block.name, "input": dict(block.input)}


def render_context_management(edits: Iterable[AppliedEdit]) -> dict[str, Any]:
    """The `context_management` report of a response: the edits that changed the prompt."""
    applied: list[dict[str, Any]] = []
    for edit in edits:
        entry: dict[str, Any] = {"type": edit.type,
                                 "cleared_input_tokens": edit.cleared_input_tokens}
        if edit.type.startswith("clear_thinking"):
            entry["cleared_thinking_turns"] = edit.cleared_thinking_turns
        else:
            entry["cleared_tool_uses"] = edit.cleared_tool_uses
        applied.append(entry)
    return {"applied_edits": applied}


def render_message(
    response: c.ChatResponse, *, context_management: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The non-streaming Messages API answer for a collected response."""
    message = {
        "id": response.id,
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": [_render_block(block) for block in response.content],
        "stop_reason": response.stop_reason,
        "stop_sequence": response.stop_sequence,
        "usage": _usage(response.usage),
    }
    if context_management is not None:
        message["context_management"] = context_management
    return message


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------


def sse_bytes(events: Iterable[SSEEvent]) -> bytes:
    """`event: NAME` / `data: JSON` frames for each event, ready for the wire."""
    frames: list[bytes] = []
    for name, data in events:
        try:
            payload = c.compact_json(data).encode()
        except UnicodeEncodeError:
            # A lone surrogate from upstream cannot be UTF-8; escaped JSON still carries it.
            payload = json.dumps(data, separators=(",", ":")).encode()
        frames.append(b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n")
    return b"".join(frames)


@attrs.define(slots=True)
class _OpenBlock:
    upstream_index: int  # the decoder's index
    index: int  # the client's index (contiguous from 0)
    kind: c.BlockKind


class AnthropicStreamEncoder:
    """Canonical stream events in, Anthropic SSE events out (sans-IO, one per response).

    Whatever order events arrive in, the output keeps Anthropic's grammar: message_start
    first, then blocks numbered 0, 1, 2... one at a time, each started and stopped once,
    deltas only of the open block's kind, then message_delta and message_stop. Events that
    would break it (a delta for a closed block, anything after the end) are dropped.
    """

    def __init__(
        self,
        *,
        message_id: str,
        model: str,
        context_management: dict[str, Any] | None = None,
    ) -> None:
        self._id = message_id
        self._model = model
        self._context_management = context_management
        self._usage = c.Usage()
        self._started = False
        self._finished = False
        self._next_index = 0
        self._open: _OpenBlock | None = None

    @property
    def finished(self) -> bool:
        return self._finished

    def start(self) -> list[SSEEvent]:
        """message_start, if it has not gone out yet (else nothing)."""
        if self._started or self._finished:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(self._usage),
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def ping(self) -> list[SSEEvent]:
        if self._finished:
            return []
        return [("ping", {"type": "ping"})]

    def error(self, err: errors.GatewayError) -> list[SSEEvent]:
        """The terminal error event; the stream says nothing after it.

        Nothing at all once message_stop went out: the client already has a whole message.
        """
        if self._finished:
            return []
        self._finished = True
        return [("error", errors.render_anthropic(err))]

    def encode(self, event: c.StreamEvent) -> list[SSEEvent]:
        if self._finished:
            return []
        if isinstance(event, c.UsageUpdate):
            self._usage = event.usage
            return []
        if isinstance(event, c.ToolSignature):
            return []  # kept by the web layer; Anthropic clients have no field for it
        out = self.start()
        if isinstance(event, c.BlockStart):
            out += self._block_start(event)
        elif isinstance(event, c.BlockStop):
            if self._open is not None and self._open.upstream_index == event.index:
                out += self._close()
        elif isinstance(event, c.MessageEnd):
            out += self._close()
            self._usage = event.usage
            self._finished = True
            delta: dict[str, Any] = {
                "type": "message_delta",
                "delta": {
                    "stop_reason": event.stop_reason,
                    "stop_sequence": event.stop_sequence,
                },
                "usage": {
                    "input_tokens": event.usage.input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": event.usage.cache_read_input_tokens,
                    "output_tokens": event.usage.output_tokens,
                },
            }
            if self._context_management is not None:
                delta["context_management"] = self._context_management
            out.append(("message_delta", delta))
            out.append(("message_stop", {"type": "message_stop"}))
        else:
            out += self._delta(event)
        return out

    def _block_start(self, event: c.BlockStart) -> list[SSEEvent]:
        out = self._close()
        block: dict[str, Any]
        if event.kind == "text":
            block = {"type": "text", "text": ""}
        elif event.kind == "thinking":
            block = {"type": "thinking", "thinking": "", "signature": ""}
        elif event.kind == "redacted_thinking":
            block = {"type": "redacted_thinking", "data": event.data or ""}
        else:
            block = {
                "type": "tool_use",
                "id": event.tool_id or "",
                "name": event.tool_name or "",
                "input": {},
            }
        self._open = _OpenBlock(event.index, self._next_index, event.kind)
        self._next_index += 1
        out.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": self._open.index, "content_block": block},
            )
        )
        return out

    def _close(self) -> list[SSEEvent]:
        if self._open is None:
            return []
        index = self._open.index
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _delta(
        self, event: c.TextDelta | c.ThinkingDelta | c.SignatureDelta | c.ToolInputDelta
    ) -> list[SSEEvent]:
        block = self._open
        if block is None or block.upstream_index != event.index:
            return []
        delta: dict[str, Any]
        if isinstance(event, c.TextDelta) and block.kind == "text":
            delta = {"type": "text_delta", "text": event.text}
        elif isinstance(event, c.ThinkingDelta) and block.kind == "thinking":
            delta = {"type": "thinking_delta", "thinking": event.thinking}
        elif isinstance(event, c.SignatureDelta) and block.kind == "thinking":
            delta = {"type": "signature_delta", "signature": event.signature}
        elif isinstance(event, c.ToolInputDelta) and block.kind == "tool_use":
            delta = {"type": "input_json_delta", "partial_json": event.partial_json}
        else:
            return []
        return [
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": block.index, "delta": delta},
            )
        ]
