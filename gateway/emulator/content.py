"""What the emulated models answer, and what they refuse (pure, deterministic).

Given a Cloud Code generation envelope, `check_envelope` raises `UpstreamRefusal` for what
the real upstream rejects (malformed contents, schema keywords it does not know, output
limits, forged or missing thought signatures, a Claude tool loop without its thinking), and
`plan_answer` decides the answer: echoed text, an image count, a tool result summary, a tool
call with arguments built from the declared schema, a JSON object in JSON mode, thoughts
when thinking is asked for, cut by stop sequences or `maxOutputTokens`. `stream_chunks` and
`unary_response` render a plan as the `response` objects the upstream sends. Signatures are
HMACs under the emulator's key, so they can be checked when a client replays them. The
Google error bodies (including the 429 flavours the gateway must parse) are built here too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from gateway.emulator.catalogue import EmulatedModel

__all__ = [
    "SKIP_SIGNATURE",
    "Plan",
    "UpstreamRefusal",
    "capacity_error",
    "check_envelope",
    "go_duration",
    "google_error",
    "plan_answer",
    "rate_limit_error",
    "refusal_plan",
    "sign",
    "stream_chunks",
    "unary_response",
]

JSONDict = dict[str, Any]

# Google's documented placeholder for a replayed function call whose signature was lost.
SKIP_SIGNATURE = "skip_thought_signature_validator"

_ECHO_CHARS = 200
_SAMPLE_STRING = "Paris"
_CLAUDE_THINKING_MESSAGE = (
    "messages: Expected `thinking` or `redacted_thinking`, but found `tool_use`. When "
    "`thinking` is enabled, a final `assistant` message must start with a thinking block."
)
# Fields of the upstream's Schema message; anything else in a declaration is refused.
_SCHEMA_FIELDS = frozenset(
    {
        "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
        "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
        "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
        "maximum",
    }
)
_TOOL_WORD = re.compile(r"\btools?\b", re.IGNORECASE)


class UpstreamRefusal(Exception):
    """An error answer the upstream would give: HTTP code, google.rpc status, message."""

    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message

    def body(self) -> JSONDict:
        return google_error(self.code, self.status, self.message)


# -- error bodies ---------------------------------------------------------------------------


def google_error(
    code: int, status: str, message: str, details: Sequence[JSONDict] = ()
) -> JSONDict:
    error: JSONDict = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return {"error": error}


def go_duration(seconds: float) -> str:
    """`seconds` the way Go prints a time.Duration: "1h2m3s", "1m30s", "3.5s", "500ms"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{_trim(seconds * 1000)}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{int(hours)}h{int(minutes)}m{_trim(secs)}s"
    if minutes:
        return f"{int(minutes)}m{_trim(secs)}s"
    return f"{_trim(secs)}s"


def _trim(value: float) -> str:
    return f"{round(value, 3):.3f}".rstrip("0").rstrip(".")


def rate_limit_error(
    *, model: str | None, reset_seconds: float, reset_format: str, quota: bool
) -> tuple[JSONDict, dict[str, str]]:
    """A 429 body and its extra headers, saying when the limit resets in `reset_format`.

    `quota` picks the daily-quota flavour (reason QUOTA_EXHAUSTED) over the per-minute one
    (RATE_LIMIT_EXCEEDED, whose wording avoids "quota" so the two stay distinguishable).
    """
    reason = "QUOTA_EXHAUSTED" if quota else "RATE_LIMIT_EXCEEDED"
    message = (
        "You have exhausted your capacity on this model."
        if quota
        else "Too many requests for this model; slow down."
    )
    info: JSONDict = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "cloudcode-pa.googleapis.com",
        "metadata": {"model": model or ""},
    }
    details: list[JSONDict] = []
    headers: dict[str, str] = {}
    if reset_format == "retry_info":
        details = [
            info,
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": f"{_trim(reset_seconds)}s",
            },
        ]
    elif reset_format == "quota_reset_delay":
        info["metadata"]["quotaResetDelay"] = go_duration(reset_seconds)
        details = [info]
    elif reset_format == "retry_after":
        details = [info]
        headers["retry-after"] = str(max(0, math.ceil(reset_seconds)))
    else:  # "text": only the message says it
        message = (
            "You have exhausted your capacity on this model. "
            f"Your quota will reset after {go_duration(reset_seconds)}."
        )
    return google_error(429, "RESOURCE_EXHAUSTED", message, details), headers


