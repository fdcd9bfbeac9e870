"""Offline simulation of a workload table: engine set-up from presets, request records and step tables."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.records import STATUS_FAILED, STATUS_OK, conform_request_records
from burstgpt.sim.engine import DONE, INVALID, REJECTED, TIMED_OUT, EngineConfig, ServingEngine
from burstgpt.sim.hardware import batch_defaults, default_block_size, gpu_preset, model_preset, num_gpu_blocks
from burstgpt.sim.latency import LatencyModel, RooflineLatency, latency_from_dict
from burstgpt.sim.output_lengths import (
    DEFAULT_OUTPUT_LENGTH_SPEC,
    OutputLengthModel,
    parse_output_length_model,
    resolve_output_lengths,
)
from burstgpt.sim.parallel import (
    PartTask,
    default_workers,
    expected_ends,
    join_parts,
    part_bounds,
    simulate_in_parts,
)
from burstgpt.sim.step_log import (
    SERVER_COUNTER_STEPS,
    STEP_COLUMNS,
    STEP_MODES,
    IntervalDigest,
    StepLog,
    check_interval,
    interval_server_metrics,
    last_rows_and_peaks,
)
from burstgpt.workload.schema import validate_workload


@dataclass(frozen=True)
class EngineSpec:
    """What to simulate: hardware and model presets (names, or unambiguous case-insensitive prefixes), the
    engine's limits (vLLM's flags of the same names; lengths in tokens, times in seconds) and the step-time model.

    None means "as vLLM would": `num_gpu_blocks` from memory (`burstgpt.sim.hardware.num_gpu_blocks`, or give
    the `num_gpu_blocks` of a real server's `vllm:cache_config_info`); `block_size` 16 on a GPU, 128 on the CPU
    preset; `max_num_seqs` / `max_num_batched_tokens` vLLM's OpenAI-server defaults for the GPU
    (`burstgpt.sim.hardware.batch_defaults`); `max_model_len` the model preset's context. `timeout_s`: the
    clients' timeout (None: they wait forever), after which the engine aborts the request `abort_delay_s` later;
    `max_queue` None: no queue limit; `enable_prefix_caching`: vLLM's automatic prefix caching (on by default, as
    in vLLM V1); `latency` None: the roofline of `gpu` x `model` with the three roofline factors below, else a
    `burstgpt.sim.latency.LatencyModel` or its JSON dict (`{"kind": "linear", ...}`). `frontend_delay_s`: the
    time between a client sending a request and the engine seeing it, and between the engine making a token and
    the client reading it, folded into one delay before the engine (the API server's HTTP, tokenisation and
    detokenisation, which run beside the engine, not in its steps); `profile` measures it; it adds to TTFT and
    end-to-end latency."""

    gpu: str = "A800-80GB"
    model: str = "Llama-2-13B-chat"
    num_gpu_blocks: int | None = None
    block_size: int | None = None
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    timeout_s: float | None = 30.0
    max_queue: int | None = None
    latency: LatencyModel | dict | None = None
    compute_efficiency: float = 0.6
    memory_efficiency: float = 0.8
    step_overhead_s: float = 0.003
    enable_prefix_caching: bool = True
    abort_delay_s: float = 0.0
    frontend_delay_s: float = 0.0

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
        if not (self.frontend_delay_s >= 0 and np.isfinite(self.frontend_delay_s)):
            raise BurstGPTError(f"--frontend-delay must be a non-negative number of seconds, got {self.frontend_delay_s}")
        if not (self.abort_delay_s >= 0 and np.isfinite(self.abort_delay_s)):
            raise BurstGPTError(f"--abort-delay must be a non-negative number of seconds, got {self.abort_delay_s}")


@dataclass(frozen=True)
class EngineSetup:
    """What `build_engine_setup` resolved: the engine limits, the step-time model and the preset names."""

    config: EngineConfig
    latency: LatencyModel
    model_name: str
    gpu_name: str
    frontend_delay_s: float = 0.0  # see EngineSpec

    def describe(self) -> str:
        """The engine settings in one line (printed by `simulate` and `serve-sim` at start)."""
        config = self.config
        timeout = f"{config.timeout_s:g} s" if config.timeout_s is not None else "none"
        if config.timeout_s is not None and config.abort_delay_s:
            timeout += f" (aborted {config.abort_delay_s:g} s later)"
        queue = config.max_queue if config.max_queue is not None else "unlimited"
        caching = "on" if config.enable_prefix_caching else "off"
        return (f"engine: {self.gpu_name} x {self.model_name}; {config.num_gpu_blocks} KV blocks x "
                f"{config.block_size} tokens; max_num_seqs {config.max_num_seqs}; max_num_batched_tokens "
                f"{config.max_num_batched_tokens}; max_model_len {config.max_model_len}; prefix caching "
                f"{caching}; client timeout {timeout}; queue limit {queue}; "
                + (f"frontend delay {1e3 * self.frontend_delay_s:.3g} ms; " if self.frontend_delay_s else "")
                + f"latency {self.latency.describe()}")

    def to_dict(self) -> dict:
        """The settings as JSON (a run's config.json); `latency` in its `to_dict` form."""
        return {"gpu": self.gpu_name, "model": self.model_name, **dataclasses.asdict(self.config),
                "frontend_delay_s": self.frontend_delay_s, "latency": self.latency.to_dict()}


def build_engine_setup(spec: EngineSpec | None = None, /, **changes) -> EngineSetup:
    """Engine limits and latency model for `spec` (default `EngineSpec()`), with `changes` to its fields, e.g.
    `build_engine_setup(gpu="H100", num_gpu_blocks=600)`."""
    spec = dataclasses.replace(spec or EngineSpec(), **changes)
    spec.check()
    gpu_spec = gpu_preset(spec.gpu)
    model_spec = model_preset(spec.model)
    default_tokens, default_seqs = batch_defaults(gpu_spec)
    block_size = spec.block_size or default_block_size(gpu_spec)
    max_num_batched_tokens = spec.max_num_batched_tokens or default_tokens
    blocks = spec.num_gpu_blocks if spec.num_gpu_blocks is not None else num_gpu_blocks(
        gpu_spec, model_spec, block_size=block_size, gpu_memory_utilization=spec.gpu_memory_utilization,
        max_num_batched_tokens=max_num_batched_tokens,
    )
    config = EngineConfig(
        num_gpu_blocks=blocks,
        block_size=block_size,
        max_num_seqs=spec.max_num_seqs or default_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=spec.max_model_len or model_spec.max_model_len,
        timeout_s=spec.timeout_s,
        max_queue=spec.max_queue,
        enable_prefix_caching=spec.enable_prefix_caching,
        abort_delay_s=spec.abort_delay_s,
    )
    config.check()
    if spec.latency is None:
        latency = RooflineLatency(gpu_spec, model_spec, compute_efficiency=spec.compute_efficiency,
                                  memory_efficiency=spec.memory_efficiency, overhead_s=spec.step_overhead_s)
    elif isinstance(spec.latency, dict):
        latency = latency_from_dict(spec.latency)
    else:
        latency = spec.latency
    return EngineSetup(config, latency, model_spec.name, gpu_spec.name, spec.frontend_delay_s)


@dataclass
class SimulationResult:
    """`records`: per-request records (`burstgpt.records` schema), one row per workload row, in its order;
    `num_gpu_blocks`: the KV cache size; `server_metrics`: per metrics interval
    (`burstgpt.sim.step_log.IntervalDigest`); `num_steps`: engine steps taken; `steps_mode`: which steps were kept
    (`burstgpt.sim.step_log.STEP_MODES`); `step_log`: the whole log (mode "all"); `sampled_steps`: mode
    "sampled". `steps` / `scan_steps()`: the step table of the mode (`burstgpt.sim.engine.STEP_COLUMNS`)."""

    records: pl.DataFrame
    num_gpu_blocks: int
    server_metrics: pl.DataFrame
    num_steps: int
    steps_mode: str = "all"
    step_log: StepLog | None = None
    sampled_steps: pl.DataFrame | None = None
    parts: int = 1  # parts of the workload simulated in parallel (see `simulate_workload`'s `workers`)

    @functools.cached_property
    def steps(self) -> pl.DataFrame:
        """The step table of the mode: every step ("all", expanded on first use), the sampled ones, or none."""
        if self.step_log is not None:
            return self.step_log.frame()
        return self.sampled_steps if self.sampled_steps is not None else pl.DataFrame(schema=STEP_COLUMNS)

    def scan_steps(self) -> pl.LazyFrame:
        """The step table as a LazyFrame; for "all" expanded a chunk at a time as it is read (`StepLog.scan`)."""
        return self.step_log.scan() if self.step_log is not None else self.steps.lazy()


def simulate_workload(
    workload: pl.DataFrame,
    setup: EngineSetup,
    *,
    output_lengths: OutputLengthModel | str = DEFAULT_OUTPUT_LENGTH_SPEC,
    seed: int = 0,
    jump: bool = True,
    progress=None,
    steps: str = "all",
    metrics_interval_s: float = 1.0,
    workers: int | None = None,
) -> SimulationResult:
    """Run `workload` (a conformed workload table, sorted by arrival) through one simulated engine. The workload
    is validated first (`validate_workload`: finite, plausible, non-decreasing arrivals; plausible lengths).
    `steps`: which steps the result keeps (`burstgpt.sim.step_log.STEP_MODES`: "all", "sampled", "none"; only
    "all" keeps the whole log in memory); server metrics are computed every `metrics_interval_s` seconds.
    `progress(engine)` is called with the running `ServingEngine` now and then and once at the end (for a live
    view: `burstgpt.sim.progress.SimulationProgress`; a run in parts shows its first part, then its end).

    `workers`: processes to simulate with (None: `burstgpt.sim.parallel.default_workers`, one per CPU up to 4
    for a workload of 100,000 requests or more, else 1). With several, the workload is cut into parts where the
    arrivals leave the longest expected idle time and each part after the first is simulated in a process of its
    own, from a new engine, while this one simulates the first; parts are joined only where a single engine is
    idle with nothing carried over, so the results are identical (`burstgpt.sim.parallel`; `parts` in the
    result). Only with `jump`, `steps` "sampled" or "none" and no prefix block ids."""
    if steps not in STEP_MODES:
        raise BurstGPTError(f"--steps must be one of {', '.join(STEP_MODES)}, got {steps!r}")
    check_interval(metrics_interval_s)
    workload = validate_workload(workload, "workload")  # conformed too: any subset of the columns will do
    if isinstance(output_lengths, str):
        output_lengths = parse_output_length_model(output_lengths)
    config = setup.config
    lengths = resolve_output_lengths(workload, output_lengths, max_model_len=config.max_model_len, seed=seed)
    # The frontend delay: the engine sees each request that much after it was sent and the client reads its tokens
    # when the engine makes them; the client still gives up `timeout_s` after sending.
    delay = setup.frontend_delay_s
    engine_config = config
    if delay and config.timeout_s is not None:
        engine_config = dataclasses.replace(config, timeout_s=max(config.timeout_s - delay, 1e-9))
    arrival = workload["arrival_s"].to_numpy() + delay
    prompt = workload["input_tokens"].to_numpy()
    prefixes = workload_prefixes(workload)
    if workers is None:
        workers = default_workers(workload.height)
    if workers > 1 and jump and steps != "all" and prefixes[0] is None:
        bounds = part_bounds(arrival, workers, expected_ends(engine_config, setup.latency, arrival, lengths))
        if bounds:
            task = PartTask(engine_config, setup.latency, metrics_interval_s, config.num_gpu_blocks,
                            steps == "sampled")
            parts = simulate_in_parts(task, arrival, prompt, lengths, bounds, progress)
            columns, digest, num_steps = join_parts(parts)
            records = records_from_columns(columns, workload, engine_config, setup.model_name)
            return SimulationResult(records, config.num_gpu_blocks, digest.server_metrics(), num_steps, steps,
                                    sampled_steps=digest.sampled_steps() if steps == "sampled" else None,
                                    parts=len(parts))
    engine = ServingEngine(engine_config, setup.latency)
    # The step log hands its chunks to the digest as the engine runs; it keeps them only for the full table.
    digest = IntervalDigest(metrics_interval_s, config.num_gpu_blocks, sample=steps == "sampled")
    engine.steps = StepLog(config.block_size, consumers=(digest,), keep=steps == "all")
    engine.submit(arrival, prompt, lengths, *prefixes)
    engine.run(jump=jump, progress=None if progress is None else lambda absorbed: progress(engine))
    engine.steps.finish()
    records = engine_records(engine, workload, setup.model_name)
    return SimulationResult(records, config.num_gpu_blocks, digest.server_metrics(), engine.steps.size, steps,
                            step_log=engine.steps if steps == "all" else None,
                            sampled_steps=digest.sampled_steps() if steps == "sampled" else None)


def workload_prefixes(workload: pl.DataFrame) -> tuple[list | None, np.ndarray | None]:
    """(prefix block ids per request, tokens per id) for `ServingEngine.submit`, (None, None) when no request
    of the workload has prefix ids (the engine then pays nothing for them)."""
    if "prefix_block_ids" not in workload.columns or workload["prefix_block_ids"].null_count() == workload.height:
        return None, None
    return workload["prefix_block_ids"].to_list(), workload["prefix_block_size"].fill_null(0).to_numpy()


def engine_records(engine: ServingEngine, workload: pl.DataFrame, model_name: str) -> pl.DataFrame:
    """Per-request records for every request submitted to `engine` (rows of `workload`, in order)."""
    return records_from_columns(engine.columns(workload.height), workload, engine.config, model_name)


def records_from_columns(columns: dict[str, np.ndarray], workload: pl.DataFrame, config: EngineConfig,
                         model_name: str) -> pl.DataFrame:
    """Per-request records from an engine's per-request `columns` (`Scheduler.columns`, one row per row of
    `workload`, in order) and its `config`."""
    count = workload.height
    state = pl.Series("_state", columns["state"])
    # Status columns from the request states, mapped in Polars (NumPy string arrays of a million rows are slow).
    error_class = {TIMED_OUT: "timeout", REJECTED: "rejected", INVALID: "http_4xx"}
    message = {
        TIMED_OUT: f"the client gave up after its timeout ({config.timeout_s} s)",
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
            "cached_prompt_tokens": columns["cached_tokens"],
        },
        nan_to_null=True,
    ).with_columns(
        # Null where the engine never scheduled the request (no lookup happened) and without prefix caching.
        pl.when(pl.col("first_scheduled_s").is_not_null() & pl.lit(config.enable_prefix_caching))
        .then(pl.col("cached_prompt_tokens")).otherwise(None).alias("cached_prompt_tokens"),
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
    """vLLM-style server metrics (`burstgpt.records` server-metrics layout) from a full step table, as a scrape
    every `interval_s` simulated seconds would see them: per interval (a step belongs to the one its end falls
    in), the state after its last step (counters cumulative since the start), plus `kv_cache_usage_peak`, the
    interval's highest KV usage (0-1). `interval_s` None: one row per step. `simulate_workload` computes the same
    without the table (`burstgpt.sim.step_log.IntervalDigest`)."""
    if interval_s is not None:
        check_interval(interval_s)
    end_s = steps["time_s"].to_numpy() + steps["duration_s"].to_numpy()
    bucket = np.arange(steps.height, dtype=np.float64) if interval_s is None else np.floor(end_s / interval_s)
    kv_blocks = steps["kv_blocks_used"].to_numpy()
    last, peaks = last_rows_and_peaks(bucket, kv_blocks)

    def cumulative(name: str) -> np.ndarray:
        return np.cumsum(steps[name].to_numpy(), dtype=np.int64)[last]

    return interval_server_metrics({
        "time_s": end_s[last], "kv_blocks": kv_blocks[last], "kv_blocks_peak": peaks,
        "num_requests_running": steps["num_running"].to_numpy()[last],
        "num_requests_waiting": steps["num_waiting"].to_numpy()[last],
        **{counter: cumulative(step_column) for counter, step_column in SERVER_COUNTER_STEPS.items()},
    }, num_gpu_blocks)
