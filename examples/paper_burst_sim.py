"""The paper's case study (section V, Figs 16 and 17) in simulation: A800-80GB x Llama-2-13B-chat (vLLM-like engine,
30 s client timeout) under BurstGPT workloads with the Table III parameters (Gamma alpha 0.5, beta 2 s; Zipf
theta 1.1 request lengths; output lengths left to the model).

Writes, under --out (default ./paper-burst-sim):
- `steady/`, `bursting/`: run directories (`burstgpt report` reads them) for the Table III workload and for the
  same workload whose alpha dips quadratically to 0.1 and back (the paper's burst schedule);
- `fig16_timeline.png`: both runs on one time axis (latency, throughput, failure rate, KV usage), Fig 16-style;
- `fig17_sweeps.png`: mean and p90 latency, throughput and failure rate against alpha, beta and theta, each
  swept around Table III with the other two fixed, Fig 17-style; `fig17_sweeps.csv`: the numbers.

As in the paper, beta is the Gamma scale (seconds), so the mean arrival rate is 1 / (alpha x beta): a smaller
alpha or beta is both burstier and heavier.

    .venv/bin/python examples/paper_burst_sim.py [--out DIR] [--requests 3000] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from burstgpt.metrics.requests import average_metrics
from burstgpt.metrics.windows import window_series
from burstgpt.report.figures import RunSeries, plot_timeline
from burstgpt.report.rundir import write_run_directory
from burstgpt.sim.simulate import build_engine_setup, server_metrics_from_steps, simulate_workload
from burstgpt.workload import RequestLengths, ScheduledArrivals, WorkloadSpec, build_workload

TABLE_III = {"alpha": 0.5, "beta": 2.0, "theta": 1.1}  # llama-2-13b-chat on A800
SWEEPS = {
    "alpha": [0.1, 0.25, 0.5, 1.0, 2.0, 4.0],
    "beta": [0.5, 0.75, 1.0, 1.5, 2.0, 3.0],
    "theta": [1.05, 1.1, 1.2, 1.4, 1.7, 2.0],
}


def workload(requests: int, seed: int, *, alpha, beta: float, theta: float, schedule: str | None = None):
    spec = WorkloadSpec(ScheduledArrivals(alpha=alpha, beta_s=beta, schedule=schedule), num_requests=requests,
                        lengths=RequestLengths(zipf_theta=theta), seed=seed)
    return build_workload(spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="paper-burst-sim")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    setup = build_engine_setup(gpu="A800-80GB", model="Llama-2-13B-chat", timeout_s=30.0)
    blocks = setup.config.num_gpu_blocks

    # Fig 16: a steady Table III workload against one whose alpha dips to 0.1 and back (burst schedule).
    series = []
    for name, alpha, schedule in (("steady", 0.5, None), ("bursting", (0.5, 0.1), "quadratic,constant")):
        frame = workload(args.requests, args.seed, alpha=alpha, beta=TABLE_III["beta"], theta=TABLE_III["theta"],
                         schedule=schedule)
        result = simulate_workload(frame, setup, seed=args.seed)
        server = server_metrics_from_steps(result.steps, blocks, 1.0)
        config = {**setup.to_dict(), "producer": "simulate", "example": "paper_burst_sim", "alpha": alpha,
                  "beta": TABLE_III["beta"], "theta": TABLE_III["theta"]}
        write_run_directory(out / name, result.records, config=config, server_metrics=server,
                            extra_tables={"steps": result.steps}, window_s=60.0)
        series.append(RunSeries(name, window_series(result.records, 60.0, server_metrics=server), server))
    plot_timeline(series, out / "fig16_timeline.png",
                  title="A800-80GB x Llama-2-13B-chat (simulated): steady vs bursting alpha")

    # Fig 17: one parameter at a time around Table III.
    rows = []
    for parameter, values in SWEEPS.items():
        for value in values:
            params = {**TABLE_III, parameter: value}
            frame = workload(args.requests, args.seed, alpha=params["alpha"], beta=params["beta"],
                             theta=params["theta"])
            records = simulate_workload(frame, setup, seed=args.seed).records
            summary = average_metrics(records)
            e2e = summary["latency_s"]["e2e"]
            rows.append({"parameter": parameter, "value": value, "latency_mean_s": e2e["mean"],
                         "latency_p90_s": e2e["p90"],
                         "throughput_tokens_per_s": summary["throughput"]["output_tokens_per_s"],
                         "failure_rate": summary["failure_rate"]})
            print(f"{parameter}={value}: {rows[-1]}")
    table = pl.DataFrame(rows)
    table.write_csv(out / "fig17_sweeps.csv")

    figure = Figure(figsize=(13, 9), constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(3, 3)
    for row, parameter in enumerate(SWEEPS):
        part = table.filter(pl.col("parameter") == parameter)
        x = part["value"].to_numpy()
        axes[row, 0].plot(x, part["latency_mean_s"].to_numpy(), "o-", label="mean")
        axes[row, 0].plot(x, part["latency_p90_s"].to_numpy(), "s--", label="p90")
        axes[row, 0].set_ylabel("latency (s)")
        axes[row, 0].legend()
        axes[row, 1].plot(x, part["throughput_tokens_per_s"].to_numpy(), "o-", color="C2")
        axes[row, 1].set_ylabel("throughput (output tokens/s)")
        axes[row, 2].plot(x, 100 * part["failure_rate"].to_numpy(), "o-", color="C3")
        axes[row, 2].set_ylabel("failure rate (%)")
        for column in range(3):
            axes[row, column].set_xlabel(parameter)
            if parameter in ("alpha", "beta"):
                axes[row, column].set_xscale("log")
    figure.suptitle("A800-80GB x Llama-2-13B-chat (simulated): sweeps around Table III "
                    f"(alpha {TABLE_III['alpha']}, beta {TABLE_III['beta']} s, theta {TABLE_III['theta']})")
    figure.savefig(out / "fig17_sweeps.png", dpi=110)
    print(f"figures: {out / 'fig16_timeline.png'}, {out / 'fig17_sweeps.png'}; run directories: "
          f"{out / 'steady'}, {out / 'bursting'}")


if __name__ == "__main__":
    main()
