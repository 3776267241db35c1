"""The persistent account record: what is stored on disk for each Google account.

Runtime state (access tokens, cooldowns, quotas) lives in the pool, not here: only what must
survive a restart is in `Account`. Records are immutable values; changes make a new record
(`attrs.evolve`) which the store writes atomically.
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs

SCHEMA_VERSION = 1


@attrs.frozen(slots=True)
class Account:
    email: str
    refresh_token: str = attrs.field(repr=False)  # never in repr, logs or errors
    project_id: str | None = None
    tier: str | None = None
    added_at: float = 0.0
    enabled: bool = True
    # Set when the upstream revoked the grant (invalid_grant); cleared by re-adding.
    invalid_reason: str | None = None

    @property
    def handle(self) -> str:
        """A short stable pseudonym for logs and metrics (never the email or a token)."""
        return account_handle(self.email)

    def to_json(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "refresh_token": self.refresh_token,
            "project_id": self.project_id,
            "tier": self.tier,
            "added_at": self.added_at,
            "enabled": self.enabled,
            "invalid_reason": self.invalid_reason,
        }

    @classmethod
    def from_json(cls, data: Any) -> Account:
        """Build from stored JSON; raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError("account entry is not an object")
        email = data.get("email")
        token = data.get("refresh_token")
        if not isinstance(email, str) or not email:
            raise ValueError("account entry has no email")
        if not isinstance(token, str) or not token:
            raise ValueError(f"account {email}: no refresh_token")
        project = data.get("project_id")
        tier = data.get("tier")
        added = data.get("added_at", 0.0)
        enabled = data.get("enabled", True)
        reason = data.get("invalid_reason")
        if project is not None and not isinstance(project, str):
            raise ValueError(f"account {email}: project_id is not a string")
        if tier is not None and not isinstance(tier, str):
            raise ValueError(f"account {email}: tier is not a string")
        if not isinstance(added, int | float) or isinstance(added, bool):
            raise ValueError(f"account {email}: added_at is not a number")
        if not isinstance(enabled, bool):
            raise ValueError(f"account {email}: enabled is not a boolean")
        if reason is not None and not isinstance(reason, str):
            raise ValueError(f"account {email}: invalid_reason is not a string")
        return cls(email, token, project, tier, float(added), enabled, reason)


def account_handle(email: str) -> str:
    return "acct-" + hashlib.sha256(email.encode()).hexdigest()[:10]
