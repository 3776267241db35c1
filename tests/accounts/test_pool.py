"""The account pool: selection, cooldowns, quotas and snapshots, on a fake clock."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import errors
from gateway.accounts.model import Account
from gateway.accounts.pool import AccountPool, Membership
from gateway.translate.models import describe_model

MODEL = "claude-sonnet-4-6"
EMAILS = ("a@example.com", "b@example.com", "c@example.com")


@attrs.define
class FakeClock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _accounts(*emails: str) -> list[Account]:
    return [Account(email, f"refresh-{email}", project_id=f"proj-{email[0]}") for email in emails]


def _pool(
    clock: FakeClock, emails: tuple[str, ...] = EMAILS, selection: str = "sticky"
) -> AccountPool:
    pool = AccountPool(_accounts(*emails), selection=selection, clock=clock)
    for email in emails:
        pool.set_token(email, f"token-{email}", clock.now + 3600)
    return pool


def test_no_accounts_raises_with_a_hint() -> None:
    pool = AccountPool([], clock=FakeClock())
    with pytest.raises(errors.NoAccounts, match="gateway accounts add"):
        pool.pick(MODEL, "s")


def test_all_invalid_raises() -> None:
    clock = FakeClock()
    pool = _pool(clock)
    for email in EMAILS:
        pool.mark_invalid(email, "invalid_grant")
    with pytest.raises(errors.NoAccounts, match="invalid"):
        pool.pick(MODEL, "s")


def test_stored_invalid_and_disabled_accounts_are_never_picked() -> None:
    clock = FakeClock()
    accounts = [
        Account("bad@example.com", "r", invalid_reason="invalid_grant"),
        Account("off@example.com", "r", enabled=False),
        Account("ok@example.com", "r", project_id="p"),
    ]
    pool = AccountPool(accounts, clock=clock)
    for a in accounts[1:]:
        pool.set_token(a.email, "t", clock.now + 100)
    pick = pool.pick(MODEL, "s")
    assert pick is not None and pick.email == "ok@example.com"
    statuses = {e.email: e.status for e in pool.snapshot().entries}
    assert statuses == {"bad@example.com": "invalid", "off@example.com": "disabled",
                        "ok@example.com": "ok"}


def test_accounts_without_token_are_not_picked() -> None:
    clock = FakeClock()
    pool = AccountPool(_accounts(*EMAILS), clock=clock)
    assert pool.pick(MODEL, "s") is None
    pool.set_token(EMAILS[1], "t", clock.now + 10)
    pick = pool.pick(MODEL, "s")
    assert pick is not None and pick.email == EMAILS[1]
    clock.advance(11)  # expired
    assert pool.pick(MODEL, "s") is None
    assert pool.token(EMAILS[1]) is None


def test_sticky_keeps_the_session_on_its_account() -> None:
    clock = FakeClock()
    pool = _pool(clock)
    first = pool.pick(MODEL, "session-1")
    assert first is not None
    for _ in range(5):
        again = pool.pick(MODEL, "session-1")
        assert again is not None and again.email == first.email
    assert pool.sticky_account("session-1") == first.email


def test_sticky_moves_when_cooling_and_sticks_to_the_new_account() -> None:
    clock = FakeClock()
    pool = _pool(clock)
    first = pool.pick(MODEL, "s")
    assert first is not None
    pool.cooldown(first.email, MODEL, 30)
    second = pool.pick(MODEL, "s")
    assert second is not None and second.email != first.email and second.wait_seconds == 0
    clock.advance(31)
    # the old account is usable again, but the session now belongs to the new one
    third = pool.pick(MODEL, "s")
    assert third is not None and third.email == second.email


def test_cooldown_is_per_model() -> None:
    clock = FakeClock()
    pool = _pool(clock, EMAILS[:1])
    pool.cooldown(EMAILS[0], MODEL, 30)
    other = pool.pick("gemini-3-flash", "s")
    assert other is not None and other.wait_seconds == 0


def test_all_cooling_returns_the_soonest_with_its_wait() -> None:
    clock = FakeClock()
    pool = _pool(clock)
    pool.cooldown(EMAILS[0], MODEL, 50)
    pool.cooldown(EMAILS[1], MODEL, 20)
    pool.cooldown(EMAILS[2], MODEL, 40)
    pick = pool.pick(MODEL, "s")
    assert pick is not None
    assert pick.email == EMAILS[1]
    assert pick.wait_seconds == pytest.approx(20)
    clock.advance(20)
    pick = pool.pick(MODEL, "s")
    assert pick is not None and pick.email == EMAILS[1] and pick.wait_seconds == 0


def test_failover_prefers_most_remaining_quota_then_fewest_failures() -> None:
    clock = FakeClock()
    pool = _pool(clock)
    pool.set_quota(EMAILS[0], MODEL, 0.2, None)
    pool.set_quota(EMAILS[1], MODEL, 0.9, None)
    pool.set_quota(EMAILS[2], MODEL, 0.9, None)
    pool.failure(EMAILS[1])
    pick = pool.pick(MODEL, "")
    assert pick is not None and pick.email == EMAILS[2]
    pool.success(EMAILS[1], MODEL)
    pick = pool.pick(MODEL, "")
    assert pick is not None and pick.email == EMAILS[1]  # ties go to the first in the file


def test_exclude_skips_accounts_and_returns_none_when_all_excluded() -> None:
    clock = FakeClock()
    pool = _pool(clock, EMAILS[:2])
    pick = pool.pick(MODEL, "s", frozenset({EMAILS[0]}))
    assert pick is not None and pick.email == EMAILS[1]
    assert pool.pick(MODEL, "s", frozenset(EMAILS[:2])) is None


def test_round_robin_rotates_over_usable_accounts() -> None:
    clock = FakeClock()
    pool = _pool(clock, selection="round-robin")
    picked = [p.email for p in (pool.pick(MODEL, "s") for _ in range(6)) if p is not None]
    assert picked == [*EMAILS, *EMAILS]
    pool.cooldown(EMAILS[1], MODEL, 10)
    picked = [p.email for p in (pool.pick(MODEL, "s") for _ in range(4)) if p is not None]
    assert EMAILS[1] not in picked and len(picked) == 4


def test_exhausted_quota_cools_until_its_reset() -> None:
    clock = FakeClock(now=1_700_000_000.0)
    pool = _pool(clock, EMAILS[:2])
    pool.set_quota(EMAILS[0], MODEL, 0.0, "2023-11-14T22:30:00Z")  # now + 1000 s
    pool.set_quota(EMAILS[1], MODEL, 0.5, "2023-11-14T22:30:00Z")
    assert pool.cooldown_remaining(EMAILS[0], MODEL) == pytest.approx(1000)
    pick = pool.pick(MODEL, "s")
    assert pick is not None and pick.email == EMAILS[1]
    entry = pool.snapshot().entries[0]
    assert entry.quotas[MODEL] == (0.0, "2023-11-14T22:30:00Z")
    assert entry.cooldowns[MODEL] == pytest.approx(1000)


def test_the_catalogue_is_the_union_of_usable_accounts_probes() -> None:
    clock = FakeClock()
    pool = _pool(clock, EMAILS[:2])
    assert pool.catalogue() is None and pool.available_models() == set()
    pool.set_models(EMAILS[0], [describe_model(MODEL), describe_model("gemini-3-flash")],
                    {"old-model": MODEL})
    pool.set_models(EMAILS[1], [describe_model("gemini-3.5-flash-low")], {})
    catalogue = pool.catalogue()
    assert catalogue is not None and catalogue.live
    assert set(catalogue.ids) == {MODEL, "gemini-3-flash", "gemini-3.5-flash-low"}
    assert catalogue.resolve("old-model").id == MODEL
    assert pool.catalogue() is catalogue  # cached until something changes
    pool.set_models(EMAILS[0], [describe_model(MODEL)], {})
    assert pool.available_models() == {MODEL, "gemini-3.5-flash-low"}
    pool.mark_invalid(EMAILS[1], "invalid_grant")  # its models go with it
    assert pool.available_models() == {MODEL}


def test_snapshot_numbers() -> None:
    clock = FakeClock()
    pool = _pool(clock)
    pool.mark_invalid(EMAILS[2], "invalid_grant")
    pool.cooldown(EMAILS[0], MODEL, 12)
    pool.set_project(EMAILS[1], "proj-new", "standard-tier")
    clock.advance(2)
    snap = pool.snapshot()
    assert snap.accounts == 3 and snap.active_accounts == 2
    a, b, c = snap.entries
    assert a.cooldowns == {MODEL: pytest.approx(10)}
    assert a.token_expires_in == pytest.approx(3598)
    assert b.project == "proj-new" and b.tier == "standard-tier" and not b.cooldowns
    assert c.status == "invalid" and c.token_expires_in is None
    assert a.handle.startswith("acct-") and EMAILS[0] not in a.handle
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        snap.accounts = 5  # type: ignore[misc]


def test_set_token_revives_an_invalid_account() -> None:
    clock = FakeClock()
    pool = _pool(clock, EMAILS[:1])
    pool.mark_invalid(EMAILS[0], "invalid_grant")
    with pytest.raises(errors.NoAccounts):
        pool.pick(MODEL, "s")
    pool.set_token(EMAILS[0], "fresh", clock.now + 100)
    assert pool.pick(MODEL, "s") is not None


def test_replace_accounts_keeps_state_of_unchanged_accounts() -> None:
    clock = FakeClock()
    pool = _pool(clock, EMAILS[:2])
    pool.pick(MODEL, "s")
    pool.replace_accounts(_accounts(EMAILS[1], EMAILS[2]))
    assert pool.emails() == [EMAILS[1], EMAILS[2]]
    assert pool.token(EMAILS[1]) is not None
    assert pool.token(EMAILS[2]) is None
    assert pool.sticky_account("s") in (None, EMAILS[1])


def test_replace_accounts_reports_added_removed_and_renewed() -> None:
    clock = FakeClock()
    pool = _pool(clock, EMAILS[:2])
    a, b, c = EMAILS
    regranted = attrs.evolve(_accounts(b)[0], refresh_token="a new grant")
    changes = pool.replace_accounts([regranted, *_accounts(c)])
    assert (changes.added, changes.removed, changes.renewed) == ((c,), (a,), (b,))
    assert pool.token(b) is None  # a new grant starts afresh
    unchanged = pool.replace_accounts([regranted, *_accounts(c)])
    assert unchanged == Membership()


def test_the_gateways_own_writes_read_back_change_nothing() -> None:
    """The supervisor persists what it learns (project, tier, invalid mark); reading that
    file back must not throw away the token and cooldowns of the account."""
    clock = FakeClock()
    stored = [Account(EMAILS[0], "r", tier="free-tier"), Account(EMAILS[1], "r2")]
    pool = AccountPool(stored, clock=clock)
    pool.set_token(EMAILS[0], "t", clock.now + 100)
    pool.set_project(EMAILS[0], "discovered", "standard-tier")
    pool.cooldown(EMAILS[0], MODEL, 30)
    pool.mark_invalid(EMAILS[1], "invalid_grant")
    written = [
        attrs.evolve(stored[0], project_id="discovered", tier="standard-tier"),
        attrs.evolve(stored[1], invalid_reason="invalid_grant"),
    ]
    assert pool.replace_accounts(written) == Membership()
    assert pool.token(EMAILS[0]) == "t"
    assert pool.cooldown_remaining(EMAILS[0], MODEL) == 30
    assert pool.status(EMAILS[1]) == "invalid"
    # the same file again, once more: still nothing (the pool now knows it as stored)
    assert pool.replace_accounts(written) == Membership()
    # an edit by someone else (enabling, a mark cleared) is a change
    edited = [written[0], attrs.evolve(written[1], invalid_reason=None)]
    assert pool.replace_accounts(edited).renewed == (EMAILS[1],)
    assert pool.status(EMAILS[1]) == "no-token"


def test_outcomes_for_a_removed_account_are_dropped() -> None:
    """A request that picked an account before it left the file reports on it later."""
    clock = FakeClock()
    pool = _pool(clock, EMAILS[:2])
    pool.replace_accounts(_accounts(EMAILS[1]))
    gone = EMAILS[0]
    pool.cooldown(gone, MODEL, 60)
    pool.success(gone, MODEL)
    pool.failure(gone)
    assert pool.cooldown_remaining(gone, MODEL) == 0.0
    assert pool.token(gone) is None
    assert gone not in pool.emails()


def test_pick_carries_the_discovered_project() -> None:
    clock = FakeClock()
    pool = AccountPool([Account("x@example.com", "r")], clock=clock)
    pool.set_token("x@example.com", "t", clock.now + 100)
    pool.set_project("x@example.com", "discovered", None)
    pick = pool.pick(MODEL, "")
    assert pick is not None and pick.account.project_id == "discovered"


# -- properties ----------------------------------------------------------------------------

_event = st.one_of(
    st.tuples(st.just("cooldown"), st.sampled_from(EMAILS), st.floats(0, 100)),
    st.tuples(st.just("invalid"), st.sampled_from(EMAILS), st.just(0.0)),
    st.tuples(st.just("token"), st.sampled_from(EMAILS), st.floats(-10, 100)),
    st.tuples(st.just("fail"), st.sampled_from(EMAILS), st.just(0.0)),
    st.tuples(st.just("ok"), st.sampled_from(EMAILS), st.just(0.0)),
    st.tuples(st.just("tick"), st.just(""), st.floats(0, 30)),
    st.tuples(st.just("quota"), st.sampled_from(EMAILS), st.floats(0, 1)),
)


def _apply(pool: AccountPool, clock: FakeClock, event: tuple[str, str, float]) -> None:
    kind, email, value = event
    if kind == "cooldown":
        pool.cooldown(email, MODEL, value)
    elif kind == "invalid":
        pool.mark_invalid(email, "invalid_grant")
    elif kind == "token":
        pool.set_token(email, "t", clock.now + value)
    elif kind == "fail":
        pool.failure(email)
    elif kind == "ok":
        pool.success(email, MODEL)
    elif kind == "quota":
        pool.set_quota(email, MODEL, value, None)
    else:
        clock.advance(value)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(_event, max_size=30),
    selection=st.sampled_from(["sticky", "round-robin"]),
    sessions=st.lists(st.sampled_from(["", "s1", "s2"]), min_size=1, max_size=5),
)
def test_pick_never_returns_an_unusable_account(
    events: list[tuple[str, str, float]], selection: str, sessions: list[str]
) -> None:
    clock = FakeClock()
    pool = _pool(clock, selection=selection)
    for event in events:
        _apply(pool, clock, event)
        for session in sessions:
            try:
                pick = pool.pick(MODEL, session)
            except errors.NoAccounts:
                assert all(e.status in ("invalid", "disabled") for e in pool.snapshot().entries)
                continue
            statuses = {e.email: e for e in pool.snapshot().entries}
            if pick is None:
                assert all(e.status != "ok" for e in statuses.values())
                continue
            entry = statuses[pick.email]
            assert entry.status == "ok"
            if pick.wait_seconds == 0:
                assert MODEL not in entry.cooldowns
            else:
                # waiting only when every usable account cools, and for the soonest
                usable = [e for e in statuses.values() if e.status == "ok"]
                assert all(MODEL in e.cooldowns for e in usable)
                assert pick.wait_seconds == min(e.cooldowns[MODEL] for e in usable)


@settings(max_examples=100, deadline=None)
@given(events=st.lists(_event.filter(lambda e: e[0] in ("fail", "ok", "quota", "tick")),
                       max_size=20))
def test_sticky_keeps_the_account_while_it_stays_usable(
    events: list[tuple[str, str, float]],
) -> None:
    clock = FakeClock()
    pool = _pool(clock)
    for email in EMAILS:
        pool.set_token(email, "t", clock.now + 10_000)
    first = pool.pick(MODEL, "session")
    assert first is not None
    for event in events:
        _apply(pool, clock, event)
        again = pool.pick(MODEL, "session")
        assert again is not None and again.email == first.email
