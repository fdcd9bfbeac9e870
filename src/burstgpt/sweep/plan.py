"""Capacity planning: the fewest replicas of each GPU/model preset that meet an SLO over a whole workload, and
an autoscaler that follows the load, with its cost against the fixed fleet.

A fleet is N replicas behind a router (`burstgpt.sim.cluster.simulate_cluster`); it meets the SLO when at least
`attainment` of the requests succeed within it (`burstgpt.metrics.requests.meets_slo_expr`), over the whole
workload. `fewest_replicas` doubles N from 1 until the SLO is met, then bisects (attainment grows with N).

The autoscaler (`AutoscaleSpec`) sizes the fleet per window of `window_s` seconds from the previous window's
arrival rate: ceil(rate x headroom / capacity) replicas, between `min_replicas` and the fixed fleet's size
times `max_factor`, where `capacity` (requests/s one replica serves within the SLO) defaults to the busiest
window's rate divided by the fixed fleet's size. New replicas take `startup_delay_s` to join the rotation;
replicas leave it at once (and finish what they hold). Cost is in GPU-hours (a preset replica is one GPU):
replicas provisioned x time, booting ones included, over the workload's windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.metrics.requests import derive_request_metrics, meets_slo_expr
from burstgpt.sim.cluster import ROUTERS, simulate_cluster
from burstgpt.sim.output_lengths import DEFAULT_OUTPUT_LENGTH_SPEC
from burstgpt.sim.simulate import EngineSpec, build_engine_setup
from burstgpt.sweep.run import map_points, point_metrics


@dataclass(frozen=True)
class AutoscaleSpec:
    """Per-window autoscaling (see the module doc); seconds, requests/s."""

    window_s: float = 300.0
    startup_delay_s: float = 60.0
    capacity_rps: float | None = None
    headroom: float = 1.0
    min_replicas: int = 1
    max_factor: float = 2.0

    def check(self) -> None:
        if not (self.window_s > 0 and self.startup_delay_s >= 0 and self.headroom > 0 and self.min_replicas >= 1
                and self.max_factor >= 1):
            raise BurstGPTError("autoscaler: the window must be positive, the start-up delay not negative, the "
                                "headroom positive, at least one replica")
        if self.capacity_rps is not None and not self.capacity_rps > 0:
            raise BurstGPTError("autoscaler: the replica capacity must be a positive rate")


@dataclass(frozen=True)
class PlanSpec:
    """What to size: the engines (one `EngineSpec` per GPU/model preset), the SLO (seconds per metric name) and
    the share of requests that must meet it, the router (`burstgpt.sim.cluster.ROUTERS`), the most replicas to
    try, and optionally an autoscaler."""

    engines: tuple[EngineSpec, ...]
    slo: dict[str, float]
    attainment: float = 0.99
    router: str = "least_outstanding"
    max_replicas: int = 64
    autoscale: AutoscaleSpec | None = None
    output_lengths: str = DEFAULT_OUTPUT_LENGTH_SPEC
    seed: int = 0
    metrics_interval_s: float = 1.0

    def check(self) -> None:
        if not self.engines:
            raise BurstGPTError("plan: give at least one GPU/model preset")
        if not self.slo:
            raise BurstGPTError("plan: give an SLO, e.g. --slo ttft=2,tpot=0.1")
        if not 0 < self.attainment <= 1:
            raise BurstGPTError(f"plan: the attainment target is a share in (0, 1], got {self.attainment}")
        if self.router not in ROUTERS:
            raise BurstGPTError(f"unknown router {self.router!r}; use one of {', '.join(ROUTERS)}")
        if self.max_replicas < 1:
            raise BurstGPTError("plan: --max-replicas must be at least 1")
        if self.autoscale is not None:
            self.autoscale.check()


@dataclass
class PlanResult:
    """`table`: one row per preset (gpu, model, replicas: the fewest meeting the SLO or null, slo_attainment,
    gpu_hours_fixed, and with autoscaling: autoscaled_attainment, gpu_hours_autoscaled, cost_ratio);
    `search`: every fleet evaluated (gpu, model, replicas, meets, then `burstgpt.sweep.run.POINT_COLUMNS`);
    `windows`: per preset and window (window, start_s, rate_rps, fixed_replicas, slo_attainment_fixed, and with
    autoscaling: desired_replicas, active_replicas, slo_attainment_autoscaled)."""

    table: pl.DataFrame
    search: pl.DataFrame
    windows: pl.DataFrame


def plan_capacity(workload: pl.DataFrame, spec: PlanSpec, *, executor: str = "auto", ray_address: str | None = None,
                  num_cpus: int | None = None, progress=None) -> PlanResult:
    """Size every preset of `spec` for `workload` (one task per preset, serial or on Ray: `run.map_points`)."""
    spec.check()
    if workload.height == 0:
        raise BurstGPTError("plan: the workload has no requests")
    results: dict[int, tuple] = {}

    def finished(index: int, result) -> None:
        results[index] = result
        if progress is not None:
            progress(len(results), len(spec.engines), f"{spec.engines[index].gpu} x {spec.engines[index].model}")

    map_points(size_preset, [(workload, spec, engine) for engine in spec.engines], executor=executor,
               ray_address=ray_address, num_cpus=num_cpus, on_result=finished)
    parts = [results[index] for index in range(len(spec.engines))]
    return PlanResult(pl.concat([p[0] for p in parts], how="diagonal_relaxed"),
                      pl.concat([p[1] for p in parts], how="diagonal_relaxed"),
                      pl.concat([p[2] for p in parts], how="diagonal_relaxed"))


def size_preset(workload: pl.DataFrame, spec: PlanSpec, engine: EngineSpec) -> tuple[pl.DataFrame, ...]:
    """(summary row, search rows, window rows) of one preset: a Ray task or a plain call."""
    setup = build_engine_setup(engine)
    names = {"gpu": setup.gpu_name, "model": setup.model_name}
    replicas, search, fleets = fewest_replicas(workload, spec, engine)
    search = search.select(pl.lit(names["gpu"]).alias("gpu"), pl.lit(names["model"]).alias("model"), pl.all())
    fixed_n = replicas or spec.max_replicas
    fixed = fleets[fixed_n]
    edges = _window_edges(workload, spec.autoscale.window_s if spec.autoscale else None)
    rate = _window_rates(workload, edges)
    windows = pl.DataFrame({"window": np.arange(rate.size), "start_s": edges[:-1], "rate_rps": rate,
                            "fixed_replicas": np.full(rate.size, fixed_n)})
    windows = windows.with_columns(pl.Series("slo_attainment_fixed", _window_attainment(fixed, edges, spec.slo)))
    hours = (edges[-1] - edges[0]) / 3600.0
    row = {**names, "router": spec.router, "replicas": replicas,
           "slo_attainment": float(search.filter(pl.col("replicas") == fixed_n)["slo_attainment"][0]),
           "gpu_hours_fixed": fixed_n * hours}
    if spec.autoscale is not None:
        plan = autoscale(rate, edges, fixed_n, spec.autoscale)
        result = simulate_cluster(workload, setup, int(plan["desired_replicas"].max()), spec.router,
                                  output_lengths=spec.output_lengths, seed=spec.seed,
                                  metrics_interval_s=spec.metrics_interval_s,
                                  active=plan.select("time_s", pl.col("active_replicas").alias("replicas")))
        attainment = point_metrics(result.records, None, 0.0, spec.slo)["slo_attainment"]
        desired = plan.filter(pl.col("kind") == "window")
        windows = windows.with_columns(
            pl.Series("desired_replicas", desired["desired_replicas"].to_numpy()),
            pl.Series("active_replicas", _active_at(plan, edges[1:])),
            pl.Series("slo_attainment_autoscaled", _window_attainment(result.records, edges, spec.slo)),
        )
        gpu_hours = float((desired["desired_replicas"].to_numpy() * np.diff(edges)).sum() / 3600.0)
        row.update(autoscaled_attainment=attainment, gpu_hours_autoscaled=gpu_hours,
                   cost_ratio=gpu_hours / row["gpu_hours_fixed"] if row["gpu_hours_fixed"] else None)
    windows = windows.select(pl.lit(names["gpu"]).alias("gpu"), pl.lit(names["model"]).alias("model"), pl.all())
    return pl.DataFrame([row]), search, windows


def fewest_replicas(workload: pl.DataFrame, spec: PlanSpec, engine: EngineSpec
                    ) -> tuple[int | None, pl.DataFrame, dict[int, pl.DataFrame]]:
    """(the fewest replicas meeting the SLO, None when even `max_replicas` do not; one row per fleet tried;
    the records of every fleet tried by size)."""
    setup = build_engine_setup(engine)
    rows: list[dict] = []
    records: dict[int, pl.DataFrame] = {}
    arrival_end_s = float(workload["arrival_s"].max())

    def meets(n: int) -> bool:
        result = simulate_cluster(workload, setup, n, spec.router, output_lengths=spec.output_lengths,
                                  seed=spec.seed, metrics_interval_s=spec.metrics_interval_s)
        records[n] = result.records
        server = pl.concat(result.server_metrics) if n == 1 else None  # KV usage only means something for one
        metrics = point_metrics(result.records, server, arrival_end_s, spec.slo)
        ok = metrics["slo_attainment"] is not None and metrics["slo_attainment"] >= spec.attainment
        rows.append({"replicas": n, "meets": ok, **metrics})
        return ok

    low, high = 0, None  # low fails (0: none tried), high meets
    n = 1
    while n <= spec.max_replicas:
        if meets(n):
            high = n
            break
        low = n
        n = min(2 * n, spec.max_replicas) if n < spec.max_replicas else spec.max_replicas + 1
    while high is not None and high - low > 1:
        middle = (low + high) // 2
        if meets(middle):
            high = middle
        else:
            low = middle
    search = pl.DataFrame(rows).sort("replicas")
    return high, search, records


def autoscale(rate_rps: np.ndarray, edges: np.ndarray, fixed_replicas: int, spec: AutoscaleSpec) -> pl.DataFrame:
    """The autoscaler's plan: rows (kind, time_s, desired_replicas, active_replicas), a "window" row at each
    window's start (desired from the previous window's rate; the first window from its own) and a "ready" row when
    a scale-up's replicas join (start + startup delay). Active = min(desired now, desired startup_delay_s ago)."""
    capacity = spec.capacity_rps or max(float(rate_rps.max()), 1e-9) / fixed_replicas
    most = max(spec.min_replicas, math.ceil(fixed_replicas * spec.max_factor))
    previous = np.concatenate([rate_rps[:1], rate_rps[:-1]])
    desired = np.clip(np.ceil(previous * spec.headroom / capacity - 1e-9), spec.min_replicas, most).astype(np.int64)
    starts = edges[:-1]

    def desired_at(times: np.ndarray) -> np.ndarray:
        index = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, desired.size - 1)
        return desired[index]

    times = np.unique(np.concatenate([starts, starts + spec.startup_delay_s]))
    times = times[times < edges[-1]]
    active = np.minimum(desired_at(times), desired_at(times - spec.startup_delay_s))
    window_rows = pl.DataFrame({"kind": "window", "time_s": starts, "desired_replicas": desired})
    return (
        pl.DataFrame({"time_s": times, "active_replicas": active})
        .join(window_rows, on="time_s", how="left")
        .with_columns(pl.col("kind").fill_null("ready"),
                      pl.col("desired_replicas").fill_null(strategy="forward"))
        .select("kind", "time_s", "desired_replicas", "active_replicas")
    )


