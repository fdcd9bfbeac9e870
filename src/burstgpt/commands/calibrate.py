"""`burstgpt calibrate`: fit the simulator's step-time model to ordinary `bench` runs (recorded with
`--chunk-times`) by replaying them through the simulated scheduler (`burstgpt.sim.calibrate`)."""

from __future__ import annotations

import argparse
import sys

from burstgpt.errors import BurstGPTError, InputError

#: Engine settings the replay needs, and their defaults when neither a flag nor the runs' scraped
#: `vllm:cache_config_info` gives them (vLLM's own defaults for an API server on one GPU).
_SETTING_DEFAULTS = {"num_gpu_blocks": None, "block_size": 16, "max_num_seqs": 256,
                     "max_num_batched_tokens": 2048, "max_model_len": 4096}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="fit the simulator's step-time model to bench runs (recorded with --chunk-times)",
        description="Replay the requests of one or more `bench` run directories (when they were sent, the prompt "
        "and output lengths the server reported) through the simulated scheduler, match its steps to the "
        "streamed chunks' arrival times, and fit the linear step-time model to them, iterating until it "
        "settles. Engine settings come from the runs' scraped vllm:cache_config_info unless given here. Writes "
        "a latency model file for `simulate --latency-model FILE`. See docs/calibrate.md.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="bench run directories (with --chunk-times)")
    parser.add_argument("-o", "--out", required=True, metavar="FILE", help="latency model file to write (JSON)")
    parser.add_argument("--initial", metavar="FILE", help="latency model file to start from (e.g. a profile's)")
    parser.add_argument("--max-iterations", type=int, default=12, help="replay-and-fit rounds at most (12)")
    engine = parser.add_argument_group("engine settings (default: from the runs' /metrics scrapes)")
    for name, default in _SETTING_DEFAULTS.items():
        fallback = "required when not scraped" if default is None else f"else {default}"
        engine.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help=f"({fallback})")
    parser.set_defaults(func=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from burstgpt.commands.profile import print_fit, write_model
    from burstgpt.records import read_run_directory
    from burstgpt.sim.calibrate import ObservedRun, calibrate_runs, observed_run
    from burstgpt.sim.latency import LinearLatency, load_latency_model
    from burstgpt.sim.scheduler import EngineConfig

    if args.max_iterations < 1:
        raise BurstGPTError("--max-iterations must be >= 1")
    runs: list[ObservedRun] = []
    scraped: dict[str, set] = {name: set() for name in _SETTING_DEFAULTS}
    models = set()
    for path in args.runs:
        run = read_run_directory(path)
        if run.records["chunk_times_s"].null_count() == run.records.height:
            raise InputError(path, "no chunk times recorded: run `bench` with --chunk-times")
        metrics = run.server_metrics
        if metrics is not None:
            for name in scraped:
                if name in metrics.columns:
                    scraped[name].update(int(v) for v in metrics[name].drop_nulls().unique())
        models.add(run.config.get("model_used") or run.config.get("model"))
        runs.append(observed_run(str(path), run.records, metrics))
    settings, origin = {}, {}
    for name, default in _SETTING_DEFAULTS.items():
        given = getattr(args, name)
        if given is not None:
            settings[name], origin[name] = given, "flag"
        elif len(scraped[name]) == 1:
            settings[name], origin[name] = scraped[name].pop(), "scraped"
        elif len(scraped[name]) > 1:
            raise BurstGPTError(f"the runs were made with different {name} ({sorted(scraped[name])}): calibrate "
                                "runs of one server configuration together")
        elif default is None:
            raise BurstGPTError(f"the runs' /metrics do not say {name} (no vllm:cache_config_info): give "
                                f"--{name.replace('_', '-')}")
        else:
            settings[name], origin[name] = default, "default"
    print("engine settings: " + ", ".join(f"{k} {v} ({origin[k]})" for k, v in settings.items()), file=sys.stderr)
    config = EngineConfig(**settings)
    config.check()
    initial = None
    if args.initial:
        initial = load_latency_model(args.initial).latency
        if not isinstance(initial, LinearLatency):
            raise InputError(args.initial, f"calibrate starts from a linear model, not '{initial.kind}'")

    def progress(iteration: int, model) -> None:
        print(f"calibrate: iteration {iteration}: {model.describe()}", file=sys.stderr, flush=True)

    result = calibrate_runs(runs, config, initial=initial, max_iterations=args.max_iterations, progress=progress)
    notes = []
    if not result.converged:
        notes.append(f"the coefficients had not settled after {args.max_iterations} iterations: check the checks "
                     "table, try more runs or --initial with a profile")
    model_name = models.pop() if len(models) == 1 else None
    write_model(args.out, result.fit, method="calibrate", source=[str(p) for p in args.runs], model_name=model_name,
                engine=settings, notes=notes,
                measurements={"checks": result.checks.to_dicts(),
                              "iterations": [m.to_dict() for m in result.history]})
    print_fit(result.fit, title=f"burstgpt calibrate: {len(runs)} run(s), {len(result.history) - 1} iteration(s)",
              notes=notes)
    table = Table(title="replayed with the fitted model: observed vs simulated")
    for column in ("run", "quantity", "observed", "simulated", "error"):
        table.add_column(column, justify="left" if column in ("run", "quantity") else "right")
    for row in result.checks.iter_rows(named=True):
        error = row["simulated"] / row["observed"] - 1 if row["observed"] else float("nan")
        table.add_row(row["run"], row["quantity"], f"{row['observed']:.4g}", f"{row['simulated']:.4g}",
                      f"{error:+.1%}")
    Console().print(table)
    print(f"latency model written: {args.out}", file=sys.stderr)
    return 0
