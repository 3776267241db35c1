"""Operational endpoints: /health, /account-limits, /refresh-token, /metrics, /v1/models."""

from __future__ import annotations

import logging
import re
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio

from gateway.emulator import Fault
from tests.support import RunningEmulator, RunningGateway

DEMO1, DEMO2 = "demo1@example.com", "demo2@example.com"
MODEL = "gemini-3-flash"


async def test_health_reports_accounts(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient() as http:
        health = (await http.get(gateway.url + "/health")).json()
    assert health["status"] == "ok"
    assert health["accounts"] == 2
    assert health["activeAccounts"] == 2
    assert health["demo"] is True


async def test_health_never_calls_upstream(
    gateway: RunningGateway, emulator: RunningEmulator
) -> None:
    def upstream_calls() -> int:  # token refreshes are the supervisor's, on its own clock
        return sum(1 for r in emulator.state.received if r.path != "/token")

    before = upstream_calls()
    async with httpx.AsyncClient() as http:
        for _ in range(20):
            assert (await http.get(gateway.url + "/health")).status_code == 200
            assert (await http.get(gateway.url + "/account-limits")).status_code == 200
    assert upstream_calls() == before


async def test_account_limits_json_and_table_show_quota_and_cooldown(
    gateway: RunningGateway, emulator: RunningEmulator
) -> None:
    emulator.state.set_quota(DEMO2, MODEL, 0.25, "2026-12-01T00:00:00Z")
    # a 429 on demo1: the request fails over and demo1 cools down for this model
    emulator.state.add_fault(
        Fault(kind="rate_limit", account=DEMO1, model=MODEL, reset_seconds=900)
    )
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(4):  # distinct conversations, so at least one lands on demo1 first
            response = await http.post(
                gateway.url + "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": f"hi {i}"}]},
            )
            assert response.status_code == 200
        # re-probes demo2 (a forced refresh also clears that account's cooldowns, not demo1's)
        await http.post(gateway.url + "/refresh-token", json={"email": DEMO2})
        with trio.fail_after(5):
            while True:
                limits = (await http.get(gateway.url + "/account-limits")).json()
                by_email = {a["email"]: a for a in limits["accounts"]}
                quota = by_email[DEMO2]["models"].get(MODEL, {}).get("remainingFraction")
                if quota == 0.25 and "cooldownSeconds" in by_email[DEMO1]["models"].get(MODEL, {}):
                    break
                await trio.sleep(0.02)
        table = await http.get(gateway.url + "/account-limits", params={"format": "table"})
        bad = await http.get(gateway.url + "/account-limits", params={"format": "xml"})
    assert 800 < by_email[DEMO1]["models"][MODEL]["cooldownSeconds"] <= 900
    assert by_email[DEMO1]["status"] == "ok"
    assert table.headers["content-type"].startswith("text/plain")
    lines = table.text.splitlines()
    assert lines[0].split() == ["ACCOUNT", "STATUS", "MODEL", "REMAINING", "RESETS", "COOLDOWN"]
    # the cooling row shows about 15 minutes, as a person reads it
    cooling = [line for line in lines if MODEL in line and re.search(r"1[45]m\d+s$", line)]
    assert len(cooling) == 1, table.text
    assert any("25%" in line for line in lines)
    assert "2/2 accounts active" in table.text
    assert bad.status_code == 400


