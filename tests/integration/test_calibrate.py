"""`burstgpt calibrate` on an ordinary `bench` run (with --chunk-times) against a real `burstgpt serve-sim`
subprocess running a KNOWN linear step-time model: every coefficient comes back within 10 %, the engine settings
come from the run's scraped vllm:cache_config_info, and the step-level metrics the scraper now keeps are in the
run's server_metrics.csv."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from test_profile import KNOWN, assert_recovers, known_server_args

from burstgpt.cli import main
from burstgpt.records import read_run_directory
from burstgpt.sim import simulate_workload
from burstgpt.sim.calibrate import engine_setup_from_model_file, workload_from_run
from burstgpt.sim.latency import load_latency_model


@pytest.fixture(scope="module")
def known_server(tmp_path_factory, serve_sim_process):
    model_file = tmp_path_factory.mktemp("known") / "known.json"
    model_file.write_text(json.dumps(KNOWN.to_dict()))
    with serve_sim_process(*known_server_args(model_file)) as url:
        yield url


def bursty_workload(path, n: int = 100, seed: int = 1):
    """n requests in bursts (Gamma inter-arrivals, shape 0.5, mean 0.25 s), prompts uniform in 16..2999 tokens
    (long ones often enough that the quadratic attention term stands out from the per-token one), outputs
    16..95 tokens: the batch size and its contexts vary from one step to the next, and the server is busy but
    keeps up. (Prompts mostly short, log-uniform say, leave the per-pair term within noise of the per-token one:
    a bench run recovers only what its workload varies.)"""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.gamma(0.5, 0.5, n))
    pl.DataFrame({
        "request_id": np.arange(n), "arrival_s": arrival - arrival[0], "input_tokens": rng.integers(16, 3000, n),
        "output_tokens": rng.integers(16, 96, n),
    }).write_parquet(path)
    return path


def test_calibrate_recovers_the_coefficients_from_a_bench_run(known_server, tmp_path, capsys):
    run_dir = tmp_path / "run"
    workload = bursty_workload(tmp_path / "workload.parquet")
    assert main(["bench", "--url", known_server, "--workload", str(workload), "-o", str(run_dir), "--chunk-times",
                 "--quiet", "--scrape-interval", "0.5"]) == 0
    # The scraper kept vLLM's step-level metrics and the engine settings.
    server = read_run_directory(run_dir).server_metrics
    assert server["iteration_tokens_count"].max() > server["iteration_tokens_count"].min()
    assert set(server["num_gpu_blocks"].drop_nulls()) == {3000} and set(server["block_size"].drop_nulls()) == {32}
    assert server["request_prefill_time_count"].max() > 0
    capsys.readouterr()

    out = tmp_path / "model.json"
    assert main(["calibrate", str(run_dir), "-o", str(out)]) == 0
    fitted = load_latency_model(out)
    assert_recovers(fitted.latency, 0.10)
    assert fitted.method == "calibrate" and fitted.model_name == "known-linear"
    assert fitted.engine_settings() == {"num_gpu_blocks": 3000, "block_size": 32, "max_num_seqs": 256,
                                        "max_num_batched_tokens": 8192, "max_model_len": 4096}
    checks = {row["quantity"]: row for row in fitted.measurements["checks"]}
    steps = checks["engine steps between scrapes"]
    assert abs(steps["simulated"] / steps["observed"] - 1) < 0.05
    shown = capsys.readouterr().out
    assert "observed vs simulated" in shown and "R^2" in shown
    # The run replayed through the simulator with the fitted model: its end-to-end latencies are the server's.
    records = read_run_directory(run_dir).records
    simulated = simulate_workload(workload_from_run(run_dir), engine_setup_from_model_file(out, timeout_s=None))
    observed_e2e = (records["end_s"] - records["sent_s"]).median()
    simulated_e2e = (simulated.records["end_s"] - simulated.records["sent_s"]).median()
    assert simulated.records.height == records.height
    assert abs(simulated_e2e / observed_e2e - 1) < 0.05, (simulated_e2e, observed_e2e)


def test_calibrate_refuses_a_run_without_chunk_times(known_server, tmp_path, capsys):
    run_dir = tmp_path / "run"
    workload = bursty_workload(tmp_path / "workload.parquet", n=3)
    assert main(["bench", "--url", known_server, "--workload", str(workload), "-o", str(run_dir), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["calibrate", str(run_dir), "-o", str(tmp_path / "model.json")]) == 2
    error = capsys.readouterr().err
    assert "--chunk-times" in error and str(run_dir) in error and "Traceback" not in error
    assert not (tmp_path / "model.json").exists()
