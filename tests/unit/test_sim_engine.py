"""The simulated engine on hand-checkable cases, against the per-step reference, and the CLI run directory."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from burstgpt.cli import main
from burstgpt.errors import BurstGPTError
from burstgpt.records import REQUEST_RECORD_SCHEMA, SERVER_METRICS_SCHEMA
from burstgpt.sim.engine import STEP_COLUMNS, EngineConfig, ServingEngine
from burstgpt.sim.hardware import GIB, gpu_preset, model_preset, num_gpu_blocks
from burstgpt.sim.latency import LinearLatency, RooflineLatency
from burstgpt.sim.output_lengths import parse_output_length_model, resolve_output_lengths
from burstgpt.sim.reference import reference_simulate
from burstgpt.sim.simulate import EngineSetup, server_metrics_from_steps, simulate_workload
from burstgpt.workload.schema import conform_workload

# Step times that are exact in binary floating point keep hand computations exact.
LINEAR = LinearLatency(base_s=0.0625, per_prefill_token_s=0.0009765625, per_decode_token_s=0.001953125)
# Every term of the linear model, also in powers of two.
FULL_LINEAR = LinearLatency(base_s=2**-4, per_prefill_token_s=2**-10, per_decode_token_s=2**-9,
                            per_kv_token_s=2**-14, per_prefill_pair_s=2**-20, per_admitted_request_s=2**-7)


def _workload(arrival, prompt, output) -> pl.DataFrame:
    return conform_workload(pl.DataFrame({"arrival_s": np.asarray(arrival, float), "input_tokens": prompt,
                                          "output_tokens": output}))


def _setup(config: EngineConfig, latency=LINEAR) -> EngineSetup:
    return EngineSetup(config, latency, "sim-model", "test-gpu")


@pytest.mark.parametrize("jump", [True, False])
def test_single_request_ttft_and_end_from_the_latency_model(jump):
    config = EngineConfig(num_gpu_blocks=64, max_model_len=512, timeout_s=None)
    result = simulate_workload(_workload([1.0], [100], [5]), _setup(config), jump=jump)
    row = result.records.row(0, named=True)
    prefill = 0.0625 + 100 * 0.0009765625  # one step of 100 prompt tokens
    decode = 0.0625 + 1 * 0.001953125  # each later step decodes one token
    assert row["first_scheduled_s"] == 1.0
    assert row["first_token_s"] == pytest.approx(1.0 + prefill, abs=1e-12)
    assert row["end_s"] == pytest.approx(1.0 + prefill + 4 * decode, abs=1e-12)
    assert (row["status"], row["output_tokens"], row["preemptions"], row["http_status"]) == ("ok", 5, 0, 200)
    assert result.steps.height == 5
    assert result.steps["prefill_tokens"].to_list() == [100, 0, 0, 0, 0]
    assert result.steps["kv_blocks_used"].to_list() == [7, 7, 7, 7, 7]  # ceil(100/16); 104 tokens still fit


def test_chunked_prefill_and_roofline_preset_by_hand():
    gpu, model = gpu_preset("A800-80GB"), model_preset("Llama-2-13B-chat")
    latency = RooflineLatency(gpu, model)
    config = EngineConfig(num_gpu_blocks=400, max_num_batched_tokens=128, max_model_len=4096, timeout_s=None)
    result = simulate_workload(_workload([0.0], [300], [2]), _setup(config, latency))

    def roofline(tokens, context_before):
        pairs = tokens * context_before + tokens * (tokens + 1) // 2
        flops = 2 * 13.0e9 * tokens + 4 * 40 * 5120 * pairs
        moved = 13.0e9 * 2 + (2 * 40 * 40 * 128 * 2) * (context_before + tokens)
        return max(flops / (312e12 * 0.6), moved / (2.039e12 * 0.8)) + 0.003

    ttft = roofline(128, 0) + roofline(128, 128) + roofline(44, 256)  # three chunks of the 300-token prompt
    row = result.records.row(0, named=True)
    assert row["first_token_s"] == pytest.approx(ttft, rel=1e-12)
    assert row["end_s"] == pytest.approx(ttft + roofline(1, 300), rel=1e-12)
    assert result.steps["prefill_tokens"].to_list() == [128, 128, 44, 0]


def test_kv_blocks_from_gpu_memory_by_hand():
    gpu, model = gpu_preset("A800-80GB"), model_preset("Llama-2-13B-chat")
    # vLLM's determine_available_memory: memory x utilisation - weights - activation peak - non-torch memory;
    # the activation peak of a 2048-token profiling pass is 16 x hidden x 2 bytes per token.
    activations = 16 * 5120 * 2 * 2048
    free = 80 * GIB * 0.9 - 13.0e9 * 2 - activations - 0.5 * GIB
    assert num_gpu_blocks(gpu, model) == int(free // (16 * 819200))
    # More batched tokens, a larger profiling peak, fewer blocks; 128-token blocks (vLLM's CPU default) 8x fewer.
    assert num_gpu_blocks(gpu, model, max_num_batched_tokens=8192) == int(
        (free - 3 * activations) // (16 * 819200))
    assert num_gpu_blocks(gpu, model, block_size=128) == int(free // (128 * 819200))
    with pytest.raises(BurstGPTError):
        num_gpu_blocks(gpu_preset("RTX-A6000-48GB"), model_preset("Llama-2-13B-chat"), gpu_memory_utilization=0.5)


def test_burst_overflowing_the_cache_preempts_and_every_request_still_finishes():
    # 6 requests of 40 + 100 tokens need 9 blocks each at the end; 20 blocks cannot hold them all.
    config = EngineConfig(num_gpu_blocks=20, max_model_len=320, timeout_s=None)
    result = simulate_workload(_workload(np.zeros(6), [40] * 6, [100] * 6), _setup(config))
    records, steps = result.records, result.steps
    assert steps["preemptions"].sum() > 0
    assert records["preemptions"].sum() == steps["preemptions"].sum()
    assert (records["status"] == "ok").all()
    assert records["output_tokens"].to_list() == [100] * 6
    assert steps["kv_blocks_used"].max() <= 20
    # The preempted ones are the latest admitted: the first request is never preempted.
    assert records["preemptions"][0] == 0


def test_timeout_aborts_and_counts():
    # Every step lasts 0.0625 s: token k arrives at 0.0625 k, so 480 tokens reach the client by t = 30.
    latency = LinearLatency(0.0625, 0.0, 0.0)
    config = EngineConfig(num_gpu_blocks=200, max_model_len=2048, timeout_s=30.0)
    result = simulate_workload(_workload([0.0, 0.0], [10, 10], [1000, 100]), _setup(config, latency))
    late, fine = result.records.row(0, named=True), result.records.row(1, named=True)
    assert (late["status"], late["error_class"], late["end_s"]) == ("failed", "timeout", 30.0)
    assert late["output_tokens"] == 480
    assert (fine["status"], fine["output_tokens"], fine["end_s"]) == ("ok", 100, 100 * 0.0625)


def test_queue_limit_rejects_and_long_prompts_fail():
    config = EngineConfig(num_gpu_blocks=64, max_num_seqs=1, max_model_len=512, timeout_s=None, max_queue=1)
    # Request 0 runs alone (max_num_seqs 1); 1 and 2 arrive during its prefill step and join at the next step:
    # 1 takes the only queue place, 2 is rejected; 3 is longer than the context.
    result = simulate_workload(_workload([0, 0.01, 0.02, 0.03, 0.04], [10, 10, 10, 600, 0], [50, 50, 50, 5, 5]),
                               _setup(config))
    records = result.records
    assert records["status"].to_list() == ["ok", "ok", "failed", "failed", "failed"]
    assert records["error_class"].to_list() == [None, None, "rejected", "http_4xx", "http_4xx"]
    assert records["http_status"].to_list() == [200, 200, 429, 400, 400]
    assert records["end_s"][2] == 0.02 and records["end_s"][3] == 0.03
    assert records["first_scheduled_s"][1] == pytest.approx(0.0625 + 10 * 0.0009765625 + 49 * (0.0625 + 0.001953125))


def _random_case(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 150))
    arrival = np.cumsum(rng.gamma(0.5, 0.2, n))
    prompt = rng.integers(1, 400, n)
    prompt[rng.random(n) < 0.03] = 700  # longer than the context: refused
    output = rng.integers(1, 300, n)
    config = EngineConfig(
        num_gpu_blocks=int(rng.integers(40, 200)), max_num_seqs=int(rng.integers(2, 40)),
        max_num_batched_tokens=int(rng.integers(64, 1024)), max_model_len=640,
        timeout_s=float(rng.choice([5.0, 30.0])), max_queue=[None, 10][seed % 2],
    )
    return config, arrival, prompt, output


def _assert_same(got: dict, expected: dict, *, exact: bool, context: str) -> None:
    """Counts and states equal; times equal (exact) or to float rounding (closed-form decode runs)."""
    for name, values in got.items():
        if values.dtype.kind == "f" and not exact:
            np.testing.assert_allclose(values, expected[name], rtol=1e-12, atol=1e-9, err_msg=f"{name}, {context}")
        else:
            np.testing.assert_array_equal(values, expected[name], err_msg=f"{name}, {context}")


@pytest.mark.parametrize("kind", ["roofline", "linear"])
@pytest.mark.parametrize("seed", range(12))
def test_fast_engine_matches_the_per_step_reference(seed, kind):
    """Stepping mode is bit-identical to the simple reference; jumping (decode runs summed in closed form) makes
    the same decisions with times equal to float rounding. For both latency models (the linear one with every
    term: prefill attention pairs and admitted requests too)."""
    config, arrival, prompt, output = _random_case(seed)
    latency = RooflineLatency(gpu_preset("A800-80GB"), model_preset("Llama-2-7B-chat")) if kind == "roofline" \
        else FULL_LINEAR
    expected = reference_simulate(config, latency, arrival, prompt, output)
    step_times = expected.pop("step_times")
    for jump in (False, True):
        engine = ServingEngine(config, latency)
        engine.submit(arrival, prompt, output)
        engine.run(jump=jump)
        _assert_same(engine.columns(len(arrival)), expected, exact=not jump, context=f"jump={jump}")
        steps = engine.steps.frame()
        _assert_same({"step_times": steps["time_s"].to_numpy()}, {"step_times": step_times}, exact=not jump,
                     context=f"steps, jump={jump}")
        assert steps["kv_blocks_used"].max() <= config.num_gpu_blocks
    assert expected["preemptions"].sum() > 0 or seed % 3 or kind == "linear"  # most cases exercise preemption


def test_jump_and_step_modes_give_the_same_tables():
    config, arrival, prompt, output = _random_case(3)
    workload = _workload(arrival, prompt, output)
    setup = _setup(config, RooflineLatency(gpu_preset("H100-80GB"), model_preset("Llama-2-7B-chat")))
    fast, slow = simulate_workload(workload, setup, jump=True), simulate_workload(workload, setup, jump=False)
    for table in ("records", "steps"):
        a, b = getattr(fast, table), getattr(slow, table)
        assert a.schema == b.schema and a.height == b.height
        for name in a.columns:
            if a[name].dtype == pl.Float64:
                np.testing.assert_allclose(a[name].to_numpy(), b[name].to_numpy(), rtol=1e-12, atol=1e-9)
            elif name != "chunk_times_s":
                assert a[name].equals(b[name]), name
    assert fast.steps["preemptions"].sum() > 0 and fast.steps["kv_blocks_used"].max() == config.num_gpu_blocks
    # Long decode runs (hundreds of steps) are taken in closed form, not one by one.
    assert fast.steps.height > 3 * slow.records.height


def test_records_and_steps_schemas():
    config, arrival, prompt, output = _random_case(1)
    result = simulate_workload(_workload(arrival, prompt, output), _setup(config))
    assert result.records.schema == pl.Schema(REQUEST_RECORD_SCHEMA)
    assert result.steps.schema == pl.Schema(STEP_COLUMNS)
    assert result.steps["generated_tokens"].sum() >= result.records["output_tokens"].sum()
    metrics = server_metrics_from_steps(result.steps, config.num_gpu_blocks, None)
    assert metrics.height == result.steps.height
    assert tuple(metrics.columns) == (*SERVER_METRICS_SCHEMA, "prefix_cache_queries_total", "prefix_cache_hits_total",
                                      "kv_cache_usage_peak")
    assert metrics["kv_cache_usage_perc"].max() <= 1.0
    assert metrics["num_preemptions_total"][-1] == result.records["preemptions"].sum()
    assert metrics["generation_tokens_total"].is_sorted()


def test_output_lengths_fixed_drawn_and_capped():
    frame = conform_workload(pl.DataFrame({
        "arrival_s": [0.0, 0.0, 0.0, 0.0], "input_tokens": [10, 10, 4000, 10],
        "output_tokens": [7, None, 500, None], "max_output_tokens": [None, None, None, 3],
    }))
    model = parse_output_length_model("uniform:100,200")
    lengths = resolve_output_lengths(frame, model, max_model_len=4096, seed=5)
    assert lengths[0] == 7 and 100 <= lengths[1] <= 200 and lengths[2] == 96 and lengths[3] == 3
    assert np.array_equal(lengths, resolve_output_lengths(frame, model, max_model_len=4096, seed=5))
    draws = parse_output_length_model("lognormal:250,0.8").sample(20000, np.random.default_rng(0))
    assert np.median(draws) == pytest.approx(250, rel=0.05)
    with pytest.raises(BurstGPTError):
        parse_output_length_model("lognormal:250")


def test_simulate_cli_writes_a_run_directory(tmp_path, capsys):
    from burstgpt.workload.io import write_workload
    from burstgpt.workload.spec import ScheduledArrivals, WorkloadSpec, build_workload

    workload = build_workload(WorkloadSpec(arrivals=ScheduledArrivals(rate_rps=2.0), num_requests=200, seed=3))
    path = write_workload(workload, tmp_path / "w.parquet")
    out = tmp_path / "run"
    status = main(["simulate", "-o", str(out), "--workload", str(path), "--gpu", "H100-80GB",
                   "--model", "Llama-2-7B-chat", "--num-gpu-blocks", "600", "--timeout", "20",
                   "--steps", "all"])
    assert status == 0
    records = pl.read_parquet(out / "requests.parquet")
    steps = pl.read_parquet(out / "steps.parquet")
    assert records.height == 200 and steps.schema == pl.Schema(STEP_COLUMNS)
    config = json.loads((out / "config.json").read_text())
    assert config["num_gpu_blocks"] == 600 and config["gpu"] == "H100-80GB"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"]["total"] == 200
    server = pl.read_csv(out / "server_metrics.csv")
    assert server["kv_cache_usage_perc"].max() <= 1.0
    assert server["generation_tokens_total"][-1] == steps["generated_tokens"].sum()
    assert main(["simulate", "-o", str(out), "--workload", str(tmp_path / "missing.parquet")]) == 2
    assert "missing.parquet" in capsys.readouterr().err
    assert main(["simulate", "-o", str(out), "--workload", str(path), "--num-gpu-blocks", "10",
                 "--overwrite"]) == 2
    assert "cannot hold one request" in capsys.readouterr().err
    # A finished run is not replaced without --overwrite; with it, the new run replaces the old one.
    assert main(["simulate", "-o", str(out), "--workload", str(path), "--num-requests", "50"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["requests"]["total"] == 200
    assert main(["simulate", "-o", str(out), "--workload", str(path), "--num-requests", "50", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["requests"]["total"] == 50


def test_step_table_expands_the_same_in_chunks(monkeypatch):
    import burstgpt.sim.engine as engine_module
    import burstgpt.sim.step_log as step_log_module

    config, arrival, prompt, output = _random_case(4)
    engine = ServingEngine(config, RooflineLatency(gpu_preset("A800-80GB"), model_preset("Llama-2-7B-chat")))
    engine.submit(arrival, prompt, output)
    engine.run(jump=True)
    whole = engine.steps.frame()
    monkeypatch.setattr(step_log_module, "_FRAME_CHUNK_ROWS", 7)
    assert engine.steps.frame().equals(whole)
    # Segments joined every few appends give the same table as all joined at the end.
    monkeypatch.setattr(step_log_module, "_LOG_CHUNK", 5)
    packed = ServingEngine(config, engine.latency)
    packed.submit(arrival, prompt, output)
    packed.run(jump=True)
    assert len(packed.steps.joined) > 3
    assert packed.steps.frame().equals(whole)
    states = engine.columns()["state"]
    done, late = int((states == engine_module.DONE).sum()), int((states == engine_module.TIMED_OUT).sum())
    assert done <= whole["finished"].sum() <= done + late


def test_downsampled_server_metrics_are_the_last_step_and_peak_of_each_interval():
    config, arrival, prompt, output = _random_case(5)
    result = simulate_workload(_workload(arrival, prompt, output), _setup(config))
    per_step = server_metrics_from_steps(result.steps, config.num_gpu_blocks, None).drop("kv_cache_usage_peak")
    for interval in (0.05, 1.0, 7.5):
        sampled = server_metrics_from_steps(result.steps, config.num_gpu_blocks, interval)
        bucket = (per_step["time_s"] / interval).floor()
        assert sampled.height == bucket.n_unique()
        # Straight from the definition, interval by interval.
        for row, value in zip(sampled.iter_rows(named=True), bucket.unique(maintain_order=True), strict=True):
            rows = per_step.filter(bucket == value)
            assert row == {**rows.row(rows.height - 1, named=True),
                           "kv_cache_usage_peak": rows["kv_cache_usage_perc"].max()}


def test_downsampled_server_metrics_when_step_ends_go_back():
    """Rounding can put a step's end a hair before its predecessor's: an interval then gathers its rows wherever
    they are (the general path)."""
    ints = {name: [0, 0, 0] for name in STEP_COLUMNS if name not in ("time_s", "duration_s")}
    steps = pl.DataFrame({"time_s": [0.0, 1.0, 0.5], "duration_s": [0.5, 0.5, 0.4],
                          **ints, "kv_blocks_used": [2, 8, 4], "generated_tokens": [1, 1, 1]}, schema=STEP_COLUMNS)
    sampled = server_metrics_from_steps(steps, 10, 1.0)  # ends 0.5, 1.5, 0.9: intervals 0, 1, 0
    assert sampled["time_s"].to_list() == [0.9, 1.5]
    assert sampled["kv_cache_usage_perc"].to_list() == [0.4, 0.8]
    assert sampled["kv_cache_usage_peak"].to_list() == [0.4, 0.8]
    assert sampled["generation_tokens_total"].to_list() == [3, 2]
