"""Anthropic context editing (`context_management.edits`) applied to a canonical request.

The upstream knows nothing of context editing, so the gateway does what the Messages API
would before the model sees the conversation. `clear_thinking` drops thinking blocks from
all but the most recent assistant turns that have some (`keep: "all"`, what Claude Code
sends, changes nothing). `clear_tool_uses` acts only once the estimated prompt exceeds its
trigger: the results of all but the last `keep` tool uses (tools in `exclude_tools` are
never touched) are replaced by a short placeholder, their inputs too when asked, and
nothing is cleared when less than `clear_at_least` tokens would go. Pure: the request in,
the edited request and what was done out.
"""

from __future__ import annotations

import json

import attrs

from gateway.translate import canonical as c
from gateway.translate.tokens import estimate_tokens, image_tokens, text_tokens

__all__ = ["CLEARED_TOOL_RESULT", "AppliedEdit", "apply_context_edits"]

CLEARED_TOOL_RESULT = "[tool result cleared to save context]"


@attrs.frozen(slots=True)
class AppliedEdit:
    """One edit that changed the request, as Anthropic reports it."""

    type: str  # "clear_thinking_20251015" or "clear_tool_uses_20250919"
    cleared_thinking_turns: int = 0
    cleared_tool_uses: int = 0
    cleared_input_tokens: int = 0
    # tool calls whose input was cleared: a signature the upstream gave them no longer fits
    cleared_input_ids: tuple[str, ...] = ()


def apply_context_edits(
    request: c.ChatRequest,
) -> tuple[c.ChatRequest, tuple[AppliedEdit, ...]]:
    """The request after its context edits (in the order given), and the edits that acted."""
    applied: list[AppliedEdit] = []
    for edit in request.context_edits:
        if isinstance(edit, c.ClearThinking):
            request, done = _clear_thinking(request, edit)
        else:
            request, done = _clear_tool_uses(request, edit)
        if done is not None:
            applied.append(done)
    return request, tuple(applied)


def _is_thinking(block: c.ContentBlock) -> bool:
    return isinstance(block, c.ThinkingBlock | c.RedactedThinkingBlock)


def _clear_thinking(
    request: c.ChatRequest, edit: c.ClearThinking
) -> tuple[c.ChatRequest, AppliedEdit | None]:
    if edit.keep_turns is None:
        return request, None
    with_thinking = [
        i for i, m in enumerate(request.messages)
        if m.role == "assistant" and any(_is_thinking(b) for b in m.content)
    ]
    doomed = set(with_thinking[: max(0, len(with_thinking) - edit.keep_turns)])
    if not doomed:
        return request, None
    tokens = 0
    messages: list[c.Message] = []
    for i, message in enumerate(request.messages):
        if i in doomed:
            tokens += sum(
                text_tokens(b.thinking) for b in message.content if isinstance(b, c.ThinkingBlock)
            )
            message = attrs.evolve(
                message, content=tuple(b for b in message.content if not _is_thinking(b))
            )
        messages.append(message)
    return attrs.evolve(request, messages=tuple(messages)), AppliedEdit(
        "clear_thinking_20251015", cleared_thinking_turns=len(doomed),
        cleared_input_tokens=tokens,
    )


def _clear_tool_uses(
    request: c.ChatRequest, edit: c.ClearToolUses
) -> tuple[c.ChatRequest, AppliedEdit | None]:
    if estimate_tokens(request) <= edit.trigger_tokens:
        return request, None
    excluded = set(edit.exclude_tools)
    calls = [
        block.id
        for message in request.messages
        for block in message.content
        if isinstance(block, c.ToolUseBlock) and block.name not in excluded
    ]
    doomed = set(calls[: max(0, len(calls) - edit.keep)])
    if not doomed:
        return request, None
    placeholder = (c.TextBlock(CLEARED_TOOL_RESULT),)
    cleared = 0
    uses: set[str] = set()
    inputs: list[str] = []
    messages: list[c.Message] = []
    for message in request.messages:
        blocks: list[c.ContentBlock] = []
        for block in message.content:
            # an earlier edit (or turn) may have cleared it already: that is not clearing
            if (isinstance(block, c.ToolResultBlock) and block.tool_use_id in doomed
                    and block.content != placeholder):
                cleared += sum(
                    text_tokens(item.text) if isinstance(item, c.TextBlock)
                    else image_tokens(item.data)
                    for item in block.content
                )
                uses.add(block.tool_use_id)
                block = attrs.evolve(block, content=placeholder)
            elif (isinstance(block, c.ToolUseBlock) and edit.clear_inputs
                  and block.id in doomed and block.input):
                cleared += text_tokens(json.dumps(dict(block.input)))
                uses.add(block.id)
                inputs.append(block.id)
                block = attrs.evolve(block, input={})
            blocks.append(block)
        messages.append(attrs.evolve(message, content=tuple(blocks)))
    if not uses or cleared < edit.clear_at_least:
        return request, None
    return attrs.evolve(request, messages=tuple(messages)), AppliedEdit(
        "clear_tool_uses_20250919", cleared_tool_uses=len(uses), cleared_input_tokens=cleared,
        cleared_input_ids=tuple(inputs),
    )
