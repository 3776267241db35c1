"""One benchmark run: start the processes, measure every phase, assemble the result.

`run_bench(settings)` starts the emulator and (unless only the baseline is asked for) the
gateway, each a child process on loopback, then measures in this order: load (every HTTP
version, kind and concurrency, with the baseline and each gateway face measured back to back
at each step so slow drift hits all alike), the optional LiteLLM proxy, client-disconnect
propagation, and last the idle streams, which leave the emulator holding answers back. Each
phase sets the emulator's streaming shape it needs. The result is a plain dict ready for JSON
plus the load rows the renderers use.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import attrs
import httpx
import trio

from bench import pipeline
from bench.loadgen import Http, client_set, run_load, tls_context, trust_ca
from bench.probes import DisconnectResult, IdleResult, disconnect_latency, idle_streams
from bench.procs import (
    LOOPBACK,
    Service,
    StartError,
    UpstreamAt,
    free_port,
    running,
    running_emulator,
    running_gateway,
    running_litellm,
    running_redis,
)
from bench.report import LoadRow, compare, load_row
from bench.workload import (
    StreamShape,
    Target,
    Upstream,
    anthropic_target,
    baseline_target,
    configure_emulator,
    emulator_connections,
    fetch_upstream,
    forget_requests,
    openai_target,
)

GatewayFace = Literal["anthropic", "openai"]
DISCONNECT_SHAPE_DELAY = 0.05  # seconds between chunks while a dropped stream would still run
IDLE_SHAPE_DELAY = 600.0  # the emulator holds an idle stream's chunks back this long


@attrs.frozen(slots=True)
class Settings:
    """Everything one run measures; `python -m bench --help` documents each field."""

    out: Path
    levels: tuple[int, ...] = (1, 10, 100, 500)
    http: tuple[Http, ...] = ("1.1", "h2c")
    faces: tuple[GatewayFace, ...] = ("anthropic", "openai")
    kinds: tuple[bool, ...] = (False, True)  # False = unary, True = stream
    requests: int = 100  # at least this many requests per run...
    rounds: int = 2  # ...and at least `rounds` per concurrent task
    run_seconds: float = 60.0  # wall-clock cap on one run
    warmup: bool = True
    chunk_delay: float = 0.001
    chunks: int = 32
    chunk_chars: int = 24
    model: str = "claude-sonnet-4-6"
    idle_streams: int = 2000
    idle_http: tuple[Http, ...] = ("1.1", "h2c")
    disconnect_trials: int = 20
    litellm: bool = True
    reference: bool = True  # the Node reference (antigravity-claude-proxy), if node/npm exist
    ceiling: bool = True  # bare hypercorn streaming the same shape (bench/ceiling.py)
    # `serve --workers N` runs compared (each with state in Redis); () skips the phase
    workers: tuple[int, ...] = (1, 2)
    # a network's round trip the emulator adds per request (three on a new connection: TCP and
    # TLS handshakes), in milliseconds; 0: loopback as it is
    rtt_ms: float = 0.0
    # Cloud Code over HTTPS (certificates made with trustme; HTTP/2 by ALPN, as the real
    # upstream): the baseline, the gateway and the Node reference all reach it so
    tls: bool = False
    example: bool = False
    quick: bool = False
    log_level: str = "warning"

    def total(self, level: int) -> int:
        return max(self.requests, self.rounds * level)

    def to_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["out"] = str(self.out)
        return out


@attrs.define(slots=True)
class Rig:
    """The running processes and what the baseline needs to talk to the emulator."""

    emulator: Service
    gateway: Service | None
    upstream: Upstream
    workdir: Path
    started: float
    notes: list[str]
    at: UpstreamAt  # where proxies reach Cloud Code (and OAuth)

    def progress(self, text: str) -> None:
        print(f"[{trio.current_time() - self.started:6.1f}s] {text}", file=sys.stderr, flush=True)


def _certificates(workdir: Path) -> tuple[str, str, str]:
    """(CA file, certificate chain, key) for the emulator's HTTPS, made now (trustme)."""
    import trustme

    authority = trustme.CA()
    cert = authority.issue_cert(LOOPBACK, "localhost")
    ca, chain, key = workdir / "ca.pem", workdir / "emulator.pem", workdir / "emulator.key"
    authority.cert_pem.write_to_path(str(ca))
    cert.private_key_pem.write_to_path(str(key))
    with chain.open("wb") as out:
        for blob in cert.cert_chain_pems:
            out.write(blob.bytes())
    return str(ca), str(chain), str(key)


