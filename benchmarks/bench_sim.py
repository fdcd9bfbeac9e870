"""Benchmark: simulate one million requests offline (A800-80GB x Llama-2-13B-chat, the paper's Table III workload:
Gamma arrivals alpha 0.5, beta 2 s; Zipf(1.1) request lengths; output lengths left to the model), against the
simple per-step reference engine (`burstgpt.sim.reference`, one Python loop per step over request objects)
measured in the same run on a subset (the first --reference-requests requests; the engine is timed on the same
subset too, and the reference's per-request cost is extrapolated linearly to the full size).

    .venv/bin/python benchmarks/bench_sim.py [--requests 1000000] [--reference-requests 3000] [--no-steps]

Target: under 60 s wall for one million requests on a 2-core machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from burstgpt.sim.engine import DONE, ServingEngine
from burstgpt.sim.output_lengths import DEFAULT_OUTPUT_LENGTH_SPEC, parse_output_length_model, resolve_output_lengths
from burstgpt.sim.reference import reference_simulate
from burstgpt.sim.simulate import EngineSpec, build_engine_setup, engine_records
from burstgpt.workload.spec import RequestLengths, ScheduledArrivals, WorkloadSpec, build_workload


def make_workload(num_requests: int, seed: int):
    return build_workload(WorkloadSpec(arrivals=ScheduledArrivals(alpha=0.5, beta_s=2.0), num_requests=num_requests,
                                       lengths=RequestLengths(zipf_theta=1.1), seed=seed))


def time_engine(setup, workload, lengths, *, record_steps: bool) -> tuple[dict, ServingEngine]:
    """Seconds for: the engine run, the request records, the step table (0 when not recorded), and all."""
    started = time.perf_counter()
    engine = ServingEngine(setup.config, setup.latency, record_steps=record_steps)
    engine.submit(workload["arrival_s"].to_numpy(), workload["input_tokens"].to_numpy(), lengths)
    engine.run(jump=True)
    ran = time.perf_counter()
    engine_records(engine, workload, setup.model_name)
    recorded = time.perf_counter()
    if record_steps:
        engine.steps.frame()
    done = time.perf_counter()
    times = {"engine": ran - started, "records": recorded - ran, "steps": done - recorded, "total": done - started}
    return times, engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--reference-requests", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-steps", action="store_true", help="do not build the per-step table")
    args = parser.parse_args()

    setup = build_engine_setup(EngineSpec(gpu="A800-80GB", model="Llama-2-13B-chat"))
    started = time.perf_counter()
    workload = make_workload(args.requests, args.seed)
    lengths = resolve_output_lengths(workload, parse_output_length_model(DEFAULT_OUTPUT_LENGTH_SPEC),
                                     max_model_len=setup.config.max_model_len, seed=args.seed)
    print(f"workload: {workload.height} requests over {workload['arrival_s'][-1]:.0f} simulated s "
          f"(generated in {time.perf_counter() - started:.1f} s); {setup.config.num_gpu_blocks} KV blocks")

    times, engine = time_engine(setup, workload, lengths, record_steps=not args.no_steps)
    wall = times["total"]
    steps = engine.steps.size if not args.no_steps else "not recorded"
    ok = int(np.count_nonzero(engine.columns(workload.height)["state"] == DONE))
    print(f"engine (closed-form decode runs): {wall:.1f} s wall for {workload.height} requests "
          f"({wall / workload.height * 1e6:.0f} us/request; engine {times['engine']:.1f} s, records "
          f"{times['records']:.1f} s, step table {times['steps']:.1f} s; {steps} engine steps; {ok} ok; "
          f"target < 60 s: {'met' if wall < 60 else 'NOT met'})")

    subset = workload.head(args.reference_requests)
    sub_lengths = lengths[: subset.height]
    engine_sub = time_engine(setup, subset, sub_lengths, record_steps=True)[0]["total"]
    started = time.perf_counter()
    reference_simulate(setup.config, setup.latency, subset["arrival_s"].to_numpy(),
                       subset["input_tokens"].to_numpy(), sub_lengths)
    reference_sub = time.perf_counter() - started
    per_request = reference_sub / subset.height
    print(f"subset of {subset.height} requests: engine {engine_sub:.2f} s, per-step reference {reference_sub:.2f} s "
          f"-> ratio {reference_sub / engine_sub:.1f}x")
    print(f"reference extrapolated to {workload.height} requests: {per_request * workload.height:.0f} s "
          f"(ratio against the full engine run: {per_request * workload.height / wall:.1f}x)")


if __name__ == "__main__":
    main()
