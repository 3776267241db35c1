"""OpenAI Responses API bodies to canonical requests, and canonical answers back (pure).

`parse_responses_request` validates a `/v1/responses` body (with the items of the responses
it continues, when it names a `previous_response_id`) and builds the canonical request plus
what the response object repeats; every problem is an `errors.InvalidRequest` naming the
parameter. `ResponsesStreamEncoder` turns canonical stream events into the typed event
sequence (`response.created` ... `response.completed`), and `render_response` builds the
whole response object of a collected answer from the same item builders. Choices the
format leaves open:

* Items become turns: `message` items by role; `reasoning`, assistant `message`,
  `function_call` and `custom_tool_call` items next to each other are one assistant turn;
  `function_call_output` / `custom_tool_call_output` items are tool results in a user turn,
  which user messages next to them join. `system` and `developer` messages before the
  first user or assistant item join `instructions` as the system prompt; later ones stay
  where they are, as mid-conversation system messages.
* `reasoning.effort` maps to a thinking budget as Chat Completions' `reasoning_effort`
  does; `reasoning.summary` without an effort asks for the model's default thinking.
* Thinking crosses turns inside `reasoning` items: the thought text, its upstream signature
  (or a redacted thought's data) are sealed into `encrypted_content` by the web layer's
  `seal` (authenticated encryption: opaque to the client, and one the client altered, or
  another provider issued, fails to open and is dropped rather than sent upstream). The
  text is shown as the item's summary only when `reasoning.summary` asks for one.
* Namespaced tools (`type: namespace`) are declared upstream as `<namespace>__<name>`, and
  calls to them come back with `name` and `namespace` apart again. Custom (freeform) tools
  are declared as a function taking one string `input` (a grammar, when given, is put in
  its description); calls come back as `custom_tool_call` items with that string.
* Built-in tools the upstream cannot run (web search, file search, computer use, code
  interpreter, image generation, MCP, hosted shells) and items only they produce are
  refused with a 400 naming them; so are `background`, `conversation` and `prompt`.
* Accepted and repeated in the response, with no effect: `truncation`, `max_tool_calls`,
  `service_tier`, `user`, `safety_identifier`, `text.verbosity`, `stream_options`,
  `prompt_cache_retention`, `context_management`, `client_metadata` and `include` values
  other than `reasoning.encrypted_content` (which is honoured). Refused: `top_logprobs`
  above 0 and `include: ["message.output_text.logprobs"]`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import attrs

from gateway import errors
from gateway.translate import canonical as c
from gateway.translate.openai import (
    DEFAULT_MAX_TOKENS,
    TOOL_NAME,
    image_block,
    is_http_url,
    number,
    optional_bool,
    output_format,
    parse_arguments,
    positive_int,
    thinking_for_effort,
)

__all__ = [
    "ResponsesRequest",
    "ResponsesStreamEncoder",
    "ToolName",
    "image_urls_to_fetch",
    "parse_responses_request",
    "public_item",
    "render_response",
    "render_usage",
]

JSONDict = dict[str, Any]
# Seals a thought for the client to carry; opens one it brought back (None: not ours, or
# altered). Given by the web layer, which holds the key.
Seal = Callable[[JSONDict], str]
Unseal = Callable[[str], JSONDict | None]
# A new item id with the given prefix ("msg", "rs", "fc", ...).
NewId = Callable[[str], str]

ENCRYPTED_REASONING = "reasoning.encrypted_content"
NAMESPACE_SEPARATOR = "__"
_MAX_METADATA = 16
_SUMMARIES = ("auto", "concise", "detailed")
# Built-in tool types: run by OpenAI's servers (or, for the shells and apply_patch, by a
# client loop whose items this gateway does not translate).
_BUILTIN_TOOLS = frozenset({
    "web_search", "web_search_preview", "web_search_2025_08_26",
    "web_search_preview_2025_03_11", "file_search", "computer", "computer_use",
    "computer_use_preview", "code_interpreter", "image_generation", "mcp", "local_shell",
    "shell", "apply_patch", "tool_search", "programmatic_tool_calling",
})
# Item types only built-in tools produce or consume.
_BUILTIN_ITEMS = frozenset({
    "file_search_call", "computer_call", "computer_call_output", "web_search_call",
    "image_generation_call", "code_interpreter_call", "local_shell_call",
    "local_shell_call_output", "shell_call", "shell_call_output", "apply_patch_call",
    "apply_patch_call_output", "mcp_list_tools", "mcp_approval_request",
    "mcp_approval_response", "mcp_call", "tool_search_call", "tool_search_output",
    "program", "program_output",
})
_FILE_TYPES = {"pdf": "application/pdf", "txt": "text/plain", "md": "text/plain"}


def _invalid(message: str, param: str | None) -> errors.InvalidRequest:
    return errors.InvalidRequest(message, param=param)


@attrs.frozen(slots=True)
class ToolName:
    """How the client named a tool the upstream knows by its flat name."""

    name: str
    namespace: str | None = None
    custom: bool = False


@attrs.frozen(slots=True)
class ResponsesRequest:
    """A parsed `/v1/responses` body: the canonical request and what the dialect keeps."""

    chat: c.ChatRequest
    tool_names: Mapping[str, ToolName]  # flat (upstream) name -> the client's
    input_items: tuple[JSONDict, ...]  # this request's input as items with ids
    store: bool
    include_encrypted: bool  # include: ["reasoning.encrypted_content"]
    show_summary: bool  # reasoning.summary asked: thought text is shown
    previous_response_id: str | None
    prompt_cache_key: str | None
    echo: Mapping[str, Any]  # the request fields the response object repeats


# ---------------------------------------------------------------------------------------------
# Request side
# ---------------------------------------------------------------------------------------------


def flat_name(name: str, namespace: str | None) -> str:
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


def image_urls_to_fetch(body: Any) -> list[str]:
    """The http(s) image URLs in the input's user content, in order, without repeats.

    Never raises: a malformed body yields what can be found, and the parser reports it."""
    items = body.get("input") if isinstance(body, Mapping) else None
    urls: list[str] = []
    if not isinstance(items, list):
        return urls
    for item in items:
        content = item.get("content") if isinstance(item, Mapping) else None
        output = item.get("output") if isinstance(item, Mapping) else None
        for parts in (content, output):
            if not isinstance(parts, list):
                continue
            for part in parts:
                if isinstance(part, Mapping) and part.get("type") == "input_image":
                    url = part.get("image_url")
                    if isinstance(url, str) and is_http_url(url) and url not in urls:
                        urls.append(url.strip())
    return urls


def parse_responses_request(
    body: Any,
    *,
    history: Sequence[Mapping[str, Any]] = (),
    fetched_images: Mapping[str, tuple[str, str]] | None = None,
    unseal: Unseal,
    new_id: NewId,
) -> ResponsesRequest:
    """The canonical request for a Responses body, or raise InvalidRequest.

    `history` holds the items (inputs and outputs, oldest first) of the responses this one
    continues; `fetched_images` maps http(s) image URLs to the (media type, base64 data)
    the web layer fetched for them.
    """
    if not isinstance(body, Mapping):
        raise _invalid("request body must be a JSON object", None)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _invalid("model is required and must be a non-empty string", "model")
    _refuse_unsupported(body)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _invalid("instructions must be a string", "instructions")

    tools, names, declared = _tools(body.get("tools"))
    choice, tools = _tool_choice(body, tools, names)
    items = _input_items(body.get("input"), new_id)
    if not items and not history:
        raise _invalid("input is required: a string or a list of items", "input")
    conversation = _Conversation(fetched_images or {}, unseal)
    if instructions:
        conversation.system.append(c.TextBlock(instructions))
    for i, item in enumerate(history):
        conversation.add(item, f"previous_response_id (item {i})")
    for i, item in enumerate(items):
        conversation.add(item, f"input[{i}]")
    if not conversation.messages:
        raise _invalid("input must hold at least one user or assistant item", "input")
    conversation.check_answered()

    reasoning = _object(body.get("reasoning"), "reasoning")
    effort = reasoning.get("effort")
    summary = reasoning.get("summary", reasoning.get("generate_summary"))
    if summary is not None and summary not in _SUMMARIES:
        raise _invalid(f"reasoning.summary must be one of {', '.join(_SUMMARIES)}",
                       "reasoning.summary")
    text = _object(body.get("text"), "text")
    store = optional_bool(body, "store")
    include = _include(body.get("include"))
    previous = _optional_string(body, "previous_response_id")
    cache_key = _optional_string(body, "prompt_cache_key")
    temperature = number(body, "temperature", 0.0, 2.0)
    top_p = number(body, "top_p", 0.0, 1.0)
    max_output = positive_int(body, "max_output_tokens")
    chat = c.ChatRequest(
        model=model,
        messages=tuple(conversation.messages),
        max_tokens=max_output or DEFAULT_MAX_TOKENS,
        system=tuple(conversation.system),
        temperature=temperature,
        top_p=top_p,
        tools=tools,
        tool_choice=choice,
        thinking=_thinking(effort, summary),
        response_format=output_format(text.get("format"), "text.format"),
        stream=optional_bool(body, "stream") or False,
    )
    echo = {
        "background": False,
        "instructions": instructions,
        "max_output_tokens": max_output,
        "max_tool_calls": body.get("max_tool_calls") if type(body.get("max_tool_calls")) is int
        else None,
        "metadata": _metadata(body.get("metadata")),
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": previous,
        "prompt_cache_key": cache_key,
        "reasoning": {"effort": effort, "summary": summary},
        "safety_identifier": _optional_string(body, "safety_identifier"),
        "service_tier": "default",
        "store": store is not False,
        "temperature": 1.0 if temperature is None else temperature,
        "text": {"format": _format_echo(text.get("format")),
                 "verbosity": text.get("verbosity") if text.get("verbosity") in
                 ("low", "medium", "high") else "medium"},
        "tool_choice": body.get("tool_choice") if body.get("tool_choice") is not None
        else "auto",
        "tools": declared,
        "top_logprobs": 0,
        "top_p": 1.0 if top_p is None else top_p,
        "truncation": "auto" if body.get("truncation") == "auto" else "disabled",
        "user": _optional_string(body, "user"),
    }
    return ResponsesRequest(
        chat=chat,
        tool_names=names,
        input_items=tuple(items),
        store=store is not False,
        include_encrypted=ENCRYPTED_REASONING in include,
        show_summary=summary is not None,
        previous_response_id=previous,
        prompt_cache_key=cache_key,
        echo=echo,
    )


def _thinking(effort: Any, summary: Any) -> c.Thinking | None:
    """Thinking as asked by reasoning.effort; a client that asks for a summary without an
    effort wants the model's own amount of thinking (OpenAI's reasoning models always
    think), so a Claude "-thinking" model then thinks too."""
    thinking = thinking_for_effort(effort, "reasoning.effort")
    if thinking is None and summary is not None:
        return c.Thinking(enabled=True)
    return thinking


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    if optional_bool(body, "background"):
        raise _invalid("background responses are not supported by this gateway; "
                       "send the request without background", "background")
    if body.get("conversation") is not None:
        raise _invalid("the Conversations API is not supported by this gateway; continue a "
                       "conversation with previous_response_id or send its items",
                       "conversation")
    if body.get("prompt") is not None:
        raise _invalid("stored prompt templates are not supported by this gateway; send "
                       "instructions and input instead", "prompt")
    top = body.get("top_logprobs")
    if top is not None and (type(top) is not int or top < 0 or top > 20):
        raise _invalid("top_logprobs must be an integer from 0 to 20", "top_logprobs")
    if top:
        raise _invalid("logprobs are not supported by this gateway", "top_logprobs")
    optional_bool(body, "parallel_tool_calls")
    truncation = body.get("truncation")
    if truncation is not None and truncation not in ("auto", "disabled"):
        raise _invalid("truncation must be auto or disabled", "truncation")


def _object(value: Any, param: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _invalid(f"{param} must be an object", param)
    return value


def _optional_string(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"{key} must be a string", key)
    return value or None


def _include(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid("include must be a list of strings", "include")
    if "message.output_text.logprobs" in value:
        raise _invalid("logprobs are not supported by this gateway", "include")
    unknown = [v for v in value if v not in _INCLUDABLE]
    if unknown:
        raise _invalid(f"include: {unknown[0][:60]!r} is not a value this API knows; it takes "
                       f"{', '.join(sorted(_INCLUDABLE))}", "include")
    return frozenset(value)


# What `include` may ask for: the encrypted reasoning (honoured) and what only built-in tools
# or stored files produce (nothing here does, so asking changes nothing).
_INCLUDABLE = frozenset({
    ENCRYPTED_REASONING, "message.input_image.image_url", "file_search_call.results",
    "web_search_call.results", "web_search_call.action.sources",
    "computer_call_output.output.image_url", "code_interpreter_call.outputs",
})


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _invalid("metadata must be an object of strings", "metadata")
    if len(value) > _MAX_METADATA:
        raise _invalid(f"metadata holds at most {_MAX_METADATA} keys", "metadata")
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > 64 or len(item) > 512:
            raise _invalid("metadata keys are strings of at most 64 characters, values "
                           "strings of at most 512", f"metadata.{key}"[:80])
    return dict(value)


def _format_echo(value: Any) -> JSONDict:
    if isinstance(value, Mapping) and value.get("type") == "json_schema":
        return {"type": "json_schema", "name": str(value.get("name") or "response"),
                "schema": value.get("schema") or {}, "strict": value.get("strict"),
                "description": value.get("description")}
    if isinstance(value, Mapping) and value.get("type") == "json_object":
        return {"type": "json_object"}
    return {"type": "text"}


# -- tools ------------------------------------------------------------------------------------


def _builtin_refusal(kind: str, param: str) -> errors.InvalidRequest:
    hint = (" (Codex: set web_search = \"disabled\" in its config.toml)"
            if kind.startswith("web_search") else "")
    return _invalid(
        f"{param}: the built-in {kind} tool is not available through this gateway (the "
        f"upstream cannot run it); leave it out of the request{hint}", f"{param}.type")


def _tools(value: Any) -> tuple[tuple[c.Tool, ...], dict[str, ToolName], list[Any]]:
    """The canonical tools, how the client named each, and the declarations as given."""
    if value is None:
        return (), {}, []
    if not isinstance(value, list):
        raise _invalid("tools must be a list", "tools")
    tools: list[c.Tool] = []
    names: dict[str, ToolName] = {}
    for i, item in enumerate(value):
        param = f"tools[{i}]"
        if not isinstance(item, Mapping):
            raise _invalid(f"{param} must be an object", param)
        kind = item.get("type")
        if kind in ("function", "custom"):
            tools.append(_tool(item, param, None, names))
        elif kind == "namespace":
            namespace = item.get("name")
            if not isinstance(namespace, str) or not TOOL_NAME.fullmatch(namespace):
                raise _invalid(f"{param}.name must be 1-64 characters of a-z, A-Z, 0-9, _ or -",
                               f"{param}.name")
            inner = item.get("tools")
            if not isinstance(inner, list):
                raise _invalid(f"{param}.tools must be a list", f"{param}.tools")
            for j, tool in enumerate(inner):
                where = f"{param}.tools[{j}]"
                if not isinstance(tool, Mapping) or tool.get("type") not in ("function",
                                                                             "custom"):
                    raise _invalid(f"{where} must be a function or custom tool", where)
                tools.append(_tool(tool, where, namespace, names))
        elif isinstance(kind, str) and kind in _BUILTIN_TOOLS:
            raise _builtin_refusal(kind, param)
        else:
            raise _invalid(f"{param}.type must be function, custom or namespace",
                           f"{param}.type")
    return tuple(tools), names, [_declared(item) for item in value]


def _declared(item: Mapping[str, Any]) -> JSONDict:
    """A tool as the response repeats it: as given, with the fields its type always has."""
    if item.get("type") == "function":
        return {"description": None, "parameters": None, "strict": None, **item}
    if item.get("type") == "namespace":
        return {"description": "", **item, "tools": [_declared(t) for t in item.get("tools", [])]}
    return dict(item)


def _tool(
    item: Mapping[str, Any], param: str, namespace: str | None, names: dict[str, ToolName]
) -> c.Tool:
    name = item.get("name")
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise _invalid(f"{param}.name must be 1-64 characters of a-z, A-Z, 0-9, _ or -",
                       f"{param}.name")
    flat = flat_name(name, namespace)
    if not TOOL_NAME.fullmatch(flat):
        raise _invalid(f"{param}.name: {flat} (namespace and name) is longer than the "
                       "upstream's 64 characters", f"{param}.name")
    if flat in names:
        raise _invalid(f"{param}.name repeats an earlier tool's name", f"{param}.name")
    description = item.get("description")
    if description is not None and not isinstance(description, str):
        raise _invalid(f"{param}.description must be a string", f"{param}.description")
    strict = item.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _invalid(f"{param}.strict must be a boolean", f"{param}.strict")
    custom = item.get("type") == "custom"
    names[flat] = ToolName(name, namespace, custom)
    if custom:
        return c.Tool(flat, description or "", _custom_schema(item.get("format"), param))
    parameters = item.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    elif not isinstance(parameters, Mapping):
        raise _invalid(f"{param}.parameters must be a JSON Schema object", f"{param}.parameters")
    return c.Tool(flat, description or "", dict(parameters))


def _custom_schema(value: Any, param: str) -> JSONDict:
    """A freeform tool as a function of one string: its grammar, if any, described."""
    about = "The tool's whole input, as free text."
    if value is not None:
        kind = value.get("type") if isinstance(value, Mapping) else None
        if kind == "grammar":
            assert isinstance(value, Mapping)
            definition = value.get("definition")
            syntax = value.get("syntax")
            if not isinstance(definition, str) or syntax not in ("lark", "regex"):
                raise _invalid(f"{param}.format: a grammar needs a syntax (lark or regex) "
                               "and a definition", f"{param}.format")
            about += f" It must match this {syntax} grammar:\n{definition}"
        elif kind != "text":
            raise _invalid(f"{param}.format.type must be text or grammar",
                           f"{param}.format.type")
    return {"type": "object", "properties": {"input": {"type": "string", "description": about}},
            "required": ["input"]}


def _find_tool(
    names: Mapping[str, ToolName], choice: Mapping[str, Any], *, custom: bool, param: str
) -> str | None:
    """The flat name of the tool a choice names: by namespace and name when it gives a
    namespace, else a top-level tool of that name first, then any."""
    name, namespace = choice.get("name"), choice.get("namespace")
    if namespace is not None:
        if not isinstance(namespace, str):
            raise _invalid(f"{param}.namespace must be a string", f"{param}.namespace")
        named = names.get(flat_name(str(name), namespace))
        return flat_name(str(name), namespace) if named and named.custom == custom else None
    for top_level_first in (True, False):
        for flat, named in names.items():
            if named.custom == custom and (named.namespace is None or not top_level_first) and (
                    named.name == name or flat == name):
                return flat
    return None


def _tool_choice(
    body: Mapping[str, Any], tools: tuple[c.Tool, ...], names: Mapping[str, ToolName]
) -> tuple[c.ToolChoice | None, tuple[c.Tool, ...]]:
    value = body.get("tool_choice")
    choice: c.ToolChoice | None = None
    kind = value.get("type") if isinstance(value, Mapping) else None
    if value is None or value == "auto":
        choice = None if value is None else c.ToolChoice("auto")
    elif value in ("none", "required"):
        if value == "required" and not tools:
            raise _invalid("tool_choice 'required' needs tools", "tool_choice")
        choice = c.ToolChoice("none" if value == "none" else "any")
    elif kind in ("function", "custom"):
        assert isinstance(value, Mapping)
        flat = _find_tool(names, value, custom=kind == "custom", param="tool_choice")
        if flat is None:
            raise _invalid(f"tool_choice.name must name one of the {kind} tools (in its "
                           "namespace, when it names one)", "tool_choice.name")
        choice = c.ToolChoice("tool", name=flat)
    elif kind == "allowed_tools":
        assert isinstance(value, Mapping)
        mode = value.get("mode", "auto")
        allowed = value.get("tools")
        if mode not in ("auto", "required") or not isinstance(allowed, list) or not allowed:
            raise _invalid("tool_choice.allowed_tools needs mode (auto or required) and a "
                           "non-empty list of tools", "tool_choice")
        keep: set[str] = set()
        for j, entry in enumerate(allowed):
            entry_kind = entry.get("type") if isinstance(entry, Mapping) else None
            flat = (_find_tool(names, entry, custom=entry_kind == "custom",
                               param=f"tool_choice.tools[{j}]")
                    if isinstance(entry, Mapping) and entry_kind in ("function", "custom")
                    else None)
            if flat is None:
                raise _invalid(f"tool_choice.tools[{j}] must name one of the function or "
                               "custom tools", f"tool_choice.tools[{j}]")
            keep.add(flat)
        tools = tuple(t for t in tools if t.name in keep)
        choice = c.ToolChoice("any" if mode == "required" else "auto")
    elif isinstance(kind, str) and (kind in _BUILTIN_TOOLS or kind.startswith("web_search")):
        raise _builtin_refusal(kind, "tool_choice")
    else:
        raise _invalid("tool_choice must be 'auto', 'none', 'required', a function or custom "
                       "tool, or allowed_tools", "tool_choice")
    if body.get("parallel_tool_calls") is False and tools:
        choice = attrs.evolve(choice or c.ToolChoice(), disable_parallel=True)
    return choice, tools


# -- input items ------------------------------------------------------------------------------


def _input_items(value: Any, new_id: NewId) -> list[JSONDict]:
    """The input as a list of items, each with an id (kept for previous_response_id and
    the input_items listing); plain string content stays as given."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"id": new_id("msg"), "type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": value}]}]
    if not isinstance(value, list):
        raise _invalid("input must be a string or a list of items", "input")
    items: list[JSONDict] = []
    prefixes = {"message": "msg", "function_call": "fc", "function_call_output": "fco",
                "custom_tool_call": "ctc", "custom_tool_call_output": "ctco", "reasoning": "rs"}
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise _invalid(f"input[{i}] must be an object", f"input[{i}]")
        kind = item.get("type") or ("message" if "role" in item else None)
        normal = {**item, "type": kind}
        if not isinstance(normal.get("id"), str) or not normal["id"]:
            normal["id"] = new_id(prefixes.get(str(kind), "item"))
        if kind in prefixes and kind != "reasoning":
            normal.setdefault("status", "completed")
        if kind == "message":
            normal["content"] = _listed_content(normal.get("content"), normal.get("role"))
        items.append(normal)
    return items


