"""Token throughput per hour of day across days (paper Figs 10-13) and failure rates (paper Fig 14), from
`temporal.time_bins`.

Throughput is tokens per clock hour: the sum of request (prompt) or response tokens of the requests that
arrived in that hour. Hours with no request count as 0 within the trace's span, so quiet hours pull the
statistics down as they do in the paper's box plots; hours at the trace's ends that it observed only in part are
scaled to a full hour, or left out when observed for less than `temporal.MIN_COVERAGE` of it.
"""

from __future__ import annotations

import polars as pl

from burstgpt.analysis.temporal import (
    GROUP, SECONDS_PER_DAY, SECONDS_PER_HOUR, TimeBins, day_dates, per_full_period, per_period, weekday,
)

THROUGHPUT_KINDS = {"request": "request_tokens", "response": "response_tokens"}


def hourly_throughput(bins: TimeBins) -> pl.DataFrame:
    """Tokens per clock hour over the trace's span, zero hours included.

    Columns: model, service, hour_index, day, hour_of_day, requests, request_tokens, response_tokens, observed_s
    (seconds of the hour the trace observed).
    """
    return per_period(bins, SECONDS_PER_HOUR, "hour_index").select(
        *GROUP, "hour_index",
        (pl.col("hour_index") // 24).cast(pl.Int32).alias("day"),
        (pl.col("hour_index") % 24).cast(pl.Int8).alias("hour_of_day"),
        "requests", "request_tokens", "response_tokens", "observed_s",
    )


def throughput_box_stats(hourly: pl.DataFrame) -> pl.DataFrame:
    """Box-plot statistics of tokens per hour for each hour of day across days, from `hourly_throughput`.

    Whiskers follow Tukey: the most extreme values within 1.5 IQR of the quartiles. Hours observed in part are
    scaled to a full hour or left out (`temporal.per_full_period`); empty when no hour was observed long enough.
    Columns: model, service, kind ('request' or 'response'), hour_of_day, days, mean_tokens_per_hour,
    q1_tokens_per_hour, median_tokens_per_hour, q3_tokens_per_hour, whisker_low_tokens_per_hour,
    whisker_high_tokens_per_hour, outliers.
    """
    if hourly.height == 0:
        return pl.DataFrame()
    long = pl.concat([
        hourly.select(*GROUP, "hour_of_day", pl.lit(kind).alias("kind"), per_full_period(column).alias("tokens"))
        for kind, column in THROUGHPUT_KINDS.items()
    ]).drop_nulls("tokens")
    if long.height == 0:
        return pl.DataFrame()
    tokens = pl.col("tokens")
    q1, q3 = tokens.quantile(0.25, "linear"), tokens.quantile(0.75, "linear")
    low, high = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    return (
        long.group_by(*GROUP, "kind", "hour_of_day")
        .agg(
            pl.len().alias("days"),
            tokens.mean().alias("mean_tokens_per_hour"),
            q1.alias("q1_tokens_per_hour"),
            tokens.median().alias("median_tokens_per_hour"),
            q3.alias("q3_tokens_per_hour"),
            tokens.filter(tokens >= low).min().alias("whisker_low_tokens_per_hour"),
            tokens.filter(tokens <= high).max().alias("whisker_high_tokens_per_hour"),
            ((tokens < low) | (tokens > high)).sum().alias("outliers"),
        )
        .sort(*GROUP, "kind", "hour_of_day", nulls_last=True)
    )


def _with_rate(table: pl.DataFrame) -> pl.DataFrame:
    return table.with_columns((pl.col("failures") / pl.col("requests")).alias("failure_rate"))


def failure_rates(bins: TimeBins) -> pl.DataFrame:
    """Failure rate per model x service (paper Fig 14). Columns: model, service, requests, failures,
    failure_rate (failures / requests)."""
    table = bins.table.group_by(*GROUP).agg(pl.col("requests", "failures").sum())
    return _with_rate(table).sort(*GROUP, nulls_last=True)


def failure_rates_by_day(bins: TimeBins) -> pl.DataFrame:
    """Failure rate per model x service and day (days with requests). Columns: model, service, day, date,
    day_of_week, requests, failures, failure_rate."""
    daily = per_period(bins, SECONDS_PER_DAY, "day").filter(pl.col("requests") > 0)
    return _with_rate(daily).select(
        *GROUP, pl.col("day").cast(pl.Int32), day_dates(pl.col("day"), bins.origin).alias("date"),
        weekday(pl.col("day"), bins.origin).alias("day_of_week"), "requests", "failures", "failure_rate",
    )


def failure_rates_by_hour(bins: TimeBins) -> pl.DataFrame:
    """Failure rate per model x service and hour of day, pooled across days (hours with requests). Columns:
    model, service, hour_of_day, requests, failures, failure_rate."""
    hourly = per_period(bins, SECONDS_PER_HOUR, "hour_index").filter(pl.col("requests") > 0)
    table = hourly.group_by(*GROUP, (pl.col("hour_index") % 24).cast(pl.Int8).alias("hour_of_day")).agg(
        pl.col("requests", "failures").sum())
    return _with_rate(table).sort(*GROUP, "hour_of_day", nulls_last=True)
