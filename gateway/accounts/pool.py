"""The account pool: every account's runtime state, and which account serves a request.

Pure state and selection, no I/O: the supervisor feeds it tokens, projects and quotas, the
dispatcher feeds it outcomes (success, failure, rate-limit cooldowns) and asks it to `pick`
an account for a model. Time comes from the injected clock, so selection is deterministic
under test. Sticky selection keeps a conversation (session id) on the account it used last
while that account can serve the model, so the upstream's prompt cache keeps hitting; when
it cannot, the healthiest usable account (most remaining quota, fewest failures) takes over
and the session sticks to it. `snapshot()` publishes an immutable view for /health,
/account-limits and metrics.

What other replicas must learn too (a cooldown, a session's account, an invalid mark, a
probe's answer) goes to the pool's listener as a `PoolChange` when it happens here; what they
learned arrives through `apply_remote`, which applies a change without telling the listener
again. With one process the listener does nothing (see `gateway.state.shared`).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

import attrs

from gateway import errors
from gateway.accounts.model import Account, account_handle
from gateway.translate.models import (
    Catalogue,
    ModelInfo,
    is_served_id,
    parse_available_models,
)

__all__ = [
    "AccountEntry", "AccountPool", "AccountStatus", "Cooldown", "CooldownsCleared",
    "MarkCleared", "MarkedInvalid", "Membership", "Pick", "PoolChange", "PoolSnapshot",
    "Probed", "SessionAssigned", "grant_digest", "parse_quotas",
]

AccountStatus = Literal["ok", "invalid", "disabled", "no-token"]
Selection = Literal["sticky", "round-robin"]

# Sessions remembered for stickiness; the oldest are forgotten first.
MAX_STICKY_SESSIONS = 10_000

NO_ACCOUNTS_HINT = "add one with `gateway accounts add` (or run `gateway demo` to try it out)"


@attrs.frozen(slots=True)
class Pick:
    """The account to use, with its current project and tier.

    `wait_seconds` > 0 means no account can serve the model now and this one is the first
    to come out of its cooldown: the caller waits that long or answers 429.
    """

    account: Account
    wait_seconds: float = 0.0

    @property
    def email(self) -> str:
        return self.account.email


@attrs.frozen(slots=True)
class Membership:
    """What `replace_accounts` changed, by email, in the order of the stored accounts."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    # same email, a record changed on disk (a new grant, enabled, an invalid mark set or
    # cleared elsewhere): its runtime state started afresh
    renewed: tuple[str, ...] = ()


# -- what other replicas learn -------------------------------------------------------------


@attrs.frozen(slots=True)
class Cooldown:
    email: str
    model: str
    until: float  # epoch seconds


@attrs.frozen(slots=True)
class CooldownsCleared:
    email: str | None  # None: every account's


@attrs.frozen(slots=True)
class SessionAssigned:
    session: str
    email: str


@attrs.frozen(slots=True)
class MarkedInvalid:
    email: str
    reason: str
    grant: str  # `grant_digest` of the refresh token found revoked: a re-added one is not


@attrs.frozen(slots=True)
class MarkCleared:
    email: str
    grant: str


@attrs.frozen(slots=True)
class Probed:
    email: str
    answer: Mapping[str, Any]  # the account's fetchAvailableModels answer


PoolChange = Cooldown | CooldownsCleared | SessionAssigned | MarkedInvalid | MarkCleared | Probed


def grant_digest(refresh_token: str) -> str:
    """Names a grant (a refresh token) without being it: what replicas compare."""
    return hashlib.sha256(refresh_token.encode()).hexdigest()[:24]


