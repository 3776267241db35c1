"""JSON Schema from clients, reduced to what Cloud Code function declarations accept.

Clients send full JSON Schema (draft 2020-12 from zod, pydantic, MCP servers); the upstream
parses `parameters` as Google's OpenAPI-3.0 subset and rejects keywords it does not know, for
Claude and Gemini models alike. `sanitize_schema` resolves local `$ref`s, merges `allOf`,
flattens `anyOf`/`oneOf` and type lists, turns `const` into `enum` and keeps an allow-list of
keywords; what it must drop (constraints, unions, nullability) survives as a short hint in
`description`, so the model still sees the intent. It is total (any JSON value gives a valid
schema, never an exception) and idempotent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["ALLOWED_KEYWORDS", "sanitize_parameters", "sanitize_schema"]

# The keywords kept, for both model families: the part of the upstream's Schema message that
# every model honours.
ALLOWED_KEYWORDS = frozenset(
    {"type", "format", "description", "enum", "properties", "required", "items"}
)

_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean"})

# Formats the upstream understands, per type; any other format becomes a description hint.
_FORMATS: Mapping[str, frozenset[str]] = {
    "string": frozenset({"enum", "date-time"}),
    "number": frozenset({"float", "double"}),
    "integer": frozenset({"int32", "int64"}),
}

# Validation keywords the upstream rejects, kept for the model as "name: value" hints.
_HINTED = (
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "default",
)

# The upstream rejects an OBJECT with no properties ("should be non-empty for OBJECT type").
# An optional, ignorable property keeps such schemas valid without making the model invent
# arguments.
PLACEHOLDER_PROPERTY = "_"
_PLACEHOLDER: Mapping[str, Any] = {"type": "string", "description": "Unused. Leave empty."}

_KEY_ORDER = ("type", "format", "description", "enum", "properties", "required", "items")
_MAX_DEPTH = 40  # nesting deeper than this is cut to a plain string
_MAX_REF_EXPANSIONS = 500  # bounds the blow-up of schemas that reuse definitions heavily
_MAX_HINT = 120


def sanitize_schema(schema: Any) -> dict[str, Any]:
    """Return an upstream-safe copy of `schema` (any JSON value; never raises).

    The root keeps its own type (a response schema may be an array); a root with no type
    becomes an object.
    """
    root = schema if isinstance(schema, Mapping) else {}
    out, _ = _Sanitizer(root).schema(root, depth=0, seen=frozenset())
    return out


def sanitize_parameters(schema: Any) -> dict[str, Any]:
    """Like `sanitize_schema`, but the root is always an object (function parameters)."""
    out = sanitize_schema(schema)
    if out["type"] != "object":
        out = _placeholder_object(out.get("description"))
    return out


@attrs.define(slots=True)
class _Flat:
    """One schema with $ref, allOf, anyOf, oneOf, const and type lists folded away."""

    fields: dict[str, Any]
    hints: list[str] = attrs.field(factory=list)
    nullable: bool = False
    seen: frozenset[str] = frozenset()  # $refs expanded on the way here (cycle guard)


class _Sanitizer:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.expansions = 0

    def schema(self, raw: Any, *, depth: int, seen: frozenset[str]) -> tuple[dict[str, Any], bool]:
        """Sanitise one node; also say whether it allowed null (its parent un-requires it)."""
        if depth > _MAX_DEPTH or not isinstance(raw, Mapping):
            # `true`, garbage, or too deep: "any value", of which a string is the most
            # general the upstream can express.
            return ({"type": "string"} if depth else _placeholder_object(None)), False
        flat = self.flatten(raw, depth=depth, seen=seen)
        return self.build(flat, depth=depth), flat.nullable

    # -- phase 1: fold the composition keywords into one plain schema ---------------------------

    def flatten(self, raw: Mapping[str, Any], *, depth: int, seen: frozenset[str]) -> _Flat:
        if depth > _MAX_DEPTH:
            return _Flat({}, seen=seen)
        flat = _Flat(dict(raw), seen=seen)
        fields = flat.fields

        ref = fields.pop("$ref", None)
        if isinstance(ref, str):
            target = self.resolve(ref, seen)
            if target is None:
                flat.hints.append(f"see {_ref_name(ref)}")
                fields.setdefault("type", "object")
            else:
                inner = self.flatten(target, depth=depth + 1, seen=seen | {ref})
                # Keywords next to a $ref refine its target (2020-12 semantics).
                flat.fields = fields = _merge(fields, inner.fields, required=True)
                _absorb(flat, inner)
                flat.seen = inner.seen

        all_of = fields.pop("allOf", None)
        if isinstance(all_of, list):
            for part in all_of:
                if isinstance(part, Mapping):
                    inner = self.flatten(part, depth=depth + 1, seen=flat.seen)
                    flat.fields = fields = _merge(fields, inner.fields, required=True)
                    _absorb(flat, inner)
                    flat.seen = flat.seen | inner.seen

        for key in ("anyOf", "oneOf"):
            options = fields.pop(key, None)
            if isinstance(options, list):
                chosen = self.union(options, depth=depth, seen=flat.seen)
                if chosen is not None:
                    # A branch's `required` only binds when that branch is the one taken.
                    flat.fields = fields = _merge(fields, chosen.fields, required=False)
                    _absorb(flat, chosen)
                    flat.seen = flat.seen | chosen.seen
                elif any(_is_null(o) for o in options):
                    flat.nullable = True

        if "const" in fields:
            value = fields.pop("const")
            fields.setdefault("enum", [value])

        kind = fields.get("type")
        if isinstance(kind, list):
            names = [t for t in kind if isinstance(t, str)]
            flat.nullable = flat.nullable or "null" in names
            concrete = list(dict.fromkeys(t for t in names if t in _TYPES))
            if len(concrete) > 1:
                flat.hints.append("accepts: " + " | ".join(concrete))
            if concrete:
                fields["type"] = concrete[0]
            else:
                del fields["type"]
        elif kind == "null":
            flat.nullable = True
            del fields["type"]

        if fields.get("nullable") is True:
            flat.nullable = True
        enum = fields.get("enum")
        if isinstance(enum, list) and None in enum:
            flat.nullable = True
            fields["enum"] = [v for v in enum if v is not None]
        return flat

    def union(self, options: list[Any], *, depth: int, seen: frozenset[str]) -> _Flat | None:
        """Pick the branch that says most; merge literal-only unions into one enum."""
        branches: list[_Flat] = []
        nullable = False
        for option in options:
            if not isinstance(option, Mapping):
                continue
            if _is_null(option):
                nullable = True
                continue
            branches.append(self.flatten(option, depth=depth + 1, seen=seen))
        if not branches:
            return None
        nullable = nullable or any(b.nullable for b in branches)
        if all(_is_literals(b.fields) for b in branches):
            values: list[Any] = []
            for branch in branches:
                values.extend(v for v in branch.fields["enum"] if v not in values)
            merged = _Flat({"enum": values}, nullable=nullable)
            kinds = {_infer_type(b.fields) for b in branches}
            if len(kinds) == 1 and None not in kinds:
                merged.fields["type"] = kinds.pop()
            for branch in branches:
                merged.hints.extend(branch.hints)
                merged.seen = merged.seen | branch.seen
            return merged
        best = max(branches, key=lambda b: _score(b.fields))  # first of the best on ties
        kinds_seen = list(dict.fromkeys(k for b in branches if (k := _infer_type(b.fields))))
        if len(kinds_seen) > 1:
            best.hints.append("accepts: " + " | ".join(kinds_seen))
        best.nullable = best.nullable or nullable
        return best

    def resolve(self, ref: str, seen: frozenset[str]) -> Mapping[str, Any] | None:
        if ref in seen or not ref.startswith("#") or self.expansions >= _MAX_REF_EXPANSIONS:
            return None  # a cycle, a remote ref (no I/O here), or too much reuse
        target: Any = self.root
        for token in ref[1:].split("/"):
            if token == "":
                continue
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(target, Mapping) and token in target:
                target = target[token]
            elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            else:
                return None
        if not isinstance(target, Mapping):
            return None
        self.expansions += 1
        return target

    # -- phase 2: build the allow-listed schema ----------------------------------------------

    def build(self, flat: _Flat, *, depth: int) -> dict[str, Any]:
        fields = flat.fields
        hints = list(flat.hints)
        out: dict[str, Any] = {}
        kind = _infer_type(fields) or ("object" if depth == 0 else "string")

        enum = fields.get("enum")
        if isinstance(enum, list) and enum:
            if kind == "string":
                values = (v if isinstance(v, str) else _json(v) for v in enum)
                out["enum"] = list(dict.fromkeys(values))
            else:
                # The upstream only takes enums of strings; keep the values for the model.
                hints.append("allowed: " + ", ".join(_literal(v) for v in enum))
        out["type"] = kind

        fmt = fields.get("format")
        if isinstance(fmt, str) and fmt:
            if fmt in _FORMATS.get(kind, ()):
                out["format"] = fmt
            else:
                hints.append(f"format: {_clip(fmt)}")
        for key in _HINTED:
            value = fields.get(key)
            if value is not None and _is_scalar(value):
                hints.append(f"{key}: {_literal(value)}")
        examples = fields.get("examples")
        if isinstance(examples, list) and examples and _is_scalar(examples[0]):
            hints.append(f"example: {_literal(examples[0])}")
        if flat.nullable:
            hints.append("nullable")

        description = fields.get("description")
        if not isinstance(description, str):
            description = ""
        hint_text = "; ".join(dict.fromkeys(hints))
        if hint_text:
            description = _join(description, hint_text)
        if description:
            out["description"] = description

        if kind == "object":
            props: dict[str, Any] = {}
            optional: set[str] = set()
            properties = fields.get("properties")
            if isinstance(properties, Mapping):
                for name, sub in properties.items():
                    if isinstance(name, str):
                        props[name], nullable = self.schema(sub, depth=depth + 1, seen=flat.seen)
                        if nullable:
                            # Nothing can say "null" upstream; letting the model omit the
                            # field is the closest meaning.
                            optional.add(name)
            if not props:
                return _placeholder_object(out.get("description"))
            out["properties"] = props
            required = fields.get("required")
            if isinstance(required, list):
                names = [
                    r
                    for r in dict.fromkeys(r for r in required if isinstance(r, str))
                    if r in props and r not in optional
                ]
                if names:
                    out["required"] = names
        elif kind == "array":
            items = fields.get("items")
            if isinstance(items, list):  # draft-4 tuple form: described by its first item
                items = items[0] if items else None
            prefix = fields.get("prefixItems")
            if items is None and isinstance(prefix, list) and prefix:
                items = prefix[0]
            out["items"], _ = self.schema(items, depth=depth + 1, seen=flat.seen)
        return {key: out[key] for key in _KEY_ORDER if key in out}


def _placeholder_object(description: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object"}
    if isinstance(description, str) and description:
        out["description"] = description
    out["properties"] = {PLACEHOLDER_PROPERTY: dict(_PLACEHOLDER)}
    return out


def _absorb(into: _Flat, other: _Flat) -> None:
    into.hints.extend(h for h in other.hints if h not in into.hints)
    into.nullable = into.nullable or other.nullable


def _merge(base: dict[str, Any], part: Mapping[str, Any], *, required: bool) -> dict[str, Any]:
    """Merge `part` into `base`: properties and required unite, base wins other keys."""
    merged = dict(base)
    for key, value in part.items():
        if key == "properties" and isinstance(value, Mapping):
            own = merged.get("properties")
            merged["properties"] = {**value, **(own if isinstance(own, Mapping) else {})}
        elif key == "required":
            if required and isinstance(value, list):
                own_list = merged.get("required")
                own = own_list if isinstance(own_list, list) else []
                merged["required"] = [*own, *(v for v in value if v not in own)]
        elif key == "description" and isinstance(value, str):
            merged["description"] = _join(merged.get("description"), value)
        elif key == "type" and not isinstance(merged.get("type"), str):
            merged["type"] = value
        elif key not in merged:
            merged[key] = value
    return merged


def _infer_type(fields: Mapping[str, Any]) -> str | None:
    kind = fields.get("type")
    if isinstance(kind, str) and kind in _TYPES:
        return kind
    if isinstance(fields.get("properties"), Mapping) or "additionalProperties" in fields:
        return "object"
    if "items" in fields or "prefixItems" in fields:
        return "array"
    enum = fields.get("enum")
    if isinstance(enum, list) and enum:
        if all(isinstance(v, bool) for v in enum):
            return "boolean"
        if all(isinstance(v, int) and not isinstance(v, bool) for v in enum):
            return "integer"
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in enum):
            return "number"
        return "string"
    return None


def _is_null(option: Any) -> bool:
    if not isinstance(option, Mapping):
        return False
    return (
        option.get("type") == "null"
        or ("const" in option and option["const"] is None)
        or option.get("enum") == [None]
    )


def _is_literals(fields: Mapping[str, Any]) -> bool:
    enum = fields.get("enum")
    return (
        isinstance(enum, list)
        and bool(enum)
        and not any(k in fields for k in ("properties", "items", "additionalProperties"))
    )


def _score(fields: Mapping[str, Any]) -> int:
    # Prefer the most informative branch: objects, then arrays, then any typed scalar.
    kind = _infer_type(fields)
    return {"object": 3, "array": 2}.get(kind or "", 1 if kind else 0)


def _join(first: Any, second: str) -> str:
    if not isinstance(first, str) or not first:
        return second
    if not second or second in first:
        return first
    return f"{first} ({second})"


def _ref_name(ref: str) -> str:
    return _clip(ref.rstrip("/").rsplit("/", 1)[-1] or "definition")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _literal(value: Any) -> str:
    return _clip(value if isinstance(value, str) else _json(value))


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_HINT else text[:_MAX_HINT] + "..."
