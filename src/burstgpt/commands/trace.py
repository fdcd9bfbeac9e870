"""`burstgpt trace info|download`, and the trace-input options other commands share."""

from __future__ import annotations

import argparse
import os
from datetime import datetime
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from burstgpt.errors import BurstGPTError
from burstgpt.trace import FORMATS, LoadReport, Trace, load_trace, parse_column_map
from burstgpt.trace.download import RELEASE_FILES, default_cache_dir, download_release_file


def add_trace_input_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that say how to read a trace file (shared by every command that takes a TRACE)."""
    group = parser.add_argument_group("trace input")
    group.add_argument("--format", choices=FORMATS, default="auto",
                       help="trace format (default: detected from the header)")
    group.add_argument("--columns", metavar="MAP", default=None,
                       help="column mapping for any CSV/Parquet: target=source,... with targets timestamp_s, "
                            "request_tokens, response_tokens (required), model, service, failed, session_id, "
                            "elapsed_s")
    group.add_argument("--time-unit", choices=("s", "ms", "us", "ns", "datetime"), default="s",
                       help="unit of the mapped timestamp column (default: s)")
    group.add_argument("--skip-invalid", action="store_true",
                       help="drop rows with bad values (and report how many) instead of stopping")
    group.add_argument("--trace-model", default=None, help="model name for traces that have none")
    group.add_argument("--trace-service", choices=("conversation", "api"), default=None,
                       help="service for traces that have none")
    group.add_argument("--origin", default=None, metavar="ISO_DATETIME",
                       help="wall-clock time of timestamp 0 (gives hours and weekdays their calendar meaning)")


def load_trace_from_args(path: str | Path, args: argparse.Namespace) -> Trace:
    """Load `path` with the options of `add_trace_input_arguments`."""
    origin = None
    if getattr(args, "origin", None):
        try:
            origin = datetime.fromisoformat(args.origin)
        except ValueError:
            raise BurstGPTError(f"--origin: not an ISO date/time: {args.origin!r}") from None
    return load_trace(
        path,
        format=args.format,
        column_map=parse_column_map(args.columns) if args.columns else None,
        time_unit=args.time_unit,
        skip_invalid=args.skip_invalid,
        default_model=args.trace_model,
        default_service=args.trace_service,
        origin=origin,
    )


def register(subparsers) -> None:
    trace = subparsers.add_parser("trace", help="load, validate and download traces")
    sub = trace.add_subparsers(dest="trace_command", metavar="SUBCOMMAND", required=True)

    info = sub.add_parser("info", help="validate a trace and print what it holds")
    info.add_argument("trace", help="trace file (BurstGPT/Azure CSV, Mooncake JSONL, or mapped CSV/Parquet)")
    add_trace_input_arguments(info)
    info.set_defaults(func=_info)

    download = sub.add_parser("download", help="fetch an official BurstGPT release file (resumable, cached)")
    download.add_argument("name", nargs="?", help=f"release file, one of: {', '.join(RELEASE_FILES)}")
    download.add_argument("--base-url", default=None,
                          help="release base URL (default: BURSTGPT_BASE_URL or the official release)")
    download.add_argument("--cache-dir", type=Path, default=None,
                          help=f"where to keep files (default: BURSTGPT_CACHE_DIR or {default_cache_dir()})")
    download.add_argument("--sha256", default=None, help="expected SHA-256 of the file")
    download.add_argument("--force", action="store_true", help="download again even if cached")
    download.add_argument("--list", action="store_true", help="list the known release files")
    download.set_defaults(func=_download)


def trace_overview(trace: Trace) -> Table:
    """A rich table of a trace's size, span and composition."""
    frame = trace.frame
    table = Table(title=f"{trace.source} ({trace.format})")
    for column in ("model", "service", "requests", "failed", "mean req tokens", "mean resp tokens"):
        table.add_column(column, justify="right" if column[0] in "rfm" and column != "model" else "left")
    stats = (
        frame.group_by("model", "service")
        .agg(pl.len().alias("n"), pl.col("failed").sum().alias("failed"),
             pl.col("request_tokens").mean().alias("req"), pl.col("response_tokens").mean().alias("resp"))
        .sort("model", "service", nulls_last=True)
    )
    for row in stats.iter_rows(named=True):
        table.add_row(str(row["model"]), str(row["service"]), f"{row['n']:,}", f"{row['failed']:,}",
                      f"{row['req']:.1f}", f"{row['resp']:.1f}")
    return table


def _info(args: argparse.Namespace) -> int:
    console = Console()
    trace = load_trace_from_args(args.trace, args)
    frame = trace.frame
    console.print(trace_overview(trace))
    span = (frame["timestamp_s"].max() - frame["timestamp_s"].min()) if frame.height else 0.0
    report = trace.load_report or LoadReport(frame.height, frame.height)
    console.print(
        f"rows: {frame.height:,}  span: {span / 3600:.2f} h  failed: {int(frame['failed'].sum()):,}  "
        f"invalid rows dropped: {report.invalid_rows:,}  out-of-order rows sorted: {report.out_of_order_rows:,}"
        + (f"  origin: {trace.origin.isoformat()}" if trace.origin else "")
    )
    return 0


def _download(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    if args.list or not args.name:
        for f in RELEASE_FILES.values():
            print(f"{f.name}\t{f.description}")
        return 0 if args.list else 2
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as progress:
        task = progress.add_task(args.name, total=None)
        path = download_release_file(
            args.name, base_url=args.base_url, cache_dir=args.cache_dir, sha256=args.sha256, force=args.force,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    print(os.fspath(path))
    return 0
