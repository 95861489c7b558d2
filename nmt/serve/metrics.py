"""The service's figures in Prometheus' text format (GET /metrics): requests by endpoint and status, request
latency, sentences translated, sentences and requests per search, and the queue's length. In a stream
(`nmt.serve.batcher`) a "search" is one joining: the requests that joined at once, and the decoder steps until the
next ones joined.

Each app has a registry of its own (not prometheus_client's global one), so that several apps in one process,
as in the tests, count apart. Labels take only values the server chose (the route, a served model's name),
never a client's text, so a client cannot make the series grow without bound.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Implements `nmt.serve.batcher.BatchObserver` for the workers' figures."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, endpoints: tuple[str, ...]):
        self.endpoints = endpoints
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("nmt_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=reg)
        self.latency = Histogram("nmt_request_seconds", "Time from a request's arrival to the end of its answer",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=reg)
        self.in_progress = Gauge("nmt_requests_in_progress", "HTTP requests being answered", registry=reg)
        self.sentences = Counter("nmt_sentences", "Sentences translated", ["model"], registry=reg)
        self.batch_sentences = Histogram("nmt_batch_sentences", "Sentences per search (a stream: per joining)",
                                         ["model"], buckets=SIZE_BUCKETS, registry=reg)
        self.batch_requests = Histogram("nmt_batch_requests", "Requests per search (a stream: per joining)", ["model"],
                                        buckets=SIZE_BUCKETS, registry=reg)
        self.search_seconds = Histogram("nmt_search_seconds",
                                        "Time of one search (a stream: its steps until the next joining)", ["model"],
                                        buckets=LATENCY_BUCKETS, registry=reg)
        self.queue = Gauge("nmt_queue_sentences", "Sentences waiting for a search", ["model"], registry=reg)

    def queued(self, model: str, sentences: int) -> None:
        self.queue.labels(model).set(sentences)

    def searched(self, model: str, requests: int, sentences: int, seconds: float) -> None:
        self.sentences.labels(model).inc(sentences)
        self.batch_sentences.labels(model).observe(sentences)
        self.batch_requests.labels(model).observe(requests)
        self.search_seconds.labels(model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def endpoint(self, path: str) -> str:
        return path if path in self.endpoints else "other"


class RequestMetrics:
    """ASGI middleware that counts every HTTP request by endpoint and status and times it, including the ones
    refused before any route ran (an oversized body, a malformed one)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self.metrics.endpoint(scope["path"])
        status = 500  # what the client sees if the app fails before answering
        start = time.perf_counter()

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.in_progress.dec()
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
