"""Prometheus metrics for one gateway instance (served at GET /metrics).

Each app owns its own registry, so several gateways in one process (tests, the demo) never
share counters. Account labels are hashed handles, never emails; model labels are bounded
by the catalogue, route labels by the code.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests_total",
            "Chat requests by route, model and final status",
            ["route", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_request_seconds",
            "Whole-request latency",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_byte = Histogram(
            "gateway_time_to_first_byte_seconds",
            "Time from request to the first response byte of a stream",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "gateway_upstream_first_payload_seconds",
            "Time from opening an upstream stream to its first payload",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "gateway_open_streams", "Chat requests in flight", registry=self.registry
        )
        # how streamed answers' chunks went out: straight to the socket (HTTP/1.1) or
        # through hypercorn's per-message path (h2, HTTP/1.0); counted once per answer
        self.streamed_bodies = Counter(
            "gateway_streamed_bodies_total",
            "Streamed answers by how their chunks were written",
            ["path"],
            registry=self.registry,
        )
        # made once (and shown from the start at 0): no label lookup per answer
        self.streamed_direct = self.streamed_bodies.labels("direct")
        self.streamed_asgi = self.streamed_bodies.labels("asgi")
        self.token_refreshes = Counter(
            "gateway_token_refreshes_total",
            "Access-token refreshes by result",
            ["result"],
            registry=self.registry,
        )
        self.version_refusals = Counter(
            "gateway_upstream_version_refusals_total",
            "Upstream answers refusing the gateway's client version (upstream.user_agent)",
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "Upstream failures seen by the dispatcher, by status",
            ["status"],
            registry=self.registry,
        )

        self.state_mode = Gauge(
            "gateway_state_mode",
            "Where the shared state lives: 1 for the current mode (local, redis, "
            "local-fallback)",
            ["mode"],
            registry=self.registry,
        )
        self.state_errors = Counter(
            "gateway_state_errors_total",
            "Shared-state (Redis) calls that failed or timed out",
            registry=self.registry,
        )

    def observe_request(
        self, *, route: str, model: str, status: int, seconds: float, first_byte: float | None
    ) -> None:
        self.requests.labels(route, model, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if first_byte is not None:
            self.first_byte.labels(route).observe(first_byte)

    def watch_cooldowns(self, read: Callable[[], dict[tuple[str, str], float]]) -> None:
        """Export per-account, per-model cooldown seconds read from the pool at scrape time."""
        self.registry.register(_CooldownCollector(read))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


class _CooldownCollector(Collector):
    def __init__(self, read: Callable[[], dict[tuple[str, str], float]]) -> None:
        self._read = read

    def collect(self):  # type: ignore[no-untyped-def]
        family = GaugeMetricFamily(
            "gateway_account_cooldown_seconds",
            "Seconds until an account may serve a model again",
            labels=["account", "model"],
        )
        for (account, model), seconds in sorted(self._read().items()):
            family.add_metric([account, model], seconds)
        yield family
