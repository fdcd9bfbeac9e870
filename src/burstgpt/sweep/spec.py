"""A sweep described as data: `SweepSpec` (a base workload and engine, axes, seeds) -> its points.

Each point is a full run: the base `WorkloadSpec` and `EngineSpec` with the point's axis values put in and the
point's seed as the workload's and the simulator's seed, so any point can be re-run alone (`point_specs`) and
gives the same numbers. Axes (`AXES`):

| axis            | changes                                                                  | values          |
|-----------------|--------------------------------------------------------------------------|-----------------|
| alpha           | arrivals' shape alpha (scheduled arrivals)                               | > 0             |
| beta            | arrivals' Gamma scale beta, seconds (scheduled; drops the base's rate)   | > 0             |
| rate            | mean arrival rate, requests/s (scheduled: drops beta; mirrored / ServeGen: the target rate) | > 0 |
| theta           | Zipf theta of request lengths                                            | > 0             |
| num_requests    | requests per point                                                       | integer         |
| gpu, model      | engine presets (names or unambiguous prefixes)                           | text            |
| num_gpu_blocks, max_num_seqs, max_num_batched_tokens | engine limits                       | integer         |
| latency_model   | a step-time model file from `burstgpt profile` / `calibrate`             | path            |
| timeout         | the clients' timeout, seconds                                            | > 0             |

`mode` "grid" runs every combination of the axes' values; "list" zips them (all axes equally long); "each" varies
one axis at a time with the others at the base (the paper's Fig 17: alpha, beta and theta each swept around
Table III; a point's other axis columns are then null). Every combination runs once per seed of `seeds`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from burstgpt.errors import BurstGPTError
from burstgpt.sim.output_lengths import DEFAULT_OUTPUT_LENGTH_SPEC
from burstgpt.sim.simulate import EngineSpec
from burstgpt.workload.spec import MirroredArrivals, ScheduledArrivals, ServeGenClients, WorkloadSpec

SWEEP_FORMAT = "burstgpt-sweep/1"
SWEEP_MODES = ("grid", "list", "each")

#: Axis name -> value type (float axes accept ints).
AXES: dict[str, type] = {
    "alpha": float, "beta": float, "rate": float, "theta": float, "num_requests": int,
    "gpu": str, "model": str, "num_gpu_blocks": int, "max_num_seqs": int, "max_num_batched_tokens": int,
    "latency_model": str, "timeout": float,
}
_ENGINE_FIELDS = {"gpu": "gpu", "model": "model", "num_gpu_blocks": "num_gpu_blocks", "max_num_seqs": "max_num_seqs",
                  "max_num_batched_tokens": "max_num_batched_tokens", "timeout": "timeout_s"}


@dataclass(frozen=True)
class SweepAxis:
    """One swept parameter (a name of `AXES`) and its values, in sweep order."""

    name: str
    values: tuple

    def __post_init__(self) -> None:
        if self.name not in AXES:
            raise BurstGPTError(f"unknown sweep axis {self.name!r}; use one of {', '.join(AXES)}")
        if not self.values:
            raise BurstGPTError(f"sweep axis {self.name} has no values")
        kind = AXES[self.name]
        values = []
        for value in self.values:
            try:
                typed = kind(value)
            except (TypeError, ValueError):
                raise BurstGPTError(f"sweep axis {self.name}: {value!r} is not a {kind.__name__}") from None
            if kind is int and typed != float(value):
                raise BurstGPTError(f"sweep axis {self.name}: {value!r} is not a whole number")
            if kind is not str and not (math.isfinite(typed) and typed > 0):
                raise BurstGPTError(f"sweep axis {self.name}: values must be positive, got {value!r}")
            values.append(typed)
        if len(set(values)) != len(values):
            raise BurstGPTError(f"sweep axis {self.name} repeats a value")
        object.__setattr__(self, "values", tuple(values))


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its axis values (in axis order), its seed, and `point_id`, the key resuming uses."""

    values: dict[str, Any]
    seed: int

    @property
    def point_id(self) -> str:
        return ",".join([*(f"{name}={value}" for name, value in self.values.items()), f"seed={self.seed}"])


