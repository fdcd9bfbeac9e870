"""Traces: load real LLM serving traces into one normalised table (see `burstgpt.trace.schema`).

Formats live one per module in `burstgpt.trace.formats` and register in `burstgpt.trace.registry`."""

from burstgpt.trace.filters import filter_trace, filter_trace_frame
from burstgpt.trace.readers import FORMATS, load_trace, parse_column_map
from burstgpt.trace.registry import TraceFormat, register_format
from burstgpt.trace.schema import MAX_TIMESTAMP_S, MAX_TOKENS, SERVICES, TRACE_SCHEMA, LoadReport, Trace

__all__ = [
    "FORMATS", "MAX_TIMESTAMP_S", "MAX_TOKENS", "LoadReport", "SERVICES", "TRACE_SCHEMA", "Trace", "TraceFormat",
    "filter_trace", "filter_trace_frame", "load_trace", "parse_column_map", "register_format",
]
