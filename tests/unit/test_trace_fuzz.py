"""Property-based tests: every trace reader, fed random bytes, random rows under a right header and random
numeric extremes, either loads a trace that satisfies the schema's invariants or raises our input error."""

from __future__ import annotations

import gzip
import json
import math
import tempfile
from datetime import datetime
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from burstgpt.errors import BurstGPTError
from burstgpt.trace import MAX_TIMESTAMP_S, MAX_TOKENS, TRACE_SCHEMA, Trace, load_trace

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

#: Per format: its header, the kind of value each column holds, and how to load it.
CSV_FORMATS = {
    "burstgpt6": (["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type"],
                  ["seconds", "model", "tokens", "tokens", "tokens", "log_type"], "burstgpt", {}),
    "burstgpt8": (["Timestamp", "Session ID", "Elapsed time", "Model", "Request tokens", "Response tokens",
                   "Total tokens", "Log Type"],
                  ["seconds", "text", "seconds", "model", "tokens", "tokens", "tokens", "log_type"], "burstgpt", {}),
    "azure": (["TIMESTAMP", "ContextTokens", "GeneratedTokens"], ["datetime", "tokens", "tokens"], "azure", {}),
    "mapped_ms": (["t", "in", "out", "who"], ["seconds", "tokens", "tokens", "model"], "mapped",
                  {"column_map": {"timestamp_s": "t", "request_tokens": "in", "response_tokens": "out",
                                  "model": "who"}, "time_unit": "ms"}),
    "mapped_datetime": (["t", "in", "out", "who"], ["datetime", "tokens", "tokens", "model"], "mapped",
                        {"column_map": {"timestamp_s": "t", "request_tokens": "in", "response_tokens": "out",
                                        "model": "who"}, "time_unit": "datetime"}),
}
MAP = CSV_FORMATS["mapped_ms"][3]["column_map"]

#: (format, load_trace options) for every reader, mapped with each kind of time unit.
READERS = [("auto", {}), ("mooncake", {})] + [(fmt, options) for _, _, fmt, options in CSV_FORMATS.values()]

NUMERIC_EXTREMES = ["0", "-0", "1", "-1", "1.5", "1e308", "-1e308", "1e309", "nan", "NaN", "inf", "-inf",
                    "4000000000", "100000001", "99999999999999999999999", "9223372036854775807", "1e9", "1e-300",
                    "0x10", "+3", " 7 ", ""]
TEXT_VALUES = ["ChatGPT", "GPT-4", "API log", "Conversation log", "Web log", "s1", "2023-11-16 18:17:03.97",
               "9999-01-01 00:00:00", "0001-01-01 00:00:00", '"quoted,comma"', '"', "é", "\u2028", "\ufffd",
               "\x00", "\r"]

VALID = {
    "seconds": st.floats(min_value=0, max_value=1e6).map(repr) | st.integers(0, 10**6).map(str),
    "tokens": st.integers(0, 10**5).map(str),
    "model": st.sampled_from(["ChatGPT", "GPT-4", "llama"]),
    "log_type": st.sampled_from(["Conversation log", "API log"]),
    "text": st.text(alphabet="abc123", max_size=4),
    "datetime": st.datetimes(datetime(2023, 1, 1), datetime(2024, 1, 1)).map(lambda d: d.isoformat(" ")),
}
anything = st.one_of(st.sampled_from(NUMERIC_EXTREMES), st.sampled_from(TEXT_VALUES),
                     st.integers(min_value=-(10**20), max_value=10**20).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=8))


@st.composite
def csv_row(draw, kinds: list[str]) -> list[str]:
    """Mostly valid cells, some extreme or random; sometimes a field too many or too few."""
    row = [draw(VALID[k]) for k in kinds]
    if draw(st.integers(0, 2)) == 0:  # one odd cell in a third of the rows
        row[draw(st.integers(0, len(row) - 1))] = draw(anything)
    change = draw(st.sampled_from([0] * 14 + [-1, 1]))
    if change < 0:
        row.pop(draw(st.integers(0, len(row) - 1)))
    elif change > 0:
        row.insert(draw(st.integers(0, len(row))), draw(anything))
    return row


def check_invariants(trace: Trace) -> None:
    """What every loaded trace guarantees (see burstgpt.trace.schema)."""
    frame = trace.frame
    assert dict(frame.schema) == TRACE_SCHEMA
    ts = frame["timestamp_s"]
    assert ts.null_count() == 0 and ts.is_finite().all()
    assert frame.height == 0 or (ts.min() >= 0 and ts.max() <= MAX_TIMESTAMP_S)
    assert ts.is_sorted()
    for column in ("request_tokens", "response_tokens"):
        tokens = frame[column]
        assert tokens.null_count() == 0
        assert frame.height == 0 or (tokens.min() >= 0 and tokens.max() <= MAX_TOKENS)
    elapsed = frame["elapsed_s"].drop_nulls()
    assert elapsed.len() == 0 or (elapsed.is_finite().all() and elapsed.min() >= 0)
    ids = frame["prefix_block_ids"].explode().drop_nulls()
    assert ids.len() == 0 or ids.min() >= 0
    report = trace.load_report
    assert report.rows == frame.height and report.rows_read - report.invalid_rows == frame.height


