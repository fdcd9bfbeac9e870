"""Selecting rows of a trace: by model, service and time range."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import polars as pl

from burstgpt.trace.schema import LoadReport, Trace


def _names(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def filter_trace_frame(
    frame: pl.DataFrame,
    *,
    models: str | Iterable[str] | None = None,
    services: str | Iterable[str] | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
) -> pl.DataFrame:
    """Rows of a trace table of any of `models` and any of `services` (a name or several; None or empty keeps
    all) with start_s <= timestamp_s < end_s (trace seconds; None: unbounded)."""
    conditions = []
    if models := _names(models):
        conditions.append(pl.col("model").is_in(models))
    if services := _names(services):
        conditions.append(pl.col("service").is_in(services))
    if start_s is not None:
        conditions.append(pl.col("timestamp_s") >= start_s)
    if end_s is not None:
        conditions.append(pl.col("timestamp_s") < end_s)
    return frame.filter(pl.all_horizontal(conditions)) if conditions else frame


def filter_trace(
    trace: Trace,
    *,
    model: str | Iterable[str] | None = None,
    service: str | Iterable[str] | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
) -> Trace:
    """The trace's rows of `model` and `service` with start_s <= timestamp_s < end_s (seconds), as a `Trace`
    whose `load_report.filtered_rows` says how many were kept (see `filter_trace_frame`)."""
    if model is None and service is None and start_s is None and end_s is None:
        return trace
    frame = filter_trace_frame(trace.frame, models=model, services=service, start_s=start_s, end_s=end_s)
    report = trace.load_report or LoadReport(trace.num_rows, trace.num_rows)
    return dataclasses.replace(trace, frame=frame, load_report=dataclasses.replace(report, filtered_rows=frame.height))
