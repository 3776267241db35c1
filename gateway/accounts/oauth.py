"""Google OAuth for accounts: sign-in (installed-app flow with PKCE), token refresh, identity.

Signing in follows Google's installed-application flow: an authorization URL with a PKCE
(S256) challenge and a random `state`, a redirect to a loopback address (served here by a
tiny one-shot HTTP server, or pasted back by hand when no browser can reach this machine),
then the code is exchanged for tokens. `refresh_access_token` turns a stored refresh token
into an access token with google-auth; `fetch_email` and `discover_project` find out who
the account is and which Cloud Code project serves it. Failures raise `OAuthError`;
`InvalidGrant` means the refresh token is dead and the account must be added again, any
other `OAuthError` may pass. Tokens, codes and verifiers never appear in messages or logs.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import attrs
import google.auth.exceptions
import google.auth.transport
import google.oauth2.credentials
import httpx
import trio

from gateway.config import ConfigError, OAuthConfig
from gateway.upstream.client import CloudCodeClient, UpstreamHTTPError

log = logging.getLogger(__name__)

CALLBACK_PATH = "/oauth-callback"
# Who is calling, as loadCodeAssist and onboardUser expect to hear it: the Antigravity IDE.
# (The older IDE_UNSPECIFIED form is answered with the free tier whatever the account has.)
LOAD_METADATA: Mapping[str, str] = {"ideType": "ANTIGRAVITY"}
ONBOARD_METADATA: Mapping[str, str] = {
    "ideType": "ANTIGRAVITY",
    "platform": "PLATFORM_UNSPECIFIED",
    "pluginType": "GEMINI",
}
DEFAULT_TIER = "free-tier"
_MAX_DESCRIPTION = 200


class OAuthError(Exception):
    """Signing in, refreshing or identifying an account failed. `code` is the OAuth error code
    (e.g. "invalid_client") when the server sent one."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class InvalidGrant(OAuthError):
    """The refresh token was revoked or expired: only signing in again revives the account."""


class ProjectDiscoveryError(OAuthError):
    """Cloud Code would not tell (or provision) the account's project."""


@attrs.frozen(slots=True)
class TokenGrant:
    access_token: str = attrs.field(repr=False)
    refresh_token: str = attrs.field(repr=False)
    expires_in: float


@attrs.frozen(slots=True)
class AccessToken:
    token: str = attrs.field(repr=False)
    expiry: float  # epoch seconds


@attrs.frozen(slots=True)
class AuthorizationRequest:
    """One sign-in attempt: the URL to visit and the secrets needed to finish it."""

    url: str = attrs.field(repr=False)  # carries the state
    redirect_uri: str
    state: str = attrs.field(repr=False)
    code_verifier: str = attrs.field(repr=False)


@attrs.frozen(slots=True)
class AuthorizationCode:
    """What `exchange_code` needs: the code and the redirect URI and verifier it was issued for."""

    code: str = attrs.field(repr=False)
    redirect_uri: str
    code_verifier: str = attrs.field(repr=False)


def check_client_configured(config: OAuthConfig) -> None:
    """Raise ConfigError, saying how to fix it, when no OAuth client is configured."""
    missing = [name for name in ("client_id", "client_secret") if not getattr(config, name)]
    if missing:
        keys = " and ".join(f"oauth.{name}" for name in missing)
        raise ConfigError(
            f"{keys} not set: adding or refreshing Google accounts needs an OAuth client. "
            "Set oauth.client_id and oauth.client_secret in the config file's [oauth] table, "
            "or the environment variables GATEWAY_OAUTH_CLIENT_ID and "
            "GATEWAY_OAUTH_CLIENT_SECRET (see README)."
        )


# -- the authorization request -------------------------------------------------------------


def new_pkce() -> tuple[str, str]:
    """A PKCE (verifier, S256 challenge) pair."""
    verifier = secrets.token_urlsafe(64)  # 86 characters, inside RFC 7636's 43..128
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier, challenge


def new_state() -> str:
    return secrets.token_urlsafe(24)


