"""Prometheus metrics of one server (its own registry, so several servers in one process -- tests -- stay apart):
requests by endpoint and status, queue depth, running rows, decode batch sizes, TTFT, time per output token,
generated tokens, and the bank generation being served."""
from __future__ import annotations

from kvi_engine.utils.extras import require

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self):
        prom = require("prometheus_client", "serve", "kvi serve's /metrics")
        self._prom = prom
        self.registry = r = prom.CollectorRegistry()
        self.requests = prom.Counter("kvi_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                     registry=r)
        self.queue_depth = prom.Gauge("kvi_queue_depth", "requests waiting for a batch row", registry=r)
        self.running = prom.Gauge("kvi_running_rows", "rows (choices) in the running batch", registry=r)
        self.batch_size = prom.Histogram("kvi_batch_size", "rows per decode step", buckets=_BATCH, registry=r)
        self.prefill_size = prom.Histogram("kvi_prefill_batch_size", "requests per prefill", buckets=_BATCH,
                                           registry=r)
        self.ttft = prom.Histogram("kvi_time_to_first_token_seconds", "submission to first token", buckets=_LATENCY,
                                   registry=r)
        self.tpot = prom.Histogram("kvi_time_per_output_token_seconds", "mean time per token after the first",
                                   buckets=_PER_TOKEN, registry=r)
        self.e2e = prom.Histogram("kvi_request_latency_seconds", "submission to last token", buckets=_LATENCY,
                                  registry=r)
        self.tokens = prom.Counter("kvi_generated_tokens", "tokens generated", registry=r)
        self.generation = prom.Gauge("kvi_bank_generation", "bank generation of the running batch", registry=r)

    def render(self) -> tuple[bytes, str]:
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
