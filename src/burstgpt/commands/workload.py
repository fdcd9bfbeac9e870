"""`burstgpt workload fit | generate | inspect`, and the generation flags that `bench` and `simulate` reuse.

The flags are only a front for `burstgpt.workload.spec.WorkloadSpec` / `build_workload`:
    add_generation_arguments(parser)   adds every workload generation flag (including --workload FILE)
    spec_from_args(args) -> WorkloadSpec       the spec those flags describe
    workload_from_args(args) -> pl.DataFrame   reads --workload FILE, or builds the spec's workload
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path

import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.workload.arrivals import SHAPES
from burstgpt.workload.io import read_workload, write_workload
from burstgpt.workload.prefixes import DEFAULT_BLOCK_SIZE, PrefixSharing, Sessions, SystemPrompts
from burstgpt.workload.processes import arrival_processes
from burstgpt.workload.prompts import SOURCE_FORMATS
from burstgpt.workload.responses import RESPONSE_MODES
from burstgpt.workload.servegen import ClientFilters
from burstgpt.workload.spec import (
    DEFAULT_CHANGE_EVERY,
    DEFAULT_MAX_INPUT,
    DEFAULT_MIN_INPUT,
    DEFAULT_THETA,
    MirroredArrivals,
    Prompts,
    ReplayedTrace,
    RequestLengths,
    Responses,
    ScheduledArrivals,
    ServeGenClients,
    WorkloadSpec,
    build_workload,
    filter_nonempty,
)



def register(subparsers) -> None:
    workload = subparsers.add_parser("workload", help="fit, generate and inspect workloads")
    sub = workload.add_subparsers(dest="workload_command", metavar="SUBCOMMAND")
    workload.set_defaults(func=lambda args: (workload.print_help(), 2)[1])

    fit = sub.add_parser("fit", help="fit workload parameters from a trace (per-window Gamma, Zipf, responses)")
    fit.add_argument("trace", help="trace file (any format `burstgpt trace` reads)")
    fit.add_argument("-o", "--output", required=True, help="params JSON file to write")
    fit.add_argument("--window-s", type=float, default=1200.0, help="fit window, seconds (default 1200)")
    fit.add_argument("--min-arrivals", type=int, default=10, help="fewest arrivals to fit a window (default 10)")
    fit.add_argument("--trace-model", action="append", help="keep only this trace model (repeatable)")
    fit.add_argument("--trace-service", action="append", choices=("conversation", "api"),
                     help="keep only this service (repeatable)")
    fit.set_defaults(func=_cmd_fit)

    generate = sub.add_parser("generate", help="generate a workload table")
    add_generation_arguments(generate)
    generate.add_argument("-o", "--output", required=True, help="workload file to write (.parquet or .jsonl)")
    generate.set_defaults(func=_cmd_generate)

    inspect = sub.add_parser("inspect", help="print workload statistics and write plots")
    inspect.add_argument("workload_file", metavar="FILE", help="workload file (.parquet or .jsonl)")
    inspect.add_argument("--plots", default=None,
                         help="directory for the PNG plots (default: FILE's name + '-plots' beside it)")
    inspect.add_argument("--no-plots", action="store_true", help="print statistics only")
    inspect.add_argument("--window-s", type=float, default=None,
                         help="window for the rate and alpha/beta plots, seconds (default: span / 50)")
    inspect.set_defaults(func=_cmd_inspect)


# ------------------------------------------------------------------------------------------- generation flags


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the workload generation flags (one argument group). `workload_from_args` reads them."""
    g = parser.add_argument_group("workload")
    g.add_argument("--workload", metavar="FILE", help="use an existing workload file; generation flags ignored")
    g.add_argument("--params", metavar="FILE", help="mirror a params file from `workload fit`")
    g.add_argument("--mirror", metavar="TRACE", help="fit a trace and mirror its per-window alpha/beta")
    g.add_argument("--replay", metavar="TRACE", help="replay a trace's own timestamps (see --scale)")
    g.add_argument("--servegen", metavar="DIR",
                   help="compose ServeGen clients (every *-trace.csv + *-dataset.json pair under DIR)")
    g.add_argument("--target-rate", type=float, metavar="RPS",
                   help="mean rate of a mirrored workload or of a ServeGen pool over its span, requests/s "
                   "(default: the trace's rate x --time-scale; ServeGen: the recorded rates)")
    g.add_argument("--time-scale", type=float, default=1.0, metavar="K",
                   help="mirror: compress the trace's clock K times, so a window lasts window/K (default 1)")
    g.add_argument("--window-s", dest="fit_window_s", type=float, default=1200.0,
                   help="--mirror: fit window, seconds (default 1200, the paper's 20 minutes)")
    g.add_argument("--scale", type=float, default=1.0, help="replay: S times faster (default 1)")
    g.add_argument("--start-s", type=float,
                   help="replay: first trace second to use; ServeGen: second of the records to start from "
                   "(default 0; --duration sets the span)")
    g.add_argument("--end-s", type=float, help="replay: trace second to stop before")
    g.add_argument("--trace-model", action="append", help="replay/mirror: keep only this trace model (repeatable)")
    g.add_argument("--trace-service", action="append", choices=("conversation", "api"),
                   help="replay/mirror: keep only this service (repeatable)")
    g.add_argument("--skip-quiet-start", action="store_true",
                   help="replay: skip the trace's long low-rate opening (the run of 20-minute windows from the "
                   "start most below the mean rate, when its rate is under half the mean)")
    g.add_argument("--clients", metavar="NAMES",
                   help="ServeGen: comma-separated client names or globs, e.g. 'language/m-small/*' (default all)")
    g.add_argument("--rate-fn", metavar="FILE",
                   help="ServeGen: CSV time_s,rate_rps giving the aggregate rate over time (instead of --target-rate)")
    for bound, word in (("min", "at least"), ("max", "at most")):
        g.add_argument(f"--client-{bound}-rate", type=float, metavar="RPS",
                       help=f"ServeGen: keep clients whose mean rate over the span is {word} RPS")
        g.add_argument(f"--client-{bound}-cv", type=float, metavar="CV",
                       help=f"ServeGen: keep clients whose mean window CV (request-weighted) is {word} CV")
        g.add_argument(f"--client-{bound}-input-tokens", type=float, metavar="TOKENS",
                       help=f"ServeGen: keep clients whose mean request length is {word} TOKENS")
    g.add_argument("--arrival", choices=arrival_processes(), default="gamma",
                   help="renewal arrival process without a trace (default gamma; alpha is its shape); with "
                   "--params/--mirror, the family of each window's gaps (keeping its rate and CV)")
    g.add_argument("--alpha", metavar="A[:A2]", default=None,
                   help="Gamma shape, or a range for a schedule (default 1)")
    g.add_argument("--beta", metavar="B[:B2]", default=None, help="Gamma scale, seconds, or a range")
    g.add_argument("--rate", metavar="R[:R2]", default=None,
                   help="mean rate, requests/s, or a range (instead of --beta: beta = 1/(alpha*rate))")
    g.add_argument("--schedule", default=None, metavar="SHAPE|A,B|FILE",
                   help=f"how alpha/beta change: one of {', '.join(SHAPES)} for both, 'paper' "
                   "(quadratic alpha, linear beta; the default when a range is given), 'ASHAPE,BSHAPE', "
                   "or a CSV/JSON table with columns at, alpha, beta_s")
    g.add_argument("--change-every", default=str(DEFAULT_CHANGE_EVERY), metavar="N|Ts",
                   help="schedule step: N requests, or T seconds with an 's' suffix (default 200)")
    g.add_argument("--schedule-steps", type=int, default=None,
                   help="number of steps the shapes span (default: from --num-requests/--duration, else 10)")
    g.add_argument("--duration", type=float, metavar="SECONDS", help="stop before this many seconds")
    g.add_argument("--num-requests", type=int, metavar="N", help="stop after N requests")
    g.add_argument("--zipf-theta", type=float, default=None,
                   help=f"Zipf exponent of request lengths (default {DEFAULT_THETA}, or the params file's)")
    g.add_argument("--min-input-tokens", type=int, default=None,
                   help=f"shortest request, tokens (default {DEFAULT_MIN_INPUT}, or the params file's)")
    g.add_argument("--max-input-tokens", type=int, default=None,
                   help=f"longest request, tokens (default {DEFAULT_MAX_INPUT}, or the params file's)")
    g.add_argument("--response", choices=RESPONSE_MODES, default=None,
                   help="response lengths: model (left to the model; default), fixed, empirical "
                   "(params/trace), trace (replay; default there)")
    g.add_argument("--output-tokens", type=int, default=None, help="--response fixed: output length, tokens")
    g.add_argument("--max-output-tokens", type=int, default=2048,
                   help="max_tokens cap sent with every request (default 2048; 0 = none)")
    g.add_argument("--prompts", metavar="SOURCE", default=None,
                   help="prompt source: ShareGPT/Alpaca JSON, JSONL, text file, hf:NAME[:split], a saved dataset "
                   "directory, or 'synthetic' (default: none; the client synthesises prompts)")
    g.add_argument("--prompt-format", choices=SOURCE_FORMATS, default="auto", help="prompt source format")
    g.add_argument("--prompt-field", default=None, help="JSONL/dataset text field (default: text, prompt, ...)")
    g.add_argument("--tokenizer", default="builtin",
                   help="builtin (default), a tokenizer.json path, or a cached transformers name")
    g.add_argument("--prompt-buffer", type=int, default=10_000, help="prompt pool size (default 10000)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_prefix_arguments(parser)


def add_prefix_arguments(parser: argparse.ArgumentParser) -> None:
    """Generated prefix sharing flags (`burstgpt.workload.prefixes`); unset values are fitted from --prefix-fit
    TRACE, else defaults."""
    g = parser.add_argument_group("shared prefixes and sessions")
    g.add_argument("--system-prompts", type=float, metavar="FRACTION",
                   help="share of requests (sessions) that start with a shared system prompt (default 0.5 once "
                   "any system-prompt flag is given)")
    g.add_argument("--system-prompt-pool", type=int, metavar="N", help="distinct system prompts (default 16)")
    g.add_argument("--system-prompt-tokens", type=int, metavar="N", help="system prompt length, tokens (default 512)")
    g.add_argument("--system-prompt-popularity", type=float, metavar="S",
                   help="Zipf exponent of system prompt popularity over the pool (default 1; 0 = uniform)")
    g.add_argument("--sessions", type=float, metavar="MEAN_TURNS",
                   help="group requests into multi-turn sessions with this mean number of turns (geometric)")
    g.add_argument("--think-time", type=float, metavar="S",
                   help="median think time between a turn's end and the next turn, seconds (default 10)")
    g.add_argument("--think-time-sigma", type=float, metavar="SIGMA",
                   help="log-normal sigma of think times (default 1; 0 = always the median)")
    g.add_argument("--session-max-tokens", type=int, metavar="TOKENS",
                   help="a turn whose prompt would exceed this starts a new session (e.g. the model's context)")
    g.add_argument("--prefix-block-size", type=int, default=DEFAULT_BLOCK_SIZE, metavar="TOKENS",
                   help=f"tokens per generated prefix block id (default {DEFAULT_BLOCK_SIZE}; smaller costs memory, "
                   "the prompt text is the same)")
    g.add_argument("--prefix-fit", metavar="TRACE",
                   help="fit the unset values above from TRACE: system prompts from its prefix block ids "
                   "(Mooncake), sessions from its session ids (BurstGPT 8-column)")


def prefix_sharing_from_args(args: argparse.Namespace) -> PrefixSharing | None:
    """The `PrefixSharing` the flags of `add_prefix_arguments` describe, or None when none is given."""
    system_values = (args.system_prompts, args.system_prompt_pool, args.system_prompt_tokens,
                     args.system_prompt_popularity)
    session_values = (args.sessions, args.think_time, args.think_time_sigma, args.session_max_tokens)
    system = SystemPrompts(*system_values) if any(v is not None for v in system_values) else None
    sessions = Sessions(*session_values) if any(v is not None for v in session_values) else None
    if system is None and sessions is None and args.prefix_fit is None:
        return None
    return PrefixSharing(system, sessions, block_size=args.prefix_block_size, trace=args.prefix_fit)


def spec_from_args(args: argparse.Namespace) -> WorkloadSpec:
    """The `WorkloadSpec` the flags of `add_generation_arguments` describe (without --workload)."""
    sources = [name for name in ("params", "mirror", "replay", "servegen") if getattr(args, name)]
    if len(sources) > 1:
        raise BurstGPTError(f"choose one of --params, --mirror, --replay and --servegen, not {' and '.join(sources)}")
    models = tuple(args.trace_model) if args.trace_model else None
    services = tuple(args.trace_service) if args.trace_service else None
    arrivals: ScheduledArrivals | MirroredArrivals | ReplayedTrace | ServeGenClients
    if args.servegen:
        clients = tuple(n.strip() for n in args.clients.split(",") if n.strip()) if args.clients else None
        arrivals = ServeGenClients(
            args.servegen, clients=clients, start_s=args.start_s or 0.0, target_rate_rps=args.target_rate,
            rate_fn=args.rate_fn, filters=ClientFilters(
                args.client_min_rate, args.client_max_rate, args.client_min_cv, args.client_max_cv,
                args.client_min_input_tokens, args.client_max_input_tokens),
        )
    elif args.replay:
        arrivals = ReplayedTrace(args.replay, scale=args.scale, start_s=args.start_s, end_s=args.end_s,
                                 models=models, services=services, skip_quiet_start=args.skip_quiet_start)
    elif args.params or args.mirror:
        arrivals = MirroredArrivals(params=args.params, trace=args.mirror, target_rate_rps=args.target_rate,
                                    time_scale=args.time_scale, fit_window_s=args.fit_window_s,
                                    models=models, services=services, process=args.arrival)
    else:
        step, unit = _parse_change_every(args.change_every)
        table = args.schedule if _is_table(args.schedule) else None
        arrivals = ScheduledArrivals(
            process=args.arrival,
            alpha=_parse_range(args.alpha, "--alpha") or 1.0,
            beta_s=_parse_range(args.beta, "--beta"),
            rate_rps=_parse_range(args.rate, "--rate"),
            schedule=None if table else args.schedule,
            schedule_table=table,
            change_every=step,
            change_unit=unit,
            schedule_steps=args.schedule_steps,
        )
    prompts = None
    if args.prompts:
        prompts = Prompts(args.prompts, format=args.prompt_format, field=args.prompt_field,
                          tokenizer=args.tokenizer, buffer=args.prompt_buffer)
    return WorkloadSpec(
        arrivals=arrivals,
        num_requests=args.num_requests,
        duration_s=args.duration,
        lengths=RequestLengths(args.zipf_theta, args.min_input_tokens, args.max_input_tokens),
        responses=Responses(args.response, args.output_tokens, args.max_output_tokens or None),
        prompts=prompts,
        prefixes=prefix_sharing_from_args(args),
        seed=args.seed,
    )


def workload_from_args(args: argparse.Namespace) -> pl.DataFrame:
    """The workload described by the flags of `add_generation_arguments` (read from --workload, or built from
    the `WorkloadSpec` of the other flags); notes go to stderr."""
    if args.workload:
        frame = read_workload(args.workload)
        if args.num_requests is not None:
            frame = frame.head(args.num_requests)
        if args.duration is not None:
            frame = frame.filter(pl.col("arrival_s") < args.duration)
        return frame
    notes: list[str] = []
    frame = build_workload(spec_from_args(args), notes=notes, status=_status)
    for note in notes:
        print(f"burstgpt: note: {note}", file=sys.stderr)
    return frame


def _status(message: str):
    """A rich spinner on stderr while slow work runs (tokenising a large prompt set); silent off a terminal."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)


def _parse_range(text: str | None, flag: str) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise BurstGPTError(f"{flag} expects a number or FROM:TO, got {text!r}") from None
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v > 0 for v in values):
        raise BurstGPTError(f"{flag} expects one or two positive numbers (FROM:TO), got {text!r}")
    return (values[0], values[-1])


def _parse_change_every(text: str) -> tuple[float, str]:
    unit = "seconds" if text.endswith("s") else "requests"
    number = text.rstrip("sr")
    try:
        step = float(number)
    except ValueError:
        raise BurstGPTError(f"--change-every expects N (requests) or Ts (seconds), got {text!r}") from None
    if not step > 0 or (unit == "requests" and step != int(step)):
        raise BurstGPTError(f"--change-every must be a positive whole number of requests or seconds, got {text!r}")
    return step, unit


def _is_table(spec: str | None) -> bool:
    return bool(spec) and (Path(spec).suffix in (".csv", ".json") or Path(spec).exists())


# ------------------------------------------------------------------------------------------------- handlers


def _cmd_fit(args) -> int:
    from burstgpt.workload.params import fit_workload_params, write_params
    from burstgpt.trace import load_trace

    trace = filter_nonempty(load_trace(args.trace), args.trace_model, args.trace_service)
    params = fit_workload_params(trace, window_s=args.window_s, min_arrivals=args.min_arrivals,
                                 filters={"models": args.trace_model, "services": args.trace_service})
    write_params(params, args.output)
    windows = params.windows
    fitted = windows.filter(pl.col("alpha").is_not_null())
    print(f"{params.num_requests} requests over {params.duration_s:.0f} s: mean rate {params.mean_rate_rps:.4g} req/s")
    print(f"overall Gamma alpha {params.overall_alpha:.3g}, beta {params.overall_beta_s:.3g} s; "
          f"{fitted.height} of {windows.height} windows of {params.window_s:g} s fitted")
    if fitted.height:
        print(f"per-window alpha: median {fitted['alpha'].median():.3g}, range {fitted['alpha'].min():.3g}"
              f"-{fitted['alpha'].max():.3g}")
    theta = "-" if params.zipf_theta is None else f"{params.zipf_theta:.3g}"  # None: one length, no exponent
    print(f"request tokens: Zipf theta {theta} on [{params.zipf.min_tokens}, {params.zipf.max_tokens}]")
    summary = params.response_summary
    if "linear_fit" in summary:
        lf = summary["linear_fit"]
        print(f"response tokens: failure rate {summary['failure_rate']:.3%}, mean {summary['mean']:.1f}, "
              f"linear fit {lf['intercept']:.1f} + {lf['slope']:.3f} x request")
    print(f"wrote {args.output}")
    return 0


def _cmd_generate(args) -> int:
    frame = workload_from_args(args)
    write_workload(frame, args.output)
    span = frame["arrival_s"].max() if frame.height else 0.0
    rate = frame.height / span if span else float("nan")
    print(f"wrote {args.output}: {frame.height} requests over {span:.1f} s ({rate:.4g} req/s)")
    return 0


def _print_client_mix(mix: pl.DataFrame) -> None:
    """The per-client table of `workload inspect` (nothing for a workload without clients)."""
    if mix.height == 0:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="clients", title_justify="left")
    for name in ("client", "requests", "share", "req/s", "gap CV", "mean input", "mean output"):
        table.add_column(name, justify="left" if name == "client" else "right")

    def number(value, spec):
        return "-" if value is None else format(value, spec)

    for row in mix.iter_rows(named=True):
        table.add_row(row["client_id"], str(row["requests"]), f"{row['share']:.1%}", number(row["rate_rps"], ".4g"),
                      number(row["gap_cv"], ".3g"), number(row["mean_input_tokens"], ".1f"),
                      number(row["mean_output_tokens"], ".1f"))
    Console(width=120).print(table)


def _print_session_turns(turns: pl.DataFrame) -> None:
    """The turns-per-session table of `workload inspect` (nothing for a workload without sessions)."""
    if turns.height == 0:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="turns per session", title_justify="left")
    for name in ("turns", "sessions", "share"):
        table.add_column(name, justify="right")
    for row in turns.iter_rows(named=True):
        table.add_row(row["turns"], str(row["sessions"]), f"{row['share']:.1%}")
    Console(width=120).print(table)


def _cmd_inspect(args) -> int:
    from burstgpt.workload.inspect import client_mix, plot_workload, session_turns, workload_stats

    frame = read_workload(args.workload_file)
    stats = workload_stats(frame)
    width = max(len(k) for k in stats)
    for key, value in stats.items():
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    _print_client_mix(client_mix(frame))
    _print_session_turns(session_turns(frame))
    if not args.no_plots and frame.height:
        out = Path(args.plots) if args.plots else Path(args.workload_file).with_name(
            Path(args.workload_file).stem + "-plots")
        written = plot_workload(frame, out, window_s=args.window_s)
        for path in written:
            print(f"wrote {path}")
    return 0
