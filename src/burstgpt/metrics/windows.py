"""Instantaneous metrics (the paper's R^ins, L^ins, P^ins) as a time series over tumbling or sliding windows.

Each window is [window_start_s, window_end_s). A request counts in a window by the instant its quantity
happens: completions, failures, tokens and latencies by `end_s`; offered load by `scheduled_s`; sends, dispatch
lag and the failure rate by `sent_s`. The failure rate goes by send time because a failure can end long after
the request was sent (a 30 s timeout): by end time, the tail of a run, where nothing is offered any more, would
show only the slow failures and a failure rate of 30-50 %. Rates divide by the window's length, clipped at the run's last event so the last,
partial window is not understated. Windows are tumbling when `step_s` is None or equals `window_s`, sliding
(overlapping) when `step_s < window_s`.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.metrics.requests import QUANTILES, derive_request_metrics, meets_slo_expr
from burstgpt.records import (
    SERVER_COUNTERS,
    SERVER_GAUGES,
    STATUS_CANCELLED,
    STATUS_FAILED,
    STATUS_OK,
    conform_server_metrics,
)

_US = 1_000_000  # windows are computed on integer microseconds so group_by_dynamic can use an integer index


def window_series(
    records: pl.DataFrame,
    window_s: float = 10.0,
    step_s: float | None = None,
    *,
    slo: dict[str, float] | None = None,
    server_metrics: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One row per window, starting at 0 and stepping by `step_s` (default `window_s`) to the last event.

    Columns (rates per second, latencies in seconds, latencies over succeeded requests):
    window_start_s, window_end_s, offered_rps, sent_rps, succeeded, failed, cancelled (ended in the window),
    failure_rate (failed / (succeeded + failed) of the requests sent in the window, null when none ended),
    requests_per_s, input_tokens_per_s, output_tokens_per_s, total_tokens_per_s,
    ttft_{mean,median,p90,p99}_s, tpot_{mean,median,p90,p99}_s, e2e_{mean,median,p90,p99}_s,
    latency_per_output_token_mean_s, dispatch_lag_{median,p99,max}_s, in_flight (sent, not ended, at
    window end); goodput_rps with an SLO; with server metrics, the window means of each gauge
    (`<gauge>_mean`, plus kv_cache_usage_perc_max) and each counter's increase per second
    (`<counter>_per_s`, named without `_total`).
    """
    step_s = window_s if step_s is None else step_s
    if not window_s > 0 or not step_s > 0 or step_s > window_s:
        raise BurstGPTError(f"bad windows: need 0 < step ({step_s}) <= window ({window_s}) seconds")
    window_us, step_us = round(window_s * _US), round(step_s * _US)
    derived = derive_request_metrics(records)
    server = conform_server_metrics(server_metrics) if server_metrics is not None else None

    t_end = _last_event_s(derived, server)
    starts_us = np.arange(0, max(round(t_end * _US), 1), step_us, dtype=np.int64)
    grid = pl.DataFrame({"_start_us": starts_us})
    frame = grid.with_columns(
        (pl.col("_start_us") / _US).alias("window_start_s"),
        ((pl.col("_start_us") + window_us) / _US).alias("window_end_s"),
    )
    length_s = (pl.min_horizontal(pl.col("window_end_s"), pl.lit(t_end)) - pl.col("window_start_s")).clip(
        lower_bound=1e-9
    )

    ok = pl.col("status") == STATUS_OK
    ended_aggs = [
        ok.sum().alias("succeeded"),
        (pl.col("status") == STATUS_FAILED).sum().alias("failed"),
        (pl.col("status") == STATUS_CANCELLED).sum().alias("cancelled"),
        pl.col("input_tokens").filter(ok).sum().alias("_input_tokens"),
        pl.col("output_tokens").filter(ok).sum().alias("_output_tokens"),
        pl.col("latency_per_output_token_s").filter(ok).mean().alias("latency_per_output_token_mean_s"),
    ]
    for metric in ("ttft", "tpot", "e2e"):
        values = pl.col(f"{metric}_s").filter(ok)
        ended_aggs.append(values.mean().alias(f"{metric}_mean_s"))
        ended_aggs += [values.quantile(q, "linear").alias(f"{metric}_{name}_s") for name, q in QUANTILES.items()]
    if slo:
        ended_aggs.append(meets_slo_expr(slo).sum().alias("_good"))
    ended = _dynamic(derived.filter(pl.col("sent_s").is_not_null()), "end_s", ended_aggs, step_us, window_us)
    offered = _dynamic(derived, "scheduled_s", [pl.len().alias("_offered")], step_us, window_us)
    lag = pl.col("dispatch_lag_s")
    sent = _dynamic(
        derived,
        "sent_s",
        [
            pl.len().alias("_sent"),
            (pl.col("status") == STATUS_OK).sum().alias("_sent_succeeded"),
            (pl.col("status") == STATUS_FAILED).sum().alias("_sent_failed"),
            lag.quantile(0.5, "linear").alias("dispatch_lag_median_s"),
            lag.quantile(0.99, "linear").alias("dispatch_lag_p99_s"),
            lag.max().alias("dispatch_lag_max_s"),
        ],
        step_us,
        window_us,
    )
    for part in (ended, offered, sent):
        frame = frame.join(part, on="_start_us", how="left")
    counts = ["succeeded", "failed", "cancelled", "_input_tokens", "_output_tokens", "_offered", "_sent",
              "_sent_succeeded", "_sent_failed"]
    counts += ["_good"] if slo else []
    frame = frame.with_columns(pl.col(counts).fill_null(0))
    finished = pl.col("_sent_succeeded") + pl.col("_sent_failed")
    frame = frame.with_columns(
        (pl.col("_offered") / length_s).alias("offered_rps"),
        (pl.col("_sent") / length_s).alias("sent_rps"),
        pl.when(finished > 0).then(pl.col("_sent_failed") / finished).otherwise(None).alias("failure_rate"),
        (pl.col("succeeded") / length_s).alias("requests_per_s"),
        (pl.col("_input_tokens") / length_s).alias("input_tokens_per_s"),
        (pl.col("_output_tokens") / length_s).alias("output_tokens_per_s"),
        ((pl.col("_input_tokens") + pl.col("_output_tokens")) / length_s).alias("total_tokens_per_s"),
        pl.Series("in_flight", _in_flight_at(derived, (starts_us + window_us) / _US)),
    )
    if slo:
        frame = frame.with_columns((pl.col("_good") / length_s).alias("goodput_rps"))
    if server is not None and server.height:
        frame = frame.join(_server_windows(server, step_us, window_us), on="_start_us", how="left")
        rate_columns = [f"{name.removesuffix('_total')}_per_s" for name in SERVER_COUNTERS]
        frame = frame.with_columns((pl.col(f"_{name}") / length_s).alias(name) for name in rate_columns)
    front = ["window_start_s", "window_end_s", "offered_rps", "sent_rps", "succeeded", "failed", "cancelled"]
    front += ["failure_rate", "requests_per_s", "input_tokens_per_s", "output_tokens_per_s", "total_tokens_per_s"]
    rest = [c for c in frame.columns if c not in front and not c.startswith("_")]
    return frame.select(front + rest)


