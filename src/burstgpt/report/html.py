"""Self-contained HTML reports: one `report.html` that opens from disk and makes no network request.

Every figure is inside the file: run figures as inline SVG drawn by matplotlib (text kept as text, series
already downsampled to the metrics windows and at most `figures.MAX_DISPLAY_POINTS` points per line, histograms
precomputed), and an analysis's figures as the PNGs `analyze` draws anyway, embedded as `data:` URIs (drawing
them a second time as SVG would double the figure time, and Fig 9's heat map is lighter as pixels). CSS and the
few lines of JavaScript (zoom on the timeline) are inline too.

Kinds of report:
- `write_run_report`: one bench / simulate run (configuration, summary, failure classes, timeline, latency
  distributions, server metrics); called at the end of `burstgpt.report.rundir.render_run`.
- `write_comparison_report`: several runs side by side (`report A B ...`).
- `write_analysis_report`: a trace characterisation (`analyze`): totals, the paper's Figs 1-14 and tables.
- `write_results_report`: a results frame plus figures (e.g. a sweep), the generic building block.

Every report has a `<table id="summary">` and one `<figure class="report-figure" data-name=...>` per figure,
which the browser test looks for.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import numpy as np
import polars as pl
from matplotlib.figure import Figure

from burstgpt import __version__
from burstgpt.outputs import atomic_path
from burstgpt.records.rundir import REPORT_FILE

#: Rows of a table shown in the page; longer tables show their head and say where the full table is.
MAX_TABLE_ROWS = 40
#: Bins of the precomputed latency histograms (log-spaced).
LATENCY_BINS = 60


@dataclass
class Section:
    """One titled part of a report page; `body` is an HTML fragment (already escaped)."""

    title: str
    body: str
    anchor: str = ""

    @property
    def id(self) -> str:
        return self.anchor or "".join(ch if ch.isalnum() else "-" for ch in self.title.lower()).strip("-")


# ------------------------------------------------------------------------------------------------ page

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3b57;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;font-size:13px;opacity:.85}
nav{padding:6px 24px;background:#e8eef4;font-size:13px}nav a{margin-right:14px;color:#1f3b57}
main{padding:8px 24px 40px;max-width:1400px}section{margin-top:18px}h2{font-size:17px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border:1px solid #d4d4d4;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#eef2f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure.report-figure{margin:10px 0;background:#fff;border:1px solid #ddd;padding:4px;overflow:hidden}
figure.report-figure svg,figure.report-figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#555;padding:2px 4px}.note{font-size:12px;color:#555}
.zoomable svg{cursor:zoom-in}
"""

#: Ctrl/Cmd + wheel zooms a timeline around the pointer, dragging pans it, double-click resets it.
_JS = """
document.querySelectorAll('.zoomable svg').forEach(function(svg){
  var box0=svg.viewBox.baseVal, full=[box0.x,box0.y,box0.width,box0.height], drag=null;
  function set(b){svg.setAttribute('viewBox',b.join(' '));}
  svg.addEventListener('wheel',function(e){if(!(e.ctrlKey||e.metaKey))return;e.preventDefault();
    var b=svg.viewBox.baseVal,r=svg.getBoundingClientRect(),k=e.deltaY<0?0.8:1.25;
    var px=b.x+(e.clientX-r.left)/r.width*b.width,py=b.y+(e.clientY-r.top)/r.height*b.height;
    var w=Math.min(full[2],b.width*k),h=Math.min(full[3],b.height*k);
    set([px-(px-b.x)*w/b.width,py-(py-b.y)*h/b.height,w,h]);},{passive:false});
  svg.addEventListener('mousedown',function(e){drag=[e.clientX,e.clientY];});
  window.addEventListener('mouseup',function(){drag=null;});
  svg.addEventListener('mousemove',function(e){if(!drag)return;var b=svg.viewBox.baseVal,
    r=svg.getBoundingClientRect();set([b.x-(e.clientX-drag[0])*b.width/r.width,
    b.y-(e.clientY-drag[1])*b.height/r.height,b.width,b.height]);drag=[e.clientX,e.clientY];});
  svg.addEventListener('dblclick',function(){set(full);});
});
"""


