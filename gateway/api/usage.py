"""`GET /usage`: the usage history as JSON (requests and tokens per hour, day, account,
model or API key label), read from the SQLite file the gateway writes, its pending batch
included. Query parameters: `since` and `until` (epoch seconds, ISO 8601 or a duration ago
such as `7d`; the last 24 hours by default) and `group_by` (comma separated).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quart import Blueprint, current_app, request

from gateway import errors
from gateway.state.usage import DAY, parse_time

if TYPE_CHECKING:
    from gateway.app import Services

blueprint = Blueprint("usage", __name__)


@blueprint.get("/usage")
async def usage() -> dict[str, Any]:
    services: Services = current_app.extensions["gateway"]
    history = services.usage
    if history is None:
        raise errors.NotFound("usage history is off (usage.enabled = false)")
    now = services.clock()
    given_until = request.args.get("until")
    until = now if given_until is None else parse_time(given_until, now=now, name="until")
    given_since = request.args.get("since")
    since = until - DAY if given_since is None else parse_time(given_since, now=now,
                                                              name="since")
    # `group_by=day,model` or `group_by=day&group_by=model`
    return await history.query(since, until, ",".join(request.args.getlist("group_by")))