def raise_fd_limit() -> int:
    """Lift the open-file soft limit to the hard limit (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def host_facts() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("trio", "httpx", "httpcore", "h2", "h11", "hypercorn", "quart-trio"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def gateway_target(face: GatewayFace, gateway_url: str, model: str, *, stream: bool) -> Target:
    if face == "anthropic":
        return anthropic_target(gateway_url, model, stream=stream)
    return openai_target(gateway_url, model, stream=stream)


async def measure(
    rig: Rig,
    proxy: Service | None,
    target: Target,
    settings: Settings,
    *,
    http: Http,
    level: int,
) -> LoadRow:
    """One run: warm `level` connections up, then time `settings.total(level)` requests."""
    total = settings.total(level)
    await forget_requests(rig.emulator.url)
    async with client_set(http, level) as clients:
        if settings.warmup:
            # opens every connection the run will use, so the run times requests, not handshakes
            await run_load(
                clients, target, concurrency=level, total=max(level, 3),
                deadline=settings.run_seconds,
            )
        connections = await emulator_connections(rig.emulator.url)
        proxy_cpu = proxy.cpu_seconds() if proxy else 0.0
        emulator_cpu = rig.emulator.cpu_seconds()
        client_cpu = time.process_time()
        result = await run_load(
            clients, target, concurrency=level, total=total, deadline=settings.run_seconds
        )
        row = load_row(
            result,
            http=http,
            level=level,
            stream=target.stream,
            face=target.face,
            proxy_cpu=(proxy.cpu_seconds() - proxy_cpu) if proxy else 0.0,
            emulator_cpu=rig.emulator.cpu_seconds() - emulator_cpu,
            client_cpu=time.process_time() - client_cpu,
        )
        # less the one this count's own request opened
        row.upstream_connections = max(
            0, await emulator_connections(rig.emulator.url) - connections - 1)
    rig.progress(
        f"{http:>3} conc={level:<4} {'stream' if target.stream else 'unary':6} "
        f"{target.face:9} {row.ok}/{row.requests} ok, {row.rps:.1f} req/s"
        + (f", first error: {row.first_error}" if row.first_error else "")
    )
    return row


def _check_alive(rig: Rig, *services: Service | None) -> None:
    for service in services:
        if service is not None and not service.alive():
            raise RuntimeError(f"the {service.name} process exited during the run")


async def check_answers(rig: Rig, settings: Settings) -> None:
    """One request per face before measuring: each must get the emulator's real answer (an
    echo), not an error or the version gate's refusal, or the numbers would measure that."""
    targets = [baseline_target(rig.upstream, settings.model, stream=True)]
    if rig.gateway is not None:
        targets += [gateway_target(face, rig.gateway.url, settings.model, stream=True)
                    for face in settings.faces]
    async with httpx.AsyncClient(timeout=60, verify=tls_context()) as http:
        for target in targets:
            response = await http.post(target.url, content=target.body,
                                       headers=list(target.headers))
            if response.status_code != 200 or b"Echo" not in response.content:
                raise RuntimeError(
                    f"bench: {target.face} got no real answer (HTTP {response.status_code}: "
                    f"{response.text[:300]!r}); nothing would be measured"
                )


async def load_phase(rig: Rig, settings: Settings) -> list[LoadRow]:
    shape = StreamShape(settings.chunk_delay, settings.chunks, settings.chunk_chars)
    await configure_emulator(rig.emulator.url, shape, rtt_seconds=settings.rtt_ms / 1000)
    rows: list[LoadRow] = []
    for http in settings.http:
        for stream in settings.kinds:
            for level in settings.levels:
                targets: list[tuple[Service | None, Target]] = [
                    (None, baseline_target(rig.upstream, settings.model, stream=stream))
                ]
                if rig.gateway is not None:
                    targets += [
                        (rig.gateway,
                         gateway_target(face, rig.gateway.url, settings.model, stream=stream))
                        for face in settings.faces
                    ]
                for proxy, target in targets:
                    rows.append(await measure(rig, proxy, target, settings, http=http,
                                              level=level))
                    _check_alive(rig, rig.emulator, rig.gateway)
    return rows


