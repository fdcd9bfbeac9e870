"""Trace loading, validation and download."""

from __future__ import annotations

import csv
import gzip
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import polars as pl
import pytest

from burstgpt.errors import BurstGPTError, InputError
from burstgpt.trace import TRACE_SCHEMA, Trace, filter_trace, filter_trace_frame, load_trace
from burstgpt.trace.download import download_release_file

HEADER6 = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
HEADER8 = "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_real_burstgpt_file_matches_a_direct_count(burstgpt_head):
    path = burstgpt_head
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    trace = load_trace(path)
    frame = trace.frame
    assert trace.format == "burstgpt"
    assert dict(frame.schema) == TRACE_SCHEMA
    assert frame.height == len(rows)
    assert int(frame["failed"].sum()) == sum(int(r["Response tokens"]) == 0 for r in rows)
    assert frame["request_tokens"].sum() == sum(int(r["Request tokens"]) for r in rows)
    services = {"Conversation log": "conversation", "API log": "api"}
    assert frame["service"].to_list() == [services[r["Log Type"]] for r in rows]
    assert frame["timestamp_s"].is_sorted()


def test_real_azure_file_keeps_sub_second_times(azure_code):
    path = azure_code
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    trace = load_trace(path)
    frame = trace.frame
    assert trace.format == "azure"
    assert frame.height == len(rows)
    assert frame["response_tokens"].sum() == sum(int(r["GeneratedTokens"]) for r in rows)
    assert trace.origin is not None and trace.origin.hour == 0
    first = rows[0]["TIMESTAMP"]  # e.g. 2023-11-16 18:17:03.9799600
    hh, mm, ss = first.split(" ")[1].split(":")
    assert frame["timestamp_s"][0] == pytest.approx(int(hh) * 3600 + int(mm) * 60 + float(ss), abs=1e-5)
    assert frame["service"].unique().to_list() == ["api"]  # "code" in the file name


def test_eight_column_schema_and_gzip(tmp_path):
    text = HEADER8 + "10,s1,1.5,ChatGPT,100,20,120,Conversation log\n12,s1,0.0,ChatGPT,50,0,50,Conversation log\n"
    path = tmp_path / "t8.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    frame = load_trace(path).frame
    assert frame["session_id"].to_list() == ["s1", "s1"]
    assert frame["elapsed_s"].to_list() == [1.5, 0.0]
    assert frame["failed"].to_list() == [False, True]


def test_zero_rows_are_kept_as_failures_and_out_of_order_rows_sorted(tmp_path):
    path = write(tmp_path / "t.csv", HEADER6 + "30,GPT-4,5,6,11,API log\n10,ChatGPT,0,0,0,Conversation log\n"
                 "20,ChatGPT,7,8,15,API log\n")
    trace = load_trace(path)
    assert trace.frame["timestamp_s"].to_list() == [10.0, 20.0, 30.0]
    assert trace.frame["failed"].to_list() == [True, False, False]
    assert trace.load_report.out_of_order_rows == 1


