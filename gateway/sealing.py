"""Sealed envelopes for what a stateless client carries between turns for the gateway.

A Responses client that keeps no server state (`store: false`, as Codex runs) still has to
bring each thought back, with its upstream signature, on the next turn. The gateway hands
it a `reasoning` item whose `encrypted_content` is a `Sealer` envelope: the payload as JSON,
compressed, under AES-256-GCM with a random nonce and a fixed purpose bound in as associated
data. Opaque to the client; an envelope it altered, or one another gateway or provider
issued, fails authentication and opens to None. The key is the gateway's secret file (made
on first use, 0600, atomically; give replicas the same file), so envelopes survive
restarts. AES-GCM comes from `cryptography`, which google-auth already brings in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.files import write_private

__all__ = ["Sealer", "load_or_create_secret"]

log = logging.getLogger("gateway")

_PREFIX = "gw1_"
_PURPOSE = b"gateway reasoning v1"
_NONCE = 12
_KEY_BYTES = 32
_MAX_ENVELOPE = 8 * 1024 * 1024  # base64 characters; a thought is far smaller
_MAX_PAYLOAD = 16 * 1024 * 1024  # inflated bytes


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != _KEY_BYTES:
            raise ValueError("the sealing key must be 32 bytes")
        self._aead = AESGCM(key)
        self._derive = hmac.new(key, b"gateway-derived-keys", hashlib.sha256).digest()

    def derive(self, purpose: bytes) -> bytes:
        """A 32-byte key of its own for `purpose` (dashboard sessions, say), from the same
        secret: replicas sharing the secret share it, and it says nothing of the secret."""
        return hmac.new(self._derive, purpose, hashlib.sha256).digest()

    def seal(self, payload: dict[str, Any]) -> str:
        nonce = os.urandom(_NONCE)
        plain = zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 6)
        sealed = self._aead.encrypt(nonce, plain, _PURPOSE)
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def unseal(self, envelope: str) -> dict[str, Any] | None:
        """The payload, or None for anything this gateway did not seal (or that changed)."""
        if not envelope.startswith(_PREFIX) or len(envelope) > _MAX_ENVELOPE:
            return None
        body = envelope[len(_PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], _PURPOSE)
            inflater = zlib.decompressobj()
            data = inflater.decompress(plain, _MAX_PAYLOAD)
            if inflater.unconsumed_tail:
                return None
            value = json.loads(data)
        except (binascii.Error, ValueError, InvalidTag, zlib.error, RecursionError):
            return None
        return value if isinstance(value, dict) else None


def load_or_create_secret(path: Path) -> bytes:
    """The gateway's 32-byte secret from `path` (hex), made there on first use."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        key = os.urandom(_KEY_BYTES)
        write_private(path, key.hex().encode() + b"\n")
        log.info("made the gateway's secret (sealed reasoning for Responses clients) in %s",
                 path)
        return key
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != _KEY_BYTES:
        raise ValueError(f"{path} does not hold a 64-digit hex secret; delete it to make a "
                         "new one (reasoning sealed with the old one is then dropped)")
    return key
