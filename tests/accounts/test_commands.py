"""`gateway accounts add | list | remove | verify` against the emulator's OAuth endpoints.

The user is simulated: `write` captures what the command prints, and `read_line` plays the
browser (it follows the printed sign-in URL to the emulator, which consents at once and
redirects) and pastes back the address it was redirected to.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import httpx
import pytest

from gateway.accounts import commands
from gateway.accounts.oauth import OAuthError
from gateway.accounts.store import AccountStore
from gateway.cli import demo_config, write_demo_accounts
from gateway.config import Config
from gateway.emulator import Fault
from tests.support import RunningEmulator


def config_for(emulator: RunningEmulator, tmp_path: Path) -> Config:
    return demo_config(Config(), emulator.url, str(tmp_path / "accounts.json"))


class FakeUser:
    """Reads the URL the command prints, 'visits' it, and pastes back the redirect."""

    def __init__(self, *, paste_code_only: bool = False, tamper_state: bool = False) -> None:
        self.printed: list[str] = []
        self.paste_code_only = paste_code_only
        self.tamper_state = tamper_state

    def write(self, text: str) -> None:
        self.printed.append(text)

    def read_line(self, prompt: str) -> str:
        url = re.search(r"(https?://\S+/o/oauth2/v2/auth\S*)", "\n".join(self.printed))
        assert url, "the command printed no sign-in URL"
        consent = httpx.get(url.group(1), follow_redirects=False, timeout=10)
        assert consent.status_code in (302, 303)
        location = consent.headers["location"]
        if self.tamper_state:
            location = re.sub(r"state=[^&]+", "state=forged", location)
        if self.paste_code_only:
            match = re.search(r"code=([^&]+)", location)
            assert match
            return match.group(1)
        return location


def no_browser(url: str) -> bool:
    raise AssertionError("--no-browser must not open a browser")


async def test_add_no_browser_stores_account_with_onboarded_project(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    emulator.state.next_login_email = "alice@example.com"
    config = config_for(emulator, tmp_path)
    user = FakeUser()
    account = await commands.add_account(
        config, no_browser=True, open_browser=no_browser, read_line=user.read_line,
        write=user.write,
    )
    assert account.email == "alice@example.com"
    assert account.project_id  # discovered or onboarded through the emulator
    stored = AccountStore(config.accounts.file).load()
    assert [a.email for a in stored] == ["alice@example.com"]
    assert stored[0].refresh_token == account.refresh_token
    assert stat.S_IMODE(os.stat(config.accounts.file).st_mode) == 0o600
    printed = "\n".join(user.printed)
    assert account.refresh_token not in printed

    listing = commands.list_accounts(config)
    assert "alice@example.com" in listing
    assert account.project_id in listing


async def test_add_accepts_a_bare_code(emulator: RunningEmulator, tmp_path: Path) -> None:
    emulator.state.next_login_email = "bob@example.com"
    config = config_for(emulator, tmp_path)
    user = FakeUser(paste_code_only=True)
    account = await commands.add_account(
        config, no_browser=True, open_browser=no_browser, read_line=user.read_line,
        write=user.write,
    )
    assert account.email == "bob@example.com"


async def test_add_rejects_a_forged_state(emulator: RunningEmulator, tmp_path: Path) -> None:
    config = config_for(emulator, tmp_path)
    user = FakeUser(tamper_state=True)
    with pytest.raises(OAuthError, match="state"):
        await commands.add_account(
            config, no_browser=True, open_browser=no_browser, read_line=user.read_line,
            write=user.write,
        )
    assert not Path(config.accounts.file).exists()


async def test_add_with_browser_flow(emulator: RunningEmulator, tmp_path: Path) -> None:
    """The loopback-callback flow: the 'browser' follows the emulator's redirect to us."""
    emulator.state.next_login_email = "carol@example.com"
    config = config_for(emulator, tmp_path)
    printed: list[str] = []

    def browser(url: str) -> bool:
        import threading

        def visit() -> None:
            with httpx.Client(follow_redirects=True, timeout=10) as http:
                http.get(url)

        threading.Thread(target=visit, daemon=True).start()
        return True

    account = await commands.add_account(
        config, no_browser=False, open_browser=browser,
        read_line=lambda prompt: "", write=printed.append,
    )
    assert account.email == "carol@example.com"