async def litellm_phase(
    rig: Rig, settings: Settings, workdir: Path
) -> tuple[list[LoadRow], dict[str, Any]]:
    """The same load through a LiteLLM proxy in front of the gateway, if LiteLLM is installed."""
    if not settings.litellm:
        return [], {"status": "off", "note": "LiteLLM comparison turned off (--no-litellm)."}
    if importlib.util.find_spec("litellm") is None:
        note = (
            "LiteLLM is not installed, so the LiteLLM comparison was skipped (the harness "
            "never installs it; `pip install 'litellm[proxy]'` into this venv to include it)."
        )
        return [], {"status": "skipped", "note": note}
    if rig.gateway is None:
        return [], {"status": "skipped", "note": "LiteLLM needs the gateway; none was started."}
    rows: list[LoadRow] = []
    try:
        async with running_litellm(workdir, rig.gateway.url, settings.model) as litellm:
            for stream in settings.kinds:
                for level in settings.levels:
                    target = openai_target(
                        litellm.url, settings.model, stream=stream, face="litellm"
                    )
                    rows.append(await measure(rig, litellm, target, settings, http="1.1",
                                              level=level))
                    _check_alive(rig, rig.emulator, rig.gateway, litellm)
    except Exception as exc:  # LiteLLM is optional: its failure is a note, not a failed run
        note = f"LiteLLM is installed but its proxy failed: {type(exc).__name__}: {exc}"
        return rows, {"status": "failed", "note": note[:2000]}
    note = (
        "LiteLLM proxy (HTTP/1.1 only) in front of the gateway's OpenAI face; its rows "
        "(face litellm) measure LiteLLM plus the gateway against the same baseline, and "
        "chunks/core-s counts LiteLLM's CPU only."
    )
    return rows, {"status": "measured", "note": note}


async def reference_phase(
    rig: Rig, settings: Settings, workdir: Path
) -> tuple[list[LoadRow], dict[str, Any]]:
    """The same load through the Node reference (its Anthropic API, HTTP/1.1 only)."""
    from bench import reference

    if not settings.reference:
        return [], {"status": "off", "note": "Node reference turned off (--no-reference)."}
    reason = reference.missing_reason()
    if reason is not None:
        return [], {"status": "skipped",
                    "note": f"the Node reference was skipped: {reason}."}
    rows: list[LoadRow] = []
    try:
        async with reference.running_reference(workdir, rig.at) as node:
            rig.progress(f"node reference pid {node.pid} at {node.url}")
            for stream in settings.kinds:
                for level in settings.levels:
                    target = attrs.evolve(
                        anthropic_target(node.url, settings.model, stream=stream),
                        face="node-ref")
                    rows.append(await measure(rig, node, target, settings, http="1.1",
                                              level=level))
                    _check_alive(rig, rig.emulator, node)
            rig.notes.extend(_log_notes(node))
    except (StartError, RuntimeError, OSError) as exc:
        note = f"the Node reference failed: {type(exc).__name__}: {exc}"
        return rows, {"status": "failed", "note": note[:2000]}
    note = (
        f"Node reference: the published {reference.PACKAGE} {reference.VERSION} (npm, "
        f"node {reference.node_version()}), its endpoints, OAuth client and User-Agent "
        "pointed at the emulator in the bench's copy only; rows node-ref, its Anthropic API "
        "over HTTP/1.1 (it serves no h2c), compared with the same baseline."
    )
    return rows, {"status": "measured", "note": note}


