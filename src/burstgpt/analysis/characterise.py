"""The paper's whole trace characterisation in one call: `characterise(trace) -> Characterisation`, and
`write_characterisation` for the tables (CSV) and `summary.json`.

`summary.json` is written last and atomically, after every table (and, through `before_summary`, every
figure), and any earlier summary.json in the directory is removed first: a directory holding summary.json is a
complete analysis of the run that wrote it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
import dataclasses
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path

import polars as pl

from burstgpt import __version__
from burstgpt.analysis import lengths, prefix_reuse, sessions, temporal, throughput
from burstgpt.analysis.fits import time_resolution
from burstgpt.analysis.lengths import LengthStatistics
from burstgpt.analysis.temporal import GROUP
from burstgpt.errors import BurstGPTError
from burstgpt.outputs import atomic_path, write_json_atomic
from burstgpt.trace import Trace, filter_trace

#: Tables from the arrival fits (`temporal.arrival_fits`), filled last (see `characterise`'s `meanwhile`).
ARRIVAL_TABLES = ("arrival_windows", "arrival_summary", "gap_histograms")

#: Tables with one row per model x service whose columns go into summary.json's per-group records.
GROUP_LEVEL_TABLES = (
    "overview",
    "periodicity",
    "arrival_summary",
    "request_zipf",
    "response_bimodality",
    "request_response_correlation",
    "session_summary",
    "elapsed_fit",
)


@dataclass
class Characterisation(LengthStatistics):
    """Every statistic of one (filtered) trace as tidy Polars frames (see each producing function for the
    columns; the length tables are `LengthStatistics`' fields), plus what was analysed. Frames for sessions are
    empty when the trace has no session ids. `timestamps`: how the trace's timestamps were recorded, all groups
    together (`fits.TimeResolution.to_dict`; per group in `arrival_summary`)."""

    source: str
    format: str
    origin: datetime | None
    window_s: float
    min_arrivals: int
    filters: dict[str, object]
    load_report: dict
    totals: dict[str, float | int | None]
    overview: pl.DataFrame
    hourly_requests: pl.DataFrame
    hour_of_day_profile: pl.DataFrame
    daily_requests: pl.DataFrame
    day_of_week_profile: pl.DataFrame
    periodicity: pl.DataFrame
    burstiness: pl.DataFrame
    burstiness_summary: pl.DataFrame
    arrival_windows: pl.DataFrame
    arrival_summary: pl.DataFrame
    gap_histograms: pl.DataFrame
    hourly_throughput: pl.DataFrame
    throughput_box: pl.DataFrame
    failure_rates: pl.DataFrame
    failure_rates_by_day: pl.DataFrame
    failure_rates_by_hour: pl.DataFrame
    timestamps: dict = field(default_factory=dict)
    sessions: pl.DataFrame = field(default_factory=pl.DataFrame)
    session_summary: pl.DataFrame = field(default_factory=pl.DataFrame)
    turns_histogram: pl.DataFrame = field(default_factory=pl.DataFrame)
    elapsed_vs_response: pl.DataFrame = field(default_factory=pl.DataFrame)
    elapsed_fit: pl.DataFrame = field(default_factory=pl.DataFrame)
    #: Prefix reuse (`prefix_reuse.PrefixReuse`; empty frames and None when no request has prefix block ids):
    #: tokens per block id, per scope summary, per window, hit rate by cache size, and summary.json's section.
    prefix_block_size: int | None = None
    prefix_reuse_summary: pl.DataFrame = field(default_factory=pl.DataFrame)
    prefix_reuse_windows: pl.DataFrame = field(default_factory=pl.DataFrame)
    prefix_hit_rate_curve: pl.DataFrame = field(default_factory=pl.DataFrame)
    prefix_reuse: dict | None = None

    def tables(self) -> dict[str, pl.DataFrame]:
        """Every non-empty table by name (the CSV file stem)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), pl.DataFrame) and getattr(self, f.name).height > 0}

    def summary(self) -> dict:
        """summary.json's content: what was analysed, totals, and per model x service every group-level
        statistic, plus burstiness means per window length. Units are in the key names."""
        groups: dict[tuple, dict] = {}
        for name in GROUP_LEVEL_TABLES:
            table = getattr(self, name)
            if table.height == 0:
                continue
            for row in table.iter_rows(named=True):
                key = (row.pop("model"), row.pop("service"))
                groups.setdefault(key, {"model": key[0], "service": key[1]})[name] = row
        for row in self.burstiness_summary.iter_rows(named=True):
            key = (row.pop("model"), row.pop("service"))
            minutes = row.pop("window_min")
            groups.setdefault(key, {"model": key[0], "service": key[1]}).setdefault("burstiness", {})[
                f"window_{minutes}_min"] = row
        return {
            "generated_by": f"burstgpt {__version__}",
            "source": self.source,
            "format": self.format,
            "origin": self.origin.isoformat() if self.origin else None,
            "window_s": self.window_s,
            "min_arrivals": self.min_arrivals,
            "filters": self.filters,
            "load_report": self.load_report,
            "totals": self.totals,
            "timestamps": self.timestamps,
            "groups": list(groups.values()),
            "prefix_reuse": self.prefix_reuse,
        }


