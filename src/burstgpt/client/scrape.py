"""Scrape a serving engine's Prometheus `/metrics` while a run lasts, into the server-metrics layout of
`burstgpt.records` (server metrics) on the records' clock.

Metric names per column, in order of preference. vLLM names are those the issue lists (plus the older
`vllm:gpu_cache_usage_perc`); SGLang names were checked in sgl-project/sglang
`python/sglang/srt/metrics/collector.py` (SchedulerMetricsCollector / TokenizerMetricsCollector); TGI names
in huggingface/text-generation-inference `router/src/infer/v3/queue.rs` (tgi_queue_size),
`router/src/infer/v3/scheduler.rs` (tgi_batch_current_size) and the router's `tgi_request_input_length` /
`tgi_request_generated_tokens` histograms (their `_sum` is the cumulative token count). TGI exposes no KV-cache
usage gauge. SGLang's "retracted" requests are its preemptions.

vLLM's step-level metrics (vllm/v1/metrics/loggers.py) are kept too, as extra columns after the standard ones
(`STEP_METRIC_SOURCES`; dropped when the server has none): the sum and count of the tokens-per-step histogram
(its count is the number of engine steps) and of the per-request queue, prefill and decode time histograms, and
the engine settings from `vllm:cache_config_info` (`parse_engine_settings` reads all of that gauge's labels).
`burstgpt calibrate` fits the simulator's step times from them and the chunk times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import polars as pl
from prometheus_client.parser import text_string_to_metric_families

from burstgpt.errors import BurstGPTError
from burstgpt.records import SERVER_METRICS_SCHEMA

#: column -> (Prometheus sample names tried in order, how label sets combine: "mean" or "sum").
SERVER_METRIC_SOURCES: dict[str, tuple[tuple[str, ...], str]] = {
    "kv_cache_usage_perc": (("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"), "mean"),
    "num_requests_running": (
        ("vllm:num_requests_running", "sglang:num_running_reqs", "tgi_batch_current_size"),
        "sum",
    ),
    "num_requests_waiting": (("vllm:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size"), "sum"),
    "num_preemptions_total": (("vllm:num_preemptions_total", "sglang:num_retracted_requests_total"), "sum"),
    "prompt_tokens_total": (
        ("vllm:prompt_tokens_total", "sglang:prompt_tokens_total", "tgi_request_input_length_sum"),
        "sum",
    ),
    "generation_tokens_total": (
        ("vllm:generation_tokens_total", "sglang:generation_tokens_total", "tgi_request_generated_tokens_sum"),
        "sum",
    ),
}
#: Extra column -> Prometheus sample name (vLLM's step-level histograms; label sets summed).
STEP_METRIC_SOURCES: dict[str, str] = {
    "iteration_tokens_sum": "vllm:iteration_tokens_total_sum",
    "iteration_tokens_count": "vllm:iteration_tokens_total_count",
    "request_queue_time_sum": "vllm:request_queue_time_seconds_sum",
    "request_queue_time_count": "vllm:request_queue_time_seconds_count",
    "request_prefill_time_sum": "vllm:request_prefill_time_seconds_sum",
    "request_prefill_time_count": "vllm:request_prefill_time_seconds_count",
    "request_decode_time_sum": "vllm:request_decode_time_seconds_sum",
    "request_decode_time_count": "vllm:request_decode_time_seconds_count",
    # Prefix caching (counters, tokens): prompt tokens looked up in and found in the prefix cache.
    "prefix_cache_queries_total": "vllm:prefix_cache_queries_total",
    "prefix_cache_hits_total": "vllm:prefix_cache_hits_total",
}
CACHE_CONFIG_INFO = "vllm:cache_config_info"
#: Extra columns taken from `vllm:cache_config_info`'s labels (vLLM has the first two; `serve-sim` all).
CACHE_CONFIG_COLUMNS = ("num_gpu_blocks", "block_size", "max_num_seqs", "max_num_batched_tokens", "max_model_len")
#: The scraper's frame: the standard server-metrics layout, then the step-level columns.
SCRAPED_SCHEMA: dict[str, pl.DataType] = {
    **SERVER_METRICS_SCHEMA, **{name: pl.Float64() for name in (*STEP_METRIC_SOURCES, *CACHE_CONFIG_COLUMNS)},
}
_WANTED = tuple(sorted({name for names, _ in SERVER_METRIC_SOURCES.values() for name in names}
                       | set(STEP_METRIC_SOURCES.values()) | {CACHE_CONFIG_INFO}))


def _setting_value(text: str):
    """A `cache_config_info` label value as int, float, bool or None where it reads as one, else the text."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_engine_settings(text: str) -> dict:
    """The engine settings a Prometheus exposition carries as `vllm:cache_config_info` labels (num_gpu_blocks,
    block_size, gpu_memory_utilization, enable_prefix_caching, ...; `engine` left out), values typed; {} when
    it has none."""
    lines = [line for line in text.splitlines() if line.startswith(CACHE_CONFIG_INFO)]
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            return {name: _setting_value(value) for name, value in sorted(sample.labels.items()) if name != "engine"}
    return {}