def render_page(title: str, sections: Sequence[Section], *, subtitle: str = "") -> str:
    """The whole HTML document: header, a table of contents, the sections. No external resource."""
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{s.id}">{_esc(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{s.id}"><h2>{_esc(s.title)}</h2>\n{s.body}\n</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        # No request may leave the page: the policy forbids any fetch but inline and data: content.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_esc(title)}</title>"
        f"<style>{_CSS}</style></head><body>\n"
        f"<header><h1>{_esc(title)}</h1><p>{_esc(subtitle)}{' · ' if subtitle else ''}"
        f"burstgpt {_esc(__version__)}, {generated}</p></header>\n<nav>{nav}</nav>\n<main>\n{body}\n</main>\n"
        f"<script>{_JS}</script></body></html>\n"
    )


def write_page(path: str | Path, title: str, sections: Sequence[Section], *, subtitle: str = "") -> Path:
    """Write `render_page(...)` atomically at `path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(render_page(title, sections, subtitle=subtitle), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ pieces


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


_SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)


def svg_figure(figure: Figure, name: str, caption: str = "", *, zoomable: bool = False) -> str:
    """`figure` as an inline SVG inside a `<figure class="report-figure" data-name=name>`. Text stays text
    (smaller, searchable); element ids are salted with `name` so several SVGs in one page never share one."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name, "svg.image_inline": True}):
        figure.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and doctype (not allowed inside HTML)
    svg = _SVG_METADATA.sub("", svg, count=1)  # RDF metadata: bytes the page does not use
    classes = "report-figure zoomable" if zoomable else "report-figure"
    return (f'<figure class="{classes}" data-name="{_esc(name)}">{svg}'
            + (f"<figcaption>{_esc(caption)}</figcaption>" if caption else "") + "</figure>")


def png_figure(png: bytes | str | Path, name: str, caption: str = "") -> str:
    """A PNG (bytes or a file) embedded as a `data:` URI inside a `<figure class="report-figure">`."""
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<figure class="report-figure" data-name="{_esc(name)}"><img alt="{_esc(name)}" '
            f'src="data:image/png;base64,{encoded}">'
            + (f"<figcaption>{_esc(caption)}</figcaption>" if caption else "") + "</figure>")


def figure_html(figure: Figure | str | Path, name: str, caption: str = "") -> str:
    """A matplotlib figure (inline SVG) or a PNG file (embedded) as a report figure."""
    return svg_figure(figure, name, caption) if isinstance(figure, Figure) else png_figure(figure, name, caption)


def rows_table(rows: Iterable[tuple[str, str]], *, table_id: str = "", header: Sequence[str] = ()) -> str:
    """A table of (label, value, ...) rows of already formatted strings."""
    head = "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + f"<th>{_esc(row[0])}</th>" + "".join(f"<td>{_esc(v)}</td>" for v in row[1:]) + "</tr>"
                   for row in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}>{head}{body}</table>"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e5 else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def frame_table(frame: pl.DataFrame, *, table_id: str = "", max_rows: int = MAX_TABLE_ROWS,
                source: str = "") -> str:
    """A Polars frame as an HTML table (numbers right-aligned); frames longer than `max_rows` show their first
    rows and say how many there are and where (`source`) the full table is."""
    shown = frame.head(max_rows)
    numeric = [dtype.is_numeric() for dtype in shown.dtypes]
    head = "<tr>" + "".join(f"<th>{_esc(c)}</th>" for c in shown.columns) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_esc(_cell(v))}</td>' if num else f"<td>{_esc(_cell(v))}</td>"
                         for v, num in zip(row, numeric, strict=True)) + "</tr>"
        for row in shown.iter_rows()
    )
    ident = f' id="{table_id}"' if table_id else ""
    note = ""
    if frame.height > max_rows:
        note = (f'<p class="note">first {max_rows} of {frame.height:,} rows'
                + (f"; the full table is {_esc(source)}" if source else "") + "</p>")
    return f'<div style="overflow-x:auto"><table{ident}>{head}{body}</table></div>{note}'


