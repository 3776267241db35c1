"""The emulator's raw ASGI application: Google OAuth, Cloud Code `v1internal`, controls.

Routes: the OAuth token endpoint (`/token`, refresh and authorization-code grants with
PKCE), the consent screen (`/o/oauth2/v2/auth`, which consents at once and redirects),
userinfo, the `v1internal` methods the gateway calls (project discovery and onboarding,
quotas, unary and streamed generation) and the `/__emulator` control surface. Raw ASGI keeps
it small and fast: no framework per request, one JSON encode per chunk. A streamed answer
runs in a nursery beside a watcher on `receive()`; when the client goes away the watcher
cancels the stream at once, so `open_streams` counts exactly the streams the emulator is
really still serving.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

import attrs
import trio

from gateway.emulator import catalogue, content
from gateway.emulator.catalogue import EmulatedModel, client_version
from gateway.emulator.state import (
    EMULATOR_CLIENT_ID,
    EMULATOR_CLIENT_SECRET,
    EmulatorState,
    Fault,
    PromptPrefix,
    ReceivedRequest,
)

__all__ = ["create_emulator_app"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
JSONDict = dict[str, Any]

_MAX_BODY = 64 * 1024 * 1024
_SCOPES = (
    "https://www.googleapis.com/auth/cloud-platform "
    "https://www.googleapis.com/auth/userinfo.email "
    "https://www.googleapis.com/auth/userinfo.profile"
)
_GENERATION = ("generateContent", "streamGenerateContent")
_TIERS = {
    "free-tier": "Gemini Code Assist for individuals",
    "standard-tier": "Gemini Code Assist",
}
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_FAULT_STATUS = {
    "unauthorized": (401, "UNAUTHENTICATED",
                     "Request had invalid authentication credentials. Expected OAuth 2 access "
                     "token, login cookie or other valid authentication credential."),
    "forbidden": (403, "PERMISSION_DENIED",
                  "The caller does not have permission (emulated fault)."),
    "bad_request": (400, "INVALID_ARGUMENT",
                    "Request contains an invalid argument (emulated fault)."),
    "server_error": (500, "INTERNAL", "Internal error encountered (emulated fault)."),
    "unavailable": (503, "UNAVAILABLE",
                    "The service is currently unavailable (emulated fault)."),
    "bare_rate_limit": (429, "RESOURCE_EXHAUSTED",
                        "Resource has been exhausted (e.g. check quota)."),
}


class _Response(Exception):
    """Raised by a handler to answer at once with JSON (errors, mostly)."""

    def __init__(
        self, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _google(code: int, status: str, message: str) -> _Response:
    return _Response(code, content.google_error(code, status, message))


def _unauthenticated() -> _Response:
    return _google(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential.",
    )


def _oauth_error(status: int, error: str, description: str) -> _Response:
    return _Response(status, {"error": error, "error_description": description})


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


@attrs.define(slots=True)
class _Request:
    scope: Scope
    receive: Receive
    send: Send
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""
    record_index: int = -1  # where this request sits in state.received

    def arg(self, name: str) -> str:
        values = self.query.get(name)
        return values[0] if values else ""

    def json(self) -> Any:
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            raise _google(400, "INVALID_ARGUMENT",
                          "Invalid JSON payload received. Unexpected token.") from None

    def form(self) -> dict[str, str]:
        parsed = parse_qs(self.body.decode("utf-8", errors="replace"), keep_blank_values=True)
        return {k: v[0] for k, v in parsed.items()}

    def bearer(self) -> str:
        value = self.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""


def _encode(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


async def _send_json(
    send: Send, status: int, data: Any, headers: dict[str, str] | None = None
) -> None:
    body = b"" if status == 204 else _encode(data)
    head = [(b"content-type", b"application/json; charset=UTF-8"),
            (b"content-length", str(len(body)).encode())]
    head += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY:
            raise _google(413, "INVALID_ARGUMENT", "Request payload size exceeds the limit.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class _ClientGone(Exception):
    """The client disconnected before its request body was complete."""


def create_emulator_app(state: EmulatorState) -> ASGIApp:
    """The ASGI app serving `state`."""
    emulator = _Emulator(state)
    return emulator


class _Emulator:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self._routes: dict[tuple[str, str], Callable[[_Request], Awaitable[Any]]] = {
            ("POST", "/token"): self.token,
            ("GET", "/o/oauth2/v2/auth"): self.authorize,
            ("GET", "/oauth2/v1/userinfo"): self.userinfo,
            ("GET", "/oauth2/v2/userinfo"): self.userinfo,
            ("GET", "/__emulator"): self.control_index,
            ("GET", "/__emulator/faults"): self.control_faults,
            ("POST", "/__emulator/faults"): self.control_add_fault,
            ("DELETE", "/__emulator/faults"): self.control_clear_faults,
            ("GET", "/__emulator/requests"): self.control_requests,
            ("DELETE", "/__emulator/requests"): self.control_clear_requests,
            ("GET", "/__emulator/streams"): self.control_streams,
            ("GET", "/__emulator/accounts"): self.control_accounts,
            ("POST", "/__emulator/accounts"): self.control_add_account,
            ("POST", "/__emulator/quota"): self.control_quota,
            ("GET", "/__emulator/config"): self.control_config,
            ("POST", "/__emulator/config"): self.control_config,
            ("POST", "/__emulator/reset"): self.control_reset,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
        }
        request = _Request(
            scope, receive, send, scope["method"], scope["path"],
            parse_qs(scope["query_string"].decode("latin-1")), headers,
        )
        peer = _peer(scope)
        first = peer not in self.state.peers_seen
        self.state.peers_seen.add(peer)
        if self.state.rtt_seconds > 0:
            await trio.sleep(self.state.rtt_seconds * (3 if first else 1))
        try:
            try:
                request.body = await _read_body(receive)
            except _ClientGone:
                return
            await self._dispatch(request)
        except _Response as answer:
            await _send_json(send, answer.status, answer.body, answer.headers)

    async def _dispatch(self, request: _Request) -> None:
        path = request.path
        if path.startswith("/v1internal:"):
            if request.method != "POST":
                raise _google(405, "INVALID_ARGUMENT", "Method not allowed.")
            await self.v1internal(request, path.removeprefix("/v1internal:"))
            return
        handler = self._routes.get((request.method, path))
        if handler is None:
            if any(p == path for _, p in self._routes):
                raise _google(405, "INVALID_ARGUMENT", "Method not allowed.")
            raise _google(404, "NOT_FOUND", f"The requested URL {path} was not found.")
        if not path.startswith("/__emulator"):
            self._record(request, email=None, model=None)
        result = await handler(request)
        if result is not None:
            status, body = result
            await _send_json(request.send, status, body)

    def _record(self, request: _Request, *, email: str | None, model: str | None,
                body: Any = None) -> None:
        if body is None and request.body:
            if request.headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"
            ):
                body = request.form()
            else:
                try:
                    body = json.loads(request.body)
                except ValueError:
                    body = None
        request.record_index = self.state.record(
            ReceivedRequest(
                request.path, email, model, body if isinstance(body, dict) else None,
                request.headers, peer=_peer(request.scope),
            )
        )

    # -- OAuth ----------------------------------------------------------------------------

    async def token(self, request: _Request) -> tuple[int, JSONDict]:
        form = request.form()
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            try:
                pair = base64.b64decode(basic[6:]).decode()
                client_id, _, client_secret = pair.partition(":")
            except ValueError:
                pass
        if client_id != EMULATOR_CLIENT_ID or not secrets.compare_digest(
            client_secret, EMULATOR_CLIENT_SECRET
        ):
            raise _oauth_error(401, "invalid_client", "The OAuth client was not found.")
        grant = form.get("grant_type", "")
        if grant == "refresh_token":
            account = self.state.account_for_refresh_token(form.get("refresh_token", ""))
            if account is not None:
                self._set_email(request, account.email)
            fault = self.state.take_fault(
                method="token", email=account.email if account else None, model=None
            )
            if account is None or fault is not None:
                raise _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
            return 200, self._grant(account.email, refresh_token=None)
        if grant == "authorization_code":
            code = self.state.take_auth_code(form.get("code", ""))
            if code is None or code.client_id != client_id:
                raise _oauth_error(400, "invalid_grant", "Malformed auth code.")
            if form.get("redirect_uri", "") != code.redirect_uri:
                raise _oauth_error(400, "redirect_uri_mismatch", "Bad Request")
            if _challenge(form.get("code_verifier", "")) != code.code_challenge:
                raise _oauth_error(400, "invalid_grant", "Invalid code verifier.")
            account = self.state.accounts.get(code.email)
            if account is None:
                raise _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
            self._set_email(request, account.email)
            return 200, self._grant(account.email, refresh_token=account.refresh_token)
        raise _oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant}")

    def _set_email(self, request: _Request, email: str) -> None:
        """Name the account of a request recorded before its account was known."""
        index = request.record_index
        received = self.state.received
        if 0 <= index < len(received) and received[index].path == request.path:
            received[index] = attrs.evolve(received[index], email=email)

    def _grant(self, email: str, *, refresh_token: str | None) -> JSONDict:
        answer: JSONDict = {
            "access_token": self.state.issue_access_token(email),
            "expires_in": self.state.token_lifetime_seconds,
            "scope": _SCOPES,
            "token_type": "Bearer",
        }
        if refresh_token is not None:
            answer["refresh_token"] = refresh_token
        return answer

    async def authorize(self, request: _Request) -> None:
        if request.arg("client_id") != EMULATOR_CLIENT_ID:
            raise _oauth_error(401, "invalid_client", "The OAuth client was not found.")
        redirect_uri = request.arg("redirect_uri")
        parts = urlsplit(redirect_uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _oauth_error(400, "redirect_uri_mismatch", "Invalid redirect_uri.")
        if request.arg("response_type") != "code":
            raise _oauth_error(400, "unsupported_response_type", "response_type must be code.")
        challenge = request.arg("code_challenge")
        if request.arg("code_challenge_method") != "S256" or not challenge:
            raise _oauth_error(400, "invalid_request", "PKCE with S256 is required.")
        state = request.arg("state")
        if not state:
            raise _oauth_error(400, "invalid_request", "state is required.")
        email = self.state.next_login_email
        account = self.state.accounts.get(email)
        refresh = "1//emu-" + secrets.token_urlsafe(32)
        if account is None:
            self.state.add_account(email, refresh, project=None, tier="free-tier")
        else:
            account.refresh_token = refresh
        self._set_email(request, email)
        code = self.state.issue_auth_code(
            email, client_id=EMULATOR_CLIENT_ID, redirect_uri=redirect_uri,
            code_challenge=challenge,
        )
        separator = "&" if parts.query else "?"
        location = f"{redirect_uri}{separator}{urlencode({'state': state, 'code': code})}"
        await request.send({
            "type": "http.response.start",
            "status": 302,
            "headers": [(b"location", location.encode()), (b"content-length", b"0")],
        })
        await request.send({"type": "http.response.body", "body": b""})

    async def userinfo(self, request: _Request) -> tuple[int, JSONDict]:
        email = self.state.email_for_access_token(request.bearer())
        if email is None:
            raise _unauthenticated()
        self._set_email(request, email)
        account = self.state.accounts[email]
        return 200, {
            "id": account.user_id,
            "email": email,
            "verified_email": True,
            "picture": "https://example.com/avatar.png",
        }

    # -- v1internal -----------------------------------------------------------------------

    async def v1internal(self, request: _Request, method: str) -> None:
        email = self.state.email_for_access_token(request.bearer())
        try:
            body = await _cpu(len(request.body), request.json)
        except _Response:
            self._record(request, email=email, model=None)
            raise
        model_id = body.get("model") if isinstance(body, dict) else None
        model_id = model_id if isinstance(model_id, str) else None
        self._record(request, email=email, model=model_id, body=body)
        if email is None:
            raise _unauthenticated()
        if not isinstance(body, dict):
            raise _google(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        account = self.state.accounts[email]
        model: EmulatedModel | None = None
        if method in _GENERATION:
            model = self._servable(request, model_id)
        fault = self.state.take_fault(method=method, email=email, model=model_id)
        stream = method == "streamGenerateContent"
        if fault is not None:
            _raise_for_fault(fault, model_id)
            if fault.kind == "stall":
                await self._stall(request, stream=stream)
                return
            if fault.kind == "empty" and not stream:
                raise _Response(200, {})
        if method == "loadCodeAssist":
            await _delay(fault)
            tier = account.tier if _is_antigravity(body.get("metadata")) else "free-tier"
            await _send_json(request.send, 200, _load_code_assist(account.project, tier))
        elif method == "onboardUser":
            await _delay(fault)
            await _send_json(request.send, 200, self._onboard(account, body))
        elif method == "fetchAvailableModels":
            await _delay(fault)
            await _send_json(request.send, 200,
                             _available_models(self.state.models.values(), account.quotas))
        elif model is not None:
            await self.generate(request, body, email, account.project, model, fault,
                                stream=stream)
        else:
            raise _google(404, "NOT_FOUND", f"Method not found: v1internal:{method}")

    def _onboard(self, account: Any, body: JSONDict) -> JSONDict:
        tier = body.get("tierId")
        if tier not in _TIERS:
            raise _google(400, "INVALID_ARGUMENT", f"Invalid tier id: {str(tier)[:60]!r}")
        name = f"operations/onboard-{hashlib.sha256(account.email.encode()).hexdigest()[:12]}"
        if account.project is None:
            if account.onboard_polls < self.state.onboard_pending_polls:
                account.onboard_polls += 1
                return {"name": name, "done": False}
            digest = hashlib.sha256(account.email.encode()).hexdigest()
            account.project = f"emu-project-{digest[:8]}"
            account.tier = tier
        return {
            "name": name,
            "done": True,
            "response": {
                "@type": "type.googleapis.com/google.internal.cloud.code.v1internal."
                         "OnboardUserResponse",
                "cloudaicompanionProject": {"id": account.project, "name": account.project},
            },
        }

    async def generate(
        self,
        request: _Request,
        envelope: JSONDict,
        email: str,
        project: str | None,
        model: EmulatedModel,
        fault: Fault | None,
        *,
        stream: bool,
    ) -> None:
        if project is None or envelope.get("project") != project:
            raise _google(403, "PERMISSION_DENIED",
                          f"Permission denied on resource project "
                          f"{str(envelope.get('project'))[:100]}.")
        prompt_tokens = max(1, len(request.body) // 4)
        response_id = secrets.token_hex(8)
        refused = self._version_refusal(request)
        if refused is not None:
            plan = content.refusal_plan(refused, prompt_tokens=prompt_tokens)
        else:
            size = len(request.body)
            try:
                await _cpu(size, partial(content.check_envelope, envelope, model=model,
                                         key=self.state.signing_key))
            except content.UpstreamRefusal as refusal:
                raise _Response(refusal.code, refusal.body()) from None
            request_body = envelope["request"]
            session = request_body.get("sessionId")
            cached = 0
            if isinstance(session, str) and session:
                # the share of this prompt that repeats the last one, in its token count
                prefix = await _cpu(size, _prompt_prefix, request_body)
                common = self.state.cached_tokens((session, email, model.id), prefix)
                cached = prompt_tokens * common // max(1, prefix.total_tokens)
            plan = content.plan_answer(
                envelope, model=model, key=self.state.signing_key, prompt_tokens=prompt_tokens,
                cached_tokens=cached, chunk_chars=self.state.chunk_chars,
                call_id_prefix=f"toolu_emu_{response_id}_",
            )
        trace = secrets.token_hex(8)
        if not stream:
            await _delay(fault)
            answer = content.unary_response(plan, model_id=model.id, response_id=response_id)
            body = _encode({"response": answer, "traceId": trace})
            if fault is not None and fault.kind == "cut":
                await _send_cut(request.send, body)
                return
            await request.send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/json; charset=UTF-8"),
                (b"content-length", str(len(body)).encode())]})
            await request.send({"type": "http.response.body", "body": body})
            return
        chunks = content.stream_chunks(
            plan, text_chunks=self.state.text_chunks, model_id=model.id, response_id=response_id
        )
        if fault is not None and fault.kind == "empty":
            chunks = []
        events = [b"data: " + _encode({"response": c, "traceId": trace}) + b"\r\n\r\n"
                  for c in chunks]
        if request.arg("alt") != "sse":
            # without alt=sse the upstream streams one JSON array; sent whole here
            await self._stream(request, [_encode([{"response": c} for c in chunks])], fault,
                               content_type=b"application/json; charset=UTF-8")
            return
        await self._stream(request, events, fault, content_type=b"text/event-stream")

    async def _stream(
        self, request: _Request, events: list[bytes], fault: Fault | None, *, content_type: bytes
    ) -> None:
        """Send `events` as one streamed 200, counted open until the handler really ends."""
        delay = self.state.chunk_delay_seconds
        if fault is not None and fault.kind == "slow":
            delay += fault.delay_seconds
        cut = None
        if fault is not None and fault.kind == "cut":
            # never the final chunk: the point is a stream that ends without finishing
            cut = max(0, min(fault.cut_after, len(events) - 1))
        headers = [(b"content-type", content_type), *_SSE_HEADERS[1:]]

        async def produce(cancel_scope: trio.CancelScope) -> None:
            await request.send({"type": "http.response.start", "status": 200,
                                "headers": headers})
            for i, event in enumerate(events):
                if cut is not None and i >= cut:
                    cancel_scope.cancel()  # leave without ending the body: the cut
                    return
                if delay:
                    await trio.sleep(delay)
                await request.send({"type": "http.response.body", "body": event,
                                    "more_body": True})
            await request.send({"type": "http.response.body", "body": b""})
            cancel_scope.cancel()

        await self._watched(request, produce)

    async def _stall(self, request: _Request, *, stream: bool) -> None:
        content_type = b"text/event-stream" if stream else b"application/json; charset=UTF-8"

        async def produce(cancel_scope: trio.CancelScope) -> None:
            await request.send({"type": "http.response.start", "status": 200,
                                "headers": [(b"content-type", content_type)]})
            await request.send({"type": "http.response.body", "body": b"", "more_body": True})
            await trio.sleep_forever()

        await self._watched(request, produce, count=stream)

    async def _watched(
        self,
        request: _Request,
        produce: Callable[[trio.CancelScope], Awaitable[None]],
        *,
        count: bool = True,
    ) -> None:
        """Run `produce` until it ends or the client goes away, whichever is first."""
        if count:
            self.state.stream_opened()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_disconnect, request.receive, nursery.cancel_scope)
                await produce(nursery.cancel_scope)
        finally:
            if count:
                self.state.stream_closed()

    def _servable(self, request: _Request, model_id: str | None) -> EmulatedModel:
        """The model a generation call names, or the upstream's 404 for it."""
        model = self.state.models.get(model_id or "")
        client = client_version(request.headers.get("user-agent", ""))
        if model is None or model.internal or (client.supported and not client.may_use(model)):
            # retired ids, internal ids and (for clients below a model's minimum version)
            # new models are all "not found"
            raise _google(404, "NOT_FOUND", "Requested entity was not found.")
        return model

    def _version_refusal(self, request: _Request) -> str | None:
        """The version gate: None for a current client; for an outdated one the refusal
        text (answered as model text), or raise it as an error (`version_gate = error`)."""
        gate = self.state.version_gate
        if gate == "off" or client_version(request.headers.get("user-agent", "")).supported:
            return None
        if gate == "error":
            raise _google(400, "FAILED_PRECONDITION", catalogue.VERSION_REFUSAL)
        return catalogue.VERSION_REFUSAL

    # -- control surface ------------------------------------------------------------------

    async def control_index(self, request: _Request) -> tuple[int, JSONDict]:
        return 200, {
            "endpoints": sorted(f"{m} {p}" for m, p in self._routes if "__emulator" in p),
            "docs": "docs/emulator.md",
        }

    async def control_faults(self, request: _Request) -> tuple[int, Any]:
        return 200, [f.to_json() for f in self.state.faults]

    async def control_add_fault(self, request: _Request) -> tuple[int, JSONDict]:
        data = _control_body(request)
        try:
            fault = Fault(**data)
        except (TypeError, ValueError) as exc:
            raise _Response(400, {"error": str(exc)}) from None
        self.state.add_fault(fault)
        return 201, {"fault": fault.to_json()}

    async def control_clear_faults(self, request: _Request) -> tuple[int, JSONDict]:
        cleared = len(self.state.faults)
        self.state.clear_faults()
        return 200, {"cleared": cleared}

    async def control_requests(self, request: _Request) -> tuple[int, Any]:
        wanted = request.arg("path")
        return 200, [r.to_json() for r in self.state.received if not wanted or r.path == wanted]

    async def control_clear_requests(self, request: _Request) -> tuple[int, JSONDict]:
        cleared = len(self.state.received)
        self.state.received.clear()
        return 200, {"cleared": cleared}

    async def control_streams(self, request: _Request) -> tuple[int, JSONDict]:
        return 200, self.state.stream_counts()

    async def control_accounts(self, request: _Request) -> tuple[int, Any]:
        return 200, [a.to_json() for a in self.state.accounts.values()]

    async def control_add_account(self, request: _Request) -> tuple[int, JSONDict]:
        data = _control_body(request)
        email, refresh = data.get("email"), data.get("refresh_token")
        project, tier = data.get("project"), data.get("tier", "standard-tier")
        if not isinstance(email, str) or "@" not in email:
            raise _Response(400, {"error": "email is required"})
        if not isinstance(refresh, str) or not refresh:
            raise _Response(400, {"error": "refresh_token is required"})
        if project is not None and not isinstance(project, str):
            raise _Response(400, {"error": "project must be a string or null"})
        if not isinstance(tier, str):
            raise _Response(400, {"error": "tier must be a string"})
        account = self.state.add_account(email, refresh, project, tier)
        return 201, account.to_json()

    async def control_quota(self, request: _Request) -> tuple[int, JSONDict]:
        data = _control_body(request)
        email, model = data.get("email"), data.get("model")
        fraction, reset_time = data.get("fraction"), data.get("reset_time")
        if email not in self.state.accounts:
            raise _Response(400, {"error": f"no account {email!r}"})
        if not isinstance(model, str) or not model:
            raise _Response(400, {"error": "model is required"})
        if not isinstance(fraction, int | float) or isinstance(fraction, bool) or not (
            0 <= fraction <= 1
        ):
            raise _Response(400, {"error": "fraction must be a number in [0, 1]"})
        if reset_time is None:
            reset_time = _rfc3339(datetime.now(UTC) + timedelta(hours=5))
        if not isinstance(reset_time, str):
            raise _Response(400, {"error": "reset_time must be an RFC 3339 string"})
        self.state.set_quota(str(email), model, float(fraction), reset_time)
        return 200, self.state.accounts[str(email)].to_json()

    async def control_config(self, request: _Request) -> tuple[int, JSONDict]:
        if request.method == "POST":
            try:
                self.state.configure(_control_body(request))
            except ValueError as exc:
                raise _Response(400, {"error": str(exc)}) from None
        return 200, self.state.knobs()

    async def control_reset(self, request: _Request) -> tuple[int, JSONDict]:
        self.state.reset()
        return 200, {"reset": True}


