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

Redis is never on a request's critical path for writes: they go, in order, through a
bounded outbox drained by a writer task, and a read waits at most `state.timeout_ms`. When
a call fails or times out, or the subscription drops, the replica serves on its local state
("local-fallback" in /health and metrics), logs it once (and every five minutes it lasts),
keeps queueing what it learns, and reconnects every `state.retry_seconds`. Once back it
resyncs, in this order: it subscribes; if Redis lost its data meanwhile (a restart: the
`epoch` key is gone or new) it pushes its own state; it writes what it learned while away
(a cleared cooldown or a revived account included, so they do not come back); then it reads
the cooldowns and marks from Redis, which are the truth from then on (one this replica holds
that Redis no longer has was cleared elsewhere). Times travel as remaining seconds, never as
one replica's clock. Every key is under `state.key_prefix` and has a TTL; what is read from
Redis or the channel is checked, and what does not parse is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
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
# coredis logs each retry, lost connection and cancelled connect (with tracebacks); an
# outage is reported here instead, once, with its reason
logging.getLogger("coredis").setLevel(logging.CRITICAL)

Mode = Literal["local", "redis", "local-fallback"]
JSONDict = dict[str, Any]

# Writes waiting for the writer: beyond this, the oldest are dropped (a resync pushes the
# local state again anyway).
MAX_OUTBOX = 10_000
# An invalid mark outlives any token; the accounts file is its lasting record.
INVALID_MARK_TTL_SECONDS = 7 * 24 * 3600.0
MAX_SIGNATURES_PER_SESSION = 512
OUTAGE_REMINDER_SECONDS = 300.0
# The longest a replica's start waits for Redis before serving on its own state.
FIRST_CONNECT_SECONDS = 3.0
SLOW_READS_IN_A_ROW = 3
# A cooldown longer than this is nobody's real news (a quota resets within a week).
MAX_COOLDOWN_SECONDS = 7 * 24 * 3600.0
# The key that tells a Redis that kept its data from one that restarted empty.
_EPOCH_TTL_MS = 30 * 24 * 3600 * 1000


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
        self._outage_logged_at: float | None = None  # None: not in an outage
        self._outage_began = 0.0
        self._slow_reads = 0
        # set when a request-path call failed or timed out: the connection is renewed
        self._broken = trio.Event()
        self._outbox: dict[str, _Write] = {}
        self._outbox_ready = trio.Event()
        self._handles: tuple[tuple[str, ...], dict[str, str]] = ((), {})
        self._probed_remotely: set[str] = set()  # accounts with another replica's answer
        self._epoch: str | None = None  # the Redis data this replica last synced with
        self.local_responses = responses
        self.shared_responses = RedisResponseStore(self, responses)
        self.responses = self.shared_responses
        self._report("local-fallback")  # until the first connection

    # -- the face --------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return "redis" if self._connected else "local-fallback"

    def describe(self) -> JSONDict:
        return {"state": self.mode, "replica": self.replica, "probeLease": self._holds_lease}

    def changed(self, change: PoolChange) -> None:
        """The pool learned something: queue its key and its event (kept while Redis is
        away, and written in order once it is back)."""
        prefix = self.prefix
        if isinstance(change, CooldownsCleared):
            if change.email is None:
                self._queue("clear:*", _Write("clear", f"{prefix}cd:*"))
                self._publish({"kind": "cleared", "all": True})
            else:
                handle = account_handle(change.email)
                self._queue(f"clear:{handle}", _Write("clear", f"{prefix}cd:{handle}:*"))
                self._publish({"kind": "cleared", "account": handle})
            return
        handle = account_handle(change.email)
        if isinstance(change, Cooldown):
            if not _usable_until(change.until, self._clock()):
                return
            key = f"{prefix}cd:{handle}:{change.model}"
            self._queue(key, _Write("set", key, "1", until=change.until))
            self._publish({"kind": "cooldown", "account": handle, "model": change.model},
                          until=change.until)
        elif isinstance(change, SessionAssigned):
            key = f"{prefix}session:{_digest(change.session)}"
            self._queue(key, _Write("set", key, handle, self.config.session_ttl_seconds))
            self._publish({"kind": "session", "session": change.session, "account": handle})
        elif isinstance(change, MarkedInvalid):
            key = f"{prefix}invalid:{handle}"
            mark = json.dumps({"reason": change.reason, "grant": change.grant})
            self._queue(key, _Write("set", key, mark, INVALID_MARK_TTL_SECONDS))
            self._publish({"kind": "invalid", "account": handle, "reason": change.reason,
                           "grant": change.grant})
        elif isinstance(change, MarkCleared):
            key = f"{prefix}invalid:{handle}"
            self._queue(key, _Write("delete", key))
            self._publish({"kind": "valid", "account": handle, "grant": change.grant})
        else:
            key = f"{prefix}probe:{handle}"
            snapshot = json.dumps({"answer": change.answer})
            self._queue(key, _Write("set", key, snapshot, self._probe_ttl()))
            self._publish({"kind": "probe", "account": handle})

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
        kept = {str(k): str(v) for k, v in list(found.items())[:MAX_SIGNATURES_PER_SESSION]}
        for tool_id, signature in kept.items():
            self.signature_cache.remember(session_id, tool_id, signature)
        return kept

    def remember_signature(self, session_id: str, tool_id: str, signature: str) -> None:
        super().remember_signature(session_id, tool_id, signature)
        if session_id:
            key = f"{self.prefix}sig:{_digest(session_id)}"
            self._queue(f"{key}:{tool_id}", _Write(
                "hset", key, json.dumps([tool_id, signature]), self.config.session_ttl_seconds))

    # -- the background work ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stay connected to Redis until cancelled: subscribe, write, hold the lease.

        Reports started once connected and resynced, or when the first attempt failed, or
        after `FIRST_CONNECT_SECONDS` at the latest: a replica whose Redis is down, hung or
        unknown starts anyway, on its own state. Cancelled (the gateway stopping), it hands
        the probe lease back on a connection of its own.
        """
        started = False

        def report() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        async def report_soon() -> None:
            await trio.sleep(FIRST_CONNECT_SECONDS)
            report()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(report_soon)
                while True:
                    try:
                        await self._session(report)
                    except Exception as exc:  # every failure means "serve locally"
                        self._fail(exc)
                    finally:
                        self._client = None
                        was_holding = self._holds_lease
                        self._set_connected(False)
                        self._holds_lease = was_holding  # for the release, if stopping
                    report()
                    self._holds_lease = False
                    await trio.sleep(self.config.retry_seconds)
        finally:
            if self._holds_lease:
                self._holds_lease = False
                await self._release_lease()

    def _new_client(self) -> coredis.Redis[str]:
        return coredis.Redis.from_url(
            self.config.redis_url, decode_responses=True,
            connect_timeout=max(self._timeout, 1.0), stream_timeout=5.0,
            retry_policy=coredis.retry.NoRetryPolicy(),
        )

    async def _session(self, connected: Callable[[], None]) -> None:
        """One connection's life: resync, then subscribe, write and lease until it fails.
        Connecting, subscribing and resyncing get one deadline together (a Redis that
        accepts and never answers, a name that does not resolve)."""
        with trio.CancelScope() as setup:
            setup.deadline = trio.current_time() + max(self._timeout * 40, 2.0)
            async with self._new_client() as client:
                self._broken = trio.Event()
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._subscribe, client)
                    await self._resync(client)
                    setup.deadline = math.inf  # set up: from here, its calls' own deadlines
                    self._client = client
                    self._set_connected(True)
                    connected()
                    nursery.start_soon(self._write, client)
                    nursery.start_soon(self._hold_lease, client)
                    await self._broken.wait()
                    raise _Unavailable("a call failed or timed out")
        if setup.cancelled_caught:
            raise _Unavailable("Redis did not answer in time")

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        if connected:
            self._outage_logged_at = None
            log.info("shared state: connected to Redis (replica %s)", self.replica)
        else:
            self._holds_lease = False
        self._report(self.mode)

    def _fail(self, exc: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.state_errors.inc()
        self._broken.set()
        reason, now = _reason(exc), trio.current_time()
        if self._outage_logged_at is None:  # once per outage...
            self._outage_logged_at = self._outage_began = now
            log.warning("shared state: Redis unavailable (%s); serving on this replica's own "
                        "state until it is back", reason)
        elif now - self._outage_logged_at >= OUTAGE_REMINDER_SECONDS:
            # ...and a reminder with the reason of now, while it lasts
            self._outage_logged_at = now
            log.warning("shared state: Redis still unavailable after %.0fs (%s)",
                        now - self._outage_began, reason)

    def _report(self, mode: Mode) -> None:
        if self._metrics is not None:
            for name in ("local", "redis", "local-fallback"):
                self._metrics.state_mode.labels(name).set(1 if name == mode else 0)

    async def _subscribe(self, client: coredis.Redis[str], *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # coredis's pub/sub retries a lost connection for ever by default; here a lost
        # subscription ends the session, and the session loop reconnects (and resyncs)
        async with client.pubsub(channels=[self.channel],
                                 retry_policy=coredis.retry.NoRetryPolicy()) as pubsub:
            task_status.started()
            async for message in pubsub:
                data = message.get("data")
                if message.get("type") != "message" or not isinstance(data, str):
                    continue
                try:
                    event = json.loads(data)
                except (TypeError, ValueError, RecursionError):
                    continue
                if isinstance(event, dict) and event.get("from") != self.replica:
                    self._apply_event(event)
        raise _Unavailable("the subscription ended")

    def _apply_event(self, event: JSONDict) -> None:
        """Another replica's news; anything malformed or not about this pool is dropped."""
        kind = event.get("kind")
        raw = event.get("account")
        email = self._email_of(raw) if isinstance(raw, str) else None
        try:
            if kind == "cleared":
                if event.get("all") is True:
                    self.pool.apply_remote(CooldownsCleared(None))
                elif email is not None:  # not None for an unknown account: that is "all"
                    self.pool.apply_remote(CooldownsCleared(email))
            elif kind == "response-deleted":
                response_id = event.get("id")
                if isinstance(response_id, str):
                    self.local_responses.forget(response_id)
            elif email is None:
                return
            elif kind == "cooldown":
                ttl = float(event["ttl"])
                if 0 < ttl <= MAX_COOLDOWN_SECONDS:
                    self.pool.apply_remote(Cooldown(email, _text(event["model"]),
                                                    self._clock() + ttl))
            elif kind == "session":
                self.pool.apply_remote(SessionAssigned(_text(event["session"]), email))
            elif kind == "invalid":
                self.pool.apply_remote(MarkedInvalid(email, _text(event["reason"]),
                                                     _text(event["grant"])))
            elif kind == "valid":
                if self.pool.apply_remote(MarkCleared(email, _text(event["grant"]))):
                    self.on_revived(email)
            elif kind == "probe":
                self._probed_remotely.add(email)
                # a probe's answer is too big to publish: the event says where it is
                self._queue(f"probe-read:{email}", _Write("probe-read", email))
        except (KeyError, TypeError, ValueError, OverflowError):
            log.debug("shared state: ignored a malformed %s event", kind)

    async def _write(self, client: coredis.Redis[str]) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready = trio.Event()
            await self._drain(client)

    async def _drain(self, client: coredis.Redis[str]) -> None:
        """Write what the outbox holds, in order; a batch that cannot be written is kept
        (in front of what came meanwhile) for the next connection."""
        batch, self._outbox = self._outbox, {}
        if not batch:
            return
        size = float(sum(len(w.value) for w in batch.values()))
        try:
            # bounded, with room for big values (stored responses) on a slow link
            with trio.fail_after(max(self._timeout * 4, 0.25) + size / 20e6):
                await self._execute(client, list(batch.values()))
        except BaseException:
            batch.update(self._outbox)
            self._outbox = batch
            raise

    async def _execute(self, client: coredis.Redis[str], batch: list[_Write]) -> None:
        now = self._clock()
        simple: list[_Write] = []

        async def flush() -> None:
            if not simple:
                return
            async with client.pipeline(transaction=False, raise_on_error=False) as pipe:
                for write in simple:
                    if write.op == "set":
                        ttl = write.ttl if write.until is None else write.until - now
                        if ttl > 0:
                            pipe.set(write.key, write.value, px=max(1, int(ttl * 1000)))
                    elif write.op == "delete":
                        pipe.delete([write.key])
                    elif write.op == "publish":
                        event = dict(write.event or {})
                        if write.until is not None:
                            event["ttl"] = write.until - now
                            if event["ttl"] <= 0:
                                continue
                        pipe.publish(write.key, json.dumps(event))
            simple.clear()

        for write in batch:
            if write.op in ("set", "delete", "publish"):
                simple.append(write)
                continue
            await flush()
            try:
                await self._execute_one(client, write)
            except coredis.exceptions.ResponseError as exc:
                # Redis refused this one (a key of another type, a script error): dropped,
                # or the outbox would never drain
                log.warning("shared state: Redis refused a %s write (%s)", write.op,
                            _reason(exc))
        await flush()

    async def _execute_one(self, client: coredis.Redis[str], write: _Write) -> None:
        """One write that is not a plain SET, DEL or PUBLISH."""
        if write.op == "clear":
            keys = [key async for key in client.scan_iter(match=write.key, count=500)]
            if keys:
                await client.delete(keys)
        elif write.op == "hset":
            tool_id, signature = json.loads(write.value)
            await client.eval(_ADD_SIGNATURE, keys=[write.key], args=[
                tool_id, signature, max(1, int(write.ttl * 1000)),
                MAX_SIGNATURES_PER_SESSION])
        elif write.op == "probe-read":
            found = await client.get(f"{self.prefix}probe:{account_handle(write.key)}")
            self._apply_probe_snapshot(write.key, found)
        elif write.op == "response":
            await self.shared_responses.write(client, write)
        elif write.op == "response-delete":
            await self.shared_responses.remove(client, write.key)

    def _apply_probe_snapshot(self, email: str, raw: str | None) -> None:
        if raw is None:
            return
        try:
            answer = json.loads(raw)["answer"]
        except (TypeError, ValueError, KeyError, RecursionError):
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
                    await client.pexpire(f"{self.prefix}epoch", _EPOCH_TTL_MS)
            except trio.TooSlowError:
                raise _Unavailable("the lease call timed out") from None
            holds = bool(held)
            if holds and not self._holds_lease:
                log.info("shared state: this replica (%s) runs the scheduled quota probes",
                         self.replica)
            self._holds_lease = holds
            await trio.sleep(min(self.config.lease_seconds / 3, self.config.retry_seconds))

    async def _release_lease(self) -> None:
        """Stopping while holding the probe lease: hand it back at once, so another
        replica takes over without waiting out its TTL. A connection of its own, shielded
        and bounded: the one in use is being torn down by the same cancellation."""
        with trio.move_on_after(max(self._timeout * 10, 0.5)) as bounded:
            bounded.shield = True
            try:
                async with self._new_client() as client:
                    await client.eval(_RELEASE_LEASE, keys=[f"{self.prefix}lease:probes"],
                                      args=[self.replica])
                log.info("shared state: handed the probe lease back")
            except Exception as exc:  # expiring by itself is the fallback
                log.info("shared state: could not hand the probe lease back (%s); it "
                         "expires within state.lease_seconds", _reason(exc))

    async def _resync(self, client: coredis.Redis[str]) -> None:
        """After (re)connecting (subscribed already): push this replica's state if Redis
        lost its data, write what was learned while away, then take Redis's word."""
        with trio.fail_after(max(self._timeout * 40, 2.0)):
            epoch = await client.get(f"{self.prefix}epoch")
            if epoch is None:
                fresh = secrets.token_hex(8)
                made = await client.set(f"{self.prefix}epoch", fresh, px=_EPOCH_TTL_MS,
                                        condition=PureToken.NX)
                epoch = fresh if made else await client.get(f"{self.prefix}epoch")
            if epoch != self._epoch:
                if self._epoch is not None:
                    log.info("shared state: Redis lost its data meanwhile; pushing this "
                             "replica's state")
                await self._push_state(client)
                self._epoch = epoch
            await self._drain(client)
            await self._pull(client)

    async def _push_state(self, client: coredis.Redis[str]) -> None:
        """This replica's cooldowns, marks and sessions, for a Redis that has none (each
        only where Redis has no newer word of its own)."""
        now = self._clock()
        async with client.pipeline(transaction=False) as pipe:
            for cooldown in self.pool.cooldowns():
                if not _usable_until(cooldown.until, now):
                    continue
                handle = account_handle(cooldown.email)
                ttl = cooldown.until - now
                pipe.set(f"{self.prefix}cd:{handle}:{cooldown.model}", "1",
                         px=max(1, int(ttl * 1000)), condition=PureToken.NX)
                pipe.publish(self.channel, json.dumps({
                    "kind": "cooldown", "account": handle, "model": cooldown.model,
                    "ttl": ttl, "from": self.replica}))
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

    async def _pull(self, client: coredis.Redis[str]) -> None:
        """Redis's cooldowns and marks become this replica's (save what it has yet to
        write); probe answers are applied."""
        prefix, now = self.prefix, self._clock()
        pending = set(self._outbox)
        keys = [key async for key in client.scan_iter(match=f"{prefix}cd:*", count=500)]
        remaining: dict[tuple[str, str], float] = {}
        if keys:
            async with client.pipeline(transaction=False) as pipe:
                ttls = [pipe.pttl(key) for key in keys]
            for key, ttl_request in zip(keys, ttls, strict=True):
                handle, _, model = key[len(prefix) + 3:].partition(":")
                email = self._email_of(handle)
                ttl_ms = await ttl_request
                if email is not None and model and isinstance(ttl_ms, int) and ttl_ms > 0:
                    remaining[(email, model)] = ttl_ms / 1000.0
        for cooldown in self.pool.cooldowns():
            key = f"{prefix}cd:{account_handle(cooldown.email)}:{cooldown.model}"
            if (cooldown.email, cooldown.model) not in remaining and key not in pending:
                self.pool.apply_remote(Cooldown(cooldown.email, cooldown.model, now))
        for (email, model), seconds in remaining.items():
            self.pool.apply_remote(Cooldown(email, model,
                                            now + min(seconds, MAX_COOLDOWN_SECONDS)))
        marks = [key async for key in client.scan_iter(match=f"{prefix}invalid:*", count=500)]
        values = await client.mget(marks) if marks else ()
        marked: set[str] = set()
        for key, value in zip(marks, values, strict=True):
            email = self._email_of(key[len(prefix) + 8:])
            if email is None or value is None:
                continue
            try:
                mark = json.loads(value)
                change = MarkedInvalid(email, _text(mark["reason"]), _text(mark["grant"]))
            except (TypeError, ValueError, KeyError, RecursionError):
                continue
            marked.add(email)
            self.pool.apply_remote(change)
        for mark in self.pool.invalid_marks():
            key = f"{prefix}invalid:{account_handle(mark.email)}"
            if mark.email not in marked and key not in pending and self.pool.apply_remote(
                    MarkCleared(mark.email, mark.grant)):
                self.on_revived(mark.email)  # found alive elsewhere while we were away
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

    def _publish(self, event: JSONDict, *, until: float | None = None) -> None:
        event["from"] = self.replica
        self._queue(f"event:{secrets.token_hex(8)}",
                    _Write("publish", self.channel, event=event, until=until))

    async def _read(self, call: Callable[[coredis.Redis[str]], Any], *,
                    seconds: float | None = None, fatal: bool = True) -> Any:
        """One request-path read, or None when Redis cannot answer in time. A failure
        renews the connection (and means local state meanwhile) unless not `fatal`."""
        client = self._client
        if client is None or not self._connected:
            return None
        try:
            with trio.fail_after(self._timeout if seconds is None else seconds):
                found = await call(client)
        except Exception as exc:  # a failed read is a miss
            slow = isinstance(exc, trio.TooSlowError)
            self._slow_reads = self._slow_reads + 1 if slow else 0
            # one slow answer may be this process's own busy moment; a broken connection,
            # or slow answers in a row, mean Redis is not there
            if fatal and (not slow or self._slow_reads >= SLOW_READS_IN_A_ROW):
                self._fail(exc)
            elif self._metrics is not None:
                self._metrics.state_errors.inc()
            return None
        self._slow_reads = 0
        return found

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


