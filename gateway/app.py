"""The quart-trio application factory.

`create_app(config)` returns an ASGI app whose lifespan owns everything long-lived: on
start-up it loads the account store, opens the upstream HTTP client and starts the
supervisor (token refresh, quota probes) in the lifespan nursery; on shutdown it cancels the
supervisor and closes the client. Chat routes are raw ASGI handlers (see `api.chat`) placed in
front of Quart by `GatewayASGI`, which also enforces API keys, CORS and the body limit for
every route; the other routes are Quart blueprints.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Callable
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
from gateway.api import admin
from gateway.api import anthropic as anthropic_api
from gateway.api import openai as openai_api
from gateway.api.chat import (
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
from gateway.config import Config
from gateway.metrics import Metrics
from gateway.signatures import SignatureCache
from gateway.translate.models import FALLBACK, Catalogue, ModelInfo
from gateway.upstream.client import CloudCodeClient, make_http_client
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
    client = CloudCodeClient(http, config.upstream)
    pool = AccountPool(accounts, selection=config.accounts.selection, clock=clock)
    metrics = Metrics()
    supervisor = Supervisor(
        pool=pool, store=store, client=client, config=config, clock=clock, metrics=metrics
    )
    dispatcher = Dispatcher(pool, supervisor, client, config, clock=clock, metrics=metrics)
    metrics.watch_cooldowns(
        lambda: {
            (entry.handle, model): seconds
            for entry in pool.snapshot().entries
            for model, seconds in entry.cooldowns.items()
        }
    )
    return Services(
        config=config,
        clock=clock,
        http=http,
        client=client,
        store=store,
        pool=pool,
        supervisor=supervisor,
        dispatcher=dispatcher,
        signatures=SignatureCache(clock=clock),
        metrics=metrics,
        demo=demo,
    )


def _dialect_for(path: str, anthropic_client: bool = False) -> Dialect:
    """Whose error format a response uses: the route's, else the client's own (Anthropic
    SDKs send `anthropic-version` on every call, e.g. to an unknown path)."""
    if path.startswith("/v1/messages") or anthropic_client:
        return _ANTHROPIC
    return _OPENAI


_ANTHROPIC = anthropic_api.AnthropicDialect()
_OPENAI = openai_api.OpenAIDialect()
_CHAT_ROUTES: dict[str, Dialect] = {"/v1/messages": _ANTHROPIC, "/v1/chat/completions": _OPENAI}
_OPEN_PATHS = frozenset({"/health"})


def _request_dialect() -> Dialect:
    return _dialect_for(request.path, "anthropic-version" in request.headers)


class GatewayASGI:
    """Front door: API keys, CORS and chat routing, before Quart sees a request."""

    def __init__(self, app: QuartTrio, inner: Callable[..., Any]) -> None:
        self.app = app
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        services: Services = self.app.extensions["gateway"]
        config = services.config.server
        path, method = scope["path"], scope["method"]
        origin = header(scope, b"origin")
        allowed_origin = _cors_origin(origin, config.cors_origins)
        if allowed_origin is not None:
            send = _with_cors(send, allowed_origin)
            if method == "OPTIONS":
                await _preflight(send, allowed_origin)
                return
        if config.api_keys and path not in _OPEN_PATHS and not _authorized(scope, config.api_keys):
            err = errors.Unauthenticated(
                "invalid or missing API key: send it as 'Authorization: Bearer <key>' "
                "or 'x-api-key: <key>'"
            )
            dialect_of = _dialect_for(path, header(scope, b"anthropic-version") is not None)
            status, body = dialect_of.error_body(err)
            request_id = secrets.token_hex(8)
            await send_json(send, status, body,
                            {**err.headers(), "request-id": request_id, "x-request-id": request_id})
            access_log.info("request id=%s route=%s path=%s status=%d error=%s", request_id,
                            dialect_of.name, loggable(path), status, err.anthropic_type)
            return
        dialect = _CHAT_ROUTES.get(path)
        if dialect is not None:
            if method != "POST":
                err405 = errors.MethodNotAllowed(f"{method} is not allowed on {path}; use POST")
                status, body = dialect.error_body(err405)
                await send_json(send, status, body, {"allow": "POST"})
                return
            services.metrics.open_streams.inc()
            try:
                await handle_chat(scope, receive, send, dialect, services)
            finally:
                services.metrics.open_streams.dec()
            return
        await self.inner(scope, receive, send)


def _authorized(scope: Scope, keys: tuple[str, ...]) -> bool:
    given = header(scope, b"x-api-key")
    if given is None:
        auth = header(scope, b"authorization") or ""
        scheme, _, token = auth.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if not given:
        return False
    # compare against every key so the time taken does not say which one nearly matched
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given.encode(), key.encode())
    return matched


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
                    b"anthropic-beta, openai-organization, openai-project",
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
        BODY_TIMEOUT=60,
        MAX_CONTENT_LENGTH=config.server.max_body_bytes,
        PROVIDE_AUTOMATIC_OPTIONS=False,
        BACKGROUND_TASK_SHUTDOWN_TIMEOUT=config.server.shutdown_grace_seconds,
    )
    app.register_blueprint(admin.blueprint)
    app.register_blueprint(anthropic_api.blueprint)
    supervisor_scope = trio.CancelScope()

    @app.before_serving
    async def start() -> None:
        services = await build_services(config, clock=clock, demo=demo)
        app.extensions["gateway"] = services

        async def run_supervisor(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with supervisor_scope:
                await services.supervisor.run(task_status=task_status)

        await app.nursery.start(run_supervisor)

    @app.after_serving
    async def stop() -> None:
        supervisor_scope.cancel()
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
            413: errors.PayloadTooLarge,
        }
        kind = kinds.get(code, errors.InvalidRequest if code < 500 else errors.GatewayError)
        message = {
            404: f"no route for {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
            413: f"request body exceeds the {config.server.max_body_bytes} byte limit",
        }.get(code, exc.description or exc.name)
        err = kind(message)
        status, body = _request_dialect().error_body(err)
        return Response(_json(body), status=code if code != status else status,
                        content_type="application/json")

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
