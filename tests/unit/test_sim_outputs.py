"""What `simulate` writes besides the records: the step modes (`--steps none|sampled|all`), the server metrics
computed per interval from the step log as the engine runs (`burstgpt.sim.step_log.IntervalDigest`), and the
sampled step table. Everything is checked against the full step table of the same run."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

import burstgpt.sim.step_log as step_log_module
from burstgpt.cli import main
from burstgpt.errors import BurstGPTError
from burstgpt.sim.engine import EngineConfig, ServingEngine
from burstgpt.sim.hardware import gpu_preset, model_preset
from burstgpt.sim.latency import LinearLatency, RooflineLatency
from burstgpt.sim.simulate import EngineSetup, server_metrics_from_steps, simulate_workload
from burstgpt.sim.step_log import SERVER_COUNTER_STEPS, STEP_COLUMNS, IntervalDigest, StepLog
from burstgpt.workload.io import write_workload
from burstgpt.workload.spec import RequestLengths, ScheduledArrivals, WorkloadSpec, build_workload

# A small KV cache and a bursty workload: queues, preemptions, timeouts and long decode runs that span many
# metrics intervals all happen (600 blocks: admission reserves a whole prompt's blocks, as vLLM's does).
CONFIG = EngineConfig(num_gpu_blocks=600, block_size=16, max_num_seqs=48, max_num_batched_tokens=1024,
                      max_model_len=4096, timeout_s=30.0)
LATENCIES = {
    "roofline": RooflineLatency(gpu_preset("A800-80GB"), model_preset("Llama-2-7B-chat")),
    "linear": LinearLatency(base_s=0.012, per_prefill_token_s=8e-5, per_decode_token_s=4e-4, per_kv_token_s=1e-7),
}


def _workload(seed: int, num_requests: int = 300) -> pl.DataFrame:
    return build_workload(WorkloadSpec(arrivals=ScheduledArrivals(alpha=0.25, rate_rps=1.0),
                                       num_requests=num_requests, lengths=RequestLengths(zipf_theta=1.1), seed=seed))


def _setup(kind: str) -> EngineSetup:
    return EngineSetup(CONFIG, LATENCIES[kind], "Llama-2-7B-chat", "A800-80GB")


def _interval_ends_and_events(steps: pl.DataFrame, interval_s: float) -> pl.DataFrame:
    """The sampled steps straight from their definition, on the full table: the last step of every interval, and
    every step with requests queued or a preemption."""
    bucket = ((steps["time_s"] + steps["duration_s"]) / interval_s).floor()
    indexed = steps.with_row_index("_row").with_columns(bucket.alias("_bucket"))
    last = indexed.group_by("_bucket").agg(pl.col("_row").last())["_row"]
    return indexed.filter(pl.col("_row").is_in(last.implode()) | (pl.col("num_waiting") > 0)
                          | (pl.col("preemptions") > 0)).drop("_row", "_bucket")


@pytest.mark.parametrize("kind", ["roofline", "linear"])
@pytest.mark.parametrize("seed", [1, 2])
def test_step_modes_agree_with_the_full_step_table(monkeypatch, seed, kind):
    """Records are identical whatever is kept of the steps; the server metrics computed chunk by chunk as the
    engine runs equal those of the full table; the sampled steps are exactly the defined subset. The log is cut
    into chunks of a few segments, so intervals and decode runs straddle chunks."""
    monkeypatch.setattr(step_log_module, "_LOG_CHUNK", 7 + seed)
    workload, setup = _workload(seed), _setup(kind)
    for interval in (0.05, 1.0, 7.5):
        results = {mode: simulate_workload(workload, setup, seed=seed, steps=mode, metrics_interval_s=interval)
                   for mode in ("all", "sampled", "none")}
        full = results["all"].steps
        expected = server_metrics_from_steps(full, CONFIG.num_gpu_blocks, interval)
        for mode, result in results.items():
            assert result.records.equals(results["all"].records), mode
            assert result.server_metrics.equals(expected), (mode, interval)
            assert result.num_steps == full.height
        assert results["sampled"].steps.equals(_interval_ends_and_events(full, interval)), interval
        assert results["none"].steps.height == 0 and results["none"].steps.schema == pl.Schema(STEP_COLUMNS)
    # Every counter ends at its step column's total (the prefix-cache ones too: vLLM's counters of those names).
    for counter, step_column in SERVER_COUNTER_STEPS.items():
        assert expected[counter][-1] == full[step_column].sum(), counter
    # The case exercises what the digest must get right.
    assert full["preemptions"].sum() > 0 and full["prefix_cache_queries"].sum() > 0
    assert (full["num_waiting"] > 0).any() and expected.height > 3
    assert results["sampled"].steps.height < full.height / 2


def test_no_step_table_is_kept_unless_asked_for(monkeypatch):
    monkeypatch.setattr(step_log_module, "_LOG_CHUNK", 5)
    workload, setup = _workload(0, 120), _setup("linear")
    for mode in ("sampled", "none"):
        result = simulate_workload(workload, setup, steps=mode)
        assert result.step_log is None
    engine = ServingEngine(CONFIG, LATENCIES["linear"])
    digest = IntervalDigest(1.0, CONFIG.num_gpu_blocks)
    engine.steps = StepLog(CONFIG.block_size, consumers=(digest,), keep=False)
    engine.submit(workload["arrival_s"].to_numpy(), workload["input_tokens"].to_numpy(),
                  np.full(workload.height, 50))
    engine.run()
    engine.steps.finish()
    assert engine.steps.joined == [] and engine.steps.size > 100
    assert digest.server_metrics().height > 0
    with pytest.raises(BurstGPTError, match="not kept"):
        engine.steps.frame()
    with pytest.raises(BurstGPTError, match="must be one of"):
        simulate_workload(workload, setup, steps="some")
    with pytest.raises(BurstGPTError, match="metrics-interval"):
        simulate_workload(workload, setup, metrics_interval_s=0.0)


def test_digest_of_a_hand_made_log_with_step_ends_going_back():
    """Single steps whose ends go back (rounding can do it), and a decode run across four intervals: the digest
    equals the full table's server metrics, and the run's KV blocks grow as its residues say."""
    log_all = StepLog(4)
    digest = IntervalDigest(1.0, 100, sample=True)
    log = StepLog(4, consumers=(digest,), keep=False)
    for target in (log_all, log):
        target.add_step(0.0, 0.5, 10, 2, 1, 30, 1, 1, 2, 30, 0)  # ends 0.5: interval 0
        target.add_step(0.5, 0.5, 20, 3, 0, 40, 2, 0, 3, 40, 0)  # ends 1.0: interval 1
        target.add_step(0.75, 0.125, 18, 3, 0, 0, 3, 0, 3, 0, 1)  # ends 0.875: back in interval 0
        # 12 decode steps of 0.25 s of a batch of 3 from 1.0 s, one decoder at each residue 0..2 (block size 4):
        # they end at 1.25, 1.5, ..., 4.0.
        target.add_run(1.0, 12, (0.25, 0.0, -np.inf, 0.0, 0.0), 18, (1, 1, 1, 0), 2, 3, 2, 1)
        target.finish()
    full = log_all.frame()
    assert full.height == 15 and full["time_s"].to_list()[3:] == [1.0 + 0.25 * j for j in range(12)]
    kv = full["kv_blocks_used"].to_list()[3:]
    assert kv[0] == 19 and kv == sorted(kv) and kv[-1] == 18 + 9  # 3 decoders x 12 tokens / 4 per block
    expected = server_metrics_from_steps(full, 100, 1.0)
    assert digest.server_metrics().equals(expected)
    assert expected["time_s"].to_list() == [0.875, 1.75, 2.75, 3.75, 4.0]
    assert expected["generation_tokens_total"].to_list() == [8, 8 + 3 * 3, 29, 41, 44]
    assert expected["kv_cache_usage_peak"].to_list()[:2] == [0.18, 0.21]
    assert digest.sampled_steps().equals(_interval_ends_and_events(full, 1.0))


def test_streamed_step_table_equals_the_expanded_one(monkeypatch):
    monkeypatch.setattr(step_log_module, "_LOG_CHUNK", 9)
    result = simulate_workload(_workload(1, 150), _setup("roofline"), steps="all")
    assert len(result.step_log.joined) > 3
    streamed = result.scan_steps().collect()
    assert streamed.equals(result.steps)
    assert result.scan_steps().select("time_s").collect().equals(result.steps.select("time_s"))
    assert result.scan_steps().head(20).collect().equals(result.steps.head(20))
    busy = pl.col("num_waiting") > 0
    assert result.scan_steps().filter(busy).collect().equals(result.steps.filter(busy))


def test_simulate_cli_steps_modes(tmp_path, capsys):
    path = write_workload(_workload(2, 200), tmp_path / "w.parquet")
    common = ["--workload", str(path), "--gpu", "A800-80GB", "--model", "Llama-2-7B-chat", "--num-gpu-blocks",
              str(CONFIG.num_gpu_blocks), "--max-num-seqs", str(CONFIG.max_num_seqs), "--max-num-batched-tokens",
              str(CONFIG.max_num_batched_tokens), "--block-size", str(CONFIG.block_size), "--metrics-interval", "2"]
    runs = {}
    for mode in ("all", "sampled", "none"):
        out = tmp_path / mode
        assert main(["simulate", "-o", str(out), *common, "--steps", mode]) == 0
        runs[mode] = out
        config = json.loads((out / "config.json").read_text())
        assert config["steps"] == mode and config["metrics_interval_s"] == 2.0
        summary = json.loads((out / "summary.json").read_text())
        assert ("steps.parquet" in summary["files"]) == (mode != "none")
        assert (out / "steps.parquet").exists() == (mode != "none")
    all_steps = pl.read_parquet(runs["all"] / "steps.parquet")
    sampled = pl.read_parquet(runs["sampled"] / "steps.parquet")
    assert sampled.equals(_interval_ends_and_events(all_steps, 2.0)) and sampled.height < all_steps.height
    server = {mode: pl.read_csv(out / "server_metrics.csv") for mode, out in runs.items()}
    records = {mode: pl.read_parquet(out / "requests.parquet") for mode, out in runs.items()}
    for mode in ("sampled", "none"):
        assert server[mode].equals(server["all"]) and records[mode].equals(records["all"])
    assert server["all"]["generation_tokens_total"][-1] == all_steps["generated_tokens"].sum()
    assert server["all"].height == ((all_steps["time_s"] + all_steps["duration_s"]) / 2).floor().n_unique()
    assert main(["simulate", "-o", str(tmp_path / "bad"), *common, "--metrics-interval", "0"]) == 2
    assert "--metrics-interval" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", "-o", str(tmp_path / "bad"), *common, "--steps", "some"])
    assert not (tmp_path / "bad" / "summary.json").exists()