def capacity_error(
    *, model: str | None, reset_seconds: float, reset_format: str
) -> tuple[JSONDict, dict[str, str]]:
    """A 503 for a model out of capacity, with the retry delay in `reset_format`
    ("retry_info" by default; "text" leaves it out, as many such answers do)."""
    info: JSONDict = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "MODEL_CAPACITY_EXHAUSTED",
        "domain": "cloudcode-pa.googleapis.com",
        "metadata": {"model": model or ""},
    }
    details: list[JSONDict] = [info]
    headers: dict[str, str] = {}
    if reset_format == "retry_info":
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{_trim(reset_seconds)}s"})
    elif reset_format == "retry_after":
        headers["retry-after"] = str(max(0, math.ceil(reset_seconds)))
    message = f"No capacity available for model {model or ''} on the server"
    return google_error(503, "UNAVAILABLE", message, details), headers


# -- signatures -----------------------------------------------------------------------------


def sign(key: bytes, kind: str, payload: str) -> str:
    """An opaque signature (88 base64 characters) over `kind` and `payload`."""
    mac = hmac.new(key, f"{kind}\x00{payload}".encode(), hashlib.sha256).digest()
    return base64.b64encode(mac + hashlib.sha256(mac).digest()).decode("ascii")


def _signed(key: bytes, kind: str, payload: str, signature: object) -> bool:
    # thoughtSignature is a bytes field: protobuf JSON reads either base64 alphabet, padded
    # or not, so what is compared is the bytes
    if not isinstance(signature, str):
        return False
    try:
        given = base64.b64decode(
            signature.replace("-", "+").replace("_", "/") + "=" * (-len(signature) % 4),
            validate=True)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(base64.b64decode(sign(key, kind, payload)), given)


def _call_payload(call: Mapping[str, Any]) -> str:
    args = call.get("args", {})
    return f"{call.get('name', '')}\x00{json.dumps(args, sort_keys=True, separators=(',', ':'))}"


# -- envelope checks ------------------------------------------------------------------------


def _bad(message: str) -> UpstreamRefusal:
    return UpstreamRefusal(400, "INVALID_ARGUMENT", message)


def is_claude(model: EmulatedModel) -> bool:
    return model.family == "claude"


def _claude_error(message: str) -> UpstreamRefusal:
    # Claude's refusals come back as Anthropic's own error JSON inside the Google message
    request_id = "req_vrtx_" + hashlib.sha256(message.encode()).hexdigest()[:24]
    return _bad(json.dumps({
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
        "request_id": request_id,
    }, separators=(",", ":")))


def check_envelope(envelope: Mapping[str, Any], *, model: EmulatedModel, key: bytes) -> None:
    """Raise UpstreamRefusal for what the upstream would refuse in this request."""
    request = envelope.get("request")
    if not isinstance(request, dict):
        raise _bad("Invalid JSON payload received. 'request' must be an object.")
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _bad("* GenerateContentRequest.contents: contents is not specified")
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role") not in ("user", "model"):
            raise _bad(f"* GenerateContentRequest.contents[{i}].role: must be user or model")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
            raise _bad(f"* GenerateContentRequest.contents[{i}].parts: must not be empty")
    if is_claude(model):
        roles = [c["role"] for c in contents]
        if roles[0] != "user" or any(a == b for a, b in itertools.pairwise(roles)):
            raise _claude_error("messages: roles must alternate between \"user\" and "
                                "\"assistant\", starting with \"user\"")
    _check_tools(request)
    _check_safety_settings(request)
    generation = request.get("generationConfig")
    generation = generation if isinstance(generation, dict) else {}
    max_out = generation.get("maxOutputTokens")
    if isinstance(max_out, int) and max_out > model.max_output:
        raise _bad(
            f"max_tokens: {max_out} > {model.max_output}, which is the maximum "
            f"allowed number of output tokens for {model.id}"
        )
    config = generation.get("thinkingConfig")
    budget = _thinking_budget(config)
    if is_claude(model) and budget is not None and isinstance(max_out, int) and budget >= max_out:
        raise _claude_error("`max_tokens` must be greater than `thinking.budget_tokens`")
    level = _thinking_level(config)
    if level is not None and model.family == "gemini" and level.lower() not in model.levels:
        supported = ", ".join(model.levels) or "none"
        raise _bad(f"Unable to submit request because thinking level {level!r} is not "
                   f"supported by model {model.id} (supported: {supported}).")
    _check_function_turns(contents, claude=is_claude(model))
    _check_signatures(contents, model=model, key=key, thinking=thinks(config, model))


