"""The dispatcher: which account and endpoint serve a request, and what to do when one fails.

`Dispatcher.open_stream` picks an account from the pool, builds the upstream body for its
project, and opens `streamGenerateContent` on each base URL in order (daily, then prod). It
reads ahead to the first payload with content before handing the stream over, so every
failure that can still be hidden is: a 429 cools the account for that model (for as long as
the upstream says) and fails over to another account, waiting out a short cooldown when
every account cools; a 401 gets one token renewal and a retry on the same account; a 403
fails over; a 404 moves to the next endpoint; 5xx, transport errors and empty streams are
retried with jittered exponential backoff, then fail over; a 400 is the request's own fault
and is answered at once. What cannot be hidden becomes one `errors.GatewayError`. Once a
payload has been handed over, errors propagate: it is too late to fail over.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import attrs
import trio

from gateway import errors
from gateway.accounts.model import Account, account_handle
from gateway.accounts.pool import AccountPool
from gateway.accounts.supervisor import Supervisor
from gateway.config import Config
from gateway.translate.cloudcode import EmptyUpstreamResponse, upstream_error
from gateway.translate.models import FALLBACK, ModelInfo, describe_model
from gateway.upstream.client import CloudCodeClient, UpstreamHTTPError
from gateway.upstream.gate import RefusalWatch, is_version_refusal
from gateway.upstream.ratelimit import is_capacity_exhausted, rate_limit_kind, reset_seconds

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.state.shared import StateStore

log = logging.getLogger("gateway.dispatch")

Payload = dict[str, Any]
# (project, model) -> the encoded upstream body
BuildBody = Callable[[str, ModelInfo], Awaitable[bytes]]

# A 429 that does not say how long: long enough not to hammer, short enough to recover.
DEFAULT_COOLDOWN_SECONDS = 60.0
MIN_COOLDOWN_SECONDS = 1.0
# The same account rate-limiting one request this often is left out of it.
MAX_RATE_LIMITS_PER_ACCOUNT = 3
# A stalled upstream may be generating (and charging) all the same; one request gives up
# after this many stalls rather than paying for retries on every endpoint and account.
MAX_STALLS_PER_REQUEST = 2
# Waits between capacity retries when the upstream names none.
CAPACITY_BACKOFF_SECONDS = (2.0, 5.0, 10.0, 20.0)

_INVALID_STATUSES = frozenset({400, 413, 422})
_GOOGLE_STATUS_CODES = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


@attrs.frozen(slots=True)
class UpstreamStream:
    """An opened upstream answer: who serves it and its payloads, in batches (what one
    network read brought; the first batch holds those read before it was handed over)."""

    account_handle: str
    email: str
    model: ModelInfo  # the model actually serving; differs from the request after a fallback
    base_url: str
    batches: AsyncIterator[list[Payload]] = attrs.field(repr=False)


FailoverKind = Literal[
    "rate_limited", "auth", "forbidden", "not_found", "transient", "stalled", "no_token",
    "capacity",
]


class _Failover(Exception):
    """This account cannot serve the request; another may."""

    def __init__(self, kind: FailoverKind, error: errors.GatewayError | None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.error = error


class _EmptyStream(UpstreamHTTPError):
    """A 200 stream that ended before any content: retried like a 5xx."""


class _RefusedStream(UpstreamHTTPError):
    """A 200 stream whose whole answer is the upstream's version-gate refusal."""


