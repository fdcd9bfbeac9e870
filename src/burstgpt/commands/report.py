"""`burstgpt report RUN_DIR [RUN_DIR ...]`: re-render one run directory or compare several."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from burstgpt.errors import BurstGPTError
from burstgpt.metrics.requests import parse_slo


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="re-render a run directory (bench or simulate), or compare several side by side",
        description="One RUN_DIR: recompute its timeseries.csv, timeline.png and summary.json (with new "
        "--window/--step/--slo when given; a run killed before its end is completed from requests.jsonl) "
        "and print the summary. Several: print them side by side and write comparison.csv and "
        "comparison.png into --out.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--window", type=float, metavar="S",
                        help="window of the instantaneous metrics, seconds (default: the run's, else 10)")
    parser.add_argument("--step", type=float, metavar="S", help="window step; < --window gives sliding windows")
    parser.add_argument("--slo", help="goodput SLOs, seconds, e.g. ttft=2,tpot=0.1 (default: the run's)")
    parser.add_argument("-o", "--out", default="burstgpt-comparison", metavar="DIR",
                        help="comparison output directory (several runs; default: burstgpt-comparison)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from burstgpt.report.compare import COMPARISON_FIGURE, compare_runs, rerender_run
    from burstgpt.report.tables import comparison_table, summary_table
    if args.window is not None and not args.window > 0:
        raise BurstGPTError("--window must be > 0")
    slo = parse_slo(args.slo) if args.slo else None
    console = Console()
    if len(args.run_dirs) == 1:
        run_dir = Path(args.run_dirs[0])
        summary = rerender_run(run_dir, window_s=args.window, step_s=args.step, slo=slo)
        console.print(summary_table(summary, title=f"burstgpt report: {run_dir}"))
        return 0
    labels, summaries, _ = compare_runs(args.run_dirs, args.out, window_s=args.window or 10.0, step_s=args.step,
                                        slo=slo)
    console.print(comparison_table(summaries, labels))
    console.print(f"wrote {Path(args.out) / COMPARISON_FIGURE} and comparison.csv")
    return 0
