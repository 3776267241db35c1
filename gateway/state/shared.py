"""Shared state: what several gateway replicas must agree on, kept in Redis when configured.

The account pool, the dispatcher, the supervisor and the chat lifecycle talk to a
`StateStore` and never learn which one it is. `StateStore` itself is the single-process
state (the default): the pool's own memory, the signature cache, the in-memory Responses
store; nothing to install. `RedisStateStore` (with `state.redis_url`) keeps that same local
state as the working copy and mirrors it through Redis:

- what a replica learns (a cooldown, a session's account, an invalid mark, a probe's answer)
  reaches the pool's listener, is written to a TTL'd key and published on one channel; every
  other replica applies it to its own pool (`AccountPool.apply_remote`) as it arrives;
- what a replica cannot have heard (a session begun elsewhere before it started, thought
  signatures, a stored response) it looks up on a local miss, within `state.timeout_ms`;
- scheduled quota probes run on the replica holding the probe lease (a key with a TTL,
  renewed while its holder lives), the others apply its published answers;
- access and refresh tokens never leave the process: an invalid grant travels as a mark
  naming the grant by digest, so a re-added account is not marked by an old grant's news.

Redis is never on a request's critical path for writes (they go through a bounded outbox
drained by a writer task), and a read waits at most `state.timeout_ms`. When a call fails or
times out, or the subscription drops, the replica serves on its local state ("local-fallback"
in /health and metrics), logs once, and reconnects every `state.retry_seconds`; once back it
resyncs: it pushes what it learned meanwhile (cooldowns, marks, sessions) and pulls what the
others stored. Every key is under `state.key_prefix` and has a TTL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs
import coredis
import coredis.retry
import trio
from coredis.tokens import PureToken

from gateway.accounts.model import account_handle
from gateway.accounts.pool import (
    AccountPool,
    Cooldown,
    CooldownsCleared,
    MarkCleared,
    MarkedInvalid,
    PoolChange,
    Probed,
    SessionAssigned,
)
from gateway.config import StateConfig
from gateway.signatures import SignatureCache
from gateway.state.responses import MemoryResponseStore, ResponseStore, StoredResponse

if TYPE_CHECKING:
    from gateway.metrics import Metrics

__all__ = ["RedisResponseStore", "RedisStateStore", "StateStore", "open_state_store"]

log = logging.getLogger("gateway.state")

Mode = Literal["local", "redis", "local-fallback"]
JSONDict = dict[str, Any]

# Writes waiting for the writer: beyond this, the oldest are dropped (a resync pushes the
# local state again anyway).
MAX_OUTBOX = 10_000
# An invalid mark outlives any token; the accounts file is its lasting record.
INVALID_MARK_TTL_SECONDS = 7 * 24 * 3600.0
MAX_SIGNATURES_PER_SESSION = 512


class StateStore:
    """One process's state: the pool's memory and local caches, nothing shared."""

    def __init__(
        self,
        pool: AccountPool,
        *,
        signatures: SignatureCache,
        responses: MemoryResponseStore,
    ) -> None:
        self.pool = pool
        self.signature_cache = signatures
        self.local_responses = responses
        self.responses: ResponseStore = responses
        # set by the supervisor: an account another replica found valid again needs its
        # token fetched here
        self.on_revived: Callable[[str], None] = lambda email: None
        pool.listener = self.changed

    @property
    def mode(self) -> Mode:
        return "local"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    def changed(self, change: PoolChange) -> None:
        """The pool learned something (nobody else to tell in one process)."""

    def may_probe(self, email: str) -> bool:
        """Whether this process runs `email`'s scheduled quota probe."""
        return True

    async def recall_session(self, session_id: str) -> None:
        """Make sure the pool knows the account `session_id` is stuck to, if anyone does."""

    async def signatures(self, session_id: str) -> Mapping[str, str]:
        return self.signature_cache.lookup(session_id)

    def remember_signature(self, session_id: str, tool_id: str, signature: str) -> None:
        self.signature_cache.remember(session_id, tool_id, signature)

    def describe(self) -> JSONDict:
        return {"state": self.mode}


