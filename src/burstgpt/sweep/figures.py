"""Figures of sweeps, rate searches and plans (matplotlib, Agg; written atomically as PNG).

- `plot_sweep`: the paper's Fig 17 layout: one row per swept axis, columns mean and p90 latency, throughput
  and failure rate against that axis; one line per combination of the other axes (seeds averaged);
- `plot_rate_search`: the searched metric against the rate, evaluations numbered in order, the target drawn;
- `plot_plan`: per preset, replicas over time (fixed fleet and autoscaler), SLO attainment per window, and
  the cost in GPU-hours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from burstgpt.outputs import atomic_path

_LOG_AXES = ("alpha", "beta", "rate")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), constrained_layout=True)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path, dpi: int = 100) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format="png")
    return path


def plot_sweep(table: pl.DataFrame, axis_names: list[str], path: str | Path, *, title: str = "") -> Path:
    """Fig 17-style panels of a sweep's results table (`burstgpt.sweep.run`) to `path`."""
    rows = [name for name in axis_names if name in table.columns and table[name].drop_nulls().n_unique() > 1]
    rows = rows or axis_names[:1]
    figure = _figure(13, 3.0 * max(len(rows), 1) + 0.6)
    panels = figure.subplots(max(len(rows), 1), 3, squeeze=False)
    for row, axis in enumerate(rows):
        others = [name for name in axis_names if name != axis]
        part = table.filter(pl.col(axis).is_not_null())
        grouped = (part.group_by([axis, *others], maintain_order=True)
                   .agg(pl.col("latency_mean_s", "latency_p90_s", "throughput_tokens_per_s", "failure_rate").mean())
                   .sort(axis))
        lines = grouped.partition_by(others, maintain_order=True, as_dict=False) if others else [grouped]
        for number, line in enumerate(lines):
            label = ", ".join(f"{name}={line[name][0]}" for name in others if line[name][0] is not None)
            x = line[axis].to_numpy()
            color = f"C{number % 10}"
            panels[row, 0].plot(x, line["latency_mean_s"].to_numpy(), "o-", color=color,
                                label=f"mean {label}".strip())
            panels[row, 0].plot(x, line["latency_p90_s"].to_numpy(), "s--", color=color,
                                label=f"p90 {label}".strip())
            panels[row, 1].plot(x, line["throughput_tokens_per_s"].to_numpy(), "o-", color=color, label=label)
            panels[row, 2].plot(x, 100 * line["failure_rate"].to_numpy(), "o-", color=color, label=label)
        for column, ylabel in enumerate(("latency (s)", "throughput (output tokens/s)", "failure rate (%)")):
            axes = panels[row, column]
            axes.set_xlabel(axis)
            axes.set_ylabel(ylabel)
            if axis in _LOG_AXES:
                axes.set_xscale("log")
            axes.grid(alpha=0.3)
        if len(lines) <= 6:
            panels[row, 0].legend(fontsize=7)
    if title:
        figure.suptitle(title)
    return _save(figure, Path(path))


def plot_rate_search(path_table: pl.DataFrame, metric: str, target: tuple[float, float], path: str | Path, *,
                     title: str = "") -> Path:
    """The searched `metric` at each evaluated rate, numbered in search order; `target` (low, high) shaded."""
    figure = _figure(7, 4.2)
    axes = figure.subplots()
    rate, value = path_table["rate"].to_numpy(), path_table[metric].to_numpy().astype(float)
    axes.axhspan(target[0], target[1], color="C2", alpha=0.2, label="target")
    axes.plot(rate, value, "o", color="C0")
    for step, x, y in zip(path_table["step"].to_list(), rate, value, strict=True):
        axes.annotate(str(step), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("arrival rate (requests/s)")
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    axes.legend()
    if title:
        axes.set_title(title)
    return _save(figure, Path(path))


def plot_plan(table: pl.DataFrame, windows: pl.DataFrame, path: str | Path, *, span_s: float, title: str = "") -> Path:
    """Per preset: replicas over time, SLO attainment per window (fixed fleet, autoscaler), GPU-hours. `span_s`:
    seconds the workload covers (where the last window ends)."""
    presets = table.select("gpu", "model").rows()
    figure = _figure(14, 3.2 * len(presets) + 0.6)
    panels = figure.subplots(len(presets), 3, squeeze=False)
    autoscaled = "desired_replicas" in windows.columns
    for row, (gpu, model) in enumerate(presets):
        part = windows.filter((pl.col("gpu") == gpu) & (pl.col("model") == model))
        summary = table.filter((pl.col("gpu") == gpu) & (pl.col("model") == model)).row(0, named=True)
        start = part["start_s"].to_numpy()
        step = start[1] - start[0] if start.size > 1 else max(span_s, 1e-9)
        edges = np.append(start, max(start[-1] + step if start.size > 1 else span_s, start[-1] + 1e-9))
        axes = panels[row, 0]
        axes.stairs(part["fixed_replicas"].to_numpy(), edges, label="fixed fleet", color="C0")
        if autoscaled:
            axes.stairs(part["desired_replicas"].to_numpy(), edges, label="autoscaler (provisioned)", color="C1")
        twin = axes.twinx()
        twin.plot(start + step / 2, part["rate_rps"].to_numpy(), ":", color="0.5", label="arrival rate")
        twin.set_ylabel("arrival rate (req/s)", color="0.4")
        axes.set_ylabel("replicas")
        axes.set_xlabel("time (s)")
        axes.set_title(f"{gpu} x {model}", fontsize=9)
        axes.legend(fontsize=7, loc="upper left")
        axes = panels[row, 1]
        axes.plot(start, 100 * part["slo_attainment_fixed"].to_numpy(), "o-", label="fixed fleet", color="C0")
        if autoscaled:
            axes.plot(start, 100 * part["slo_attainment_autoscaled"].to_numpy(), "s-", label="autoscaler", color="C1")
        axes.set_ylabel("requests within SLO (%)")
        axes.set_xlabel("window start (s)")
        axes.set_ylim(0, 102)
        axes.legend(fontsize=7)
        axes = panels[row, 2]
        names, hours = ["fixed"], [summary["gpu_hours_fixed"]]
        if autoscaled:
            names.append("autoscaled")
            hours.append(summary["gpu_hours_autoscaled"])
        axes.bar(names, hours, color=["C0", "C1"][: len(names)])
        axes.set_ylabel("cost (GPU-hours)")
        for panel in panels[row]:
            panel.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    return _save(figure, Path(path))


__all__ = ["plot_plan", "plot_rate_search", "plot_sweep"]
