"""A faithful local Cloud Code + Google OAuth server, with fault injection.

The gateway, its tests, the bench and demo mode talk to it over loopback exactly as they
would to Google: the OAuth token, consent and userinfo endpoints, and the `v1internal`
methods (loadCodeAssist, onboardUser, fetchAvailableModels, generateContent and
streamGenerateContent over SSE). Answers are deterministic (see `content`), refusals match
the upstream's (unknown model, wrong project, forged thought signatures, schema keywords),
and `Fault`s inject 429s in every reset format, auth failures, 5xx, empty, cut, slow and
stalled streams. Tests drive `EmulatorState` directly; anything else uses the JSON control
surface under `/__emulator` (docs/emulator.md).
"""

from gateway.emulator.app import create_emulator_app
from gateway.emulator.serve import main_emulator, serve_emulator
from gateway.emulator.state import (
    DEMO_ACCOUNTS,
    EMULATOR_CLIENT_ID,
    EMULATOR_CLIENT_SECRET,
    FAULT_KINDS,
    RESET_FORMATS,
    DemoAccount,
    EmulatedAccount,
    EmulatorState,
    Fault,
    Quota,
    ReceivedRequest,
)

__all__ = [
    "DEMO_ACCOUNTS",
    "EMULATOR_CLIENT_ID",
    "EMULATOR_CLIENT_SECRET",
    "FAULT_KINDS",
    "RESET_FORMATS",
    "DemoAccount",
    "EmulatedAccount",
    "EmulatorState",
    "Fault",
    "Quota",
    "ReceivedRequest",
    "create_emulator_app",
    "main_emulator",
    "serve_emulator",
]