def _last_event_s(derived: pl.DataFrame, server: pl.DataFrame | None) -> float:
    candidates = [derived[c].max() for c in ("scheduled_s", "sent_s", "end_s")]
    if server is not None and server.height:
        candidates.append(server["time_s"].max())
    values = [float(v) for v in candidates if v is not None]
    return max(values) if values else 0.0


def _dynamic(frame: pl.DataFrame, time_column: str, aggs: list[pl.Expr], step_us: int, window_us: int) -> pl.DataFrame:
    """Aggregate `frame` over windows of `window_us` every `step_us` by `time_column` (seconds)."""
    timed = (
        frame.filter(pl.col(time_column).is_not_null() & (pl.col(time_column) >= 0))
        .with_columns((pl.col(time_column) * _US).round().cast(pl.Int64).alias("_start_us"))
        .sort("_start_us")
    )
    return timed.group_by_dynamic(
        "_start_us", every=f"{step_us}i", period=f"{window_us}i", closed="left", start_by="window"
    ).agg(aggs)


def _in_flight_at(derived: pl.DataFrame, times_s: np.ndarray) -> np.ndarray:
    """Requests sent at or before each instant and not yet ended (shape: like `times_s`)."""
    sent = derived.filter(pl.col("sent_s").is_not_null())
    send_times = np.sort(sent["sent_s"].to_numpy())
    end_times = np.sort(sent["end_s"].fill_null(np.inf).to_numpy())
    return np.searchsorted(send_times, times_s, side="right") - np.searchsorted(end_times, times_s, side="right")


def _server_windows(server: pl.DataFrame, step_us: int, window_us: int) -> pl.DataFrame:
    # Counter increases per sample (a drop means the server restarted: count from the new value's zero).
    increases = [
        pl.when(pl.col(name).diff() < 0).then(pl.col(name)).otherwise(pl.col(name).diff()).alias(f"_d_{name}")
        for name in SERVER_COUNTERS
    ]
    aggs = [pl.col(name).mean().alias(f"{name}_mean") for name in SERVER_GAUGES]
    aggs.append(pl.col("kv_cache_usage_perc").max().alias("kv_cache_usage_perc_max"))
    aggs += [
        pl.when(pl.col(f"_d_{name}").count() > 0)
        .then(pl.col(f"_d_{name}").sum())
        .alias(f"_{name.removesuffix('_total')}_per_s")
        for name in SERVER_COUNTERS
    ]
    return _dynamic(server.with_columns(increases), "time_s", aggs, step_us, window_us)
