"""The load generator's own metrics on a Prometheus endpoint (`bench --prometheus-port`), for a Grafana that
shows them next to the server's.

Fed with the records as they are written (`observe`, a batch of newly ended requests at a time, read
from the run's records file by the live view about 4 times a second, whether one sender process writes it or
several); the gauges read the runner's live counters when scraped. Requests never sent (a stopped run) are
`requests_scheduled - requests_sent_total`.
Per-request values follow `burstgpt.metrics.requests` (seconds): TTFT = first_token_s - sent_s, TPOT =
(end_s - first_token_s) / (output_tokens - 1), end-to-end = end_s - sent_s, ITL = gaps between streamed chunks
(only with `--chunk-times`); latency histograms take succeeded requests only (as the summary's L does), the
dispatch lag (sent_s - scheduled_s) every sent request. Histogram buckets are vLLM's for the same quantities
(vllm/v1/metrics/loggers.py), so client and server histograms line up in one panel.

| metric                                            | type      | labels              |
|---------------------------------------------------|-----------|---------------------|
| burstgpt_client_requests_total                    | counter   | status, error_class |
| burstgpt_client_requests_sent_total               | counter   |                     |
| burstgpt_client_requests_scheduled                | gauge     | (workload rows)     |
| burstgpt_client_requests_in_flight                | gauge     |                     |
| burstgpt_client_prompt_tokens_total               | counter   | (sent requests)     |
| burstgpt_client_generation_tokens_total           | counter   | (tokens received)   |
| burstgpt_client_time_to_first_token_seconds       | histogram |                     |
| burstgpt_client_time_per_output_token_seconds     | histogram |                     |
| burstgpt_client_inter_token_latency_seconds       | histogram |                     |
| burstgpt_client_e2e_request_latency_seconds       | histogram |                     |
| burstgpt_client_dispatch_lag_seconds              | histogram |                     |

`error_class` is "" unless status is `failed`. The metrics live in the exporter's own `CollectorRegistry` (never
prometheus_client's global one), served on 127.0.0.1 by prometheus_client's HTTP server in a daemon thread;
updates and scrapes take one lock, so a scrape sees whole batches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from burstgpt.errors import BurstGPTError
from burstgpt.records import STATUS_FAILED, STATUS_OK
from burstgpt.records.buckets import VLLM_REQUEST_LATENCY_BUCKETS_S, VLLM_TPOT_BUCKETS_S, VLLM_TTFT_BUCKETS_S

PREFIX = "burstgpt_client"
#: Upper bounds (seconds) of the histogram buckets, vLLM's where vLLM has the same quantity.
TTFT_BUCKETS_S = VLLM_TTFT_BUCKETS_S
TOKEN_LATENCY_BUCKETS_S = VLLM_TPOT_BUCKETS_S
E2E_BUCKETS_S = VLLM_REQUEST_LATENCY_BUCKETS_S
#: Dispatch lag: sub-millisecond to seconds (issue 12's client-limited thresholds are 10 ms and 100 ms).
DISPATCH_LAG_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


#: The per-request values of `EndedRequests`, in the order of its `values` rows.
VALUE_NAMES = ("end_s", "sent_s", "dispatch_lag_s", "ttft_s", "tpot_s", "e2e_s")


@dataclass(frozen=True)
class EndedRequests:
    """A batch of ended requests, reduced once for the exporter and the live view.

    `values`: shape (len(VALUE_NAMES), n), seconds, NaN where a request has none: end_s, sent_s, dispatch lag
    (sent requests), and TTFT, TPOT, end-to-end (succeeded requests only, as the summary's L) with the
    definitions of `burstgpt.metrics.requests`. `itl_s`: the gaps between streamed chunks of the succeeded
    requests that recorded chunk times.
    """

    counts: dict[tuple[str, str], int]  # (status, error_class or "") -> requests
    prompt_tokens: int  # of the sent requests
    generation_tokens: int
    values: np.ndarray
    itl_s: np.ndarray

    @classmethod
    def from_records(cls, records: pl.DataFrame) -> EndedRequests:
        """From a frame with the request-record columns (`burstgpt.records`)."""
        sent = pl.col("sent_s")
        ok = pl.col("status") == STATUS_OK
        out = pl.col("output_tokens")
        values = records.select(
            pl.col("end_s"),
            sent,
            (sent - pl.col("scheduled_s")).alias("dispatch_lag_s"),
            pl.when(ok).then(pl.col("first_token_s") - sent).alias("ttft_s"),
            pl.when(ok & (out > 1)).then((pl.col("end_s") - pl.col("first_token_s")) / (out - 1)).alias("tpot_s"),
            pl.when(ok).then(pl.col("end_s") - sent).alias("e2e_s"),
            pl.when(sent.is_not_null()).then(pl.col("input_tokens")).fill_null(0).cast(pl.Float64).alias("prompt"),
            out.fill_null(0).cast(pl.Float64).alias("generated"),
        ).to_numpy().T  # nulls become NaN
        failed_class = pl.when(pl.col("status") == STATUS_FAILED).then(pl.col("error_class").fill_null("other"))
        counts = records.group_by("status", failed_class.fill_null("").alias("error_class")).len().rows()
        itl = np.empty(0)
        if "chunk_times_s" in records.columns and records["chunk_times_s"].null_count() < records.height:
            itl = (records.filter(ok).select(pl.col("chunk_times_s").list.diff(null_behavior="drop"))
                   .explode("chunk_times_s")["chunk_times_s"].drop_nulls().to_numpy())
        return cls(counts={(status, error_class): count for status, error_class, count in counts},
                   prompt_tokens=int(values[6].sum()), generation_tokens=int(values[7].sum()),
                   values=np.ascontiguousarray(values[:6]), itl_s=itl)

    def column(self, name: str) -> np.ndarray:
        """One of VALUE_NAMES, NaN where a request has none."""
        return self.values[VALUE_NAMES.index(name)]


class BucketCounts:
    """A histogram's state: counts per bucket (the last one +Inf, not cumulative), the sum and the count."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self.sum = 0.0

    def add_many(self, values: np.ndarray) -> None:
        if values.size:
            # side="left": a value equal to a bound belongs to that bucket (Prometheus buckets are `le`).
            index = np.searchsorted(self.bounds, values, side="left")
            self.counts += np.bincount(index, minlength=self.counts.size)
            self.sum += float(values.sum())

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative = np.cumsum(self.counts).tolist()
        buckets = [(repr(bound), count) for bound, count in zip(self.bounds, cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum)


class ClientMetricsExporter(Collector):
    """The client's counters and histograms in a registry of their own; `start()` serves them on 127.0.0.1.

    `sent`, `in_flight` and `scheduled`: callables read at scrape time (the runner's live counters), so the
    gauges never lag the run; unset, they read 0.
    """

    HISTOGRAMS = {  # attribute -> (metric name suffix, documentation, buckets)
        "ttft": ("time_to_first_token_seconds", "Time to first token of succeeded requests (client side).",
                 TTFT_BUCKETS_S),
        "tpot": ("time_per_output_token_seconds", "Time per output token after the first, succeeded requests.",
                 TOKEN_LATENCY_BUCKETS_S),
        "itl": ("inter_token_latency_seconds", "Gaps between streamed chunks of succeeded requests "
                "(recorded with --chunk-times only).", TOKEN_LATENCY_BUCKETS_S),
        "e2e": ("e2e_request_latency_seconds", "End-to-end latency of succeeded requests, send to last byte.",
                E2E_BUCKETS_S),
        "dispatch_lag": ("dispatch_lag_seconds", "How late the client sent each request after its scheduled "
                         "time.", DISPATCH_LAG_BUCKETS_S),
    }

    def __init__(self, *, sent: Callable[[], int] | None = None, in_flight: Callable[[], int] | None = None,
                 scheduled: Callable[[], int] | None = None) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}  # (status, error_class or "") -> requests ended
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.histograms = {key: BucketCounts(bounds) for key, (_, _, bounds) in self.HISTOGRAMS.items()}
        self.read_sent = sent or (lambda: 0)
        self.read_in_flight = in_flight or (lambda: 0)
        self.read_scheduled = scheduled or (lambda: 0)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._server = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self.host = "127.0.0.1"

    def watch(self, counters) -> None:
        """Read the gauges from `counters` (an object with `sent`, `in_flight` and `scheduled`, such as the
        runner's `LiveCounters`) at every scrape."""
        self.read_sent = lambda: counters.sent
        self.read_in_flight = lambda: counters.in_flight
        self.read_scheduled = lambda: counters.scheduled

    # -- feeding ------------------------------------------------------------------------------------------
    def observe(self, ended: EndedRequests) -> None:
        """Count a batch of ended requests."""
        with self._lock:
            for key, count in ended.counts.items():
                self.requests[key] = self.requests.get(key, 0) + count
            self.prompt_tokens += ended.prompt_tokens
            self.generation_tokens += ended.generation_tokens
            for name in ("dispatch_lag", "ttft", "tpot", "e2e"):
                values = ended.column(f"{name}_s")
                self.histograms[name].add_many(values[~np.isnan(values)])
            self.histograms["itl"].add_many(ended.itl_s)

    # -- exposition ---------------------------------------------------------------------------------------
    def collect(self) -> Iterator:
        """prometheus_client's collector hook: the current values, taken under the lock."""
        with self._lock:
            requests = CounterMetricFamily(f"{PREFIX}_requests", "Requests ended, by status (ok, failed, "
                                           "cancelled, not_sent) and failure class.",
                                           labels=("status", "error_class"))
            seen = dict(self.requests)
            seen.setdefault((STATUS_OK, ""), 0)  # the series exists from the first scrape on
            for (status, error_class), count in sorted(seen.items()):
                requests.add_metric((status, error_class), count)
            families = [
                requests,
                CounterMetricFamily(f"{PREFIX}_prompt_tokens", "Prompt tokens of the requests sent.",
                                    value=self.prompt_tokens),
                CounterMetricFamily(f"{PREFIX}_generation_tokens", "Output tokens received.",
                                    value=self.generation_tokens),
            ]
            families += [self.histograms[key].family(f"{PREFIX}_{suffix}", documentation)
                         for key, (suffix, documentation, _) in self.HISTOGRAMS.items()]
        families += [
            CounterMetricFamily(f"{PREFIX}_requests_sent", "Requests sent so far.", value=self.read_sent()),
            GaugeMetricFamily(f"{PREFIX}_requests_scheduled", "Requests in the workload.",
                              value=self.read_scheduled()),
            GaugeMetricFamily(f"{PREFIX}_requests_in_flight", "Requests sent and not yet ended.",
                              value=self.read_in_flight()),
        ]
        yield from families

    def start(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Serve /metrics on `host`:`port` (0: a free port) in a daemon thread; returns the port."""
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise BurstGPTError(f"--prometheus-port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}") \
                from None
        self.port = int(self._server.server_port)
        self.host = host
        return self.port

    @property
    def url(self) -> str | None:
        """The /metrics URL once started."""
        return None if self.port is None else f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving (the values stay readable through `registry`)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> ClientMetricsExporter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