def _listed_content(content: Any, role: Any) -> Any:
    """A message's content in the form the API lists it: parts, each with its defaults (a
    string becomes one text part; what is not well formed is left for the parser to refuse)."""
    kind = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        content = [{"type": kind, "text": content}]
    if not isinstance(content, list):
        return content
    listed: list[Any] = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") == "input_image":
            part = {"detail": "auto", **part}
        elif isinstance(part, Mapping) and part.get("type") == "output_text":
            part = {"annotations": [], **part}
        listed.append(part)
    return listed


class _Conversation:
    """One pass over the items, merging them into canonical turns."""

    def __init__(self, fetched: Mapping[str, tuple[str, str]], unseal: Unseal) -> None:
        self.system: list[c.TextBlock] = []
        self.messages: list[c.Message] = []
        self._fetched = fetched
        self._unseal = unseal
        self._calls: dict[str, tuple[str, bool]] = {}  # call id -> (flat tool name, custom)
        self._answered: set[str] = set()

    def add(self, item: Mapping[str, Any], param: str) -> None:
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            self._message(item, param)
        elif kind == "function_call":
            self._call(item, param, custom=False)
        elif kind == "custom_tool_call":
            self._call(item, param, custom=True)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            self._output(item, param)
        elif kind == "reasoning":
            self._reasoning(item, param)
        elif kind == "item_reference":
            raise _invalid(f"{param}: item_reference is not supported by this gateway; send "
                           "the item itself, or continue with previous_response_id", param)
        elif isinstance(kind, str) and kind in _BUILTIN_ITEMS:
            raise _invalid(f"{param}: {kind} items belong to built-in tools this gateway "
                           "does not offer", f"{param}.type")
        else:
            raise _invalid(f"{param}.type must be message, function_call, "
                           "function_call_output, custom_tool_call, custom_tool_call_output "
                           "or reasoning", f"{param}.type")

    def check_answered(self) -> None:
        """Every call has its output (the model cannot go on from a call it made)."""
        waiting = [call_id for call_id in self._calls if call_id not in self._answered]
        if waiting:
            raise _invalid(f"No tool output found for function call {waiting[0][:64]}.",
                           "input")

    def _assistant(self, blocks: Sequence[c.ContentBlock]) -> None:
        if self.messages and self.messages[-1].role == "assistant":
            last = self.messages[-1]
            self.messages[-1] = c.Message("assistant", (*last.content, *blocks))
        else:
            self.messages.append(c.Message("assistant", tuple(blocks)))

    def _user(self, blocks: Sequence[c.ContentBlock]) -> None:
        if self.messages and self.messages[-1].role == "user":
            last = self.messages[-1]
            self.messages[-1] = c.Message("user", (*last.content, *blocks))
        else:
            self.messages.append(c.Message("user", tuple(blocks)))

    def _message(self, item: Mapping[str, Any], param: str) -> None:
        role = item.get("role")
        content = item.get("content")
        where = f"{param}.content"
        if role in ("system", "developer"):
            texts = self._texts(content, where)
            if not self.messages:
                self.system.extend(texts)
            elif any(t.text for t in texts):
                self.messages.append(c.Message("system", tuple(texts)))
        elif role == "user":
            self._user(self._user_content(content, where))
        elif role == "assistant":
            self._assistant(self._assistant_content(content, where))
        else:
            raise _invalid(f"{param}.role must be user, assistant, system or developer",
                           f"{param}.role")

    @staticmethod
    def _texts(content: Any, param: str) -> list[c.TextBlock]:
        if isinstance(content, str):
            return [c.TextBlock(content)]
        if not isinstance(content, list):
            raise _invalid(f"{param} must be a string or a list of input_text parts", param)
        texts: list[c.TextBlock] = []
        for j, part in enumerate(content):
            text = part.get("text") if isinstance(part, Mapping) else None
            if not isinstance(part, Mapping) or part.get("type") not in (
                "input_text", "output_text", "text"
            ) or not isinstance(text, str):
                raise _invalid(f"{param}[{j}] must be an input_text part", f"{param}[{j}]")
            texts.append(c.TextBlock(text))
        return texts

    def _user_content(self, content: Any, param: str) -> list[c.ContentBlock]:
        if isinstance(content, str):
            return [c.TextBlock(content)]
        if not isinstance(content, list):
            raise _invalid(f"{param} must be a string or a list of parts", param)
        return [self._part(part, f"{param}[{j}]") for j, part in enumerate(content)]

    def _part(self, part: Any, param: str) -> c.TextBlock | c.ImageBlock | c.DocumentBlock:
        if not isinstance(part, Mapping):
            raise _invalid(f"{param} must be an object", param)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise _invalid(f"{param}.text must be a string", f"{param}.text")
            return c.TextBlock(text)
        if kind == "input_image":
            if part.get("image_url") is None and part.get("file_id") is not None:
                raise _invalid(f"{param}.file_id: the Files API is not supported by this "
                               "gateway; send the image as a data: URL", f"{param}.file_id")
            return image_block(part.get("image_url"), f"{param}.image_url", self._fetched)
        if kind == "input_file":
            return _file(part, param)
        raise _invalid(f"{param}.type must be input_text, input_image or input_file",
                       f"{param}.type")

    @staticmethod
    def _assistant_content(content: Any, param: str) -> list[c.ContentBlock]:
        if isinstance(content, str):
            return [c.TextBlock(content)]
        if not isinstance(content, list):
            raise _invalid(f"{param} must be a string or a list of output_text parts", param)
        blocks: list[c.ContentBlock] = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            value = part.get("refusal" if kind == "refusal" else "text") if isinstance(
                part, Mapping) else None
            if kind not in ("output_text", "input_text", "text", "refusal") or not isinstance(
                value, str
            ):
                raise _invalid(f"{param}[{j}] must be an output_text or refusal part",
                               f"{param}[{j}]")
            blocks.append(c.TextBlock(value))
        return blocks

    def _call(self, item: Mapping[str, Any], param: str, *, custom: bool) -> None:
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise _invalid(f"{param}.call_id must be a non-empty string", f"{param}.call_id")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid(f"{param}.name must be a non-empty string", f"{param}.name")
        namespace = item.get("namespace")
        if namespace is not None and not isinstance(namespace, str):
            raise _invalid(f"{param}.namespace must be a string", f"{param}.namespace")
        flat = flat_name(name, namespace)
        if custom:
            raw = item.get("input")
            if not isinstance(raw, str):
                raise _invalid(f"{param}.input must be a string", f"{param}.input")
            arguments: dict[str, Any] = {"input": raw}
        else:
            arguments = parse_arguments(item.get("arguments"), f"{param}.arguments")
        if call_id in self._calls:
            raise _invalid(f"{param}.call_id: duplicate call_id {call_id[:64]!r} (another call "
                           "already has it)", f"{param}.call_id")
        self._calls[call_id] = (flat, custom)
        self._assistant([c.ToolUseBlock(id=call_id, name=flat, input=arguments)])

    def _output(self, item: Mapping[str, Any], param: str) -> None:
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise _invalid(f"{param}.call_id must be a non-empty string", f"{param}.call_id")
        called = self._calls.get(call_id)
        custom = item.get("type") == "custom_tool_call_output"
        if called is None:
            raise _invalid(f"No tool call found for {'custom tool' if custom else 'function'} "
                           f"call output with call_id {call_id[:64]}.", f"{param}.call_id")
        if call_id in self._answered:
            raise _invalid(f"{param}.call_id: the call {call_id[:64]} already has an output",
                           f"{param}.call_id")
        if called[1] != custom:
            wanted = "custom_tool_call_output" if called[1] else "function_call_output"
            raise _invalid(f"{param}.type: call {call_id[:64]} is answered with a {wanted}",
                           f"{param}.type")
        self._answered.add(call_id)
        output = item.get("output")
        content: list[c.TextBlock | c.ImageBlock] = []
        if isinstance(output, str):
            content.append(c.TextBlock(output))
        elif isinstance(output, list):
            for j, part in enumerate(output):
                block = self._part(part, f"{param}.output[{j}]")
                if isinstance(block, c.DocumentBlock):
                    raise _invalid(f"{param}.output[{j}]: files in tool output are not "
                                   "supported; send their text", f"{param}.output[{j}]")
                content.append(block)
        else:
            raise _invalid(f"{param}.output must be a string or a list of parts",
                           f"{param}.output")
        result = c.ToolResultBlock(tool_use_id=call_id, content=tuple(content),
                                   name=called[0])
        self._user([result])

    def _reasoning(self, item: Mapping[str, Any], param: str) -> None:
        sealed = item.get("encrypted_content")
        if sealed is not None and not isinstance(sealed, str):
            raise _invalid(f"{param}.encrypted_content must be a string",
                           f"{param}.encrypted_content")
        if sealed:
            opened = self._unseal(sealed)
            if opened is None:
                # Not sealed by this gateway (another provider's, or altered): the thought
                # cannot be trusted or replayed, and the conversation goes on without it.
                return
            data = opened.get("redacted")
            if isinstance(data, str):
                self._assistant([c.RedactedThinkingBlock(data)])
                return
            text = opened.get("text")
            signature = opened.get("signature")
            self._assistant([c.ThinkingBlock(
                text if isinstance(text, str) else "",
                signature if isinstance(signature, str) and signature else None,
            )])
            return
        summary = item.get("summary")
        texts = [s.get("text") for s in summary if isinstance(s, Mapping)] if isinstance(
            summary, list) else []
        text = "\n\n".join(t for t in texts if isinstance(t, str) and t)
        if text:
            # unsigned: the Cloud Code translator decides what such a thought is worth
            self._assistant([c.ThinkingBlock(text)])


