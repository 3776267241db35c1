"""The usage history end to end: chat requests from the openai SDK and raw HTTP, then
`GET /usage` totals equal to the usage the responses reported; the history surviving a
restart; `gateway usage` reading the file with the gateway stopped."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import trio

from gateway.app import create_app
from gateway.cli import demo_config, write_demo_accounts
from gateway.config import Config
from gateway.server import serve_gateway
from tests.support import RunningEmulator, RunningGateway, fast_config

KEYS = ("key-alice", "key-bob")
TOKENS = ("input_tokens", "output_tokens", "cached_tokens", "thinking_tokens")


def zero() -> dict[str, int]:
    return {"requests": 0, **dict.fromkeys(TOKENS, 0)}


def add_openai(total: dict[str, int], usage: Any) -> None:
    """Chat Completions' usage: prompt_tokens include the cached ones, completion_tokens
    the reasoning ones (as the history keeps output_tokens)."""
    cached = usage.prompt_tokens_details.cached_tokens or 0
    total["requests"] += 1
    total["input_tokens"] += usage.prompt_tokens - cached
    total["output_tokens"] += usage.completion_tokens
    total["cached_tokens"] += cached
    total["thinking_tokens"] += usage.completion_tokens_details.reasoning_tokens or 0


def add_anthropic(total: dict[str, int], usage: dict[str, Any]) -> None:
    """Messages' usage: input_tokens exclude the cached ones; no thinking count is given
    (the requests here do not think)."""
    total["requests"] += 1
    total["input_tokens"] += usage["input_tokens"]
    total["output_tokens"] += usage["output_tokens"]
    total["cached_tokens"] += usage.get("cache_read_input_tokens") or 0


def added(*totals: dict[str, int]) -> dict[str, int]:
    out = zero()
    for total in totals:
        for name, value in total.items():
            out[name] += value
    return out


async def usage_of(url: str, key: str | None = None, **params: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(url + "/usage", params=params, headers=headers)


async def wait_for_requests(url: str, count: int, key: str | None = None) -> dict[str, Any]:
    """A request is recorded as its handler ends, a moment after the client has read the
    answer: poll until all of them are in."""
    with trio.fail_after(10):
        while True:
            response = await usage_of(url, key)
            assert response.status_code == 200, response.text
            report: dict[str, Any] = response.json()
            if report["totals"]["requests"] >= count:
                return report
            await trio.sleep(0.02)


def only(report: dict[str, Any]) -> dict[str, int]:
    return {name: report["totals"][name] for name in ("requests", *TOKENS)}


async def test_usage_totals_match_what_the_responses_reported(
    start_gateway: Callable[..., Any],
) -> None:
    gateway: RunningGateway = await start_gateway(
        server={"api_keys": KEYS}, usage={"flush_seconds": 0.05})
    per_key = {key: zero() for key in KEYS}
    alice = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEYS[0], max_retries=0,
                          timeout=30)

    def openai_calls() -> None:
        unary = alice.chat.completions.create(
            model="gemini-3-flash", messages=[{"role": "user", "content": "Hello there"}])
        assert unary.usage is not None
        add_openai(per_key[KEYS[0]], unary.usage)
        thinking = alice.chat.completions.create(
            model="claude-opus-4-6-thinking", reasoning_effort="low", max_tokens=4000,
            messages=[{"role": "user", "content": "Think, then answer"}])
        assert thinking.usage is not None
        add_openai(per_key[KEYS[0]], thinking.usage)
        stream = alice.chat.completions.create(
            model="claude-sonnet-4-6", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Stream to me"}])
        usages = [chunk.usage for chunk in stream if chunk.usage is not None]
        assert len(usages) == 1
        add_openai(per_key[KEYS[0]], usages[0])

    await trio.to_thread.run_sync(openai_calls)
    # raw HTTP on the Anthropic face, with the other key: one conversation, two turns (the
    # second hits the upstream's prompt cache)
    turns = [{"role": "user", "content": "A long first question " + "about usage " * 200}]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30,
                                 headers={"x-api-key": KEYS[1]}) as http:
        for _ in range(2):
            response = await http.post("/v1/messages", json={
                "model": "claude-sonnet-4-6", "max_tokens": 200, "messages": turns})
            assert response.status_code == 200, response.text
            body = response.json()
            add_anthropic(per_key[KEYS[1]], body["usage"])
            turns += [{"role": "assistant", "content": body["content"]},
                      {"role": "user", "content": "And then?"}]
        # not usage: operational routes, and a request refused before naming a model
        assert (await http.get("/v1/models")).status_code == 200
        assert (await http.post("/v1/chat/completions", content=b"{not json",
                                headers={"content-type": "application/json"})).status_code == 400
    expected = added(*per_key.values())
    assert expected["thinking_tokens"] > 0 and expected["cached_tokens"] > 0
    report = await wait_for_requests(gateway.url, 5, KEYS[0])
    assert only(report) == expected
    assert report["totals"]["errors"] == 0

    by_key = (await usage_of(gateway.url, KEYS[0], group_by="key,model")).json()
    assert by_key["group_by"] == ["key", "model"]
    keys = sorted({row["key"] for row in by_key["rows"]})
    assert len(keys) == 2 and all(k != "-" and k not in KEYS for k in keys)  # labels only
    for label in keys:
        rows = [row for row in by_key["rows"] if row["key"] == label]
        summed = {name: sum(row[name] for row in rows) for name in ("requests", *TOKENS)}
        assert summed in per_key.values()
    models = {row["model"] for row in by_key["rows"]}
    assert models == {"gemini-3-flash", "claude-opus-4-6-thinking", "claude-sonnet-4-6"}
    by_hour = (await usage_of(gateway.url, KEYS[0], group_by="hour,account")).json()
    assert all(row["hour"].endswith(":00:00Z") and row["account"].startswith("acct-")
               for row in by_hour["rows"])
    assert only(by_hour) == expected

    # what was asked is checked, in the caller's format
    for params in ({"group_by": "colour"}, {"since": "yesterday"},
                   {"since": "2026-05-02T00:00:00Z", "until": "2026-05-01T00:00:00Z"}):
        refused = await usage_of(gateway.url, KEYS[0], **params)
        assert refused.status_code == 400
        assert refused.json()["error"]["type"] == "invalid_request_error"
    assert (await usage_of(gateway.url)).status_code == 401  # an admin route: keys apply
    # a range before any request: nothing
    empty = (await usage_of(gateway.url, KEYS[0], since="2020-01-01T00:00:00Z",
                            until="2020-01-02T00:00:00Z", group_by="none")).json()
    assert empty["rows"] == [empty["totals"]] and not any(empty["totals"].values())


async def test_usage_off(start_gateway: Callable[..., Any]) -> None:
    gateway: RunningGateway = await start_gateway(usage={"enabled": False})
    assert gateway.services.usage is None
    assert (await usage_of(gateway.url)).status_code == 404


async def run_gateway_until(
    emulator: RunningEmulator, accounts: Path, stop: trio.Event,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """A gateway that stops (gracefully, as on SIGTERM) when `stop` is set. Its usage is
    flushed only when it stops: the batch interval is an hour."""
    config = fast_config(demo_config(Config(), emulator.url, str(accounts)),
                         server={"port": 0}, usage={"flush_seconds": 3600})
    app = create_app(config, demo=True)
    await serve_gateway(app, config, shutdown_trigger=stop.wait, task_status=task_status)


async def gateway_cli(*args: str, accounts: Path) -> trio.CompletedProcess[bytes]:
    env = {**os.environ, "GATEWAY_ACCOUNTS_FILE": str(accounts)}
    env.pop("GATEWAY_CONFIG", None)
    return await trio.run_process([sys.executable, "-m", "gateway", "usage", *args],
                                  capture_stdout=True, capture_stderr=True, check=False, env=env)


async def test_usage_survives_a_restart_and_the_cli_reads_it(
    emulator: RunningEmulator, start_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    accounts = tmp_path / "first-accounts.json"
    await write_demo_accounts(str(accounts))
    missing = await gateway_cli(accounts=accounts)
    assert missing.returncode == 1
    assert missing.stderr.decode().count("\n") == 1 and b"no usage history" in missing.stderr
    assert b"Traceback" not in missing.stderr

    first = zero()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(run_gateway_until, emulator, accounts, stop))
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for n, model in enumerate(("gemini-3-flash", "claude-sonnet-4-6", "gemini-3-flash")):
                response = await http.post("/v1/messages", json={
                    "model": model, "max_tokens": 100,
                    "messages": [{"role": "user", "content": f"hello {model}"}]})
                assert response.status_code == 200, response.text
                add_anthropic(first, response.json()["usage"])
                if n == 1:  # GET /usage writes the pending batch first: the third is not
                    assert only(await wait_for_requests(url, 2)) == first
        stop.set()
    # stopped: its last batch was written at shutdown, and the file is the owner's alone
    path = tmp_path / "usage.sqlite"
    assert path.stat().st_mode & 0o777 == 0o600

    table = await gateway_cli("--group-by", "model", accounts=accounts)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.decode().splitlines()
    assert lines[0].split() == ["MODEL", "REQUESTS", "ERRORS", "INPUT", "OUTPUT", "CACHED",
                                "THINKING"]
    assert any(line.startswith("gemini-3-flash ") for line in lines)
    assert any(line.startswith("total ") and line.split()[1] == "3" for line in lines)
    as_json = await gateway_cli("--json", "--since", "1h", "--group-by", "none",
                                accounts=accounts)
    assert as_json.returncode == 0, as_json.stderr
    assert only(json.loads(as_json.stdout)) == first
    bad = await gateway_cli("--group-by", "colour", accounts=accounts)
    assert bad.returncode == 2 and b"--group-by" in bad.stderr

    # a new gateway whose accounts file is in the same directory keeps adding to it
    second: RunningGateway = await start_gateway(usage={"flush_seconds": 0.05})
    assert second.services.usage.path == path
    async with httpx.AsyncClient(base_url=second.url, timeout=30) as http:
        response = await http.post("/v1/messages", json={
            "model": "gemini-3-flash", "max_tokens": 100,
            "messages": [{"role": "user", "content": "hello again"}]})
        assert response.status_code == 200
        add_anthropic(first, response.json()["usage"])
    assert only(await wait_for_requests(second.url, 4)) == first
    # the CLI reads it while that gateway runs (its batches are flushed every 0.05 s)
    with trio.fail_after(10):
        while True:
            running = await gateway_cli("--json", "--group-by", "none", accounts=accounts)
            assert running.returncode == 0, running.stderr
            if json.loads(running.stdout)["totals"]["requests"] == 4:
                break
            await trio.sleep(0.05)
