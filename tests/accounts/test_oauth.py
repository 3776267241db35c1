"""OAuth pieces: PKCE, the authorization URL, pasted redirects, the loopback callback server,
and (against the emulator on a real socket) code exchange, refresh, userinfo and projects."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
from collections.abc import Callable
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from gateway.accounts.oauth import (
    CALLBACK_PATH,
    OAuthError,
    build_auth_url,
    new_authorization,
    new_pkce,
    new_state,
    parse_pasted_redirect,
    run_local_callback_flow,
)
from gateway.config import OAuthConfig

CONFIG = OAuthConfig(client_id="cid.apps.example", client_secret="shh")


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_pkce_pair_is_s256() -> None:
    verifier, challenge = new_pkce()
    assert 43 <= len(verifier) <= 128
    unreserved = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    assert set(verifier) <= set(unreserved)
    digest = hashlib.sha256(verifier.encode()).digest()
    assert challenge == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert new_pkce()[0] != verifier
    assert new_state() != new_state()


def test_auth_url_asks_for_offline_consent_with_pkce() -> None:
    url = build_auth_url(
        CONFIG, redirect_uri="http://127.0.0.1:9/oauth-callback", state="st", code_challenge="ch"
    )
    assert url.startswith(CONFIG.auth_url + "?")
    assert _query(url) == {
        "client_id": "cid.apps.example",
        "redirect_uri": "http://127.0.0.1:9/oauth-callback",
        "response_type": "code",
        "scope": " ".join(CONFIG.scopes),
        "access_type": "offline",
        "prompt": "consent",
        "state": "st",
        "code_challenge": "ch",
        "code_challenge_method": "S256",
    }
    assert "shh" not in url
    with_query = OAuthConfig(client_id="c", auth_url="https://auth.example/authorize?hd=x")
    url = build_auth_url(with_query, redirect_uri="r", state="s", code_challenge="c")
    assert url.startswith("https://auth.example/authorize?hd=x&")


def test_new_authorization_binds_state_and_verifier() -> None:
    request = new_authorization(CONFIG, redirect_uri="http://127.0.0.1:1/cb")
    query = _query(request.url)
    assert query["state"] == request.state
    digest = hashlib.sha256(request.code_verifier.encode()).digest()
    assert query["code_challenge"] == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert request.state not in repr(request)
    assert request.code_verifier not in repr(request)


_codes = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="?=&#%"),
    min_size=1,
    max_size=80,
)
_states = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-_", min_size=8, max_size=40)


@given(code=_codes, state=_states)
def test_pasted_redirect_url_gives_its_code(code: str, state: str) -> None:
    url = "http://127.0.0.1:8085/oauth-callback?" + urlencode(
        {"state": state, "code": code, "scope": "email"}
    )
    assert parse_pasted_redirect(f"  {url}\n", state) == code
    assert parse_pasted_redirect(urlsplit(url).query, state) == code
    with pytest.raises(OAuthError, match="state does not match"):
        parse_pasted_redirect(url, state + "x")


@given(code=_codes)
def test_pasted_bare_code_is_taken_as_is(code: str) -> None:
    assert parse_pasted_redirect(code + "\n", "any-state") == code


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "nothing was pasted"),
        ("http://127.0.0.1:8085/oauth-callback?code=abc", "state does not match"),
        ("http://127.0.0.1:8085/oauth-callback?state=good", "no authorization code"),
        ("http://127.0.0.1:8085/oauth-callback?error=access_denied&state=good", "denied"),
        ("http://127.0.0.1/cb?error=server_error&state=good", "refused the sign-in: server_error"),
        ("two words", "neither a redirect URL nor an authorization code"),
    ],
)
def test_pasted_redirect_errors(text: str, message: str) -> None:
    with pytest.raises(OAuthError, match=message):
        parse_pasted_redirect(text, "good")


# -- the loopback callback server, driven by a browser stand-in in a thread ----------------


class _Browser:
    """Plays the browser: given the auth URL, hits the redirect URI as Google would."""

    def __init__(self, make_query: Callable[[dict[str, str]], dict[str, str]],
                 extra_paths: tuple[str, ...] = (), junk_first: bool = False) -> None:
        self.make_query = make_query
        self.extra_paths = extra_paths
        self.junk_first = junk_first
        self.statuses: list[int] = []
        self.pages: list[str] = []
        self.done = threading.Event()

    def __call__(self, url: str) -> bool:
        try:
            query = _query(url)
            redirect = query["redirect_uri"]
            assert redirect.startswith("http://127.0.0.1:")
            assert redirect.endswith(CALLBACK_PATH)
            base = redirect.removesuffix(CALLBACK_PATH)
            if self.junk_first:
                port = urlsplit(redirect).port or 0
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")
                    self.statuses.append(int(sock.recv(100).split()[1]))
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(b"GET /oauth-cal")  # and hang up mid-request
            with httpx.Client(timeout=5) as client:
                for path in self.extra_paths:
                    self.statuses.append(client.get(base + path).status_code)
                response = client.get(redirect, params=self.make_query(query))
                self.statuses.append(response.status_code)
                self.pages.append(response.text)
        finally:
            self.done.set()
        return True

    async def finished(self) -> None:
        assert await trio.to_thread.run_sync(self.done.wait, 5)


async def test_callback_flow_returns_code_redirect_and_verifier() -> None:
    browser = _Browser(lambda q: {"code": "4/0Acode", "state": q["state"]},
                       extra_paths=("/favicon.ico",))
    result = await run_local_callback_flow(CONFIG, open_browser=browser, timeout=10)
    await browser.finished()
    assert result.code == "4/0Acode"
    assert result.redirect_uri.startswith("http://127.0.0.1:")
    assert len(result.code_verifier) >= 43
    assert browser.statuses == [404, 200]
    assert "Signed in" in browser.pages[0]
    # the listener is gone once the flow is over
    port = int(urlsplit(result.redirect_uri).port or 0)
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_callback_flow_rejects_a_mismatched_state() -> None:
    browser = _Browser(lambda q: {"code": "4/0Acode", "state": "forged"})
    with pytest.raises(OAuthError, match="state does not match"):
        await run_local_callback_flow(CONFIG, open_browser=browser, timeout=10)
    await browser.finished()
    assert browser.statuses == [400]
    assert "Sign-in failed" in browser.pages[0]


async def test_callback_flow_reports_a_denied_consent() -> None:
    browser = _Browser(lambda q: {"error": "access_denied", "state": q["state"]})
    with pytest.raises(OAuthError, match="denied"):
        await run_local_callback_flow(CONFIG, open_browser=browser, timeout=10)
    await browser.finished()


async def test_callback_flow_shrugs_off_broken_connections() -> None:
    browser = _Browser(lambda q: {"code": "c", "state": q["state"]}, junk_first=True)
    result = await run_local_callback_flow(CONFIG, open_browser=browser, timeout=10)
    await browser.finished()
    assert result.code == "c"
    assert browser.statuses == [400, 200]


async def test_callback_flow_escapes_what_it_echoes() -> None:
    browser = _Browser(lambda q: {"error": "<script>x</script>", "state": q["state"]})
    with pytest.raises(OAuthError, match="refused"):
        await run_local_callback_flow(CONFIG, open_browser=browser, timeout=10)
    await browser.finished()
    assert "<script>" not in browser.pages[0]
    assert "&lt;script&gt;" in browser.pages[0]


async def test_callback_flow_times_out() -> None:
    opened: list[str] = []
    with trio.fail_after(5), pytest.raises(OAuthError, match=r"within 0\.2 seconds"):
        await run_local_callback_flow(CONFIG, open_browser=opened.append, timeout=0.2)
    assert len(opened) == 1


async def test_callback_flow_survives_a_failing_browser_launcher() -> None:
    def broken(url: str) -> None:
        raise RuntimeError("no display")

    with pytest.raises(OAuthError, match="within"):
        await run_local_callback_flow(CONFIG, open_browser=broken, timeout=0.2)
