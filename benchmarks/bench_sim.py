"""Benchmark: simulate one million requests offline (A800-80GB x Llama-2-13B-chat, the paper's Table III workload:
Gamma arrivals alpha 0.5, beta 2 s; Zipf(1.1) request lengths; output lengths left to the model).

1. The whole command, as a user runs it: `burstgpt simulate --alpha 0.5 --beta 2 --zipf-theta 1.1
   --num-requests N -o DIR` in a subprocess with its default outputs (`--steps sampled`, parts of the workload
   simulated in parallel processes, one per CPU), and two baselines measured in the same run, alternating: the
   same in one process (`--workers 1`) and with every engine step written (`--steps all`, one process, as before
   sampling existed). Each --repeat times: wall time, CPU time (user + sys, the command and its part processes),
   peak RSS (of the largest process, `getrusage`, and of the whole process tree, its RSS summed every 20 ms),
   bytes written per file, and the machine's load average (a shared machine: read CPU time, and the best wall
   time together with the load).
2. The engine alone, in process: the run without a step log, with the step log digested into server metrics
   and sampled steps as it runs (what the command does), and with the whole log kept and expanded to the full step
   table; then request records.
3. Against the simple per-step reference engine (`burstgpt.sim.reference`, one Python loop per step over request
   objects) on a subset (the first --reference-requests requests), extrapolated linearly to the full size.

    .venv/bin/python benchmarks/bench_sim.py [--requests 1000000] [--repeat 3] [--reference-requests 3000]
                                             [--skip-command] [--skip-engine]

Targets (whole command, default outputs, one million requests, 2 cores): under 15 s wall and 1.5 GB peak RSS
(of the process tree).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from burstgpt.sim.engine import DONE, ServingEngine
from burstgpt.sim.output_lengths import DEFAULT_OUTPUT_LENGTH_SPEC, parse_output_length_model, resolve_output_lengths
from burstgpt.sim.reference import reference_simulate
from burstgpt.sim.simulate import EngineSpec, build_engine_setup, engine_records
from burstgpt.sim.step_log import IntervalDigest, StepLog
from burstgpt.workload.spec import RequestLengths, ScheduledArrivals, WorkloadSpec, build_workload

TARGET_WALL_S = 15.0
TARGET_PEAK_GB = 1.5

# Runs a command as its only child and prints the child's wall time, CPU time and peak RSS as JSON: the largest
# process's (getrusage) and the whole tree's (its processes' RSS summed every 20 ms: parts run in processes of their
# own).
_MEASURE = """
import json, os, resource, subprocess, sys, time

def tree_rss(root):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        pending += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total

started = time.perf_counter()
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
tree_peak = 0
while process.poll() is None:
    tree_peak = max(tree_peak, tree_rss(process.pid))
    time.sleep(0.02)
wall = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"status": process.returncode, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "peak_gb": usage.ru_maxrss * 1024 / 1e9, "tree_peak_gb": tree_peak / 1e9}))
"""

#: The command's configurations: its defaults, and the same-run baselines (one process; every step written).
COMMAND_VARIANTS = {"default": [], "1 process": ["--workers", "1"], "--steps all": ["--steps", "all"]}


def make_workload(num_requests: int, seed: int):
    return build_workload(WorkloadSpec(arrivals=ScheduledArrivals(alpha=0.5, beta_s=2.0), num_requests=num_requests,
                                       lengths=RequestLengths(zipf_theta=1.1), seed=seed))


def measure_command(flags: list[str], num_requests: int, out: Path) -> dict:
    """One `burstgpt simulate` run in a subprocess: wall, CPU, peak RSS, bytes written per file."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "burstgpt.cli", "simulate", "--alpha", "0.5", "--beta", "2", "--zipf-theta",
               "1.1", "--num-requests", str(num_requests), *flags, "-o", str(out)]
    load = os.getloadavg()[0]
    measured = json.loads(subprocess.run([sys.executable, "-c", _MEASURE, *command], check=True, capture_output=True,
                                         text=True, env={**os.environ, "MPLBACKEND": "Agg"}).stdout)
    if measured["status"] != 0:
        raise SystemExit(f"burstgpt simulate {' '.join(flags)} failed (exit {measured['status']})")
    measured["files"] = {path.name: path.stat().st_size for path in sorted(out.iterdir())}
    measured["load"] = load
    return measured


