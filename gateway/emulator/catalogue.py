"""The emulator's own picture of the upstream: its model lineup and its client gate.

This is the emulator's data, kept apart from the gateway's tables on purpose: it is what
Cloud Code served in late 2026 as the newest public peers saw it (claude-opus-4-6-thinking,
claude-sonnet-4-6, the gemini-3.1 Pro pair, gemini-3 Flash and the 3.5-3.7 Flash
variants, gpt-oss, plus internal ids a client must not offer), with the upstream's own
limits. Where the gateway's built-in table is dated or wrong, the gateway has to learn from
`fetchAvailableModels` like it would from Google.

The client gate: Cloud Code answers an Antigravity User-Agent older than
`MIN_DESKTOP_VERSION` (or a CLI one older than `MIN_CLI_VERSION`, or one that is not
Antigravity at all) with "This version of Antigravity is no longer supported..." (as model
text in a 200, which is how it arrived in 2026, or as an error), and models marked with
`min_version` answer 404 to clients below it (CPA saw this below 2.9.0).
"""

from __future__ import annotations

import re
from typing import Literal

import attrs

__all__ = [
    "DEPRECATED",
    "MIN_CLI_VERSION",
    "MIN_DESKTOP_VERSION",
    "MODELS",
    "VERSION_REFUSAL",
    "ClientVersion",
    "EmulatedModel",
    "client_version",
]

Family = Literal["claude", "gemini", "gpt"]
# always: a "-thinking" id, thinks whenever given a budget; optional: thinks only when
# asked (a budget or level); none: never.
ThinkingMode = Literal["always", "optional", "none"]

VERSION_REFUSAL = (
    "This version of Antigravity is no longer supported. Please update to receive the "
    "latest features!"
)
MIN_DESKTOP_VERSION = (2, 0, 0)
MIN_CLI_VERSION = (1, 1, 0)
_NEW_MODELS = (2, 9, 0)


@attrs.frozen(slots=True)
class EmulatedModel:
    id: str
    display_name: str
    family: Family
    context: int
    max_output: int
    thinking: ThinkingMode
    # thinkingLevel values the model takes (Gemini 3); empty: levels are refused
    levels: tuple[str, ...] = ()
    # desktop clients below this version get 404 for the model
    min_version: tuple[int, ...] | None = None
    internal: bool = False  # listed by fetchAvailableModels, not servable
    images: bool = True

    @property
    def signs_calls(self) -> bool:
        """Gemini 3 and later want a thought signature on replayed function calls."""
        found = re.match(r"gemini-(\d+)", self.id)
        return self.family == "gemini" and found is not None and int(found.group(1)) >= 3


_FLASH_LEVELS = ("minimal", "low", "medium", "high")
_PRO_LEVELS = ("low", "medium", "high")

MODELS: tuple[EmulatedModel, ...] = (
    EmulatedModel("claude-opus-4-6-thinking", "Claude Opus 4.6 (Thinking)", "claude",
                  200_000, 64_000, "always"),
    EmulatedModel("claude-sonnet-4-6", "Claude Sonnet 4.6", "claude", 200_000, 64_000,
                  "optional"),
    EmulatedModel("gemini-3.1-pro-high", "Gemini 3.1 Pro (High)", "gemini", 1_048_576, 65_535,
                  "optional", _PRO_LEVELS),
    EmulatedModel("gemini-3.1-pro-low", "Gemini 3.1 Pro (Low)", "gemini", 1_048_576, 65_535,
                  "optional", _PRO_LEVELS),
    EmulatedModel("gemini-3-flash", "Gemini 3 Flash", "gemini", 1_048_576, 65_536, "optional",
                  _FLASH_LEVELS),
    EmulatedModel("gemini-3-flash-agent", "Gemini 3 Flash (Agent)", "gemini", 1_048_576,
                  65_536, "optional", _FLASH_LEVELS),
    EmulatedModel("gemini-3.1-flash-lite", "Gemini 3.1 Flash Lite", "gemini", 1_048_576,
                  65_535, "optional", _FLASH_LEVELS),
    EmulatedModel("gemini-3.5-flash-low", "Gemini 3.5 Flash (Low)", "gemini", 1_048_576,
                  65_536, "optional", _PRO_LEVELS, min_version=_NEW_MODELS),
    EmulatedModel("gemini-3.6-flash-high", "Gemini 3.6 Flash (High)", "gemini", 1_048_576,
                  65_536, "optional", _FLASH_LEVELS, min_version=_NEW_MODELS),
    EmulatedModel("gpt-oss-120b-medium", "GPT-OSS 120B (Medium)", "gpt", 114_000, 32_768,
                  "none", images=False),
    EmulatedModel("chat_20706", "", "gemini", 1_048_576, 65_536, "none", internal=True),
    EmulatedModel("tab_flash_lite_preview", "", "gemini", 1_048_576, 8_192, "none",
                  internal=True),
)
BY_ID = {m.id: m for m in MODELS}

# Ids the upstream retired, and what replaced them (fetchAvailableModels'
# deprecatedModelIds); asking for one of them is a 404.
DEPRECATED: dict[str, str] = {
    "claude-sonnet-4-5": "claude-sonnet-4-6",
    "claude-sonnet-4-5-thinking": "claude-sonnet-4-6",
    "claude-opus-4-5-thinking": "claude-opus-4-6-thinking",
    "gemini-3-pro-high": "gemini-3.1-pro-high",
    "gemini-3-pro-low": "gemini-3.1-pro-low",
}


@attrs.frozen(slots=True)
class ClientVersion:
    kind: Literal["desktop", "cli", "unknown"]
    version: tuple[int, ...]

    @property
    def supported(self) -> bool:
        if self.kind == "desktop":
            return self.version >= MIN_DESKTOP_VERSION
        if self.kind == "cli":
            return self.version >= MIN_CLI_VERSION
        return False

    def may_use(self, model: EmulatedModel) -> bool:
        if model.min_version is None or self.kind == "cli":
            return True
        return self.version >= model.min_version


_USER_AGENT = re.compile(r"^antigravity/(?:(hub|cli)/)?(\d+(?:\.\d+)*)", re.IGNORECASE)


def client_version(user_agent: str) -> ClientVersion:
    """What an Antigravity User-Agent says (`antigravity/2.0.3 linux/x64`,
    `antigravity/hub/2.9.1 darwin/arm64`, `antigravity/cli/1.1.12 windows/amd64`)."""
    found = _USER_AGENT.match(user_agent.strip())
    if found is None:
        return ClientVersion("unknown", ())
    version = tuple(int(x) for x in found.group(2).split("."))
    return ClientVersion("cli" if found.group(1) == "cli" else "desktop", version)
