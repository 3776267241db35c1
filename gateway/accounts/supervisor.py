"""The account supervisor: keeps every account's access token fresh and its quotas known.

`Supervisor.run` owns one task per account. Each task refreshes the access token (and again
`refresh_margin_seconds` before it expires), discovers the Cloud Code project of an account
stored without one (and persists it), and probes the account's quotas
(`fetchAvailableModels`) every `quota_probe_interval_seconds` or when asked to. Between
those it sleeps until its earliest deadline or until woken (`request_probe`, a refresh
elsewhere): no polling. A revoked grant (invalid_grant) marks the account invalid in the
pool and in the accounts file; other failures are retried with exponential backoff. Results
go into the `AccountPool`, which the dispatcher and the admin routes read.

The accounts file is watched too (hot reload): every `accounts.reload_seconds` the supervisor
compares the file's mtime, size and inode with what it last read, and on a change reads it
through the store and hands it to `AccountPool.replace_accounts`, which tells new, removed
and changed accounts apart from the gateway's own writes coming back. A new account gets its
own task at once (token, project, quotas); a removed one's task is cancelled, while requests
already streaming on it finish. A file that cannot be read leaves the accounts as they are.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from gateway.accounts import oauth
from gateway.accounts.model import Account, account_handle
from gateway.accounts.pool import AccountPool, Membership, parse_quotas
from gateway.accounts.store import AccountStore, AccountStoreError
from gateway.config import Config
from gateway.upstream.client import CloudCodeClient, UpstreamHTTPError
from gateway.upstream.gate import is_version_refusal

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.state.shared import StateStore

__all__ = ["Supervisor", "parse_quotas"]

log = logging.getLogger("gateway.accounts")

STARTUP_WAIT_SECONDS = 10.0  # longest the first refresh round may hold up start-up
REFRESH_TIMEOUT_SECONDS = 30.0
PROBE_TIMEOUT_SECONDS = 30.0
DISCOVERY_TIMEOUT_SECONDS = 60.0
MIN_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 300.0
# Requested probes (after a 429) come at most this often per account.
PROBE_MIN_GAP_SECONDS = 30.0

# Errors that mean "this process may not write the accounts file", not "it failed".
_READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.EBUSY})

RefreshResult = dict[str, Any]
# What tells one version of the accounts file from another: mtime (ns), size, inode. The
# store replaces the file by rename, so every write gives it a new inode as well.
FileMark = tuple[int, int, int]

_NO_SUCH_ACCOUNT: RefreshResult = {"ok": False, "status": "unknown", "error": "no such account"}


@attrs.define(slots=True)
class _Worker:
    """One account's task state: what it was asked to do and when it next must act."""

    email: str
    # the task's own scope: cancelled when the account leaves the accounts file
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    wake: trio.Event = attrs.field(factory=trio.Event)
    first_round: trio.Event = attrs.field(factory=trio.Event)
    refresh_lock: trio.Lock = attrs.field(factory=trio.Lock)
    probe_requested: bool = True
    next_probe: float = 0.0
    last_probe: float = -math.inf
    refresh_at: float = 0.0  # when the current token is due for renewal
    refresh_retry_at: float = 0.0
    refresh_failures: int = 0
    discovery_retry_at: float = 0.0
    discovery_failures: int = 0
    # the rejected access token the last on-demand renewal started from: callers holding
    # the same rejected token share that one attempt, whatever came of it
    renewed_from: str | None = None

    def poke(self) -> None:
        self.wake.set()


def _backoff(failures: int) -> float:
    return float(min(MAX_BACKOFF_SECONDS, MIN_BACKOFF_SECONDS * 2.0 ** max(0, failures - 1)))


