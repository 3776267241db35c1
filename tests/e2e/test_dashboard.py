"""The dashboard in a real headless browser: Debian's Chromium driven by Playwright.

One scenario, as an operator lives it: open /dashboard on a gateway with an API key, sign
in once (the key goes into an HttpOnly, SameSite=Strict cookie, never the URL), see both
demo accounts with their quota bars, watch requests appear in the list while they run, see
a cooldown injected through the emulator appear within 2 s without reloading, press
"Refresh tokens", and find no console error anywhere. Screenshots (desktop and phone
width) are kept under build/ as artefacts.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway.emulator import Fault
from tests.support import RunningGateway

ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = ROOT / "build" / "dashboard"
KEY = "dash-key-0123456789"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# what a closed network needs: no background calls to Google's services at start-up
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is needed for the dashboard test: apt-get install -y chromium "
                    "(as .ci/run does)")
    return CHROMIUM


async def chat(gateway: RunningGateway, text: str) -> int:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(gateway.url + "/v1/chat/completions", headers={
            "authorization": f"Bearer {KEY}"}, json={
            "model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": text}]})
    return response.status_code


async def test_dashboard_in_a_browser(start_gateway: Callable[..., Any], chromium: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    gateway: RunningGateway = await start_gateway(
        server={"api_keys": (KEY,)}, dashboard={"update_seconds": 0.2})
    handles = [e.handle for e in gateway.services.pool.snapshot().entries]
    assert len(handles) == 2
    ARTEFACTS.mkdir(parents=True, exist_ok=True)

    def scenario() -> dict[str, Any]:
        problems: list[str] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(gateway.url + "/dashboard")
            # a browser without a key gets a sign-in form, not a JSON 401
            page.get_by_label("API key").fill(KEY)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_selector("#accounts-title")
            assert KEY not in page.url
            cookie = next(c for c in context.cookies() if c["name"] == "gateway_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert KEY not in cookie["value"]
            for handle in handles:
                expect(page.get_by_role("article", name=f"account {handle}")).to_be_visible()
            expect(page.locator("meter").first).to_be_visible()
            expect(page.locator("#live")).to_contain_text("live", timeout=5000)

            # requests appear in the list while they run, without a reload
            assert trio.from_thread.run(chat, gateway, "first") == 200
            expect(page.locator("#requests tbody")).to_contain_text("claude-sonnet-4-6",
                                                                    timeout=3000)

            # a 429 injected through the emulator cools one account: shown within 2 s
            trio.from_thread.run_sync(lambda: gateway.emulator.state.add_fault(
                Fault(kind="rate_limit", times=1, reset_seconds=1800)))
            assert trio.from_thread.run(chat, gateway, "second") == 200
            expect(page.locator(".status-cooling").first).to_be_visible(timeout=2000)
            expect(page.get_by_text("cooling down:").first).to_be_visible(timeout=2000)

            # the button, reached with the keyboard alone: the first Tab stop, then Enter
            page.evaluate("document.activeElement && document.activeElement.blur()")
            page.keyboard.press("Tab")
            focused = page.evaluate("document.activeElement.textContent")
            page.keyboard.press("Enter")
            expect(page.locator("#refresh-result")).to_contain_text("Refreshed 2 of 2",
                                                                    timeout=10_000)
            page.screenshot(path=str(ARTEFACTS / "dashboard.png"), full_page=True)

            phone = browser.new_context(viewport={"width": 390, "height": 844},
                                        storage_state=context.storage_state())
            small = phone.new_page()
            small.on("pageerror", lambda e: problems.append(str(e)))
            small.goto(gateway.url + "/dashboard")
            expect(small.get_by_role("article", name=f"account {handles[0]}")).to_be_visible()
            overflow = small.evaluate(
                "document.documentElement.scrollWidth > window.innerWidth + 1")
            small.screenshot(path=str(ARTEFACTS / "dashboard-phone.png"), full_page=True)
            browser.close()
        return {"problems": problems, "focused": focused, "overflow": overflow}

    with trio.fail_after(120):
        result = await trio.to_thread.run_sync(scenario)
    assert result["problems"] == [], result["problems"]
    assert result["focused"] == "Refresh tokens"
    assert not result["overflow"], "the page is wider than a phone"
    assert (ARTEFACTS / "dashboard.png").stat().st_size > 10_000


async def test_dashboard_refuses_without_a_session(start_gateway: Callable[..., Any]) -> None:
    gateway: RunningGateway = await start_gateway(server={"api_keys": (KEY,)})
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        page = await http.get("/dashboard")
        assert page.status_code == 200 and "Sign in" in page.text and "Accounts" not in page.text
        assert (await http.get("/dashboard/events")).status_code == 401
        assert (await http.post("/dashboard/refresh")).status_code == 401
        wrong = await http.post("/dashboard/login", data={"key": "nope"})
        assert wrong.status_code == 401 and "not one of" in wrong.text
        http.cookies.set("gateway_session", "v1.x.9999999999.y")
        forged = await http.get("/dashboard")
        assert "Sign in" in forged.text
        http.cookies.clear()
        # a key in the header works too (curl); the refresh still needs the page's token
        headers = {"authorization": f"Bearer {KEY}"}
        assert "Accounts" in (await http.get("/dashboard", headers=headers)).text
        refused = await http.post("/dashboard/refresh", headers=headers)
        assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]
        signed = await http.post("/dashboard/login", data={"key": KEY})
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        # a page elsewhere cannot press the button: its Origin is refused at the edge
        cross = await http.post("/dashboard/refresh", headers={"origin": "https://evil.test"})
        assert cross.status_code == 403


async def test_dashboard_details(start_gateway: Callable[..., Any]) -> None:
    """No sign-in by URL; the Secure flag behind a TLS proxy; the session check the page
    uses to find it was signed out; refusals at the edge named by their route."""
    gateway: RunningGateway = await start_gateway(
        server={"api_keys": (KEY,), "allowed_hosts": ("gw.example.com",)})
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        by_url = await http.get("/dashboard", params={"key": KEY})
        assert "Sign in" in by_url.text
        assert by_url.headers["x-content-type-options"] == "nosniff"
        assert (await http.get("/dashboard/session")).status_code == 401
        proxied = await http.post("/dashboard/login", data={"key": KEY}, headers={
            "x-forwarded-proto": "https", "host": "gw.example.com",
            "origin": "https://gw.example.com"})
        assert proxied.status_code == 303 and "secure" in proxied.headers["set-cookie"].lower()
        plain = await http.post("/dashboard/login", data={"key": KEY})
        http.cookies.set("gateway_session", plain.cookies["gateway_session"])
        assert (await http.get("/dashboard/session")).json() == {"signedIn": True}
        http.cookies.clear()
        misdirected = await http.get("/dashboard", headers={"host": "evil.test"})
        assert misdirected.status_code == 421, misdirected.text  # refused at the edge
    refused = [r for r in gateway.services.requests.recent if r.status == 421]
    assert refused and refused[-1].face == "dashboard"