def _usable_until(until: float, now: float) -> bool:
    return math.isfinite(until) and 0 < until - now <= MAX_COOLDOWN_SECONDS


def _text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 1024:
        raise ValueError("not a short string")
    return value


@attrs.frozen(slots=True)
class _Write:
    """One pending write: `op` on `key` (the channel, for a publish). A cooldown's TTL comes
    from `until` when it is written, so a write queued during an outage is not late."""

    op: str
    key: str
    value: str = ""
    ttl: float = 0.0
    until: float | None = None
    event: JSONDict | None = None


class RedisResponseStore:
    """Stored Responses in Redis (any replica can continue a conversation), kept in local
    memory too: written to both (Redis through the outbox, bounded by count and bytes like
    the local store), read locally first; a delete reaches every replica's memory."""

    def __init__(self, state: RedisStateStore, local: MemoryResponseStore) -> None:
        self._state = state
        self._local = local

    def _key(self, response_id: str) -> str:
        return f"{self._state.prefix}resp:{response_id}"

    async def put(self, stored: StoredResponse) -> None:
        await self._local.put(stored)
        if stored.size <= self._local.max_bytes:
            value = json.dumps(_response_json(stored), separators=(",", ":"))
            self._state._queue(self._key(stored.id), _Write(
                "response", stored.id, value, self._local.ttl_seconds))

    async def write(self, client: coredis.Redis[str], write: _Write) -> None:
        """The writer's half of `put`: store it, then evict the oldest beyond the limits."""
        prefix = self._state.prefix
        await client.eval(_PUT_RESPONSE, keys=[
            self._key(write.key), f"{prefix}resp-index", f"{prefix}resp-sizes",
            f"{prefix}resp-bytes"], args=[
            write.key, write.value, len(write.value), self._state._clock(),
            max(1, int(write.ttl * 1000)), self._local.max_responses, self._local.max_bytes,
            f"{prefix}resp:"])

    async def get(self, response_id: str) -> StoredResponse | None:
        found = await self._local.get(response_id)
        if found is not None:
            return found
        raw = await self._state._read(lambda client: client.get(self._key(response_id)),
                                      seconds=max(self._state._timeout, 1.0), fatal=False)
        if not isinstance(raw, str):
            return None
        try:
            stored = _response_from_json(json.loads(raw))
        except (TypeError, ValueError, KeyError, RecursionError):
            return None
        if stored.id != response_id or (
                self._state._clock() - stored.created_at > self._local.ttl_seconds):
            return None
        await self._local.put(stored)
        return stored

    async def delete(self, response_id: str) -> bool:
        local = await self._local.delete(response_id)
        remote = await self._state._read(
            lambda client: client.exists([self._key(response_id)]), fatal=False)
        # written even when Redis is away (the outbox keeps it): a delete is not lost
        self._state._queue(f"response-delete:{response_id}",
                           _Write("response-delete", response_id))
        self._state._publish({"kind": "response-deleted", "id": response_id})
        return local or bool(remote)

    async def remove(self, client: coredis.Redis[str], response_id: str) -> None:
        prefix = self._state.prefix
        await client.eval(_DELETE_RESPONSE, keys=[
            self._key(response_id), f"{prefix}resp-index", f"{prefix}resp-sizes",
            f"{prefix}resp-bytes"], args=[response_id])

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

# Add a thought signature, keeping the session's hash bounded and with a TTL, atomically.
_ADD_SIGNATURE = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[4]) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# Store a response; evict the oldest while over the count or the bytes. KEYS: the
# response, the index (zset by time), the sizes (hash), the byte total. ARGV: id, value,
# size, time, ttl ms, max count, max bytes, the response key prefix.
_PUT_RESPONSE = """
local old = redis.call('HGET', KEYS[3], ARGV[1])
if old then redis.call('DECRBY', KEYS[4], old) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
local total = redis.call('INCRBY', KEYS[4], ARGV[3])
while redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[6]) or total > tonumber(ARGV[7]) do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not oldest then break end
  redis.call('ZREM', KEYS[2], oldest)
  redis.call('DEL', ARGV[8] .. oldest)
  local size = redis.call('HGET', KEYS[3], oldest)
  redis.call('HDEL', KEYS[3], oldest)
  if size then total = redis.call('DECRBY', KEYS[4], size) end
end
for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
return total
"""
_DELETE_RESPONSE = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local size = redis.call('HGET', KEYS[3], ARGV[1])
if size then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('DECRBY', KEYS[4], size)
end
return 1
"""