class Dispatcher:
    """Opens upstream streams with account selection, retries and failover."""

    def __init__(
        self,
        pool: AccountPool,
        supervisor: Supervisor,
        client: CloudCodeClient,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        jitter: Callable[[], float] = random.random,
        state: StateStore | None = None,
    ) -> None:
        self.pool = pool
        self.state = state  # None: one process, nothing to recall
        self.supervisor = supervisor
        self.client = client
        self.config = config
        self.metrics = metrics
        self._clock = clock
        self._jitter = jitter
        # the upstream refused our client version and nothing has been served since
        self.version_refused = False

    @asynccontextmanager
    async def open_stream(
        self, *, model: ModelInfo, sticky_key: str, build_body: BuildBody
    ) -> AsyncIterator[UpstreamStream]:
        """Open the upstream stream for `model`; raises `errors.GatewayError` if none opens.

        Leaving the context (normally, by error or by cancellation) closes the upstream
        connection. A normal exit records the account's success.
        """
        async with AsyncExitStack() as stack:
            # a conversation begun on another replica continues on its account
            if self.state is not None:
                await self.state.recall_session(sticky_key)
            stream = await self._open(stack, model, sticky_key, build_body)
            self.version_refused = False
            yield stream
            self.pool.success(stream.email, stream.model.id)

    # -- models ----------------------------------------------------------------------------

    async def _open(
        self, stack: AsyncExitStack, model: ModelInfo, sticky_key: str, build_body: BuildBody
    ) -> UpstreamStream:
        fallbacks = self.config.upstream.model_fallbacks
        tried = {model.id}
        current = model
        while True:
            fallback = fallbacks.get(current.id)
            usable_fallback = fallback if fallback and fallback not in tried else None
            try:
                return await self._open_model(
                    stack, current, sticky_key, build_body, may_wait=usable_fallback is None
                )
            except errors.RateLimited:
                if usable_fallback is None:
                    raise
                log.info("every account is rate-limited for %s; falling back to %s",
                         current.id, usable_fallback)
                tried.add(usable_fallback)
                served = self.pool.catalogue() or FALLBACK
                current = served.get(usable_fallback) or describe_model(usable_fallback)

    # -- accounts --------------------------------------------------------------------------

    async def _open_model(
        self,
        stack: AsyncExitStack,
        model: ModelInfo,
        sticky_key: str,
        build_body: BuildBody,
        *,
        may_wait: bool,
    ) -> UpstreamStream:
        exclude: set[str] = set()
        rate_limits: dict[str, int] = {}
        failures: list[_Failover] = []
        stalls = 0
        waited = 0.0
        max_wait = self.config.accounts.max_cooldown_wait_seconds
        while True:
            pick = self.pool.pick(model.id, sticky_key, frozenset(exclude))
            if pick is None:
                raise self._exhausted(model, failures, rate_limits)
            if pick.wait_seconds > 0:
                if not may_wait or waited + pick.wait_seconds > max_wait:
                    raise _all_rate_limited(model, pick.wait_seconds)
                log.info("every account is cooling for %s; waiting %.1fs",
                         model.id, pick.wait_seconds)
                await trio.sleep(pick.wait_seconds)
                waited += pick.wait_seconds
                continue
            try:
                return await self._on_account(stack, pick.account, model, build_body)
            except _Failover as failover:
                failures.append(failover)
                email = pick.email
                log.info("account %s cannot serve %s (%s); trying another",
                         account_handle(email), model.id, failover.kind)
                if failover.kind == "rate_limited":
                    rate_limits[email] = rate_limits.get(email, 0) + 1
                    if rate_limits[email] >= MAX_RATE_LIMITS_PER_ACCOUNT:
                        exclude.add(email)
                else:
                    exclude.add(email)
                if failover.kind == "stalled":
                    stalls += 1
                    if stalls >= MAX_STALLS_PER_REQUEST and failover.error is not None:
                        raise failover.error from None

    def _exhausted(
        self, model: ModelInfo, failures: list[_Failover], rate_limits: Mapping[str, int]
    ) -> errors.GatewayError:
        """The error for a request no remaining account could serve."""
        kinds = {f.kind for f in failures}
        if not failures or kinds == {"no_token"}:
            return errors.NoAccounts(
                "no account is ready: access tokens (or Cloud Code projects) are still being "
                "fetched or failing; see the gateway log, or POST /refresh-token"
            )
        if "rate_limited" in kinds:
            waits = [self.pool.cooldown_remaining(email, model.id) for email in rate_limits]
            return _all_rate_limited(model, max(MIN_COOLDOWN_SECONDS, min(waits)))
        if "capacity" in kinds:
            busy = next(f.error for f in reversed(failures) if f.kind == "capacity")
            if busy is not None:
                return busy
        if kinds <= {"not_found", "no_token"}:
            return errors.UnknownModel(
                f"model '{model.id}' is not served by the upstream", param="model"
            )
        if kinds <= {"forbidden", "no_token", "not_found"}:
            # Every account may call Cloud Code but none this: a permission, not credentials.
            forbidden = next(f.error for f in reversed(failures) if f.kind == "forbidden")
            return errors.PermissionDenied(
                forbidden.message if forbidden is not None else "the upstream denied permission"
            )
        if kinds <= {"auth", "forbidden", "no_token", "not_found"}:
            return errors.UpstreamAuthError(
                "the upstream rejected every account's credentials; re-add the accounts "
                "with `gateway accounts add` or check their access to Cloud Code"
            )
        for failover in reversed(failures):
            if failover.kind in ("transient", "stalled") and failover.error is not None:
                return failover.error
        last = failures[-1].error
        return last if last is not None else errors.UpstreamError("the upstream failed")

    async def _on_account(
        self, stack: AsyncExitStack, account: Account, model: ModelInfo, build_body: BuildBody
    ) -> UpstreamStream:
        """Open the stream on one account, across base URLs and retries; or fail over."""
        email = account.email
        token = self.supervisor.access_token(email)
        if token is None or not account.project_id:
            # Not ready yet (its token or project is still being fetched): others may be.
            raise _Failover("no_token", None)
        body = await build_body(account.project_id, model)
        upstream = self.config.upstream
        urls = upstream.base_urls
        renewed = False
        retries = 0
        soft_retries = 0
        capacity_retries = 0
        while True:
            transient: UpstreamHTTPError | None = None
            index = 0
            while index < len(urls):
                base_url = urls[index]
                try:
                    return await self._attempt(stack, account, model, base_url, body, token)
                except UpstreamHTTPError as exc:
                    self._count_error(exc)
                    status = exc.status
                    if status and is_version_refusal(exc.body):
                        raise self._version_refused(exc) from None
                    if status in (429, 503, 529) and is_capacity_exhausted(exc.body):
                        # the model is busy on the server: wait as told, same account, and
                        # no mark against it (its quota and standing are fine)
                        delay = self._capacity_delay(exc, capacity_retries)
                        if (capacity_retries < upstream.capacity_retries
                                and delay <= upstream.capacity_max_wait_seconds):
                            capacity_retries += 1
                            log.info("%s has no capacity upstream; retry %d in %.1fs",
                                     model.id, capacity_retries, delay)
                            await trio.sleep(delay)
                            continue
                        raise _Failover("capacity", errors.Overloaded(
                            f"{model.id} has no capacity upstream right now; retry later",
                            retry_after=delay,
                        )) from None
                    if status == 429:
                        kind = rate_limit_kind(exc.body)
                        wait = reset_seconds(exc.body, exc.headers, now=self._clock())
                        if kind == "bare" and soft_retries < upstream.soft_rate_limit_retries:
                            soft_retries += 1
                            await trio.sleep(upstream.soft_rate_limit_wait_seconds
                                             * soft_retries * (0.5 + self._jitter()))
                            continue
                        if (kind == "rate_limit" and wait is not None
                                and wait < upstream.rate_limit_quick_retry_seconds
                                and soft_retries < upstream.soft_rate_limit_retries):
                            soft_retries += 1
                            await trio.sleep(wait)
                            continue
                        raise self._rate_limited(
                            email, model, exc,
                            # such 429s are often not quota at all: a short rest, not hours
                            upstream.bare_rate_limit_cooldown_seconds if kind == "bare"
                            else wait,
                        ) from None
                    if status == 401:
                        if not renewed:
                            renewed = True
                            fresh = await self.supervisor.renew_token(email, token)
                            if fresh is not None:
                                token = fresh
                                continue  # same base URL, new token
                        self.pool.failure(email)
                        raise _Failover("auth", _mapped(exc, errors.UpstreamAuthError)) from None
                    if status == 403:
                        self.pool.failure(email)
                        denied = _mapped(exc, errors.PermissionDenied)
                        raise _Failover("forbidden", denied) from None
                    if status in _INVALID_STATUSES:
                        raise _mapped(exc, errors.UpstreamInvalidRequest) from None
                    if status == 0 and exc.body in ("timeout", "stream stalled"):
                        # no retry here, no other endpoint: the model may be running anyway
                        self.pool.failure(email)
                        raise _Failover("stalled", _transient_error(exc)) from None
                    if status != 404:
                        transient = exc
                index += 1
            if transient is None:  # every endpoint answered 404
                raise _Failover("not_found", None)
            if retries >= upstream.max_retries:
                self.pool.failure(email)
                raise _Failover("transient", _transient_error(transient))
            delay = upstream.retry_backoff_seconds * 2**retries
            retries += 1
            log.info("upstream %s on account %s; retry %d in %.2fs",
                     transient.status or transient.body, account_handle(email), retries, delay)
            await trio.sleep(delay * (0.5 + self._jitter()))

    def _capacity_delay(self, exc: UpstreamHTTPError, attempt: int) -> float:
        told = reset_seconds(exc.body, exc.headers, now=self._clock())
        if told is not None:
            return max(0.0, told)
        return CAPACITY_BACKOFF_SECONDS[min(attempt, len(CAPACITY_BACKOFF_SECONDS) - 1)]

    def _version_refused(self, exc: UpstreamHTTPError) -> errors.ClientVersionRefused:
        """The version gate: the same on every account, so no failover and no penalty."""
        self.version_refused = True
        if self.metrics is not None:
            self.metrics.version_refusals.inc()
        agent = self.config.upstream.user_agent
        log.error(
            "the upstream refuses this gateway's client version (User-Agent %r): set "
            "upstream.user_agent (GATEWAY_UPSTREAM_USER_AGENT) to a current Antigravity "
            "version", agent,
        )
        return errors.ClientVersionRefused(
            "the upstream refused this gateway's client version (\"This version of "
            "Antigravity is no longer supported\"); the operator must set upstream.user_agent "
            f"(env GATEWAY_UPSTREAM_USER_AGENT) to a current Antigravity version (it is "
            f"{agent!r})"
        )

    def _rate_limited(
        self, email: str, model: ModelInfo, exc: UpstreamHTTPError, seconds: float | None
    ) -> _Failover:
        cooldown = DEFAULT_COOLDOWN_SECONDS if seconds is None else seconds
        cooldown = max(MIN_COOLDOWN_SECONDS, cooldown)
        self.pool.cooldown(email, model.id, cooldown)
        self.supervisor.request_probe(email)
        log.info("account %s is rate-limited for %s for %.1fs",
                 account_handle(email), model.id, cooldown)
        return _Failover("rate_limited", _all_rate_limited(model, cooldown))

    # -- one attempt -----------------------------------------------------------------------

    async def _attempt(
        self,
        stack: AsyncExitStack,
        account: Account,
        model: ModelInfo,
        base_url: str,
        body: bytes,
        token: str,
    ) -> UpstreamStream:
        """Open one stream and read to its first payload with content, within the deadline.

        On success the open stream joins `stack` (closed when the caller's context ends);
        on any failure it is closed here.
        """
        attempt = AsyncExitStack()
        started = trio.current_time()
        handed_over = False
        try:
            with trio.move_on_after(self.config.upstream.read_timeout_seconds) as deadline:
                batches = await attempt.enter_async_context(
                    self.client.stream(base_url, body, token, model=model.id)
                )
                attempt.push_async_callback(_aclose, batches)
                buffered = await _peek(batches, base_url)
            if deadline.cancelled_caught:
                raise UpstreamHTTPError(0, "timeout", base_url=base_url)
            replay = _replay(buffered, batches)
            attempt.push_async_callback(replay.aclose)
            stack.push_async_exit(attempt)
            handed_over = True
        finally:
            if not handed_over:
                with trio.CancelScope(shield=True):
                    await attempt.aclose()
        if self.metrics is not None:
            self.metrics.upstream_latency.observe(trio.current_time() - started)
        return UpstreamStream(
            account_handle=account_handle(account.email),
            email=account.email,
            model=model,
            base_url=base_url,
            batches=replay,
        )

    def _count_error(self, exc: UpstreamHTTPError) -> None:
        if self.metrics is not None:
            label = ("empty" if isinstance(exc, _EmptyStream)
                     else "version" if isinstance(exc, _RefusedStream) else str(exc.status))
            self.metrics.upstream_errors.labels(label).inc()