def parse_quotas(answer: Mapping[str, Any]) -> dict[str, tuple[float | None, str | None]]:
    """Model -> (remaining fraction, reset time) from a fetchAvailableModels answer.

    A model whose quota info names a reset time but no fraction is exhausted (the upstream
    leaves the zero out).
    """
    models = answer.get("models")
    quotas: dict[str, tuple[float | None, str | None]] = {}
    if not isinstance(models, Mapping):
        return quotas
    for model_id, info in models.items():
        if not isinstance(model_id, str) or not model_id or not is_served_id(model_id):
            continue  # internal ids (chat_*, tab_*) are nobody's quota to watch
        quota = info.get("quotaInfo") if isinstance(info, Mapping) else None
        fraction: float | None = None
        reset: str | None = None
        if isinstance(quota, Mapping):
            raw = quota.get("remainingFraction")
            reset_raw = quota.get("resetTime")
            reset = reset_raw if isinstance(reset_raw, str) and reset_raw else None
            if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
                fraction = min(1.0, max(0.0, float(raw)))
            elif reset is not None:
                fraction = 0.0
        quotas[model_id] = (fraction, reset)
    return quotas


def _ignore(change: PoolChange) -> None:
    pass


@attrs.frozen(slots=True)
class AccountEntry:
    email: str
    handle: str
    status: AccountStatus
    project: str | None
    tier: str | None
    token_expires_in: float | None  # seconds; None without a token
    cooldowns: Mapping[str, float]  # model -> seconds until usable again (only > 0)
    quotas: Mapping[str, tuple[float | None, str | None]]  # model -> (fraction, reset time)
    consecutive_failures: int = 0
    invalid_reason: str | None = None


@attrs.frozen(slots=True)
class PoolSnapshot:
    accounts: int
    active_accounts: int  # accounts with a live token (status "ok")
    entries: tuple[AccountEntry, ...]


@attrs.define(slots=True)
class _State:
    account: Account
    token: str | None = attrs.field(default=None, repr=False)
    token_expiry: float = 0.0
    invalid_reason: str | None = None
    project: str | None = None
    tier: str | None = None
    cooldown_until: dict[str, float] = attrs.field(factory=dict)
    quotas: dict[str, tuple[float | None, str | None]] = attrs.field(factory=dict)
    # what the account's last fetchAvailableModels said it serves (None: never probed)
    models: dict[str, ModelInfo] | None = None
    retired: dict[str, str] = attrs.field(factory=dict)  # deprecated id -> its replacement
    failures: int = 0

    @classmethod
    def of(cls, account: Account) -> _State:
        return cls(
            account=account,
            invalid_reason=account.invalid_reason,
            project=account.project_id,
            tier=account.tier,
        )

    @property
    def email(self) -> str:
        return self.account.email

    def status(self, now: float) -> AccountStatus:
        if not self.account.enabled:
            return "disabled"
        if self.invalid_reason is not None:
            return "invalid"
        if self.token is None or self.token_expiry <= now:
            return "no-token"
        return "ok"

    def cooling(self, model: str, now: float) -> float:
        """Seconds until this account may serve `model` again (0 when it may now)."""
        return max(0.0, self.cooldown_until.get(model, 0.0) - now)

    def fraction(self, model: str) -> float:
        # An account never probed is assumed full: it has not been used up by anyone yet.
        value = self.quotas.get(model, (None, None))[0]
        return 1.0 if value is None else value

    def current(self) -> Account:
        return attrs.evolve(
            self.account,
            project_id=self.project,
            tier=self.tier,
            invalid_reason=self.invalid_reason,
        )


