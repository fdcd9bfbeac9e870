"""`burstgpt simulate`: run a workload through the simulated engine offline and write a run directory.

Also home of the engine flags shared with `serve-sim` (`add_engine_arguments`, `engine_spec_from_args`,
`engine_setup_from_args`).
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

from burstgpt.errors import BurstGPTError
from burstgpt.outputs import atomic_path
from burstgpt.sim.hardware import GPU_PRESETS, MODEL_PRESETS
from burstgpt.sim.output_lengths import DEFAULT_OUTPUT_LENGTH_SPEC, parse_output_length_model
from burstgpt.sim.simulate import (
    EngineSetup,
    EngineSpec,
    build_engine_setup,
    simulate_workload,
)
from burstgpt.sim.step_log import STEP_MODES, check_interval


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Engine, hardware and latency flags (one argument group)."""
    g = parser.add_argument_group("simulated engine")
    g.add_argument("--gpu", default="A800-80GB",
                   help=f"GPU preset (or an unambiguous prefix, any case): {', '.join(GPU_PRESETS)} "
                   "(default A800-80GB)")
    g.add_argument("--model", default="Llama-2-13B-chat",
                   help=f"model preset (or an unambiguous prefix, any case): {', '.join(MODEL_PRESETS)} "
                   "(default Llama-2-13B-chat)")
    g.add_argument("--num-gpu-blocks", type=int, default=None,
                   help="KV-cache blocks, like vLLM's --num-gpu-blocks-override (default: from GPU memory)")
    g.add_argument("--block-size", type=int, default=None,
                   help="tokens per KV block (default: vLLM's, 16 on a GPU, 128 on the CPU preset)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="fraction of GPU memory for weights, activations and KV cache (default 0.9)")
    g.add_argument("--max-num-seqs", type=int, default=None,
                   help="most requests in a batch (default: vLLM's API-server default for the GPU, e.g. 1024 on "
                   "an 80 GB A800/H100, 256 on an A100 or smaller GPU, 128 on CPU)")
    g.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="token budget per step, chunked prefill (default: vLLM's for the GPU, e.g. 8192 on an "
                   "80 GB A800/H100, 2048 on an A100 or smaller GPU and on CPU)")
    g.add_argument("--max-model-len", type=int, default=None,
                   help="context length, tokens: prompt + output never exceed it (default: the model preset's)")
    g.add_argument("--timeout", type=float, default=30.0,
                   help="client timeout, seconds: a client gives up on an unfinished request (its record fails "
                   "with `timeout`) and the engine aborts it --abort-delay later (default 30; 0 = none; "
                   "serve-sim has no timeout of its own: it aborts a request when its client disconnects)")
    g.add_argument("--abort-delay", type=float, default=0.0,
                   help="seconds between a client giving up and the engine aborting its request (default 0)")
    g.add_argument("--no-prefix-caching", action="store_true",
                   help="turn vLLM's automatic prefix caching off (on by default, as in vLLM V1)")
    g.add_argument("--max-queue", type=int, default=None,
                   help="reject arrivals when this many wait (default: no limit)")
    g.add_argument("--latency-coefficients", metavar="BASE,PREFILL,DECODE[,KV]", default=None,
                   help="linear step-time model in seconds instead of the roofline")
    g.add_argument("--latency-model", metavar="FILE", default=None,
                   help="step-time model file from `burstgpt profile` / `calibrate`; the engine settings it "
                   "carries (KV blocks, block size, ...) apply unless given as flags")
    g.add_argument("--frontend-delay", type=float, default=None, metavar="S",
                   help="simulate: seconds the server's API frontend adds to every request's TTFT and end-to-end "
                   "latency (HTTP, tokenisation), beside the engine's steps (default: the --latency-model "
                   "file's, measured by `profile`, else 0; serve-sim has real HTTP and ignores it)")
    g.add_argument("--compute-efficiency", type=float, default=0.6, help="roofline: fraction of peak FLOP/s (0.6)")
    g.add_argument("--memory-efficiency", type=float, default=0.8, help="roofline: fraction of bandwidth (0.8)")
    g.add_argument("--step-overhead", type=float, default=0.003, help="roofline: fixed seconds per step (0.003)")
    g.add_argument("--output-lengths", default=DEFAULT_OUTPUT_LENGTH_SPEC, metavar="SPEC",
                   help="output lengths where the workload leaves them to the model: lognormal:MEDIAN,SIGMA, "
                   f"exponential:MEAN, uniform:LOW,HIGH or fixed:N (default {DEFAULT_OUTPUT_LENGTH_SPEC})")


def engine_spec_from_args(args: argparse.Namespace) -> EngineSpec:
    """The `EngineSpec` the flags of `add_engine_arguments` describe."""
    if args.timeout < 0:
        raise BurstGPTError("--timeout must not be negative")
    from burstgpt.commands.profile import engine_fields_with_latency_model

    return EngineSpec(
        gpu=args.gpu, model=args.model,
        gpu_memory_utilization=args.gpu_memory_utilization,
        timeout_s=args.timeout or None, max_queue=args.max_queue,
        enable_prefix_caching=not args.no_prefix_caching, abort_delay_s=args.abort_delay,
        compute_efficiency=args.compute_efficiency, memory_efficiency=args.memory_efficiency,
        step_overhead_s=args.step_overhead,
        # Block count and size, batch limits, context given; the latency model (--latency-coefficients, or
        # --latency-model FILE with the engine settings it carries).
        **engine_fields_with_latency_model(args),
    )


