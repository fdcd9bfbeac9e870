"""Summary of a run's server metrics (`burstgpt.records` server-metrics layout): KV-cache usage, peak queue
lengths and counter increases over the run."""

from __future__ import annotations

import polars as pl

from burstgpt.metrics.requests import summarize
from burstgpt.records import SERVER_COUNTERS, conform_server_metrics


def summarize_server_metrics(server_metrics: pl.DataFrame | None) -> dict | None:
    """KV usage stats (fraction 0-1, with max), peak running/waiting requests, and each counter's increase
    over the run (named without `_total`); None without data. JSON-ready (`burstgpt.records.ServerSummary`)."""
    if server_metrics is None or server_metrics.height == 0:
        return None
    server = conform_server_metrics(server_metrics)
    out: dict = {"samples": server.height, "kv_cache_usage_perc": summarize(server["kv_cache_usage_perc"]).as_dict()}
    for name in ("num_requests_running", "num_requests_waiting"):
        out[f"{name}_max"] = server[name].max()
    for name in SERVER_COUNTERS:
        values = server[name].drop_nulls()
        out[f"{name.removesuffix('_total')}_increase"] = (
            float(values[-1] - values[0]) if values.len() >= 2 else None
        )
    return out
