"""Configuration: attrs classes loaded from a TOML file, then overridden by the environment.

The file is `--config PATH` or `$GATEWAY_CONFIG`; every key can be overridden by an
environment variable `GATEWAY_<SECTION>_<KEY>` (upper case), and the most common ones have
short forms (`GATEWAY_HOST`, `GATEWAY_PORT`, `GATEWAY_API_KEYS`). Values are validated once,
at start; a bad value raises `ConfigError` naming the key, so the server never starts half
configured. The project ships no third-party OAuth client: `oauth.client_id` and
`oauth.client_secret` must be supplied to add real Google accounts (see README).
"""

from __future__ import annotations

import os
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs


class ConfigError(Exception):
    """A configuration value is missing, malformed or out of range. The message names the key."""


def default_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gateway"


@attrs.frozen(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Gateway API keys accepted as `Authorization: Bearer` or `x-api-key`; empty = no auth.
    api_keys: tuple[str, ...] = attrs.field(default=(), repr=False)
    # Binding to a non-loopback address without api_keys is refused unless this is set.
    insecure_no_auth: bool = False
    cors_origins: tuple[str, ...] = ()
    # Host names this gateway answers to besides loopback names and its bind address (a
    # guard against DNS rebinding); "*.example.com" and "*" work. Empty: loopback only on a
    # loopback bind, any host on a wider bind (which requires API keys).
    allowed_hosts: tuple[str, ...] = ()
    # Chat requests served at once; more get 529 (Anthropic) / 503 (OpenAI) at once, so a
    # burst cannot starve /health, /metrics and the requests already running.
    max_concurrent_requests: int = 512
    # Client connections held at once; one more is answered 503 and closed, so a flood of
    # slow clients cannot use up the file descriptors. 0: what the open-file limit leaves
    # (about half of it, the other half for upstream calls).
    max_connections: int = 0
    # Places past max_connections for GET /health and /metrics (one answer each, then
    # closed), so a load balancer's probe is answered through a flood.
    probe_connections: int = 16
    # What one request may hold (a clear 400 beyond): far above any real conversation, far
    # below what would keep the gateway busy for seconds.
    max_messages: int = 10_000
    max_content_blocks: int = 50_000
    max_tools: int = 2_000
    # Bodies bigger than this are parsed and translated in a worker thread, not on the
    # event loop every other request shares.
    offload_bytes: int = 256 * 1024
    max_body_bytes: int = 20 * 1024 * 1024
    # A request body not complete this long after its headers is answered 408 (and the
    # connection closed): a client that never finishes must not hold a connection.
    body_timeout_seconds: float = 60.0
    # A connection with no request in flight (idle keep-alive, or a request head still
    # arriving, however slowly) is closed this long after its last answer or its opening.
    idle_timeout_seconds: float = 75.0
    # A client that reads nothing of its answer for this long is hung up on (a 64 KiB
    # piece must go out in this time), so one that never reads cannot hold a connection.
    write_timeout_seconds: float = 60.0
    # In-flight streams get this long to finish on SIGTERM before they are cancelled.
    shutdown_grace_seconds: float = 10.0
    # Idle SSE streams get a keep-alive (Anthropic `ping`, OpenAI SSE comment) this often.
    keepalive_seconds: float = 15.0
    log_level: str = "info"
    # Gateway processes serving this one address (`gateway serve --workers N`), to use
    # every core; more than 1 needs state.redis_url, through which they share the pool.
    workers: int = 1


@attrs.frozen(slots=True)
class UpstreamConfig:
    # Tried in order: the daily (sandbox) endpoint first, then prod, as the Cloud Code IDE does.
    base_urls: tuple[str, ...] = (
        "https://daily-cloudcode-pa.sandbox.googleapis.com",
        "https://cloudcode-pa.googleapis.com",
    )
    # The client identity Cloud Code checks: an outdated Antigravity version is refused
    # ("This version of Antigravity is no longer supported"), and below 2.9.0 newer models
    # are not found. This is the newest form and version the maintained peers send.
    user_agent: str = "antigravity/hub/2.9.1 darwin/arm64"
    # Extra headers on every Cloud Code call (e.g. X-Client-Version), for when the upstream
    # starts asking for one before this gateway learns it.
    extra_headers: Mapping[str, str] = attrs.field(factory=dict)
    # Text put before every system prompt; "antigravity" means the Antigravity IDE's own
    # identity preamble, which some peers inject. Empty: nothing (see README).
    system_preamble: str = ""
    # CA certificates (PEM) to trust for the upstream instead of the system's (a TLS
    # inspecting proxy, a test upstream). Empty: the system's trust store.
    ca_file: str = ""
    # Generation calls speak HTTP/2 where the upstream's TLS offers it (one warm connection
    # for every stream); false: HTTP/1.1 keep-alive connections, one per open stream.
    http2: bool = True
    connect_timeout_seconds: float = 10.0
    # Longest silence tolerated between two bytes of an upstream response.
    read_timeout_seconds: float = 120.0
    # Retries on 5xx / network errors for one account before failing over.
    max_retries: int = 2
    retry_backoff_seconds: float = 0.5
    # A model out of capacity (503 MODEL_CAPACITY_EXHAUSTED) is retried on the same account
    # this often, waiting what the upstream says (RetryInfo) up to the longest wait below.
    capacity_retries: int = 3
    capacity_max_wait_seconds: float = 30.0
    # A bare 429 (no quota details: often not quota at all) is retried on the same account
    # this often, after a pause of this many seconds times the attempt, before the account
    # rests briefly (the cooldown below) and another serves.
    soft_rate_limit_retries: int = 2
    soft_rate_limit_wait_seconds: float = 1.0
    bare_rate_limit_cooldown_seconds: float = 10.0
    # A 429 that says it resets sooner than this is waited out on the same account (within
    # soft_rate_limit_retries); a longer one cools the account and another serves.
    rate_limit_quick_retry_seconds: float = 3.0
    # Opt-in: when a model is exhausted on every account, try this one instead.
    model_fallbacks: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(slots=True)
class OAuthConfig:
    client_id: str = ""
    client_secret: str = attrs.field(default="", repr=False)
    token_url: str = "https://oauth2.googleapis.com/token"
    auth_url: str = "https://accounts.google.com/o/oauth2/v2/auth"
    userinfo_url: str = "https://www.googleapis.com/oauth2/v1/userinfo"
    # what the Antigravity IDE asks for (the last two are its logging and experiments)
    scopes: tuple[str, ...] = (
        "https://www.googleapis.com/auth/cloud-platform",
        "https://www.googleapis.com/auth/userinfo.email",
        "https://www.googleapis.com/auth/userinfo.profile",
        "https://www.googleapis.com/auth/cclog",
        "https://www.googleapis.com/auth/experimentsandconfigs",
    )


@attrs.frozen(slots=True)
class AccountsConfig:
    file: str = str(default_config_dir() / "accounts.json")
    # "sticky": keep a conversation on one account (upstream prompt cache), "round-robin".
    selection: str = "sticky"
    # Wait for a cooldown shorter than this rather than switch accounts.
    max_cooldown_wait_seconds: float = 10.0
    # Refresh an access token this long before it expires.
    refresh_margin_seconds: float = 300.0
    quota_probe_interval_seconds: float = 300.0
    # How often the supervisor checks the accounts file for added or removed accounts
    # (`gateway accounts add/remove`, an edit); 0 turns hot reload off.
    reload_seconds: float = 2.0


@attrs.frozen(slots=True)
class ImagesConfig:
    # Fetching http(s) image URLs named by clients is off unless enabled here.
    allow_remote_fetch: bool = False
    max_bytes: int = 10 * 1024 * 1024  # per image
    max_count: int = 16  # URLs fetched per request
    max_total_bytes: int = 32 * 1024 * 1024  # all the images of one request
    timeout_seconds: float = 10.0


@attrs.frozen(slots=True)
class ModelsConfig:
    # Client model name (or a pattern with *) -> the model to serve instead, tried after
    # the upstream's exact ids and before family matching; e.g.
    # "claude-haiku-4-5" = "gemini-3-flash".
    aliases: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(slots=True)
class ResponsesConfig:
    # Stored responses (store: true, the Responses API's default), for previous_response_id
    # and GET /v1/responses/{id}: kept in memory, least recently used out first.
    store_max_responses: int = 10_000
    store_max_bytes: int = 256 * 1024 * 1024
    store_ttl_seconds: float = 24 * 3600.0
    # The key that seals thoughts into reasoning items (encrypted_content); made on first
    # use. Empty: "responses.key" beside accounts.file. Replicas must share one.
    key_file: str = ""


@attrs.frozen(slots=True)
class DashboardConfig:
    # GET /dashboard: the live page of the pool (same API-key rules as the other routes).
    enabled: bool = True
    show_emails: bool = False  # accounts by email instead of their hashed handle
    recent_requests: int = 50  # how many of the last requests the page lists
    update_seconds: float = 1.0  # how often the page's live stream sends a snapshot


@attrs.frozen(slots=True)
class UsageConfig:
    # Usage history (requests and tokens per hour, account, model, API key) in SQLite, for
    # GET /usage and `gateway usage`; written in batches, so a crash loses at most the
    # last flush_seconds of it.
    enabled: bool = True
    # Empty: "usage.sqlite" beside accounts.file.
    file: str = ""
    flush_seconds: float = 5.0
    retention_days: int = 90  # older hourly rows are deleted


@attrs.frozen(slots=True)
class StateConfig:
    # Shared state for several replicas (cooldowns, sticky sessions, thought signatures,
    # invalid-account marks, quota snapshots, stored responses): a Redis URL, e.g.
    # "redis://redis:6379/0" (rediss:// for TLS, a password as redis://:pw@host). Empty:
    # state lives in this process only (the default for a single gateway).
    redis_url: str = ""
    key_prefix: str = "gateway:"  # every key and the pub/sub channel start with it
    # Deadline of each Redis call: a slower or unreachable Redis is served around on local
    # state (never a failed request), and tried again every retry_seconds.
    timeout_ms: float = 50.0
    retry_seconds: float = 2.0
    # The lease that elects one replica to run the scheduled quota probes; a replica that
    # dies holding it is replaced after at most this long.
    lease_seconds: float = 15.0
    # How long a conversation's account (and its thought signatures) are remembered.
    session_ttl_seconds: float = 6 * 3600.0


@attrs.frozen(slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    oauth: OAuthConfig = OAuthConfig()
    accounts: AccountsConfig = AccountsConfig()
    images: ImagesConfig = ImagesConfig()
    models: ModelsConfig = ModelsConfig()
    responses: ResponsesConfig = ResponsesConfig()
    dashboard: DashboardConfig = DashboardConfig()
    usage: UsageConfig = UsageConfig()
    state: StateConfig = StateConfig()


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "upstream": UpstreamConfig,
    "oauth": OAuthConfig,
    "accounts": AccountsConfig,
    "images": ImagesConfig,
    "responses": ResponsesConfig,
    "models": ModelsConfig,
    "dashboard": DashboardConfig,
    "usage": UsageConfig,
    "state": StateConfig,
}

_SHORT_ENV = {
    "GATEWAY_HOST": ("server", "host"),
    "GATEWAY_PORT": ("server", "port"),
    "GATEWAY_API_KEYS": ("server", "api_keys"),
    "GATEWAY_ACCOUNTS_FILE": ("accounts", "file"),
}

_POSITIVE = {
    "server.port",
    "server.workers",
    "server.max_body_bytes",
    "server.keepalive_seconds",
    "server.body_timeout_seconds",
    "server.idle_timeout_seconds",
    "server.write_timeout_seconds",
    "server.max_concurrent_requests",
    "server.max_messages",
    "server.max_content_blocks",
    "server.max_tools",
    "server.offload_bytes",
    "upstream.connect_timeout_seconds",
    "upstream.read_timeout_seconds",
    "upstream.capacity_max_wait_seconds",
    "accounts.quota_probe_interval_seconds",
    "images.max_bytes",
    "images.max_count",
    "images.max_total_bytes",
    "images.timeout_seconds",
    "responses.store_max_responses",
    "responses.store_max_bytes",
    "responses.store_ttl_seconds",
    "dashboard.recent_requests",
    "dashboard.update_seconds",
    "usage.flush_seconds",
    "usage.retention_days",
    "state.timeout_ms",
    "state.retry_seconds",
    "state.lease_seconds",
    "state.session_ttl_seconds",
}


_NON_NEGATIVE = {
    "server.max_connections",
    "server.probe_connections",
    "upstream.max_retries",
    "upstream.retry_backoff_seconds",
    "upstream.capacity_retries",
    "upstream.soft_rate_limit_retries",
    "upstream.rate_limit_quick_retry_seconds",
    "upstream.soft_rate_limit_wait_seconds",
    "upstream.bare_rate_limit_cooldown_seconds",
    "accounts.reload_seconds",
}


def _coerce(key: str, annotation: str, value: Any) -> Any:
    """Convert a TOML or environment value to the field's type, or raise naming the key."""
    from_env = isinstance(value, str)
    try:
        if annotation == "bool":
            if isinstance(value, bool):
                return value
            if from_env and value.lower() in ("1", "true", "yes", "on"):
                return True
            if from_env and value.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if annotation == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if annotation == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if annotation == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if annotation.startswith("tuple"):
            if from_env:
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return tuple(value)
        if annotation.startswith("Mapping"):
            if from_env:
                pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
                if any(len(p) != 2 for p in pairs):
                    raise ValueError
                return {k.strip(): v.strip() for k, v in pairs}
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError):
        pass
    else:
        raise ConfigError(f"config key {key!r}: unsupported type {annotation}")
    raise ConfigError(f"config key {key!r}: expected {annotation}, got {_shown(key, value)}")


