"""Codex CLI, the real agent from npm, against `gateway demo`: the judge of the Responses face.

The pinned `@openai/codex` is installed with npm into the ignored `build/npm` and run as
`codex exec`, the way a user points it at the gateway: a `model_providers` entry with
`wire_api = "responses"` and the demo's `/v1` base URL, given with `-c` (the same keys a
`~/.codex/config.toml` holds), plus `web_search = "disabled"` (the upstream has no hosted
web search; without it Codex gets a clear 400 saying so). Its home is a temporary
directory and nothing leaves loopback. Each run must finish with the model's answer: a
prompt, a shell tool loop (`exec_command` runs for real), a Claude thinking model whose
sealed reasoning crosses the loop (Codex keeps no server state: `store: false`), and a
session resumed in a second process.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.clis import Demo, Run, npm_binary

CODEX_VERSION = "0.169.0"
RUN_SECONDS = 120


@pytest.fixture(scope="module")
def codex_cli() -> Path:
    return npm_binary("@openai/codex", CODEX_VERSION, "codex")


def codex(
    binary: Path, demo: Demo, home: Path, workdir: Path, *args: str, model: str,
    web_search_off: bool = True,
) -> Run:
    provider = (f'{{name="gateway", base_url="{demo.url}/v1", wire_api="responses", '
                'request_max_retries=0, stream_max_retries=0}')
    settings = ["-c", "model_provider=gateway", "-c", f"model_providers.gateway={provider}",
                "-c", "check_for_update_on_startup=false", "-c", "analytics.enabled=false"]
    if web_search_off:
        settings += ["-c", 'web_search="disabled"']
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home),
           "CODEX_HOME": str(home / ".codex"), "NO_COLOR": "1"}
    (home / ".codex").mkdir(exist_ok=True)
    command = [str(binary), "exec", *settings, "-m", model, "--skip-git-repo-check", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir, env=env,
                            timeout=RUN_SECONDS, stdin=subprocess.DEVNULL)
    return Run(result.returncode, result.stdout + result.stderr)


def completed(run: Run) -> str:
    assert run.returncode == 0, run.output
    assert "ERROR" not in run.output, run.output
    return run.output


def contents(body: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = body["request"]["contents"]
    return found


def test_codex_exec_answers_a_prompt(
    codex_cli: Path, demo: Demo, home: Path, workdir: Path
) -> None:
    output = completed(codex(codex_cli, demo, home, workdir, "say hello",
                             model="gemini-3-flash"))
    assert "Echo: say hello" in output
    body = demo.generation_bodies()[-1]
    assert body["model"] == "gemini-3-flash"
    # Codex's instructions arrived as the system prompt, its tools as declarations
    assert "Codex" in body["request"]["systemInstruction"]["parts"][0]["text"]
    names = {d["name"] for t in body["request"]["tools"] for d in t["functionDeclarations"]}
    assert "exec_command" in names


def test_codex_runs_a_shell_command_through_the_gateway(
    codex_cli: Path, demo: Demo, home: Path, workdir: Path
) -> None:
    output = completed(codex(
        codex_cli, demo, home, workdir, "--dangerously-bypass-approvals-and-sandbox",
        "use exec_command to run 'hello from codex'", model="gemini-3-flash"))
    assert "Tool exec_command returned" in output and "hello from codex" in output
    call, result = demo.generation_bodies()[-2:]
    assert not any("functionResponse" in p for c in contents(call) for p in c["parts"])
    responses = [p["functionResponse"] for c in contents(result) for p in c["parts"]
                 if "functionResponse" in p]
    assert responses and responses[0]["name"] == "exec_command"
    assert "hello from codex" in str(responses[0]["response"])


def test_claude_thinking_crosses_a_codex_tool_loop_sealed(
    codex_cli: Path, demo: Demo, home: Path, workdir: Path
) -> None:
    """Codex sends store: false and asks for encrypted reasoning: the thought and its
    signature come back to the upstream inside the reasoning item Codex kept."""
    output = completed(codex(
        codex_cli, demo, home, workdir, "--dangerously-bypass-approvals-and-sandbox",
        "use exec_command to run 'thinking codex'", model="claude-opus-4-6-thinking"))
    assert "thinking codex" in output
    last = demo.generation_bodies()[-1]
    thoughts = [p for c in contents(last) if c["role"] == "model" for p in c["parts"]
                if p.get("thought")]
    assert thoughts and thoughts[0]["thoughtSignature"]


def test_a_codex_session_resumes_in_a_new_process(
    codex_cli: Path, demo: Demo, home: Path, workdir: Path
) -> None:
    completed(codex(codex_cli, demo, home, workdir, "remember bananas",
                    model="claude-opus-4-6-thinking"))
    output = completed(codex(codex_cli, demo, home, workdir, "resume", "--last",
                             "what did I say?", model="claude-opus-4-6-thinking"))
    assert "Echo: what did I say?" in output
    history = contents(demo.generation_bodies()[-1])
    assert any("remember bananas" in str(c) for c in history)


def test_without_web_search_disabled_codex_gets_a_clear_error(
    codex_cli: Path, demo: Demo, home: Path, workdir: Path
) -> None:
    run = codex(codex_cli, demo, home, workdir, "say hello", model="gemini-3-flash",
                web_search_off=False)
    assert "web_search" in run.output and 'web_search = \\"disabled\\"' in run.output
    assert "Echo" not in run.output
