"""Shared machinery of the trace readers: the per-load context that collects row problems, file opening,
CSV reading with a fast typed path and a slow locating path, and text-to-number/datetime conversion.

Readers never drop rows themselves: they flag bad rows (`ReadContext.flag`) on a frame aligned with the
file's records, and `ReadContext.resolve` then raises the problem on the earliest line or, with
`skip_invalid`, drops every flagged row at once.
"""

from __future__ import annotations

import functools
import gzip
import operator
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from burstgpt.errors import InputError
from burstgpt.trace.schema import MAX_TIMESTAMP_S

#: Name of the column every reader adds: the 1-based line (CSV/JSONL) or row (Parquet) of each record.
LINE = "_line"

GZIP_MAGIC = b"\x1f\x8b"

DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")


@dataclass
class Problem:
    """Rows that break one rule: `rows` is true where bad; `message(i)` describes row i."""

    rows: pl.Series
    column: str | None
    message: Callable[[int], str]


@dataclass
class ReadContext:
    """Per-load state: the file, the options, the rows read and the problems found so far."""

    path: Path
    skip_invalid: bool = False
    column_map: Mapping[str, str] | None = None
    time_unit: str = "s"
    locate: bool = False  # take the slow path that knows every record's line (set after a fast-path problem)
    rows_read: int = 0
    invalid_rows: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def is_gzip(self) -> bool:
        with open(self.path, "rb") as fh:
            return fh.read(2) == GZIP_MAGIC

    def flag(self, rows: pl.Series, column: str | None, message: str | Callable[[int], str]) -> None:
        """Record that `rows` (boolean, aligned with the reader's frame; null counts as fine) are bad."""
        rows = rows.fill_null(False)
        if rows.any():
            self.problems.append(Problem(rows, column, message if callable(message) else lambda _i: message))

    def resolve(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Raise the problem on the earliest line (ties: the first flagged), or drop every flagged row when
        `skip_invalid`; returns the frame without the flagged rows."""
        if not self.problems:
            return frame
        if not self.skip_invalid:
            lines = frame[LINE]
            first = [(int(lines[i]), order, i) for order, p in enumerate(self.problems)
                     for i in [int(p.rows.arg_true()[0])]]
            line, order, row = min(first)
            problem = self.problems[order]
            raise InputError(self.path, problem.message(row), line=line, column=problem.column)
        bad = functools.reduce(operator.or_, (p.rows for p in self.problems))
        self.invalid_rows += int(bad.sum())
        return frame.filter(~bad)

    def cannot_read(self, exc: BaseException) -> InputError:
        """The error for a file polars or gzip could not read at all (corrupt gzip, not CSV, ...)."""
        if isinstance(exc, (OSError, EOFError, zlib.error)) and self.is_gzip:
            return InputError(self.path, f"corrupt or truncated gzip file ({first_sentence(exc)})")
        return InputError(self.path, f"cannot read file: {first_sentence(exc)}")

    # ----------------------------------------------------------------------------------------- conversion

    def cast_text(
        self, frame: pl.DataFrame, types: Mapping[str, pl.DataType], labels: Mapping[str, str] | None = None
    ) -> pl.DataFrame:
        """Cast the named columns to `types`; a value that does not parse becomes null and is flagged (under
        the column's name in the file, `labels[name]`, when given)."""
        labels = labels or {}
        casts = []
        for name, dtype in types.items():
            source = frame[name]
            text = source.str.strip_chars() if source.dtype == pl.Utf8 else source
            try:
                cast = text.cast(dtype, strict=False)
            except pl.exceptions.PolarsError:  # e.g. a nested Parquet column: no value can be cast
                cast = pl.repeat(None, frame.height, dtype=dtype, eager=True)
            self.flag(cast.is_null() & source.is_not_null(), labels.get(name, name),
                      lambda i, s=source, d=dtype: f"not a valid {type_word(d)}: {s[i]!r}")
            casts.append(cast.alias(name))
        return frame.with_columns(casts)

    def parse_datetimes(
        self, frame: pl.DataFrame, column: str, label: str | None = None
    ) -> tuple[pl.DataFrame, datetime | None]:
        """Turn a datetime column (text in one of `DATETIME_FORMATS`, or temporal) into `timestamp_s`, seconds
        from midnight of the trace's first day (so hour of day keeps its meaning), and return that midnight.

        Bad text is flagged; so are instants more than `MAX_TIMESTAMP_S` from the trace's median instant,
        which would otherwise drag the origin decades away from every other row.
        """
        source = frame[column]
        label = label or column
        if source.dtype == pl.Utf8:
            text = source.str.strip_chars()
            parsed = None
            for fmt in DATETIME_FORMATS:
                attempt = text.str.to_datetime(fmt, time_unit="us", strict=False)
                if parsed is None or attempt.null_count() < parsed.null_count():
                    parsed = attempt
                if attempt.null_count() == text.null_count():
                    break
            self.flag(parsed.is_null() & source.is_not_null(), label,
                      lambda i: f"not a valid datetime: {source[i]!r}")
        else:
            try:
                parsed = source.cast(pl.Datetime("us"))
            except pl.exceptions.PolarsError:
                raise InputError(self.path, f"a {source.dtype} column cannot hold datetimes",
                                 column=label) from None
        parsed = parsed.dt.replace_time_zone(None) if getattr(parsed.dtype, "time_zone", None) else parsed
        # Integer microseconds from 1970; instants Python cannot hold (years outside 1..9999) count as absent.
        micros = parsed.dt.epoch("us")
        in_range = micros.is_between(_EARLIEST_US, _LATEST_US)
        micros = micros.zip_with(in_range.fill_null(False), pl.Series([None], dtype=pl.Int64))
        present = micros.drop_nulls().sort()
        if present.len():
            median = present[(present.len() - 1) // 2]  # an instant of the trace, even for two rows
            far = ((micros - median).abs() > MAX_TIMESTAMP_S * 1e6) | ~in_range
        else:
            far = ~in_range
        self.flag(far, label, lambda i: f"implausible datetime {source[i]!r} (more than {MAX_TIMESTAMP_S:.0e} s "
                                        "from the trace's median time)")
        plausible = micros.filter(~far.fill_null(False)).drop_nulls()
        if plausible.len() == 0:
            return frame.with_columns(pl.lit(None, pl.Float64).alias("timestamp_s")), None
        day_us = 86_400 * 10**6
        origin_us = plausible.min() // day_us * day_us  # midnight of the first day
        seconds = (micros - origin_us).cast(pl.Float64) / 1e6
        return frame.with_columns(seconds.alias("timestamp_s")), _EPOCH + timedelta(microseconds=origin_us)


_EPOCH = datetime(1970, 1, 1)
_EARLIEST_US = (datetime(1, 1, 2) - _EPOCH) // timedelta(microseconds=1)
_LATEST_US = (datetime(9999, 12, 30) - _EPOCH) // timedelta(microseconds=1)


def type_word(dtype: pl.DataType) -> str:
    if dtype.is_integer():
        return "integer"
    if dtype.is_float():
        return "number"
    return str(dtype)


def first_sentence(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------- files


def first_line(path: Path, *, skip_blank: bool = False) -> str:
    """The file's first line (or first non-blank line; gzip accepted), without BOM and surrounding whitespace."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        opener = gzip.open if magic == GZIP_MAGIC else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                line = line.strip().lstrip("\ufeff")
                if line or not skip_blank:
                    return line
            return ""
    except (OSError, EOFError, zlib.error) as exc:
        raise ReadContext(path).cannot_read(exc) from None


def csv_header(path: Path) -> list[str]:
    """Column names on the first line of a CSV file (quotes stripped)."""
    return [c.strip().strip('"').strip() for c in first_line(path).split(",")]


def require_columns(ctx: ReadContext, header: list[str], required: tuple[str, ...]) -> None:
    """Raise for the first of `required` missing from `header` (line 1)."""
    for name in required:
        if name not in header:
            raise InputError(ctx.path, f"missing column (header has: {', '.join(header)})", line=1, column=name)


def read_lines(ctx: ReadContext) -> pl.Series:
    """Every physical line of the file as text (gzip accepted; bad UTF-8 replaced by U+FFFD; blank lines null).
    Slow path only: used to locate problems, never to read a valid file."""
    try:
        lines = pl.read_csv(ctx.path, has_header=False, separator="\x00", quote_char=None, infer_schema=False,
                            new_columns=["line"], encoding="utf8-lossy", truncate_ragged_lines=True,
                            schema_overrides={"line": pl.Utf8})
    except pl.exceptions.NoDataError:
        return pl.Series("line", [], dtype=pl.Utf8)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ctx.cannot_read(exc) from None
    return lines.to_series()


def count_fields(lines: pl.Series) -> pl.Series:
    """Comma-separated fields on each line (quoted commas do not count; blank lines have 0)."""
    unquoted = lines.str.replace_all(r'"[^"]*"', "")
    return (unquoted.str.count_matches(",", literal=True) + 1).fill_null(0).cast(pl.Int64)


# --------------------------------------------------------------------------------------------- CSV


def read_csv_columns(ctx: ReadContext, header: list[str], types: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """The `types` columns of a CSV file with a header, cast to their dtypes, plus `LINE`.

    Fast path: one typed, multi-threaded read of every column (polars itself refuses a row with an extra
    field). Only after a failure, or when the last column has gaps (the mark of rows with missing fields),
    the slow path re-reads the file as text to flag each bad cell, row width or undecodable line.
    """
    all_types = {name: types.get(name, pl.Utf8()) for name in header}
    if not ctx.locate:
        try:
            frame = pl.read_csv(ctx.path, schema_overrides=all_types, infer_schema=False)
        except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
            if isinstance(exc, OSError) and ctx.is_gzip:
                raise ctx.cannot_read(exc) from None
            frame = None
        if frame is not None and frame.columns == header and frame[header[-1]].null_count() == 0:
            ctx.rows_read = frame.height
            return frame.select(list(types)).with_row_index(LINE, offset=2).with_columns(pl.col(LINE).cast(pl.Int64))
    return _read_csv_locating(ctx, header, types)


def _read_csv_locating(ctx: ReadContext, header: list[str], types: Mapping[str, pl.DataType]) -> pl.DataFrame:
    columns = list(types)
    # Read as text; if that fails, read again replacing bad UTF-8, then also ignoring quotes, and flag the lines
    # with the problem that made the earlier attempt fail.
    attempts = [{}, {"encoding": "utf8-lossy"}, {"encoding": "utf8-lossy", "quote_char": None}]
    text, failures = None, []
    for options in attempts:
        try:
            text = pl.read_csv(ctx.path, columns=columns, infer_schema=False, truncate_ragged_lines=True, **options)
            break
        except pl.exceptions.NoDataError:
            text = pl.DataFrame(schema=dict.fromkeys(columns, pl.Utf8))
            break
        except (pl.exceptions.PolarsError, OSError) as exc:
            if isinstance(exc, OSError) and ctx.is_gzip:
                raise ctx.cannot_read(exc) from None
            failures.append(exc)
    if text is None:
        raise ctx.cannot_read(failures[-1])
    bad_utf8 = any("utf-8" in str(exc).lower() or "utf8" in str(exc).lower() for exc in failures)
    bad_quotes = len(failures) == 2 or (len(failures) == 1 and not bad_utf8)
    ctx.rows_read = text.height
    text = text.with_row_index(LINE, offset=2).with_columns(pl.col(LINE).cast(pl.Int64))
    lines = read_lines(ctx)
    # Records and lines align unless a quoted field spans lines; then row widths cannot be told per line.
    if lines.len() == text.height + 1:
        records = lines.slice(1)
        fields = count_fields(records)
        expected = len(header)
        ctx.flag(fields == 0, None, f"empty line (expected {expected} fields)")
        ctx.flag((fields != expected) & (fields > 0), None,
                 lambda i: f"expected {expected} fields, found {fields[i]}")
        if bad_utf8:
            ctx.flag(records.str.contains("\ufffd", literal=True), None, "not valid UTF-8 text")
        if bad_quotes:
            ctx.flag(records.str.count_matches('"', literal=True) % 2 == 1, None, "unterminated quoted field")
    elif bad_utf8 or bad_quotes:
        raise ctx.cannot_read(failures[-1])
    return ctx.cast_text(text, {name: dtype for name, dtype in types.items() if dtype != pl.Utf8})
