"""Prometheus metrics: HTTP requests by route and status class, and the engine's own.

Base units throughout (seconds, samples). With several uvicorn workers set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before start (``distilwave serve`` does
it): every process writes its samples there and ``/metrics`` aggregates all of them.
Gauges say how they aggregate: queue depth sums over workers, readiness takes the minimum
(the service is ready only if every live worker is).
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REJECT_REASONS = (
    "queue_full",
    "stream_limit",
    "not_ready",
    "draining",
    "deadline",
    "disconnected",
    "stalled",
    "too_large",
    "body_timeout",
    "unauthorized",
    "invalid",
)
# Methods get their own label; any other (a client may send any token) shares "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class ServiceMetrics:
    """The engine's metrics, registered in ``registry`` (one registry per app)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.queue_wait = Histogram(
            "distilwave_queue_wait_seconds",
            "Time a request waited in the queue before its batch started.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "distilwave_inference_seconds",
            "Wall time of one batched generation (context, noise and flows).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "distilwave_batch_size",
            "Requests per generated batch.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256),
            registry=registry,
        )
        self.audio_seconds = Counter(
            "distilwave_generated_audio_seconds",
            "Seconds of audio generated.",
            registry=registry,
        )
        self.real_time_factor = Histogram(
            "distilwave_real_time_factor",
            "Compute seconds per second of audio generated, per batch (below 1 is faster "
            "than real time).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "distilwave_queue_depth",
            "Requests waiting for the inference thread.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "distilwave_rejected_requests",
            "Requests refused before generation, by reason.",
            ["reason"],
            registry=registry,
        )
        self.model_ready = Gauge(
            "distilwave_model_ready",
            "1 once the bundle is loaded and warmed up, 0 before and while draining.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)
        self.model_ready.set(0)
        self.queue_depth.set(0)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason=reason).inc()


class HTTPMetricsMiddleware:
    """Request counts and latency histograms per route template, method and status class.

    (prometheus-fastapi-instrumentator 7.1 cannot resolve routes of FastAPI >= 0.16x's
    included routers, so this reads the route FastAPI records in the scope.) The latency is
    until the last body byte is sent, streams included. The label sets are bounded whatever
    clients send: unmatched paths share one handler label, unknown methods one method label.
    """

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        labels = ["method", "handler", "status"]
        self.requests = Counter(
            "http_requests",
            "HTTP requests by method, route and status class.",
            labels,
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request duration until the response ended, by method, route and status class.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            handler = getattr(route, "path", None) or "none"
            if handler != "/metrics":
                method = scope["method"] if scope["method"] in METHODS else "other"
                labels = (method, handler, f"{status[0] // 100}xx")
                self.requests.labels(*labels).inc()
                self.latency.labels(*labels).observe(time.perf_counter() - started)


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition of this app's metrics, or of every worker's in multiprocess mode."""
    if multiprocess_mode():
        collected = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(collected)
        return generate_latest(collected), CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Drop a finished worker's live gauges (multiprocess mode only)."""
    if multiprocess_mode():
        prom_multiprocess.mark_process_dead(pid)
