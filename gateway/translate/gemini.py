"""Gemini API bodies to canonical requests, and canonical answers back (pure).

`parse_generate_request` validates a `models/{model}:generateContent` body (the Gemini
API's `GenerateContentRequest`, in camelCase or snake_case as protobuf JSON allows) and
builds the canonical request; every problem is an `errors.InvalidRequest` naming the field.
`render_response` builds a whole `GenerateContentResponse` from a collected answer, and
`GeminiStreamEncoder` turns canonical stream events into the chunks of
`streamGenerateContent`. Choices the format leaves open:

* Contents map onto turns one to one: `user` (and the legacy `function`) turns hold text,
  `inlineData` and `functionResponse` parts; `model` turns hold thoughts, text and
  `functionCall` parts. A function call without an `id` gets one made from its position,
  so the same history always yields the same ids; a response is paired with its call by
  `id`, else by name, in order.
* A `functionResponse.response` of one string field (`output`, `result`, `content`) is
  that string for the model; `{"error": ...}` is a failed call; anything else is its JSON.
* `thinkingConfig`: `includeThoughts` or a positive `thinkingBudget` or a `thinkingLevel`
  turns thinking on (the level becomes the effort); a budget of 0 turns it off. Thoughts
  are shown only with `includeThoughts`. Thought signatures (on thought parts and on
  function calls) go to the client tagged with the family that minted them, as base64
  (the field is bytes in the API: the SDKs decode it, and may send it back in the URL-safe
  alphabet), and come back the same way, so the upstream sees its own signatures again; an
  untagged one (from Google itself) is passed on as it is.
* Built-in tools (Google Search, code execution, URL context, retrieval, ...) are refused
  with a 400 naming them: this upstream runs only declared functions for its accounts.
  So are `fileData` parts (the upstream fetches no URIs), `cachedContent`, a
  `candidateCount` above 1 and response modalities other than text.
* Accepted with no effect: `presencePenalty`, `frequencyPenalty`, `seed`, `labels`,
  `mediaResolution`, `responseLogprobs`/`logprobs` (no log probabilities are returned),
  `toolConfig.retrievalConfig`, a declaration's `response` schema and `behavior`.
  `safetySettings` are checked for shape and passed to Gemini models (Claude has none).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from gateway.translate import canonical as c
from gateway.translate.cloudcode import untag_signature
from gateway.translate.fields import expect_list as _list
from gateway.translate.fields import expect_object as _object
from gateway.translate.fields import expect_string as _string
from gateway.translate.fields import fail as _fail
from gateway.translate.models import ModelInfo
from gateway.translate.openai import DEFAULT_MAX_TOKENS, MAX_STOP_SEQUENCES

__all__ = [
    "GeminiRequest",
    "GeminiStreamEncoder",
    "finish_reason",
    "parse_count_tokens_request",
    "parse_generate_request",
    "render_model",
    "render_response",
    "render_usage",
    "unwrap_signature",
    "wrap_signature",
]

JSONDict = dict[str, Any]

# Gemini's rule for function names (Claude's is narrower, without '.' and ':').
FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
_BUILTIN_TOOLS = {
    "googleSearch": "Google Search",
    "googleSearchRetrieval": "Google Search retrieval",
    "codeExecution": "code execution",
    "urlContext": "URL context",
    "retrieval": "retrieval",
    "computerUse": "computer use",
    "fileSearch": "file search",
    "googleMaps": "Google Maps",
    "enterpriseWebSearch": "enterprise web search",
    "mcpServers": "MCP servers",
}
_LEVELS: Mapping[str, c.Effort] = {
    "minimal": "low", "low": "low", "medium": "medium", "high": "high",
}
_UNSPECIFIED_LEVEL = "thinking_level_unspecified"
_MODES = frozenset({"AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED"})
_SINGLE_FIELDS = ("output", "result", "content")


@attrs.frozen(slots=True)
class GeminiRequest:
    chat: c.ChatRequest
    include_thoughts: bool = False  # the client asked to see thought parts


# ---------------------------------------------------------------------------------------------
# Field access and errors
# ---------------------------------------------------------------------------------------------




def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _get(obj: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """A field by its camelCase name, or its snake_case spelling (protobuf JSON takes both,
    but not both at once). Only a missing or null field takes `default`: a wrong value of
    another type is the caller's to refuse."""
    snake = _snake(name)
    if snake != name and name in obj and snake in obj:
        _fail(name, f"is given twice, as {name} and as {snake}")
    value = obj.get(name)
    value = obj.get(snake) if value is None else value
    return default if value is None else value


