"""Serving the emulator: hypercorn's trio worker, HTTP/1.1 and h2c on one loopback port.

`serve_emulator` binds (port 0 picks a free port), reports its base URL through
`task_status` and serves until cancelled; it is tuned for the bench (thousands of idle
streams: a deep accept backlog, many h2 streams per connection). `main_emulator` is the
`gateway emulator` command: it runs the server with a fresh state holding the demo accounts
and stops cleanly on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from functools import partial

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from gateway.emulator.app import create_emulator_app
from gateway.emulator.state import EmulatorState

__all__ = ["main_emulator", "serve_emulator"]


def _hypercorn_config(
    host: str, port: int, tls: tuple[str, str] | None = None, max_streams: int = 10_000
) -> HyperConfig:
    config = HyperConfig()
    if tls is not None:  # HTTP/2 by ALPN, as the real upstream offers it, or HTTP/1.1
        config.certfile, config.keyfile = tls
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("gateway.emulator")
    config.keep_alive_timeout = 75
    config.graceful_timeout = 1.0
    config.backlog = 4096
    config.h2_max_concurrent_streams = max_streams
    return config


async def serve_emulator(
    state: EmulatorState,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: tuple[str, str] | None = None,
    max_streams: int = 10_000,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `state` until cancelled; reports "http://HOST:PORT" once listening (https with
    `tls`, a (certificate file, key file) pair: tests and the bench make them with trustme).
    `max_streams` is the HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS it announces (Google's
    front ends announce 100)."""

    class _FirstBind:
        # hypercorn reports every bind; callers want the one base URL
        def started(self, binds: list[str]) -> None:
            task_status.started(binds[0])

    await serve(
        create_emulator_app(state),  # type: ignore[arg-type]
        _hypercorn_config(host, port, tls, max_streams),
        task_status=_FirstBind(),  # type: ignore[arg-type]
        mode="asgi",
    )


async def _main(host: str, port: int, tls: tuple[str, str] | None = None,
                tls_port: int = 0) -> None:
    state = EmulatorState.with_demo_accounts()
    # Ctrl-C and SIGTERM end the server by cancellation, not by a KeyboardInterrupt in
    # whatever task happens to run.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_emulator, state, host=host, port=port))
            print(f"emulator listening on {url}", flush=True)
            if tls is not None:
                # the same state over HTTPS too (h2 by ALPN), for Cloud Code as the real
                # one is served; OAuth clients that trust only public CAs keep plain HTTP
                secure = await nursery.start(partial(serve_emulator, state, host=host,
                                                     port=tls_port, tls=tls))
                print(f"emulator listening on {secure}", flush=True)
            print(
                f"control surface: {url}/__emulator (faults, requests, streams, accounts, "
                "quota, config, reset; see docs/emulator.md)",
                flush=True,
            )
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main_emulator(host: str, port: int, *, tls: tuple[str, str] | None = None,
                  tls_port: int = 0) -> None:
    """The `gateway emulator` command: serve until Ctrl-C (or SIGTERM)."""
    # a KeyboardInterrupt can only come before the signal receiver is installed
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_main, host, port, tls, tls_port)
    print("emulator stopped", flush=True)
