"""The accounts file: loading it strictly and replacing it atomically.

The file holds refresh tokens, so it is created with mode 0600 (its directory 0700) and is
only ever replaced whole: a new version is written to a temporary file beside it, flushed
and fsynced, then renamed over the old one, and the directory is fsynced so the rename
itself survives a crash. A reader therefore sees the old file or the new one, never half
of either. A file that cannot be read (bad JSON, another schema version, a malformed entry)
raises `AccountStoreError` naming the file and the problem, and is never overwritten unless
the caller says `force=True`: losing someone's tokens to a parse error is worse than
stopping. All I/O here blocks; async callers use the `a*` methods, which run it in a worker
thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import trio

from gateway.accounts.model import SCHEMA_VERSION, Account
from gateway.files import fsync_directory

AccountsChange = Callable[[list[Account]], list[Account]]

# One lock per file for the whole process: stores built separately for the same path (the
# server's supervisor and an admin handler, say) still serialise their load-modify-save.
_FILE_LOCKS: dict[Path, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(path, threading.Lock())


class AccountStoreError(Exception):
    """The accounts file cannot be read or must not be written. The message names the file."""


class AccountStore:
    """The accounts file at `path`, read and written whole."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        self._lock = _lock_for(self.path)

    def __repr__(self) -> str:
        return f"AccountStore({str(self.path)!r})"

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the file for a load-modify-save: against other threads (the lock) and other
        processes (an flock on a lock file beside it), so the server's supervisor and
        `gateway accounts add` in another shell never overwrite each other's change."""
        with self._lock:
            directory = self.path.parent
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(directory / f".{self.path.name}.lock",
                             os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise self._error(f"cannot be locked ({exc.strerror or type(exc).__name__})"
                                  ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # Holding the lock, any temp file left beside the store is from a writer that
                # died mid-write: remove it (it holds refresh tokens).
                for stale in directory.glob(f".{self.path.name}.*.tmp"):
                    with contextlib.suppress(OSError):
                        stale.unlink()
                yield
            finally:
                os.close(fd)  # releases the flock

    # -- reading ---------------------------------------------------------------------------

    def load(self) -> list[Account]:
        """The stored accounts; [] when the file does not exist yet."""
        with self._lock:
            return self._read()

    def _read(self) -> list[Account]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._error(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise self._error("is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            # The position only, never the document: it holds refresh tokens.
            where = f"line {exc.lineno} column {exc.colno}"
            raise self._error(f"is not valid JSON ({exc.msg} at {where})") from None
        return self._parse(data)

    def _parse(self, data: Any) -> list[Account]:
        if not isinstance(data, dict):
            raise self._error("is not a JSON object with 'version' and 'accounts'")
        version = data.get("version")
        if version != SCHEMA_VERSION:
            raise self._error(
                f"has schema version {version!r}, this gateway reads version {SCHEMA_VERSION}"
            )
        entries = data.get("accounts")
        if not isinstance(entries, list):
            raise self._error("has no 'accounts' list")
        accounts: list[Account] = []
        seen: set[str] = set()
        for index, entry in enumerate(entries):
            try:
                account = Account.from_json(entry)
            except ValueError as exc:
                raise self._error(f"entry {index}: {exc}") from None
            if account.email in seen:
                raise self._error(f"entry {index}: duplicate account {account.email}")
            seen.add(account.email)
            accounts.append(account)
        return accounts

    def _error(self, problem: str) -> AccountStoreError:
        return AccountStoreError(f"accounts file {self.path} {problem}")

    # -- writing ---------------------------------------------------------------------------

    def save(self, accounts: Sequence[Account], *, force: bool = False) -> None:
        """Replace the file with `accounts`, atomically.

        Refuses (AccountStoreError) to replace a file that exists but cannot be loaded, so a
        file this version does not understand is never lost; `force=True` replaces it anyway.
        """
        with self._exclusive():
            if not force:
                self._read_before_write()
            self._replace(accounts)

    def _read_before_write(self) -> list[Account]:
        try:
            return self._read()
        except AccountStoreError as exc:
            raise AccountStoreError(
                f"{exc}; refusing to overwrite it (fix or move the file first)"
            ) from None

    def _replace(self, accounts: Sequence[Account]) -> None:
        emails = [a.email for a in accounts]
        if len(set(emails)) != len(emails):
            raise ValueError("accounts to save contain the same email twice")
        document = {"version": SCHEMA_VERSION, "accounts": [a.to_json() for a in accounts]}
        data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()

        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error(f"cannot be written: directory {directory} cannot be created "
                              f"({exc.strerror or type(exc).__name__})") from None
        temp = directory / f".{self.path.name}.{secrets.token_hex(6)}.tmp"
        try:
            # 0600 from the first byte: a chmod after writing would leave a window in which
            # the tokens are readable by others.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                self._write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._before_replace(temp)
            os.replace(temp, self.path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            if isinstance(exc, OSError):
                reason = exc.strerror or type(exc).__name__
                raise self._error(f"cannot be written ({reason})") from exc
            raise
        fsync_directory(directory)

    def _write_all(self, fd: int, data: bytes) -> None:
        """Write all of `data` to `fd`. A seam for tests that simulate a failed write."""
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def _before_replace(self, temp: Path) -> None:
        """Called once the new version is durable, before it replaces the old. A test seam."""

    # -- load-modify-save ------------------------------------------------------------------

    def update(self, change: AccountsChange) -> list[Account]:
        """Load, apply `change`, save, holding the file's lock throughout; returns the result."""
        with self._exclusive():
            accounts = change(self._read_before_write())
            self._replace(accounts)
            return accounts

    def upsert(self, account: Account) -> None:
        """Store `account`, replacing the stored one with the same email (keeping its place)."""

        def change(accounts: list[Account]) -> list[Account]:
            for index, stored in enumerate(accounts):
                if stored.email == account.email:
                    accounts[index] = account
                    return accounts
            return [*accounts, account]

        self.update(change)

    def remove(self, email: str) -> bool:
        """Delete the account with `email`; False (and no write) when there is none."""
        with self._exclusive():
            accounts = self._read_before_write()
            kept = [a for a in accounts if a.email != email]
            if len(kept) == len(accounts):
                return False
            self._replace(kept)
            return True

    # -- async wrappers --------------------------------------------------------------------

    async def aload(self) -> list[Account]:
        return await trio.to_thread.run_sync(self.load)

    async def asave(self, accounts: Sequence[Account], *, force: bool = False) -> None:
        await trio.to_thread.run_sync(lambda: self.save(accounts, force=force))

    async def aupdate(self, change: AccountsChange) -> list[Account]:
        return await trio.to_thread.run_sync(self.update, change)

    async def aupsert(self, account: Account) -> None:
        await trio.to_thread.run_sync(self.upsert, account)

    async def aremove(self, email: str) -> bool:
        return await trio.to_thread.run_sync(self.remove, email)
