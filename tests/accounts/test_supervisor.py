"""The supervisor against the emulator over a real socket: refresh, invalid grants,
project discovery, quota probes and manual refreshes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import pytest
import trio

from gateway.accounts.model import Account, account_handle
from gateway.accounts.supervisor import parse_quotas
from tests.support import MakeRig, Rig, RunningEmulator

DEMO1 = "demo1@example.com"
DEMO2 = "demo2@example.com"


@pytest.fixture
def make_rig(make_rig: MakeRig) -> MakeRig:
    """The shared rig, probing quotas as often as a test asks."""
    return functools.partial(make_rig, probe_min_gap_seconds=0.0)


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    # The supervisor publishes state, not events; a test watches the state change.
    with trio.fail_after(seconds):
        while not check():
            await trio.sleep(0.02)


def _entry(rig: Rig, email: str) -> Any:
    return next(e for e in rig.pool.snapshot().entries if e.email == email)


def _token_requests(emulator: RunningEmulator) -> int:
    return sum(1 for r in emulator.state.received if r.path.rstrip("/").endswith("/token"))


async def test_started_means_every_account_has_a_token(make_rig: MakeRig) -> None:
    rig = await make_rig()
    snap = rig.pool.snapshot()
    assert snap.accounts == 2 and snap.active_accounts == 2
    for email in (DEMO1, DEMO2):
        token = rig.supervisor.access_token(email)
        assert token is not None and token.startswith("ya29.")
        assert _entry(rig, email).token_expires_in > 3000
    assert rig.metrics.token_refreshes.labels("ok")._value.get() == 2


async def test_token_is_refreshed_before_it_expires(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    emulator.state.token_lifetime_seconds = 2
    rig = await make_rig(accounts={"refresh_margin_seconds": 1.0})
    first = rig.supervisor.access_token(DEMO1)
    assert first is not None
    # refreshed a second before expiry; the old token never lapses in the pool
    with trio.fail_after(3):
        while rig.supervisor.access_token(DEMO1) in (first, None):
            assert rig.supervisor.access_token(DEMO1) is not None
            await trio.sleep(0.05)
    assert emulator.state.email_for_access_token(rig.supervisor.access_token(DEMO1)) == DEMO1


async def test_invalid_grant_marks_the_account_invalid_and_persists_it(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    emulator.state.add_fault(Fault(kind="invalid_grant", account=DEMO2))
    rig = await make_rig()
    assert _entry(rig, DEMO2).status == "invalid"
    assert _entry(rig, DEMO1).status == "ok"
    assert rig.supervisor.access_token(DEMO2) is None
    stored = {a.email: a for a in await rig.store.aload()}
    assert stored[DEMO2].invalid_reason == "invalid_grant"
    assert stored[DEMO1].invalid_reason is None
    assert rig.pool.snapshot().active_accounts == 1


async def test_refresh_now_reports_and_revives(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    emulator.state.add_fault(Fault(kind="invalid_grant", account=DEMO2, times=1))
    rig = await make_rig()
    assert _entry(rig, DEMO2).status == "invalid"
    before = rig.supervisor.access_token(DEMO1)
    results = await rig.supervisor.refresh_now()
    assert set(results) == {DEMO1, DEMO2}
    assert results[DEMO1]["status"] == "refreshed" and results[DEMO1]["expiresIn"] > 3000
    assert results[DEMO1]["ok"] is True
    # the grant works again (the fault was used up): the account is back, on disk too
    assert results[DEMO2]["status"] == "refreshed"
    assert rig.supervisor.access_token(DEMO1) != before
    assert _entry(rig, DEMO2).status == "ok"
    stored = {a.email: a for a in await rig.store.aload()}
    assert stored[DEMO2].invalid_reason is None

    one = await rig.supervisor.refresh_now(DEMO1)
    assert list(one) == [DEMO1]
    emulator.state.revoke(DEMO1)
    dead = await rig.supervisor.refresh_now(DEMO1)
    assert dead[DEMO1]["status"] == "invalid" and dead[DEMO1]["ok"] is False


async def test_project_is_discovered_and_persisted(make_rig: MakeRig) -> None:
    accounts = [
        Account(DEMO1, "demo-refresh-1"),  # no project yet
        Account(DEMO2, "demo-refresh-2", project_id="demo-project-2"),
    ]
    rig = await make_rig(stored=accounts)
    await eventually(lambda: rig.pool.account(DEMO1).project_id is not None)
    assert rig.pool.account(DEMO1).project_id == "demo-project-1"
    assert _entry(rig, DEMO1).project == "demo-project-1"

    async def stored_project() -> str | None:
        stored = {a.email: a for a in await rig.store.aload()}
        return stored[DEMO1].project_id

    with trio.fail_after(5):
        while await stored_project() is None:
            await trio.sleep(0.02)
    assert await stored_project() == "demo-project-1"


async def test_quotas_are_probed_and_reprobed_on_request(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    model = "claude-sonnet-4-6"
    emulator.state.set_quota(DEMO1, model, 0.25, "2030-01-01T00:00:00Z")
    rig = await make_rig()
    await eventually(lambda: model in _entry(rig, DEMO1).quotas)
    assert _entry(rig, DEMO1).quotas[model] == (0.25, "2030-01-01T00:00:00Z")
    assert model in rig.pool.available_models()

    emulator.state.set_quota(DEMO1, model, 0.0, "2030-01-01T00:00:00Z")
    rig.supervisor.request_probe(DEMO1)
    await eventually(lambda: _entry(rig, DEMO1).quotas[model][0] == 0.0)
    # exhausted until its reset: the pool will not pick it for that model
    assert _entry(rig, DEMO1).cooldowns[model] > 1000


async def test_concurrent_renewals_share_one_refresh(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    rig = await make_rig()
    stale = rig.supervisor.access_token(DEMO1)
    before = _token_requests(emulator)
    tokens: list[str | None] = []

    async def renew() -> None:
        tokens.append(await rig.supervisor.renew_token(DEMO1, stale))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(renew)
    assert _token_requests(emulator) == before + 1
    assert len(set(tokens)) == 1 and tokens[0] not in (None, stale)


async def test_concurrent_401s_on_a_dying_grant_cost_one_refresh_and_one_write(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    """Twenty requests see 401 at once and the refresh fails: one refresh, at most one write
    (the invalid mark), not twenty of each."""
    from gateway.emulator import Fault

    rig = await make_rig()
    writes = 0
    before_replace = rig.store._before_replace

    def counting(temp: Any) -> None:
        nonlocal writes
        writes += 1
        before_replace(temp)

    rig.store._before_replace = counting  # type: ignore[method-assign]
    stale = rig.supervisor.access_token(DEMO1)
    emulator.state.add_fault(Fault(kind="invalid_grant", account=DEMO1))
    before = _token_requests(emulator)
    results: list[str | None] = []

    async def renew() -> None:
        results.append(await rig.supervisor.renew_token(DEMO1, stale))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(renew)
    assert _token_requests(emulator) == before + 1
    assert writes <= 1
    assert results == [None] * 20


async def test_a_silent_token_endpoint_delays_start_up_only_briefly(
    make_rig: MakeRig, nursery: trio.Nursery
) -> None:
    # A token endpoint that accepts connections and never answers.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    serving = trio.CancelScope()

    async def serve() -> None:
        with serving:
            await trio.serve_listeners(hold, listeners)

    nursery.start_soon(serve)
    started = trio.current_time()
    rig = await make_rig(
        startup_wait_seconds=0.3, oauth={"token_url": f"http://127.0.0.1:{port}/token"}
    )
    assert trio.current_time() - started < 3
    assert rig.pool.snapshot().active_accounts == 0
    assert rig.supervisor.access_token(DEMO1) is None
    rig.scope.cancel()
    serving.cancel()
    for stream in held:
        await stream.aclose()


def test_parse_quotas() -> None:
    answer = {
        "models": {
            "claude-sonnet-4-6": {"quotaInfo": {"remainingFraction": 0.5,
                                                "resetTime": "2030-01-01T00:00:00Z"}},
            "gemini-3.1-pro-high": {"quotaInfo": {"resetTime": "2030-01-01T00:00:00Z"}},
            "gemini-3-flash": {"displayName": "Gemini 2.5 Flash"},
            "": {"quotaInfo": {"remainingFraction": 1}},
        }
    }
    assert parse_quotas(answer) == {
        "claude-sonnet-4-6": (0.5, "2030-01-01T00:00:00Z"),
        "gemini-3.1-pro-high": (0.0, "2030-01-01T00:00:00Z"),
        "gemini-3-flash": (None, None),
    }
    assert parse_quotas({}) == {}
    assert parse_quotas({"models": []}) == {}


# -- hot reload of the accounts file -------------------------------------------------------

DEMO3 = "demo3@example.com"


def _third_account(emulator: RunningEmulator) -> Account:
    """An account the emulator knows, stored the way `gateway accounts add` stores it."""
    emulator.state.add_account(DEMO3, "demo-refresh-3", project="demo-project-3")
    return Account(DEMO3, "demo-refresh-3", project_id="demo-project-3", tier="free-tier")


def _supervising(rig: Rig) -> set[str]:
    """Names of the account tasks running in the supervisor's nursery."""
    nursery = rig.supervisor._nursery
    assert nursery is not None
    return {task.name for task in nursery.child_tasks if task.name.startswith("supervise ")}


