"""The dispatcher against the emulator over a real socket: failover, cooldowns, retries,
token renewal, endpoint and model fallback, and what reaches the client when all fails."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
import trio

from gateway import errors
from gateway.translate.cloudcode import EmptyUpstreamResponse
from gateway.translate.models import ModelInfo, describe_model
from gateway.upstream.client import UpstreamHTTPError
from tests.support import MakeRig, Rig, RunningEmulator

DEMO1 = "demo1@example.com"
DEMO2 = "demo2@example.com"
SONNET = describe_model("claude-sonnet-4-6")


def body_for(project: str, model: ModelInfo) -> dict[str, Any]:
    return {
        "project": project,
        "model": model.id,
        "request": {
            "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
            "generationConfig": {"maxOutputTokens": 256},
            "sessionId": "session",
        },
        "userAgent": "antigravity",
        "requestType": "agent",
        "requestId": "agent-test",
    }


async def build_body(project: str, model: ModelInfo) -> bytes:
    return json.dumps(body_for(project, model)).encode()


@attrs.frozen
class Served:
    email: str
    model: str
    base_url: str
    payloads: list[dict[str, Any]]


async def serve(rig: Rig, model: ModelInfo = SONNET, session: str = "s1") -> Served:
    async with rig.dispatcher.open_stream(
        model=model, sticky_key=session, build_body=build_body
    ) as upstream:
        payloads = [p async for batch in upstream.batches for p in batch]
        assert upstream.account_handle.startswith("acct-")
        return Served(upstream.email, upstream.model.id, upstream.base_url, payloads)


def generations(emulator: RunningEmulator) -> list[Any]:
    return list(emulator.state.generation_requests())


def _text(payloads: list[dict[str, Any]]) -> str:
    return "".join(
        part.get("text", "")
        for p in payloads
        for c in p.get("candidates", [])
        for part in c.get("content", {}).get("parts", [])
        if not part.get("thought")
    )


async def test_opens_a_stream_with_the_accounts_project(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    rig = await make_rig()
    served = await serve(rig)
    assert served.email == DEMO1 and served.model == SONNET.id
    assert served.base_url == emulator.url
    assert _text(served.payloads)
    [request] = generations(emulator)
    assert request.email == DEMO1 and request.body["project"] == "demo-project-1"
    await emulator.state.wait_open_streams(0, timeout=2)  # closed when the context ended


@pytest.mark.parametrize("reset_format", ["retry_info", "quota_reset_delay", "retry_after", "text"])
async def test_429_cools_the_account_for_the_reset_and_fails_over(
    make_rig: MakeRig, emulator: RunningEmulator, reset_format: str
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig()
    emulator.state.add_fault(
        Fault(kind="rate_limit", account=DEMO1, times=1, reset_format=reset_format,
              reset_seconds=42)
    )
    served = await serve(rig)
    assert served.email == DEMO2
    assert [r.email for r in generations(emulator)] == [DEMO1, DEMO2]
    assert rig.pool.cooldown_remaining(DEMO1, SONNET.id) == pytest.approx(42, abs=2)
    # only that model cools
    assert rig.pool.cooldown_remaining(DEMO1, "gemini-3-flash") == 0
    assert rig.metrics.upstream_errors.labels("429")._value.get() == 1


async def test_sticky_session_stays_and_moves_only_when_it_must(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig(upstream={"rate_limit_quick_retry_seconds": 0.5})
    assert (await serve(rig, session="a")).email == DEMO1
    assert (await serve(rig, session="a")).email == DEMO1
    emulator.state.add_fault(Fault(kind="rate_limit", account=DEMO1, times=1, reset_seconds=1))
    assert (await serve(rig, session="a")).email == DEMO2
    await trio.sleep(1.1)  # DEMO1 is usable again, but the session now lives on DEMO2
    assert (await serve(rig, session="a")).email == DEMO2


async def test_every_account_cooling_long_is_a_429_with_retry_after(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig()
    emulator.state.add_fault(Fault(kind="rate_limit", reset_seconds=120))
    with pytest.raises(errors.RateLimited) as caught:
        await serve(rig)
    assert caught.value.retry_after == pytest.approx(120, abs=3)
    assert caught.value.headers()["retry-after"] in {str(n) for n in range(117, 122)}
    assert {r.email for r in generations(emulator)} == {DEMO1, DEMO2}
    # next request does not even reach the upstream
    before = len(generations(emulator))
    with pytest.raises(errors.RateLimited):
        await serve(rig, session="other")
    assert len(generations(emulator)) == before


async def test_a_short_cooldown_is_waited_out(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig(accounts={"max_cooldown_wait_seconds": 5.0})
    emulator.state.add_fault(Fault(kind="rate_limit", times=2, reset_seconds=1))
    started = trio.current_time()
    served = await serve(rig)
    assert trio.current_time() - started >= 0.9
    assert _text(served.payloads)
    assert len(generations(emulator)) == 3


async def test_401_renews_the_token_and_retries_on_the_same_account(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig()
    old = rig.supervisor.access_token(DEMO1)
    emulator.state.add_fault(Fault(kind="unauthorized", account=DEMO1, times=1))
    served = await serve(rig)
    assert served.email == DEMO1
    assert [r.email for r in generations(emulator)] == [DEMO1, DEMO1]
    assert rig.supervisor.access_token(DEMO1) not in (None, old)


async def test_401_twice_fails_over_then_is_an_auth_error(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig()
    emulator.state.add_fault(Fault(kind="unauthorized", account=DEMO1))
    assert (await serve(rig)).email == DEMO2
    emulator.state.add_fault(Fault(kind="unauthorized"))
    with pytest.raises(errors.UpstreamAuthError):
        await serve(rig, session="other")


async def test_403_fails_over_and_all_forbidden_is_permission_denied(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig()
    emulator.state.add_fault(Fault(kind="forbidden", account=DEMO1))
    assert (await serve(rig)).email == DEMO2
    emulator.state.add_fault(Fault(kind="forbidden", account=DEMO2))
    with pytest.raises(errors.PermissionDenied, match="PERMISSION_DENIED"):
        await serve(rig, session="other")


async def test_5xx_is_retried_then_succeeds(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig(upstream={"max_retries": 2})
    emulator.state.add_fault(Fault(kind="server_error", times=2))
    served = await serve(rig)
    assert served.email == DEMO1
    assert [r.email for r in generations(emulator)] == [DEMO1, DEMO1, DEMO1]


async def test_5xx_exhausting_retries_fails_over(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig(upstream={"max_retries": 1})
    emulator.state.add_fault(Fault(kind="server_error", account=DEMO1))
    served = await serve(rig)
    assert served.email == DEMO2
    assert [r.email for r in generations(emulator)] == [DEMO1, DEMO1, DEMO2]


async def test_unavailable_everywhere_is_overloaded(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig(upstream={"max_retries": 1})
    emulator.state.add_fault(Fault(kind="unavailable"))
    with pytest.raises(errors.Overloaded, match="UNAVAILABLE"):
        await serve(rig)
    assert len(generations(emulator)) == 4  # 2 tries on each account


async def test_400_is_answered_at_once_without_failover(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig()
    emulator.state.add_fault(Fault(kind="bad_request", times=1))
    with pytest.raises(errors.UpstreamInvalidRequest, match="invalid argument"):
        await serve(rig)
    assert len(generations(emulator)) == 1


async def test_empty_200_is_retried(make_rig: MakeRig, emulator: RunningEmulator) -> None:
    from gateway.emulator import Fault

    rig = await make_rig()
    emulator.state.add_fault(Fault(kind="empty", times=1))
    served = await serve(rig)
    assert _text(served.payloads)
    assert len(generations(emulator)) == 2


async def test_always_empty_is_an_empty_response_error(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig(upstream={"max_retries": 0})
    emulator.state.add_fault(Fault(kind="empty"))
    with pytest.raises(EmptyUpstreamResponse):
        await serve(rig)


async def test_a_stall_before_the_first_payload_times_out_and_retries(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig(upstream={"read_timeout_seconds": 0.5})
    emulator.state.add_fault(Fault(kind="stall", times=1))
    served = await serve(rig)
    assert _text(served.payloads)
    await emulator.state.wait_open_streams(0)


async def test_stalling_everywhere_is_a_timeout(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    # retries and a second endpoint configured: a stall must not multiply into them all
    rig = await make_rig(upstream={"read_timeout_seconds": 0.3, "max_retries": 2,
                                   "base_urls": (emulator.url, emulator.url)})
    emulator.state.add_fault(Fault(kind="stall"))
    with pytest.raises(errors.UpstreamTimeout):
        await serve(rig)
    await emulator.state.wait_open_streams(0)
    generations = [r for r in emulator.state.received if "generatecontent" in r.path.lower()]
    assert len(generations) == 2  # one per account, then the request gives up
    assert {r.email for r in generations} == {"demo1@example.com", "demo2@example.com"}


async def test_404_on_the_first_endpoint_falls_back_to_the_next(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    rig = await make_rig(upstream={"base_urls": (f"{emulator.url}/daily", emulator.url)})
    served = await serve(rig)
    assert served.base_url == emulator.url


async def test_unknown_model_everywhere_is_unknown_model(make_rig: MakeRig) -> None:
    rig = await make_rig()
    with pytest.raises(errors.UnknownModel):
        await serve(rig, model=describe_model("claude-nonexistent-9"))


async def test_model_fallback_when_every_account_is_rate_limited(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig(upstream={"model_fallbacks": {SONNET.id: "gemini-3-flash"}})
    emulator.state.add_fault(Fault(kind="rate_limit", model=SONNET.id, reset_seconds=120))
    served = await serve(rig)
    assert served.model == "gemini-3-flash"
    assert _text(served.payloads)


async def test_a_cut_after_the_first_payload_propagates(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig()
    emulator.state.configure({"text_chunks": 4})
    emulator.state.add_fault(Fault(kind="cut", times=1, cut_after=2))
    with pytest.raises(UpstreamHTTPError):
        await serve(rig)
    assert len(generations(emulator)) == 1  # too late to fail over
    await emulator.state.wait_open_streams(0)


async def test_leaving_early_closes_the_upstream(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    rig = await make_rig()
    emulator.state.configure({"chunk_delay_seconds": 0.2, "text_chunks": 10})
    async with rig.dispatcher.open_stream(
        model=SONNET, sticky_key="s", build_body=build_body
    ) as upstream:
        async for _ in upstream.batches:
            break
    await emulator.state.wait_open_streams(0, timeout=2)


async def test_cancellation_closes_the_upstream(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    rig = await make_rig()
    emulator.state.configure({"chunk_delay_seconds": 0.5, "text_chunks": 10})
    with trio.move_on_after(0.8):
        await serve(rig)
    await emulator.state.wait_open_streams(0, timeout=2)


async def test_no_valid_token_is_no_accounts(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    rig = await make_rig()
    emulator.state.revoke(DEMO1)
    emulator.state.revoke(DEMO2)
    await rig.supervisor.refresh_now()
    with pytest.raises(errors.NoAccounts):
        await serve(rig)


# -- what the peers learned the hard way ----------------------------------------------------


async def test_capacity_503_waits_as_told_on_the_same_account_without_penalty(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig(upstream={"retry_backoff_seconds": 5.0})  # not the path taken
    emulator.state.add_fault(Fault(kind="capacity", account=DEMO1, times=2, reset_seconds=0.3))
    started = trio.current_time()
    served = await serve(rig)
    assert served.email == DEMO1  # waited out, not failed over
    assert trio.current_time() - started >= 0.6  # RetryInfo.retryDelay, twice
    assert [r.email for r in generations(emulator)] == [DEMO1] * 3
    assert rig.pool.cooldown_remaining(DEMO1, SONNET.id) == 0
    assert rig.pool.snapshot().entries[0].consecutive_failures == 0


async def test_capacity_that_outlasts_the_retries_is_an_overloaded_error(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig(upstream={"capacity_retries": 1, "capacity_max_wait_seconds": 5})
    emulator.state.add_fault(Fault(kind="capacity", reset_seconds=0.05))
    with pytest.raises(errors.Overloaded) as caught:
        await serve(rig)
    assert "no capacity" in caught.value.message
    assert caught.value.status == 529 and caught.value.retry_after is not None
    assert len(generations(emulator)) == 4  # two tries on each account
    assert all(e.consecutive_failures == 0 for e in rig.pool.snapshot().entries)
    long_wait = await make_rig(upstream={"capacity_max_wait_seconds": 1})
    emulator.state.clear_faults()
    emulator.state.add_fault(Fault(kind="capacity", reset_seconds=60, times=1, account=DEMO1))
    assert (await serve(long_wait)).email == DEMO2  # a wait too long: another account


async def test_a_bare_429_is_a_soft_retry_not_a_long_cooldown(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig()
    emulator.state.add_fault(Fault(kind="bare_rate_limit", account=DEMO1, times=1))
    served = await serve(rig)
    assert served.email == DEMO1  # retried on the same account
    assert rig.pool.cooldown_remaining(DEMO1, SONNET.id) == 0
    emulator.state.add_fault(Fault(kind="bare_rate_limit", account=DEMO1))  # keeps failing
    served = await serve(rig, session="s2")
    assert served.email == DEMO2
    # a short rest, never the hours a quota 429 gets
    assert 0 < rig.pool.cooldown_remaining(DEMO1, SONNET.id) <= 10


async def test_quota_exhausted_cools_for_the_reset(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    from gateway.emulator import Fault

    rig = await make_rig()
    emulator.state.add_fault(Fault(kind="quota_exhausted", account=DEMO1, times=1,
                                   reset_seconds=7200))
    assert (await serve(rig)).email == DEMO2
    assert rig.pool.cooldown_remaining(DEMO1, SONNET.id) == pytest.approx(7200, abs=5)


@pytest.mark.parametrize("gate", ["text", "error"])
async def test_the_version_gate_is_a_clear_error_and_no_account_is_penalised(
    make_rig: MakeRig, emulator: RunningEmulator, gate: str
) -> None:
    emulator.state.version_gate = gate
    rig = await make_rig(upstream={"user_agent": "antigravity/1.11.5 linux/amd64"})
    with pytest.raises(errors.ClientVersionRefused) as caught:
        await serve(rig)
    message = caught.value.message
    assert "upstream.user_agent" in message and "antigravity/1.11.5" in message
    assert caught.value.status == 502
    assert len(generations(emulator)) == 1  # not tried on the other account
    assert all(e.consecutive_failures == 0 and not e.cooldowns
               for e in rig.pool.snapshot().entries)
    assert rig.metrics.version_refusals._value.get() == 1


async def test_an_answer_that_only_starts_like_the_refusal_is_served(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    rig = await make_rig()

    async def body(project: str, model: ModelInfo) -> bytes:
        sent = body_for(project, model)
        sent["request"]["contents"][0]["parts"][0]["text"] = "This version"
        return json.dumps(sent).encode()

    async with rig.dispatcher.open_stream(model=SONNET, sticky_key="x", build_body=body) as up:
        text = _text([p async for batch in up.batches for p in batch])
    assert text == "Echo: This version"


async def test_calls_present_todays_client_identity(
    make_rig: MakeRig, emulator: RunningEmulator
) -> None:
    rig = await make_rig(upstream={"extra_headers": {"X-Client-Version": "1.110.0"}})
    await serve(rig)
    by_path = {r.path: r for r in emulator.state.received}
    generation = by_path["/v1internal:streamGenerateContent"].headers
    assert generation["user-agent"] == "antigravity/hub/2.9.1 darwin/arm64"
    assert generation["x-client-version"] == "1.110.0"
    assert "client-metadata" not in generation and "x-goog-api-client" not in generation
    probe = by_path["/v1internal:fetchAvailableModels"].headers
    assert probe["user-agent"] == "antigravity/hub/2.9.1 darwin/arm64"
