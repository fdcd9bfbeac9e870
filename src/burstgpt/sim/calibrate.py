"""Fitting the linear step-time model (`burstgpt.sim.latency.LinearLatency`) to measurements of a real server.

Two sources, one model (base + per prefill token + per decode sequence + per KV token read + per prefill
attention pair + per admitted request, seconds; a mixed step costs the sum):

- `fit_profile`: the controlled experiments of `burstgpt profile` (`burstgpt.client.profile`): each prefill
  point is one step of n prompt tokens and one admission (features 1, n, 0, n, n(n+1)/2, 1), each decode point
  one step of K sequences reading C KV tokens (features 1, 0, K, C, 0, 0). The intercept of the prefill points
  alone is base + per-request, so the decode points pin the base; per prefill token and per KV token are told
  apart the same way.
- `calibrate_runs`: ordinary `bench` runs with chunk times. The run's requests (arriving when they were sent,
  with the prompt and output lengths the server reported) are replayed through the simulated scheduler one
  step at a time, recording every step's work. A step that made a token the client saw is made to end when
  the first of those tokens arrived, so the replayed steps start and end when the real ones did and arrivals
  join the batches they really joined, whatever the model. A request that reached the engine later than its
  send time suggests (its first chunk came out of a later step) is made to arrive later (`delay_arrivals`).
  Each step timed by observation that followed another without a pause is then one equation: its observed
  duration = its work x the coefficients. Solving them gives a new model, which times the few steps nobody
  saw (a prefill chunk that made no token); replay again until the coefficients settle (usually at once).

To use a fitted model on a run: `engine_setup_from_model_file` (the engine a model file describes) and
`workload_from_run` (a bench run's requests as a workload, as the server saw them).

`fit_linear` solves either: non-negative least squares on columns scaled to unit size, weighted by 1 /
measurement (so every point counts by its relative error, whatever its size), then a robust refit
(scipy.optimize.least_squares with a soft-L1 loss, bounds >= 0) that lets a few outliers (a GC pause, a
request the replay put into a neighbouring batch because its send time was a few milliseconds off) weigh
little; `calibrate_runs` weighs steps in seconds rather than relatively (a late chunk can make a step look
nearly instantaneous).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from scipy.optimize import least_squares, nnls

from burstgpt.errors import BurstGPTError
from burstgpt.records import WORKLOAD_FILE, read_run_directory
from burstgpt.sim.engine import ServingEngine
from burstgpt.sim.latency import (
    LINEAR_TERMS,
    FitQuality,
    LinearLatency,
    StepRecorder,
    linear_features,
    load_latency_model,
)
from burstgpt.sim.scheduler import EngineConfig
from burstgpt.sim.simulate import EngineSetup, EngineSpec, build_engine_setup
from burstgpt.workload.io import read_workload
from burstgpt.workload.schema import conform_workload, validate_workload

#: A fitted base below this (seconds) is raised to it: the engine needs steps that take time.
MIN_BASE_S = 1e-6
#: Rounds of `delay_arrivals` per replay (a moved request can push others into later batches).
DELAY_PASSES = 3


@dataclass(frozen=True)
class LinearFit:
    """A fit: the `model`, its `quality`, the predicted seconds per row and which rows were outliers, and the
    terms the data could not determine (`unmeasured`: set to 0)."""

    model: LinearLatency
    quality: FitQuality
    predicted: np.ndarray
    outlier: np.ndarray
    unmeasured: tuple[str, ...]


def fit_linear(features: np.ndarray, seconds: np.ndarray, *, partial: bool = False, relative: bool = True
               ) -> LinearFit:
    """The non-negative coefficients of `features` (rows x `LINEAR_TERMS`, see `linear_features`) that best
    explain `seconds` (one measured duration per row), robustly; in relative terms (module doc), or in seconds
    with `relative` False (for many noisy rows some of which are near 0, where relative errors would explode)."""
    features = np.asarray(features, np.float64)
    seconds = np.asarray(seconds, np.float64)
    keep = np.isfinite(seconds) & (seconds > 0) & np.isfinite(features).all(axis=1)
    features, seconds = features[keep], seconds[keep]
    if seconds.size < len(LINEAR_TERMS):
        raise BurstGPTError(f"too few measurements to fit the latency model ({seconds.size}; need at least "
                            f"{len(LINEAR_TERMS)})")
    scale = np.abs(features).max(axis=0)
    measured = scale > 0
    unmeasured = tuple(name for name, ok in zip(LINEAR_TERMS, measured, strict=True) if not ok)
    weight = 1.0 / seconds if relative else np.full(seconds.size, 1.0 / np.median(seconds))
    design = features[:, measured] / scale[measured] * weight[:, None]
    target = seconds * weight  # relative: all ones
    start, _ = nnls(design, target)
    residual = design @ start - target
    spread = 1.4826 * np.median(np.abs(residual - np.median(residual)))
    f_scale = max(spread, 1e-3)
    robust = least_squares(lambda x: design @ x - target, start, bounds=(0.0, np.inf), loss="soft_l1",
                           f_scale=f_scale, x_scale="jac")
    solution = np.zeros(len(LINEAR_TERMS))
    solution[measured] = robust.x / scale[measured]
    solution[0] = max(solution[0], MIN_BASE_S)
    model = LinearLatency(*(float(v) for v in solution))
    predicted = features @ solution
    error = predicted - seconds
    outlier = np.abs(error * weight) > 5 * max(spread, 1e-3) + 0.05
    inliers = ~outlier
    total = np.sum((seconds[inliers] - seconds[inliers].mean()) ** 2)
    r2 = 1.0 - np.sum(error[inliers] ** 2) / total if total > 0 else math.nan
    absolute, relative = np.abs(error), np.abs(error) / seconds
    quality = FitQuality(
        r2=float(r2), **{f"residual_p{q}_s": float(np.percentile(absolute, q)) for q in (50, 90, 99)},
        **{f"relative_p{q}": float(np.percentile(relative, q)) for q in (50, 90, 99)},
        points=int(seconds.size), outliers=int(outlier.sum()), partial=partial,
    )
    full_predicted = np.full(keep.size, np.nan)
    full_predicted[keep] = predicted
    full_outlier = np.zeros(keep.size, bool)
    full_outlier[keep] = outlier
    return LinearFit(model, quality, full_predicted, full_outlier, unmeasured)


def profile_design(prefill: pl.DataFrame, decode: pl.DataFrame, *, engine_timed: bool
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the profile fit: (features, seconds, kind) with kind 0 for a prefill point, 1 for a decode
    point. Prefill: the median over the point's repeats of the engine's prefill time (`engine_timed`) or the
    client's TTFT, at the median prompt length; decode: each repeat's median gap."""
    column = "engine_prefill_s" if engine_timed else "ttft_s"
    points = prefill.filter(pl.col(column).is_not_null()).group_by("point", maintain_order=True).agg(
        pl.col("prompt_tokens").median().alias("n"), pl.col(column).median().alias("seconds"))
    n = points["n"].to_numpy().astype(np.float64)
    zeros = np.zeros_like(n)
    prefill_rows = linear_features(n, zeros, n * (n + 1) / 2, zeros, n, np.ones_like(n))
    k = decode["streams"].to_numpy().astype(np.float64)
    decode_rows = linear_features(np.zeros_like(k), k, np.zeros_like(k), decode["context_tokens"].to_numpy(),
                                  np.zeros_like(k), np.zeros_like(k))
    features = np.vstack([prefill_rows, decode_rows])
    seconds = np.concatenate([points["seconds"].to_numpy(), decode["gap_s"].to_numpy()])
    kind = np.concatenate([np.zeros(len(n), np.int8), np.ones(len(k), np.int8)])
    return features, seconds, kind