_COUNT_MISMATCH = (
    "Please ensure that the number of function response parts is equal to the number of "
    "function call parts of the function call turn."
)
_RESPONSE_ORPHAN = (
    "Please ensure that function response turn comes immediately after a function call turn."
)
_INVALID_ARGUMENT = "Request contains an invalid argument."


def _check_function_turns(contents: Sequence[Mapping[str, Any]], *, claude: bool) -> None:
    """Every call turn is answered by the next turn, one response per call, names (and, for
    Claude, ids) matching; no response without its call."""
    for i, content in enumerate(contents):
        responses = [p["functionResponse"] for p in content["parts"]
                     if isinstance(p.get("functionResponse"), dict)]
        previous = contents[i - 1] if i > 0 else None
        calls = [p["functionCall"] for p in previous["parts"]
                 if isinstance(p.get("functionCall"), dict)] if previous else []
        if content["role"] == "model" or (not responses and not calls):
            continue
        if claude:
            call_ids = [str(c.get("id", "")) for c in calls]
            answered = [str(r.get("id", "")) for r in responses]
            stray = [a for a in answered if a not in call_ids]
            if stray:
                raise _claude_error(
                    f"messages.{i}.content.0: unexpected `tool_use_id` found in `tool_result` "
                    f"blocks: {stray[0]}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message."
                )
            missing = [c for c in call_ids if c not in answered]
            if missing:
                raise _claude_error(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(missing)}. Each `tool_use` block must have "
                    "a corresponding `tool_result` block in the next message."
                )
            names = {str(c.get("id", "")): c.get("name") for c in calls}
            if any(r.get("name") != names.get(str(r.get("id", ""))) for r in responses):
                raise _bad(_INVALID_ARGUMENT)
            continue
        if responses and not calls:
            raise _bad(_RESPONSE_ORPHAN)
        if len(responses) != len(calls):
            raise _bad(_COUNT_MISMATCH)
        if sorted(str(r.get("name")) for r in responses) != sorted(
            str(c.get("name")) for c in calls
        ):
            raise _bad(_INVALID_ARGUMENT)


_HARM_CATEGORIES = frozenset({
    "HARM_CATEGORY_UNSPECIFIED", "HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_DANGEROUS_CONTENT",
    "HARM_CATEGORY_HARASSMENT", "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_CIVIC_INTEGRITY", "HARM_CATEGORY_IMAGE_HATE",
    "HARM_CATEGORY_IMAGE_DANGEROUS_CONTENT", "HARM_CATEGORY_IMAGE_HARASSMENT",
    "HARM_CATEGORY_IMAGE_SEXUALLY_EXPLICIT", "HARM_CATEGORY_JAILBREAK",
})
_HARM_THRESHOLDS = frozenset({
    "HARM_BLOCK_THRESHOLD_UNSPECIFIED", "BLOCK_LOW_AND_ABOVE", "BLOCK_MEDIUM_AND_ABOVE",
    "BLOCK_ONLY_HIGH", "BLOCK_NONE", "OFF",
})
_HARM_METHODS = frozenset({"HARM_BLOCK_METHOD_UNSPECIFIED", "SEVERITY", "PROBABILITY"})


