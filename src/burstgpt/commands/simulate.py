"""`burstgpt simulate`: run a workload through the simulated engine offline and write a run directory.

Also home of the engine flags shared with `serve-sim` (`add_engine_arguments`, `engine_setup_from_args`).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.outputs import atomic_path
from burstgpt.sim.hardware import GPU_PRESETS, MODEL_PRESETS, parse_linear_coefficients
from burstgpt.sim.output_lengths import DEFAULT_OUTPUT_LENGTH_SPEC, parse_output_length_model
from burstgpt.sim.simulate import (
    EngineSetup,
    build_engine_setup,
    server_metrics_from_steps,
    simulate_workload,
)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Engine, hardware and latency flags (one argument group)."""
    g = parser.add_argument_group("simulated engine")
    g.add_argument("--gpu", default="A800-80GB", help=f"GPU preset: {', '.join(GPU_PRESETS)} (default A800-80GB)")
    g.add_argument("--model", default="Llama-2-13B-chat",
                   help=f"model preset: {', '.join(MODEL_PRESETS)} (default Llama-2-13B-chat)")
    g.add_argument("--num-gpu-blocks", type=int, default=None,
                   help="KV-cache blocks, like vLLM's --num-gpu-blocks-override (default: from GPU memory)")
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV block (default 16)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="fraction of GPU memory for weights, activations and KV cache (default 0.9)")
    g.add_argument("--max-num-seqs", type=int, default=256, help="most requests in a batch (default 256)")
    g.add_argument("--max-num-batched-tokens", type=int, default=2048,
                   help="token budget per step, chunked prefill (default 2048)")
    g.add_argument("--max-model-len", type=int, default=None, help="context length, tokens (default: the model's)")
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


def engine_setup_from_args(args: argparse.Namespace) -> EngineSetup:
    """The engine set-up the flags of `add_engine_arguments` describe."""
    for name in ("num_gpu_blocks", "block_size", "max_num_seqs", "max_num_batched_tokens", "max_model_len"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise BurstGPTError(f"--{name.replace('_', '-')} must be positive")
    if args.timeout < 0:
        raise BurstGPTError("--timeout must not be negative")
    return build_engine_setup(
        gpu=args.gpu, model=args.model, num_blocks=args.num_gpu_blocks, block_size=args.block_size,
        gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
        timeout_s=args.timeout or None, max_queue=args.max_queue,
        latency=parse_linear_coefficients(args.latency_coefficients) if args.latency_coefficients else None,
        compute_efficiency=args.compute_efficiency, memory_efficiency=args.memory_efficiency,
        step_overhead_s=args.step_overhead,
    )


def engine_config_json(setup: EngineSetup, args: argparse.Namespace) -> dict:
    """The engine part of a run's config.json."""
    config = setup.config
    return {
        "gpu": setup.gpu_name, "model": setup.model_name, "num_gpu_blocks": config.num_gpu_blocks,
        "block_size": config.block_size, "max_num_seqs": config.max_num_seqs,
        "max_num_batched_tokens": config.max_num_batched_tokens, "max_model_len": config.max_model_len,
        "timeout_s": config.timeout_s, "max_queue": config.max_queue,
        "latency": type(setup.latency).__name__,
        "latency_coefficients": args.latency_coefficients,
        "compute_efficiency": args.compute_efficiency, "memory_efficiency": args.memory_efficiency,
        "step_overhead_s": args.step_overhead, "output_lengths": args.output_lengths,
    }


def register(subparsers) -> None:
    from burstgpt.commands.workload import add_generation_arguments

    parser = subparsers.add_parser(
        "simulate",
        help="simulate a vLLM-like engine on a workload, offline",
        description="Run a workload (a file, or generated from the flags) through one simulated vLLM-like engine "
        "replica and write a run directory like `bench` (plus steps.parquet), for `burstgpt report`.",
    )
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="run directory to write")
    add_generation_arguments(parser)
    add_engine_arguments(parser)
    parser.add_argument("--metrics-interval", type=float, default=1.0,
                        help="server_metrics sampling interval, simulated seconds (default 1)")
    parser.add_argument("--window", type=float, default=10.0, help="instantaneous-metric window, seconds (10)")
    parser.add_argument("--no-jump", action="store_true",
                        help="take every decode step singly (slow; same results, for checking)")
    parser.set_defaults(func=run_simulate)


