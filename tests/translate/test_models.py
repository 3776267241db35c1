"""The model catalogue: what a probe answer says, and how client names resolve on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import errors
from gateway.translate.models import (
    FALLBACK,
    Catalogue,
    describe_model,
    parse_available_models,
    parse_model_id,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "cloudcode"


def live() -> Catalogue:
    """The catalogue of a real-shaped fetchAvailableModels answer (late 2026)."""
    answer = json.loads((FIXTURES / "fetch_available_models.json").read_text())
    models, retired = parse_available_models(answer)
    return Catalogue(models, live=True, retired=retired)


def test_a_probe_answer_becomes_the_catalogue() -> None:
    catalogue = live()
    assert "chat_20706" not in catalogue and "tab_flash_lite_preview" not in catalogue
    assert {"claude-opus-4-6-thinking", "claude-sonnet-4-6", "gemini-3.1-pro-high",
            "gemini-3.5-flash-low", "gpt-oss-120b-medium"} <= set(catalogue.ids)
    opus = catalogue.get("claude-opus-4-6-thinking")
    assert opus is not None
    assert (opus.display_name, opus.context_window, opus.max_output_tokens) == (
        "Claude Opus 4.6 (Thinking)", 200_000, 64_000)
    assert opus.thinking and opus.default_thinking_budget == 24_576  # thinkingBudget
    sonnet = catalogue.get("claude-sonnet-4-6")
    assert sonnet is not None and sonnet.thinking  # supportsThinking
    flash = catalogue.get("gemini-3.5-flash-low")
    assert flash is not None and flash.max_output_tokens == 65_536
    assert (flash.family, flash.line, flash.version, flash.variant) == (
        "gemini", "flash", (3, 5), "low")
    gpt = catalogue.get("gpt-oss-120b-medium")
    assert gpt is not None and (gpt.family, gpt.owned_by, gpt.line, gpt.thinking) == (
        "other", "openai", None, False)


def test_malformed_answers_are_skipped_not_fatal() -> None:
    models, retired = parse_available_models(
        {"models": {"": {}, "gemini-3-flash": "nonsense", "claude-x": {"maxTokens": True}},
         "deprecatedModelIds": {"a": "b", "c": {"newModelId": 3}}})
    assert [m.id for m in models] == ["gemini-3-flash", "claude-x"]
    assert models[1].context_window == 200_000  # a bad number is ignored
    assert retired == {}
    assert parse_available_models({"models": []}) == ([], {})


@pytest.mark.parametrize(
    ("model_id", "family", "line", "version", "variant"),
    [
        ("claude-opus-4-6-thinking", "claude", "opus", (4, 6), "thinking"),
        ("claude-sonnet-4-6", "claude", "sonnet", (4, 6), ""),
        ("claude-opus-5-5", "claude", "opus", (5, 5), ""),
        ("claude-3-7-sonnet", "claude", "sonnet", (3, 7), ""),
        ("claude-haiku-4-5", "claude", "haiku", (4, 5), ""),
        ("claude-sonnet-4", "claude", "sonnet", (4,), ""),
        ("gemini-3.1-pro-high", "gemini", "pro", (3, 1), "high"),
        ("gemini-3-flash", "gemini", "flash", (3,), ""),
        ("gemini-3.5-flash-extra-low", "gemini", "flash", (3, 5), "extra-low"),
        ("gemini-3.1-flash-lite", "gemini", "flash-lite", (3, 1), ""),
        ("gemini-2.5-flash-lite-preview-06-17", "gemini", "flash-lite", (2, 5), "preview-06-17"),
        ("gemini-pro-agent", "gemini", "pro", (), "agent"),
        ("gemini-3.1-flash-image", "gemini", None, (3, 1), "image"),
        ("gpt-oss-120b-medium", "other", None, (), ""),
    ],
)
def test_ids_parse(
    model_id: str, family: str, line: str | None, version: tuple[int, ...], variant: str
) -> None:
    parsed = parse_model_id(model_id)
    assert (parsed.family, parsed.line, parsed.version, parsed.variant) == (
        family, line, version, variant)


@pytest.mark.parametrize(
    ("name", "thinking", "expected"),
    [
        # exact ids, whatever the case or decoration
        ("gemini-3-flash", False, "gemini-3-flash"),
        ("Gemini-3-Flash", False, "gemini-3-flash"),
        ("models/gemini-3.1-pro-low", False, "gemini-3.1-pro-low"),
        ("claude-sonnet-4-6[1m]", False, "claude-sonnet-4-6"),
        # names Claude Code and the SDKs send today, and tomorrow
        ("claude-opus-4-8", True, "claude-opus-4-6-thinking"),
        ("claude-opus-5-5", True, "claude-opus-4-6-thinking"),
        ("claude-sonnet-5", True, "claude-sonnet-4-6"),
        ("claude-sonnet-4-5-20250929", False, "claude-sonnet-4-6"),  # retired upstream
        ("claude-3-7-sonnet-latest", False, "claude-sonnet-4-6"),
        ("anthropic/claude-opus-4-1@20250805", False, "claude-opus-4-6-thinking"),
        # no Haiku served: the nearest Claude line
        ("claude-haiku-4-5-20251001", False, "claude-sonnet-4-6"),
        ("claude-haiku-5-5", True, "claude-sonnet-4-6"),
        # Gemini lines: the newest of the line; the thinking variant when thinking is asked
        ("gemini-3-pro-preview", False, "gemini-3.1-pro-high"),
        ("gemini-2.5-pro", True, "gemini-3.1-pro-high"),
        ("gemini-2.5-flash", False, "gemini-3.6-flash-high"),
        ("gemini-2.5-flash-lite", False, "gemini-3.1-flash-lite"),
        ("gemini-3-pro-high", False, "gemini-3.1-pro-high"),  # deprecatedModelIds
    ],
)
def test_client_names_resolve_on_the_live_catalogue(
    name: str, thinking: bool, expected: str
) -> None:
    assert live().resolve(name, thinking=thinking).id == expected


def test_variants_follow_the_thinking_wish() -> None:
    catalogue = Catalogue(
        [describe_model(i) for i in (
            "claude-sonnet-4-7", "claude-sonnet-4-7-thinking", "claude-sonnet-4-6-thinking")],
        live=True,
    )
    assert catalogue.resolve("claude-sonnet-5").id == "claude-sonnet-4-7"
    assert catalogue.resolve("claude-sonnet-5", thinking=True).id == "claude-sonnet-4-7-thinking"
    assert catalogue.resolve("claude-sonnet-4-5-thinking").id == "claude-sonnet-4-7-thinking"


def test_user_aliases_come_after_exact_ids_and_before_families() -> None:
    catalogue = live()
    aliases = {"claude-haiku-4-5": "gemini-3-flash", "claude-*-fast": "gemini-3.1-flash-lite",
               "gemini-3-flash": "claude-sonnet-4-6", "loop-a": "loop-b", "loop-b": "loop-a",
               "gone": "no-such-model"}
    assert catalogue.resolve("claude-haiku-4-5-20251001", aliases=aliases).id == (
        "gemini-3-flash")  # normalised name
    assert catalogue.resolve("claude-sonnet-fast", aliases=aliases).id == (
        "gemini-3.1-flash-lite")
    assert catalogue.resolve("gemini-3-flash", aliases=aliases).id == "gemini-3-flash"
    with pytest.raises(errors.UnknownModel, match="aliased to 'no-such-model'"):
        catalogue.resolve("gone", aliases=aliases)
    with pytest.raises(errors.UnknownModel):
        catalogue.resolve("loop-a", aliases=aliases)


def test_unknown_names_are_404s_naming_the_nearest_ids() -> None:
    with pytest.raises(errors.UnknownModel) as info:
        live().resolve("gemini-3-flashh-typo")
    assert info.value.status == 404 and info.value.param == "model"
    assert "gemini-3-flash" in info.value.message
    assert "GET /v1/models" in info.value.message
    with pytest.raises(errors.UnknownModel, match="gpt-oss-120b-medium"):
        live().resolve("gpt-oss-120b")  # exact-name models are suggested too
    for name in ("no-such-model", "gpt-4o", "chat_20706", "gemini-3.1-flash-image-2"):
        with pytest.raises(errors.UnknownModel):
            live().resolve(name)  # non-chat and unknown ids are never guessed


def test_the_fallback_is_only_a_stand_in() -> None:
    assert not FALLBACK.live and live().live
    assert "gemini-3.5-flash-low" not in FALLBACK  # the gateway does not know it by heart
    assert FALLBACK.resolve("claude-opus-5-5", thinking=True).id == "claude-opus-4-6-thinking"
    for model in FALLBACK.models:
        assert FALLBACK.resolve(model.id) is model
        assert 0 < model.max_output_tokens < model.context_window
        assert model.owned_by == ("anthropic" if model.family == "claude" else "google")


@given(st.text(max_size=60), st.booleans())
def test_resolution_never_fails_unexpectedly(name: str, thinking: bool) -> None:
    catalogue = live()
    try:
        info = catalogue.resolve(name, thinking=thinking)
    except errors.UnknownModel as err:
        assert err.param == "model"
        assert len(err.message) < 400
    else:
        assert info in catalogue.models
