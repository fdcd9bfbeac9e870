"""Offline simulation of a workload table: engine set-up from presets, request records and step tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.records import STATUS_FAILED, STATUS_OK, conform_request_records
from burstgpt.sim.engine import DONE, INVALID, REJECTED, TIMED_OUT, EngineConfig, ServingEngine
from burstgpt.sim.hardware import (
    LinearLatency,
    RooflineLatency,
    gpu_preset,
    model_preset,
    num_gpu_blocks,
)
from burstgpt.sim.output_lengths import (
    DEFAULT_OUTPUT_LENGTH_SPEC,
    OutputLengthModel,
    parse_output_length_model,
    resolve_output_lengths,
)

#: Columns of `server_metrics` (one row per engine step, cumulative counters), named after vLLM's metrics.
SERVER_METRIC_COLUMNS = (
    "time_s",  # step end, seconds since the run's start
    "kv_cache_usage_perc",  # KV blocks used / blocks, 0-1
    "num_requests_running",
    "num_requests_waiting",
    "num_preemptions_total",
    "prompt_tokens_total",
    "generation_tokens_total",
)


@dataclass(frozen=True)
class EngineSetup:
    """What `build_engine_setup` resolved: the engine limits, the step-time model and the served model name."""

    config: EngineConfig
    latency: RooflineLatency | LinearLatency
    model_name: str
    gpu_name: str


def build_engine_setup(
    *,
    gpu: str = "A800-80GB",
    model: str = "Llama-2-13B-chat",
    num_blocks: int | None = None,
    block_size: int = 16,
    gpu_memory_utilization: float = 0.9,
    max_num_seqs: int = 256,
    max_num_batched_tokens: int = 2048,
    max_model_len: int | None = None,
    timeout_s: float | None = 30.0,
    max_queue: int | None = None,
    latency: LinearLatency | None = None,
    compute_efficiency: float = 0.6,
    memory_efficiency: float = 0.8,
    step_overhead_s: float = 0.003,
) -> EngineSetup:
    """Engine limits and latency model from the GPU and model presets (or `num_blocks` / `latency` given directly)."""
    gpu_spec = gpu_preset(gpu)
    model_spec = model_preset(model)
    if not 0 < gpu_memory_utilization <= 1:
        raise BurstGPTError("--gpu-memory-utilization must be in (0, 1]")
    blocks = num_blocks if num_blocks is not None else num_gpu_blocks(
        gpu_spec, model_spec, block_size=block_size, gpu_memory_utilization=gpu_memory_utilization
    )
    config = EngineConfig(
        num_gpu_blocks=blocks,
        block_size=block_size,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len or model_spec.max_model_len,
        timeout_s=timeout_s,
        max_queue=max_queue,
    )
    config.check()
    step_model = latency or RooflineLatency(
        gpu_spec, model_spec, compute_efficiency=compute_efficiency, memory_efficiency=memory_efficiency,
        overhead_s=step_overhead_s,
    )
    return EngineSetup(config, step_model, model_spec.name, gpu_spec.name)


@dataclass
class SimulationResult:
    """`records`: per-request records (`burstgpt.records` schema), one row per workload row, in its order;
    `steps`: one row per engine step (`burstgpt.sim.engine.STEP_COLUMNS`); `num_gpu_blocks`: the KV cache size."""

    records: pl.DataFrame
    steps: pl.DataFrame
    num_gpu_blocks: int


def simulate_workload(
    workload: pl.DataFrame,
    setup: EngineSetup,
    *,
    output_lengths: OutputLengthModel | str = DEFAULT_OUTPUT_LENGTH_SPEC,
    seed: int = 0,
    jump: bool = True,
    progress=None,
) -> SimulationResult:
    """Run `workload` (a conformed workload table, sorted by arrival) through one simulated engine."""
    if isinstance(output_lengths, str):
        output_lengths = parse_output_length_model(output_lengths)
    config = setup.config
    lengths = resolve_output_lengths(workload, output_lengths, max_model_len=config.max_model_len, seed=seed)
    engine = ServingEngine(config, setup.latency)
    engine.submit(workload["arrival_s"].to_numpy(), workload["input_tokens"].to_numpy(), lengths)
    engine.run(jump=jump, progress=progress)
    records = engine_records(engine, workload, setup.model_name)
    return SimulationResult(records, engine.steps.frame(), config.num_gpu_blocks)


def engine_records(engine: ServingEngine, workload: pl.DataFrame, model_name: str) -> pl.DataFrame:
    """Per-request records for every request submitted to `engine` (rows of `workload`, in order)."""
    count = workload.height
    columns = engine.columns(count)
    state = pl.Series("_state", columns["state"])
    config = engine.config
    # Status columns from the request states, mapped in Polars (NumPy string arrays of a million rows are slow).
    error_class = {TIMED_OUT: "timeout", REJECTED: "rejected", INVALID: "http_4xx"}
    message = {
        TIMED_OUT: f"aborted by the server timeout ({config.timeout_s} s)",
        REJECTED: f"rejected: queue limit {config.max_queue} reached",
        INVALID: f"empty prompt, or not shorter than the context ({config.max_model_len} tokens)",
    }
    arrival = workload["arrival_s"]
    models = workload["model"].fill_null(model_name)
    frame = pl.DataFrame(
        {
            "request_id": workload["request_id"],
            "model": models,
            "service": workload["service"],
            "scheduled_s": arrival,
            "sent_s": arrival,
            "first_scheduled_s": columns["first_scheduled"],
            "first_token_s": columns["first_token"],
            "end_s": columns["end"],
            "input_tokens": workload["input_tokens"],
            "output_tokens": columns["generated"],
            "_state": state,
            "bytes_received": np.zeros(count, np.int64),
            "preemptions": columns["preemptions"],
        },
        nan_to_null=True,
    ).with_columns(
        pl.when(pl.col("_state") == DONE).then(pl.lit(STATUS_OK)).otherwise(pl.lit(STATUS_FAILED)).alias("status"),
        pl.col("_state").replace_strict(error_class, default=None, return_dtype=pl.String).alias("error_class"),
        pl.col("_state").replace_strict(message, default=None, return_dtype=pl.String).alias("error_message"),
        pl.col("_state").replace_strict({DONE: 200, REJECTED: 429, INVALID: 400}, default=None,
                                        return_dtype=pl.Int64).alias("http_status"),
    ).drop("_state")
    return conform_request_records(frame)


def server_metrics_from_steps(steps: pl.DataFrame, num_gpu_blocks: int) -> pl.DataFrame:
    """vLLM-style gauges and counters sampled at each step's end (`SERVER_METRIC_COLUMNS`)."""
    return steps.select(
        (pl.col("time_s") + pl.col("duration_s")).alias("time_s"),
        (pl.col("kv_blocks_used") / num_gpu_blocks).alias("kv_cache_usage_perc"),
        pl.col("num_running").cast(pl.Int64).alias("num_requests_running"),
        pl.col("num_waiting").cast(pl.Int64).alias("num_requests_waiting"),
        pl.col("preemptions").cast(pl.Int64).cum_sum().alias("num_preemptions_total"),
        pl.col("prompt_tokens").cast(pl.Int64).cum_sum().alias("prompt_tokens_total"),
        pl.col("generated_tokens").cast(pl.Int64).cum_sum().alias("generation_tokens_total"),
    )
