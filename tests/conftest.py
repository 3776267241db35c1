"""Shared fixtures: the emulator and the gateway, each on a real loopback socket.

`emulator` serves a fresh `EmulatorState` with the two demo accounts; `gateway` serves a
gateway configured against it (accounts file in tmp_path); `start_gateway` builds one with
config overrides. Both live in the test's nursery and stop when the test ends.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.config import Config
from tests.support import RunningEmulator, RunningGateway, fast_config


@pytest.fixture
async def emulator(nursery: trio.Nursery) -> RunningEmulator:
    from gateway.emulator import EmulatorState, serve_emulator

    state = EmulatorState.with_demo_accounts()
    url = await nursery.start(partial(serve_emulator, state, host="127.0.0.1", port=0))
    return RunningEmulator(url, state)


@pytest.fixture
async def start_gateway(
    nursery: trio.Nursery, emulator: RunningEmulator, tmp_path: Path
) -> Callable[..., Any]:
    from gateway.app import create_app
    from gateway.cli import demo_config, write_demo_accounts
    from gateway.server import serve_gateway

    async def start(**sections: dict[str, Any]) -> RunningGateway:
        accounts_file = str(tmp_path / f"accounts-{len(list(tmp_path.iterdir()))}.json")
        await write_demo_accounts(accounts_file)
        config = demo_config(Config(), emulator.url, accounts_file)
        config = fast_config(
            config,
            server={"port": 0, **sections.pop("server", {})},
            upstream={"retry_backoff_seconds": 0.01, **sections.pop("upstream", {})},
            **sections,
        )
        app = create_app(config, demo=True)
        url = await nursery.start(partial(serve_gateway, app, config))
        return RunningGateway(url, config, app, emulator)

    return start


@pytest.fixture
async def gateway(start_gateway: Callable[..., Any]) -> RunningGateway:
    gw: RunningGateway = await start_gateway()
    return gw
