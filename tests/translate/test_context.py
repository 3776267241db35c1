"""Context editing on canonical requests: what is cleared, what is reported, what is kept."""

from __future__ import annotations

import attrs

from gateway.translate import canonical as c
from gateway.translate.context import CLEARED_TOOL_RESULT, apply_context_edits


def loop(edits: tuple[c.ContextEdit, ...], calls: int = 3) -> c.ChatRequest:
    messages: list[c.Message] = [c.Message("user", (c.TextBlock("go"),))]
    for i in range(calls):
        messages.append(c.Message("assistant", (
            c.ThinkingBlock(f"step {i}", f"claude.sig{i}"),
            c.ToolUseBlock(f"t{i}", "Read", {"file_path": f"/{i}"}),
        )))
        messages.append(c.Message("user", (
            c.ToolResultBlock(f"t{i}", (c.TextBlock(f"contents {i} " * 20),), name="Read"),
        )))
    return c.ChatRequest(model="m", messages=tuple(messages), max_tokens=100,
                         context_edits=edits)


def results(request: c.ChatRequest) -> list[str]:
    return [item.text for m in request.messages for b in m.content
            if isinstance(b, c.ToolResultBlock) for item in b.content
            if isinstance(item, c.TextBlock)]


def test_keep_all_changes_nothing_and_keep_one_keeps_the_last_turn() -> None:
    request = loop((c.ClearThinking(keep_turns=None),))
    assert apply_context_edits(request) == (request, ())
    edited, (applied,) = apply_context_edits(loop((c.ClearThinking(keep_turns=1),)))
    thinking = [b for m in edited.messages for b in m.content if isinstance(b, c.ThinkingBlock)]
    assert [b.thinking for b in thinking] == ["step 2"]
    assert applied.cleared_thinking_turns == 2 and applied.cleared_input_tokens > 0


def test_tool_uses_are_cleared_once_past_the_trigger_and_not_again() -> None:
    edit = c.ClearToolUses(trigger_tokens=10, keep=1, clear_inputs=True)
    edited, (applied,) = apply_context_edits(loop((edit,)))
    assert results(edited)[:2] == [CLEARED_TOOL_RESULT] * 2
    assert results(edited)[2].startswith("contents 2")
    assert applied.cleared_tool_uses == 2
    assert set(applied.cleared_input_ids) == {"t0", "t1"}  # their signatures are stale now
    # the same edit again (the client resends the edited history): nothing left to clear
    again, applied_again = apply_context_edits(attrs.evolve(edited, context_edits=(edit,)))
    assert again == edited and applied_again == ()


def test_nothing_is_cleared_under_the_trigger_or_clear_at_least() -> None:
    quiet = loop((c.ClearToolUses(trigger_tokens=10**6),))
    assert apply_context_edits(quiet) == (quiet, ())
    small = loop((c.ClearToolUses(trigger_tokens=0, keep=2, clear_at_least=10**6),))
    assert apply_context_edits(small) == (small, ())
    excluded = loop((c.ClearToolUses(trigger_tokens=0, keep=0, exclude_tools=("Read",)),))
    assert apply_context_edits(excluded) == (excluded, ())