def fit_profile(prefill: pl.DataFrame, decode: pl.DataFrame, *, engine_timed: bool, partial: bool = False
                ) -> LinearFit:
    """Fit the linear model to a profile's prefill and decode measurements (`burstgpt.client.profile`)."""
    if prefill.height == 0 or decode.height == 0:
        raise BurstGPTError("the profile needs both prefill and decode measurements to fit the model "
                            f"(have {prefill.height} prefill, {decode.height} decode)")
    features, seconds, _ = profile_design(prefill, decode, engine_timed=engine_timed)
    return fit_linear(features, seconds, partial=partial)


def frontend_delay_from_profile(prefill: pl.DataFrame) -> float | None:
    """The server's frontend delay (`EngineSpec.frontend_delay_s`), seconds: the median over the prefill sweep's
    requests of the client's TTFT minus the engine's own prefill time (on an idle server the rest is HTTP and
    tokenisation, which run beside the engine's steps). None without engine-timed prefills."""
    if "engine_prefill_s" not in prefill.columns:
        return None
    gaps = (prefill["ttft_s"] - prefill["engine_prefill_s"]).drop_nulls()
    return max(float(gaps.median()), 0.0) if gaps.len() else None


def coefficient_table(model: LinearLatency) -> list[tuple[str, float]]:
    """(term, seconds) of every coefficient, in `LINEAR_TERMS` order."""
    return [(name, float(getattr(model, name))) for name in LINEAR_TERMS]




