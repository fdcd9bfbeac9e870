"""Figures of a trace characterisation in the style of the paper's Figs 1-14, one PNG per figure, drawn from
the tables of `burstgpt.analysis.Characterisation`; and `write_analysis`, which writes a whole analysis
directory (tables, figures, then summary.json).

Figure files (conversation / api keep the paper's numbering; other services use the conversation number):
fig01/02_daily_requests_<service>, fig03/04_hourly_requests_<service>, fig05_burstiness, fig06_gamma_arrivals,
fig07_length_distributions, fig08_request_vs_response, fig09_request_response_counts,
fig10/11_request_throughput_<service>, fig12/13_response_throughput_<service>, fig14_failure_rates,
sessions (traces with session ids) and prefix_reuse (traces with prefix block ids). `write_analysis` also
writes report.html, which embeds these PNGs.

Degenerate groups never fail a figure: a panel whose statistic is undefined (one request, constant lengths)
says so ("too few requests", "constant request length") instead of drawing it; a figure with nothing to draw is
not written. Counts per hour or day cover only the part of the hour or day the trace observed (hollow markers
and "observed" labels), so a trace's first and last hour do not look like quiet hours.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import matplotlib
import numpy as np
import polars as pl
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from scipy import stats

from burstgpt.analysis.characterise import Characterisation, characterise, write_characterisation
from burstgpt.analysis.fits import zipf_cdf
from burstgpt.analysis.temporal import SECONDS_PER_DAY
from burstgpt.outputs import atomic_path
from burstgpt.trace import Trace

PAPER_NUMBERS = {  # figure kind -> (conversation number, api number)
    "daily_requests": (1, 2),
    "hourly_requests": (3, 4),
    "request_throughput": (10, 11),
    "response_throughput": (12, 13),
}
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
#: At most this many model x service groups get their own panel (the largest by requests).
MAX_GROUP_PANELS = 4
#: A day counts as observed in full (solid marker) from this many seconds of it on.
FULL_DAY_S = SECONDS_PER_DAY - 60.0


def write_analysis(
    characterisation: Characterisation,
    outdir: str | Path,
    *,
    figures: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the analysis directory: one CSV per table, one PNG per figure (unless `figures` is False), the
    self-contained report.html (`burstgpt.report.html`), and summary.json last. Returns summary.json's path."""
    rendered = render_trace_figures(characterisation, progress=progress) if figures else {}
    return _write_directory(characterisation, Path(outdir), rendered, progress)


def analyze_trace(
    trace: Trace,
    outdir: str | Path,
    *,
    figures: bool = True,
    progress: Callable[[str], None] | None = None,
    **options,
) -> tuple[Characterisation, Path]:
    """`characterise(trace, **options)` then `write_analysis` into `outdir`, with the figures that do not need
    the arrival fits drawn while those fits finish in their worker thread (`characterise`'s `meanwhile`): the
    figures are Python-bound matplotlib work and the fits NumPy work outside the GIL, so on a 10-million-row
    trace this hides most of the drawing time. The files are the same as `write_analysis(characterise(...))`
    writes. Returns the characterisation and summary.json's path."""
    rendered: dict[str, bytes] = {}

    def draw_early(partial: Characterisation) -> None:
        rendered.update(render_trace_figures(partial, arrivals=False, progress=progress))

    result = characterise(trace, progress=progress, meanwhile=draw_early if figures else None, **options)
    if figures:
        rendered = _in_write_order(rendered | render_trace_figures(result, arrivals=True, progress=progress))
    return result, _write_directory(result, Path(outdir), rendered, progress)


def _write_directory(c: Characterisation, outdir: Path, rendered: dict[str, bytes], progress) -> Path:
    """The tables, the `rendered` PNGs (file name -> bytes, in order), report.html, then summary.json."""
    from burstgpt.report.html import write_analysis_report

    def figures_and_report(directory: Path) -> list[Path]:
        written = []
        for name, png in rendered.items():
            with atomic_path(directory / name) as tmp:
                tmp.write_bytes(png)
            written.append(directory / name)
        (progress or (lambda name: None))("report.html")
        write_analysis_report(c, directory, written)
        return written

    return write_characterisation(c, outdir, before_summary=figures_and_report, progress=progress)


def write_trace_figures(
    characterisation: Characterisation, outdir: str | Path, *, progress: Callable[[str], None] | None = None
) -> list[Path]:
    """Write every figure the characterisation has data for into `outdir`; returns their paths."""
    written = []
    for name, png in render_trace_figures(characterisation, progress=progress).items():
        with atomic_path(Path(outdir) / name) as tmp:
            tmp.write_bytes(png)
        written.append(Path(outdir) / name)
    return written


#: The figures after the per-service ones (Figs 1-4, 10-13), in the order they are drawn and listed.
PLOTTED_FIGURES = (
    "fig05_burstiness", "fig06_gamma_arrivals", "fig07_length_distributions", "fig08_request_vs_response",
    "fig09_request_response_counts", "fig14_failure_rates", "sessions", "prefix_reuse",
)
#: Figures drawn from the arrival fits' tables (`burstgpt.analysis.characterise.ARRIVAL_TABLES`).
ARRIVAL_FIGURES = ("fig06_gamma_arrivals",)


