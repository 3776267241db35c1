"""Fixtures the CLI-agent tests share (Claude Code, Codex, Gemini CLI): one `gateway demo`
process per test module, started as a user starts it, and a fresh home and project
directory for each run of an agent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clis import Demo, start_demo, stop_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    proc, running = start_demo(tmp_path_factory.mktemp("demo"), {})
    try:
        yield running
    finally:
        stop_demo(proc)
    assert "Traceback" not in "".join(running.lines)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    return path