def _check_safety_settings(request: Mapping[str, Any]) -> None:
    """The enums of SafetySetting, refused in protobuf's words when a value is not one."""
    settings = request.get("safetySettings", request.get("safety_settings", []))
    if not isinstance(settings, list):
        raise _bad("Invalid JSON payload received. 'safety_settings' must be a list.")
    for i, setting in enumerate(settings):
        if not isinstance(setting, dict):
            raise _bad(f"Invalid JSON payload received. safety_settings[{i}] is not an object.")
        for field, enum, allowed in (("category", "HarmCategory", _HARM_CATEGORIES),
                                     ("threshold", "HarmBlockThreshold", _HARM_THRESHOLDS),
                                     ("method", "HarmBlockMethod", _HARM_METHODS)):
            value = setting.get(field)
            if value is None and field == "method":
                continue
            if value not in allowed:
                raise _bad(
                    f"Invalid value at 'request.safety_settings[{i}].{field}' "
                    f"(type.googleapis.com/google.cloud.aiplatform.v1internal.{enum}), "
                    f"{json.dumps(value)}"
                )


def _check_tools(request: Mapping[str, Any]) -> None:
    tools = request.get("tools", [])
    if not isinstance(tools, list):
        raise _bad("Invalid JSON payload received. 'tools' must be a list.")
    for t, tool in enumerate(tools):
        declarations = tool.get("functionDeclarations", []) if isinstance(tool, dict) else None
        if not isinstance(declarations, list):
            raise _bad(f"tools[{t}].function_declarations must be a list")
        for d, declaration in enumerate(declarations):
            where = f"request.tools[{t}].function_declarations[{d}]"
            if not isinstance(declaration, dict) or not isinstance(declaration.get("name"), str):
                raise _bad(f"* GenerateContentRequest.{where}.name: name is required")
            parameters = declaration.get("parameters")
            if parameters is not None:
                _check_schema(parameters, f"{where}.parameters")


def _check_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise _bad(f"Invalid JSON payload received. Schema at '{where}' is not an object.")
    for name, value in schema.items():
        if name not in _SCHEMA_FIELDS:
            raise _bad(
                f'Invalid JSON payload received. Unknown name "{name}" at \'{where}\': '
                "Cannot find field."
            )
        if name == "properties":
            if not isinstance(value, dict):
                raise _bad(f"'{where}.properties' must be an object")
            for prop, sub in value.items():
                _check_schema(sub, f"{where}.properties[{prop}].value")
        elif name == "items":
            _check_schema(value, f"{where}.items")
        elif name == "anyOf" and isinstance(value, list):
            for i, sub in enumerate(value):
                _check_schema(sub, f"{where}.any_of[{i}]")
    if str(schema.get("type", "")).lower() == "object" and "properties" in schema and not (
        schema["properties"]
    ):
        raise _bad(f"* GenerateContentRequest.{where}.properties: should be non-empty for "
                   "OBJECT type")


_CORRUPTED = "Corrupted thought signature."


def _current_turn_start(contents: Sequence[Mapping[str, Any]]) -> int:
    """Index after the last user content that says something (not only tool results)."""
    for i in range(len(contents) - 1, -1, -1):
        content = contents[i]
        if content["role"] == "user" and any(
            isinstance(p.get("text"), str) for p in content["parts"]
        ):
            return i + 1
    return 0


def _check_signatures(
    contents: Sequence[Mapping[str, Any]], *, model: EmulatedModel, key: bytes, thinking: bool
) -> None:
    family = model.family
    current = _current_turn_start(contents)
    for i, content in enumerate(contents):
        if content["role"] != "model":
            continue
        first_call = True
        for j, part in enumerate(content["parts"]):
            signature = part.get("thoughtSignature")
            text = part.get("text", "")
            text = text if isinstance(text, str) else ""
            if part.get("thought") is True:
                if is_claude(model):
                    if not signature:
                        raise _claude_error(
                            f"messages.{i}.content.{j}.thinking.signature: Field required"
                        )
                    if not _signed(key, "claude:thought", text, signature):
                        raise _claude_error(
                            f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
                        )
                elif signature and not _signed(key, f"{family}:thought", text, signature):
                    raise _bad(_CORRUPTED)
                continue
            call = part.get("functionCall")
            if isinstance(call, dict):
                if model.signs_calls:
                    if signature is None:
                        if first_call and i >= current:
                            raise _bad(
                                "Function call is missing a thought_signature in functionCall "
                                "parts. This is required for tools to work correctly, and "
                                "missing thought_signature may lead to degraded model "
                                f"performance. Additional data, function call "
                                f"`default_api:{call.get('name', '')}` , position {j + 1}."
                            )
                    elif signature != SKIP_SIGNATURE and not _signed(
                        key, "gemini:call", _call_payload(call), signature
                    ):
                        raise _bad(_CORRUPTED)
                first_call = False
            elif signature and model.family == "gemini" and not _signed(
                key, "gemini:text", text, signature
            ) and not _signed(key, "gemini:thought", text, signature):
                raise _bad(_CORRUPTED)
    if is_claude(model) and thinking:
        last_model = next((c for c in reversed(contents) if c["role"] == "model"), None)
        if last_model is not None and contents[-1]["role"] == "user":
            parts = last_model["parts"]
            has_call = any("functionCall" in p for p in parts)
            if has_call and parts[0].get("thought") is not True:
                raise _claude_error(_CLAUDE_THINKING_MESSAGE)


