"""The emulator's mutable world: accounts, tokens, faults, knobs and what it has seen.

`EmulatorState` is the one object the ASGI app reads and writes and that tests drive
directly (in-process) or through the `/__emulator` control surface (over HTTP). It holds the
account registry (refresh token, project, tier and per-model quota of each Google account),
the access tokens and authorization codes issued, the fault queue (`Fault`: the first
matching one applies to a request and may be used up), the streaming knobs, the log of
received requests, and the live stream counters with a change event so a test can await
"all streams closed" without polling. Everything here runs on one trio thread; no locks.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import trio

from gateway.emulator import catalogue
from gateway.emulator.catalogue import EmulatedModel

__all__ = [
    "DEMO_ACCOUNTS",
    "EMULATOR_CLIENT_ID",
    "EMULATOR_CLIENT_SECRET",
    "FAULT_KINDS",
    "RESET_FORMATS",
    "DemoAccount",
    "EmulatedAccount",
    "EmulatorState",
    "Fault",
    "PromptPrefix",
    "Quota",
    "ReceivedRequest",
]

EMULATOR_CLIENT_ID = "emulator-client-id"
EMULATOR_CLIENT_SECRET = "emulator-client-secret"

FAULT_KINDS = frozenset(
    {
        "rate_limit",
        "quota_exhausted",
        "bare_rate_limit",
        "capacity",
        "unauthorized",
        "forbidden",
        "bad_request",
        "server_error",
        "unavailable",
        "empty",
        "cut",
        "slow",
        "stall",
        "invalid_grant",
    }
)
RESET_FORMATS = frozenset({"retry_info", "quota_reset_delay", "retry_after", "text"})

_PROMPT_CACHE_ENTRIES = 10_000
_MAX_RECEIVED = 100_000
_AUTH_CODE_SECONDS = 600.0


@attrs.frozen(slots=True)
class DemoAccount:
    """A built-in account; readable as attributes or as a mapping (`d["email"]`)."""

    email: str
    refresh_token: str
    project: str

    def __getitem__(self, key: str) -> str:
        if key not in ("email", "refresh_token", "project"):
            raise KeyError(key)
        value: str = getattr(self, key)
        return value

    def keys(self) -> tuple[str, ...]:
        return ("email", "refresh_token", "project")


DEMO_ACCOUNTS: tuple[DemoAccount, ...] = (
    DemoAccount("demo1@example.com", "demo-refresh-1", "demo-project-1"),
    DemoAccount("demo2@example.com", "demo-refresh-2", "demo-project-2"),
)


def _kind(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in FAULT_KINDS:
        raise ValueError(f"fault kind must be one of {sorted(FAULT_KINDS)}, not {value!r}")


def _reset_format(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in RESET_FORMATS:
        raise ValueError(f"reset_format must be one of {sorted(RESET_FORMATS)}, not {value!r}")


@attrs.define(slots=True)
class Fault:
    """One injected failure. The first fault matching a request applies to it.

    `account` (an email) and `model` narrow it (None matches any); `method` names the
    `v1internal` method it hits (None: the two generation methods; "invalid_grant" hits the
    token endpoint whatever this says). `times` counts down per use (None: until cleared).
    """

    kind: str = attrs.field(validator=_kind)
    account: str | None = None
    model: str | None = None
    times: int | None = None
    reset_format: str = attrs.field(default="retry_info", validator=_reset_format)
    reset_seconds: float = 60.0
    delay_seconds: float = 0.5
    cut_after: int = 1
    method: str | None = None

    def matches(self, *, method: str, email: str | None, model: str | None) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.account is not None and self.account != email:
            return False
        if self.kind == "invalid_grant":
            return method == "token"
        if method == "token":
            return False
        if self.method is None:
            if method not in ("generateContent", "streamGenerateContent"):
                return False
        elif self.method != method:
            return False
        return self.model is None or self.model == model

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(slots=True)
class ReceivedRequest:
    """A request the emulator received (control-surface calls excepted)."""

    path: str  # without the query, e.g. "/v1internal:streamGenerateContent"
    email: str | None  # whose access token (or refresh token) it carried
    model: str | None
    body: dict[str, Any] | None  # parsed JSON (or form fields); None if neither
    headers: dict[str, str]  # lower-case names
    peer: str = ""  # the client's address and port: one per connection

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "email": self.email, "model": self.model, "body": self.body,
                "peer": self.peer}


@attrs.frozen(slots=True)
class PromptPrefix:
    """What the prompt cache compares: a digest of the system instruction and tools, and
    (digest, tokens) of each content in order."""

    head: str
    head_tokens: int
    contents: tuple[tuple[str, int], ...]

    @property
    def total_tokens(self) -> int:
        return self.head_tokens + sum(tokens for _, tokens in self.contents)


@attrs.frozen(slots=True)
class Quota:
    fraction: float
    reset_time: str  # RFC 3339, as the upstream sends it


@attrs.define(slots=True)
class EmulatedAccount:
    email: str
    refresh_token: str
    project: str | None = None
    tier: str = "standard-tier"
    quotas: dict[str, Quota] = attrs.field(factory=dict)
    user_id: str = attrs.field(factory=lambda: str(100_000_000_000 + secrets.randbelow(10**11)))
    onboard_polls: int = 0  # onboardUser answers seen while onboarding (the LRO's progress)

    def to_json(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "refresh_token": self.refresh_token,
            "project": self.project,
            "tier": self.tier,
            "quotas": {
                m: {"fraction": q.fraction, "reset_time": q.reset_time}
                for m, q in self.quotas.items()
            },
        }


@attrs.frozen(slots=True)
class IssuedToken:
    email: str
    expires_at: float  # time.monotonic()


@attrs.frozen(slots=True)
class AuthCode:
    email: str
    client_id: str
    redirect_uri: str
    code_challenge: str
    expires_at: float  # time.monotonic()


def _defaults() -> dict[str, Any]:
    return {
        "chunk_delay_seconds": 0.0,
        "text_chunks": 3,
        "chunk_chars": None,
        "token_lifetime_seconds": 3600,
        "next_login_email": "new-user@example.com",
        "onboard_pending_polls": 0,
        "version_gate": "text",
        "rtt_seconds": 0.0,
    }


@attrs.define(slots=True)
class EmulatorState:
    """Everything the emulator knows; see the module docstring."""

    # -- knobs (POST /__emulator/config) --------------------------------------------------
    chunk_delay_seconds: float = 0.0
    text_chunks: int = 3
    chunk_chars: int | None = None
    token_lifetime_seconds: int = 3600
    next_login_email: str = "new-user@example.com"
    # onboardUser answers "not done yet" this many times before it assigns a project
    onboard_pending_polls: int = 0
    # how an outdated client is refused: "text" (model text in a 200, as in 2026),
    # "error" (HTTP 400 FAILED_PRECONDITION) or "off"
    version_gate: str = "text"
    # the served lineup (the emulator's own data; tests may add or remove models)
    models: dict[str, EmulatedModel] = attrs.field(factory=lambda: dict(catalogue.BY_ID))
    # a network's round trip, paid by every request and, on a connection's first request,
    # twice more for its TCP and TLS handshakes (what a real upstream costs a new connection)
    rtt_seconds: float = 0.0

    # -- registry and credentials ---------------------------------------------------------
    accounts: dict[str, EmulatedAccount] = attrs.field(factory=dict)
    faults: list[Fault] = attrs.field(factory=list)
    access_tokens: dict[str, IssuedToken] = attrs.field(factory=dict, repr=False)
    issued_tokens: deque[str] = attrs.field(factory=lambda: deque(maxlen=100_000), repr=False)
    auth_codes: dict[str, AuthCode] = attrs.field(factory=dict, repr=False)
    signing_key: bytes = attrs.field(factory=lambda: secrets.token_bytes(32), repr=False)

    # -- observations ---------------------------------------------------------------------
    received: list[ReceivedRequest] = attrs.field(factory=list)
    peers_seen: set[str] = attrs.field(factory=set)  # client address:port, one per connection
    open_streams: int = 0
    streams_opened: int = 0
    streams_closed: int = 0
    stream_closed_times: list[float] = attrs.field(factory=list)  # trio.current_time()
    # the prompt of the last request per (sessionId, email, model): digests of its
    # system+tools and of each content, with token counts (the cache emulation)
    prompt_cache: OrderedDict[tuple[str, str, str], PromptPrefix] = attrs.field(
        factory=OrderedDict, repr=False
    )
    _initial_accounts: list[EmulatedAccount] = attrs.field(factory=list, repr=False)
    _streams_changed: trio.Event = attrs.field(factory=trio.Event, repr=False)

    @classmethod
    def with_demo_accounts(cls) -> EmulatorState:
        state = cls()
        for demo in DEMO_ACCOUNTS:
            state.add_account(demo.email, demo.refresh_token, demo.project)
        state.remember_initial_accounts()
        return state

    def remember_initial_accounts(self) -> None:
        """The accounts `reset()` goes back to: those registered now."""
        self._initial_accounts = [
            attrs.evolve(a, quotas=dict(a.quotas)) for a in self.accounts.values()
        ]

    # -- accounts -------------------------------------------------------------------------

    def add_account(
        self,
        email: str,
        refresh_token: str,
        project: str | None = None,
        tier: str = "standard-tier",
    ) -> EmulatedAccount:
        """Register (or replace) an account. Its old refresh token stops working."""
        account = EmulatedAccount(email, refresh_token, project, tier)
        self.accounts[email] = account
        return account

    def set_quota(self, email: str, model: str, fraction: float, reset_time_iso: str) -> None:
        self.accounts[email].quotas[model] = Quota(fraction, reset_time_iso)

    def revoke(self, email: str) -> None:
        """Kill an account's refresh token and access tokens (as revoking access does)."""
        account = self.accounts.get(email)
        if account is not None:
            account.refresh_token = ""
        for token in [t for t, issued in self.access_tokens.items() if issued.email == email]:
            del self.access_tokens[token]

    def account_for_refresh_token(self, refresh_token: str) -> EmulatedAccount | None:
        if not refresh_token:
            return None
        for account in self.accounts.values():
            if account.refresh_token and secrets.compare_digest(
                account.refresh_token, refresh_token
            ):
                return account
        return None

    def issue_access_token(self, email: str) -> str:
        token = "ya29.emu-" + secrets.token_urlsafe(32)
        expires = time.monotonic() + self.token_lifetime_seconds
        self.access_tokens[token] = IssuedToken(email, expires)
        self.issued_tokens.append(token)
        if len(self.access_tokens) > 50_000:
            self._drop_expired_tokens()
        return token

    def issued_access_tokens(self) -> list[str]:
        """Every access token issued (newest last, up to the last 100,000), expired or not."""
        return list(self.issued_tokens)

    @property
    def connections_opened(self) -> int:
        return len(self.peers_seen)

    def record(self, request: ReceivedRequest) -> int:
        """Log a received request; returns its index in `received`."""
        if len(self.received) >= _MAX_RECEIVED:
            del self.received[: _MAX_RECEIVED // 2]  # a long bench run must not grow forever
        self.received.append(request)
        return len(self.received) - 1

    def email_for_access_token(self, token: str) -> str | None:
        """The account a live access token belongs to; None if unknown or expired."""
        issued = self.access_tokens.get(token)
        if issued is None:
            return None
        if issued.expires_at <= time.monotonic():
            del self.access_tokens[token]
            return None
        return issued.email if issued.email in self.accounts else None

    def expire_access_tokens(self, email: str | None = None) -> None:
        """Make access tokens (of one account, or all) expire now."""
        for token, issued in list(self.access_tokens.items()):
            if email is None or issued.email == email:
                self.access_tokens[token] = IssuedToken(issued.email, 0.0)

    def _drop_expired_tokens(self) -> None:
        now = time.monotonic()
        for token in [t for t, i in self.access_tokens.items() if i.expires_at <= now]:
            del self.access_tokens[token]

    def issue_auth_code(
        self, email: str, *, client_id: str, redirect_uri: str, code_challenge: str
    ) -> str:
        code = "emu-code-" + secrets.token_urlsafe(24)  # URL-safe: pasted bare by users
        self.auth_codes[code] = AuthCode(
            email, client_id, redirect_uri, code_challenge, time.monotonic() + _AUTH_CODE_SECONDS
        )
        return code

    def take_auth_code(self, code: str) -> AuthCode | None:
        """The code's grant, used up; None if unknown, used or expired."""
        grant = self.auth_codes.pop(code, None)
        if grant is None or grant.expires_at <= time.monotonic():
            return None
        return grant

    # -- faults ---------------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        self.faults.append(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    def take_fault(self, *, method: str, email: str | None, model: str | None) -> Fault | None:
        """The first fault matching this request, counted as used once."""
        for fault in self.faults:
            if fault.matches(method=method, email=email, model=model):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                return fault
        return None

    # -- knobs ----------------------------------------------------------------------------

    def configure(self, changes: Mapping[str, Any]) -> None:
        """Set knobs by name, validated; ValueError names the bad one (nothing is changed)."""
        checked: dict[str, Any] = {}
        for name, value in changes.items():
            checked[name] = _check_knob(name, value)
        for name, value in checked.items():
            setattr(self, name, value)

    def knobs(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _defaults()}

    def reset(self) -> None:
        """Back to a fresh start: initial accounts, no faults, no log, default knobs.

        Open streams are left alone (they belong to live connections); the counters restart
        from them. Access tokens of accounts that still exist stay valid.
        """
        for name, value in _defaults().items():
            setattr(self, name, value)
        self.accounts = {
            a.email: attrs.evolve(a, quotas=dict(a.quotas)) for a in self._initial_accounts
        }
        self.faults.clear()
        self.received.clear()
        self.auth_codes.clear()
        self.prompt_cache.clear()
        self.models = dict(catalogue.BY_ID)
        self.streams_opened = self.open_streams
        self.streams_closed = 0
        self.stream_closed_times.clear()

    # -- the prompt cache -----------------------------------------------------------------

    def cached_tokens(self, key: tuple[str, str, str], prompt: PromptPrefix) -> int:
        """Tokens of this prompt's longest prefix that the previous request of the same
        session sent too (the same system instruction and tools, then equal contents)."""
        previous = self.prompt_cache.pop(key, None)
        self.prompt_cache[key] = prompt
        if len(self.prompt_cache) > _PROMPT_CACHE_ENTRIES:
            self.prompt_cache.popitem(last=False)
        if previous is None or previous.head != prompt.head:
            return 0
        cached = prompt.head_tokens
        for (old, _), (new, tokens) in zip(previous.contents, prompt.contents, strict=False):
            if old != new:
                break
            cached += tokens
        return cached

    # -- streams --------------------------------------------------------------------------

    def stream_opened(self) -> None:
        self.open_streams += 1
        self.streams_opened += 1
        self._signal_streams()

    def stream_closed(self) -> None:
        self.open_streams -= 1
        self.streams_closed += 1
        self.stream_closed_times.append(trio.current_time())
        if len(self.stream_closed_times) > 10_000:
            del self.stream_closed_times[:5_000]
        self._signal_streams()

    def _signal_streams(self) -> None:
        self._streams_changed.set()
        self._streams_changed = trio.Event()

    async def wait_open_streams(self, n: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Return once exactly `n` generation streams are open; trio.TooSlowError after
        `timeout` seconds."""
        with trio.fail_after(timeout):
            while self.open_streams != n:
                await self._streams_changed.wait()

    def stream_counts(self) -> dict[str, int]:
        return {
            "open": self.open_streams,
            "opened": self.streams_opened,
            "closed": self.streams_closed,
            "connections": self.connections_opened,
        }

    def generation_requests(self) -> Iterator[ReceivedRequest]:
        return (r for r in self.received if "generatecontent" in r.path.lower())


def _check_knob(name: str, value: Any) -> Any:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if name in ("chunk_delay_seconds", "rtt_seconds"):
        if not number or value < 0:
            raise ValueError(f"{name} must be a number >= 0")
        return float(value)
    if name in ("text_chunks", "token_lifetime_seconds"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1")
        return value
    if name == "onboard_pending_polls":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0")
        return value
    if name == "chunk_chars":
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 0):
            raise ValueError("chunk_chars must be null or an integer >= 0")
        return value
    if name == "version_gate":
        if value not in ("text", "error", "off"):
            raise ValueError("version_gate must be 'text', 'error' or 'off'")
        return value
    if name == "next_login_email":
        if not isinstance(value, str) or "@" not in value:
            raise ValueError("next_login_email must be an email address")
        return value
    raise ValueError(f"unknown setting {name!r}; known: {sorted(_defaults())}")
