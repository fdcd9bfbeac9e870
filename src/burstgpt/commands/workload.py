"""`burstgpt workload fit | generate | inspect`, and the generation flags that `bench` and `simulate` reuse.

Stable API for other commands:
    add_generation_arguments(parser)   adds every workload generation flag (including --workload FILE)
    workload_from_args(args) -> pl.DataFrame   builds (or reads) the workload those flags describe
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError, InputError
from burstgpt.trace.schema import Trace
from burstgpt.workload.arrivals import (
    SHAPES,
    ParamSchedule,
    constant_arrivals,
    mirror_schedule,
    schedule_from_table,
    scheduled_arrivals,
    shape_values,
)
from burstgpt.workload.generate import (
    ResponseSpec,
    assemble_workload,
    attach_prompts,
    filter_trace_rows,
    seed_streams,
    select_replay,
)
from burstgpt.workload.io import read_workload, write_workload
from burstgpt.workload.lengths import RESPONSE_MODES, EmpiricalResponses, ZipfLengths
from burstgpt.workload.params import WorkloadParams, fit_workload_params, read_params, write_params
from burstgpt.workload.prompts import SOURCE_FORMATS, load_prompt_texts, load_tokenizer

DEFAULT_THETA = 1.1  # the paper's Table III
DEFAULT_MIN_INPUT = 16
DEFAULT_MAX_INPUT = 4096
DEFAULT_CHANGE_EVERY = "200"  # the paper changes alpha/beta after N = 200 requests


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
    g.add_argument("--target-rate", type=float, metavar="RPS",
                   help="mean rate of a mirrored workload, requests/s (default: the trace's rate x --time-scale)")
    g.add_argument("--time-scale", type=float, default=1.0, metavar="K",
                   help="mirror: compress the trace's clock K times, so a window lasts window/K (default 1)")
    g.add_argument("--window-s", dest="fit_window_s", type=float, default=1200.0,
                   help="--mirror: fit window, seconds (default 1200, the paper's 20 minutes)")
    g.add_argument("--scale", type=float, default=1.0, help="replay: S times faster (default 1)")
    g.add_argument("--start-s", type=float, help="replay: first trace second to use")
    g.add_argument("--end-s", type=float, help="replay: trace second to stop before")
    g.add_argument("--trace-model", action="append", help="replay/mirror: keep only this trace model (repeatable)")
    g.add_argument("--trace-service", action="append", choices=("conversation", "api"),
                   help="replay/mirror: keep only this service (repeatable)")
    g.add_argument("--skip-quiet-start", action="store_true",
                   help="replay: skip the trace's long low-rate opening (the run of 20-minute windows from the "
                   "start most below the mean rate, when its rate is under half the mean)")
    g.add_argument("--arrival", choices=("gamma", "poisson", "constant"), default="gamma",
                   help="arrival process without a trace (default gamma)")
    g.add_argument("--alpha", metavar="A[:A2]", default=None,
                   help="Gamma shape, or a range for a schedule (default 1)")
    g.add_argument("--beta", metavar="B[:B2]", default=None, help="Gamma scale, seconds, or a range")
    g.add_argument("--rate", metavar="R[:R2]", default=None,
                   help="mean rate, requests/s, or a range (instead of --beta: beta = 1/(alpha*rate))")
    g.add_argument("--schedule", default=None, metavar="SHAPE|A,B|FILE",
                   help=f"how alpha/beta change: one of {', '.join(SHAPES)} for both, 'paper' "
                   "(quadratic alpha, linear beta; the default when a range is given), 'ASHAPE,BSHAPE', "
                   "or a CSV/JSON table with columns at, alpha, beta_s")
    g.add_argument("--change-every", default=DEFAULT_CHANGE_EVERY, metavar="N|Ts",
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


def workload_from_args(args: argparse.Namespace) -> pl.DataFrame:
    """The workload described by the flags of `add_generation_arguments` (read from --workload, or generated)."""
    if args.workload:
        frame = read_workload(args.workload)
        if args.num_requests is not None:
            frame = frame.head(args.num_requests)
        if args.duration is not None:
            frame = frame.filter(pl.col("arrival_s") < args.duration)
        return frame
    sources = [name for name in ("params", "mirror", "replay") if getattr(args, name)]
    if len(sources) > 1:
        raise BurstGPTError(f"choose one of --params, --mirror and --replay, not {' and '.join(sources)}")
    _check_bounds(args)
    streams = seed_streams(args.seed)
    cap = args.max_output_tokens or None
    trace_responses = None
    session = model = service = None
    params: WorkloadParams | None = None

    if args.replay:
        from burstgpt.trace import load_trace

        trace = load_trace(args.replay)
        selection = select_replay(
            trace, args.scale, start_s=args.start_s, end_s=args.end_s, models=args.trace_model,
            services=args.trace_service, skip_quiet_start=args.skip_quiet_start,
        )
        kept = selection.frame
        arrival_s = selection.arrival_s
        limit = arrival_s.size
        if args.duration is not None:
            limit = int(np.searchsorted(arrival_s, args.duration, side="left"))
        if args.num_requests is not None:
            limit = min(limit, args.num_requests)
        kept, arrival_s = kept.head(limit), arrival_s[:limit]
        # Trace rows with 0 request tokens (failed logs) still arrive; they send a 1-token prompt.
        input_tokens = np.maximum(kept["request_tokens"].to_numpy(), 1)
        trace_responses = kept["response_tokens"].to_numpy()
        service, session = kept["service"], kept["session_id"]
        response = _response_spec(args, cap, default="trace",
                                  empirical=lambda: EmpiricalResponses.fit(kept["request_tokens"].to_numpy(),
                                                                           trace_responses))
    else:
        if args.params or args.mirror:
            if args.params:
                params = read_params(args.params)
            else:
                with _status(f"fitting {args.mirror}"):
                    params = _fit_mirror_trace(args)
            arrival_s = _mirrored_arrivals(args, params, streams.arrivals)
        else:
            arrival_s = _explicit_arrivals(args, streams.arrivals)
        zipf = ZipfLengths(
            args.zipf_theta if args.zipf_theta is not None else params.zipf.theta if params else DEFAULT_THETA,
            _pick(args.min_input_tokens, params.zipf.min_tokens if params else None, DEFAULT_MIN_INPUT),
            _pick(args.max_input_tokens, params.zipf.max_tokens if params else None, DEFAULT_MAX_INPUT),
        )
        input_tokens = zipf.sample(arrival_s.size, streams.lengths)

        def empirical():
            if params is None or params.responses is None:
                raise BurstGPTError("--response empirical needs --params, --mirror or --replay")
            return params.responses

        response = _response_spec(args, cap, default="model", empirical=empirical)

    output_tokens = response.output_tokens(input_tokens, streams.responses, trace_responses)
    frame = assemble_workload(
        arrival_s, input_tokens, output_tokens=output_tokens, max_output_tokens=cap,
        model=model, service=service, session_id=session,
    )
    if args.prompts:
        with _status(f"building the prompt pool from {args.prompts}"):
            tokenizer = load_tokenizer(args.tokenizer)
            texts = load_prompt_texts(args.prompts, args.prompt_format, args.prompt_field,
                                      synthetic_tokens=int(input_tokens.max()) if input_tokens.size else 1)
            frame, unserved = attach_prompts(frame, texts, tokenizer, streams.prompts, args.prompt_buffer)
        if unserved:
            print(f"burstgpt: warning: {unserved} of {frame.height} requests ask for a length no prompt in "
                  f"{args.prompts} reaches; their prompt is left empty (the client synthesises one)",
                  file=sys.stderr)
    return frame


def _status(message: str):
    """A rich spinner on stderr while slow work runs (tokenising a large prompt set); silent off a terminal."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)