def _config_rows(config: dict) -> list[tuple[str, str]]:
    """Flattened (key, value) rows of a JSON-ready config; long values shortened."""
    rows = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value and len(prefix.split(".")) < 3:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
            return
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        rows.append((prefix, text if len(text) <= 300 else text[:297] + "..."))

    walk("", config)
    return rows


# ------------------------------------------------------------------------------------------------ run figures


def _fixed_layout_figure(width: float, height: float, *, hspace: float) -> Figure:
    """A figure with fixed margins (0.6 inch at the bottom, 0.25 at the top): a layout engine would measure
    every label first and double the drawing time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.6 / height, top=1 - 0.25 / height, hspace=hspace,
                           wspace=0.25)
    return figure


def latency_histograms(records: pl.DataFrame, bins: int = LATENCY_BINS) -> pl.DataFrame:
    """Per latency metric (ttft, tpot, itl, e2e) of the succeeded requests, counts in `bins` log-spaced bins:
    columns metric, bin_start_s, bin_end_s, count. Metrics without positive values are left out."""
    from burstgpt.metrics.requests import derive_request_metrics, inter_token_latencies

    derived = derive_request_metrics(records).filter(pl.col("status") == "ok")
    values = {"ttft": derived["ttft_s"], "tpot": derived["tpot_s"], "itl": inter_token_latencies(records),
              "e2e": derived["e2e_s"]}
    parts = []
    for metric, series in values.items():
        v = series.drop_nulls().to_numpy().astype(float)
        v = v[v > 0]
        if v.size == 0:
            continue
        low, high = float(v.min()), float(v.max())
        edges = np.geomspace(low, high * 1.0001, bins + 1) if high > low else np.array([low * 0.99, low * 1.01])
        counts, edges = np.histogram(v, edges)
        parts.append(pl.DataFrame({"metric": [metric] * counts.size, "bin_start_s": edges[:-1],
                                   "bin_end_s": edges[1:], "count": counts.astype(np.int64)}))
    return pl.concat(parts) if parts else pl.DataFrame(
        schema={"metric": pl.Utf8, "bin_start_s": pl.Float64, "bin_end_s": pl.Float64, "count": pl.Int64})


_METRIC_LABELS = {"ttft": "time to first token", "tpot": "time per output token",
                  "itl": "inter-token latency", "e2e": "end-to-end latency"}


def latency_figure(histograms: Sequence[tuple[str, pl.DataFrame]]) -> Figure | None:
    """One panel per latency metric; one step line per (label, `latency_histograms` frame). Share of the
    requests per bin (so runs of different sizes compare), log time axis in milliseconds."""
    from burstgpt.report.trace_figures import plain_log_axis

    metrics = [m for m in _METRIC_LABELS if any(h.height and (h["metric"] == m).any() for _, h in histograms)]
    if not metrics:
        return None
    columns = min(2, len(metrics))
    rows = -(-len(metrics) // columns)
    figure = _fixed_layout_figure(10, 3.0 * rows, hspace=0.45)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for extra in axes[len(metrics):]:
        extra.set_visible(False)
    for ax, metric in zip(axes, metrics, strict=False):
        for index, (label, frame) in enumerate(histograms):
            part = frame.filter(pl.col("metric") == metric) if frame.height else frame
            if part.height == 0:
                continue
            counts = part["count"].to_numpy()
            edges = np.append(part["bin_start_s"].to_numpy(), part["bin_end_s"][-1]) * 1000
            ax.stairs(counts / max(counts.sum(), 1) * 100, edges, color=f"C{index}", label=label, lw=1.4)
        plain_log_axis(ax, "x")  # plain tick labels: mathtext ones overlap once drawn as SVG text
        ax.set_xlabel(f"{_METRIC_LABELS[metric]} (ms, log)")
        ax.set_ylabel("% of values per bin")
        ax.grid(alpha=0.3)
        if len(histograms) > 1 or histograms[0][0]:
            ax.legend(fontsize="small")
    return figure


def server_figure(timeseries: pl.DataFrame) -> Figure | None:
    """The server's windowed state: requests running / waiting, token rates, preemptions per second."""
    from burstgpt.report.figures import _display_points, _time_axis

    panels = [
        ("requests", [("num_requests_running_mean", "running"), ("num_requests_waiting_mean", "waiting")]),
        ("tokens/s", [("prompt_tokens_per_s", "prompt"), ("generation_tokens_per_s", "generation")]),
        ("preemptions/s", [("num_preemptions_per_s", "preemptions")]),
    ]
    panels = [(ylabel, [(c, l) for c, l in lines if c in timeseries.columns and timeseries[c].null_count()
                        < timeseries.height]) for ylabel, lines in panels]
    panels = [p for p in panels if p[1]]
    if not panels or timeseries.height == 0:
        return None
    divisor, xlabel = _time_axis(float(timeseries["window_end_s"].max() or 1.0))
    mid = ((timeseries["window_start_s"] + timeseries["window_end_s"]) / 2 / divisor).to_numpy()
    figure = _fixed_layout_figure(10, 2.4 * len(panels), hspace=0.15)
    axes = np.atleast_1d(figure.subplots(len(panels), 1, sharex=True, squeeze=False)).ravel()
    for ax, (ylabel, lines) in zip(axes, panels, strict=True):
        for index, (column, label) in enumerate(lines):
            ax.plot(*_display_points(mid, timeseries[column].cast(pl.Float64).to_numpy()), color=f"C{index + 3}",
                    label=label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper left")
    axes[-1].set_xlabel(xlabel + ", window midpoints")
    return figure


# ------------------------------------------------------------------------------------------------ run reports


def _failure_rows(summary) -> list[tuple[str, str, str]]:
    failed = summary.requests.failed
    return [(name, f"{count:,}", f"{100 * count / failed:.1f} %" if failed else "-")
            for name, count in sorted(summary.requests.failures_by_class.items(), key=lambda kv: -kv[1])]


def _server_rows(summary) -> list[tuple[str, str]]:
    from burstgpt.report.tables import _fmt

    server = summary.server
    kv = server.kv_cache_usage_perc
    return [
        ("samples", _fmt(server.samples)),
        ("KV-cache usage mean / p90 / p99 / max",
         " / ".join(_fmt(v, " %", 100) for v in (kv.mean, kv.p90, kv.p99, kv.max))),
        ("requests running, max", _fmt(server.num_requests_running_max)),
        ("requests waiting, max", _fmt(server.num_requests_waiting_max)),
        ("preemptions during run", _fmt(server.num_preemptions_increase)),
        ("prompt tokens processed during run", _fmt(server.prompt_tokens_increase)),
        ("generation tokens during run", _fmt(server.generation_tokens_increase)),
    ]


def run_sections(summary, timeseries: pl.DataFrame, *, records: pl.DataFrame, config: dict,
                 server_metrics: pl.DataFrame | None, label: str) -> list[Section]:
    """The sections of one run's report."""
    from burstgpt.report.figures import RunSeries, timeline_figure
    from burstgpt.report.tables import summary_rows

    sections = [Section("Summary", rows_table(summary_rows(summary), table_id="summary")
                        + '<p class="note">R = failure rate, L = latency, P = throughput (the paper\'s '
                          "metrics); latencies over succeeded requests.</p>")]
    failures = _failure_rows(summary)
    sections.append(Section("Failure classes", rows_table(failures, table_id="failures",
                                                          header=("class", "requests", "share of failed"))
                            if failures else '<p class="note">no failed request</p>'))
    timeline = timeline_figure([RunSeries(label, timeseries, server_metrics)], title="")
    sections.append(Section("Timeline", svg_figure(
        timeline, "timeline", f"windows of {summary.run.window_s:g} s every {summary.run.step_s:g} s; "
        "Ctrl + wheel zooms, drag pans, double-click resets", zoomable=True)))
    latency = latency_figure([("", latency_histograms(records))])
    sections.append(Section("Latency distributions", svg_figure(latency, "latency_distributions")
                            if latency is not None else '<p class="note">no succeeded request</p>'))
    if summary.server is not None and server_metrics is not None and server_metrics.height:
        body = rows_table(_server_rows(summary), table_id="server")
        figure = server_figure(timeseries)
        if figure is not None:
            body += svg_figure(figure, "server_metrics", "window means of the server's gauges, counter rates")
        sections.append(Section("Server metrics", body))
    else:
        sections.append(Section("Server metrics", '<p class="note">no server metrics in this run</p>'))
    sections.append(Section("Configuration", rows_table(_config_rows(config), table_id="config")))
    return sections


def write_run_report(run_dir: str | Path, summary, timeseries: pl.DataFrame, *, records: pl.DataFrame,
                     config: dict, server_metrics: pl.DataFrame | None, title: str = ""):
    """Write `report.html` into a run directory; return `summary` (a `RunSummary`) with report.html in its
    files. `timeseries`: the run's `window_series`; `records`: its conformed request records."""
    run_dir = Path(run_dir)
    sections = run_sections(summary, timeseries, records=records, config=config, server_metrics=server_metrics,
                            label=run_dir.name)
    write_page(run_dir / REPORT_FILE, title or f"burstgpt run {run_dir.name}", sections,
               subtitle=f"{summary.producer} run {summary.run_id or ''}".strip())
    files = sorted(set(summary.files) | {REPORT_FILE})
    return replace(summary, files=files)


def write_comparison_report(out_dir: str | Path, labels: Sequence[str], summaries: Sequence, frame: pl.DataFrame,
                            series: Sequence, records: Sequence[pl.DataFrame]) -> Path:
    """Write `report.html` comparing runs: a summary table with a column per run, the comparison rows, the
    overlaid timeline (`series`: `RunSeries` per run) and latency distributions."""
    from burstgpt.report.figures import timeline_figure
    from burstgpt.report.tables import summary_rows

    per_run = [dict(summary_rows(s)) for s in summaries]
    keys: list[str] = []
    for rows in per_run:
        keys += [k for k in rows if k not in keys]
    table = rows_table([(k, *(rows.get(k, "-") for rows in per_run)) for k in keys], table_id="summary",
                       header=("metric", *labels))
    sections = [
        Section("Summary", table),
        Section("Headline figures", frame_table(frame, table_id="comparison", source="comparison.csv")),
        Section("Timeline", svg_figure(timeline_figure(list(series), title=""), "timeline",
                                       "one colour per run; Ctrl + wheel zooms, drag pans, double-click resets",
                                       zoomable=True)),
    ]
    latency = latency_figure([(label, latency_histograms(r)) for label, r in zip(labels, records, strict=True)])
    sections.append(Section("Latency distributions", svg_figure(latency, "latency_distributions")
                            if latency is not None else '<p class="note">no succeeded request</p>'))
    failures = sorted({name for s in summaries for name in s.requests.failures_by_class})
    if failures:
        sections.append(Section("Failure classes", rows_table(
            [(name, *(f"{s.requests.failures_by_class.get(name, 0):,}" for s in summaries)) for name in failures],
            table_id="failures", header=("class", *labels))))
    return write_page(Path(out_dir) / REPORT_FILE, "burstgpt run comparison", sections,
                      subtitle=", ".join(labels))


def write_results_report(path: str | Path, title: str, results: pl.DataFrame,
                         figures: Sequence[tuple[str, Figure | str | Path]] = (), *, config: dict | None = None,
                         subtitle: str = "") -> Path:
    """A report of a results frame (one row per point, e.g. of a sweep) and named figures (matplotlib figures,
    drawn as SVG, or PNG files); `config` shown as a table when given."""
    sections = [Section("Summary", frame_table(results, table_id="summary", max_rows=500))]
    if figures:
        sections.append(Section("Figures", "".join(figure_html(f, name) for name, f in figures)))
    if config:
        sections.append(Section("Configuration", rows_table(_config_rows(config), table_id="config")))
    return write_page(path, title, sections, subtitle=subtitle)


# ------------------------------------------------------------------------------------------------ analysis


#: Analysis tables shown in the report (in this order, under the figures they belong to); the others are
#: listed with their CSV file.
ANALYSIS_TABLES = (
    ("overview", "Requests per model x service"),
    ("periodicity", "Periodicity (Figs 1-4)"),
    ("burstiness_summary", "Burstiness (Fig 5)"),
    ("arrival_summary", "Inter-arrival fits (Fig 6)"),
    ("request_zipf", "Request lengths: Zipf fit (Fig 7)"),
    ("response_bimodality", "Response lengths: bimodality (Fig 7)"),
    ("request_response_correlation", "Request vs response (Figs 8-9)"),
    ("failure_rates", "Failure rates (Fig 14)"),
    ("session_summary", "Sessions"),
    ("prefix_reuse_summary", "Prefix reuse"),
)


def write_analysis_report(characterisation, outdir: str | Path, figures: Sequence[str | Path] = ()) -> Path:
    """Write `report.html` of a trace characterisation into `outdir`: totals, the figures `analyze` drew
    (PNG files, embedded) and the tables (short ones whole, long ones' first rows; every table is a CSV)."""
    c = characterisation
    totals = c.totals
    summary = [
        ("source", f"{c.source} ({c.format})"),
        ("requests", _cell(totals["rows"])),
        ("failed", f"{_cell(totals['failures'])} ({100 * (totals['failure_rate'] or 0):.2f} %)"),
        ("span", f"{totals['span_s'] / 3600:.1f} h"),
        ("mean rate", f"{_cell(totals['mean_rate_rps'])} req/s"),
        ("mean request / response tokens",
         f"{totals['mean_request_tokens']:.1f} / {totals['mean_response_tokens']:.1f}"),
        ("models", ", ".join(map(str, totals["models"])) or "-"),
        ("services", ", ".join(map(str, totals["services"])) or "-"),
        ("arrival-fit window", f"{c.window_s:g} s (at least {c.min_arrivals} arrivals)"),
        ("filters", ", ".join(f"{k}={v}" for k, v in c.filters.items() if v is not None) or "none"),
    ]
    sections = [Section("Summary", rows_table(summary, table_id="summary"))]
    figures = sorted(Path(p) for p in figures)
    if figures:
        sections.append(Section("Figures (paper Figs 1-14)", "".join(
            png_figure(p, p.stem, p.stem.replace("_", " ")) for p in figures)))
    else:
        sections.append(Section("Figures (paper Figs 1-14)", '<p class="note">figures not drawn (--no-figures)</p>'))
    tables = c.tables()
    shown = [(name, caption) for name, caption in ANALYSIS_TABLES if name in tables]
    body = "".join(f"<h3>{_esc(caption)}</h3>" + frame_table(tables[name], table_id=f"table-{name}",
                                                             source=f"{name}.csv") for name, caption in shown)
    others = [name for name in tables if name not in dict(shown)]
    if others:
        body += '<p class="note">other tables (CSV files next to this report): ' + ", ".join(
            f"{_esc(name)}.csv ({tables[name].height:,} rows)" for name in others) + "</p>"
    sections.append(Section("Tables", body))
    return write_page(Path(outdir) / REPORT_FILE, f"burstgpt analysis of {Path(c.source).name}", sections,
                      subtitle=f"{totals['rows']:,} requests")
