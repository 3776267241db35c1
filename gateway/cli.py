"""Command line: `gateway serve | demo | emulator | accounts ... | limits | usage`.

Every command loads the same validated config (`--config PATH` or `$GATEWAY_CONFIG`, then
environment overrides); a bad value stops the command with a message naming the key and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import gc
import os
import sys
import tempfile
import webbrowser
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from gateway.accounts.oauth import OAuthError
from gateway.accounts.store import AccountStore, AccountStoreError
from gateway.config import Config, ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="OpenAI-, Anthropic- and Gemini-compatible gateway to Claude and Gemini "
        "models on Cloud Code.",
    )
    parser.add_argument("--config", help="TOML config file (default: $GATEWAY_CONFIG)")
    # --config is also accepted after the subcommand (`gateway serve --config f.toml`)
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument(
        "--config", default=argparse.SUPPRESS, help="TOML config file (default: $GATEWAY_CONFIG)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", help="serve the gateway with your Google accounts", parents=[config_option]
    )
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback bind without API keys (anyone can use your quota)",
    )
    serve.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="N processes on this address, to use N cores (needs state.redis_url; "
             "default server.workers, 1)",
    )

    demo = sub.add_parser(
        "demo", help="serve the gateway on the built-in emulator (no account)",
        parents=[config_option],
    )
    # no argparse defaults: GATEWAY_HOST / GATEWAY_PORT and the config file's server.host /
    # server.port apply unless the flag is given, as for serve
    demo.add_argument("--host", help="bind address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, help="port (default 8080)")

    emu = sub.add_parser("emulator", help="run the Cloud Code + OAuth emulator alone")
    emu.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    emu.add_argument("--port", type=int, default=8090, help="port (default 8090)")
    emu.add_argument("--tls-cert", metavar="PEM", help="with --tls-key: also serve HTTPS "
                     "(HTTP/2 by ALPN) with this certificate chain")
    emu.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    emu.add_argument("--tls-port", type=int, default=0,
                     help="the HTTPS port (default: a free one, printed)")

    accounts = sub.add_parser("accounts", help="manage Google accounts", parents=[config_option])
    acc = accounts.add_subparsers(dest="action", required=True)
    add = acc.add_parser("add", help="add an account with Google OAuth",
                         parents=[config_option])
    add.add_argument(
        "--no-browser", action="store_true", help="print the URL and paste the redirect back"
    )
    acc.add_parser("list", help="list stored accounts", parents=[config_option])
    remove = acc.add_parser("remove", help="remove an account", parents=[config_option])
    remove.add_argument("email")
    acc.add_parser("verify", help="refresh every account's token and report",
                   parents=[config_option])
    imp = acc.add_parser(
        "import", help="import accounts from antigravity-claude-proxy's accounts.json",
        parents=[config_option],
    )
    imp.add_argument(
        "path", nargs="?", default=None,
        help="accounts file (default ~/.config/antigravity-proxy/accounts.json)",
    )

    limits = sub.add_parser(
        "limits", help="show quotas and cooldowns of a running gateway", parents=[config_option]
    )
    limits.add_argument("--url", default=None, help="gateway base URL (default from config)")
    limits.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sub.add_parser(
        "secret", help="make the gateway's secret file now (replicas sharing a read-only "
        "config directory need it made once)",
        description="Make the secret that seals reasoning for Responses clients and signs "
        "dashboard sessions (responses.key_file, default responses.key beside the accounts "
        "file), if it is not there yet, and print where it is. Replicas must share one.",
        parents=[config_option],
    )

    usage = sub.add_parser(
        "usage", help="show the usage history (requests and tokens per hour, model, ...)",
        description="Requests and tokens from the usage history file (usage.file, default "
        "usage.sqlite beside the accounts file), read directly: it works with the gateway "
        "stopped. While the gateway runs, its last usage.flush_seconds may not be written "
        "yet (GET /usage includes them). Times are UTC.",
        parents=[config_option],
    )
    usage.add_argument("--since", default="24h",
                       help="epoch seconds, ISO 8601 or a duration ago: 90m, 24h, 7d "
                       "(default 24h)")
    usage.add_argument("--until", default=None, help="the same forms (default now)")
    usage.add_argument("--group-by", default="day,model",
                       help="comma separated: hour, day, account, model, key, or none for "
                       "one total (default day,model)")
    usage.add_argument("--demo", action="store_true",
                       help="read the history `gateway demo` keeps (demo-usage.sqlite)")
    usage.add_argument("--file", action="append", default=None, metavar="PATH",
                       help="read this usage file instead; repeat it to sum several "
                       "(replicas on several hosts, each with its own)")
    usage.add_argument("--json", action="store_true", help="print JSON (as GET /usage) "
                       "instead of a table")
    return parser


def _describe_subcommands(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every subcommand's --help opens with what it does (its one-line help, unless it has
    a description of its own)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                sub = action.choices[choice.dest]
                if not sub.description and choice.help:
                    sub.description = choice.help[0].upper() + choice.help[1:] + "."
                _describe_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _describe_subcommands(_parser()).parse_args(argv)
    try:
        config = load_config(args.config)
        if getattr(args, "host", None):
            config = attrs.evolve(config, server=attrs.evolve(config.server, host=args.host))
        if getattr(args, "port", None) is not None:
            config = attrs.evolve(config, server=attrs.evolve(config.server, port=args.port))
        if getattr(args, "workers", None) is not None:
            if args.workers < 1:
                raise ConfigError(f"--workers must be at least 1, got {args.workers}")
            config = attrs.evolve(config, server=attrs.evolve(config.server,
                                                              workers=args.workers))
        code = _run(args, config)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
    except BrokenPipeError:
        # the reader went away (`gateway limits | head -1`): not an error to report, and
        # nothing more can be written; the interpreter must not try again at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except (ConfigError, AccountStoreError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except OAuthError as exc:
        print(f"gateway: sign-in failed: {exc}", file=sys.stderr)
        code = 1
    except BaseExceptionGroup as group:  # what a nursery raises, e.g. a failed bind
        if group.split(KeyboardInterrupt)[0] is not None:
            sys.exit(130)
        bind = _bind_error(group)
        if bind is None:
            raise
        print(f"gateway: {bind}", file=sys.stderr)
        code = 2
    except OSError as exc:
        bind = _bind_error(BaseExceptionGroup("", [exc]))
        if bind is None:
            raise
        print(f"gateway: {bind}", file=sys.stderr)
        code = 2
    sys.exit(code)


def _bind_error(group: BaseExceptionGroup[BaseException]) -> str | None:
    """A one-line message for a failed bind, or None if `group` holds something else."""
    matched, _ = group.split(OSError)
    if matched is None:
        return None
    error = matched.exceptions[0]
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, OSError)
    if error.errno == errno.EADDRINUSE:
        return "cannot bind: address already in use (choose another with --port or GATEWAY_PORT)"
    if error.errno == errno.EADDRNOTAVAIL:
        return "cannot bind: that address is not on this machine (check --host)"
    if error.errno == errno.EACCES:
        return "cannot bind: permission denied (ports below 1024 need privileges)"
    return None


def _run(args: argparse.Namespace, config: Config) -> int:
    from gateway.server import check_exposure, configure_logging

    command = args.command
    if command in ("serve", "demo"):
        if command == "serve":
            # demo accounts spend no real quota, so only `serve` guards its exposure
            check_exposure(config, insecure_no_auth=args.insecure_no_auth)
            # a broken accounts file stops start-up with one clear line, before binding
            AccountStore(config.accounts.file).load()
        configure_logging(config.server.log_level)
        if command == "serve" and config.server.workers > 1:
            from gateway.workers import WorkersFailed, check_workers

            check_workers(config)
            failed: list[BaseException] = []
            try:
                trio.run(_serve_workers, config, _worker_args(args, config))
            except* WorkersFailed as group:
                failed.extend(group.exceptions)
            if failed:
                print(f"gateway: {failed[0]}", file=sys.stderr)
                return 1
        elif command == "serve":
            trio.run(_serve, config)
        else:
            trio.run(_demo, _demo_usage(config))
        return 0
    if command == "emulator":
        from gateway.emulator import main_emulator

        if bool(args.tls_cert) != bool(args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
        main_emulator(args.host, args.port, tls=tls, tls_port=args.tls_port)
        return 0
    if command == "accounts":
        return _accounts(args, config)
    if command == "limits":
        return _limits(args, config)
    if command == "usage":
        return _usage(args, config)
    if command == "secret":
        return _secret(config)
    raise AssertionError(command)


def settle_heap() -> None:
    """Once serving: what start-up made (modules, the config, the model catalogue, the app)
    lives as long as the process, so it leaves the cyclic collector's view. A full
    collection then walks only what serving made since, instead of stalling every stream
    for the tens of milliseconds it takes to walk all of it."""
    gc.collect()
    gc.freeze()


async def _serve(config: Config) -> None:
    from gateway.app import create_app
    from gateway.workers import watch_parent

    app = create_app(config)
    async with trio.open_nursery() as nursery:

        async def serve(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
            await _serve_until_signalled(app, config, nursery.cancel_scope,
                                         task_status=task_status)
            nursery.cancel_scope.cancel()  # served and drained: the parent watch ends too

        url = await nursery.start(serve)
        settle_heap()
        print(f"gateway listening on {url}", flush=True)
        nursery.start_soon(watch_parent)  # a worker of `serve --workers`: not past its parent


async def _serve_workers(config: Config, child_args: list[str]) -> None:
    from gateway.workers import serve_workers

    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_workers, config, child_args)
        print(f"gateway listening on {url} ({config.server.workers} workers)", flush=True)


def _worker_args(args: argparse.Namespace, config: Config) -> list[str]:
    """The command line of one worker: `serve` with this one's config and flags."""
    child = ["serve", "--host", config.server.host]
    if args.config:
        child[1:1] = ["--config", args.config]
    if args.insecure_no_auth:
        child.append("--insecure-no-auth")
    return child


