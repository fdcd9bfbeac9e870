"""The workload table: one row per request to send, in arrival order.

| column            | dtype   | meaning                                                                          |
|-------------------|---------|----------------------------------------------------------------------------------|
| request_id        | Int64   | 0..n-1 in arrival order                                                          |
| arrival_s         | Float64 | scheduled send time, seconds from the workload's start (finite, >= 0, sorted)    |
| input_tokens      | Int64   | prompt length in tokens (under the workload's tokenizer)                         |
| output_tokens     | Int64   | intended output length when the workload fixes it (replay, empirical, fixed):    |
|                   |         | sent as max_tokens with ignore_eos; the simulator generates exactly this many.  |
|                   |         | null = left to the model (the paper's default), capped by max_output_tokens     |
| max_output_tokens | Int64   | max_tokens cap, nullable                                                         |
| prompt            | Utf8    | prompt text, nullable (then the client synthesises one of input_tokens tokens)   |
| model             | Utf8    | model name to request, nullable (the client's --model then applies)              |
| service           | Utf8    | `conversation` or `api`, nullable                                                |
| session_id        | Utf8    | conversation session, nullable                                                   |
| prefix_block_ids  | List    | List(Int64), nullable: ids of the prompt's leading blocks of prefix_block_size   |
|                   |         | tokens; equal ids = identical text (the client makes it; the last id may cover   |
|                   |         | a partial block); the rest of the prompt is the request's own text              |
| prefix_block_size | Int64   | tokens per prefix block id (512 for Mooncake), null where there are no ids       |
| turn              | Int64   | 0-based turn within session_id, nullable; a later turn is sent only after the    |
|                   |         | previous turn of its session has ended (`burstgpt.client.runner`)               |
| think_time_s      | Float64 | nullable: seconds between the end of the previous turn and this turn's send;    |
|                   |         | null for a later turn: sent at max(previous end, arrival_s)                      |
| client_id         | Utf8    | the client a request comes from, nullable (a ServeGen pool: the client's file    |
|                   |         | path, e.g. `language/m-large/chunk-0`); `workload inspect` shows the client mix  |

A later turn's `arrival_s` is the earliest it could be sent (generated sessions: the previous turn's arrival
plus the think time; replay: the recorded time); the simulator and open-loop consumers use it as is.

`validate_workload` is the one check every consumer (`bench`, `simulate`, `serve-sim`, the Python API) runs
before using a workload: a NaN or decreasing arrival would make a scheduler wait forever.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from burstgpt.errors import InputError
from burstgpt.tables import conform_to_schema, first_true_index

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
    "prefix_block_ids": pl.List(pl.Int64()),
    "prefix_block_size": pl.Int64(),
    "turn": pl.Int64(),
    "think_time_s": pl.Float64(),
    "client_id": pl.Utf8(),
}

#: Longest plausible arrival time, seconds (about 31.7 years): anything beyond is a unit or data error.
MAX_ARRIVAL_S = 1e9
#: Longest plausible prompt or output, tokens: beyond any model's context window.
MAX_TOKENS = 100_000_000


def conform_workload(frame: pl.DataFrame) -> pl.DataFrame:
    """Add missing workload columns as nulls (request_id as 0..n-1), cast to the schema and order the columns."""
    if "request_id" not in frame.columns:
        frame = frame.with_row_index("request_id")
    return conform_to_schema(frame, WORKLOAD_SCHEMA)


def validate_workload(frame: pl.DataFrame, source: str | Path = "workload") -> pl.DataFrame:
    """Check a workload and return it conformed to the schema; raise `InputError` naming `source`, the 1-based row and the
    column for the first bad value: arrival_s missing, non-finite, negative, over MAX_ARRIVAL_S or
    decreasing; input_tokens missing, negative or over MAX_TOKENS; output/max_output tokens negative or over
    MAX_TOKENS; prefix block ids negative, without a size, or covering more than the prompt; turn negative;
    think_time_s non-finite or negative."""
    if list(frame.schema.items()) != list(WORKLOAD_SCHEMA.items()):
        frame = conform_workload(frame)
    arrival = frame["arrival_s"]
    checks = [
        ("arrival_s", arrival.is_null() | ~arrival.is_finite(), "missing or not a finite number"),
        ("arrival_s", arrival < 0, "negative arrival time"),
        ("arrival_s", arrival > MAX_ARRIVAL_S, f"arrival time over {MAX_ARRIVAL_S:.0e} s (wrong unit?)"),
        ("arrival_s", arrival.diff() < 0, "arrival times must not decrease (sort the workload by arrival_s)"),
        ("input_tokens", frame["input_tokens"].is_null() | (frame["input_tokens"] < 0),
         "missing or negative token count"),
    ]
    for name in ("input_tokens", "output_tokens", "max_output_tokens"):
        checks.append((name, frame[name] > MAX_TOKENS, f"over {MAX_TOKENS:,} tokens: not a plausible length"))
    for name in ("output_tokens", "max_output_tokens"):
        checks.append((name, frame[name] < 0, "negative token count"))
    think = frame["think_time_s"]
    checks += [
        ("turn", frame["turn"] < 0, "negative turn"),
        ("think_time_s", think.is_not_null() & (~think.is_finite() | (think < 0) | (think > MAX_ARRIVAL_S)),
         "think time must be a finite number of seconds >= 0"),
    ]
    ids, size = frame["prefix_block_ids"], frame["prefix_block_size"]
    if ids.null_count() < frame.height:
        has_ids = ids.list.len().fill_null(0) > 0
        checks += [
            ("prefix_block_size", has_ids & (size.is_null() | (size < 1)), "prefix block ids need a positive size"),
            ("prefix_block_ids", ids.list.eval(pl.element().is_null() | (pl.element() < 0)).list.any(),
             "prefix block ids must be non-negative integers"),
            ("prefix_block_ids", has_ids & ((ids.list.len() - 1) * size >= frame["input_tokens"]),
             "prefix block ids cover more than the prompt (ids x size >= input_tokens + size)"),
        ]
    for column, mask, message in checks:
        bad = first_true_index(mask)
        if bad is not None:
            raise InputError(source, f"{message} (request_id {frame['request_id'][bad]})",
                             line=bad + 1, column=column)
    return frame
