"""Usage history: requests and tokens per hour, account, model and API key, in SQLite.

`UsageHistory.record` listens to the request log and adds each record that counts (see
`counts_as_usage`) to a pending batch in memory, summed per (hour, account, model, key
label): synchronous, no I/O, nothing on the request path can fail because of it. `run`
owns the database (stdlib sqlite3, each call in a worker thread through
`trio.to_thread`): it opens or creates the file (mode 0600, WAL, schema migrated by
`PRAGMA user_version`), then every `flush_seconds` writes the batch in one transaction,
adding to the hourly rows already there, and drops rows older than the retention. When it
is cancelled (the gateway stopping) it writes what is pending once more. A crash or a kill
loses at most the batch not yet written, one flush interval of usage. A file that cannot be
opened turns the history off with one warning; the gateway serves on. `query_usage` is the
one reader, shared by `GET /usage` and `gateway usage` (which opens the file itself, so it
works with the gateway stopped).
"""

from __future__ import annotations

import logging
import math
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import trio

from gateway import errors
from gateway.config import Config
from gateway.state.requests import RequestRecord

__all__ = [
    "CHAT_FACES", "GROUPS", "SCHEMA_VERSION", "UsageCounts", "UsageHistory", "UsageSchemaError",
    "counts_as_usage", "merged_for_reading", "open_database", "open_for_reading",
    "parse_group_by", "parse_time", "query_usage", "usage_path",
]

log = logging.getLogger("gateway")

HOUR = 3600
DAY = 24 * HOUR
# The faces that serve a model: each of their requests that named one counts as a request.
CHAT_FACES = frozenset({"anthropic", "openai", "responses", "gemini"})
# What /usage and `gateway usage` can group by ("none" or nothing: one total).
GROUPS = ("hour", "day", "account", "model", "key")
# Another writer (a second gateway on the same file) holding the write lock is waited for
# this long before a flush gives up (and keeps its batch for the next one).
BUSY_TIMEOUT_SECONDS = 5.0
# The last flush at shutdown: shielded from the cancellation that stops the gateway, and
# bounded (the thread itself is bounded by the busy timeout).
FINAL_FLUSH_SECONDS = 10.0
# Distinct rows held in memory while the database cannot be written (disk full, a lock held
# for long): beyond this, new rows are dropped rather than growing without end.
MAX_PENDING_ROWS = 100_000

# Schema migrations: MIGRATIONS[n] takes a database from version n to n + 1 (its
# `PRAGMA user_version`). Append, never edit: files in the field are at every version.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE usage (
            hour INTEGER NOT NULL,          -- epoch seconds at the start of the UTC hour
            account TEXT NOT NULL,          -- the account's hashed handle, '-' for none
            model TEXT NOT NULL,            -- the model served (else asked), '-' for none
            key_label TEXT NOT NULL,        -- the API key's label, '-' without keys
            requests INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,          -- of those, status >= 400
            input_tokens INTEGER NOT NULL DEFAULT 0,    -- not served from the cache
            output_tokens INTEGER NOT NULL DEFAULT 0,   -- thinking included
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            thinking_tokens INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, account, model, key_label)
        ) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_COUNTS = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens",
           "thinking_tokens")
_UPSERT = (
    f"INSERT INTO usage (hour, account, model, key_label, {', '.join(_COUNTS)}) "
    f"VALUES (?, ?, ?, ?, {', '.join('?' for _ in _COUNTS)}) "
    "ON CONFLICT (hour, account, model, key_label) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in _COUNTS)
)
# group name -> its SQL expression and its name in a row
_GROUP_SQL = {
    "hour": ("hour", "hour"),
    "day": (f"hour - hour % {DAY}", "day"),
    "account": ("account", "account"),
    "model": ("model", "model"),
    "key": ("key_label", "key"),
}

RowKey = tuple[int, str, str, str]  # (hour, account, model, key label)


class UsageSchemaError(Exception):
    """The file holds a schema this gateway does not know (written by a newer one)."""