async def ceiling_phase(rig: Rig, settings: Settings, workdir: Path) -> list[LoadRow]:
    """Bare hypercorn on trio streaming the same shape (bench/ceiling.py): what the stack
    the gateway is built on relays per CPU-second, with nothing of the gateway in it; then
    the same on the gateway's edge with its direct body writes (`bare-direct`); then that
    edge relaying the baseline's own request to the emulator over the gateway's upstream
    transport, bytes as they come, nothing parsed (`bare-relay`): the floor of any proxy
    on this stack."""
    if not settings.ceiling or not settings.faces:
        return []
    rows: list[LoadRow] = []
    # the relay's upstream request: the baseline's own (same URL, token, body and headers)
    upstream = baseline_target(rig.upstream, settings.model, stream=True)
    spec = workdir / "relay.json"
    spec.write_text(json.dumps({"url": upstream.url, "headers": list(upstream.headers),
                                "body": upstream.body.decode(), "ca_file": rig.at.ca_file}))
    spec.chmod(0o600)
    await configure_emulator(
        rig.emulator.url, StreamShape(settings.chunk_delay, settings.chunks, settings.chunk_chars))
    for name, extra in (("bare-hypercorn", []), ("bare-direct", ["--direct"]),
                        ("bare-relay", ["--relay", str(spec)])):
        port = free_port()
        url = f"http://{LOOPBACK}:{port}"
        argv = [sys.executable, "-m", "bench.ceiling", "--port", str(port), "--chunks",
                str(settings.chunks), "--chunk-chars", str(settings.chunk_chars), "--delay",
                str(settings.chunk_delay), *extra]
        async with running(name, argv, url, workdir, ready_path="/") as bare:
            target = Target(name, True, f"{url}/stream",
                            (("content-type", "application/json"),), b"{}")
            for level in settings.levels:
                rows.append(await measure(rig, bare, target, settings, http="1.1",
                                          level=level))
                _check_alive(rig, bare)
    return rows


async def workers_phase(
    rig: Rig, settings: Settings, workdir: Path
) -> tuple[list[LoadRow], dict[str, Any]]:
    """Streams through `gateway serve --workers N` for each N asked, all sharing one Redis
    (so 1 worker pays what N do for shared state): what more processes buy on this machine."""
    if not settings.workers:
        return [], {"status": "off", "note": "workers comparison turned off (--workers none)."}
    if not settings.faces:
        return [], {"status": "skipped", "note": "workers comparison needs a gateway face."}
    if shutil.which("redis-server") is None:
        note = ("redis-server is not installed, so the workers comparison was skipped "
                "(Debian: apt-get install redis-server; .ci/run installs it).")
        return [], {"status": "skipped", "note": note}
    rows: list[LoadRow] = []
    shape = StreamShape(settings.chunk_delay, settings.chunks, settings.chunk_chars)
    await configure_emulator(rig.emulator.url, shape)
    try:
        async with running_redis(workdir) as redis:
            for count in settings.workers:
                async with running_gateway(
                    workdir, rig.at, log_level=settings.log_level,
                    name=f"gateway-{count}w", redis_url=redis.url, workers=count,
                ) as gateway:
                    await _workers_ready(gateway.url, count)
                    target = attrs.evolve(
                        anthropic_target(gateway.url, settings.model, stream=True),
                        face=f"workers-{count}")
                    for level in settings.levels:
                        rows.append(await measure(rig, gateway, target, settings, http="1.1",
                                                  level=level))
                        _check_alive(rig, rig.emulator, gateway, redis)
                    rig.notes.extend(_log_notes(gateway))
    except StartError as exc:
        return rows, {"status": "failed", "note": f"the workers comparison failed: {exc}"[:2000]}
    cores = len(os.sched_getaffinity(0))
    note = (
        f"Streams (HTTP/1.1, Anthropic face) through `gateway serve --workers N` for N in "
        f"{', '.join(map(str, settings.workers))}, every run with state.redis_url set (one "
        f"redis-server), on {cores} usable cores shared with the emulator and the load "
        "generator; rows workers-N, compared with the same baseline. CPU is the sum over the "
        "parent and its workers."
    )
    return rows, {"status": "measured", "note": note}


async def _workers_ready(url: str, count: int) -> None:
    """Until each of `count` workers has answered /health (a fresh connection each time,
    which any worker may accept) on shared state: a worker still starting would burn its
    start-up CPU inside the first measurement."""
    seen: set[str] = set()
    with trio.move_on_after(60):
        while len(seen) < count:
            async with httpx.AsyncClient(timeout=5) as client:
                health = (await client.get(url + "/health")).json()
            if health.get("state") == "redis" and health.get("activeAccounts"):
                seen.add(str(health.get("replica")))
            await trio.sleep(0.05)
        await trio.sleep(1.0)  # their first quota probes and lease rounds
        return
    raise StartError(f"only {len(seen)} of {count} workers answered within 60 s")