def wrap_signature(signature: str) -> str:
    """A tagged signature as the base64 a bytes field holds (an untagged one is the
    upstream's own base64 already)."""
    if untag_signature(signature)[0] is None:
        return signature
    return base64.b64encode(signature.encode("utf-8")).decode("ascii")


def unwrap_signature(value: str) -> str:
    """What `wrap_signature` made, back (either base64 alphabet); else `value` itself."""
    try:
        text = _b64decode(value).decode("utf-8")
    except (binascii.Error, ValueError):
        return value
    family, _ = untag_signature(text)
    return text if family is not None else value


def _b64decode(data: str) -> bytes:
    # protobuf JSON takes both base64 alphabets, padded or not
    return base64.b64decode(data.replace("-", "+").replace("_", "/") + "=" * (-len(data) % 4),
                            validate=True)








def _optional_int(obj: Mapping[str, Any], name: str, path: str, low: int) -> int | None:
    value = _get(obj, name)
    if value is None:
        return None
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,12}", value):
        value = int(value)  # protobuf JSON writes int64 as a string
    if type(value) is not int or value < low:
        _fail(f"{path}.{name}", f"must be an integer >= {low}")
    return value


def _optional_number(obj: Mapping[str, Any], name: str, path: str, high: float) -> float | None:
    value = _get(obj, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        0 <= value <= high
    ):
        _fail(f"{path}.{name}", f"must be a number between 0 and {high:g}")
    return float(value)


# ---------------------------------------------------------------------------------------------
# Request side
# ---------------------------------------------------------------------------------------------


def parse_generate_request(body: Any, *, model: str, stream: bool) -> GeminiRequest:
    """A validated generateContent body for `model` (the name in the path)."""
    body = _object(body, "")
    if _get(body, "cachedContent") is not None:
        _fail("cachedContent", "cached contents are not supported by this gateway; send "
                               "the contents with each request")
    contents = _get(body, "contents")
    if contents is None:
        _fail("contents", "is required")
    messages = _Contents().parse(_list(contents, "contents"))
    if not messages:
        _fail("contents", "must hold at least one content with parts")
    system = _system(_get(body, "systemInstruction"))
    tools = _tools(_get(body, "tools"))
    generation = _get(body, "generationConfig")
    generation = {} if generation is None else _object(generation, "generationConfig")
    thinking, effort, include = _thinking(_get(generation, "thinkingConfig"))
    chat = c.ChatRequest(
        model=model,
        messages=tuple(messages),
        max_tokens=_optional_int(generation, "maxOutputTokens", "generationConfig", 1)
        or DEFAULT_MAX_TOKENS,
        system=system,
        temperature=_optional_number(generation, "temperature", "generationConfig", 2),
        top_p=_optional_number(generation, "topP", "generationConfig", 1),
        top_k=_optional_int(generation, "topK", "generationConfig", 1),
        stop_sequences=_stop_sequences(_get(generation, "stopSequences")),
        tools=tools,
        tool_choice=_tool_choice(_get(body, "toolConfig"), tools),
        thinking=thinking,
        effort=effort,
        response_format=_response_format(generation),
        safety_settings=_safety_settings(_get(body, "safetySettings")),
        stream=stream,
    )
    _refuse_generation(generation)
    return GeminiRequest(chat, include_thoughts=include)


def parse_count_tokens_request(body: Any, *, model: str) -> c.ChatRequest:
    """A countTokens body: `contents` (with optional tools and system instruction), or a
    whole `generateContentRequest`."""
    body = _object(body, "")
    inner = _get(body, "generateContentRequest")
    if inner is not None:
        return parse_generate_request(_object(inner, "generateContentRequest"), model=model,
                                      stream=False).chat
    return parse_generate_request(body, model=model, stream=False).chat


def _refuse_generation(generation: Mapping[str, Any]) -> None:
    count = _optional_int(generation, "candidateCount", "generationConfig", 1)
    if count is not None and count > 1:
        _fail("generationConfig.candidateCount", "only 1 candidate per request is supported")
    modalities = _get(generation, "responseModalities")
    if modalities is not None:
        names = _list(modalities, "generationConfig.responseModalities")
        other = [m for m in names if str(m).upper() != "TEXT"]
        if other:
            _fail("generationConfig.responseModalities",
                  f"only TEXT output is supported, not {other[0]!s:.20}")


