"""Prometheus metrics: HTTP traffic per route, and what the engine's batches do."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cenote.engine.async_engine import BatchStats

if TYPE_CHECKING:
    from cenote.server.context import ServedModel

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TOKEN_BUCKETS = tuple(2 ** k for k in range(3, 16))
_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    """The server's metrics, in a registry of their own (one per app). The batch metrics
    are labelled by model (its first served name) and engine (its number among the
    model's data-parallel engines); the queue gauges sum over all engines."""

    def __init__(self, models: list[ServedModel]) -> None:
        engines = [model.engine for model in models]
        self.registry = CollectorRegistry()
        r = self.registry
        # The process's memory, CPU time, open files and GC, as on a default registry.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.requests = Counter("cenote_requests", "HTTP requests by route and status code.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("cenote_request_duration_seconds",
                                 "Time from request received to response sent, by route.",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        waiting_seqs = Gauge("cenote_queue_waiting_sequences",
                             "Sequences queued and not yet in a batch.", registry=r)
        waiting_seqs.set_function(lambda: sum(e.num_waiting_seqs for e in engines))
        waiting_tokens = Gauge("cenote_queue_waiting_tokens",
                               "Tokens queued and not yet in a batch.", registry=r)
        waiting_tokens.set_function(lambda: sum(e.num_waiting_tokens for e in engines))
        alive = Gauge("cenote_engines_alive", "Engines taking work, by model.", ["model"],
                      registry=r)
        for model in models:
            alive.labels(model.names[0]).set_function(lambda e=model.engine: e.num_alive)
        labels = ["model", "engine"]
        self.batch_tokens = Histogram("cenote_batch_tokens", "Tokens per executed batch.",
                                      labels, buckets=_TOKEN_BUCKETS, registry=r)
        self.batch_seqs = Histogram("cenote_batch_sequences", "Sequences per executed batch.",
                                    labels, buckets=_COUNT_BUCKETS, registry=r)
        self.batch_requests = Histogram(
            "cenote_batch_requests",
            "Requests sharing an executed batch (above 1 means continuous batching at work).",
            labels, buckets=_COUNT_BUCKETS, registry=r)
        self.batch_seconds = Histogram("cenote_batch_duration_seconds",
                                       "Time the model took per batch.",
                                       labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("cenote_tokens_processed", "Tokens run through the model.",
                              ["model", "engine", "pooling_task"], registry=r)
        for model in models:
            model.engine.on_batch = (
                lambda stats, name=model.names[0]: self.observe_batch(stats, name))

    def observe_batch(self, stats: BatchStats, model: str) -> None:
        """An engine's ``on_batch`` observer (called from its worker or reader thread)."""
        labels = (model, str(stats.engine))
        self.batch_tokens.labels(*labels).observe(stats.num_tokens)
        self.batch_seqs.labels(*labels).observe(stats.num_seqs)
        self.batch_requests.labels(*labels).observe(stats.num_requests)
        self.batch_seconds.labels(*labels).observe(stats.seconds)
        self.tokens.labels(*labels, stats.pooling_task).inc(stats.num_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StatusWatch:
    """An ASGI ``send`` that notes the status a request was answered with: 499 while
    none was sent (the client left first), 500 if the app raised before answering."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 499

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive) -> None:
        """``app`` answering through this watch."""
        try:
            await app(scope, receive, self)
        except BaseException:
            if self.status == 499:  # raised before any answer
                self.status = 500
            raise


class MetricsMiddleware:
    """Counts every HTTP request by matched route and status, and times it.

    A plain ASGI middleware (not ``BaseHTTPMiddleware``) so it adds microseconds,
    not a task per request. Paths that match no route share one label. A
    request whose client left before any answer counts as 499 (nginx's
    "client closed request"), not as a server error.
    """

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        watched = StatusWatch(send)
        try:
            await watched.run(self.app, scope, receive)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(watched.status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