def build_auth_url(
    config: OAuthConfig, *, redirect_uri: str, state: str, code_challenge: str
) -> str:
    params = {
        "client_id": config.client_id,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": " ".join(config.scopes),
        # offline + consent: Google only hands out a refresh token when both are asked for
        # (consent forces one even if the user granted this client before).
        "access_type": "offline",
        "prompt": "consent",
        "state": state,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
    }
    separator = "&" if "?" in config.auth_url else "?"
    return f"{config.auth_url}{separator}{urlencode(params)}"


def new_authorization(config: OAuthConfig, *, redirect_uri: str) -> AuthorizationRequest:
    """A fresh state and PKCE pair, and the authorization URL built from them."""
    state = new_state()
    verifier, challenge = new_pkce()
    url = build_auth_url(config, redirect_uri=redirect_uri, state=state, code_challenge=challenge)
    return AuthorizationRequest(url, redirect_uri, state, verifier)


def _code_from_query(query: Mapping[str, list[str]], expected_state: str) -> str:
    """The code from a redirect's query, after checking its state; OAuthError otherwise."""
    if "error" in query:
        error = query["error"][0]
        if error == "access_denied":
            raise OAuthError("sign-in was cancelled or access was denied", code=error)
        raise OAuthError(f"Google refused the sign-in: {error[:_MAX_DESCRIPTION]}", code=error)
    states = query.get("state", [])
    if not states or not secrets.compare_digest(states[0], expected_state):
        raise OAuthError(
            "the redirect's state does not match this sign-in (a stale or forged redirect); "
            "start again"
        )
    codes = query.get("code", [])
    if not codes or not codes[0]:
        raise OAuthError("the redirect carries no authorization code")
    return codes[0]


def parse_pasted_redirect(text: str, expected_state: str) -> str:
    """The code from a pasted redirect URL (its state checked) or a pasted bare code."""
    text = text.strip()
    if not text:
        raise OAuthError("nothing was pasted")
    if "?" in text or "=" in text or text.startswith(("http://", "https://")):
        query = urlsplit(text).query if "?" in text else text
        return _code_from_query(parse_qs(query), expected_state)
    if any(c.isspace() for c in text):
        raise OAuthError("that is neither a redirect URL nor an authorization code")
    return text


# -- token endpoint ------------------------------------------------------------------------


def _error_fields(response: httpx.Response) -> tuple[str | None, str]:
    """The OAuth error code and a short description from an error answer, for messages."""
    try:
        data = response.json()
    except ValueError:
        return None, ""
    if not isinstance(data, dict):
        return None, ""
    error = data.get("error")
    description = data.get("error_description")
    if isinstance(error, dict):  # Google APIs (not the token endpoint) nest their errors
        description = error.get("message")
        error = error.get("status")
    code = error if isinstance(error, str) else None
    text = description[:_MAX_DESCRIPTION] if isinstance(description, str) else ""
    return code, text