# -- payloads ------------------------------------------------------------------------------


async def _aclose(iterator: AsyncIterator[list[Payload]]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


def _error_of(payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    inner = payload.get("response")
    body = inner if isinstance(inner, Mapping) else payload
    error = body.get("error", payload.get("error"))
    return error if isinstance(error, Mapping) else None


def _has_content(payload: Mapping[str, Any]) -> bool:
    """Whether the payload says anything: parts, a finish reason or a block."""
    inner = payload.get("response")
    body = inner if isinstance(inner, Mapping) else payload
    candidates = body.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], Mapping):
        candidate = candidates[0]
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, Mapping) else None
        if isinstance(parts, list) and parts:
            return True
        if candidate.get("finishReason"):
            return True
    feedback = body.get("promptFeedback")
    return isinstance(feedback, Mapping) and bool(feedback.get("blockReason"))


async def _peek(batches: AsyncIterator[list[Payload]], base_url: str) -> list[Payload]:
    """Payloads up to and including the first with content (further while the answer could
    still be the version-gate refusal), with the rest of the batch that one came in; errors
    before it raised as HTTP."""
    buffered: list[Payload] = []
    watch = RefusalWatch()
    async for batch in batches:
        for index, payload in enumerate(batch):
            error = _error_of(payload)
            if error is not None:
                raise _error_as_http(error, base_url)
            buffered.append(payload)
            if not _has_content(payload):
                continue
            verdict = watch.feed(payload)
            if verdict == "refused":
                raise _RefusedStream(200, _answer_text(buffered), {}, base_url)
            if verdict == "clear":
                buffered.extend(batch[index + 1:])  # replayed, errors checked there
                return buffered
    if any(_has_content(p) for p in buffered):
        return buffered  # a short answer that only began like the refusal
    raise _EmptyStream(0, "empty response", base_url=base_url)


