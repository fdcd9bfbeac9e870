"""A cluster of identical simulated engine replicas behind a request router.

Replicas are `ServingEngine`s advanced together in time order: before each arrival, every replica runs the steps
that start before it (a step already running when a request arrives finishes first, as in one engine); the
router then sees each replica's state at that instant and picks one, which gets the request. After the last
arrival every replica runs to the end. Routing is sequential by nature (each choice depends on the state the
previous ones made), so this loop is over requests; the replicas' own steps are the engine's.

Router policies (`ROUTERS`):

- `round_robin`: request i goes to replica i mod N (of the replicas active then);
- `least_outstanding`: the replica with the fewest requests queued or running (vLLM production-stack's and
  most load balancers' "least requests"); ties to the lowest index;
- `least_kv`: the replica with the lowest KV-cache usage, then the fewest outstanding requests;
- `prefix_affinity`: a request with prefix block ids goes to the replica its first id hashes to (so requests
  sharing a system prompt or a session meet their cached blocks); one without ids is routed least_outstanding.

`active` (optional) makes the fleet change over time: a table of (time_s, replicas) steps, the router using only
the first `replicas` replicas from that time on (a replica taken out of rotation finishes what it has).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.sim.engine import ServingEngine
from burstgpt.sim.output_lengths import (
    DEFAULT_OUTPUT_LENGTH_SPEC,
    OutputLengthModel,
    parse_output_length_model,
    resolve_output_lengths,
)
from burstgpt.sim.simulate import EngineSetup, engine_records, workload_prefixes
from burstgpt.sim.step_log import IntervalDigest, StepLog, check_interval
from burstgpt.workload.schema import validate_workload

ROUTERS = ("round_robin", "least_outstanding", "least_kv", "prefix_affinity")
_HASH_MULTIPLIER = 0x9E3779B97F4A7C15  # Fibonacci hashing: spreads consecutive prefix ids over the replicas


@dataclass
class ClusterResult:
    """`records`: per-request records (`burstgpt.records` schema) in workload order; `replica`: the replica each
    request went to (Int64 array, workload order); `server_metrics`: one frame per replica (`burstgpt.records`
    server-metrics layout, every `metrics_interval_s`); `num_steps`: engine steps over all replicas."""

    records: pl.DataFrame
    replica: np.ndarray
    server_metrics: list[pl.DataFrame]
    num_steps: int


def simulate_cluster(
    workload: pl.DataFrame,
    setup: EngineSetup,
    replicas: int,
    router: str = "least_outstanding",
    *,
    output_lengths: OutputLengthModel | str = DEFAULT_OUTPUT_LENGTH_SPEC,
    seed: int = 0,
    metrics_interval_s: float = 1.0,
    active: pl.DataFrame | None = None,
) -> ClusterResult:
    """Run `workload` through `replicas` replicas of `setup` behind `router`. Output lengths are drawn once for
    the whole workload (as `simulate_workload` does), so a request generates the same tokens wherever it goes:
    one replica gives `simulate_workload`'s results. `active`: columns time_s, replicas (see the module doc)."""
    if router not in ROUTERS:
        raise BurstGPTError(f"unknown router {router!r}; use one of {', '.join(ROUTERS)}")
    if not isinstance(replicas, int) or replicas < 1:
        raise BurstGPTError(f"replicas must be a positive integer, got {replicas!r}")
    check_interval(metrics_interval_s)
    workload = validate_workload(workload, "workload")
    if isinstance(output_lengths, str):
        output_lengths = parse_output_length_model(output_lengths)
    config = setup.config
    lengths = resolve_output_lengths(workload, output_lengths, max_model_len=config.max_model_len, seed=seed)
    delay = setup.frontend_delay_s  # as in `simulate_workload`: the engine sees each request this much later
    engine_config = config
    if delay and config.timeout_s is not None:
        engine_config = dataclasses.replace(config, timeout_s=max(config.timeout_s - delay, 1e-9))
    engines, digests = [], []
    for _ in range(replicas):
        engine = ServingEngine(engine_config, setup.latency)
        digest = IntervalDigest(metrics_interval_s, config.num_gpu_blocks, sample=False)
        engine.steps = StepLog(config.block_size, consumers=(digest,), keep=False)
        engines.append(engine)
        digests.append(digest)

    arrival = workload["arrival_s"].to_numpy() + delay
    prompt = workload["input_tokens"].to_numpy()
    prefix_ids, prefix_size = workload_prefixes(workload)
    first_prefix = _first_prefix_ids(prefix_ids, workload.height) if router == "prefix_affinity" else None
    active_at = _active_counts(active, arrival, replicas)
    chosen = np.empty(workload.height, np.int64)
    # Per request, in arrival order: bring every replica up to the arrival, then route (see the module doc).
    for index in range(workload.height):
        at = float(arrival[index])
        for engine in engines:
            _advance(engine, at)
        count = int(active_at[index])
        target = _route(router, engines, count, index, first_prefix)
        chosen[index] = target
        ids = None if prefix_ids is None or prefix_ids[index] is None else [prefix_ids[index]]
        engines[target].submit(at, int(prompt[index]), int(lengths[index]), ids,
                               None if ids is None else int(prefix_size[index]))
    parts, order = [], []
    for number, engine in enumerate(engines):
        engine.run(jump=True)
        engine.steps.finish()
        rows = np.flatnonzero(chosen == number)
        parts.append(engine_records(engine, workload[rows], setup.model_name))
        order.append(rows)
    records = pl.concat(parts).with_columns(pl.Series("_row", np.concatenate(order))).sort("_row").drop("_row")
    return ClusterResult(records, chosen, [digest.server_metrics() for digest in digests],
                         sum(engine.steps.size for engine in engines))