async def exchange_code(
    http: httpx.AsyncClient,
    config: OAuthConfig,
    *,
    code: str,
    redirect_uri: str,
    code_verifier: str,
) -> TokenGrant:
    """Trade an authorization code for tokens at the token endpoint."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
        "client_id": config.client_id,
        "client_secret": config.client_secret,
    }
    try:
        response = await http.post(
            config.token_url, data=form, headers={"accept": "application/json"}
        )
    except httpx.HTTPError as exc:
        raise OAuthError(f"token endpoint unreachable ({type(exc).__name__})") from None
    if response.status_code != 200:
        error, description = _error_fields(response)
        detail = f": {error}" if error else ""
        detail += f" ({description})" if description else ""
        hint = ""
        if error == "invalid_grant":
            hint = "; the code may have expired or been used already, sign in again"
        elif error in ("invalid_client", "unauthorized_client"):
            hint = "; check oauth.client_id and oauth.client_secret"
        raise OAuthError(
            f"token exchange failed with HTTP {response.status_code}{detail}{hint}", code=error
        )
    try:
        data = response.json()
    except ValueError:
        raise OAuthError("token endpoint answered with something that is not JSON") from None
    access = data.get("access_token") if isinstance(data, dict) else None
    refresh = data.get("refresh_token") if isinstance(data, dict) else None
    if not isinstance(access, str) or not access:
        raise OAuthError("token endpoint answered without an access token")
    if not isinstance(refresh, str) or not refresh:
        raise OAuthError(
            "Google returned no refresh token; remove this app's access at "
            "https://myaccount.google.com/permissions and sign in again"
        )
    expires_in = data.get("expires_in", 3600)
    try:
        seconds = float(expires_in)
    except (TypeError, ValueError):
        seconds = 3600.0
    return TokenGrant(access, refresh, seconds)


class _HttpxTransport(google.auth.transport.Request):
    """google-auth's transport interface over a synchronous httpx client.

    google-auth ships transports for `requests` and `urllib3`, neither of which this project
    depends on; httpx already is its HTTP client, so a dozen lines adapt it instead.
    """

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _HttpxResponse:
        try:
            response = self._client.request(
                method,
                url,
                content=body,
                headers=dict(headers or {}),
                timeout=timeout if timeout is not None else self._client.timeout,
            )
        except httpx.HTTPError as exc:
            raise google.auth.exceptions.TransportError(  # type: ignore[no-untyped-call]
                type(exc).__name__
            ) from exc
        return _HttpxResponse(response.status_code, dict(response.headers), response.content)


class _HttpxResponse(google.auth.transport.Response):
    def __init__(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self._status = status
        self._headers = headers
        self._data = data

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> dict[str, str]:
        return self._headers

    @property
    def data(self) -> bytes:
        return self._data


def _refresh_blocking(config: OAuthConfig, refresh_token: str, timeout: float) -> AccessToken:
    credentials = google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
        token=None,
        refresh_token=refresh_token,
        client_id=config.client_id,
        client_secret=config.client_secret,
        token_uri=config.token_url,
    )
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        try:
            credentials.refresh(_HttpxTransport(client))  # type: ignore[no-untyped-call]
        except google.auth.exceptions.RefreshError as exc:
            raise _classify_refresh_error(exc) from None
        except google.auth.exceptions.TransportError as exc:
            raise OAuthError(f"token endpoint unreachable ({exc})") from None
    token = credentials.token
    if not isinstance(token, str) or not token:
        raise OAuthError("token endpoint answered without an access token")
    expiry = credentials.expiry  # naive UTC, or None when the answer had no expires_in
    if expiry is None:
        return AccessToken(token, time.time() + 3600.0)
    return AccessToken(token, expiry.replace(tzinfo=UTC).timestamp())


def _classify_refresh_error(exc: google.auth.exceptions.RefreshError) -> OAuthError:
    data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    error = data.get("error") if isinstance(data.get("error"), str) else None
    if error == "invalid_grant":
        return InvalidGrant(
            "the refresh token was revoked or has expired (invalid_grant); add the account again",
            code=error,
        )
    if exc.args and str(exc.args[0]).startswith("Reauthentication is needed"):
        return InvalidGrant(
            "Google requires this account to sign in again (reauthentication); add it again",
            code="invalid_grant",
        )
    if error:
        hint = ""
        if error in ("invalid_client", "unauthorized_client"):
            hint = "; check oauth.client_id and oauth.client_secret"
        return OAuthError(f"token refresh failed: {error}{hint}", code=error)
    return OAuthError("token refresh failed (the token endpoint's answer was not usable)")


async def refresh_access_token(
    config: OAuthConfig, refresh_token: str, *, request_timeout: float = 30.0
) -> AccessToken:
    """A fresh access token for `refresh_token`.

    Raises InvalidGrant when the grant is dead, OAuthError for anything that may pass.
    """
    # google-auth owns the token endpoint's semantics: its error parsing, which errors are
    # retryable and its backoff, expiry arithmetic, and reauth (rapt) detection. Writing
    # those again would be a second, less tested copy. It is synchronous, so it runs in a
    # worker thread to keep the event loop free; on cancellation the thread is abandoned
    # (it ends by itself, bounded by `request_timeout` per HTTP request) so callers'
    # deadlines hold.
    return await trio.to_thread.run_sync(
        _refresh_blocking, config, refresh_token, request_timeout, abandon_on_cancel=True
    )


# -- identity and project ------------------------------------------------------------------


async def fetch_email(http: httpx.AsyncClient, config: OAuthConfig, access_token: str) -> str:
    """The account's email address, from the userinfo endpoint."""
    try:
        response = await http.get(
            config.userinfo_url,
            params={"alt": "json"},
            headers={"authorization": f"Bearer {access_token}"},
        )
    except httpx.HTTPError as exc:
        raise OAuthError(f"userinfo endpoint unreachable ({type(exc).__name__})") from None
    if response.status_code != 200:
        error, _ = _error_fields(response)
        detail = f": {error}" if error else ""
        raise OAuthError(f"userinfo lookup failed with HTTP {response.status_code}{detail}")
    try:
        data = response.json()
    except ValueError:
        data = None
    email = data.get("email") if isinstance(data, dict) else None
    if not isinstance(email, str) or "@" not in email:
        raise OAuthError(
            "userinfo has no email address; was the userinfo.email scope granted?"
        )
    return email


