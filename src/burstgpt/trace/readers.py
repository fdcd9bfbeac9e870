"""Trace readers: BurstGPT CSVs (6 and 8 columns), Azure LLM inference CSVs, Mooncake JSONL, and any CSV or
Parquet file with a column mapping. Every reader returns a `Trace` whose frame has the `TRACE_SCHEMA` columns.

The fast path parses with declared dtypes (multi-threaded, no Python loop over rows). Only when that fails
does a slow path re-read the offending columns as text to name the first bad line and column.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

import polars as pl

from burstgpt.errors import BurstGPTError, InputError
from burstgpt.trace.schema import TRACE_SCHEMA, LoadReport, Trace

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
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length")

#: BurstGPT's `Log Type` values -> our `service` values.
BURSTGPT_LOG_TYPES = {"Conversation log": "conversation", "API log": "api"}

#: Formats accepted by `load_trace(format=...)`.
FORMATS = ("auto", "burstgpt", "azure", "mooncake", "mapped")

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
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}

_DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")


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
    s, ms, us, ns or `datetime` for the timestamp column. Bad values raise `InputError` naming the file, line and
    column, unless `skip_invalid`, which drops those rows and counts them in `load_report.invalid_rows`.
    Rows out of timestamp order are sorted; `load_report.out_of_order_rows` counts them. Schemas without a
    model column get `default_model` (else the format's name); Azure files get their service from the file name
    (`code` -> api, `conv` -> conversation) unless `default_service` is given.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    if format not in FORMATS:
        raise InputError(path, f"unknown trace format {format!r}; choose one of {', '.join(FORMATS)}")
    if column_map:
        format = "mapped"
    is_parquet = path.suffix == ".parquet"
    if format == "auto":
        format = _detect_format(path)

    ctx = _Context(path, skip_invalid)
    if format == "burstgpt":
        frame, trace_origin = _read_burstgpt(ctx), None
    elif format == "azure":
        frame, trace_origin = _read_azure(ctx)
    elif format == "mooncake":
        frame, trace_origin = _read_mooncake(ctx), None
    else:
        if not column_map:
            raise InputError(path, "format 'mapped' needs a column mapping (e.g. timestamp_s=ts,...)")
        frame, trace_origin = _read_mapped(ctx, dict(column_map), time_unit, is_parquet)

    if default_model is None and format in ("azure", "mooncake"):
        default_model = format  # these schemas have no model column
    if default_service is None and format == "azure":
        # Azure publishes one file per service: "...code..." (API-style coding use) or "...conv..." (chat).
        name = path.name.lower()
        default_service = "conversation" if "conv" in name else "api" if "code" in name else None
    if default_model is not None:
        frame = frame.with_columns(pl.col("model").fill_null(default_model))
    if default_service is not None:
        frame = frame.with_columns(pl.col("service").fill_null(default_service))
    frame = _finish(frame)
    out_of_order = int((frame["timestamp_s"].diff() < 0).sum()) if frame.height > 1 else 0
    if out_of_order:
        frame = frame.sort("timestamp_s", maintain_order=True)
    report = LoadReport(rows_read=ctx.rows_read, rows=frame.height, invalid_rows=ctx.invalid_rows,
                        out_of_order_rows=out_of_order)
    return Trace(frame=frame, source=str(path), format=format, origin=origin or trace_origin, load_report=report)


def filter_trace(
    trace: Trace,
    *,
    model: str | None = None,
    service: str | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
) -> Trace:
    """Keep rows of one model and/or service with start_s <= timestamp_s < end_s (seconds)."""
    conditions = []
    if model is not None:
        conditions.append(pl.col("model") == model)
    if service is not None:
        conditions.append(pl.col("service") == service)
    if start_s is not None:
        conditions.append(pl.col("timestamp_s") >= start_s)
    if end_s is not None:
        conditions.append(pl.col("timestamp_s") < end_s)
    if not conditions:
        return trace
    frame = trace.frame.filter(pl.all_horizontal(conditions))
    return Trace(frame=frame, source=trace.source, format=trace.format, origin=trace.origin,
                 load_report=dataclasses.replace(trace.load_report or LoadReport(trace.num_rows, trace.num_rows),
                                                 filtered_rows=frame.height))


# --------------------------------------------------------------------------------------------- detection


def _open_text(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _first_line(path: Path) -> str:
    try:
        with _open_text(path) as fh:
            return fh.readline().strip().lstrip("\ufeff")
    except (OSError, EOFError) as exc:
        raise InputError(path, f"cannot read file: {exc}") from None


def _header(path: Path) -> list[str]:
    return [c.strip() for c in _first_line(path).split(",")]


def _detect_format(path: Path) -> str:
    if path.suffix == ".parquet":
        raise InputError(path, "Parquet traces need a column mapping (--columns timestamp_s=...,...)")
    line = _first_line(path)
    if not line:
        raise InputError(path, "file is empty", line=1)
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"invalid JSON: {exc.msg}", line=1) from None
        missing = [f for f in MOONCAKE_FIELDS if f not in record]
        if missing:
            raise InputError(path, "JSONL record lacks a Mooncake field", line=1, column=missing[0])
        return "mooncake"
    header = set(_header(path))
    if ("Timestamp" in header and "Log Type" in header) or "Request tokens" in header:
        return "burstgpt"
    if "TIMESTAMP" in header or "ContextTokens" in header:
        return "azure"
    raise InputError(
        path,
        "unrecognised header; expected a BurstGPT, Azure or Mooncake trace, or give a column mapping",
        line=1,
    )


# --------------------------------------------------------------------------------------------- reading


class _Context:
    """Per-load state: the file, the invalid-row policy and counters."""

    def __init__(self, path: Path, skip_invalid: bool) -> None:
        self.path = path
        self.skip_invalid = skip_invalid
        self.rows_read = 0
        self.invalid_rows = 0
        self.line_offset = 2  # data row 0 is on line 2, under a CSV header

    def require_columns(self, header: list[str], required: tuple[str, ...]) -> None:
        for name in required:
            if name not in header:
                raise InputError(self.path, f"missing column (header has: {', '.join(header)})", line=1,
                                 column=name)

    def read_csv(self, types: dict[str, pl.DataType]) -> pl.DataFrame:
        """Read the named columns with the given dtypes; on a parse error, name the first bad cell."""
        try:
            frame = pl.read_csv(self.path, columns=list(types), schema_overrides=types, infer_schema=False)
        except pl.exceptions.PolarsError:
            text = self._read_csv_as_text(list(types))
            self.rows_read = text.height
            return self.cast_checked(text, types)
        self.rows_read = frame.height
        return frame

    def _read_csv_as_text(self, columns: list[str]) -> pl.DataFrame:
        try:
            return pl.read_csv(self.path, columns=columns, infer_schema=False)
        except pl.exceptions.PolarsError as exc:
            raise InputError(self.path, f"unreadable CSV: {_first_sentence(exc)}") from None

    def cast_checked(self, frame: pl.DataFrame, types: Mapping[str, pl.DataType]) -> pl.DataFrame:
        """Cast text columns to `types`; a value that does not parse is an error or (skip_invalid) dropped."""
        bad_any = pl.repeat(False, frame.height, eager=True)
        casts = {}
        for name, dtype in types.items():
            source = frame[name]
            cast = source.str.strip_chars().cast(dtype, strict=False) if source.dtype == pl.Utf8 else source.cast(
                dtype, strict=False)
            bad = cast.is_null() & source.is_not_null()
            if bad.any():
                if not self.skip_invalid:
                    row = int(bad.arg_true()[0])
                    raise InputError(self.path, f"not a valid {_type_word(dtype)}: {source[row]!r}",
                                     line=row + self.line_offset, column=name)
                bad_any = bad_any | bad
            casts[name] = cast
        frame = frame.with_columns([s.alias(n) for n, s in casts.items()])
        return self.drop(frame, bad_any)

    def check_values(self, frame: pl.DataFrame, checks: dict[str, pl.Expr], messages: dict[str, str]) -> pl.DataFrame:
        """Each check is a boolean expression true where the row is bad; raise on the first or drop them."""
        flags = frame.select(**checks)
        bad_any = pl.repeat(False, frame.height, eager=True)
        for name in checks:
            bad = flags[name].fill_null(True)
            if bad.any():
                if not self.skip_invalid:
                    row = int(bad.arg_true()[0])
                    raise InputError(self.path, messages[name], line=row + self.line_offset, column=name)
                bad_any = bad_any | bad
        return self.drop(frame, bad_any)

    def drop(self, frame: pl.DataFrame, bad: pl.Series) -> pl.DataFrame:
        n_bad = int(bad.sum())
        if n_bad:
            self.invalid_rows += n_bad
            frame = frame.filter(~bad)
        return frame


def _type_word(dtype: pl.DataType) -> str:
    if dtype.is_integer():
        return "integer"
    if dtype.is_float():
        return "number"
    return str(dtype)


def _first_sentence(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _numeric_checks(columns: Iterable[str]) -> tuple[dict[str, pl.Expr], dict[str, str]]:
    """Missing or negative numeric values, keyed by the source column name shown to the user."""
    checks, messages = {}, {}
    for source in columns:
        checks[source] = pl.col(source).is_null() | (pl.col(source) < 0)
        messages[source] = "missing or negative value"
    return checks, messages


def _read_burstgpt(ctx: _Context) -> pl.DataFrame:
    header = _header(ctx.path)
    eight = "Session ID" in header
    required = BURSTGPT_8_COLUMNS if eight else BURSTGPT_6_COLUMNS
    required = tuple(c for c in required if c != "Total tokens")  # derived; not needed
    ctx.require_columns(header, required)
    types: dict[str, pl.DataType] = {
        "Timestamp": pl.Float64(),
        "Model": pl.Utf8(),
        "Request tokens": pl.Int64(),
        "Response tokens": pl.Int64(),
        "Log Type": pl.Utf8(),
    }
    if eight:
        types |= {"Session ID": pl.Utf8(), "Elapsed time": pl.Float64()}
    frame = ctx.read_csv(types)
    # Map the few distinct text values once instead of string-processing every row.
    log_types = {v: BURSTGPT_LOG_TYPES.get(v.strip()) for v in frame["Log Type"].unique().drop_nulls()}
    models = {v: v.strip() or None for v in frame["Model"].unique().drop_nulls()}
    frame = frame.with_columns(
        pl.col("Log Type").replace_strict(log_types, default=None, return_dtype=pl.Utf8).alias("_service"),
        pl.col("Model").replace_strict(models, default=None, return_dtype=pl.Utf8),
    )
    checks, messages = _numeric_checks(("Timestamp", "Request tokens", "Response tokens"))
    checks["Model"] = pl.col("Model").is_null()
    messages["Model"] = "missing model name"
    checks["Log Type"] = pl.col("_service").is_null()
    messages["Log Type"] = f"unknown log type (expected {' or '.join(BURSTGPT_LOG_TYPES)})"
    frame = ctx.check_values(frame, checks, messages)
    return frame.select(
        pl.col("Timestamp").alias("timestamp_s"),
        pl.col("Model").alias("model"),
        pl.col("_service").alias("service"),
        pl.col("Request tokens").alias("request_tokens"),
        pl.col("Response tokens").alias("response_tokens"),
        (pl.col("Session ID").str.strip_chars() if eight else pl.lit(None, pl.Utf8)).alias("session_id"),
        (pl.col("Elapsed time") if eight else pl.lit(None, pl.Float64)).alias("elapsed_s"),
    )


def _parse_datetimes(ctx: _Context, frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """Parse a datetime text column into `_dt`, trying common layouts; bad cells are errors or dropped."""
    text = frame[column].str.strip_chars()
    parsed = None
    for fmt in _DATETIME_FORMATS:
        attempt = text.str.to_datetime(fmt, time_unit="us", strict=False)
        if attempt.null_count() == text.null_count() or parsed is None:
            parsed = attempt
        if attempt.null_count() == text.null_count():
            break
    bad = parsed.is_null()
    if bad.any() and not ctx.skip_invalid:
        row = int(bad.arg_true()[0])
        raise InputError(ctx.path, f"not a valid datetime: {frame[column][row]!r}", line=row + ctx.line_offset,
                         column=column)
    return ctx.drop(frame.with_columns(parsed.alias("_dt")), bad)


def _seconds_from_day_start(frame: pl.DataFrame) -> tuple[pl.DataFrame, datetime | None]:
    """Turn `_dt` into seconds from midnight of the trace's first day, so hour of day keeps its meaning."""
    if frame.height == 0:
        return frame.with_columns(pl.lit(None, pl.Float64).alias("timestamp_s")), None
    origin = frame["_dt"].min().replace(hour=0, minute=0, second=0, microsecond=0)
    seconds = (pl.col("_dt") - pl.lit(origin)).dt.total_microseconds().cast(pl.Float64) / 1e6
    return frame.with_columns(seconds.alias("timestamp_s")), origin