def _answer_text(payloads: list[Payload]) -> str:
    texts: list[str] = []
    for payload in payloads:
        inner = payload.get("response")
        body = inner if isinstance(inner, Mapping) else payload
        for candidate in body.get("candidates") or []:
            content = candidate.get("content") if isinstance(candidate, Mapping) else None
            for part in (content or {}).get("parts") or []:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return "".join(texts)


async def _replay(
    buffered: list[Payload], batches: AsyncIterator[list[Payload]]
) -> AsyncGenerator[list[Payload], None]:
    """The buffered payloads as the first batch, then the rest as they come; an error the
    upstream sends mid-stream is raised after the payloads before it."""
    batch: list[Payload] | None = buffered
    while True:
        if batch is None:
            try:
                batch = await anext(batches)
            except StopAsyncIteration:
                return
        for index, payload in enumerate(batch):
            error = _error_of(payload)
            if error is not None:
                if index:
                    yield batch[:index]
                raise upstream_error(error)
        if batch:
            yield batch
        batch = None


def _error_as_http(error: Mapping[str, Any], base_url: str) -> UpstreamHTTPError:
    """An error inside a 200 stream, as the HTTP error it stands for (so it fails over)."""
    code = error.get("code")
    status = code if isinstance(code, int) and not isinstance(code, bool) and code >= 400 else 0
    if not status:
        status = _GOOGLE_STATUS_CODES.get(str(error.get("status", "")), 500)
    return UpstreamHTTPError(status, json.dumps({"error": dict(error)}), {}, base_url)


