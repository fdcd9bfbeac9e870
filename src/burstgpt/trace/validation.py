"""Checks every trace row must pass whatever its format: the invariants of `burstgpt.trace.schema`.

Run on a reader's frame before sorting, so a bad row is named by its line and by the column as the file
calls it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import polars as pl

from burstgpt.trace.parsing import ReadContext
from burstgpt.trace.schema import MAX_TIMESTAMP_S, MAX_TOKENS


def _seconds_problem(value: float | None, what: str) -> str:
    if value is None:
        return "missing value"
    if not math.isfinite(value):
        return f"not a finite number: {value}"
    if value < 0:
        return f"negative {what} {value:g} s"
    return (f"implausible {what} {value:.6g} s (more than {MAX_TIMESTAMP_S:.0e} s from the trace origin; "
            "wrong time unit?)")


def _tokens_problem(value: int | None) -> str:
    if value is None:
        return "missing value"
    if value < 0:
        return f"negative token count {value}"
    return f"implausible token count {value:,} (more than {MAX_TOKENS:,})"


def _bad_seconds(series: pl.Series) -> pl.Series:
    """True where a seconds value is non-finite, negative or over MAX_TIMESTAMP_S (null stays null)."""
    return ~series.is_finite() | (series < 0) | (series > MAX_TIMESTAMP_S)


def flag_invalid_rows(ctx: ReadContext, frame: pl.DataFrame, source_columns: Mapping[str, str]) -> None:
    """Flag rows breaking the trace invariants: timestamp missing, non-finite, negative or implausible; token
    counts missing, negative or over MAX_TOKENS; elapsed time non-finite, negative or implausible; prefix
    block ids not non-negative. `source_columns` maps trace columns to the names used in the file."""

    def named(column: str) -> str:
        return source_columns.get(column, column)

    timestamps = frame["timestamp_s"]
    ctx.flag(timestamps.is_null() | _bad_seconds(timestamps), named("timestamp_s"),
             lambda i: _seconds_problem(timestamps[i], "timestamp"))
    for column in ("request_tokens", "response_tokens"):
        tokens = frame[column]
        ctx.flag(tokens.is_null() | (tokens < 0) | (tokens > MAX_TOKENS), named(column),
                 lambda i, t=tokens: _tokens_problem(t[i]))
    if "elapsed_s" in frame.columns:
        elapsed = frame["elapsed_s"]
        ctx.flag(_bad_seconds(elapsed), named("elapsed_s"), lambda i: _seconds_problem(elapsed[i], "elapsed time"))
    if "prefix_block_ids" in frame.columns:
        ids = frame["prefix_block_ids"]
        bad_ids = ids.list.eval(pl.element().is_null() | (pl.element() < 0)).list.any()
        ctx.flag(bad_ids, named("prefix_block_ids"),
                 lambda i: f"block ids must be non-negative integers, got {ids[i].to_list()!r}"[:200])