def render_trace_figures(
    characterisation: Characterisation,
    *,
    arrivals: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, bytes]:
    """PNG bytes of every figure the characterisation has data for, by file name, in write order; with
    `arrivals` True only the `ARRIVAL_FIGURES`, False all others, None all."""
    # Titles at a fixed height: placing them automatically measures every axis' tick labels first, which took
    # about a third of the drawing time (no panel here has decorations above it).
    with matplotlib.rc_context({"axes.titley": 1.0}):
        return {name: _png(figure) for name, figure in _trace_figures(characterisation, arrivals, progress)}


def _trace_figures(c: Characterisation, arrivals: bool | None, progress):
    """(file name, figure) of each figure to draw, drawn one at a time (see `render_trace_figures`)."""
    step = progress or (lambda name: None)
    if not arrivals:
        for service in _services(c.overview):
            step(f"figures: {service}")
            yield from _service_figures(c, service)
    plotters = dict(zip(PLOTTED_FIGURES, (
        _plot_burstiness, _plot_gamma_arrivals, _plot_length_distributions, _plot_request_vs_response,
        _plot_request_response_counts, _plot_failure_rates, _plot_sessions, _plot_prefix_reuse), strict=True))
    for name, plotter in plotters.items():
        if arrivals is not None and (name in ARRIVAL_FIGURES) != arrivals:
            continue
        step(f"figures: {name}")
        figure = plotter(c)
        if figure is not None:
            yield f"{name}.png", figure


def _in_write_order(rendered: dict[str, bytes]) -> dict[str, bytes]:
    """`rendered` with the per-service figures first (in their order), then `PLOTTED_FIGURES`' order."""
    rank = {f"{name}.png": index for index, name in enumerate(PLOTTED_FIGURES)}
    return dict(sorted(rendered.items(), key=lambda item: rank.get(item[0], -1)))


# ------------------------------------------------------------------------------------------------ helpers


def _new_figure(width: float, height: float, *, left: float = 0.08, right: float = 0.98, bottom_in: float = 0.6,
                top_in: float = 0.65, hspace: float = 0.45, wspace: float = 0.22) -> Figure:
    """A figure with fixed margins (bottom and top in inches). A layout engine (constrained/tight) would adjust
    them itself but doubles the drawing time, which dominates `analyze` on large traces."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=left, right=right, bottom=bottom_in / height, top=1 - top_in / height,
                           hspace=hspace, wspace=wspace)
    return figure


def _png(figure: Figure) -> bytes:
    """The figure drawn and encoded as PNG."""
    buffer = io.BytesIO()
    # zlib level 3 rather than 6: a third of the encoding time for files about 5 % larger.
    figure.savefig(buffer, format="png", dpi=100, pil_kwargs={"compress_level": 3})
    return buffer.getvalue()


def _services(overview: pl.DataFrame) -> list[str | None]:
    return overview["service"].unique().sort(nulls_last=True).to_list()


def _label(model, service) -> str:
    return f"{model or 'unknown'} / {service or 'unknown'}"


def _top_groups(c: Characterisation) -> list[tuple]:
    """The largest model x service groups by requests, at most MAX_GROUP_PANELS."""
    top = c.overview.sort("requests", descending=True).head(MAX_GROUP_PANELS)
    return list(zip(top["model"].to_list(), top["service"].to_list(), strict=True))


def _of(table: pl.DataFrame, model, service) -> pl.DataFrame:
    """Rows of one model x service group (null-safe)."""
    if table.height == 0:
        return table
    return table.filter(pl.col("model").eq_missing(model) & pl.col("service").eq_missing(service))


def _number(kind: str, service) -> str:
    conversation, api = PAPER_NUMBERS[kind]
    return f"fig{api if service == 'api' else conversation:02d}"


def _day_labels(c: Characterisation) -> str:
    return "date" if c.origin is not None else "day of trace"


def _plain_number(value: float) -> str:
    """0.5, 40, 2,000 rather than matplotlib's 5x10^-1 on log axes."""
    return f"{value:,.0f}" if 1 <= value < 1e7 and float(value).is_integer() else f"{value:g}"


class _PlainLogFormatter(ticker.LogFormatter):
    """Log-axis tick labels as plain numbers; minor ticks labelled only where matplotlib would label them (axes
    spanning few decades)."""

    def __call__(self, x, pos=None):
        return _plain_number(x) if super().__call__(x, pos) else ""


def plain_log_axis(ax, which: str = "y") -> None:
    """Log scale on `which` ('x' or 'y') with plain-number tick labels."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    axis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))


def _say(ax, text: str) -> None:
    """Write `text` in the middle of an empty panel (why nothing is drawn)."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def _observed_hours(c: Characterisation) -> float:
    return float(c.totals["span_s"]) / 3600.0