def _file(part: Mapping[str, Any], param: str) -> c.DocumentBlock:
    data = part.get("file_data")
    if not isinstance(data, str) or not data:
        which = "file_id" if part.get("file_id") is not None else "file_url"
        raise _invalid(f"{param}: only file_data is supported (the Files API and file URLs "
                       "are not); send the file as a base64 data: URL", f"{param}.{which}")
    media_type = None
    if data[:5].lower() == "data:":
        header, comma, data = data[5:].partition(",")
        fields = [f.strip().lower() for f in header.split(";")]
        if not comma or "base64" not in fields[1:]:
            raise _invalid(f"{param}.file_data must be a base64 data: URL",
                           f"{param}.file_data")
        media_type = fields[0]
    else:
        filename = part.get("filename")
        extension = filename.rsplit(".", 1)[-1].lower() if isinstance(filename, str) else ""
        media_type = _FILE_TYPES.get(extension)
    if media_type not in ("application/pdf", "text/plain"):
        raise _invalid(f"{param}: only PDF and plain-text files are supported",
                       f"{param}.file_data")
    data = "".join(data.split())
    try:
        valid = bool(data) and bool(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise _invalid(f"{param}.file_data does not hold valid base64 data",
                       f"{param}.file_data")
    return c.DocumentBlock(media_type, data)


# ---------------------------------------------------------------------------------------------
# Response side
# ---------------------------------------------------------------------------------------------


def render_usage(usage: c.Usage) -> JSONDict:
    prompt = usage.input_tokens + usage.cache_read_input_tokens
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": usage.cache_read_input_tokens,
                                 "cache_write_tokens": 0},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.thinking_tokens},
        "total_tokens": prompt + usage.output_tokens,
    }