# -- errors --------------------------------------------------------------------------------


def _google_error(body: str) -> Mapping[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None


def _message(exc: UpstreamHTTPError) -> str:
    error = _google_error(exc.body)
    if error is not None:
        return upstream_error(error).message
    if exc.status == 0:
        return f"upstream unreachable ({exc.body})" if exc.body else "upstream unreachable"
    text = " ".join(exc.body.split())[:300]
    return f"upstream answered {exc.status}" + (f": {text}" if text else "")


def _mapped(exc: UpstreamHTTPError, kind: type[errors.GatewayError]) -> errors.GatewayError:
    return kind(_message(exc))


def _transient_error(exc: UpstreamHTTPError) -> errors.GatewayError:
    message = _message(exc)
    if isinstance(exc, _EmptyStream):
        return EmptyUpstreamResponse("upstream returned an empty response")
    if exc.status in (503, 529):
        return errors.Overloaded(message)
    if exc.status == 504 or (exc.status == 0 and exc.body in ("timeout", "stream stalled")):
        return errors.UpstreamTimeout(
            message if exc.status else "upstream timed out: no answer within the read timeout"
        )
    return errors.UpstreamError(message)


def _all_rate_limited(model: ModelInfo, retry_after: float) -> errors.RateLimited:
    seconds = max(1, math.ceil(retry_after))
    return errors.RateLimited(
        f"every account is rate-limited for {model.id}; retry in {seconds}s",
        retry_after=retry_after,
    )
