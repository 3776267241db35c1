"""The command line fails with one clear line, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def gateway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = gateway("serve", "--port", port,
                         env={"GATEWAY_ACCOUNTS_FILE": str(tmp_path / "a.json")})
    assert result.returncode == 2
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_accounts_file(tmp_path: Path) -> None:
    broken = tmp_path / "accounts.json"
    broken.write_text("{bad")
    for args in (("serve", "--port", "0"), ("accounts", "list")):
        result = gateway(*args, env={"GATEWAY_ACCOUNTS_FILE": str(broken)})
        assert result.returncode == 2
        assert "not valid JSON" in result.stderr
        assert "Traceback" not in result.stderr
    assert broken.read_text() == "{bad"  # never overwritten


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    result = gateway("serve", env={"GATEWAY_PORT": "abc"})
    assert result.returncode == 2
    assert "GATEWAY_PORT" in result.stderr
    config = tmp_path / "gateway.toml"
    config.write_text('[server]\nport = "eighty"\n')
    after = gateway("serve", "--config", str(config))  # --config after the subcommand
    assert after.returncode == 2
    assert "server.port" in after.stderr or "port" in after.stderr
    directory = gateway("--config", str(tmp_path), "serve")
    assert directory.returncode == 2
    assert "cannot be read" in directory.stderr


def test_accounts_import(tmp_path: Path) -> None:
    source = Path(__file__).parent / "fixtures" / "accounts" / "antigravity-claude-proxy.json"
    env = {"GATEWAY_ACCOUNTS_FILE": str(tmp_path / "accounts.json")}
    result = gateway("accounts", "import", str(source), env=env)
    assert result.returncode == 0, result.stderr
    assert "2 added" in result.stdout
    listing = gateway("accounts", "list", env=env)
    assert "demo1@example.com" in listing.stdout and "demo-project-2" in listing.stdout
    missing = gateway("accounts", "import", str(tmp_path / "none.json"), env=env)
    assert missing.returncode == 2
    assert "no accounts file" in missing.stderr and "Traceback" not in missing.stderr


def test_demo_honours_gateway_port_and_says_keys_are_needed(tmp_path: Path) -> None:
    """`gateway demo` binds where GATEWAY_PORT says (its --port is only an override), and
    with API keys set its banner says to use them, without printing them."""
    import signal
    import threading

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    secret = "sk-banner-secret-1234"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "GATEWAY_PORT": str(port), "GATEWAY_API_KEYS": secret,
             "XDG_CONFIG_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl+C" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(30), "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    banner = "".join(lines)
    assert f"http://127.0.0.1:{port}/v1" in banner
    assert "API keys are set" in banner
    assert secret not in banner


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`gateway accounts list | head -0`: the reader is gone before anything is written."""
    source = Path(__file__).parent / "fixtures" / "accounts" / "antigravity-claude-proxy.json"
    env = {**os.environ, "GATEWAY_ACCOUNTS_FILE": str(tmp_path / "accounts.json")}
    assert gateway("accounts", "import", str(source), env=env).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "accounts", "list"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    errors = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in errors and "BrokenPipe" not in errors, errors


def test_every_subcommand_says_what_it_does() -> None:
    for command in (["serve"], ["demo"], ["emulator"], ["limits"], ["usage"], ["accounts"],
                    ["accounts", "add"], ["accounts", "list"], ["accounts", "remove"],
                    ["accounts", "verify"], ["accounts", "import"]):
        shown = gateway(*command, "--help")
        assert shown.returncode == 0, shown.stderr
        description = shown.stdout.split("\n\n")[1]
        assert not description.startswith(("options:", "positional")), (command, shown.stdout)
    assert "--config" in gateway("accounts", "add", "--help").stdout


def test_demo_usage_history_survives_a_restart(tmp_path: Path) -> None:
    """What `gateway demo` served is in its /usage after it is stopped and started again."""
    import httpx

    from tests.clis import start_demo, stop_demo

    proc, demo = start_demo(tmp_path, {})
    try:
        answer = httpx.post(f"{demo.url}/v1/chat/completions", timeout=30, json={
            "model": "gemini-3-flash", "messages": [{"role": "user", "content": "count me"}]})
        assert answer.status_code == 200
        tokens = answer.json()["usage"]["prompt_tokens"]
    finally:
        stop_demo(proc)  # the last batch is written on the way out
    proc, demo = start_demo(tmp_path, {})
    try:
        totals = httpx.get(f"{demo.url}/usage", timeout=30).json()["totals"]
    finally:
        stop_demo(proc)
    assert totals["requests"] >= 1 and totals["input_tokens"] >= tokens
    assert (tmp_path / "gateway" / "demo-usage.sqlite").exists()


def test_ctrl_c_exits_at_once_when_idle_and_on_a_second_press(tmp_path: Path) -> None:
    """The grace period is for requests in flight: idle keep-alive connections do not hold
    the exit, and a second Ctrl-C does not wait for the requests either."""
    import contextlib
    import signal
    import threading
    import time

    import httpx

    from tests.clis import start_demo

    proc, demo = start_demo(tmp_path, {"GATEWAY_SERVER_SHUTDOWN_GRACE_SECONDS": "30"})
    idle = httpx.Client(base_url=demo.url, timeout=30)
    assert idle.get("/health").status_code == 200  # a keep-alive connection, left open
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    proc.wait(timeout=20)
    assert time.monotonic() - started < 5, "idle connections held the exit"
    idle.close()

    proc, demo = start_demo(tmp_path, {"GATEWAY_SERVER_SHUTDOWN_GRACE_SECONDS": "30"})
    httpx.post(f"{demo.emulator}/__emulator/faults", json={"kind": "stall"}, timeout=10)

    def in_flight() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{demo.url}/v1/chat/completions", timeout=60, json={
                "model": "gemini-3-flash", "stream": True,
                "messages": [{"role": "user", "content": "never answered"}]})

    worker = threading.Thread(target=in_flight, daemon=True)
    worker.start()
    time.sleep(1.0)  # the request is in flight, its upstream stalled
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None, "the first Ctrl-C gives in-flight requests their grace"
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    proc.wait(timeout=20)
    assert time.monotonic() - started < 5, "a second Ctrl-C must not wait out the grace"

    # an open dashboard (a live stream that never ends by itself) does not hold the exit
    proc, demo = start_demo(tmp_path, {"GATEWAY_SERVER_SHUTDOWN_GRACE_SECONDS": "30"})
    with httpx.stream("GET", f"{demo.url}/dashboard/events", timeout=30) as live:
        assert live.status_code == 200
        next(live.iter_bytes())
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        proc.wait(timeout=20)
    assert time.monotonic() - started < 5, "a dashboard stream held the exit"


def test_settle_heap_takes_start_up_out_of_full_collections() -> None:
    # in a process of its own: the test process's collector is left as it is
    code = ("import gc; from gateway.app import create_app; from gateway.config import Config; "
            "from gateway.cli import settle_heap; create_app(Config()); "
            "assert gc.get_freeze_count() == 0; settle_heap(); print(gc.get_freeze_count())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 10_000  # the modules, config and app made at start-up


def test_serve_and_demo_settle_the_heap_once_listening() -> None:
    import inspect

    from gateway import cli

    for serve in (cli._serve, cli._demo):
        source = inspect.getsource(serve)
        assert source.index("settle_heap()") > source.index("start(")