def _account_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.accounts"]


async def test_hot_reload_starts_a_new_accounts_task_and_stops_a_removed_ones(
    make_rig: MakeRig, emulator: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.accounts")
    rig = await make_rig(accounts={"reload_seconds": 0.05})
    assert _supervising(rig) == {f"supervise {DEMO1}", f"supervise {DEMO2}"}

    await rig.store.aupsert(_third_account(emulator))
    # a token and a quota probe at once, nobody asking
    await eventually(lambda: rig.supervisor.access_token(DEMO3) is not None
                     and bool(_entry(rig, DEMO3).quotas), 3)
    assert rig.pool.emails() == [DEMO1, DEMO2, DEMO3]
    assert f"supervise {DEMO3}" in _supervising(rig)

    assert await rig.store.aremove(DEMO2)
    await eventually(lambda: rig.pool.emails() == [DEMO1, DEMO3], 3)
    await eventually(lambda: f"supervise {DEMO2}" not in _supervising(rig), 3)
    assert rig.pool.snapshot().active_accounts == 2

    lines = _account_lines(caplog)
    added = [line for line in lines if "was added to the accounts file" in line]
    removed = [line for line in lines if "was removed from the accounts file" in line]
    assert added == [f"account {account_handle(DEMO3)} was added to the accounts file; "
                     "fetching its token"]
    assert len(removed) == 1 and account_handle(DEMO2) in removed[0]
    assert not any(email in line for line in lines for email in (DEMO1, DEMO2, DEMO3))


async def test_the_gateways_own_writes_are_not_reloaded_as_changes(
    make_rig: MakeRig, emulator: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Discovering a project persists it, which changes the file's mtime: the reload that
    follows sees the pool's own knowledge and keeps the account's token and task."""
    caplog.set_level(logging.INFO, logger="gateway.accounts")
    accounts = [
        Account(DEMO1, "demo-refresh-1"),  # its project is discovered, then written
        Account(DEMO2, "demo-refresh-2", project_id="demo-project-2"),
    ]
    rig = await make_rig(stored=accounts, accounts={"reload_seconds": 0.02})

    async def stored_project() -> str | None:
        return {a.email: a for a in await rig.store.aload()}[DEMO1].project_id

    with trio.fail_after(5):
        while await stored_project() is None:
            await trio.sleep(0.02)
    token = rig.supervisor.access_token(DEMO1)
    refreshes = _token_requests(emulator)
    await trio.sleep(0.3)  # fifteen polls
    assert rig.supervisor.access_token(DEMO1) == token
    assert _token_requests(emulator) == refreshes
    assert not any("accounts file" in line for line in _account_lines(caplog))


async def test_an_unreadable_accounts_file_keeps_the_accounts_and_is_reported_once(
    make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.accounts")
    rig = await make_rig(accounts={"reload_seconds": 0.02})
    good = await rig.store.aload()
    rig.store.path.write_text('{"version": 1, "accounts": [{"email": "demo1@ex')  # mid-save
    await trio.sleep(0.3)
    assert rig.pool.snapshot().active_accounts == 2
    problems = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(problems) == 1
    assert "not valid JSON" in problems[0].getMessage()
    assert "keeping the 2 account(s) in use" in problems[0].getMessage()

    rig.store.path.unlink()  # gone: still nothing dropped, reported once more
    await trio.sleep(0.3)
    assert rig.pool.emails() == [DEMO1, DEMO2]
    problems = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(problems) == 2 and "is gone" in problems[1]

    await rig.store.asave(good[:1])  # the next poll after the fix reads it
    await eventually(lambda: rig.pool.emails() == [DEMO1], 3)
    assert any("can be read again" in line for line in _account_lines(caplog))
    assert rig.supervisor.access_token(DEMO1) is not None
    assert not any("demo-refresh" in r.getMessage() for r in caplog.records)


async def test_without_polling_refresh_now_reads_the_file(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    rig = await make_rig(accounts={"reload_seconds": 0.0})
    await rig.store.aupsert(_third_account(emulator))
    await trio.sleep(0.2)
    assert DEMO3 not in rig.pool.emails()
    results = await rig.supervisor.refresh_now()
    assert set(results) == {DEMO1, DEMO2, DEMO3}
    assert results[DEMO3]["ok"] is True
    assert rig.supervisor.access_token(DEMO3) is not None


async def test_late_answers_about_a_removed_or_renewed_account_are_dropped(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    """A refresh that started before its account left (or was re-added with a new grant)
    must not raise, nor write its result over the new record's state."""
    rig = await make_rig()
    old_demo1 = rig.supervisor._workers[DEMO1]
    old_demo2 = rig.supervisor._workers[DEMO2]
    stale = rig.supervisor.access_token(DEMO2)

    emulator.state.add_account(DEMO1, "demo-refresh-1-renewed", project="demo-project-1")
    await rig.store.aupdate(lambda accounts: [
        Account(DEMO1, "demo-refresh-1-renewed", project_id="demo-project-1")
    ])
    changes = await rig.supervisor.reload_accounts()
    assert changes is not None
    assert (changes.renewed, changes.removed) == ((DEMO1,), (DEMO2,))
    await eventually(lambda: rig.supervisor.access_token(DEMO1) is not None)
    renewed = rig.supervisor.access_token(DEMO1)

    assert (await rig.supervisor._refresh(old_demo1))["status"] == "unknown"
    assert (await rig.supervisor._refresh(old_demo2))["status"] == "unknown"
    assert rig.supervisor.access_token(DEMO1) == renewed
    assert await rig.supervisor.renew_token(DEMO2, stale) is None
    assert (await rig.supervisor.refresh_now(DEMO2))[DEMO2]["status"] == "unknown"
    rig.supervisor.request_probe(DEMO2)  # a 429 on the removed account: nothing to do
    assert rig.pool.emails() == [DEMO1]
