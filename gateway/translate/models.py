"""The models the upstream serves, and how client model names map onto them.

`catalogue()` lists the Claude and Gemini models Cloud Code serves, under the ids the upstream
itself uses, with the traits the translators need (family, thinking, output and context
limits, default thinking budget). `resolve_model` turns whatever a client sends — an exact id,
an Anthropic dated id such as `claude-sonnet-4-5-20250929`, a `-latest` alias, a Google
`models/` path, Claude Code's `[1m]` suffix — into one of them, optionally restricted to the
ids the accounts report as available. An id the upstream reports that this table does not
know still resolves, with traits inferred from its name, so new upstream models work before
the table learns them.

Alias table (first available target wins):

====================================================  ==========================================
client name (after normalising)                       served model
====================================================  ==========================================
claude-opus-4-5, claude-opus-4-1, claude-opus-4,      claude-opus-4-5-thinking
claude-3-opus, claude-opus (any date / -latest)
claude-sonnet-4-5, claude-sonnet-4, claude-3-7-       claude-sonnet-4-5, then
sonnet, claude-3-5-sonnet, claude-sonnet              claude-sonnet-4-5-thinking
claude-haiku-4-5, claude-3-5-haiku, claude-3-haiku,   claude-sonnet-4-5 (no Haiku is served; the
claude-haiku                                          smallest Claude is the closest match)
gemini-3-pro, gemini-3-pro-preview                    gemini-3-pro-high, then gemini-3-pro-low
gemini-3-flash-preview                                gemini-3-flash
gemini-2.5-pro-preview*, gemini-2.5-flash-preview*    gemini-2.5-pro / gemini-2.5-flash
====================================================  ==========================================

Normalising: lower case; a `models/`, `google/` or `anthropic/` prefix, a `[...]` suffix,
a trailing `-YYYYMMDD` date and a trailing `-latest` are removed.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Literal

import attrs

from gateway import errors

__all__ = ["ModelInfo", "catalogue", "infer_model", "resolve_model"]

Family = Literal["claude", "gemini"]


@attrs.frozen(slots=True)
class ModelInfo:
    id: str  # exactly as the upstream names it
    family: Family
    display_name: str
    thinking: bool  # the model thinks (and can show its thoughts)
    max_output_tokens: int  # the upstream's per-model cap on maxOutputTokens
    context_window: int
    # Budget sent when the client asks for thinking without one; None lets the model decide.
    default_thinking_budget: int | None
    owned_by: str


_CLAUDE_CONTEXT = 200_000
_CLAUDE_OUTPUT = 64_000
_GEMINI_CONTEXT = 1_048_576
# The upstream advertises 65535 (not 65536) for most Gemini models and rejects more.
_GEMINI_OUTPUT = 65_535
# Claude requires an explicit budget; 16k is what the Antigravity IDE itself sends.
_CLAUDE_BUDGET = 16_384


def _claude(model_id: str, name: str, *, thinking: bool) -> ModelInfo:
    return ModelInfo(
        id=model_id,
        family="claude",
        display_name=name,
        thinking=thinking,
        max_output_tokens=_CLAUDE_OUTPUT,
        context_window=_CLAUDE_CONTEXT,
        default_thinking_budget=_CLAUDE_BUDGET if thinking else None,
        owned_by="anthropic",
    )


def _gemini(model_id: str, name: str) -> ModelInfo:
    # Every Gemini the upstream serves thinks; its budget (or the level encoded in the id,
    # as in gemini-3-pro-high) is the model's own unless the client sets one.
    return ModelInfo(
        id=model_id,
        family="gemini",
        display_name=name,
        thinking=True,
        max_output_tokens=_GEMINI_OUTPUT,
        context_window=_GEMINI_CONTEXT,
        default_thinking_budget=None,
        owned_by="google",
    )


_CATALOGUE: tuple[ModelInfo, ...] = (
    _claude("claude-sonnet-4-5", "Claude Sonnet 4.5", thinking=False),
    _claude("claude-sonnet-4-5-thinking", "Claude Sonnet 4.5 (thinking)", thinking=True),
    _claude("claude-opus-4-5-thinking", "Claude Opus 4.5 (thinking)", thinking=True),
    _gemini("gemini-3-pro-high", "Gemini 3 Pro (high thinking)"),
    _gemini("gemini-3-pro-low", "Gemini 3 Pro (low thinking)"),
    _gemini("gemini-3-flash", "Gemini 3 Flash"),
    _gemini("gemini-2.5-pro", "Gemini 2.5 Pro"),
    _gemini("gemini-2.5-flash", "Gemini 2.5 Flash"),
    _gemini("gemini-2.5-flash-thinking", "Gemini 2.5 Flash (thinking)"),
    _gemini("gemini-2.5-flash-lite", "Gemini 2.5 Flash Lite"),
)
_BY_ID = {m.id: m for m in _CATALOGUE}

_OPUS = ("claude-opus-4-5-thinking",)
_SONNET = ("claude-sonnet-4-5", "claude-sonnet-4-5-thinking")
_GEMINI_3_PRO = ("gemini-3-pro-high", "gemini-3-pro-low")

# (pattern on the normalised name, served ids in order of preference, and a prefix: when
# none of those is available, the newest available id with that prefix serves instead)
_ALIASES: tuple[tuple[re.Pattern[str], tuple[str, ...], str], ...] = (
    (re.compile(r"^claude-(?:opus-4(?:-[015])?|3-opus|opus)(?:-thinking)?$"), _OPUS, "claude-opus"),
    (re.compile(r"^claude-sonnet-4-5-thinking$"), _SONNET[::-1], "claude-sonnet"),
    (
        re.compile(r"^claude-(?:sonnet-4(?:-[05])?|3-7-sonnet|3-5-sonnet|sonnet)$"),
        _SONNET,
        "claude-sonnet",
    ),
    (re.compile(r"^claude-(?:haiku-4(?:-5)?|3-5-haiku|3-haiku|haiku)$"), _SONNET, "claude-sonnet"),
    (re.compile(r"^gemini-3-pro(?:-preview)?$"), _GEMINI_3_PRO, "gemini-3-pro"),
    (re.compile(r"^gemini-3-flash(?:-preview)?$"), ("gemini-3-flash",), "gemini-3-flash"),
    (re.compile(r"^gemini-2\.5-pro(?:-preview.*|-exp.*)?$"), ("gemini-2.5-pro",), ""),
    (re.compile(r"^gemini-2\.5-flash-lite(?:-preview.*)?$"), ("gemini-2.5-flash-lite",), ""),
    (re.compile(r"^gemini-2\.5-flash(?:-preview.*)?$"), ("gemini-2.5-flash",), ""),
)

_PREFIXES = ("models/", "google/", "anthropic/")
_SUFFIX = re.compile(r"\[[^\]]*\]$")
_DATE = re.compile(r"-(?:\d{8}|latest)$")
_GEMINI_VERSION = re.compile(r"^gemini-(\d+)(?:\.(\d+))?")


def catalogue() -> tuple[ModelInfo, ...]:
    """Every model the upstream is known to serve, in display order."""
    return _CATALOGUE


def resolve_model(name: str, available: Collection[str] | None = None) -> ModelInfo:
    """The served model a client's `name` means.

    With `available` (ids the accounts report), the answer must be one of them. Raises
    `errors.UnknownModel` when no served model matches.
    """
    normal = _normalise(name)
    candidates = [normal]
    family_prefix = ""
    for pattern, targets, prefix in _ALIASES:
        if pattern.match(normal):
            candidates.extend(targets)
            family_prefix = prefix
            break
    for candidate in candidates:
        if available is None:
            if candidate in _BY_ID:
                return _BY_ID[candidate]
        elif candidate in available:
            return _BY_ID.get(candidate) or infer_model(candidate)
    if available is not None:
        if name in available:
            return _BY_ID.get(name) or infer_model(name)
        if family_prefix:
            # Sorting puts the newest version last (claude-opus-4-6 after claude-opus-4-5).
            relatives = sorted(m for m in available if m.startswith(family_prefix))
            if relatives:
                return _BY_ID.get(relatives[-1]) or infer_model(relatives[-1])
    raise errors.UnknownModel(f"model '{_clip(name)}' is not available", param="model")


def infer_model(model_id: str) -> ModelInfo:
    """Traits of a served id missing from the catalogue, guessed from its name."""
    lower = model_id.lower()
    if lower in _BY_ID:
        return _BY_ID[lower]
    if lower.startswith("claude") or "claude" in lower:
        return _claude(model_id, model_id, thinking="thinking" in lower)
    thinking = "thinking" in lower
    version = _GEMINI_VERSION.match(lower)
    if version:
        major, minor = int(version.group(1)), int(version.group(2) or 0)
        thinking = thinking or (major, minor) >= (2, 5)
    info = _gemini(model_id, model_id)
    return attrs.evolve(info, thinking=thinking)


def _normalise(name: str) -> str:
    normal = name.strip().lower()
    for prefix in _PREFIXES:
        if normal.startswith(prefix):
            normal = normal[len(prefix) :]
    normal = _SUFFIX.sub("", normal)
    return _DATE.sub("", normal)


def _clip(name: str) -> str:
    # The name is echoed to the client; keep the message small whatever was sent.
    return name if len(name) <= 100 else name[:100] + "..."
