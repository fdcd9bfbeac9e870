"""The paper's case study (section V) in simulation: A800-80GB x Llama-2-13B-chat under BurstGPT workloads with
the Table III parameters (Gamma alpha 0.5, beta 2 s; Zipf theta 1.1). Writes under --out:

- `results.parquet`, `sweep.png`: Fig 17, alpha, beta and theta each swept around Table III (mean and p90 latency,
  throughput, failure rate), on Ray when installed; the same as
      burstgpt sweep -o OUT --alpha 0.5 --beta 2 --zipf-theta 1.1 --num-requests 3000 --mode each \
          --vary alpha=0.1,0.25,0.5,1,2,4 --vary beta=0.5,0.75,1,1.5,2,3 --vary theta=1.05,1.1,1.2,1.4,1.7,2
- `steady/`, `bursting/`, `fig16_timeline.png`: Fig 16, the Table III workload against one whose alpha dips
  quadratically to 0.1 and back, as run directories and on one time axis.

    .venv/bin/python examples/paper_burst_sim.py [--out DIR] [--requests 3000]
"""

import argparse

from burstgpt.metrics.windows import window_series
from burstgpt.report.figures import RunSeries, plot_timeline
from burstgpt.report.rundir import write_run_directory
from burstgpt.sim import EngineSpec, build_engine_setup, simulate_workload
from burstgpt.sweep import SweepAxis, SweepSpec, run_sweep
from burstgpt.sweep.figures import plot_sweep
from burstgpt.workload import RequestLengths, ScheduledArrivals, WorkloadSpec, build_workload

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--out", default="paper-burst-sim")
parser.add_argument("--requests", type=int, default=3000)
args = parser.parse_args()
engine = EngineSpec(gpu="A800-80GB", model="Llama-2-13B-chat")
table_iii = WorkloadSpec(ScheduledArrivals(alpha=0.5, beta_s=2.0), num_requests=args.requests,
                         lengths=RequestLengths(zipf_theta=1.1))

# Fig 17: one parameter at a time around Table III.
spec = SweepSpec(table_iii, engine, mode="each", axes=(
    SweepAxis("alpha", (0.1, 0.25, 0.5, 1, 2, 4)), SweepAxis("beta", (0.5, 0.75, 1, 1.5, 2, 3)),
    SweepAxis("theta", (1.05, 1.1, 1.2, 1.4, 1.7, 2))))
table = run_sweep(spec, args.out).table
plot_sweep(table, ["alpha", "beta", "theta"], f"{args.out}/sweep.png",
           title="A800-80GB x Llama-2-13B-chat (simulated): sweeps around Table III")
print(table.select("point_id", "latency_mean_s", "latency_p90_s", "throughput_tokens_per_s", "failure_rate"))

# Fig 16: steady Table III arrivals against alpha dipping to 0.1 and back.
setup, series = build_engine_setup(engine), []
for name, arrivals in (("steady", table_iii.arrivals),
                       ("bursting", ScheduledArrivals(alpha=(0.5, 0.1), beta_s=2.0, schedule="quadratic,constant"))):
    result = simulate_workload(build_workload(WorkloadSpec(arrivals, num_requests=args.requests,
                                                           lengths=table_iii.lengths)), setup)
    write_run_directory(f"{args.out}/{name}", result.records, config={**setup.to_dict(), "producer": "simulate"},
                        server_metrics=result.server_metrics, window_s=60.0)
    series.append(RunSeries(name, window_series(result.records, 60.0, server_metrics=result.server_metrics),
                            result.server_metrics))
plot_timeline(series, f"{args.out}/fig16_timeline.png", title="A800-80GB x Llama-2-13B-chat: steady vs bursting")
