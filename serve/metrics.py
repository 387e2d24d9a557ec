"""Prometheus metrics of one server (prometheus_client, its own registry so several servers fit one process).

Names follow the Prometheus conventions (`hoe_` prefix, `_total` counters, seconds); GET /metrics renders them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("hoe_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"],
                                registry=r)
        self.finished = Counter("hoe_generations_finished", "generations ended, by finish reason", ["reason"],
                                registry=r)
        self.prompt_tokens = Counter("hoe_prompt_tokens", "prompt tokens prefilled", registry=r)
        self.generated_tokens = Counter("hoe_generated_tokens", "tokens generated", registry=r)
        self.queue_length = Gauge("hoe_queue_length", "requests waiting for a batch row", registry=r)
        self.batch_rows = Gauge("hoe_batch_rows", "rows in the running batch", registry=r)
        self.batch_capacity = Gauge("hoe_batch_capacity", "rows the running batch may hold (--max-batch)",
                                    registry=r)
        self.step_rows = Histogram("hoe_step_batch_rows", "rows per decode step (batch occupancy)",
                                   buckets=_BATCH_BUCKETS, registry=r)
        self.step_seconds = Histogram("hoe_step_seconds", "duration of one decode step", buckets=_LATENCY_BUCKETS,
                                      registry=r)
        self.ttft_seconds = Histogram("hoe_time_to_first_token_seconds", "request arrival to its first token",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.itl_seconds = Histogram("hoe_inter_token_latency_seconds", "time between two tokens of one request",
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.request_seconds = Histogram("hoe_request_seconds", "request arrival to its last token",
                                         buckets=_LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
