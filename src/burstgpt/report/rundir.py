"""The run directory: everything one load-test or simulation run leaves behind, and reading it back.

Files (written atomically; `summary.json` last, so a directory with a summary is complete):

| file                  | content                                                                          |
|-----------------------|----------------------------------------------------------------------------------|
| config.json           | the run's configuration: all it takes to rerun it (never secrets)                |
| requests.jsonl        | client only, while running: one record per request, appended as each ends      |
| requests.parquet      | the request records (`burstgpt.records` schema), one row per workload request    |
| timeseries.csv        | `burstgpt.metrics.window_series` of the records (and server metrics)            |
| server_metrics.csv    | server state over time (`burstgpt.records` server-metrics layout), when known            |
| <name>.parquet        | extra tables a producer adds (the simulator: `steps`)                            |
| summary.json          | `burstgpt.metrics.average_metrics` plus run facts and server-metric summaries    |
| timeline.png          | Fig 16-style figure: latency, throughput, failure rate, KV usage over time        |
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from burstgpt.client.records_io import read_records_jsonl
from burstgpt.errors import BurstGPTError, InputError
from burstgpt.metrics.requests import average_metrics, summarize
from burstgpt.records import SERVER_METRICS_SCHEMA, conform_server_metrics
from burstgpt.metrics.windows import window_series
from burstgpt.outputs import atomic_path, write_json_atomic
from burstgpt.records import conform_request_records
from burstgpt.report.figures import RunSeries, plot_timeline

SUMMARY_FORMAT = "burstgpt-run-summary/1"
CONFIG_FILE = "config.json"
RECORDS_JSONL = "requests.jsonl"
RECORDS_PARQUET = "requests.parquet"
TIMESERIES_FILE = "timeseries.csv"
SERVER_METRICS_FILE = "server_metrics.csv"
SUMMARY_FILE = "summary.json"
TIMELINE_FIGURE = "timeline.png"


def write_run_directory(
    run_dir: str | Path,
    records: pl.DataFrame,
    *,
    config: dict,
    server_metrics: pl.DataFrame | None = None,
    extra_tables: dict[str, pl.DataFrame] | None = None,
    window_s: float = 10.0,
    step_s: float | None = None,
    slo: dict[str, float] | None = None,
    run_info: dict | None = None,
    title: str | None = None,
) -> dict:
    """Write a complete run directory and return the summary (also written as summary.json).

    `records`: request records (conformed to `REQUEST_RECORD_SCHEMA` here). `config`: JSON-ready run config;
    `max_concurrency` in it marks the run closed-loop. `server_metrics`: wide frame in the
    `burstgpt.records` server-metrics layout (`time_s` plus the standard columns, nullable). `extra_tables`: written
    as `<name>.parquet`. `window_s`/`step_s`: instantaneous-metric windows (seconds; sliding when step <
    window). `slo`: {'ttft': s, 'tpot': s, ...} for goodput. `run_info`: facts about how the run went
    (e.g. {'interrupted': True}), merged into the summary's `run` section.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    records = conform_request_records(records)
    server = conform_server_metrics(server_metrics) if server_metrics is not None else None

    write_json_atomic(run_dir / CONFIG_FILE, config)
    with atomic_path(run_dir / RECORDS_PARQUET) as tmp:
        records.write_parquet(tmp, compression="zstd")
    for name, table in (extra_tables or {}).items():
        if not name.replace("_", "").replace("-", "").isalnum():
            raise BurstGPTError(f"extra table name {name!r} must be alphanumeric (with _ or -)")
        with atomic_path(run_dir / f"{name}.parquet") as tmp:
            table.write_parquet(tmp, compression="zstd")
    if server is not None:
        with atomic_path(run_dir / SERVER_METRICS_FILE) as tmp:
            server.write_csv(tmp)
    summary = render_run(run_dir, records, config=config, server_metrics=server, window_s=window_s,
                         step_s=step_s, slo=slo, run_info=run_info, title=title)
    return summary


