"""Command line of the benchmark: `python -m bench [options]` (see bench/README.md).

Options left unset take the full-run defaults, or with `--quick` tiny ones that finish in
seconds (what the smoke test uses); an explicit option always wins. The run prints its table
to stdout and progress to stderr, and writes `<UTC stamp>.json` and `.md` under `--out`.
Exit status: 0 when every load run had successful requests, 3 when some run had none (the
results are still written), 1 when the processes could not be started or died, 2 on bad
options.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

from bench.procs import REPO, StartError
from bench.report import render_text, write_results
from bench.run import Settings, run_bench

T = TypeVar("T")
HTTP_CHOICES = ("1.1", "h2c")
FACE_CHOICES = ("anthropic", "openai")
KIND_CHOICES = {"unary": False, "stream": True}

# (full run, --quick) defaults for the options that scale the run
PROFILES: dict[str, tuple[Any, Any]] = {
    "concurrency": ((1, 10, 100, 500), (1, 10)),
    "requests": (100, 6),
    "rounds": (2, 2),
    "run_seconds": (60.0, 20.0),
    "chunk_delay": (0.001, 0.0),
    "chunks": (32, 4),
    "chunk_chars": (24, 8),
    "idle_streams": (2000, 20),
    "disconnect_trials": (20, 3),
}


def _list(parse: Callable[[str], T], choices: Sequence[str] | None = None) -> Callable[[str], Any]:
    def convert(text: str) -> tuple[T, ...]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if choices is not None:
            for item in items:
                if item not in choices:
                    raise argparse.ArgumentTypeError(
                        f"{item!r} is not one of {', '.join(choices)}"
                    )
        return tuple(parse(item) for item in items)

    return convert


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Load benchmark: the gateway against a baseline of the same client talking to the "
            "Cloud Code emulator directly, all on loopback in one run."
        ),
    )
    add = parser.add_argument
    add("--quick", action="store_true",
        help="tiny sizes for a smoke run; options given explicitly still win")
    add("--concurrency", type=_list(_positive_int), metavar="N,N,...",
        help="concurrency levels (default 1,10,100,500; quick 1,10)")
    add("--http", type=_list(str, HTTP_CHOICES), default=HTTP_CHOICES, metavar="1.1,h2c",
        help="HTTP versions to measure (default both)")
    add("--faces", type=_list(str, (*FACE_CHOICES, "none")), default=FACE_CHOICES,
        metavar="anthropic,openai",
        help="gateway faces to measure; 'none' measures the baseline only (no gateway)")
    add("--kinds", type=_list(str, tuple(KIND_CHOICES)), default=tuple(KIND_CHOICES),
        metavar="unary,stream", help="non-streaming and/or streaming requests (default both)")
    add("--requests", type=_positive_int, metavar="N",
        help="at least N timed requests per run (default 100; quick 6)")
    add("--rounds", type=_positive_int, metavar="R",
        help="at least R timed requests per concurrent task (default 2)")
    add("--run-seconds", type=float, metavar="S",
        help="wall-clock cap on one run; a capped run reports what it did (default 60)")
    add("--no-warmup", dest="warmup", action="store_false",
        help="do not open the connections with untimed requests before each run")
    add("--chunk-delay", type=float, metavar="S",
        help="emulator's delay between SSE chunks in seconds (default 0.001; quick 0)")
    add("--chunks", type=_positive_int, metavar="N",
        help="emulator's text chunks per answer (default 32; quick 4)")
    add("--chunk-chars", type=_positive_int, metavar="N",
        help="characters per emulator text chunk (default 24; quick 8)")
    add("--model", default="claude-sonnet-4-6",
        help="model every face asks for (default claude-sonnet-4-6)")
    add("--idle-streams", type=int, metavar="N",
        help="idle streams held open through the gateway; 0 skips (default 2000; quick 20)")
    add("--idle-http", type=_list(str, HTTP_CHOICES), metavar="1.1,h2c",
        help="HTTP versions for the idle streams (default: --http)")
    add("--disconnect-trials", type=int, metavar="N",
        help="disconnect trials per HTTP version, drop kind and path; 0 skips "
             "(default 20; quick 3)")
    add("--no-litellm", dest="litellm", action="store_false",
        help="skip the LiteLLM comparison even if LiteLLM is installed")
    add("--no-ceiling", dest="ceiling", action="store_false",
        help="skip the bare-hypercorn, bare-direct and bare-relay rows (the stack's floors)")
    add("--no-reference", dest="reference", action="store_false",
        help="skip the Node reference (antigravity-claude-proxy from npm) even if node exists")
    add("--workers", type=_list(str), default=("1", "2"), metavar="N,N,...",
        help="compare `gateway serve --workers N` for these N (each with state in Redis); "
             "'none' skips (default 1,2)")
    add("--tls", action="store_true",
        help="the emulator serves Cloud Code over HTTPS (HTTP/2 by ALPN, certificates made "
             "at run time), as the real upstream: every proxy and the baseline use it")
    add("--rtt-ms", type=float, default=0.0, metavar="MS",
        help="a network round trip the emulator adds to each request (three on a new "
             "connection, for TCP and TLS), in ms (default 0: loopback)")
    add("--log-level", default="warning",
        help="the gateway's log level (default warning: logging costs CPU)")
    add("--out", type=Path, default=REPO / "bench" / "results",
        help="directory for <stamp>.json and <stamp>.md (default bench/results)")
    add("--example", action="store_true",
        help="also write example.json and example.md (the committed example)")
    return parser


def _workers(given: Sequence[str]) -> tuple[int, ...]:
    if "none" in given:
        return ()
    try:
        counts = tuple(dict.fromkeys(_positive_int(n) for n in given))
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise SystemExit(f"python -m bench: --workers: {exc}") from None
    return counts


def parse_args(argv: Sequence[str]) -> Settings:
    args = _parser().parse_args(argv)
    profile = 1 if args.quick else 0
    for name, defaults in PROFILES.items():
        if getattr(args, name) is None:
            setattr(args, name, defaults[profile])
    faces = () if "none" in args.faces else tuple(dict.fromkeys(args.faces))
    return Settings(
        out=args.out,
        levels=tuple(dict.fromkeys(args.concurrency)),
        http=tuple(dict.fromkeys(args.http)),
        faces=faces,
        kinds=tuple(dict.fromkeys(KIND_CHOICES[k] for k in args.kinds)),
        requests=args.requests,
        rounds=args.rounds,
        run_seconds=args.run_seconds,
        warmup=args.warmup,
        chunk_delay=args.chunk_delay,
        chunks=args.chunks,
        chunk_chars=args.chunk_chars,
        model=args.model,
        idle_streams=max(args.idle_streams, 0),
        idle_http=tuple(dict.fromkeys(args.idle_http or args.http)),
        disconnect_trials=max(args.disconnect_trials, 0),
        litellm=args.litellm,
        reference=args.reference,
        ceiling=args.ceiling,
        workers=_workers(args.workers),
        rtt_ms=max(0.0, args.rtt_ms),
        tls=args.tls,
        example=args.example,
        quick=args.quick,
        log_level=args.log_level,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    settings = parse_args(args)
    command = shlex.join(["python", "-m", "bench", *args])
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        try:
            result, rows = trio.run(run_bench, settings, Path(workdir), command)
        except (StartError, RuntimeError, httpx.HTTPError) as exc:
            print(f"bench: {type(exc).__name__}: {exc}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)
    print(render_text(result, rows))
    written = write_results(result, rows, settings.out, stamp, example=settings.example)
    print("\nwrote " + ", ".join(str(p) for p in written))
    sys.exit(3 if any(row.ok == 0 for row in rows) else 0)