def downsample_server_metrics(steps: pl.DataFrame, num_gpu_blocks: int, interval_s: float) -> pl.DataFrame:
    """Server metrics at most once per `interval_s` of simulated time, as a scrape would see them: the values at
    the end of the interval's last step, plus `kv_cache_usage_peak` (the interval's highest KV usage, 0-1)."""
    if interval_s <= 0:
        raise BurstGPTError("--metrics-interval must be positive")
    end_s = steps["time_s"].to_numpy() + steps["duration_s"].to_numpy()  # as `server_metrics_from_steps`
    bucket = np.floor(end_s / interval_s)
    if steps.height and np.all(bucket[1:] >= bucket[:-1]):
        # Step ends do not go back (the usual case): each interval is one contiguous block of rows, and its values
        # are taken from its last row (the counters as per-interval sums, accumulated), without a per-step table.
        first_rows = np.flatnonzero(np.concatenate([[True], bucket[1:] != bucket[:-1]]))
        last_rows = np.append(first_rows[1:] - 1, steps.height - 1)
        kv_blocks = steps["kv_blocks_used"].to_numpy()

        def total(name: str) -> np.ndarray:
            return np.cumsum(np.add.reduceat(steps[name].to_numpy(), first_rows, dtype=np.int64))

        # Usage fractions divided by Polars, as `server_metrics_from_steps` (the max commutes with the division).
        return pl.DataFrame({
            "time_s": end_s[last_rows],
            "kv_cache_usage_perc": pl.Series(kv_blocks[last_rows]) / num_gpu_blocks,
            "num_requests_running": steps["num_running"].to_numpy()[last_rows].astype(np.int64),
            "num_requests_waiting": steps["num_waiting"].to_numpy()[last_rows].astype(np.int64),
            "num_preemptions_total": total("preemptions"),
            "prompt_tokens_total": total("prompt_tokens"),
            "generation_tokens_total": total("generated_tokens"),
            "kv_cache_usage_peak": pl.Series(np.maximum.reduceat(kv_blocks, first_rows)) / num_gpu_blocks,
        })
    per_step = server_metrics_from_steps(steps, num_gpu_blocks)
    return (
        per_step.with_columns(pl.Series("_bucket", bucket))
        .group_by("_bucket", maintain_order=True)
        .agg(
            *[pl.col(name).last() for name in per_step.columns],
            pl.col("kv_cache_usage_perc").max().alias("kv_cache_usage_peak"),
        )
        .drop("_bucket")
    )


def run_simulate(args: argparse.Namespace) -> int:
    from burstgpt.commands.workload import workload_from_args
    from burstgpt.report.rundir import write_run_directory

    setup = engine_setup_from_args(args)
    output_model = parse_output_length_model(args.output_lengths)
    workload = workload_from_args(args)
    if workload.height == 0:
        raise BurstGPTError("the workload has no requests")
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
    server_metrics = downsample_server_metrics(result.steps, setup.config.num_gpu_blocks, args.metrics_interval)
    config = {
        "kind": "simulate",
        "workload": str(Path(args.workload).resolve()) if args.workload else None,
        "num_requests": workload.height,
        "seed": args.seed,
        **engine_config_json(setup, args),
    }
    # steps.parquet can hold tens of millions of rows (about 40 per request): it is written on a second thread
    # (Polars releases the GIL) while the rest of the run directory is, and with LZ4, which writes it about twice
    # as fast as zstd (the run directory's default) for a file about 1.5x larger.
    with ThreadPoolExecutor(max_workers=1) as pool:
        steps_written = pool.submit(_write_steps, result.steps, Path(args.out) / "steps.parquet")
        write_run_directory(
            args.out, result.records, config=config, server_metrics=server_metrics, window_s=args.window,
            run_info={"simulated": True, "steps": result.steps.height, "wall_s": round(wall_s, 3)},
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