def public_item(item: JSONDict, *, include_encrypted: bool) -> JSONDict:
    """An output item as the client sees it: thoughts sealed only when it asked for them
    (the gateway keeps them sealed either way, for previous_response_id)."""
    if include_encrypted or "encrypted_content" not in item:
        return item
    return {k: v for k, v in item.items() if k != "encrypted_content"}


def _message_item(item_id: str, text: str, status: str) -> JSONDict:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [_output_text(text)]}


def _output_text(text: str) -> JSONDict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_item(item_id: str, sealed: str, summary: str | None) -> JSONDict:
    return {"id": item_id, "type": "reasoning",
            "summary": [{"type": "summary_text", "text": summary}] if summary else [],
            "encrypted_content": sealed}


def _call_item(
    item_id: str, call_id: str, flat: str, names: Mapping[str, ToolName], arguments: str,
    status: str,
) -> JSONDict:
    named = names.get(flat, ToolName(flat))
    item: JSONDict
    if named.custom:
        try:
            value = json.loads(arguments) if arguments else {}
        except ValueError:
            value = {}
        raw = value.get("input") if isinstance(value, dict) else None
        item = {"id": item_id, "type": "custom_tool_call", "call_id": call_id,
                "name": named.name, "input": raw if isinstance(raw, str) else ""}
    else:
        item = {"id": item_id, "type": "function_call", "status": status,
                "arguments": arguments or "{}", "call_id": call_id, "name": named.name}
    if named.namespace:
        item["namespace"] = named.namespace
    return item


