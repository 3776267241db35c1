"""The operator's dashboard: GET /dashboard (a server-rendered page), its live stream
GET /dashboard/events (server-sent snapshots of the pool and the request log), its static
assets, sign-in with an API key kept in a cookie, and the refresh-tokens button.

Everything shown comes from state the gateway already holds (the pool's snapshot, which
the supervisor keeps current, and the request log): watching the page never calls the
upstream. It is read-only but for one admin action (refresh tokens), which needs the page's
CSRF token besides the session. No prompt text, key or token is ever on the page; accounts
are shown by their hashed handle unless `dashboard.show_emails` is on.

Sessions: with `server.api_keys` set, the page asks for a key once (a form POST, never a
URL) and keeps a signed session in an HttpOnly, SameSite=Strict cookie: the session names
its key by a digest, so removing the key from the config ends its sessions, and the
signing key comes from the gateway's secret file (replicas sharing it share sessions).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import time
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, Response, current_app, request

from gateway import errors
from gateway.accounts.pool import AccountEntry
from gateway.api.auth import authorized

if TYPE_CHECKING:
    from gateway.app import Services

COOKIE = "gateway_session"
SESSION_SECONDS = 7 * 24 * 3600
_ASSETS = {"dashboard.css": "text/css; charset=utf-8",
           "dashboard.js": "text/javascript; charset=utf-8"}

blueprint = Blueprint("dashboard", __name__)


def _services() -> Services:
    services: Services = current_app.extensions["gateway"]
    return services


# -- sessions -----------------------------------------------------------------------------


def _key_digest(key: bytes) -> str:
    return hashlib.sha256(b"dashboard-key\x00" + key).hexdigest()[:32]


def _sign(services: Services, payload: str) -> str:
    mac = hmac.new(services.sealer.derive(b"dashboard-session"), payload.encode(),
                   hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def make_session(services: Services, key: bytes, now: float) -> str:
    payload = f"v1.{_key_digest(key)}.{int(now + SESSION_SECONDS)}"
    return f"{payload}.{_sign(services, payload)}"


def session_valid(services: Services, value: str | None, now: float) -> bool:
    """A session this gateway signed, not expired, for a key still configured."""
    if not value or value.count(".") != 3:
        return False
    payload, _, mac = value.rpartition(".")
    if not hmac.compare_digest(_sign(services, payload), mac):
        return False
    _, digest, expires = payload.split(".")
    if not expires.isdigit() or int(expires) < now:
        return False
    return any(hmac.compare_digest(digest, _key_digest(key.encode("utf-8")))
               for key in services.config.server.api_keys)


def csrf_token(services: Services, session: str) -> str:
    return _sign(services, f"csrf.{session}")


def _signed_in(services: Services) -> bool:
    keys = services.config.server.api_keys
    if not keys:
        return True
    # a key in a header (curl) counts; one in the URL (?key=) does not: it would sit in
    # the browser's history and bookmarks
    headers_only = {**request.scope, "query_string": b""}
    if authorized(headers_only, keys):
        return True
    return session_valid(services, request.cookies.get(COOKIE), time.time())


def _session_of_request(services: Services) -> str:
    """What the CSRF token is bound to: the session cookie, else (no keys, or a key sent
    as a header) a constant for this gateway."""
    return request.cookies.get(COOKIE) or "no-session"


# -- the page ------------------------------------------------------------------------------


def _status(entry: AccountEntry) -> tuple[str, str]:
    """(status, words for it): never a colour alone."""
    if entry.status == "invalid":
        reason = entry.invalid_reason or ""
        if "invalid_grant" in reason or "re-auth" in reason or "revoked" in reason:
            return "reauth", "needs re-auth"
        return "invalid", "invalid"
    if entry.status == "disabled":
        return "disabled", "disabled"
    if entry.status == "no-token":
        return "notoken", "no token yet"
    if entry.cooldowns:
        return "cooling", "cooling"
    return "ok", "ok"


def _reset_epoch(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def snapshot(services: Services, now: float) -> dict[str, Any]:
    """Everything the page shows, as JSON (the live stream sends this)."""
    config = services.config.dashboard
    accounts = []
    for entry in services.pool.snapshot().entries:
        status, words = _status(entry)
        models = []
        for model in sorted(set(entry.quotas) | set(entry.cooldowns)):
            fraction, reset = entry.quotas.get(model, (None, None))
            cooldown = entry.cooldowns.get(model)
            models.append({"id": model, "remaining": fraction, "resetAt": _reset_epoch(reset),
                           "cooldownUntil": now + cooldown if cooldown else None})
        accounts.append({
            "name": entry.email if config.show_emails else entry.handle,
            "tier": entry.tier or "-", "status": status, "statusText": words,
            "models": models,
        })
    recent = list(services.requests.recent)[-config.recent_requests:]
    recent.reverse()
    return {
        "now": now,
        "demo": services.demo,
        "accounts": accounts,
        "minutes": services.requests.minutes(now),
        "recent": [{
            "at": r.at, "face": r.face, "asked": r.model_asked, "served": r.model_served,
            "account": r.account, "status": r.status, "latencyMs": r.latency_ms,
            "inputTokens": r.input_tokens, "outputTokens": r.output_tokens,
            "stream": r.stream,
        } for r in recent],
    }


def _page(body: str, *, csrf: str = "", title: str = "gateway") -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{html.escape(csrf)}">
<title>{html.escape(title)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/dashboard/static/dashboard.css">
</head>
<body>
{body}
</body>
</html>
"""


