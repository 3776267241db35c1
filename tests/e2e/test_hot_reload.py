"""Accounts hot reload: the accounts file changes under a running gateway, which follows.

The gateway polls its accounts file (`accounts.reload_seconds`, 0.1 s here). Under a steady
load of chat requests an account is removed the way `gateway accounts remove` removes it
(through the store) and added back: `/health` follows within the poll, requests already
streaming on the removed account finish, and no request fails. Then the real command line,
`gateway accounts add --no-browser` in its own process signing in against the emulator's
OAuth pages, adds a new account that the gateway serves without a restart.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import attrs
import httpx
import pytest
import trio

from gateway.accounts.model import account_handle
from gateway.accounts.store import AccountStore
from tests.support import RunningEmulator, RunningGateway

MODEL = "gemini-3-flash"
DEMO1, DEMO2 = "demo1@example.com", "demo2@example.com"
CLIENTS = 8
# The gateway notices a change within a poll; a loaded test machine gets some slack.
FOLLOW_SECONDS = 2.0


@attrs.frozen
class Outcome:
    request_id: str
    started: float
    ended: float
    ok: bool
    detail: str


async def _chat(http: httpx.AsyncClient, n: int, stream: bool) -> Outcome:
    body = {"model": MODEL, "stream": stream,
            "messages": [{"role": "user", "content": f"hot reload request {n}"}]}
    started = trio.current_time()
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        text = (await response.aread()).decode()
        request_id = response.headers.get("request-id", "?")
    ended = trio.current_time()
    if stream:
        ok = response.status_code == 200 and text.rstrip().endswith("data: [DONE]") and (
            '"error"' not in text)
    else:
        ok = response.status_code == 200 and bool(
            response.json()["choices"][0]["message"]["content"])
    return Outcome(request_id, started, ended, ok, f"{response.status_code} {text[:300]}")


async def _load(http: httpx.AsyncClient, client: int, stop: trio.Event,
                outcomes: list[Outcome]) -> None:
    n = 0
    while not stop.is_set():
        outcomes.append(await _chat(http, client * 10_000 + n, stream=n % 2 == 0))
        n += 1


async def _until(check: Callable[[], Any], seconds: float, what: str) -> float:
    """Wait until `check()` holds; returns when it did (trio time)."""
    with trio.move_on_after(seconds):
        while not await check():
            await trio.sleep(0.02)
        return trio.current_time()
    raise AssertionError(f"not within {seconds}s: {what}")


def _accounts_served(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """request id -> the hashed account that served it, from the access log."""
    served: dict[str, str] = {}
    for record in caplog.records:
        found = re.search(r"request id=(\S+) .* account=(\S+)", record.getMessage())
        if record.name == "gateway.access" and found:
            served[found.group(1)] = found.group(2)
    return served


async def test_accounts_removed_and_added_under_load_fail_no_request(
    start_gateway: Callable[..., Any], emulator: RunningEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    # Answers take ~0.3 s (6 chunks 50 ms apart), so at any moment requests are streaming on
    # both accounts; round-robin spreads them (sticky would keep new sessions on one).
    emulator.state.chunk_delay_seconds = 0.05
    emulator.state.text_chunks = 6
    gateway: RunningGateway = await start_gateway(
        accounts={"reload_seconds": 0.1, "selection": "round-robin"}
    )
    store = AccountStore(gateway.config.accounts.file)
    demo2 = {a.email: a for a in await store.aload()}[DEMO2]
    outcomes: list[Outcome] = []

    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:

        async def health(accounts: int, active: int | None = None) -> bool:
            answer = (await http.get("/health")).json()
            return bool(answer["accounts"] == accounts
                        and (active is None or answer["activeAccounts"] == active))

        stop = trio.Event()
        async with trio.open_nursery() as load:
            for client in range(CLIENTS):
                load.start_soon(_load, http, client, stop, outcomes)
            await trio.sleep(0.5)  # the load is steady on both accounts

            removing = trio.current_time()
            assert await store.aremove(DEMO2)  # what `gateway accounts remove` does
            removed = await _until(lambda: health(1, 1), FOLLOW_SECONDS, "/health shows 1")
            await trio.sleep(0.5)  # served by the one account left

            adding = trio.current_time()
            await store.aupsert(demo2)  # added back, as `gateway accounts add` stores it
            await _until(lambda: health(2, 2), FOLLOW_SECONDS, "/health shows 2 active")
            await trio.sleep(0.7)  # and it takes its share again
            stop.set()

        async def logged() -> bool:  # the access line follows the answer's last byte
            return {o.request_id for o in outcomes} <= set(_accounts_served(caplog))

        await _until(logged, 5, "every request's access line")

    failed = [o for o in outcomes if not o.ok]
    assert not failed, failed[:3]
    served = _accounts_served(caplog)
    handle = account_handle(DEMO2)
    on_demo2 = [o for o in outcomes if served.get(o.request_id) == handle]
    # some requests were streaming on demo2 when it left the file, and they finished
    assert any(o.started < removing and o.ended > removed for o in on_demo2)
    # none started on it while it was out; it served again once back
    assert not any(removed < o.started and o.ended < adding for o in on_demo2)
    assert any(o.started > adding for o in on_demo2)
    assert len(outcomes) > 4 * CLIENTS


def _cli_env(gateway: RunningGateway, emulator: RunningEmulator) -> dict[str, str]:
    """`gateway accounts ...` in another process, on the running gateway's accounts file
    and the emulator's OAuth client and pages."""
    oauth = gateway.config.oauth
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {
        **env,
        "GATEWAY_ACCOUNTS_FILE": gateway.config.accounts.file,
        "GATEWAY_OAUTH_CLIENT_ID": oauth.client_id,
        "GATEWAY_OAUTH_CLIENT_SECRET": oauth.client_secret,
        "GATEWAY_OAUTH_TOKEN_URL": oauth.token_url,
        "GATEWAY_OAUTH_AUTH_URL": oauth.auth_url,
        "GATEWAY_OAUTH_USERINFO_URL": oauth.userinfo_url,
        "GATEWAY_UPSTREAM_BASE_URLS": emulator.url,
    }


