"""Benchmark: size and render time of the self-contained report.html of a one-million-request simulated run.

    .venv/bin/python benchmarks/bench_report.py [--requests 1000000] [--baseline-requests 10000] [--repeat 3]

The run: the paper's Table III workload (Gamma arrivals alpha 0.5, beta 2 s; A800-80GB x Llama-2-13B-chat),
simulated through the Python API (`build_workload`, `simulate_workload`), written with `write_run_directory`
(which writes report.html as its last derived file). Measured, for the big run and for a small baseline run made
the same way in the same process (the ratio shows what the report's cost grows with):
- writing report.html alone (`write_run_report`, from the run's records, time series and summary): wall and CPU
  seconds (CPU is less disturbed by other work on a shared machine);
- its size in bytes;
- Chromium (headless, Debian's chromium + chromedriver via Selenium, `burstgpt.report.browser`): time from
  navigation to the end of the load event and to the first frame painted after it, best and median of
  --repeat loads; and the number of network requests other than the file itself and data: URIs (must be 0).

Targets (issue 13): report.html of a 1M-request run under 10 MB, rendered in under 5 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from burstgpt.metrics.windows import window_series
from burstgpt.records import conform_request_records
from burstgpt.report.browser import chromium_missing, headless_chromium, open_page
from burstgpt.report.html import REPORT_FILE, write_run_report
from burstgpt.report.rundir import write_run_directory
from burstgpt.sim import EngineSpec, build_engine_setup, simulate_workload
from burstgpt.workload.spec import ScheduledArrivals, WorkloadSpec, build_workload

TARGET_BYTES = 10e6
TARGET_RENDER_S = 5.0


def make_run(run_dir: Path, num_requests: int, seed: int = 0) -> dict:
    """Simulate `num_requests` and write the run directory; returns timings (seconds)."""
    setup = build_engine_setup(EngineSpec(gpu="A800-80GB", model="Llama-2-13B-chat"))
    started = time.perf_counter()
    workload = build_workload(WorkloadSpec(arrivals=ScheduledArrivals(alpha=0.5, beta_s=2.0),
                                           num_requests=num_requests, seed=seed))
    result = simulate_workload(workload, setup, seed=seed, steps="none")
    simulated = time.perf_counter()
    summary = write_run_directory(run_dir, result.records, config={"num_requests": num_requests, **setup.to_dict()},
                                  server_metrics=result.server_metrics, producer="simulate")
    written = time.perf_counter()
    # report.html alone, from what write_run_directory had in hand.
    records = conform_request_records(result.records)
    timeseries = window_series(records, 10.0, None, server_metrics=result.server_metrics)
    cpu, wall = time.process_time(), time.perf_counter()
    write_run_report(run_dir, summary, timeseries, records=records, config={"num_requests": num_requests},
                     server_metrics=result.server_metrics)
    return {"simulate_s": simulated - started, "run_directory_s": written - simulated,
            "report_wall_s": time.perf_counter() - wall, "report_cpu_s": time.process_time() - cpu,
            "bytes": (run_dir / REPORT_FILE).stat().st_size, "windows": timeseries.height}


def render(driver, path: Path, repeat: int) -> dict:
    loads = [open_page(driver, path) for _ in range(repeat)]
    external = [u for page in loads for u in page.requests if not u.startswith(("data:", path.resolve().as_uri()))]
    rendered = [page.rendered_s for page in loads]
    return {"load_best_s": min(p.load_s for p in loads), "rendered_best_s": min(rendered),
            "rendered_median_s": statistics.median(rendered), "external_requests": len(external),
            "console_errors": sum(len(p.console_errors) for p in loads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--baseline-requests", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="page loads per report (default 3)")
    args = parser.parse_args()
    missing = chromium_missing()
    with tempfile.TemporaryDirectory(prefix="bench_report_") as tmp:
        results = {}
        for label, n in (("baseline", args.baseline_requests), ("big", args.requests)):
            results[label] = make_run(Path(tmp) / label, n)
            r = results[label]
            print(f"{n:,} requests: simulated in {r['simulate_s']:.1f} s, run directory {r['run_directory_s']:.1f} s; "
                  f"report.html {r['bytes'] / 1e6:.2f} MB ({r['windows']:,} windows) written in "
                  f"{r['report_wall_s']:.2f} s wall, {r['report_cpu_s']:.2f} s CPU")
        if missing:
            print(f"render times not measured: {missing}")
        else:
            with headless_chromium() as driver:
                for label in ("baseline", "big"):
                    results[label] |= render(driver, Path(tmp) / label / REPORT_FILE, args.repeat)
                    r = results[label]
                    print(f"{label}: Chromium load event {r['load_best_s']:.2f} s, "
                          f"painted {r['rendered_best_s']:.2f} s "
                          f"best / {r['rendered_median_s']:.2f} s median of {args.repeat}; external requests "
                          f"{r['external_requests']}, console errors {r['console_errors']}")
        big, base = results["big"], results["baseline"]
        print(f"ratio {args.requests:,} / {args.baseline_requests:,} requests: "
              f"size {big['bytes'] / base['bytes']:.2f}x, "
              f"writing (CPU) {big['report_cpu_s'] / base['report_cpu_s']:.2f}x"
              + (f", painted {big['rendered_best_s'] / base['rendered_best_s']:.2f}x" if not missing else ""))
        print(f"target size < {TARGET_BYTES / 1e6:.0f} MB: {'met' if big['bytes'] < TARGET_BYTES else 'NOT met'} "
              f"({big['bytes'] / 1e6:.2f} MB)")
        if not missing:
            print(f"target render < {TARGET_RENDER_S:.0f} s: "
                  f"{'met' if big['rendered_best_s'] < TARGET_RENDER_S else 'NOT met'} "
                  f"({big['rendered_best_s']:.2f} s)")


if __name__ == "__main__":
    main()