def _pick(*values):
    return next(v for v in values if v is not None)


def _check_bounds(args) -> None:
    if args.num_requests is not None and args.num_requests < 1:
        raise BurstGPTError(f"--num-requests must be positive, got {args.num_requests}")
    if args.duration is not None and not args.duration > 0:
        raise BurstGPTError(f"--duration must be positive, got {args.duration}")


def _response_spec(args, cap, *, default: str, empirical) -> ResponseSpec:
    mode = args.response or default
    return ResponseSpec(
        mode=mode, max_output_tokens=cap, fixed_tokens=args.output_tokens,
        empirical=empirical() if mode == "empirical" else None,
    )


def _fit_mirror_trace(args) -> WorkloadParams:
    from burstgpt.trace import load_trace

    trace = load_trace(args.mirror)
    trace = _filter_trace(trace, args.trace_model, args.trace_service)
    return fit_workload_params(trace, window_s=args.fit_window_s,
                               filters={"models": args.trace_model, "services": args.trace_service})


def _filter_trace(trace: Trace, models, services) -> Trace:
    frame = filter_trace_rows(trace.frame, models=models, services=services)
    if frame.height == 0:
        raise BurstGPTError(f"{trace.source}: no rows of the chosen model/service")
    return dataclasses.replace(trace, frame=frame)


def _mirrored_arrivals(args, params: WorkloadParams, rng: np.random.Generator) -> np.ndarray:
    if not args.time_scale > 0:
        raise BurstGPTError(f"--time-scale must be positive, got {args.time_scale}")
    target = args.target_rate if args.target_rate is not None else params.mean_rate_rps * args.time_scale
    schedule = mirror_schedule(
        params.windows, target, time_compression=args.time_scale, fallback_alpha=params.overall_alpha
    )
    duration = args.duration
    if duration is None and args.num_requests is None:
        duration = schedule.end  # one pass over the trace's windows
    elif duration is not None and duration < 0.9 * schedule.end:
        # The target is the mean over the whole mirrored trace; a slice of it keeps that slice's own rate.
        print(f"note: --duration {duration:g} s covers {100 * duration / schedule.end:.0f}% of the mirrored trace "
              f"({schedule.end:.0f} s at --time-scale {args.time_scale:g}); --target-rate {target:.4g} req/s is "
              "the mean over the whole trace, so this slice keeps its own, different rate", file=sys.stderr)
    return scheduled_arrivals(schedule, rng, num_requests=args.num_requests, duration_s=duration)


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


