"""Helpers shared by tests: handles on a running emulator and gateway, config tweaks."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from gateway.config import Config

if TYPE_CHECKING:
    import httpx
    import trio

    from gateway.accounts.pool import AccountPool
    from gateway.accounts.store import AccountStore
    from gateway.accounts.supervisor import Supervisor
    from gateway.metrics import Metrics
    from gateway.upstream.dispatch import Dispatcher


@attrs.define
class RunningEmulator:
    url: str
    state: Any


@attrs.define
class RunningGateway:
    url: str
    config: Config
    app: Any
    emulator: RunningEmulator

    @property
    def services(self) -> Any:
        return self.app.extensions["gateway"]


def fast_config(base: Config, **sections: dict[str, Any]) -> Config:
    """Evolve config sections, e.g. fast_config(c, server={"keepalive_seconds": 0.1})."""
    for name, changes in sections.items():
        base = attrs.evolve(base, **{name: attrs.evolve(getattr(base, name), **changes)})
    return base


def generation_requests(emulator: RunningEmulator) -> list[dict[str, Any]]:
    """Bodies of the generation calls the emulator received, oldest first."""
    return [r.body for r in emulator.state.received if "generatecontent" in r.path.lower()]


@attrs.define
class Rig:
    """The account machinery without the web layer: pool, supervisor, dispatcher, against
    the emulator (built by the `make_rig` fixture)."""

    config: Config
    store: AccountStore
    pool: AccountPool
    supervisor: Supervisor
    dispatcher: Dispatcher
    metrics: Metrics
    http: httpx.AsyncClient
    scope: trio.CancelScope


MakeRig = Callable[..., Awaitable[Rig]]


# Canonical stream events as golden JSON: {"event": "<class name>", **fields}.
def event_from_json(data: dict[str, Any]) -> Any:
    from gateway.translate import canonical as c

    kinds: dict[str, type[Any]] = {
        cls.__name__: cls
        for cls in (
            c.BlockStart, c.TextDelta, c.ThinkingDelta, c.SignatureDelta, c.ToolInputDelta,
            c.BlockStop, c.ToolSignature, c.UsageUpdate, c.MessageEnd,
        )
    }
    fields = {k: v for k, v in data.items() if k != "event"}
    if "usage" in fields:
        fields["usage"] = c.Usage(**fields["usage"])
    return kinds[data["event"]](**fields)


T = TypeVar("T")


@attrs.frozen
class GoldenFiles:
    """A folder of golden JSON files: each holds its input and, under `expected`, what the
    code under test made of it. With GATEWAY_UPDATE_GOLDEN=1, `check` rewrites `expected`
    (then review the diff: these files are the protocol)."""

    folder: Path

    def names(self, prefix: str) -> list[str]:
        return sorted(p.stem for p in self.folder.glob(f"{prefix}_*.json"))

    def load(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.folder / f"{name}.json").read_text())
        return data

    def check(self, name: str, actual: Any) -> None:
        path = self.folder / f"{name}.json"
        data = json.loads(path.read_text())
        actual = json.loads(json.dumps(actual))  # tuples become lists, as in the file
        if os.environ.get("GATEWAY_UPDATE_GOLDEN") == "1":
            data["expected"] = actual
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        assert "expected" in data, f"{path.name} has no expected output; run " \
                                   "GATEWAY_UPDATE_GOLDEN=1"
        assert actual == data["expected"]


async def in_thread(fn: Callable[[], T]) -> T:
    """Run a blocking SDK call (the sync clients) off the event loop that serves it."""
    import trio

    return await trio.to_thread.run_sync(fn)


async def raw_request(gateway: RunningGateway, method: str, path: str,
                      **kwargs: Any) -> httpx.Response:
    """One plain HTTP request to the gateway, for what an SDK would not send or show."""
    import httpx

    async with httpx.AsyncClient(timeout=30) as http:
        return await http.request(method, gateway.url + path, **kwargs)


def response_from_json(data: dict[str, Any]) -> Any:
    """A canonical ChatResponse from a golden file's `response` (blocks by their type)."""
    from gateway.translate import canonical as c

    blocks: dict[str, type[Any]] = {
        "text": c.TextBlock, "thinking": c.ThinkingBlock,
        "redacted_thinking": c.RedactedThinkingBlock, "tool_use": c.ToolUseBlock,
    }
    content = tuple(
        blocks[b["type"]](**{k: v for k, v in b.items() if k != "type"}) for b in data["content"]
    )
    fields = {k: v for k, v in data.items() if k not in ("content", "usage")}
    return c.ChatResponse(content=content, usage=c.Usage(**data["usage"]), **fields)
