"""BurstGPT release CSVs: 6 columns (Timestamp, Model, Request tokens, Response tokens, Total tokens, Log Type)
or 8 (with Session ID and Elapsed time). Timestamps are seconds from the trace start."""

from __future__ import annotations

import polars as pl

from burstgpt.trace.parsing import LINE, ReadContext, csv_header, read_csv_columns, require_columns
from burstgpt.trace.registry import FormatFrame, TraceFormat, register_format

BURSTGPT_6_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type")
BURSTGPT_8_COLUMNS = (
    "Timestamp",
    "Session ID",
    "Elapsed time",
    "Model",
    "Request tokens",
    "Response tokens",
    "Total tokens",
    "Log Type",
)

#: BurstGPT's `Log Type` values -> our `service` values.
BURSTGPT_LOG_TYPES = {"Conversation log": "conversation", "API log": "api"}

SOURCE_COLUMNS = {"timestamp_s": "Timestamp", "request_tokens": "Request tokens",
                  "response_tokens": "Response tokens", "elapsed_s": "Elapsed time"}


def sniff(line: str) -> bool:
    header = {c.strip().strip('"') for c in line.split(",")}
    return ("Timestamp" in header and "Log Type" in header) or "Request tokens" in header


def read(ctx: ReadContext) -> FormatFrame:
    header = csv_header(ctx.path)
    eight = "Session ID" in header
    required = tuple(c for c in (BURSTGPT_8_COLUMNS if eight else BURSTGPT_6_COLUMNS) if c != "Total tokens")
    require_columns(ctx, header, required)
    types: dict[str, pl.DataType] = {
        "Timestamp": pl.Float64(),
        "Model": pl.Utf8(),
        "Request tokens": pl.Int64(),
        "Response tokens": pl.Int64(),
        "Log Type": pl.Utf8(),
    }
    if eight:
        types |= {"Session ID": pl.Utf8(), "Elapsed time": pl.Float64()}
    frame = read_csv_columns(ctx, header, types)
    # Map the few distinct text values once instead of string-processing every row.
    log_types = {v: BURSTGPT_LOG_TYPES.get(v.strip()) for v in frame["Log Type"].unique().drop_nulls()}
    models = {v: v.strip() or None for v in frame["Model"].unique().drop_nulls()}
    frame = frame.with_columns(
        pl.col("Log Type").replace_strict(log_types, default=None, return_dtype=pl.Utf8).alias("service"),
        pl.col("Model").replace_strict(models, default=None, return_dtype=pl.Utf8).alias("model"),
    )
    ctx.flag(frame["model"].is_null(), "Model", "missing model name")
    log_type = frame["Log Type"]
    ctx.flag(frame["service"].is_null(), "Log Type",
             lambda i: f"unknown log type {log_type[i]!r} (expected {' or '.join(BURSTGPT_LOG_TYPES)})")
    frame = frame.select(
        LINE,
        pl.col("Timestamp").alias("timestamp_s"),
        "model",
        "service",
        pl.col("Request tokens").alias("request_tokens"),
        pl.col("Response tokens").alias("response_tokens"),
        (pl.col("Session ID").str.strip_chars() if eight else pl.lit(None, pl.Utf8)).alias("session_id"),
        (pl.col("Elapsed time") if eight else pl.lit(None, pl.Float64)).alias("elapsed_s"),
    )
    return FormatFrame(frame, source_columns=SOURCE_COLUMNS)


register_format(TraceFormat("burstgpt", "BurstGPT release CSV (6 or 8 columns)", read, sniff))
