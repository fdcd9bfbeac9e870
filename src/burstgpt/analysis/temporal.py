"""Temporal statistics of a trace (paper section III-B, Figs 1-6): calendar columns, requests per hour / day,
hour-of-day and day-of-week profiles, a periodicity score, short-term burstiness and per-window arrival fits.

Functions return tidy Polars frames split by `model` x `service` (the paper's split). Time-of-day statistics
are derived from `time_bins(frame, origin)`, one aggregation of the trace table into clock-aligned 5-minute bins;
arrival fits read the timestamps. Calendar meaning comes from `origin` (the wall-clock instant of
`timestamp_s == 0`, `Trace.origin`): with it, hours are local hours of that clock and day_of_week is 0 = Monday;
without it, hour of day is `timestamp_s // 3600 % 24` and day 0 is taken as day_of_week 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from burstgpt.analysis.fits import (
    ARRIVAL_MODELS, FitError, dequantize_timestamps, fit_gamma, gamma_fit_per_window, time_resolution,
)

GROUP = ("model", "service")
SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86400.0

#: Daily (and weekly) traffic counts as periodic when its periodicity score reaches this.
PERIODIC_THRESHOLD = 0.3

#: Hours (days) the trace observed for less than this share of the hour (day) are left out of the spread
#: statistics across days (std/min/max, throughput boxes); the others are scaled to a full hour (day).
MIN_COVERAGE = 0.5


def clock_offset_s(origin: datetime | None) -> float:
    """Seconds from the midnight before `origin` to `origin` (0 without an origin)."""
    if origin is None:
        return 0.0
    midnight = origin.replace(hour=0, minute=0, second=0, microsecond=0)
    return (origin - midnight).total_seconds()


#: Width of the clock-aligned bins every time-of-day statistic is built from (5 minutes: divides the 5- and
#: 10-minute burstiness windows, hours and days).
BIN_S = 300.0


@dataclass
class TimeBins:
    """Per model x service totals in clock-aligned `BIN_S` bins: the one pass over the trace's rows that the
    hourly, daily, burstiness, throughput and failure statistics are all derived from.

    `table` columns: model, service, bin (index of the bin since midnight of day 0), requests, failures,
    request_tokens, response_tokens (sums over the bin's requests). `origin` as in `Trace.origin`.
    `span_start_s`, `span_end_s`: the first and last arrival (seconds since midnight of day 0): the part of the
    clock the trace observed, so a period it covers only in part is not read as a quiet one.
    """

    table: pl.DataFrame
    origin: datetime | None
    span_start_s: float = 0.0
    span_end_s: float = 0.0


def time_bins(frame: pl.DataFrame, origin: datetime | None = None) -> TimeBins:
    """Aggregate a trace table into `TimeBins` (see there)."""
    offset = clock_offset_s(origin)
    clock = pl.col("timestamp_s") + offset
    table = frame.group_by(*GROUP, (clock // BIN_S).cast(pl.Int64).alias("bin")).agg(
        pl.len().cast(pl.Int64).alias("requests"),
        pl.col("failed").sum().cast(pl.Int64).alias("failures"),
        pl.col("request_tokens").sum().cast(pl.Int64),
        pl.col("response_tokens").sum().cast(pl.Int64),
    )
    first, last = (float(frame["timestamp_s"].min()) + offset, float(frame["timestamp_s"].max()) + offset) \
        if frame.height else (0.0, 0.0)
    return TimeBins(table.with_columns(pl.col(*GROUP).cast(pl.Utf8)), origin, first, last)


def per_period(bins: TimeBins, period_s: float, name: str) -> pl.DataFrame:
    """Totals per model x service in clock-aligned periods of `period_s` (a multiple of `BIN_S`), every
    period from the trace's first to its last included (zeros where a group had no request).

    Columns: model, service, <name> (period index since midnight of day 0), requests, failures,
    request_tokens, response_tokens, observed_s (seconds of the period between the trace's first and last
    arrival: period_s inside, less for the periods holding them, 0 when both are one instant).
    """
    step = round(period_s / BIN_S)
    if step < 1 or abs(step * BIN_S - period_s) > 1e-9:
        raise ValueError(f"period {period_s} s is not a multiple of {BIN_S} s")
    totals = ("requests", "failures", "request_tokens", "response_tokens")
    table = bins.table
    if table.height == 0:
        return pl.DataFrame(schema={"model": pl.Utf8, "service": pl.Utf8, name: pl.Int64,
                                    **{column: pl.Int64 for column in totals}, "observed_s": pl.Float64})
    sums = table.group_by(*GROUP, (pl.col("bin") // step).alias(name)).agg(pl.col(*totals).sum())
    grid = group_grid(table, name, int(sums[name].min()), int(sums[name].max()))
    start = pl.col(name).cast(pl.Float64) * period_s
    observed = (pl.min_horizontal(start + period_s, pl.lit(bins.span_end_s))
                - pl.max_horizontal(start, pl.lit(bins.span_start_s))).clip(0.0, period_s)
    return (
        grid.join(sums, on=[*GROUP, name], how="left", nulls_equal=True)
        .with_columns(pl.col(*totals).fill_null(0), observed.alias("observed_s"))
        .sort(*GROUP, name, nulls_last=True)
    )


def day_dates(days: pl.Expr, origin: datetime | None) -> pl.Expr:
    """Calendar date of day indices (null without an origin)."""
    if origin is None:
        return pl.lit(None, pl.Date)
    return pl.lit(origin.date()) + pl.duration(days=days)


def weekday(days: pl.Expr, origin: datetime | None) -> pl.Expr:
    """Day of week of day indices: 0 = Monday with an origin; else day 0 is 0."""
    return ((days + (origin.weekday() if origin is not None else 0)) % 7).cast(pl.Int8)


def _groups(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(GROUP).unique().sort(GROUP, nulls_last=True)


def group_grid(frame: pl.DataFrame, name: str, first: int, last: int) -> pl.DataFrame:
    """Every model x service group of `frame` crossed with the integers first..last in column `name`."""
    steps = pl.DataFrame({name: np.arange(first, last + 1, dtype=np.int64)})
    return _groups(frame).join(steps, how="cross")


def hourly_requests(bins: TimeBins) -> pl.DataFrame:
    """Requests per clock hour over the trace's whole span, zero hours included (shared by all groups).

    Columns: model, service, hour_index (hours since midnight of day 0), day, hour_of_day, requests, observed_s
    (seconds of the hour the trace observed, see `per_period`).
    """
    return per_period(bins, SECONDS_PER_HOUR, "hour_index").select(
        *GROUP, "hour_index",
        (pl.col("hour_index") // 24).cast(pl.Int32).alias("day"),
        (pl.col("hour_index") % 24).cast(pl.Int8).alias("hour_of_day"),
        "requests", "observed_s",
    )


def per_full_period(column: str, period_s: float = SECONDS_PER_HOUR) -> pl.Expr:
    """`column` of a `per_period` table scaled to a full period (column * period_s / observed_s), null for
    periods observed for less than `MIN_COVERAGE` of the period."""
    return (pl.when(pl.col("observed_s") >= MIN_COVERAGE * period_s)
            .then(pl.col(column).cast(pl.Float64) * period_s / pl.col("observed_s")))


def hour_of_day_profile(hourly: pl.DataFrame) -> pl.DataFrame:
    """Requests per hour of day across days (paper Figs 3-4), from `hourly_requests`, counting only the time
    the trace observed: an hour at the trace's start or end that it saw for 10 minutes is not a quiet hour.

    Columns: model, service, hour_of_day, days (days that hour was observed at all), observed_hours (total),
    mean_requests (requests / observed hours: per full hour, partial hours weighted by their coverage), and across
    days the std_requests, min_requests and max_requests of requests per hour, from hours observed for at least
    `MIN_COVERAGE` of the hour, scaled to a full hour (null when there are none; std needs two).
    """
    rate = per_full_period("requests")
    observed = pl.col("observed_s").sum()
    return (
        hourly.filter(pl.col("observed_s") > 0)
        .group_by(*GROUP, "hour_of_day")
        .agg(
            pl.len().alias("days"),
            (observed / SECONDS_PER_HOUR).alias("observed_hours"),
            (pl.col("requests").sum() * SECONDS_PER_HOUR / observed).alias("mean_requests"),
            rate.std().alias("std_requests"),
            rate.min().alias("min_requests"),
            rate.max().alias("max_requests"),
        )
        .sort(*GROUP, "hour_of_day", nulls_last=True)
    )


def daily_requests(bins: TimeBins) -> pl.DataFrame:
    """Requests per day over the trace's span, zero days included (paper Figs 1-2).

    Columns: model, service, day, date (null without an origin), day_of_week, requests, observed_s (seconds of
    the day the trace observed: less than 86400 for its first and last day).
    """
    return per_period(bins, SECONDS_PER_DAY, "day").select(
        *GROUP, pl.col("day").cast(pl.Int32), day_dates(pl.col("day"), bins.origin).alias("date"),
        weekday(pl.col("day"), bins.origin).alias("day_of_week"), "requests", "observed_s",
    )


def day_of_week_profile(daily: pl.DataFrame) -> pl.DataFrame:
    """Requests per day of week across weeks, from `daily_requests`, over the time the trace observed (as
    `hour_of_day_profile` does for hours).

    Columns: model, service, day_of_week, days, mean_requests (requests / observed days), std_requests (days
    observed for at least `MIN_COVERAGE` of the day, scaled to a full day; null for fewer than two).
    """
    observed = pl.col("observed_s").sum()
    return (
        daily.filter(pl.col("observed_s") > 0)
        .group_by(*GROUP, "day_of_week")
        .agg(
            pl.len().alias("days"),
            (pl.col("requests").sum() * SECONDS_PER_DAY / observed).alias("mean_requests"),
            per_full_period("requests", SECONDS_PER_DAY).std().alias("std_requests"),
        )
        .sort(*GROUP, "day_of_week", nulls_last=True)
    )


def autocorrelation(series: np.ndarray, lag: int) -> float:
    """Sample autocorrelation of `series` at `lag` steps (NaN when too short or constant)."""
    x = np.asarray(series, dtype=np.float64)
    if lag <= 0 or x.size < 2 * lag:
        return float("nan")
    centred = x - x.mean()
    denominator = float(centred @ centred)
    if denominator == 0:
        return float("nan")
    return float(centred[:-lag] @ centred[lag:] / denominator)


def periodicity_score(hourly_counts: np.ndarray, period_h: int = 24) -> float:
    """How periodic hourly counts are at `period_h` hours: acf(period) - max(acf(period / 2), 0).

    A daily cycle correlates at 24 h and anti-correlates at 12 h; slow drifts and bursts lasting hours or days
    correlate at both lags, so the subtraction keeps them near 0 while a daily cycle scores near acf(24 h).
    NaN when the series is shorter than two periods.
    """
    full = autocorrelation(hourly_counts, period_h)
    half = autocorrelation(hourly_counts, period_h // 2)
    if np.isnan(full) or np.isnan(half):
        return float("nan")
    return full - max(half, 0.0)


def periodicity(hourly: pl.DataFrame) -> pl.DataFrame:
    """Periodicity of each group's hourly request counts (from `hourly_requests`).

    Columns: model, service, hours, acf_12h, acf_24h, acf_84h, acf_168h, periodicity_score_24h,
    periodicity_score_168h (see `periodicity_score`; NaN when the trace spans less than two periods), periodic
    (daily score >= `PERIODIC_THRESHOLD`).
    """
    rows = []
    for (model, service), group in hourly.sort("hour_index").group_by(*GROUP, maintain_order=True):
        counts = group["requests"].to_numpy()
        daily = periodicity_score(counts, 24)
        rows.append({
            "model": model, "service": service, "hours": counts.size,
            "acf_12h": autocorrelation(counts, 12), "acf_24h": autocorrelation(counts, 24),
            "acf_84h": autocorrelation(counts, 84), "acf_168h": autocorrelation(counts, 168),
            "periodicity_score_24h": daily, "periodicity_score_168h": periodicity_score(counts, 168),
            "periodic": bool(daily >= PERIODIC_THRESHOLD) if not np.isnan(daily) else None,
        })
    schema = {"model": pl.Utf8, "service": pl.Utf8, "hours": pl.Int64, "acf_12h": pl.Float64,
              "acf_24h": pl.Float64, "acf_84h": pl.Float64, "acf_168h": pl.Float64,
              "periodicity_score_24h": pl.Float64, "periodicity_score_168h": pl.Float64, "periodic": pl.Boolean}
    return pl.DataFrame(rows, schema=schema).sort(*GROUP, nulls_last=True)


def burstiness(bins: TimeBins, window_minutes: tuple[int, ...] = (5, 10)) -> pl.DataFrame:
    """Short-term burstiness per day (paper Fig 5): how many windows hold at least 2x (3x, 4x) the requests of
    the window before. Windows (multiples of 5 minutes) are aligned on the clock; a window whose predecessor is
    empty is not counted (any count is "double" zero), so sparse traffic does not look bursty.

    Columns: model, service, window_min, day, date, day_of_week, windows (after a window with traffic, or with
    traffic), bursts_2x, bursts_3x, bursts_4x (windows with count >= k x the previous, previous >= 1),
    observed_s (seconds of the day the trace observed: the counts of a partial day cover only that much).
    """
    schema = {"model": pl.Utf8, "service": pl.Utf8, "window_min": pl.Int64, "day": pl.Int32, "date": pl.Date,
              "day_of_week": pl.Int8, "windows": pl.Int64, "bursts_2x": pl.Int64, "bursts_3x": pl.Int64,
              "bursts_4x": pl.Int64, "observed_s": pl.Float64}
    if bins.table.height == 0:
        return pl.DataFrame(schema=schema)
    parts = []
    previous = pl.col("previous")
    active = previous.is_not_null() & ((pl.col("requests") > 0) | (previous > 0))
    for minutes in window_minutes:
        width = minutes * 60.0
        series = (
            per_period(bins, width, "window")
            .with_columns(pl.col("requests").shift(1).over(GROUP).alias("previous"))
            .with_columns((pl.col("window") * width // SECONDS_PER_DAY).cast(pl.Int32).alias("day"))
        )
        parts.append(
            series.group_by(*GROUP, "day")
            .agg(
                active.sum().cast(pl.Int64).alias("windows"),
                *[((previous >= 1) & (pl.col("requests") >= k * previous)).sum().cast(pl.Int64)
                  .alias(f"bursts_{k}x") for k in (2, 3, 4)],
                pl.col("observed_s").sum(),
            )
            .with_columns(pl.lit(minutes, pl.Int64).alias("window_min"))
        )
    return (
        pl.concat(parts)
        .with_columns(day_dates(pl.col("day"), bins.origin).alias("date"),
                      weekday(pl.col("day"), bins.origin).alias("day_of_week"))
        .select(list(schema))
        .sort(*GROUP, "window_min", "day", nulls_last=True)
    )


def burstiness_summary(bursts: pl.DataFrame) -> pl.DataFrame:
    """Bursts per day of observation, over all days and over workdays (day_of_week 0-4), from `burstiness`:
    bursts / observed days, so partial days at the trace's ends count for the part observed (null when the
    trace observed no time, e.g. a single timestamp).

    Columns: model, service, window_min, days (calendar days touched), observed_days, mean_bursts_2x_per_day,
    mean_bursts_2x_per_workday, mean_bursts_3x_per_day, mean_bursts_4x_per_day.
    """
    workday = pl.col("day_of_week") < 5
    observed_days = pl.col("observed_s") / SECONDS_PER_DAY

    def per_day(column: str, keep: pl.Expr = pl.lit(True)) -> pl.Expr:
        days = observed_days.filter(keep).sum()
        return pl.when(days > 0).then(pl.col(column).filter(keep).sum() / days)

    return (
        bursts.group_by(*GROUP, "window_min")
        .agg(
            pl.len().alias("days"),
            observed_days.sum().alias("observed_days"),
            per_day("bursts_2x").alias("mean_bursts_2x_per_day"),
            per_day("bursts_2x", workday).alias("mean_bursts_2x_per_workday"),
            per_day("bursts_3x").alias("mean_bursts_3x_per_day"),
            per_day("bursts_4x").alias("mean_bursts_4x_per_day"),
        )
        .sort(*GROUP, "window_min", nulls_last=True)
    )


#: Columns of `TimeResolution.to_dict` in `arrival_fits`' summary.
RESOLUTION_COLUMNS = {"time_resolution_s": pl.Float64, "tied_arrival_fraction": pl.Float64, "ties_spread": pl.Boolean,
                      "time_resolution_method": pl.Utf8}


@dataclass
class ArrivalFits:
    """Inter-arrival statistics per model x service (see `arrival_fits`)."""

    windows: pl.DataFrame
    summary: pl.DataFrame
    gap_histograms: pl.DataFrame


def arrival_fits(
    frame: pl.DataFrame,
    origin: datetime | None = None,
    window_s: float = 1200.0,
    min_arrivals: int = 10,
    seed: int = 0,
    gap_bins: int = 60,
) -> ArrivalFits:
    """Gamma fits of inter-arrival times per model x service (paper Fig 6), one pass per group over its
    timestamps, spread once within their effective recording resolution (`fits.time_resolution`,
    `fits.dequantize_timestamps`, seeded).

    `windows`: per-window fits (`fits.gamma_fit_per_window`), windows aligned on the clock (multiples of
    `window_s` from midnight of day 0) and shared by all groups. Columns: model, service, then
    `fits.WINDOW_FIT_COLUMNS` (window_start_s and window_end_s in trace seconds), day, hour_of_day.

    `summary`: per group, one Gamma fit of all gaps and the spread of the window fits. Columns: model, service,
    requests, gamma_alpha, gamma_beta_s, gamma_cv, gamma_ks_stat, windows_fitted, window_alpha_median,
    window_alpha_p10, window_alpha_p90, window_beta_s_median, window_cv_median, best_model_<name>_windows
    (windows where that model has the lowest AIC) for each of `fits.ARRIVAL_MODELS`, and how the timestamps were
    recorded (`fits.TimeResolution.to_dict`): time_resolution_s (null: continuous), tied_arrival_fraction,
    ties_spread (whether arrivals were spread within the resolution; if not, tied gaps are left out),
    time_resolution_method. Fit columns are null where a group has fewer than 2 distinct positive gaps.

    `gap_histograms`: gaps on `gap_bins` log-spaced bins, to compare with the fitted density. Columns: model,
    service, bin_start_s, bin_end_s, count, density_per_s (count / (n * bin width)).
    """
    offset = clock_offset_s(origin)
    windows, overall, histograms = [], [], []
    start_s = float(np.floor((frame["timestamp_s"].min() + offset) / window_s) * window_s - offset) if frame.height else 0.0
    for (model, service), group in frame.select(*GROUP, "timestamp_s").group_by(*GROUP, maintain_order=True):
        names = {"model": model, "service": service}
        timestamps = group["timestamp_s"].to_numpy()
        resolution = time_resolution(timestamps)
        spread = dequantize_timestamps(timestamps, resolution.resolution_s or 0.0, seed=seed)
        table = gamma_fit_per_window(spread, window_s=window_s, min_arrivals=min_arrivals, start_s=start_s,
                                     resolution_s=0)
        windows.append(table.select(*[pl.lit(v, pl.Utf8).alias(k) for k, v in names.items()], pl.all()))
        gaps = np.diff(spread)
        gaps = gaps[gaps > 0]
        row = {**names, "requests": group.height, **resolution.to_dict()}
        try:
            fit = fit_gamma(gaps)
        except FitError:  # fewer than 2 gaps, or all equal: no Gamma shape, columns left null
            fit = None
        if fit is not None:
            row |= {"gamma_alpha": fit.alpha, "gamma_beta_s": fit.beta_s, "gamma_cv": fit.cv,
                    "gamma_ks_stat": fit.ks_stat}
            edges = np.geomspace(gaps.min(), gaps.max() * (1 + 1e-9), gap_bins + 1)
            counts, _ = np.histogram(gaps, edges)
            histograms.append(pl.DataFrame({
                "model": [model] * gap_bins, "service": [service] * gap_bins, "bin_start_s": edges[:-1],
                "bin_end_s": edges[1:], "count": counts.astype(np.int64),
                "density_per_s": counts / (gaps.size * np.diff(edges)),
            }, schema_overrides={"model": pl.Utf8, "service": pl.Utf8}))
        overall.append(row)
    if not windows:
        return ArrivalFits(pl.DataFrame(), pl.DataFrame(), pl.DataFrame())
    clock = pl.col("window_start_s") + offset
    window_table = (
        pl.concat(windows)
        .with_columns(
            (clock // SECONDS_PER_DAY).cast(pl.Int32).alias("day"),
            ((clock // SECONDS_PER_HOUR) % 24).cast(pl.Int8).alias("hour_of_day"),
        )
        .sort(*GROUP, "window_start_s", nulls_last=True)
    )
    fit_columns = {"gamma_alpha": pl.Float64, "gamma_beta_s": pl.Float64, "gamma_cv": pl.Float64,
                   "gamma_ks_stat": pl.Float64}
    summary = pl.DataFrame(overall, schema={"model": pl.Utf8, "service": pl.Utf8, "requests": pl.Int64,
                                            **RESOLUTION_COLUMNS, **fit_columns})
    fitted = window_table.filter(pl.col("alpha").is_not_null())
    spread_table = fitted.group_by(*GROUP).agg(
        pl.len().alias("windows_fitted"),
        pl.col("alpha").median().alias("window_alpha_median"),
        pl.col("alpha").quantile(0.1, "linear").alias("window_alpha_p10"),
        pl.col("alpha").quantile(0.9, "linear").alias("window_alpha_p90"),
        pl.col("beta_s").median().alias("window_beta_s_median"),
        pl.col("cv").median().alias("window_cv_median"),
        *[(pl.col("best_model") == name).sum().alias(f"best_model_{name}_windows") for name in ARRIVAL_MODELS],
    )
    summary = (
        summary.join(spread_table, on=list(GROUP), how="left", nulls_equal=True)
        .with_columns(pl.col("windows_fitted").fill_null(0))
        .sort(*GROUP, nulls_last=True)
    )
    return ArrivalFits(window_table, summary, pl.concat(histograms) if histograms else pl.DataFrame())