def parse_server_metrics(text: str) -> dict[str, float | None]:
    """One scrape's values per server-metrics column (None where the server exposes none of its names).

    Only the lines of wanted metrics are handed to prometheus_client's parser: a vLLM exposition is mostly
    histogram buckets, and parsing all of it every second would steal the event loop from the dispatcher.
    """
    lines = [line for line in text.splitlines() if line.startswith(_WANTED) and "_bucket{" not in line]
    values: dict[str, list[float]] = {}
    settings: dict = {}
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            if sample.name == CACHE_CONFIG_INFO:
                settings = {name: _setting_value(value) for name, value in sample.labels.items()}
                continue
            values.setdefault(sample.name, []).append(float(sample.value))
    row: dict[str, float | None] = {}
    for column, (names, how) in SERVER_METRIC_SOURCES.items():
        row[column] = None
        for name in names:
            if name in values:
                found = values[name]
                row[column] = sum(found) / len(found) if how == "mean" else sum(found)
                break
    for column, name in STEP_METRIC_SOURCES.items():
        row[column] = sum(values[name]) if name in values else None
    for column in CACHE_CONFIG_COLUMNS:
        value = settings.get(column)
        row[column] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return row


class ServerMetricsScraper:
    """Polls `url` every `interval_s` seconds (absolute deadlines) until cancelled; rows are timed on the
    loop clock relative to `t0`. A missing or failing endpoint is reported once through `warn`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        t0: float,
        *,
        interval_s: float = 1.0,
        headers: dict | None = None,
        warn: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.session = session
        self.url = url
        self.t0 = t0
        self.interval_s = interval_s
        self.headers = headers or {}
        self.warn = warn
        self.rows: list[dict] = []
        self.failures = 0
        self._warned = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        tick = 0
        while True:
            await self.scrape_once()
            tick += 1
            await asyncio.sleep(max(0.0, self.t0 + tick * self.interval_s - loop.time()))

    async def scrape_once(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(self.interval_s, 1.0)):
                async with self.session.get(self.url, headers=self.headers) as response:
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}")
                    text = await response.text()
            row = parse_server_metrics(text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure here is only a warning: the run goes on without server metrics
            self.failures += 1
            if not self._warned:
                self._warned = True
                self.warn(f"server metrics unavailable from {self.url}: {exc.__class__.__name__}: {exc}")
            return
        if all(value is None for value in row.values()):
            if not self._warned:
                self._warned = True
                self.warn(f"{self.url} has none of the known vLLM/SGLang/TGI metrics")
            return
        row["time_s"] = loop.time() - self.t0
        self.rows.append(row)

    def frame(self) -> pl.DataFrame:
        """The scraped rows in the `burstgpt.records` server-metrics layout (zero rows when nothing was scraped),
        followed by the step-level columns the server exposes (`STEP_METRIC_SOURCES`, `CACHE_CONFIG_COLUMNS`)."""
        frame = pl.DataFrame(self.rows, schema=SCRAPED_SCHEMA)
        extra = [name for name in SCRAPED_SCHEMA if name not in SERVER_METRICS_SCHEMA]
        empty = [name for name in extra if frame.height == 0 or frame[name].null_count() == frame.height]
        return frame.drop(empty)


async def wait_until_idle(fetch_metrics_text, timeout_s: float, *, poll_s: float = 0.05,
                          busy_hint: str = "other traffic?") -> dict[str, float | None]:
    """Poll `fetch_metrics_text()` (an async callable returning a /metrics body, or None when it cannot be read,
    which counts as an empty scrape) until the server runs and queues nothing (a count it does not expose counts
    as zero); return that scrape's `parse_server_metrics` row. `BurstGPTError` naming `busy_hint` after
    `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = await fetch_metrics_text()
        row = parse_server_metrics(text) if text is not None else {}
        running, waiting = row.get("num_requests_running"), row.get("num_requests_waiting")
        if not running and not waiting:
            return row
        if time.monotonic() > deadline:
            raise BurstGPTError(f"the server did not become idle within {timeout_s:g} s (running {running or 0:g}, "
                                f"waiting {waiting or 0:g}; {busy_hint})")
        await asyncio.sleep(poll_s)