def characterise(
    trace: Trace,
    *,
    window_s: float = 1200.0,
    min_arrivals: int = 10,
    model: str | None = None,
    service: str | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    meanwhile: Callable[[Characterisation], None] | None = None,
) -> Characterisation:
    """Characterise a trace as the paper's section III does, split by model x service.

    `model`, `service`, `start_s`/`end_s` (trace seconds, end exclusive) select rows first; `window_s` (seconds)
    is the arrival-fit window, `min_arrivals` the fewest arrivals a window needs to be fitted; `seed` seeds the
    spreading of tied timestamps within their recording resolution (`burstgpt.analysis.fits.time_resolution`).
    `progress` is called with the name of each step before it runs. `meanwhile`, if given, is called once with
    the characterisation complete but for the arrival fits' tables (`ARRIVAL_TABLES`, empty until it returns)
    while those fits, the longest step, finish in a worker thread: `analyze` draws the other figures then.
    """
    if not window_s > 0:
        raise BurstGPTError(f"--window must be a positive number of seconds, got {window_s}")
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise BurstGPTError(f"--end ({end_s}) must be after --start ({start_s})")
    filters = {"model": model, "service": service, "start_s": start_s, "end_s": end_s}
    selected = filter_trace(trace, model=model, service=service, start_s=start_s, end_s=end_s)
    frame, origin = selected.frame, selected.origin
    if frame.height == 0:
        raise BurstGPTError(f"{trace.source}: no requests to analyse"
                            + (" after filtering" if any(v is not None for v in filters.values()) else ""))
    step = progress or (lambda name: None)
    # Group keys as categoricals make every group_by several times faster on millions of rows.
    frame = frame.with_columns(pl.col(*GROUP).cast(pl.Categorical))

    # The arrival fits are NumPy work per group (sorts, element-wise passes: mostly outside the GIL) independent
    # of the other statistics, which are mostly Polars: running them in a second thread meanwhile keeps two cores
    # busy. Their results do not depend on the overlap (their randomness is seeded per group). They are the
    # longest step, so they start first.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="arrival-fits") as pool:
        arrivals_pending = pool.submit(temporal.arrival_fits, frame, origin, window_s, min_arrivals, seed)
        step("overview")
        totals = _totals(frame)
        overview = (
            frame.group_by(*GROUP)
            .agg(
                pl.len().alias("requests"),
                pl.col("failed").sum().alias("failures"),
                pl.col("request_tokens").mean().alias("mean_request_tokens"),
                pl.col("response_tokens").mean().alias("mean_response_tokens"),
                pl.col("timestamp_s").min().alias("first_timestamp_s"),
                pl.col("timestamp_s").max().alias("last_timestamp_s"),
            )
            .with_columns(pl.col(*GROUP).cast(pl.Utf8))
            .sort(*GROUP, nulls_last=True)
        )
        step("periodicity")
        bins = temporal.time_bins(frame, origin)
        hourly = temporal.hourly_requests(bins)
        daily = temporal.daily_requests(bins)
        step("burstiness")
        bursts = temporal.burstiness(bins)
        step("lengths")
        length_tables = lengths.length_statistics(frame)
        step("throughput and failures")
        hourly_tokens = throughput.hourly_throughput(bins)
        resolution = time_resolution(frame["timestamp_s"].to_numpy()).to_dict()
        result = Characterisation(
            source=trace.source, format=trace.format, origin=origin, window_s=float(window_s),
            min_arrivals=int(min_arrivals), filters=filters,
            load_report=dataclasses.asdict(trace.load_report) if trace.load_report else {}, totals=totals,
            overview=overview, hourly_requests=hourly, hour_of_day_profile=temporal.hour_of_day_profile(hourly),
            daily_requests=daily, day_of_week_profile=temporal.day_of_week_profile(daily),
            periodicity=temporal.periodicity(hourly), burstiness=bursts,
            burstiness_summary=temporal.burstiness_summary(bursts),
            **{name: pl.DataFrame() for name in ARRIVAL_TABLES},
            **vars(length_tables), hourly_throughput=hourly_tokens,
            throughput_box=throughput.throughput_box_stats(hourly_tokens),
            failure_rates=throughput.failure_rates(bins),
            failure_rates_by_day=throughput.failure_rates_by_day(bins),
            failure_rates_by_hour=throughput.failure_rates_by_hour(bins),
            timestamps=resolution,
        )
        if sessions.has_sessions(frame):
            step("sessions")
            result.sessions = sessions.session_table(frame)
            result.session_summary = sessions.session_summary(frame)
            result.turns_histogram = sessions.turns_histogram(frame)
            result.elapsed_vs_response = sessions.elapsed_vs_response(frame)
            result.elapsed_fit = sessions.elapsed_fit(frame)
        if prefix_reuse.has_prefix_ids(frame):
            step("prefix reuse")
            reuse = prefix_reuse.prefix_reuse_statistics(frame, selected.prefix_block_size, window_s=window_s,
                                                         origin=origin)
            result.prefix_block_size = selected.prefix_block_size
            result.prefix_reuse_summary, result.prefix_reuse_windows = reuse.summary, reuse.windows
            result.prefix_hit_rate_curve, result.prefix_reuse = reuse.curve, reuse.to_dict()
        _nulls_for_nans(result, [f.name for f in fields(result) if f.name not in ARRIVAL_TABLES])
        if meanwhile is not None:
            meanwhile(result)
        step("arrival fits")
        arrivals = arrivals_pending.result()
    result.arrival_windows, result.arrival_summary = arrivals.windows, arrivals.summary
    result.gap_histograms = arrivals.gap_histograms
    _nulls_for_nans(result, ARRIVAL_TABLES)
    return result


