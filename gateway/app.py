"""The quart-trio application factory.

`create_app(config)` returns an ASGI app whose lifespan owns everything long-lived: on
start-up it loads the account store, opens the upstream HTTP client and starts the
supervisor (token refresh, quota probes) in the lifespan nursery; on shutdown it cancels the
supervisor and closes the client. Chat routes are raw ASGI handlers (see `api.chat`) placed in
front of Quart by `GatewayASGI`, which also enforces API keys, CORS and the body limit for
every route; the other routes are Quart blueprints.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from gateway import errors
from gateway.accounts.pool import AccountPool
from gateway.accounts.store import AccountStore
from gateway.accounts.supervisor import Supervisor
from gateway.api import admin, auth
from gateway.api import anthropic as anthropic_api
from gateway.api import dashboard as dashboard_api
from gateway.api import gemini as gemini_api
from gateway.api import openai as openai_api
from gateway.api import responses as responses_api
from gateway.api import usage as usage_api
from gateway.api.chat import (
    Admission,
    Dialect,
    Receive,
    Scope,
    Send,
    access_log,
    handle_chat,
    header,
    loggable,
    send_json,
)
from gateway.config import Config, ConfigError, ServerConfig
from gateway.directbody import DirectBody
from gateway.metrics import Metrics
from gateway.sealing import Sealer, load_or_create_secret
from gateway.server import is_loopback
from gateway.signatures import SignatureCache
from gateway.state.requests import RequestLog, RequestRecord
from gateway.state.responses import MemoryResponseStore, ResponseStore
from gateway.state.shared import StateStore, open_state_store
from gateway.state.usage import UsageHistory, usage_path
from gateway.translate.models import FALLBACK, Catalogue, ModelInfo
from gateway.upstream.client import CloudCodeClient, make_http_client, make_transport
from gateway.upstream.dispatch import Dispatcher

log = logging.getLogger("gateway")


@attrs.define(slots=True)
class Services:
    """Everything a request handler may read, built at start-up."""

    config: Config
    clock: Callable[[], float]
    http: httpx.AsyncClient
    client: CloudCodeClient
    store: AccountStore
    pool: AccountPool
    supervisor: Supervisor
    dispatcher: Dispatcher
    signatures: SignatureCache
    metrics: Metrics
    responses: ResponseStore
    sealer: Sealer
    state: StateStore
    requests: RequestLog = attrs.field(factory=RequestLog)
    # set when shutdown begins: what would stream for ever (the dashboard) ends then
    draining: trio.Event = attrs.field(factory=trio.Event)
    usage: UsageHistory | None = None  # None: usage.enabled is false
    demo: bool = False

    def catalogue(self) -> Catalogue:
        """The models the accounts serve (their last probes), or the built-in fallback
        before any probe answered: with no accounts at all a request must still reach the
        dispatcher and get a clear 503."""
        return self.pool.catalogue() or FALLBACK

    def resolve_model(self, name: str, *, thinking: bool = False) -> ModelInfo:
        return self.catalogue().resolve(
            name, thinking=thinking, aliases=self.config.models.aliases
        )


async def build_services(
    config: Config, *, clock: Callable[[], float] = time.time, demo: bool = False
) -> Services:
    store = AccountStore(config.accounts.file)
    accounts = await store.aload()
    if not accounts and not demo:
        log.warning(
            "no Google accounts in %s: every chat request will fail with 503 until one is "
            "added with `gateway accounts add` (or try `gateway demo`)", store.path
        )
    elif not (config.oauth.client_id and config.oauth.client_secret):
        log.error(
            "%d account(s) in %s, but oauth.client_id and oauth.client_secret are not set: "
            "their tokens cannot be refreshed and every chat request will fail; set them "
            "(GATEWAY_OAUTH_CLIENT_ID, GATEWAY_OAUTH_CLIENT_SECRET) to the OAuth client that "
            "issued the refresh tokens (README: \"Which OAuth client works\")",
            len(accounts), store.path,
        )
    http = make_http_client(config.upstream)
    client = CloudCodeClient(http, config.upstream, make_transport(config.upstream))
    pool = AccountPool(accounts, selection=config.accounts.selection, clock=clock)
    metrics = Metrics()
    responses = config.responses
    state = open_state_store(
        config.state, pool, signatures=SignatureCache(clock=clock),
        responses=MemoryResponseStore(
            max_responses=responses.store_max_responses, max_bytes=responses.store_max_bytes,
            ttl_seconds=responses.store_ttl_seconds, clock=clock,
        ),
        clock=clock, metrics=metrics, probe_interval=config.accounts.quota_probe_interval_seconds,
    )
    supervisor = Supervisor(
        pool=pool, store=store, client=client, config=config, clock=clock, metrics=metrics,
        state=state,
    )
    dispatcher = Dispatcher(pool, supervisor, client, config, clock=clock, metrics=metrics,
                            state=state)
    metrics.watch_cooldowns(
        lambda: {
            (entry.handle, model): seconds
            for entry in pool.snapshot().entries
            for model, seconds in entry.cooldowns.items()
        }
    )
    services = Services(
        config=config,
        clock=clock,
        http=http,
        client=client,
        store=store,
        pool=pool,
        supervisor=supervisor,
        dispatcher=dispatcher,
        signatures=state.signature_cache,
        metrics=metrics,
        responses=state.responses,
        sealer=Sealer(await _sealing_key(config)),
        state=state,
        usage=_usage_history(config, clock),
        demo=demo,
    )
    if services.usage is not None:
        services.requests.listen(services.usage.record)
    return services


def _usage_history(config: Config, clock: Callable[[], float]) -> UsageHistory | None:
    usage = config.usage
    if not usage.enabled:
        return None
    return UsageHistory(usage_path(config), flush_seconds=usage.flush_seconds,
                        retention_days=usage.retention_days, clock=clock)


async def prepare_shared_files(config: Config) -> None:
    """Make the files processes sharing a config must share (the sealing key), once, before
    several start at the same time (`gateway serve --workers`)."""
    await _sealing_key(config)


def sealing_key_path(config: Config) -> Path:
    return Path(config.responses.key_file or Path(config.accounts.file).parent / "responses.key")


async def _sealing_key(config: Config) -> bytes:
    path = sealing_key_path(config)
    try:
        return await trio.to_thread.run_sync(load_or_create_secret, path)
    except ValueError as exc:
        raise ConfigError(f"config key 'responses.key_file': {exc}") from None
    except OSError as exc:
        replicas = (
            "; replicas must share one file, made once with `gateway secret` (sealed "
            "reasoning and dashboard sessions do not carry across replicas meanwhile)"
            if config.state.redis_url or config.server.workers > 1 else "")
        log.warning("the sealing key %s cannot be read or written (%s): using one for this "
                    "run only, so reasoning sealed now cannot be opened after a restart%s",
                    path, exc.strerror or type(exc).__name__, replicas)
        return secrets.token_bytes(32)


def _dialect_for(path: str, anthropic_client: bool = False) -> Dialect:
    """Whose error format a response uses: the route's, else the client's own (Anthropic
    SDKs send `anthropic-version` on every call, e.g. to an unknown path)."""
    if path.startswith("/v1/messages") or anthropic_client:
        return _ANTHROPIC
    if gemini_api.is_gemini_path(path):
        return _GEMINI
    return _OPENAI


_ANTHROPIC = anthropic_api.AnthropicDialect()
_OPENAI = openai_api.OpenAIDialect()
_RESPONSES = responses_api.ResponsesDialect()
_GEMINI = gemini_api.GeminiDialect()
_CHAT_ROUTES: dict[str, Dialect] = {
    "/v1/messages": _ANTHROPIC, "/v1/chat/completions": _OPENAI, "/v1/responses": _RESPONSES,
}
_OPEN_PATHS = frozenset({"/health"})


def _request_dialect() -> Dialect:
    return _dialect_for(request.path, "anthropic-version" in request.headers)


class GatewayASGI:
    """Front door: API keys, CORS and chat routing, before Quart sees a request."""

    def __init__(self, app: QuartTrio, inner: Callable[..., Any]) -> None:
        self.app = app
        self.inner = inner
        self._admission: Admission | None = None

    def admission(self, services: Services) -> Admission:
        if self._admission is None:
            gauge = services.metrics.open_streams
            self._admission = Admission(
                services.config.server.max_concurrent_requests,
                lambda delta: gauge.inc(delta),
            )
        return self._admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # No route speaks WebSocket: refused before anything else (and before Quart,
            # which answers an unrouted one with a 500), whatever the path or the key.
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.inner(scope, receive, send)  # lifespan
            return
        services: Services = self.app.extensions["gateway"]
        config = services.config.server
        scope = _gemini_v1(scope)
        path, method = scope["path"], scope["method"]
        raw_send = send
        send = _finishing(send)
        origin = header(scope, b"origin")
        allowed_origin = _cors_origin(origin, config.cors_origins)
        if allowed_origin is not None:
            send = _with_cors(send, allowed_origin)
            if method == "OPTIONS":
                await _preflight(send, allowed_origin)
                return
        refusal = _edge_refusal(scope, services)
        if refusal is not None:
            if isinstance(refusal, _Framing):
                # Read what the server parsed as this request's body first: answering
                # before, hypercorn can trip over the bytes after it and close the
                # connection before the answer is out.
                await _drain(receive, config.body_timeout_seconds)
            await _refuse(send, scope, refusal, services)
            return
        dialect = _CHAT_ROUTES.get(path)
        action = gemini_api.route(path)
        if action is not None and action[1] in gemini_api.GENERATE_METHODS:
            dialect = _GEMINI
        if dialect is not None:
            if method != "POST":
                err405 = errors.MethodNotAllowed(f"{method} is not allowed on {path}; use POST")
                status, body = dialect.error_body(err405)
                await send_json(send, status, body, {"allow": "POST"})
                return
            # streamed body messages skip the wrappers (they only act on the start and the
            # end) and, over HTTP/1.1, hypercorn's per-message path
            await handle_chat(scope, receive, send, dialect, services, self.admission(services),
                              DirectBody(raw_send))
            return
        await _observed(self.inner, scope, receive, send, services)


# Routes whose requests are not worth a line at INFO or a place among the recent requests:
# probes and scrapes come every few seconds, the dashboard watches itself.
_QUIET_FACES = frozenset({"health", "metrics", "dashboard"})


def _face_of(path: str) -> str:
    """A small, fixed set of names for what a non-chat request was (a metric label)."""
    if path in ("/health", "/metrics"):
        return path[1:]
    if path.startswith("/dashboard"):
        return "dashboard"
    if path.endswith("/count_tokens") or path.endswith(":countTokens") or (
            path == "/v1/responses/input_tokens"):
        return "count_tokens"
    if path.startswith("/v1/responses/"):
        return "responses_store"
    if path.startswith(("/v1beta/models", "/v1alpha/models")):
        return "gemini_models"
    if path == "/v1/models" or path.startswith("/v1/models/"):
        return "models"
    if path in ("/account-limits", "/refresh-token", "/usage"):
        return "admin"
    if path == "/api/event_logging/batch":
        return "telemetry"
    return "unknown"


async def _observed(
    inner: Callable[..., Any], scope: Scope, receive: Receive, send: Send, services: Services
) -> None:
    """Serve a non-chat request through Quart, then log, count and record it."""
    started = time.monotonic()
    status = 0

    async def watched(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        await send(message)

    try:
        await inner(scope, receive, watched)
    finally:
        _account_for(scope, services, status or 499, started)


def _account_for(scope: Scope, services: Services, status: int, started: float) -> None:
    path, method = scope["path"], scope["method"]
    face = _face_of(path)
    seconds = time.monotonic() - started
    services.metrics.observe_request(route=face, model="-", status=status, seconds=seconds,
                                     first_byte=None)
    if face in _QUIET_FACES:
        level = logging.DEBUG if status < 400 else logging.INFO
    else:
        level = logging.INFO
        services.requests.add(RequestRecord(
            at=services.clock(), face=face, method=method, route=path[:200], status=status,
            latency_ms=round(seconds * 1000, 1),
            key_label=auth.key_label(scope, services.config.server.api_keys),
        ))
    access_log.log(level, "request route=%s method=%s path=%s status=%d latency_ms=%d", face,
                   loggable(method), loggable(path), status, seconds * 1000)


def _gemini_v1(scope: Scope) -> Scope:
    """The Gemini API under /v1/ served as under /v1beta/: its actions always, and
    `GET /v1/models[/...]` when a Google client asks (an OpenAI client gets OpenAI's list)."""
    path = scope["path"]
    if not (path == "/v1/models" or path.startswith("/v1/models/")):
        return scope
    if gemini_api.route(path) is None and not gemini_api.is_gemini_client(scope):
        return scope
    moved = "/v1beta" + path[len("/v1"):]
    return {**scope, "path": moved, "raw_path": moved.encode("utf-8", "surrogateescape")}


# Endpoints that read a request body all read JSON.
_JSON_TYPES = ("application/json",)
# The final body message's send closes the connection when it must close (Connection:
# close, HTTP/1.0, a 408): hypercorn does that close inside this very call, so a cancel
# arriving meanwhile (Quart cancels its request task as the response ends) would leave the
# socket open. Shielded, bounded.
FINAL_SEND_SHIELD_SECONDS = 10.0


def _finishing(send: Send) -> Send:
    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            with trio.move_on_after(FINAL_SEND_SHIELD_SECONDS) as scope:
                scope.shield = True
                await send(message)
            return
        await send(message)

    return wrapped


def _edge_refusal(scope: Scope, services: Services) -> errors.GatewayError | None:
    """What the edge refuses before any route runs, in order: a Host this gateway is not
    (DNS rebinding), a framing that can smuggle a second request, a missing API key, a
    body that is not JSON (a web page's "simple" cross-site POST)."""
    config = services.config.server
    host = _host_of(scope)
    if host is not None and not host_allowed(host, config):
        return errors.MisdirectedRequest(
            f"this gateway does not serve the host {loggable(host)!r}; add it to "
            "server.allowed_hosts if it is yours"
        )
    if (_raw_header(scope, b"transfer-encoding") is not None
            and _raw_header(scope, b"content-length") is not None):
        return _Framing("a request must not carry both Content-Length and "
                        "Transfer-Encoding (RFC 9112 6.1)")
    path = scope["path"]
    if scope["method"] in _STATE_CHANGING and not _same_origin(scope, config):
        return errors.PermissionDenied(
            "a cross-site request from a web page is refused (its Origin is not this gateway "
            "and not in server.cors_origins)"
        )
    # the dashboard's routes check keys (or their session cookie) themselves: its page
    # answers a browser without a key with a sign-in form, not a JSON 401
    if config.api_keys and path not in _OPEN_PATHS and not path.startswith("/dashboard") and (
            not auth.authorized(scope, config.api_keys)):
        return errors.Unauthenticated(
            "invalid or missing API key: send it as 'Authorization: Bearer <key>', "
            "'x-api-key: <key>' or (Gemini clients) 'x-goog-api-key: <key>' or '?key=<key>'"
        )
    encoding = (header(scope, b"content-encoding") or "identity").strip().lower()
    if encoding not in ("", "identity") and _has_body(scope):
        return errors.UnsupportedMediaType(
            f"compressed request bodies are not accepted (Content-Encoding: "
            f"{loggable(encoding)}); send the JSON uncompressed")
    if scope["method"] in ("POST", "PUT", "PATCH") and (
        path in _JSON_ROUTES or _has_body(scope)
    ):
        kind = (header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
        form = path in _FORM_ROUTES and kind == "application/x-www-form-urlencoded"
        if kind not in _JSON_TYPES and not kind.endswith("+json") and not form:
            return errors.UnsupportedMediaType(
                f"the request body must be JSON, sent with 'Content-Type: application/json' "
                f"(got {loggable(kind) if kind else 'none'})"
            )
    return None


_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The dashboard's sign-in and sign-out are HTML forms (the Origin check still applies).
_FORM_ROUTES = frozenset({"/dashboard/login", "/dashboard/logout"})


def _same_origin(scope: Scope, config: ServerConfig) -> bool:
    """No Origin (not a browser), an allowed origin, or this gateway's own (scheme aside,
    the same host and port as the Host header): a web page elsewhere, another port on
    localhost included, cannot make a browser spend quota or refresh tokens, even with a
    request that needs no preflight (a body-less or text/plain POST)."""
    origin = header(scope, b"origin")
    if origin is None:
        return True
    origin = origin.strip()
    if _cors_origin(origin, config.cors_origins) is not None:
        return True
    scheme, found, authority = origin.partition("://")
    own = (header(scope, b"host") or header(scope, b":authority") or "").strip().lower()
    if not found or not own:
        return False
    default = {"http": ":80", "https": ":443"}.get(scheme.lower(), "")
    authority = authority.lower().removesuffix(default)
    return authority == own.removesuffix(default)


class _Framing(errors.InvalidRequest):
    """A request whose length cannot be trusted: answered, then the connection closed."""

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "connection": "close"}


_JSON_ROUTES = frozenset({
    "/v1/messages", "/v1/chat/completions", "/v1/messages/count_tokens", "/v1/responses",
    "/v1/responses/input_tokens",
})


def _has_body(scope: Scope) -> bool:
    length = header(scope, b"content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return _raw_header(scope, b"transfer-encoding") is not None


def _host_of(scope: Scope) -> str | None:
    value = header(scope, b"host") or header(scope, b":authority")
    if not value:
        return None
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8080
        return value[1:value.find("]")] if "]" in value else value
    name = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    return name.rstrip(".")  # "localhost." is localhost


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "127.0.0.1", "::1"})


