"""Traces: load real LLM serving traces into one normalised table (see `burstgpt.trace.schema`)."""

from burstgpt.trace.readers import FORMATS, filter_trace, load_trace, parse_column_map
from burstgpt.trace.schema import SERVICES, TRACE_SCHEMA, LoadReport, Trace

__all__ = ["FORMATS", "LoadReport", "SERVICES", "TRACE_SCHEMA", "Trace", "filter_trace", "load_trace", "parse_column_map"]
