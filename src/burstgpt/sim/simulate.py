"""Offline simulation of a workload table: engine set-up from presets, request records and step tables."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.records import STATUS_FAILED, STATUS_OK, conform_request_records, conform_server_metrics
from burstgpt.sim.engine import DONE, INVALID, REJECTED, TIMED_OUT, EngineConfig, ServingEngine
from burstgpt.sim.hardware import gpu_preset, model_preset, num_gpu_blocks
from burstgpt.sim.latency import LatencyModel, RooflineLatency, latency_from_dict
from burstgpt.sim.output_lengths import (
    DEFAULT_OUTPUT_LENGTH_SPEC,
    OutputLengthModel,
    parse_output_length_model,
    resolve_output_lengths,
)
from burstgpt.workload.schema import validate_workload


@dataclass(frozen=True)
class EngineSpec:
    """What to simulate: hardware and model presets (names, or unambiguous case-insensitive prefixes), the
    engine's limits (vLLM's flags of the same names; lengths in tokens, times in seconds) and the step-time model.

    `num_gpu_blocks` None: from GPU memory (`burstgpt.sim.hardware.num_gpu_blocks`); `max_model_len` None: the
    model preset's context; `timeout_s` None: no server timeout; `max_queue` None: no queue limit; `latency`
    None: the roofline of `gpu` x `model` with the three roofline factors below, else a
    `burstgpt.sim.latency.LatencyModel` or its JSON dict (`{"kind": "linear", ...}`)."""

    gpu: str = "A800-80GB"
    model: str = "Llama-2-13B-chat"
    num_gpu_blocks: int | None = None
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None
    timeout_s: float | None = 30.0
    max_queue: int | None = None
    latency: LatencyModel | dict | None = None
    compute_efficiency: float = 0.6
    memory_efficiency: float = 0.8
    step_overhead_s: float = 0.003

    def check(self) -> None:
        """Raise `BurstGPTError` (naming the CLI flag) for a value out of range."""
        for name in ("num_gpu_blocks", "block_size", "max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise BurstGPTError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise BurstGPTError("--gpu-memory-utilization must be in (0, 1]")
        if self.timeout_s is not None and not (self.timeout_s > 0 and np.isfinite(self.timeout_s)):
            raise BurstGPTError(f"--timeout must be a positive number of seconds, got {self.timeout_s}")
        if self.max_queue is not None and self.max_queue < 0:
            raise BurstGPTError("--max-queue must not be negative")


@dataclass(frozen=True)
class EngineSetup:
    """What `build_engine_setup` resolved: the engine limits, the step-time model and the preset names."""

    config: EngineConfig
    latency: LatencyModel
    model_name: str
    gpu_name: str

    def describe(self) -> str:
        """The engine settings in one line (printed by `simulate` and `serve-sim` at start)."""
        config = self.config
        timeout = f"{config.timeout_s:g} s" if config.timeout_s is not None else "none"
        queue = config.max_queue if config.max_queue is not None else "unlimited"
        return (f"engine: {self.gpu_name} x {self.model_name}; {config.num_gpu_blocks} KV blocks x "
                f"{config.block_size} tokens; max_num_seqs {config.max_num_seqs}; max_num_batched_tokens "
                f"{config.max_num_batched_tokens}; max_model_len {config.max_model_len}; timeout {timeout}; "
                f"queue limit {queue}; latency {self.latency.describe()}")

    def to_dict(self) -> dict:
        """The settings as JSON (a run's config.json); `latency` in its `to_dict` form."""
        return {"gpu": self.gpu_name, "model": self.model_name, **dataclasses.asdict(self.config),
                "latency": self.latency.to_dict()}


def build_engine_setup(spec: EngineSpec | None = None, /, **changes) -> EngineSetup:
    """Engine limits and latency model for `spec` (default `EngineSpec()`), with `changes` to its fields, e.g.
    `build_engine_setup(gpu="H100", num_gpu_blocks=600)`."""
    spec = dataclasses.replace(spec or EngineSpec(), **changes)
    spec.check()
    gpu_spec = gpu_preset(spec.gpu)
    model_spec = model_preset(spec.model)
    blocks = spec.num_gpu_blocks if spec.num_gpu_blocks is not None else num_gpu_blocks(
        gpu_spec, model_spec, block_size=spec.block_size, gpu_memory_utilization=spec.gpu_memory_utilization
    )
    config = EngineConfig(
        num_gpu_blocks=blocks,
        block_size=spec.block_size,
        max_num_seqs=spec.max_num_seqs,
        max_num_batched_tokens=spec.max_num_batched_tokens,
        max_model_len=spec.max_model_len or model_spec.max_model_len,
        timeout_s=spec.timeout_s,
        max_queue=spec.max_queue,
    )
    config.check()
    if spec.latency is None:
        latency = RooflineLatency(gpu_spec, model_spec, compute_efficiency=spec.compute_efficiency,
                                  memory_efficiency=spec.memory_efficiency, overhead_s=spec.step_overhead_s)
    elif isinstance(spec.latency, dict):
        latency = latency_from_dict(spec.latency)
    else:
        latency = spec.latency
    return EngineSetup(config, latency, model_spec.name, gpu_spec.name)


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
    """Run `workload` (a conformed workload table, sorted by arrival) through one simulated engine. The workload
    is validated first (`validate_workload`: finite, plausible, non-decreasing arrivals; plausible lengths)."""
    validate_workload(workload, "workload")
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


def server_metrics_from_steps(steps: pl.DataFrame, num_gpu_blocks: int, interval_s: float | None = 1.0
                              ) -> pl.DataFrame:
    """vLLM-style server metrics (`burstgpt.records` server-metrics layout) from a step table, as a scrape every
    `interval_s` simulated seconds would see them: per interval, the values at the end of its last step (counters
    cumulative since the start), plus `kv_cache_usage_peak`, the interval's highest KV usage (0-1).
    `interval_s` None: one row per step."""
    if interval_s is not None and not interval_s > 0:
        raise BurstGPTError(f"--metrics-interval must be positive, got {interval_s}")
    end_s = steps["time_s"].to_numpy() + steps["duration_s"].to_numpy()
    bucket = np.arange(steps.height, dtype=np.float64) if interval_s is None else np.floor(end_s / interval_s)
    kv_blocks = steps["kv_blocks_used"].to_numpy()
    if np.all(bucket[1:] >= bucket[:-1]):
        # Step ends do not go back (the usual case): each interval is one contiguous block of rows, and its values
        # are taken from its last row (the counters as per-interval sums, accumulated), without a per-step table.
        first_rows = np.flatnonzero(np.concatenate([[True], bucket[1:] != bucket[:-1]])) if steps.height else \
            np.zeros(0, np.int64)
        last_rows = np.append(first_rows[1:] - 1, steps.height - 1) if steps.height else first_rows

        def total(name: str) -> np.ndarray:
            if not steps.height:
                return np.zeros(0, np.int64)
            return np.cumsum(np.add.reduceat(steps[name].to_numpy(), first_rows, dtype=np.int64))

        frame = pl.DataFrame({
            "time_s": end_s[last_rows],
            "kv_blocks": kv_blocks[last_rows],
            "num_requests_running": steps["num_running"].to_numpy()[last_rows],
            "num_requests_waiting": steps["num_waiting"].to_numpy()[last_rows],
            "num_preemptions_total": total("preemptions"),
            "prompt_tokens_total": total("prompt_tokens"),
            "generation_tokens_total": total("generated_tokens"),
            "kv_blocks_peak": np.maximum.reduceat(kv_blocks, first_rows) if steps.height else kv_blocks[:0],
        })
    else:
        # Rounding can put a step's end a hair before its predecessor's: gather each interval's rows wherever
        # they are (the counters accumulated in step order).
        frame = pl.DataFrame({
            "_bucket": bucket, "time_s": end_s, "kv_blocks": kv_blocks,
            "num_requests_running": steps["num_running"], "num_requests_waiting": steps["num_waiting"],
            "num_preemptions_total": steps["preemptions"].cast(pl.Int64).cum_sum(),
            "prompt_tokens_total": steps["prompt_tokens"].cast(pl.Int64).cum_sum(),
            "generation_tokens_total": steps["generated_tokens"].cast(pl.Int64).cum_sum(),
        }).group_by("_bucket", maintain_order=True).agg(
            pl.all().last(), pl.col("kv_blocks").max().alias("kv_blocks_peak"),
        ).drop("_bucket")
    return conform_server_metrics(frame.with_columns(
        (pl.col("kv_blocks") / num_gpu_blocks).alias("kv_cache_usage_perc"),
        (pl.col("kv_blocks_peak") / num_gpu_blocks).alias("kv_cache_usage_peak"),
    ).drop("kv_blocks", "kv_blocks_peak"))
