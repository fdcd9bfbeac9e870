"""The run directory's files: names, preparing a directory for a new run, writing the tables and the summary,
and reading a run back. I/O only: `burstgpt.report.write_run_directory` computes the metrics and figures.

| file                  | content                                                                          |
|-----------------------|----------------------------------------------------------------------------------|
| config.json           | the run's configuration: all it takes to rerun it (never secrets), its `run_id`  |
|                       | and `producer`                                                                   |
| workload.parquet      | bench: the exact requests                                                        |
| requests.jsonl        | client only, while running: one record per request, appended as each ends      |
| requests.parquet      | the request records (`burstgpt.records` schema), one row per workload request    |
| timeseries.csv        | `burstgpt.metrics.window_series` of the records (and server metrics)            |
| server_metrics.csv    | server state over time (`burstgpt.records` server-metrics layout), when known   |
| <name>.parquet        | extra tables a producer adds (the simulator: `steps`)                            |
| summary.json          | `RunSummary`: written last, with config.json's `run_id`                          |
| timeline.png          | Fig 16-style figure: latency, throughput, failure rate, KV usage over time        |

A directory is *complete* when requests.parquet and summary.json exist and the summary's `run_id` is
config.json's: a summary left by an earlier run in the same directory never passes for this run's.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from burstgpt.errors import BurstGPTError, InputError
from burstgpt.outputs import atomic_path, write_json_atomic
from burstgpt.records.jsonl import read_records_jsonl
from burstgpt.records.schema import (
    SERVER_METRICS_SCHEMA,
    conform_request_records,
    conform_server_metrics,
    upgrade_legacy_statuses,
)
from burstgpt.records.summary import RunSummary

CONFIG_FILE = "config.json"
WORKLOAD_FILE = "workload.parquet"
RECORDS_JSONL = "requests.jsonl"
RECORDS_PARQUET = "requests.parquet"
TIMESERIES_FILE = "timeseries.csv"
SERVER_METRICS_FILE = "server_metrics.csv"
SUMMARY_FILE = "summary.json"
TIMELINE_FIGURE = "timeline.png"
#: Files a run writes (besides its extra tables); summary first: removing it first unmarks a complete run.
STEPS_FILE = "steps.parquet"  # simulate only: one row per engine step
REPORT_FILE = "report.html"  # the self-contained report (burstgpt.report.html)
RUN_FILES = (SUMMARY_FILE, CONFIG_FILE, WORKLOAD_FILE, RECORDS_JSONL, RECORDS_PARQUET, TIMESERIES_FILE,
             SERVER_METRICS_FILE, TIMELINE_FIGURE, STEPS_FILE, REPORT_FILE)


def new_run_id() -> str:
    """A fresh identifier for one run (config.json and summary.json carry it)."""
    return uuid.uuid4().hex


def prepare_run_directory(run_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Make `run_dir` ready for a new run and return it. A non-empty directory is refused unless `overwrite`;
    then the previous run's files are removed (its summary first), other files are left alone."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise BurstGPTError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise BurstGPTError(f"run directory {path} is not empty: pass --overwrite to replace the run in it, "
                                "or choose another directory")
        remove_run_files(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_run_files(run_dir: str | Path) -> None:
    """Delete a run's files from `run_dir`: summary.json first, then the other run files and the extra tables
    its summary lists. Files the run did not write stay."""
    path = Path(run_dir)
    extra_tables: list[str] = []
    summary_path = path / SUMMARY_FILE
    if summary_path.exists():
        try:
            listed = json.loads(summary_path.read_text()).get("files") or []
            extra_tables = [name for name in listed if name.endswith(".parquet") and "/" not in name]
        except (OSError, ValueError, AttributeError):  # an unreadable summary lists nothing
            pass
    for name in (*RUN_FILES, *extra_tables):
        (path / name).unlink(missing_ok=True)


def write_run_tables(
    run_dir: str | Path,
    records: pl.DataFrame,
    *,
    config: dict,
    server_metrics: pl.DataFrame | None = None,
    extra_tables: dict[str, pl.DataFrame] | None = None,
) -> None:
    """Write config.json, requests.parquet, server_metrics.csv and `<name>.parquet` per extra table, atomically.
    A summary from an earlier write is removed first, so the directory is incomplete until the new one is
    written (`write_run_summary`). `config` must carry the run's `run_id`."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / SUMMARY_FILE).unlink(missing_ok=True)
    write_json_atomic(path / CONFIG_FILE, config)
    with atomic_path(path / RECORDS_PARQUET) as tmp:
        conform_request_records(records).write_parquet(tmp, compression="zstd")
    for name, table in (extra_tables or {}).items():
        if not name.replace("_", "").replace("-", "").isalnum():
            raise BurstGPTError(f"extra table name {name!r} must be alphanumeric (with _ or -)")
        with atomic_path(path / f"{name}.parquet") as tmp:
            table.write_parquet(tmp, compression="zstd")
    if server_metrics is not None:
        with atomic_path(path / SERVER_METRICS_FILE) as tmp:
            conform_server_metrics(server_metrics).write_csv(tmp)
    else:  # a server-metrics file from an earlier write would pass for this run's
        (path / SERVER_METRICS_FILE).unlink(missing_ok=True)


