"""`serve-sim`'s Prometheus exposition: vLLM's metric names, labels (`model_name`, `engine="0"`) and histogram
buckets (vllm/v1/metrics/loggers.py and buckets.py), updated after every engine step. Latency histograms are in
wall seconds.

Besides the request metrics, what `burstgpt profile` and `calibrate` read from a real vLLM: the engine settings
as `vllm:cache_config_info` (a gauge set to 1 whose labels are the settings: num_gpu_blocks, block_size, ...; we
add max_num_seqs, max_num_batched_tokens and max_model_len, which vLLM does not expose), tokens per engine step
(`vllm:iteration_tokens_total`: prompt tokens computed + tokens generated in the step) and each finished
request's phases as vLLM times them (vllm/v1/metrics/stats.py): queue = first scheduled - arrival, prefill =
first token - first scheduled, decode = last token - first token, inference = last token - first scheduled.
"""

from __future__ import annotations

import prometheus_client

from burstgpt.records.buckets import VLLM_REQUEST_LATENCY_BUCKETS_S as _LATENCY_BUCKETS
from burstgpt.records.buckets import VLLM_TPOT_BUCKETS_S, VLLM_TTFT_BUCKETS_S
from burstgpt.server.realtime import DONE, LiveRequest
from burstgpt.sim.engine import EngineConfig, ServingEngine
from burstgpt.sim.latency import LatencyModel, StepRecorder

_ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST


class EngineMetrics:
    """vLLM's Prometheus metrics of one engine. `time_scale`: simulated seconds per wall second; `config`: the
    engine's settings, exposed as `vllm:cache_config_info` when given. The engine must time its steps with
    `self.step_timer(latency)` for the per-step metrics."""

    def __init__(self, model_name: str, num_gpu_blocks: int, time_scale: float = 1.0, *,
                 config: EngineConfig | None = None) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.num_gpu_blocks = num_gpu_blocks
        self._recorder: StepRecorder | None = None
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
        # As vLLM counts them (vllm/v1/metrics/stats.py PrefixCacheStats): prompt tokens looked up and found in
        # the prefix cache, at first admissions (a preempted request's resumption is not counted).
        self.prefix_queries = counter("vllm:prefix_cache_queries",
                                      "Prefix cache queries, in terms of number of queried tokens.")
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.")
        self._prefix_seen = (0, 0)
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              VLLM_TTFT_BUCKETS_S)
        self.tpot = histogram("vllm:time_per_output_token_seconds",
                              "Histogram of time per output token in seconds.", VLLM_TPOT_BUCKETS_S)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             _LATENCY_BUCKETS)
        self.iteration_tokens = histogram("vllm:iteration_tokens_total",
                                          "Histogram of number of tokens per engine_step.", _ITERATION_TOKENS_BUCKETS)
        self.queue_time = histogram("vllm:request_queue_time_seconds",
                                    "Histogram of time spent in WAITING phase for request.", _LATENCY_BUCKETS)
        self.inference_time = histogram("vllm:request_inference_time_seconds",
                                        "Histogram of time spent in RUNNING phase for request.", _LATENCY_BUCKETS)
        self.prefill_time = histogram("vllm:request_prefill_time_seconds",
                                      "Histogram of time spent in PREFILL phase for request.", _LATENCY_BUCKETS)
        self.decode_time = histogram("vllm:request_decode_time_seconds",
                                     "Histogram of time spent in DECODE phase for request.", _LATENCY_BUCKETS)
        if config is not None:
            settings = {"block_size": config.block_size, "num_gpu_blocks": config.num_gpu_blocks,
                        "max_num_seqs": config.max_num_seqs, "max_num_batched_tokens": config.max_num_batched_tokens,
                        "max_model_len": config.max_model_len, "enable_prefix_caching": config.enable_prefix_caching}
            info = prometheus_client.Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                           [*settings, "engine"], registry=reg)
            info.labels(*(str(value) for value in settings.values()), "0").set(1)
        self._preemptions_seen = 0

    def step_timer(self, latency: LatencyModel) -> StepRecorder:
        """`latency` wrapped so that each step's work is seen (for `vllm:iteration_tokens_total`): give the
        engine this instead of `latency`."""
        self._recorder = StepRecorder(latency, keep_all=False)
        return self._recorder

    def on_step(self, engine: ServingEngine, ended: list[tuple[LiveRequest, int]]) -> None:
        """Update from the engine after a step; `ended`: the requests that ended in it, with their states."""
        self.running.set(engine.num_running)
        self.waiting.set(engine.num_waiting)
        self.kv_usage.set(engine.kv_blocks_used / self.num_gpu_blocks)
        self.preemptions.inc(engine.total_preemptions - self._preemptions_seen)
        self._preemptions_seen = engine.total_preemptions
        if (engine.prefix_queries, engine.prefix_hits) != self._prefix_seen:
            self.prefix_queries.inc(engine.prefix_queries - self._prefix_seen[0])
            self.prefix_hits.inc(engine.prefix_hits - self._prefix_seen[1])
            self._prefix_seen = (engine.prefix_queries, engine.prefix_hits)
        if engine.last_emitted:
            self.generation_tokens.inc(len(engine.last_emitted))
        if engine.last_first_tokens:
            self.prompt_tokens.inc(sum(engine.prompt[rid] for rid in engine.last_first_tokens))
        recorder = self._recorder
        if recorder is not None and recorder.last is not None:
            self.iteration_tokens.observe(recorder.last[0] + len(engine.last_emitted))
            recorder.last = None  # one observation per step
        wall_per_sim = 1.0 / self.time_scale
        for live, state in ended:
            if state != DONE:
                continue
            rid = live.engine_id
            first, end = engine.first_token[rid], engine.end[rid]
            scheduled = engine.first_scheduled[rid]
            self.success.inc()
            self.ttft.observe((first - live.arrival_s) * wall_per_sim)
            self.e2e.observe((end - live.arrival_s) * wall_per_sim)
            self.queue_time.observe((scheduled - live.arrival_s) * wall_per_sim)
            self.prefill_time.observe((first - scheduled) * wall_per_sim)
            self.decode_time.observe((end - first) * wall_per_sim)
            self.inference_time.observe((end - scheduled) * wall_per_sim)
            generated = engine.generated[rid]
            if generated > 1:
                self.tpot.observe((end - first) * wall_per_sim / (generated - 1))

    def exposition(self) -> bytes:
        """The Prometheus text of every metric."""
        return prometheus_client.generate_latest(self.registry)
