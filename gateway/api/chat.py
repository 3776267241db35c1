"""The chat request lifecycle, shared by the OpenAI and Anthropic routes (raw ASGI).

Each chat request runs in its own nursery: a disconnect watcher (the client going away
cancels everything at once, which closes the upstream stream: quota is money) beside the
request's own task, which opens the upstream through the dispatcher, decodes what each
network read brought into canonical events, renders them in the caller's dialect and writes
them, with no hop between tasks per chunk (a streamed answer's keep-alive runs beside it).

Chat routes are plain ASGI rather than Quart views on purpose: a Quart view commits its
status line before its body generator runs, and a trio nursery cannot stay open across a
generator's `yield`. Here the status is chosen after the upstream has answered (so a 429 on
every account is a real 429 with retry-after, not an error inside a 200 stream), and every
task has an owner. The dialect-specific parts (parsing, rendering) sit behind `Dialect`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
import trio

from gateway import errors
from gateway.api.auth import key_label
from gateway.config import ServerConfig
from gateway.directbody import DirectBody
from gateway.state.requests import RequestRecord
from gateway.translate import canonical as c
from gateway.translate.cloudcode import CloudCodeDecoder, to_cloudcode
from gateway.translate.context import AppliedEdit
from gateway.translate.models import ModelInfo
from gateway.upstream.client import UpstreamHTTPError

if TYPE_CHECKING:
    from gateway.app import Services

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

access_log = logging.getLogger("gateway.access")

SEND_SHIELD_SECONDS = 60.0
log = logging.getLogger("gateway")


@attrs.frozen(slots=True)
class PreparedChat:
    """A validated request, ready to send: the dialect's parse result plus routing facts."""

    request: c.ChatRequest
    model: ModelInfo
    session_id: str  # the upstream sessionId (a conversation)
    sticky_key: str  # which account serves it: the conversation, or the client's session
    include_usage: bool = False  # OpenAI stream_options.include_usage
    context_edits: tuple[AppliedEdit, ...] = ()  # Anthropic context_management that acted
    offload: bool = False  # big: translate and encode it in a worker thread
    face: Any = None  # what the dialect keeps for rendering (Responses: its parsed request)


SSE_CONTENT_TYPE = b"text/event-stream; charset=utf-8"


class StreamRenderer(Protocol):
    content_type: bytes  # of the streamed body: SSE_CONTENT_TYPE but for Gemini's JSON array

    def open(self) -> bytes: ...
    def events(self, events: Sequence[c.StreamEvent]) -> bytes: ...
    def keepalive(self) -> bytes: ...
    def error(self, err: errors.GatewayError) -> bytes: ...
    def close(self) -> bytes: ...
    async def finish(self) -> None:
        """The whole answer is written (Responses: store it)."""


class Dialect(Protocol):
    name: str
    tool_id_prefix: str

    async def prepare(
        self, body: Any, services: Services, scope: Scope, *, offload: bool
    ) -> PreparedChat: ...
    def error_body(self, err: errors.GatewayError) -> tuple[int, dict[str, Any]]: ...
    def stream_renderer(self, prepared: PreparedChat, response_id: str) -> StreamRenderer: ...
    async def render(
        self, prepared: PreparedChat, response: c.ChatResponse, response_id: str
    ) -> dict[str, Any]: ...
    def new_response_id(self) -> str: ...


class _Sink(Protocol):
    """Where the pump puts what the upstream said: the stream writer or the unary one."""

    def opened(self, account_handle: str, model_id: str) -> None: ...
    async def events(self, events: list[c.StreamEvent]) -> None: ...
    async def failed(self, err: errors.GatewayError) -> None: ...


@attrs.define(slots=True)
class _Outcome:
    """What the access log line reports about one request."""

    status: int = 200
    account: str = "-"
    requested: str = "-"  # the model name the client sent (clipped: it is client text)
    model: str = "-"
    usage: c.Usage | None = None
    first_byte: float | None = None
    error_type: str | None = None
    disconnected: bool = False
    started: bool = False  # the status line went out
    finished: bool = False  # the last body message went out; a disconnect now is normal


class ClientDisconnected(Exception):
    """The client went away before its request body was complete."""


