"""Putting a workload together: arrivals + request lengths + response lengths + prompts -> the workload table.

Randomness: one seed gives four independent streams (`seed_streams`): arrivals, request lengths, response
lengths and prompt choice, so changing, say, the prompt source leaves the arrivals and lengths unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.trace.filters import filter_trace_frame
from burstgpt.trace.schema import Trace
from burstgpt.workload.arrivals import quiet_opening_end, replay_arrivals
from burstgpt.workload.prompts import PromptPool
from burstgpt.workload.schema import conform_workload
from burstgpt.workload.tokenizer import Tokenizer


@dataclass(frozen=True)
class SeedStreams:
    """Independent generators derived from one seed."""

    arrivals: np.random.Generator
    lengths: np.random.Generator
    responses: np.random.Generator
    prompts: np.random.Generator


def seed_streams(seed: int) -> SeedStreams:
    children = np.random.SeedSequence(seed).spawn(4)
    return SeedStreams(*(np.random.default_rng(c) for c in children))


def assemble_workload(
    arrival_s: np.ndarray,
    input_tokens: np.ndarray,
    *,
    output_tokens: np.ndarray | None = None,
    max_output_tokens: int | None = None,
    prompts: pl.Series | None = None,
    model: pl.Series | str | None = None,
    service: pl.Series | str | None = None,
    session_id: pl.Series | None = None,
    prefix_block_ids: pl.Series | None = None,
    prefix_block_size: int | None = None,
) -> pl.DataFrame:
    """The workload table (see `burstgpt.workload.schema`) from per-request arrays of equal length.

    `prefix_block_ids` (a List(Int64) series, null where a request has none) with `prefix_block_size` tokens
    per id mark shared prompt prefixes.

    `output_tokens` uses -1 for "left to the model" (written as null); when intended output exceeds the cap,
    the cap is raised to it so the two never contradict.
    """
    n = arrival_s.size
    if input_tokens.size != n:
        raise BurstGPTError("arrivals and input lengths differ in length")
    columns: dict[str, object] = {
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_s": np.asarray(arrival_s, dtype=np.float64),
        "input_tokens": np.asarray(input_tokens, dtype=np.int64),
    }
    frame = pl.DataFrame(columns)
    exprs = []
    if output_tokens is not None:
        out = pl.Series("output_tokens", output_tokens, dtype=pl.Int64)
        exprs.append(pl.when(out >= 0).then(out).otherwise(None).alias("output_tokens"))
    cap = pl.lit(max_output_tokens, dtype=pl.Int64)
    if output_tokens is not None and max_output_tokens is not None:
        cap = pl.max_horizontal(cap, pl.col("output_tokens"))
    frame = frame.with_columns(exprs).with_columns(cap.alias("max_output_tokens"))
    for name, value in (("prompt", prompts), ("model", model), ("service", service), ("session_id", session_id)):
        if value is None:
            continue
        if isinstance(value, str):
            frame = frame.with_columns(pl.lit(value, dtype=pl.Utf8).alias(name))
        else:
            frame = frame.with_columns(pl.Series(name, value, dtype=pl.Utf8))
    if prefix_block_ids is not None and prefix_block_ids.null_count() < n:
        if not prefix_block_size or prefix_block_size < 1:
            raise BurstGPTError("prefix block ids need a positive prefix block size (tokens per id)")
        ids = pl.Series("prefix_block_ids", prefix_block_ids, dtype=pl.List(pl.Int64))
        has_ids = ids.list.len().fill_null(0) > 0
        frame = frame.with_columns(
            pl.when(has_ids).then(ids).otherwise(None).alias("prefix_block_ids"),
            pl.when(has_ids).then(pl.lit(prefix_block_size, dtype=pl.Int64)).otherwise(None)
            .alias("prefix_block_size"),
        )
    return conform_workload(frame)


def attach_prompts(
    frame: pl.DataFrame,
    source_texts: list[str],
    tokenizer: Tokenizer,
    rng: np.random.Generator,
    buffer_size: int = 10_000,
) -> tuple[pl.DataFrame, int]:
    """Fill the `prompt` column from a prompt pool built for the workload's input lengths. Returns the frame and
    the number of requests whose length the pool could not serve (their prompt stays null: the client then
    synthesises one of input_tokens tokens)."""
    input_tokens = frame["input_tokens"].to_numpy()
    pool = PromptPool.build(source_texts, tokenizer, input_tokens, rng, buffer_size)
    ids = pool.draw(input_tokens, rng)
    return frame.with_columns(pool.prompts_for(ids)), int(np.sum(ids < 0))


@dataclass(frozen=True)
class ReplaySelection:
    """The part of a trace replayed: rows kept, their arrival times and where replay started."""

    frame: pl.DataFrame  # trace rows kept, in order
    arrival_s: np.ndarray  # (len(frame),) seconds from the workload start
    origin_s: float  # trace timestamp that became time 0


def select_replay(
    trace: Trace,
    scale: float = 1.0,
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    models: list[str] | None = None,
    services: list[str] | None = None,
    skip_quiet_start: bool = False,
    quiet_window_s: float = 1200.0,
) -> ReplaySelection:
    """Rows of `trace` with start_s <= timestamp_s < end_s (trace seconds), of the given models/services,
    optionally starting after the trace's long low-rate opening (`quiet_opening_end`), replayed `scale` times
    faster from the first kept row (time 0)."""
    frame = filter_trace_frame(trace.frame, models=models, services=services, start_s=start_s, end_s=end_s)
    if frame.height and skip_quiet_start:
        quiet_end = quiet_opening_end(frame["timestamp_s"].to_numpy(), quiet_window_s)
        frame = frame.filter(pl.col("timestamp_s") >= quiet_end)
    if frame.height == 0:
        raise BurstGPTError(f"{trace.source}: no trace rows left to replay after the filters")
    timestamps = frame["timestamp_s"].to_numpy()
    return ReplaySelection(frame, replay_arrivals(timestamps, scale), float(timestamps[0]))