def _read_azure(ctx: _Context) -> tuple[pl.DataFrame, datetime | None]:
    header = _header(ctx.path)
    ctx.require_columns(header, AZURE_COLUMNS)
    frame = ctx.read_csv({"TIMESTAMP": pl.Utf8(), "ContextTokens": pl.Int64(), "GeneratedTokens": pl.Int64()})
    frame = _parse_datetimes(ctx, frame, "TIMESTAMP")
    checks, messages = _numeric_checks(("ContextTokens", "GeneratedTokens"))
    frame = ctx.check_values(frame, checks, messages)
    frame, origin = _seconds_from_day_start(frame)
    return frame.select(
        "timestamp_s",
        pl.lit(None, pl.Utf8).alias("model"),
        pl.lit(None, pl.Utf8).alias("service"),
        pl.col("ContextTokens").alias("request_tokens"),
        pl.col("GeneratedTokens").alias("response_tokens"),
        pl.lit(None, pl.Utf8).alias("session_id"),
        pl.lit(None, pl.Float64).alias("elapsed_s"),
    ), origin


def _read_mooncake(ctx: _Context) -> pl.DataFrame:
    ctx.line_offset = 1  # no header line in JSONL
    try:
        frame = pl.read_ndjson(ctx.path, infer_schema_length=None)
    except pl.exceptions.PolarsError:
        frame = _read_jsonl_locating_error(ctx)
    for name in MOONCAKE_FIELDS:
        if name not in frame.columns:
            raise InputError(ctx.path, "missing field in every record", line=1, column=name)
    ctx.rows_read = frame.height
    frame = ctx.cast_checked(
        frame.select(MOONCAKE_FIELDS),
        {"timestamp": pl.Float64(), "input_length": pl.Int64(), "output_length": pl.Int64()},
    )
    checks, messages = _numeric_checks(MOONCAKE_FIELDS)
    frame = ctx.check_values(frame, checks, messages)
    return frame.select(
        (pl.col("timestamp") / 1000.0).alias("timestamp_s"),
        pl.lit(None, pl.Utf8).alias("model"),
        pl.lit(None, pl.Utf8).alias("service"),
        pl.col("input_length").alias("request_tokens"),
        pl.col("output_length").alias("response_tokens"),
        pl.lit(None, pl.Utf8).alias("session_id"),
        pl.lit(None, pl.Float64).alias("elapsed_s"),
    )


