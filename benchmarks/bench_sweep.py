"""Benchmark: a 24-point sweep of 20k-request simulations, serially and on an in-process local Ray.

The sweep: A800-80GB x Llama-2-13B-chat, Table III workloads (Gamma arrivals, Zipf 1.1 lengths) over alpha
(0.25, 0.5, 1, 2) x beta (1, 2, 4 s) x seeds (0, 1) = 24 points of --requests requests each. It runs once with
`executor="serial"` (the baseline; the modules a point needs are imported before it is timed, and that import's
CPU is printed) and once on local Ray started as the sweep starts it (`burstgpt.sweep.run.start_ray`, --num-cpus
workers, then `warm_workers`: the same imports in every worker), in this process, and prints per phase:

- wall and CPU seconds of the serial run, Ray's start-up, the workers' warm-up and the sweep on Ray (CPU of this
  process and all its descendants, Ray's processes included, from /proc at the phase boundaries; the memory
  sampler's own CPU is left out);
- the speed-up (serial / Ray, wall) with Ray's start-up and warm-up included and without them, and what the
  machine allows: `workers x serial CPU / Ray sweep CPU`, the speed-up if the workers ran fully in parallel at
  the CPU cost per point measured on Ray (two points at once cost more CPU each than one alone: shared caches,
  a virtual machine's cores); a shared 2-core machine, so the load average is printed beside it;
- peak memory of this process and all its descendants (Ray's GCS, raylet, workers; proportional set size from
  /proc, so shared pages count once), sampled every 0.5 s, for each run: Ray's overhead is the difference;
- whether both runs gave identical rows (they must).

    .venv/bin/python benchmarks/bench_sweep.py [--requests 20000] [--num-cpus 2]
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import threading
import time
from pathlib import Path

from burstgpt.sim.simulate import EngineSpec
from burstgpt.sweep import SweepAxis, SweepSpec, run_sweep
from burstgpt.sweep.run import SIM_POINT_MODULES, start_ray, warm_workers
from burstgpt.workload.spec import RequestLengths, ScheduledArrivals, WorkloadSpec


def tree_pids(root: int) -> set[int]:
    """`root` and all its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return tree


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process so far (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_pss_bytes(tree: set[int]) -> int:
    """Proportional set size (bytes) of the processes of `tree` (RSS where PSS is unreadable)."""
    total = 0
    for pid in tree:
        for name, key in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
            try:
                for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
                    if line.startswith(key):
                        total += int(line.split()[1]) * 1024
                        break
                else:
                    continue
                break
            except OSError:
                continue
    return total


def tree_cpu() -> dict[int, float]:
    """CPU seconds so far of this process and each of its descendants, by process id."""
    used = {pid: cpu_seconds(pid) for pid in tree_pids(os.getpid())}
    return {pid: seconds for pid, seconds in used.items() if seconds is not None}


class PeakMemory:
    """Samples the memory of this process and its descendants every `interval_s` in a thread: `peak` in bytes;
    `own_cpu_s`, the CPU seconds the sampling itself has used (reading /proc costs ~20 ms per sample with Ray)."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s, self.peak, self.own_cpu_s, self._stop = interval_s, 0, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_pss_bytes(tree_pids(os.getpid())))
            self.own_cpu_s = time.thread_time()
            if self._stop.wait(self.interval_s):
                break

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Phases:
    """Wall and CPU seconds (this process and its descendants, less the memory sampler's own) between marks."""

    def __init__(self, memory: PeakMemory) -> None:
        self.memory = memory
        self._wall, self._cpu, self._own = time.perf_counter(), tree_cpu(), memory.own_cpu_s

    def mark(self) -> tuple[float, float]:
        """(wall s, CPU s) since the previous mark; a process that started meanwhile counts from zero."""
        wall, cpu, own = time.perf_counter(), tree_cpu(), self.memory.own_cpu_s
        used = sum(seconds - self._cpu.get(pid, 0.0) for pid, seconds in cpu.items()) - (own - self._own)
        result = (wall - self._wall, used)
        self._wall, self._cpu, self._own = wall, cpu, own
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    spec = SweepSpec(
        WorkloadSpec(ScheduledArrivals(alpha=0.5, beta_s=2.0), num_requests=args.requests,
                     lengths=RequestLengths(zipf_theta=1.1)),
        EngineSpec(gpu="A800-80GB", model="Llama-2-13B-chat"),
        axes=(SweepAxis("alpha", (0.25, 0.5, 1.0, 2.0)), SweepAxis("beta", (1.0, 2.0, 4.0))), seeds=(0, 1),
    )
    points = len(spec.points())
    print(f"{points} points x {args.requests} requests; load average at start {os.getloadavg()[0]:.2f}; "
          f"{os.cpu_count()} CPUs", flush=True)
    started = time.process_time()
    for name in SIM_POINT_MODULES:  # what each Ray worker imports in its warm-up
        importlib.import_module(name)
    print(f"importing the modules a point needs: {time.process_time() - started:.2f} s CPU (once per process)")
    with tempfile.TemporaryDirectory() as tmp:
        with PeakMemory() as memory:
            phases = Phases(memory)
            serial = run_sweep(spec, Path(tmp) / "serial", executor="serial").table
            serial_s, serial_cpu = phases.mark()
        serial_peak = memory.peak
        print(f"serial: {serial_s:6.1f} s wall, {serial_cpu:5.1f} s CPU; peak memory (this process and its "
              f"children) {serial_peak / 1e9:.2f} GB; load average {os.getloadavg()[0]:.2f}", flush=True)
        import ray

        with PeakMemory() as memory:
            phases = Phases(memory)
            start_ray(num_cpus=args.num_cpus)  # as `run_sweep` starts it; timed here apart from the sweep
            startup_s, startup_cpu = phases.mark()
            warm_workers((run_sweep.__module__, *SIM_POINT_MODULES))
            warm_s, warm_cpu = phases.mark()
            on_ray = run_sweep(spec, Path(tmp) / "ray", executor="ray").table  # uses the running Ray
            sweep_s, sweep_cpu = phases.mark()
            ray.shutdown()
        ray_peak = memory.peak
    overhead_s = startup_s + warm_s
    print(f"   Ray: start-up {startup_s:4.1f} s wall, {startup_cpu:4.1f} s CPU; warm-up {warm_s:4.1f} s wall, "
          f"{warm_cpu:4.1f} s CPU; sweep {sweep_s:4.1f} s wall, {sweep_cpu:5.1f} s CPU ({sweep_cpu / serial_cpu:.2f}x "
          f"the serial CPU); in all {overhead_s + sweep_s:.1f} s wall, "
          f"{startup_cpu + warm_cpu + sweep_cpu:.1f} s CPU; peak memory {ray_peak / 1e9:.2f} GB; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"speed-up (serial / Ray, wall) with {args.num_cpus} workers: {serial_s / (overhead_s + sweep_s):.2f}x with "
          f"Ray's start-up and warm-up, {serial_s / sweep_s:.2f}x without; the machine allows "
          f"{args.num_cpus * serial_cpu / sweep_cpu:.2f}x at the CPU per point measured on Ray")
    print(f"Ray memory overhead: {(ray_peak - serial_peak) / 1e9:+.2f} GB "
          f"({ray_peak / serial_peak:.1f}x the serial peak)")
    print(f"identical rows: {on_ray.equals(serial)}")


if __name__ == "__main__":
    main()