def _system(value: Any) -> tuple[c.TextBlock, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (c.TextBlock(value),) if value else ()
    content = _object(value, "systemInstruction")
    blocks = []
    for i, part in enumerate(_list(_get(content, "parts", []), "systemInstruction.parts")):
        part = _object(part, f"systemInstruction.parts[{i}]")
        text = _get(part, "text")
        if not isinstance(text, str):
            _fail(f"systemInstruction.parts[{i}]", "a system instruction holds text parts only")
        blocks.append(c.TextBlock(text))
    return tuple(blocks)


_DATA_FIELDS = ("text", "inlineData", "functionCall", "functionResponse", "fileData",
                "executableCode", "codeExecutionResult")


def _one_kind(part: Mapping[str, Any], path: str) -> None:
    present = [name for name in _DATA_FIELDS if _get(part, name) is not None]
    if len(present) > 1:
        _fail(path, f"a part holds one of text, inlineData, functionCall or functionResponse, "
                    f"not {' and '.join(present)}")


class _Contents:
    """The turns of a conversation, with the ids that pair calls and responses."""

    def __init__(self) -> None:
        self.unanswered: list[tuple[str, str]] = []  # (id, name) of the last model turn's calls

    def parse(self, contents: list[Any]) -> list[c.Message]:
        messages: list[c.Message] = []
        for i, raw in enumerate(contents):
            path = f"contents[{i}]"
            content = _object(raw, path)
            role = _get(content, "role", "user")
            if role not in ("user", "model", "function"):
                _fail(f"{path}.role", f"must be user or model, not {str(role)[:20]!r}")
            parts = _list(_get(content, "parts", []), f"{path}.parts")
            if role == "model":
                blocks = self._model(parts, i, path)
                self.unanswered = [(b.id, b.name) for b in blocks
                                   if isinstance(b, c.ToolUseBlock)]
                ids = [call_id for call_id, _ in self.unanswered]
                if len(set(ids)) != len(ids):
                    twice = next(x for x in ids if ids.count(x) > 1)
                    _fail(f"{path}.parts", f"two function calls share the id {twice[:64]!r}")
            else:
                calls = len(self.unanswered)
                blocks = self._user(parts, path)
                if self.unanswered and calls:
                    call_id, name = self.unanswered[0]
                    named = "" if call_id.startswith("call_") else f" (id {call_id[:64]!r})"
                    _fail(path, f"answers {calls - len(self.unanswered)} of the {calls} "
                                f"function calls of the model turn before it: {name[:64]!r}"
                                f"{named} has no functionResponse")
                self.unanswered = []
            if blocks:
                messages.append(c.Message("assistant" if role == "model" else "user",
                                          tuple(blocks)))
        return messages

    def _model(self, parts: list[Any], turn: int, path: str) -> list[c.ContentBlock]:
        blocks: list[c.ContentBlock] = []
        thought: list[str] | None = None  # the open thought's text, until signed or ended
        for j, raw in enumerate(parts):
            where = f"{path}.parts[{j}]"
            part = _object(raw, where)
            _one_kind(part, where)
            if _get(part, "functionResponse") is not None:
                _fail(where, "function responses belong in user turns, after the model turn "
                             "that called them")
            signature = _get(part, "thoughtSignature")
            if signature is not None:
                signature = _string(signature, f"{where}.thoughtSignature") or None
                signature = unwrap_signature(signature) if signature else None
            call = _get(part, "functionCall")
            if part.get("thought") is True:
                text = _get(part, "text")
                text = "" if text is None else _string(text, f"{where}.text")
                if thought is None:
                    thought = []
                    blocks.append(c.ThinkingBlock(""))
                thought.append(text)
                blocks[-1] = c.ThinkingBlock("".join(thought), signature)
                if signature:
                    thought = None  # one signature per thought: the next one starts anew
                continue
            thought = None
            if call is not None:
                blocks.append(self._call(_object(call, f"{where}.functionCall"), turn, j,
                                         f"{where}.functionCall", signature))
            elif _get(part, "text") is not None:
                text = _string(_get(part, "text"), f"{where}.text")
                if text:
                    blocks.append(c.TextBlock(text))
                elif signature and blocks and isinstance(blocks[-1], c.ThinkingBlock) and (
                        not blocks[-1].signature):
                    # Gemini may sign a thought on an empty part after it
                    blocks[-1] = attrs.evolve(blocks[-1], signature=signature)
            else:
                blocks.append(_media(part, where))
        return blocks

    def _call(self, call: Mapping[str, Any], turn: int, index: int, path: str,
              signature: str | None) -> c.ToolUseBlock:
        name = _string(_get(call, "name"), f"{path}.name")
        call_id = _get(call, "id")
        call_id = _string(call_id, f"{path}.id") if call_id else f"call_{turn}_{index}"
        args = _get(call, "args")
        args = {} if args is None else _object(args, f"{path}.args")
        return c.ToolUseBlock(call_id, name, dict(args), signature=signature)

    def _user(self, parts: list[Any], path: str) -> list[c.ContentBlock]:
        blocks: list[c.ContentBlock] = []
        for j, raw in enumerate(parts):
            where = f"{path}.parts[{j}]"
            part = _object(raw, where)
            _one_kind(part, where)
            response = _get(part, "functionResponse")
            if response is not None:
                blocks.append(self._response(_object(response, f"{where}.functionResponse"),
                                             f"{where}.functionResponse"))
            elif _get(part, "functionCall") is not None or part.get("thought") is True:
                _fail(where, "function calls and thoughts belong in model turns")
            elif _get(part, "text") is not None:
                text = _string(_get(part, "text"), f"{where}.text")
                if text:
                    blocks.append(c.TextBlock(text))
            else:
                blocks.append(_media(part, where))
        return blocks

    def _response(self, response: Mapping[str, Any], path: str) -> c.ToolResultBlock:
        name = _string(_get(response, "name"), f"{path}.name")
        wanted = _get(response, "id")
        match = next((pair for pair in self.unanswered if wanted and pair[0] == wanted), None)
        if match is None:
            match = next((pair for pair in self.unanswered if pair[1] == name), None)
        if match is None:
            _fail(path, f"answers no functionCall named {name[:64]!r} in the model turn "
                        "just before it")
        self.unanswered.remove(match)
        payload = _get(response, "response")
        payload = {} if payload is None else _object(payload, f"{path}.response")
        text, failed = _response_text(payload)
        content: list[c.TextBlock | c.ImageBlock] = [c.TextBlock(text)] if text else []
        for k, raw in enumerate(_list(_get(response, "parts", []), f"{path}.parts")):
            block = _media(_object(raw, f"{path}.parts[{k}]"), f"{path}.parts[{k}]")
            if not isinstance(block, c.ImageBlock):
                _fail(f"{path}.parts[{k}]", "a function response carries images only; put "
                                            "other data in its response object")
            content.append(block)
        return c.ToolResultBlock(match[0], tuple(content), is_error=failed, name=name)


def _response_text(payload: Mapping[str, Any]) -> tuple[str, bool]:
    if set(payload) == {"error"}:
        error = payload["error"]
        return (error if isinstance(error, str) else _json(error)), True
    if len(payload) == 1:
        key, value = next(iter(payload.items()))
        if key in _SINGLE_FIELDS and isinstance(value, str):
            return value, False
    return (_json(payload) if payload else ""), False


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _media(part: Mapping[str, Any], path: str) -> c.ImageBlock | c.DocumentBlock:
    if _get(part, "fileData") is not None:
        _fail(f"{path}.fileData", "file URIs are not fetched by this upstream; send the "
                                  "bytes as inlineData")
    inline = _get(part, "inlineData")
    if inline is None:
        known = ", ".join(sorted(k for k in part if k not in ("thoughtSignature",
                                                                "thought_signature")))
        _fail(path, f"unsupported part ({known or 'empty'}); parts hold text, inlineData, "
                    "functionCall or functionResponse")
    inline = _object(inline, f"{path}.inlineData")
    mime = _string(_get(inline, "mimeType"), f"{path}.inlineData.mimeType").strip().lower()
    data = _string(_get(inline, "data"), f"{path}.inlineData.data")
    try:
        raw = _b64decode(data)  # the upstream is sent the standard alphabet
    except (binascii.Error, ValueError):
        _fail(f"{path}.inlineData.data", "is not valid base64")
    encoded = base64.b64encode(raw).decode("ascii")
    if mime.startswith("image/"):
        return c.ImageBlock(mime, encoded)
    return c.DocumentBlock(mime, encoded)


def _tools(value: Any) -> tuple[c.Tool, ...]:
    if value is None:
        return ()
    tools: list[c.Tool] = []
    for i, raw in enumerate(_list(value, "tools")):
        path = f"tools[{i}]"
        tool = _object(raw, path)
        for key in tool:
            camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)
            if camel in _BUILTIN_TOOLS:
                _fail(f"{path}.{key}", f"Gemini's built-in {_BUILTIN_TOOLS[camel]} tool is not "
                                       "available through this gateway: the upstream runs only "
                                       "declared functions; declare a function instead")
            if camel != "functionDeclarations":
                _fail(f"{path}.{key}"[:80], "unknown tool kind; tools hold functionDeclarations")
        declarations = _get(tool, "functionDeclarations", [])
        for j, declaration in enumerate(_list(declarations, f"{path}.functionDeclarations")):
            tools.append(_declaration(declaration, f"{path}.functionDeclarations[{j}]"))
    seen: set[str] = set()
    for tool_ in tools:
        if tool_.name in seen:
            _fail("tools", f"function {tool_.name!r} is declared twice")
        seen.add(tool_.name)
    return tuple(tools)