async def test_refresh_token_all_and_one(
    gateway: RunningGateway, emulator: RunningEmulator
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        everything = await http.post(gateway.url + "/refresh-token")
        one = await http.post(gateway.url + "/refresh-token", json={"email": DEMO2})
        unknown = await http.post(gateway.url + "/refresh-token", json={"email": "x@y.z"})
        emulator.state.add_fault(Fault(kind="invalid_grant", account=DEMO1))
        revoked = await http.post(gateway.url + "/refresh-token", params={"email": DEMO1})
    assert everything.status_code == 200
    assert set(everything.json()["results"]) == {DEMO1, DEMO2}
    assert all(r["ok"] for r in everything.json()["results"].values())
    assert set(one.json()["results"]) == {DEMO2}
    assert unknown.status_code == 404
    assert revoked.status_code == 200
    assert revoked.json()["results"][DEMO1]["ok"] is False
    snapshot = {e.email: e.status for e in gateway.services.pool.snapshot().entries}
    assert snapshot == {DEMO1: "invalid", DEMO2: "ok"}


async def test_metrics_scrape(gateway: RunningGateway, emulator: RunningEmulator) -> None:
    emulator.state.add_fault(Fault(kind="rate_limit", account=DEMO1, reset_seconds=600))
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(3):
            await http.post(
                gateway.url + "/v1/messages",
                json={"model": MODEL, "max_tokens": 16,
                      "messages": [{"role": "user", "content": f"m{i}"}]},
            )
        await http.post(gateway.url + "/v1/chat/completions", json={"model": "nope"})
        scrape = await http.get(gateway.url + "/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    text = scrape.text
    assert 'gateway_requests_total{model="gemini-3-flash",route="anthropic",status="200"}' in text
    assert 'route="openai",status="400"' in text or 'route="openai",status="404"' in text
    assert "gateway_request_seconds_bucket" in text
    assert "gateway_time_to_first_byte_seconds" in text
    assert "gateway_upstream_first_payload_seconds_count" in text
    assert "gateway_open_streams 0.0" in text
    assert "gateway_token_refreshes_total" in text
    assert "gateway_account_cooldown_seconds{account=\"acct-" in text
    assert "demo1@example.com" not in text  # accounts are hashed handles


async def test_models_list_in_both_sdks(gateway: RunningGateway) -> None:
    oa = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    an = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    oa_models = await trio.to_thread.run_sync(lambda: list(oa.models.list()))
    an_models = await trio.to_thread.run_sync(lambda: list(an.models.list()))
    ids = {m.id for m in oa_models}
    # exactly what the emulator serves now (not the gateway's built-in table): internal ids
    # left out
    served = {m.id for m in gateway.emulator.state.models.values() if not m.internal}
    assert ids == served
    assert "gemini-3.5-flash-low" in ids  # a model the gateway does not know by heart
    assert {m.owned_by for m in oa_models} == {"anthropic", "google", "openai"}
    assert {m.id for m in an_models} == ids
    opus = next(m for m in an_models if m.id == "claude-opus-4-6-thinking")
    assert (opus.max_input_tokens, opus.max_tokens, opus.lifecycle, opus.line) == (
        200_000, 64_000, "active", "opus")


async def test_model_retrieve_in_both_sdks(gateway: RunningGateway) -> None:
    oa = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    an = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    one = await trio.to_thread.run_sync(lambda: oa.models.retrieve("gemini-3-flash"))
    other = await trio.to_thread.run_sync(lambda: an.models.retrieve("claude-sonnet-4-6"))
    assert (one.id, one.owned_by) == ("gemini-3-flash", "google")
    assert other.id == "claude-sonnet-4-6"
    with pytest.raises(anthropic.NotFoundError) as info:
        await trio.to_thread.run_sync(lambda: an.models.retrieve("no-such-model"))
    assert info.value.body["type"] == "error"  # type: ignore[index]


async def test_unknown_path_answers_in_the_clients_format(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient() as http:
        plain = await http.get(gateway.url + "/v2/nothing")
        from_anthropic_sdk = await http.get(
            gateway.url + "/v2/nothing", headers={"anthropic-version": "2023-06-01"}
        )
    assert plain.status_code == from_anthropic_sdk.status_code == 404
    assert set(plain.json()["error"]) >= {"message", "type", "param", "code"}
    assert from_anthropic_sdk.json()["type"] == "error"


async def test_responses_carry_a_request_id(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        ok = await http.post(
            gateway.url + "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
        bad = await http.post(gateway.url + "/v1/messages", json={"model": MODEL})
    for response in (ok, bad):
        assert response.headers["request-id"] == response.headers["x-request-id"]
        assert len(response.headers["request-id"]) >= 16
    assert ok.headers["request-id"] != bad.headers["request-id"]


async def test_readded_account_is_adopted_and_not_marked_invalid(
    gateway: RunningGateway, emulator: RunningEmulator
) -> None:
    """The grant was revoked; the operator re-adds the account in another shell while the
    gateway runs, then asks for a refresh: the new grant is used, the old one's failure
    never reaches the new record on disk."""
    from gateway.accounts.model import Account
    from gateway.accounts.store import AccountStore

    store = AccountStore(gateway.config.accounts.file)
    emulator.state.add_account(DEMO1, "demo-refresh-1-renewed", project="demo-project-1")
    async with httpx.AsyncClient(timeout=30) as http:
        revoked = await http.post(gateway.url + "/refresh-token", json={"email": DEMO1})
        assert revoked.json()["results"][DEMO1]["ok"] is False
        assert {a.email: a for a in store.load()}[DEMO1].invalid_reason
        # `gateway accounts add` in another process writes the new grant
        await store.aupsert(Account(DEMO1, "demo-refresh-1-renewed", "demo-project-1"))
        renewed = await http.post(gateway.url + "/refresh-token", json={"email": DEMO1})
        assert renewed.json()["results"][DEMO1]["ok"] is True
        reply = await http.post(
            gateway.url + "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "after re-add"}]},
        )
    assert reply.status_code == 200
    stored = {a.email: a for a in store.load()}[DEMO1]
    assert stored.refresh_token == "demo-refresh-1-renewed"
    assert stored.invalid_reason is None
    statuses = {e.email: e.status for e in gateway.services.pool.snapshot().entries}
    assert statuses[DEMO1] == "ok"


async def test_health_is_503_when_no_account_can_serve(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(gateway.url + "/health")).status_code == 200
        for email in ("demo1@example.com", "demo2@example.com"):
            gateway.services.pool.mark_invalid(email, "invalid_grant")
        health = await http.get(gateway.url + "/health")
    assert health.status_code == 503
    assert health.json()["status"] == "degraded" and health.json()["invalidAccounts"] == 2


async def test_health_is_503_while_the_upstream_refuses_our_client_version(
    start_gateway: Any,
) -> None:
    gateway = await start_gateway(upstream={"user_agent": "antigravity/1.11.5 linux/amd64"})
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(gateway.url + "/health")).status_code == 200
        refused = await http.post(gateway.url + "/v1/messages", json={
            "model": "claude-sonnet-4-6", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]})
        health = await http.get(gateway.url + "/health")
    assert refused.status_code == 502
    assert health.status_code == 503 and health.json()["clientVersionRefused"] is True


async def test_every_request_is_logged_and_recorded(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """Unknown routes, model lists, token counts and refused chat requests all get an
    access line, a metric and a record (with the model and stream flag they asked for)."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        await http.get("/nope")
        await http.get("/v1/models")
        await http.post("/v1/messages/count_tokens", json={
            "model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}]})
        await http.post("/v1/chat/completions", json={
            "model": "no-such-model", "stream": True, "messages": [
                {"role": "user", "content": "hi"}]})
        await http.get("/health")
    records = list(gateway.services.requests.recent)
    by_face = {r.face: r for r in records}
    assert by_face["unknown"].status == 404
    assert by_face["models"].status == 200
    assert by_face["count_tokens"].status == 200
    refused = by_face["openai"]
    assert (refused.status, refused.model_asked, refused.stream) == (404, "no-such-model", True)
    assert "health" not in by_face  # probes are counted, not listed
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert any("route=unknown" in line and "status=404" in line for line in lines)
    assert any("requested=no-such-model" in line and "stream=True" in line for line in lines)
    metrics = (await httpx.AsyncClient().get(gateway.url + "/metrics")).text
    assert 'route="count_tokens"' in metrics and 'route="unknown"' in metrics
