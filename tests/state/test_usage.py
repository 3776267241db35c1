"""The usage history: batching per hour, upserts across flushes, retention, the schema
version, what a crash loses, and the checks on what callers ask for."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway import errors
from gateway.state import usage as usage_module
from gateway.state.requests import RequestLog, RequestRecord
from gateway.state.usage import (
    SCHEMA_VERSION,
    UsageHistory,
    counts_as_usage,
    open_database,
    open_for_reading,
    parse_group_by,
    parse_time,
    query_usage,
)

DAY = 86400
# 05:00 UTC three days ago: inside the default retention, never near a day's end
T0 = float((int(time.time()) // DAY - 3) * DAY + 5 * 3600)


def chat(at: float = T0, **fields: Any) -> RequestRecord:
    values: dict[str, Any] = {
        "face": "openai", "method": "POST", "route": "/v1/chat/completions", "status": 200,
        "latency_ms": 12.0, "model_asked": "gemini-flash", "model_served": "gemini-3-flash",
        "account": "acct-1", "input_tokens": 10, "output_tokens": 5, "cached_tokens": 2,
        "thinking_tokens": 1, **fields,
    }
    return RequestRecord(at=at, **values)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM usage ORDER BY hour, account, model, key_label").fetchall()


async def started(nursery: trio.Nursery, history: UsageHistory) -> UsageHistory:
    await nursery.start(history.run)
    return history


def test_which_records_count() -> None:
    assert counts_as_usage(chat())
    for face in ("anthropic", "responses", "gemini"):
        assert counts_as_usage(chat(face=face, input_tokens=0, output_tokens=0,
                                    cached_tokens=0, thinking_tokens=0, status=500))
    # refused before a model was read (a wrong key, not JSON): not usage
    assert not counts_as_usage(chat(model_asked=None, model_served=None, input_tokens=0,
                                    output_tokens=0, cached_tokens=0, thinking_tokens=0,
                                    status=401))
    # operational routes are not, unless they carry tokens
    admin = RequestRecord(at=T0, face="admin", method="GET", route="/usage", status=200,
                          latency_ms=1.0)
    assert not counts_as_usage(admin)
    assert counts_as_usage(RequestRecord(at=T0, face="other", method="POST", route="/x",
                                         status=200, latency_ms=1.0, output_tokens=3))


async def test_records_are_summed_per_hour_account_model_and_key(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite"
    history = UsageHistory(path, flush_seconds=3600, clock=Clock())
    for at in (T0, T0 + 10, T0 + 3599):
        history.record(chat(at=at))
    history.record(chat(at=T0 + 3600))  # the next hour
    history.record(chat(key_label="key-b"))
    history.record(chat(account="acct-2"))
    history.record(chat(model_served=None, model_asked="nope-1", status=404, input_tokens=0,
                        output_tokens=0, cached_tokens=0, thinking_tokens=0))
    history.record(RequestRecord(at=T0, face="health", method="GET", route="/health",
                                 status=200, latency_ms=0.1))
    assert history.pending == 5
    async with trio.open_nursery() as nursery:
        await started(nursery, history)
        await history.flush()
        assert history.pending == 0
        assert rows(path) == [
            (T0, "acct-1", "-", "-", 1, 1, 0, 0, 0, 0),  # an unknown name: not a row of its own
            (T0, "acct-1", "gemini-3-flash", "-", 3, 0, 30, 15, 6, 3),
            (T0, "acct-1", "gemini-3-flash", "key-b", 1, 0, 10, 5, 2, 1),
            (T0, "acct-2", "gemini-3-flash", "-", 1, 0, 10, 5, 2, 1),
            (T0 + 3600, "acct-1", "gemini-3-flash", "-", 1, 0, 10, 5, 2, 1),
        ]
        report = await history.query(T0, T0 + 2 * 3600, "model")
        nursery.cancel_scope.cancel()
    assert report["group_by"] == ["model"]
    assert report["rows"] == [
        {"model": "-", "requests": 1, "errors": 1, "input_tokens": 0,
         "output_tokens": 0, "cached_tokens": 0, "thinking_tokens": 0},
        {"model": "gemini-3-flash", "requests": 6, "errors": 0, "input_tokens": 60,
         "output_tokens": 30, "cached_tokens": 12, "thinking_tokens": 6},
    ]
    assert report["totals"]["requests"] == 7
    assert report["since"] == usage_module._time_text(T0)


async def test_flushes_add_to_the_hourly_rows(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite"
    history = UsageHistory(path, flush_seconds=3600, clock=Clock())
    async with trio.open_nursery() as nursery:
        await started(nursery, history)
        history.record(chat())
        await history.flush()
        history.record(chat(at=T0 + 60, output_tokens=7))
        history.record(chat(at=T0 + 120))
        await history.flush()
        nursery.cancel_scope.cancel()
    assert rows(path) == [(T0, "acct-1", "gemini-3-flash", "-", 3, 0, 30, 17, 6, 3)]
    # a restart adds to what is there
    again = UsageHistory(path, flush_seconds=3600, clock=Clock())
    async with trio.open_nursery() as nursery:
        await started(nursery, again)
        again.record(chat(at=T0 + 180))
        report = await again.query(T0, T0 + 3600, None)  # the pending batch included
        nursery.cancel_scope.cancel()
    assert report["rows"] == [report["totals"]]
    assert report["totals"] == {"requests": 4, "errors": 0, "input_tokens": 40,
                                "output_tokens": 22, "cached_tokens": 8, "thinking_tokens": 4}


async def test_the_periodic_flush_and_the_one_at_cancellation(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite"
    history = UsageHistory(path, flush_seconds=0.01, clock=Clock())
    async with trio.open_nursery() as nursery:
        await started(nursery, history)
        history.record(chat())
        with trio.fail_after(5):
            while history.pending:
                await trio.sleep(0.01)
        assert len(rows(path)) == 1
        history.flush_seconds = 3600  # no more periodic flushes: only the last one
        await trio.sleep(0.05)
        history.record(chat(account="acct-late"))
        nursery.cancel_scope.cancel()
    assert history.stopped.is_set()
    assert [r[1] for r in rows(path)] == ["acct-1", "acct-late"]


async def test_retention_deletes_old_hours(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite"
    clock = Clock()
    history = UsageHistory(path, flush_seconds=3600, retention_days=2, clock=clock)
    async with trio.open_nursery() as nursery:
        await started(nursery, history)
        for day in range(4):
            history.record(chat(at=T0 + day * DAY))
        await history.flush()
        assert len(rows(path)) == 4
        clock.now = T0 + 3 * DAY + 60  # day 0 is older than two days now, day 1 is not yet
        await history.flush()  # nothing pending: still prunes, once the hour moved on
        assert [r[0] for r in rows(path)] == [T0 + DAY, T0 + 2 * DAY, T0 + 3 * DAY]
        clock.now = T0 + 5 * DAY
        await history.flush()
        nursery.cancel_scope.cancel()
    assert [r[0] for r in rows(path)] == [T0 + 3 * DAY]


async def test_schema_version_and_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "usage.sqlite"
    db = await trio.to_thread.run_sync(open_database, path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = await trio.to_thread.run_sync(open_database, path)  # migrating twice: a no-op
    again.close()
    reader = open_for_reading(path)
    assert query_usage(reader, T0, T0 + 1, ())["totals"]["requests"] == 0
    reader.close()


async def test_a_newer_schema_or_a_bad_file_turns_usage_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    newer = tmp_path / "newer.sqlite"
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    not_a_db = tmp_path / "garbage.sqlite"
    not_a_db.write_bytes(b"this is not a database" * 100)
    a_directory = tmp_path / "dir.sqlite"
    a_directory.mkdir()
    for path in (newer, not_a_db, a_directory):
        caplog.clear()
        history = UsageHistory(path, flush_seconds=0.01)
        log = RequestLog()
        log.listen(history.record)
        with caplog.at_level(logging.WARNING, logger="gateway"):
            async with trio.open_nursery() as nursery:
                await nursery.start(history.run)  # returns at once, never raises
        assert history.disabled and history.stopped.is_set()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "usage history is off" in warnings[0].getMessage()
        log.add(chat())  # requests are still recorded in the log, not in the history
        assert history.pending == 0 and len(log.recent) == 1
        with pytest.raises(errors.NotFound):
            await history.query(T0, T0 + 1, None)
    with sqlite3.connect(newer) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


async def test_a_failed_write_keeps_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "usage.sqlite"
    history = UsageHistory(path, flush_seconds=3600, clock=Clock())
    real = usage_module.write_batch
    failures = [sqlite3.OperationalError("database is locked")] * 2

    def flaky(*args: Any) -> None:
        if failures:
            raise failures.pop()
        real(*args)

    monkeypatch.setattr(usage_module, "write_batch", flaky)
    async with trio.open_nursery() as nursery:
        await started(nursery, history)
        history.record(chat())
        with caplog.at_level(logging.WARNING, logger="gateway"):
            await history.flush()
            history.record(chat(at=T0 + 1))
            await history.flush()
        assert history.pending == 1
        assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1
        await history.flush()
        nursery.cancel_scope.cancel()
    assert rows(path) == [(T0, "acct-1", "gemini-3-flash", "-", 2, 0, 20, 10, 4, 2)]


CRASHING = textwrap.dedent("""
    import sys, trio
    from gateway.state.requests import RequestRecord
    from gateway.state.usage import UsageHistory

    def chat(account):
        return RequestRecord(at=float(sys.argv[2]), face="openai", method="POST", route="/x",
                             status=200, latency_ms=1.0, model_served="m", account=account,
                             input_tokens=10, output_tokens=5)

    async def main():
        history = UsageHistory(sys.argv[1], flush_seconds=3600)
        async with trio.open_nursery() as nursery:
            await nursery.start(history.run)
            for _ in range(3):
                history.record(chat("flushed"))
            await history.flush()
            for _ in range(2):
                history.record(chat("pending"))
            print("ready", flush=True)
            await trio.sleep_forever()

    trio.run(main)
