"""The model catalogue and client-name resolution."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import errors
from gateway.translate.models import catalogue, infer_model, resolve_model


def test_catalogue_is_consistent() -> None:
    models = catalogue()
    ids = [m.id for m in models]
    assert len(ids) == len(set(ids))
    for model in models:
        assert model.family in ("claude", "gemini")
        assert model.id.startswith(model.family)
        assert model.owned_by == ("anthropic" if model.family == "claude" else "google")
        assert 0 < model.max_output_tokens < model.context_window
        if model.default_thinking_budget is not None:
            assert model.thinking
            assert model.default_thinking_budget < model.max_output_tokens
    assert {"claude-sonnet-4-5", "claude-sonnet-4-5-thinking", "claude-opus-4-5-thinking"} <= set(
        ids
    )
    assert {"gemini-3-pro-high", "gemini-3-flash", "gemini-2.5-flash"} <= set(ids)


def test_exact_ids_resolve_to_themselves() -> None:
    for model in catalogue():
        assert resolve_model(model.id) is model
        assert resolve_model(model.id, [model.id]) is model


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4-5"),
        ("claude-3-7-sonnet-latest", "claude-sonnet-4-5"),
        ("claude-3-5-haiku-latest", "claude-sonnet-4-5"),
        ("claude-haiku-4-5-20251001", "claude-sonnet-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-5-thinking"),
        ("claude-opus-4-5", "claude-opus-4-5-thinking"),
        ("Claude-Opus-4-5-20251101", "claude-opus-4-5-thinking"),
        ("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("gemini-3-pro-high[1m]", "gemini-3-pro-high"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("gemini-3-pro-preview", "gemini-3-pro-high"),
        ("gemini-3-flash-preview", "gemini-3-flash"),
        ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
    ],
)
def test_aliases(name: str, expected: str) -> None:
    assert resolve_model(name).id == expected


def test_available_restricts_and_falls_back_in_order() -> None:
    assert resolve_model("claude-sonnet-4-5", ["claude-sonnet-4-5-thinking"]).id == (
        "claude-sonnet-4-5-thinking"
    )
    assert resolve_model("gemini-3-pro", ["gemini-3-pro-low"]).id == "gemini-3-pro-low"
    # A newer served relative stands in when the aliased id itself is gone.
    assert resolve_model("claude-opus-4-5", ["claude-opus-4-6-thinking"]).id == (
        "claude-opus-4-6-thinking"
    )
    with pytest.raises(errors.UnknownModel):
        resolve_model("gemini-2.5-flash", ["claude-sonnet-4-5"])


def test_unknown_model_is_a_404_naming_the_model() -> None:
    with pytest.raises(errors.UnknownModel) as info:
        resolve_model("no-such-model")
    assert info.value.status == 404
    assert info.value.param == "model"
    assert info.value.message == "model 'no-such-model' is not available"
    # Served ids that the catalogue does not list are still refused without `available`.
    with pytest.raises(errors.UnknownModel):
        resolve_model("gemini-9-ultra")


def test_upstream_ids_missing_from_the_catalogue_are_inferred() -> None:
    info = resolve_model("gemini-3.5-flash", ["gemini-3.5-flash"])
    assert (info.id, info.family, info.thinking, info.owned_by) == (
        "gemini-3.5-flash",
        "gemini",
        True,
        "google",
    )
    old = resolve_model("gemini-2.0-flash", ["gemini-2.0-flash"])
    assert not old.thinking
    opus = resolve_model("claude-opus-4-6-thinking", ["claude-opus-4-6-thinking"])
    assert (opus.family, opus.thinking) == ("claude", True)
    assert opus.default_thinking_budget is not None
    plain = infer_model("claude-sonnet-5")
    assert (plain.family, plain.thinking, plain.default_thinking_budget) == ("claude", False, None)


@given(st.text(max_size=60))
def test_resolution_never_fails_unexpectedly(name: str) -> None:
    try:
        info = resolve_model(name)
    except errors.UnknownModel as err:
        assert err.param == "model"
        assert len(err.message) < 200
    else:
        assert info in catalogue()