def _read_jsonl_locating_error(ctx: _Context) -> pl.DataFrame:
    """Slow path, only after polars failed: parse line by line to name the bad line."""
    records = []
    with _open_text(ctx.path) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if ctx.skip_invalid:
                    ctx.invalid_rows += 1
                    continue
                raise InputError(ctx.path, f"invalid JSON: {exc.msg}", line=number) from None
            if not isinstance(record, dict):
                raise InputError(ctx.path, "a JSON object is expected on each line", line=number)
            records.append({k: record.get(k) for k in MOONCAKE_FIELDS})
    return pl.DataFrame(records, schema=dict.fromkeys(MOONCAKE_FIELDS, pl.Float64), strict=False)


def _read_mapped(
    ctx: _Context, column_map: dict[str, str], time_unit: str, is_parquet: bool
) -> tuple[pl.DataFrame, datetime | None]:
    unknown = [t for t in column_map if t not in MAPPABLE_COLUMNS]
    if unknown:
        raise InputError(ctx.path, f"cannot map onto {unknown[0]!r}; mappable: {', '.join(MAPPABLE_COLUMNS)}")
    for target in ("timestamp_s", "request_tokens", "response_tokens"):
        if target not in column_map:
            raise InputError(ctx.path, f"the column mapping must name a source for {target!r}")
    if time_unit not in TIME_UNITS and time_unit != "datetime":
        raise InputError(ctx.path, f"unknown time unit {time_unit!r}; use s, ms, us, ns or datetime")
    sources = list(dict.fromkeys(column_map.values()))
    if is_parquet:
        try:
            header = list(pl.read_parquet_schema(ctx.path))
        except Exception as exc:  # noqa: BLE001 - any unreadable Parquet file is the user's input problem
            raise InputError(ctx.path, f"unreadable Parquet file: {_first_sentence(exc)}") from None
        ctx.line_offset = 1  # report 1-based row numbers
    else:
        header = _header(ctx.path)
    ctx.require_columns(header, tuple(sources))
    if is_parquet:
        frame = pl.read_parquet(ctx.path, columns=sources)
        ctx.rows_read = frame.height
    else:
        frame = ctx.read_csv(dict.fromkeys(sources, pl.Utf8()))

    numeric_targets = {"request_tokens": pl.Int64(), "response_tokens": pl.Int64(), "elapsed_s": pl.Float64()}
    if time_unit != "datetime":
        numeric_targets["timestamp_s"] = pl.Float64()
    types = {column_map[t]: d for t, d in numeric_targets.items() if t in column_map}
    frame = ctx.cast_checked(frame, types)
    origin = None
    ts_source = column_map["timestamp_s"]
    if time_unit == "datetime":
        if frame[ts_source].dtype == pl.Utf8:
            frame = _parse_datetimes(ctx, frame, ts_source)
        else:
            frame = frame.with_columns(pl.col(ts_source).cast(pl.Datetime("us")).alias("_dt"))
        frame, origin = _seconds_from_day_start(frame)
    else:
        frame = frame.with_columns((pl.col(ts_source) * TIME_UNITS[time_unit]).alias("timestamp_s"))
    checks, messages = _numeric_checks(column_map[t] for t in ("request_tokens", "response_tokens"))
    checks[ts_source] = pl.col("timestamp_s").is_null() | (pl.col("timestamp_s") < 0)
    messages[ts_source] = "missing or negative timestamp"
    frame = ctx.check_values(frame, checks, messages)

    def text_or_null(target: str) -> pl.Expr:
        if target in column_map:
            return pl.col(column_map[target]).cast(pl.Utf8).alias(target)
        return pl.lit(None, pl.Utf8).alias(target)

    failed = None
    if "failed" in column_map:
        raw = pl.col(column_map["failed"]).cast(pl.Utf8).str.strip_chars().str.to_lowercase()
        failed = raw.is_in(["1", "true", "yes", "t", "y"]).alias("failed")
    service = text_or_null("service")
    if "service" in column_map:
        service = service.str.to_lowercase().replace({"conversation log": "conversation", "api log": "api"})
    columns = [
        "timestamp_s",
        text_or_null("model"),
        service.alias("service"),
        pl.col(column_map["request_tokens"]).alias("request_tokens"),
        pl.col(column_map["response_tokens"]).alias("response_tokens"),
        text_or_null("session_id"),
        (pl.col(column_map["elapsed_s"]) if "elapsed_s" in column_map else pl.lit(None, pl.Float64)).alias(
            "elapsed_s"),
    ]
    if failed is not None:
        columns.append(failed)
    return frame.select(columns), origin


def _finish(frame: pl.DataFrame) -> pl.DataFrame:
    """Derive `failed` where the reader did not (BurstGPT: zero response tokens) and cast to TRACE_SCHEMA."""
    if "failed" not in frame.columns:
        frame = frame.with_columns((pl.col("response_tokens") == 0).alias("failed"))
    return frame.select([pl.col(name).cast(dtype) for name, dtype in TRACE_SCHEMA.items()])


def parse_column_map(text: str) -> dict[str, str]:
    """Parse `target=source,target=source` (as given on the command line) into a mapping."""
    mapping = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        target, sep, source = part.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise BurstGPTError(f"--columns: expected target=source, got {part!r}")
        mapping[target.strip()] = source.strip()
    return mapping
