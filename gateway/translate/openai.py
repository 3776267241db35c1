"""OpenAI Chat Completions bodies to canonical requests, and canonical answers back (pure).

`parse_chat_request` validates a `/v1/chat/completions` body and builds the `ChatRequest`;
every problem with the body, whatever its JSON shape, is an `errors.InvalidRequest` naming
the offending parameter. `render_completion` turns a collected `ChatResponse` into a
`chat.completion` object, and `OpenAIStreamEncoder` turns canonical stream events into
`chat.completion.chunk` objects one event at a time. Choices the OpenAI format leaves open:

* `system` and `developer` messages before the first user or assistant message become the
  canonical system prompt, in order; later ones stay where they are, as mid-conversation
  system messages (the Cloud Code translator places them in the conversation, marked as
  the harness's), so a late instruction neither jumps to the top nor breaks the prompt
  cache of everything before it.
* `tool` messages become tool results in a user turn; consecutive tool messages share one
  turn, and a user message right after them joins it. The tool's name is taken from the
  assistant `tool_calls` entry with the same id (left unset when the history lacks it, so a
  client that trims old turns is not refused here).
* The legacy function-calling API (role `function`, `functions`, `function_call`) is refused
  with a 400 that points to `tools`: mapping it would mean inventing call ids, and answers
  would come back as `tool_calls`, which legacy clients do not read.
* Without `max_completion_tokens` / `max_tokens` the request asks for `DEFAULT_MAX_TOKENS`,
  which the Cloud Code translator caps to each model's own limit: like OpenAI, the default is
  "as long as the model allows".
* `reasoning_effort` maps to a thinking budget through `REASONING_BUDGETS` ("none" turns
  thinking off). No level exceeds 24576, the largest budget every served Gemini model
  accepts; the Cloud Code translator fits the budget under the output limit.
* `http(s)` image URLs are used only when the web layer fetched them (see
  `image_urls_to_fetch`); otherwise they are refused, since fetching arbitrary URLs is off by
  default. `data:` URLs are decoded here; every other scheme is refused.
* Accepted and ignored: `seed`, `user`, `store`, `metadata`, `frequency_penalty`,
  `presence_penalty`, `logit_bias`, `service_tier`, `top_logprobs` and `logprobs: false`.
  Refused: `n` other than 1, `logprobs: true`, audio and file content parts.
* `top_k` (not an OpenAI parameter, but sent by many OpenAI-compatible clients) is accepted.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from gateway import errors
from gateway.translate import canonical as c

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "REASONING_BUDGETS",
    "OpenAIStreamEncoder",
    "finish_reason",
    "image_block",
    "image_urls_to_fetch",
    "number",
    "optional_bool",
    "output_format",
    "parse_arguments",
    "parse_chat_request",
    "positive_int",
    "render_completion",
    "render_usage",
    "stream_include_usage",
    "thinking_for_effort",
]

# The largest output cap of any served model; the Cloud Code translator lowers it per model.
DEFAULT_MAX_TOKENS = 65_535

REASONING_BUDGETS: Mapping[str, int] = {
    "minimal": 1024,  # Claude's floor
    "low": 4096,
    "medium": 8192,
    "high": 24576,
    "xhigh": 24576,
    "max": 24576,
}

MAX_STOP_SEQUENCES = 16

TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_IMAGE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/heic", "image/heif"}
)
_TOOL_CHOICE_MODES: Mapping[str, Literal["auto", "none", "any"]] = {
    "auto": "auto",
    "none": "none",
    "required": "any",
}
REMOTE_REFUSED = (
    "remote image URLs are not fetched by this gateway: send the image as a data: URL "
    "(or enable images.allow_remote_fetch)"
)
_LEGACY_FUNCTIONS = (
    "the legacy function-calling API is not supported; use tools, tool_calls and tool messages"
)

JSONDict = dict[str, Any]


def _invalid(message: str, param: str | None) -> errors.InvalidRequest:
    return errors.InvalidRequest(message, param=param)


# ---------------------------------------------------------------------------------------------
# Request side
# ---------------------------------------------------------------------------------------------


def is_http_url(url: str) -> bool:
    scheme = url.split(":", 1)[0].strip().lower() if ":" in url else ""
    return scheme in ("http", "https")


def _image_url_of(part: Mapping[str, Any]) -> Any:
    # OpenAI sends {"image_url": {"url": ...}}; some clients send the URL string directly.
    image = part.get("image_url")
    return image.get("url") if isinstance(image, Mapping) else image


def image_urls_to_fetch(body: Any) -> list[str]:
    """The http(s) image URLs in user messages, in order, without repeats.

    Never raises: a malformed body yields what can be found, and `parse_chat_request`
    reports the problems.
    """
    if not isinstance(body, Mapping):
        return []
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    urls: list[str] = []
    for message in messages:
        if not isinstance(message, Mapping) or message.get("role") != "user":
            continue
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "image_url":
                url = _image_url_of(part)
                if isinstance(url, str) and is_http_url(url):
                    urls.append(url.strip())
    return list(dict.fromkeys(urls))


def stream_include_usage(body: Any) -> bool:
    """`stream_options.include_usage`, False when absent or malformed (never raises)."""
    if not isinstance(body, Mapping):
        return False
    options = body.get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


def parse_chat_request(
    body: Any, *, fetched_images: Mapping[str, tuple[str, str]] | None = None
) -> c.ChatRequest:
    """The canonical request for a Chat Completions body, or raise InvalidRequest.

    `fetched_images` maps http(s) URLs (as returned by `image_urls_to_fetch`) to the
    (media type, base64 data) the web layer fetched for them.
    """
    if not isinstance(body, Mapping):
        raise _invalid("request body must be a JSON object", None)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _invalid("model is required and must be a non-empty string", "model")
    _refuse_unsupported(body)

    tools = _tools(body.get("tools"))
    system, messages = _Messages(fetched_images or {}).parse(body.get("messages"))
    return c.ChatRequest(
        model=model,
        messages=messages,
        max_tokens=_max_tokens(body),
        system=system,
        temperature=number(body, "temperature", 0.0, 2.0),
        top_p=number(body, "top_p", 0.0, 1.0),
        top_k=positive_int(body, "top_k"),
        stop_sequences=_stop(body.get("stop")),
        tools=tools,
        tool_choice=_tool_choice(body, tools),
        thinking=thinking_for_effort(body.get("reasoning_effort")),
        response_format=output_format(body.get("response_format"), "response_format",
                                      schema_under="json_schema"),
        stream=optional_bool(body, "stream") or False,
    )


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise _invalid("n must be 1: this gateway returns one choice per request", "n")
    if optional_bool(body, "logprobs"):
        raise _invalid("logprobs are not supported by this gateway", "logprobs")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise _invalid(_LEGACY_FUNCTIONS, legacy)
    optional_bool(body, "parallel_tool_calls")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, Mapping):
            raise _invalid("stream_options must be an object", "stream_options")
        flag = options.get("include_usage")
        if flag is not None and not isinstance(flag, bool):
            raise _invalid(
                "stream_options.include_usage must be a boolean", "stream_options.include_usage"
            )


def optional_bool(body: Mapping[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise _invalid(f"{key} must be a boolean", key)
    return value


def number(body: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{key} must be a number", key)
    # Compare before converting: a huge JSON integer does not fit in a float.
    if not (low <= value <= high) or (isinstance(value, float) and not math.isfinite(value)):
        raise _invalid(f"{key} must be between {low:g} and {high:g}", key)
    return float(value)


def positive_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise _invalid(f"{key} must be a positive integer", key)
    return value


def _max_tokens(body: Mapping[str, Any]) -> int:
    preferred = positive_int(body, "max_completion_tokens")
    legacy = positive_int(body, "max_tokens")
    if preferred is not None:
        return preferred
    return legacy if legacy is not None else DEFAULT_MAX_TOKENS


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _invalid("stop must be a string or a list of strings", "stop")
    if len(items) > MAX_STOP_SEQUENCES:
        raise _invalid(f"stop accepts at most {MAX_STOP_SEQUENCES} sequences", "stop")
    # An empty stop sequence would end every answer at once; OpenAI ignores it too.
    return tuple(dict.fromkeys(s for s in items if s))


def thinking_for_effort(effort: Any, param: str = "reasoning_effort") -> c.Thinking | None:
    """OpenAI's reasoning effort as canonical thinking (None when not given)."""
    if effort is None:
        return None
    if effort == "none":
        return c.Thinking(enabled=False)
    if isinstance(effort, str) and effort in REASONING_BUDGETS:
        return c.Thinking(enabled=True, budget_tokens=REASONING_BUDGETS[effort])
    choices = ", ".join(["none", *REASONING_BUDGETS])
    raise _invalid(f"{param} must be one of {choices}", param)


