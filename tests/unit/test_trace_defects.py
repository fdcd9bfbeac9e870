"""Regression tests for the trace-reader defects of issue 8: non-finite and implausible values, corrupt gzip,
rows with the wrong number of fields, undecodable bytes, Mooncake block ids, and the CLI's one-line errors."""

from __future__ import annotations

import gzip
import json
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from burstgpt.cli import main
from burstgpt.errors import InputError
from burstgpt.trace import load_trace

HEADER6 = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
HEADER8 = "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
MAP_MS = {"timestamp_s": "t", "request_tokens": "in", "response_tokens": "out"}


def _row6(ts="1", req="3", resp="4"):
    return f"{ts},ChatGPT,{req},{resp},7,API log\n"


def _row8(ts="1", req="3", resp="4", elapsed="0.5"):
    return f"{ts},s1,{elapsed},ChatGPT,{req},{resp},7,Conversation log\n"


def _mooncake(ts="1000", req="3", resp="4"):
    return f'{{"timestamp": {ts}, "input_length": {req}, "output_length": {resp}, "hash_ids": [0]}}\n'


def _mapped(ts="1000", req="3", resp="4"):
    return f"{ts},{req},{resp}\n"


#: reader -> (file name, header, row builder, load_trace options, the timestamp column's name in the file)
READERS = {
    "burstgpt6": ("t.csv", HEADER6, _row6, {}, "Timestamp"),
    "burstgpt8": ("t.csv", HEADER8, _row8, {}, "Timestamp"),
    "mooncake": ("t.jsonl", "", _mooncake, {}, "timestamp"),
    "mapped_ms": ("t.csv", "t,in,out\n", _mapped, {"column_map": MAP_MS, "time_unit": "ms"}, "t"),
}
TOKEN_COLUMN = {"burstgpt6": "Request tokens", "burstgpt8": "Request tokens", "mooncake": "input_length",
                "mapped_ms": "in"}


def _write(tmp_path: Path, reader: str, bad_row: str) -> tuple[Path, dict]:
    name, header, row, options, _ = READERS[reader]
    path = tmp_path / name
    path.write_text(header + row() + bad_row + row())
    return path, options


def _bad_line(reader: str) -> int:
    return 2 if reader == "mooncake" else 3  # JSONL has no header line


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e300", "2e12"])
def test_non_finite_and_implausible_timestamps_are_refused(tmp_path, reader, value):
    """nan/inf used to load (and hang simulate/bench later); 1e300 loaded and crashed analyze. 2e12 is 2e12 s for
    BurstGPT and 2e9 s after the millisecond readers' unit conversion: both beyond 1e9 s."""
    if reader == "mooncake" and value in ("inf", "-inf", "nan"):
        value = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}[value]  # JSON spellings
    path, options = _write(tmp_path, reader, READERS[reader][2](ts=value))
    with pytest.raises(InputError) as info:
        load_trace(path, **options)
    assert (info.value.line, info.value.column) == (_bad_line(reader), READERS[reader][4])
    assert "finite" in info.value.message or "implausible" in info.value.message or "negative" in info.value.message


@pytest.mark.parametrize("reader", READERS)
def test_skip_invalid_drops_non_finite_timestamps(tmp_path, reader):
    bad = READERS[reader][2](ts="NaN" if reader == "mooncake" else "nan")
    path, options = _write(tmp_path, reader, bad)
    trace = load_trace(path, skip_invalid=True, **options)
    assert trace.frame["timestamp_s"].is_finite().all() and trace.num_rows == 2
    assert trace.load_report.invalid_rows == 1 and trace.load_report.rows_read == 3


def test_plausible_millisecond_timestamps_still_load(tmp_path):
    path, options = _write(tmp_path, "mapped_ms", _mapped(ts="5e11"))  # 5e8 s: under the bound
    assert load_trace(path, **options).frame["timestamp_s"].max() == 5e8


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e300"])
def test_bad_elapsed_time_is_refused(tmp_path, value):
    path, _ = _write(tmp_path, "burstgpt8", _row8(elapsed=value))
    with pytest.raises(InputError) as info:
        load_trace(path)
    assert (info.value.line, info.value.column) == (3, "Elapsed time")
    assert load_trace(path, skip_invalid=True).load_report.invalid_rows == 1