def _reset_epoch(reset_time: str | None) -> float | None:
    if not reset_time:
        return None
    try:
        when = datetime.fromisoformat(reset_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


class AccountPool:
    """Runtime state of every account, and account selection for requests."""

    def __init__(
        self,
        accounts: Iterable[Account],
        *,
        selection: str = "sticky",
        clock: Callable[[], float] = time.time,
        listener: Callable[[PoolChange], None] = _ignore,
    ) -> None:
        if selection not in ("sticky", "round-robin"):
            raise ValueError(f"selection must be 'sticky' or 'round-robin', not {selection!r}")
        self.selection = selection
        self._clock = clock
        self._states: dict[str, _State] = {}
        self._sessions: OrderedDict[str, str] = OrderedDict()
        self._last_rotated: str | None = None
        self._catalogue: Catalogue | None = None
        self._catalogue_stale = True
        self.listener = listener
        self.replace_accounts(accounts)

    # -- membership ------------------------------------------------------------------------

    def replace_accounts(self, accounts: Iterable[Account]) -> Membership:
        """Adopt the stored accounts (after an add or remove), keeping known runtime state.

        A stored record that changed (re-added, so its grant or invalid mark changed) starts
        afresh; an unchanged one keeps its token, cooldowns and quotas. A record equal to
        what the pool already knows of the account (its project, tier and invalid mark as
        the supervisor found them) is unchanged too: that is the gateway's own write coming
        back, and reading it must not throw away the account's token.
        """
        states: dict[str, _State] = {}
        added: list[str] = []
        renewed: list[str] = []
        for account in accounts:
            known = self._states.get(account.email)
            if known is None:
                states[account.email] = _State.of(account)
                added.append(account.email)
            elif account in (known.account, known.current()):
                known.account = account
                states[account.email] = known
            else:
                states[account.email] = _State.of(account)
                renewed.append(account.email)
        removed = tuple(email for email in self._states if email not in states)
        self._states = states
        self._catalogue_stale = True
        for session, email in list(self._sessions.items()):
            if email not in states:
                del self._sessions[session]
        return Membership(tuple(added), removed, tuple(renewed))

    def emails(self) -> list[str]:
        return list(self._states)

    def account(self, email: str) -> Account:
        """The account's stored record with its current project, tier and invalid mark."""
        return self._state(email).current()

    def _state(self, email: str) -> _State:
        try:
            return self._states[email]
        except KeyError:
            raise KeyError(f"no account {email!r} in the pool") from None

    # -- selection -------------------------------------------------------------------------

    def pick(
        self, model_id: str, session_id: str, exclude: frozenset[str] = frozenset()
    ) -> Pick | None:
        """The account to serve `model_id` for `session_id`.

        Raises `errors.NoAccounts` when no account could ever serve (none, or all invalid or
        disabled). Returns None when every account that could is excluded or has no access
        token; a Pick with `wait_seconds` > 0 when all candidates are cooling down.
        """
        now = self._clock()
        live = [s for s in self._states.values() if s.status(now) in ("ok", "no-token")]
        if not live:
            if not self._states:
                raise errors.NoUsableAccounts(
                    f"no Google accounts are configured; {NO_ACCOUNTS_HINT}"
                )
            raise errors.NoUsableAccounts(
                "every configured account is invalid or disabled; add the accounts again "
                "with `gateway accounts add`"
            )
        candidates = [s for s in live if s.email not in exclude and s.status(now) == "ok"]
        if not candidates:
            return None
        ready = [s for s in candidates if s.cooling(model_id, now) <= 0]
        if not ready:
            soonest = min(candidates, key=lambda s: s.cooling(model_id, now))
            return Pick(soonest.current(), soonest.cooling(model_id, now))
        if self.selection == "round-robin":
            chosen = self._rotate(ready)
        else:
            chosen = self._sticky(ready, model_id, session_id)
        return Pick(chosen.current(), 0.0)

    def _sticky(self, ready: list[_State], model_id: str, session_id: str) -> _State:
        if session_id:
            email = self._sessions.get(session_id)
            for state in ready:
                if state.email == email:
                    self._sessions.move_to_end(session_id)
                    return state
        order = {email: i for i, email in enumerate(self._states)}
        chosen = min(
            ready, key=lambda s: (-s.fraction(model_id), s.failures, order[s.email])
        )
        if session_id:
            self._assign(session_id, chosen.email)
            self.listener(SessionAssigned(session_id, chosen.email))
        return chosen

    def _assign(self, session_id: str, email: str) -> None:
        self._sessions[session_id] = email
        self._sessions.move_to_end(session_id)
        while len(self._sessions) > MAX_STICKY_SESSIONS:
            self._sessions.popitem(last=False)

    def _rotate(self, ready: list[_State]) -> _State:
        emails = list(self._states)
        start = emails.index(self._last_rotated) + 1 if self._last_rotated in emails else 0
        ready_emails = {s.email for s in ready}
        for offset in range(len(emails)):
            email = emails[(start + offset) % len(emails)]
            if email in ready_emails:
                self._last_rotated = email
                return self._states[email]
        raise AssertionError("ready accounts are always in the pool")

    def sticky_account(self, session_id: str) -> str | None:
        """The account a session is stuck to, if any."""
        return self._sessions.get(session_id)

    def sessions(self) -> list[tuple[str, str]]:
        """(session, account) of every remembered session, oldest first."""
        return list(self._sessions.items())

    # -- outcomes --------------------------------------------------------------------------

    # Outcomes arrive from requests that picked the account earlier; one removed from the
    # pool meanwhile (hot reload) is no longer anyone's concern, so they are dropped.

    def cooldown(self, email: str, model: str, seconds: float) -> None:
        """`email` may not serve `model` for `seconds` (the latest word from upstream wins)."""
        state = self._states.get(email)
        if state is not None:
            until = self._clock() + max(0.0, seconds)
            state.cooldown_until[model] = until
            self.listener(Cooldown(email, model, until))

    def clear_cooldowns(self, email: str | None = None) -> None:
        """Forget cooldowns (all accounts, or one): the operator says quota is back.

        A quota probe that still finds a model exhausted puts its cooldown right back.
        """
        self._clear_cooldowns(email)
        self.listener(CooldownsCleared(email))

    def _clear_cooldowns(self, email: str | None) -> None:
        for address, state in self._states.items():
            if email is None or address == email:
                state.cooldown_until.clear()

    def cooldowns(self) -> list[Cooldown]:
        """Every cooldown still running."""
        now = self._clock()
        return [Cooldown(state.email, model, until) for state in self._states.values()
                for model, until in state.cooldown_until.items() if until > now]

    def cooldown_remaining(self, email: str, model: str) -> float:
        """Seconds until `email` may serve `model`; 0 for an account no longer in the pool."""
        state = self._states.get(email)
        return state.cooling(model, self._clock()) if state is not None else 0.0

    def success(self, email: str, model: str) -> None:
        state = self._states.get(email)
        if state is None:
            return
        state.failures = 0
        if state.cooling(model, self._clock()) <= 0:
            state.cooldown_until.pop(model, None)

    def failure(self, email: str) -> None:
        state = self._states.get(email)
        if state is not None:
            state.failures += 1

    def mark_invalid(self, email: str, reason: str) -> None:
        state = self._state(email)
        self._mark_invalid(state, reason)
        self.listener(MarkedInvalid(email, reason, grant_digest(state.account.refresh_token)))

    def _mark_invalid(self, state: _State, reason: str) -> None:
        state.invalid_reason = reason
        state.token = None
        state.token_expiry = 0.0
        self._catalogue_stale = True

    def invalid_marks(self) -> list[MarkedInvalid]:
        """The accounts found invalid, with the grant each was found invalid with."""
        return [MarkedInvalid(s.email, s.invalid_reason, grant_digest(s.account.refresh_token))
                for s in self._states.values() if s.invalid_reason is not None]

    # -- facts from the supervisor ---------------------------------------------------------

    def set_token(self, email: str, token: str, expires_at: float) -> None:
        """A fresh access token; it also proves the grant alive, clearing an invalid mark."""
        state = self._state(email)
        state.token = token
        state.token_expiry = expires_at
        if state.invalid_reason is not None:
            state.invalid_reason = None
            self._catalogue_stale = True
            self.listener(MarkCleared(email, grant_digest(state.account.refresh_token)))

    def status(self, email: str) -> AccountStatus:
        return self._state(email).status(self._clock())

    def token(self, email: str) -> str | None:
        """The account's access token while it is valid, else None."""
        state = self._states.get(email)
        if state is None or state.token is None or state.token_expiry <= self._clock():
            return None
        return state.token

    def token_expiry(self, email: str) -> float | None:
        state = self._state(email)
        return state.token_expiry if state.token is not None else None

    def set_project(self, email: str, project: str, tier: str | None) -> None:
        state = self._state(email)
        state.project = project
        if tier is not None:
            state.tier = tier

    def set_quota(
        self, email: str, model: str, fraction: float | None, reset_time: str | None
    ) -> None:
        """One model's quota; an exhausted one (fraction 0) cools down until its reset."""
        state = self._state(email)
        state.quotas[model] = (fraction, reset_time)
        reset = _reset_epoch(reset_time)
        if fraction is not None and fraction <= 0 and reset is not None and reset > self._clock():
            state.cooldown_until[model] = max(state.cooldown_until.get(model, 0.0), reset)

    def set_quotas(
        self, email: str, quotas: Mapping[str, tuple[float | None, str | None]]
    ) -> None:
        """Replace the account's whole quota table with a fresh probe's answer."""
        self._state(email).quotas = {}
        for model, (fraction, reset_time) in quotas.items():
            self.set_quota(email, model, fraction, reset_time)

    def set_models(
        self, email: str, models: Iterable[ModelInfo], retired: Mapping[str, str]
    ) -> None:
        """What the account's probe says it serves, and the ids the upstream retired."""
        state = self._state(email)
        state.models = {m.id: m for m in models}
        state.retired = dict(retired)
        self._catalogue_stale = True

    def probed(self, email: str, answer: Mapping[str, Any]) -> None:
        """A quota probe's answer (fetchAvailableModels): the account's quotas and models."""
        self._probed(email, answer)
        self.listener(Probed(email, answer))

    def _probed(self, email: str, answer: Mapping[str, Any]) -> None:
        self.set_quotas(email, parse_quotas(answer))
        self.set_models(email, *parse_available_models(answer))

    # -- what other replicas learned -------------------------------------------------------

    def apply_remote(self, change: PoolChange) -> bool:
        """Apply what another replica learned; False when it is not this pool's concern (an
        account this replica does not have, or a mark on another grant than its own)."""
        state = self._states.get(change.email) if not isinstance(
            change, CooldownsCleared) else None
        if isinstance(change, CooldownsCleared):
            if change.email is not None and change.email not in self._states:
                return False
            self._clear_cooldowns(change.email)
            return True
        if state is None:
            return False
        if isinstance(change, Cooldown):
            state.cooldown_until[change.model] = change.until
        elif isinstance(change, SessionAssigned):
            self._assign(change.session, change.email)
        elif isinstance(change, MarkedInvalid):
            if change.grant != grant_digest(state.account.refresh_token):
                return False
            self._mark_invalid(state, change.reason)
        elif isinstance(change, MarkCleared):
            if (change.grant != grant_digest(state.account.refresh_token)
                    or state.invalid_reason is None):
                return False
            state.invalid_reason = None
            self._catalogue_stale = True
        else:
            self._probed(change.email, change.answer)
        return True

    # -- reading ---------------------------------------------------------------------------

    def catalogue(self) -> Catalogue | None:
        """The models the usable accounts serve, merged; None before any probe answered.

        Rebuilt only when a probe answer or an account's standing changed, so a request
        pays a lookup, not a merge.
        """
        if self._catalogue_stale:
            self._catalogue_stale = False
            models: dict[str, ModelInfo] = {}
            retired: dict[str, str] = {}
            probed = False
            for state in self._states.values():
                if state.models is None or not state.account.enabled or state.invalid_reason:
                    continue
                probed = True
                models.update(state.models)
                retired.update(state.retired)
            self._catalogue = Catalogue(models.values(), live=True, retired=retired) if (
                probed
            ) else None
        return self._catalogue

    def available_models(self) -> set[str]:
        """Ids the usable accounts' probes reported; empty before the first probe."""
        catalogue = self.catalogue()
        return set(catalogue.ids) if catalogue is not None else set()

    def snapshot(self) -> PoolSnapshot:
        now = self._clock()
        entries = []
        for state in self._states.values():
            status = state.status(now)
            cooldowns = {
                model: until - now for model, until in state.cooldown_until.items() if until > now
            }
            entries.append(
                AccountEntry(
                    email=state.email,
                    handle=account_handle(state.email),
                    status=status,
                    project=state.project,
                    tier=state.tier,
                    token_expires_in=(
                        round(state.token_expiry - now, 1) if status == "ok" else None
                    ),
                    cooldowns=MappingProxyType(cooldowns),
                    quotas=MappingProxyType(dict(state.quotas)),
                    consecutive_failures=state.failures,
                    invalid_reason=state.invalid_reason,
                )
            )
        return PoolSnapshot(
            accounts=len(entries),
            active_accounts=sum(1 for e in entries if e.status == "ok"),
            entries=tuple(entries),
        )