def _grid_axes(figure: Figure, panels: int, columns: int = 2, **kwargs):
    columns = min(columns, panels)
    rows = -(-panels // columns)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False, **kwargs)).ravel()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return axes[:panels]


# ------------------------------------------------------------------------------------------------ Figs 1-4, 10-13


def _service_figures(c: Characterisation, service):
    """(file name, figure) of Figs 1-4 and 10-13 for one service, one at a time."""
    tag = service or "unknown"
    daily = _rows(c.daily_requests, service=service)
    if daily.height:
        figure = _new_figure(10, 4)
        ax = figure.subplots()
        days = daily["day"].n_unique()
        if days == 1:
            # One (partial) day: a point per model on a meaningless date axis would say nothing; bars with the
            # observed time say what the count covers.
            models = daily["model"].to_list()
            bars = ax.bar(range(len(models)), daily["requests"].to_numpy(),
                          color=[f"C{i}" for i in range(len(models))])
            ax.bar_label(bars, fontsize="small")
            ax.set_ylim(0, max(1, int(daily["requests"].max())) * 1.15)
            ax.set_xticks(range(len(models)), [m or "unknown" for m in models])
            ax.set_ylabel(f"requests in the {_observed_hours(c):.1f} h observed")
            ax.set_title(f"Requests, {tag} (paper Figs 1-2; the trace covers less than a day)")
        else:
            for index, (model, part) in enumerate(daily.group_by("model", maintain_order=True)):
                x = part["date"].to_list() if c.origin is not None else part["day"].to_numpy()
                y = part["requests"].to_numpy()
                partial = part["observed_s"].to_numpy() < FULL_DAY_S
                ax.plot(x, y, color=f"C{index}", label=model[0] or "unknown")
                _markers(ax, x, y, partial, f"C{index}")
            weekend = daily.filter(pl.col("day_of_week") >= 5)["day"].unique().to_numpy()
            title = f"Requests per day, {tag} (paper Figs 1-2"
            if c.origin is not None and weekend.size:
                title += "; weekends shaded"
                for day in weekend:
                    date = c.daily_requests.filter(pl.col("day") == day)["date"][0]
                    ax.axvspan(date, date + timedelta(days=1), color="0.9", zorder=0)
            ax.set_title(title + ")")
            ax.set_xlabel(_day_labels(c))
            ax.set_ylabel("requests per day\n(hollow: day observed in part)")
            ax.legend(loc="best")
        yield f"{_number('daily_requests', service)}_daily_requests_{tag}.png", figure

    profile = _rows(c.hour_of_day_profile, service=service)
    if profile.height and profile["mean_requests"].drop_nulls().len():
        figure = _new_figure(10, 4)
        ax = figure.subplots()
        for index, (model, part) in enumerate(profile.group_by("model", maintain_order=True)):
            hours = part["hour_of_day"].to_numpy()
            mean = part["mean_requests"].to_numpy()
            ax.plot(hours, mean, color=f"C{index}", label=f"{model[0] or 'unknown'} mean")
            _markers(ax, hours, mean, part["observed_hours"].to_numpy() < part["days"].to_numpy() - 1e-6, f"C{index}")
            std = part["std_requests"].to_numpy()
            if np.isfinite(std.astype(float)).any():
                std = np.nan_to_num(std.astype(float))
                ax.fill_between(hours, np.maximum(mean - std, 0), mean + std, color=f"C{index}", alpha=0.2,
                                label=f"{model[0] or 'unknown'} ±1 sd across days")
        ax.set_title(f"Requests per hour of day, {tag} (paper Figs 3-4)")
        ax.set_xlabel("hour of day" + ("" if c.origin is not None else " (trace clock)"))
        ax.set_ylabel("requests per hour observed\n(hollow: hour observed in part)")
        ax.set_xticks(range(0, 24, 2))
        ax.set_xlim(-0.5, 23.5)
        ax.legend(fontsize="small", loc="best")
        yield f"{_number('hourly_requests', service)}_hourly_requests_{tag}.png", figure

    for kind in ("request", "response"):
        box = _rows(c.throughput_box, service=service)
        box = box.filter(pl.col("kind") == kind) if box.height else box
        if box.height == 0:
            continue
        models = box["model"].unique(maintain_order=True).to_list()
        figure = _new_figure(10, 3.2 * len(models), left=0.09, hspace=0.3)
        axes = _grid_axes(figure, len(models), columns=1, sharex=True)
        for ax, model in zip(axes, models, strict=True):
            part = box.filter(pl.col("model").eq_missing(model)).sort("hour_of_day")
            _box_plot(ax, part["hour_of_day"].to_numpy(), *(
                part[f"{stat}_tokens_per_hour"].cast(pl.Float64).fill_null(np.nan).to_numpy()
                for stat in ("q1", "median", "q3", "whisker_low", "whisker_high", "mean")))
            ax.set_xlim(-0.5, 23.5)
            ax.set_ylabel(f"{kind} tokens / hour")
            ax.set_title(f"{model or 'unknown'}", fontsize="medium")
        axes[-1].set_xlabel("hour of day (boxes across days; triangle = mean; whiskers 1.5 IQR; hours observed "
                            "in part scaled, under half left out)")
        figure.suptitle(f"{kind.capitalize()} token throughput per hour, {tag} (paper Figs 10-13)")
        name = f"{_number(f'{kind}_throughput', service)}_{kind}_throughput_{tag}.png"
        yield name, figure


def _box_plot(ax, positions, q1, median, q3, low, high, mean, width: float = 0.5) -> None:
    """Box plots (box q1-q3, median line, whiskers to `low`/`high` with caps, a triangle at the mean) drawn as
    three collections and one marker line: matplotlib's `bxp` makes about eight artists per box, whose drawing
    dominated the throughput figures."""
    x = np.asarray(positions, dtype=float)
    half, cap = width / 2, width / 4
    shown = np.isfinite(q1) & np.isfinite(q3)
    boxes = np.stack([np.column_stack([x - half, q1]), np.column_stack([x + half, q1]),
                      np.column_stack([x + half, q3]), np.column_stack([x - half, q3])], axis=1)[shown]
    ax.add_collection(PolyCollection(boxes, facecolors="none", edgecolors="black", linewidths=1.0))

    def pairs(x0, y0, x1, y1):  # segments (x0, y0) - (x1, y1), shape (n, 2, 2)
        return np.stack([np.column_stack([x0, y0]), np.column_stack([x1, y1])], axis=1)

    whiskers = np.concatenate([pairs(x, low, x, q1), pairs(x, q3, x, high), pairs(x - cap, low, x + cap, low),
                               pairs(x - cap, high, x + cap, high)])
    ax.add_collection(LineCollection(whiskers[np.isfinite(whiskers).all(axis=(1, 2))], colors="black",
                                     linewidths=1.0))
    medians = pairs(x - half, median, x + half, median)
    ax.add_collection(LineCollection(medians[np.isfinite(medians).all(axis=(1, 2))], colors="C1", linewidths=1.0))
    ax.plot(x, mean, "^", ms=4, color="C2", linestyle="none")
    ax.autoscale_view()
    ax.set_xticks(x, [str(int(v)) for v in x])


def _rows(table: pl.DataFrame, *, service) -> pl.DataFrame:
    """Rows of one service (null-safe; an empty table, which may have no columns, stays empty)."""
    return table.filter(pl.col("service").eq_missing(service)) if table.height else table


def _markers(ax, x, y, partial: np.ndarray, color: str) -> None:
    """Solid markers for periods observed in full, hollow ones for periods observed in part."""
    x = np.asarray(x, dtype=object)
    y = np.asarray(y)
    ax.plot(x[~partial], y[~partial], "o", ms=4, color=color)
    ax.plot(x[partial], y[partial], "o", ms=5, markerfacecolor="white", color=color)


# ------------------------------------------------------------------------------------------------ Fig 5


def _plot_burstiness(c: Characterisation) -> Figure | None:
    bursts = c.burstiness
    if bursts.height == 0:
        return None
    minutes = bursts["window_min"].unique().sort().to_list()
    groups = _top_groups(c)
    one_day = bursts["day"].n_unique() == 1
    figure = _new_figure(10, 3.2 * len(minutes), left=0.11, right=0.78 if not one_day else 0.98, hspace=0.25)
    axes = _grid_axes(figure, len(minutes), columns=1, sharex=not one_day)
    for ax, window in zip(axes, minutes, strict=True):
        if one_day:
            # A trace under a day: one count per group, as bars, labelled with the time it covers.
            values = [_of(bursts, m, s).filter(pl.col("window_min") == window)["bursts_2x"].sum() for m, s in groups]
            bars = ax.bar(range(len(groups)), values, color=[f"C{i}" for i in range(len(groups))])
            ax.bar_label(bars, fontsize="small")
            ax.set_xticks(range(len(groups)), [_label(m, s) for m, s in groups], fontsize="small")
            ax.set_ylim(0, max(1, max(values)) * 1.15)
            ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
            ax.set_ylabel(f"windows >= 2x previous\n({window}-min windows, {_observed_hours(c):.1f} h observed)")
            continue
        for index, (model, service) in enumerate(groups):
            part = _of(bursts, model, service).filter(pl.col("window_min") == window).sort("day")
            if part.height == 0:
                continue
            x = part["date"].to_list() if c.origin is not None else part["day"].to_numpy()
            y = part["bursts_2x"].to_numpy()
            ax.plot(x, y, color=f"C{index}", label=_label(model, service))
            _markers(ax, x, y, part["observed_s"].to_numpy() < FULL_DAY_S, f"C{index}")
        ax.set_ylabel(f"windows >= 2x previous\n({window}-min windows) per day\n(hollow: day observed in part)")
    if one_day:
        figure.suptitle("Short-term burstiness: request count at least doubling window to window (paper Fig 5;\n"
                        "the trace covers less than a day)")
    else:
        axes[0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        axes[-1].set_xlabel(_day_labels(c))
        figure.suptitle("Short-term burstiness: request count at least doubling window to window (paper Fig 5)")
    return figure


# ------------------------------------------------------------------------------------------------ Fig 6


def _plot_gamma_arrivals(c: Characterisation) -> Figure | None:
    windows = c.arrival_windows
    summary = c.arrival_summary
    has_windows = windows.height > 0 and windows["alpha"].drop_nulls().len() > 0
    has_overall = summary.height > 0 and summary["gamma_alpha"].drop_nulls().len() > 0
    if not (has_windows or has_overall):
        return None
    figure = _new_figure(12, 8.4, left=0.07, top_in=1.0, hspace=0.35)
    (ax_alpha, ax_beta), (ax_hour, ax_pdf) = figure.subplots(2, 2)
    groups = _top_groups(c)
    hours = 3600.0
    for index, (model, service) in enumerate(groups):
        part = _of(windows, model, service).filter(pl.col("alpha").is_not_null()) if has_windows else windows
        if part.height == 0:
            continue
        x = part["window_start_s"].to_numpy() / hours
        label = _label(model, service)
        ax_alpha.plot(x, part["alpha"].to_numpy(), ".", ms=3, color=f"C{index}", label=label)
        ax_beta.plot(x, part["beta_s"].to_numpy(), ".", ms=3, color=f"C{index}")
        by_hour = part.group_by("hour_of_day").agg(pl.col("alpha").median()).sort("hour_of_day")
        ax_hour.plot(by_hour["hour_of_day"].to_numpy(), by_hour["alpha"].to_numpy(), marker="o", ms=3,
                     color=f"C{index}")
    if has_windows:
        for ax, name in ((ax_alpha, "shape alpha"), (ax_beta, "scale beta (s)")):
            plain_log_axis(ax)
            ax.set_xlabel("window start (hours since trace clock 0)")
            ax.set_ylabel(name)
        ax_hour.set_xlabel("hour of day")
        ax_hour.set_ylabel("alpha")
        ax_hour.set_xticks(range(0, 24, 2))
        ax_hour.set_xlim(-0.5, 23.5)
        # One legend for the groups, above the panels, so it covers no data.
        figure.legend(*ax_alpha.get_legend_handles_labels(), loc="upper center", ncol=min(len(groups), 4),
                      fontsize="small", bbox_to_anchor=(0.5, 1 - 0.42 / 8.4), frameon=False, markerscale=3)
    else:
        for ax in (ax_alpha, ax_beta, ax_hour):
            _say(ax, f"no {c.window_s:g}-s window has {c.min_arrivals} or more arrivals")
    ax_alpha.set_title(f"Gamma shape per {c.window_s:g}-s window (CV = 1/sqrt(alpha))")
    ax_beta.set_title(f"Gamma scale per {c.window_s:g}-s window")
    ax_hour.set_title("Median alpha by hour of day")
    _plot_gap_density(ax_pdf, c, groups)
    figure.suptitle("Arrivals: Gamma fits of inter-arrival times (paper Fig 6)")
    return figure


def _plot_gap_density(ax, c: Characterisation, groups: list[tuple]) -> None:
    """Gap histogram of the largest group with a whole-trace Gamma fit, against the fitted density, and how its
    timestamps were recorded (ties spread within the resolution or not)."""
    ax.set_title("Gap distribution and fitted Gamma density (whole trace)")
    for model, service in groups:
        fit = _of(c.arrival_summary, model, service)
        histogram = _of(c.gap_histograms, model, service)
        if histogram.height and fit.height and fit["gamma_alpha"][0] is not None:
            break
    else:
        _say(ax, "too few distinct gaps to fit")
        return
    r = fit.row(0, named=True)
    mid = np.sqrt(histogram["bin_start_s"].to_numpy() * histogram["bin_end_s"].to_numpy())
    density = histogram["density_per_s"].to_numpy()
    shown = density > 0
    ax.plot(mid[shown], density[shown], "o", ms=3, color="C0",
            label=f"gaps of {_label(model, service)} (empty bins omitted)")
    alpha, beta = r["gamma_alpha"], r["gamma_beta_s"]
    grid = np.geomspace(mid.min(), mid.max(), 300)
    ax.plot(grid, stats.gamma.pdf(grid, alpha, scale=beta), color="C3",
            label=f"Gamma fit: alpha={alpha:.3g}, beta={beta:.3g} s")
    plain_log_axis(ax, "x")
    plain_log_axis(ax, "y")
    ax.set_ylim(density[shown].min() / 10, density[shown].max() * 10)
    ax.set_xlabel("inter-arrival time (s)")
    ax.set_ylabel("density (1/s)")
    ax.legend(fontsize="small", loc="lower left")
    resolution = r.get("time_resolution_s")
    tied = r.get("tied_arrival_fraction") or 0.0
    note = (f"timestamps every {resolution:g} s, {100 * tied:.0f}% tied: spread within {resolution:g} s"
            if resolution else f"continuous timestamps, {100 * tied:.1f}% tied (left out)")
    ax.text(0.98, 0.97, note, transform=ax.transAxes, ha="right", va="top", fontsize="small", color="0.3")


# ------------------------------------------------------------------------------------------------ Figs 7-9


def _plot_length_distributions(c: Characterisation) -> Figure | None:
    histograms = c.length_histograms
    if histograms.height == 0:
        return None
    groups = _top_groups(c)
    figure = _new_figure(12, 3.0 * len(groups), left=0.07, hspace=0.6, wspace=0.2)
    axes = figure.subplots(len(groups), 2, squeeze=False)
    for row, (model, service) in enumerate(groups):
        for column, kind in enumerate(("request", "response")):
            ax = axes[row, column]
            part = _of(histograms, model, service)
            part = part.filter(pl.col("kind") == kind) if part.height else part
            ax.set_title(_label(model, service), fontsize="medium")
            if part.height == 0:
                _say(ax, "no successful request" if kind == "response" else "no request with tokens")
                continue
            starts, ends = part["bin_start_tokens"].to_numpy(), part["bin_end_tokens"].to_numpy()
            counts = part["count"].to_numpy()
            # The last bin also holds every longer length; draw it as wide as the others so the axis stays
            # readable, and say so.
            width = starts[1] - starts[0] if starts.size > 1 else ends[0] - starts[0]
            # One filled step patch rather than a bar patch per bin (8 panels x 60 bins drew slowly).
            ax.stairs(counts, np.append(starts, starts[-1] + width), fill=True, color=f"C{column}", alpha=0.7,
                      label=f"{kind} tokens (last bin: >= {starts[-1]:.0f})")
            ax.set_xlim(0, starts[-1] + width)
            if kind == "request":
                _overlay_zipf(ax, _of(c.request_zipf, model, service), starts, ends, counts.sum())
            else:
                bimodality = _of(c.response_bimodality, model, service)
                if bimodality.height and bimodality["bimodality_coefficient"][0] is not None:
                    r = bimodality.row(0, named=True)
                    gain = "-" if r["mixture_delta_bic"] is None else f"{r['mixture_delta_bic']:.0f}"
                    verdict = "-" if r["bimodal"] is None else ("yes" if r["bimodal"] else "no")
                    ax.text(0.98, 0.95, f"bimodality coeff. {r['bimodality_coefficient']:.2f}\n"
                            f"2-mode BIC gain {gain}, bimodal: {verdict}",
                            transform=ax.transAxes, ha="right", va="top", fontsize="small")
            ax.set_xlabel(f"{kind} length (tokens)")
            ax.set_ylabel("requests")
            ax.legend(fontsize="small", loc="center right")
    figure.suptitle("Request and response lengths (paper Fig 7)")
    return figure


def _overlay_zipf(ax, fit: pl.DataFrame, starts: np.ndarray, ends: np.ndarray, total: int) -> None:
    """Expected requests per histogram bin under the fitted bounded Zipf law (nothing when theta is undefined:
    one distinct length)."""
    if fit.height == 0 or fit["zipf_theta"][0] is None:
        return
    r = fit.row(0, named=True)
    # Bin [start, end) holds the integers ceil(start) .. ceil(end) - 1.
    below = lambda edge: zipf_cdf(r["zipf_theta"], r["min_tokens"], r["max_tokens"], np.ceil(edge) - 1)  # noqa: E731
    expected = (below(ends) - below(starts)) * r["n"]
    edges = np.append(starts, starts[-1] + (starts[1] - starts[0] if starts.size > 1 else 1.0))
    ax.stairs(expected, edges, color="C3",
              label=f"Zipf fit theta={r['zipf_theta']:.3f} (KS {r['ks_stat']:.3f})")


def _group_panels(c: Characterisation, table: pl.DataFrame, row_height: float, **margins) -> tuple[Figure, list]:
    """A two-column figure with a titled panel per largest group (`_top_groups`); returns it and (ax, model,
    service, rows of `table`) for the groups `table` has rows for; the other panels say there was none."""
    groups = _top_groups(c)
    figure = _new_figure(11, row_height * -(-len(groups) // 2), **margins)
    panels = []
    for ax, (model, service) in zip(_grid_axes(figure, len(groups)), groups, strict=True):
        ax.set_title(_label(model, service), fontsize="medium")
        part = _of(table, model, service)
        if part.height:
            panels.append((ax, model, service, part))
        else:
            _say(ax, "no successful request")
    return figure, panels


def _plot_request_vs_response(c: Characterisation) -> Figure | None:
    bins = c.request_response_bins
    if bins.height == 0:
        return None
    figure, panels = _group_panels(c, bins, 3.6, hspace=0.4, wspace=0.25)
    for ax, model, service, part in panels:
        width = float(np.diff(part["request_bin_start_tokens"].to_numpy()).min()) if part.height > 1 else 1.0
        x = part["request_bin_start_tokens"].to_numpy() + width / 2
        mean = part["response_mean_tokens"].to_numpy()
        std = part["response_std_tokens"].fill_null(0).to_numpy()
        ax.errorbar(x, mean, yerr=std, fmt="o", ms=3, capsize=2, label="mean ± sd")
        ax.fill_between(x, part["response_p25_tokens"].to_numpy(), part["response_p75_tokens"].to_numpy(),
                        alpha=0.2, label="25th-75th percentile")
        ax.plot(x, part["response_median_tokens"].to_numpy(), "--", label="median")
        line = _of(c.request_response_correlation, model, service)
        r = line.row(0, named=True) if line.height else {"n": 0, "slope": None}
        if r["slope"] is not None:
            correlation = ("" if r["pearson_r"] is None
                           else f" (r={r['pearson_r']:.2f}, rho={r['spearman_rho']:.2f})")
            ax.plot(x, r["intercept_tokens"] + r["slope"] * x, color="C3",
                    label=f"fit {r['intercept_tokens']:.0f} + {r['slope']:.3f} x{correlation}")
        else:
            why = "too few requests" if r["n"] < 2 else "constant request length"
            ax.text(0.5, 0.06, f"{why} (n={r['n']}): no line fitted", transform=ax.transAxes, ha="center",
                    va="bottom", color="0.35")
        ax.set_xlabel("request length bin (tokens)")
        ax.set_ylabel("response length (tokens)")
        ax.legend(fontsize="x-small")
    figure.suptitle("Response length against request length (paper Fig 8)")
    return figure


def _plot_request_response_counts(c: Characterisation) -> Figure | None:
    counts = c.request_response_counts
    if counts.height == 0:
        return None
    figure, panels = _group_panels(c, counts, 3.8, right=0.9, hspace=0.4, wspace=0.25)
    # One colour scale for every panel (and one colour bar: a bar per panel was a third of the drawing time).
    norm = LogNorm(vmin=1, vmax=max(1, int(counts["count"].max())))
    image = None
    for ax, _model, _service, part in panels:
        requests = np.sort(counts["request_bin_start_tokens"].unique().to_numpy())
        responses = np.sort(counts["response_bin_start_tokens"].unique().to_numpy())
        grid = np.zeros((responses.size, requests.size))
        grid[np.searchsorted(responses, part["response_bin_start_tokens"].to_numpy()),
             np.searchsorted(requests, part["request_bin_start_tokens"].to_numpy())] = part["count"].to_numpy()
        step_x = requests[1] - requests[0] if requests.size > 1 else 1.0
        step_y = responses[1] - responses[0] if responses.size > 1 else 1.0
        image = ax.pcolormesh(np.append(requests, requests[-1] + step_x), np.append(responses, responses[-1] + step_y),
                              np.ma.masked_equal(grid, 0), norm=norm, cmap="viridis")
        ax.set_xlabel("request length bin (tokens; last bin open)")
        ax.set_ylabel("response length bin (tokens)")
    if image is not None:
        box = figure.subplotpars  # the bar spans the panels' height, right of them
        figure.colorbar(image, cax=figure.add_axes((0.925, box.bottom, 0.015, box.top - box.bottom)),
                        label="requests")
    figure.suptitle("Counts of request and response lengths in bins (paper Fig 9)")
    return figure


# ------------------------------------------------------------------------------------------------ Fig 14


def _plot_failure_rates(c: Characterisation) -> Figure | None:
    rates = c.failure_rates
    if rates.height == 0:
        return None
    figure = _new_figure(12, 4.2, bottom_in=1.0, wspace=0.18)
    ax_bar, ax_hour = figure.subplots(1, 2, width_ratios=[1, 2])
    labels = [_label(m, s) for m, s in zip(rates["model"].to_list(), rates["service"].to_list(), strict=True)]
    values = 100 * rates["failure_rate"].to_numpy()
    bars = ax_bar.bar(range(len(labels)), values, color=[f"C{i}" for i in range(len(labels))])
    ax_bar.bar_label(bars, labels=[f"{v:.2f}%" for v in values], fontsize="small")
    ax_bar.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize="small")
    ax_bar.set_ylabel("failure rate (%)")
    ax_bar.set_title("Overall")
    for index, (model, service) in enumerate(zip(rates["model"].to_list(), rates["service"].to_list(), strict=True)):
        part = _of(c.failure_rates_by_hour, model, service)
        ax_hour.plot(part["hour_of_day"].to_numpy(), 100 * part["failure_rate"].to_numpy(), marker="o", ms=3,
                     color=f"C{index}", label=_label(model, service))
    ax_hour.set_xlabel("hour of day")
    ax_hour.set_ylabel("failure rate (%)")
    ax_hour.set_xticks(range(0, 24, 2))
    ax_hour.set_title("By hour of day (pooled across days)")
    ax_hour.legend(fontsize="small")
    figure.suptitle("Failure rates: response tokens = 0 (paper Fig 14)")
    return figure


# ------------------------------------------------------------------------------------------------ sessions


def _plot_sessions(c: Characterisation) -> Figure | None:
    if c.turns_histogram.height == 0:
        return None
    figure = _new_figure(12, 4, wspace=0.2)
    ax_turns, ax_elapsed = figure.subplots(1, 2)
    groups = c.turns_histogram.select("model", "service").unique(maintain_order=True).rows()
    for index, (model, service) in enumerate(groups):
        part = _of(c.turns_histogram, model, service)
        ax_turns.plot(part["turns"].to_numpy(), part["sessions"].to_numpy(), marker="o", ms=3, color=f"C{index}",
                      label=_label(model, service))
        elapsed = _of(c.elapsed_vs_response, model, service)
        if elapsed.height:
            ax_elapsed.plot(elapsed["response_bin_start_tokens"].to_numpy(), elapsed["elapsed_median_s"].to_numpy(),
                            marker="o", ms=3, color=f"C{index}", label=f"{_label(model, service)} median")
    ax_turns.set_xscale("log")
    ax_turns.set_yscale("log")
    ax_turns.set_xlabel("turns per session")
    ax_turns.set_ylabel("sessions")
    ax_turns.legend(fontsize="small")
    ax_elapsed.set_xlabel("response length bin (tokens)")
    ax_elapsed.set_ylabel("elapsed time (s)")
    if ax_elapsed.has_data():
        ax_elapsed.legend(fontsize="small")
    figure.suptitle("Conversation sessions")
    return figure


# ------------------------------------------------------------------------------------------------ prefix reuse


def _plot_prefix_reuse(c: Characterisation) -> Figure | None:
    """LRU hit rate against cache size (log x) per group, and the share of blocks seen before per window."""
    curve = c.prefix_hit_rate_curve
    if curve.height == 0:
        return None
    summary = c.prefix_reuse_summary
    groups = summary.filter(pl.col("scope") == "group").sort("block_accesses", descending=True)
    scopes = groups.head(MAX_GROUP_PANELS).select("scope", "model", "service").rows()
    if groups.height > 1:
        scopes.append(("all", None, None))
    figure = _new_figure(12, 4.4, left=0.07, bottom_in=0.75, wspace=0.2)
    ax_curve, ax_windows = figure.subplots(1, 2)
    tokens = c.prefix_block_size is not None
    windows = c.prefix_reuse_windows
    span_s = float(windows["window_end_s"].max() - windows["window_start_s"].min())
    unit_s, unit = (60.0, "minutes") if span_s < 2 * 3600 else (3600.0, "hours")
    prefix_differs = False
    for index, (scope, model, service) in enumerate(scopes):
        label = "all requests, one cache" if scope == "all" else _label(model, service)
        part = _of(curve.filter(pl.col("scope") == scope), model, service)
        x = part["cache_tokens" if tokens else "cache_blocks"].to_numpy()
        per_block, prefix = part["hit_rate"].to_numpy(), part["prefix_hit_rate"].to_numpy()
        ax_curve.plot(x, per_block, color=f"C{index}", label=label)
        if not np.allclose(per_block, prefix, rtol=0, atol=1e-12):
            prefix_differs = True
            ax_curve.plot(x, prefix, "--", color=f"C{index}")
        part = _of(windows.filter(pl.col("scope") == scope), model, service)
        start = part["window_start_s"].to_numpy() / unit_s
        seen, prefix_seen = part["seen_before_fraction"].to_numpy(), part["prefix_seen_before_fraction"].to_numpy()
        ax_windows.plot(start, seen, marker="o", ms=3, color=f"C{index}", label=label)
        if not np.allclose(seen, prefix_seen, rtol=0, atol=1e-12):
            prefix_differs = True
            ax_windows.plot(start, prefix_seen, "--", marker="o", ms=2, color=f"C{index}")
    plain_log_axis(ax_curve, "x")
    ax_curve.set_xlabel(f"LRU cache size ({c.prefix_block_size}-token blocks, in tokens)" if tokens
                        else "LRU cache size (blocks)")
    ax_curve.set_ylabel("hit rate (share of block accesses)")
    ax_curve.set_ylim(0, 1)
    ax_curve.set_title("Hit rate by cache size (whole trace)")
    ax_curve.legend(fontsize="small", loc="upper left")
    ax_windows.set_xlabel(f"window start ({unit} since trace clock 0; {c.window_s:g}-s windows)")
    ax_windows.set_ylabel("blocks seen in an earlier request")
    ax_windows.set_ylim(0, 1)
    ax_windows.set_title("Blocks seen before, per window")
    note = ("solid: per-block LRU; dashed: prefix semantics (a request hits only on its leading cached blocks)"
            if prefix_differs else
            "per-block LRU and prefix semantics (hits only on a request's leading cached blocks) coincide here")
    figure.text(0.5, 0.015, note, ha="center", va="bottom", fontsize="small", color="0.3")
    figure.suptitle("Prefix reuse of the prompt blocks")
    return figure