def _project_of(answer: Mapping[str, Any]) -> str | None:
    project = answer.get("cloudaicompanionProject")
    if isinstance(project, dict):
        project = project.get("id")
    return project if isinstance(project, str) and project else None


def _tier_of(answer: Mapping[str, Any]) -> str | None:
    # A paid tier outranks the current one: it is what decides quotas.
    for key in ("paidTier", "currentTier"):
        tier = answer.get(key)
        if isinstance(tier, dict) and isinstance(tier.get("id"), str) and tier["id"]:
            return str(tier["id"])
    return None


def _default_allowed_tier(answer: Mapping[str, Any]) -> str | None:
    """The allowed tier marked default, else the first one. Onboarding must use one of
    these: paid tier ids (g1-*) are not valid there."""
    tiers = answer.get("allowedTiers")
    if not isinstance(tiers, list):
        return None
    ids = [(t.get("id"), bool(t.get("isDefault"))) for t in tiers if isinstance(t, dict)]
    valid = [(i, default) for i, default in ids if isinstance(i, str) and i]
    for tier_id, default in valid:
        if default:
            return str(tier_id)
    return str(valid[0][0]) if valid else None


async def discover_project(
    client: CloudCodeClient,
    base_urls: Sequence[str],
    access_token: str,
    *,
    poll_interval: float = 2.0,
    max_polls: int = 15,
) -> tuple[str, str | None]:
    """The account's Cloud Code project and tier, onboarding it on the default tier if new.

    `base_urls` are tried in order. Onboarding is a long-running operation: `onboardUser` is
    called again until it reports done, at most `max_polls` times per endpoint.
    """
    if not base_urls:
        raise ProjectDiscoveryError("no upstream base URL is configured")
    answer: dict[str, Any] | None = None
    failure = ""
    for base_url in base_urls:
        try:
            answer = await client.call(base_url, "loadCodeAssist",
                                       {"metadata": dict(LOAD_METADATA)}, access_token)
            break
        except UpstreamHTTPError as exc:
            failure = f"{base_url}: {exc}"
    if answer is None:
        raise ProjectDiscoveryError(f"loadCodeAssist failed on every endpoint (last: {failure})")
    project = _project_of(answer)
    tier = _tier_of(answer) or _default_allowed_tier(answer)
    if project:
        return project, tier

    tier_id = _default_allowed_tier(answer) or DEFAULT_TIER
    body = {"tierId": tier_id, "metadata": dict(ONBOARD_METADATA)}
    for base_url in base_urls:
        try:
            for attempt in range(max_polls):
                operation = await client.call(base_url, "onboardUser", body, access_token)
                response = operation.get("response")
                if operation.get("done") and isinstance(response, dict):
                    project = _project_of(response)
                    if project:
                        return project, tier or tier_id
                    break  # done without a project: this endpoint will not provision one
                if attempt + 1 < max_polls:
                    await trio.sleep(poll_interval)
            failure = f"{base_url}: onboarding did not finish with a project"
        except UpstreamHTTPError as exc:
            failure = f"{base_url}: {exc}"
    raise ProjectDiscoveryError(f"could not onboard the account on {tier_id} (last: {failure})")


# -- the loopback callback server ----------------------------------------------------------

