"""The records package: one record type and schema, its documentation, JSONL round trips, the typed run summary,
and its place in the data flow (it imports nothing downstream of it)."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import polars as pl
import pytest

import burstgpt.records
from burstgpt.errors import InputError
from burstgpt.records import (
    REQUEST_RECORD_SCHEMA,
    SERVER_METRICS_SCHEMA,
    RecordWriter,
    RequestRecord,
    RunSummary,
    conform_request_records,
    read_records_jsonl,
    read_run_directory,
)
from burstgpt.records import schema as records_schema
from burstgpt.report import write_run_directory

PACKAGE_DIR = Path(burstgpt.records.__file__).parent
DOWNSTREAM_OR_SIBLING = ("burstgpt.client", "burstgpt.sim", "burstgpt.server", "burstgpt.metrics", "burstgpt.report",
                         "burstgpt.commands", "burstgpt.cli")


def _doc_table(doc: str, first_column: str) -> dict[str, str]:
    """name -> dtype of the markdown table in `doc` whose header starts with `first_column`."""
    rows, inside = {}, False
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_column:
            inside = True
        elif inside and line.startswith("|") and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells[1]
        elif inside and not line.startswith("|"):
            break
    return rows


def _dtype_name(dtype: pl.DataType) -> str:
    return "List(Float64)" if isinstance(dtype, pl.List) else {"String": "Utf8"}.get(str(dtype), str(dtype))


def test_the_documented_tables_are_the_schemas():
    documented = _doc_table(records_schema.__doc__, "column")
    assert documented == {name: _dtype_name(dtype) for name, dtype in REQUEST_RECORD_SCHEMA.items()}
    server = _doc_table(records_schema.__doc__.split("Server metrics:")[1], "column")
    assert server == {name: _dtype_name(dtype) for name, dtype in SERVER_METRICS_SCHEMA.items()}


def test_the_record_type_is_the_schema_and_round_trips_through_jsonl(tmp_path):
    names = [f.name for f in dataclasses.fields(RequestRecord)]
    assert names == list(REQUEST_RECORD_SCHEMA)
    full = RequestRecord(request_id=3, model="m", service="api", scheduled_s=1.5, sent_s=1.6, first_scheduled_s=1.7,
                         first_token_s=1.8, end_s=2.5, input_tokens=10, output_tokens=4, status="ok",
                         error_class=None, error_message="fine", http_status=200, bytes_received=99, preemptions=1,
                         chunk_times_s=[1.8, 2.0])
    fresh = RequestRecord(request_id=4, model=None, service=None, scheduled_s=2.0)
    assert fresh.status == "not_sent" and fresh.sent_s is None
    fresh.fail("http_5xx", "x" * 1000)
    assert fresh.status == "failed" and len(fresh.error_message) == 300
    writer = RecordWriter(tmp_path / "r.jsonl")
    for record in (full, fresh):
        writer.write(record)
    writer.close()
    back = read_records_jsonl(tmp_path / "r.jsonl")
    assert back.schema == pl.Schema(REQUEST_RECORD_SCHEMA)
    assert back.to_dicts() == [dataclasses.asdict(full), dataclasses.asdict(fresh)]


def test_records_import_nothing_downstream():
    # Static: every import statement in the package, including ones inside functions.
    imported = set()
    for path in PACKAGE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    bad = sorted(m for m in imported if m.startswith(DOWNSTREAM_OR_SIBLING))
    assert not bad, bad
    assert {m for m in imported if m.startswith("burstgpt")} <= {
        "burstgpt.errors", "burstgpt.outputs", "burstgpt.tables", *(f"burstgpt.records.{p.stem}" for p in
                                                                     PACKAGE_DIR.glob("*.py"))}


def test_run_summary_round_trips_and_reads_version_1(tmp_path):
    records = pl.DataFrame({"request_id": [0, 1, 2], "scheduled_s": [0.0, 1.0, 2.0], "sent_s": [0.0, 1.0, None],
                            "first_token_s": [0.1, None, None], "end_s": [0.5, 1.5, None],
                            "output_tokens": [3, None, None], "status": ["ok", "failed", "not_sent"],
                            "error_class": [None, "http_5xx", None]})
    summary = write_run_directory(tmp_path / "run", records, config={"max_concurrency": 2}, slo={"ttft": 1.0},
                                  producer="bench", run_info={"interrupted": True, "stop_reason": "SIGINT",
                                                              "custom": 7})
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert RunSummary.from_json(on_disk) == summary and summary.to_json() == on_disk
    assert (summary.requests.not_sent, summary.requests.failed, summary.run.extra) == (1, 1, {"custom": 7})
    assert on_disk["run"]["custom"] == 7 and on_disk["producer"] == "bench"
    # A version-1 summary (no producer, no run_id) still reads.
    legacy = {k: v for k, v in on_disk.items() if k not in ("producer", "run_id")}
    legacy["format"] = "burstgpt-run-summary/1"
    old = RunSummary.from_json(legacy)
    assert old.producer == "unknown" and old.requests == summary.requests
    with pytest.raises(InputError, match="not a run summary"):
        RunSummary.from_json({"format": "something else"})
    with pytest.raises(InputError, match="malformed"):
        RunSummary.from_json({**on_disk, "requests": {"total": 1}})


def test_old_run_directories_call_never_sent_requests_not_sent(tmp_path):
    # Before `not_sent` existed, never-sent requests were written as cancelled with a null sent_s.
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    conform_request_records(pl.DataFrame({
        "request_id": [0, 1, 2], "scheduled_s": [0.0, 1.0, 2.0], "sent_s": [0.0, 1.0, None],
        "end_s": [0.5, 1.2, None], "status": ["ok", "cancelled", "cancelled"]})).write_parquet(run_dir / "requests.parquet")
    (run_dir / "config.json").write_text(json.dumps({"command": "bench"}))
    run = read_run_directory(run_dir)
    assert run.records["status"].to_list() == ["ok", "cancelled", "not_sent"]
    assert run.producer == "bench" and not run.complete


def test_docs_list_every_record_column():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "bench.md").read_text()
    records_paragraph = docs.split("**Records**")[1].split("\n\n")[0]
    mentioned = set(re.findall(r"[a-z_]+", records_paragraph))
    assert set(REQUEST_RECORD_SCHEMA) <= mentioned
    assert "not_sent" in docs and "--overwrite" in docs and "producer" in docs