def write_run_summary(run_dir: str | Path, summary: RunSummary) -> RunSummary:
    """Write summary.json (last: it marks the run complete) and return exactly what was written (NaN and inf
    turned to null)."""
    path = Path(run_dir) / SUMMARY_FILE
    write_json_atomic(path, summary.to_json())
    return RunSummary.from_json(read_json(path), path)


def legacy_producer(config: dict) -> str:
    """The producer of a run directory written before config.json named one."""
    if config.get("command") == "bench":
        return "bench"
    if config.get("kind") == "simulate" or config.get("engine"):
        return "simulate"
    return "unknown"


@dataclass
class RunDirectory:
    """A run directory read back."""

    path: Path
    config: dict
    records: pl.DataFrame  # REQUEST_RECORD_SCHEMA
    server_metrics: pl.DataFrame | None  # burstgpt.records server-metrics layout
    summary: RunSummary | None  # None unless complete: rebuild with burstgpt.report.render_run
    complete: bool  # requests.parquet and this run's summary.json were written

    @property
    def producer(self) -> str:
        """Which command made the run (`config.json`'s producer)."""
        return self.config.get("producer") or legacy_producer(self.config)

    @property
    def run_id(self) -> str | None:
        return self.config.get("run_id")


def read_run_directory(run_dir: str | Path) -> RunDirectory:
    """Read a run directory; falls back to requests.jsonl when the run died before writing Parquet. Only a
    summary with config.json's run_id is this run's (see the module doc)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise InputError(path, "not a run directory")
    config = read_json(path / CONFIG_FILE) if (path / CONFIG_FILE).exists() else {}
    if (path / RECORDS_PARQUET).exists():
        records = upgrade_legacy_statuses(conform_request_records(pl.read_parquet(path / RECORDS_PARQUET)))
    elif (path / RECORDS_JSONL).exists():
        records = read_records_jsonl(path / RECORDS_JSONL)
    else:
        raise InputError(path, f"no {RECORDS_PARQUET} or {RECORDS_JSONL}: not a run directory")
    server = None
    if (path / SERVER_METRICS_FILE).exists():
        server = conform_server_metrics(
            pl.read_csv(path / SERVER_METRICS_FILE, schema_overrides=SERVER_METRICS_SCHEMA)
        )
    summary = None
    if (path / RECORDS_PARQUET).exists() and (path / SUMMARY_FILE).exists():
        try:
            candidate = RunSummary.from_json(read_json(path / SUMMARY_FILE), path / SUMMARY_FILE)
        except InputError:  # not a summary this version reads: the run reads as incomplete, `report` redoes it
            candidate = None
        if candidate is not None and candidate.run_id == config.get("run_id"):
            summary = candidate
    return RunDirectory(path, config, records, server, summary, complete=summary is not None)


def read_json(path: Path) -> dict:
    """A JSON file's object; `InputError` naming the file when unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read JSON: {exc}") from None
