"""Writing a complete run directory: the records and tables (through `burstgpt.records.rundir`, which owns the
files and reading them back), then the derived files computed here: timeseries.csv, timeline.png and the
typed summary (summary.json, last). See `burstgpt.records.rundir` for the files.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

from burstgpt.metrics.requests import average_metrics
from burstgpt.metrics.server import summarize_server_metrics
from burstgpt.metrics.windows import window_series
from burstgpt.outputs import atomic_path
from burstgpt.records import (
    CONFIG_FILE,
    RECORDS_JSONL,
    RECORDS_PARQUET,
    SERVER_METRICS_FILE,
    SUMMARY_FILE,
    TIMELINE_FIGURE,
    TIMESERIES_FILE,
    WORKLOAD_FILE,
    SUMMARY_FORMAT,
    RunDirectory,
    RunSummary,
    conform_request_records,
    conform_server_metrics,
    new_run_id,
    read_run_directory,
    write_run_summary,
    write_run_tables,
)
from burstgpt.records.rundir import legacy_producer
from burstgpt.report.figures import RunSeries, plot_timeline
from burstgpt.report.html import write_run_report

__all__ = [
    "CONFIG_FILE",
    "RECORDS_JSONL",
    "RECORDS_PARQUET",
    "SERVER_METRICS_FILE",
    "SUMMARY_FILE",
    "TIMELINE_FIGURE",
    "TIMESERIES_FILE",
    "WORKLOAD_FILE",
    "RunDirectory",
    "read_run_directory",
    "render_run",
    "write_run_directory",
]


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
    producer: str | None = None,
) -> RunSummary:
    """Write a complete run directory and return its summary (also written as summary.json, last).

    `records`: request records (conformed to `REQUEST_RECORD_SCHEMA` here). `config`: JSON-ready run config;
    `max_concurrency` in it marks the run closed-loop; its `run_id` (a new one when absent) ties the summary
    to it. `producer`: which command made the run ("bench", "simulate", "serve-sim+bench"; default: the
    config's `producer`), written into config.json and the summary. `server_metrics`: wide frame in the
    `burstgpt.records` server-metrics layout. `extra_tables`: written as `<name>.parquet`.
    `window_s`/`step_s`: instantaneous-metric windows (seconds; sliding when step < window). `slo`:
    {'ttft': s, 'tpot': s, ...} for goodput. `run_info`: facts about how the run went (e.g.
    {'interrupted': True}), merged into the summary's `run` section.

    For a new run, pass a fresh or empty directory (`burstgpt.records.prepare_run_directory`): the previous
    summary is removed before anything is written, so a directory never looks complete with mixed files.
    """
    config = {**config, "run_id": config.get("run_id") or new_run_id(),
              "producer": producer or config.get("producer") or legacy_producer(config)}
    server = conform_server_metrics(server_metrics) if server_metrics is not None else None
    records = conform_request_records(records)
    # No summary from an earlier write may stand beside the new files (they are written on two threads).
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / SUMMARY_FILE).unlink(missing_ok=True)
    return _render_run(Path(run_dir), records, config=config, server_metrics=server, window_s=window_s,
                       step_s=step_s, slo=slo, run_info=run_info, title=title,
                       write_tables=lambda: write_run_tables(run_dir, records, config=config, server_metrics=server,
                                                             extra_tables=extra_tables))


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
) -> RunSummary:
    """(Re)write the derived files of a run directory (timeseries.csv, timeline.png, summary.json)."""
    return _render_run(Path(run_dir), conform_request_records(records), config=config, server_metrics=server_metrics,
                       window_s=window_s, step_s=step_s, slo=slo, run_info=run_info, title=title)


def _render_run(
    run_dir: Path,
    records: pl.DataFrame,
    *,
    config: dict,
    server_metrics: pl.DataFrame | None,
    window_s: float,
    step_s: float | None,
    slo: dict[str, float] | None,
    run_info: dict | None,
    title: str | None,
    write_tables: Callable[[], object] | None = None,
) -> RunSummary:
    """`render_run` of conformed `records`, after `write_tables()` (the directory's other files) if given."""
    timeseries = window_series(records, window_s, step_s, slo=slo, server_metrics=server_metrics)  # every core
    # Then two threads: the tables and the summary's metrics there (Polars and Arrow, which release the GIL), the
    # time series' CSV and the figure here (matplotlib, which holds it).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="run-tables") as pool:
        background = pool.submit(_tables_and_metrics, write_tables, records, server_metrics, slo)
        with atomic_path(run_dir / TIMESERIES_FILE) as tmp:
            timeseries.write_csv(tmp)
        producer = config.get("producer") or legacy_producer(config)
        plot_timeline(
            [RunSeries(run_dir.name, timeseries, server_metrics)],
            run_dir / TIMELINE_FIGURE,
            title=title or _default_title(run_dir, config, producer),
        )
        metrics = background.result()
    summary = build_summary(records, config=config, server_metrics=server_metrics, window_s=window_s,
                            step_s=step_s, slo=slo, run_info=run_info,
                            files=sorted({p.name for p in run_dir.iterdir() if not p.name.startswith(".")}
                                         | {SUMMARY_FILE}), metrics=metrics)
    summary = write_run_report(run_dir, summary, timeseries, records=records, config=config,
                               server_metrics=server_metrics, title=title or "")  # report.html, before summary.json
    return write_run_summary(run_dir, summary)


def _tables_and_metrics(write_tables: Callable[[], object] | None, records: pl.DataFrame,
                        server_metrics: pl.DataFrame | None, slo: dict[str, float] | None) -> tuple[dict, dict | None]:
    if write_tables is not None:
        write_tables()
    return summary_metrics(records, server_metrics, slo)


def build_summary(
    records: pl.DataFrame,
    *,
    config: dict,
    server_metrics: pl.DataFrame | None,
    window_s: float = 10.0,
    step_s: float | None = None,
    slo: dict[str, float] | None = None,
    run_info: dict | None = None,
    files: list[str] = (),
    metrics: tuple[dict, dict | None] | None = None,
) -> RunSummary:
    """A run's typed summary: facts from `config` and `run_info`, the metrics of `records` under `slo`, the
    server summary. `window_s`/`step_s` are recorded as the windows the run's time series uses. `metrics`:
    `summary_metrics(records, server_metrics, slo)` when already computed."""
    request_metrics, server_summary = metrics if metrics is not None else summary_metrics(records, server_metrics,
                                                                                          slo)
    facts = {
        "loop": "closed" if config.get("max_concurrency") else "open",
        "max_concurrency": config.get("max_concurrency"),
        "window_s": window_s,
        "step_s": step_s if step_s is not None else window_s,
        **(run_info or {}),
    }
    return RunSummary.from_json({
        "format": SUMMARY_FORMAT,
        "producer": config.get("producer") or legacy_producer(config),
        "run_id": config.get("run_id"),
        "run": facts,
        **request_metrics,
        "server": server_summary,
        "files": list(files),
    })


def summary_metrics(records: pl.DataFrame, server_metrics: pl.DataFrame | None, slo: dict[str, float] | None
                    ) -> tuple[dict, dict | None]:
    """The measured parts of a run's summary: the request metrics of `records` under `slo` and the server
    summary (JSON-ready)."""
    return average_metrics(records, slo), summarize_server_metrics(server_metrics)


def _default_title(run_dir: Path, config: dict, producer: str) -> str:
    target = config.get("url") or config.get("engine") or config.get("model") or ""
    return f"{run_dir.name}  ({producer})  {target}".strip()
