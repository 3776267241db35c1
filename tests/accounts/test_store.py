"""The accounts file: round trips, permissions, atomic replacement, refusal to clobber."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.accounts.model import SCHEMA_VERSION, Account
from gateway.accounts.store import AccountStore, AccountStoreError

ALICE = Account("alice@example.com", "1//alice-refresh", "proj-a", "free-tier", 1.5)
BOB = Account("bob@example.com", "1//bob-refresh", None, None, 2.0, False, "invalid_grant")


def _leftovers(directory: Path, name: str) -> list[str]:
    """Files beside the store other than itself and its (empty, permanent) lock file."""
    return sorted(p.name for p in directory.iterdir() if p.name not in (name, f".{name}.lock"))


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert AccountStore(tmp_path / "nope" / "accounts.json").load() == []


def test_round_trip_and_format(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    store = AccountStore(path)
    store.save([ALICE, BOB])
    assert store.load() == [ALICE, BOB]
    document = json.loads(path.read_text())
    assert document == {"version": SCHEMA_VERSION, "accounts": [ALICE.to_json(), BOB.to_json()]}
    assert _leftovers(tmp_path, "accounts.json") == []


_emails = st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}\.com", fullmatch=True)
_text = st.text(min_size=1, max_size=20)
_accounts = st.lists(
    st.builds(
        Account,
        email=_emails,
        refresh_token=_text,
        project_id=st.none() | _text,
        tier=st.none() | _text,
        added_at=st.floats(0, 2e9),
        enabled=st.booleans(),
        invalid_reason=st.none() | _text,
    ),
    max_size=5,
    unique_by=lambda a: a.email,
)


@settings(max_examples=50, deadline=None)
@given(accounts=_accounts)
def test_any_accounts_round_trip(tmp_path_factory: pytest.TempPathFactory,
                                 accounts: list[Account]) -> None:
    store = AccountStore(tmp_path_factory.mktemp("store") / "accounts.json")
    store.save(accounts)
    assert store.load() == accounts


def test_modes_0600_file_and_0700_new_directory(tmp_path: Path) -> None:
    path = tmp_path / "config" / "gateway" / "accounts.json"
    old_umask = os.umask(0o022)
    try:
        AccountStore(path).save([ALICE])
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # a replacement is 0600 too, even when the old file had been loosened
    path.chmod(0o644)
    AccountStore(path).save([BOB])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


class _FailsMidWrite(AccountStore):
    def _write_all(self, fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")


class _CrashesBeforeReplace(AccountStore):
    def _before_replace(self, temp: Path) -> None:
        assert temp.exists()
        raise KeyboardInterrupt  # the process is being killed between write and rename


def test_failed_write_leaves_old_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    AccountStore(path).save([ALICE])
    before = path.read_bytes()
    with pytest.raises(AccountStoreError, match="No space left on device") as info:
        _FailsMidWrite(path).save([ALICE, BOB])
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    assert AccountStore(path).load() == [ALICE]
    assert _leftovers(tmp_path, "accounts.json") == []


def test_crash_between_write_and_replace_leaves_old_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    AccountStore(path).save([ALICE])
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        _CrashesBeforeReplace(path).save([BOB])
    assert path.read_bytes() == before
    assert _leftovers(tmp_path, "accounts.json") == []


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"version": 1, "accounts": [', "is not valid JSON"),
        (b"", "is not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "is not a JSON object"),
        (b'{"version": 2, "accounts": []}', "schema version 2"),
        (b'{"accounts": []}', "schema version None"),
        (b'{"version": 1}', "no 'accounts' list"),
        (b'{"version": 1, "accounts": [{"email": "x@y.z"}]}', "entry 0: account x@y.z"),
        (b'{"version": 1, "accounts": [7]}', "entry 0: account entry is not an object"),
    ],
)
def test_unreadable_file_raises_and_is_never_overwritten(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "accounts.json"
    path.write_bytes(content)
    store = AccountStore(path)
    with pytest.raises(AccountStoreError, match=problem) as info:
        store.load()
    assert str(path) in str(info.value)
    for attempt in (lambda: store.save([ALICE]), lambda: store.upsert(ALICE),
                    lambda: AccountStore(path).save([])):
        with pytest.raises(AccountStoreError, match="refusing to overwrite"):
            attempt()
        assert path.read_bytes() == content
    store.save([ALICE], force=True)
    assert store.load() == [ALICE]


def test_duplicate_emails_rejected(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    entry = ALICE.to_json()
    path.write_text(json.dumps({"version": 1, "accounts": [entry, entry]}))
    with pytest.raises(AccountStoreError, match=r"entry 1: duplicate account alice@example\.com"):
        AccountStore(path).load()
    with pytest.raises(ValueError, match="same email twice"):
        AccountStore(tmp_path / "other.json").save([ALICE, ALICE])


def test_errors_never_show_tokens(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    path.write_text('{"version": 1, "accounts": [{"refresh_token": "1//secret-token"')
    with pytest.raises(AccountStoreError) as info:
        AccountStore(path).load()
    assert "secret" not in str(info.value)
    assert "1//" not in repr(ALICE)


def test_upsert_replaces_in_place_and_remove(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "accounts.json")
    store.upsert(ALICE)
    store.upsert(BOB)
    renewed = Account(ALICE.email, "1//new", "proj-a", "free-tier", 1.5)
    store.upsert(renewed)
    assert store.load() == [renewed, BOB]
    assert store.remove(ALICE.email) is True
    assert store.remove(ALICE.email) is False
    assert store.load() == [BOB]


def test_concurrent_saves_and_loads_from_threads(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    versions = [[Account(f"user{i}-{j}@example.com", f"tok-{i}-{j}") for j in range(20)]
                for i in range(6)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(versions) + 2)

    def writer(accounts: list[Account]) -> None:
        store = AccountStore(path)  # separate stores for one file, as server and CLI would be
        start.wait()
        try:
            for _ in range(15):
                store.save(accounts)
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        store = AccountStore(path)
        start.wait()
        try:
            for _ in range(60):
                loaded = store.load()
                assert loaded == [] or loaded in versions
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(v,)) for v in versions]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert AccountStore(path).load() in versions
    assert _leftovers(tmp_path, "accounts.json") == []


def test_concurrent_upserts_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    accounts = [Account(f"user{i}@example.com", f"tok-{i}") for i in range(24)]
    threads = [threading.Thread(target=AccountStore(path).upsert, args=(a,)) for a in accounts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(AccountStore(path).load(), key=lambda a: a.email) == sorted(
        accounts, key=lambda a: a.email
    )


async def test_async_wrappers(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "accounts.json")
    assert await store.aload() == []
    await store.asave([ALICE])
    await store.aupsert(BOB)
    assert await store.aload() == [ALICE, BOB]
    assert await store.aremove(BOB.email) is True
    changed = await store.aupdate(lambda accounts: [*accounts, BOB])
    assert changed == [ALICE, BOB] == await store.aload()


def test_writers_in_two_processes_never_lose_a_change(tmp_path: Path) -> None:
    """Concurrent load-modify-save from separate processes: every upsert survives."""
    import subprocess
    import sys

    path = tmp_path / "accounts.json"
    script = (
        "import sys\n"
        "from gateway.accounts.model import Account\n"
        "from gateway.accounts.store import AccountStore\n"
        "store = AccountStore(sys.argv[1])\n"
        "for i in range(40):\n"
        "    store.upsert(Account(f'{sys.argv[2]}-{i}@example.com', 'token'))\n"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(path), name])
        for name in ("left", "right", "third")
    ]
    assert all(w.wait(timeout=120) == 0 for w in workers)
    emails = {a.email for a in AccountStore(path).load()}
    assert len(emails) == 120
    assert not list(tmp_path.glob(".accounts.json.*.tmp"))


def test_stale_temp_files_are_removed_by_the_next_writer(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    stale = tmp_path / ".accounts.json.deadbeef.tmp"
    stale.write_text("half-written secrets")
    AccountStore(path).save([])
    assert not stale.exists()