def _login_page(problem: str = "") -> str:
    note = f'<p class="problem" role="alert">{html.escape(problem)}</p>' if problem else ""
    return _page(f"""<main class="login">
<h1>gateway</h1>
<p>This gateway asks for an API key. It is kept in a cookie on this browser
(HttpOnly, SameSite=Strict), never in the address bar.</p>
{note}
<form method="post" action="/dashboard/login">
<label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
</form>
</main>""", title="gateway: sign in")


def _initial_accounts(data: dict[str, Any]) -> str:
    rows = []
    for account in data["accounts"]:
        rows.append(
            f'<tr><th scope="row">{html.escape(account["name"])}</th>'
            f'<td>{html.escape(account["tier"])}</td>'
            f'<td><span class="status status-{account["status"]}">'
            f'{html.escape(account["statusText"])}</span></td>'
            f'<td>{len(account["models"])} models</td></tr>')
    return "".join(rows) or '<tr><td colspan="4">No accounts yet.</td></tr>'


def _dashboard_page(services: Services, csrf: str) -> str:
    data = snapshot(services, time.time())
    demo = ('<p class="demo">Demo mode: the upstream is the built-in emulator.</p>'
            if services.demo else "")
    signed = bool(services.config.server.api_keys)
    logout = ('<form method="post" action="/dashboard/logout" class="inline">'
              f'<input type="hidden" name="csrf" value="{html.escape(csrf)}">'
              '<button type="submit">Sign out</button></form>') if signed else ""
    # JSON inside <script> is not HTML-decoded: its <, > and & are escaped the JSON way
    initial = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace(
        ">", "\\u003e").replace("&", "\\u0026")
    return _page(f"""<header>
<h1>gateway</h1>
<p id="live" class="live" role="status" aria-live="polite">connecting…</p>
<nav aria-label="actions">
<button type="button" id="refresh">Refresh tokens</button>
{logout}
</nav>
</header>
<main>
{demo}
<section aria-labelledby="accounts-title">
<h2 id="accounts-title">Accounts</h2>
<div id="accounts" class="accounts">
<table><thead><tr><th scope="col">Account</th><th scope="col">Tier</th>
<th scope="col">Status</th><th scope="col">Models</th></tr></thead>
<tbody>{_initial_accounts(data)}</tbody></table>
</div>
<p id="refresh-result" role="status" aria-live="polite"></p>
</section>
<section aria-labelledby="traffic-title">
<h2 id="traffic-title">Last hour</h2>
<div class="plots">
<figure><figcaption>Requests per minute</figcaption><div id="plot-requests"></div></figure>
<figure><figcaption>Errors per minute, by class</figcaption><div id="plot-errors"></div>
</figure>
</div>
</section>
<section aria-labelledby="requests-title">
<h2 id="requests-title">Recent requests</h2>
<div class="table-wrap">
<table id="requests"><thead><tr><th scope="col">Time</th><th scope="col">Face</th>
<th scope="col">Model asked</th><th scope="col">Served</th><th scope="col">Account</th>
<th scope="col">Status</th><th scope="col">Latency</th><th scope="col">Tokens in/out</th>
</tr></thead><tbody></tbody></table>
</div>
</section>
</main>
<script type="application/json" id="initial">{initial}</script>
<script src="/dashboard/static/dashboard.js" defer></script>""", csrf=csrf)


