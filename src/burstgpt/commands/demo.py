"""`burstgpt demo`: the whole pipeline end to end on built-in defaults, offline, in a few minutes.

synthetic BurstGPT-like trace -> analyze -> workload fit -> mirrored workload -> simulate
-> serve-sim + bench (real HTTP on 127.0.0.1) -> report comparing the simulated and the measured run.
Every step is the same subcommand a user would run; the commands are printed so they can be rerun by hand.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from burstgpt.errors import BurstGPTError

console = Console(stderr=True)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on built-in defaults (offline)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output directory (demo-output)")
    parser.add_argument("--days", type=float, default=7.0, help="days of synthetic trace to generate (7)")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of mirrored workload to simulate and send to serve-sim (60)")
    parser.add_argument("--rate", type=float, default=3.0, help="mean request rate of the workload, req/s (3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (0)")
    parser.add_argument("--skip-bench", action="store_true", help="simulate only; do not start serve-sim")
    parser.set_defaults(func=run_demo)


def _step(title: str, argv: list[str]) -> None:
    """Run one `burstgpt` subcommand in-process, echoing it as a shell command."""
    from burstgpt.cli import main

    console.rule(f"[bold]{title}")
    console.print(f"$ burstgpt {shlex.join(argv)}", style="cyan", highlight=False)
    status = main(argv)
    if status:
        raise BurstGPTError(f"demo step failed ({title}), exit status {status}")


def run_demo(args: argparse.Namespace) -> int:
    from burstgpt.workload.synthetic_trace import synthetic_burstgpt, write_burstgpt_csv

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    console.rule("[bold]1. a BurstGPT-like trace with known parameters")
    synthetic = synthetic_burstgpt(days=args.days, seed=args.seed)
    trace_csv = out / "trace" / "synthetic_burstgpt.csv"
    trace_csv.parent.mkdir(parents=True, exist_ok=True)
    write_burstgpt_csv(synthetic.trace, trace_csv)
    synthetic.windows.write_csv(out / "trace" / "true_window_parameters.csv")
    console.print(f"{synthetic.trace.num_rows:,} requests over {args.days:g} days -> {trace_csv}")

    _step("2. characterise it as the paper does", ["analyze", str(trace_csv), "-o", str(out / "analysis")])
    params = out / "workload" / "params.json"
    _step("3. fit the conversation service's arrivals and lengths",
          ["workload", "fit", str(trace_csv), "--trace-service", "conversation", "-o", str(params)])
    workload = out / "workload" / "workload.parquet"
    # The trace's clock squeezed so that the run covers its first day: the night's lull and the day's bursts,
    # each 20-minute window keeping its fitted burstiness (alpha).
    time_scale = 86400.0 / args.duration
    _step("4. mirror its burstiness onto a small server",
          ["workload", "generate", "--params", str(params), "--target-rate", str(args.rate), "--time-scale",
           f"{time_scale:g}", "--duration", str(args.duration), "--max-input-tokens", "2048", "--max-output-tokens", "512",
           "--prompts", "synthetic", "--seed", str(args.seed), "-o", str(workload)])
    _step("5. inspect the workload", ["workload", "inspect", str(workload), "--plots", str(out / "workload")])
    sim_dir = out / "simulate"
    # A small KV cache (1000 blocks of 16 tokens) so that the day's bursts fill it: preemptions and latency
    # spikes appear at the peak while the night stays idle, as in the paper's Fig 16.
    engine = ["--gpu", "A800-80GB", "--model", "Llama-2-7B-chat", "--num-gpu-blocks", "1000", "--seed",
              str(args.seed)]
    _step("6. simulate a vLLM-like engine offline", ["simulate", "--workload", str(workload), "-o", str(sim_dir),
                                                     "--overwrite", *engine])
    run_dirs = [sim_dir]
    if not args.skip_bench:
        bench_dir = out / "bench"
        with _serve_sim(engine) as url:
            _step("7. send the same workload to serve-sim over HTTP, open loop",
                  ["bench", "--url", url, "--workload", str(workload), "--out", str(bench_dir), "--overwrite", "--quiet"])
        run_dirs.append(bench_dir)
        _step("8. compare the simulated and the measured run",
              ["report", *map(str, run_dirs), "--out", str(out / "comparison")])

    console.rule("[bold]done")
    console.print(f"finished in {time.monotonic() - started:.0f} s. Look at:")
    for label, path in [
        ("trace characterisation (Figs 1-14 style)", out / "analysis"),
        ("workload plots", out / "workload"),
        ("simulated run (timeline.png, summary.json)", sim_dir),
        *([("measured run against serve-sim", out / "bench"), ("comparison", out / "comparison")]
          if not args.skip_bench else []),
    ]:
        console.print(f"  {label}: {path}/")
    return 0


class _serve_sim:
    """Start `burstgpt serve-sim` on a free loopback port in a subprocess; stop it with SIGTERM on exit."""

    def __init__(self, engine_args: list[str]) -> None:
        self.engine_args = engine_args
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> str:
        argv = [sys.executable, "-m", "burstgpt.cli", "serve-sim", "--host", "127.0.0.1", "--port", "0",
                *self.engine_args]
        console.rule("[bold]starting serve-sim")
        console.print(f"$ burstgpt {shlex.join(argv[3:])}", style="cyan", highlight=False)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.monotonic() + 60
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            if "serving on" in line:
                url = line.split("serving on", 1)[1].strip().split()[0]
                console.print(f"serve-sim is listening on {url}")
                return url
        self.__exit__(None, None, None)
        raise BurstGPTError("serve-sim did not start within 60 s")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
