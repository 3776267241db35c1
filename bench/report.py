"""Results: one `LoadRow` per measured run, compared with its baseline, rendered three ways.

A gateway row is compared with the baseline row of the same HTTP version, concurrency and
kind (streaming or not): "added" figures are the gateway percentile minus the baseline
percentile (percentiles are not paired per request), ratios are gateway over baseline. The
same rows render as a fixed-width table for the terminal, as Markdown, and as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from bench.loadgen import LoadResult, summary_ms

Percentiles = dict[str, float | None]
_KEYS = ("p50", "p90", "p99")


@attrs.define(slots=True)
class LoadRow:
    http: str
    level: int
    stream: bool
    face: str
    requests: int
    ok: int
    errors: int
    first_error: str
    seconds: float
    timed_out: bool
    rps: float
    ttfb_ms: Percentiles
    ttlb_ms: Percentiles
    events: int
    events_per_response: float | None
    # CPU time each process spent during the run; "proxy" is the gateway (or LiteLLM) and is
    # 0 for baseline rows, "client" is this harness (the load generator)
    proxy_cpu_seconds: float
    emulator_cpu_seconds: float
    client_cpu_seconds: float
    # client-counted SSE data events per proxy CPU-second (one core busy for one second)
    chunks_per_core_second: float | None = None
    # upstream SSE chunks (as the baseline sees them) relayed per proxy CPU-second
    upstream_chunks_per_core_second: float | None = None
    baseline_http: str | None = None
    added_ttfb_ms: Percentiles | None = None
    added_ttlb_ms: Percentiles | None = None
    ratio_ttfb: Percentiles | None = None
    ratio_ttlb: Percentiles | None = None
    ratio_rps: float | None = None
    # new connections the emulator accepted during the timed run (after the warm-up)
    upstream_connections: int | None = None
    # the proxy's CPU per successful request, and per upstream chunk it relayed
    cpu_ms_per_request: float | None = None
    cpu_us_per_chunk: float | None = None

    @property
    def kind(self) -> str:
        return "stream" if self.stream else "unary"

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def load_row(
    result: LoadResult,
    *,
    http: str,
    level: int,
    stream: bool,
    face: str,
    proxy_cpu: float,
    emulator_cpu: float,
    client_cpu: float,
) -> LoadRow:
    good = [s for s in result.samples if s.ok]
    bad = [s for s in result.samples if not s.ok]
    events = sum(s.events for s in good)
    row = LoadRow(
        http=http,
        level=level,
        stream=stream,
        face=face,
        requests=len(result.samples),
        ok=len(good),
        errors=len(bad),
        first_error=bad[0].error if bad else "",
        seconds=round(result.seconds, 4),
        timed_out=result.timed_out,
        rps=round(len(good) / result.seconds, 2) if result.seconds > 0 else 0.0,
        ttfb_ms=summary_ms([s.first_byte for s in good]),
        ttlb_ms=summary_ms([s.last_byte for s in good]),
        events=events,
        events_per_response=round(events / len(good), 3) if good and stream else None,
        proxy_cpu_seconds=round(proxy_cpu, 3),
        emulator_cpu_seconds=round(emulator_cpu, 3),
        client_cpu_seconds=round(client_cpu, 3),
    )
    if stream and face != "baseline" and proxy_cpu > 0:
        row.chunks_per_core_second = round(events / proxy_cpu, 1)
    return row


def _minus(a: Percentiles, b: Percentiles) -> Percentiles:
    return {
        k: round(a[k] - b[k], 3) if a[k] is not None and b[k] is not None else None  # type: ignore[operator]
        for k in _KEYS
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 3)


def compare(rows: Sequence[LoadRow], notes: list[str]) -> None:
    """Fill each gateway row's figures relative to its baseline row, in place."""
    baselines = {(r.http, r.level, r.stream): r for r in rows if r.face == "baseline" and r.ok}
    fallback_noted = False
    for row in rows:
        if row.face == "baseline":
            continue
        base = baselines.get((row.http, row.level, row.stream))
        if base is None:
            base = baselines.get(("1.1", row.level, row.stream))
            if base is not None and not fallback_noted:
                notes.append(
                    f"no {row.http} baseline succeeded against the emulator; {row.http} rows "
                    "are compared with the HTTP/1.1 baseline"
                )
                fallback_noted = True
        if base is None:
            continue
        row.baseline_http = base.http
        row.added_ttfb_ms = _minus(row.ttfb_ms, base.ttfb_ms)
        row.added_ttlb_ms = _minus(row.ttlb_ms, base.ttlb_ms)
        row.ratio_ttfb = {k: _ratio(row.ttfb_ms[k], base.ttfb_ms[k]) for k in _KEYS}
        row.ratio_ttlb = {k: _ratio(row.ttlb_ms[k], base.ttlb_ms[k]) for k in _KEYS}
        row.ratio_rps = _ratio(row.rps, base.rps)
        if row.stream and base.events_per_response and row.proxy_cpu_seconds > 0:
            relayed = row.ok * base.events_per_response
            row.upstream_chunks_per_core_second = round(relayed / row.proxy_cpu_seconds, 1)
            row.cpu_us_per_chunk = round(1e6 * row.proxy_cpu_seconds / relayed, 1)
        if row.ok and row.proxy_cpu_seconds > 0:
            row.cpu_ms_per_request = round(1000 * row.proxy_cpu_seconds / row.ok, 3)


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def _triple(p: Percentiles | None, digits: int = 1) -> str:
    if p is None:
        return "-"
    return "/".join(_fmt(p[k], digits) for k in _KEYS)


