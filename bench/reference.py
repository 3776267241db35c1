"""The Node reference: the published `antigravity-claude-proxy`, run against the emulator.

For benchmarking only. The pinned npm release is installed (without its install scripts:
its one native module, better-sqlite3, reads the Antigravity IDE's database, which this
never uses) into `bench/.work/node-reference/`, ignored by git and kept between runs. Each
run copies the package's `src/constants.js` back from the pristine copy and points it at
this run's emulator: the Cloud Code endpoints and the OAuth token URL become the emulator's,
the OAuth client becomes the emulator's, and the User-Agent becomes the gateway's current
one (the emulator, like the real upstream, refuses the package's dated `antigravity/1.11.5`
with its version gate). Nothing else of it is changed. Its accounts are the emulator's demo
accounts, in its own accounts file under a throw-away HOME.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from bench.procs import LOOPBACK, REPO, Service, StartError, UpstreamAt, free_port, running

PACKAGE = "antigravity-claude-proxy"
VERSION = "2.0.4"
WORK = REPO / "bench" / ".work" / "node-reference"


def missing_reason() -> str | None:
    """Why the reference cannot run here, or None."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: apt-get install nodejs npm)"
    return None


def _package_dir() -> Path:
    return WORK / "node_modules" / PACKAGE


async def install() -> Path:
    """The installed package (installed on first use); raises StartError if npm fails."""
    package = _package_dir()
    manifest = package / "package.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("version") == VERSION:
        return package
    WORK.mkdir(parents=True, exist_ok=True)
    done = await trio.run_process(
        ["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--prefix",
         str(WORK), f"{PACKAGE}@{VERSION}"],
        capture_stdout=True, capture_stderr=True, check=False,
    )
    if done.returncode != 0 or not manifest.exists():
        tail = done.stderr.decode(errors="replace")[-1500:]
        raise StartError(f"npm install {PACKAGE}@{VERSION} failed:\n{tail}")
    return package


def point_at(package: Path, emulator_url: str, user_agent: str, oauth_url: str = "") -> None:
    """Write constants.js from the pristine copy, aimed at `emulator_url` (and its OAuth
    at `oauth_url`, by default the same)."""
    oauth_url = oauth_url or emulator_url
    from gateway.emulator import EMULATOR_CLIENT_ID, EMULATOR_CLIENT_SECRET

    constants = package / "src" / "constants.js"
    pristine = package / "src" / "constants.js.orig"
    if not pristine.exists():
        shutil.copyfile(constants, pristine)
    text = pristine.read_text()
    replacements = [
        (r"'https://daily-cloudcode-pa\.googleapis\.com'", repr(emulator_url)),
        (r"'https://cloudcode-pa\.googleapis\.com'", repr(emulator_url)),
        (r"'https://oauth2\.googleapis\.com/token'", repr(f"{oauth_url}/token")),
        (r"clientId: '[^']*'", f"clientId: {EMULATOR_CLIENT_ID!r}"),
        (r"clientSecret: '[^']*'", f"clientSecret: {EMULATOR_CLIENT_SECRET!r}"),
        (r"return `antigravity/[^`]*`;", f"return {user_agent!r};"),
    ]
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement.replace("\\", "\\\\"), text)
        if count == 0:
            raise StartError(f"{PACKAGE} {VERSION}: constants.js has no {pattern!r} any more")
    constants.write_text(text)


def write_accounts(home: Path) -> None:
    from gateway.emulator import DEMO_ACCOUNTS

    config = home / ".config" / "antigravity-proxy"
    config.mkdir(parents=True, exist_ok=True)
    accounts = [
        {"email": d.email, "source": "oauth", "refreshToken": d.refresh_token,
         "projectId": d.project, "enabled": True}
        for d in DEMO_ACCOUNTS
    ]
    (config / "accounts.json").write_text(json.dumps(
        {"accounts": accounts, "settings": {}, "activeIndex": 0}, indent=2))


@asynccontextmanager
async def running_reference(workdir: Path, at: UpstreamAt) -> AsyncIterator[Service]:
    from gateway.config import UpstreamConfig

    package = await install()
    point_at(package, at.url, UpstreamConfig().user_agent, at.oauth_url)
    home = workdir / "node-home"
    write_accounts(home)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    trust = [f"NODE_EXTRA_CA_CERTS={at.ca_file}"] if at.ca_file else []
    argv = ["env", f"HOME={home}", f"PORT={port}", *trust, "node",
            str(package / "src" / "index.js")]
    async with running("node-reference", argv, url, workdir, ready_timeout=60.0) as service:
        yield service


def node_version() -> str:
    try:
        done = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10,
                              check=False)
    except OSError:
        return "-"
    return done.stdout.strip() or "-"
