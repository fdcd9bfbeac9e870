"""`burstgpt simulate`: run a workload through the simulated engine offline and write a run directory.

Also home of the engine flags shared with `serve-sim` (`add_engine_arguments`, `engine_spec_from_args`,
`engine_setup_from_args`).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.outputs import atomic_path
from burstgpt.sim.hardware import GPU_PRESETS, MODEL_PRESETS
from burstgpt.sim.latency import parse_linear_coefficients
from burstgpt.sim.output_lengths import DEFAULT_OUTPUT_LENGTH_SPEC, parse_output_length_model
from burstgpt.sim.simulate import (
    EngineSetup,
    EngineSpec,
    build_engine_setup,
    server_metrics_from_steps,
    simulate_workload,
)


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
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV block (default 16)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="fraction of GPU memory for weights, activations and KV cache (default 0.9)")
    g.add_argument("--max-num-seqs", type=int, default=256, help="most requests in a batch (default 256)")
    g.add_argument("--max-num-batched-tokens", type=int, default=2048,
                   help="token budget per step, chunked prefill (default 2048)")
    g.add_argument("--max-model-len", type=int, default=None,
                   help="context length, tokens: prompt + output never exceed it (default: the model preset's)")
    g.add_argument("--timeout", type=float, default=30.0,
                   help="server timeout, seconds: unfinished requests are aborted (default 30; 0 = none)")
    g.add_argument("--max-queue", type=int, default=None,
                   help="reject arrivals when this many wait (default: no limit)")
    g.add_argument("--latency-coefficients", metavar="BASE,PREFILL,DECODE[,KV]", default=None,
                   help="linear step-time model in seconds instead of the roofline")
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
    return EngineSpec(
        gpu=args.gpu, model=args.model, num_gpu_blocks=args.num_gpu_blocks, block_size=args.block_size,
        gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
        timeout_s=args.timeout or None, max_queue=args.max_queue,
        latency=parse_linear_coefficients(args.latency_coefficients) if args.latency_coefficients else None,
        compute_efficiency=args.compute_efficiency, memory_efficiency=args.memory_efficiency,
        step_overhead_s=args.step_overhead,
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
                        help="server_metrics sampling interval, simulated seconds (default 1)")
    parser.add_argument("--window", type=float, default=10.0, help="instantaneous-metric window, seconds (10)")
    parser.add_argument("--no-jump", action="store_true",
                        help="take every decode step singly (slow; same results, for checking)")
    parser.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    from burstgpt.commands.workload import workload_from_args
    from burstgpt.records import prepare_run_directory
    from burstgpt.records.rundir import STEPS_FILE
    from burstgpt.report.rundir import write_run_directory

    if not args.metrics_interval > 0:
        raise BurstGPTError(f"--metrics-interval must be positive, got {args.metrics_interval}")
    setup = engine_setup_from_args(args)
    output_model = parse_output_length_model(args.output_lengths)
    workload = workload_from_args(args)
    if workload.height == 0:
        raise BurstGPTError("the workload has no requests")
    print_engine_settings(setup, args)
    # As for bench: a non-empty --out is refused unless --overwrite, and then the old summary goes first, so
    # an interrupted run never leaves the directory looking complete.
    prepare_run_directory(args.out, overwrite=args.overwrite)
    progress = _progress_bar(workload.height)
    started = time.perf_counter()
    try:
        result = simulate_workload(
            workload, setup, output_lengths=output_model, seed=args.seed, jump=not args.no_jump,
            progress=progress.update if progress else None,
        )
    finally:
        if progress:
            progress.close()
    wall_s = time.perf_counter() - started
    server_metrics = server_metrics_from_steps(result.steps, setup.config.num_gpu_blocks, args.metrics_interval)
    config = {
        "producer": "simulate",
        "workload": str(Path(args.workload).resolve()) if args.workload else None,
        "num_requests": workload.height,
        "seed": args.seed,
        **setup.to_dict(),
        "output_lengths": args.output_lengths,
    }
    # steps.parquet can hold tens of millions of rows (about 40 per request): it is written on a second thread
    # (Polars releases the GIL) while the rest of the run directory is, and with LZ4, which writes it about twice
    # as fast as zstd (the run directory's default) for a file about 1.5x larger.
    with ThreadPoolExecutor(max_workers=1) as pool:
        steps_written = pool.submit(_write_steps, result.steps, Path(args.out) / STEPS_FILE)
        write_run_directory(
            args.out, result.records, config=config, server_metrics=server_metrics, window_s=args.window,
            run_info={"simulated": True, "steps": result.steps.height, "wall_s": round(wall_s, 3)},
            producer="simulate",
        )
        steps_written.result()
    ok = int((result.records["status"] == "ok").sum())
    print(
        f"simulated {workload.height} requests ({ok} ok) in {result.steps.height} engine steps, "
        f"{wall_s:.1f} s wall; run directory: {args.out}",
        file=sys.stderr,
    )
    return 0


def _write_steps(steps: pl.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        steps.write_parquet(tmp, compression="lz4")


class _Progress:
    """A rich progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                  TimeElapsedColumn(), transient=True)
        self._task = self._progress.add_task("simulate", total=total)
        self._progress.start()

    def update(self, absorbed: int) -> None:
        self._progress.update(self._task, completed=absorbed)

    def close(self) -> None:
        self._progress.stop()


def _progress_bar(total: int) -> _Progress | None:
    return _Progress(total) if sys.stderr.isatty() else None