def test_mooncake_jsonl(tmp_path):
    lines = [{"timestamp": 0, "input_length": 100, "output_length": 10, "hash_ids": [1, 2]},
             {"timestamp": 1500, "input_length": 200, "output_length": 0, "hash_ids": [3]}]
    path = write(tmp_path / "m.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    trace = load_trace(path)
    assert trace.format == "mooncake"
    assert trace.frame["timestamp_s"].to_list() == [0.0, 1.5]
    assert trace.frame["failed"].to_list() == [False, True]
    assert trace.frame["prefix_block_ids"].to_list() == [[1, 2], [3]]
    assert trace.prefix_block_size == 512


def test_real_mooncake_block_ids_cover_each_prompt(shared_traces):
    """Mooncake's hash_ids are 512-token blocks: a prompt of n tokens has ceil(n / 512) of them."""
    path = shared_traces / "mooncake_synthetic_trace.jsonl"
    with open(path) as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    trace = load_trace(path)
    frame = trace.frame
    assert frame.height == len(records) and dict(frame.schema) == TRACE_SCHEMA
    assert sorted(map(tuple, frame["prefix_block_ids"].to_list())) == sorted(tuple(r["hash_ids"]) for r in records)
    blocks = frame["prefix_block_ids"].list.len().to_numpy()
    assert (blocks == -(-frame["request_tokens"].to_numpy() // trace.prefix_block_size)).all()


def test_mapped_csv_and_parquet(tmp_path):
    path = write(tmp_path / "any.csv", "t_ms,in,out,who\n1000,5,7,a\n2500,6,0,b\n")
    mapping = {"timestamp_s": "t_ms", "request_tokens": "in", "response_tokens": "out", "model": "who"}
    frame = load_trace(path, column_map=mapping, time_unit="ms").frame
    assert frame["timestamp_s"].to_list() == [1.0, 2.5]
    assert frame["model"].to_list() == ["a", "b"]
    pq = tmp_path / "any.parquet"
    pl.DataFrame({"ts": ["2024-01-02 03:00:00", "2024-01-02 03:00:01.5"], "p": [1, 2], "r": [3, 4]}).write_parquet(pq)
    trace = load_trace(pq, column_map={"timestamp_s": "ts", "request_tokens": "p", "response_tokens": "r"},
                       time_unit="datetime")
    assert trace.frame["timestamp_s"].to_list() == [3 * 3600.0, 3 * 3600 + 1.5]
    assert trace.origin.isoformat() == "2024-01-02T00:00:00"


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("Timestamp,Model,Request tokens,Log Type\n1,ChatGPT,3,API log\n", 1, "Response tokens"),
        (HEADER6 + "1,ChatGPT,3,4,7,API log\n2,ChatGPT,x,4,7,API log\n", 3, "Request tokens"),
        (HEADER6 + "1,ChatGPT,3,4,7,API log\n2,ChatGPT,3,-4,7,API log\n", 3, "Response tokens"),
        (HEADER6 + "1,ChatGPT,3,4,7,API log\n\n3,ChatGPT,3,4,7,API log\n", 3, None),  # empty line
        (HEADER6 + "1,ChatGPT,3,4,7,Web log\n", 2, "Log Type"),
        (HEADER6 + "abc,ChatGPT,3,4,7,API log\n", 2, "Timestamp"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,4,5\nyesterday,4,5\n", 3, "TIMESTAMP"),
    ],
)
def test_bad_values_name_file_line_and_column(tmp_path, text, line, column):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(InputError) as info:
        load_trace(path)
    assert (info.value.line, info.value.column) == (line, column)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_skip_invalid_drops_and_counts(tmp_path):
    path = write(tmp_path / "bad.csv", HEADER6 + "1,ChatGPT,3,4,7,API log\n2,ChatGPT,x,4,7,API log\n"
                 "3,ChatGPT,3,-1,2,API log\n4,GPT-4,1,1,2,Conversation log\n")
    trace = load_trace(path, skip_invalid=True)
    assert trace.frame["timestamp_s"].to_list() == [1.0, 4.0]
    assert trace.load_report.invalid_rows == 2 and trace.load_report.rows_read == 4


def test_unreadable_and_unknown_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_trace(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="empty"):
        load_trace(write(tmp_path / "empty.csv", ""))
    with pytest.raises(InputError, match="unrecognised header"):
        load_trace(write(tmp_path / "other.csv", "a,b\n1,2\n"))
    with pytest.raises(InputError, match="invalid JSON") as info:
        load_trace(write(tmp_path / "m.jsonl", '{"timestamp": 1, "input_length": 2, "output_length": 3}\n{oops\n'))
    assert info.value.line == 2


def test_filter_trace():
    frame = pl.DataFrame({"timestamp_s": [1.0, 2.0, 3.0, 4.0], "model": ["a", "b", "a", "c"],
                          "service": ["api", "api", "api", "conversation"], "request_tokens": [1, 2, 3, 4],
                          "response_tokens": [1, 1, 1, 1], "failed": [False] * 4})
    trace = Trace(frame=frame, source="mem", format="test", prefix_block_size=16)
    selected = filter_trace(trace, model="a", start_s=2.0)
    assert selected.frame["timestamp_s"].to_list() == [3.0]
    assert selected.load_report.filtered_rows == 1 and selected.prefix_block_size == 16
    # the frame-level function takes one name or several
    assert filter_trace_frame(frame, models=["a", "c"], end_s=4.0)["timestamp_s"].to_list() == [1.0, 3.0]
    assert filter_trace_frame(frame, services="conversation")["model"].to_list() == ["c"]
    assert filter_trace_frame(frame, models=[]).height == 4


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    path = write(tmp_path / "bad.csv", HEADER6 + "1,ChatGPT,3,4,7,API log\n2,ChatGPT,3,four,7,API log\n")
    result = subprocess.run([sys.executable, "-m", "burstgpt.cli", "trace", "info", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert f"{path}:3: column 'Response tokens'" in result.stderr


# ------------------------------------------------------------------------------------------ download


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload; honours `Range: bytes=N-`; can be told to cut the body short once."""

    payload = b""
    cut_after: int | None = None
    ranges_seen: list = []

    def do_GET(self):  # noqa: N802 - http.server's API
        if self.path != "/BurstGPT_1.csv":
            self.send_error(404)
            return
        start = 0
        header = self.headers.get("Range")
        type(self).ranges_seen.append(header)
        if header:
            start = int(header.split("=")[1].rstrip("-"))
            self.send_response(206)
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).cut_after is not None:
            self.wfile.write(body[: type(self).cut_after])
            type(self).cut_after = None
            self.wfile.flush()
            self.connection.close()
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def release_server():
    _RangeHandler.payload = (HEADER6 + "5,ChatGPT,472,18,490,Conversation log\n" * 5000).encode()
    _RangeHandler.ranges_seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_resumes_and_checks_sha(tmp_path, release_server):
    payload = _RangeHandler.payload
    sha = hashlib.sha256(payload).hexdigest()
    _RangeHandler.cut_after = 10_000
    with pytest.raises(BurstGPTError, match="run again to resume"):
        download_release_file("BurstGPT_1.csv", base_url=release_server, cache_dir=tmp_path, sha256=sha)
    assert not (tmp_path / "BurstGPT_1.csv").exists()
    assert (tmp_path / "BurstGPT_1.csv.part").stat().st_size == 10_000
    path = download_release_file("BurstGPT_1.csv", base_url=release_server, cache_dir=tmp_path, sha256=sha)
    assert path.read_bytes() == payload
    assert _RangeHandler.ranges_seen[-1] == "bytes=10000-"
    assert load_trace(path).num_rows == 5000
    # cached: no new request
    n = len(_RangeHandler.ranges_seen)
    download_release_file("BurstGPT_1.csv", base_url=release_server, cache_dir=tmp_path)
    assert len(_RangeHandler.ranges_seen) == n


def test_download_errors(tmp_path, release_server):
    with pytest.raises(BurstGPTError, match="HTTP 404"):
        download_release_file("BurstGPT_2.csv", base_url=release_server, cache_dir=tmp_path)
    with pytest.raises(BurstGPTError, match="sha256"):
        download_release_file("BurstGPT_1.csv", base_url=release_server, cache_dir=tmp_path, sha256="0" * 64)
    assert not (tmp_path / "BurstGPT_1.csv").exists()
