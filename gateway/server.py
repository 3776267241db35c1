"""Serving: hypercorn's trio worker, HTTP/1.1 and h2c (prior knowledge) on one port.

`serve_gateway` binds, reports the bound URL through `task_status` (port 0 picks a free
port, which tests and the demo use), and shuts down gracefully when `shutdown_trigger`
returns: it stops accepting, lets in-flight streams finish for `server.shutdown_grace_seconds`,
cancels what is left, then runs the app's lifespan shutdown (supervisor stop).
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.utils import repr_socket_addr

from gateway.config import Config, ConfigError
from gateway.edge import connection_limit, install_h2_stream_errors, raise_fd_limit, serve
from gateway.workers import inherited_bind


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(config: Config, *, insecure_no_auth: bool) -> None:
    """Refuse to expose an open gateway: a non-loopback bind needs API keys."""
    host = config.server.host
    if is_loopback(host) or config.server.api_keys:
        return
    if insecure_no_auth or config.server.insecure_no_auth:
        logging.getLogger("gateway").warning(
            "serving on %s WITHOUT API keys (--insecure-no-auth): anyone who can reach this "
            "port can spend your accounts' quota", host
        )
        return
    raise ConfigError(
        f"refusing to bind {host} without API keys: set server.api_keys "
        "(or GATEWAY_API_KEYS=key1,key2), bind 127.0.0.1, or pass --insecure-no-auth"
    )


def hypercorn_config(config: Config) -> HyperConfig:
    hyper = HyperConfig()
    host = config.server.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    hyper.bind = inherited_bind() or [f"{host}:{config.server.port}"]
    hyper.graceful_timeout = config.server.shutdown_grace_seconds
    hyper.accesslog = None  # the gateway writes its own structured line per request
    hyper.errorlog = logging.getLogger("hypercorn.error")
    # 75 s by default: longer than common proxy idle timeouts. It is the header deadline
    # too: hypercorn's idle timer only stops once a whole request head has arrived.
    hyper.keep_alive_timeout = config.server.idle_timeout_seconds
    hyper.h2_max_concurrent_streams = 256
    hyper.backlog = 2048  # bursts of new connections must not be refused (default 100)
    return hyper


def url_of(sock: socket.socket) -> str:
    """The base URL of a bound socket."""
    return f"http://{repr_socket_addr(sock.family, sock.getsockname())}"


async def serve_gateway(
    app: Any,
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled or until `shutdown_trigger` returns; reports the base URL."""

    class _FirstBind:
        # hypercorn reports every bind; callers want the one base URL
        def started(self, binds: list[str]) -> None:
            task_status.started(binds[0])

    async def draining() -> None:
        assert shutdown_trigger is not None
        await shutdown_trigger()
        # what never ends by itself (the dashboard's live streams) ends now, so only real
        # requests in flight use the grace period
        services = getattr(app, "extensions", {}).get("gateway")
        if services is not None:
            services.draining.set()

    raise_fd_limit()
    install_h2_stream_errors()
    await serve(
        app, hypercorn_config(config),
        max_connections=connection_limit(config.server.max_connections),
        probe_connections=config.server.probe_connections,
        write_timeout=config.server.write_timeout_seconds,
        shutdown_trigger=draining if shutdown_trigger is not None else None,
        task_status=_FirstBind(),  # type: ignore[arg-type]
    )


class SignalShutdown:
    """Ctrl-C (or SIGTERM) once: drain, giving requests in flight the grace period (the
    `trigger` returns). Twice: stop now, cancelling `scope` (what serves)."""

    def __init__(self) -> None:
        self._first = trio.Event()

    async def watch(
        self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = (
            trio.TASK_STATUS_IGNORED)
    ) -> None:
        log = logging.getLogger("gateway")
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if not self._first.is_set():
                    log.info("received %s: draining in-flight requests (again to stop now)",
                             name)
                    self._first.set()
                else:
                    log.info("received %s again: stopping now", name)
                    scope.cancel()
                    return

    async def trigger(self) -> None:
        await self._first.wait()


async def wait_for_signal() -> None:
    """Return on the first SIGTERM or SIGINT: the graceful shutdown trigger."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logging.getLogger("gateway").info(
                "received %s: draining in-flight requests", signal.Signals(signum).name
            )
            return


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # httpx logs every request URL at INFO; URLs carry no secrets here, but it is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
