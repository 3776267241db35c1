"""The processes under test: the emulator and the gateway, each a `python -m gateway` child.

Each runs in its own process so its CPU time and memory can be read from `/proc/<pid>` apart
from the load generator's. Ports are picked by the harness on 127.0.0.1; readiness is a
bounded poll of `/health`. Children get an environment without `GATEWAY_*` variables, so a
user's overrides cannot change what is measured, and their output goes to a log file whose
tail is shown if one fails to start.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class StartError(Exception):
    """A child process did not become ready; the message carries its log tail."""


def free_port() -> int:
    """A port the kernel just had free on loopback (the child binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # the command name may contain spaces and parentheses; fields resume after the last ')'
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    # kernel threads and zombies have no VmRSS; statm is the fallback
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_KIB


def children_of(pid: int) -> list[int]:
    """The live child processes of `pid` (from /proc/*/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive_cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:  # a worker that just exited
        return 0.0


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


@attrs.define(slots=True)
class Service:
    """A running child process and the base URL it serves."""

    name: str
    url: str
    process: trio.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    # a parent of workers (`serve --workers`): its CPU is its own and its children's
    tree: bool = False

    def cpu_seconds(self) -> float:
        if not self.tree:
            return cpu_seconds(self.pid)
        return sum(_alive_cpu(pid) for pid in (self.pid, *children_of(self.pid)))

    def rss_kib(self) -> int:
        if not self.tree:
            return rss_kib(self.pid)
        return sum(rss_kib(pid) for pid in (self.pid, *children_of(self.pid)))

    def alive(self) -> bool:
        return self.process.returncode is None and self.process.poll() is None


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


async def _wait_ready(
    process: trio.Process, url: str, log_path: Path, *, within: float, want_ok: bool
) -> None:
    """Poll `url` until it answers (200 if `want_ok`); fail fast if the child exits."""
    last = "no answer"
    async with httpx.AsyncClient(timeout=2.0) as client:
        with trio.move_on_after(within):
            while True:
                if process.poll() is not None:
                    raise StartError(
                        f"{url} process exited with {process.returncode}:\n{log_tail(log_path)}"
                    )
                try:
                    response = await client.get(url)
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                else:
                    if response.status_code == 200 or not want_ok:
                        return
                    last = f"HTTP {response.status_code}"
                await trio.sleep(0.1)
    raise StartError(f"{url} not ready after {within:.0f}s ({last}):\n{log_tail(log_path)}")


@asynccontextmanager
async def running(
    name: str,
    argv: Sequence[str],
    url: str,
    workdir: Path,
    *,
    ready_path: str = "/health",
    want_ok: bool = True,
    ready_timeout: float = 30.0,
) -> AsyncIterator[Service]:
    """Start a child, wait until it is ready, and stop it (SIGTERM, then SIGKILL) on exit."""
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        process = await trio.lowlevel.open_process(
            list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), env=child_env()
        )
        try:
            await _wait_ready(
                process, url + ready_path, log_path, within=ready_timeout, want_ok=want_ok
            )
            yield Service(name, url, process, log_path)
        finally:
            with trio.CancelScope(shield=True):
                await stop(process)


async def stop(process: trio.Process) -> None:
    if process.poll() is None:
        process.terminate()
        with trio.move_on_after(8):
            await process.wait()
    if process.poll() is None:
        process.kill()
        with trio.move_on_after(5):
            await process.wait()


def emulator_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "gateway", "emulator", "--host", LOOPBACK, "--port", str(port)]


def gateway_argv(config_path: Path, port: int, workers: int = 1) -> list[str]:
    return [
        sys.executable, "-m", "gateway", "--config", str(config_path), "serve",
        "--port", str(port), *(("--workers", str(workers)) if workers > 1 else ()),
    ]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(type(value).__name__)


def gateway_config_toml(sections: dict[str, dict[str, Any]]) -> str:
    out: list[str] = []
    for section, values in sections.items():
        out.append(f"[{section}]")
        out.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        out.append("")
    return "\n".join(out)


@attrs.frozen(slots=True)
class UpstreamAt:
    """Where proxies reach the emulator: Cloud Code at `url` (https in the TLS profile,
    trusting `ca_file`), OAuth always at the plain `oauth_url`."""

    url: str
    oauth_url: str
    ca_file: str = ""


async def write_gateway_config(
    workdir: Path, emulator_url: str | UpstreamAt, port: int, *, keepalive_seconds: float,
    log_level: str, redis_url: str = "",
) -> Path:
    # upstream.read_timeout_seconds is raised so that idle streams (an emulator holding
    # every chunk back) stay open for the whole idle probe
    """A config file pointing the gateway at the emulator, plus its demo accounts file."""
    from gateway.cli import write_demo_accounts
    from gateway.emulator import EMULATOR_CLIENT_ID, EMULATOR_CLIENT_SECRET

    at = emulator_url if isinstance(emulator_url, UpstreamAt) else UpstreamAt(
        emulator_url, emulator_url)
    emulator_url = at.oauth_url
    accounts = workdir / f"accounts-{port}.json"
    await write_demo_accounts(str(accounts))
    config = gateway_config_toml(
        {
            "server": {
                "host": LOOPBACK,
                "port": port,
                "keepalive_seconds": keepalive_seconds,
                "shutdown_grace_seconds": 1.0,
                "log_level": log_level,
                # the idle probe holds thousands of streams at once (the default admits 512)
                "max_concurrent_requests": 10_000,
            },
            "upstream": {"base_urls": [at.url], "read_timeout_seconds": 900.0,
                         **({"ca_file": at.ca_file} if at.ca_file else {})},
            "oauth": {
                "client_id": EMULATOR_CLIENT_ID,
                "client_secret": EMULATOR_CLIENT_SECRET,
                "token_url": f"{emulator_url}/token",
                "auth_url": f"{emulator_url}/o/oauth2/v2/auth",
                "userinfo_url": f"{emulator_url}/oauth2/v1/userinfo",
            },
            "accounts": {"file": str(accounts)},
            **({"state": {"redis_url": redis_url}} if redis_url else {}),
        }
    )
    path = workdir / f"gateway-{port}.toml"
    path.write_text(config)
    return path


@asynccontextmanager
async def running_emulator(
    workdir: Path, tls: tuple[str, str] | None = None, tls_port: int = 0
) -> AsyncIterator[Service]:
    """The emulator on plain HTTP (its control surface, OAuth), and with `tls` (certificate
    chain, key) on `tls_port` over HTTPS too, from the same state."""
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    argv = emulator_argv(port)
    if tls is not None:
        argv += ["--tls-cert", tls[0], "--tls-key", tls[1], "--tls-port", str(tls_port)]
    async with running(
        "emulator", argv, url, workdir, ready_path="/__emulator/config"
    ) as service:
        yield service


@asynccontextmanager
async def running_gateway(
    workdir: Path,
    emulator_url: str | UpstreamAt,
    *,
    keepalive_seconds: float = 15.0,
    log_level: str = "warning",
    name: str = "gateway",
    redis_url: str = "",
    workers: int = 1,
) -> AsyncIterator[Service]:
    port = free_port()
    config = await write_gateway_config(
        workdir, emulator_url, port, keepalive_seconds=keepalive_seconds, log_level=log_level,
        redis_url=redis_url,
    )
    url = f"http://{LOOPBACK}:{port}"
    async with running(name, gateway_argv(config, port, workers), url, workdir) as service:
        service.tree = workers > 1
        yield service


@asynccontextmanager
async def running_redis(workdir: Path) -> AsyncIterator[Service]:
    """Debian's redis-server on a free loopback port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StartError("redis-server is not installed")
    port = free_port()
    log_path = workdir / "redis.log"
    with log_path.open("ab") as log:
        process = await trio.lowlevel.open_process(
            [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly",
             "no", "--dir", str(workdir)], stdout=log, stderr=subprocess.STDOUT)
        try:
            with trio.move_on_after(10):
                while True:
                    try:
                        stream = await trio.open_tcp_stream(LOOPBACK, port)
                    except OSError:
                        await trio.sleep(0.05)
                        continue
                    await stream.aclose()
                    break
            yield Service("redis", f"redis://{LOOPBACK}:{port}/0", process, log_path)
        finally:
            with trio.CancelScope(shield=True):
                await stop(process)


def litellm_argv(config_path: Path, port: int) -> list[str]:
    script = Path(sys.executable).parent / "litellm"
    command = [str(script)] if script.exists() else [
        sys.executable, "-m", "litellm.proxy.proxy_cli"
    ]
    return [*command, "--config", str(config_path), "--host", LOOPBACK, "--port", str(port)]


@asynccontextmanager
async def running_litellm(workdir: Path, gateway_url: str, model: str) -> AsyncIterator[Service]:
    """A LiteLLM proxy whose one model is the gateway's OpenAI face (LiteLLM must be installed)."""
    port = free_port()
    config = workdir / f"litellm-{port}.yaml"
    # JSON strings are valid YAML scalars, so no YAML library is needed
    config.write_text(
        "model_list:\n"
        f"  - model_name: {json.dumps(model)}\n"
        "    litellm_params:\n"
        f"      model: {json.dumps('openai/' + model)}\n"
        f"      api_base: {json.dumps(gateway_url + '/v1')}\n"
        '      api_key: "bench"\n'
        # the current LiteLLM proxy refuses to start without a master key
        "general_settings:\n"
        '  master_key: "sk-bench"\n'
    )
    url = f"http://{LOOPBACK}:{port}"
    async with running(
        "litellm", litellm_argv(config, port), url, workdir,
        ready_path="/health/liveliness", ready_timeout=90.0,
    ) as service:
        yield service
