"""A gateway with no accounts still serves, and says clearly what is missing."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from gateway.app import create_app
from gateway.cli import demo_config
from gateway.config import Config
from gateway.server import serve_gateway
from tests.support import RunningEmulator, fast_config


async def test_requests_get_503_naming_the_fix(
    nursery: trio.Nursery, emulator: RunningEmulator, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = fast_config(
        demo_config(Config(), emulator.url, str(tmp_path / "none.json")), server={"port": 0}
    )
    url = await nursery.start(partial(serve_gateway, create_app(config), config))
    assert "no Google accounts" in caplog.text
    async with httpx.AsyncClient(timeout=10) as http:
        with trio.fail_after(10):
            message = await http.post(url + "/v1/messages", json={
                "model": "claude-sonnet-4-6", "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}]})
            chat = await http.post(url + "/v1/chat/completions", json={
                "model": "gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]})
            health_response = await http.get(url + "/health")
            health = health_response.json()
            models = (await http.get(url + "/v1/models")).json()
    for response in (message, chat):
        assert response.status_code == 503
        assert "gateway accounts add" in response.text
        assert response.headers["x-should-retry"] == "false"
    assert health["status"] == "degraded"
    assert health_response.status_code == 503  # a load balancer takes it out
    assert health["accounts"] == 0
    assert models["data"]  # the catalogue, so clients can still list what exists
    assert not Path(config.accounts.file).exists()  # nothing was written on our behalf


async def test_accounts_without_an_oauth_client_are_named_at_start(
    nursery: trio.Nursery, emulator: RunningEmulator, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.cli import write_demo_accounts

    accounts = str(tmp_path / "accounts.json")
    await write_demo_accounts(accounts)
    config = demo_config(Config(), emulator.url, accounts)
    config = fast_config(config, server={"port": 0},
                         oauth={"client_id": "", "client_secret": ""})
    await nursery.start(partial(serve_gateway, create_app(config), config))
    assert "oauth.client_id and oauth.client_secret are not set" in caplog.text