# -- calibration from bench runs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObservedRun:
    """One `bench` run as calibration uses it: `name`, and per sent request `sent_s`, `input_tokens` and
    `output_tokens` (the server's counts), `chunk_times_s` (List(Float64), null when not recorded), `ok`, the
    client's `first_token_s` and `end_s`, and `arrival_s`, when the replay lets it arrive (`sent_s`, until
    `delay_arrivals` moves it), in arrival order; `server_metrics` as scraped (with the step-level columns of
    `burstgpt.client.scrape`)."""

    name: str
    requests: pl.DataFrame
    server_metrics: pl.DataFrame | None = None


def observed_run(name: str, records: pl.DataFrame, server_metrics: pl.DataFrame | None = None) -> ObservedRun:
    """The requests of a record table (`burstgpt.records` schema) that reached the server, in send order."""
    frame = records.filter(pl.col("sent_s").is_not_null() & (pl.col("input_tokens") > 0)).sort("sent_s")
    requests = frame.select(
        "sent_s", "input_tokens", pl.col("output_tokens").fill_null(0).clip(lower_bound=1), "chunk_times_s",
        (pl.col("status") == "ok").alias("ok"), "first_token_s", "end_s", pl.col("sent_s").alias("arrival_s"),
    )
    return ObservedRun(name, requests, server_metrics)


@dataclass(frozen=True)
class Replay:
    """A run replayed through the scheduler: per step its `features` (`linear_features` columns), start and end
    times (`step_start_s`, `step_end_s`) and whether its end was observed (`observed`: a token it made reached
    the client); per token emitted, `emissions` (request = index in the run's requests, token = 1-based, step =
    index); per request `first_scheduled_s`, `first_token_s` and `end_s` (NaN when none)."""

    features: np.ndarray
    step_start_s: np.ndarray
    step_end_s: np.ndarray
    observed: np.ndarray
    emissions: pl.DataFrame
    first_scheduled_s: np.ndarray
    first_token_s: np.ndarray
    end_s: np.ndarray