def _active_at(plan: pl.DataFrame, times: np.ndarray) -> np.ndarray:
    """Replicas in rotation just before each of `times` (a window's end)."""
    index = np.clip(np.searchsorted(plan["time_s"].to_numpy(), times, side="left") - 1, 0, plan.height - 1)
    return plan["active_replicas"].to_numpy()[index]


def _window_edges(workload: pl.DataFrame, window_s: float | None) -> np.ndarray:
    """Window boundaries (seconds) covering the arrivals; one window over the whole span without `window_s`."""
    end = float(workload["arrival_s"].max())
    if window_s is None:
        return np.array([0.0, max(end, 1e-9)])
    return np.arange(0.0, end + window_s, window_s)[: math.floor(end / window_s) + 2]


def _window_rates(workload: pl.DataFrame, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(workload["arrival_s"].to_numpy(), bins=edges)
    return counts / np.diff(edges)


def _window_attainment(records: pl.DataFrame, edges: np.ndarray, slo: dict[str, float]) -> np.ndarray:
    """Per window (by send time), the share of finished requests that met the SLO (NaN for an empty window)."""
    derived = derive_request_metrics(records).filter(pl.col("status").is_in(["ok", "failed"]))
    sent = derived["sent_s"].to_numpy()
    good = derived.select(meets_slo_expr(slo))[:, 0].to_numpy().astype(np.float64)
    totals, _ = np.histogram(sent, bins=edges)
    goods, _ = np.histogram(sent, bins=edges, weights=good)
    with np.errstate(invalid="ignore", divide="ignore"):
        return goods / totals


__all__ = ["AutoscaleSpec", "PlanResult", "PlanSpec", "autoscale", "fewest_replicas", "plan_capacity",
           "size_preset"]