def render_run(
    run_dir: Path,
    records: pl.DataFrame,
    *,
    config: dict,
    server_metrics: pl.DataFrame | None,
    window_s: float = 10.0,
    step_s: float | None = None,
    slo: dict[str, float] | None = None,
    run_info: dict | None = None,
    title: str | None = None,
) -> dict:
    """(Re)write the derived files of a run directory (timeseries.csv, timeline.png, summary.json)."""
    timeseries = window_series(records, window_s, step_s, slo=slo, server_metrics=server_metrics)
    with atomic_path(run_dir / TIMESERIES_FILE) as tmp:
        timeseries.write_csv(tmp)
    plot_timeline(
        [RunSeries(run_dir.name, timeseries, server_metrics)],
        run_dir / TIMELINE_FIGURE,
        title=title or _default_title(run_dir, config),
    )
    summary = {
        "format": SUMMARY_FORMAT,
        "run": {
            "loop": "closed" if config.get("max_concurrency") else "open",
            "max_concurrency": config.get("max_concurrency"),
            "window_s": window_s,
            "step_s": step_s if step_s is not None else window_s,
            **(run_info or {}),
        },
        **average_metrics(records, slo),
        "server": summarize_server_metrics(server_metrics),
        "files": sorted({p.name for p in run_dir.iterdir() if not p.name.startswith(".")} | {SUMMARY_FILE}),
    }
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    # Return exactly what was written (NaN and inf already turned to null).
    return _read_json(run_dir / SUMMARY_FILE)


def _default_title(run_dir: Path, config: dict) -> str:
    target = config.get("url") or config.get("engine") or config.get("source") or ""
    return f"{run_dir.name}  {target}".strip()


def summarize_server_metrics(server_metrics: pl.DataFrame | None) -> dict | None:
    """KV usage stats (fraction), peak running/waiting, counter increases over the run; None without data."""
    if server_metrics is None or server_metrics.height == 0:
        return None
    server = conform_server_metrics(server_metrics)
    out: dict = {"samples": server.height, "kv_cache_usage_perc": summarize(server["kv_cache_usage_perc"]).as_dict()}
    kv_max = server["kv_cache_usage_perc"].max()
    out["kv_cache_usage_perc"]["max"] = kv_max
    for name in ("num_requests_running", "num_requests_waiting"):
        out[f"{name}_max"] = server[name].max()
    for name in ("num_preemptions_total", "prompt_tokens_total", "generation_tokens_total"):
        values = server[name].drop_nulls()
        out[f"{name.removesuffix('_total')}_increase"] = (
            float(values[-1] - values[0]) if values.len() >= 2 else None
        )
    return out


@dataclass
class RunDirectory:
    """A run directory read back."""

    path: Path
    config: dict
    records: pl.DataFrame  # REQUEST_RECORD_SCHEMA
    server_metrics: pl.DataFrame | None  # burstgpt.records server-metrics layout
    summary: dict | None  # None when the run never finished (e.g. killed): rebuild with render_run
    complete: bool  # requests.parquet was written; False when rebuilt from requests.jsonl


def read_run_directory(run_dir: str | Path) -> RunDirectory:
    """Read a run directory; falls back to requests.jsonl when the run died before writing Parquet."""
    path = Path(run_dir)
    if not path.is_dir():
        raise InputError(path, "not a run directory")
    config = _read_json(path / CONFIG_FILE) if (path / CONFIG_FILE).exists() else {}
    if (path / RECORDS_PARQUET).exists():
        records = conform_request_records(pl.read_parquet(path / RECORDS_PARQUET))
        complete = True
    elif (path / RECORDS_JSONL).exists():
        records = read_records_jsonl(path / RECORDS_JSONL)
        complete = False
    else:
        raise InputError(path, f"no {RECORDS_PARQUET} or {RECORDS_JSONL}: not a run directory")
    server = None
    if (path / SERVER_METRICS_FILE).exists():
        server = conform_server_metrics(
            pl.read_csv(path / SERVER_METRICS_FILE, schema_overrides=SERVER_METRICS_SCHEMA)
        )
    summary = _read_json(path / SUMMARY_FILE) if (path / SUMMARY_FILE).exists() and complete else None
    return RunDirectory(path, config, records, server, summary, complete)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read JSON: {exc}") from None