def _thinking_budget(config: Any) -> int | None:
    if not isinstance(config, dict):
        return None
    budget = config.get("thinkingBudget", config.get("thinking_budget"))
    return budget if isinstance(budget, int) and not isinstance(budget, bool) else None


def _thinking_level(config: Any) -> str | None:
    if not isinstance(config, dict):
        return None
    level = config.get("thinkingLevel", config.get("thinking_level"))
    return level if isinstance(level, str) and level else None


def thinks(config: Any, model: EmulatedModel) -> bool:
    """True when the model shows its thoughts for this thinkingConfig.

    Claude on Cloud Code thinks only with a budget (or a level); Gemini thinks anyway and
    shows it only with includeThoughts.
    """
    if model.thinking == "none" or not isinstance(config, dict):
        return False
    if is_claude(model):
        budget = _thinking_budget(config)
        return (budget is not None and budget > 0) or _thinking_level(config) is not None
    for name in ("includeThoughts", "include_thoughts"):
        if name in config:
            return config[name] is True
    return False


# -- the answer -----------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Plan:
    """What the model says, before it is cut into chunks."""

    family: str
    thought: str  # "" when not thinking
    thought_signature: str | None  # over the whole thought text
    text: str
    text_signature: str | None  # Gemini 3 signs its first text part when it thinks
    calls: tuple[JSONDict, ...]  # whole functionCall parts (with their signature if any)
    finish_reason: str
    usage: JSONDict


# A part that is one tagged element and nothing else: Claude Code's <system-reminder>
# blocks, Codex's <environment_context>, system messages the gateway places in a user turn.
_HARNESS_PART = re.compile(r"\s*<([a-z][a-z0-9_-]*)\b[^>]*>.*</\1>\s*", re.DOTALL)


def _is_reminder(text: str) -> bool:
    """Harness text a client puts in a user turn: the emulated model reads the user's own
    words, not these."""
    return text.lstrip().startswith("<system-reminder>") or bool(_HARNESS_PART.fullmatch(text))


def _user_words(parts: Sequence[Mapping[str, Any]]) -> str:
    return " ".join(
        p["text"] for p in parts
        if isinstance(p.get("text"), str) and p.get("thought") is not True
        and not _is_reminder(p["text"])
    ).strip()


