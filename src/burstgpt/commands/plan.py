"""`burstgpt plan`: the fewest replicas per GPU/model preset meeting an SLO over a trace or workload, behind a
router, optionally with a per-window autoscaler and its cost in GPU-hours against the fixed fleet."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from burstgpt.errors import BurstGPTError
from burstgpt.outputs import atomic_path, write_json_atomic


def register(subparsers) -> None:
    from burstgpt.commands.simulate import add_engine_arguments
    from burstgpt.commands.workload import add_generation_arguments
    from burstgpt.sim.cluster import ROUTERS

    parser = subparsers.add_parser(
        "plan",
        help="fewest simulated replicas per GPU/model preset meeting an SLO; autoscaling and its cost",
        description="Simulate N replicas of each GPU/model preset behind a router, fed by a trace or workload (the "
        "same flags as `simulate`), and find the fewest that meet the SLO over the whole workload; optionally "
        "scale the fleet per window with the load and compare its cost in GPU-hours. Writes plan.csv, "
        "search.csv, windows.csv and plan.png.",
    )
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--slo", required=True, help="SLOs, seconds, e.g. ttft=2,tpot=0.1 (keys: ttft, tpot, e2e, "
                        "latency_per_output_token)")
    parser.add_argument("--attainment", type=float, default=0.99,
                        help="share of requests that must succeed within the SLO (default 0.99)")
    parser.add_argument("--presets", metavar="GPU:MODEL,...", default=None,
                        help="GPU/model presets to size, e.g. A800:Llama-2-13B,H100:Llama-2-13B (default: --gpu x "
                        "--model); the other engine flags apply to all")
    parser.add_argument("--router", choices=ROUTERS, default="least_outstanding",
                        help="request router (default least_outstanding)")
    parser.add_argument("--max-replicas", type=int, default=64, help="most replicas tried (default 64)")
    scale = parser.add_argument_group("autoscaler")
    scale.add_argument("--autoscale", action="store_true",
                       help="also simulate a fleet sized per window from the previous window's arrival rate")
    scale.add_argument("--scale-window", type=float, default=None,
                       help="window, seconds (default 300, or a tenth of the workload's span when that is shorter)")
    scale.add_argument("--startup-delay", type=float, default=60.0,
                       help="seconds before a new replica takes requests (default 60)")
    scale.add_argument("--replica-capacity", type=float, default=None, metavar="RPS",
                       help="requests/s one replica serves within the SLO (default: the busiest window's rate / the "
                       "fixed fleet's size)")
    scale.add_argument("--headroom", type=float, default=1.25,
                       help="provision for this multiple of the previous window's rate (default 1.25)")
    scale.add_argument("--min-replicas", type=int, default=1, help="fewest replicas (default 1)")
    run = parser.add_argument_group("execution")
    run.add_argument("--serial", action="store_true", help="size the presets one after another in this process")
    run.add_argument("--ray-address", default=None, metavar="ADDR", help="an existing Ray cluster")
    run.add_argument("--num-cpus", type=int, default=None, help="local Ray: CPUs to use (default: all)")
    add_generation_arguments(parser)
    add_engine_arguments(parser)
    parser.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from burstgpt.commands.simulate import engine_spec_from_args
    from burstgpt.commands.sweep import _print_table
    from burstgpt.commands.workload import workload_from_args
    from burstgpt.metrics.requests import parse_slo
    from burstgpt.report.html import write_results_report
    from burstgpt.sweep.figures import plot_plan
    from burstgpt.sweep.plan import AutoscaleSpec, PlanSpec, plan_capacity

    slo = parse_slo(args.slo)
    base = engine_spec_from_args(args)
    engines = [base]
    if args.presets:
        engines = []
        for item in args.presets.split(","):
            gpu, sep, model = item.strip().partition(":")
            if not sep or not gpu or not model:
                raise BurstGPTError(f"--presets: {item!r} is not GPU:MODEL")
            engines.append(dataclasses.replace(base, gpu=gpu, model=model))
    workload = workload_from_args(args)
    if workload.height == 0:
        raise BurstGPTError("the workload has no requests")
    span_s = float(workload["arrival_s"].max())
    autoscale = None
    if args.autoscale:
        window_s = args.scale_window
        if window_s is None:  # at least ten windows, so the autoscaler has a previous window to follow
            window_s = 300.0 if span_s >= 3000.0 else max(float(f"{span_s / 10.0:.2g}"), 1.0)
            print(f"plan: autoscaler windows of {window_s:g} s", file=sys.stderr)
        autoscale = AutoscaleSpec(window_s=window_s, startup_delay_s=args.startup_delay,
                                  capacity_rps=args.replica_capacity, headroom=args.headroom,
                                  min_replicas=args.min_replicas)
    spec = PlanSpec(tuple(engines), slo, attainment=args.attainment, router=args.router,
                    max_replicas=args.max_replicas, autoscale=autoscale, output_lengths=args.output_lengths,
                    seed=args.seed)
    spec.check()
    out = Path(args.out)
    print(f"plan: {workload.height} requests over {span_s:.0f} s, "
          f"{len(engines)} preset(s), router {args.router}", file=sys.stderr, flush=True)

    def progress(done: int, count: int, name: str) -> None:
        print(f"[{done}/{count}] sized {name}", file=sys.stderr, flush=True)

    result = plan_capacity(workload, spec, executor="serial" if args.serial else "auto",
                           ray_address=args.ray_address, num_cpus=args.num_cpus, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("search", result.search), ("windows", result.windows), ("plan", result.table)):
        with atomic_path(out / f"{name}.csv") as tmp:
            frame.write_csv(tmp)
    title = f"replicas to meet {args.slo} for {100 * args.attainment:g}% of requests ({args.router})"
    plot_plan(result.table, result.windows, out / "plan.png", span_s=span_s, title=title)
    write_results_report(out / "report.html", f"burstgpt plan: {title}", result.table, [("plan", out / "plan.png")],
                         config={"slo": slo, "attainment": args.attainment, "router": args.router,
                                 "presets": [f"{e.gpu}:{e.model}" for e in engines],
                                 "autoscale": dataclasses.asdict(autoscale) if autoscale else None},
                         subtitle=f"{workload.height} requests over {span_s:.0f} s")
    write_json_atomic(out / "plan.json", {"slo": slo, "attainment": args.attainment, "router": args.router,
                                          "presets": result.table.to_dicts()})
    _print_table(result.table, [c for c in result.table.columns if c != "router"])
    unmet = result.table.filter(result.table["replicas"].is_null())
    for gpu, model in unmet.select("gpu", "model").rows():
        print(f"{gpu} x {model}: {args.max_replicas} replicas do not meet the SLO (raise --max-replicas)",
              file=sys.stderr)
    print(f"plan: {out / 'plan.csv'}, {out / 'plan.png'}", file=sys.stderr)
    return 1 if unmet.height else 0
