"""Turns of recorded conversation sessions (BurstGPT 8-column traces: `session_id`, `elapsed_s`).

A session's turns are its rows in timestamp order. The think time before turn k > 0 is the gap between the end
of turn k-1 (its timestamp plus its elapsed time) and the send of turn k, clipped at 0 (the recorded elapsed
time can overlap the next send); it is null when the previous turn has no elapsed time.
"""

from __future__ import annotations

import polars as pl


def turn_columns(frame: pl.DataFrame, scale: float = 1.0) -> pl.DataFrame:
    """`turn` (Int64, 0-based within session_id, in timestamp order) and `think_time_s` (Float64, seconds
    divided by `scale`, as replay divides every gap) for each row of a trace frame sorted by timestamp_s;
    both null for rows without a session_id, think time null for first turns. Same height and order as
    `frame`."""
    if frame.height == 0 or frame["session_id"].null_count() == frame.height:
        return pl.DataFrame({"turn": pl.Series([None] * frame.height, dtype=pl.Int64),
                             "think_time_s": pl.Series([None] * frame.height, dtype=pl.Float64)})
    in_session = pl.col("session_id").is_not_null()
    previous_end = (pl.col("timestamp_s") + pl.col("elapsed_s")).shift(1).over("session_id")
    return frame.select(
        pl.when(in_session).then(pl.int_range(pl.len(), dtype=pl.Int64).over("session_id")).alias("turn"),
        pl.when(in_session)
        .then(((pl.col("timestamp_s") - previous_end).clip(lower_bound=0.0) / scale))
        .cast(pl.Float64)
        .alias("think_time_s"),
    )

