"""Running sweep points: one point's metrics row, serially or as Ray tasks, resumable, interrupted cleanly.

A point is a full simulated run (`SimTarget`), or with a URL a real `bench` run against that server
(`ServerTarget`: one point at a time, after a cool-down and once the server reports nothing running or queued).
Each point's result is a one-row Polars frame (`POINT_COLUMNS`); the sweep's results table is those rows in
point order.

Execution (`map_points`): serially in this process, or as Ray tasks (`ray.remote`) that return result rows (no
shared files): a local Ray started in-process when none is running (`ray_address` joins an existing cluster),
its workers warmed with the modules the tasks need (`warm_workers`) as part of its start-up, rows collected as
tasks finish (`ray.wait`); Ctrl-C cancels the pending tasks and keeps the rows already in.
Ray is optional (`pip install burstgpt[ray]`): without it the default falls back to serial. The same point gives
the same row either way: the seed is part of the point.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from burstgpt.errors import BurstGPTError, InputError
from burstgpt.metrics.requests import average_metrics
from burstgpt.outputs import atomic_path, write_json_atomic
from burstgpt.sweep.spec import AXES, SweepPoint, SweepSpec, point_specs

RESULTS_FILE = "results.parquet"
SPEC_FILE = "sweep.json"
EXECUTORS = ("auto", "ray", "serial")

#: Modules a simulated point imports, some lazily on its first run (the Zipf pmf pulls in scipy.stats): a fresh
#: process pays ~0.9 s CPU for them, so a local Ray imports them in every worker as part of its start-up.
SIM_POINT_MODULES = ("burstgpt.sim.simulate", "burstgpt.workload.spec", "burstgpt.workload.lengths",
                     "burstgpt.metrics.requests")

#: The metric columns of a point's row, after `point_id`, the axis columns and `seed` (times in seconds; R, L, P
#: are the paper's failure rate, latency and throughput; KV usage is a fraction 0-1 over the arrival span).
POINT_COLUMNS = {
    "requests": "requests in the workload",
    "succeeded": "requests that succeeded",
    "failed": "requests that failed",
    "failure_rate": "R: failed / (succeeded + failed)",
    "offered_rate_rps": "the workload's mean arrival rate, requests/s",
    "latency_mean_s": "L: mean end-to-end latency of succeeded requests",
    "latency_median_s": "its median", "latency_p90_s": "its p90", "latency_p99_s": "its p99",
    "ttft_mean_s": "mean time to first token", "ttft_p90_s": "its p90", "ttft_p99_s": "its p99",
    "tpot_mean_s": "mean time per output token", "tpot_p90_s": "its p90",
    "throughput_rps": "P: succeeded requests per second over the run's span",
    "throughput_tokens_per_s": "P: output tokens per second",
    "kv_usage_mean": "mean KV-cache usage (0-1) while requests arrive",
    "kv_usage_p90": "its p90", "kv_usage_peak": "highest KV-cache usage seen",
    "preemptions": "engine preemptions",
    "slo_attainment": "share of requests that succeeded within the SLO (null without one)",
    "goodput_rps": "requests within the SLO per second (null without one)",
}


# ------------------------------------------------------------------------------------------------ one point


def point_metrics(records: pl.DataFrame, server_metrics: pl.DataFrame | None, arrival_end_s: float,
                  slo: dict[str, float] | None = None) -> dict[str, Any]:
    """`POINT_COLUMNS` of one run: its records (`burstgpt.records`) and server metrics; KV usage is averaged
    over the samples up to `arrival_end_s` (the last arrival), so the drain after the load does not dilute it."""
    summary = average_metrics(records, slo or None)
    accounting = summary["requests"]
    latency = summary["latency_s"]
    throughput = summary["throughput"]
    kv_mean = kv_p90 = kv_peak = preemptions = None
    if server_metrics is not None and server_metrics.height:
        kv = server_metrics.filter(pl.col("time_s") <= arrival_end_s)["kv_cache_usage_perc"].drop_nulls()
        if kv.len():
            kv_mean, kv_p90 = float(kv.mean()), float(kv.quantile(0.9, "linear"))
        peak_column = "kv_cache_usage_peak" if "kv_cache_usage_peak" in server_metrics.columns else None
        peak = server_metrics[peak_column or "kv_cache_usage_perc"].drop_nulls()  # a scrape has no peak column
        kv_peak = float(peak.max()) if peak.len() else None
        counter = server_metrics["num_preemptions_total"].drop_nulls()
        preemptions = float(counter[-1] - counter[0]) if counter.len() >= 2 else None
    attainment = goodput_rps = None
    if slo:
        finished = accounting["succeeded"] + accounting["failed"]
        attainment = summary["goodput"]["good_requests"] / finished if finished else None
        goodput_rps = summary["goodput"]["goodput_requests_per_s"]
    return {
        "requests": accounting["total"], "succeeded": accounting["succeeded"], "failed": accounting["failed"],
        "failure_rate": summary["failure_rate"], "offered_rate_rps": summary["schedule"]["offered_rate_rps"],
        "latency_mean_s": latency["e2e"]["mean"], "latency_median_s": latency["e2e"]["median"],
        "latency_p90_s": latency["e2e"]["p90"], "latency_p99_s": latency["e2e"]["p99"],
        "ttft_mean_s": latency["ttft"]["mean"], "ttft_p90_s": latency["ttft"]["p90"],
        "ttft_p99_s": latency["ttft"]["p99"], "tpot_mean_s": latency["tpot"]["mean"],
        "tpot_p90_s": latency["tpot"]["p90"], "throughput_rps": throughput["requests_per_s"],
        "throughput_tokens_per_s": throughput["output_tokens_per_s"], "kv_usage_mean": kv_mean,
        "kv_usage_p90": kv_p90, "kv_usage_peak": kv_peak, "preemptions": preemptions,
        "slo_attainment": attainment, "goodput_rps": goodput_rps,
    }


@dataclass(frozen=True)
class SimTarget:
    """Points run on the simulator (`burstgpt.sim.simulate_workload`)."""

    kind: str = "sim"


@dataclass(frozen=True)
class ServerTarget:
    """Points run as `bench` runs against `url` (OpenAI-compatible, Prometheus metrics at `metrics_url`, default
    URL/metrics): before each, `cooldown_s` of rest, then until `idle_timeout_s` for the server to report nothing
    running or waiting. `on_run(point, result)`: called with each point's `burstgpt.client.BenchResult` (the CLI
    writes its run directory)."""

    url: str
    metrics_url: str | None = None
    cooldown_s: float = 5.0
    idle_timeout_s: float = 120.0
    api: str = "completions"
    on_run: Callable[[SweepPoint, Any], None] | None = field(default=None, compare=False)
    kind: str = "server"


def run_point(spec: SweepSpec, point: SweepPoint, target: SimTarget | ServerTarget | None = None) -> pl.DataFrame:
    """One point's row: `point_id`, the axis values, `seed`, then `POINT_COLUMNS`."""
    from burstgpt.workload.spec import build_workload

    workload_spec, engine_spec = point_specs(spec, point)
    workload = build_workload(workload_spec)
    if workload.height == 0:
        raise BurstGPTError(f"sweep point {point.point_id}: the workload has no requests")
    arrival_end_s = float(workload["arrival_s"].max())
    if isinstance(target, ServerTarget):
        records, server = _bench_point(workload, target, point, spec)
    else:
        from burstgpt.sim.simulate import build_engine_setup, simulate_workload

        result = simulate_workload(workload, build_engine_setup(engine_spec), output_lengths=spec.output_lengths,
                                   seed=point.seed, steps="none", metrics_interval_s=spec.metrics_interval_s,
                                   workers=1)  # points are the unit of parallelism: no processes within one
        records, server = result.records, result.server_metrics
    names = [axis.name for axis in spec.axes]
    names += [name for name in point.values if name not in names]
    row = {"point_id": point.point_id, **{name: point.values.get(name) for name in names}, "seed": point.seed,
           **point_metrics(records, server, arrival_end_s, spec.slo)}
    return pl.DataFrame([row], schema_overrides=_row_schema(names))