async def pipeline_phase(rig: Rig, settings: Settings) -> dict[str, Any]:
    """The gateway's pure per-chunk work on one of the emulator's answers (bench/pipeline.py),
    timed in this process: what the translation itself costs per chunk."""
    if not settings.faces:
        return {}
    shape = StreamShape(0.0, settings.chunks, settings.chunk_chars)
    await configure_emulator(rig.emulator.url, shape)
    raw = await pipeline.fetch_answer(baseline_target(rig.upstream, settings.model, stream=True))
    return pipeline.stage_costs(raw, settings.model)


async def disconnect_phase(rig: Rig, settings: Settings) -> list[DisconnectResult]:
    if settings.disconnect_trials <= 0:
        return []
    # long, slow streams: a dropped stream would otherwise run for chunks x delay seconds
    await configure_emulator(
        rig.emulator.url,
        StreamShape(DISCONNECT_SHAPE_DELAY, max(settings.chunks, 600), settings.chunk_chars),
    )
    paths: list[tuple[str, Target]] = [
        ("baseline", baseline_target(rig.upstream, settings.model, stream=True))
    ]
    if rig.gateway is not None and settings.faces:
        face = settings.faces[0]
        paths.insert(
            0, (f"gateway {face}",
                gateway_target(face, rig.gateway.url, settings.model, stream=True))
        )
    results = []
    for http in settings.http:
        drops: Sequence[Literal["close", "reset"]] = (
            ("close", "reset") if http == "h2c" else ("close",)
        )
        for drop in drops:
            for path, target in paths:
                result = await disconnect_latency(
                    http, path, target, rig.emulator.url,
                    tries=settings.disconnect_trials, drop=drop,
                )
                rig.progress(
                    f"disconnect {http} {drop} {path}: {result.measured}/{result.tries}, "
                    f"p50 {result.p50_ms} ms"
                )
                results.append(result)
    return results


async def idle_phase(rig: Rig, settings: Settings) -> list[IdleResult]:
    """Per HTTP version, a fresh gateway: RSS never shrinks back, so a reused process would
    hide the second measurement's growth in memory freed by the first."""
    if settings.idle_streams <= 0 or not settings.idle_http:
        return []
    if not settings.faces:
        rig.notes.append("idle streams not measured: no gateway face was benchmarked")
        return []
    face = settings.faces[0]
    load_shape = StreamShape(settings.chunk_delay, settings.chunks, settings.chunk_chars)
    results = []
    for http in settings.idle_http:
        async with running_gateway(
            rig.workdir, rig.at, log_level=settings.log_level, name=f"gateway-idle-{http}"
        ) as gateway:
            target = gateway_target(face, gateway.url, settings.model, stream=True)
            # a few whole answers first, so start-up allocations are not counted per stream
            await configure_emulator(rig.emulator.url, load_shape)
            async with client_set(http, 1) as clients:
                await run_load(clients, target, concurrency=1, total=5, deadline=30.0)
            await configure_emulator(
                rig.emulator.url, StreamShape(IDLE_SHAPE_DELAY, 2, settings.chunk_chars)
            )
            await trio.sleep(0.5)
            result = await idle_streams(
                http, target, rig.emulator.url, gateway.rss_kib, count=settings.idle_streams
            )
            _check_alive(rig, rig.emulator, gateway)
            rig.notes.extend(_log_notes(gateway))
        rig.progress(
            f"idle {http}: {result.opened}/{result.requested} open"
            + (" (stalled)" if result.stalled else "")
            + f", {result.rss_per_stream_kib} KiB/stream, {result.client_errors} client errors"
        )
        results.append(result)
        rig.notes.extend(_idle_notes(result))
    return results


def _idle_notes(result: IdleResult) -> list[str]:
    notes = []
    if result.stalled:
        notes.append(
            f"idle {result.http}: stopped at {result.opened} of {result.requested} streams, "
            "as a batch of 100 did not open within 10 s (a limit was hit; see bench/README.md, "
            "Caveats)"
        )
    if not result.drained:
        notes.append(
            f"idle {result.http}: {result.still_open} upstream streams were still open "
            f"{result.seconds_to_drain:.0f} s after their clients went away"
        )
    return notes


def _log_notes(service: Service) -> list[str]:
    """A note if a child logged errors: figures from a failing process need a caveat."""
    try:
        lines = service.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    bad = [line for line in lines if "ERROR" in line or "Traceback" in line]
    if not bad:
        return []
    return [f"the {service.name} process logged {len(bad)} error line(s); first: {bad[0][:300]}"]