def load_or_refuse(data: bytes, suffix: str, compress: bool, format: str, options: dict, skip: bool) -> None:
    """Write `data` to a file and load it: only a trace meeting the invariants or a BurstGPTError may result."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"trace{suffix}{'.gz' if compress else ''}"
        path.write_bytes(gzip.compress(data) if compress else data)
        try:
            trace = load_trace(path, format=format, skip_invalid=skip, **options)
        except BurstGPTError as exc:
            assert "\n" not in str(exc)
            return
        check_invariants(trace)


PREFIXES = ["", '{"timestamp": 1, "input_length": 2, "output_length": 3}\n',
            *(",".join(header) + "\n" for header, *_ in CSV_FORMATS.values())]


@FUZZ
@given(prefix=st.sampled_from(PREFIXES), data=st.binary(max_size=300),
       suffix=st.sampled_from([".csv", ".jsonl", ".parquet"]), compress=st.booleans(),
       reader=st.sampled_from(READERS), skip=st.booleans())
def test_random_bytes(prefix, data, suffix, compress, reader, skip):
    """Random bytes, alone or under a real header or first record."""
    load_or_refuse(prefix.encode() + data, suffix, compress, reader[0], reader[1], skip)


@FUZZ
@given(data=st.data(), name=st.sampled_from(list(CSV_FORMATS)), compress=st.booleans(), skip=st.booleans(),
       crlf=st.booleans(), auto=st.booleans())
def test_random_csv_rows(data, name, compress, skip, crlf, auto):
    """The right header, then random rows: right and wrong field counts, unicode, numeric extremes."""
    header, kinds, fmt, options = CSV_FORMATS[name]
    rows = data.draw(st.lists(csv_row(kinds), min_size=1, max_size=8))
    eol = "\r\n" if crlf else "\n"
    text = ",".join(header) + eol + "".join(",".join(row) + eol for row in rows)
    if auto and not options:
        fmt = "auto"
    load_or_refuse(text.encode("utf-8", "surrogatepass"), ".csv", compress, fmt, options, skip)


@FUZZ
@given(data=st.data(), name=st.sampled_from(list(CSV_FORMATS)), skip=st.booleans())
def test_numeric_extremes_in_every_column(data, name, skip):
    """Rows whose numeric cells are all extremes (1e308, -0, nan, huge ints, ...) and other cells valid."""
    header, kinds, fmt, options = CSV_FORMATS[name]
    numeric = st.sampled_from(NUMERIC_EXTREMES) | VALID["tokens"]
    cell = {k: numeric if k in ("seconds", "tokens") else VALID[k] for k in kinds}
    rows = data.draw(st.lists(st.tuples(*(cell[k] for k in kinds)), min_size=1, max_size=5))
    text = ",".join(header) + "\n" + "".join(",".join(row) + "\n" for row in rows)
    load_or_refuse(text.encode(), ".csv", False, fmt, options, skip)


json_scalar = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**25), max_value=10**25),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5))
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3),
                                                                                                    inner, max_size=3),
                          max_leaves=8)
json_extreme = st.sampled_from([0, -0.0, -1, 1.5, 1e308, -1e308, math.nan, math.inf, -math.inf, 4_000_000_000,
                                 10**25, 2**63, True, "5", None])
mooncake_record = st.fixed_dictionaries(
    {"timestamp": st.integers(0, 10**8) | st.floats(0, 1e8) | json_extreme,
     "input_length": st.integers(0, 10**5) | json_extreme, "output_length": st.integers(0, 10**5) | json_extreme},
    optional={"hash_ids": st.lists(st.integers(min_value=0, max_value=10**6), max_size=4)
              | st.lists(st.integers(min_value=-5, max_value=2**64), max_size=4) | json_value,
              "extra": json_value},
)
jsonl_line = st.one_of(mooncake_record.map(json.dumps), mooncake_record.map(json.dumps),
                       mooncake_record.map(json.dumps), json_value.map(json.dumps), st.text(max_size=20), st.just(""))


@FUZZ
@given(lines=st.lists(jsonl_line, min_size=1, max_size=6), compress=st.booleans(), skip=st.booleans())
def test_random_jsonl_records(lines, compress, skip):
    text = "\n".join(lines) + "\n"
    load_or_refuse(text.encode("utf-8", "surrogatepass"), ".jsonl", compress, "mooncake", {}, skip)
    load_or_refuse(text.encode("utf-8", "surrogatepass"), ".jsonl", compress, "auto", {}, skip)


parquet_column = st.one_of(
    st.lists(st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1)), min_size=3, max_size=3),
    st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), min_size=3, max_size=3),
    st.lists(st.one_of(st.none(), st.sampled_from(NUMERIC_EXTREMES + TEXT_VALUES)), min_size=3, max_size=3),
)


@FUZZ
@given(t=parquet_column, requests=parquet_column, responses=parquet_column,
       unit=st.sampled_from(["s", "ms", "ns", "datetime"]), skip=st.booleans())
def test_random_parquet_columns(t, requests, responses, unit, skip):
    frame = pl.DataFrame({"t": t, "in": requests, "out": responses, "who": ["a", None, "b"]}, strict=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.parquet"
        frame.write_parquet(path)
        load_or_refuse(path.read_bytes(), ".parquet", False, "mapped", {"column_map": MAP, "time_unit": unit}, skip)


def test_invariants_reject_what_the_fix_refuses():
    """The invariant check itself can fail: a NaN timestamp breaks it."""
    frame = pl.DataFrame({"timestamp_s": [math.nan]}).with_columns(
        [pl.lit(None, dtype).alias(name) for name, dtype in TRACE_SCHEMA.items() if name != "timestamp_s"])
    from burstgpt.trace import LoadReport

    try:
        check_invariants(Trace(frame, "mem", "test", load_report=LoadReport(1, 1)))
    except AssertionError:
        return
    raise AssertionError("check_invariants accepted a NaN timestamp")