@dataclass(frozen=True)
class SweepSpec:
    """A base workload and engine, the axes swept around them and the seeds each combination runs with.

    `output_lengths`: the simulator's output-length model where the workload leaves lengths to the model
    (`burstgpt.sim.output_lengths`); `slo`: seconds per metric name (`burstgpt.metrics.requests.SLO_COLUMNS`)
    for the goodput columns; `metrics_interval_s`: the simulated scrape interval behind the KV-usage columns."""

    workload: WorkloadSpec
    engine: EngineSpec = field(default_factory=EngineSpec)
    axes: tuple[SweepAxis, ...] = ()
    mode: Literal["grid", "list", "each"] = "grid"
    seeds: tuple[int, ...] = (0,)
    output_lengths: str = DEFAULT_OUTPUT_LENGTH_SPEC
    slo: dict[str, float] | None = None
    metrics_interval_s: float = 1.0

    def __post_init__(self) -> None:
        names = [axis.name for axis in self.axes]
        if len(set(names)) != len(names):
            raise BurstGPTError("a sweep axis is given twice")
        if {"beta", "rate"} <= set(names):
            raise BurstGPTError("sweep beta or rate, not both (each sets the mean arrival rate)")
        if self.mode not in SWEEP_MODES:
            raise BurstGPTError(f"sweep mode must be one of {', '.join(SWEEP_MODES)}, got {self.mode!r}")
        if self.mode == "list" and len({len(axis.values) for axis in self.axes}) > 1:
            raise BurstGPTError("a list sweep needs axes of equal length (use a grid otherwise)")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise BurstGPTError("a sweep needs distinct seeds")

    def points(self) -> list[SweepPoint]:
        """Every point, in sweep order: combinations (the last axis varying fastest), each once per seed."""
        if self.mode == "each":
            combos = [{axis.name: value} for axis in self.axes for value in axis.values]
        else:
            names = [axis.name for axis in self.axes]
            columns = [axis.values for axis in self.axes]
            zipped = zip(*columns, strict=True) if self.mode == "list" else itertools.product(*columns)
            combos = [dict(zip(names, combo, strict=True)) for combo in zipped]
        return [SweepPoint(combo, seed) for combo in combos for seed in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (`from_dict` reads it back)."""
        engine = dataclasses.asdict(self.engine)
        if self.engine.latency is not None and not isinstance(self.engine.latency, dict):
            engine["latency"] = self.engine.latency.to_dict()
        return {
            "format": SWEEP_FORMAT, "workload": self.workload.to_dict(), "engine": engine,
            "axes": [{"name": axis.name, "values": list(axis.values)} for axis in self.axes], "mode": self.mode,
            "seeds": list(self.seeds), "output_lengths": self.output_lengths, "slo": self.slo,
            "metrics_interval_s": self.metrics_interval_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        if not isinstance(data, dict) or data.get("format") != SWEEP_FORMAT:
            raise BurstGPTError(f"not a sweep spec (format is not {SWEEP_FORMAT})")
        try:
            return cls(
                workload=WorkloadSpec.from_dict(data["workload"]), engine=EngineSpec(**data["engine"]),
                axes=tuple(SweepAxis(axis["name"], tuple(axis["values"])) for axis in data["axes"]),
                mode=data["mode"], seeds=tuple(data["seeds"]), output_lengths=data["output_lengths"],
                slo=data.get("slo"), metrics_interval_s=data["metrics_interval_s"],
            )
        except (KeyError, TypeError) as exc:
            raise BurstGPTError(f"not a sweep spec: {exc}") from None

    def base_dict(self) -> dict[str, Any]:
        """`to_dict` without the axes and seeds: what must match for a sweep to resume into an output folder."""
        data = self.to_dict()
        for name in ("axes", "mode", "seeds"):
            data.pop(name)
        return data


def with_rate(workload: WorkloadSpec, rate_rps: float) -> WorkloadSpec:
    """`workload` at mean arrival rate `rate_rps` (requests/s): a scheduled source's rate (its beta dropped), a
    mirrored or ServeGen source's target rate."""
    source = workload.arrivals
    if isinstance(source, ScheduledArrivals):
        source = dataclasses.replace(source, rate_rps=rate_rps, beta_s=None)
    elif isinstance(source, MirroredArrivals | ServeGenClients):
        source = dataclasses.replace(source, target_rate_rps=rate_rps)
    else:
        raise BurstGPTError("a replayed trace keeps its own rate: sweep or search the rate of generated arrivals")
    return dataclasses.replace(workload, arrivals=source)


def point_specs(spec: SweepSpec, point: SweepPoint) -> tuple[WorkloadSpec, EngineSpec]:
    """The workload and engine specs of one point (its axis values put into the base, its seed)."""
    workload = dataclasses.replace(spec.workload, seed=point.seed)
    engine = spec.engine
    for name, value in point.values.items():
        if name == "rate":
            workload = with_rate(workload, value)
        elif name in ("alpha", "beta"):
            if not isinstance(workload.arrivals, ScheduledArrivals):
                raise BurstGPTError(f"sweeping {name} needs generated Gamma arrivals (--alpha/--beta or --rate)")
            changes = {"alpha": value} if name == "alpha" else {"beta_s": value, "rate_rps": None}
            workload = dataclasses.replace(workload, arrivals=dataclasses.replace(workload.arrivals, **changes))
        elif name == "theta":
            workload = dataclasses.replace(workload, lengths=dataclasses.replace(workload.lengths, zipf_theta=value))
        elif name == "num_requests":
            workload = dataclasses.replace(workload, num_requests=value)
        elif name == "latency_model":
            from burstgpt.sim.latency import load_latency_model

            fitted = load_latency_model(value)
            settings = {key: val for key, val in fitted.engine_settings().items() if key not in point.values}
            engine = dataclasses.replace(engine, latency=fitted.latency, **settings,
                                         frontend_delay_s=fitted.frontend_delay_s or engine.frontend_delay_s)
        else:
            engine = dataclasses.replace(engine, **{_ENGINE_FIELDS[name]: value})
    return workload, engine


__all__ = ["AXES", "SWEEP_FORMAT", "SWEEP_MODES", "SweepAxis", "SweepPoint", "SweepSpec", "point_specs",
           "with_rate"]