def _explicit_arrivals(args, rng: np.random.Generator) -> np.ndarray:
    if args.num_requests is None and args.duration is None:
        raise BurstGPTError("give --duration or --num-requests (or --params / --mirror / --replay)")
    alpha = _parse_range(args.alpha, "--alpha")
    beta = _parse_range(args.beta, "--beta")
    rate = _parse_range(args.rate, "--rate")
    if beta and rate:
        raise BurstGPTError("give --beta or --rate, not both")
    if args.arrival == "constant":
        if rate is None or rate[0] != rate[1]:
            raise BurstGPTError("--arrival constant needs a single --rate")
        n = args.num_requests if args.num_requests is not None else int(math.ceil(args.duration * rate[0]))
        arrivals = constant_arrivals(n, rate[0])
        return arrivals if args.duration is None else arrivals[arrivals < args.duration]
    if args.arrival == "poisson":
        if alpha and alpha != (1.0, 1.0):
            raise BurstGPTError("--arrival poisson fixes alpha = 1; drop --alpha or use --arrival gamma")
        alpha = (1.0, 1.0)
    alpha = alpha or (1.0, 1.0)
    step, unit = _parse_change_every(args.change_every)
    if _is_table(args.schedule):
        schedule = schedule_from_table(_read_schedule_table(Path(args.schedule)), unit)
    elif beta is None and rate is None:
        raise BurstGPTError("give --beta (Gamma scale, seconds) or --rate (requests/s)")
    else:
        schedule = _build_schedule(args, alpha, beta, rate, step, unit)
    return scheduled_arrivals(schedule, rng, num_requests=args.num_requests, duration_s=args.duration)


def _build_schedule(args, alpha, beta, rate, step: float, unit: str) -> ParamSchedule:
    spec = args.schedule
    ranged = alpha[0] != alpha[1] or (beta or rate)[0] != (beta or rate)[1]
    if spec is None:
        spec = "paper" if ranged else "constant"
    shapes = ("quadratic", "linear") if spec == "paper" else tuple(spec.split(",")) if "," in spec else (spec, spec)
    if len(shapes) != 2 or any(s not in SHAPES for s in shapes):
        raise BurstGPTError(f"--schedule: unknown shape {spec!r}; use {', '.join(SHAPES)}, paper, A,B or a file")
    if args.schedule_steps is not None:
        steps = args.schedule_steps
    elif unit == "requests" and args.num_requests is not None:
        steps = math.ceil(args.num_requests / step)
    elif unit == "seconds" and args.duration is not None:
        steps = math.ceil(args.duration / step)
    else:
        steps = 10
    if steps < 1:
        raise BurstGPTError(f"--schedule-steps must be positive, got {steps}")
    alpha_values = shape_values(shapes[0], alpha[0], alpha[1], steps)
    if beta is not None:
        beta_values = shape_values(shapes[1], beta[0], beta[1], steps)
    else:  # the rate follows the beta shape; beta = mean gap / alpha
        beta_values = 1.0 / (alpha_values * shape_values(shapes[1], rate[0], rate[1], steps))
    if np.any(alpha_values <= 0) or np.any(beta_values <= 0):
        raise BurstGPTError("the schedule reaches a non-positive alpha or beta")
    return ParamSchedule.regular(alpha_values, beta_values, step, unit)


def _is_table(spec: str | None) -> bool:
    return bool(spec) and (Path(spec).suffix in (".csv", ".json") or Path(spec).exists())


def _read_schedule_table(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise InputError(path, "no such schedule table")
    try:
        if path.suffix == ".json":
            frame = pl.read_json(path)
        else:
            frame = pl.read_csv(path)
    except Exception as exc:  # polars raises several error types
        raise InputError(path, f"cannot read schedule table: {str(exc).splitlines()[0]}") from None
    try:
        return frame.select(pl.col("at", "alpha", "beta_s").cast(pl.Float64, strict=True))
    except pl.exceptions.PolarsError as exc:
        raise InputError(path, f"schedule table needs numeric columns at, alpha, beta_s: "
                               f"{str(exc).splitlines()[0]}") from None


# ------------------------------------------------------------------------------------------------- handlers


def _cmd_fit(args) -> int:
    from burstgpt.trace import load_trace

    trace = _filter_trace(load_trace(args.trace), args.trace_model, args.trace_service)
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
    print(f"request tokens: Zipf theta {params.zipf.theta:.3g} on [{params.zipf.min_tokens}, "
          f"{params.zipf.max_tokens}]")
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


def _cmd_inspect(args) -> int:
    from burstgpt.workload.inspect import plot_workload, workload_stats

    frame = read_workload(args.workload_file)
    stats = workload_stats(frame)
    width = max(len(k) for k in stats)
    for key, value in stats.items():
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if not args.no_plots and frame.height:
        out = Path(args.plots) if args.plots else Path(args.workload_file).with_name(
            Path(args.workload_file).stem + "-plots")
        written = plot_workload(frame, out, window_s=args.window_s)
        for path in written:
            print(f"wrote {path}")
    return 0
