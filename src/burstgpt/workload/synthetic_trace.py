"""A synthetic BurstGPT-like trace with known parameters, for demos and tests (no download needed).

Four streams, model x service, with BurstGPT's proportions (API ChatGPT dominates; paper section III-A):

- conversation traffic: rate periodic over the day (low at night, peak mid-afternoon) and over the week
  (weekends lower);
- API traffic: aperiodic and bursty, a log-normal rate per window with occasional bursts of 4-10x;
- arrivals: Gamma renewal whose alpha and beta change every 20-minute window (beta = 1/(alpha * rate)), drawn
  with `burstgpt.workload.arrivals.scheduled_arrivals`; API alpha is lower (burstier) and more variable;
- request lengths: bounded Zipf per service;
- response lengths: bimodal, a short-answer mode and a mode linear in the request length;
- failures: response_tokens = 0 at a known rate per model x service (some also with request_tokens = 0, like
  BurstGPT's `0,0,0` rows).

`synthetic_burstgpt` returns the trace and the truth (per-window parameters, length and failure settings);
`synthetic_burstgpt_trace` returns only the trace. `write_burstgpt_csv` writes BurstGPT's 6-column CSV.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.outputs import atomic_path
from burstgpt.trace.schema import TRACE_SCHEMA, LoadReport, Trace
from burstgpt.workload.arrivals import ParamSchedule, scheduled_arrivals
from burstgpt.workload.lengths import ZipfLengths

#: A Monday midnight, so day 0 of the synthetic clock is a Monday.
SYNTHETIC_ORIGIN = datetime(2023, 11, 6)
WINDOW_S = 1200.0


@dataclass(frozen=True)
class StreamSpec:
    """One model x service stream: mean rate (requests/s), log-normal alpha per window (median, sigma of log),
    failure rate, request-length Zipf, response model (short mode probability/mean/sd; long mode
    intercept + slope * request, sd)."""

    model: str
    service: str
    mean_rate_rps: float
    alpha_median: float
    alpha_log_sigma: float
    failure_rate: float
    request_lengths: ZipfLengths
    short_probability: float
    short_mean: float
    short_sd: float
    intercept: float
    slope: float
    long_sd: float


#: Rates follow BurstGPT's request counts over its 61 days (1106k/168k API, 103k/51k conversation requests).
DEFAULT_STREAMS = (
    StreamSpec("ChatGPT", "conversation", 0.0196, 0.7, 0.35, 0.06, ZipfLengths(1.05, 8, 8192),
               0.3, 40.0, 15.0, 250.0, 0.35, 110.0),
    StreamSpec("GPT-4", "conversation", 0.0097, 0.8, 0.35, 0.02, ZipfLengths(1.05, 8, 8192),
               0.25, 50.0, 20.0, 300.0, 0.3, 120.0),
    StreamSpec("ChatGPT", "api", 0.2099, 0.3, 0.6, 0.015, ZipfLengths(1.1, 8, 16000),
               0.4, 30.0, 10.0, 150.0, 0.25, 80.0),
    StreamSpec("GPT-4", "api", 0.0319, 0.35, 0.6, 0.005, ZipfLengths(1.1, 8, 16000),
               0.35, 35.0, 12.0, 200.0, 0.3, 90.0),
)


@dataclass
class SyntheticTrace:
    """The trace and its ground truth.

    `windows`: one row per stream and 20-minute window: model, service, window_start_s, window_end_s, alpha,
    beta_s (seconds), rate_rps (the intended mean rate), n_arrivals (requests generated in the window).
    """

    trace: Trace
    windows: pl.DataFrame
    streams: tuple[StreamSpec, ...] = field(default_factory=tuple)


def daily_weekly_profile(t_s: np.ndarray) -> np.ndarray:
    """Conversation rate multiplier at trace seconds `t_s` (day 0 a Monday): a working-hours hump peaking at
    15:00 over a night floor of 0.1, times 0.45 on weekends; normalised to mean 1 over a week."""
    week = np.arange(0.0, 7 * 86400.0, 600.0)
    return _unnormalised_profile(np.asarray(t_s, dtype=np.float64)) / _unnormalised_profile(week).mean()


def _unnormalised_profile(t_s: np.ndarray) -> np.ndarray:
    hour = (t_s / 3600.0) % 24.0
    daily = 0.1 + 0.9 * np.clip(np.sin(np.pi * (hour - 7.0) / 16.0), 0.0, None) * (hour >= 7.0)
    return daily * np.where((t_s // 86400.0) % 7 >= 5, 0.45, 1.0)


def synthetic_burstgpt(
    days: float = 7,
    seed: int = 0,
    *,
    rate_scale: float = 1.0,
    streams: tuple[StreamSpec, ...] = DEFAULT_STREAMS,
    window_s: float = WINDOW_S,
) -> SyntheticTrace:
    """Generate `days` days of BurstGPT-like traffic (about 23,500 requests a day at rate_scale 1)."""
    if not days > 0 or not rate_scale > 0:
        raise BurstGPTError("days and rate_scale must be positive")
    duration = float(days) * 86400.0
    num_windows = int(np.ceil(duration / window_s))
    starts = np.arange(num_windows) * window_s
    rng = np.random.default_rng(seed)
    frames, truths = [], []
    for spec in streams:
        stream_rng = np.random.default_rng(rng.integers(2**63))
        if spec.service == "conversation":
            multiplier = daily_weekly_profile(starts + window_s / 2)
        else:
            # Aperiodic: log-normal per window (mean 1), 5% of windows a burst of 4-10x.
            multiplier = stream_rng.lognormal(-0.5 * 0.8**2, 0.8, num_windows)
            bursts = stream_rng.random(num_windows) < 0.05
            multiplier = np.where(bursts, multiplier * stream_rng.uniform(4, 10, num_windows), multiplier)
            multiplier /= multiplier.mean()
        rate = spec.mean_rate_rps * rate_scale * multiplier
        alpha = np.clip(spec.alpha_median * stream_rng.lognormal(0.0, spec.alpha_log_sigma, num_windows), 0.05, 5)
        beta = 1.0 / (alpha * rate)
        schedule = ParamSchedule(starts.astype(np.float64), alpha, beta, "seconds", float(num_windows * window_s))
        # Drop the process's opening request at exactly 0 so the streams do not all start together.
        arrivals = scheduled_arrivals(schedule, stream_rng, duration_s=duration)[1:]
        n = arrivals.size
        request = spec.request_lengths.sample(n, stream_rng)
        short = stream_rng.random(n) < spec.short_probability
        response = np.where(
            short,
            stream_rng.normal(spec.short_mean, spec.short_sd, n),
            stream_rng.normal(spec.intercept + spec.slope * request, spec.long_sd),
        )
        response = np.clip(np.rint(response), 1, 8192).astype(np.int64)
        failed = stream_rng.random(n) < spec.failure_rate
        response[failed] = 0
        # About a third of BurstGPT's failures log 0 request tokens too.
        request = np.where(failed & (stream_rng.random(n) < 0.3), 0, request)
        frames.append(
            pl.DataFrame(
                {
                    "timestamp_s": arrivals,
                    "request_tokens": request,
                    "response_tokens": response,
                }
            ).with_columns(pl.lit(spec.model).alias("model"), pl.lit(spec.service).alias("service"))
        )
        counts = np.bincount(np.floor(arrivals / window_s).astype(np.int64), minlength=num_windows)[:num_windows]
        truths.append(
            pl.DataFrame(
                {
                    "window_start_s": starts,
                    "window_end_s": starts + window_s,
                    "alpha": alpha,
                    "beta_s": beta,
                    "rate_rps": rate,
                    "n_arrivals": counts.astype(np.int64),
                }
            ).with_columns(pl.lit(spec.model).alias("model"), pl.lit(spec.service).alias("service"))
        )
    frame = (
        pl.concat(frames)
        .sort("timestamp_s", maintain_order=True)
        .with_columns(
            (pl.col("response_tokens") == 0).alias("failed"),
            pl.lit(None, dtype=pl.Utf8).alias("session_id"),
            pl.lit(None, dtype=pl.Float64).alias("elapsed_s"),
            pl.lit(None, dtype=pl.List(pl.Int64)).alias("prefix_block_ids"),
        )
        .select([pl.col(c).cast(t) for c, t in TRACE_SCHEMA.items()])
    )
    windows = pl.concat(truths).select(
        "model", "service", "window_start_s", "window_end_s", "alpha", "beta_s", "rate_rps", "n_arrivals"
    )
    trace = Trace(frame=frame, source=f"synthetic(days={days}, seed={seed}, rate_scale={rate_scale})",
                  format="synthetic", origin=SYNTHETIC_ORIGIN,
                  load_report=LoadReport(rows_read=frame.height, rows=frame.height))
    return SyntheticTrace(trace, windows, tuple(streams))


def synthetic_burstgpt_trace(days: float = 7, seed: int = 0, *, rate_scale: float = 1.0) -> Trace:
    """A BurstGPT-like `Trace` (see `synthetic_burstgpt` for the truth behind it)."""
    return synthetic_burstgpt(days, seed, rate_scale=rate_scale).trace


def write_burstgpt_csv(trace: Trace, path: str | Path) -> Path:
    """Write BurstGPT's 6-column CSV (`Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`),
    timestamps floored to integer seconds as in the real files, atomically."""
    path = Path(path)
    log_type = (
        pl.when(pl.col("service") == "api").then(pl.lit("API log")).otherwise(pl.lit("Conversation log"))
    )
    out = trace.frame.select(
        pl.col("timestamp_s").floor().cast(pl.Int64).alias("Timestamp"),
        pl.col("model").alias("Model"),
        pl.col("request_tokens").alias("Request tokens"),
        pl.col("response_tokens").alias("Response tokens"),
        (pl.col("request_tokens") + pl.col("response_tokens")).alias("Total tokens"),
        log_type.alias("Log Type"),
    )
    with atomic_path(path) as tmp:
        out.write_csv(tmp)
    return path