_MAX_REQUEST_HEAD = 16 * 1024
_CONNECTION_SECONDS = 10.0

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>gateway sign-in</title></head>
<body style="font-family: sans-serif; margin: 3em">
<h1>{title}</h1><p>{text}</p></body></html>
"""


def _parse_request_target(head: bytes) -> tuple[str, str]:
    """(method, target) from an HTTP/1.x request head; ValueError if it is not one."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("not an HTTP/1.x request line")
    return parts[0], parts[1]


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > _MAX_REQUEST_HEAD:
            return None
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        buffer += chunk
    return buffer


async def _respond(stream: trio.SocketStream, status: int, title: str, text: str) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
    body = _PAGE.format(title=html.escape(title), text=html.escape(text)).encode()
    head = (
        f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    # If the browser went away, the outcome stands regardless.
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(head + body)


@attrs.define(slots=True)
class _CallbackOutcome:
    """The first callback's result: a code or the error that ended the sign-in."""

    done: trio.Event = attrs.field(factory=trio.Event)
    code: str | None = attrs.field(default=None, repr=False)
    error: OAuthError | None = None

    def settle(self, code: str | None, error: OAuthError | None) -> None:
        if not self.done.is_set():
            self.code, self.error = code, error
            self.done.set()


async def _handle_callback(
    stream: trio.SocketStream, expected_state: str, outcome: _CallbackOutcome
) -> None:
    # Browsers open speculative connections and drop them; a broken one must not end the
    # sign-in, so each connection's failures stay with that connection.
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        async with stream:
            with trio.move_on_after(_CONNECTION_SECONDS):
                await _answer_callback(stream, expected_state, outcome)


async def _answer_callback(
    stream: trio.SocketStream, expected_state: str, outcome: _CallbackOutcome
) -> None:
    head = await _read_head(stream)
    if head is None:
        return
    try:
        method, target = _parse_request_target(head)
    except ValueError:
        await _respond(stream, 400, "Bad request", "This server only takes a sign-in.")
        return
    parts = urlsplit(target)
    if parts.path != CALLBACK_PATH:
        await _respond(stream, 404, "Not found", "Nothing here.")
        return
    if method != "GET":
        await _respond(stream, 405, "Method not allowed", "Use GET.")
        return
    try:
        code = _code_from_query(parse_qs(parts.query), expected_state)
    except OAuthError as exc:
        await _respond(stream, 400, "Sign-in failed", f"{exc}. Return to the terminal.")
        outcome.settle(None, exc)
        return
    await _respond(
        stream, 200, "Signed in", "You can close this tab and return to the terminal."
    )
    outcome.settle(code, None)


def _open_quietly(open_browser: Callable[[str], object], url: str) -> None:
    try:
        open_browser(url)
    except Exception as exc:
        # The URL has been shown to the user, who can still open it by hand.
        log.warning("could not open a browser (%s); open the sign-in URL by hand",
                    type(exc).__name__)


async def run_local_callback_flow(
    config: OAuthConfig,
    *,
    open_browser: Callable[[str], object],
    # Not a cancellation deadline: running out of time is a failed sign-in with its own
    # message, after the listener is closed.
    timeout: float,  # noqa: ASYNC109
) -> AuthorizationCode:
    """Sign in through the browser, catching the redirect on a loopback port.

    Listens on 127.0.0.1 (a free port), calls `open_browser(url)` in a worker thread (a
    console browser may block until it exits), and waits at most `timeout` seconds for
    the redirect. Returns the code with the redirect URI and PKCE verifier it belongs to.
    """
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        port = listeners[0].socket.getsockname()[1]
        request = new_authorization(
            config, redirect_uri=f"http://127.0.0.1:{port}{CALLBACK_PATH}"
        )
        outcome = _CallbackOutcome()

        async def handler(stream: trio.SocketStream) -> None:
            await _handle_callback(stream, request.state, outcome)

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, handler, listeners)
                nursery.start_soon(
                    partial(
                        trio.to_thread.run_sync,
                        _open_quietly,
                        open_browser,
                        request.url,
                        abandon_on_cancel=True,
                    )
                )
                await outcome.done.wait()
                nursery.cancel_scope.cancel()
    finally:
        for listener in listeners:
            await listener.aclose()
    if outcome.error is not None:
        raise outcome.error
    if outcome.code is None:
        raise OAuthError(f"no sign-in arrived within {timeout:g} seconds")
    return AuthorizationCode(outcome.code, request.redirect_uri, request.code_verifier)