def _advance(engine: ServingEngine, until_s: float) -> None:
    """Run the steps of `engine` that start before `until_s` (the last may end after it)."""
    while engine.now < until_s:
        pending = engine.next_arrival < engine.num_submitted
        bound = min(until_s, engine.arrival[engine.next_arrival]) if pending else until_s
        if not engine.step(jump=True, next_arrival_s=bound):
            if not pending:
                return  # idle with nothing to come: it waits for the router
            engine.now = max(engine.now, engine.arrival[engine.next_arrival])


def outstanding(engine: ServingEngine) -> int:
    """Requests the replica holds: queued, running, or arrived at it and not yet taken in."""
    return engine.num_running + engine.num_waiting + engine.num_submitted - engine.next_arrival


def _route(router: str, engines: list[ServingEngine], count: int, index: int, first_prefix) -> int:
    if router == "round_robin":
        return index % count
    if router == "prefix_affinity" and first_prefix[index] >= 0:
        return int(((int(first_prefix[index]) * _HASH_MULTIPLIER) % (1 << 64)) >> 32) % count
    loads = [outstanding(engine) for engine in engines[:count]]
    if router == "least_kv":
        usage = [engine.kv.used for engine in engines[:count]]
        return min(range(count), key=lambda r: (usage[r], loads[r], r))
    return min(range(count), key=lambda r: (loads[r], r))


def _first_prefix_ids(prefix_ids: list | None, count: int) -> np.ndarray:
    """Each request's first prefix block id, -1 where it has none."""
    if prefix_ids is None:
        return np.full(count, -1, np.int64)
    series = pl.Series("ids", prefix_ids, dtype=pl.List(pl.Int64))
    return series.list.first().fill_null(-1).to_numpy()


def _active_counts(active: pl.DataFrame | None, arrival: np.ndarray, replicas: int) -> np.ndarray:
    """Replicas in rotation at each arrival (all of them without an `active` table)."""
    if active is None:
        return np.full(arrival.size, replicas, np.int64)
    times = active["time_s"].to_numpy()
    counts = active["replicas"].to_numpy().astype(np.int64)
    if np.any(np.diff(times) < 0) or counts.min() < 1 or counts.max() > replicas:
        raise BurstGPTError(f"active replicas must be sorted by time and within 1..{replicas}")
    step = np.searchsorted(times, arrival, side="right") - 1
    return np.where(step >= 0, counts[np.maximum(step, 0)], counts[0])


__all__ = ["ROUTERS", "ClusterResult", "outstanding", "simulate_cluster"]