def output_format(
    value: Any, param: str, *, schema_under: str | None = None
) -> c.ResponseFormat | None:
    """An output format: Chat's `response_format` (its schema in an object under
    `schema_under`, and optional) or Responses' `text.format` (the schema beside the type,
    and required)."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return c.ResponseFormat("json")
    if kind == "json_schema":
        assert isinstance(value, Mapping)
        if schema_under is None:
            return _json_schema_format(value, param, schema_required=True)
        spec = value.get(schema_under)
        where = f"{param}.{schema_under}"
        if not isinstance(spec, Mapping):
            raise _invalid(f"{where} must be an object", where)
        return _json_schema_format(spec, where, schema_required=False)
    raise _invalid(f"{param}.type must be text, json_object or json_schema", f"{param}.type")


def _json_schema_format(
    spec: Mapping[str, Any], param: str, *, schema_required: bool
) -> c.ResponseFormat:
    """A `json_schema` output format (Chat's `response_format.json_schema`, Responses'
    `text.format`): its name and strict flag checked, its schema (optional in Chat, where
    leaving it out asks for any JSON object)."""
    name = spec.get("name")
    if name is not None and (not isinstance(name, str) or not TOOL_NAME.fullmatch(name)):
        raise _invalid(f"{param}.name must be 1-64 characters of a-z, A-Z, 0-9, _ or -",
                       f"{param}.name")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _invalid(f"{param}.strict must be a boolean", f"{param}.strict")
    schema = spec.get("schema")
    if schema is None and not schema_required:
        return c.ResponseFormat("json")
    if not isinstance(schema, Mapping):
        raise _invalid(f"{param}.schema is required: a JSON Schema object", f"{param}.schema")
    return c.ResponseFormat("json_schema", dict(schema))


def _tools(value: Any) -> tuple[c.Tool, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _invalid("tools must be a list", "tools")
    tools: list[c.Tool] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        param = f"tools[{i}]"
        if not isinstance(item, Mapping):
            raise _invalid(f"{param} must be an object", param)
        if item.get("type", "function") != "function":
            raise _invalid(f"{param}.type: only function tools are supported", f"{param}.type")
        function = item.get("function")
        if not isinstance(function, Mapping):
            raise _invalid(f"{param}.function must be an object", f"{param}.function")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise _invalid(
                f"{param}.function.name must be 1-64 characters of a-z, A-Z, 0-9, _ or -",
                f"{param}.function.name",
            )
        if name in seen:
            raise _invalid(f"{param}.function.name repeats an earlier tool's name", param)
        seen.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise _invalid(
                f"{param}.function.description must be a string", f"{param}.function.description"
            )
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        elif not isinstance(parameters, Mapping):
            raise _invalid(
                f"{param}.function.parameters must be a JSON Schema object",
                f"{param}.function.parameters",
            )
        tools.append(c.Tool(name, description or "", dict(parameters)))
    return tuple(tools)


def _tool_choice(body: Mapping[str, Any], tools: tuple[c.Tool, ...]) -> c.ToolChoice | None:
    value = body.get("tool_choice")
    choice: c.ToolChoice | None
    if value is None:
        choice = None
    elif value in ("auto", "none", "required"):
        if value == "required" and not tools:
            raise _invalid("tool_choice 'required' needs tools", "tool_choice")
        choice = c.ToolChoice(_TOOL_CHOICE_MODES[value])
    elif isinstance(value, Mapping) and value.get("type") == "function":
        function = value.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str):
            raise _invalid(
                "tool_choice.function.name must be a string", "tool_choice.function.name"
            )
        if name not in {tool.name for tool in tools}:
            raise _invalid(
                "tool_choice.function.name must name one of the tools", "tool_choice.function.name"
            )
        choice = c.ToolChoice("tool", name=name)
    else:
        raise _invalid(
            "tool_choice must be 'auto', 'none', 'required' or "
            '{"type": "function", "function": {"name": ...}}',
            "tool_choice",
        )
    if body.get("parallel_tool_calls") is False and tools:
        choice = attrs.evolve(choice or c.ToolChoice(), disable_parallel=True)
    return choice


class _Messages:
    """One pass over `messages`, keeping what the mapping needs to remember between them."""

    def __init__(self, fetched_images: Mapping[str, tuple[str, str]]) -> None:
        self._fetched = fetched_images
        self._system: list[c.TextBlock] = []
        self._messages: list[c.Message] = []
        self._tool_names: dict[str, str] = {}
        self._tool_turn = False  # the last message holds tool results and may take more

    def parse(self, value: Any) -> tuple[tuple[c.TextBlock, ...], tuple[c.Message, ...]]:
        if not isinstance(value, list) or not value:
            raise _invalid("messages is required and must be a non-empty list", "messages")
        for i, message in enumerate(value):
            param = f"messages[{i}]"
            if not isinstance(message, Mapping):
                raise _invalid(f"{param} must be an object", param)
            role = message.get("role")
            if role in ("system", "developer"):
                texts = self._text_parts(message.get("content"), f"{param}.content")
                if not self._messages:
                    self._system.extend(texts)
                elif any(t.text for t in texts):
                    self._messages.append(c.Message("system", tuple(texts)))
                    self._tool_turn = False
            elif role == "user":
                self._user(message, param)
            elif role == "assistant":
                self._assistant(message, param)
            elif role == "tool":
                self._tool(message, param)
            elif role == "function":
                raise _invalid(_LEGACY_FUNCTIONS, f"{param}.role")
            else:
                raise _invalid(
                    f"{param}.role must be system, developer, user, assistant or tool",
                    f"{param}.role",
                )
        if not self._messages:
            raise _invalid(
                "messages must contain at least one user or assistant message", "messages"
            )
        return tuple(self._system), tuple(self._messages)

    def _append_user(self, blocks: list[c.ContentBlock], *, tool_result: bool) -> None:
        if self._tool_turn:
            last = self._messages[-1]
            self._messages[-1] = c.Message("user", (*last.content, *blocks))
        else:
            self._messages.append(c.Message("user", tuple(blocks)))
            self._tool_turn = tool_result

    def _user(self, message: Mapping[str, Any], param: str) -> None:
        content = message.get("content")
        blocks: list[c.ContentBlock] = []
        if isinstance(content, str):
            blocks.append(c.TextBlock(content))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                blocks.append(self._user_part(part, f"{param}.content[{j}]"))
        else:
            raise _invalid(
                f"{param}.content must be a string or a list of parts", f"{param}.content"
            )
        self._append_user(blocks, tool_result=False)

    def _user_part(self, part: Any, param: str) -> c.TextBlock | c.ImageBlock:
        if not isinstance(part, Mapping):
            raise _invalid(f"{param} must be an object", param)
        kind = part.get("type")
        if kind == "text":
            return self._text_part(part, param)
        if kind == "image_url":
            return image_block(_image_url_of(part), f"{param}.image_url.url", self._fetched)
        if kind in ("input_audio", "file"):
            raise _invalid(f"{param}: {kind} content parts are not supported", f"{param}.type")
        raise _invalid(f"{param}.type must be text or image_url", f"{param}.type")

    @staticmethod
    def _text_part(part: Mapping[str, Any], param: str) -> c.TextBlock:
        text = part.get("text")
        if not isinstance(text, str):
            raise _invalid(f"{param}.text must be a string", f"{param}.text")
        return c.TextBlock(text)

    def _text_parts(self, content: Any, param: str) -> list[c.TextBlock]:
        if isinstance(content, str):
            return [c.TextBlock(content)]
        if not isinstance(content, list):
            raise _invalid(f"{param} must be a string or a list of text parts", param)
        blocks: list[c.TextBlock] = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise _invalid(f"{param}[{j}] must be a text part", f"{param}[{j}]")
            blocks.append(self._text_part(part, f"{param}[{j}]"))
        return blocks

    def _assistant(self, message: Mapping[str, Any], param: str) -> None:
        self._tool_turn = False
        blocks: list[c.ContentBlock] = []
        reasoning = message.get("reasoning_content")
        if reasoning is not None and not isinstance(reasoning, str):
            raise _invalid(
                f"{param}.reasoning_content must be a string", f"{param}.reasoning_content"
            )
        if reasoning:
            # OpenAI clients cannot carry a signature; the Cloud Code translator decides
            # what an unsigned thought is worth.
            blocks.append(c.ThinkingBlock(reasoning))
        content = message.get("content")
        if isinstance(content, str):
            blocks.append(c.TextBlock(content))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                part_param = f"{param}.content[{j}]"
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind == "text" and isinstance(part, Mapping):
                    blocks.append(self._text_part(part, part_param))
                elif kind != "refusal":
                    raise _invalid(f"{part_param} must be a text or refusal part", part_param)
        elif content is not None:
            raise _invalid(
                f"{param}.content must be a string, a list of parts or null", f"{param}.content"
            )
        if message.get("function_call") is not None:
            raise _invalid(_LEGACY_FUNCTIONS, f"{param}.function_call")
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for j, call in enumerate(calls):
                blocks.append(self._tool_call(call, f"{param}.tool_calls[{j}]"))
        elif calls is not None:
            raise _invalid(f"{param}.tool_calls must be a list", f"{param}.tool_calls")
        self._messages.append(c.Message("assistant", tuple(blocks)))

    def _tool_call(self, call: Any, param: str) -> c.ToolUseBlock:
        if not isinstance(call, Mapping):
            raise _invalid(f"{param} must be an object", param)
        if call.get("type", "function") != "function":
            raise _invalid(f"{param}.type: only function tool calls are supported", f"{param}.type")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise _invalid(f"{param}.id must be a non-empty string", f"{param}.id")
        function = call.get("function")
        if not isinstance(function, Mapping):
            raise _invalid(f"{param}.function must be an object", f"{param}.function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid(
                f"{param}.function.name must be a non-empty string", f"{param}.function.name"
            )
        parsed = parse_arguments(function.get("arguments"), f"{param}.function.arguments")
        self._tool_names[call_id] = name
        return c.ToolUseBlock(id=call_id, name=name, input=parsed)

    def _tool(self, message: Mapping[str, Any], param: str) -> None:
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise _invalid(
                f"{param}.tool_call_id must be a non-empty string", f"{param}.tool_call_id"
            )
        content = self._text_parts(message.get("content"), f"{param}.content")
        result = c.ToolResultBlock(
            tool_use_id=call_id, content=tuple(content), name=self._tool_names.get(call_id)
        )
        self._append_user([result], tool_result=True)


def image_block(url: Any, param: str, fetched: Mapping[str, tuple[str, str]]) -> c.ImageBlock:
    """An image given as a data: URL, or as an http(s) URL the web layer fetched."""
    if not isinstance(url, str):
        raise _invalid(f"{param} must be a string", param)
    url = url.strip()
    if is_http_url(url):
        image = fetched.get(url)
        if image is None:
            raise _invalid(REMOTE_REFUSED, param)
        return c.ImageBlock(media_type=image[0], data=image[1])
    if url[:5].lower() != "data:":
        raise _invalid(f"{param} must be a data: URL or an http(s) URL", param)
    header, comma, data = url[5:].partition(",")
    fields = [f.strip().lower() for f in header.split(";")]
    media_type = "image/jpeg" if fields[0] == "image/jpg" else fields[0]
    if not comma or "base64" not in fields[1:]:
        raise _invalid(f"{param} must be a base64 data: URL", param)
    if media_type not in _IMAGE_TYPES:
        raise _invalid(
            f"{param}: unsupported image type; use one of {', '.join(sorted(_IMAGE_TYPES))}",
            param,
        )
    data = "".join(data.split())
    try:
        valid = bool(data) and bool(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise _invalid(f"{param} does not hold valid base64 image data", param)
    return c.ImageBlock(media_type=media_type, data=data)


def parse_arguments(arguments: Any, param: str) -> dict[str, Any]:
    """A tool call's arguments, a JSON string encoding an object (empty: no arguments)."""
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if not isinstance(arguments, str):
        raise _invalid(f"{param} must be a JSON string", param)
    try:
        parsed = json.loads(arguments)
    except (ValueError, RecursionError):
        raise _invalid(f"{param} is not valid JSON", param) from None
    if not isinstance(parsed, dict):
        raise _invalid(f"{param} must encode a JSON object", param)
    return parsed


