"""Mooncake JSONL traces: one object per line with `timestamp` (milliseconds), `input_length`, `output_length`
and optionally `hash_ids`, the ids of the prompt's 512-token KV blocks (equal ids = identical blocks)."""

from __future__ import annotations

import json

import polars as pl

from burstgpt.errors import InputError
from burstgpt.trace.parsing import LINE, ReadContext, read_lines
from burstgpt.trace.registry import FormatFrame, TraceFormat, register_format

MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length")
HASH_IDS = "hash_ids"

#: Tokens per `hash_ids` entry in Mooncake's published traces.
MOONCAKE_BLOCK_TOKENS = 512

_SCHEMA = {"timestamp": pl.Float64(), "input_length": pl.Int64(), "output_length": pl.Int64(),
           HASH_IDS: pl.List(pl.Int64())}


def sniff(line: str) -> bool:
    return line.startswith("{")


def read(ctx: ReadContext) -> FormatFrame:
    frame, exact_lines = None, True
    if not ctx.locate:
        try:
            frame = pl.read_ndjson(ctx.path, schema=_SCHEMA)
            # read_ndjson skips blank lines, so row i may not be on line i + 1: a problem re-reads with locate.
            frame = frame.with_row_index(LINE, offset=1).with_columns(pl.col(LINE).cast(pl.Int64))
            exact_lines = False
        except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
            if isinstance(exc, OSError) and ctx.is_gzip:
                raise ctx.cannot_read(exc) from None
    if frame is None:
        frame = _read_locating(ctx)
    ctx.rows_read = frame.height
    if frame.height and not ctx.problems:
        for name in MOONCAKE_FIELDS:
            if frame[name].null_count() == frame.height:
                raise InputError(ctx.path, "missing field in every record", line=1, column=name)
    has_ids = frame[HASH_IDS].null_count() < frame.height
    frame = frame.select(
        LINE,
        (pl.col("timestamp") / 1000.0).alias("timestamp_s"),
        pl.col("input_length").alias("request_tokens"),
        pl.col("output_length").alias("response_tokens"),
        pl.col(HASH_IDS).alias("prefix_block_ids"),
    )
    return FormatFrame(frame, default_model="mooncake", exact_lines=exact_lines,
                       prefix_block_size=MOONCAKE_BLOCK_TOKENS if has_ids else None,
                       source_columns={"timestamp_s": "timestamp", "request_tokens": "input_length",
                                       "response_tokens": "output_length", "prefix_block_ids": HASH_IDS})


def _number_text(value: object) -> str | None:
    """A JSON value as text for the typed cast: numbers as written, null as null, anything else as JSON (so
    the cast refuses it and the message shows it)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value) if isinstance(value, float) else str(value)
    return json.dumps(value)[:100]


def _block_ids(value: object) -> tuple[list[int] | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, list) and all(type(x) is int and 0 <= x < 2**63 for x in value):
        return value, None
    return None, f"must be a list of non-negative integers, got {json.dumps(value)[:80]}"


def _read_locating(ctx: ReadContext) -> pl.DataFrame:
    """Slow path, only after the fast read failed or found a problem: parse line by line (blank lines
    skipped) so each record keeps its line number and each bad record is flagged, not fatal."""
    lines = read_lines(ctx)
    numbers, texts, ids, line_errors, id_errors = [], {n: [] for n in MOONCAKE_FIELDS}, [], [], []
    for number, line in enumerate(lines.to_list(), start=1):
        if line is None or not line.strip():
            continue
        try:
            record = json.loads(line)
            error = None if isinstance(record, dict) else "a JSON object is expected on each line"
        except (json.JSONDecodeError, RecursionError) as exc:
            record, error = None, f"invalid JSON: {getattr(exc, 'msg', 'nested too deeply')}"
        if error is not None or "\ufffd" in line:
            record = {}
            error = error or "not valid UTF-8 text"
        numbers.append(number)
        line_errors.append(error)
        for name in MOONCAKE_FIELDS:
            texts[name].append(_number_text(record.get(name)))
        block_ids, id_error = _block_ids(record.get(HASH_IDS))
        ids.append(block_ids)
        id_errors.append(id_error)
    frame = pl.DataFrame(
        {LINE: numbers, **texts, HASH_IDS: ids},
        schema={LINE: pl.Int64, **dict.fromkeys(MOONCAKE_FIELDS, pl.Utf8), HASH_IDS: pl.List(pl.Int64)},
    )
    line_error = pl.Series(line_errors, dtype=pl.Utf8)
    ctx.flag(line_error.is_not_null(), None, lambda i: line_error[i])
    id_error = pl.Series(id_errors, dtype=pl.Utf8)
    ctx.flag(id_error.is_not_null(), HASH_IDS, lambda i: id_error[i])
    return ctx.cast_text(frame, {k: v for k, v in _SCHEMA.items() if k != HASH_IDS})


register_format(TraceFormat("mooncake", "Mooncake JSONL trace", read, sniff))
