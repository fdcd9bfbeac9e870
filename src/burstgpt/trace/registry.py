"""Trace formats by kind. A format is one module in `burstgpt.trace.formats` that registers a `TraceFormat`:
how to recognise its files (`sniff`) and how to read them (`read`). `load_trace` dispatches through here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl

from burstgpt.errors import InputError
from burstgpt.trace.parsing import ReadContext, first_line


@dataclass
class FormatFrame:
    """What a reader returns.

    `frame` has any of the `TRACE_SCHEMA` columns (absent ones become nulls) plus `parsing.LINE`, one row per
    record read (bad rows flagged on the context, not dropped); `source_columns` maps trace columns to the
    file's own names for messages. `default_model`/`default_service` fill nulls; `origin` is the wall-clock
    instant of timestamp 0 when the format knows it; `prefix_block_size` is tokens per prefix block id.
    `exact_lines` is false when `parsing.LINE` may be off (a fast path that skips blank lines): a problem
    then makes `load_trace` read again with `ReadContext.locate` set.
    """

    frame: pl.DataFrame
    source_columns: dict[str, str] = field(default_factory=dict)
    origin: datetime | None = None
    default_model: str | None = None
    default_service: str | None = None
    prefix_block_size: int | None = None
    exact_lines: bool = True


@dataclass(frozen=True)
class TraceFormat:
    """A trace format: `kind` names it (`load_trace(format=kind)`, `--format`); `sniff(first_line)` says whether
    a file is one (None: never picked by auto-detection); `read(ctx)` reads `ctx.path`."""

    kind: str
    description: str
    read: Callable[[ReadContext], FormatFrame]
    sniff: Callable[[str], bool] | None = None


_FORMATS: dict[str, TraceFormat] = {}


def register_format(trace_format: TraceFormat) -> TraceFormat:
    """Add a format (auto-detection tries formats in registration order)."""
    if trace_format.kind in _FORMATS or trace_format.kind == "auto":
        raise ValueError(f"trace format {trace_format.kind!r} is already registered")
    _FORMATS[trace_format.kind] = trace_format
    return trace_format


def format_kinds() -> tuple[str, ...]:
    """Registered format kinds, in registration order."""
    return tuple(_FORMATS)


def get_format(kind: str, path: Path) -> TraceFormat:
    if kind not in _FORMATS:
        raise InputError(path, f"unknown trace format {kind!r}; choose one of auto, {', '.join(_FORMATS)}")
    return _FORMATS[kind]


def detect_format(path: Path) -> TraceFormat:
    """The first registered format whose `sniff` accepts the file's first line."""
    if path.suffix == ".parquet":
        raise InputError(path, "Parquet traces need a column mapping (--columns timestamp_s=...,...)")
    line = first_line(path)
    if not line:
        empty = path.stat().st_size == 0 or not first_line(path, skip_blank=True)
        raise InputError(path, "file is empty" if empty else "line 1 is blank; expected a header or a JSON record",
                         line=1)
    for trace_format in _FORMATS.values():
        if trace_format.sniff is not None and trace_format.sniff(line):
            return trace_format
    known = ", ".join(f.kind for f in _FORMATS.values() if f.sniff is not None)
    raise InputError(path, f"unrecognised header; expected a trace of format {known}, or give a column mapping",
                     line=1)
