"""What the tests that drive real CLI agents share: installing a pinned npm package into
the project's ignored `build/npm` (once; later runs reuse it), and running `gateway demo`
as a subprocess, exactly as a user starts it, reading its URLs from its banner."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def npm_binary(package: str, version: str, binary: str, *, version_args: tuple[str, ...] = (
        "--version",)) -> Path:
    """`binary` of the pinned npm `package`, installed on first use (npm is required)."""
    install_dir = ROOT / "build" / "npm" / f"{package.rsplit('/', 1)[-1]}-{version}"
    path = install_dir / "node_modules" / ".bin" / binary
    if _version_of(path, install_dir, version_args) == version:
        return path
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(f"npm is needed to install {package} for this test: install Node.js and "
                    "npm (Debian: apt-get install -y npm), as .ci/run does")
    install_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [npm, "install", "--prefix", str(install_dir), "--no-audit", "--no-fund",
         "--loglevel=error", f"{package}@{version}"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"npm install failed:\n{result.stderr[-2000:]}"
    assert _version_of(path, install_dir, version_args) == version, f"{package} did not install"
    return path


def _version_of(path: Path, home: Path, args: tuple[str, ...]) -> str | None:
    if not path.exists():
        return None
    try:
        out = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=60,
                             env={"PATH": os.environ.get("PATH", ""), "HOME": str(home)})
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"\d+\.\d+\.\d+", out.stdout) if out.returncode == 0 else None
    return found.group(0) if found else None


@attrs.define
class Demo:
    url: str
    emulator: str
    lines: list[str]

    def generation_bodies(self) -> list[dict[str, Any]]:
        found = httpx.get(f"{self.emulator}/__emulator/requests",
                          params={"path": "/v1internal:streamGenerateContent"}, timeout=10)
        return [r["body"] for r in found.json()]


def launch(argv: list[str], env: dict[str, str], ready: Callable[[str], bool],
           seconds: float = 30) -> tuple[subprocess.Popen[str], list[str]]:
    """Start a process, collect its output lines (in a thread), and return once a line
    satisfies `ready` (or it ended, or `seconds` passed: the caller checks the lines)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    lines: list[str] = []
    seen = threading.Event()
    assert proc.stdout is not None
    stdout = proc.stdout

    def read() -> None:
        for line in stdout:
            lines.append(line)
            if ready(line):
                seen.set()
        seen.set()

    threading.Thread(target=read, daemon=True).start()
    seen.wait(seconds)
    return proc, lines


def start_demo(tmp: Path, extra_env: dict[str, str]) -> tuple[subprocess.Popen[str], Demo]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp), "PYTHONUNBUFFERED": "1", **extra_env}
    proc, lines = launch([sys.executable, "-m", "gateway", "demo", "--port", "0"], env,
                         lambda line: "Press Ctrl+C" in line)
    banner = "".join(lines)
    assert "Press Ctrl+C" in banner, "gateway demo did not start"
    url = re.search(r"base URL \(Anthropic\):\s+(http://\S+)", banner)
    emulator = re.search(r"built-in emulator at (http://[0-9.:]+)", banner)
    assert url and emulator, f"gateway demo printed no URLs:\n{banner}"
    return proc, Demo(url.group(1), emulator.group(1), lines)


def stop_demo(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@attrs.frozen
class Run:
    returncode: int
    output: str