def plan_answer(
    envelope: Mapping[str, Any],
    *,
    model: EmulatedModel,
    key: bytes,
    prompt_tokens: int,
    cached_tokens: int,
    chunk_chars: int | None,
    call_id_prefix: str,
) -> Plan:
    """The answer to a checked envelope (see `check_envelope`)."""
    request: Mapping[str, Any] = envelope["request"]
    contents: list[Mapping[str, Any]] = request["contents"]
    last = next((c for c in reversed(contents) if c["role"] == "user"), contents[-1])
    parts: list[Mapping[str, Any]] = last["parts"]
    responses = [p["functionResponse"] for p in parts if isinstance(p.get("functionResponse"),
                                                                     dict)]
    user_text = _user_words(parts)
    images = sum(
        1
        for p in parts
        if isinstance(p.get("inlineData"), dict)
        and str(p["inlineData"].get("mimeType", "")).startswith("image/")
    )
    generation = request.get("generationConfig")
    generation = generation if isinstance(generation, dict) else {}
    thinking = thinks(generation.get("thinkingConfig"), model)

    # the request that started this agent loop, and how many tool rounds followed it
    prompt_at = next(
        (i for i in range(len(contents) - 1, -1, -1)
         if contents[i]["role"] == "user" and _user_words(contents[i]["parts"])),
        len(contents) - 1,
    )
    prompt = _user_words(contents[prompt_at]["parts"])
    rounds = sum(
        1 for c in contents[prompt_at + 1:]
        if c["role"] == "model" and any("functionCall" in p for p in c["parts"])
    )
    calls = _calls(request, prompt, rounds=rounds)
    call_parts: list[JSONDict] = []
    for i, (name, args) in enumerate(calls):
        call: JSONDict = {"name": name, "args": args}
        if is_claude(model):
            call["id"] = f"{call_id_prefix}{i}"
        part: JSONDict = {"functionCall": call}
        if i == 0 and model.signs_calls:
            part["thoughtSignature"] = sign(key, "gemini:call", _call_payload(call))
        call_parts.append(part)

    finish = "STOP"
    text = ""
    if not call_parts:
        text = _text(request, model, user_text, images, responses, chunk_chars)
        text, finish = _cut(text, generation)

    thought = ""
    thought_signature = None
    if thinking:
        thought = f"The user wrote: {(prompt or user_text)[:100]!r}. I will answer briefly."
        if is_claude(model) or model.signs_calls:
            # Claude signs every thinking run; Gemini 3 signs its thoughts too (the
            # signature rides on a part of its own after them)
            thought_signature = sign(key, f"{model.family}:thought", thought)
    text_signature = None
    if model.signs_calls and not call_parts and text and not thought_signature:
        # Gemini 3 always thinks; unseen, its signature rides on the answer's first part
        text_signature = sign(key, "gemini:text", text)

    candidates = _tokens(text) + sum(_tokens(json.dumps(p["functionCall"])) for p in call_parts)
    thoughts = _tokens(thought)
    usage: JSONDict = {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt_tokens + candidates + thoughts,
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    if cached_tokens:
        usage["cachedContentTokenCount"] = cached_tokens
    return Plan(model.family, thought, thought_signature, text, text_signature,
                tuple(call_parts), finish, usage)


def refusal_plan(text: str, *, prompt_tokens: int) -> Plan:
    """An answer that is only `text` (how the upstream words some refusals)."""
    usage = {"promptTokenCount": 0, "candidatesTokenCount": _tokens(text),
             "totalTokenCount": _tokens(text)}
    del prompt_tokens  # such answers report no input
    return Plan("gemini", "", None, text, None, (), "STOP", usage)


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _text(
    request: Mapping[str, Any],
    model: EmulatedModel,
    user_text: str,
    images: int,
    responses: Sequence[Mapping[str, Any]],
    chunk_chars: int | None,
) -> str:
    schema = _json_mode(request, model)
    if schema is not None:
        value = _sample(schema, "", all_properties=True) if schema else {"echo": user_text}
        if not isinstance(value, dict):
            value = {"echo": user_text}
        return json.dumps(value)
    if responses:
        text = " ".join(
            f"Tool {r.get('name', '')} returned: "
            + _clip(json.dumps(r.get("response", {}), ensure_ascii=False))
            for r in responses
        )
    else:
        text = ("Echo: " + _clip(user_text)) if user_text or not images else ""
        if images:
            seen = f"I see {images} image(s)."
            text = f"{seen} {text}" if text else seen
    if chunk_chars is not None:
        if chunk_chars == 0:
            return ""
        base = text + " "
        text = (base * (chunk_chars // len(base) + 1))[:chunk_chars]
    return text


def _clip(text: str) -> str:
    return text if len(text) <= _ECHO_CHARS else text[:_ECHO_CHARS]


def _json_mode(request: Mapping[str, Any], model: EmulatedModel) -> JSONDict | None:
    """The response schema in JSON mode ({} when there is none); None when not JSON mode."""
    generation = request.get("generationConfig")
    generation = generation if isinstance(generation, dict) else {}
    if generation.get("responseMimeType") == "application/json":
        schema = generation.get("responseSchema")
        return schema if isinstance(schema, dict) else {}
    if is_claude(model):
        # Claude has no JSON mode upstream; it follows a system instruction asking for JSON.
        system = request.get("systemInstruction")
        parts = system.get("parts", []) if isinstance(system, dict) else []
        text = " ".join(p.get("text", "") for p in parts if isinstance(p, dict))
        if "JSON object" in text:
            _, found, rest = text.partition("JSON Schema: ")
            if found:
                try:
                    schema, _ = json.JSONDecoder().raw_decode(rest)
                except ValueError:
                    schema = {}
                return schema if isinstance(schema, dict) else {}
            return {}
    return None


def _cut(text: str, generation: Mapping[str, Any]) -> tuple[str, str]:
    finish = "STOP"
    stops = generation.get("stopSequences")
    if isinstance(stops, list):
        found = [text.find(s) for s in stops if isinstance(s, str) and s and s in text]
        if found:
            text = text[: min(found)]
    max_out = generation.get("maxOutputTokens")
    if isinstance(max_out, int) and not isinstance(max_out, bool) and _tokens(text) > max_out:
        text = text[: max(0, max_out) * 4]
        finish = "MAX_TOKENS"
    return text, finish


def _named_in(prompt: str, declarations: Sequence[JSONDict]) -> list[JSONDict]:
    """Declared tools the prompt names (as whole words), in the order it names them."""
    found: list[tuple[int, JSONDict]] = []
    for declaration in declarations:
        match = re.search(rf"(?<![\w-]){re.escape(declaration['name'])}(?![\w-])", prompt)
        if match:
            found.append((match.start(), declaration))
    return [d for _, d in sorted(found, key=lambda pair: pair[0])]


def _calls(
    request: Mapping[str, Any], prompt: str, *, rounds: int
) -> list[tuple[str, JSONDict]]:
    """The tool calls of this step: the tools the prompt names, one per round in the order
    named (a prompt that says "tool" but names none gets the first one); forced calls
    (mode ANY) happen in the first round."""
    declarations = [
        d
        for tool in request.get("tools", []) or []
        if isinstance(tool, dict)
        for d in tool.get("functionDeclarations", []) or []
        if isinstance(d, dict) and isinstance(d.get("name"), str)
    ]
    if not declarations:
        return []
    config = request.get("toolConfig")
    calling = config.get("functionCallingConfig") if isinstance(config, dict) else None
    calling = calling if isinstance(calling, dict) else {}
    mode = str(calling.get("mode", "AUTO")).upper()
    if mode == "NONE":
        return []
    by_name = {d["name"]: d for d in declarations}
    named = _named_in(prompt, declarations)
    allowed = [n for n in calling.get("allowedFunctionNames", []) or [] if n in by_name]
    if rounds < len(named) and not (mode == "ANY" and rounds == 0 and allowed):
        chosen = named[rounds]
    elif rounds > 0:
        return []
    elif mode == "ANY":
        chosen = by_name[allowed[0]] if allowed else declarations[0]
    elif _TOOL_WORD.search(prompt):
        chosen = declarations[0]
    else:
        return []
    parameters = chosen.get("parameters")
    args = (
        _sample(parameters, "", all_properties=False, prompt=prompt)
        if isinstance(parameters, dict) else {}
    )
    args = args if isinstance(args, dict) else {}
    count = 2 if "parallel" in prompt.lower() else 1
    return [(chosen["name"], dict(args)) for _ in range(count)]


_PATH = re.compile(r"(?<![\w.])(/[\w.\-]+(?:/[\w.\-]+)+)")
_QUOTED = re.compile(r"'([^']+)'|\"([^\"]+)\"")


def _string_for(name: str, prompt: str) -> str:
    """A string argument: a path or a quoted text from the prompt when the name asks for
    one (so "write 'hi' to /tmp/x/a.txt" becomes a call that does that), else a sample."""
    lower = name.lower()
    quoted: str | None = next((str(a or b) for a, b in _QUOTED.findall(prompt)), None)
    if "path" in lower or lower in ("file", "filename"):
        found = _PATH.search(prompt)
        return found.group(1) if found else "/tmp/emulator.txt"
    if lower in ("content", "text", "contents", "body"):
        return quoted or "hello from the emulator"
    if lower in ("command", "cmd"):
        return f"echo {quoted or 'hello'}"
    if lower in ("query", "pattern", "prompt", "description") and quoted:
        return quoted
    return _SAMPLE_STRING


def _sample(
    schema: Mapping[str, Any], name: str, *, all_properties: bool, prompt: str = ""
) -> Any:
    """A value satisfying `schema`: its required properties (or all, for JSON answers)."""
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = str(schema.get("type", "object" if "properties" in schema else "string")).lower()
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        items = schema.get("items")
        return [_sample(items, name, all_properties=all_properties, prompt=prompt)] if (
            isinstance(items, dict)
        ) else []
    if kind == "object":
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = [r for r in schema.get("required", []) or [] if r in properties]
        keys: Iterable[str] = required or (properties if all_properties else ())
        return {
            k: _sample(properties[k], k, all_properties=all_properties, prompt=prompt)
            if isinstance(properties[k], dict)
            else _SAMPLE_STRING
            for k in keys
        }
    if kind == "null":
        return None
    return _string_for(name, prompt)


# -- rendering ------------------------------------------------------------------------------


def _response(parts: list[JSONDict], *, model_id: str, response_id: str) -> JSONDict:
    return {
        "candidates": [{"content": {"role": "model", "parts": parts}}],
        "modelVersion": model_id,
        "responseId": response_id,
    }


def _finish(response: JSONDict, plan: Plan) -> JSONDict:
    response["candidates"][0]["finishReason"] = plan.finish_reason
    response["usageMetadata"] = plan.usage
    return response


def stream_chunks(
    plan: Plan, *, text_chunks: int, model_id: str, response_id: str
) -> list[JSONDict]:
    """The `response` objects of a streamed answer; the last has finishReason and usage."""
    parts_per_chunk: list[list[JSONDict]] = []
    if plan.thought:
        half = len(plan.thought) // 2
        second: JSONDict = {"text": plan.thought[half:], "thought": True}
        parts_per_chunk += [[{"text": plan.thought[:half], "thought": True}], [second]]
        if plan.thought_signature and plan.family == "claude":
            second["thoughtSignature"] = plan.thought_signature
        elif plan.thought_signature and not plan.calls:
            # Gemini: a part of its own carries the signature (with calls, the first call)
            parts_per_chunk.append([{"thoughtSignature": plan.thought_signature}])
    if plan.calls:
        parts_per_chunk.append([dict(p) for p in plan.calls])
    else:
        n = max(1, text_chunks)
        size = len(plan.text)
        for i in range(n):
            piece: JSONDict = {"text": plan.text[i * size // n : (i + 1) * size // n]}
            if i == 0 and plan.text_signature:
                piece["thoughtSignature"] = plan.text_signature
            parts_per_chunk.append([piece])
    chunks = [_response(p, model_id=model_id, response_id=response_id) for p in parts_per_chunk]
    # Like the real upstream, every chunk reports the prompt's size; only the last has the
    # output counts (clients show input tokens from the first event on).
    prompt_only = {
        k: v for k, v in plan.usage.items() if k in ("promptTokenCount", "cachedContentTokenCount")
    }
    for chunk in chunks[:-1]:
        chunk["usageMetadata"] = {**prompt_only, "totalTokenCount": prompt_only["promptTokenCount"]}
    _finish(chunks[-1], plan)
    return chunks


def unary_response(plan: Plan, *, model_id: str, response_id: str) -> JSONDict:
    """The whole answer in one `response` object, as generateContent returns it."""
    parts: list[JSONDict] = []
    if plan.thought:
        thought: JSONDict = {"text": plan.thought, "thought": True}
        parts.append(thought)
        if plan.thought_signature and plan.family == "claude":
            thought["thoughtSignature"] = plan.thought_signature
        elif plan.thought_signature and not plan.calls:
            parts.append({"thoughtSignature": plan.thought_signature})
    if plan.calls:
        parts.extend(dict(p) for p in plan.calls)
    else:
        text: JSONDict = {"text": plan.text}
        if plan.text_signature:
            text["thoughtSignature"] = plan.text_signature
        parts.append(text)
    return _finish(_response(parts, model_id=model_id, response_id=response_id), plan)
