"""Claude Code's request bodies as it sends them today, through the whole pure pipeline.

Each fixture under tests/fixtures/claude_code is a body shaped like Claude Code 2.1's (mid-
conversation system messages, adaptive thinking with `display: omitted`, `output_config`
effort, `context_management`, the session in `metadata.user_id`, deferred tools and tool
search, tool changes, histories written by several model families). The golden part holds
the canonical request and the Cloud Code body for a Claude and a Gemini target; the tests
below state the rules those goldens must keep. Regenerate with GATEWAY_UPDATE_GOLDEN=1 and
read the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs
import pytest

from gateway.translate import canonical as c
from gateway.translate.anthropic import parse_messages_request, render_context_management
from gateway.translate.cloudcode import SKIP_SIGNATURE, SYSTEM_MESSAGE_OPEN, to_cloudcode
from gateway.translate.context import apply_context_edits
from gateway.translate.models import FALLBACK
from gateway.translate.session import (
    claude_code_session,
    client_session_key,
    conversation_session_id,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "claude_code"
UPDATE = os.environ.get("GATEWAY_UPDATE_GOLDEN") == "1"


def pipeline(data: dict[str, Any]) -> dict[str, Any]:
    body = data["body"]
    chat, applied = apply_context_edits(parse_messages_request(body))
    session = conversation_session_id(chat, user=body.get("metadata", {}).get("user_id"))
    client = claude_code_session(body.get("metadata", {}).get("user_id"), None)
    out: dict[str, Any] = {
        "canonical": json.loads(json.dumps(attrs.asdict(chat))),
        "sticky_key": client_session_key(client) if client else session,
        "context_management": render_context_management(applied),
    }
    for target in data["targets"]:
        out[target] = to_cloudcode(
            chat,
            model=FALLBACK.resolve(target),
            project="proj-1",
            session_id=session,
            request_id="agent-req-1",
        )
    return out


def load(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    path = FIXTURES / f"{name}.json"
    data = json.loads(path.read_text())
    actual = pipeline(data)
    if UPDATE:
        data["expected"] = actual
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    assert data.get("expected") is not None, f"{path.name}: run with GATEWAY_UPDATE_GOLDEN=1"
    assert actual == data["expected"]
    return data, actual


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.json")))
def test_golden(name: str) -> None:
    load(name)


def contents(out: dict[str, Any], target: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = out[target]["request"]["contents"]
    return result


def texts(content: dict[str, Any]) -> list[str]:
    return [p["text"] for p in content["parts"] if "text" in p]


def test_first_turn() -> None:
    _, out = load("first_turn")
    chat = out["canonical"]
    assert [m["role"] for m in chat["messages"]] == ["user", "system"]
    assert chat["thinking"] == {"enabled": True, "budget_tokens": None, "adaptive": True}
    assert chat["effort"] == "medium"
    assert not any("billing" in b["text"] for b in chat["system"])  # Anthropic's own line
    # the session Claude Code names keeps the conversation (and its subagents) on one account
    assert out["sticky_key"].startswith("client-")
    for target in ("claude-opus-4-6-thinking", "gemini-3-flash"):
        (first,) = contents(out, target)  # the system message joins the user's turn...
        assert first["role"] == "user"
        assert texts(first)[-1].startswith(SYSTEM_MESSAGE_OPEN)  # ...marked, at its place
        assert "# Environment" in texts(first)[-1]
        request = out[target]["request"]
        names = [d["name"] for d in request["tools"][0]["functionDeclarations"]]
        assert names == ["Read", "Write", "ToolSearch"]  # deferred tools wait for a search
        assert request["generationConfig"]["maxOutputTokens"] <= 65_536  # 128000 capped
    claude = out["claude-opus-4-6-thinking"]["request"]
    assert claude["generationConfig"]["thinkingConfig"] == {
        "include_thoughts": True, "thinking_budget": 8192}  # effort medium
    assert claude["toolConfig"] == {"functionCallingConfig": {"mode": "VALIDATED"}}
    gemini = out["gemini-3-flash"]["request"]
    assert gemini["generationConfig"]["thinkingConfig"] == {
        "includeThoughts": True, "thinkingLevel": "medium"}
    assert "toolConfig" not in gemini
    assert out["context_management"] == {"applied_edits": []}  # keep: all


def test_tool_loop() -> None:
    _, out = load("tool_loop")
    claude = contents(out, "claude-opus-4-6-thinking")
    assert [c["role"] for c in claude] == ["user", "model", "user"]
    thought, call = claude[1]["parts"]
    assert thought["thought"] is True and "." not in thought["thoughtSignature"]  # untagged
    assert call["functionCall"]["id"] == "toolu_emu_1_0"
    result, reminder = claude[2]["parts"]  # tool results lead, the late system message follows
    assert result["functionResponse"]["name"] == "Write"
    assert reminder["text"].startswith(SYSTEM_MESSAGE_OPEN)
    # the system message set this turn's effort
    budget = out["claude-opus-4-6-thinking"]["request"]["generationConfig"]["thinkingConfig"]
    assert budget["thinking_budget"] == 2048
    gemini = contents(out, "gemini-3-flash")
    assert [p for p in gemini[1]["parts"] if p.get("thought")] == []  # Claude's thought: out
    assert gemini[1]["parts"][0]["thoughtSignature"] == SKIP_SIGNATURE


def test_model_switch_keeps_each_family_its_own_thoughts() -> None:
    _, out = load("model_switch")

    def thoughts(target: str) -> list[str]:
        return [p["text"] for content in contents(out, target) for p in content["parts"]
                if p.get("thought")]

    # Claude gets its own and the untagged (older gateway) ones; Gemini only its own
    assert thoughts("claude-opus-4-6-thinking") == ["Claude thought.", "Older thought."]
    assert thoughts("gemini-3-flash") == ["Gemini thought."]
    for target in ("claude-opus-4-6-thinking", "gemini-3-flash"):
        answers = [t for content in contents(out, target) for t in texts(content)
                   if t.endswith("answer.")]
        assert answers == ["Gemini answer.", "Claude answer.", "Older answer."]


def test_tool_search_and_mid_conversation_tool_changes() -> None:
    _, out = load("tool_search_and_changes")
    for target in ("claude-opus-4-6-thinking", "gemini-3-flash"):
        request = out[target]["request"]
        names = [d["name"] for d in request["tools"][0]["functionDeclarations"]]
        # WebFetch found by the search, Grep added, Write withdrawn, the placeholder unseen
        assert names == ["Read", "ToolSearch", "WebFetch", "Grep"]
        said = " ".join(t for content in contents(out, target) for t in texts(content))
        assert "Tool `WebFetch` loaded." in json.dumps(request["contents"])
        assert "The tool `Write` is no longer available." in said
        assert "The tool `Grep` is now available." in said


def test_context_edits_are_applied_and_reported() -> None:
    _, out = load("context_edits")
    assert out["context_management"] == {"applied_edits": [
        {"type": "clear_thinking_20251015", "cleared_input_tokens": 4,
         "cleared_thinking_turns": 1},
        {"type": "clear_tool_uses_20250919", "cleared_input_tokens": 108,
         "cleared_tool_uses": 1},
    ]}
    claude = contents(out, "claude-opus-4-6-thinking")
    first_call, last_call = claude[1]["parts"], claude[3]["parts"]
    assert not any(p.get("thought") for p in first_call)  # older thinking cleared
    assert first_call[0]["functionCall"]["args"] == {}  # and its input (clear_tool_inputs)
    assert last_call[0]["thought"] is True  # the last turn keeps its thinking
    results = [p["functionResponse"]["response"] for x in claude for p in x["parts"]
               if "functionResponse" in p]
    assert results == [{"result": "[tool result cleared to save context]"},
                       {"result": "contents of b"}]


def test_canonical_round_trip_types() -> None:
    data = json.loads((FIXTURES / "first_turn.json").read_text())
    chat = parse_messages_request(data["body"])
    assert isinstance(chat.messages[1], c.Message) and chat.messages[1].role == "system"
    assert chat.context_edits == (c.ClearThinking(keep_turns=None),)
