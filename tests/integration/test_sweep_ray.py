"""Sweep and plan points as Ray tasks on one local Ray (started once for the module, as the sweep starts it): the
same rows as a serial run, Ctrl-C cancelling what has not finished while keeping what has, and the warm-up reaching
every worker."""

from __future__ import annotations

import pytest

from burstgpt.sim.simulate import EngineSpec
from burstgpt.sweep.plan import PlanSpec, plan_capacity
from burstgpt.sweep.run import RESULTS_FILE, SIM_POINT_MODULES, run_sweep, start_ray, warm_workers
from burstgpt.sweep.spec import SweepAxis, SweepSpec
from burstgpt.workload.spec import ScheduledArrivals, WorkloadSpec, build_workload

ray = pytest.importorskip("ray")

SPEC = SweepSpec(WorkloadSpec(ScheduledArrivals(alpha=0.5, beta_s=2.0), num_requests=200),
                 EngineSpec(num_gpu_blocks=600),
                 axes=(SweepAxis("alpha", (0.25, 1.0)), SweepAxis("num_gpu_blocks", (400, 800))), seeds=(3,))


@pytest.fixture(scope="module")
def local_ray():
    start_ray(num_cpus=2)
    yield
    ray.shutdown()


def test_two_by_two_sweep_is_identical_serially_and_on_ray(local_ray, tmp_path):
    serial = run_sweep(SPEC, tmp_path / "serial", executor="serial").table
    on_ray = run_sweep(SPEC, tmp_path / "ray", executor="ray").table
    assert serial.height == 4 and on_ray.equals(serial)
    assert ray.is_initialized()  # a Ray it did not start is left running


def test_ctrl_c_on_ray_cancels_the_rest_and_keeps_finished_rows(local_ray, tmp_path):
    def interrupt(done, total, point_id):
        raise KeyboardInterrupt

    cut = run_sweep(SPEC, tmp_path, executor="ray", progress=interrupt)
    assert cut.interrupted and cut.table.height == 1
    rest = run_sweep(SPEC, tmp_path, executor="ray")
    assert (rest.ran, rest.resumed, rest.table.height) == (3, 1, 4)
    assert rest.table.equals(run_sweep(SPEC, None, executor="serial").table)
    assert (tmp_path / RESULTS_FILE).exists()


def test_plan_presets_as_ray_tasks(local_ray):
    workload = build_workload(WorkloadSpec(ScheduledArrivals(alpha=1.0, rate_rps=4.0), num_requests=300, seed=1))
    spec = PlanSpec((EngineSpec(num_gpu_blocks=300), EngineSpec(gpu="H100", num_gpu_blocks=300)), {"ttft": 2.0},
                    attainment=0.9)
    on_ray = plan_capacity(workload, spec, executor="ray")
    serial = plan_capacity(workload, spec, executor="serial")
    assert on_ray.table.equals(serial.table) and on_ray.search.equals(serial.search)
    assert on_ray.table["gpu"].to_list() == ["A800-80GB", "H100-80GB"]


def test_warm_up_imports_the_modules_in_every_worker(local_ray):
    @ray.remote(num_cpus=1)
    def loaded(name):
        import os
        import sys
        import time

        time.sleep(0.3)  # held, so the two probes run at once, on the two workers
        return os.getpid(), name in sys.modules

    # colorsys: a module nothing else here imports, so only the warm-up can have loaded it
    warmed = warm_workers((*SIM_POINT_MODULES, "colorsys"))
    assert len(warmed) == 2  # one task per CPU reached two different workers
    probes = ray.get([loaded.remote("colorsys") for _ in range(2)])
    assert {pid for pid, _ in probes} == warmed and all(ready for _, ready in probes)