# ---------------------------------------------------------------------------------------------
# Response side
# ---------------------------------------------------------------------------------------------

_FINISH_REASONS: Mapping[c.StopReason, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: c.StopReason) -> str:
    return _FINISH_REASONS[stop_reason]


def render_usage(usage: c.Usage) -> JSONDict:
    prompt = usage.input_tokens + usage.cache_read_input_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.thinking_tokens},
    }


def _arguments(arguments: Mapping[str, Any]) -> str:
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


def render_completion(
    response: c.ChatResponse, *, completion_id: str, created: int, model: str
) -> JSONDict:
    """The `chat.completion` object for a whole answer."""
    text = "".join(b.text for b in response.content if isinstance(b, c.TextBlock))
    reasoning = "".join(b.thinking for b in response.content if isinstance(b, c.ThinkingBlock))
    calls = [
        {
            "id": block.id,
            "type": "function",
            "function": {"name": block.name, "arguments": _arguments(block.input)},
        }
        for block in response.content
        if isinstance(block, c.ToolUseBlock)
    ]
    message: JSONDict = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = reasoning
    message["refusal"] = None
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason(response.stop_reason),
                "logprobs": None,
            }
        ],
        "usage": render_usage(response.usage),
        "system_fingerprint": None,
    }


class OpenAIStreamEncoder:
    """Canonical stream events in, `chat.completion.chunk` objects out (sans-IO).

    The first call yields the role chunk; `MessageEnd` yields the chunk with the finish
    reason and, when usage was asked for, a last chunk with no choices and the usage (every
    other chunk then carries `"usage": null`, as OpenAI's do). Events after `MessageEnd`
    are ignored. Signatures and redacted thinking have no OpenAI form and yield nothing.
    """

    def __init__(
        self, *, completion_id: str, created: int, model: str, include_usage: bool = False
    ) -> None:
        self._id = completion_id
        self._created = created
        self._model = model
        self._include_usage = include_usage
        self._started = False
        self._finished = False
        self._tool_calls: dict[int, int] = {}  # canonical block index -> tool call index

    def encode(self, event: c.StreamEvent) -> list[JSONDict]:
        if self._finished:
            return []
        chunks: list[JSONDict] = []
        if not self._started:
            self._started = True
            chunks.append(self._chunk({"role": "assistant", "content": ""}))
        if isinstance(event, c.TextDelta):
            if event.text:
                chunks.append(self._chunk({"content": event.text}))
        elif isinstance(event, c.ThinkingDelta):
            if event.thinking:
                chunks.append(self._chunk({"reasoning_content": event.thinking}))
        elif isinstance(event, c.BlockStart) and event.kind == "tool_use":
            k = self._tool_calls[event.index] = len(self._tool_calls)
            call = {
                "index": k,
                "id": event.tool_id or "",
                "type": "function",
                "function": {"name": event.tool_name or "", "arguments": ""},
            }
            chunks.append(self._chunk({"tool_calls": [call]}))
        elif isinstance(event, c.ToolInputDelta):
            k_or_none = self._tool_calls.get(event.index)
            if event.partial_json and k_or_none is not None:
                call = {"index": k_or_none, "function": {"arguments": event.partial_json}}
                chunks.append(self._chunk({"tool_calls": [call]}))
        elif isinstance(event, c.MessageEnd):
            self._finished = True
            chunks.append(self._chunk({}, finish_reason(event.stop_reason)))
            if self._include_usage:
                usage_chunk = self._envelope([])
                usage_chunk["usage"] = render_usage(event.usage)
                chunks.append(usage_chunk)
        return chunks

    def done(self) -> str:
        """The stream's terminator: `encode_event` writes it as `data: [DONE]`."""
        return "[DONE]"

    def error_chunk(self, err: errors.GatewayError) -> JSONDict:
        """An error after the stream has started, in OpenAI's error body shape."""
        return errors.render_openai(err)

    def _envelope(self, choices: list[JSONDict]) -> JSONDict:
        chunk: JSONDict = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
            "system_fingerprint": None,
        }
        if self._include_usage:
            chunk["usage"] = None
        return chunk

    def _chunk(self, delta: JSONDict, finish: str | None = None) -> JSONDict:
        return self._envelope(
            [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        )
