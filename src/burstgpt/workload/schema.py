"""The workload table: one row per request to send, in arrival order.

| column            | dtype   | meaning                                                                          |
|-------------------|---------|----------------------------------------------------------------------------------|
| request_id        | Int64   | 0..n-1 in arrival order                                                          |
| arrival_s         | Float64 | scheduled send time, seconds from the workload's start (non-decreasing)          |
| input_tokens      | Int64   | prompt length in tokens (under the workload's tokenizer)                         |
| output_tokens     | Int64   | intended output length when the workload fixes it (replay, empirical, fixed):    |
|                   |         | sent as max_tokens with ignore_eos; the simulator generates exactly this many.  |
|                   |         | null = left to the model (the paper's default), capped by max_output_tokens     |
| max_output_tokens | Int64   | max_tokens cap, nullable                                                         |
| prompt            | Utf8    | prompt text, nullable (then the client synthesises one of input_tokens tokens)   |
| model             | Utf8    | model name to request, nullable (the client's --model then applies)              |
| service           | Utf8    | `conversation` or `api`, nullable                                                |
| session_id        | Utf8    | nullable                                                                         |
"""

from __future__ import annotations

import polars as pl

from burstgpt.records import conform_to_schema

WORKLOAD_SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.Int64(),
    "arrival_s": pl.Float64(),
    "input_tokens": pl.Int64(),
    "output_tokens": pl.Int64(),
    "max_output_tokens": pl.Int64(),
    "prompt": pl.Utf8(),
    "model": pl.Utf8(),
    "service": pl.Utf8(),
    "session_id": pl.Utf8(),
}


def conform_workload(frame: pl.DataFrame) -> pl.DataFrame:
    """Add missing workload columns as nulls (request_id as 0..n-1), cast to the schema and order the columns."""
    if "request_id" not in frame.columns:
        frame = frame.with_row_index("request_id")
    return conform_to_schema(frame, WORKLOAD_SCHEMA)
