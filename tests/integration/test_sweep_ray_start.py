"""A sweep that starts its own local Ray (the CLI's default): it starts Ray, warms the workers, gives the same
rows as a serial run and shuts Ray down again. Its own module, so no Ray is running when it begins."""

from __future__ import annotations

import pytest

from burstgpt.sim.simulate import EngineSpec
from burstgpt.sweep.run import run_sweep
from burstgpt.sweep.spec import SweepAxis, SweepSpec
from burstgpt.workload.spec import ScheduledArrivals, WorkloadSpec

ray = pytest.importorskip("ray")


def test_sweep_starts_warms_and_stops_its_own_local_ray():
    spec = SweepSpec(WorkloadSpec(ScheduledArrivals(alpha=0.5, beta_s=2.0), num_requests=200),
                     EngineSpec(num_gpu_blocks=600), axes=(SweepAxis("alpha", (0.25, 1.0)),), seeds=(3, 4))
    assert not ray.is_initialized(), "another test left Ray running"
    on_ray = run_sweep(spec, None, executor="ray", num_cpus=2).table
    assert not ray.is_initialized()  # the Ray it started is shut down
    assert on_ray.height == 4 and on_ray.equals(run_sweep(spec, None, executor="serial").table)
