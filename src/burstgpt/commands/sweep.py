"""`burstgpt sweep`: a grid, list or one-at-a-time sweep of workload and engine settings, or a rate search.

Each point is a full simulated run (or, with --url, a `bench` run against that server, one at a time). The base
workload and engine come from the same flags as `simulate`; `--vary NAME=V1,V2,...` adds an axis
(`burstgpt.sweep.spec.AXES`). Points run on Ray (in-process local Ray by default, `--ray-address` for a
cluster) or one after another (`--serial`); results are resumable. `--find-rate` searches a rate instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from burstgpt.errors import BurstGPTError
from burstgpt.outputs import atomic_path, write_json_atomic

_SHOWN = ("failure_rate", "latency_mean_s", "latency_p90_s", "throughput_tokens_per_s", "kv_usage_mean")


def register(subparsers) -> None:
    from burstgpt.commands.simulate import add_engine_arguments
    from burstgpt.commands.workload import add_generation_arguments

    parser = subparsers.add_parser(
        "sweep",
        help="sweep workload/engine settings (simulated or against a server), or find a rate",
        description="Run one full run per point of a sweep (alpha, beta or rate, Zipf theta, engine settings) "
        "and write results.parquet (the paper's R, L, P per point) and a Fig 17-style figure; or, with "
        "--find-rate, search the rate that puts mean KV usage in a band or the highest rate meeting an SLO.",
    )
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (resumed when it holds "
                        "the same sweep: finished points are skipped)")
    parser.add_argument("--vary", action="append", default=[], metavar="NAME=V1,V2,...",
                        help="an axis and its values, repeatable; NAME: alpha, beta, rate, theta, num_requests, gpu, "
                        "model, num_gpu_blocks, max_num_seqs, max_num_batched_tokens, latency_model, timeout")
    parser.add_argument("--mode", choices=("grid", "list", "each"), default="grid",
                        help="grid: every combination (default); list: the axes zipped; each: one axis at a time "
                        "around the base (the paper's Fig 17)")
    parser.add_argument("--seeds", metavar="S1,S2,...", default=None,
                        help="run every combination once per seed (default: --seed)")
    parser.add_argument("--slo", default=None, help="SLOs for the goodput columns, seconds, e.g. ttft=2,tpot=0.1")
    parser.add_argument("--find-rate", metavar="kv=F[:HIGH]|slo=NAME:S,...,goodput:SHARE", default=None,
                        help="search a rate instead of sweeping: kv=0.35 (mean KV usage in 0.30-0.40, the paper's "
                        "warm-up rate) or slo=ttft:2,tpot:0.1,goodput:0.99 (the highest rate at which 99%% of "
                        "requests meet the SLO)")
    parser.add_argument("--start-rate", type=float, default=1.0, metavar="RPS",
                        help="--find-rate: the first rate tried, requests/s (default 1)")
    parser.add_argument("--max-evaluations", type=int, default=24, help="--find-rate: most runs (default 24)")
    run = parser.add_argument_group("execution")
    run.add_argument("--serial", action="store_true", help="run the points one after another in this process")
    run.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="run on an existing Ray cluster (default: a local Ray started in-process)")
    run.add_argument("--num-cpus", type=int, default=None, help="local Ray: CPUs to use (default: all)")
    run.add_argument("--overwrite", action="store_true", help="discard the results already in --out")
    server = parser.add_argument_group("real server (instead of the simulator)")
    server.add_argument("--url", default=None, help="run each point as a `bench` run against this server")
    server.add_argument("--metrics-url", default=None, help="its Prometheus metrics (default: URL/metrics)")
    server.add_argument("--api", choices=("completions", "chat"), default="completions")
    server.add_argument("--cooldown", type=float, default=5.0, help="seconds of rest before each point (default 5)")
    server.add_argument("--idle-timeout", type=float, default=120.0,
                        help="longest wait, seconds, for the server to report nothing running or queued (120)")
    add_generation_arguments(parser)
    add_engine_arguments(parser)
    parser.set_defaults(func=run_sweep_command)


def parse_axis(text: str):
    """`NAME=V1,V2,...` -> `SweepAxis`."""
    from burstgpt.sweep.spec import AXES, SweepAxis

    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not values.strip():
        raise BurstGPTError(f"--vary {text!r}: use NAME=V1,V2,... with NAME one of {', '.join(AXES)}")
    return SweepAxis(name, tuple(v.strip() for v in values.split(",") if v.strip()))


def spec_from_args(args: argparse.Namespace):
    """The `SweepSpec` the flags describe."""
    from burstgpt.commands.simulate import engine_spec_from_args
    from burstgpt.commands.workload import spec_from_args as workload_spec_from_args
    from burstgpt.metrics.requests import parse_slo
    from burstgpt.sweep.spec import SweepSpec

    if args.workload:
        raise BurstGPTError("a sweep builds each point's workload: give generation flags (--alpha/--beta/--rate, "
                            "--mirror, --servegen, ...) instead of --workload")
    if args.url and any(text.split("=")[0] in ("gpu", "model", "num_gpu_blocks", "max_num_seqs",
                                               "max_num_batched_tokens", "latency_model") for text in args.vary):
        raise BurstGPTError("with --url the server is what it is: vary workload settings only")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else (args.seed,)
    except ValueError:
        raise BurstGPTError(f"--seeds expects whole numbers separated by commas, got {args.seeds!r}") from None
    return SweepSpec(
        workload=workload_spec_from_args(args), engine=engine_spec_from_args(args),
        axes=tuple(parse_axis(text) for text in args.vary), mode=args.mode, seeds=seeds,
        output_lengths=args.output_lengths, slo=parse_slo(args.slo) or None, metrics_interval_s=1.0,
    )


def run_sweep_command(args: argparse.Namespace) -> int:
    from burstgpt.sweep.run import ServerTarget, SimTarget

    spec = spec_from_args(args)
    target = SimTarget()
    if args.url:
        if not args.url.startswith(("http://", "https://")):
            raise BurstGPTError(f"--url {args.url!r} must start with http:// or https://")
        target = ServerTarget(args.url, metrics_url=args.metrics_url, cooldown_s=args.cooldown,
                              idle_timeout_s=args.idle_timeout, api=args.api,
                              on_run=lambda point, result: _write_point_run(Path(args.out) / "runs", point, result))
    if args.find_rate:
        if spec.axes:
            raise BurstGPTError("--find-rate searches one rate: drop --vary")
        return _find_rate(spec, args, target)
    if not spec.axes:
        raise BurstGPTError("nothing to sweep: add --vary NAME=V1,V2,... (or --find-rate)")
    return _sweep(spec, args, target)


def _sweep(spec, args: argparse.Namespace, target) -> int:
    from burstgpt.report.html import write_results_report
    from burstgpt.sweep.figures import plot_sweep
    from burstgpt.sweep.run import run_sweep

    out = Path(args.out)
    total = len(spec.points())
    where = "one at a time against " + args.url if args.url else (
        "serially" if args.serial else f"on Ray{' at ' + args.ray_address if args.ray_address else ''}")
    print(f"sweep: {total} points, {where}; results in {out}", file=sys.stderr, flush=True)

    def progress(done: int, count: int, point_id: str) -> None:
        print(f"[{done}/{count}] {point_id}", file=sys.stderr, flush=True)

    result = run_sweep(spec, out, executor="serial" if args.serial else "auto", ray_address=args.ray_address,
                       num_cpus=args.num_cpus, target=target, overwrite=args.overwrite, progress=progress)
    table = result.table
    if table.height:
        with atomic_path(out / "results.csv") as tmp:
            table.write_csv(tmp)
        names = [axis.name for axis in spec.axes]
        title = f"{spec.engine.gpu} x {spec.engine.model}" if not args.url else args.url
        plot_sweep(table, names, out / "sweep.png", title=f"{title}: sweep of {', '.join(names)}")
        write_results_report(out / "report.html", f"burstgpt sweep: {title}", table,
                             [("sweep", out / "sweep.png")], config=spec.to_dict(),
                             subtitle=f"{table.height} of {total} points; varied {', '.join(names)}")
        _print_table(table, ["point_id", *_SHOWN])
    skipped = f", {result.resumed} already done" if result.resumed else ""
    if result.interrupted:
        kept = f"{table.height} of {total} points in {out / 'results.parquet'}" if table.height else "no point finished"
        print(f"sweep interrupted: {kept}{skipped}; run the same command again to finish", file=sys.stderr)
        return 130
    print(f"sweep: {result.ran} points run{skipped}; {out / 'results.parquet'}, {out / 'sweep.png'}",
          file=sys.stderr)
    return 0


def _find_rate(spec, args: argparse.Namespace, target) -> int:
    from burstgpt.report.html import write_results_report
    from burstgpt.sweep.figures import plot_rate_search
    from burstgpt.sweep.rate import KVBand, find_rate, parse_find_rate

    objective = parse_find_rate(args.find_rate)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def progress(step: dict) -> None:
        metric = next(key for key in ("kv_usage_mean", "slo_attainment") if key in step)
        value = step[metric]
        shown = f"{value:.3f}" if value is not None else "n/a"
        print(f"[{step['step']}] {step['phase']}: rate {step['rate_rps']:.4g} req/s -> {metric} {shown} "
              f"({step['verdict']})", file=sys.stderr, flush=True)

    search = find_rate(spec, objective, start_rate_rps=args.start_rate, max_evaluations=args.max_evaluations,
                       target=target, progress=progress)
    if search.path.height == 0:
        print("rate search interrupted before its first run ended", file=sys.stderr)
        return 130
    metric = "kv_usage_mean" if isinstance(objective, KVBand) else "slo_attainment"
    band = (objective.low, objective.high) if isinstance(objective, KVBand) else (objective.attainment, 1.0)
    path = search.path
    with atomic_path(out / "rate_search.parquet") as tmp:
        path.write_parquet(tmp)
    with atomic_path(out / "rate_search.csv") as tmp:
        path.write_csv(tmp)
    plot_rate_search(path, metric, band, out / "rate_search.png", title=f"--find-rate {args.find_rate}")
    write_results_report(out / "report.html", f"burstgpt sweep --find-rate {args.find_rate}", path,
                         [("rate_search", out / "rate_search.png")], config=spec.to_dict(),
                         subtitle=f"rate {search.rate_rps:.4g} req/s" if search.rate_rps is not None else (search.note or ""))
    write_json_atomic(out / "rate.json", {"find_rate": args.find_rate, "rate_rps": search.rate_rps,
                                          "resolution_rps": search.resolution_rps, "note": search.note,
                                          "evaluations": path.height, "spec": spec.to_dict()})
    _print_table(path, ["step", "phase", "rate", metric, "verdict", "low_rps", "high_rps"])
    if search.interrupted:
        print(f"rate search interrupted after {path.height} runs; search path in {out / 'rate_search.csv'}",
              file=sys.stderr)
        return 130
    if search.rate_rps is None:
        print(f"no rate found: {search.note}; search path in {out / 'rate_search.csv'}", file=sys.stderr)
        return 1
    print(f"rate: {search.rate_rps:.4g} req/s (bracket width {search.resolution_rps or 0:.3g} req/s); search path in "
          f"{out / 'rate_search.csv'}", file=sys.stderr)
    print(f"{search.rate_rps:.6g}")
    return 0


def _write_point_run(runs: Path, point, result) -> None:
    """A `--url` point's run directory (as `bench` writes it), named after the point."""
    from burstgpt.report.rundir import write_run_directory

    name = "".join(c if c.isalnum() or c in "=.-_" else "_" for c in point.point_id)
    write_run_directory(runs / name, result.records, config={"producer": "bench", "sweep_point": point.point_id},
                        server_metrics=result.server_metrics, producer="bench")


def _print_table(frame, columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    columns = [name for name in columns if name in frame.columns]
    for name in columns:
        table.add_column(name)
    for row in frame.select(columns).iter_rows():
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v)) for v in row))
    Console(stderr=True, width=160).print(table)
