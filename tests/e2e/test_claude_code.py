"""Claude Code, the real CLI from npm, against `gateway demo`: the judge of the Anthropic face.

The pinned `@anthropic-ai/claude-code` is installed with npm into the project's ignored
`build/npm` (once; later runs reuse it) and run with `claude -p` against a `gateway demo`
subprocess, exactly as a user would: only `ANTHROPIC_BASE_URL` and `ANTHROPIC_API_KEY` point
it here, plus Claude Code's own switches for auto-update, telemetry and error reporting
(off). Nothing leaves loopback. Each run must finish without an API error: the default
model (Claude Code's newest Opus name), `--model sonnet`, a Gemini model, a real tool loop
(Write then Read a file, with --dangerously-skip-permissions), `--continue` with thinking
replayed, a conversation that moves from Gemini to Claude, and a clear error when the
gateway's client identity is outdated. npm is required: without it these tests fail,
saying how to install it (`.ci/run` does).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.clis import Demo, Run, npm_binary, start_demo, stop_demo

CLAUDE_CODE_VERSION = "2.1.332"
RUN_SECONDS = 120


@pytest.fixture(scope="module")
def claude_code() -> Path:
    """The pinned Claude Code binary, installed from npm on first use."""
    return npm_binary("@anthropic-ai/claude-code", CLAUDE_CODE_VERSION, "claude")


def claude(
    binary: Path, demo: Demo, home: Path, workdir: Path, *args: str, quiet: bool = True
) -> Run:
    """`claude -p ...` as a user runs it, pointed at the demo by two variables."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": demo.url,
        "ANTHROPIC_API_KEY": "unused",
    }
    if quiet:  # Claude Code's own off switches: no update checks, telemetry or reports
        env |= {"DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
                "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    if "--dangerously-skip-permissions" in args and os.geteuid() == 0:
        env["IS_SANDBOX"] = "1"  # Claude Code refuses that flag to root outside a sandbox
    result = subprocess.run([str(binary), "-p", *args], capture_output=True, text=True,
                            cwd=workdir, env=env, timeout=RUN_SECONDS)
    return Run(result.returncode, result.stdout + result.stderr)


def completed(run: Run) -> str:
    assert run.returncode == 0, run.output
    assert "API Error" not in run.output, run.output
    return run.output


def test_say_hello_with_only_the_base_url_and_key(
    claude_code: Path, demo: Demo, home: Path, workdir: Path
) -> None:
    output = completed(claude(claude_code, demo, home, workdir, "say hello", quiet=False))
    assert "Echo: say hello" in output
    body = demo.generation_bodies()[-1]
    # Claude Code's default model name (its newest Opus) is served by the newest Opus
    assert body["model"] == "claude-opus-4-6-thinking"


@pytest.mark.parametrize(
    ("flag", "served"),
    [("sonnet", "claude-sonnet-4-6"), ("haiku", "claude-sonnet-4-6"),
     ("gemini-3-flash", "gemini-3-flash"), ("gemini-3.5-flash-low", "gemini-3.5-flash-low")],
)
def test_models(
    claude_code: Path, demo: Demo, home: Path, workdir: Path, flag: str, served: str
) -> None:
    output = completed(claude(claude_code, demo, home, workdir, "say hello", "--model", flag))
    assert "Echo: say hello" in output
    assert demo.generation_bodies()[-1]["model"] == served


def test_tool_loop_creates_and_reads_a_file(
    claude_code: Path, demo: Demo, home: Path, workdir: Path
) -> None:
    target = workdir / "hello.txt"
    prompt = (f"Use the Write tool to write 'hi from the gateway' to {target}, then use the "
              "Read tool to read it back.")
    output = completed(claude(claude_code, demo, home, workdir, prompt,
                              "--dangerously-skip-permissions"))
    assert target.read_text() == "hi from the gateway"
    assert "Tool Read returned" in output and "hi from the gateway" in output
    loop = demo.generation_bodies()[-3:]
    calls = [p["functionCall"]["name"] for body in loop for c in body["request"]["contents"]
             for p in c["parts"] if "functionCall" in p]
    assert calls[-2:] == ["Write", "Read"]


def _thoughts(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for c in body["request"]["contents"] if c["role"] == "model"
            for p in c["parts"] if p.get("thought")]


def test_continue_replays_thinking(
    claude_code: Path, demo: Demo, home: Path, workdir: Path
) -> None:
    completed(claude(claude_code, demo, home, workdir, "think about bananas"))
    output = completed(claude(claude_code, demo, home, workdir, "--continue", "and now?"))
    assert "Echo: and now?" in output
    body = demo.generation_bodies()[-1]
    assert body["request"]["generationConfig"]["thinkingConfig"]["include_thoughts"] is True
    # the first answer's thinking went back, with the signature the (strict) upstream minted
    [thought] = _thoughts(body)
    assert thought["thoughtSignature"] and "." not in thought["thoughtSignature"]


def test_a_conversation_moves_from_gemini_to_claude_and_back(
    claude_code: Path, demo: Demo, home: Path, workdir: Path
) -> None:
    completed(claude(claude_code, demo, home, workdir, "remember banana",
                     "--model", "gemini-3-flash"))
    completed(claude(claude_code, demo, home, workdir, "--continue", "what was it?",
                     "--model", "sonnet"))
    completed(claude(claude_code, demo, home, workdir, "--continue", "and in Gemini?",
                     "--model", "gemini-3.1-pro-low"))
    *_, gemini_first, claude_next, gemini_again = demo.generation_bodies()
    assert claude_next["model"] == "claude-sonnet-4-6"
    assert len(claude_next["request"]["contents"]) == 3  # the Gemini turn is in its history
    assert gemini_again["model"] == "gemini-3.1-pro-low"
    assert len(gemini_again["request"]["contents"]) == 5
    assert gemini_first["model"] == "gemini-3-flash"


def test_an_outdated_client_identity_is_a_clear_error(
    claude_code: Path, tmp_path: Path, home: Path, workdir: Path
) -> None:
    proc, old = start_demo(tmp_path / "old", {
        "GATEWAY_UPSTREAM_USER_AGENT": "antigravity/1.11.5 linux/amd64"})
    try:
        run = claude(claude_code, old, home, workdir, "say hello")
    finally:
        stop_demo(proc)
    assert run.returncode != 0
    assert "API Error: 502" in run.output and "upstream.user_agent" in run.output
    assert "Echo" not in run.output
    refusals = json.dumps([line for line in old.lines if "client version" in line])
    assert "antigravity/1.11.5" in refusals  # and the operator's log says what to change