async def _cli_add_no_browser(env: dict[str, str]) -> str:
    """Run `gateway accounts add --no-browser`: read the sign-in URL it prints, 'visit' it
    (the emulator consents at once), paste back the address the browser lands on."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway", "accounts", "add", "--no-browser"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    assert process.stdin is not None and process.stdout is not None
    printed = ""
    try:
        with trio.fail_after(60):
            while not (url := re.search(r"(https?://\S+/o/oauth2/v2/auth\S*)", printed)):
                chunk = await process.stdout.receive_some()
                assert chunk, f"the command ended without a sign-in URL: {printed}"
                printed += chunk.decode()
            async with httpx.AsyncClient(timeout=10) as browser:
                consent = await browser.get(url.group(1), follow_redirects=False)
            assert consent.status_code in (302, 303)
            await process.stdin.send_all(consent.headers["location"].encode() + b"\n")
            await process.stdin.aclose()
            while chunk := await process.stdout.receive_some():
                printed += chunk.decode()
            assert await process.wait() == 0, printed
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return printed


async def test_an_account_added_with_the_cli_is_served_without_a_restart(
    start_gateway: Callable[..., Any], emulator: RunningEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gateway: RunningGateway = await start_gateway(
        accounts={"reload_seconds": 0.1, "selection": "round-robin"}
    )
    env = _cli_env(gateway, emulator)
    new = "carol@example.com"
    emulator.state.next_login_email = new

    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:

        async def health(accounts: int, active: int) -> bool:
            answer = (await http.get("/health")).json()
            return bool(answer["accounts"] == accounts and answer["activeAccounts"] == active)

        printed = await _cli_add_no_browser(env)
        assert f"added {new}" in printed
        await _until(lambda: health(3, 3), FOLLOW_SECONDS + 1, "/health shows the new account")
        ids = []
        for n in range(6):  # round-robin over three accounts: the new one serves some
            reply = await http.post("/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": f"to carol {n}"}]})
            assert reply.status_code == 200, reply.text
            ids.append(reply.headers["request-id"])

        async def logged() -> bool:  # the access line follows the answer's last byte
            return set(ids) <= set(_accounts_served(caplog))

        await _until(logged, 5, "every request's access line")
        served = _accounts_served(caplog)
        assert account_handle(new) in {served[i] for i in ids}

        removed = await trio.run_process(
            [sys.executable, "-m", "gateway", "accounts", "remove", new],
            env=env, capture_stdout=True, capture_stderr=True,
        )
        assert f"removed {new}" in removed.stdout.decode()
        await _until(lambda: health(2, 2), FOLLOW_SECONDS, "/health drops the account")


async def test_refresh_token_for_an_account_added_a_moment_ago(
    start_gateway: Callable[..., Any],
) -> None:
    """With polling off, naming a just-added account in POST /refresh-token reads the file
    first, rather than answering that there is no such account."""
    gateway: RunningGateway = await start_gateway(accounts={"reload_seconds": 0})
    store = AccountStore(gateway.config.accounts.file)
    accounts = store.load()
    demo2 = next(a for a in accounts if a.email == DEMO2)
    store.save([a for a in accounts if a.email != DEMO2])
    await gateway.services.supervisor.reload_accounts()
    assert gateway.services.pool.emails() == [DEMO1]
    store.save([*store.load(), demo2])
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(gateway.url + "/refresh-token", json={"email": DEMO2})
    assert response.status_code == 200, response.text
    assert response.json()["results"][DEMO2]["ok"] is True