def _row_schema(axis_names: list[str]) -> dict[str, pl.DataType]:
    """Column types of a point's row: axes by their kind (`AXES`: an axis a point leaves at the base is null)."""
    kinds = {float: pl.Float64, int: pl.Int64, str: pl.String}
    integers = ("requests", "succeeded", "failed")
    return {**{name: kinds[AXES[name]] for name in axis_names}, "seed": pl.Int64,
            **{name: pl.Int64 if name in integers else pl.Float64 for name in POINT_COLUMNS}}


def _bench_point(workload: pl.DataFrame, target: ServerTarget, point: SweepPoint, spec: SweepSpec):
    """Run `workload` against the server after the cool-down and the idle check; (records, server metrics)."""
    from burstgpt.client import EndpointOptions, LoadGenerator, RunOptions

    metrics_url = target.metrics_url or target.url.rstrip("/") + "/metrics"
    time.sleep(target.cooldown_s)
    wait_until_idle(metrics_url, target.idle_timeout_s)
    result = LoadGenerator(workload, EndpointOptions(target.url, api=target.api),
                           RunOptions(metrics_url=metrics_url, progress=False, prompt_seed=point.seed)).run_sync()
    if result.interrupted:
        raise KeyboardInterrupt
    if target.on_run is not None:
        target.on_run(point, result)
    return result.records, result.server_metrics


