"""Helpers shared by tests: handles on a running emulator and gateway, config tweaks."""

from __future__ import annotations

from typing import Any

import attrs

from gateway.config import Config


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