def _control_body(request: _Request) -> JSONDict:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        raise _Response(400, {"error": "body is not JSON"}) from None
    if not isinstance(data, dict):
        raise _Response(400, {"error": "body must be a JSON object"})
    return data


async def _watch_disconnect(receive: Receive, cancel_scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            cancel_scope.cancel()
            return


async def _send_cut(send: Send, body: bytes) -> None:
    """Start a unary answer and break off halfway (the app ends without ending the body)."""
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json; charset=UTF-8")]})
    await send({"type": "http.response.body", "body": body[: len(body) // 2],
                "more_body": True})


_OFFLOAD_BYTES = 256 * 1024
_T = TypeVar("_T")


async def _cpu(size: int, work: Callable[..., _T], *args: Any) -> _T:
    """Pure work on a big request in a worker thread: the emulator serves many streams on
    one loop (the bench's load, the tests' gateway in the same process)."""
    if size <= _OFFLOAD_BYTES:
        return work(*args)
    return await trio.to_thread.run_sync(work, *args)


async def _delay(fault: Fault | None) -> None:
    if fault is not None and fault.kind == "slow":
        await trio.sleep(fault.delay_seconds)


def _raise_for_fault(fault: Fault, model: str | None) -> None:
    """Answer at once for the faults that are just an error status."""
    if fault.kind == "capacity":
        body, headers = content.capacity_error(
            model=model, reset_seconds=fault.reset_seconds, reset_format=fault.reset_format
        )
        raise _Response(503, body, headers)
    if fault.kind in ("rate_limit", "quota_exhausted"):
        body, headers = content.rate_limit_error(
            model=model, reset_seconds=fault.reset_seconds, reset_format=fault.reset_format,
            quota=fault.kind == "quota_exhausted",
        )
        raise _Response(429, body, headers)
    known = _FAULT_STATUS.get(fault.kind)
    if known is not None:
        raise _google(*known)


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii", errors="replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tier(tier_id: str) -> JSONDict:
    return {
        "id": tier_id,
        "name": _TIERS.get(tier_id, tier_id),
        "description": f"Emulated {tier_id}.",
        "userDefinedCloudaicompanionProject": tier_id != "free-tier",
    }


def _load_code_assist(project: str | None, tier: str) -> JSONDict:
    allowed = [{**_tier("free-tier"), "isDefault": True}, _tier("standard-tier")]
    if project is None:
        return {"allowedTiers": allowed}
    answer: JSONDict = {
        "currentTier": _tier("standard-tier" if tier.startswith("g1-") else tier),
        "allowedTiers": allowed,
        "cloudaicompanionProject": project,
        "gcpManaged": False,
    }
    if tier.startswith("g1-"):
        answer["paidTier"] = _tier(tier)
    return answer


def _available_models(models: Iterable[EmulatedModel], quotas: dict[str, Any]) -> JSONDict:
    default_reset = _rfc3339(
        datetime.fromtimestamp((int(time.time()) // 3600 + 5) * 3600, UTC)
    )
    entries: JSONDict = {}
    for model in models:
        quota = quotas.get(model.id)
        if model.internal:
            entries[model.id] = {"quotaInfo": {"remainingFraction": 1.0}}
            continue
        fraction = quota.fraction if quota else 1.0
        info: JSONDict = {"resetTime": quota.reset_time if quota else default_reset}
        if fraction > 0:  # the upstream leaves an exhausted model's zero out
            info["remainingFraction"] = fraction
        entry: JSONDict = {
            "displayName": model.display_name,
            "maxTokens": model.context,
            "maxOutputTokens": model.max_output,
            "supportsImages": model.images,
            "supportsThinking": model.thinking != "none",
            "recommended": model.family != "gpt",
            "quotaInfo": info,
        }
        if model.family == "claude":
            entry["thinkingBudget"] = 24_576
        entries[model.id] = entry
    return {
        "models": entries,
        "deprecatedModelIds": {
            old: {"newModelId": new} for old, new in catalogue.DEPRECATED.items()
        },
        "webSearchModelIds": [m.id for m in models if m.id == "gemini-3-flash"],
    }


def _is_antigravity(metadata: Any) -> bool:
    """Whether loadCodeAssist's metadata names the Antigravity IDE; other forms (the old
    IDE_UNSPECIFIED) are answered with the free tier, whatever the account has."""
    if not isinstance(metadata, dict):
        return False
    ide = metadata.get("ideType", metadata.get("ide_type"))
    return ide in ("ANTIGRAVITY", 9)


def _digest(value: Any) -> str:
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _prompt_prefix(request_body: JSONDict) -> PromptPrefix:
    head = {k: request_body.get(k) for k in ("systemInstruction", "tools", "toolConfig")}
    contents = request_body.get("contents") or []
    return PromptPrefix(
        head=_digest(head),
        head_tokens=len(json.dumps(head)) // 4,
        contents=tuple((_digest(c), max(1, len(json.dumps(c)) // 4)) for c in contents),
    )


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
