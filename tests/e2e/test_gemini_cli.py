"""Gemini CLI, the real agent from npm, against `gateway demo`: the judge of the Gemini face.

The pinned `@google/gemini-cli` is installed with npm into the ignored `build/npm` and run
headless (`gemini -p ...`) the way a user points it at the gateway: `GOOGLE_GEMINI_BASE_URL`
set to the demo's URL, `GEMINI_API_KEY` set, and the Gemini API key auth chosen in its
settings (with only the base URL set, 0.61 picks its "gateway" auth type, which its headless
mode then refuses as invalid). Its home is a temporary directory and nothing leaves
loopback. Each run must finish with the model's answer: a prompt on a Gemini model and on
Claude, and a shell tool loop (`run_shell_command` runs for real) on a model that signs its
calls, whose signature the CLI must carry back.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.clis import Demo, Run, npm_binary

GEMINI_CLI_VERSION = "0.61.0"
RUN_SECONDS = 120
SKIP_SIGNATURE = "skip_thought_signature_validator"


@pytest.fixture(scope="module")
def gemini_cli() -> Path:
    return npm_binary("@google/gemini-cli", GEMINI_CLI_VERSION, "gemini")


@pytest.fixture
def home(home: Path) -> Path:
    """The shared fresh home, with the settings that choose API-key auth."""
    (home / ".gemini").mkdir()
    settings = {"security": {"auth": {"selectedType": "gemini-api-key"}},
                "privacy": {"usageStatisticsEnabled": False}}
    (home / ".gemini" / "settings.json").write_text(json.dumps(settings))
    return home


def gemini(binary: Path, demo: Demo, home: Path, workdir: Path, *args: str, model: str) -> Run:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "NO_COLOR": "1",
           "GOOGLE_GEMINI_BASE_URL": demo.url, "GEMINI_API_KEY": "unused",
           "GEMINI_CLI_TRUST_WORKSPACE": "true"}
    command = [str(binary), "-m", model, *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir, env=env,
                            timeout=RUN_SECONDS, stdin=subprocess.DEVNULL)
    return Run(result.returncode, result.stdout + result.stderr)


def completed(run: Run) -> str:
    assert run.returncode == 0, run.output
    assert "error" not in run.output.lower(), run.output
    return run.output


@pytest.mark.parametrize("model", ["gemini-3-flash", "claude-sonnet-4-6"])
def test_gemini_cli_answers_a_prompt(
    gemini_cli: Path, demo: Demo, home: Path, workdir: Path, model: str
) -> None:
    before = len(demo.generation_bodies())
    output = completed(gemini(gemini_cli, demo, home, workdir, "-p", "say hi", model=model))
    assert "Echo: say hi" in output
    bodies = demo.generation_bodies()[before:]
    assert bodies, "the answer came through the emulator"
    # the CLI's tool declarations reached the upstream, sanitised to what it accepts
    declared = [d["name"] for t in bodies[-1]["request"].get("tools", [])
                for d in t.get("functionDeclarations", [])]
    assert "read_file" in declared


def test_gemini_cli_shell_tool_loop(
    gemini_cli: Path, demo: Demo, home: Path, workdir: Path
) -> None:
    before = len(demo.generation_bodies())
    run = gemini(gemini_cli, demo, home, workdir, "--yolo", "-p",
                 "Use the run_shell_command tool to run: echo gateway-ok",
                 model="gemini-3.1-pro-high")
    output = completed(run)
    assert "Tool run_shell_command returned" in output
    bodies = demo.generation_bodies()[before:]
    last = bodies[-1]["request"]["contents"]
    responses = [p["functionResponse"] for c in last for p in c["parts"]
                 if "functionResponse" in p]
    assert responses and responses[-1]["name"] == "run_shell_command"
    assert "Output:" in json.dumps(responses[-1]["response"])  # the shell really ran
    calls = [p for c in last if c["role"] == "model" for p in c["parts"] if "functionCall" in p]
    # the CLI carried the call's signature back (this model refuses a call without one)
    assert calls and calls[0].get("thoughtSignature") not in (None, SKIP_SIGNATURE)