def _status(stop_reason: c.StopReason) -> tuple[str, JSONDict | None]:
    if stop_reason == "max_tokens":
        return "incomplete", {"reason": "max_output_tokens"}
    if stop_reason == "refusal":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _response_object(
    request: ResponsesRequest,
    *,
    response_id: str,
    created_at: int,
    status: str,
    output: list[JSONDict],
    usage: c.Usage | None,
    incomplete: JSONDict | None = None,
    error: JSONDict | None = None,
) -> JSONDict:
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "model": request.chat.model,
        "output": output,
        "usage": render_usage(usage) if usage is not None else None,
        **request.echo,
    }


def render_response(
    response: c.ChatResponse,
    request: ResponsesRequest,
    *,
    response_id: str,
    created_at: int,
    seal: Seal,
    new_id: NewId,
) -> tuple[JSONDict, list[JSONDict]]:
    """The response object for a whole answer, and its output items as the gateway keeps
    them (thoughts always sealed)."""
    status, incomplete = _status(response.stop_reason)
    items: list[JSONDict] = []
    for block in response.content:
        if isinstance(block, c.ThinkingBlock):
            sealed = seal({"text": block.thinking, "signature": block.signature})
            items.append(_reasoning_item(new_id("rs"), sealed,
                                         block.thinking if request.show_summary else None))
        elif isinstance(block, c.RedactedThinkingBlock):
            items.append(_reasoning_item(new_id("rs"), seal({"redacted": block.data}), None))
        elif isinstance(block, c.TextBlock):
            # "completed", as the stream says: an item is done before the answer's end
            # says why it ended (the response's status and incomplete_details say it)
            items.append(_message_item(new_id("msg"), block.text, "completed"))
        else:
            arguments = json.dumps(block.input, ensure_ascii=False, separators=(",", ":"))
            named = request.tool_names.get(block.name)
            prefix = "ctc" if named is not None and named.custom else "fc"
            items.append(_call_item(new_id(prefix), block.id, block.name, request.tool_names,
                                    arguments, "completed"))
    public = [public_item(i, include_encrypted=request.include_encrypted) for i in items]
    body = _response_object(request, response_id=response_id, created_at=created_at,
                            status=status, output=public, usage=response.usage,
                            incomplete=incomplete)
    return body, items


