"""Operational routes: models, health, account limits, token refresh, metrics.

They read the supervisor's published snapshot and never call the upstream themselves
(POST /refresh-token asks the supervisor to do it), so they stay fast under any load.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response, current_app, request

from gateway import errors
from gateway.metrics import CONTENT_TYPE
from gateway.translate.models import ModelInfo

if TYPE_CHECKING:
    from gateway.accounts.pool import PoolSnapshot
    from gateway.app import Services

blueprint = Blueprint("admin", __name__)

_STARTED = time.time()


def _services() -> Services:
    services: Services = current_app.extensions["gateway"]
    return services


def _model_entry(info: ModelInfo, *, name: str | None = None) -> dict[str, Any]:
    """One model in a shape both SDKs accept.

    OpenAI's (`object`, `owned_by`, `created`) and Anthropic's (`type`, `display_name`,
    `created_at`) model objects share `id`; one body carries both. Under another `name`
    (an alias or a family name) the entry says which model serves it (`alias_of`).
    """
    entry: dict[str, Any] = {
        "id": name or info.id,
        "object": "model",
        "created": 0,
        "owned_by": info.owned_by,
        "type": "model",
        "display_name": info.display_name,
        "created_at": "1970-01-01T00:00:00Z",
        "context_window": info.context_window,
        "max_output_tokens": info.max_output_tokens,
        # the Anthropic Models API's own names for those two, and its lifecycle
        "max_input_tokens": info.context_window,
        "max_tokens": info.max_output_tokens,
        "lifecycle": "active",
        "thinking": info.thinking,
    }
    if info.family == "claude" and info.line is not None:
        entry["line"] = info.line
    if name is not None and name != info.id:
        entry["alias_of"] = info.id
    return entry


@blueprint.get("/v1/models")
async def list_models() -> dict[str, Any]:
    """The models the accounts serve (the built-in list until the first probe answers),
    then the configured aliases that resolve."""
    services = _services()
    catalogue = services.catalogue()
    data = [_model_entry(info) for info in catalogue.models]
    for alias in services.config.models.aliases:
        if "*" in alias or alias in catalogue:
            continue
        try:
            data.append(_model_entry(services.resolve_model(alias), name=alias))
        except errors.GatewayError:
            continue
    return {
        "object": "list",
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


@blueprint.get("/v1/models/<path:model_id>")
async def get_model(model_id: str) -> dict[str, Any]:
    """One model by id or alias (what `client.models.retrieve(...)` calls)."""
    return _model_entry(_services().resolve_model(model_id), name=model_id)


@blueprint.get("/health")
async def health() -> tuple[dict[str, Any], int]:
    """200 while some account can serve; 503 (same JSON) when none can, or when the upstream
    refuses this gateway's client version, so a load balancer notices."""
    services = _services()
    snap = services.pool.snapshot()
    refused = services.dispatcher.version_refused
    serving = snap.active_accounts > 0 and not refused
    return (
        {
            "status": "ok" if serving else "degraded",
            "accounts": snap.accounts,
            "activeAccounts": snap.active_accounts,
            "rateLimitedAccounts": sum(1 for a in snap.entries if a.cooldowns),
            "invalidAccounts": sum(1 for a in snap.entries if a.status == "invalid"),
            "clientVersionRefused": refused,
            "models": len(services.catalogue()),
            "uptimeSeconds": round(time.time() - _STARTED, 1),
            "demo": services.demo,
            **services.state.describe(),
        },
        200 if serving else 503,
    )


def _limits_json(snap: PoolSnapshot, now: float) -> dict[str, Any]:
    accounts = []
    for entry in snap.entries:
        models: dict[str, Any] = {}
        for model, (fraction, reset_time) in sorted(entry.quotas.items()):
            models[model] = {"remainingFraction": fraction, "resetTime": reset_time}
        for model, seconds in sorted(entry.cooldowns.items()):
            models.setdefault(model, {"remainingFraction": None, "resetTime": None})
            models[model]["cooldownSeconds"] = round(seconds, 1)
        accounts.append(
            {
                "email": entry.email,
                "account": entry.handle,
                "status": entry.status,
                "tier": entry.tier,
                "project": entry.project,
                "tokenExpiresIn": entry.token_expires_in,
                "models": models,
            }
        )
    return {"timestamp": now, "accounts": accounts}


def _duration(seconds: float) -> str:
    """3723.4 -> '1h2m4s': what a person reads in a terminal."""
    total = max(0, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _limits_table(snap: PoolSnapshot) -> str:
    rows = [("ACCOUNT", "STATUS", "MODEL", "REMAINING", "RESETS", "COOLDOWN")]
    for entry in snap.entries:
        models = sorted(set(entry.quotas) | set(entry.cooldowns)) or ["-"]
        for i, model in enumerate(models):
            fraction, reset_time = entry.quotas.get(model, (None, None))
            cooldown = entry.cooldowns.get(model)
            rows.append(
                (
                    entry.email if i == 0 else "",
                    entry.status if i == 0 else "",
                    model,
                    "-" if fraction is None else f"{fraction * 100:.0f}%",
                    reset_time or "-",
                    "-" if cooldown is None else _duration(cooldown),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    summary = f"{snap.active_accounts}/{snap.accounts} accounts active"
    return "\n".join([*lines, "", summary]) + "\n"


@blueprint.get("/account-limits")
async def account_limits() -> Any:
    services = _services()
    snap = services.pool.snapshot()
    fmt = request.args.get("format", "json")
    if fmt == "table":
        return Response(_limits_table(snap), content_type="text/plain; charset=utf-8")
    if fmt != "json":
        raise errors.InvalidRequest("format must be 'json' or 'table'", param="format")
    return _limits_json(snap, time.time())


@blueprint.post("/refresh-token")
async def refresh_token() -> dict[str, Any]:
    services = _services()
    email = request.args.get("email")
    if email is None:
        raw = await request.get_data(cache=False)
        if raw and raw.strip():
            from gateway.api.chat import parse_json

            body = parse_json(raw if isinstance(raw, bytes) else raw.encode())
            if not isinstance(body, dict):
                raise errors.InvalidRequest("body must be a JSON object")
            given = body.get("email")
            if given is not None and not isinstance(given, str):
                raise errors.InvalidRequest("email must be a string", param="email")
            email = given
    if email is not None and email not in services.pool.emails():
        await services.supervisor.reload_accounts()  # added on disk a moment ago?
        if email not in services.pool.emails():
            raise errors.NotFound(f"no account {email[:200]!r}", param="email")
    # A forced refresh also forgets cooldowns (say, after quota was restored early); the
    # re-probe that follows the refresh restores those the upstream still reports.
    services.pool.clear_cooldowns(email)
    results = await services.supervisor.refresh_now(email)
    return {"results": results}


@blueprint.post("/api/event_logging/batch")
async def claude_code_telemetry() -> dict[str, Any]:
    """Claude Code posts its telemetry to its base URL: accepted and dropped, unread."""
    await request.get_data(cache=False)
    return {"status": "ok"}


@blueprint.get("/metrics")
async def metrics() -> Response:
    return Response(_services().metrics.render(), content_type=CONTENT_TYPE)
