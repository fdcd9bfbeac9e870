"""Scrape a serving engine's Prometheus `/metrics` while a run lasts, into the server-metrics layout of
`burstgpt.records` (server metrics) on the records' clock.

Metric names per column, in order of preference. vLLM names are those the issue lists (plus the older
`vllm:gpu_cache_usage_perc`); SGLang names were checked in sgl-project/sglang
`python/sglang/srt/metrics/collector.py` (SchedulerMetricsCollector / TokenizerMetricsCollector); TGI names
in huggingface/text-generation-inference `router/src/infer/v3/queue.rs` (tgi_queue_size),
`router/src/infer/v3/scheduler.rs` (tgi_batch_current_size) and the router's `tgi_request_input_length` /
`tgi_request_generated_tokens` histograms (their `_sum` is the cumulative token count). TGI exposes no KV-cache
usage gauge. SGLang's "retracted" requests are its preemptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import polars as pl
from prometheus_client.parser import text_string_to_metric_families

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
_WANTED = tuple(sorted({name for names, _ in SERVER_METRIC_SOURCES.values() for name in names}))


def parse_server_metrics(text: str) -> dict[str, float | None]:
    """One scrape's values per server-metrics column (None where the server exposes none of its names).

    Only the lines of wanted metrics are handed to prometheus_client's parser: a vLLM exposition is mostly
    histogram buckets, and parsing all of it every second would steal the event loop from the dispatcher.
    """
    lines = [line for line in text.splitlines() if line.startswith(_WANTED)]
    values: dict[str, list[float]] = {}
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            values.setdefault(sample.name, []).append(float(sample.value))
    row: dict[str, float | None] = {}
    for column, (names, how) in SERVER_METRIC_SOURCES.items():
        row[column] = None
        for name in names:
            if name in values:
                found = values[name]
                row[column] = sum(found) / len(found) if how == "mean" else sum(found)
                break
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
        """The scraped rows in the `burstgpt.records` server-metrics layout (zero rows when nothing was scraped)."""
        return pl.DataFrame(self.rows, schema=SERVER_METRICS_SCHEMA)
