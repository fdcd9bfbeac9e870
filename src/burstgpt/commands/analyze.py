"""`burstgpt analyze TRACE -o OUTDIR`: the paper's trace characterisation as tables, figures and summary.json."""

from __future__ import annotations

import argparse
import ctypes
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TimeElapsedColumn
from rich.table import Table

from burstgpt.commands.trace import add_trace_input_arguments, load_trace_from_args

if TYPE_CHECKING:
    from burstgpt.analysis import Characterisation


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="characterise a trace (periodicity, burstiness, Gamma arrivals, Zipf lengths, throughput, failures)",
        description="Characterise a trace as the BurstGPT paper's section III does, split by model x service. "
                    "Writes one CSV per table, one PNG per figure, a self-contained report.html (figures and tables) "
                    "and summary.json (written last) into OUTDIR.",
    )
    parser.add_argument("trace", help="trace file (BurstGPT/Azure CSV, Mooncake JSONL, or mapped CSV/Parquet)")
    parser.add_argument("-o", "--output", "--outdir", dest="outdir", required=True, metavar="OUTDIR",
                        help="directory for the tables, figures and summary.json")
    parser.add_argument("--window", type=float, default=1200.0, metavar="SECONDS",
                        help="window of the per-window Gamma fits of inter-arrival times, seconds (default 1200)")
    parser.add_argument("--min-arrivals", type=int, default=10,
                        help="fewest arrivals a window needs to be fitted (default 10)")
    parser.add_argument("--model", default=None, help="analyse only this model (e.g. ChatGPT)")
    parser.add_argument("--service", choices=("conversation", "api"), default=None,
                        help="analyse only this service")
    parser.add_argument("--start", type=float, default=None, metavar="SECONDS",
                        help="analyse only requests at or after this trace time, seconds")
    parser.add_argument("--end", type=float, default=None, metavar="SECONDS",
                        help="analyse only requests before this trace time, seconds")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for spreading tied timestamps within their recording resolution (default 0)")
    parser.add_argument("--no-figures", action="store_true", help="write tables and summary.json only")
    add_trace_input_arguments(parser)
    parser.set_defaults(func=_analyze)


#: glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: The thresholds glibc's dynamic mmap threshold settles at on 64-bit systems after large blocks are freed
#: (DEFAULT_MMAP_THRESHOLD_MAX, and twice that for trimming): what `freed_memory_kept` leaves on exit.
SETTLED_MMAP_THRESHOLD, SETTLED_TRIM_THRESHOLD = 32 << 20, 64 << 20