def test_implausible_azure_datetime_is_refused_without_moving_the_origin(tmp_path):
    path = tmp_path / "azure_code.csv"
    path.write_text(AZURE_HEADER + "2023-11-16 18:17:03.97,4,5\n9999-11-16 18:17:04,4,5\n2023-11-16 19:00:00,1,1\n")
    with pytest.raises(InputError) as info:
        load_trace(path)
    assert (info.value.line, info.value.column) == (3, "TIMESTAMP")
    trace = load_trace(path, skip_invalid=True)
    assert trace.origin.year == 2023 and trace.frame["timestamp_s"].max() == 19 * 3600


def test_out_of_range_parquet_datetimes_are_refused(tmp_path):
    """Integer microseconds beyond Python's datetimes used to panic inside polars when taking the origin."""
    path = tmp_path / "t.parquet"
    pl.DataFrame({"t": [2**62, 2**62, 10**6], "in": [1, 2, 3], "out": [1, 2, 3]}).write_parquet(path)
    options = {"column_map": {"timestamp_s": "t", "request_tokens": "in", "response_tokens": "out"},
               "time_unit": "datetime"}
    with pytest.raises(InputError, match="implausible datetime") as info:
        load_trace(path, **options)
    assert (info.value.line, info.value.column) == (1, "t")
    trace = load_trace(path, skip_invalid=True, **options)
    assert trace.frame["timestamp_s"].to_list() == [1.0] and trace.origin.year == 1970


@pytest.mark.parametrize("reader", READERS)
def test_implausible_token_counts_are_refused(tmp_path, reader):
    """4e9 request tokens used to load and make analyze/fit allocate ~30 GiB."""
    path, options = _write(tmp_path, reader, READERS[reader][2](req="4000000000"))
    with pytest.raises(InputError, match="implausible token count") as info:
        load_trace(path, **options)
    assert (info.value.line, info.value.column) == (_bad_line(reader), TOKEN_COLUMN[reader])
    trace = load_trace(path, skip_invalid=True, **options)
    assert trace.num_rows == 2 and trace.frame["request_tokens"].max() == 3