def wait_until_idle(metrics_url: str, timeout_s: float, poll_s: float = 0.5) -> None:
    """Return once the server's metrics show no request running or waiting; `BurstGPTError` after `timeout_s`, or
    when the metrics cannot be read."""
    import asyncio

    import aiohttp

    from burstgpt.client import scrape

    async def poll() -> None:
        async with aiohttp.ClientSession(trust_env=False) as session:
            async def metrics_text() -> str:
                try:
                    async with session.get(metrics_url) as response:
                        return await response.text()
                except aiohttp.ClientError as exc:
                    raise BurstGPTError(f"{metrics_url}: cannot read server metrics for the idle check: "
                                        f"{exc}") from None

            await scrape.wait_until_idle(metrics_text, timeout_s, poll_s=poll_s,
                                         busy_hint=f"{metrics_url}: another client may be using it")

    asyncio.run(poll())


# ------------------------------------------------------------------------------------------------ execution


def map_points(fn: Callable, items: Sequence[tuple], *, executor: str = "auto", ray_address: str | None = None,
               num_cpus: int | None = None, on_result: Callable[[int, Any], None] | None = None,
               preload: Sequence[str] = (),
               notice: Callable[[str], None] = lambda message: print(message, file=sys.stderr)) -> None:
    """Call `fn(*items[i])` for every i, serially or as Ray tasks; `on_result(i, result)` in this process as each
    finishes (in completion order). `fn` must be a module-level function (Ray ships it by reference).
    `executor` "auto": Ray when installed, else serial with a notice. Ctrl-C cancels what has not finished.
    `preload`: modules `fn` imports lazily; a local Ray started here imports them (and `fn`'s module) in each
    worker before the first task (`warm_workers`)."""
    if executor not in EXECUTORS:
        raise BurstGPTError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    on_result = on_result or (lambda index, result: None)
    if executor != "serial" and items:
        try:
            import ray
        except ImportError:
            if executor == "ray" or ray_address:
                raise BurstGPTError("Ray is not installed: pip install 'burstgpt[ray]', or run with --serial") from None
            notice("Ray is not installed (pip install 'burstgpt[ray]'): running the points one after another")
        else:
            _map_on_ray(ray, fn, items, ray_address, num_cpus, on_result, (fn.__module__, *preload))
            return
    for index, args in enumerate(items):
        on_result(index, fn(*args))


def start_ray(ray_address: str | None = None, num_cpus: int | None = None) -> None:
    """`ray.init` as the sweep runs it: an in-process local Ray with `num_cpus` CPUs (None: all), or the cluster
    at `ray_address`; quiet (no dashboard; workers' output not echoed). Measured here (2 cores, Ray 2.60): it
    takes 3-3.5 s CPU and 2.3-4.5 s wall, Python processes importing Ray (GCS, raylet, autoscaler monitor, log
    monitor, API server, dashboard and runtime-env agents, one worker per CPU), which no `ray.init` option or
    system config we tried lowers; idle, they then use ~0.03 CPU-s per second in all."""
    import ray

    options = {} if ray_address else {"num_cpus": num_cpus}
    ray.init(address=ray_address, include_dashboard=False, log_to_driver=False, configure_logging=False, **options)


def _import_modules(modules: Sequence[str]) -> int:
    """Import `modules` (a warm-up task): this worker's process id."""
    for name in modules:
        importlib.import_module(name)
    return os.getpid()


def warm_workers(modules: Sequence[str]) -> set[int]:
    """Import `modules` in the workers of the running Ray, one task per CPU, so the first real tasks do not pay
    for the imports (a fresh worker otherwise spends ~0.9 s CPU in its first point); the workers' process ids."""
    import ray

    task = ray.remote(num_cpus=1)(_import_modules)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return set(ray.get([task.remote(tuple(modules)) for _ in range(cpus)]))


def _map_on_ray(ray, fn, items, ray_address, num_cpus, on_result, modules) -> None:
    started_here = not ray.is_initialized()
    if started_here:
        start_ray(ray_address, num_cpus)
    try:
        if started_here and not ray_address:
            warm_workers(modules)  # fresh local workers: part of the start-up (a cluster's may be warm already)
        task = ray.remote(num_cpus=1)(fn)
        pending = {task.remote(*args): index for index, args in enumerate(items)}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(done[0])
                on_result(index, ray.get(done[0]))
        except BaseException:  # Ctrl-C or a failed point: stop the rest, keep what finished
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started_here:
            ray.shutdown()