def _declaration(raw: Any, path: str) -> c.Tool:
    declaration = _object(raw, path)
    name = _string(_get(declaration, "name"), f"{path}.name")
    if not FUNCTION_NAME.fullmatch(name):
        _fail(f"{path}.name", "must start with a letter or underscore and hold only letters, "
                              "digits, '_', '.', ':' or '-' (at most 64)")
    description = _get(declaration, "description")
    description = "" if description is None else _string(description, f"{path}.description")
    json_schema = _get(declaration, "parametersJsonSchema")
    schema = _get(declaration, "parameters")
    if json_schema is not None:
        parameters: Mapping[str, Any] = _object(json_schema, f"{path}.parametersJsonSchema")
    elif schema is not None:
        parameters = _json_schema(_object(schema, f"{path}.parameters"))
    else:
        parameters = {"type": "object", "properties": {}}
    return c.Tool(name, description, parameters)


def _json_schema(schema: Any) -> Any:
    """Gemini's Schema (OpenAPI types in capitals) as the JSON Schema the core speaks."""
    if isinstance(schema, list):
        return [_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            if value.upper() != "TYPE_UNSPECIFIED":
                out["type"] = value.lower()
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {name: _json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "anyOf", "any_of"):
            out["anyOf" if key == "any_of" else key] = _json_schema(value)
        else:
            out[key] = value
    return out


def _tool_choice(value: Any, tools: Sequence[c.Tool]) -> c.ToolChoice | None:
    if value is None:
        return None
    config = _get(_object(value, "toolConfig"), "functionCallingConfig")
    if config is None:
        return None
    config = _object(config, "toolConfig.functionCallingConfig")
    mode = _get(config, "mode", "AUTO")
    if not isinstance(mode, str) or mode.upper() not in _MODES:
        _fail("toolConfig.functionCallingConfig.mode", "must be AUTO, ANY, NONE or VALIDATED")
    mode = mode.upper()
    if mode == "NONE":
        return c.ToolChoice("none")
    if mode != "ANY":
        return c.ToolChoice("auto")
    if not tools:
        _fail("toolConfig.functionCallingConfig.mode", "ANY needs declared functions")
    allowed = _get(config, "allowedFunctionNames", [])
    names = _list(allowed, "toolConfig.functionCallingConfig.allowedFunctionNames")
    declared = {t.name for t in tools}
    for name in names:
        if name not in declared:
            _fail("toolConfig.functionCallingConfig.allowedFunctionNames",
                  f"{str(name)[:64]!r} is not a declared function")
    # One name forces that function; several can only force "some function" upstream.
    return c.ToolChoice("tool", names[0]) if len(names) == 1 else c.ToolChoice("any")


def _thinking(value: Any) -> tuple[c.Thinking | None, c.Effort | None, bool]:
    if value is None:
        return None, None, False
    config = _object(value, "generationConfig.thinkingConfig")
    path = "generationConfig.thinkingConfig"
    include = _get(config, "includeThoughts")
    if include is not None and not isinstance(include, bool):
        _fail(f"{path}.includeThoughts", "must be a boolean")
    budget = _optional_int(config, "thinkingBudget", path, -1)
    level = _get(config, "thinkingLevel")
    effort: c.Effort | None = None
    if level is not None:
        if not isinstance(level, str) or level.lower() not in (*_LEVELS, _UNSPECIFIED_LEVEL):
            _fail(f"{path}.thinkingLevel", "must be MINIMAL, LOW, MEDIUM or HIGH")
        effort = _LEVELS.get(level.lower())
    if budget == 0 and effort is None:
        return c.Thinking(enabled=False), None, False
    if include or (budget is not None and budget > 0) or effort is not None:
        chosen = budget if budget is not None and budget > 0 else None
        return c.Thinking(enabled=True, budget_tokens=chosen), effort, bool(include)
    return None, None, False


def _stop_sequences(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = _list(value, "generationConfig.stopSequences")
    if not all(isinstance(s, str) for s in items):
        _fail("generationConfig.stopSequences", "must be a list of strings")
    if len(items) > MAX_STOP_SEQUENCES:
        _fail("generationConfig.stopSequences", f"accepts at most {MAX_STOP_SEQUENCES}")
    return tuple(dict.fromkeys(s for s in items if s))


def _response_format(generation: Mapping[str, Any]) -> c.ResponseFormat | None:
    mime = _get(generation, "responseMimeType")
    json_schema = _get(generation, "responseJsonSchema")
    schema = _get(generation, "responseSchema")
    if mime is not None:
        mime = _string(mime, "generationConfig.responseMimeType").strip().lower()
        if mime not in ("text/plain", "application/json", ""):
            _fail("generationConfig.responseMimeType",
                  "must be text/plain or application/json")
    if json_schema is not None:
        return c.ResponseFormat("json_schema", dict(_object(
            json_schema, "generationConfig.responseJsonSchema")))
    if schema is not None:
        return c.ResponseFormat("json_schema", _json_schema(_object(
            schema, "generationConfig.responseSchema")))
    return c.ResponseFormat("json") if mime == "application/json" else None


def _safety_settings(value: Any) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    settings = []
    for i, raw in enumerate(_list(value, "safetySettings")):
        setting = _object(raw, f"safetySettings[{i}]")
        category = _get(setting, "category")
        threshold = _get(setting, "threshold")
        if not isinstance(category, str) or not isinstance(threshold, str):
            _fail(f"safetySettings[{i}]", "needs a category and a threshold (strings)")
        entry = {"category": category, "threshold": threshold}
        method = _get(setting, "method")
        if isinstance(method, str):
            entry["method"] = method
        settings.append(entry)
    return tuple(settings)


# ---------------------------------------------------------------------------------------------
# Response side
# ---------------------------------------------------------------------------------------------


def finish_reason(stop_reason: c.StopReason) -> str:
    if stop_reason == "max_tokens":
        return "MAX_TOKENS"
    if stop_reason == "refusal":
        return "SAFETY"
    return "STOP"  # Gemini ends a turn of function calls with STOP too


def render_usage(usage: c.Usage) -> JSONDict:
    prompt = usage.input_tokens + usage.cache_read_input_tokens
    candidates = max(0, usage.output_tokens - usage.thinking_tokens)
    out: JSONDict = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + usage.output_tokens,
    }
    if usage.thinking_tokens:
        out["thoughtsTokenCount"] = usage.thinking_tokens
    if usage.cache_read_input_tokens:
        out["cachedContentTokenCount"] = usage.cache_read_input_tokens
    return out


def _call_part(tool_id: str, name: str, args: Any, signature: str | None) -> JSONDict:
    part: JSONDict = {"functionCall": {"id": tool_id, "name": name, "args": args}}
    if signature:
        part["thoughtSignature"] = wrap_signature(signature)
    return part


def _thought_part(text: str, signature: str | None) -> JSONDict:
    part: JSONDict = {"text": text, "thought": True}
    if signature:
        part["thoughtSignature"] = wrap_signature(signature)
    return part


def _candidate(parts: list[JSONDict], finish: str | None) -> JSONDict:
    candidate: JSONDict = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    return candidate


def render_response(
    response: c.ChatResponse, *, response_id: str, model_version: str, include_thoughts: bool
) -> JSONDict:
    parts: list[JSONDict] = []
    for block in response.content:
        if isinstance(block, c.ThinkingBlock):
            if include_thoughts:
                parts.append(_thought_part(block.thinking, block.signature))
        elif isinstance(block, c.TextBlock):
            parts.append({"text": block.text})
        elif isinstance(block, c.ToolUseBlock):
            parts.append(_call_part(block.id, block.name, dict(block.input), block.signature))
    if not parts:
        parts.append({"text": ""})
    return {
        "candidates": [_candidate(parts, finish_reason(response.stop_reason))],
        "usageMetadata": render_usage(response.usage),
        "modelVersion": model_version,
        "responseId": response_id,
    }


class GeminiStreamEncoder:
    """Canonical events to `streamGenerateContent` chunks: one chunk per batch of events
    that says something (parts, usage with a finish reason), like the API's own."""

    def __init__(self, *, response_id: str, model_version: str, include_thoughts: bool) -> None:
        self._id = response_id
        self._model = model_version
        self._include = include_thoughts
        self._kinds: dict[int, c.BlockKind] = {}
        self._tools: dict[int, tuple[str, str, list[str]]] = {}
        self._usage: c.Usage | None = None

    def encode(self, events: Sequence[c.StreamEvent]) -> list[JSONDict]:
        parts: list[JSONDict] = []
        finish: str | None = None
        for event in events:
            if isinstance(event, c.BlockStart):
                self._kinds[event.index] = event.kind
                if event.kind == "tool_use":
                    self._tools[event.index] = (event.tool_id or "", event.tool_name or "", [])
            elif isinstance(event, c.TextDelta):
                if parts and set(parts[-1]) == {"text"}:
                    parts[-1]["text"] += event.text
                else:
                    parts.append({"text": event.text})
            elif isinstance(event, c.ThinkingDelta) and self._include:
                last = parts[-1] if parts else None
                if last is not None and last.get("thought") and "thoughtSignature" not in last:
                    last["text"] += event.thinking
                else:
                    parts.append(_thought_part(event.thinking, None))
            elif isinstance(event, c.SignatureDelta) and self._include:
                last = parts[-1] if parts else None
                if last is not None and last.get("thought") and "thoughtSignature" not in last:
                    last["thoughtSignature"] = wrap_signature(event.signature)
                else:
                    parts.append(_thought_part("", event.signature))
            elif isinstance(event, c.ToolInputDelta) and event.index in self._tools:
                self._tools[event.index][2].append(event.partial_json)
            elif isinstance(event, c.BlockStop) and event.index in self._tools:
                tool_id, name, pieces = self._tools.pop(event.index)
                joined = "".join(pieces)
                parts.append(_call_part(tool_id, name, json.loads(joined) if joined else {},
                                        None))
            elif isinstance(event, c.ToolSignature):
                for part in parts:
                    call = part.get("functionCall")
                    if call is not None and call["id"] == event.tool_id:
                        part["thoughtSignature"] = wrap_signature(event.signature)
            elif isinstance(event, c.UsageUpdate):
                self._usage = event.usage
            elif isinstance(event, c.MessageEnd):
                self._usage = event.usage
                finish = finish_reason(event.stop_reason)
        if not parts and finish is None:
            return []
        if not parts:
            parts.append({"text": ""})  # the API's own last chunk looks like this
        chunk: JSONDict = {"candidates": [_candidate(parts, finish)]}
        if self._usage is not None:
            chunk["usageMetadata"] = render_usage(self._usage)
        chunk["modelVersion"] = self._model
        chunk["responseId"] = self._id
        return [chunk]


def render_model(info: ModelInfo, name: str | None = None) -> JSONDict:
    """One entry of `GET /v1beta/models` (`name` for an alias of `info`)."""
    model_id = name or info.id
    entry: JSONDict = {
        "name": f"models/{model_id}",
        "baseModelId": info.id,
        "version": "001",
        "displayName": info.display_name,
        "description": f"{info.display_name} through the gateway's account pool",
        "inputTokenLimit": info.context_window,
        "outputTokenLimit": info.max_output_tokens,
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent",
                                       "countTokens"],
        "temperature": 1.0,
        "maxTemperature": 2.0 if info.family != "claude" else 1.0,
        "topP": 0.95,
        "topK": 64,
    }
    if info.thinking:
        entry["thinking"] = True
    return entry
