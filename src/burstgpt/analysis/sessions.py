"""Conversation sessions (BurstGPT 8-column schema: `session_id`, `elapsed_s`): turns per session, time
between turns, and elapsed time against response length. Rows without a session_id are left out; every
function returns an empty frame when the trace has no session ids.
"""

from __future__ import annotations

import polars as pl

from burstgpt.analysis.lengths import bin_start, linear_fit_by_group, round_bins
from burstgpt.analysis.temporal import GROUP


def has_sessions(frame: pl.DataFrame) -> bool:
    return frame.height > 0 and frame["session_id"].null_count() < frame.height


def session_table(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per session. Columns: model, service, session_id, turns, first_s, last_s, duration_s (last
    minus first arrival, seconds), mean_turn_gap_s (mean time between consecutive turns; null for 1 turn)."""
    if not has_sessions(frame):
        return pl.DataFrame()
    return (
        frame.filter(pl.col("session_id").is_not_null())
        .group_by(*GROUP, "session_id")
        .agg(
            pl.len().cast(pl.Int64).alias("turns"),
            pl.col("timestamp_s").min().alias("first_s"),
            pl.col("timestamp_s").max().alias("last_s"),
        )
        .with_columns((pl.col("last_s") - pl.col("first_s")).alias("duration_s"))
        .with_columns(
            pl.when(pl.col("turns") > 1).then(pl.col("duration_s") / (pl.col("turns") - 1)).alias("mean_turn_gap_s")
        )
        .sort(*GROUP, "first_s", nulls_last=True)
    )


def _turn_gap() -> pl.Expr:
    """Seconds since the previous turn of the same session (frame sorted by session_id, timestamp_s)."""
    return pl.col("timestamp_s").diff().over("session_id").alias("turn_gap_s")


def turn_gaps(frame: pl.DataFrame) -> pl.Series:
    """Seconds between consecutive turns of the same session (all sessions pooled)."""
    if not has_sessions(frame):
        return pl.Series("turn_gap_s", [], dtype=pl.Float64)
    return (
        frame.filter(pl.col("session_id").is_not_null())
        .select(*GROUP, "session_id", "timestamp_s")
        .sort("session_id", "timestamp_s")
        .select(_turn_gap())
        .drop_nulls()["turn_gap_s"]
    )


def session_summary(frame: pl.DataFrame) -> pl.DataFrame:
    """Per model x service: sessions, mean/median/p90/max turns per session, and median/mean/p90 seconds
    between turns. Columns: model, service, sessions, mean_turns, median_turns, p90_turns, max_turns,
    median_turn_gap_s, mean_turn_gap_s, p90_turn_gap_s."""
    sessions = session_table(frame)
    if sessions.height == 0:
        return pl.DataFrame()
    gaps = (
        frame.filter(pl.col("session_id").is_not_null())
        .sort("session_id", "timestamp_s")
        .with_columns(_turn_gap())
        .group_by(*GROUP)
        .agg(
            pl.col("turn_gap_s").drop_nulls().median().alias("median_turn_gap_s"),
            pl.col("turn_gap_s").drop_nulls().mean().alias("mean_turn_gap_s"),
            pl.col("turn_gap_s").drop_nulls().quantile(0.9, "linear").alias("p90_turn_gap_s"),
        )
    )
    turns = pl.col("turns")
    return (
        sessions.group_by(*GROUP)
        .agg(
            pl.len().alias("sessions"),
            turns.mean().alias("mean_turns"),
            turns.median().alias("median_turns"),
            turns.quantile(0.9, "linear").alias("p90_turns"),
            turns.max().alias("max_turns"),
        )
        .join(gaps, on=list(GROUP), how="left", nulls_equal=True)
        .sort(*GROUP, nulls_last=True)
    )


def turns_histogram(frame: pl.DataFrame) -> pl.DataFrame:
    """Sessions by number of turns. Columns: model, service, turns, sessions."""
    sessions = session_table(frame)
    if sessions.height == 0:
        return pl.DataFrame()
    return (sessions.group_by(*GROUP, "turns").agg(pl.len().cast(pl.Int64).alias("sessions"))
            .sort(*GROUP, "turns", nulls_last=True))


def elapsed_vs_response(frame: pl.DataFrame, bins: int = 20) -> pl.DataFrame:
    """Elapsed time per response-length bin, successful requests with an elapsed time; round bins up to the
    99th percentile of response length, longer ones in the last bin. Columns: model, service,
    response_bin_start_tokens, requests, elapsed_mean_s, elapsed_median_s, elapsed_p90_s."""
    rows = frame.filter((pl.col("response_tokens") > 0) & pl.col("elapsed_s").is_not_null())
    if rows.height == 0:
        return pl.DataFrame()
    elapsed = pl.col("elapsed_s")
    return (
        rows.with_columns(bin_start("response_tokens", *round_bins(rows["response_tokens"], bins))
                          .alias("response_bin_start_tokens"))
        .group_by(*GROUP, "response_bin_start_tokens")
        .agg(
            pl.len().alias("requests"),
            elapsed.mean().alias("elapsed_mean_s"),
            elapsed.median().alias("elapsed_median_s"),
            elapsed.quantile(0.9, "linear").alias("elapsed_p90_s"),
        )
        .sort(*GROUP, "response_bin_start_tokens", nulls_last=True)
    )


def elapsed_fit(frame: pl.DataFrame) -> pl.DataFrame:
    """Least-squares elapsed_s = intercept_s + seconds_per_token * response_tokens and correlations, successful
    requests with an elapsed time. Columns: model, service, n, seconds_per_token, intercept_s, pearson_r,
    spearman_rho."""
    rows = frame.filter((pl.col("response_tokens") > 0) & pl.col("elapsed_s").is_not_null())
    if rows.height == 0:
        return pl.DataFrame()
    return linear_fit_by_group(rows, "response_tokens", "elapsed_s", "seconds_per_token", "intercept_s")