def _gzip_corruptions(payload: bytes) -> dict[str, bytes]:
    whole = gzip.compress(payload)
    return {"truncated": whole[: len(whole) // 2], "no_trailer": whole[:-4],
            "garbage": b"\x1f\x8b" + b"not deflate data" * 8}


@pytest.mark.parametrize("kind", ["truncated", "no_trailer", "garbage"])
@pytest.mark.parametrize("suffix", [".csv.gz", ".jsonl.gz"])
def test_corrupt_gzip_is_an_input_error(tmp_path, kind, suffix):
    if suffix == ".csv.gz":
        payload = (HEADER6 + _row6() * 3000).encode()
    else:
        payload = "".join(_mooncake(ts=str(i)) for i in range(3000)).encode()
    path = tmp_path / f"t{suffix}"
    path.write_bytes(_gzip_corruptions(payload)[kind])
    with pytest.raises(InputError, match="gzip") as info:
        load_trace(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize(
    ("name", "header", "rows", "options", "expected", "found"),
    [
        ("t.csv", HEADER6, _row6() + "2,ChatGPT,3,4,7,API log,extra\n", {}, 6, 7),
        ("t.csv", HEADER8, _row8() + "2,s1,0.5,ChatGPT,3,4,7,Conversation log,x\n", {}, 8, 9),
        ("azure_code.csv", AZURE_HEADER, "2023-11-16 18:17:03.97,4,5\n2023-11-16 18:17:04,4,5,6\n", {}, 3, 4),
        ("t.csv", "t,in,out,note\n", "1,2,3,a\n2,3,4,b,c\n", {"column_map": MAP_MS}, 4, 5),
        # a missing field was reported as an 'unknown log type' (BurstGPT) or accepted (mapped)
        ("t.csv", HEADER6, _row6() + "2,ChatGPT,3,4,API log\n", {}, 6, 5),
        ("azure_code.csv", AZURE_HEADER, "2023-11-16 18:17:03.97,4,5\n2023-11-16 18:17:04,4\n", {}, 3, 2),
        ("t.csv", "t,in,out,note\n", "1,2,3,a\n2,3,4\n", {"column_map": MAP_MS}, 4, 3),
    ],
)
def test_row_with_the_wrong_number_of_fields_is_refused(tmp_path, name, header, rows, options, expected, found):
    """An extra field used to be silently dropped."""
    path = tmp_path / name
    path.write_text(header + rows)
    with pytest.raises(InputError) as info:
        load_trace(path, **options)
    assert info.value.line == 3 and info.value.message == f"expected {expected} fields, found {found}"
    trace = load_trace(path, skip_invalid=True, **options)
    assert trace.num_rows == 1 and trace.load_report.invalid_rows == 1


def test_quoted_commas_are_not_extra_fields(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(HEADER6 + '1,"Chat,GPT",3,4,7,API log\n2,ChatGPT,3,-4,7,API log\n')
    with pytest.raises(InputError) as info:  # the real problem, not a miscounted row
        load_trace(path)
    assert (info.value.line, info.value.column) == (3, "Response tokens")


@pytest.mark.parametrize("bad_line", ["2,Chat\xffGPT,3,4,7,API log\n", "2\xfe,ChatGPT,3,4,7,API log\n"])
def test_non_utf8_bytes_name_the_line(tmp_path, bad_line):
    path = tmp_path / "t.csv"
    path.write_bytes((HEADER6 + _row6() + bad_line + _row6()).encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8") as info:
        load_trace(path)
    assert info.value.line == 3
    assert load_trace(path, skip_invalid=True).load_report.invalid_rows == 1


def test_jsonl_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(_mooncake() + "\n\n" + _mooncake(ts="NaN"))
    with pytest.raises(InputError) as info:
        load_trace(path)
    assert (info.value.line, info.value.column) == (4, "timestamp")


@pytest.mark.parametrize("hash_ids", ["[-1]", '["a"]', "[1.5]", "5", '{"a": 1}', "[99999999999999999999]"])
def test_bad_mooncake_hash_ids_are_refused(tmp_path, hash_ids):
    path = tmp_path / "t.jsonl"
    bad = f'{{"timestamp": 2, "input_length": 3, "output_length": 4, "hash_ids": {hash_ids}}}\n'
    path.write_text(_mooncake() + bad)
    with pytest.raises(InputError) as info:
        load_trace(path)
    assert (info.value.line, info.value.column) == (2, "hash_ids")


def test_other_readers_have_no_block_ids(tmp_path):
    path, _ = _write(tmp_path, "burstgpt6", _row6())
    trace = load_trace(path)
    assert trace.prefix_block_size is None and trace.frame["prefix_block_ids"].null_count() == trace.num_rows
    path = tmp_path / "no_ids.jsonl"
    path.write_text(json.dumps({"timestamp": 1, "input_length": 2, "output_length": 3}) + "\n")
    assert load_trace(path).prefix_block_size is None


# ------------------------------------------------------------------------------------------------ CLI


def _cli_error(capsys, path: Path) -> str:
    status = main(["trace", "info", str(path)])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert "\n" not in err and "Traceback" not in err
    return err


def test_cli_refuses_nan_timestamp(tmp_path, capsys):
    path, _ = _write(tmp_path, "burstgpt6", _row6(ts="nan"))
    assert f"{path}:3: column 'Timestamp': not a finite number" in _cli_error(capsys, path)


def test_cli_refuses_corrupt_gzip(tmp_path, capsys):
    path = tmp_path / "t.csv.gz"
    path.write_bytes(_gzip_corruptions((HEADER6 + _row6() * 3000).encode())["no_trailer"])
    assert f"{path}: corrupt or truncated gzip file" in _cli_error(capsys, path)


def test_cli_refuses_extra_field(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text(HEADER6 + _row6() + "2,ChatGPT,3,4,7,API log,extra\n")
    assert f"{path}:3: expected 6 fields, found 7" in _cli_error(capsys, path)


@pytest.mark.parametrize(("unit", "factor"), [("s", 1.0), ("ms", 1e3)])
def test_unix_epoch_numbers_are_measured_from_their_first_midnight(tmp_path, unit, factor):
    # 1,700,000,000 s is 2023-11-14 22:13:20 UTC: an epoch timestamp, not 54 years from the trace's start.
    path = tmp_path / "epoch.csv"
    times = [1_700_000_000.0, 1_700_000_002.5, 1_700_086_400.0]
    path.write_text("ts,in,out\n" + "".join(f"{t * factor:.1f},10,20\n" for t in times))
    trace = load_trace(path, column_map={"timestamp_s": "ts", "request_tokens": "in", "response_tokens": "out"},
                       time_unit=unit)
    assert trace.origin == datetime(2023, 11, 14)
    assert trace.frame["timestamp_s"].to_list() == pytest.approx([80000.0, 80002.5, 166400.0])