def open_state_store(
    config: StateConfig,
    pool: AccountPool,
    *,
    signatures: SignatureCache,
    responses: MemoryResponseStore,
    clock: Callable[[], float] = time.time,
    metrics: Metrics | None = None,
    probe_interval: float = 300.0,
) -> StateStore:
    """The store `config` asks for: Redis-backed with `state.redis_url`, else local."""
    if not config.redis_url:
        store = StateStore(pool, signatures=signatures, responses=responses)
        if metrics is not None:
            metrics.state_mode.labels("local").set(1)
        return store
    return RedisStateStore(config, pool, signatures=signatures, responses=responses,
                           clock=clock, metrics=metrics, probe_interval=probe_interval)


def _digest(value: str) -> str:
    """Keys name sessions by digest: a session id may come from a client's own text."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class _Unavailable(Exception):
    """Redis failed or was too slow: serve on local state."""


class RedisStateStore(StateStore):
    """Local state mirrored through Redis, for several replicas sharing one pool."""

    def __init__(
        self,
        config: StateConfig,
        pool: AccountPool,
        *,
        signatures: SignatureCache,
        responses: MemoryResponseStore,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        probe_interval: float = 300.0,
    ) -> None:
        super().__init__(pool, signatures=signatures, responses=responses)
        self._probe_interval = probe_interval
        self.config = config
        self.prefix = config.key_prefix
        self.channel = f"{self.prefix}events"
        self.replica = secrets.token_hex(8)
        self._clock = clock
        self._metrics = metrics
        self._timeout = config.timeout_ms / 1000.0
        self._client: coredis.Redis[str] | None = None
        self._connected = False
        self._holds_lease = False
        self._outage_logged = False
        # set when a request-path call failed or timed out: the connection is renewed
        self._broken = trio.Event()
        self._outbox: dict[str, _Write] = {}
        self._outbox_ready = trio.Event()
        self._handles: tuple[tuple[str, ...], dict[str, str]] = ((), {})
        self._probed_remotely: set[str] = set()  # accounts with another replica's answer
        self.responses = RedisResponseStore(self, responses)
        self._report("local-fallback")  # until the first connection

    # -- the face --------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return "redis" if self._connected else "local-fallback"

    def describe(self) -> JSONDict:
        return {"state": self.mode, "replica": self.replica, "probeLease": self._holds_lease}

    def changed(self, change: PoolChange) -> None:
        if not self._connected:
            return  # pushed with the rest of the local state once Redis is back
        handle = account_handle(change.email) if change.email is not None else None
        event: JSONDict
        if isinstance(change, Cooldown):
            ttl = change.until - self._clock()
            if ttl <= 0:
                return
            key = f"{self.prefix}cd:{handle}:{change.model}"
            self._queue(key, _Write("set", key, str(change.until), ttl))
            event = {"kind": "cooldown", "account": handle, "model": change.model,
                     "until": change.until}
        elif isinstance(change, CooldownsCleared):
            self._queue(f"clear:{handle}", _Write("clear", f"{self.prefix}cd:{handle or '*'}:*"))
            event = {"kind": "cleared", "account": handle}
        elif isinstance(change, SessionAssigned):
            key = f"{self.prefix}session:{_digest(change.session)}"
            self._queue(key, _Write("set", key, handle or "", self.config.session_ttl_seconds))
            event = {"kind": "session", "session": change.session, "account": handle}
        elif isinstance(change, MarkedInvalid):
            key = f"{self.prefix}invalid:{handle}"
            mark = json.dumps({"reason": change.reason, "grant": change.grant})
            self._queue(key, _Write("set", key, mark, INVALID_MARK_TTL_SECONDS))
            event = {"kind": "invalid", "account": handle, "reason": change.reason,
                     "grant": change.grant}
        elif isinstance(change, MarkCleared):
            key = f"{self.prefix}invalid:{handle}"
            self._queue(key, _Write("delete", key))
            event = {"kind": "valid", "account": handle, "grant": change.grant}
        else:
            key = f"{self.prefix}probe:{handle}"
            snapshot = json.dumps({"answer": change.answer, "at": self._clock()})
            self._queue(key, _Write("set", key, snapshot, self._probe_ttl()))
            event = {"kind": "probe", "account": handle}
        event["from"] = self.replica
        self._queue(f"event:{len(self._outbox)}:{secrets.token_hex(4)}",
                    _Write("publish", self.channel, json.dumps(event)))

    def may_probe(self, email: str) -> bool:
        # Without Redis every replica probes for itself; with it, the lease holder probes
        # for all, and anyone probes an account nobody has published an answer for.
        return (not self._connected or self._holds_lease
                or email not in self._probed_remotely)

    async def recall_session(self, session_id: str) -> None:
        if not session_id or self.pool.sticky_account(session_id) is not None:
            return
        found = await self._read(
            lambda client: client.get(f"{self.prefix}session:{_digest(session_id)}"))
        email = self._email_of(found) if isinstance(found, str) else None
        if email is not None:
            self.pool.apply_remote(SessionAssigned(session_id, email))

    async def signatures(self, session_id: str) -> Mapping[str, str]:
        local = self.signature_cache.lookup(session_id)
        if local or not session_id:
            return local
        found = await self._read(
            lambda client: client.hgetall(f"{self.prefix}sig:{_digest(session_id)}"))
        if not isinstance(found, Mapping):
            return {}
        for tool_id, signature in found.items():
            self.signature_cache.remember(session_id, str(tool_id), str(signature))
        return {str(k): str(v) for k, v in found.items()}

    def remember_signature(self, session_id: str, tool_id: str, signature: str) -> None:
        super().remember_signature(session_id, tool_id, signature)
        if self._connected and session_id:
            key = f"{self.prefix}sig:{_digest(session_id)}"
            self._queue(f"{key}:{tool_id}", _Write(
                "hset", key, json.dumps([tool_id, signature]), self.config.session_ttl_seconds))

    # -- the background work ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stay connected to Redis until cancelled: subscribe, write, hold the lease.

        Reports started after the first attempt to connect (and resync), whether or not it
        worked: a replica with Redis down still serves, on its own state.
        """
        import coredis

        started = False
        while True:
            try:
                client = coredis.Redis.from_url(
                    self.config.redis_url, decode_responses=True,
                    connect_timeout=max(self._timeout, 1.0), stream_timeout=5.0,
                    retry_policy=coredis.retry.NoRetryPolicy(),
                )
                async with client:
                    self._broken = trio.Event()
                    try:
                        async with trio.open_nursery() as nursery:
                            await self._resync(client)
                            await nursery.start(self._subscribe, client)
                            self._client = client
                            self._set_connected(True)
                            if not started:
                                started = True
                                task_status.started()
                            nursery.start_soon(self._write, client)
                            nursery.start_soon(self._hold_lease, client)
                            await self._broken.wait()
                            raise _Unavailable("a call failed or timed out")
                    finally:
                        await self._release_lease(client)
            except Exception as exc:  # every failure means "serve locally"
                self._fail(exc)
            finally:
                self._client = None
                self._set_connected(False)
            if not started:
                started = True
                task_status.started()
            await trio.sleep(self.config.retry_seconds)

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        if connected:
            self._outage_logged = False
            log.info("shared state: connected to Redis (replica %s)", self.replica)
        else:
            self._holds_lease = False
        self._report(self.mode)

    def _fail(self, exc: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.state_errors.inc()
        self._broken.set()
        if not self._outage_logged:  # once per outage
            self._outage_logged = True
            log.warning("shared state: Redis unavailable (%s); serving on this replica's own "
                        "state until it is back", _reason(exc))

    def _report(self, mode: Mode) -> None:
        if self._metrics is not None:
            for name in ("local", "redis", "local-fallback"):
                self._metrics.state_mode.labels(name).set(1 if name == mode else 0)

    async def _subscribe(self, client: coredis.Redis[str], *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with client.pubsub(channels=[self.channel]) as pubsub:
            task_status.started()
            async for message in pubsub:
                data = message.get("data")
                if message.get("type") != "message" or not isinstance(data, str):
                    continue
                try:
                    event = json.loads(data)
                except (TypeError, ValueError):
                    continue
                if isinstance(event, dict) and event.get("from") != self.replica:
                    self._apply_event(event)
        raise _Unavailable("the subscription ended")

    def _apply_event(self, event: JSONDict) -> None:
        kind = event.get("kind")
        raw = event.get("account")
        email = self._email_of(raw) if isinstance(raw, str) else None
        try:
            if kind == "cleared":
                self.pool.apply_remote(CooldownsCleared(email))
            elif email is None:
                return
            elif kind == "cooldown":
                self.pool.apply_remote(Cooldown(email, str(event["model"]),
                                                float(event["until"])))
            elif kind == "session":
                self.pool.apply_remote(SessionAssigned(str(event["session"]), email))
            elif kind == "invalid":
                self.pool.apply_remote(MarkedInvalid(email, str(event["reason"]),
                                                     str(event["grant"])))
            elif kind == "valid":
                if self.pool.apply_remote(MarkCleared(email, str(event["grant"]))):
                    self.on_revived(email)
            elif kind == "probe":
                self._probed_remotely.add(email)
                self._queue_probe_read(email)
        except (KeyError, TypeError, ValueError):
            log.debug("shared state: ignored a malformed %s event", kind)

    def _queue_probe_read(self, email: str) -> None:
        # A probe's answer is too big to publish: the event says where it is.
        self._queue(f"probe-read:{email}", _Write("probe-read", email))

    async def _write(self, client: coredis.Redis[str]) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready = trio.Event()
            batch, self._outbox = list(self._outbox.values()), {}
            try:
                with trio.fail_after(max(self._timeout * 4, 0.2)):
                    await self._execute(client, batch)
            except trio.TooSlowError:
                raise _Unavailable("a write timed out") from None

    async def _execute(self, client: coredis.Redis[str], batch: list[_Write]) -> None:
        reads = [w for w in batch if w.op == "probe-read"]
        async with client.pipeline(transaction=False) as pipe:
            for write in batch:
                if write.op == "set":
                    pipe.set(write.key, write.value, px=max(1, int(write.ttl * 1000)))
                elif write.op == "delete":
                    pipe.delete([write.key])
                elif write.op == "publish":
                    pipe.publish(write.key, write.value)
                elif write.op == "hset":
                    tool_id, signature = json.loads(write.value)
                    pipe.hset(write.key, {tool_id: signature})
                    pipe.pexpire(write.key, max(1, int(write.ttl * 1000)))
        for write in batch:
            if write.op == "clear":
                keys = [key async for key in client.scan_iter(match=write.key)]
                if keys:
                    await client.delete(keys)
            elif write.op == "hset" and (
                    await client.hlen(write.key) > MAX_SIGNATURES_PER_SESSION):
                # a runaway conversation's signatures: forget the old ones, keep the newest
                    tool_id, signature = json.loads(write.value)
                    await client.delete([write.key])
                    await client.hset(write.key, {tool_id: signature})
                    await client.pexpire(write.key, max(1, int(write.ttl * 1000)))
        for read in reads:
            found = await client.get(f"{self.prefix}probe:{account_handle(read.key)}")
            self._apply_probe_snapshot(read.key, found)

    def _apply_probe_snapshot(self, email: str, raw: str | None) -> None:
        if raw is None:
            return
        try:
            snapshot = json.loads(raw)
            answer = snapshot["answer"]
        except (TypeError, ValueError, KeyError):
            return
        if isinstance(answer, dict) and email in self.pool.emails():
            self._probed_remotely.add(email)
            self.pool.apply_remote(Probed(email, answer))

    async def _hold_lease(self, client: coredis.Redis[str]) -> None:
        """Take the probe lease when it is free, keep it while alive; also the heartbeat
        that notices a Redis gone silent (a hung server keeps its sockets open)."""
        key = f"{self.prefix}lease:probes"
        ttl_ms = max(1, int(self.config.lease_seconds * 1000))
        while True:
            try:
                with trio.fail_after(max(self._timeout * 4, 0.2)):
                    held = await client.eval(_TAKE_LEASE, keys=[key],
                                             args=[self.replica, ttl_ms])
            except trio.TooSlowError:
                raise _Unavailable("the lease call timed out") from None
            holds = bool(held)
            if holds and not self._holds_lease:
                log.info("shared state: this replica (%s) runs the scheduled quota probes",
                         self.replica)
            self._holds_lease = holds
            await trio.sleep(min(self.config.lease_seconds / 3, self.config.retry_seconds))

    async def _release_lease(self, client: coredis.Redis[str]) -> None:
        """Stopping (or losing Redis) while holding the probe lease: hand it back at once,
        so another replica takes over without waiting out its TTL."""
        if not self._holds_lease:
            return
        self._holds_lease = False
        with trio.move_on_after(max(self._timeout * 4, 0.2)) as bounded:
            bounded.shield = True
            try:
                await client.eval(_RELEASE_LEASE, keys=[f"{self.prefix}lease:probes"],
                                  args=[self.replica])
            except Exception:  # expiring by itself is the fallback
                log.debug("shared state: could not hand the probe lease back")

    async def _resync(self, client: coredis.Redis[str]) -> None:
        """After (re)connecting: push what this replica knows, then pull what others do."""
        with trio.fail_after(max(self._timeout * 40, 2.0)):
            now = self._clock()
            async with client.pipeline(transaction=False) as pipe:
                for cooldown in self.pool.cooldowns():
                    handle = account_handle(cooldown.email)
                    ttl_ms = max(1, int((cooldown.until - now) * 1000))
                    pipe.set(f"{self.prefix}cd:{handle}:{cooldown.model}", str(cooldown.until),
                             px=ttl_ms, condition=PureToken.NX)
                    pipe.publish(self.channel, json.dumps({
                        "kind": "cooldown", "account": handle, "model": cooldown.model,
                        "until": cooldown.until, "from": self.replica}))
                for mark in self.pool.invalid_marks():
                    handle = account_handle(mark.email)
                    pipe.set(f"{self.prefix}invalid:{handle}",
                             json.dumps({"reason": mark.reason, "grant": mark.grant}),
                             px=int(INVALID_MARK_TTL_SECONDS * 1000), condition=PureToken.NX)
                    pipe.publish(self.channel, json.dumps({
                        "kind": "invalid", "account": handle, "reason": mark.reason,
                        "grant": mark.grant, "from": self.replica}))
                session_ttl = int(self.config.session_ttl_seconds * 1000)
                for session, email in self.pool.sessions():
                    pipe.set(f"{self.prefix}session:{_digest(session)}", account_handle(email),
                             px=session_ttl, condition=PureToken.NX)
            await self._pull(client)

    async def _pull(self, client: coredis.Redis[str]) -> None:
        prefix = self.prefix
        cooldowns = [key async for key in client.scan_iter(match=f"{prefix}cd:*", count=500)]
        values = await client.mget(cooldowns) if cooldowns else ()
        for key, value in zip(cooldowns, values, strict=True):
            handle, _, model = key[len(prefix) + 3:].partition(":")
            email = self._email_of(handle)
            if email is not None and value is not None:
                self.pool.apply_remote(Cooldown(email, model, float(value)))
        marks = [key async for key in client.scan_iter(match=f"{prefix}invalid:*", count=500)]
        values = await client.mget(marks) if marks else ()
        for key, value in zip(marks, values, strict=True):
            email = self._email_of(key[len(prefix) + 8:])
            if email is None or value is None:
                continue
            try:
                mark = json.loads(value)
                self.pool.apply_remote(MarkedInvalid(email, str(mark["reason"]),
                                                     str(mark["grant"])))
            except (TypeError, ValueError, KeyError):
                continue
        for email in self.pool.emails():
            self._apply_probe_snapshot(
                email, await client.get(f"{prefix}probe:{account_handle(email)}"))

    # -- helpers ---------------------------------------------------------------------------

    def _queue(self, key: str, write: _Write) -> None:
        self._outbox.pop(key, None)
        self._outbox[key] = write
        while len(self._outbox) > MAX_OUTBOX:
            del self._outbox[next(iter(self._outbox))]
        self._outbox_ready.set()

    async def _read(self, call: Callable[[coredis.Redis[str]], Any]) -> Any:
        """One request-path read, or None when Redis cannot answer in time."""
        client = self._client
        if client is None or not self._connected:
            return None
        try:
            with trio.fail_after(self._timeout):
                return await call(client)
        except Exception as exc:  # a failed read is a miss, and a warning
            self._fail(exc)
            return None

    def _email_of(self, handle: str) -> str | None:
        emails = tuple(self.pool.emails())
        known, table = self._handles
        if known != emails:
            table = {account_handle(email): email for email in emails}
            self._handles = (emails, table)
        return table.get(handle)

    def _probe_ttl(self) -> float:
        # an answer outlives a missed probe or two, and the time a new lease holder takes
        return max(3 * self._probe_interval, 2 * self.config.lease_seconds)


@attrs.frozen(slots=True)
class _Write:
    """One pending write: op on key (a channel for publish), with a value and a TTL."""

    op: str
    key: str
    value: str = ""
    ttl: float = 0.0


class RedisResponseStore:
    """Stored Responses in Redis (any replica can continue a conversation), kept in local
    memory too: written to both, read locally first, so a Redis outage loses nothing this
    replica stored itself."""

    def __init__(self, state: RedisStateStore, local: MemoryResponseStore) -> None:
        self._state = state
        self._local = local

    def _key(self, response_id: str) -> str:
        return f"{self._state.prefix}resp:{response_id}"

    async def put(self, stored: StoredResponse) -> None:
        await self._local.put(stored)
        limits = self._local
        ttl_ms = max(1, int(limits.ttl_seconds * 1000))
        index = f"{self._state.prefix}resp-index"
        value = json.dumps(_response_json(stored), separators=(",", ":"))
        max_responses = limits.max_responses

        async def write(client: coredis.Redis[str]) -> None:
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(self._key(stored.id), value, px=ttl_ms)
                pipe.zadd(index, {stored.id: stored.created_at})
                pipe.pexpire(index, ttl_ms)
            # bounded like the local store: the oldest beyond the count go first
            extra = await client.zcard(index) - max_responses
            if extra > 0:
                oldest = [str(member) for member in await client.zrange(index, 0, extra - 1)]
                if oldest:
                    await client.zrem(index, oldest)
                    await client.delete([self._key(member) for member in oldest])

        if stored.size <= limits.max_bytes:
            await self._state._read(write)

    async def get(self, response_id: str) -> StoredResponse | None:
        found = await self._local.get(response_id)
        if found is not None:
            return found
        raw = await self._state._read(lambda client: client.get(self._key(response_id)))
        if not isinstance(raw, str):
            return None
        try:
            stored = _response_from_json(json.loads(raw))
        except (TypeError, ValueError, KeyError):
            return None
        if self._state._clock() - stored.created_at > self._local.ttl_seconds:
            return None
        await self._local.put(stored)
        return stored

    async def delete(self, response_id: str) -> bool:
        local = await self._local.delete(response_id)
        removed = await self._state._read(lambda client: client.delete([self._key(response_id)]))
        return local or bool(removed)

    async def history(self, response_id: str) -> list[JSONDict]:
        return await self._local.history(response_id, get=self.get)


def _response_json(stored: StoredResponse) -> JSONDict:
    return {
        "id": stored.id, "created_at": stored.created_at, "response": stored.response,
        "input_items": list(stored.input_items), "output_items": list(stored.output_items),
        "previous_id": stored.previous_id, "size": stored.size, "owner": stored.owner,
    }


def _response_from_json(data: JSONDict) -> StoredResponse:
    return StoredResponse(
        id=str(data["id"]), created_at=float(data["created_at"]), response=data["response"],
        input_items=tuple(data["input_items"]), output_items=tuple(data["output_items"]),
        previous_id=data["previous_id"], size=int(data["size"]), owner=str(data["owner"]),
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _reason(exc.exceptions[0])
    text = str(exc) or type(exc).__name__
    return text[:200]


# Take the lease if free, or extend it if this replica holds it; 1 when held after.
_TAKE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# Hand the lease back, if this replica still holds it.
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
