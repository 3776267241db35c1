"""Which API key a request presents, and whose it is.

A key comes as `x-api-key`, `x-goog-api-key`, `?key=` (the Gemini conventions) or
`Authorization: Bearer`. What a key stored (Responses kept with `store: true`) belongs to
that key's holder: `owner_of` names the holder by a digest of the key, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

Scope = Mapping[str, Any]


def _raw_header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def query(scope: Scope) -> dict[str, list[str]]:
    raw = scope.get("query_string", b"")
    try:
        return parse_qs(bytes(raw).decode("latin-1"), keep_blank_values=True)
    except ValueError:
        return {}


def presented_key(scope: Scope) -> bytes | None:
    """The key a request presents (as bytes: a key with non-ASCII characters arrives as its
    UTF-8 bytes, which decoding the header as latin-1 and encoding again would change)."""
    for header in (b"x-api-key", b"x-goog-api-key"):
        given = (_raw_header(scope, header) or b"").strip()
        if given:
            return given
    keys = query(scope).get("key")
    if keys and keys[-1].strip():
        return keys[-1].strip().encode("utf-8", "surrogateescape")
    scheme, _, token = (_raw_header(scope, b"authorization") or b"").partition(b" ")
    if scheme.lower() == b"bearer" and token.strip():
        return token.strip()
    return None


def authorized(scope: Scope, keys: tuple[str, ...]) -> bool:
    given = presented_key(scope)
    if not given:
        return False
    # compare against every key so the time taken does not say which one nearly matched
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode("utf-8"))
    return matched


def owner_of(scope: Scope, keys: tuple[str, ...]) -> str:
    """Who a request acts for: a digest of its key when the gateway has keys, else "" (one
    user). Only called once the edge has let the request in."""
    if not keys:
        return ""
    given = presented_key(scope) or b""
    return "key-" + hashlib.sha256(b"gateway-owner\x00" + given).hexdigest()[:24]


def key_label(scope: Scope, keys: tuple[str, ...]) -> str:
    """A short, stable name for the request's key in logs and usage ("-" without keys)."""
    return owner_of(scope, keys)[:12] if keys else "-"
