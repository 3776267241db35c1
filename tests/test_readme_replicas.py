"""The README's compose example for replicas stays true to the gateway it describes: its
environment names real config keys (with Redis on), its commands parse, Caddy balances over
every replica, and each replica mounts the accounts read-only beside a writable usage file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from gateway.cli import _parser
from gateway.config import load_config

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(first_line: str) -> str:
    blocks = re.findall(r"```[a-z]*\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if b.startswith(first_line)]
    assert len(found) == 1, f"README has {len(found)} blocks starting {first_line!r}"
    return found[0]


def test_the_compose_example_configures_real_keys_and_commands() -> None:
    compose: dict[str, Any] = yaml.safe_load(_block("# compose.yaml"))
    services = compose["services"]
    replicas = [name for name in services if name.startswith("gateway")]
    assert len(replicas) == 3
    for name in replicas:
        service = services[name]
        env = {k: v if "${" not in str(v) else "x" for k, v in service["environment"].items()}
        config = load_config(environ=env)  # an unknown or bad key would raise
        assert config.state.redis_url == "redis://redis:6379/0"
        assert config.accounts.file.startswith("/data/shared/")
        assert config.responses.key_file.startswith("/data/shared/")
        assert config.usage.file.startswith("/data/usage/")
        assert "shared:/data/shared:ro" in service["volumes"]
        assert service["restart"] == "unless-stopped"
        _parser().parse_args(service["command"])
    admin = services["admin"]
    assert "shared:/data/shared" in admin["volumes"]  # the one writer, not read-only
    for command in (["secret"], ["accounts", "add", "--no-browser"], ["usage"]):
        _parser().parse_args(command)
    caddy = _block("# Caddyfile")
    assert all(f"{name}:8080" in caddy for name in replicas)
    assert "health_uri /health" in caddy and "flush_interval -1" in caddy
    assert "lb_try_duration" in caddy  # a draining replica is not a 502
    # the volumes' mount points exist in the image, owned by its user (so new named
    # volumes are the gateway's too)
    containerfile = (README.parent / "Containerfile").read_text()
    assert "/data/shared" in containerfile and "/data/usage" in containerfile