@attrs.define(slots=True)
class Admission:
    """The bound on chat requests served at once (`server.max_concurrent_requests`). A
    request takes its place once its body is in: one still uploading (or never finishing)
    holds a connection or an h2 stream, bounded elsewhere, but never a place here."""

    limit: int
    on_change: Callable[[int], None] = lambda delta: None
    in_flight: int = 0

    def enter(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        self.on_change(1)
        return True

    def leave(self) -> None:
        self.in_flight -= 1
        self.on_change(-1)


async def read_body(receive: Receive, scope: Scope, limit: int, seconds: float) -> bytes:
    """The whole request body, within `limit` bytes and `seconds` seconds."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.PayloadTooLarge(f"request body exceeds the {limit} byte limit")
    with trio.move_on_after(seconds):
        return await _read_body(receive, limit)
    raise errors.RequestTimeout(
        f"the request body did not arrive within {seconds:g} seconds (server.body_timeout_seconds)"
    )


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise errors.PayloadTooLarge(f"request body exceeds the {limit} byte limit")
        chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


# A JSON escape of a UTF-16 surrogate: paired they make one character, alone they are not
# Unicode at all and cannot be sent on (nor encoded to UTF-8).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise errors.InvalidRequest("request body is empty; expected a JSON object")
    try:
        # JSON on the wire is UTF-8 (RFC 8259 8.1); json.loads would also take UTF-16 and
        # UTF-32, whose escapes the checks below (which read the bytes) cannot see
        if b"\x00" in raw[:4]:  # UTF-16/32 without a byte-order mark: valid "UTF-8"
            raise UnicodeDecodeError("utf-8", raw[:4], 0, 4, "NUL in the first bytes")
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidRequest("request body is not UTF-8; send JSON in UTF-8") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's guard against huge ints
            raise errors.InvalidRequest("request body holds an integer of more than 4300 "
                                        "digits") from None
        raise errors.InvalidRequest(f"request body is not valid JSON: {_short(exc)}") from None
    except RecursionError:
        raise errors.InvalidRequest("request body nests too deeply") from None
    if _SURROGATE_ESCAPE.search(raw):
        where = _lone_surrogate(data, "")
        if where is not None:
            field = where or "request body"
            raise errors.InvalidRequest(
                f"{field}: contains a lone UTF-16 surrogate escape (\\ud800-\\udfff), which is "
                "not valid Unicode", param=where or None,
            )
    return data


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string (or key) holding an unpaired surrogate, else None."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where
        elif isinstance(item, dict):
            for key, inner in reversed(list(item.items())):
                child = f"{where}.{key}" if where else str(key)
                try:
                    str(key).encode("utf-8")
                except UnicodeEncodeError:
                    return where or "request body"
                stack.append((inner, child))
        elif isinstance(item, list):
            stack.extend((inner, f"{where}.{i}") for i, inner in reversed(list(enumerate(item))))
    return None


T = TypeVar("T")


async def run_cpu(offload: bool, work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` here, or in a worker thread when it may take long (pure work only).

    Not abandoned on cancel: it is bounded CPU work, and nothing may outlive its request.
    """
    if not offload:
        return work(*args)
    return await trio.to_thread.run_sync(work, *args)


def parse_within_limits(raw: bytes, server: ServerConfig) -> Any:
    """The decoded body of a request, refused (400) past the request limits."""
    check_object_budget(raw, server)
    body = parse_json(raw)
    check_limits(body, server)
    return body


def check_object_budget(raw: bytes, server: ServerConfig) -> None:
    """Refuse, before decoding, a body with more JSON objects than any request within the
    limits could have: decoding costs per object (600k tiny messages take a third of a
    second of C code that nothing else can interrupt), and the count is cheap.

    Inside a JSON string a quote is always escaped, so `{"` marks an object (or, rarely, a
    string that ends in `{`), as does `{` before whitespace (JSON's four kinds) or `}`: an
    upper bound, never an undercount however the JSON is spaced.
    """
    budget = server.max_messages + 2 * server.max_content_blocks + 64 * server.max_tools + 4096
    found = sum(raw.count(b"{" + after) for after in (b'"', b"}", b" ", b"\n", b"\t", b"\r"))
    if found > budget:
        raise errors.InvalidRequest(
            f"request body holds more than {budget} JSON objects, more than any request "
            "within server.max_messages, server.max_content_blocks and server.max_tools")


def check_limits(body: Any, server: ServerConfig) -> None:
    """Refuse requests bigger than any conversation needs in the counts that cost work:
    messages, content blocks, tools (each limit a config key)."""
    if not isinstance(body, dict):
        return
    # Chat and Messages bodies hold `messages`; Responses bodies hold `input` items, whose
    # parts (and tool outputs) count as content blocks; Gemini bodies hold `contents`.
    field = next((f for f in ("messages", "contents") if f in body), "input")
    messages = body.get(field)
    if isinstance(messages, list):
        if len(messages) > server.max_messages:
            raise errors.InvalidRequest(
                f"{field}: {len(messages)} {'messages' if field == 'messages' else 'items'} "
                "are more than this gateway takes in one request "
                f"(server.max_messages = {server.max_messages})", param=field)
        blocks = 0
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if content is None and isinstance(message, dict):
                content = message.get("parts")
            if isinstance(content, list):
                blocks += len(content)
                for block in content:
                    inner = block.get("content") if isinstance(block, dict) else None
                    if isinstance(inner, list):
                        blocks += len(inner)  # tool results hold blocks of their own
            output = message.get("output") if isinstance(message, dict) else None
            if isinstance(output, list):
                blocks += len(output)
            calls = message.get("tool_calls") if isinstance(message, dict) else None
            if isinstance(calls, list):
                blocks += len(calls)
        if blocks > server.max_content_blocks:
            raise errors.InvalidRequest(
                f"{field}: {blocks} content blocks are more than this gateway takes in one "
                f"request (server.max_content_blocks = {server.max_content_blocks})",
                param=field)
    tools = body.get("tools")
    if isinstance(tools, list):
        # a Gemini tool object holds any number of function declarations: each counts
        count = sum(_declarations(tool) for tool in tools)
        if count > server.max_tools:
            raise errors.InvalidRequest(
                f"tools: {count} tools are more than this gateway takes in one request "
                f"(server.max_tools = {server.max_tools})", param="tools")


def _declarations(tool: Any) -> int:
    if isinstance(tool, dict):
        for key in ("functionDeclarations", "function_declarations"):
            inner = tool.get(key)
            if isinstance(inner, list):
                return max(1, len(inner))
    return 1


_CONTENTS = b'"contents":[]'


def encode_upstream(body: dict[str, Any]) -> bytes:
    """The upstream body as JSON. A long conversation is encoded one content at a time:
    json.dumps holds the GIL for its whole run, and this runs in a worker thread beside
    the event loop, which then gets its turn between contents."""
    request = body.get("request")
    contents = request.get("contents") if isinstance(request, dict) else None
    if not isinstance(request, dict) or not isinstance(contents, list) or len(contents) < 64:
        return _dumps(body)
    shell = _dumps({**body, "request": {**request, "contents": []}})
    # the first structural `"contents":[]` is the request's (quotes in strings are escaped)
    at = shell.index(_CONTENTS)
    items = b",".join(_dumps(content) for content in contents)
    return shell[:at] + b'"contents":[' + items + b"]" + shell[at + len(_CONTENTS):]


def _dumps(value: Any) -> bytes:
    return c.compact_json(value).encode()


def loggable(name: str) -> str:
    """A client-supplied name safe for one log field: no spaces or controls, bounded."""
    cleaned = "".join(ch if ch.isprintable() and not ch.isspace() else "?" for ch in name)
    return cleaned[:80] or "-"


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def send_json(
    send: Send, status: int, body: Any, headers: Mapping[str, str] | None = None, *,
    direct: DirectBody | None = None,
) -> None:
    """One JSON answer; with `direct` (a real HTTP/1.1 connection), its head and body leave
    in one write. The end is sent after that write, never held: hypercorn may close the
    connection or take the next request from inside the end's send."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    start = {"type": "http.response.start", "status": status, "headers": raw_headers}
    if direct is None or not direct.direct:
        await send(start)
        await send({"type": "http.response.body", "body": payload, "more_body": False})
        return
    async with direct.coalesced():
        await send(start)
        await send({"type": "http.response.body", "body": payload, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def send_error(
    send: Send, dialect: Dialect, err: errors.GatewayError, *, direct: DirectBody | None = None
) -> None:
    status, body = dialect.error_body(err)
    await send_json(send, status, body, err.headers(), direct=direct)


async def handle_chat(
    scope: Scope, receive: Receive, raw_send: Send, dialect: Dialect, services: Services,
    admission: Admission, direct: DirectBody,
) -> None:
    """Serve one chat request; `direct` writes the streamed body messages of `raw_send`'s
    response (straight to the socket where it can)."""
    started = time.monotonic()
    request_id = scope.get("state", {}).get("request_id") or secrets.token_hex(8)
    outcome = _Outcome()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            outcome.started = True
            outcome.status = int(message["status"])  # what the client got (503 for a 529)
            # both SDKs surface these ids in their errors, so a user can find the log line
            id_header = request_id.encode()
            headers = [*message.get("headers", ()), (b"request-id", id_header),
                       (b"x-request-id", id_header)]
            message = {**message, "headers": headers}
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            outcome.finished = True
        if message["type"] != "http.response.start":
            await raw_send(message)
            return
        # The status line is shielded: when writing it finds the client's h2 connection
        # broken, hypercorn closes every stream of that connection from inside this call,
        # telling each app it disconnected. Cancelled half-way (by this request's own
        # disconnect watcher), that loop skips one stream, whose request then holds its
        # upstream stream open for ever. Headers are not flow-controlled, so this does not
        # wait on the client; the deadline bounds it anyway.
        with trio.move_on_after(SEND_SHIELD_SECONDS) as shield:
            shield.shield = True
            await raw_send(message)

    async def refuse(err: errors.GatewayError) -> None:
        outcome.status, outcome.error_type = err.status, err.anthropic_type
        await send_error(send, dialect, err, direct=direct)

    stream = False
    admitted = False
    try:
        try:
            server = services.config.server
            raw = await read_body(receive, scope, server.max_body_bytes,
                                  server.body_timeout_seconds)
            admitted = admission.enter()
            if not admitted:
                raise errors.Overloaded(
                    f"the gateway is serving its limit of {admission.limit} concurrent "
                    "requests (server.max_concurrent_requests); retry shortly", retry_after=1)
            # a big body is parsed and translated in a worker thread, so one request cannot
            # stop every other stream (and /health) while it is taken apart
            offload = len(raw) > server.offload_bytes
            body = await run_cpu(offload, parse_within_limits, raw, server)
            if isinstance(body, dict) and isinstance(body.get("model"), str):
                outcome.requested = loggable(body["model"])
            if isinstance(body, dict) and isinstance(body.get("stream"), bool):
                stream = body["stream"]  # logged as asked, also when the request is refused
            prepared = await dialect.prepare(body, services, scope, offload=offload)
        except errors.GatewayError as err:
            await refuse(err)
            return
        except ClientDisconnected:
            outcome.disconnected = True
            return
        except RecursionError:
            await refuse(errors.InvalidRequest("request body nests too deeply"))
            return
        except Exception:
            log.exception("unexpected error preparing an %s request", dialect.name)
            await refuse(errors.GatewayError("internal error; see the log"))
            return
        stream = prepared.request.stream
        outcome.model = prepared.model.id
        async with trio.open_nursery() as nursery:
            # One task carries upstream read, decode, render and write: no hop between tasks
            # per chunk. The one beside it hears the client go (and, for a stream, writes
            # its keep-alives).
            streamed: _StreamWriter | None = None
            try:
                streamed = (_StreamWriter(send, direct, prepared, dialect, services, outcome,
                                          started) if stream else None)
                nursery.start_soon(_watch_client, receive, nursery.cancel_scope, outcome,
                                   streamed)
                writer = streamed or _UnaryWriter(send, direct, prepared, dialect, outcome)
                await _pump(writer, prepared, dialect, services)
                await writer.finish()
            except Exception:
                # A rendering bug must still end the response in the caller's format.
                log.exception("unexpected error writing a %s response", dialect.name)
                outcome.status, outcome.error_type = 500, "api_error"
                if streamed is not None:
                    streamed.abandon()
                internal = errors.GatewayError("internal error; see the gateway log")
                if not outcome.started:
                    await send_error(send, dialect, internal)
                elif not outcome.finished:
                    closing = dialect.stream_renderer(prepared, "error").error(internal)
                    await send({"type": "http.response.body", "body": closing,
                                "more_body": False})
            nursery.cancel_scope.cancel()
    finally:
        if admitted:
            admission.leave()
        if outcome.disconnected:
            outcome.status = 499  # nginx's "client closed request"
        services.metrics.observe_request(
            route=dialect.name,
            model=outcome.model,
            status=outcome.status,
            seconds=time.monotonic() - started,
            first_byte=outcome.first_byte,
        )
        usage = outcome.usage or c.Usage()
        elapsed_ms = (time.monotonic() - started) * 1000
        services.requests.add(RequestRecord(
            at=services.clock(), face=dialect.name, method="POST", route=scope["path"][:200],
            status=outcome.status, latency_ms=round(elapsed_ms, 1),
            model_asked=None if outcome.requested == "-" else outcome.requested,
            model_served=None if outcome.model == "-" else outcome.model,
            account=None if outcome.account == "-" else outcome.account,
            key_label=key_label(scope, services.config.server.api_keys), stream=stream,
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cached_tokens=usage.cache_read_input_tokens, thinking_tokens=usage.thinking_tokens,
            error=outcome.error_type,
        ))
        access_log.info(
            "request id=%s route=%s requested=%s model=%s account=%s stream=%s status=%s "
            "latency_ms=%d ttfb_ms=%s input_tokens=%d output_tokens=%d cached_tokens=%d%s",
            request_id,
            dialect.name,
            outcome.requested,
            outcome.model,
            outcome.account,
            stream,
            outcome.status,
            elapsed_ms,
            "-" if outcome.first_byte is None else int(outcome.first_byte * 1000),
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_input_tokens,
            f" error={outcome.error_type}" if outcome.error_type else "",
        )


async def _watch_client(
    receive: Receive, scope: trio.CancelScope, outcome: _Outcome,
    stream: _StreamWriter | None,
) -> None:
    """Cancel the request when its client goes; meanwhile, write a stream's keep-alives
    (waiting for the client's next message is cancel-safe: nothing is lost to the deadline)."""
    while True:
        if stream is None:
            message = await receive()
        else:
            with trio.move_on_at(stream.keep_alive_at()) as waited:
                message = await receive()
            if waited.cancelled_caught:
                try:
                    await stream.keep_alive()
                except Exception:
                    # a bug, not the client: the answer goes on without keep-alives
                    log.exception("unexpected error writing a keep-alive")
                    stream = None
                continue
        if message["type"] == "http.disconnect":
            outcome.disconnected = not outcome.finished
            scope.cancel()
            return


class _StreamBroken(Exception):
    """The upstream stream broke after its first payload: too late for the dispatcher."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _pump(
    sink: _Sink,
    prepared: PreparedChat,
    dialect: Dialect,
    services: Services,
) -> None:
    """Open the upstream, decode it, and hand canonical events to the writer.

    A stream that breaks half-way is final for a streaming client (it has seen the start),
    but a non-streaming client has seen nothing yet: its request is sent again, up to
    `upstream.max_retries` times, so a cut connection costs a retry, not an answer.
    """
    attempts = 1 if prepared.request.stream else 1 + services.config.upstream.max_retries
    for attempt in range(attempts):
        try:
            try:
                await _relay(sink, prepared, dialect, services)
            except errors.UpstreamInvalidRequest as refused:
                if "signature" not in refused.message or not c.has_thinking(prepared.request):
                    raise
                # Thinking signed elsewhere (another provider, another gateway): the
                # upstream refuses it, so replay the history without the thoughts.
                log.info("upstream refused the history's thinking signatures; "
                         "sending it again without thinking blocks")
                prepared = attrs.evolve(prepared, request=c.without_thinking(prepared.request))
                await _relay(sink, prepared, dialect, services)
            return
        except _StreamBroken as broken:
            if attempt + 1 < attempts:
                log.warning("upstream stream broke (%s); sending the request again",
                            broken.reason)
                continue
            await sink.failed(errors.UpstreamError(f"upstream stream failed: {broken.reason}"))
        except errors.GatewayError as err:
            await sink.failed(err)
            return
        except Exception:
            log.exception("unexpected error relaying a %s stream", dialect.name)
            await sink.failed(errors.GatewayError("internal error; see the log"))
            return


async def _relay(
    sink: _Sink,
    prepared: PreparedChat,
    dialect: Dialect,
    services: Services,
) -> None:
    """One attempt: stream events to the writer (or, for a unary request, all at the end).
    What one network read of the upstream brought is decoded, rendered and written as one."""
    request = prepared.request
    signatures = dict(await services.state.signatures(prepared.session_id))
    for edit in prepared.context_edits:
        for tool_id in edit.cleared_input_ids:  # a signature over the old input: sentinel
            signatures.pop(tool_id, None)
    request_id = f"agent-{secrets.token_hex(16)}"
    held: list[c.StreamEvent] = []

    def encoded(project: str, model: ModelInfo) -> bytes:
        return encode_upstream(to_cloudcode(
            request,
            model=model,
            project=project,
            session_id=prepared.session_id,
            request_id=request_id,
            tool_signatures=signatures,
            preamble=services.config.upstream.system_preamble,
        ))

    async def build_body(project: str, model: ModelInfo) -> bytes:
        return await run_cpu(prepared.offload, encoded, project, model)

    async def emit(events: list[c.StreamEvent]) -> None:
        _remember_signatures(services, prepared.session_id, events)
        if request.stream:
            await sink.events(events)
        else:
            held.extend(events)

    async with services.dispatcher.open_stream(
        model=prepared.model, sticky_key=prepared.sticky_key, build_body=build_body
    ) as upstream:
        sink.opened(upstream.account_handle, upstream.model.id)
        decoder = CloudCodeDecoder(
            model=upstream.model,
            tool_id_prefix=f"{dialect.tool_id_prefix}{secrets.token_hex(8)}_",
        )
        try:
            async for batch in upstream.batches:
                if len(batch) == 1:
                    events = decoder.feed(batch[0])
                else:
                    events = [event for payload in batch for event in decoder.feed(payload)]
                if events:
                    await emit(events)
        except UpstreamHTTPError as exc:
            if exc.status == 0 and exc.body.startswith("stream broken"):
                raise _StreamBroken(str(exc)) from None  # a cut connection: worth a resend
            if exc.status == 0 and exc.body == "stream stalled":
                raise errors.UpstreamTimeout("upstream stream stalled mid-answer") from None
            raise errors.UpstreamError(f"upstream stream failed: {exc}") from None
        await emit(decoder.finish())
    if held:
        await sink.events(held)


def _remember_signatures(
    services: Services, session_id: str, events: Sequence[c.StreamEvent]
) -> None:
    for event in events:
        if isinstance(event, c.ToolSignature):
            services.state.remember_signature(session_id, event.tool_id, event.signature)


def _track(outcome: _Outcome, events: Sequence[c.StreamEvent]) -> None:
    for event in events:
        if isinstance(event, c.UsageUpdate | c.MessageEnd):
            outcome.usage = event.usage


class _UnaryWriter:
    """Collects the answer, then writes it (or the error) as one JSON body."""

    def __init__(
        self, send: Send, body: DirectBody, prepared: PreparedChat, dialect: Dialect,
        outcome: _Outcome,
    ) -> None:
        self._send, self._prepared, self._dialect = send, prepared, dialect
        self._body, self._outcome = body, outcome
        self._collected: list[c.StreamEvent] = []
        self._error: errors.GatewayError | None = None

    def opened(self, account_handle: str, model_id: str) -> None:
        self._outcome.account, self._outcome.model = account_handle, model_id

    async def events(self, events: list[c.StreamEvent]) -> None:
        self._collected.extend(events)

    async def failed(self, err: errors.GatewayError) -> None:
        self._error = err

    async def finish(self) -> None:
        outcome, dialect = self._outcome, self._dialect
        if self._error is not None:
            outcome.status, outcome.error_type = self._error.status, self._error.anthropic_type
            await send_error(self._send, dialect, self._error, direct=self._body)
            return
        _track(outcome, self._collected)
        response_id = dialect.new_response_id()
        response = c.collect(self._collected, response_id=response_id,
                             model=self._prepared.request.model)
        rendered = await dialect.render(self._prepared, response, response_id)
        await send_json(self._send, 200, rendered, direct=self._body)


class _StreamWriter:
    """Renders events as the dialect's SSE and writes them as they come.

    The status line is committed with the first events (or the first keep-alive), so an
    upstream that fails before answering is still a real status code. Writes come from the
    request's task and from `keep_alive` (the client watcher's, when nothing was written
    for `server.keepalive_seconds`: long thinking, a cooldown wait), one at a time.
    """

    def __init__(
        self, send: Send, body: DirectBody, prepared: PreparedChat, dialect: Dialect,
        services: Services, outcome: _Outcome, started: float,
    ) -> None:
        self._send, self._body, self._dialect = send, body, dialect
        self._services, self._outcome, self._started = services, outcome, started
        self._renderer = dialect.stream_renderer(prepared, dialect.new_response_id())
        self._keepalive = services.config.server.keepalive_seconds
        self._lock = trio.Lock()
        self._committed = False
        self._closed = False  # the answer's end, or an error, is written: nothing after it
        self._last_write = trio.current_time()

    def opened(self, account_handle: str, model_id: str) -> None:
        self._outcome.account, self._outcome.model = account_handle, model_id

    async def events(self, events: list[c.StreamEvent]) -> None:
        _track(self._outcome, events)
        lock = self._lock
        try:
            lock.acquire_nowait()  # the common case, with no checkpoint of its own
        except trio.WouldBlock:
            await lock.acquire()  # the keep-alive is writing
        try:
            if self._closed:
                return
            if self._committed:
                ended = await self._write(events)
            else:
                # the status line, the opening and these first events: one write
                async with self._body.coalesced():
                    ended = await self._write(events, await self._commit())
            self._last_write = trio.current_time()
        finally:
            lock.release()
        if ended:
            await self._renderer.finish()

    async def _write(self, events: list[c.StreamEvent], opening: bytes = b"") -> bool:
        """Render and write `events` (after `opening`); whether they ended the answer."""
        renderer = self._renderer
        chunk = opening + renderer.events(events)  # the opening is rendered first
        ended = any(isinstance(e, c.MessageEnd) for e in events)
        if ended:
            chunk += renderer.close()
            self._closed = True
            # the client has its whole answer once this is written; if it hangs up
            # before the final empty frame, that is not a disconnect mid-answer
            self._outcome.finished = True
        await self._body.write(chunk)
        return ended

    async def failed(self, err: errors.GatewayError) -> None:
        outcome = self._outcome
        outcome.error_type = err.anthropic_type
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self._committed:
                outcome.status = err.status
                await send_error(self._send, self._dialect, err)
                return
            await self._body.write(self._renderer.error(err))

    async def finish(self) -> None:
        """After the pump: the final (empty) body message."""
        async with self._lock:
            if not self._committed:
                if not self._closed:
                    # the pump ended without a word: cannot happen, but never hang the client
                    await send_error(self._send, self._dialect,
                                     errors.UpstreamError("upstream ended without answer"))
                    self._closed = True
                return
            self._closed = True
            metrics = self._services.metrics
            (metrics.streamed_direct if self._body.frames else metrics.streamed_asgi).inc()
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    def keep_alive_at(self) -> float:
        """When a keep-alive is due if nothing is written before (never, once closed)."""
        return math.inf if self._closed else self._last_write + self._keepalive

    def abandon(self) -> None:
        """Someone else ends the response (after a bug): no keep-alive may follow."""
        self._closed = True

    async def keep_alive(self) -> None:
        """Write a keep-alive if one is due (committing the response if need be)."""
        async with self._lock:
            if self._closed or trio.current_time() < self.keep_alive_at():
                return
            if self._committed:
                await self._body.write(self._renderer.keepalive())
            else:
                async with self._body.coalesced():
                    await self._body.write(await self._commit() + self._renderer.keepalive())
            self._last_write = trio.current_time()

    async def _commit(self) -> bytes:
        """Send the status line; the opening to write before anything else."""
        self._committed = True
        self._outcome.first_byte = time.monotonic() - self._started
        renderer = self._renderer
        await self._send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", renderer.content_type),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
            ],
        })
        return renderer.open()
