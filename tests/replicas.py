"""Real processes for the scale-out tests: a `redis-server` and `gateway serve` replicas.

`RedisServer` runs Debian's redis-server on a free loopback port (no persistence), and can
be killed, paused (SIGSTOP: a Redis that hangs) and started again on the same port.
`Replica` is one `python -m gateway serve` process with its own config file, all of them
sharing one accounts file, one emulator and one Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from tests.clis import launch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (Debian: apt-get install redis-server; "
                        ".ci/run installs it)")
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def command(self, *args: str) -> Any:
        """One command over a fresh connection (RESP), for the tests' own looks at keys."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            raw = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"".join(parts))
            reader = sock.makefile("rb")
            return _read_resp(reader)


def _read_resp(reader: Any) -> Any:
    line = reader.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise AssertionError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = reader.read(size + 2)[:-2]
        return data.decode()
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_resp(reader) for _ in range(count)]
    raise AssertionError(f"unexpected RESP line {line!r}")


@attrs.define
class Replica:
    name: str
    proc: subprocess.Popen[str]
    url: str
    lines: list[str]

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **kwargs)

    def health(self) -> dict[str, Any]:
        data: dict[str, Any] = self.get("/health").json()
        return data

    def limits(self) -> dict[str, Any]:
        """email -> that account's entry of /account-limits."""
        found = self.get("/account-limits").json()
        return {entry["email"]: entry for entry in found["accounts"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def replica_config(path: Path, *, emulator: str, accounts: Path, redis: str,
                   extra: str = "", lease_seconds: float = 1.5) -> None:
    from gateway.emulator import EMULATOR_CLIENT_ID, EMULATOR_CLIENT_SECRET

    path.write_text(f"""
[server]
host = "127.0.0.1"
port = 8080

[upstream]
base_urls = ["{emulator}"]
retry_backoff_seconds = 0.01
soft_rate_limit_wait_seconds = 0.01

[oauth]
client_id = "{EMULATOR_CLIENT_ID}"
client_secret = "{EMULATOR_CLIENT_SECRET}"
token_url = "{emulator}/token"
auth_url = "{emulator}/o/oauth2/v2/auth"
userinfo_url = "{emulator}/oauth2/v1/userinfo"

[accounts]
file = "{accounts}"

[state]
redis_url = "{redis}"
retry_seconds = 0.3
lease_seconds = {lease_seconds}
{extra}
""")


def start_replica(name: str, config: Path, home: Path,
                  extra_args: tuple[str, ...] = ()) -> Replica:
    """Start `gateway serve` (blocking until it listens: call it from a thread)."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("GATEWAY_CONFIG", None)
    marker = "gateway listening on "
    proc, lines = launch(
        [sys.executable, "-m", "gateway", "--config", str(config), "serve", "--port", "0",
         *extra_args], env, lambda line: marker in line)
    found = [line.split(marker, 1)[1].split()[0] for line in lines if marker in line]
    if not found:
        proc.kill()
        raise AssertionError(f"replica {name} did not start:\n{''.join(lines)}")
    return Replica(name, proc, found[0], lines)