def _nulls_for_nans(result: Characterisation, names) -> None:
    """An undefined statistic (a correlation of one pair, an autocorrelation of a short series) is null, never
    NaN: tables then show it empty and summary.json null, the same as every other undefined value."""
    for name in names:
        table = getattr(result, name)
        if isinstance(table, pl.DataFrame) and table.height:
            setattr(result, name, table.with_columns(pl.col(pl.Float32, pl.Float64).fill_nan(None)))


def _totals(frame: pl.DataFrame) -> dict[str, float | int | None]:
    first = float(frame["timestamp_s"].min())
    last = float(frame["timestamp_s"].max())
    span = last - first
    rows = frame.height
    return {
        "rows": rows,
        "failures": int(frame["failed"].sum()),
        "failure_rate": float(frame["failed"].mean()),
        "mean_request_tokens": float(frame["request_tokens"].mean()),
        "mean_response_tokens": float(frame["response_tokens"].mean()),
        "total_request_tokens": int(frame["request_tokens"].sum()),
        "total_response_tokens": int(frame["response_tokens"].sum()),
        "first_timestamp_s": first,
        "last_timestamp_s": last,
        "span_s": span,
        "mean_rate_rps": rows / span if span > 0 else None,
        "models": frame["model"].drop_nulls().unique().sort().to_list(),
        "services": frame["service"].drop_nulls().unique().sort().to_list(),
    }


def write_characterisation(
    characterisation: Characterisation,
    outdir: str | Path,
    *,
    before_summary: Callable[[Path], list[Path]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write one CSV per table into `outdir`, then whatever `before_summary(outdir)` writes (figures; it
    returns their paths), then summary.json (listing them) last and atomically. Returns summary.json's path."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise BurstGPTError(f"{outdir}: exists and is not a directory")
    outdir.mkdir(parents=True, exist_ok=True)
    summary_path = outdir / "summary.json"
    summary_path.unlink(missing_ok=True)  # the directory must not look complete until this run finishes
    step = progress or (lambda name: None)
    step("tables")
    written_tables = {}
    for name, table in characterisation.tables().items():
        with atomic_path(outdir / f"{name}.csv") as tmp:
            table.write_csv(tmp)
        written_tables[name] = f"{name}.csv"
    figures = before_summary(outdir) if before_summary else []
    summary = characterisation.summary()
    summary["tables"] = written_tables
    summary["figures"] = [Path(p).name for p in figures]
    write_json_atomic(summary_path, summary)
    return summary_path

