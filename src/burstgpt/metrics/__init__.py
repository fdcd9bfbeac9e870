"""Metrics over request records (client or simulator): averages and instantaneous series of the paper's
R (failure rate), L (token latency) and P (throughput), goodput under SLOs, and the dispatch-lag and
offered-load series. Pure functions over Polars frames; see `requests`, `windows` and `server`."""

from burstgpt.metrics.requests import (
    Accounting,
    Stats,
    account_requests,
    average_metrics,
    derive_request_metrics,
    failure_rate,
    goodput,
    inter_token_latencies,
    metrics_by_turn,
    parse_slo,
    send_rate,
    summarize,
    throughput,
)
from burstgpt.metrics.server import summarize_server_metrics
from burstgpt.metrics.windows import window_series
from burstgpt.records import SERVER_METRICS_SCHEMA, conform_server_metrics, empty_server_metrics

__all__ = [
    "SERVER_METRICS_SCHEMA",
    "Accounting",
    "Stats",
    "account_requests",
    "average_metrics",
    "conform_server_metrics",
    "derive_request_metrics",
    "empty_server_metrics",
    "failure_rate",
    "goodput",
    "inter_token_latencies",
    "metrics_by_turn",
    "parse_slo",
    "send_rate",
    "summarize",
    "summarize_server_metrics",
    "throughput",
    "window_series",
]