def bench_command(num_requests: int, repeat: int) -> None:
    runs: dict[str, list[dict]] = {name: [] for name in COMMAND_VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench_sim_") as tmp:
        for _ in range(repeat):
            for name, flags in COMMAND_VARIANTS.items():  # alternating, so a change of machine load hits all alike
                runs[name].append(measure_command(flags, num_requests, Path(tmp) / "run"))
    print(f"whole command, {num_requests} requests (subprocess; load average 1 min at each start; "
          f"{os.cpu_count()} CPUs):")
    for name, measured in runs.items():
        walls = [m["wall_s"] for m in measured]
        files = measured[-1]["files"]
        written = ", ".join(f"{file} {size / 1e6:.1f}" for file, size in files.items())
        loads = ", ".join(f"{m['load']:.1f}" for m in measured)
        print(f"  {name:12s}: wall best {min(walls):.1f} s, median {statistics.median(walls):.1f} s; CPU best "
              f"{min(m['cpu_s'] for m in measured):.1f} s, median {statistics.median(m['cpu_s'] for m in measured):.1f}"
              f" s; peak RSS {max(m['tree_peak_gb'] for m in measured):.2f} GB (process tree), "
              f"{max(m['peak_gb'] for m in measured):.2f} GB (largest process); loads {loads}; written "
              f"{sum(files.values()) / 1e6:.0f} MB ({written} MB)")
    default = runs["default"]
    best_wall = min(m["wall_s"] for m in default)
    best_cpu = min(m["cpu_s"] for m in default)
    peak = max(m["tree_peak_gb"] for m in default)
    for name in ("1 process", "--steps all"):
        baseline = runs[name]
        print(f"  {name} / default: wall {min(m['wall_s'] for m in baseline) / best_wall:.2f}x (best runs), CPU "
              f"{min(m['cpu_s'] for m in baseline) / best_cpu:.2f}x, peak RSS (tree) "
              f"{max(m['tree_peak_gb'] for m in baseline) / peak:.2f}x")
    met = best_wall < TARGET_WALL_S and peak < TARGET_PEAK_GB
    print(f"  default: wall {best_wall:.1f} s (target < {TARGET_WALL_S:.0f} s), CPU {best_cpu:.1f} s, peak RSS "
          f"{peak:.2f} GB (target < {TARGET_PEAK_GB} GB): {'met' if met else 'NOT met'}")


def time_engine(setup, workload, lengths, *, steps: str | None) -> tuple[dict, ServingEngine]:
    """Seconds for: the engine run (with its step log: None = no log, "sampled" = digested as it runs, "all" =
    kept), the request records, the full step table (mode "all"), and all."""
    started = time.perf_counter()
    engine = ServingEngine(setup.config, setup.latency, record_steps=steps is not None)
    if steps is not None:
        digest = IntervalDigest(1.0, setup.config.num_gpu_blocks, sample=steps == "sampled")
        engine.steps = StepLog(setup.config.block_size, consumers=(digest,), keep=steps == "all")
    engine.submit(workload["arrival_s"].to_numpy(), workload["input_tokens"].to_numpy(), lengths)
    engine.run(jump=True)
    if steps is not None:
        engine.steps.finish()
        digest.server_metrics()
        if steps == "sampled":
            digest.sampled_steps()
    ran = time.perf_counter()
    engine_records(engine, workload, setup.model_name)
    recorded = time.perf_counter()
    if steps == "all":
        engine.steps.frame()
    done = time.perf_counter()
    times = {"engine": ran - started, "records": recorded - ran, "steps": done - recorded, "total": done - started}
    return times, engine


def bench_engine(num_requests: int, reference_requests: int, seed: int) -> None:
    setup = build_engine_setup(EngineSpec(gpu="A800-80GB", model="Llama-2-13B-chat"))
    started = time.perf_counter()
    workload = make_workload(num_requests, seed)
    lengths = resolve_output_lengths(workload, parse_output_length_model(DEFAULT_OUTPUT_LENGTH_SPEC),
                                     max_model_len=setup.config.max_model_len, seed=seed)
    print(f"workload: {workload.height} requests over {workload['arrival_s'][-1]:.0f} simulated s "
          f"(generated in {time.perf_counter() - started:.1f} s); {setup.config.num_gpu_blocks} KV blocks")
    for steps, label in ((None, "no step log"), ("sampled", "step log digested as it runs (server metrics, "
                                                 "sampled steps)"), ("all", "whole step log kept, full table")):
        times, engine = time_engine(setup, workload, lengths, steps=steps)
        ok = int(np.count_nonzero(engine.columns(workload.height)["state"] == DONE))
        count = f"{engine.steps.size} engine steps" if steps else "steps not logged"
        print(f"engine, {label}: {times['total']:.1f} s wall (engine {times['engine']:.1f} s, records "
              f"{times['records']:.1f} s, step table {times['steps']:.1f} s; {count}; {ok} ok)")
        wall = times["total"]

    subset = workload.head(reference_requests)
    sub_lengths = lengths[: subset.height]
    engine_sub = time_engine(setup, subset, sub_lengths, steps="all")[0]["total"]
    started = time.perf_counter()
    reference_simulate(setup.config, setup.latency, subset["arrival_s"].to_numpy(),
                       subset["input_tokens"].to_numpy(), sub_lengths)
    reference_sub = time.perf_counter() - started
    per_request = reference_sub / subset.height
    print(f"subset of {subset.height} requests: engine {engine_sub:.2f} s, per-step reference {reference_sub:.2f} s "
          f"-> ratio {reference_sub / engine_sub:.1f}x")
    print(f"reference extrapolated to {workload.height} requests: {per_request * workload.height:.0f} s "
          f"(ratio against the full engine run with its whole step table: {per_request * workload.height / wall:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each whole command (default 3)")
    parser.add_argument("--reference-requests", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-command", action="store_true", help="do not time the whole command")
    parser.add_argument("--skip-engine", action="store_true", help="do not time the engine alone")
    args = parser.parse_args()
    if not args.skip_command:
        bench_command(args.requests, args.repeat)
    if not args.skip_engine:
        bench_engine(args.requests, args.reference_requests, args.seed)


if __name__ == "__main__":
    main()
