"""Benchmark: a 24-point sweep of 20k-request simulations, serially and on an in-process local Ray.

The sweep: A800-80GB x Llama-2-13B-chat, Table III workloads (Gamma arrivals, Zipf 1.1 lengths) over alpha
(0.25, 0.5, 1, 2) x beta (1, 2, 4 s) x seeds (0, 1) = 24 points of --requests requests each. It runs once with
`executor="serial"` (the baseline) and once with `executor="ray"` (local Ray started by the sweep, --num-cpus
workers), in this process, and prints:

- wall time of each (Ray's: with and without its start-up, a few seconds) and the speed-up (serial / Ray; close
  to the number of cores when the machine is otherwise idle and the points outweigh the start-up: this is a
  shared 2-core machine, so the load average is printed beside it);
- CPU seconds used by this process and its descendants during each run (Ray's extra processes included);
- peak memory of this process and all its descendants (Ray's GCS, raylet, workers; proportional set size from
  /proc, so shared pages count once), sampled every 0.2 s, for each run: Ray's overhead is the difference;
- whether both runs gave identical rows (they must).

    .venv/bin/python benchmarks/bench_sweep.py [--requests 20000] [--num-cpus 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from burstgpt.sim.simulate import EngineSpec
from burstgpt.sweep import SweepAxis, SweepSpec, run_sweep
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


class PeakMemory:
    """Samples this process and its descendants every `interval_s` in a thread: `peak` memory in bytes and
    `cpu_s`, the CPU seconds they used meanwhile (a child that ends between samples loses its last interval)."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}

    def _run(self) -> None:
        while True:
            tree = tree_pids(os.getpid())
            self.peak = max(self.peak, tree_pss_bytes(tree))
            for pid in tree:
                used = cpu_seconds(pid)
                if used is not None:
                    self._cpu_start.setdefault(pid, used if pid == os.getpid() else 0.0)
                    self._cpu_last[pid] = used
            if self._stop.wait(self.interval_s):
                break

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu_last[pid] - self._cpu_start[pid] for pid in self._cpu_last)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


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
    print(f"{len(spec.points())} points x {args.requests} requests; load average at start "
          f"{os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        with PeakMemory() as memory:
            started = time.perf_counter()
            serial = run_sweep(spec, Path(tmp) / "serial", executor="serial").table
            serial_s = time.perf_counter() - started
        serial_peak = memory.peak
        serial_cpu = memory.cpu_s
        print(f"serial: {serial_s:7.1f} s wall, {serial_cpu:.1f} s CPU, peak memory (this process and its children) "
              f"{serial_peak / 1e9:.2f} GB, load average {os.getloadavg()[0]:.2f}", flush=True)
        import ray

        with PeakMemory() as memory:
            started = time.perf_counter()
            # Started here (as `run_sweep` would) to time Ray's start-up apart from the sweep itself.
            ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
            startup_s = time.perf_counter() - started
            on_ray = run_sweep(spec, Path(tmp) / "ray", executor="ray").table
            ray_s = time.perf_counter() - started
            ray.shutdown()
        ray_peak = memory.peak
        print(f"   ray: {ray_s:7.1f} s wall ({startup_s:.1f} s of it Ray's start-up), {memory.cpu_s:.1f} s CPU, peak "
              f"memory {ray_peak / 1e9:.2f} GB, load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"speed-up (serial / Ray, wall) with {args.num_cpus} workers: {serial_s / ray_s:.2f}x with Ray's start-up, "
          f"{serial_s / (ray_s - startup_s):.2f}x without")
    print(f"Ray memory overhead: {(ray_peak - serial_peak) / 1e9:+.2f} GB "
          f"({ray_peak / serial_peak:.1f}x the serial peak)")
    print(f"identical rows: {on_ray.equals(serial)}")

if __name__ == "__main__":
    main()