def engine_setup_from_args(args: argparse.Namespace) -> EngineSetup:
    """The engine set-up the flags describe."""
    return build_engine_setup(engine_spec_from_args(args))


def print_engine_settings(setup: EngineSetup, args: argparse.Namespace) -> None:
    """Say (stderr) which presets a name or prefix chose and the engine settings in use."""
    for flag, asked, chosen in (("--gpu", args.gpu, setup.gpu_name), ("--model", args.model, setup.model_name)):
        if asked != chosen:
            print(f"{flag} {asked}: using preset {chosen}", file=sys.stderr)
    print(setup.describe(), file=sys.stderr, flush=True)


def register(subparsers) -> None:
    from burstgpt.commands.workload import add_generation_arguments

    parser = subparsers.add_parser(
        "simulate",
        help="simulate a vLLM-like engine on a workload, offline",
        description="Run a workload (a file, or generated from the flags) through one simulated vLLM-like engine "
        "replica and write a run directory like `bench` (plus steps.parquet), for `burstgpt report`.",
    )
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="run directory to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in a non-empty --out (default: refuse it)")
    add_generation_arguments(parser)
    add_engine_arguments(parser)
    parser.add_argument("--metrics-interval", type=float, default=1.0,
                        help="server_metrics.csv: one row per interval of this many simulated seconds (default 1)")
    parser.add_argument("--steps", choices=STEP_MODES, default="sampled",
                        help="steps.parquet: every engine step (all: tens of millions of rows for a million "
                        "requests), the last step of each metrics interval plus every step with requests queued "
                        "or a preemption (sampled, the default), or no file (none)")
    parser.add_argument("--window", type=float, default=10.0, help="instantaneous-metric window, seconds (10)")
    parser.add_argument("--no-jump", action="store_true",
                        help="take every decode step singly (slow; same results, for checking)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes to simulate with: parts of the workload that start where the engine is "
                        "idle run in parallel, with the same results (default: one per CPU, up to 4, for 100,000 "
                        "requests or more; 1 = one process)")
    parser.add_argument("--quiet", action="store_true",
                        help="no live view (on a terminal: simulated time, requests, batch, queue, KV usage, "
                        "preemptions; otherwise a plain line every 5 s)")
    parser.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    from burstgpt.commands.workload import workload_from_args
    from burstgpt.records import prepare_run_directory
    from burstgpt.records.rundir import STEPS_FILE
    from burstgpt.report.rundir import write_run_directory

    check_interval(args.metrics_interval)
    if args.workers is not None and args.workers < 1:
        raise BurstGPTError(f"--workers must be at least 1, got {args.workers}")
    setup = engine_setup_from_args(args)
    output_model = parse_output_length_model(args.output_lengths)
    workload = workload_from_args(args)
    if workload.height == 0:
        raise BurstGPTError("the workload has no requests")
    print_engine_settings(setup, args)
    # As for bench: a non-empty --out is refused unless --overwrite, and then the old summary goes first, so
    # an interrupted run never leaves the directory looking complete.
    prepare_run_directory(args.out, overwrite=args.overwrite)
    from burstgpt.sim.progress import SimulationProgress

    progress = SimulationProgress(enabled=not args.quiet)
    started = time.perf_counter()
    try:
        result = simulate_workload(
            workload, setup, output_lengths=output_model, seed=args.seed, jump=not args.no_jump,
            progress=progress, steps=args.steps, metrics_interval_s=args.metrics_interval, workers=args.workers,
        )
    finally:
        progress.close()
    wall_s = time.perf_counter() - started
    num_requests = workload.height
    del workload  # the records carry what the run directory needs from it: free it before writing
    _return_freed_memory()
    config = {
        "producer": "simulate",
        "workload": str(Path(args.workload).resolve()) if args.workload else None,
        "num_requests": num_requests,
        "seed": args.seed,
        **setup.to_dict(),
        "output_lengths": args.output_lengths,
        "metrics_interval_s": args.metrics_interval,
        "steps": args.steps,
    }
    # steps.parquet goes first, so summary.json (written last) lists it. With --steps all it can hold tens of
    # millions of rows (about 40 per request): it is expanded a chunk at a time as it is written (never whole in
    # memory) and with LZ4, which writes it about twice as fast as zstd for a file about 1.5x larger.
    if args.steps != "none":
        with atomic_path(Path(args.out) / STEPS_FILE) as tmp:
            result.scan_steps().sink_parquet(tmp, compression="lz4")
    write_run_directory(
        args.out, result.records, config=config, server_metrics=result.server_metrics, window_s=args.window,
        run_info={"simulated": True, "steps": result.num_steps, "wall_s": round(wall_s, 3)},
        producer="simulate",
    )
    ok = int((result.records["status"] == "ok").sum())
    print(
        f"simulated {num_requests} requests ({ok} ok) in {result.num_steps} engine steps, "
        f"{wall_s:.1f} s wall; run directory: {args.out}",
        file=sys.stderr,
    )
    return 0


def _return_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's `malloc_trim`; nothing elsewhere). glibc keeps
    what the engine and the step digest freed (about 0.4 GB for a million requests), which the run directory's
    tables (allocated by Polars, not from that heap) would otherwise be written on top of."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc
