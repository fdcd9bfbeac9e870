"""Run figures in the style of the paper's Fig 16: latency, throughput, failure rate and KV-cache usage
over one time axis; and the same panels overlaid for several runs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from burstgpt.outputs import atomic_path


@dataclass
class RunSeries:
    """What one run contributes to a timeline figure."""

    label: str
    timeseries: pl.DataFrame  # from burstgpt.metrics.window_series
    server_metrics: pl.DataFrame | None  # burstgpt.records server-metrics layout, or None


def _time_axis(seconds_max: float) -> tuple[float, str]:
    """Divisor and label so long runs read in minutes or hours."""
    if seconds_max > 3 * 3600:
        return 3600.0, "time since start (h)"
    if seconds_max > 1200:
        return 60.0, "time since start (min)"
    return 1.0, "time since start (s)"


#: Most points drawn per line: the figure is about 1,100 pixels wide, so more only costs drawing time.
MAX_DISPLAY_POINTS = 2000


def _display_points(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average consecutive points into at most MAX_DISPLAY_POINTS bins (NaNs ignored); shorter series as is."""
    n = x.size
    if n <= MAX_DISPLAY_POINTS:
        return x, y
    per_bin = -(-n // MAX_DISPLAY_POINTS)
    bins = -(-n // per_bin)
    pad = bins * per_bin - n
    x = np.pad(np.asarray(x, dtype=float), (0, pad), constant_values=np.nan).reshape(bins, per_bin)
    y = np.pad(np.asarray(y, dtype=float), (0, pad), constant_values=np.nan).reshape(bins, per_bin)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins stay NaN (gaps in the line)
        return np.nanmean(x, axis=1), np.nanmean(y, axis=1)


def _plot(axis, x, y, **style) -> None:
    axis.plot(*_display_points(np.asarray(x, dtype=float), np.asarray(y, dtype=float)), **style)


#: The failure-rate panel's axis label: the rate is of the requests *sent* in each window (see
#: `burstgpt.metrics.windows`), not of those that ended in it.
FAILURE_RATE_LABEL = "failure rate of requests\nsent in window (%)"


def plot_timeline(runs: list[RunSeries], path: str | Path, *, title: str = "") -> Path:
    """Write `timeline_figure(runs, title)` as a PNG at `path`."""
    figure = timeline_figure(runs, title=title)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return path


def timeline_figure(runs: list[RunSeries], *, title: str = "") -> Figure:
    """A 4-panel figure: latency (s), throughput (req/s, with offered load), failure rate by send time (%),
    KV usage (%).

    One run: several statistics per panel (TTFT, end-to-end mean and p90; completed and offered req/s and
    output tokens/s; KV usage with running/waiting requests). Several runs: one line per run per panel (the
    offered load dotted in the run's colour), so runs compare on the same axes. Each series is plotted at its
    window's midpoint; long series are averaged into at most MAX_DISPLAY_POINTS bins for drawing (the CSVs
    keep every window).
    """
    t_max = max(
        [float(r.timeseries["window_end_s"].max() or 0) for r in runs if r.timeseries.height] or [1.0]
    )
    divisor, xlabel = _time_axis(t_max)
    figure = Figure(figsize=(10, 10), constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(4, 1, sharex=True)
    single = len(runs) == 1
    for index, run in enumerate(runs):
        ts = run.timeseries
        mid = ((ts["window_start_s"] + ts["window_end_s"]) / 2 / divisor).to_numpy()
        color = f"C{index}"
        dots = {"marker": "o", "markersize": 3} if ts.height < 30 else {}  # short runs: a point per window
        prefix = "" if single else f"{run.label}: "
        if single:
            _plot(axes[0], mid, ts["e2e_mean_s"].to_numpy(), color="C0", label="end-to-end mean", **dots)
            _plot(axes[0], mid, ts["e2e_p90_s"].to_numpy(), color="C0", ls="--", label="end-to-end p90", **dots)
            _plot(axes[0], mid, ts["ttft_mean_s"].to_numpy(), color="C1", label="TTFT mean", **dots)
            _plot(axes[1], mid, ts["offered_rps"].to_numpy(), color="0.5", ls=":", label="offered req/s", **dots)
            _plot(axes[1], mid, ts["requests_per_s"].to_numpy(), color="C0", label="completed req/s", **dots)
            tokens_axis = axes[1].twinx()
            _plot(tokens_axis, mid, ts["output_tokens_per_s"].to_numpy(), color="C2", alpha=0.7, label="output tok/s", **dots)
            tokens_axis.set_ylabel("output tokens/s")
            tokens_axis.legend(loc="upper right", fontsize="small")
        else:
            _plot(axes[0], mid, ts["e2e_mean_s"].to_numpy(), color=color, label=f"{prefix}end-to-end mean", **dots)
            _plot(axes[1], mid, ts["requests_per_s"].to_numpy(), color=color, label=f"{prefix}completed req/s", **dots)
            _plot(axes[1], mid, ts["offered_rps"].to_numpy(), color=color, ls=":", alpha=0.6,
                  label=f"{prefix}offered req/s", **dots)
        _plot(axes[2], mid, (ts["failure_rate"] * 100).to_numpy(), color=color, label=f"{prefix}failure rate", **dots)
        server = run.server_metrics
        if server is not None and server.height and server["kv_cache_usage_perc"].null_count() < server.height:
            t = (server["time_s"] / divisor).to_numpy()
            _plot(axes[3], t, (server["kv_cache_usage_perc"] * 100).to_numpy(), color=color, label=f"{prefix}KV usage")
            if single:
                queue_axis = axes[3].twinx()
                for name, style in (("num_requests_running", "-"), ("num_requests_waiting", "--")):
                    if server[name].null_count() < server.height:
                        _plot(queue_axis, t, server[name].to_numpy(), color="C3", ls=style, alpha=0.6, label=name)
                queue_axis.set_ylabel("requests")
                if queue_axis.get_legend_handles_labels()[0]:
                    queue_axis.legend(loc="upper right", fontsize="small")
    if not any(r.server_metrics is not None and r.server_metrics.height for r in runs):
        axes[3].text(0.5, 0.5, "no server metrics", transform=axes[3].transAxes, ha="center", va="center")
    for axis, ylabel in zip(axes, ("latency (s)", "throughput (req/s)", FAILURE_RATE_LABEL, "KV-cache usage (%)"),
                            strict=True):
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:  # one run: twin axes' legends sit upper right
            axis.legend(loc="upper left" if single else "best", fontsize="small")
    axes[2].set_ylim(bottom=0)
    axes[3].set_ylim(0, 100)
    axes[-1].set_xlabel(xlabel)
    if title:
        figure.suptitle(title)
    return figure