def replay_run(run: ObservedRun, config: EngineConfig, model: LinearLatency, *, follow_observed: bool = True
               ) -> Replay:
    """Replay `run`'s requests (arriving when they were sent, with the lengths the server reported) through the
    scheduler, one step at a time, recording each step. Each step lasts `model`'s time for its work, except with
    `follow_observed`, where a step that made a token the client saw ends when the first of those tokens
    arrived: the steps then start and end when the real ones did, so arrivals join the same batches as they
    really did whatever the model (which then only times the steps nobody saw)."""
    requests = run.requests
    recorder = StepRecorder(model)
    engine = ServingEngine(config, recorder, record_steps=False, track_events=True)
    engine.submit(requests["arrival_s"].to_numpy(), requests["input_tokens"].to_numpy(),
                  requests["output_tokens"].to_numpy())
    chunk_times = [times if ok and times else None
                   for times, ok in zip(requests["chunk_times_s"].to_list(), requests["ok"].to_list(), strict=True)]
    received = [0] * requests.height  # tokens emitted so far per request
    emitted: list[list[int]] = []
    step_start: list[float] = []
    step_end: list[float] = []
    observed: list[bool] = []
    arrival = engine.arrival
    while True:
        if engine.is_idle():
            if engine.next_arrival >= engine.num_submitted:
                break
            engine.now = max(engine.now, arrival[engine.next_arrival])  # idle until the next arrival, as live
        start = engine.now
        if not engine.step():
            continue
        ids = engine.last_emitted
        if follow_observed:
            seen = math.inf
            for rid in ids:
                times = chunk_times[rid]
                k = received[rid]
                received[rid] = k + 1
                if times is not None and k < len(times) and times[k] < seen:
                    seen = times[k]
            if start < seen < math.inf:
                engine.now = seen
        emitted.append(ids)
        step_start.append(start)
        step_end.append(engine.now)
        observed.append(follow_observed and engine.now != start and engine.now == seen)
    counts = np.fromiter((len(ids) for ids in emitted), np.int64, len(emitted))
    works = np.asarray(recorder.works, np.float64).reshape(-1, 6)
    emissions = pl.DataFrame({
        "request": np.fromiter((rid for ids in emitted for rid in ids), np.int64, int(counts.sum())),
        "step": np.repeat(np.arange(len(emitted)), counts),
    }).with_columns(pl.int_range(1, pl.len() + 1).over("request").alias("token"))
    columns = engine.columns(requests.height)
    return Replay(linear_features(*works.T), np.asarray(step_start), np.asarray(step_end), np.asarray(observed, bool),
                  emissions, columns["first_scheduled"], columns["first_token"], columns["end"])


def step_design(replay: Replay) -> tuple[np.ndarray, np.ndarray]:
    """(features, seconds) of the replayed steps whose duration was observed: both ends are the arrival of the
    first chunk any request got from the step (`replay_run` with `follow_observed`) and it started as the one
    before it ended (no idle gap, whose start would be a send time, not an observation). The earliest chunk of
    a step is the one least delayed on its way to the client, so one late stream does not move the step."""
    seen = replay.observed
    timed = np.zeros(seen.size, bool)
    timed[1:] = seen[1:] & seen[:-1] & (replay.step_start_s[1:] == replay.step_end_s[:-1])
    return replay.features[timed], (replay.step_end_s - replay.step_start_s)[timed]


def delay_arrivals(run: ObservedRun, replay: Replay) -> tuple[ObservedRun, int]:
    """`run` with the requests the replay admitted too early arriving later, and how many moved. A request
    reaches the engine some milliseconds after the client sent it (the network, the server's HTTP parsing and
    tokenisation; a busy server's event loop), so a request sent just before a step ended may really have
    joined a later batch than the replay's. Its first chunk then arrives at the end of a later replayed step
    than the one that made its first token: when it lands within a quarter of a step of such a step's end, the
    request now arrives at that step's start, which puts its prefill where it really was. (A chunk merely
    delivered late lands anywhere, and is left alone.)"""
    requests = run.requests
    ends = replay.step_end_s
    if len(ends) < 2:
        return run, 0
    first = replay.emissions.filter(pl.col("token") == 1)
    made = np.full(requests.height, -1, np.int64)  # the step that made each request's first token
    made[first["request"].to_numpy()] = first["step"].to_numpy()
    observed = requests["first_token_s"].to_numpy()
    # The replayed step whose end is nearest the first chunk's arrival (the real first token's step).
    nearest = np.clip(np.searchsorted(ends, observed), 1, len(ends) - 1)
    with np.errstate(invalid="ignore"):
        nearest -= (observed - ends[nearest - 1]) < (ends[nearest] - observed)
        # Only later steps, and within a quarter of a step of their end: a chunk merely delivered late lands
        # anywhere.
        late = (requests["ok"].to_numpy() & (made >= 0) & (nearest > made)
                & (np.abs(observed - ends[nearest]) < 0.25 * (ends[nearest] - ends[nearest - 1])))
    moved = int(late.sum())
    if not moved:
        return run, 0
    arrival = requests["arrival_s"].to_numpy().copy()
    arrival[late] = np.maximum(arrival[late], ends[nearest[late] - 1])  # the start of that step
    requests = requests.with_columns(pl.Series("arrival_s", arrival)).sort("arrival_s", maintain_order=True)
    return dataclasses.replace(run, requests=requests), moved


