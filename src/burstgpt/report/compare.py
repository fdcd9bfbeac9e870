"""Re-render one run directory, or compare several side by side (table, CSV, overlaid Fig 16 panels and
report.html)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from burstgpt.metrics.windows import window_series
from burstgpt.outputs import atomic_path
from burstgpt.records import RunDirectory, RunSummary, read_run_directory
from burstgpt.report.figures import RunSeries, plot_timeline
from burstgpt.report.html import write_comparison_report
from burstgpt.report.rundir import build_summary, render_run, write_run_directory

COMPARISON_FILE = "comparison.csv"
COMPARISON_FIGURE = "comparison.png"
#: Run facts that describe the windows or the loop, recomputed on every render rather than kept.
_DERIVED_FACTS = ("loop", "max_concurrency", "window_s", "step_s")


def _kept_facts(run: RunDirectory) -> dict:
    """Facts about how the run went (interrupted, stop reason, warnings, ...) from its summary."""
    if run.summary is None:
        return {}
    return {k: v for k, v in run.summary.run.as_dict().items() if k not in _DERIVED_FACTS}


def rerender_run(
    run_dir: str | Path,
    *,
    window_s: float | None = None,
    step_s: float | None = None,
    slo: dict[str, float] | None = None,
) -> RunSummary:
    """Recompute a run directory's timeseries, figure and summary (with new windows or SLOs when given).

    Windows and SLOs default to the run's config. A run that died before writing its summary is completed
    from its records (requests.jsonl when requests.parquet is missing). Facts about how the run went (the
    summary's `run` section) are kept.
    """
    run = read_run_directory(run_dir)
    window_s = window_s or run.config.get("window_s") or 10.0
    step_s = step_s if step_s is not None else run.config.get("step_s")
    slo = slo if slo is not None else (run.config.get("slo") or None)
    run_info = _kept_facts(run)
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


def comparison_row(label: str, summary: RunSummary) -> dict:
    """One flat row of a run's headline figures (seconds, per second, fractions)."""
    req, thr, sched = summary.requests, summary.throughput, summary.schedule
    row = {
        "run": label,
        "producer": summary.producer,
        "loop": summary.run.loop,
        "sent": req.sent,
        "succeeded": req.succeeded,
        "failed": req.failed,
        "cancelled": req.cancelled,
        "not_sent": req.not_sent,
        "failure_rate": summary.failure_rate,
        "requests_per_s": thr.requests_per_s,
        "output_tokens_per_s": thr.output_tokens_per_s,
        "total_tokens_per_s": thr.total_tokens_per_s,
        "offered_rate_rps": sched.offered_rate_rps,
        "achieved_send_rate_rps": sched.achieved_send_rate_rps,
        "dispatch_lag_p99_s": sched.dispatch_lag_s.p99,
    }
    for metric in ("ttft", "tpot", "e2e"):
        stats = summary.latency_s[metric]
        for stat in ("mean", "median", "p90", "p99"):
            row[f"{metric}_{stat}_s"] = getattr(stats, stat)
    row["goodput_rps"] = summary.goodput.goodput_requests_per_s if summary.goodput else None
    row["kv_cache_usage_mean"] = summary.server.kv_cache_usage_perc.mean if summary.server else None
    return row


def compare_runs(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    *,
    window_s: float = 10.0,
    step_s: float | None = None,
    slo: dict[str, float] | None = None,
) -> tuple[list[str], list[RunSummary], pl.DataFrame]:
    """Compare runs under the same windows and SLOs (their directories are not modified).

    Writes `comparison.csv` (one row per run, with each run's producer), `comparison.png` (Fig 16 panels,
    one line per run) and `report.html` (`burstgpt.report.html.write_comparison_report`) into `out_dir`; returns (labels, summaries, comparison frame).
    """
    runs: list[RunDirectory] = [read_run_directory(p) for p in run_dirs]
    labels = run_labels([r.path for r in runs])
    summaries, series = [], []
    for label, run in zip(labels, runs, strict=True):
        summaries.append(build_summary(run.records, config={**run.config, "producer": run.producer},
                                       server_metrics=run.server_metrics, window_s=window_s, step_s=step_s,
                                       slo=slo, run_info=_kept_facts(run)))
        timeseries = window_series(run.records, window_s, step_s, slo=slo, server_metrics=run.server_metrics)
        series.append(RunSeries(f"{label} ({run.producer})", timeseries, run.server_metrics))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame([comparison_row(label, s) for label, s in zip(labels, summaries, strict=True)])
    with atomic_path(out_dir / COMPARISON_FILE) as tmp:
        frame.write_csv(tmp)
    plot_timeline(series, out_dir / COMPARISON_FIGURE, title="run comparison")
    write_comparison_report(out_dir, labels, summaries, frame, series, [run.records for run in runs])
    return labels, summaries, frame