def _is_loopback_literal(host: str) -> bool:
    """An IP literal in 127/8 or ::1, written as such (not a name that starts with 127.)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(host: str, config: ServerConfig) -> bool:
    """Whether a Host header names this gateway: loopback names and the bound address, or
    `server.allowed_hosts` (exact names, `*.domain`, or `*` for any). A gateway bound beyond
    loopback (which then requires API keys) takes any host unless allowed_hosts is set."""
    if host in _LOOPBACK_NAMES or _is_loopback_literal(host) or host == config.host.lower():
        return True
    allowed = config.allowed_hosts
    if not allowed:
        return not is_loopback(config.host)
    for entry in allowed:
        entry = entry.strip().lower()
        if entry == "*" or entry == host or (
            entry.startswith("*.") and host.endswith(entry[1:])
        ):
            return True
    return False


async def _drain(receive: Receive, seconds: float) -> None:
    with trio.move_on_after(seconds):
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return


async def _refuse(
    send: Send, scope: Scope, err: errors.GatewayError, services: Services
) -> None:
    """Answer `err` in the format of the route (or of the client), with a request id, a
    log line, a metric and a record."""
    path = scope["path"]
    dialect = _dialect_for(path, header(scope, b"anthropic-version") is not None)
    status, body = dialect.error_body(err)
    request_id = secrets.token_hex(8)
    # named as the route would have been, had it run: its face, or what `_face_of` says
    action = gemini_api.route(path)
    face = dialect.name if path in _CHAT_ROUTES or (
        action is not None and action[1] in gemini_api.GENERATE_METHODS) else _face_of(path)
    access_log.info("request id=%s route=%s path=%s status=%d error=%s", request_id,
                    face, loggable(path), status, err.anthropic_type)
    services.metrics.observe_request(route=face, model="-", status=status, seconds=0.0,
                                     first_byte=None)
    services.requests.add(RequestRecord(
        at=services.clock(), face=face, method=scope["method"], route=path[:200],
        status=status, latency_ms=0.0, error=err.anthropic_type,
    ))
    # last: once the answer is out, the server may end this task
    await send_json(send, status, body,
                    {**err.headers(), "request-id": request_id, "x-request-id": request_id})


def _raw_header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _cors_origin(origin: str | None, allowed: tuple[str, ...]) -> str | None:
    if origin is None or not allowed:
        return None
    if "*" in allowed:
        return "*"
    return origin if origin in allowed else None


def _with_cors(send: Send, origin: str) -> Send:
    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers.append((b"access-control-allow-origin", origin.encode()))
            headers.append((b"access-control-expose-headers", b"retry-after, request-id"))
            if origin != "*":
                headers.append((b"vary", b"Origin"))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


async def _preflight(send: Send, origin: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 204,
            "headers": [
                (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (
                    b"access-control-allow-headers",
                    b"authorization, content-type, x-api-key, anthropic-version, "
                    b"anthropic-beta, openai-organization, openai-project, x-goog-api-key, "
                    b"x-goog-api-client",
                ),
                (b"access-control-max-age", b"600"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def create_app(
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    demo: bool = False,
) -> QuartTrio:
    app = QuartTrio("gateway")
    app.config.update(
        RESPONSE_TIMEOUT=None,  # streams last as long as the model talks
        BODY_TIMEOUT=config.server.body_timeout_seconds,
        MAX_CONTENT_LENGTH=config.server.max_body_bytes,
        PROVIDE_AUTOMATIC_OPTIONS=False,
        BACKGROUND_TASK_SHUTDOWN_TIMEOUT=config.server.shutdown_grace_seconds,
    )
    app.register_blueprint(admin.blueprint)
    app.register_blueprint(anthropic_api.blueprint)
    app.register_blueprint(responses_api.blueprint)
    app.register_blueprint(gemini_api.blueprint)
    app.register_blueprint(usage_api.blueprint)
    app.register_blueprint(dashboard_api.blueprint)
    supervisor_scope = trio.CancelScope()
    usage_scope = trio.CancelScope()
    state_scope = trio.CancelScope()
    transport_scope = trio.CancelScope()

    @app.before_serving
    async def start() -> None:
        services = await build_services(config, clock=clock, demo=demo)
        app.extensions["gateway"] = services

        async def run_state(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with state_scope:
                await services.state.run(task_status=task_status)

        # first: the supervisor's first probes may find another replica's answers there
        await app.nursery.start(run_state)
        transport = services.client.transport
        if transport is not None:
            async def run_transport(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                with transport_scope:  # cancelled last: it closes the upstream connections
                    await transport.run(task_status=task_status)

            await app.nursery.start(run_transport)

        async def run_supervisor(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with supervisor_scope:
                await services.supervisor.run(task_status=task_status)

        await app.nursery.start(run_supervisor)
        usage = services.usage
        if usage is not None:
            async def run_usage(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                with usage_scope:  # cancelled at shutdown: it writes its last batch then
                    await usage.run(task_status=task_status)

            await app.nursery.start(run_usage)

    @app.after_serving
    async def stop() -> None:
        supervisor_scope.cancel()
        usage_scope.cancel()
        state_scope.cancel()
        transport_scope.cancel()
        services: Services | None = app.extensions.get("gateway")
        if services is not None:
            with trio.CancelScope(shield=True):
                await services.http.aclose()

    @app.errorhandler(errors.GatewayError)
    async def gateway_error(err: errors.GatewayError) -> Response:
        status, body = _request_dialect().error_body(err)
        return Response(
            _json(body), status=status, content_type="application/json", headers=err.headers()
        )

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        kinds: dict[int, type[errors.GatewayError]] = {
            404: errors.NotFound,
            405: errors.MethodNotAllowed,
            408: errors.RequestTimeout,
            413: errors.PayloadTooLarge,
        }
        kind = kinds.get(code, errors.InvalidRequest if code < 500 else errors.GatewayError)
        message = {
            404: f"no route for {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
            408: f"the request body did not arrive within "
                 f"{config.server.body_timeout_seconds:g} seconds (server.body_timeout_seconds)",
            413: f"request body exceeds the {config.server.max_body_bytes} byte limit",
        }.get(code, exc.description or exc.name)
        err = kind(message)
        status, body = _request_dialect().error_body(err)
        return Response(_json(body), status=code if code != status else status,
                        content_type="application/json", headers=err.headers())

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        err = errors.GatewayError("internal error; see the gateway log")
        status, body = _request_dialect().error_body(err)
        return Response(_json(body), status=status, content_type="application/json")

    app.asgi_app = GatewayASGI(app, app.asgi_app)  # type: ignore[method-assign,assignment]
    return app


def _json(body: Any) -> str:
    import json

    return json.dumps(body, separators=(",", ":"))