def _row_notes(rows: Sequence[LoadRow]) -> list[str]:
    notes = []
    for row in rows:
        if row.errors:
            notes.append(
                f"{row.http} conc={row.level} {row.kind} {row.face}: {row.errors} of "
                f"{row.requests} requests failed (first: {row.first_error})"
            )
        if row.timed_out:
            notes.append(
                f"{row.http} conc={row.level} {row.kind} {row.face}: hit the "
                f"{row.seconds:.0f}s run cap after {row.requests} requests"
            )
    return notes


async def run_bench(
    settings: Settings, workdir: Path, command: str
) -> tuple[dict[str, Any], list[LoadRow]]:
    """Run every phase and return (result for JSON, load rows for the renderers)."""
    started_at = datetime.now(UTC)
    fd_limit = raise_fd_limit()
    notes: list[str] = []
    if fd_limit < 2 * settings.idle_streams + 512:
        notes.append(
            f"open-file limit {fd_limit} is low for {settings.idle_streams} idle streams "
            "(each needs a client and an upstream socket): raise `ulimit -n`"
        )
    async with AsyncExitStack() as stack:
        tls, tls_port = (_certificates(workdir), free_port()) if settings.tls else (None, 0)
        emulator = await stack.enter_async_context(
            running_emulator(workdir, tls[1:] if tls else None, tls_port))
        at = UpstreamAt(f"https://{LOOPBACK}:{tls_port}" if tls else emulator.url,
                        emulator.url, tls[0] if tls else "")
        if tls:
            trust_ca(tls[0])
        # tokens outlive the run, so the baseline's token never expires mid-measurement
        await configure_emulator(
            emulator.url,
            StreamShape(settings.chunk_delay, settings.chunks, settings.chunk_chars),
            token_lifetime_seconds=24 * 3600,
        )
        upstream = attrs.evolve(await fetch_upstream(emulator.url), url=at.url)
        gateway = None
        if settings.faces:
            gateway = await stack.enter_async_context(
                running_gateway(workdir, at, log_level=settings.log_level)
            )
        rig = Rig(emulator, gateway, upstream, workdir, trio.current_time(), notes, at)
        rig.progress(
            f"emulator pid {emulator.pid} at {emulator.url}"
            + (f", gateway pid {gateway.pid} at {gateway.url}" if gateway else "")
        )
        await check_answers(rig, settings)
        rows = await load_phase(rig, settings)
        litellm_rows, litellm = await litellm_phase(rig, settings, workdir)
        rows += litellm_rows
        workers_rows, workers = await workers_phase(rig, settings, workdir)
        rows += workers_rows
        reference_rows, node = await reference_phase(rig, settings, workdir)
        rows += reference_rows
        rows += await ceiling_phase(rig, settings, workdir)
        pipeline = await pipeline_phase(rig, settings)
        disconnect = await disconnect_phase(rig, settings)
        idle = await idle_phase(rig, settings)
        processes = {
            s.name: {"pid": s.pid, "cpu_seconds": round(s.cpu_seconds(), 2),
                     "rss_kib_at_end": s.rss_kib()}
            for s in (emulator, gateway) if s is not None
        }
        log_notes = [n for s in (emulator, gateway) if s is not None for n in _log_notes(s)]
    compare(rows, notes)
    notes += _row_notes(rows) + log_notes
    if litellm.get("status") != "measured":
        notes.append(str(litellm["note"]))
    if workers.get("status") not in ("measured", "off"):
        notes.append(str(workers["note"]))
    if node.get("status") not in ("measured", "off"):
        notes.append(str(node["note"]))
    result = {
        "meta": {
            "started_at": started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "duration_seconds": round((datetime.now(UTC) - started_at).total_seconds(), 1),
            "command": command,
            "host": host_facts(),
            "versions": _versions(),
            "open_file_limit": fd_limit,
            "settings": settings.to_json(),
            "processes": processes,
            "notes": notes,
        },
        "load": [row.to_json() for row in rows],
        "idle": [i.to_json() for i in idle],
        "disconnect": [d.to_json() for d in disconnect],
        "litellm": litellm,
        "workers": workers,
        "reference": node,
        "pipeline": pipeline,
    }
    return result, rows
