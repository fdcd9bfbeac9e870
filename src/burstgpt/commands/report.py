"""`burstgpt report RUN_DIR [RUN_DIR ...]`: re-render one run directory or compare several (tables, CSV,
figures and a self-contained report.html), or write runs in `vllm bench serve`'s result format."""

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
        description="One RUN_DIR: recompute its timeseries.csv, timeline.png, report.html and summary.json (with "
        "new --window/--step/--slo when given; a run killed before its end is completed from requests.jsonl) "
        "and print the summary. Several: print them side by side and write comparison.csv, comparison.png "
        "and report.html into --out. --format vllm-json: write each run's summary as `vllm bench serve "
        "--save-result` would (vllm_bench_result.json in the run directory, or <run>.json in --out).",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--window", type=float, metavar="S",
                        help="window of the instantaneous metrics, seconds (default: the run's, else 10)")
    parser.add_argument("--step", type=float, metavar="S", help="window step; < --window gives sliding windows")
    parser.add_argument("--slo", help="goodput SLOs, seconds, e.g. ttft=2,tpot=0.1 (default: the run's)")
    parser.add_argument("-o", "--out", default=None, metavar="DIR",
                        help="output directory: of the comparison (several runs; default: burstgpt-comparison), "
                             "or of the vllm-json files (default: each run's directory)")
    parser.add_argument("--format", choices=("html", "vllm-json"), default="html",
                        help="html (default): re-render / compare, with report.html; vllm-json: the result file "
                             "of `vllm bench serve` per run (see docs/report.md)")
    parser.add_argument("--metric-percentiles", default="50,90,99", metavar="P,P,...",
                        help="vllm-json: percentiles written as p<P>_<metric>_ms (default 50,90,99)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from burstgpt.report.compare import COMPARISON_FIGURE, compare_runs, rerender_run
    from burstgpt.report.html import REPORT_FILE
    from burstgpt.report.tables import comparison_table, summary_table
    if args.window is not None and not args.window > 0:
        raise BurstGPTError("--window must be > 0")
    slo = parse_slo(args.slo) if args.slo else None
    console = Console()
    if args.format == "vllm-json":
        return _write_vllm_json(args, slo, console)
    if len(args.run_dirs) == 1:
        run_dir = Path(args.run_dirs[0])
        summary = rerender_run(run_dir, window_s=args.window, step_s=args.step, slo=slo)
        console.print(summary_table(summary, title=f"burstgpt report: {run_dir}"))
        return 0
    out = Path(args.out or "burstgpt-comparison")
    labels, summaries, _ = compare_runs(args.run_dirs, out, window_s=args.window or 10.0, step_s=args.step,
                                        slo=slo)
    console.print(comparison_table(summaries, labels))
    console.print(f"wrote {out / COMPARISON_FIGURE}, comparison.csv and {out / REPORT_FILE}")
    return 0


def _write_vllm_json(args: argparse.Namespace, slo: dict | None, console: Console) -> int:
    """Each run's summary in `vllm bench serve`'s result shape (a run without its summary is completed first)."""
    from burstgpt.outputs import write_json_atomic
    from burstgpt.records import read_run_directory
    from burstgpt.report.compare import rerender_run, run_labels
    from burstgpt.report.vllm_json import VLLM_RESULT_FILE, vllm_bench_result

    try:
        percentiles = [float(p) for p in args.metric_percentiles.split(",") if p.strip()]
    except ValueError:
        raise BurstGPTError(f"--metric-percentiles: not a list of numbers: {args.metric_percentiles!r}") from None
    if not percentiles or not all(0 <= p <= 100 for p in percentiles):
        raise BurstGPTError("--metric-percentiles: give percentiles between 0 and 100, e.g. 50,90,99")
    paths = [Path(p) for p in args.run_dirs]
    labels = run_labels(paths)
    for label, path in zip(labels, paths, strict=True):
        run = read_run_directory(path)
        summary = run.summary
        if summary is None or args.window is not None or args.step is not None or slo is not None:
            summary = rerender_run(path, window_s=args.window, step_s=args.step, slo=slo)
        result = vllm_bench_result(run.records, run.config, summary, percentiles=percentiles)
        target = Path(args.out) / f"{label.replace('/', '_')}.json" if args.out else path / VLLM_RESULT_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(target, result)
        console.print(f"wrote {target} (completed {result['completed']}, failed {result['failed']}, "
                      f"{result['request_throughput']:.3g} req/s)")
    return 0
