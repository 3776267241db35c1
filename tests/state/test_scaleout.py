"""Three `gateway serve` replicas, one Redis, one emulator: they behave as one pool.

Each replica is a real process started from the command line with `state.redis_url` set;
the emulator runs in the test (on a loopback socket the replicas reach), redis-server is
Debian's. What one replica learns (a 429's cooldown, a conversation's account, an invalid
grant) the others act on; Redis going away fails no request, and the replicas resync when
it returns; a replica killed with -9 holds no lease past its TTL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway.cli import write_demo_accounts
from gateway.emulator import Fault
from tests.replicas import RedisServer, Replica, replica_config, start_replica
from tests.support import RunningEmulator

MODEL = "claude-sonnet-4-6"
DEMO1, DEMO2 = "demo1@example.com", "demo2@example.com"

StartReplicas = Callable[..., Awaitable[list[Replica]]]


@pytest.fixture
def redis_server(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def replicas(
    emulator: RunningEmulator, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[StartReplicas]:
    started: list[Replica] = []

    async def start(count: int = 3, extra: str = "", lease_seconds: float = 1.5,
                    ready: bool = True) -> list[Replica]:
        async with trio.open_nursery() as nursery:
            for index in range(count):
                name = "ABCDEFGH"[len(started) + index]
                # each its own copy of the accounts file, as on separate hosts: what one
                # replica writes there, the others never read
                accounts = tmp_path / f"accounts-{name}.json"
                await write_demo_accounts(str(accounts))
                config = tmp_path / f"replica-{name}.toml"
                replica_config(config, emulator=emulator.url, accounts=accounts,
                               redis=redis_server.url, extra=extra,
                               lease_seconds=lease_seconds)

                async def one(name: str = name, config: Path = config) -> None:
                    started.append(await trio.to_thread.run_sync(
                        start_replica, name, config, tmp_path))

                nursery.start_soon(one)
        group = sorted(started[-count:], key=lambda r: r.name)
        for replica in group if ready else ():
            await until(lambda r=replica: _ready(r), f"replica {replica.name} ready")
        return group

    yield start
    for replica in started:
        await trio.to_thread.run_sync(replica.stop)


def _ready(replica: Replica) -> bool:
    health = replica.health()
    return bool(health["activeAccounts"] == 2 and health["state"] == "redis"
                and health["models"] > 0)


async def until(check: Callable[[], Any], what: str, seconds: float = 10.0) -> Any:
    """Poll `check` (blocking calls, run in a thread) until it is truthy."""
    deadline = trio.current_time() + seconds
    while True:
        found = await trio.to_thread.run_sync(check)
        if found:
            return found
        if trio.current_time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await trio.sleep(0.02)


def ask(replica: Replica, text: str, *, history: list[dict[str, Any]] | None = None,
        ) -> httpx.Response:
    messages = [*(history or []), {"role": "user", "content": text}]
    return replica.post("/v1/messages", json={
        "model": MODEL, "max_tokens": 64, "messages": messages})


async def ask_async(replica: Replica, text: str, **kwargs: Any) -> httpx.Response:
    return await trio.to_thread.run_sync(partial(ask, replica, text, **kwargs))


def served_by(emulator: RunningEmulator) -> list[str | None]:
    """The accounts of the generation calls the emulator answered, oldest first."""
    return [r.email for r in emulator.state.received if "generatecontent" in r.path.lower()]


def cooling(replica: Replica, email: str) -> float:
    entry = replica.limits()[email]
    return float(entry["models"].get(MODEL, {}).get("cooldownSeconds") or 0.0)


async def test_a_429_seen_by_one_replica_cools_the_account_for_all(
    replicas: StartReplicas, emulator: RunningEmulator
) -> None:
    a, b, c = await replicas()
    emulator.state.add_fault(Fault("rate_limit", account=DEMO1, times=1, reset_seconds=120))
    emulator.state.received.clear()
    answer = await ask_async(a, "first")
    assert answer.status_code == 200, answer.text
    assert served_by(emulator) == [DEMO1, DEMO2]  # the 429, then the failover
    finished = time.monotonic()
    await until(lambda: cooling(b, DEMO1) > 100 and cooling(c, DEMO1) > 100,
                "B and C see demo1 cooling")
    seen_after = time.monotonic() - finished
    # published before A even failed over; a loose bound so a busy CI box cannot flake
    assert seen_after < 1.0
    emulator.state.received.clear()
    for replica in (b, c):
        fresh = await ask_async(replica, f"a new conversation on {replica.name}")
        assert fresh.status_code == 200, fresh.text
    assert served_by(emulator) == [DEMO2, DEMO2]  # nobody spends a request on demo1


async def test_a_conversation_keeps_its_account_whichever_replica_serves_a_turn(
    replicas: StartReplicas, emulator: RunningEmulator
) -> None:
    a, b, c = await replicas()
    # the first turn lands on demo2 (demo1 is cooling), then demo1 is usable again: a
    # replica that did not know the conversation would pick demo1, the first healthy one
    emulator.state.add_fault(Fault("rate_limit", account=DEMO1, times=1, reset_seconds=120))
    first = await ask_async(a, "hello, remember me")
    assert first.status_code == 200, first.text
    cleared = await trio.to_thread.run_sync(partial(a.post, "/refresh-token"))
    assert cleared.status_code == 200
    await until(lambda: cooling(b, DEMO1) == 0 and cooling(c, DEMO1) == 0,
                "the cooldown cleared everywhere")
    emulator.state.received.clear()
    history = [{"role": "user", "content": "hello, remember me"},
               {"role": "assistant", "content": first.json()["content"][0]["text"]}]
    for replica in (b, c, a, b):
        turn = await ask_async(replica, f"turn on {replica.name}", history=history)
        assert turn.status_code == 200, turn.text
        history += [{"role": "user", "content": f"turn on {replica.name}"},
                    {"role": "assistant", "content": turn.json()["content"][0]["text"]}]
    assert served_by(emulator) == [DEMO2] * 4
    # the control: a new conversation goes to demo1, so the turns above were steered
    other = await ask_async(c, "someone else entirely")
    assert other.status_code == 200
    assert served_by(emulator)[-1] == DEMO1


def _refreshes(replica: Replica) -> float:
    text = replica.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith('gateway_token_refreshes_total{result="ok"}'):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_concurrent_401s_refresh_once_per_replica_and_invalid_grants_mark_all(
    replicas: StartReplicas, emulator: RunningEmulator
) -> None:
    group = await replicas()
    before = [await trio.to_thread.run_sync(_refreshes, r) for r in group]
    emulator.state.expire_access_tokens()  # every access token now gets a 401
    statuses: list[int] = []

    async def one(index: int) -> None:
        replica = group[index % len(group)]
        statuses.append((await ask_async(replica, f"question {index}")).status_code)

    async with trio.open_nursery() as nursery:
        for index in range(30):
            nursery.start_soon(one, index)
    assert statuses == [200] * 30
    after = [await trio.to_thread.run_sync(_refreshes, r) for r in group]
    # at most one refresh per account per replica (two accounts may have served)
    for replica, was, now in zip(group, before, after, strict=True):
        assert now - was <= 2, f"replica {replica.name} refreshed {now - was} times"

    # an invalid_grant found by A marks demo1 invalid on B and C, who never asked
    emulator.state.add_fault(Fault("invalid_grant", account=DEMO1))
    emulator.state.received.clear()
    a, b, c = group
    result = await trio.to_thread.run_sync(
        partial(a.post, "/refresh-token", json={"email": DEMO1}))
    assert result.json()["results"][DEMO1]["status"] == "invalid"
    try:
        await until(lambda: b.limits()[DEMO1]["status"] == "invalid"
                    and c.limits()[DEMO1]["status"] == "invalid", "B and C mark demo1 invalid")
    except AssertionError:
        print("".join(a.lines[-30:]), "".join(b.lines[-30:]))
        raise
    # demo1's grant was asked for once, by A alone (a replica renewing demo2's token,
    # expired above, on a probe of its own meanwhile is not what this is about)
    token_calls = [r for r in emulator.state.received if r.path == "/token"
                   and r.email == DEMO1]
    assert len(token_calls) == 1
    emulator.state.received.clear()
    served = await ask_async(c, "after the grant died")
    assert served.status_code == 200
    # demo2 (C's demo2 token may be the expired one, renewed on its 401 first)
    assert served_by(emulator)[-1] == DEMO2 and DEMO1 not in served_by(emulator)


async def test_redis_going_away_fails_no_request_and_replicas_resync(
    replicas: StartReplicas, emulator: RunningEmulator, redis_server: RedisServer
) -> None:
    group = await replicas()
    a, b, c = group
    statuses: list[int] = []
    done = trio.Event()

    async def load(index: int) -> None:
        replica = group[index % 3]
        statuses.append((await ask_async(replica, f"load {index}")).status_code)
        if len(statuses) == 20:
            done.set()

    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(6)

        async def limited(index: int) -> None:
            async with limiter:
                await load(index)

        for index in range(60):
            nursery.start_soon(limited, index)
        await done.wait()
        before_outage = len(b.lines)
        redis_server.kill()  # mid-load
    assert statuses == [200] * 60
    for replica in group:
        await until(lambda r=replica: r.health()["state"] == "local-fallback",
                    f"{replica.name} on local state")

    # learned while Redis is down: A's cooldown stays A's, for now
    emulator.state.add_fault(Fault("rate_limit", account=DEMO1, times=1, reset_seconds=120))
    assert (await ask_async(a, "while redis is down")).status_code == 200
    assert cooling(a, DEMO1) > 100 and cooling(b, DEMO1) == 0

    redis_server.start()  # an empty Redis, on the same port
    for replica in group:
        await until(lambda r=replica: r.health()["state"] == "redis",
                    f"{replica.name} back on Redis")
    # A pushed what it learned; B and C have it now
    await until(lambda: cooling(b, DEMO1) > 100 and cooling(c, DEMO1) > 100,
                "A's cooldown resynced to B and C")
    metrics = (await trio.to_thread.run_sync(partial(b.get, "/metrics"))).text
    assert 'gateway_state_mode{mode="redis"} 1.0' in metrics
    assert "gateway_state_errors_total" in metrics
    # the outage is logged once, however many calls and reconnects failed in it. It runs
    # from the last connect before the kill to the first after it (a call timed out by a
    # loaded machine earlier in the load is an outage of its own, logged on its own)
    connects = [i for i, line in enumerate(b.lines) if "connected to Redis" in line]
    began = max((i for i in connects if i < before_outage), default=0)
    ended = min(i for i in connects if i >= before_outage)
    assert sum("Redis unavailable" in line for line in b.lines[began:ended]) == 1


async def test_a_hung_redis_is_served_around(
    replicas: StartReplicas, emulator: RunningEmulator, redis_server: RedisServer
) -> None:
    a, b, _ = await replicas(extra="timeout_ms = 50")
    redis_server.pause()  # the sockets stay open; nothing answers
    try:
        started = time.monotonic()
        for index in range(3):
            answer = await ask_async(b, f"hung {index}")
            assert answer.status_code == 200
        # a request waits at most a read deadline or two, never Redis's recovery
        assert time.monotonic() - started < 5.0
        await until(lambda: b.health()["state"] == "local-fallback", "B on local state")
    finally:
        redis_server.resume()
    await until(lambda: a.health()["state"] == "redis" and b.health()["state"] == "redis",
                "back on Redis")


async def test_a_replica_killed_with_9_leaves_no_lease_past_its_ttl(
    replicas: StartReplicas, redis_server: RedisServer
) -> None:
    group = await replicas()
    holder = await until(
        lambda: next((r for r in group if r.health().get("probeLease")), None),
        "a lease holder")
    lease = redis_server.command("GET", "gateway:lease:probes")
    assert lease == holder.health()["replica"]
    ttl = redis_server.command("PTTL", "gateway:lease:probes")
    assert 0 < ttl <= 1500
    holder.kill()  # -9: no goodbye
    others = [r for r in group if r is not holder]
    killed_at = time.monotonic()
    successor = await until(
        lambda: next((r for r in others if r.health().get("probeLease")), None),
        "another replica takes the lease")
    assert time.monotonic() - killed_at < 1.5 + 1.0  # the TTL, and one renewal period
    assert redis_server.command("GET", "gateway:lease:probes") == successor.health()["replica"]
    # every key the gateway wrote expires
    keys = redis_server.command("KEYS", "gateway:*")
    assert keys
    for key in keys:
        assert redis_server.command("PTTL", key) > 0, key


GEMINI_SIGNING = "gemini-3.1-pro-high"  # signs its function calls: replays need them
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


async def test_thought_signatures_and_stored_responses_reach_every_replica(
    replicas: StartReplicas, emulator: RunningEmulator
) -> None:
    a, b, c = await replicas()
    # OpenAI Chat clients cannot carry Gemini's call signatures: the gateway keeps them,
    # and the replica serving the tool result must find the one A kept
    question = {"role": "user", "content": "Use get_weather for Paris"}
    first = await trio.to_thread.run_sync(partial(a.post, "/v1/chat/completions", json={
        "model": GEMINI_SIGNING, "messages": [question], "tools": [WEATHER_TOOL]}))
    assert first.status_code == 200, first.text
    message = first.json()["choices"][0]["message"]
    call = message["tool_calls"][0]
    emulator.state.received.clear()
    second = await trio.to_thread.run_sync(partial(b.post, "/v1/chat/completions", json={
        "model": GEMINI_SIGNING, "tools": [WEATHER_TOOL], "messages": [
            question, message,
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"}]}))
    assert second.status_code == 200, second.text
    replayed = [r.body for r in emulator.state.received if "generatecontent" in r.path.lower()]
    parts = replayed[-1]["request"]["contents"][1]["parts"]
    signatures = [p.get("thoughtSignature") for p in parts if "functionCall" in p]
    assert signatures and signatures[0] != "skip_thought_signature_validator"

    # a stored response made on A is continued on C, read on B
    made = await trio.to_thread.run_sync(partial(a.post, "/v1/responses", json={
        "model": MODEL, "input": "my name is Ada"}))
    assert made.status_code == 200, made.text
    response_id = made.json()["id"]
    emulator.state.received.clear()
    follow = await trio.to_thread.run_sync(partial(c.post, "/v1/responses", json={
        "model": MODEL, "input": "what is my name?", "previous_response_id": response_id}))
    assert follow.status_code == 200, follow.text
    sent = [r.body for r in emulator.state.received if "generatecontent" in r.path.lower()]
    assert "my name is Ada" in str(sent[-1]["request"]["contents"])
    got = await trio.to_thread.run_sync(partial(b.get, f"/v1/responses/{response_id}"))
    assert got.status_code == 200 and got.json()["id"] == response_id


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _replica_ids(replica: Replica, connections: int = 30) -> set[str]:
    # a fresh connection each time: whichever worker accepts it answers
    return {str(replica.health()["replica"]) for _ in range(connections)}


async def start_workers(emulator: RunningEmulator, redis_server: RedisServer,
                        tmp_path: Path) -> tuple[Replica, Path]:
    """`gateway serve --workers 2` on shared state; its config file, to break it."""
    accounts = tmp_path / "accounts.json"
    await write_demo_accounts(str(accounts))
    config = tmp_path / "workers.toml"
    replica_config(config, emulator=emulator.url, accounts=accounts, redis=redis_server.url)
    server = await trio.to_thread.run_sync(partial(
        start_replica, "W", config, tmp_path, ("--workers", "2")))
    return server, config


async def test_serve_workers_share_one_socket_and_the_pool(
    emulator: RunningEmulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    server, _ = await start_workers(emulator, redis_server, tmp_path)
    try:
        await until(lambda: len(_replica_ids(server)) == 2, "both workers answer")
        workers = _children(server.proc.pid)
        assert len(workers) == 2
        # a 429 one worker sees cools the account for the other
        emulator.state.add_fault(Fault("rate_limit", account=DEMO1, times=1, reset_seconds=120))
        assert (await ask_async(server, "to whichever worker")).status_code == 200
        await until(lambda: all(cooling(server, DEMO1) > 100 for _ in range(10)),
                    "every worker sees demo1 cooling")
        # a worker that dies is started again
        before = await trio.to_thread.run_sync(_replica_ids, server)
        os.kill(workers[0], signal.SIGKILL)
        await until(lambda: len(_children(server.proc.pid)) == 2
                    and _replica_ids(server) - before, "the worker restarted", seconds=20)
        assert any("worker 0 exited" in line or "worker 1 exited" in line
                   for line in server.lines)
    finally:
        await trio.to_thread.run_sync(server.stop)
    assert server.proc.returncode == 0
    assert not _children(server.proc.pid)


def test_workers_without_redis_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "no-redis.toml"
    config.write_text('[server]\nworkers = 2\n')
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "serve"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert done.returncode == 2
    assert "needs state.redis_url" in done.stderr and "Traceback" not in done.stderr


async def test_what_was_cleared_or_revived_during_an_outage_does_not_come_back(
    replicas: StartReplicas, emulator: RunningEmulator, redis_server: RedisServer
) -> None:
    a, b = await replicas(2)
    emulator.state.add_fault(Fault("rate_limit", account=DEMO1, times=1, reset_seconds=120))
    assert (await ask_async(a, "cool demo1")).status_code == 200
    emulator.state.add_fault(Fault("invalid_grant", account=DEMO2))
    await trio.to_thread.run_sync(partial(a.post, "/refresh-token", json={"email": DEMO2}))
    await until(lambda: cooling(b, DEMO1) > 100 and b.limits()[DEMO2]["status"] == "invalid",
                "B has the cooldown and the mark")
    emulator.state.clear_faults()
    redis_server.pause()
    try:
        # while Redis hangs, A learns the quota is back and demo2's grant lives again
        cleared = await trio.to_thread.run_sync(partial(a.post, "/refresh-token"))
        assert cleared.json()["results"][DEMO2]["status"] == "refreshed"
        assert cooling(a, DEMO1) == 0
        await until(lambda: a.health()["state"] == "local-fallback", "A on local state")
    finally:
        redis_server.resume()
    await until(lambda: a.health()["state"] == "redis" and b.health()["state"] == "redis",
                "both back on Redis")
    # A's news of the outage wins over what Redis and B held from before it
    await until(lambda: cooling(b, DEMO1) == 0 and b.limits()[DEMO2]["status"] != "invalid",
                "B learned the clear and the revival")
    await trio.sleep(1.0)  # a resync round later, still so
    assert cooling(a, DEMO1) == 0 and a.limits()[DEMO2]["status"] == "ok"
    assert cooling(b, DEMO1) == 0 and b.limits()[DEMO2]["status"] != "invalid"


async def test_a_stopping_replica_hands_the_lease_back_at_once(
    replicas: StartReplicas, redis_server: RedisServer
) -> None:
    group = await replicas(2, lease_seconds=30)
    holder = await until(
        lambda: next((r for r in group if r.health().get("probeLease")), None), "a holder")
    other = next(r for r in group if r is not holder)
    await trio.to_thread.run_sync(holder.stop)  # SIGTERM: a graceful stop
    assert holder.proc.returncode == 0
    await until(lambda: other.health().get("probeLease"), "the other takes the lease",
                seconds=5)  # far less than the 30 s TTL
    assert any("handed the probe lease back" in line for line in holder.lines)


async def test_hostile_messages_and_keys_change_nothing(
    replicas: StartReplicas, emulator: RunningEmulator, redis_server: RedisServer
) -> None:
    from gateway.accounts.model import account_handle

    a, b = await replicas(2)
    emulator.state.add_fault(Fault("rate_limit", account=DEMO1, times=1, reset_seconds=120))
    assert (await ask_async(a, "cool demo1")).status_code == 200
    await until(lambda: cooling(b, DEMO1) > 100, "B sees the cooldown")
    handle = account_handle(DEMO2)
    for message in (
        "not json", "[1, 2]", '{"kind": "cleared", "account": "acct-nobody"}',
        f'{{"kind": "cooldown", "account": "{handle}", "model": "{MODEL}", "ttl": 1e999}}',
        f'{{"kind": "cooldown", "account": "{handle}", "model": "{MODEL}", "ttl": {"9" * 400}}}',
        f'{{"kind": "cooldown", "account": "{handle}", "model": "{MODEL}", "ttl": -5}}',
        f'{{"kind": "invalid", "account": "{handle}", "reason": 5, "grant": null}}',
        f'{{"kind": "session", "account": "{handle}"}}',
        '{"kind": "response-deleted", "id": 17}',
    ):
        redis_server.command("PUBLISH", "gateway:events", message)
    redis_server.command("SET", f"gateway:cd:{handle}:{MODEL}", "not-a-number", "PX", "60000")
    redis_server.command("SET", f"gateway:invalid:{handle}", "{broken", "PX", "60000")
    redis_server.command("SET", f"gateway:probe:{handle}", '{"answer": [1]}', "PX", "60000")
    await trio.sleep(0.5)
    for replica in (a, b):
        assert replica.health()["state"] == "redis"
        assert cooling(replica, DEMO1) > 100  # the bogus "cleared" cleared nothing
        assert cooling(replica, DEMO2) == 0 and replica.limits()[DEMO2]["status"] == "ok"
    # a blip: the resync reads those keys and must still come back
    redis_server.kill()
    redis_server.start()
    redis_server.command("SET", f"gateway:cd:{handle}:{MODEL}", "not-a-number", "PX", "60000")
    redis_server.command("SET", f"gateway:invalid:{handle}", "{broken", "PX", "60000")
    for replica in (a, b):
        await until(lambda r=replica: r.health()["state"] == "redis",
                    f"{replica.name} back on Redis", seconds=15)
        assert replica.limits()[DEMO2]["status"] == "ok"  # the broken mark is no mark


async def test_a_deleted_response_is_gone_from_every_replica(
    replicas: StartReplicas,
) -> None:
    a, b, c = await replicas()
    big = "lorem ipsum " * 300_000  # ~3.6 MB stored: written by the outbox, not in a read
    made = await trio.to_thread.run_sync(partial(a.post, "/v1/responses", json={
        "model": MODEL, "input": big}))
    assert made.status_code == 200, made.text
    response_id = made.json()["id"]
    await until(lambda: b.get(f"/v1/responses/{response_id}").status_code == 200,
                "B reads it (and keeps a copy)")
    assert a.health()["state"] == "redis"
    gone = await trio.to_thread.run_sync(partial(
        httpx.delete, f"{a.url}/v1/responses/{response_id}", timeout=10))
    assert gone.status_code == 200, gone.text
    for replica in (b, c):
        await until(lambda r=replica: r.get(f"/v1/responses/{response_id}").status_code == 404,
                    f"gone on {replica.name}", seconds=3)
    follow = await trio.to_thread.run_sync(partial(b.post, "/v1/responses", json={
        "model": MODEL, "input": "again?", "previous_response_id": response_id}))
    assert follow.status_code in (400, 404)


def test_a_redis_url_that_cannot_work_is_refused_without_showing_it(tmp_path: Path) -> None:
    from gateway.config import ConfigError, load_config

    for url in ("redis://:hunter2@h:notaport/0", "redis://:hunter2@h:6379/x",
                "http://:hunter2@h:6379", "redis://:hunter2@/0"):
        with pytest.raises(ConfigError) as caught:
            load_config(environ={"GATEWAY_STATE_REDIS_URL": url})
        assert "hunter2" not in str(caught.value) and "state.redis_url" in str(caught.value)
    assert load_config(environ={"GATEWAY_STATE_REDIS_URL": "rediss://:pw@h:6380/2"})


async def test_workers_that_cannot_stay_up_stop_the_gateway(
    emulator: RunningEmulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    server, config = await start_workers(emulator, redis_server, tmp_path)
    try:
        config.write_text("this is [not toml")  # every new worker fails at once
        for pid in _children(server.proc.pid):
            os.kill(pid, signal.SIGKILL)
        code = await trio.to_thread.run_sync(partial(server.proc.wait, 60))
    finally:
        await trio.to_thread.run_sync(server.stop)
    assert code == 1
    assert any("times in a row" in line for line in server.lines)


@pytest.mark.parametrize("redis", ["down", "hung"])
async def test_a_replica_starts_and_serves_while_redis_is_down_or_hung(
    replicas: StartReplicas, redis_server: RedisServer, redis: str
) -> None:
    if redis == "down":
        redis_server.kill()
    else:
        redis_server.pause()  # accepts connections, answers nothing
    try:
        started = time.monotonic()
        (a,) = await replicas(1, ready=False)
        assert time.monotonic() - started < 15
        assert a.health()["state"] == "local-fallback"
        assert (await ask_async(a, "redis is not there")).status_code == 200
    finally:
        if redis == "down":
            redis_server.start()
        else:
            redis_server.resume()
    await until(lambda: a.health()["state"] == "redis", "on Redis once it is back")
    noisy = [line for line in a.lines if "Retry attempt" in line or "Traceback" in line]
    assert not noisy, "".join(a.lines)
    assert sum("Redis unavailable" in line for line in a.lines) == 1
