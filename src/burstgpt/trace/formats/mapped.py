"""Any CSV or Parquet file, given a column mapping (trace column -> file column) and the timestamp's unit.
Never auto-detected: `load_trace(column_map=...)` (CLI `--columns`) selects it."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from burstgpt.errors import InputError
from burstgpt.trace.parsing import LINE, ReadContext, csv_header, first_sentence, read_csv_columns, require_columns
from burstgpt.trace.registry import FormatFrame, TraceFormat, register_format
from burstgpt.trace.schema import MAX_TIMESTAMP_S

#: Target columns a column mapping may fill; the first three are required.
MAPPABLE_COLUMNS = (
    "timestamp_s",
    "request_tokens",
    "response_tokens",
    "model",
    "service",
    "failed",
    "session_id",
    "elapsed_s",
)
REQUIRED_COLUMNS = MAPPABLE_COLUMNS[:3]

#: Seconds per unit of a numeric timestamp column; `datetime` (text or temporal column) is the other choice.
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}

#: Unix times past this (2100-01-01 UTC) are not taken as epoch timestamps.
_LATEST_EPOCH_S = 4_102_444_800.0

_TRUE_WORDS = ["1", "true", "yes", "t", "y"]
_NUMERIC_TARGETS = {"request_tokens": pl.Int64(), "response_tokens": pl.Int64(), "elapsed_s": pl.Float64(),
                    "timestamp_s": pl.Float64()}


def _check_mapping(ctx: ReadContext, column_map: dict[str, str]) -> None:
    unknown = [t for t in column_map if t not in MAPPABLE_COLUMNS]
    if unknown:
        raise InputError(ctx.path, f"cannot map onto {unknown[0]!r}; mappable: {', '.join(MAPPABLE_COLUMNS)}")
    for target in REQUIRED_COLUMNS:
        if target not in column_map:
            raise InputError(ctx.path, f"the column mapping must name a source for {target!r}")
    if ctx.time_unit not in TIME_UNITS and ctx.time_unit != "datetime":
        raise InputError(ctx.path, f"unknown time unit {ctx.time_unit!r}; use s, ms, us, ns or datetime")


def _read_parquet(ctx: ReadContext, sources: list[str]) -> pl.DataFrame:
    try:
        header = list(pl.read_parquet_schema(ctx.path))
    except Exception as exc:  # noqa: BLE001 - any unreadable Parquet file is the user's input problem
        raise InputError(ctx.path, f"unreadable Parquet file: {first_sentence(exc)}") from None
    require_columns(ctx, header, tuple(sources))
    try:
        frame = pl.read_parquet(ctx.path, columns=sources)
    except Exception as exc:  # noqa: BLE001 - as above: a corrupt file, not our bug
        raise InputError(ctx.path, f"unreadable Parquet file: {first_sentence(exc)}") from None
    ctx.rows_read = frame.height
    # Parquet has no lines: report 1-based row numbers in their place.
    return frame.with_row_index(LINE, offset=1).with_columns(pl.col(LINE).cast(pl.Int64))


def _from_unix_epoch(frame: pl.DataFrame) -> tuple[pl.DataFrame, datetime | None]:
    """Numeric timestamps whose median lies past `MAX_TIMESTAMP_S` (31.7 years) cannot be seconds from a trace's
    start: they are Unix times (UTC). Measure them from midnight UTC of the trace's first day, as datetimes are,
    so hour of day keeps its meaning; that midnight is the trace's origin. Other timestamps stay as they are."""
    finite = frame["timestamp_s"].filter(frame["timestamp_s"].is_finite())
    median = finite.median() if finite.len() else None
    if median is None or not MAX_TIMESTAMP_S < median < _LATEST_EPOCH_S:
        return frame, None  # not epoch times: anything implausible is refused by the trace checks
    plausible = finite.filter((finite - median).abs() <= MAX_TIMESTAMP_S)  # one bogus row must not move it
    if plausible.len() == 0:
        return frame, None
    midnight = float(plausible.min() // 86400.0 * 86400.0)
    origin = datetime.fromtimestamp(midnight, UTC).replace(tzinfo=None)
    return frame.with_columns(pl.col("timestamp_s") - midnight), origin


def read(ctx: ReadContext) -> FormatFrame:
    if not ctx.column_map:
        raise InputError(ctx.path, "format 'mapped' needs a column mapping (e.g. timestamp_s=ts,...)")
    column_map = dict(ctx.column_map)
    _check_mapping(ctx, column_map)
    sources = list(dict.fromkeys(column_map.values()))
    if ctx.path.suffix == ".parquet":
        frame = _read_parquet(ctx, sources)
    else:
        header = csv_header(ctx.path)
        require_columns(ctx, header, tuple(sources))
        frame = read_csv_columns(ctx, header, dict.fromkeys(sources, pl.Utf8()))

    # One column per target (a file column may feed two targets), named by target; messages use file names.
    frame = frame.select(LINE, *(pl.col(source).alias(target) for target, source in column_map.items()))
    datetime_unit = ctx.time_unit == "datetime"
    types = {t: d for t, d in _NUMERIC_TARGETS.items()
             if t in column_map and not (t == "timestamp_s" and datetime_unit)}
    frame = ctx.cast_text(frame, types, labels=column_map)
    origin = None
    if datetime_unit:
        frame, origin = ctx.parse_datetimes(frame, "timestamp_s", label=column_map["timestamp_s"])
    else:
        frame = frame.with_columns(pl.col("timestamp_s") * TIME_UNITS[ctx.time_unit])
        frame, origin = _from_unix_epoch(frame)

    columns = [LINE, "timestamp_s", "request_tokens", "response_tokens"]
    if "elapsed_s" in column_map:
        columns.append("elapsed_s")
    for target in ("model", "session_id"):
        if target in column_map:
            columns.append(pl.col(target).cast(pl.Utf8))
    if "service" in column_map:
        columns.append(pl.col("service").cast(pl.Utf8).str.to_lowercase()
                       .replace({"conversation log": "conversation", "api log": "api"}))
    if "failed" in column_map:
        columns.append(pl.col("failed").cast(pl.Utf8).str.strip_chars().str.to_lowercase().is_in(_TRUE_WORDS)
                       .fill_null(False))
    return FormatFrame(frame.select(columns), origin=origin, source_columns=column_map)


register_format(TraceFormat("mapped", "any CSV or Parquet file with a column mapping", read))
