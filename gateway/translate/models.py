"""The models the upstream serves, and how the names clients send map onto them.

The truth is what the accounts' `fetchAvailableModels` report: `model_from_upstream` turns
one entry of that answer into a `ModelInfo` (display name, context and output limits,
whether it thinks), and a `Catalogue` of those answers every lookup. `FALLBACK` is the
gateway's own, possibly dated, picture, used only until the first probe answers.

`Catalogue.resolve` maps a client's name onto a served model, first rule that matches:

1. the exact upstream id (after normalising: lower case, a `models/`, `google/` or
   `anthropic/` prefix, Claude Code's `[1m]` suffix, a Vertex `@date`, a trailing
   `-YYYYMMDD` or `-latest` removed);
2. an id the upstream itself retired in favour of another (`deprecatedModelIds`);
3. the operator's aliases (`[models.aliases]`, exact names or `*` patterns), whose target
   is then resolved by these same rules;
4. the family: `claude-{opus,sonnet,haiku}-*` and `gemini-*-{pro,flash,flash-lite}*` map to
   the newest served model of that line (the highest version; among its variants the
   thinking one when the client asks for thinking, else the plain one), and, when the pool
   serves no model of the line, to its nearest line (haiku to sonnet to opus, flash-lite to
   flash to pro). Ids outside these lines (image and embedding models, `gpt-oss-*`,
   internal ids) are served by exact name only, never guessed.

A name no rule places is a 404 naming the nearest served ids. Pure: no I/O, no clock.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from gateway import errors

__all__ = [
    "FALLBACK",
    "Catalogue",
    "ModelInfo",
    "describe_model",
    "is_served_id",
    "model_from_upstream",
    "parse_available_models",
    "parse_model_id",
]

Family = Literal["claude", "gemini", "other"]

_CLAUDE_CONTEXT = 200_000
_CLAUDE_OUTPUT = 64_000
_GEMINI_CONTEXT = 1_048_576
# The upstream advertises 65535 (not 65536) for most Gemini models and rejects more.
_GEMINI_OUTPUT = 65_535
_OTHER_CONTEXT = 128_000
_OTHER_OUTPUT = 32_768
# Claude on this upstream thinks only with an explicit budget; 16k when the client gives
# none and says nothing of effort.
_CLAUDE_BUDGET = 16_384


@attrs.frozen(slots=True)
class ParsedId:
    """What an id says about itself: `claude-opus-4-6-thinking` is claude / opus / (4, 6) /
    "thinking"; `gemini-3.1-pro-high` is gemini / pro / (3, 1) / "high"."""

    family: Family
    line: str | None  # opus, sonnet, haiku, pro, flash, flash-lite; None outside the lines
    version: tuple[int, ...] = ()
    variant: str = ""


@attrs.frozen(slots=True)
class ModelInfo:
    id: str  # exactly as the upstream names it
    family: Family
    display_name: str
    thinking: bool  # the model can think (and show its thoughts) when asked
    max_output_tokens: int  # the upstream's per-model cap on maxOutputTokens
    context_window: int
    # Budget sent when the client asks for thinking without one; None lets the model decide.
    default_thinking_budget: int | None
    owned_by: str
    line: str | None = None
    version: tuple[int, ...] = ()
    variant: str = ""


_PREFIXES = ("models/", "google/", "anthropic/", "vertex_ai/", "gemini/")
_SUFFIX = re.compile(r"\[[^\]]*\]$")
_VERTEX_DATE = re.compile(r"@[0-9a-z-]+$")
_DATE = re.compile(r"-(?:\d{8}|latest)$")
# Version numbers are short: a client's 5,000-digit "version" is just not a model name.
_CLAUDE_ID = re.compile(
    r"^claude-(?:(?P<line>opus|sonnet|haiku)-(?P<major>\d{1,4})(?:-(?P<minor>\d{1,2}))?"
    r"|(?P<major2>\d{1,4})(?:-(?P<minor2>\d{1,2}))?-(?P<line2>opus|sonnet|haiku)"
    r"|(?P<line3>opus|sonnet|haiku))(?:-(?P<variant>.+))?$"
)
_GEMINI_ID = re.compile(
    r"^gemini-(?:(?P<version>\d{1,4}(?:\.\d{1,4})?)-)?(?P<line>pro|flash-lite|flash)"
    r"(?:-(?P<variant>.+))?$"
)
_GEMINI_VERSION = re.compile(r"^gemini-(\d{1,4})(?:\.(\d{1,4}))?(?!\d)")
# Variants that make a model something other than a chat model.
_NOT_CHAT = ("image", "tts", "embedding", "live", "audio", "computer-use")
# A line with nothing served borrows from these, nearest first.
_NEAR_LINES: Mapping[str, tuple[str, ...]] = {
    "haiku": ("sonnet", "opus"),
    "sonnet": ("opus",),
    "opus": ("sonnet",),
    "flash-lite": ("flash", "pro"),
    "flash": ("pro",),
    "pro": ("flash",),
}
# Among one version's variants, lower is preferred.
_RANK_THINKING = {"thinking": 0, "high": 1, "": 2, "medium": 3, "low": 4, "extra-low": 5}
_RANK_PLAIN = {"": 0, "high": 1, "thinking": 2, "medium": 3, "low": 4, "extra-low": 5}
_RANK_OTHER = 8  # any other variant (agent, preview-...): after the known ones


def normalise(name: str) -> str:
    normal = name.strip().lower()
    for prefix in _PREFIXES:
        if normal.startswith(prefix):
            normal = normal[len(prefix):]
    normal = _SUFFIX.sub("", normal)
    normal = _VERTEX_DATE.sub("", normal)
    return _DATE.sub("", normal)


def parse_model_id(model_id: str) -> ParsedId:
    """Family, line, version and variant of an id (or of a normalised client name)."""
    lower = model_id.lower()
    found = _CLAUDE_ID.match(lower)
    if found:
        claude_line = found.group("line") or found.group("line2") or found.group("line3")
        major = found.group("major") or found.group("major2")
        minor = found.group("minor") or found.group("minor2")
        version = tuple(int(x) for x in (major, minor) if x is not None)
        return ParsedId("claude", claude_line, version, found.group("variant") or "")
    if lower.startswith("claude"):
        return ParsedId("claude", None)
    found = _GEMINI_ID.match(lower)
    if found:
        variant = found.group("variant") or ""
        raw = found.group("version")
        version = tuple(int(x) for x in raw.split(".")) if raw else ()
        line: str | None = found.group("line")
        if any(word in variant for word in _NOT_CHAT):
            line = None
        return ParsedId("gemini", line, version, variant)
    if lower.startswith("gemini"):
        return ParsedId("gemini", None)
    return ParsedId("other", None)


def _gemini_thinks(model_id: str) -> bool:
    version = _GEMINI_VERSION.match(model_id.lower())
    if version is None:
        return "thinking" in model_id.lower() or model_id.lower().startswith("gemini-pro")
    major, minor = int(version.group(1)), int(version.group(2) or 0)
    return (major, minor) >= (2, 5) or "thinking" in model_id.lower()


def describe_model(
    model_id: str,
    *,
    display_name: str | None = None,
    context_window: int | None = None,
    max_output_tokens: int | None = None,
    thinking: bool | None = None,
    default_thinking_budget: int | None = None,
) -> ModelInfo:
    """A model's traits: what is given, the rest inferred from its id."""
    parsed = parse_model_id(model_id)
    lower = model_id.lower()
    if parsed.family == "claude":
        thinks = "thinking" in lower if thinking is None else thinking
        context, output, owner = _CLAUDE_CONTEXT, _CLAUDE_OUTPUT, "anthropic"
        budget = default_thinking_budget or (_CLAUDE_BUDGET if thinks else None)
    elif parsed.family == "gemini":
        thinks = _gemini_thinks(model_id) if thinking is None else thinking
        context, output, owner = _GEMINI_CONTEXT, _GEMINI_OUTPUT, "google"
        # Gemini's own default (or the level its id names) unless the client sets one.
        budget = default_thinking_budget
    else:
        thinks = bool(thinking)
        context, output = _OTHER_CONTEXT, _OTHER_OUTPUT
        owner = "openai" if lower.startswith("gpt") else "google"
        budget = None
    return ModelInfo(
        id=model_id,
        family=parsed.family,
        display_name=display_name or model_id,
        thinking=thinks,
        max_output_tokens=max_output_tokens or output,
        context_window=context_window or context,
        default_thinking_budget=budget if thinks else None,
        owned_by=owner,
        line=parsed.line,
        version=parsed.version,
        variant=parsed.variant,
    )


