"""Azure LLM inference trace CSVs (2023/2024): TIMESTAMP (datetime), ContextTokens, GeneratedTokens. Azure
publishes one file per service; the file name says which (`code` -> api, `conv` -> conversation)."""

from __future__ import annotations

import polars as pl

from burstgpt.trace.parsing import LINE, ReadContext, csv_header, read_csv_columns, require_columns
from burstgpt.trace.registry import FormatFrame, TraceFormat, register_format

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def sniff(line: str) -> bool:
    header = {c.strip().strip('"') for c in line.split(",")}
    return "TIMESTAMP" in header or "ContextTokens" in header


def read(ctx: ReadContext) -> FormatFrame:
    header = csv_header(ctx.path)
    require_columns(ctx, header, AZURE_COLUMNS)
    frame = read_csv_columns(ctx, header, {"TIMESTAMP": pl.Utf8(), "ContextTokens": pl.Int64(),
                                           "GeneratedTokens": pl.Int64()})
    frame, origin = ctx.parse_datetimes(frame, "TIMESTAMP")
    name = ctx.path.name.lower()
    service = "conversation" if "conv" in name else "api" if "code" in name else None
    frame = frame.select(
        LINE,
        "timestamp_s",
        pl.col("ContextTokens").alias("request_tokens"),
        pl.col("GeneratedTokens").alias("response_tokens"),
    )
    return FormatFrame(frame, origin=origin, default_model="azure", default_service=service,
                       source_columns={"timestamp_s": "TIMESTAMP", "request_tokens": "ContextTokens",
                                       "response_tokens": "GeneratedTokens"})


register_format(TraceFormat("azure", "Azure LLM inference trace CSV", read, sniff))