class Supervisor:
    """Token refresh, project discovery and quota probes for every account in the pool."""

    def __init__(
        self,
        *,
        pool: AccountPool,
        store: AccountStore,
        client: CloudCodeClient,
        config: Config,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        startup_wait_seconds: float = STARTUP_WAIT_SECONDS,
        probe_min_gap_seconds: float = PROBE_MIN_GAP_SECONDS,
        state: StateStore | None = None,
    ) -> None:
        self.pool = pool
        # shared state (replicas): who runs scheduled probes; None: this process, always
        self.state = state
        if state is not None:
            state.on_revived = self._revived
        self.store = store
        self.client = client
        self.config = config
        self.metrics = metrics
        self._clock = clock
        self._startup_wait = startup_wait_seconds
        self._probe_gap = probe_min_gap_seconds
        self._workers: dict[str, _Worker] = {email: _Worker(email) for email in pool.emails()}
        self._nursery: trio.Nursery | None = None  # while `run` runs: where workers live
        self._reload_lock = trio.Lock()
        # The file as last read; None at first, so the first poll reads it whatever it says
        # (it may have changed between the pool's loading and `run`).
        self._file_seen: FileMark | None = None
        self._reload_problem: str | None = None  # what was last logged about the file
        self._read_only_reported = False

    # -- the public face -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise every account until cancelled.

        Reports started once every account's first round (token refresh, project discovery
        if needed, quota probe) has been attempted, or after `startup_wait_seconds`,
        whichever is first, so a slow token endpoint never holds up start-up for long.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                for worker in list(self._workers.values()):
                    self._start(worker)
                interval = self.config.accounts.reload_seconds
                if interval > 0:
                    nursery.start_soon(self._watch_accounts, interval,
                                       name="watch the accounts file")
                with trio.move_on_after(self._startup_wait) as waited:
                    for worker in list(self._workers.values()):
                        await worker.first_round.wait()
                if waited.cancelled_caught:
                    log.warning(
                        "starting before every account has a token: the token endpoint is slow"
                    )
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def access_token(self, email: str) -> str | None:
        """The account's current access token, or None while it has no valid one."""
        return self.pool.token(email)

    def _revived(self, email: str) -> None:
        """Another replica found `email`'s grant alive again: fetch a token here too."""
        worker = self._workers.get(email)
        if worker is not None:
            worker.refresh_retry_at = 0.0
            worker.poke()

    def request_probe(self, email: str) -> None:
        """Ask for a quota probe of `email` soon (after a 429, say). Never blocks.

        Requests closer together than `probe_min_gap_seconds` share one probe.
        """
        worker = self._workers.get(email)
        if worker is not None:
            worker.probe_requested = True
            worker.poke()

    async def renew_token(self, email: str, rejected: str | None) -> str | None:
        """A new access token after the upstream rejected `rejected` (a 401).

        Concurrent callers share one refresh: whoever comes second finds the token already
        replaced and takes it. None when the refresh failed.
        """
        worker = self._workers.get(email)
        if worker is None:
            return None
        async with worker.refresh_lock:
            if not self._is_current(worker):
                return self.pool.token(email)  # removed or re-added while we waited
            current = self.pool.token(email)
            if current is not None and current != rejected:
                return current
            if rejected is not None and worker.renewed_from == rejected:
                return current  # renewed (or failed to) already: not once more per caller
            if self.pool.status(email) == "invalid":
                return None  # a revoked grant stays revoked until someone re-adds it
            worker.renewed_from = rejected
            await self._refresh(worker, locked=True)
        return self.pool.token(email)

    async def refresh_now(self, email: str | None = None) -> dict[str, RefreshResult]:
        """Refresh `email`'s token (every account's when None) now; results by email.

        Runs the refreshes concurrently in a nursery of its own, so nothing is left behind
        when it returns; the accounts' own tasks then re-probe their quotas. Invalid
        accounts are tried too: this is how an operator checks whether a grant came back.
        The accounts file is re-read first, so an account added or re-added on disk a moment
        ago is refreshed too, whatever `accounts.reload_seconds` says.
        """
        await self.reload_accounts()
        emails = [email] if email is not None else list(self._workers)
        results: dict[str, RefreshResult] = {}

        async def one(worker: _Worker) -> None:
            results[worker.email] = await self._refresh(worker)
            if results[worker.email]["ok"]:
                # An operator asking for fresh tokens wants fresh quotas too, at once.
                worker.probe_requested = True
                worker.last_probe = -math.inf
                worker.poke()

        async with trio.open_nursery() as nursery:
            known = set(self.pool.emails())
            for name in emails:
                worker = self._workers.get(name)
                if worker is None or name not in known:
                    results[name] = dict(_NO_SUCH_ACCOUNT)
                else:
                    nursery.start_soon(one, worker)
        return {name: results[name] for name in emails}

    async def reload_accounts(self) -> Membership | None:
        """Re-read the accounts file; start the tasks of new accounts, stop removed ones'.

        None when the file cannot be read or is gone: the accounts in use stay as they are
        (and the problem is logged once, not at every poll).
        """
        async with self._reload_lock:
            try:
                mark, stored = await trio.to_thread.run_sync(self._read_accounts_file)
            except AccountStoreError as exc:
                # Not marked as seen: the next poll tries again (an editor may be mid-save).
                in_use = len(self.pool.emails())
                self._report(f"{exc}; keeping the {in_use} account(s) in use until it can be read")
                return None
            self._file_seen = mark
            if stored is None:
                if self.pool.emails():
                    self._report(
                        f"accounts file {self.store.path} is gone; keeping the "
                        f"{len(self.pool.emails())} account(s) in use"
                    )
                return None
            if self._reload_problem is not None:
                log.info("accounts file %s can be read again", self.store.path)
                self._reload_problem = None
            changes = self.pool.replace_accounts(stored)
            self._apply(changes)
            return changes

    # -- membership ------------------------------------------------------------------------

    async def _watch_accounts(self, interval: float) -> None:
        """Reload the accounts file whenever it is not the version last read."""
        while True:
            await trio.sleep(interval)
            try:
                mark = await trio.to_thread.run_sync(self._file_mark)
                if mark != self._file_seen or self._reload_problem is not None:
                    await self.reload_accounts()
            except Exception:
                # Whatever went wrong, the accounts in use keep being served.
                log.exception("watching the accounts file failed; retrying")

    def _file_mark(self) -> FileMark | None:
        try:
            info = os.stat(self.store.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _read_accounts_file(self) -> tuple[FileMark | None, list[Account] | None]:
        """The file's mark (taken first, so a change during the read is seen next time) and
        its accounts; None for the accounts when there is no file."""
        mark = self._file_mark()
        accounts = self.store.load()
        if not accounts and self._file_mark() is None:
            return None, None
        return mark, accounts

    def _report(self, problem: str) -> None:
        if problem != self._reload_problem:
            log.error("%s", problem)
            self._reload_problem = problem

    def _apply(self, changes: Membership) -> None:
        for email in changes.removed:
            self._stop(email)
            log.info("account %s was removed from the accounts file; requests it serves "
                     "finish", account_handle(email))
        for email in changes.renewed:
            self._stop(email)
            self._start(_Worker(email))
            log.info("account %s changed in the accounts file; starting it afresh",
                     account_handle(email))
        for email in changes.added:
            self._start(_Worker(email))
            log.info("account %s was added to the accounts file; fetching its token",
                     account_handle(email))

    def _start(self, worker: _Worker) -> None:
        self._workers[worker.email] = worker
        if self._nursery is not None:
            self._nursery.start_soon(self._supervise, worker, name=f"supervise {worker.email}")

    def _stop(self, email: str) -> None:
        worker = self._workers.pop(email, None)
        if worker is not None:
            worker.scope.cancel()
            worker.first_round.set()  # nobody waits at start-up for an account that is gone

    def _is_current(self, worker: _Worker) -> bool:
        """Whether `worker` still stands for its account: not removed, not replaced by a
        worker for a changed record. What a stale worker learns is dropped."""
        return self._workers.get(worker.email) is worker

    # -- one account's task ----------------------------------------------------------------

    async def _supervise(self, worker: _Worker) -> None:
        with worker.scope:
            while True:
                try:
                    await self._supervise_once(worker)
                except Exception:
                    # A bug in one account's round must not stop the others (or the server).
                    log.exception("supervising %s failed; retrying",
                                  account_handle(worker.email))
                    worker.first_round.set()
                    await trio.sleep(MAX_BACKOFF_SECONDS / 10)

    async def _supervise_once(self, worker: _Worker) -> None:
        email = worker.email
        while True:
            worker.wake = trio.Event()
            now = self._clock()
            state = self._account_state(email)
            if state in ("invalid", "disabled"):
                worker.first_round.set()
                await worker.wake.wait()  # a manual refresh_now may revive it
                continue
            deadlines: list[float] = []
            refresh_at = self._refresh_due(worker)
            if refresh_at <= now:
                await self._refresh(worker)
                continue  # re-read the state: it may be invalid now, or need a retry
            deadlines.append(refresh_at)
            account = self.pool.account(email)
            token = self.pool.token(email)
            if token is not None and not account.project_id:
                if worker.discovery_retry_at <= now:
                    await self._discover(worker, token)
                    continue
                deadlines.append(worker.discovery_retry_at)
            elif token is not None:
                probe_at = worker.next_probe
                if worker.probe_requested:
                    probe_at = min(probe_at, worker.last_probe + self._probe_gap)
                if probe_at <= now:
                    if worker.probe_requested or self._may_probe(email):
                        await self._probe(worker, token, account)
                    else:
                        # another replica probes on schedule and shares its answers
                        worker.next_probe = now + self.config.accounts.quota_probe_interval_seconds
                    continue
                deadlines.append(probe_at)
            # Everything due now is done: the account has had its first round.
            worker.first_round.set()
            delay = max(0.0, min(deadlines) - self._clock()) if deadlines else math.inf
            with trio.move_on_after(delay):
                await worker.wake.wait()

    def _may_probe(self, email: str) -> bool:
        return self.state is None or self.state.may_probe(email)

    def _account_state(self, email: str) -> str:
        # An account removed from the pool is left alone, like an invalid one.
        return self.pool.status(email) if email in self.pool.emails() else "invalid"

    def _refresh_due(self, worker: _Worker) -> float:
        if self.pool.token(worker.email) is None:
            return worker.refresh_retry_at
        return max(worker.refresh_at, worker.refresh_retry_at)

    # -- the work --------------------------------------------------------------------------

    async def _refresh(self, worker: _Worker, *, locked: bool = False) -> RefreshResult:
        if locked:
            return await self._refresh_locked(worker)
        async with worker.refresh_lock:
            return await self._refresh_locked(worker)

    async def _refresh_locked(self, worker: _Worker) -> RefreshResult:
        email = worker.email
        if not self._is_current(worker):
            return dict(_NO_SUCH_ACCOUNT)
        account = self.pool.account(email)
        result: RefreshResult
        try:
            with trio.fail_after(REFRESH_TIMEOUT_SECONDS):
                token = await oauth.refresh_access_token(
                    self.config.oauth, account.refresh_token,
                    request_timeout=REFRESH_TIMEOUT_SECONDS,
                )
        except (oauth.OAuthError, trio.TooSlowError) as exc:
            if not self._is_current(worker):
                # The account left the file (or changed) meanwhile: the answer about its
                # old record is nobody's business now, least of all the new record's.
                return dict(_NO_SUCH_ACCOUNT)
            if isinstance(exc, oauth.InvalidGrant):
                reason = exc.code or "invalid_grant"
                log.warning("account %s is invalid: %s", account_handle(email), exc)
                self.pool.mark_invalid(email, reason)
                await self._persist(email, invalid_reason=reason)
                self._count("invalid")
                result = {"ok": False, "status": "invalid", "error": str(exc)}
            else:
                worker.refresh_failures += 1
                wait = _backoff(worker.refresh_failures)
                worker.refresh_retry_at = self._clock() + wait
                message = (
                    str(exc) if isinstance(exc, oauth.OAuthError) else "token endpoint timed out"
                )
                log.warning(
                    "token refresh for %s failed (%s); retrying in %.0fs",
                    account_handle(email), message, wait,
                )
                self._count("error")
                result = {"ok": False, "status": "failed", "error": message}
        else:
            if not self._is_current(worker):
                return dict(_NO_SUCH_ACCOUNT)
            was_invalid = account.invalid_reason is not None
            self.pool.set_token(email, token.token, token.expiry)
            # Renew `refresh_margin_seconds` before expiry, or at half-life for tokens that
            # live shorter than twice the margin.
            lifetime = token.expiry - self._clock()
            margin = min(self.config.accounts.refresh_margin_seconds, lifetime / 2)
            worker.refresh_at = token.expiry - margin
            worker.refresh_failures = 0
            # Never two rounds of refreshes in the same second, whatever the expiry says.
            worker.refresh_retry_at = self._clock() + MIN_BACKOFF_SECONDS
            if was_invalid:
                await self._persist(email, invalid_reason=None)
            self._count("ok")
            expires_in = round(token.expiry - self._clock(), 1)
            result = {"ok": True, "status": "refreshed", "expiresIn": expires_in}
        worker.poke()
        return result

    async def _discover(self, worker: _Worker, token: str) -> None:
        email = worker.email
        try:
            with trio.fail_after(DISCOVERY_TIMEOUT_SECONDS):
                project, tier = await oauth.discover_project(
                    self.client, self.config.upstream.base_urls, token
                )
        except (oauth.OAuthError, trio.TooSlowError) as exc:
            worker.discovery_failures += 1
            wait = _backoff(worker.discovery_failures)
            worker.discovery_retry_at = self._clock() + wait
            log.warning(
                "project discovery for %s failed (%s); retrying in %.0fs",
                account_handle(email), exc or "timed out", wait,
            )
            return
        if not self._is_current(worker):
            return
        worker.discovery_failures = 0
        self.pool.set_project(email, project, tier)
        # The tier the pool now holds (a discovery that names none keeps the old one), so
        # the file says what the pool knows and a reload sees the gateway's own write.
        await self._persist(email, project_id=project, tier=self.pool.account(email).tier)
        log.info("account %s uses project %s", account_handle(email), project)

    async def _probe(self, worker: _Worker, token: str, account: Account) -> None:
        worker.probe_requested = False
        worker.last_probe = self._clock()
        interval = self.config.accounts.quota_probe_interval_seconds
        worker.next_probe = self._clock() + interval
        body = {"project": account.project_id} if account.project_id else {}
        failure: UpstreamHTTPError | None = None
        with trio.move_on_after(PROBE_TIMEOUT_SECONDS):
            for base_url in self.config.upstream.base_urls:
                try:
                    answer = await self.client.call(base_url, "fetchAvailableModels", body, token)
                except UpstreamHTTPError as exc:
                    failure = exc
                    if exc.status == 401:
                        break
                    continue
                if not self._is_current(worker):
                    return
                self.pool.probed(worker.email, answer)
                return
        if failure is not None and failure.status == 401:
            # The token died early (revoked session): the next round refreshes it.
            await self._refresh(worker)
            return
        if failure is not None and is_version_refusal(failure.body):
            if self.metrics is not None:
                self.metrics.version_refusals.inc()
            log.error(
                "the upstream refuses this gateway's client version (User-Agent %r) for "
                "quota probes: set upstream.user_agent (GATEWAY_UPSTREAM_USER_AGENT) to a "
                "current Antigravity version", self.config.upstream.user_agent,
            )
            return
        log.info(
            "quota probe for %s failed (%s)",
            account_handle(worker.email), failure or "timed out",
        )

    async def _persist(self, email: str, **changes: Any) -> None:
        """Write changed fields of `email`'s stored record (atomically, via the store)."""

        # Only the record this process knows: if the account was re-added on disk meanwhile
        # (a new grant), a failure of the old grant must not mark the new one invalid.
        grant = self.pool.account(email).refresh_token

        def change(accounts: list[Account]) -> list[Account]:
            return [
                attrs.evolve(a, **changes) if a.email == email and a.refresh_token == grant else a
                for a in accounts
            ]

        try:
            with trio.CancelScope(shield=True):
                await self.store.aupdate(change)
        except (AccountStoreError, OSError) as exc:
            cause = exc if isinstance(exc, OSError) else exc.__cause__
            if isinstance(cause, OSError) and cause.errno in _READ_ONLY:
                # a replica's read-only mount: the file's writer is elsewhere (README)
                if not self._read_only_reported:
                    self._read_only_reported = True
                    log.warning(
                        "the accounts file %s is read-only here: what this gateway learns "
                        "of its accounts (projects, invalid grants) is not saved in it%s",
                        self.store.path, "; replicas share it through Redis" if (
                            self.config.state.redis_url) else "")
                return
            log.error("could not save account %s: %s", account_handle(email), exc)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.token_refreshes.labels(result).inc()