def _aligned_design(run: ObservedRun, config: EngineConfig, model: LinearLatency) -> tuple[np.ndarray, np.ndarray]:
    """`step_design` of `run` replayed under `model`, after up to `DELAY_PASSES` rounds of `delay_arrivals`."""
    replay = replay_run(run, config, model)
    design = step_design(replay)
    for _ in range(DELAY_PASSES):
        delayed, moved = delay_arrivals(run, replay)
        if not moved:
            break
        run, replay = delayed, replay_run(delayed, config, model)
        design = step_design(replay)
    return design


@dataclass(frozen=True)
class Calibration:
    """The result of `calibrate_runs`: the final `fit`, the models of every iteration (`history`, the first
    being the starting model), whether the coefficients settled (`converged`), and `checks`: per run,
    observed vs simulated figures under the final model (run, quantity, observed, simulated)."""

    fit: LinearFit
    history: list[LinearLatency]
    converged: bool
    checks: pl.DataFrame


def calibrate_runs(runs: list[ObservedRun], config: EngineConfig, *, initial: LinearLatency | None = None,
                   max_iterations: int = 12, tolerance: float = 0.01, progress=None) -> Calibration:
    """Fit the linear model to `runs` (module doc): replay with the current model, solve for the coefficients
    from the observed step durations, repeat until no coefficient moves by more than `tolerance` (relative to the
    step's scale) or `max_iterations`. `progress(iteration, model)` is called after each."""
    config = dataclasses.replace(config, timeout_s=None, max_queue=None)  # the client's timeouts are in the records
    gaps = [np.diff(np.asarray(t)) for run in runs for t in run.requests.filter(pl.col("ok"))["chunk_times_s"]
            if t is not None and len(t) > 1]
    if not gaps:
        raise BurstGPTError("the runs have no streamed chunk times: record them with `bench --chunk-times`")
    median_gap = float(np.median(np.concatenate(gaps)))
    model = initial or LinearLatency(max(median_gap, MIN_BASE_S), 0.0, 0.0)
    history = [model]
    converged = False
    fit = None
    for iteration in range(1, max_iterations + 1):
        # Each round starts again from the send times: which steps the replay gets wrong depends on the model.
        designs = [_aligned_design(run, config, model) for run in runs]
        features = np.vstack([d[0] for d in designs])
        seconds = np.concatenate([d[1] for d in designs])
        fit = fit_linear(features, seconds, relative=False)
        # Movement measured in each term's contribution to a typical step (its mean feature), against the
        # typical gap: a coefficient of a term that is always tiny may wander without mattering.
        typical = np.abs(features).mean(axis=0)
        before = np.array([getattr(model, n) for n in LINEAR_TERMS])
        after = np.array([getattr(fit.model, n) for n in LINEAR_TERMS])
        moved = float(np.max(np.abs(after - before) * typical) / median_gap)
        model = fit.model
        history.append(model)
        if progress is not None:
            progress(iteration, model)
        if moved < tolerance:
            converged = True
            break
    checks = pl.concat([_checks(run, replay_run(run, config, model, follow_observed=False)) for run in runs])
    return Calibration(fit, history, converged, checks)