# Ids in fetchAvailableModels answers that are not models a client can chat with.
_INTERNAL = re.compile(r"^(?:chat|tab)_|^tab-|^internal")
_SERVED_PREFIXES = ("claude", "gemini", "gpt")


def _positive(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def is_served_id(model_id: str) -> bool:
    """Whether a fetchAvailableModels id is a model clients can use (not an internal id)."""
    lower = model_id.lower()
    return _INTERNAL.match(lower) is None and lower.startswith(_SERVED_PREFIXES)


def model_from_upstream(model_id: str, fields: Mapping[str, Any]) -> ModelInfo | None:
    """The `ModelInfo` of one `fetchAvailableModels` entry; None for internal ids."""
    if not is_served_id(model_id):
        return None
    name = fields.get("displayName")
    supports = fields.get("supportsThinking")
    budget = _positive(fields.get("thinkingBudget"))
    # what the upstream leaves out, the built-in table may know
    known = _FALLBACK_BY_ID.get(model_id) or describe_model(model_id)
    return describe_model(
        model_id,
        display_name=name if isinstance(name, str) and name else known.display_name,
        context_window=_positive(fields.get("maxTokens")) or known.context_window,
        max_output_tokens=_positive(fields.get("maxOutputTokens")) or known.max_output_tokens,
        thinking=supports if isinstance(supports, bool) else known.thinking,
        default_thinking_budget=budget or known.default_thinking_budget,
    )


def parse_available_models(
    answer: Mapping[str, Any],
) -> tuple[list[ModelInfo], dict[str, str]]:
    """The served models in a `fetchAvailableModels` answer, and its retired ids
    (`deprecatedModelIds`: old id -> `newModelId`). Malformed entries are skipped."""
    models: list[ModelInfo] = []
    entries = answer.get("models")
    if isinstance(entries, Mapping):
        for model_id, fields in entries.items():
            if isinstance(model_id, str) and model_id:
                info = model_from_upstream(model_id, fields if isinstance(fields, Mapping) else {})
                if info is not None:
                    models.append(info)
    retired: dict[str, str] = {}
    deprecated = answer.get("deprecatedModelIds")
    if isinstance(deprecated, Mapping):
        for old, entry in deprecated.items():
            new = entry.get("newModelId") if isinstance(entry, Mapping) else None
            if isinstance(old, str) and isinstance(new, str) and new:
                retired[old] = new
    return models, retired


class Catalogue:
    """The served models, and the rules that map client names onto them."""

    def __init__(
        self,
        models: Iterable[ModelInfo],
        *,
        live: bool,
        retired: Mapping[str, str] | None = None,
    ) -> None:
        by_id = {m.id: m for m in models}
        self.models: tuple[ModelInfo, ...] = tuple(sorted(by_id.values(), key=_display_order))
        self.live = live  # from the accounts' probes (False: the built-in fallback)
        self._by_id = by_id
        self._by_lower = {m.id.lower(): m for m in self.models}
        self._retired = {k.lower(): v for k, v in (retired or {}).items()}

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._by_id

    def __len__(self) -> int:
        return len(self.models)

    def get(self, model_id: str) -> ModelInfo | None:
        return self._by_id.get(model_id) or self._by_lower.get(model_id.lower())

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models)

    def resolve(
        self,
        name: str,
        *,
        thinking: bool = False,
        aliases: Mapping[str, str] | None = None,
    ) -> ModelInfo:
        """The served model `name` means; raises `errors.UnknownModel`."""
        found = self._resolve(name, thinking=thinking, aliases=aliases or {}, depth=0)
        if found is None:
            raise errors.UnknownModel(self._unknown_message(name), param="model")
        return found

    def _resolve(
        self, name: str, *, thinking: bool, aliases: Mapping[str, str], depth: int
    ) -> ModelInfo | None:
        normal = normalise(name)
        exact = self.get(name) or self.get(normal)
        if exact is not None:
            return exact
        replacement = self._retired.get(normal)
        if replacement is not None and (found := self.get(replacement)) is not None:
            return found
        target = _alias_target(aliases, name, normal)
        if target is not None and depth < 4:
            found = self._resolve(target, thinking=thinking, aliases=aliases, depth=depth + 1)
            if found is None:
                raise errors.UnknownModel(
                    f"model '{_clip(name)}' is aliased to '{_clip(target)}', which is not "
                    "available", param="model",
                )
            return found
        return self._family(parse_model_id(normal), thinking=thinking)

    def _family(self, parsed: ParsedId, *, thinking: bool) -> ModelInfo | None:
        if parsed.line is None:
            return None
        wants_thinking = thinking or "thinking" in parsed.variant
        for line in (parsed.line, *_NEAR_LINES.get(parsed.line, ())):
            relatives = [m for m in self.models if m.family == parsed.family and m.line == line]
            if relatives:
                return min(relatives, key=lambda m: _preference(m, wants_thinking))
        return None

    def _unknown_message(self, name: str) -> str:
        normal = normalise(name)
        near = difflib.get_close_matches(normal, self.ids, n=3, cutoff=0.3) or list(
            self.ids[:3])
        hint = f"; nearest available: {', '.join(near)}" if near else ""
        return f"model '{_clip(name)}' is not available{hint} (GET /v1/models lists them)"


