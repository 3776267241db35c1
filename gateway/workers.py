"""`gateway serve --workers N`: N gateway processes serving one listening socket.

One process relays what one core can; this uses them all. The parent binds the address
itself (so `--port 0` and IPv6 work as with one process) and hands the listening socket to
N children, each a whole `gateway serve` (its own supervisor and access tokens) that
accepts on it. The children share the pool's state through `state.redis_url` (required:
without it each would double-spend cooled accounts), the usage history through its SQLite
file and the sealing key through its file, which the parent makes before they start.

The parent supervises: a child that exits unexpectedly is started again (with backoff); the
first Ctrl-C or SIGTERM is passed on once to every child, which drains its requests; a
second one is passed on too, and stops them now. Children run in their own process group
(a terminal's Ctrl-C reaches the parent alone, so it counts once) and watch their parent:
if it dies, they drain and exit.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

import trio

from gateway.config import Config, ConfigError

__all__ = [
    "LISTEN_FD_ENV", "PARENT_ENV", "WorkersFailed", "check_workers", "serve_workers",
    "watch_parent",
]

log = logging.getLogger("gateway")

# Set in a child's environment: the inherited listening socket, and whose child it is.
LISTEN_FD_ENV = "GATEWAY_LISTEN_FD"
PARENT_ENV = "GATEWAY_PARENT_PID"
MAX_RESTART_BACKOFF_SECONDS = 30.0
# A child that lived this long before dying is restarted without waiting.
HEALTHY_RUN_SECONDS = 60.0
# A worker dying this many times in a row, each soon after it started, stops the gateway.
MAX_QUICK_FAILURES = 5


def check_workers(config: Config) -> None:
    workers = config.server.workers
    if workers > 1 and not config.state.redis_url:
        raise ConfigError(
            f"--workers {workers} (server.workers) needs state.redis_url "
            "(GATEWAY_STATE_REDIS_URL): the workers share cooldowns, sessions and quota "
            "through Redis, or each would spend the accounts on its own"
        )


def listening_socket(config: Config) -> socket.socket:
    """Bind and listen on the configured address, for the children to share."""
    from gateway.server import hypercorn_config

    hyper = hypercorn_config(config)
    sock = hyper.create_sockets().insecure_sockets[0]
    sock.listen(hyper.backlog)
    sock.set_inheritable(True)
    return sock


async def serve_workers(
    config: Config,
    child_args: Sequence[str],
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `config.server.workers` children of `gateway <child_args>` on one socket until
    signalled; reports the base URL once they are starting."""
    from gateway.app import prepare_shared_files
    from gateway.server import url_of

    await prepare_shared_files(config)
    sock = listening_socket(config)
    url = url_of(sock)
    children: dict[int, trio.Process] = {}
    stopping = trio.Event()
    gave_up = trio.Event()
    env = {**os.environ, LISTEN_FD_ENV: str(sock.fileno()), PARENT_ENV: str(os.getpid()),
           "GATEWAY_SERVER_WORKERS": "1"}
    # -P: the installed gateway, never a `gateway` directory the parent was started in
    command = [sys.executable, "-P", "-m", "gateway", *child_args]

    async def keep_running(index: int) -> None:
        failures = 0
        while not stopping.is_set():
            started = trio.current_time()
            process = await trio.lowlevel.open_process(
                command, env={**env, "GATEWAY_WORKER": str(index)}, pass_fds=(sock.fileno(),),
                process_group=0,
            )
            children[index] = process
            code = await process.wait()
            if stopping.is_set():
                return
            failures = 0 if trio.current_time() - started > HEALTHY_RUN_SECONDS else failures + 1
            if failures >= MAX_QUICK_FAILURES:
                # a worker that cannot stay up (a broken config, say) will not: stop serving,
                # so a load balancer's checks fail instead of connections hanging
                log.error("worker %d exited with status %s %d times in a row, each within "
                          "%.0fs of starting; stopping the gateway", index, code, failures,
                          HEALTHY_RUN_SECONDS)
                gave_up.set()
                return
            wait = min(MAX_RESTART_BACKOFF_SECONDS, 0.5 * 2 ** max(0, failures - 1))
            log.error("worker %d exited with status %s; starting it again in %.1fs",
                      index, code, wait)
            await trio.sleep(wait)

    async def forward_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not stopping.is_set():
                    log.info("received %s: the workers drain their requests (again to stop "
                             "now)", name)
                    stopping.set()
                    sock.close()  # nobody new is let in while the workers drain
                else:
                    log.info("received %s again: the workers stop now", name)
                for process in children.values():
                    if process.returncode is None:
                        process.send_signal(signal.SIGTERM)

    async def give_up() -> None:
        await gave_up.wait()
        stopping.set()
        sock.close()
        for process in children.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)

    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(forward_signals)
            outer.start_soon(give_up)
            async with trio.open_nursery() as workers:
                for index in range(config.server.workers):
                    workers.start_soon(keep_running, index)
                task_status.started(url)
            outer.cancel_scope.cancel()  # every worker has stopped
    finally:
        sock.close()
        for process in children.values():
            if process.returncode is None:
                process.kill()
    if gave_up.is_set():
        raise WorkersFailed("the workers kept exiting soon after starting (see above)")


class WorkersFailed(Exception):
    """`serve --workers` stopped because its workers could not stay up."""


def inherited_bind() -> list[str] | None:
    """The bind of a worker: the socket its parent handed down, or None (not a worker)."""
    fd = os.environ.get(LISTEN_FD_ENV)
    return [f"fd://{int(fd)}"] if fd else None


async def watch_parent() -> None:
    """In a worker: drain and exit (as on SIGTERM) once the parent is gone."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        await trio.sleep_forever()
        return
    # Polled: no event says a parent died (PR_SET_PDEATHSIG fires when the *thread* that
    # spawned us ends, and trio spawns from worker threads that come and go).
    while os.getppid() == int(parent):  # noqa: ASYNC110
        await trio.sleep(1.0)
    log.warning("the parent process is gone: draining and stopping")
    os.kill(os.getpid(), signal.SIGTERM)
    await trio.sleep_forever()
