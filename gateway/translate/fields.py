"""Reading client JSON field by field: the checks every dialect's parser makes, each
failure an `errors.InvalidRequest` naming the field (its path) and what was wrong, never the
client's value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from gateway import errors

__all__ = ["describe_json", "expect_list", "expect_object", "expect_string", "fail"]


def fail(path: str | None, problem: str) -> NoReturn:
    raise errors.InvalidRequest(f"{path}: {problem}" if path else problem, param=path or None)


def describe_json(value: Any) -> str:
    """What kind of JSON value `value` is, for an error message (never the value)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def expect_object(value: Any, path: str | None) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        fail(path, f"expected an object, got {describe_json(value)}")
    return value


def expect_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        fail(path, f"expected an array, got {describe_json(value)}")
    return value


def expect_string(value: Any, path: str, *, non_empty: bool = False) -> str:
    if not isinstance(value, str):
        fail(path, f"expected a string, got {describe_json(value)}")
    if non_empty and not value:
        fail(path, "must not be empty")
    return value
