"""The schema sanitiser: specific rewrites, and properties over arbitrary JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.translate.schema import (
    ALLOWED_KEYWORDS,
    PLACEHOLDER_PROPERTY,
    sanitize_parameters,
    sanitize_schema,
)

TYPES = {"object", "array", "string", "number", "integer", "boolean"}


def nodes(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every schema node (property names are data, not keywords)."""
    yield schema
    for sub in schema.get("properties", {}).values():
        yield from nodes(sub)
    if "items" in schema:
        yield from nodes(schema["items"])


def assert_valid(schema: dict[str, Any]) -> None:
    for node in nodes(schema):
        assert set(node) <= ALLOWED_KEYWORDS, node
        assert node["type"] in TYPES, node
        if node["type"] == "object":
            assert node["properties"], node  # the upstream rejects empty objects
            assert set(node.get("required", [])) <= set(node["properties"])
            assert node.get("required", ["x"]), "an empty required list is dropped"
        else:
            assert "properties" not in node and "required" not in node
        if node["type"] == "array":
            assert isinstance(node["items"], dict)
        else:
            assert "items" not in node
        if "enum" in node:
            assert node["type"] == "string"
            assert node["enum"] and all(isinstance(v, str) for v in node["enum"])
        if "description" in node:
            assert isinstance(node["description"], str) and node["description"]


def test_weather_tool_keeps_its_shape() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "title": "Weather",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
        },
        "required": ["city"],
        "additionalProperties": False,
    }
    assert sanitize_schema(schema) == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {
                "type": "string",
                "description": "default: celsius",
                "enum": ["celsius", "fahrenheit"],
            },
        },
        "required": ["city"],
    }


def test_local_refs_are_inlined_and_cycles_cut() -> None:
    schema = {
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/Node", "description": "The tree"}},
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "child": {"$ref": "#/$defs/Node"},
                    "other": {"$ref": "#/definitions/Missing"},
                },
                "required": ["label"],
            }
        },
    }
    out = sanitize_schema(schema)
    root = out["properties"]["root"]
    assert root["description"] == "The tree"
    assert root["required"] == ["label"]
    assert root["properties"]["label"] == {"type": "string"}
    # The recursive reference is cut to a plain object naming the definition.
    assert root["properties"]["child"]["description"] == "see Node"
    assert root["properties"]["other"]["description"] == "see Missing"
    assert_valid(out)


def test_nullable_types_and_unions() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": ["string", "null"]},
            "b": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
            "c": {"oneOf": [{"const": "x"}, {"const": "y"}]},
            "d": {"anyOf": [{"type": "string"}, {"type": "object", "properties": {"k": {}}}]},
            "e": {"type": ["integer", "string"]},
            "f": {"enum": ["on", "off", None]},
        },
        "required": ["a", "b", "c", "d", "e", "f"],
    }
    out = sanitize_schema(schema)
    props = out["properties"]
    assert props["a"] == {"type": "string", "description": "nullable"}
    assert props["b"] == {"type": "integer", "description": "minimum: 1; nullable"}
    assert props["c"] == {"type": "string", "enum": ["x", "y"]}
    assert props["d"]["type"] == "object"
    assert props["d"]["description"] == "accepts: string | object"
    assert props["d"]["properties"]["k"] == {"type": "string"}
    assert props["e"] == {"type": "integer", "description": "accepts: integer | string"}
    assert props["f"] == {"type": "string", "description": "nullable", "enum": ["on", "off"]}
    # Nothing can send null upstream, so nullable fields stop being required.
    assert out["required"] == ["c", "d", "e"]


def test_all_of_merges_properties_and_required() -> None:
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"properties": {"b": {"type": "number"}}, "required": ["b"]},
        ]
    }
    out = sanitize_schema(schema)
    assert out["type"] == "object"
    assert set(out["properties"]) == {"a", "b"}
    assert out["required"] == ["a", "b"]