def _shown(key: str, value: Any) -> str:
    """A wrong value as an error may show it: a secret's never, not even the part that is
    wrong; nor a table's or a list's, which can hold credentials (extra_headers, URLs with
    a user and password); a lone URL without its user part."""
    if _is_secret(key) or isinstance(value, dict | list | tuple):
        return _describe(value)
    if isinstance(value, str) and ("@" in value or "=" in value or ":" in value):
        return f"a string of {len(value)} characters (value not shown)"
    return repr(value)


def _is_secret(key: str) -> bool:
    """Keys whose values are secrets, by the TOML name or the environment name."""
    lowered = key.lower()
    return lowered.endswith(("api_keys", "client_secret", "api_key", "redis_url")) or (
        "secret" in lowered)


def _describe(value: Any) -> str:
    """What kind of value it is, never the value itself."""
    if isinstance(value, dict):
        return f"a table of {len(value)} entries (value not shown)"
    if isinstance(value, list | tuple):
        kinds = sorted({type(v).__name__ for v in value})
        return f"a list of {', '.join(kinds) or 'nothing'} (value not shown)"
    return f"a {type(value).__name__} (value not shown)"


def _redis_url_problem(url: str) -> str:
    """What is wrong with a Redis URL, in words that never quote it (it may hold a
    password); empty when it is usable."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        return "must start with redis://, rediss:// or unix://"
    if parts.scheme == "unix":
        return "" if parts.path else "a unix:// URL needs the socket's path"
    try:
        parts.port  # noqa: B018 - it raises for a port that is not a number
    except ValueError:
        return "its port is not a number from 1 to 65535"
    if not parts.hostname:
        return "it names no host"
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        return "its database (the path) must be a number, like /0"
    return ""


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the config from an optional TOML file and the environment."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    file = path if path is not None else env.get("GATEWAY_CONFIG")
    if file:
        try:
            with open(file, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"config file {file} cannot be read: {reason}") from None
    for section in raw:
        if section not in _SECTIONS:
            raise ConfigError(f"config key {section!r}: unknown section")

    values: dict[str, dict[str, Any]] = {}
    for section, cls in _SECTIONS.items():
        fields = {f.name: f for f in attrs.fields(cls)}
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"config key {section!r}: expected a table")
        out: dict[str, Any] = {}
        for name, value in given.items():
            if name not in fields:
                raise ConfigError(f"config key '{section}.{name}': unknown key")
            out[name] = _coerce(f"{section}.{name}", str(fields[name].type), value)
        for name, field in fields.items():
            env_name = f"GATEWAY_{section.upper()}_{name.upper()}"
            if env_name in env:
                out[name] = _coerce(env_name, str(field.type), env[env_name])
        values[section] = out
    for env_name, (section, name) in _SHORT_ENV.items():
        if env_name in env:
            field = next(f for f in attrs.fields(_SECTIONS[section]) if f.name == name)
            values[section][name] = _coerce(env_name, str(field.type), env[env_name])

    for section, out in values.items():
        for name, value in out.items():
            key = f"{section}.{name}"
            if key in _POSITIVE and value <= 0:
                shown = "<redacted>" if _is_secret(key) else repr(value)
                raise ConfigError(f"config key {key!r}: must be positive, got {shown}")
            if key in _NON_NEGATIVE and value < 0:
                raise ConfigError(f"config key {key!r}: must not be negative, got {value!r}")
    port = values["server"].get("port", 8080)
    if not 0 < port < 65536:
        raise ConfigError(f"config key 'server.port': must be 1-65535, got {port}")
    selection = values["accounts"].get("selection", "sticky")
    if selection not in ("sticky", "round-robin"):
        raise ConfigError(
            f"config key 'accounts.selection': must be 'sticky' or 'round-robin', got {selection!r}"
        )
    if not values["upstream"].get("base_urls", ("x",)):
        raise ConfigError("config key 'upstream.base_urls': needs at least one URL")
    ca_file = values["upstream"].get("ca_file", "")
    if ca_file:
        try:
            ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(f"config key 'upstream.ca_file': {ca_file} cannot be used as CA "
                              f"certificates ({reason})") from None
    redis_url = values["state"].get("redis_url", "")
    if redis_url:
        problem = _redis_url_problem(redis_url)
        if problem:
            raise ConfigError(f"config key 'state.redis_url': {problem} (value not shown)")
    return Config(**{s: _SECTIONS[s](**v) for s, v in values.items()})
