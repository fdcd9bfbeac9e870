"""The server-metrics table: the serving engine's own state over time, on the records' clock.

Written by the load generator (scraped from Prometheus `/metrics`) and by the simulator (from its engine
steps); read by `window_series`-style aggregation and the run figures.

| column                   | dtype   | meaning                                                                 |
|--------------------------|---------|-------------------------------------------------------------------------|
| time_s                   | Float64 | seconds since the run's start (same clock as the request records)       |
| kv_cache_usage_perc      | Float64 | KV-cache usage as a fraction, 0-1 (despite the vLLM name)               |
| num_requests_running     | Float64 | requests in the running batch                                           |
| num_requests_waiting     | Float64 | requests queued, not yet scheduled                                      |
| num_preemptions_total    | Float64 | cumulative preemptions since the server started (a counter)             |
| prompt_tokens_total      | Float64 | cumulative prompt tokens processed (a counter)                          |
| generation_tokens_total  | Float64 | cumulative generated tokens (a counter)                                 |

Every column but `time_s` is nullable (null where the server does not expose it). Counters are cumulative as
the server reports them; take differences for rates.
"""

from __future__ import annotations

import polars as pl

SERVER_METRICS_SCHEMA: dict[str, pl.DataType] = {
    "time_s": pl.Float64(),
    "kv_cache_usage_perc": pl.Float64(),
    "num_requests_running": pl.Float64(),
    "num_requests_waiting": pl.Float64(),
    "num_preemptions_total": pl.Float64(),
    "prompt_tokens_total": pl.Float64(),
    "generation_tokens_total": pl.Float64(),
}

#: Gauge columns (averaged over a window) and counter columns (differenced over a window).
SERVER_GAUGES = ("kv_cache_usage_perc", "num_requests_running", "num_requests_waiting")
SERVER_COUNTERS = ("num_preemptions_total", "prompt_tokens_total", "generation_tokens_total")


def conform_server_metrics(frame: pl.DataFrame) -> pl.DataFrame:
    """Add missing server-metric columns as nulls, cast, order the columns and sort by time_s.

    Extra columns are kept after the standard ones (e.g. engine-specific series).
    """
    exprs = []
    for name, dtype in SERVER_METRICS_SCHEMA.items():
        if name in frame.columns:
            exprs.append(pl.col(name).cast(dtype))
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
    extra = [name for name in frame.columns if name not in SERVER_METRICS_SCHEMA]
    return frame.select(exprs + extra).sort("time_s")


def empty_server_metrics() -> pl.DataFrame:
    """A zero-row server-metrics frame."""
    return pl.DataFrame(schema=SERVER_METRICS_SCHEMA)
