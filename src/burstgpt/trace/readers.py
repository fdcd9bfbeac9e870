"""`load_trace`: read any registered trace format (see `burstgpt.trace.formats`) into the normalised table of
`burstgpt.trace.schema`, validated, sorted and with a `LoadReport`.

Each format reads with declared dtypes first (multi-threaded, no Python loop over rows); only when that
fails does its slow path re-read the file as text to name the first bad line and column.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import polars as pl

from burstgpt.errors import BurstGPTError, InputError
from burstgpt.tables import conform_to_schema
from burstgpt.trace import formats as _builtin_formats  # noqa: F401  (registers the built-in formats)
from burstgpt.trace.filters import filter_trace, filter_trace_frame
from burstgpt.trace.formats.burstgpt import BURSTGPT_6_COLUMNS, BURSTGPT_8_COLUMNS, BURSTGPT_LOG_TYPES
from burstgpt.trace.formats.mapped import MAPPABLE_COLUMNS, TIME_UNITS
from burstgpt.trace.parsing import LINE, ReadContext
from burstgpt.trace.registry import FormatFrame, detect_format, format_kinds, get_format
from burstgpt.trace.schema import TRACE_SCHEMA, LoadReport, Trace
from burstgpt.trace.validation import flag_invalid_rows

#: Formats accepted by `load_trace(format=...)`: "auto" and every registered kind.
FORMATS = ("auto", *format_kinds())

__all__ = [
    "BURSTGPT_6_COLUMNS", "BURSTGPT_8_COLUMNS", "BURSTGPT_LOG_TYPES", "FORMATS", "MAPPABLE_COLUMNS", "TIME_UNITS",
    "filter_trace", "filter_trace_frame", "load_trace", "parse_column_map",
]


def load_trace(
    path: str | Path,
    *,
    format: str = "auto",
    column_map: Mapping[str, str] | None = None,
    time_unit: str = "s",
    skip_invalid: bool = False,
    default_model: str | None = None,
    default_service: str | None = None,
    origin: datetime | None = None,
) -> Trace:
    """Load, validate and normalise a trace file (gzip accepted) into a `Trace`.

    `format="auto"` picks the reader from the header (CSV) or the first record (JSONL); a `column_map`
    (target column -> source column, see `MAPPABLE_COLUMNS`) selects the mapped reader, with `time_unit` one of
    s, ms, us, ns or `datetime` for the timestamp column. Bad values (unparsable, missing, negative,
    non-finite, timestamps more than `MAX_TIMESTAMP_S` from the origin, token counts over `MAX_TOKENS`, rows
    with the wrong number of fields, undecodable text) raise `InputError` naming the file, line and column,
    unless `skip_invalid`, which drops those rows and counts them in `load_report.invalid_rows`.
    Rows out of timestamp order are sorted; `load_report.out_of_order_rows` counts them. Schemas without a
    model column get `default_model` (else the format's name); Azure files get their service from the file name
    (`code` -> api, `conv` -> conversation) unless `default_service` is given.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    if format != "auto" and format not in format_kinds():
        raise InputError(path, f"unknown trace format {format!r}; choose one of {', '.join(FORMATS)}")
    if column_map:
        format = "mapped"
    trace_format = detect_format(path) if format == "auto" else get_format(format, path)

    ctx = ReadContext(path, skip_invalid=skip_invalid, column_map=column_map, time_unit=time_unit)
    result = _read_validated(trace_format.read, ctx)
    if ctx.problems and not result.exact_lines and not skip_invalid:
        # The fast path's row numbers may be off (it skips blank lines): read again, locating every record.
        ctx = ReadContext(path, skip_invalid=skip_invalid, column_map=column_map, time_unit=time_unit, locate=True)
        result = _read_validated(trace_format.read, ctx)
    frame = ctx.resolve(result.frame)

    model = default_model if default_model is not None else result.default_model
    service = default_service if default_service is not None else result.default_service
    frame = conform_to_schema(frame, TRACE_SCHEMA)
    if model is not None:
        frame = frame.with_columns(pl.col("model").fill_null(model))
    if service is not None:
        frame = frame.with_columns(pl.col("service").fill_null(service))
    if "failed" not in result.frame.columns:  # BurstGPT's definition of a failure: no response tokens
        frame = frame.with_columns((pl.col("response_tokens") == 0).alias("failed"))
    out_of_order = int((frame["timestamp_s"].diff() < 0).sum()) if frame.height > 1 else 0
    if out_of_order:
        frame = frame.sort("timestamp_s", maintain_order=True)
    report = LoadReport(rows_read=ctx.rows_read, rows=frame.height, invalid_rows=ctx.invalid_rows,
                        out_of_order_rows=out_of_order)
    block_size = result.prefix_block_size if frame["prefix_block_ids"].null_count() < frame.height else None
    return Trace(frame=frame, source=str(path), format=trace_format.kind, origin=origin or result.origin,
                 load_report=report, prefix_block_size=block_size)


def _read_validated(read, ctx: ReadContext) -> FormatFrame:
    """Run a format's reader and the common row checks; any polars or I/O error left is the file's fault."""
    try:
        result = read(ctx)
        flag_invalid_rows(ctx, result.frame, result.source_columns)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ctx.cannot_read(exc) from None
    if LINE not in result.frame.columns:
        raise TypeError(f"trace reader for {ctx.path} returned no {LINE!r} column")
    return result


def parse_column_map(text: str) -> dict[str, str]:
    """Parse `target=source,target=source` (as given on the command line) into a mapping."""
    mapping = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        target, sep, source = part.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise BurstGPTError(f"--columns: expected target=source, got {part!r}")
        mapping[target.strip()] = source.strip()
    return mapping
