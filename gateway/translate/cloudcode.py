"""Canonical requests to Cloud Code bodies, and Cloud Code answers back to canonical events.

`to_cloudcode` builds the whole `v1internal:generateContent` envelope for one request: the
Gemini-style `contents` (roles `user`/`model`), system instruction, function declarations with
sanitised schemas, tool and generation config, and the ids the upstream uses for caching and
tracing. Claude and Gemini models share the format but differ in details the upstream
enforces: Claude wants call ids and signed thinking and snake_case thinking config; Gemini
wants a `thoughtSignature` on every replayed function call. `CloudCodeDecoder` is the
matching sans-IO state machine: fed decoded SSE payloads one at a time, it emits the
canonical block events, with invariants the encoders rely on (indices 0..n-1 in order, one
stop per start, a single `MessageEnd`). Both directions are pure.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from gateway import errors
from gateway.translate import canonical as c
from gateway.translate.models import ModelInfo
from gateway.translate.schema import sanitize_parameters, sanitize_schema
from gateway.upstream.ratelimit import parse_duration

__all__ = [
    "ANTIGRAVITY_PREAMBLE",
    "EFFORT_BUDGETS",
    "SKIP_SIGNATURE",
    "SYSTEM_MESSAGE_CLOSE",
    "SYSTEM_MESSAGE_OPEN",
    "CloudCodeDecoder",
    "EmptyUpstreamResponse",
    "decode_generate_response",
    "tag_signature",
    "to_cloudcode",
    "untag_signature",
]

# Google's documented placeholder for a function call whose thought signature was lost
# (clients cannot carry it); Gemini 3 rejects a replayed call with no signature at all.
SKIP_SIGNATURE = "skip_thought_signature_validator"

USER_AGENT = "antigravity"
REQUEST_TYPE = "agent"

# Anthropic's floor for budget_tokens; below it Claude cannot think at all.
CLAUDE_MIN_THINKING_BUDGET = 1024
# Thinking budgets for Anthropic's `effort` (adaptive thinking) where the upstream wants a
# number: Claude on Cloud Code and Gemini 2.5. Gemini 3 takes `thinkingLevel` instead.
EFFORT_BUDGETS: dict[str, int] = {"low": 2048, "medium": 8192, "high": 24576, "max": 48000}
GEMINI_25_MAX_BUDGET = 24576
_GEMINI_LEVELS: dict[str, str] = {"low": "low", "medium": "medium", "high": "high", "max": "high"}

# The upstream has no system role inside `contents`: an instruction given mid-conversation
# goes at its place in a user turn, marked as the harness's (the convention Claude Code's
# own reminders use, and what the models read as system text rather than the user's).
SYSTEM_MESSAGE_OPEN = "<system-reminder>\n"
SYSTEM_MESSAGE_CLOSE = "\n</system-reminder>"

# The Antigravity IDE's identity preamble (upstream.system_preamble = "antigravity").
ANTIGRAVITY_PREAMBLE = (
    "You are Antigravity, a powerful agentic AI coding assistant designed by the Google "
    "Deepmind team working on Advanced Agentic Coding.You are pair programming with a USER "
    "to solve their coding task. The task may require creating a new codebase, modifying or "
    "debugging an existing codebase, or simply answering a question.**Absolute paths only**"
    "**Proactiveness**"
)


def tag_signature(family: str, signature: str) -> str:
    """The signature a client sees: the upstream's, marked with the family that minted it,
    so a replay to a model of another family can leave it out (the upstream refuses
    signatures it did not mint). Stateless: it survives restarts and moves between
    replicas with the conversation."""
    return f"{family}.{signature}"


def untag_signature(signature: str) -> tuple[str | None, str]:
    """(family, upstream signature); family None for one this gateway did not tag."""
    family, dot, raw = signature.partition(".")
    if dot and family in ("claude", "gemini", "other") and raw:
        return family, raw
    return None, signature


class EmptyUpstreamResponse(errors.UpstreamError):
    """The upstream closed the stream without content or a finish reason; worth a retry."""


# ---------------------------------------------------------------------------------------------
# Request side
# ---------------------------------------------------------------------------------------------

JSONDict = dict[str, Any]


def to_cloudcode(
    request: c.ChatRequest,
    *,
    model: ModelInfo,
    project: str,
    session_id: str,
    request_id: str,
    tool_signatures: Mapping[str, str] = {},
    preamble: str = "",
) -> JSONDict:
    """The whole upstream body for `request` on `model` (pure; raises InvalidRequest).

    `preamble` (when not empty) goes before the client's system prompt, followed by the
    peers' "[ignore]" line so the model does not take the identity as its own.
    """
    claude = model.family == "claude"
    contents = _contents(request.messages, model=model, tool_signatures=tool_signatures)
    if not contents:
        raise errors.InvalidRequest(
            "messages: at least one message must have content", param="messages"
        )

    max_out = max(1, min(request.max_tokens, model.max_output_tokens))
    thinking, max_out = _thinking_config(request, model, max_out)
    generation: JSONDict = {"maxOutputTokens": max_out}
    # Claude refuses sampling overrides while thinking (temperature must be 1, top_k unset,
    # top_p >= 0.95); dropping them beats failing a request that did not ask for thinking.
    claude_thinking = claude and thinking is not None and thinking.get("include_thoughts")
    if request.temperature is not None and not (claude_thinking and request.temperature != 1):
        generation["temperature"] = request.temperature
    if request.top_p is not None and not (claude_thinking and request.top_p < 0.95):
        generation["topP"] = request.top_p
    if request.top_k is not None and not claude_thinking:
        generation["topK"] = request.top_k
    if request.stop_sequences:
        generation["stopSequences"] = list(request.stop_sequences)
    if thinking is not None:
        generation["thinkingConfig"] = thinking

    system_parts = [{"text": block.text} for block in request.system if block.text.strip()]
    if preamble:
        text = ANTIGRAVITY_PREAMBLE if preamble == "antigravity" else preamble
        system_parts[:0] = [{"text": text},
                            {"text": f"Please ignore the following [ignore]{text}[/ignore]"}]
    if request.response_format is not None:
        if claude:
            # Claude on this upstream has no JSON mode; the instruction is the portable form.
            system_parts.append({"text": _json_instruction(request.response_format)})
        else:
            generation["responseMimeType"] = "application/json"
            if request.response_format.schema is not None:
                generation["responseSchema"] = sanitize_schema(request.response_format.schema)

    inner: JSONDict = {"contents": contents}
    if system_parts:
        inner["systemInstruction"] = {"role": "user", "parts": system_parts}
    declarations = [
        {
            "name": tool.name,
            "description": tool.description,
            "parameters": sanitize_parameters(tool.input_schema),
        }
        for tool in request.tools
    ]
    tool_config = _tool_config(request.tool_choice, claude=claude)
    if not declarations:
        # A history with tool calls but no tools declared (summaries, title generation) is
        # refused by Claude; declaring what was used, uncallable, keeps the history valid.
        declarations = [
            {"name": name, "description": "", "parameters": sanitize_parameters(None)}
            for name in _used_tool_names(request.messages)
        ]
        tool_config = {"functionCallingConfig": {"mode": "NONE"}}
    if declarations:
        inner["tools"] = [{"functionDeclarations": declarations}]
        if tool_config is not None:
            inner["toolConfig"] = tool_config
    inner["generationConfig"] = generation
    if request.safety_settings and not claude:
        # Gemini's own field; Claude on this upstream has no such setting (it is dropped)
        inner["safetySettings"] = [dict(setting) for setting in request.safety_settings]
    inner["sessionId"] = session_id
    return {
        "project": project,
        "model": model.id,
        "request": inner,
        "userAgent": USER_AGENT,
        "requestType": REQUEST_TYPE,
        "requestId": request_id,
    }


def _used_tool_names(messages: Iterable[c.Message]) -> list[str]:
    names = (b.name for m in messages for b in m.content if isinstance(b, c.ToolUseBlock))
    return list(dict.fromkeys(names))


def _tool_config(choice: c.ToolChoice | None, *, claude: bool) -> JSONDict | None:
    # disable_parallel has no upstream equivalent and is dropped. Claude's free choice is
    # VALIDATED (calls checked against their schemas), as the Antigravity client and every
    # maintained peer send it; forcing a call is ANY for both families.
    if choice is None or choice.mode == "auto":
        if claude:
            return {"functionCallingConfig": {"mode": "VALIDATED"}}
        return None if choice is None else {"functionCallingConfig": {"mode": "AUTO"}}
    config: JSONDict
    if choice.mode == "none":
        config = {"mode": "NONE"}
    elif choice.mode == "tool" and choice.name:
        config = {"mode": "ANY", "allowedFunctionNames": [choice.name]}
    else:
        config = {"mode": "ANY"}
    return {"functionCallingConfig": config}


def _thinking_config(
    request: c.ChatRequest, model: ModelInfo, max_out: int
) -> tuple[JSONDict | None, int]:
    """The thinkingConfig (or None) and the maxOutputTokens that goes with it.

    The budget is the client's, else its effort's (`EFFORT_BUDGETS`), else the model's
    default; Gemini 3 takes an effort as a `thinkingLevel`. Thinking tokens count against
    maxOutputTokens, so when the budget does not fit under the client's max_tokens the
    budget is added on top (up to the model's cap) rather than starving the answer.
    """
    if not model.thinking:
        return None, max_out
    wanted = request.thinking
    effort = request.effort
    if effort is None and wanted is not None and wanted.adaptive:
        effort = "high"  # Anthropic's default effort
    if model.family != "claude":
        if wanted is not None and not wanted.enabled:
            return {"includeThoughts": False}, max_out
        # Gemini thinks whether asked or not; its thoughts are shown only to a client that
        # asked for thinking (Anthropic clients get thinking blocks only on request).
        config: JSONDict = {"includeThoughts": wanted is not None}
        budget = wanted.budget_tokens if wanted is not None else None
        if budget is None and request.effort is not None and model.version >= (3,):
            config["thinkingLevel"] = _GEMINI_LEVELS[request.effort]
            return config, max_out
        if budget is None and effort is not None and model.version < (3,):
            budget = min(EFFORT_BUDGETS[effort], GEMINI_25_MAX_BUDGET)
        if budget is None:
            budget = model.default_thinking_budget
        if budget is not None and budget >= 0:
            budget, max_out = _fit_budget(budget, max_out, model)
            config["thinkingBudget"] = budget
        return config, max_out

    # Anthropic's rule: no thinking unless the client enabled it (an OpenAI client does so
    # with reasoning_effort), even on a "-thinking" model id.
    if wanted is None or not wanted.enabled or not _claude_may_think(request, model):
        return None, max_out
    budget = wanted.budget_tokens
    if budget is None and effort is not None:
        budget = EFFORT_BUDGETS[effort]
    if budget is None:
        budget = model.default_thinking_budget or CLAUDE_MIN_THINKING_BUDGET
    budget = max(budget, CLAUDE_MIN_THINKING_BUDGET)
    budget, max_out = _fit_budget(budget, max_out, model)
    if budget < CLAUDE_MIN_THINKING_BUDGET:
        return None, max_out
    return {"include_thoughts": True, "thinking_budget": budget}, max_out


def _fit_budget(budget: int, max_out: int, model: ModelInfo) -> tuple[int, int]:
    if budget >= max_out:
        max_out = min(model.max_output_tokens, max_out + budget)
    if budget >= max_out:
        budget = max_out - 1
    return budget, max_out


def _claude_may_think(request: c.ChatRequest, model: ModelInfo) -> bool:
    """False where Claude would reject thinking: forced tool use, or a tool loop whose
    assistant turn carries no thinking it can replay (the client dropped it, as OpenAI
    clients must, or another model family wrote it)."""
    choice = request.tool_choice
    if choice is not None and choice.mode in ("any", "tool"):
        return False
    last = next((m for m in reversed(request.messages) if m.role == "assistant"), None)
    if last is None or not any(isinstance(b, c.ToolUseBlock) for b in last.content):
        return True
    return any(
        isinstance(b, c.ThinkingBlock) and _replayable(b.signature, model) is not None
        for b in last.content
    )


def _json_instruction(response_format: c.ResponseFormat) -> str:
    text = "Respond with a single JSON object and nothing else: no prose, no code fences."
    if response_format.schema is not None:
        schema = json.dumps(response_format.schema, sort_keys=True, separators=(",", ":"))
        text += f" The object must match this JSON Schema: {schema}"
    return text


def _contents(
    messages: Sequence[c.Message], *, model: ModelInfo, tool_signatures: Mapping[str, str]
) -> list[JSONDict]:
    names = {
        block.id: block.name
        for message in messages
        for block in message.content
        if isinstance(block, c.ToolUseBlock)
    }

    def parts(role: str, blocks: Sequence[c.ContentBlock]) -> list[JSONDict]:
        if role == "user":
            return _user_parts(blocks, model=model, names=names)
        return _model_parts(blocks, model=model, tool_signatures=tool_signatures)

    # Consecutive messages of one role become one content: Claude requires strict
    # alternation, and a turn whose blocks were all dropped must not split its neighbours.
    kept: list[tuple[str, list[c.ContentBlock]]] = []
    for role, blocks in _runs(messages):
        if not parts(role, blocks):
            continue
        if kept and kept[-1][0] == role:
            kept[-1][1].extend(blocks)
        else:
            kept.append((role, blocks))
    return [
        {"role": "user" if role == "user" else "model", "parts": parts(role, blocks)}
        for role, blocks in kept
    ]


def _runs(messages: Iterable[c.Message]) -> list[tuple[str, list[c.ContentBlock]]]:
    runs: list[tuple[str, list[c.ContentBlock]]] = []
    for message in messages:
        role, content = message.role, list(message.content)
        if role == "system":
            role, content = "user", [_system_message(message)]
        if runs and runs[-1][0] == role:
            runs[-1][1].extend(content)
        else:
            runs.append((role, content))
    return runs


def _system_message(message: c.Message) -> c.TextBlock:
    text = "\n\n".join(b.text for b in message.content if isinstance(b, c.TextBlock))
    return c.TextBlock(f"{SYSTEM_MESSAGE_OPEN}{text}{SYSTEM_MESSAGE_CLOSE}")


def _inline(media_type: str, data: str) -> JSONDict:
    return {"inlineData": {"mimeType": media_type, "data": data}}


def _media(block: c.ImageBlock | c.DocumentBlock) -> JSONDict:
    if isinstance(block, c.DocumentBlock) and block.media_type.startswith("text/plain"):
        # Plain-text documents travel as text: both families read it, not all take the blob.
        try:
            return {"text": base64.b64decode(block.data, validate=True).decode("utf-8")}
        except (binascii.Error, UnicodeDecodeError):
            pass
    return _inline(block.media_type, block.data)


def _user_parts(
    blocks: Sequence[c.ContentBlock], *, model: ModelInfo, names: Mapping[str, str]
) -> list[JSONDict]:
    # Tool results lead (Claude requires tool_result blocks first in their message); images
    # returned by tools follow them, then whatever the user wrote.
    results: list[JSONDict] = []
    result_media: list[JSONDict] = []
    rest: list[JSONDict] = []
    for block in blocks:
        if isinstance(block, c.TextBlock):
            if block.text.strip():
                rest.append({"text": block.text})
        elif isinstance(block, c.ImageBlock | c.DocumentBlock):
            rest.append(_media(block))
        elif isinstance(block, c.ToolResultBlock):
            results.append(_function_response(block, model=model, names=names))
            result_media.extend(
                _inline(item.media_type, item.data)
                for item in block.content
                if isinstance(item, c.ImageBlock)
            )
        # thinking and tool_use blocks cannot appear in a user turn; they are dropped.
    return [*results, *result_media, *rest]


def _function_response(
    block: c.ToolResultBlock, *, model: ModelInfo, names: Mapping[str, str]
) -> JSONDict:
    text = "\n".join(item.text for item in block.content if isinstance(item, c.TextBlock))
    if not text and any(isinstance(item, c.ImageBlock) for item in block.content):
        text = "(image attached)"
    name = block.name or names.get(block.tool_use_id) or block.tool_use_id
    response: JSONDict = {
        "name": name,
        "response": {"error": text} if block.is_error else {"result": text},
    }
    if model.family == "claude":
        response["id"] = block.tool_use_id
    return {"functionResponse": response}


def _model_parts(
    blocks: Sequence[c.ContentBlock],
    *,
    model: ModelInfo,
    tool_signatures: Mapping[str, str],
) -> list[JSONDict]:
    # Thinking first, then text, then calls: Claude requires a turn to open with its
    # thinking, and its calls to be last (their results follow in the next turn).
    thoughts: list[JSONDict] = []
    texts: list[JSONDict] = []
    calls: list[JSONDict] = []
    for block in blocks:
        if isinstance(block, c.ThinkingBlock):
            signature = _replayable(block.signature, model)
            if signature is not None:
                thoughts.append(
                    {"text": block.thinking, "thought": True, "thoughtSignature": signature}
                )
        elif isinstance(block, c.TextBlock):
            if block.text.strip():
                texts.append({"text": block.text})
        elif isinstance(block, c.ImageBlock | c.DocumentBlock):
            texts.append(_media(block))
        elif isinstance(block, c.ToolUseBlock):
            calls.append(_function_call(block, model=model, tool_signatures=tool_signatures))
        # redacted_thinking has no Cloud Code form; tool results cannot appear here.
    return [*thoughts, *texts, *calls]


def _replayable(signature: str | None, model: ModelInfo) -> str | None:
    """The upstream signature to replay a thought with on `model`, or None to leave the
    thought out: unsigned (the upstream can only refuse it), minted by another model family
    (a conversation that switched models or fell back), or of unknown origin on a model
    that is not Claude (Claude's are checked upstream, and an older gateway's Claude
    signatures carried no family)."""
    if not signature:
        return None
    family, raw = untag_signature(signature)
    if family is None:
        return raw if model.family == "claude" else None
    return raw if family == model.family else None


def _function_call(
    block: c.ToolUseBlock, *, model: ModelInfo, tool_signatures: Mapping[str, str]
) -> JSONDict:
    call: JSONDict = {"name": block.name, "args": dict(block.input)}
    if model.family == "claude":
        call["id"] = block.id
        return {"functionCall": call}
    return {"functionCall": call, "thoughtSignature": _call_signature(block, model,
                                                                      tool_signatures)}


def _call_signature(
    block: c.ToolUseBlock, model: ModelInfo, tool_signatures: Mapping[str, str]
) -> str:
    """The call's own signature (a Gemini client carries it), else the one the cache kept
    for this conversation, else the placeholder. One minted by another family is left out;
    an untagged one (a client that talked to Google before) is tried as it is."""
    for signature in (block.signature, tool_signatures.get(block.id)):
        if signature:
            family, raw = untag_signature(signature)
            if family is None or family == model.family:
                return raw
    return SKIP_SIGNATURE


# ---------------------------------------------------------------------------------------------
# Response side
# ---------------------------------------------------------------------------------------------

_REFUSALS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "LANGUAGE",
    }
)

_OpenKind = Literal["text", "thinking"]


class CloudCodeDecoder:
    """Turns a sequence of upstream payloads into canonical stream events (sans-IO)."""

    def __init__(self, *, model: ModelInfo, tool_id_prefix: str) -> None:
        self._model = model
        self._prefix = tool_id_prefix
        self._next_index = 0
        self._open: _OpenKind | None = None
        self._open_signed = False  # the open thinking block already has its signature
        self._tool_calls = 0
        self._finish_reason: str | None = None
        self._blocked = False
        self._counts: dict[str, int] = {}
        self._usage = c.Usage()
        self._done = False

    @property
    def usage(self) -> c.Usage:
        return self._usage

    def feed(self, payload: Mapping[str, Any]) -> list[c.StreamEvent]:
        """Events for one decoded SSE payload (bare or wrapped in {"response": ...})."""
        if self._done:
            return []
        inner = payload.get("response") if isinstance(payload, Mapping) else None
        body: Mapping[str, Any] = inner if isinstance(inner, Mapping) else payload
        error = body.get("error", payload.get("error"))
        if isinstance(error, Mapping):
            raise upstream_error(error)
        events: list[c.StreamEvent] = []
        candidates = body.get("candidates")
        candidate = candidates[0] if isinstance(candidates, list) and candidates else None
        if isinstance(candidate, Mapping):
            content = candidate.get("content")
            parts = content.get("parts") if isinstance(content, Mapping) else None
            if isinstance(parts, list):
                for part in parts:
                    if isinstance(part, Mapping):
                        events.extend(self._part(part))
            reason = candidate.get("finishReason")
            if isinstance(reason, str) and reason:
                self._finish_reason = reason
        feedback = body.get("promptFeedback")
        if isinstance(feedback, Mapping) and feedback.get("blockReason"):
            self._blocked = True
        usage = body.get("usageMetadata")
        if isinstance(usage, Mapping) and self._update_usage(usage):
            events.append(c.UsageUpdate(self._usage))
        return events

    def finish(self) -> list[c.StreamEvent]:
        """Close what is open and end the message; raise if the upstream said nothing."""
        if self._done:
            return []
        if self._next_index == 0 and self._finish_reason is None and not self._blocked:
            raise EmptyUpstreamResponse("upstream returned an empty response")
        self._done = True
        events = self._close()
        events.append(c.MessageEnd(stop_reason=self._stop_reason(), usage=self._usage))
        return events

    # -- parts ----------------------------------------------------------------------------

    def _part(self, part: Mapping[str, Any]) -> list[c.StreamEvent]:
        signature = part.get("thoughtSignature")
        signature = signature if isinstance(signature, str) and signature else None
        call = part.get("functionCall")
        if isinstance(call, Mapping):
            return self._function_call(call, signature)
        text = part.get("text")
        text = text if isinstance(text, str) else ""
        if part.get("thought") is True:
            return self._thought(text, signature)
        if text:
            events = []
            if self._open != "text":
                events = self._close()
                events.append(self._start("text"))
            events.append(c.TextDelta(self._index, text))
            return events
        if signature and self._open == "thinking" and not self._open_signed:
            # Gemini may send a thought's signature on an empty non-thought part after it.
            self._open_signed = True
            return [c.SignatureDelta(self._index, tag_signature(self._model.family, signature))]
        return []  # empty text, inline images, code execution: nothing to relay

    def _thought(self, text: str, signature: str | None) -> list[c.StreamEvent]:
        events: list[c.StreamEvent] = []
        # One signature per block: a thought after a signed one starts a new block.
        if self._open != "thinking" or self._open_signed:
            events.extend(self._close())
            events.append(self._start("thinking"))
        if text:
            events.append(c.ThinkingDelta(self._index, text))
        if signature:
            self._open_signed = True
            events.append(c.SignatureDelta(self._index, tag_signature(self._model.family,
                                                                       signature)))
        return events

    def _function_call(self, call: Mapping[str, Any], signature: str | None) -> list[c.StreamEvent]:
        events = self._close()
        upstream_id = call.get("id")
        if isinstance(upstream_id, str) and upstream_id:
            tool_id = upstream_id
        else:
            tool_id = f"{self._prefix}{self._tool_calls}"
        self._tool_calls += 1
        name = call.get("name")
        args = call.get("args")
        index = self._next_index
        self._next_index += 1
        events.append(
            c.BlockStart(
                index, "tool_use", tool_id=tool_id, tool_name=name if isinstance(name, str) else ""
            )
        )
        arguments = args if isinstance(args, Mapping) else {}
        encoded = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        events.append(c.ToolInputDelta(index, encoded))
        events.append(c.BlockStop(index))
        if signature:
            tagged = tag_signature(self._model.family, signature)
            events.append(c.ToolSignature(tool_id, tagged))
        return events

    # -- blocks ---------------------------------------------------------------------------

    @property
    def _index(self) -> int:
        return self._next_index - 1

    def _start(self, kind: _OpenKind) -> c.StreamEvent:
        self._open = kind
        self._open_signed = False
        self._next_index += 1
        return c.BlockStart(self._index, kind)

    def _close(self) -> list[c.StreamEvent]:
        if self._open is None:
            return []
        self._open = None
        self._open_signed = False
        return [c.BlockStop(self._index)]

    # -- usage and stop reason ------------------------------------------------------------

    def _update_usage(self, metadata: Mapping[str, Any]) -> bool:
        for key in (
            "promptTokenCount",
            "cachedContentTokenCount",
            "candidatesTokenCount",
            "thoughtsTokenCount",
        ):
            value = metadata.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                self._counts[key] = value
        prompt = self._counts.get("promptTokenCount", 0)
        cached = min(self._counts.get("cachedContentTokenCount", 0), prompt)
        thoughts = self._counts.get("thoughtsTokenCount", 0)
        usage = c.Usage(
            input_tokens=prompt - cached,
            output_tokens=self._counts.get("candidatesTokenCount", 0) + thoughts,
            cache_read_input_tokens=cached,
            thinking_tokens=thoughts,
        )
        changed = usage != self._usage
        self._usage = usage
        return changed

    def _stop_reason(self) -> c.StopReason:
        reason = self._finish_reason
        if reason == "MAX_TOKENS":
            return "max_tokens"
        if self._blocked or reason in _REFUSALS:
            return "refusal"
        if self._tool_calls:
            return "tool_use"
        # STOP, OTHER, MALFORMED_FUNCTION_CALL, ...: the model is done. The upstream does not
        # say whether a stop sequence ended the text, so stop_sequence is never reported.
        return "end_turn"


def decode_generate_response(
    payload: Mapping[str, Any], *, model: ModelInfo, tool_id_prefix: str
) -> list[c.StreamEvent]:
    """Events for a whole (non-streaming) generateContent answer."""
    decoder = CloudCodeDecoder(model=model, tool_id_prefix=tool_id_prefix)
    events = decoder.feed(payload)
    events.extend(decoder.finish())
    return events


# ---------------------------------------------------------------------------------------------
# Errors inside a 200 answer
# ---------------------------------------------------------------------------------------------

_MAX_MESSAGE = 300


def upstream_error(error: Mapping[str, Any]) -> errors.GatewayError:
    """The gateway error for a google.rpc.Status-shaped `error` object."""
    code = error.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else 0
    status = error.get("status")
    status = status if isinstance(status, str) else ""
    message = error.get("message")
    detail = _unwrapped(message.strip()) if isinstance(message, str) else ""
    if len(detail) > _MAX_MESSAGE:
        detail = detail[:_MAX_MESSAGE] + "..."
    label = " ".join(str(x) for x in (code or "", status) if x) or "error"
    text = f"upstream {label}" + (f": {detail}" if detail else "")
    if code == 429 or status == "RESOURCE_EXHAUSTED":
        return errors.RateLimited(text, retry_after=_retry_delay(error))
    if code in (401, 403) or status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return errors.UpstreamAuthError(text)
    if code == 400 or status in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE"):
        return errors.UpstreamInvalidRequest(text)
    if code in (503, 529) or status == "UNAVAILABLE":
        return errors.Overloaded(text)
    if code == 504 or status == "DEADLINE_EXCEEDED":
        return errors.UpstreamTimeout(text)
    return errors.UpstreamError(text)


def _unwrapped(message: str) -> str:
    """Claude's refusals arrive as Anthropic's own error JSON inside the Google message;
    the client is better served by the sentence inside."""
    if not message.startswith("{"):
        return message
    try:
        data = json.loads(message)
    except ValueError:
        return message
    inner = data.get("error") if isinstance(data, dict) else None
    text = inner.get("message") if isinstance(inner, dict) else None
    return text.strip() if isinstance(text, str) and text.strip() else message


def _retry_delay(error: Mapping[str, Any]) -> float | None:
    details = error.get("details")
    if not isinstance(details, list):
        return None
    for detail in details:
        if not isinstance(detail, Mapping):
            continue
        delay = detail.get("retryDelay")
        metadata = detail.get("metadata")
        if not isinstance(delay, str) and isinstance(metadata, Mapping):
            delay = metadata.get("quotaResetDelay")
        if isinstance(delay, str):
            seconds = parse_duration(delay)
            if seconds is not None:
                return seconds
    return None
