"""The account commands behind `gateway accounts add | list | remove | verify | import`.

Each command takes the validated `Config` and talks to the user only through the callables
it is given (`write`, `read_line`, `open_browser`), so the command line, tests and any other
front end share them. Adding signs in with Google (browser with a loopback redirect, or a
URL to visit and a redirect to paste back), learns the email and the Cloud Code project, and
stores the account; verifying refreshes every stored token and marks revoked ones invalid;
importing merges another proxy's accounts file (antigravity-claude-proxy's format) into ours.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

import attrs
import trio

from gateway.accounts.model import Account
from gateway.accounts.oauth import (
    CALLBACK_PATH,
    AuthorizationCode,
    InvalidGrant,
    OAuthError,
    check_client_configured,
    discover_project,
    exchange_code,
    fetch_email,
    new_authorization,
    parse_pasted_redirect,
    refresh_access_token,
    run_local_callback_flow,
)
from gateway.accounts.store import AccountStore, AccountStoreError
from gateway.config import Config
from gateway.upstream.client import CloudCodeClient, make_http_client

# Where Google sends the browser when nothing listens for it (`--no-browser`): the page fails
# to load, and the user copies its address back. Any loopback port is accepted by Google for
# installed-app clients; a fixed one keeps the instructions stable.
PASTE_REDIRECT_URI = f"http://127.0.0.1:8085{CALLBACK_PATH}"
SIGN_IN_TIMEOUT_SECONDS = 300.0

ReadLine = Callable[[str], Awaitable[str]] | Callable[[str], str]
Write = Callable[[str], None]


async def _read(read_line: ReadLine, prompt: str) -> str:
    # A blocking reader (input()) runs in a worker thread so the event loop keeps serving;
    # an async one only creates its coroutine there, and is awaited here.
    answer = await trio.to_thread.run_sync(read_line, prompt, abandon_on_cancel=True)
    if inspect.isawaitable(answer):
        answer = await answer
    if not isinstance(answer, str):
        raise TypeError("read_line must return a string")
    return answer


async def _sign_in(
    config: Config, *, no_browser: bool, open_browser: Callable[[str], object],
    read_line: ReadLine, write: Write,
) -> AuthorizationCode:
    if no_browser:
        request = new_authorization(config.oauth, redirect_uri=PASTE_REDIRECT_URI)
        write(
            "Open this URL in a browser and sign in with the Google account to add:\n\n"
            f"  {request.url}\n\n"
            "The browser then goes to a page on 127.0.0.1 that does not load; that is\n"
            "expected. Copy that page's full address from the address bar."
        )
        pasted = await _read(read_line, "Paste the address (or just the code): ")
        code = parse_pasted_redirect(pasted, request.state)
        return AuthorizationCode(code, request.redirect_uri, request.code_verifier)

    def show_and_open(url: str) -> object:
        write(
            "Opening a browser to sign in with Google. If none opens, visit:\n\n"
            f"  {url}\n"
        )
        return open_browser(url)

    return await run_local_callback_flow(
        config.oauth, open_browser=show_and_open, timeout=SIGN_IN_TIMEOUT_SECONDS
    )


async def add_account(
    config: Config,
    *,
    no_browser: bool,
    open_browser: Callable[[str], object],
    read_line: ReadLine,
    write: Write,
) -> Account:
    """Sign in with Google, find the account's project, and store it.

    Adding an email that is already stored replaces its refresh token, project and tier and
    clears its invalid mark; its place in the file, `added_at` and `enabled` stay.
    Raises ConfigError (no OAuth client), OAuthError, or AccountStoreError.
    """
    check_client_configured(config.oauth)
    store = AccountStore(config.accounts.file)
    # Before the user spends time in a browser: an unreadable file would refuse the save.
    stored = {a.email: a for a in await store.aload()}

    authorization = await _sign_in(
        config, no_browser=no_browser, open_browser=open_browser, read_line=read_line,
        write=write,
    )
    async with make_http_client(config.upstream) as http:
        grant = await exchange_code(
            http,
            config.oauth,
            code=authorization.code,
            redirect_uri=authorization.redirect_uri,
            code_verifier=authorization.code_verifier,
        )
        email = await fetch_email(http, config.oauth, grant.access_token)
        write(f"Signed in as {email}; looking up its Cloud Code project...")
        project, tier = await discover_project(
            CloudCodeClient(http, config.upstream), config.upstream.base_urls, grant.access_token
        )

    previous = stored.get(email)
    if previous is None:
        account = Account(email, grant.refresh_token, project, tier, added_at=time.time())
    else:
        account = attrs.evolve(
            previous,
            refresh_token=grant.refresh_token,
            project_id=project,
            tier=tier,
            invalid_reason=None,
        )
        write(f"{email} was already stored; its sign-in has been renewed.")
        if not account.enabled:
            write(f"Note: {email} is disabled in {store.path} (\"enabled\": false).")
    await store.aupsert(account)
    return account


def _status(account: Account) -> str:
    if account.invalid_reason:
        return f"invalid ({account.invalid_reason})"
    return "enabled" if account.enabled else "disabled"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def list_accounts(config: Config, snapshot: Mapping[str, str] | None = None) -> str:
    """The stored accounts as an aligned table.

    `snapshot` optionally maps an email to live notes from a running server (cooldowns,
    quotas), shown in a last column.
    """
    store = AccountStore(config.accounts.file)
    accounts = store.load()
    if not accounts:
        return f"No accounts in {store.path}. Add one with: gateway accounts add"
    header: tuple[str, ...] = ("EMAIL", "TIER", "PROJECT", "STATUS")
    rows: list[tuple[str, ...]] = [
        (a.email, a.tier or "-", a.project_id or "-", _status(a)) for a in accounts
    ]
    if snapshot is not None:
        header = (*header, "LIVE")
        rows = [(*row, snapshot.get(a.email, "-")) for row, a in zip(rows, accounts, strict=True)]
    return _table(header, rows)


def remove_account(config: Config, email: str) -> bool:
    """Forget the account with `email`; False when there is none."""
    return AccountStore(config.accounts.file).remove(email)


async def verify_accounts(config: Config) -> str:
    """Refresh every stored account's token and report, one line per account.

    A revoked grant (invalid_grant) marks the account invalid in the store; a successful
    refresh clears an earlier mark. Other failures (network, server) change nothing.
    """
    store = AccountStore(config.accounts.file)
    accounts = await store.aload()
    if not accounts:
        return f"No accounts in {store.path}. Add one with: gateway accounts add"
    check_client_configured(config.oauth)
    results: dict[str, str] = {}
    invalid: dict[str, str] = {}
    revived: set[str] = set()
    for account in accounts:
        if not account.enabled:
            results[account.email] = "disabled, not checked"
            continue
        try:
            token = await refresh_access_token(config.oauth, account.refresh_token)
        except InvalidGrant as exc:
            invalid[account.email] = exc.code or "invalid_grant"
            results[account.email] = f"INVALID: {exc}"
        except OAuthError as exc:
            results[account.email] = f"error: {exc}"
        else:
            minutes = max(0, round((token.expiry - time.time()) / 60))
            results[account.email] = f"ok (access token valid for {minutes} min)"
            if account.invalid_reason:
                revived.add(account.email)

    if invalid or revived:

        def mark(stored: list[Account]) -> list[Account]:
            return [
                attrs.evolve(a, invalid_reason=invalid[a.email]) if a.email in invalid
                else attrs.evolve(a, invalid_reason=None) if a.email in revived
                else a
                for a in stored
            ]

        await store.aupdate(mark)
    return _table(("EMAIL", "RESULT"), [(a.email, results[a.email]) for a in accounts])


# -- importing another proxy's accounts ----------------------------------------------------

# Where antigravity-claude-proxy keeps its accounts (its `accountConfigPath` default).
REFERENCE_ACCOUNTS_FILE = "~/.config/antigravity-proxy/accounts.json"


@attrs.frozen(slots=True)
class ImportPlan:
    """What an accounts file holds that this gateway can use, and what it cannot."""

    accounts: tuple[Account, ...]
    skipped: tuple[tuple[str, str], ...]  # (email or "entry N", reason)


def _epoch(value: object) -> float:
    """`addedAt` as seconds: an ISO string or epoch milliseconds/seconds, else 0."""
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, int | float):
        return float(value) / 1000 if value > 10**11 else float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return 0.0
    return 0.0


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def plan_import(data: object) -> ImportPlan:
    """The accounts in an antigravity-claude-proxy `accounts.json` (pure).

    Also reads the bare list its web UI exports (`[{email, refresh_token}]`) and this
    gateway's own file. A reference refresh token may be composite,
    `token|projectId|managedProjectId`; the managed project is the Cloud Code one. Entries
    without a refresh token (the reference's `manual` and `database` sources hold only an
    access token) cannot be refreshed here and are skipped, saying why.
    """
    entries = data.get("accounts") if isinstance(data, Mapping) else data
    if not isinstance(entries, list):
        raise ValueError("no 'accounts' list (expected antigravity-claude-proxy's accounts.json)")
    accounts: dict[str, Account] = {}
    skipped: list[tuple[str, str]] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            skipped.append((f"entry {index}", "not an object"))
            continue
        email = _text(entry.get("email"))
        if email is None or "@" not in email:
            skipped.append((f"entry {index}", "no email address"))
            continue
        raw_token = _text(entry.get("refreshToken")) or _text(entry.get("refresh_token"))
        if raw_token is None:
            source = _text(entry.get("source")) or "unknown"
            skipped.append((email, f"no refresh token (source {source!r}); add it with "
                                   "`gateway accounts add`"))
            continue
        token, _, rest = raw_token.partition("|")
        user_project, _, managed_project = rest.partition("|")
        project = (
            _text(managed_project)
            or _text(entry.get("project_id"))
            or _text(entry.get("projectId"))
            or _text(user_project)
        )
        subscription = entry.get("subscription")
        tier = _text(entry.get("tier"))
        if tier is None and isinstance(subscription, Mapping):
            tier = _text(subscription.get("tier"))
        if tier == "unknown":
            tier = None
        invalid: str | None = None
        if entry.get("isInvalid") is True:
            invalid = _text(entry.get("invalidReason")) or "marked invalid by the proxy"
        elif isinstance(entry.get("invalid_reason"), str):
            invalid = _text(entry.get("invalid_reason"))
        enabled = entry.get("enabled", True)
        account = Account(
            email=email,
            refresh_token=token.strip(),
            project_id=project,
            tier=tier,
            added_at=_epoch(entry.get("addedAt", entry.get("added_at"))),
            enabled=enabled if isinstance(enabled, bool) else True,
            invalid_reason=invalid,
        )
        if email in accounts:
            skipped.append((email, "listed twice; the later entry wins"))
        accounts[email] = account
    return ImportPlan(tuple(accounts.values()), tuple(skipped))


async def import_accounts(config: Config, path: str | None, *, write: Write) -> ImportPlan:
    """Merge another proxy's accounts into this gateway's store (atomically).

    An email already stored gets the imported refresh token, project and tier (keeping its
    place, `added_at` and `enabled`); new emails are appended. Raises AccountStoreError for
    a file that cannot be read, naming it.
    """
    source = await trio.Path(path or REFERENCE_ACCOUNTS_FILE).expanduser()
    try:
        raw = await source.read_bytes()
    except FileNotFoundError:
        raise AccountStoreError(f"no accounts file at {source}") from None
    except OSError as exc:
        raise AccountStoreError(
            f"accounts file {source} cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    try:
        plan = plan_import(json.loads(raw.decode("utf-8")))
    except UnicodeDecodeError:
        raise AccountStoreError(f"accounts file {source} is not UTF-8 text") from None
    except ValueError as exc:
        # never the document itself: it holds refresh tokens
        problem = "is not valid JSON" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise AccountStoreError(f"accounts file {source}: {problem}") from None

    store = AccountStore(config.accounts.file)
    added: list[str] = []
    updated: list[str] = []

    def merge(stored: list[Account]) -> list[Account]:
        added.clear()
        updated.clear()
        by_email = {a.email: i for i, a in enumerate(stored)}
        merged = list(stored)
        for account in plan.accounts:
            index = by_email.get(account.email)
            if index is None:
                added.append(account.email)
                merged.append(attrs.evolve(account, added_at=account.added_at or time.time()))
                continue
            previous = merged[index]
            updated.append(account.email)
            merged[index] = attrs.evolve(
                previous,
                refresh_token=account.refresh_token,
                project_id=account.project_id or previous.project_id,
                tier=account.tier or previous.tier,
                invalid_reason=account.invalid_reason,
            )
        return merged

    if plan.accounts:
        await store.aupdate(merge)
    write(f"Imported from {source} into {store.path}: {len(added)} added, "
          f"{len(updated)} updated, {len(plan.skipped)} skipped.")
    for email in added:
        write(f"  added    {email}")
    for email in updated:
        write(f"  updated  {email}")
    for who, reason in plan.skipped:
        write(f"  skipped  {who}: {reason}")
    if plan.accounts:
        write(
            "These refresh tokens belong to the OAuth client that issued them: set "
            "oauth.client_id and oauth.client_secret to that client (see README, \"Using real "
            "Google accounts\"), then check them with `gateway accounts verify`."
        )
    return plan
