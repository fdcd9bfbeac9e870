"""burstgpt.sweep: sweeps of workload and engine settings, the paper's rate finding, and capacity planning.

    from burstgpt.sweep import SweepSpec, SweepAxis, run_sweep
    spec = SweepSpec(WorkloadSpec(ScheduledArrivals(alpha=0.5, beta_s=2.0), num_requests=2000), EngineSpec(),
                     axes=(SweepAxis("alpha", (0.25, 0.5, 1.0)),))
    table = run_sweep(spec, "sweep-out").table       # a Polars frame: one row per point (R, L, P, KV usage)

Modules: `spec` (SweepSpec, axes, points), `run` (a point's row; serial or Ray execution; resume), `rate` (rate
finding: the KV band of the paper's warm-up rate, the highest rate meeting an SLO), `plan` (replicas per GPU
preset behind a router, autoscaling and its cost; the cluster itself is `burstgpt.sim.cluster`), `figures`.
Downstream of sim, client and metrics; upstream of report.
"""

from __future__ import annotations

from burstgpt.lazy import lazy_exports

_EXPORTS = {
    "SweepSpec": "spec", "SweepAxis": "spec", "SweepPoint": "spec", "point_specs": "spec", "with_rate": "spec",
    "run_sweep": "run", "run_point": "run", "SweepResult": "run", "SimTarget": "run", "ServerTarget": "run",
    "map_points": "run", "find_rate_kv": "rate", "find_rate_slo": "rate", "RateSearch": "rate",
    "plan_capacity": "plan", "PlanSpec": "plan", "PlanResult": "plan", "fewest_replicas": "plan",
    "autoscale": "plan",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