""")


def test_a_crash_loses_only_the_batch_not_yet_written(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite"
    with subprocess.Popen([sys.executable, "-c", CRASHING, str(path), str(T0)],
                          stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    assert rows(path) == [(T0, "flushed", "m", "-", 3, 0, 30, 15, 0, 0)]
    reader = open_for_reading(path)
    try:
        assert query_usage(reader, T0, T0 + 3600, ("account",))["totals"]["requests"] == 3
    finally:
        reader.close()


@pytest.mark.parametrize("given", ["bogus", "model,bogus", "hour,,model", "none,model", "x" * 500])
def test_bad_group_by_is_refused(given: str) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        parse_group_by(given)
    assert caught.value.param == "group_by"
    assert "x" * 30 not in caught.value.message  # a long value is not echoed whole


async def test_bad_group_by_through_the_history(tmp_path: Path) -> None:
    history = UsageHistory(tmp_path / "usage.sqlite")
    with pytest.raises(errors.InvalidRequest):
        await history.query(T0, T0 + 1, ["model", "colour"])
    with pytest.raises(errors.InvalidRequest):
        await history.query(T0 + 1, T0, None)  # since after until


def test_group_by_forms() -> None:
    assert parse_group_by(None) == ()
    assert parse_group_by("") == ()
    assert parse_group_by("none") == ()
    assert parse_group_by(" Day , model,day") == ("day", "model")
    assert parse_group_by(["hour", "key", "account"]) == ("hour", "key", "account")


def test_time_forms() -> None:
    now = T0 + 1234.0
    assert parse_time("1700000000", now=now, name="since") == 1_700_000_000
    assert parse_time("1700000000.5", now=now, name="since") == 1_700_000_000.5
    assert parse_time("2026-05-01T12:00:00Z", now=now, name="since") == 1_777_636_800
    assert parse_time("2026-05-01T14:00:00+02:00", now=now, name="since") == 1_777_636_800
    assert parse_time("2026-05-01T12:00:00", now=now, name="since") == 1_777_636_800  # UTC
    assert parse_time("2026-05-01", now=now, name="since") == 1_777_593_600
    assert parse_time("90m", now=now, name="since") == now - 5400
    assert parse_time("7d", now=now, name="since") == now - 7 * DAY
    for bad in ("yesterday", "nan", "inf", "-5", "1e30", "", "12:00"):
        with pytest.raises(errors.InvalidRequest) as caught:
            parse_time(bad, now=now, name="until")
        assert caught.value.param == "until"


def test_group_by_day_and_key_rows(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite"
    db = open_database(path)
    try:
        batch = {
            (T0, "a", "m", "k1"): usage_module.UsageCounts(1, 0, 1, 1, 0, 0),
            (T0 + 3600, "a", "m", "k1"): usage_module.UsageCounts(2, 1, 2, 2, 0, 0),
            (T0 + DAY, "b", "m", "k2"): usage_module.UsageCounts(4, 0, 4, 4, 0, 0),
        }
        usage_module.write_batch(db, batch, 0)
        report = query_usage(db, T0 - 5 * DAY, T0 + 5 * DAY, ("day", "key"))
    finally:
        db.close()
    day0, day1 = usage_module._day_text(T0), usage_module._day_text(T0 + DAY)
    assert [(r["day"], r["key"], r["requests"], r["errors"]) for r in report["rows"]] == [
        (day0, "k1", 3, 1), (day1, "k2", 4, 0)]
    assert report["totals"]["requests"] == 7


def test_config_section_and_the_default_file(tmp_path: Path) -> None:
    from gateway.config import ConfigError, load_config
    from gateway.state.usage import usage_path

    default = load_config(environ={"GATEWAY_ACCOUNTS_FILE": str(tmp_path / "a.json")})
    assert (default.usage.enabled, default.usage.flush_seconds,
            default.usage.retention_days) == (True, 5.0, 90)
    assert usage_path(default) == tmp_path / "usage.sqlite"
    config = load_config(environ={"GATEWAY_USAGE_ENABLED": "false",
                                  "GATEWAY_USAGE_FILE": str(tmp_path / "u.db"),
                                  "GATEWAY_USAGE_FLUSH_SECONDS": "0.5",
                                  "GATEWAY_USAGE_RETENTION_DAYS": "7"})
    assert config.usage.enabled is False and usage_path(config) == tmp_path / "u.db"
    assert (config.usage.flush_seconds, config.usage.retention_days) == (0.5, 7)
    toml = tmp_path / "gateway.toml"
    toml.write_text("[usage]\nretention_days = 0\n")
    with pytest.raises(ConfigError, match=r"usage\.retention_days"):
        load_config(toml, environ={})
    with pytest.raises(ConfigError, match="GATEWAY_USAGE_FLUSH_SECONDS"):
        load_config(environ={"GATEWAY_USAGE_FLUSH_SECONDS": "soon"})


def test_several_replicas_files_are_summed(tmp_path: Path) -> None:
    """Replicas on several hosts each keep their own file; `gateway usage --file a --file b`
    (and `merged_for_reading`) add them up, row by row."""
    counts = usage_module.UsageCounts
    batches = {
        "a": {(T0, "acct", "m", "-"): counts(2, 1, 10, 5, 0, 0),
              (T0 + DAY, "acct", "m", "-"): counts(1, 0, 1, 1, 0, 0)},
        "b": {(T0, "acct", "m", "-"): counts(3, 0, 20, 7, 4, 1)},
    }
    paths = []
    for name, batch in batches.items():
        path = tmp_path / f"usage-{name}.sqlite"
        db = open_database(path)
        try:
            usage_module.write_batch(db, batch, 0)
        finally:
            db.close()
        paths.append(path)
    merged = usage_module.merged_for_reading(paths)
    try:
        report = query_usage(merged, T0 - DAY, T0 + 5 * DAY, ("day",))
    finally:
        merged.close()
    first = report["rows"][0]
    assert (first["requests"], first["errors"], first["input_tokens"],
            first["output_tokens"], first["cached_tokens"]) == (5, 1, 30, 12, 4)
    assert report["totals"]["requests"] == 6
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "usage", "--file", str(paths[0]), "--file",
         str(paths[1]), "--since", str(T0 - DAY), "--until", str(T0 + 5 * DAY),
         "--group-by", "none", "--json"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "XDG_CONFIG_HOME":
                                                          str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["totals"]["requests"] == 6
    missing = subprocess.run(
        [sys.executable, "-m", "gateway", "usage", "--file", str(paths[0]), "--file",
         str(tmp_path / "nope.sqlite")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "nope.sqlite" in missing.stderr
    assert "Traceback" not in missing.stderr