@attrs.define(slots=True)
class UsageCounts:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    thinking_tokens: int = 0

    def add(self, other: UsageCounts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.thinking_tokens += other.thinking_tokens

    def values(self) -> tuple[int, ...]:
        return (self.requests, self.errors, self.input_tokens, self.output_tokens,
                self.cached_tokens, self.thinking_tokens)

    def as_json(self) -> dict[str, int]:
        return dict(zip(_COUNTS, self.values(), strict=True))


def counts_as_usage(record: RequestRecord) -> bool:
    """Whether a request belongs in the usage history: any record that carries tokens, and
    every request to a chat face that named a model, whatever its status (a failed request
    counts as a request and an error, with the tokens it spent, usually none). Requests
    refused before a model was read (a wrong API key, a body that is not JSON) and the
    operational routes (models, health, limits, count_tokens estimates) are not usage."""
    if (record.input_tokens or record.output_tokens or record.cached_tokens
            or record.thinking_tokens):
        return True
    return record.face in CHAT_FACES and (
        record.model_served is not None or record.model_asked is not None
    )


def usage_path(config: Config) -> Path:
    """Where the history lives: `usage.file`, else usage.sqlite beside the accounts file."""
    path = Path(config.usage.file or Path(config.accounts.file).parent / "usage.sqlite")
    return path.expanduser()


def hour_of(at: float) -> int:
    return int(at // HOUR) * HOUR


class UsageHistory:
    """The pending batch in memory and the SQLite file it is written to."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_seconds: float = 5.0,
        retention_days: float = 90,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path).expanduser()
        self.flush_seconds = flush_seconds
        self.retention_days = retention_days
        self._clock = clock
        self._pending: dict[RowKey, UsageCounts] = {}
        self._db: sqlite3.Connection | None = None
        self._lock = trio.Lock()  # one thread at a time on the connection
        self._pruned_before = 0
        self._failing = False
        self._dropping = False
        self.disabled = False  # the file could not be opened: nothing is kept
        self.stopped = trio.Event()  # set when `run` has written its last batch and closed

    @property
    def pending(self) -> int:
        """Rows waiting for the next flush."""
        return len(self._pending)

    def record(self, record: RequestRecord) -> None:
        """Add a finished request to the pending batch (a `RequestLog` listener)."""
        if self.disabled or not counts_as_usage(record):
            return
        # the served model only: the name a client asked for is its own text, and one row per
        # name it makes up (for unknown models) would grow the file without bound
        key = (hour_of(record.at), record.account or "-", record.model_served or "-",
               record.key_label or "-")
        counts = self._pending.get(key)
        if counts is None:
            if len(self._pending) >= MAX_PENDING_ROWS:
                if not self._dropping:
                    log.warning("usage history: %d rows wait for %s; dropping new ones until "
                                "it can be written", len(self._pending), self.path)
                    self._dropping = True
                return
            counts = self._pending[key] = UsageCounts()
        counts.requests += 1
        counts.errors += record.status >= 400
        counts.input_tokens += record.input_tokens
        counts.output_tokens += record.output_tokens
        counts.cached_tokens += record.cached_tokens
        counts.thinking_tokens += record.thinking_tokens

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the database, then flush every `flush_seconds` until cancelled; then flush
        once more and close. Never raises for the database's sake: usage is turned off."""
        try:
            try:
                self._db = await trio.to_thread.run_sync(open_database, self.path)
            except (OSError, sqlite3.Error, UsageSchemaError) as exc:
                self.disabled = True
                self._pending.clear()
                log.warning("usage history is off: %s cannot be opened (%s); requests are "
                            "served but not recorded", self.path, _reason(exc))
                task_status.started()
                return
            task_status.started()
            while True:
                await trio.sleep(self.flush_seconds)
                await self.flush()
        finally:
            with trio.move_on_after(FINAL_FLUSH_SECONDS) as cleanup:
                cleanup.shield = True
                await self.flush()
                await self._close()
            self.stopped.set()

    async def flush(self) -> None:
        """Write the pending batch (and prune old rows) in one transaction. On failure the
        batch goes back into the pending one, for the next flush."""
        if self._db is None:
            return
        prune_before = hour_of(self._clock() - self.retention_days * DAY)
        if not self._pending and prune_before <= self._pruned_before:
            return
        async with self._lock:
            db = self._db
            if db is None:
                return
            batch, self._pending = self._pending, {}
            try:
                await trio.to_thread.run_sync(write_batch, db, batch, prune_before)
            except (OSError, sqlite3.Error) as exc:
                self._merge_back(batch)
                if not self._failing:
                    log.warning("usage history: cannot write %s (%s); kept in memory, retried "
                                "every %gs", self.path, _reason(exc), self.flush_seconds)
                    self._failing = True
                return
            except BaseException:  # cancelled before the thread ran: nothing was written
                self._merge_back(batch)
                raise
        self._pruned_before = prune_before
        if self._failing:
            log.info("usage history: %s written again", self.path)
        self._failing = self._dropping = False

    async def query(
        self, since: float, until: float, group_by: str | Sequence[str] | None
    ) -> dict[str, Any]:
        """Rows and totals between `since` and `until` (epoch seconds), pending batch
        included. Raises `errors.InvalidRequest` for a bad range or group."""
        groups = parse_group_by(group_by)
        check_range(since, until)
        if self._db is None:
            why = ("its file could not be opened (see the gateway log)" if self.disabled
                   else "it is not open")
            raise errors.NotFound(f"usage history is unavailable: {why}")
        await self.flush()
        async with self._lock:
            db = self._db
            if db is None:
                raise errors.NotFound("usage history is unavailable: the gateway is stopping")
            return await trio.to_thread.run_sync(query_usage, db, since, until, groups)

    async def _close(self) -> None:
        async with self._lock:
            db, self._db = self._db, None
            if db is not None:
                await trio.to_thread.run_sync(db.close)

    def _merge_back(self, batch: dict[RowKey, UsageCounts]) -> None:
        for key, counts in batch.items():
            into = self._pending.get(key)
            if into is None:
                self._pending[key] = counts
            else:
                into.add(counts)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


# --- the database (each function runs in a worker thread) ---------------------------------


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating it, mode 0600) and migrate the usage database, in WAL mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # created by us with 0600 before sqlite opens it (sqlite would make it 0644); its -wal
    # and -shm files take the same mode from it
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                         check_same_thread=False)
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"journal mode {mode}, not WAL")
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def schema_version(db: sqlite3.Connection) -> int:
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(db: sqlite3.Connection) -> None:
    """Bring the schema to `SCHEMA_VERSION`, one version per transaction (two gateways
    starting on one file at once: the second sees the first's version under the lock)."""
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = schema_version(db)
            if version > SCHEMA_VERSION:
                raise UsageSchemaError(f"its schema version {version} is newer than this "
                                       f"gateway's ({SCHEMA_VERSION})")
            if version == SCHEMA_VERSION:
                db.execute("COMMIT")
                return
            for statement in MIGRATIONS[version]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def write_batch(
    db: sqlite3.Connection, batch: dict[RowKey, UsageCounts], prune_before: int
) -> None:
    """Add the batch to its hourly rows and delete rows older than `prune_before`, in one
    transaction: all of it is written or none."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany(_UPSERT, [(*key, *counts.values()) for key, counts in batch.items()])
        db.execute("DELETE FROM usage WHERE hour < ?", (prune_before,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def open_for_reading(path: Path) -> sqlite3.Connection:
    """Open an existing usage database read-only (the CLI: the gateway may be running, or
    not); a missing file raises FileNotFoundError, a foreign schema UsageSchemaError."""
    if not path.is_file():
        raise FileNotFoundError(path)
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True,
                         timeout=BUSY_TIMEOUT_SECONDS)
    try:
        try:
            version = schema_version(db)
        except sqlite3.OperationalError:
            # a copy on read-only media, with no -wal/-shm beside it: WAL mode cannot make
            # them, but nothing is writing it either, so it is read as immutable
            db.close()
            db = sqlite3.connect(f"{path.absolute().as_uri()}?immutable=1", uri=True)
            version = schema_version(db)
        if version != SCHEMA_VERSION:
            raise UsageSchemaError(
                "it holds no usage yet" if version == 0 else
                f"its schema version {version} is not this gateway's ({SCHEMA_VERSION})")
    except BaseException:
        db.close()
        raise
    return db


def merged_for_reading(paths: Sequence[Path]) -> sqlite3.Connection:
    """One history summed from several files (replicas on several hosts, each writing its
    own), in memory, for `query_usage`; errors as `open_for_reading`'s, for the first file
    that has one."""
    merged = sqlite3.connect(":memory:", isolation_level=None)
    try:
        migrate(merged)
        for path in paths:
            source = open_for_reading(path)
            try:
                rows = source.execute(
                    f"SELECT hour, account, model, key_label, {', '.join(_COUNTS)} FROM usage"
                ).fetchall()
            finally:
                source.close()
            merged.execute("BEGIN")
            merged.executemany(_UPSERT, rows)
            merged.execute("COMMIT")
    except BaseException:
        merged.close()
        raise
    return merged


def query_usage(
    db: sqlite3.Connection, since: float, until: float, groups: Sequence[str]
) -> dict[str, Any]:
    """The JSON answer of `GET /usage`: hourly rows whose hour starts in [since rounded down
    to its hour, until), summed per group, and their totals."""
    start = hour_of(since)
    columns = [_GROUP_SQL[g] for g in groups]
    sums = ", ".join(f"coalesce(sum({c}), 0)" for c in _COUNTS)
    select = ", ".join([*(expr for expr, _ in columns), sums])
    sql = f"SELECT {select} FROM usage WHERE hour >= ? AND hour < ?"
    if columns:
        order = ", ".join(str(i + 1) for i in range(len(columns)))
        sql += f" GROUP BY {order} ORDER BY {order}"
    rows = []
    totals = UsageCounts()
    for found in db.execute(sql, (start, until)).fetchall():
        counts = UsageCounts(*found[len(columns):])
        totals.add(counts)
        row: dict[str, Any] = {}
        for (_, name), value in zip(columns, found, strict=False):
            row[name] = _hour_text(value) if name == "hour" else (
                _day_text(value) if name == "day" else value)
        rows.append({**row, **counts.as_json()})
    if not columns and not rows:
        rows.append(totals.as_json())
    return {"since": _hour_text(start), "until": _time_text(until), "group_by": list(groups),
            "rows": rows, "totals": totals.as_json()}


def _time_text(at: float) -> str:
    return datetime.fromtimestamp(int(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hour_text(at: float) -> str:
    return _time_text(hour_of(at))


def _day_text(at: float) -> str:
    return datetime.fromtimestamp(int(at), UTC).strftime("%Y-%m-%d")


# --- what callers send ------------------------------------------------------------------

_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_AGO_SECONDS = {"s": 1, "m": 60, "h": HOUR, "d": DAY, "w": 7 * DAY}
_LATEST = 2**36  # far beyond any real date, well inside what datetime and sqlite hold


def parse_time(text: str, *, now: float, name: str) -> float:
    """Epoch seconds from epoch seconds, ISO 8601 (UTC unless it says otherwise) or a
    duration ago (`90m`, `24h`, `7d`, `2w`)."""
    text = text.strip()
    value: float | None = None
    ago = _AGO.fullmatch(text.lower())
    if ago is not None:
        value = now - float(ago.group(1)) * _AGO_SECONDS[ago.group(2)]
    else:
        try:
            value = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                value = None
            else:
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=UTC)
                value = moment.timestamp()
    if value is None or not math.isfinite(value) or not 0 <= value < _LATEST:
        raise errors.InvalidRequest(
            f"{name} must be epoch seconds, an ISO 8601 time (2026-05-01T12:00:00Z) or a "
            "duration ago (90m, 24h, 7d)", param=name)
    return value


def parse_group_by(given: str | Iterable[str] | None) -> tuple[str, ...]:
    """Group names from a comma-separated string or a sequence; none (or "none"): ()."""
    if given is None:
        return ()
    names = given.split(",") if isinstance(given, str) else list(given)
    cleaned = [name.strip().lower() for name in names]
    if cleaned in ([], [""], ["none"]):
        return ()
    unknown = [name for name in cleaned if name not in GROUPS]
    if unknown:
        raise errors.InvalidRequest(
            f"group_by takes {', '.join(GROUPS)} or none (comma separated); "
            f"{_clip(unknown[0])!r} is none of them", param="group_by")
    return tuple(dict.fromkeys(cleaned))


def check_range(since: float, until: float) -> None:
    if since > until:
        raise errors.InvalidRequest("since must not be after until", param="since")


def _clip(text: str) -> str:
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned if len(cleaned) <= 20 else cleaned[:20] + "..."
