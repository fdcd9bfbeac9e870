"""Re-render one run directory, or compare several side by side (table, CSV and overlaid Fig 16 panels)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from burstgpt.metrics.requests import average_metrics
from burstgpt.metrics.windows import window_series
from burstgpt.outputs import atomic_path
from burstgpt.report.figures import RunSeries, plot_timeline
from burstgpt.report.rundir import RunDirectory, read_run_directory, render_run, summarize_server_metrics, write_run_directory

COMPARISON_FILE = "comparison.csv"
COMPARISON_FIGURE = "comparison.png"


def rerender_run(
    run_dir: str | Path,
    *,
    window_s: float | None = None,
    step_s: float | None = None,
    slo: dict[str, float] | None = None,
) -> dict:
    """Recompute a run directory's timeseries, figure and summary (with new windows or SLOs when given).

    Windows and SLOs default to the run's config. A run that died before writing requests.parquet is
    completed from its requests.jsonl. Facts about how the run went (the summary's `run` section) are kept.
    """
    run = read_run_directory(run_dir)
    window_s = window_s or run.config.get("window_s") or 10.0
    step_s = step_s if step_s is not None else run.config.get("step_s")
    slo = slo if slo is not None else (run.config.get("slo") or None)
    run_info = {k: v for k, v in (run.summary or {}).get("run", {}).items()
                if k not in ("loop", "max_concurrency", "window_s", "step_s")}
    if not run.complete:
        run_info.setdefault("recovered_from_jsonl", True)
        return write_run_directory(run.path, run.records, config=run.config, server_metrics=run.server_metrics,
                                   window_s=window_s, step_s=step_s, slo=slo, run_info=run_info)
    return render_run(run.path, run.records, config=run.config, server_metrics=run.server_metrics,
                      window_s=window_s, step_s=step_s, slo=slo, run_info=run_info)


def run_labels(paths: list[Path]) -> list[str]:
    """Short, distinct labels: directory names, made unique with their parent's name when needed."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" for p in paths]


def comparison_row(label: str, summary: dict) -> dict:
    """One flat row of a run's headline figures (seconds, per second, fractions)."""
    lat, thr, sched, req = summary["latency_s"], summary["throughput"], summary["schedule"], summary["requests"]
    row = {
        "run": label,
        "loop": summary["run"]["loop"],
        "sent": req["sent"],
        "succeeded": req["succeeded"],
        "failed": req["failed"],
        "cancelled": req["cancelled"],
        "not_sent": req["not_sent"],
        "failure_rate": summary["failure_rate"],
        "requests_per_s": thr["requests_per_s"],
        "output_tokens_per_s": thr["output_tokens_per_s"],
        "total_tokens_per_s": thr["total_tokens_per_s"],
        "offered_rate_rps": sched["offered_rate_rps"],
        "achieved_send_rate_rps": sched["achieved_send_rate_rps"],
        "dispatch_lag_p99_s": sched["dispatch_lag_s"]["p99"],
    }
    for metric in ("ttft", "tpot", "e2e"):
        for stat in ("mean", "median", "p90", "p99"):
            row[f"{metric}_{stat}_s"] = lat[metric][stat]
    row["goodput_rps"] = (summary.get("goodput") or {}).get("goodput_requests_per_s")
    server = summary.get("server") or {}
    row["kv_cache_usage_mean"] = (server.get("kv_cache_usage_perc") or {}).get("mean")
    return row


def compare_runs(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    *,
    window_s: float = 10.0,
    step_s: float | None = None,
    slo: dict[str, float] | None = None,
) -> tuple[list[str], list[dict], pl.DataFrame]:
    """Compare runs under the same windows and SLOs (their directories are not modified).

    Writes `comparison.csv` (one row per run) and `comparison.png` (Fig 16 panels, one line per run) into
    `out_dir`; returns (labels, summaries, comparison frame).
    """
    runs: list[RunDirectory] = [read_run_directory(p) for p in run_dirs]
    labels = run_labels([r.path for r in runs])
    summaries, series = [], []
    for label, run in zip(labels, runs, strict=True):
        summary = {
            "run": {"loop": "closed" if run.config.get("max_concurrency") else "open",
                    "max_concurrency": run.config.get("max_concurrency")},
            **average_metrics(run.records, slo),
            "server": summarize_server_metrics(run.server_metrics),
        }
        summaries.append(summary)
        timeseries = window_series(run.records, window_s, step_s, slo=slo, server_metrics=run.server_metrics)
        series.append(RunSeries(label, timeseries, run.server_metrics))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame([comparison_row(label, s) for label, s in zip(labels, summaries, strict=True)])
    with atomic_path(out_dir / COMPARISON_FILE) as tmp:
        frame.write_csv(tmp)
    plot_timeline(series, out_dir / COMPARISON_FIGURE, title="run comparison")
    return labels, summaries, frame
