"""A profile and a bench run recorded on a REAL vLLM engine (vLLM 0.32 CPU, the tiny random Llama of
examples/vllm_cpu, 64 KV blocks of 128 tokens, max 64 sequences; recorded by
`benchmarks/fidelity_vllm_cpu.py --record-test-data`): CI refits the latency model from the profile's raw
measurements, simulates the recorded run's arrivals and token counts with it, and must land within 20 % of the
real engine's median TTFT and end-to-end latency. The run (Gamma alpha 1, 3 req/s, 60 s) was not used for
fitting."""

from __future__ import annotations

import polars as pl
import pytest

from burstgpt.client.profile import DECODE_SCHEMA, PREFILL_SCHEMA
from burstgpt.sim import simulate_workload
from burstgpt.sim.calibrate import (engine_setup_from_model_file, fit_profile, frontend_delay_from_profile,
                                    workload_from_records)
from burstgpt.sim.latency import LINEAR_TERMS, load_latency_model


def _medians(records: pl.DataFrame, start: str) -> tuple[float, float]:
    ok = records.filter(pl.col("status") == "ok")
    return float((ok["first_token_s"] - ok[start]).median()), float((ok["end_s"] - ok[start]).median())


def test_refit_recorded_vllm_profile_predicts_the_recorded_run(tests_data):
    recorded = tests_data / "vllm_cpu_recorded"
    stored = load_latency_model(recorded / "profile.json")
    prefill = pl.DataFrame(stored.measurements["prefill"], schema=PREFILL_SCHEMA)
    decode = pl.DataFrame(stored.measurements["decode"], schema=DECODE_SCHEMA)
    engine_timed = prefill["engine_prefill_s"].null_count() < prefill.height
    fit = fit_profile(prefill, decode, engine_timed=engine_timed)
    assert fit.quality.r2 > 0.95
    # The refit reproduces what `profile` wrote (same measurements, same fitting code).
    for name in LINEAR_TERMS:
        assert getattr(fit.model, name) == pytest.approx(getattr(stored.latency, name), rel=0.05, abs=1e-9), name
    delay = frontend_delay_from_profile(prefill)
    assert delay == pytest.approx(stored.frontend_delay_s)
    # vLLM does not expose its batch limits: the server ran with --max-num-seqs 64 and the CPU default of 2048
    # batched tokens. The KV cache size and block size come from the profile (cache_config_info).
    setup = engine_setup_from_model_file(recorded / "profile.json", latency=fit.model, frontend_delay_s=delay,
                                         max_num_seqs=64, max_num_batched_tokens=2048, timeout_s=30.0)
    assert (setup.config.num_gpu_blocks, setup.config.block_size) == (64, 128)
    real = pl.read_parquet(recorded / "run_requests.parquet")
    simulated = simulate_workload(workload_from_records(real), setup).records
    assert simulated.height == real.filter(pl.col("sent_s").is_not_null()).height
    real_ttft, real_e2e = _medians(real, "sent_s")
    sim_ttft, sim_e2e = _medians(simulated, "scheduled_s")
    assert sim_ttft == pytest.approx(real_ttft, rel=0.20)
    assert sim_e2e == pytest.approx(real_e2e, rel=0.20)
