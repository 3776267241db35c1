"""Graceful shutdown: drain in-flight streams up to the grace period, then cancel; stop clean.

Also runs the real command line: `gateway demo` in a subprocess, stopped by SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway.app import create_app
from gateway.cli import demo_config, write_demo_accounts
from gateway.config import Config
from gateway.server import serve_gateway
from tests.support import RunningEmulator, fast_config

BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 512,
    "stream": True,
    "messages": [{"role": "user", "content": "a slow story"}],
}


async def run_gateway_until(
    emulator: RunningEmulator, tmp_path: Path, grace: float, stop: trio.Event,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    accounts = str(tmp_path / "accounts.json")
    await write_demo_accounts(accounts)
    config = fast_config(
        demo_config(Config(), emulator.url, accounts),
        server={"port": 0, "shutdown_grace_seconds": grace},
    )
    app = create_app(config)
    await serve_gateway(app, config, shutdown_trigger=stop.wait, task_status=task_status)


async def stream_body(url: str, into: dict[str, Any]) -> None:
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(url + "/v1/messages", json=BODY)
            into["status"] = response.status_code
            into["body"] = response.content
    except httpx.HTTPError as exc:
        into["error"] = exc


@pytest.mark.parametrize(
    ("grace", "completes"), [(10.0, True), (0.3, False)], ids=["drained", "cut-at-grace"]
)
async def test_shutdown_drains_then_cancels(
    emulator: RunningEmulator, tmp_path: Path, grace: float, completes: bool
) -> None:
    emulator.state.text_chunks = 10
    emulator.state.chunk_delay_seconds = 0.15  # about 1.5 s of streaming
    stop = trio.Event()
    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(run_gateway_until, emulator, tmp_path, grace, stop))
        nursery.start_soon(stream_body, url, result)
        with trio.fail_after(5):
            while emulator.state.open_streams == 0:
                await trio.sleep(0.01)
        started = trio.current_time()
        stop.set()
        # new connections are refused while draining
        await trio.sleep(0.1)
        with pytest.raises(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=2) as http:
                await http.get(url + "/health")
    # the server and its request have ended (the nursery closed) within grace + slack
    assert trio.current_time() - started < grace + 3
    assert emulator.state.open_streams == 0
    if completes:
        assert result["status"] == 200
        assert b"event: message_stop" in result["body"]
    else:
        body = result.get("body", b"")
        assert "error" in result or b"event: message_stop" not in body
    # the accounts file was not touched half-way: it still loads
    from gateway.accounts.store import AccountStore

    assert len(AccountStore(tmp_path / "accounts.json").load()) == 2


def test_demo_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        url = None
        assert proc.stdout is not None
        for _ in range(40):
            line = proc.stdout.readline()
            match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
            if match and "emulator" not in line:
                url = match.group(1)
                break
        assert url, "demo did not print its URL"
        health = httpx.get(url + "/health", timeout=10).json()
        assert health["accounts"] == 2
        reply = httpx.post(
            url + "/v1/messages", timeout=30,
            json={"model": "claude-sonnet-4-6", "max_tokens": 64,
                  "messages": [{"role": "user", "content": "hello demo"}]},
        ).json()
        assert reply["content"][0]["text"].startswith("Echo")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        stderr = proc.stderr.read() if proc.stderr else ""
        assert "Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