def _checks(run: ObservedRun, replay: Replay) -> pl.DataFrame:
    """Observed vs simulated figures of one run: median TTFT and end-to-end latency of its ok requests (the
    client's, so they include the network), and, from the scraped step-level metrics, the engine steps and
    the mean queue / prefill / decode times of the requests finished between the first and the last scrape."""
    requests = run.requests
    ok = requests["ok"].to_numpy()
    sent = requests["sent_s"].to_numpy()
    rows = [
        ("median TTFT, s", np.nanmedian(requests["first_token_s"].to_numpy()[ok] - sent[ok]),
         np.nanmedian(replay.first_token_s[ok] - sent[ok])),
        ("median end-to-end, s", np.nanmedian(requests["end_s"].to_numpy()[ok] - sent[ok]),
         np.nanmedian(replay.end_s[ok] - sent[ok])),
    ]
    metrics = run.server_metrics
    if metrics is not None and metrics.height >= 2:
        first, last = metrics.row(0, named=True), metrics.row(metrics.height - 1, named=True)
        start, stop = first["time_s"], last["time_s"]

        def delta(name: str) -> float | None:
            if first.get(name) is None or last.get(name) is None:
                return None
            return last[name] - first[name]

        steps = delta("iteration_tokens_count")
        if steps is not None:
            inside = (replay.step_end_s > start) & (replay.step_end_s <= stop)
            rows.append(("engine steps between scrapes", steps, float(inside.sum())))
        ended = ok & (requests["end_s"].to_numpy() > start) & (requests["end_s"].to_numpy() <= stop)
        phases = {"queue": replay.first_scheduled_s - sent, "prefill": replay.first_token_s - replay.first_scheduled_s,
                  "decode": replay.end_s - replay.first_token_s}
        for phase, simulated in phases.items():
            total, count = delta(f"request_{phase}_time_sum"), delta(f"request_{phase}_time_count")
            if total is not None and count:
                rows.append((f"mean {phase} time, s", total / count, float(np.nanmean(simulated[ended]))))
    return pl.DataFrame({"run": [run.name] * len(rows), "quantity": [r[0] for r in rows],
                         "observed": [float(r[1]) for r in rows], "simulated": [float(r[2]) for r in rows]})


# -- using a fitted model on a run --------------------------------------------------------------------------------
def engine_setup_from_model_file(path: str | Path, /, **changes) -> EngineSetup:
    """The simulated engine a latency model file describes: its model, the engine settings it carries
    (`FittedModel.engine_settings`, and `enable_prefix_caching` when recorded), EngineSpec's defaults for the
    rest; `changes` set any EngineSpec field (e.g. `timeout_s=30.0`, `max_num_seqs=64`: vLLM does not expose
    its batch limits, so give your server's)."""
    fitted = load_latency_model(path)
    fields: dict = {**fitted.engine_settings(), "latency": fitted.latency}
    if fitted.frontend_delay_s is not None:
        fields["frontend_delay_s"] = fitted.frontend_delay_s
    if isinstance(fitted.engine.get("enable_prefix_caching"), bool):
        fields["enable_prefix_caching"] = fitted.engine["enable_prefix_caching"]
    return build_engine_setup(EngineSpec(**{**fields, **changes}))


def workload_from_run(run_dir: str | Path) -> pl.DataFrame:
    """A workload replaying a `bench` run as its server saw it (`workload_from_records` on the run's records),
    with the prefix block ids of the run's workload file where it has them."""
    run = read_run_directory(run_dir)
    workload_file = Path(run_dir) / WORKLOAD_FILE
    workload = read_workload(workload_file) if workload_file.exists() else None
    return workload_from_records(run.records, workload, source=run_dir)


def workload_from_records(records: pl.DataFrame, workload: pl.DataFrame | None = None, *,
                          source: str | Path = "records") -> pl.DataFrame:
    """One row per request that reached the server, in send order, arriving when it was sent (the records'
    clock), with the prompt and output lengths the server reported (`output_tokens` fixed: a request that
    failed part-way is replayed to the length it got); prefix block ids from `workload` (the run's workload
    table) joined by request_id when given."""
    records = records.filter(pl.col("sent_s").is_not_null() & (pl.col("input_tokens") > 0)).sort("sent_s")
    frame = records.select("request_id", pl.col("sent_s").alias("arrival_s"), "input_tokens",
                           pl.col("output_tokens").fill_null(0).clip(lower_bound=1), "model", "service")
    if workload is not None:
        prefixes = workload.select("request_id", "prefix_block_ids", "prefix_block_size")
        frame = frame.join(prefixes, on="request_id", how="left", maintain_order="left")
    return validate_workload(conform_workload(frame), source)
