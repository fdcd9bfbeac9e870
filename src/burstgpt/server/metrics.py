"""`serve-sim`'s Prometheus exposition: vLLM's metric names, labels (`model_name`, `engine="0"`) and histogram
buckets (vllm/v1/metrics/loggers.py), updated after every engine step. Latency histograms are in wall seconds."""

from __future__ import annotations

import prometheus_client

from burstgpt.server.realtime import DONE, LiveRequest
from burstgpt.sim.engine import ServingEngine

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                 40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                480.0, 960.0, 1920.0, 7680.0)

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST


class EngineMetrics:
    """vLLM's Prometheus metrics of one engine. `time_scale`: simulated seconds per wall second."""

    def __init__(self, model_name: str, num_gpu_blocks: int, time_scale: float = 1.0) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.num_gpu_blocks = num_gpu_blocks
        self.time_scale = time_scale
        labels = ["model_name", "engine"]
        values = (model_name, "0")
        reg = self.registry

        def gauge(name, doc):
            return prometheus_client.Gauge(name, doc, labels, registry=reg).labels(*values)

        def counter(name, doc):
            return prometheus_client.Counter(name, doc, labels, registry=reg).labels(*values)

        def histogram(name, doc, buckets):
            return prometheus_client.Histogram(name, doc, labels, buckets=buckets, registry=reg).labels(*values)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.success = counter("vllm:request_success", "Count of successfully processed requests.")
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              _TTFT_BUCKETS)
        self.tpot = histogram("vllm:time_per_output_token_seconds",
                              "Histogram of time per output token in seconds.", _TPOT_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             _E2E_BUCKETS)
        self._preemptions_seen = 0

    def on_step(self, engine: ServingEngine, ended: list[tuple[LiveRequest, int]]) -> None:
        """Update from the engine after a step; `ended`: the requests that ended in it, with their states."""
        self.running.set(engine.num_running)
        self.waiting.set(engine.num_waiting)
        self.kv_usage.set(engine.kv_blocks_used / self.num_gpu_blocks)
        self.preemptions.inc(engine.total_preemptions - self._preemptions_seen)
        self._preemptions_seen = engine.total_preemptions
        if engine.last_emitted:
            self.generation_tokens.inc(len(engine.last_emitted))
        if engine.last_first_tokens:
            self.prompt_tokens.inc(sum(engine.prompt[rid] for rid in engine.last_first_tokens))
        wall_per_sim = 1.0 / self.time_scale
        for live, state in ended:
            if state != DONE:
                continue
            rid = live.engine_id
            first, end = engine.first_token[rid], engine.end[rid]
            self.success.inc()
            self.ttft.observe((first - live.arrival_s) * wall_per_sim)
            self.e2e.observe((end - live.arrival_s) * wall_per_sim)
            generated = engine.generated[rid]
            if generated > 1:
                self.tpot.observe((end - first) * wall_per_sim / (generated - 1))

    def exposition(self) -> bytes:
        """The Prometheus text of every metric."""
        return prometheus_client.generate_latest(self.registry)
