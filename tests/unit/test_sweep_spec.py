"""Sweep specs: points of grids, lists and one-at-a-time sweeps, what a point changes, JSON round trips."""

from __future__ import annotations

import json

import pytest

from burstgpt.errors import BurstGPTError
from burstgpt.sim.simulate import EngineSpec
from burstgpt.sweep.rate import KVBand, SLOTarget, parse_find_rate
from burstgpt.sweep.spec import SweepAxis, SweepPoint, SweepSpec, point_specs
from burstgpt.workload.spec import MirroredArrivals, ReplayedTrace, ScheduledArrivals, WorkloadSpec

BASE = WorkloadSpec(ScheduledArrivals(alpha=0.5, beta_s=2.0), num_requests=100, seed=7)


def test_grid_list_and_each_points():
    alpha, beta = SweepAxis("alpha", (0.25, 1)), SweepAxis("beta", (1, 2, 4))
    grid = SweepSpec(BASE, axes=(alpha, beta), seeds=(0, 1)).points()
    assert len(grid) == 2 * 3 * 2
    assert grid[0].values == {"alpha": 0.25, "beta": 1.0} and [p.seed for p in grid[:2]] == [0, 1]
    assert len({p.point_id for p in grid}) == len(grid)
    with pytest.raises(BurstGPTError, match="equal length"):
        SweepSpec(BASE, axes=(alpha, beta), mode="list")
    listed = SweepSpec(BASE, axes=(alpha, SweepAxis("theta", (1.1, 1.5))), mode="list").points()
    assert [p.values for p in listed] == [{"alpha": 0.25, "theta": 1.1}, {"alpha": 1.0, "theta": 1.5}]
    each = SweepSpec(BASE, axes=(alpha, beta), mode="each").points()
    assert [p.values for p in each] == [{"alpha": 0.25}, {"alpha": 1.0}, {"beta": 1.0}, {"beta": 2.0}, {"beta": 4.0}]


def test_point_specs_put_the_values_and_seed_in():
    spec = SweepSpec(BASE, EngineSpec(num_gpu_blocks=500),
                     axes=(SweepAxis("rate", (3,)), SweepAxis("theta", (1.5,)), SweepAxis("num_gpu_blocks", (900,)),
                           SweepAxis("gpu", ("H100",))))
    workload, engine = point_specs(spec, spec.points()[0])
    assert workload.arrivals.rate_rps == 3.0 and workload.arrivals.beta_s is None and workload.arrivals.alpha == 0.5
    assert workload.lengths.zipf_theta == 1.5 and workload.seed == 0
    assert engine.num_gpu_blocks == 900 and engine.gpu == "H100"
    workload, _ = point_specs(spec, SweepPoint({"beta": 4.0}, 3))
    assert workload.arrivals.beta_s == 4.0 and workload.seed == 3
    mirrored = WorkloadSpec(MirroredArrivals(params="p.json"), num_requests=10)
    workload, _ = point_specs(SweepSpec(mirrored), SweepPoint({"rate": 5.0}, 0))
    assert workload.arrivals.target_rate_rps == 5.0
    with pytest.raises(BurstGPTError, match="Gamma arrivals"):
        point_specs(SweepSpec(mirrored), SweepPoint({"alpha": 1.0}, 0))
    with pytest.raises(BurstGPTError, match="replayed trace"):
        point_specs(SweepSpec(WorkloadSpec(ReplayedTrace("t.csv"))), SweepPoint({"rate": 1.0}, 0))


def test_spec_round_trips_through_json():
    spec = SweepSpec(BASE, EngineSpec(gpu="H100", num_gpu_blocks=800), axes=(SweepAxis("alpha", (0.5, 1.0)),),
                     mode="each", seeds=(1, 2), slo={"ttft": 2.0})
    again = SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.points() == spec.points()


@pytest.mark.parametrize("axis, values, message", [
    ("speed", (1,), "unknown sweep axis"), ("alpha", (), "no values"), ("alpha", (-1,), "positive"),
    ("num_gpu_blocks", (1.5,), "whole number"), ("beta", (1, 1), "repeats"), ("theta", ("x",), "not a float"),
])
def test_bad_axes(axis, values, message):
    with pytest.raises(BurstGPTError, match=message):
        SweepAxis(axis, values)


def test_beta_and_rate_are_not_swept_together():
    with pytest.raises(BurstGPTError, match="beta or rate"):
        SweepSpec(BASE, axes=(SweepAxis("beta", (1,)), SweepAxis("rate", (1,))))


def test_parse_find_rate():
    assert parse_find_rate("kv=0.35") == KVBand(pytest.approx(0.30), pytest.approx(0.40))
    assert parse_find_rate("kv=0.2:0.5") == KVBand(0.2, 0.5)
    assert parse_find_rate("slo=ttft:2,tpot:0.1,goodput:0.95") == SLOTarget({"ttft": 2.0, "tpot": 0.1}, 0.95)
    assert parse_find_rate("slo=e2e:10").attainment == 0.99
    for bad in ("kv=1.2", "kv=x", "slo=goodput:0.9", "slo=speed:2", "slo=ttft:-1", "rate=3", "slo=goodput:2,ttft:1"):
        with pytest.raises(BurstGPTError):
            parse_find_rate(bad)