def _html(text: str, status: int = 200) -> Response:
    response = Response(text, status=status, content_type="text/html; charset=utf-8")
    response.headers["cache-control"] = "no-store"
    response.headers["x-frame-options"] = "DENY"
    response.headers["content-security-policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
    # not "no-referrer": with it, a browser sends `Origin: null` on the page's own form
    # posts, which the edge's cross-site check rightly refuses
    response.headers["referrer-policy"] = "same-origin"
    response.headers["x-content-type-options"] = "nosniff"
    return response


def _enabled(services: Services) -> None:
    if not services.config.dashboard.enabled:
        raise errors.NotFound("the dashboard is off (dashboard.enabled = false)")


@blueprint.get("/dashboard")
async def dashboard() -> Response:
    services = _services()
    _enabled(services)
    if not _signed_in(services):
        return _html(_login_page())
    return _html(_dashboard_page(services, csrf_token(services,
                                                      _session_of_request(services))))


@blueprint.post("/dashboard/login")
async def login() -> Response:
    services = _services()
    _enabled(services)
    form = await request.form
    key = (form.get("key") or "").strip().encode("utf-8")
    keys = services.config.server.api_keys
    if keys and not authorized({"headers": [(b"x-api-key", key)]}, keys):
        await trio.sleep(0.5)  # a guess costs time
        return _html(_login_page("That key is not one of this gateway's."), status=401)
    response = Response("", status=303, headers={"location": "/dashboard"})
    if keys:
        response.set_cookie(COOKIE, make_session(services, key, time.time()),
                            max_age=SESSION_SECONDS, httponly=True, samesite="Strict",
                            secure=_over_https(), path="/dashboard")
    return response


def _over_https() -> bool:
    """Whether the browser reached this page over TLS: directly, or through a proxy that
    says so (trusting the header can only add the cookie's Secure flag, never remove it)."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.scheme == "https" or forwarded == "https"


@blueprint.get("/dashboard/session")
async def session() -> tuple[dict[str, Any], int]:
    """Whether this browser is still signed in: the page asks when its stream fails, and
    reloads into the sign-in form if not."""
    services = _services()
    _enabled(services)
    signed = _signed_in(services)
    return {"signedIn": signed}, 200 if signed else 401


@blueprint.post("/dashboard/logout")
async def logout() -> Response:
    response = Response("", status=303, headers={"location": "/dashboard"})
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


@blueprint.post("/dashboard/refresh")
async def refresh() -> tuple[dict[str, Any], int]:
    services = _services()
    _enabled(services)
    if not _signed_in(services):
        raise errors.Unauthenticated("sign in on /dashboard first")
    given = request.headers.get("x-csrf-token", "")
    expected = csrf_token(services, _session_of_request(services))
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise errors.PermissionDenied("the page's CSRF token is missing or wrong; reload it")
    results = await services.supervisor.refresh_now()
    done = sum(1 for r in results.values() if r.get("ok"))
    return {"refreshed": done, "accounts": len(results)}, 200


@blueprint.get("/dashboard/events")
async def events() -> Response:
    """Snapshots as server-sent events, every `dashboard.update_seconds` (one at once)."""
    services = _services()
    _enabled(services)
    if not _signed_in(services):
        raise errors.Unauthenticated("sign in on /dashboard first")
    every = services.config.dashboard.update_seconds

    async def stream() -> Any:
        while not services.draining.is_set():
            data = json.dumps(snapshot(services, time.time()), separators=(",", ":"))
            yield f"event: snapshot\ndata: {data}\n\n".encode()
            with trio.move_on_after(every):
                await services.draining.wait()  # shutting down: the stream ends now

    response = Response(stream(), content_type="text/event-stream; charset=utf-8")
    response.headers["cache-control"] = "no-store"
    response.headers["x-accel-buffering"] = "no"
    response.timeout = None  # a live page stays as long as it is open
    return response


@blueprint.get("/dashboard/static/<name>")
async def static_asset(name: str) -> Response:
    _enabled(_services())
    if name not in _ASSETS:
        raise errors.NotFound(f"no dashboard asset named {name[:40]!r}")
    data = resources.files("gateway.dashboard").joinpath(name).read_bytes()
    response = Response(data, content_type=_ASSETS[name])
    response.headers["cache-control"] = "no-cache"
    response.headers["x-content-type-options"] = "nosniff"
    return response