@contextmanager
def freed_memory_kept():
    """While the block runs, let glibc keep freed large blocks for reuse (mallopt's mmap and trim thresholds at
    1 GiB) instead of returning each to the system. The statistics allocate and free arrays of tens of MB over
    and over; by default each one is a fresh mmap whose pages the kernel faults in and zeroes again. On exit
    what was kept goes back (malloc_trim) and the thresholds are left where glibc's own dynamic threshold
    settles (`SETTLED_MMAP_THRESHOLD`), so a longer-lived process (a test run, a notebook) keeps its normal
    memory behaviour. Nothing happens outside glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        libc = None  # not glibc
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, SETTLED_MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, SETTLED_TRIM_THRESHOLD)
            libc.malloc_trim(0)


def _analyze(args: argparse.Namespace) -> int:
    from burstgpt.report.trace_figures import analyze_trace
    console = Console()
    started = time.perf_counter()
    err = Console(stderr=True)
    with freed_memory_kept(), Progress(SpinnerColumn(), "[progress.description]{task.description}",
                                        TimeElapsedColumn(), console=err, transient=True,
                                        disable=not err.is_terminal) as progress:
        task = progress.add_task("loading trace", total=None)

        def step(name: str) -> None:
            progress.update(task, description=name)

        trace = load_trace_from_args(args.trace, args)
        result, summary_path = analyze_trace(
            trace, Path(args.outdir), figures=not args.no_figures, progress=step, window_s=args.window,
            min_arrivals=args.min_arrivals, model=args.model, service=args.service, start_s=args.start,
            end_s=args.end, seed=args.seed,
        )
    console.print(summary_table(result))
    if result.prefix_reuse is not None:
        console.print(prefix_reuse_table(result.prefix_reuse))
    console.print(timestamps_note(result.timestamps))
    console.print(f"wrote {summary_path.parent}/ (summary.json, {len(result.tables())} tables"
                  + ("" if args.no_figures else ", figures")
                  + f", report.html) in {time.perf_counter() - started:.1f} s")
    return 0


def summary_table(result: Characterisation) -> Table:
    """A short rich table: per model x service the headline statistics."""
    totals = result.totals
    table = Table(title=f"{Path(result.source).name}: {totals['rows']:,} requests, {totals['failures']:,} failed, "
                        f"span {totals['span_s'] / 3600:.1f} h",
                  caption="fail% = failed requests; req/resp = mean tokens; period = daily periodicity score; "
                          "2x/day = 5-min windows doubling the previous, per day; alpha = median per-window Gamma "
                          "shape; theta = Zipf exponent of request lengths",
                  box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold underline")
    widths = {"model": 7, "service": 12, "requests": 10, "fail%": 5, "req": 6, "resp": 6, "period": 6, "2x/day": 6,
              "alpha": 5, "theta": 5}  # fits 80 columns (rich's width when output is not a terminal)
    for column, width in widths.items():
        table.add_column(column, justify="left" if column in ("model", "service") else "right", no_wrap=True,
                         min_width=width)
    records = {(g["model"], g["service"]): g for g in result.summary()["groups"]}
    for (model, service), group in records.items():
        overview = group.get("overview", {})
        requests = overview.get("requests", 0)
        periodicity = group.get("periodicity", {}).get("periodicity_score_24h")
        bursts = group.get("burstiness", {}).get("window_5_min", {}).get("mean_bursts_2x_per_day")
        alpha = group.get("arrival_summary", {}).get("window_alpha_median")
        theta = group.get("request_zipf", {}).get("zipf_theta")
        table.add_row(
            str(model), str(service), f"{requests:,}",
            f"{100 * overview.get('failures', 0) / requests:.2f}" if requests else "-",
            _number(overview.get("mean_request_tokens")), _number(overview.get("mean_response_tokens")),
            _number(periodicity, "{:.2f}"), _number(bursts), _number(alpha, "{:.3f}"), _number(theta, "{:.3f}"),
        )
    return table


def prefix_reuse_table(section: dict) -> Table:
    """A short rich table of summary.json's `prefix_reuse` section: per group (and all requests together when
    there are several) the block accesses, distinct blocks, share seen before and prefix-cache hit rates."""
    sizes = section["overall"]["hit_rate_at"]
    block_size = section["block_size_tokens"]
    unit = "tokens" if block_size is not None else "blocks"
    table = Table(title="Prefix reuse" + (f" ({block_size}-token blocks)" if block_size is not None else ""),
                  caption="seen% = block accesses whose block occurred in an earlier request; hit@N = hit rate "
                          f"of an LRU prefix cache of N {unit} (share of block accesses; a request hits only on "
                          "its leading cached blocks)",
                  box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold underline")
    table.add_column("group", no_wrap=True, min_width=20)
    for column in ("accesses", "distinct", "seen%", *[f"hit@{_short(s[f'cache_{unit}'])}" for s in sizes]):
        table.add_column(column, justify="right", no_wrap=True, min_width=6)
    rows = [(f"{g['model'] or 'unknown'} / {g['service'] or 'unknown'}", g) for g in section["groups"]]
    if len(rows) > 1:
        rows.append(("all requests", section["overall"]))
    for label, record in rows:
        table.add_row(label, f"{record['block_accesses']:,}", f"{record['distinct_blocks']:,}",
                      _number(_percent(record["seen_before_fraction"])),
                      *[_number(_percent(s["prefix_hit_rate"])) for s in record["hit_rate_at"]])
    return table


def _short(value: int) -> str:
    """A size rounded to 2 significant digits with a k/M/G suffix: 99840 -> 100k, 9999872 -> 10M."""
    rounded = float(f"{value:.2g}")
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rounded >= threshold:
            return f"{rounded / threshold:g}{suffix}"
    return f"{rounded:g}"


def _percent(value):
    return None if value is None else 100 * value


def timestamps_note(timestamps: dict) -> str:
    """One line on how the trace's timestamps were recorded and what the arrival fits did about ties
    (`Characterisation.timestamps`)."""
    tied = 100 * (timestamps.get("tied_arrival_fraction") or 0.0)
    resolution = timestamps.get("time_resolution_s")
    if resolution is None:
        return f"timestamps: continuous, {tied:.1f}% tied" + ("; tied gaps left out of the Gamma fits" if tied else "")
    how = "gap quantum" if timestamps.get("time_resolution_method") == "gap quantum" else "all multiples"
    return (f"timestamps: every {resolution:g} s ({how}), {tied:.1f}% tied; spread within {resolution:g} s "
            "before the Gamma fits")


def _number(value, fmt: str = "{:.1f}") -> str:
    return "-" if value is None or value != value else fmt.format(value)