async def _serve_until_signalled(
    app: Any, config: Config, scope: trio.CancelScope,
    *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until Ctrl-C (or SIGTERM): once drains, twice stops now (cancels `scope`)."""
    from gateway.server import SignalShutdown, serve_gateway

    shutdown = SignalShutdown()
    async with trio.open_nursery() as nursery:
        await nursery.start(shutdown.watch, scope)
        await serve_gateway(app, config, shutdown_trigger=shutdown.trigger,
                            task_status=task_status)
        nursery.cancel_scope.cancel()  # served and drained: the watcher is done too


def demo_config(base: Config, emulator_url: str, accounts_file: str) -> Config:
    """The user's config, pointed at a local emulator and a throw-away accounts file."""
    from gateway.emulator import EMULATOR_CLIENT_ID, EMULATOR_CLIENT_SECRET

    return attrs.evolve(
        base,
        upstream=attrs.evolve(base.upstream, base_urls=(emulator_url,)),
        oauth=attrs.evolve(
            base.oauth,
            client_id=EMULATOR_CLIENT_ID,
            client_secret=EMULATOR_CLIENT_SECRET,
            token_url=f"{emulator_url}/token",
            auth_url=f"{emulator_url}/o/oauth2/v2/auth",
            userinfo_url=f"{emulator_url}/oauth2/v1/userinfo",
        ),
        accounts=attrs.evolve(base.accounts, file=accounts_file),
    )


async def write_demo_accounts(path: str) -> None:
    from gateway.accounts.model import Account
    from gateway.accounts.store import AccountStore
    from gateway.emulator import DEMO_ACCOUNTS

    accounts = [
        Account(email=d.email, refresh_token=d.refresh_token, project_id=d.project, tier="demo")
        for d in DEMO_ACCOUNTS
    ]
    await AccountStore(path).asave(accounts)


def _demo_usage(config: Config) -> Config:
    """The demo's accounts live in a throw-away directory; its usage history does not: it is
    there after a restart (beside, not in, a real gateway's)."""
    if config.usage.file:
        return config
    kept = Path(config.accounts.file).expanduser().parent / "demo-usage.sqlite"
    return attrs.evolve(config, usage=attrs.evolve(config.usage, file=str(kept)))


async def _demo(base: Config) -> None:
    from gateway.app import create_app
    from gateway.emulator import EmulatorState, serve_emulator
    state = EmulatorState.with_demo_accounts()
    with tempfile.TemporaryDirectory(prefix="gateway-demo-") as tmp:
        async with trio.open_nursery() as nursery:
            emulator_url = await nursery.start(partial(serve_emulator, state, host="127.0.0.1"))
            accounts_file = str(Path(tmp) / "accounts.json")
            await write_demo_accounts(accounts_file)
            config = demo_config(base, emulator_url, accounts_file)
            app = create_app(config, demo=True)
            async with trio.open_nursery() as gateway_nursery:
                url = await gateway_nursery.start(_serve_until_signalled, app, config,
                                                  nursery.cancel_scope)
                settle_heap()
                print(_demo_banner(url, emulator_url, keys=bool(config.server.api_keys)),
                      flush=True)
            # the gateway has drained and stopped; the emulator goes with it
            nursery.cancel_scope.cancel()


def _demo_banner(url: str, emulator_url: str, *, keys: bool = False) -> str:
    key_note = """
  API keys are set (server.api_keys): add -H 'authorization: Bearer <key>' to the curl
  commands below, and give the key to the clients (ANTHROPIC_API_KEY, GEMINI_API_KEY, ...)
  instead of "unused".
""" if keys else ""
    return f"""
gateway demo is running (upstream: built-in emulator at {emulator_url}, 2 demo accounts)

  base URL (OpenAI):     {url}/v1
  base URL (Anthropic):  {url}
  base URL (Gemini):     {url}   (/v1beta/models/...:generateContent)
  dashboard:             {url}/dashboard
  health:                {url}/health
  limits:                {url}/account-limits?format=table
{key_note}
  curl {url}/v1/messages -H 'content-type: application/json' \\
    -d '{{"model": "claude-sonnet-4-6", "max_tokens": 256,
         "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  curl {url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "gemini-3-flash", "messages": [{{"role": "user", "content": "Hi"}}]}}'

  curl {url}/v1/responses -H 'content-type: application/json' \\
    -d '{{"model": "claude-opus-4-6-thinking", "input": "Hi"}}'

  Claude Code:  ANTHROPIC_BASE_URL={url} ANTHROPIC_API_KEY=unused claude
  Gemini CLI:   GOOGLE_GEMINI_BASE_URL={url} GEMINI_API_KEY=unused gemini
                  (with "security.auth.selectedType": "gemini-api-key" in ~/.gemini/settings.json)
  Codex:        codex -c model_provider=gateway -c 'web_search="disabled"' \\
                  -c 'model_providers.gateway={{name="gateway", base_url="{url}/v1", '\\
                  'wire_api="responses"}}'

Press Ctrl+C to stop.
"""


def _accounts(args: argparse.Namespace, config: Config) -> int:
    from gateway.accounts import commands

    action = args.action
    if action == "add":

        def read_line(prompt: str) -> str:
            return input(prompt)

        def write(text: str) -> None:
            print(text, flush=True)

        account = trio.run(
            partial(
                commands.add_account,
                config,
                no_browser=args.no_browser,
                open_browser=webbrowser.open,
                read_line=read_line,
                write=write,
            )
        )
        print(f"added {account.email} (project {account.project_id or '-'})")
        return 0
    if action == "list":
        print(commands.list_accounts(config))
        return 0
    if action == "remove":
        if commands.remove_account(config, args.email):
            print(f"removed {args.email}")
            return 0
        print(f"gateway: no account {args.email}", file=sys.stderr)
        return 1
    if action == "verify":
        print(trio.run(commands.verify_accounts, config))
        return 0
    if action == "import":
        plan = trio.run(partial(commands.import_accounts, config, args.path, write=print))
        return 0 if plan.accounts else 1
    raise AssertionError(action)


def _limits(args: argparse.Namespace, config: Config) -> int:
    host = config.server.host if config.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = (args.url or f"http://{host}:{config.server.port}").rstrip("/")
    headers: dict[str, Any] = {}
    keys = config.server.api_keys
    key = os.environ.get("GATEWAY_API_KEY") or (keys[0] if keys else None)
    if key:
        headers["x-api-key"] = key
    try:
        response = httpx.get(
            f"{url}/account-limits",
            params={"format": "json" if args.json else "table"},
            headers=headers,
            timeout=10,
        )
    except httpx.HTTPError as exc:
        print(
            f"gateway: cannot reach {url} ({type(exc).__name__}); is `gateway serve` running "
            "there? Pass --url for another address.",
            file=sys.stderr,
        )
        return 1
    if response.status_code != 200:
        print(
            f"gateway: {url} answered {response.status_code}: {response.text[:300]}",
            file=sys.stderr,
        )
        return 1
    print(response.text.rstrip("\n"))
    return 0


def _secret(config: Config) -> int:
    from gateway.app import sealing_key_path
    from gateway.sealing import load_or_create_secret

    path = sealing_key_path(config)
    existed = path.exists()
    try:
        load_or_create_secret(path)
    except ValueError as exc:
        raise ConfigError(f"config key 'responses.key_file': {exc}") from None
    except OSError as exc:
        print(f"gateway: cannot make {path}: {exc.strerror or type(exc).__name__}",
              file=sys.stderr)
        return 1
    print("gateway: the secret was there already" if existed else "gateway: made the secret",
          file=sys.stderr)
    print(path)  # alone on stdout: scripts take it from there
    return 0


def _usage(args: argparse.Namespace, config: Config) -> int:
    import json
    import sqlite3
    import time

    from gateway import errors
    from gateway.state import usage as history

    paths = [Path(p).expanduser() for p in args.file] if args.file else [
        history.usage_path(_demo_usage(config) if args.demo else config)]
    # the same file named twice (or by two names) is counted once
    paths = list({os.path.realpath(p): p for p in paths}.values())
    path = paths[0]
    now = time.time()
    try:
        until = now if args.until is None else history.parse_time(args.until, now=now,
                                                                  name="--until")
        since = history.parse_time(args.since, now=now, name="--since")
        groups = history.parse_group_by(args.group_by)
        history.check_range(since, until)
    except errors.InvalidRequest as exc:
        print(f"gateway: {exc.message.replace('group_by', '--group-by')}", file=sys.stderr)
        return 2
    try:
        db = history.open_for_reading(path) if len(paths) == 1 else (
            history.merged_for_reading(paths))
    except FileNotFoundError as exc:
        missing = exc.args[0] if exc.args else path
        print(f"gateway: no usage history at {missing} (a gateway makes it when it starts, "
              "where it can write; usage.file says where)", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error, history.UsageSchemaError) as exc:
        where = ", ".join(str(p) for p in paths)
        print(f"gateway: cannot read the usage history {where}: {exc}", file=sys.stderr)
        return 1
    try:
        report = history.query_usage(db, since, until, groups)
    except sqlite3.Error as exc:
        print(f"gateway: cannot read the usage history {path}: {exc}", file=sys.stderr)
        return 1
    finally:
        db.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(usage_table(report))
    return 0


_USAGE_COLUMNS = (("requests", "REQUESTS"), ("errors", "ERRORS"), ("input_tokens", "INPUT"),
                  ("output_tokens", "OUTPUT"), ("cached_tokens", "CACHED"),
                  ("thinking_tokens", "THINKING"))


def usage_table(report: dict[str, Any]) -> str:
    """A `GET /usage` answer as an aligned table: group columns left, counts right, a total
    line under them."""
    groups = list(report["group_by"])
    span = f"{report['since']} to {report['until']} (UTC)"
    if not any(report["totals"].values()):
        return f"no usage recorded from {span}"
    header = [g.upper() for g in groups] + [title for _, title in _USAGE_COLUMNS]
    body = [[str(row[g]) for g in groups] + [f"{row[c]:,}" for c, _ in _USAGE_COLUMNS]
            for row in report["rows"]] if groups else []
    total = (["total"] + [""] * (len(groups) - 1) if groups else []) + [
        f"{report['totals'][c]:,}" for c, _ in _USAGE_COLUMNS]
    if not groups:
        header = ["", *header]
        total = ["total", *total]
    table = [header, *body, total]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    left = len(header) - len(_USAGE_COLUMNS)

    def line(row: list[str]) -> str:
        cells = [cell.ljust(w) if i < left else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(header), rule, *(line(row) for row in body)]
    if body:
        lines.append(rule)
    lines.append(line(total))
    return "\n".join([*lines, "", span])
