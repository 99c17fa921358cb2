"""Prometheus metrics of one app (a registry of its own, so two apps in a process never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKEN_BUCKETS = tuple(2**i for i in range(4, 17))  # 16 to 65,536 tokens


class Metrics:
    """Requests, errors, tokens, batch sizes, queue depth and latency, per endpoint or model."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "qwen3_rag_requests",
            "HTTP requests answered, by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.errors = Counter(
            "qwen3_rag_request_errors",
            "Requests answered with an error (status >= 400), by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "qwen3_rag_request_duration_seconds",
            "Time from the request's arrival to its answer, by endpoint",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "qwen3_rag_input_tokens",
            "Tokens the model saw for the requests it served, by model",
            ["model"],
            registry=r,
        )
        self.batch_rows = Histogram(
            "qwen3_rag_batch_rows",
            "Inputs per forward, by model",
            ["model"],
            buckets=_ROW_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "qwen3_rag_batch_tokens",
            "Tokens per forward (not counting a shared prefix), by model",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "qwen3_rag_queue_depth",
            "Requests queued or running, by model",
            ["model"],
            registry=r,
        )

    def on_batch(self, model: str, rows: int, tokens: int) -> None:
        """Record one forward."""
        self.batch_rows.labels(model).observe(rows)
        self.batch_tokens.labels(model).observe(tokens)

    def on_depth(self, model: str, depth: int) -> None:
        """Record the queue depth."""
        self.queue_depth.labels(model).set(depth)

    def on_answer(self, endpoint: str, status: int, seconds: float) -> None:
        """Record one answered request."""
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