async def test_verify_and_remove(emulator: RunningEmulator, tmp_path: Path) -> None:
    config = config_for(emulator, tmp_path)
    await write_demo_accounts(config.accounts.file)
    emulator.state.add_fault(Fault(kind="invalid_grant", account="demo2@example.com"))
    report = await commands.verify_accounts(config)
    assert "demo1@example.com" in report
    assert "demo2@example.com" in report
    by_email = {a.email: a for a in AccountStore(config.accounts.file).load()}
    assert by_email["demo1@example.com"].invalid_reason is None
    assert by_email["demo2@example.com"].invalid_reason
    assert commands.remove_account(config, "demo2@example.com")
    assert not commands.remove_account(config, "demo2@example.com")
    assert [a.email for a in AccountStore(config.accounts.file).load()] == ["demo1@example.com"]


REFERENCE_FILE = Path(__file__).parent.parent / "fixtures" / "accounts" / (
    "antigravity-claude-proxy.json"
)


def test_plan_import_reads_the_reference_format() -> None:
    import json

    plan = commands.plan_import(json.loads(REFERENCE_FILE.read_text()))
    by_email = {a.email: a for a in plan.accounts}
    assert list(by_email) == ["demo1@example.com", "demo2@example.com"]
    first, second = by_email["demo1@example.com"], by_email["demo2@example.com"]
    # composite "token|userProject|managedProject": the token alone, the managed project
    assert first.refresh_token == "demo-refresh-1"
    assert first.project_id == "demo-project-1"
    assert first.tier == "pro"
    assert first.added_at == pytest.approx(1768212000.0)
    assert first.enabled and first.invalid_reason is None
    assert second.refresh_token == "demo-refresh-2"
    assert second.project_id == "demo-project-2"
    assert second.tier is None  # "unknown" is no tier
    assert not second.enabled
    assert second.invalid_reason == "Token revoked - re-authentication required"
    assert second.added_at == pytest.approx(1768141000.0)
    skipped = dict(plan.skipped)
    assert "no refresh token" in skipped["manual@example.com"]
    assert skipped["entry 3"] == "no email address"


def test_plan_import_reads_the_web_ui_export_and_our_own_file() -> None:
    exported = [{"email": "a@example.com", "refresh_token": "1//a"}]
    assert [a.refresh_token for a in commands.plan_import(exported).accounts] == ["1//a"]
    ours = {"version": 1, "accounts": [
        {"email": "b@example.com", "refresh_token": "1//b", "project_id": "p", "tier": "x"}]}
    account = commands.plan_import(ours).accounts[0]
    assert (account.project_id, account.tier) == ("p", "x")
    with pytest.raises(ValueError, match="accounts"):
        commands.plan_import({"something": "else"})


async def test_import_merges_into_the_store_and_the_accounts_work(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    config = config_for(emulator, tmp_path)
    store = AccountStore(config.accounts.file)
    from gateway.accounts.model import Account

    await store.asave([Account("demo1@example.com", "stale-token", None, "free", added_at=5.0),
                       Account("keep@example.com", "1//keep")])
    printed: list[str] = []
    plan = await commands.import_accounts(config, str(REFERENCE_FILE), write=printed.append)
    assert len(plan.accounts) == 2
    stored = {a.email: a for a in store.load()}
    assert list(stored) == ["demo1@example.com", "keep@example.com", "demo2@example.com"]
    assert stored["demo1@example.com"].refresh_token == "demo-refresh-1"
    assert stored["demo1@example.com"].project_id == "demo-project-1"
    assert stored["demo1@example.com"].added_at == 5.0  # its place and age are kept
    assert stored["keep@example.com"].refresh_token == "1//keep"
    assert stat.S_IMODE(os.stat(config.accounts.file).st_mode) == 0o600
    report = "\n".join(printed)
    assert "1 added, 1 updated, 2 skipped" in report
    assert "manual@example.com" in report
    for secret in ("demo-refresh-1", "demo-refresh-2", "ya29.not-a-refresh-token"):
        assert secret not in report
    # the imported grant really refreshes against the (emulated) Google
    verified = await commands.verify_accounts(config)
    assert "demo1@example.com  ok" in verified


async def test_import_of_a_missing_or_broken_file_names_it(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    from gateway.accounts.store import AccountStoreError

    config = config_for(emulator, tmp_path)
    with pytest.raises(AccountStoreError, match="no accounts file"):
        await commands.import_accounts(config, str(tmp_path / "nope.json"), write=print)
    broken = tmp_path / "broken.json"
    broken.write_text('{"accounts": [{"email": "x@example.com", "refreshToken": "1//secret"')
    with pytest.raises(AccountStoreError, match="not valid JSON") as caught:
        await commands.import_accounts(config, str(broken), write=print)
    assert "1//secret" not in str(caught.value)
    assert not Path(config.accounts.file).exists()