# ------------------------------------------------------------------------------------------------ the sweep


@dataclass
class SweepResult:
    """The results table (`point_id`, axis columns, `seed`, `POINT_COLUMNS`; in point order), how many points ran
    now and were found done already, and whether Ctrl-C cut the sweep short."""

    table: pl.DataFrame
    ran: int
    resumed: int
    interrupted: bool = False


def run_sweep(spec: SweepSpec, out_dir: str | Path | None = None, *, executor: str = "auto",
              ray_address: str | None = None, num_cpus: int | None = None,
              target: SimTarget | ServerTarget | None = None, overwrite: bool = False,
              progress: Callable[[int, int, str], None] | None = None,
              notice: Callable[[str], None] = lambda message: print(message, file=sys.stderr)) -> SweepResult:
    """Run every point of `spec` not already in `out_dir`'s results (resume), writing `results.parquet` again
    (atomically) after each finished point and `sweep.json` (the spec) first. `out_dir` None: nothing written.
    With a `ServerTarget` the points run one at a time. `progress(done, total, point_id)` after each point."""
    points = spec.points()
    done = _prepare_output(spec, Path(out_dir), overwrite) if out_dir is not None else None
    finished_ids = set(done["point_id"].to_list()) if done is not None else set()
    todo = [point for point in points if point.point_id not in finished_ids]
    rows: list[pl.DataFrame] = [done] if done is not None and done.height else []
    order = {point.point_id: index for index, point in enumerate(points)}

    def table() -> pl.DataFrame:
        if not rows:
            return pl.DataFrame()
        frame = pl.concat(rows, how="diagonal_relaxed")
        return frame.sort(pl.col("point_id").replace_strict(order, default=len(order), return_dtype=pl.Int64))

    def finished(index: int, row: pl.DataFrame) -> None:
        rows.append(row)
        if out_dir is not None:
            with atomic_path(Path(out_dir) / RESULTS_FILE) as tmp:
                table().write_parquet(tmp)
        if progress is not None:
            progress(len(points) - len(todo) + _count(rows, done), len(points), todo[index].point_id)

    if isinstance(target, ServerTarget):
        executor = "serial"  # a real server takes one run at a time
    interrupted = False
    try:
        map_points(run_point, [(spec, point, target) for point in todo], executor=executor,
                   ray_address=ray_address, num_cpus=num_cpus, on_result=finished, preload=SIM_POINT_MODULES,
                   notice=notice)
    except KeyboardInterrupt:
        interrupted = True
    ran = _count(rows, done)
    return SweepResult(table(), ran=ran, resumed=len(finished_ids & set(order)), interrupted=interrupted)


def _count(rows: list[pl.DataFrame], done: pl.DataFrame | None) -> int:
    """Rows run in this call (the resumed frame is the first entry of `rows` when there is one)."""
    return len(rows) - (1 if done is not None and done.height else 0)


def _prepare_output(spec: SweepSpec, out: Path, overwrite: bool) -> pl.DataFrame | None:
    """The rows already in `out` (None when it holds no sweep); refuse a folder holding a different sweep."""
    spec_path, results_path = out / SPEC_FILE, out / RESULTS_FILE
    if overwrite:
        results_path.unlink(missing_ok=True)
    elif spec_path.exists():
        try:
            previous = json.loads(spec_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(spec_path, f"not JSON: {exc.msg}", line=exc.lineno) from None
        same_base = _jsonable(previous.get("base")) == _jsonable(spec.base_dict())
        same_axes = previous.get("axis_names") == [axis.name for axis in spec.axes]
        if not (same_base and same_axes):
            raise BurstGPTError(f"{out} holds a different sweep (other base settings or axes): choose another "
                                "--out or give --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(spec_path, {**spec.to_dict(), "base": spec.base_dict(),
                                  "axis_names": [axis.name for axis in spec.axes]})
    if not results_path.exists():
        return None
    try:
        return pl.read_parquet(results_path)
    except Exception as exc:  # polars raises several error types for a damaged file
        raise InputError(results_path, f"cannot read the previous results: {str(exc).splitlines()[0]}") from None


def _jsonable(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), for comparing a spec with a stored one."""
    return json.loads(json.dumps(value, default=str))


__all__ = ["EXECUTORS", "POINT_COLUMNS", "RESULTS_FILE", "SIM_POINT_MODULES", "SPEC_FILE", "ServerTarget",
           "SimTarget", "SweepResult", "map_points", "point_metrics", "run_point", "run_sweep", "start_ray",
           "wait_until_idle", "warm_workers"]
