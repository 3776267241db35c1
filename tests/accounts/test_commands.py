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