@attrs.define(slots=True)
class _Open:
    kind: c.BlockKind
    output_index: int
    item_id: str
    parts: list[str] = attrs.field(factory=list)
    signature: str = ""
    call_id: str = ""
    tool: str = ""  # flat name
    data: str = ""  # redacted thinking
    summary_open: bool = False


class ResponsesStreamEncoder:
    """Canonical stream events in, Responses streaming events out (sans-IO).

    `start` gives `response.created` and `response.in_progress`; each block becomes one
    output item with its `added` / delta / `done` events; `MessageEnd` closes with
    `response.completed` (or `response.incomplete`) carrying the whole response, also kept
    in `final` with `kept_items` (the output as the gateway stores it). Every event has the
    next `sequence_number`. Events after the end are ignored.
    """

    def __init__(
        self,
        request: ResponsesRequest,
        *,
        response_id: str,
        created_at: int,
        seal: Seal,
        new_id: NewId,
    ) -> None:
        self._request = request
        self._id = response_id
        self._created = created_at
        self._seal = seal
        self._new_id = new_id
        self._sequence = 0
        self._open: dict[int, _Open] = {}
        self._items: list[JSONDict | None] = []  # by output index, None while open
        self._usage: c.Usage | None = None
        self.final: JSONDict | None = None
        self.kept_items: list[JSONDict] = []
        self.finished = False

    def _event(self, kind: str, **fields: Any) -> JSONDict:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _response(self, status: str, **extra: Any) -> JSONDict:
        output = [public_item(i, include_encrypted=self._request.include_encrypted)
                  for i in self._items if i is not None]
        return _response_object(self._request, response_id=self._id,
                                created_at=self._created, status=status, output=output,
                                usage=self._usage if status != "in_progress" else None,
                                **extra)

    def start(self) -> list[JSONDict]:
        return [self._event("response.created", response=self._response("in_progress")),
                self._event("response.in_progress", response=self._response("in_progress"))]

    def encode(self, event: c.StreamEvent) -> list[JSONDict]:
        if self.finished:
            return []
        if isinstance(event, c.BlockStart):
            return self._block_start(event)
        opened = self._open.get(getattr(event, "index", -1))
        if isinstance(event, c.TextDelta) and opened is not None:
            opened.parts.append(event.text)
            return [self._event("response.output_text.delta", item_id=opened.item_id,
                                output_index=opened.output_index, content_index=0,
                                delta=event.text, logprobs=[])] if event.text else []
        if isinstance(event, c.ThinkingDelta) and opened is not None:
            opened.parts.append(event.thinking)
            return self._summary_delta(opened, event.thinking)
        if isinstance(event, c.SignatureDelta) and opened is not None:
            opened.signature += event.signature
            return []
        if isinstance(event, c.ToolInputDelta) and opened is not None:
            opened.parts.append(event.partial_json)
            named = self._request.tool_names.get(opened.tool)
            if (named is not None and named.custom) or not event.partial_json:
                return []  # a freeform input is known once its JSON is whole
            return [self._event("response.function_call_arguments.delta",
                                item_id=opened.item_id, output_index=opened.output_index,
                                delta=event.partial_json)]
        if isinstance(event, c.BlockStop) and opened is not None:
            return self._block_stop(event.index, "completed")
        if isinstance(event, c.UsageUpdate):
            self._usage = event.usage
            return []
        if isinstance(event, c.MessageEnd):
            return self._end(event)
        return []

    def _block_start(self, event: c.BlockStart) -> list[JSONDict]:
        index = len(self._items)
        self._items.append(None)
        if event.kind == "text":
            opened = _Open("text", index, self._new_id("msg"))
            self._open[event.index] = opened
            item = {"id": opened.item_id, "type": "message", "status": "in_progress",
                    "role": "assistant", "content": []}
            return [
                self._event("response.output_item.added", output_index=index, item=item),
                self._event("response.content_part.added", item_id=opened.item_id,
                            output_index=index, content_index=0, part=_output_text("")),
            ]
        if event.kind in ("thinking", "redacted_thinking"):
            opened = _Open(event.kind, index, self._new_id("rs"), data=event.data or "")
            self._open[event.index] = opened
            item = {"id": opened.item_id, "type": "reasoning", "summary": []}
            return [self._event("response.output_item.added", output_index=index, item=item)]
        named = self._request.tool_names.get(event.tool_name or "")
        prefix = "ctc" if named is not None and named.custom else "fc"
        opened = _Open("tool_use", index, self._new_id(prefix), call_id=event.tool_id or "",
                       tool=event.tool_name or "")
        self._open[event.index] = opened
        started = _call_item(opened.item_id, opened.call_id, opened.tool,
                             self._request.tool_names, "", "in_progress")
        if started["type"] == "function_call":
            started["arguments"] = ""
        return [self._event("response.output_item.added", output_index=index, item=started)]

    def _summary_delta(self, opened: _Open, text: str) -> list[JSONDict]:
        if not self._request.show_summary or not text:
            return []
        events: list[JSONDict] = []
        where = {"item_id": opened.item_id, "output_index": opened.output_index,
                 "summary_index": 0}
        if not opened.summary_open:
            opened.summary_open = True
            events.append(self._event("response.reasoning_summary_part.added", **where,
                                      part={"type": "summary_text", "text": ""}))
        events.append(self._event("response.reasoning_summary_text.delta", **where,
                                  delta=text))
        return events

    def _block_stop(self, block: int, status: str) -> list[JSONDict]:
        opened = self._open.pop(block)
        text = "".join(opened.parts)
        where = {"item_id": opened.item_id, "output_index": opened.output_index}
        events: list[JSONDict] = []
        if opened.kind == "text":
            item = _message_item(opened.item_id, text, status)
            events += [
                self._event("response.output_text.done", **where, content_index=0, text=text,
                            logprobs=[]),
                self._event("response.content_part.done", **where, content_index=0,
                            part=_output_text(text)),
            ]
        elif opened.kind == "redacted_thinking":
            item = _reasoning_item(opened.item_id, self._seal({"redacted": opened.data}), None)
        elif opened.kind == "thinking":
            sealed = self._seal({"text": text, "signature": opened.signature or None})
            shown = text if self._request.show_summary and text else None
            item = _reasoning_item(opened.item_id, sealed, shown)
            if opened.summary_open:
                part = {"type": "summary_text", "text": text}
                events += [
                    self._event("response.reasoning_summary_text.done", **where,
                                summary_index=0, text=text),
                    self._event("response.reasoning_summary_part.done", **where,
                                summary_index=0, part=part),
                ]
        else:
            item = _call_item(opened.item_id, opened.call_id, opened.tool,
                              self._request.tool_names, text, status)
            if item["type"] == "function_call":
                events.append(self._event("response.function_call_arguments.done", **where,
                                          arguments=item["arguments"]))
            else:
                events += [
                    self._event("response.custom_tool_call_input.delta", **where,
                                delta=item["input"]),
                    self._event("response.custom_tool_call_input.done", **where,
                                input=item["input"]),
                ]
        self._items[opened.output_index] = item
        public = public_item(item, include_encrypted=self._request.include_encrypted)
        events.append(self._event("response.output_item.done",
                                  output_index=opened.output_index, item=public))
        return events

    def _end(self, event: c.MessageEnd) -> list[JSONDict]:
        status, incomplete = _status(event.stop_reason)
        events: list[JSONDict] = []
        for block in list(self._open):
            events += self._block_stop(block, "incomplete" if incomplete else "completed")
        self._usage = event.usage
        self.finished = True
        self.kept_items = [i for i in self._items if i is not None]
        self.final = self._response(status, incomplete=incomplete)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self._event(kind, response=self.final))
        return events

    def fail(self, err: errors.GatewayError) -> list[JSONDict]:
        """The stream's end after an error: an `error` event, then `response.failed`."""
        if self.finished:
            return []
        self.finished = True
        code: Literal["rate_limit_exceeded", "server_error"] = (
            "rate_limit_exceeded" if err.status == 429 else "server_error"
        )
        failure = {"code": code, "message": err.message}
        return [
            self._event("error", code=code, message=err.message, param=err.param),
            self._event("response.failed", response=self._response("failed", error=failure)),
        ]
