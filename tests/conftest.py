"""Shared fixtures: the emulator and the gateway, each on a real loopback socket.

`emulator` serves a fresh `EmulatorState` with the two demo accounts; `gateway` serves a
gateway configured against it (accounts file in tmp_path); `start_gateway` builds one with
config overrides. Both live in the test's nursery and stop when the test ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.config import Config
from tests.support import MakeRig, Rig, RunningEmulator, RunningGateway, fast_config


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

    started: list[None] = []

    async def start(**sections: dict[str, Any]) -> RunningGateway:
        started.append(None)  # a counter: files beside the accounts come and go
        accounts_file = str(tmp_path / f"accounts-{len(started)}.json")
        await write_demo_accounts(accounts_file)
        config = demo_config(Config(), emulator.url, accounts_file)
        config = fast_config(
            config,
            server={"port": 0, **sections.pop("server", {})},
            upstream={"retry_backoff_seconds": 0.01, "soft_rate_limit_wait_seconds": 0.01,
                      **sections.pop("upstream", {})},
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


@pytest.fixture
async def make_rig(
    nursery: trio.Nursery, emulator: RunningEmulator, tmp_path: Path
) -> AsyncIterator[MakeRig]:
    """Build pool + supervisor + dispatcher on the emulator; the supervisor runs in the test's
    nursery unless `start=False` (then `start_supervisor(nursery, rig)` starts it)."""
    from gateway.accounts.pool import AccountPool
    from gateway.accounts.store import AccountStore
    from gateway.accounts.supervisor import Supervisor
    from gateway.cli import demo_config, write_demo_accounts
    from gateway.metrics import Metrics
    from gateway.upstream.client import CloudCodeClient, make_http_client
    from gateway.upstream.dispatch import Dispatcher

    made: list[Rig] = []

    async def make(
        *,
        stored: list[Any] | None = None,
        start: bool = True,
        startup_wait_seconds: float = 10.0,
        probe_min_gap_seconds: float = 30.0,
        **sections: dict[str, Any],
    ) -> Rig:
        path = str(tmp_path / f"rig-accounts-{len(made)}.json")
        if stored is None:
            await write_demo_accounts(path)
        else:
            await AccountStore(path).asave(stored)
        config = fast_config(
            demo_config(Config(), emulator.url, path),
            upstream={"retry_backoff_seconds": 0.01, "soft_rate_limit_wait_seconds": 0.01,
                      **sections.pop("upstream", {})},
            **sections,
        )
        store = AccountStore(path)
        http = make_http_client(config.upstream)
        client = CloudCodeClient(http, config.upstream)
        pool = AccountPool(await store.aload(), selection=config.accounts.selection)
        metrics = Metrics()
        supervisor = Supervisor(
            pool=pool, store=store, client=client, config=config, metrics=metrics,
            probe_min_gap_seconds=probe_min_gap_seconds,
            startup_wait_seconds=startup_wait_seconds,
        )
        dispatcher = Dispatcher(pool, supervisor, client, config, metrics=metrics)
        rig = Rig(config, store, pool, supervisor, dispatcher, metrics, http, trio.CancelScope())
        made.append(rig)
        if start:
            await start_supervisor(nursery, rig)
        return rig

    yield make
    for rig in made:
        rig.scope.cancel()
        await rig.http.aclose()


async def start_supervisor(nursery: trio.Nursery, rig: Rig) -> None:
    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with rig.scope:
            await rig.supervisor.run(task_status=task_status)

    await nursery.start(run)