def test_formats_constraints_and_enums() -> None:
    schema = {
        "type": "object",
        "properties": {
            "when": {"type": "string", "format": "date-time"},
            "site": {"type": "string", "format": "uri", "maxLength": 200},
            "ratio": {"type": "number", "format": "double", "exclusiveMaximum": 1},
            "level": {"type": "integer", "enum": [1, 2, 3]},
            "tags": {"type": "array", "items": [{"type": "string"}], "minItems": 1},
            "free": {"type": "array"},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    props = sanitize_schema(schema)["properties"]
    assert props["when"] == {"type": "string", "format": "date-time"}
    assert props["site"] == {"type": "string", "description": "format: uri; maxLength: 200"}
    assert props["ratio"] == {
        "type": "number",
        "format": "double",
        "description": "exclusiveMaximum: 1",
    }
    assert props["level"] == {"type": "integer", "description": "allowed: 1, 2, 3"}
    assert props["tags"] == {
        "type": "array",
        "description": "minItems: 1",
        "items": {"type": "string"},
    }
    assert props["free"] == {"type": "array", "items": {"type": "string"}}
    assert props["map"]["properties"] == {
        PLACEHOLDER_PROPERTY: {"type": "string", "description": "Unused. Leave empty."}
    }


def test_empty_and_odd_inputs() -> None:
    placeholder = {
        "type": "object",
        "properties": {
            PLACEHOLDER_PROPERTY: {"type": "string", "description": "Unused. Leave empty."}
        },
    }
    for odd in ({}, None, [], "x", 3, True, {"type": "object"}, {"properties": []}):
        assert sanitize_schema(odd) == placeholder
    assert sanitize_schema({"type": "string"}) == {"type": "string"}
    assert sanitize_parameters({"type": "string", "description": "d"}) == {
        **placeholder,
        "description": "d",
    }


def test_deep_nesting_is_cut_not_crashed() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(500):
        schema = {"type": "object", "properties": {"x": schema}}
    out = sanitize_schema(schema)
    assert_valid(out)
    assert sanitize_schema(out) == out


def test_heavy_definition_reuse_stays_bounded() -> None:
    defs: dict[str, Any] = {"L0": {"type": "string"}}
    for level in range(1, 30):
        below = {"$ref": f"#/$defs/L{level - 1}"}
        defs[f"L{level}"] = {"type": "object", "properties": {"a": below, "b": below}}
    out = sanitize_schema({"$ref": "#/$defs/L29", "$defs": defs})
    assert len(json.dumps(out)) < 2_000_000
    assert_valid(out)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)

keywords = st.sampled_from(
    [
        "type", "properties", "required", "items", "enum", "const", "anyOf", "oneOf", "allOf",
        "$ref", "$defs", "definitions", "format", "description", "title", "default", "nullable",
        "additionalProperties", "minimum", "pattern", "examples", "prefixItems",
    ]
)  # fmt: skip
type_names = st.sampled_from(sorted(TYPES | {"null", "weird"}))
refs = st.sampled_from(["#/$defs/A", "#/$defs/B", "#/definitions/A", "#", "#/nope", "http://x"])


def schema_like() -> st.SearchStrategy[Any]:
    """Schema-shaped JSON: mostly real keywords with plausible (and implausible) values."""
    leaf = st.one_of(
        st.fixed_dictionaries({"type": type_names | st.lists(type_names, max_size=3)}),
        st.fixed_dictionaries({"enum": st.lists(json_values, max_size=4)}),
        st.fixed_dictionaries({"const": json_values}),
        st.fixed_dictionaries({"$ref": refs}),
        json_values,
    )

    def extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.dictionaries(keywords, inner | json_values, max_size=5),
            st.fixed_dictionaries(
                {
                    "type": type_names,
                    "properties": st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    "required": st.lists(st.text(max_size=4), max_size=3),
                    "$defs": st.fixed_dictionaries({"A": inner, "B": inner}),
                }
            ),
            st.fixed_dictionaries({"anyOf": st.lists(inner, max_size=3)}),
            st.fixed_dictionaries({"allOf": st.lists(inner, max_size=3)}),
            st.fixed_dictionaries({"type": st.just("array"), "items": inner}),
        )

    return st.recursive(leaf, extend, max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(schema_like())
def test_any_input_gives_a_valid_idempotent_schema(raw: Any) -> None:
    out = sanitize_schema(raw)
    assert_valid(out)
    assert sanitize_schema(out) == out
    json.dumps(out)  # plain JSON, no shared mutable structure surprises
    params = sanitize_parameters(raw)
    assert params["type"] == "object"
    assert_valid(params)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_value_is_accepted(raw: Any) -> None:
    out = sanitize_schema(raw)
    assert_valid(out)
    assert sanitize_schema(out) == out


@given(schema_like())
def test_input_is_not_mutated(raw: Any) -> None:
    before = json.dumps(raw, sort_keys=True)
    sanitize_schema(raw)
    assert json.dumps(raw, sort_keys=True) == before