def _cores(seconds: float, wall: float) -> str:
    return _fmt(seconds / wall, 2) if wall > 0 else "-"


ABSOLUTE_HEADER = (
    "http", "conc", "kind", "face", "ok/req", "req/s",
    "TTFB ms p50/p90/p99", "TTLB ms p50/p90/p99", "chunks/core-s", "cores proxy/emu/client",
    "upstream conns/100 req", "proxy CPU ms/req (us/chunk)",
)
RELATIVE_HEADER = (
    "http", "conc", "kind", "face", "x req/s",
    "+TTFB ms p50/p90/p99", "+TTLB ms p50/p90/p99", "x TTFB p50/p90/p99", "x TTLB p50/p90/p99",
)


def absolute_table(rows: Sequence[LoadRow]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for r in rows:
        chunks = (
            f"{_fmt(r.chunks_per_core_second, 0)} ({_fmt(r.upstream_chunks_per_core_second, 0)})"
            if r.chunks_per_core_second is not None
            else "-"
        )
        proxy = "-" if r.face == "baseline" else _cores(r.proxy_cpu_seconds, r.seconds)
        conns = "-" if r.upstream_connections is None or not r.requests else (
            f"{100 * r.upstream_connections / r.requests:.1f}")
        cpu = "-" if r.cpu_ms_per_request is None else f"{r.cpu_ms_per_request:.2f}" + (
            f" ({r.cpu_us_per_chunk:.0f})" if r.cpu_us_per_chunk is not None else "")
        cores = "/".join(
            (proxy, _cores(r.emulator_cpu_seconds, r.seconds),
             _cores(r.client_cpu_seconds, r.seconds))
        )
        out.append(
            (
                r.http, str(r.level), r.kind, r.face,
                f"{r.ok}/{r.requests}" + (" T/O" if r.timed_out else ""),
                _fmt(r.rps), _triple(r.ttfb_ms), _triple(r.ttlb_ms), chunks, cores, conns, cpu,
            )
        )
    return out


def relative_table(rows: Sequence[LoadRow]) -> list[tuple[str, ...]]:
    return [
        (
            r.http + ("" if r.baseline_http in (None, r.http) else f" (vs {r.baseline_http})"),
            str(r.level), r.kind, r.face, _fmt(r.ratio_rps, 2),
            _triple(r.added_ttfb_ms), _triple(r.added_ttlb_ms),
            _triple(r.ratio_ttfb, 2), _triple(r.ratio_ttlb, 2),
        )
        for r in rows
        if r.face != "baseline"
    ]


IDLE_HEADER = ("http", "streams open/asked", "RSS before MiB", "RSS open MiB", "KiB/stream",
               "open s", "drained", "errors")
DISCONNECT_HEADER = (
    "http", "drop", "path", "measured/tries", "p50 ms", "p99 ms", "max ms", "failure",
)


def idle_table(idle: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (
            i["http"], f"{i['opened']}/{i['requested']}" + (" (stalled)" if i["stalled"] else ""),
            _fmt(i["rss_before_kib"] / 1024), _fmt(i["rss_open_kib"] / 1024),
            _fmt(i["rss_per_stream_kib"]), _fmt(i["seconds_to_open"]),
            f"yes ({_fmt(i['seconds_to_drain'])}s)" if i["drained"]
            else f"NO: {i['still_open']} open after {_fmt(i['seconds_to_drain'], 0)}s",
            f"{i['client_errors']} {i['first_error']}".strip(),
        )
        for i in idle
    ]


def disconnect_table(rows: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (
            d["http"], d["drop"], d["path"], f"{d['measured']}/{d['tries']}", _fmt(d["p50_ms"]),
            _fmt(d["p99_ms"]), _fmt(d["max_ms"]), d["first_failure"] or "-",
        )
        for d in rows
    ]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


PIPELINE_LEGEND = (
    "Each step the gateway takes per upstream chunk, timed in the bench's own process on one "
    "of the emulator's answers (bench/pipeline.py): no sockets, no scheduler. Read against "
    "the proxy CPU per chunk in the load table: the rest is serving (socket reads and "
    "writes, trio, hypercorn), which the bare-direct rows measure without the gateway."
)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


ABSOLUTE_LEGEND = (
    "conc = requests in flight; kind = stream (SSE) or unary; face = baseline (the same "
    "client straight to the emulator), anthropic (gateway /v1/messages), openai (gateway "
    "/v1/chat/completions), litellm (LiteLLM proxy in front of the gateway's OpenAI face), "
    "workers-N (the Anthropic face of `gateway serve --workers N`, sharing state through "
    "Redis; its CPU is all its processes'), node-ref (the Node reference, "
    "antigravity-claude-proxy), bare-hypercorn (hypercorn on trio streaming the same shape "
    "with no upstream, one ASGI send per chunk: the stack's own ceiling), bare-direct (the "
    "same on the gateway's edge, chunks written by its DirectBody: the floor of the "
    "gateway's own server path), bare-relay (that edge relaying the baseline's own request "
    "to the emulator over the gateway's upstream transport, the bytes as they come, nothing "
    "parsed: the floor of any proxy on this stack); "
    "TTFB/TTLB = time from sending the request to the first/last body byte; chunks/core-s = "
    "SSE data events the client received per proxy CPU-second (in brackets: upstream chunks "
    "relayed per proxy CPU-second); cores = CPU-seconds per wall-second of each process; "
    "upstream conns/100 req = new connections the emulator accepted per 100 timed requests "
    "(after the warm-up: in steady state a proxy with warm upstream connections opens none); "
    "proxy CPU ms/req (us/chunk) = the proxy's CPU per request, and per upstream chunk."
)
RELATIVE_LEGEND = (
    "Each proxy row against the baseline row of the same HTTP version, concurrency and kind: "
    "'+' = proxy minus baseline at the same percentile (what the proxy adds), 'x' = proxy / "
    "baseline."
)


def _host_line(meta: dict[str, Any]) -> str:
    host = meta["host"]
    return (
        f"{host['cpus']} CPUs ({host['cpu_model']}), Python {host['python']}, "
        f"{host['platform']}; client, proxy and emulator share these CPUs"
    )


def render_text(result: dict[str, Any], rows: Sequence[LoadRow]) -> str:
    meta = result["meta"]
    parts = [
        f"gateway load benchmark, {meta['started_at']} ({meta['duration_seconds']:.0f}s)",
        f"host: {_host_line(meta)}",
        "",
        "LOAD: absolute figures",
        text_table(ABSOLUTE_HEADER, absolute_table(rows)),
        ABSOLUTE_LEGEND,
        "",
    ]
    relative = relative_table(rows)
    if relative:
        parts += ["LOAD: against the baseline", text_table(RELATIVE_HEADER, relative),
                  RELATIVE_LEGEND, ""]
    if result["idle"]:
        parts += ["IDLE STREAMS (gateway RSS)", text_table(IDLE_HEADER, idle_table(result["idle"])),
                  ""]
    if result["disconnect"]:
        parts += ["CLIENT DISCONNECT -> UPSTREAM CLOSE",
                  text_table(DISCONNECT_HEADER, disconnect_table(result["disconnect"])), ""]
    if meta["notes"]:
        parts += ["NOTES", *(f"- {n}" for n in meta["notes"])]
    return "\n".join(parts)


def render_markdown(result: dict[str, Any], rows: Sequence[LoadRow]) -> str:
    meta = result["meta"]
    settings = ", ".join(f"{k}={v}" for k, v in meta["settings"].items())
    parts = [
        f"# Gateway load benchmark — {meta['started_at']}",
        "",
        f"Command: `{meta['command']}` ({meta['duration_seconds']:.0f} s)",
        "",
        f"Host: {_host_line(meta)}.",
        "",
        f"Settings: {settings}",
        "",
        "## Load: absolute figures",
        "",
        markdown_table(ABSOLUTE_HEADER, absolute_table(rows)),
        "",
        ABSOLUTE_LEGEND,
        "",
    ]
    relative = relative_table(rows)
    if relative:
        parts += ["## Load: against the baseline", "",
                  markdown_table(RELATIVE_HEADER, relative), "", RELATIVE_LEGEND, ""]
    if result["idle"]:
        parts += ["## Idle streams (gateway RSS)", "",
                  markdown_table(IDLE_HEADER, idle_table(result["idle"])), ""]
    if result["disconnect"]:
        parts += ["## Client disconnect → upstream close", "",
                  markdown_table(DISCONNECT_HEADER, disconnect_table(result["disconnect"])), ""]
    litellm = result.get("litellm") or {}
    if litellm.get("note"):
        parts += ["## LiteLLM", "", str(litellm["note"]), ""]
    node = result.get("reference") or {}
    if node.get("note"):
        parts += ["## Node reference", "", str(node["note"]), ""]
    workers = result.get("workers") or {}
    if workers.get("note"):
        parts += ["## Workers (1 vs N processes, shared state in Redis)", "",
                  str(workers["note"]), ""]
    pipeline = result.get("pipeline") or {}
    if pipeline.get("us_per_chunk"):
        stages = pipeline["us_per_chunk"]
        parts += ["## The gateway's pure per-chunk work", "",
                  markdown_table(["step", "us per upstream chunk"],
                                 [[name, f"{value:.1f}"] for name, value in stages.items()]
                                 + [["total", f"{pipeline['total_us_per_chunk']:.1f}"]]),
                  "", PIPELINE_LEGEND, ""]
    if meta["notes"]:
        parts += ["## Notes", "", *(f"- {n}" for n in meta["notes"]), ""]
    return "\n".join(parts)


def write_results(
    result: dict[str, Any], rows: Sequence[LoadRow], out: Path, stamp: str, *, example: bool
) -> list[Path]:
    """Write `<stamp>.json` and `<stamp>.md` under `out` (and `example.*` if asked)."""
    out.mkdir(parents=True, exist_ok=True)
    text_json = json.dumps(result, indent=2) + "\n"
    text_md = render_markdown(result, rows)
    written = []
    names = [stamp] + (["example"] if example else [])
    for name in names:
        for suffix, text in ((".json", text_json), (".md", text_md)):
            path = out / f"{name}{suffix}"
            path.write_text(text)
            written.append(path)
    return written
