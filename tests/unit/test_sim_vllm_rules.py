"""vLLM V1's engine defaults and client-timeout semantics in the simulator (docs/sim.md, "vLLM V1 rules"):
batch limits and block size per device as vLLM's OpenAI server picks them, the KV cache sized from memory as
vLLM's profiling does, and the paper's 30 s timeout as a client's (the engine aborts after an optional delay)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from burstgpt.cli import main
from burstgpt.errors import BurstGPTError
from burstgpt.sim.engine import TIMED_OUT, EngineConfig, ServingEngine
from burstgpt.sim.hardware import GIB, GPUSpec, batch_defaults, gpu_preset, model_preset, num_gpu_blocks
from burstgpt.sim.latency import LinearLatency
from burstgpt.sim.reference import reference_simulate
from burstgpt.sim.simulate import EngineSetup, EngineSpec, build_engine_setup, simulate_workload
from burstgpt.workload.schema import conform_workload


@pytest.mark.parametrize(("gpu", "tokens", "seqs", "block_size"), [
    ("A800-80GB", 8192, 1024, 16),  # 80 GiB and its name has no "a100": vLLM's H100-class defaults
    ("H100-80GB", 8192, 1024, 16),
    ("A100-80GB", 2048, 256, 16),  # vLLM keeps A100s on the small defaults (PR #17885)
    ("RTX-A6000-48GB", 2048, 256, 16),
    ("CPU", 2048, 128, 128),  # vLLM's CPU backend: 2048 / 128 per socket, 128-token blocks
])
def test_batch_limits_and_block_size_default_as_vllm_chooses_them(gpu, tokens, seqs, block_size):
    config = build_engine_setup(EngineSpec(gpu=gpu, model="Llama-2-7B-chat")).config
    assert (config.max_num_batched_tokens, config.max_num_seqs, config.block_size) == (tokens, seqs, block_size)
    given = build_engine_setup(EngineSpec(gpu=gpu, model="Llama-2-7B-chat", max_num_seqs=7,
                                          max_num_batched_tokens=300, block_size=32)).config
    assert (given.max_num_batched_tokens, given.max_num_seqs, given.block_size) == (300, 7, 32)


def test_the_largest_gpus_get_the_largest_defaults():
    assert batch_defaults(GPUSpec("B200", 180 * GIB, 2.25e15, 8e12, "NVIDIA B200")) == (16384, 1024)
    assert batch_defaults(GPUSpec("A100-160", 160 * GIB, 1, 1, "NVIDIA A100")) == (16384, 1024)  # memory first
    assert batch_defaults(GPUSpec("small", 69 * GIB, 1, 1, "NVIDIA H100")) == (2048, 256)


def test_kv_capacity_from_memory_follows_the_batch_budget():
    """The default A800 x 13B engine profiles 8192 batched tokens: its KV cache is what the memory left after
    weights, that profiling pass's activation peak and non-torch memory holds."""
    setup = build_engine_setup(EngineSpec(gpu="A800-80GB", model="Llama-2-13B-chat"))
    available = 80 * GIB * 0.9 - 13.0e9 * 2 - 16 * 5120 * 2 * 8192 - 0.5 * GIB
    assert setup.config.num_gpu_blocks == int(available // (16 * 2 * 40 * 40 * 128 * 2))
    # A real server's cache_config_info (num_gpu_blocks, block_size) is taken as given.
    given = build_engine_setup(EngineSpec(num_gpu_blocks=1234, block_size=128, max_model_len=4096)).config
    assert (given.num_gpu_blocks, given.block_size) == (1234, 128)
    with pytest.raises(BurstGPTError, match="no memory left"):
        num_gpu_blocks(gpu_preset("RTX-A6000-48GB"), model_preset("Llama-2-13B-chat"), gpu_memory_utilization=0.5)


def test_the_settings_line_says_what_was_resolved():
    text = build_engine_setup(EngineSpec(gpu="H100", model="Llama-2-7B", enable_prefix_caching=False,
                                         abort_delay_s=2.0)).describe()
    assert "max_num_seqs 1024; max_num_batched_tokens 8192" in text and "prefix caching off" in text
    assert "client timeout 30 s (aborted 2 s later)" in text
    with pytest.raises(BurstGPTError, match="--abort-delay"):
        build_engine_setup(EngineSpec(abort_delay_s=-1.0))


@pytest.mark.parametrize("jump", [True, False])
def test_the_client_gives_up_at_its_timeout_and_the_engine_aborts_after_the_delay(jump):
    """Every step lasts 1/16 s: token k reaches the client at k/16 s, so 480 tokens by its 30 s timeout. The
    client then gives up (its record: timeout, 480 tokens, ends at 30 s); the engine notices 2 s later, at the
    step starting at 32 s, and only then frees the request's KV, having generated 512 tokens. A request that
    finishes between the two (490 tokens, at 30.625 s) is still a timeout for its client."""
    config = EngineConfig(num_gpu_blocks=300, max_model_len=2048, timeout_s=30.0, abort_delay_s=2.0)
    workload = conform_workload(pl.DataFrame({"arrival_s": [0.0, 0.0, 0.0], "input_tokens": [10, 10, 10],
                                              "output_tokens": [1000, 100, 490]}))
    result = simulate_workload(workload, EngineSetup(config, LinearLatency(0.0625, 0.0, 0.0), "m", "g"), jump=jump)
    records = result.records
    assert records["status"].to_list() == ["failed", "ok", "failed"]
    assert records["error_class"].to_list() == ["timeout", None, "timeout"]
    assert records["output_tokens"].to_list() == [480, 100, 480]
    assert records["end_s"].to_list() == [30.0, 6.25, 30.0]
    steps = result.steps
    assert steps.height == 512 and steps["time_s"][-1] == 31.9375  # the engine ran the request to 32 s
    assert steps["kv_blocks_used"][-1] == -(-(10 + 511) // 16)
    # Without the delay it stops at 30 s (480 steps), as before.
    prompt = EngineConfig(**{**config.__dict__, "abort_delay_s": 0.0})
    assert simulate_workload(workload, EngineSetup(prompt, LinearLatency(0.0625, 0.0, 0.0), "m", "g")).steps \
        .height == 480


def test_abort_delay_agrees_with_the_reference():
    rng = np.random.default_rng(11)
    n = 150
    arrival, prompt, output = np.cumsum(rng.gamma(0.5, 0.1, n)), rng.integers(1, 300, n), rng.integers(1, 300, n)
    latency = LinearLatency(2**-5, 2**-11, 2**-9, 2**-14)
    for delay in (0.0, 0.75):
        config = EngineConfig(num_gpu_blocks=120, max_num_seqs=16, max_num_batched_tokens=256, max_model_len=640,
                              timeout_s=4.0, abort_delay_s=delay)
        expected = reference_simulate(config, latency, arrival, prompt, output)
        engine = ServingEngine(config, latency)
        engine.submit(arrival, prompt, output)
        engine.run(jump=False)
        for name, values in engine.columns().items():
            np.testing.assert_array_equal(values, expected[name], err_msg=f"{name}, delay {delay}")
        np.testing.assert_array_equal(engine.steps.frame()["time_s"].to_numpy(), expected["step_times"])
        assert (expected["state"] == TIMED_OUT).sum() > 10 and expected["preemptions"].sum() > 0


def test_simulate_flags_turn_prefix_caching_off_and_set_the_abort_delay(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", "-o", str(out), "--rate", "5", "--num-requests", "20", "--gpu", "h100", "--model",
                 "llama-2-7b", "--no-prefix-caching", "--abort-delay", "1.5"]) == 0
    err = capsys.readouterr().err
    assert "max_num_seqs 1024; max_num_batched_tokens 8192" in err and "prefix caching off" in err
    assert "client timeout 30 s (aborted 1.5 s later)" in err
    records = pl.read_parquet(out / "requests.parquet")
    assert records["cached_prompt_tokens"].null_count() == records.height  # no lookups without caching
    assert main(["simulate", "-o", str(tmp_path / "bad"), "--rate", "5", "--num-requests", "5",
                 "--abort-delay", "-1"]) == 2
    assert "--abort-delay" in capsys.readouterr().err


def test_frontend_delay_adds_to_ttft_and_end_to_end_and_comes_from_the_model_file(tmp_path):
    import json

    from burstgpt.sim.calibrate import engine_setup_from_model_file, frontend_delay_from_profile
    from burstgpt.sim.latency import FittedModel, load_latency_model

    latency = LinearLatency(0.01, 1e-4, 1e-3)
    workload = pl.DataFrame({"arrival_s": [0.0, 5.0], "input_tokens": [100, 50], "output_tokens": [4, 3]})
    spec = EngineSpec(gpu="H100", model="Llama-2-7B", num_gpu_blocks=300, latency=latency)
    plain = simulate_workload(workload, build_engine_setup(spec)).records
    delayed = simulate_workload(workload, build_engine_setup(spec, frontend_delay_s=0.25)).records
    # Idle engine: every time after the send moves by exactly the delay; the send times stay.
    assert delayed["scheduled_s"].to_list() == plain["scheduled_s"].to_list()
    for column in ("first_token_s", "end_s"):
        assert (delayed[column] - plain[column]).to_list() == pytest.approx([0.25, 0.25])
    # The client still gives up `timeout` after sending, whatever the delay.
    slow = build_engine_setup(spec, frontend_delay_s=0.5, timeout_s=1.0, latency=LinearLatency(0.4, 0.0, 0.0))
    timed_out = simulate_workload(workload.head(1), slow).records
    assert timed_out["status"].to_list() == ["failed"] and timed_out["end_s"][0] == pytest.approx(1.0)
    # profile's estimate: the median of client TTFT minus engine prefill; a model file carries it to simulate.
    prefill = pl.DataFrame({"ttft_s": [0.010, 0.012, 0.020], "engine_prefill_s": [0.005, 0.006, 0.016]})
    assert frontend_delay_from_profile(prefill) == pytest.approx(0.005)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(FittedModel(latency, method="profile", frontend_delay_s=0.005).to_dict()))
    assert load_latency_model(path).frontend_delay_s == 0.005
    assert engine_setup_from_model_file(path, num_gpu_blocks=300).frontend_delay_s == 0.005