def _alias_target(aliases: Mapping[str, str], name: str, normal: str) -> str | None:
    for key in (name, normal):
        if key in aliases:
            return aliases[key]
    for pattern, target in aliases.items():
        if "*" in pattern and (fnmatch.fnmatchcase(normal, pattern.lower())):
            return target
    return None


def _newest_first(version: tuple[int, ...]) -> tuple[int, ...]:
    # padded, so 3 sorts as 3.0 (after 3.6), and negated; an unversioned id sorts last
    if not version:
        return (1,)
    return tuple(-v for v in (*version, 0, 0, 0)[:4])


def _preference(model: ModelInfo, thinking: bool) -> tuple[Any, ...]:
    ranks = _RANK_THINKING if thinking else _RANK_PLAIN
    # newest version first, then the preferred variant, then the id for ties
    return (_newest_first(model.version), ranks.get(model.variant, _RANK_OTHER), model.id)


def _display_order(model: ModelInfo) -> tuple[Any, ...]:
    family = {"claude": 0, "gemini": 1, "other": 2}[model.family]
    return (family, model.line is None, model.line or "", _newest_first(model.version),
            model.id)


def _clip(name: str) -> str:
    # The name is echoed to the client; keep the message small whatever was sent.
    return name if len(name) <= 100 else name[:100] + "..."


# What the gateway knows by heart (mid-2026): only a stand-in until the first probe answers,
# which is the truth. Limits are the upstream's own per-model caps.
_FALLBACK_MODELS: tuple[ModelInfo, ...] = (
    describe_model("claude-opus-4-6-thinking", display_name="Claude Opus 4.6 (Thinking)"),
    describe_model("claude-sonnet-4-6", display_name="Claude Sonnet 4.6", thinking=True),
    describe_model("gemini-3.1-pro-high", display_name="Gemini 3.1 Pro (High)"),
    describe_model("gemini-3.1-pro-low", display_name="Gemini 3.1 Pro (Low)"),
    describe_model("gemini-3-flash", display_name="Gemini 3 Flash", max_output_tokens=65_536),
    describe_model("gemini-2.5-flash", display_name="Gemini 2.5 Flash"),
    describe_model("gemini-2.5-pro", display_name="Gemini 2.5 Pro"),
)
_FALLBACK_BY_ID = {m.id: m for m in _FALLBACK_MODELS}

FALLBACK = Catalogue(_FALLBACK_MODELS, live=False)
