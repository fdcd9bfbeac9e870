"""The latency-model seam: registry and JSON forms, the linear model's terms by hand and against the per-step
reference, presets by prefix, and the engine settings `simulate` prints."""

from __future__ import annotations

import json

import pytest

from burstgpt.cli import main
from burstgpt.errors import BurstGPTError
from burstgpt.sim.engine import EngineConfig
from burstgpt.sim.hardware import GPUSpec, gpu_preset, model_preset
from burstgpt.sim.latency import (
    LATENCY_MODELS,
    LinearLatency,
    RooflineLatency,
    StepWork,
    latency_from_dict,
    parse_linear_coefficients,
)
from burstgpt.sim.simulate import EngineSetup, EngineSpec, build_engine_setup, simulate_workload
from test_sim_engine import FULL_LINEAR, _workload


def test_every_kind_round_trips_through_its_json_form():
    custom_gpu = GPUSpec("my-gpu", 24 * 2**30, 100e12, 1e12)
    models = [
        RooflineLatency(gpu_preset("H100-80GB"), model_preset("Llama-2-7B-chat"), 0.5, 0.7, 0.002),
        RooflineLatency(custom_gpu, model_preset("Llama-2-7B-chat")),
        parse_linear_coefficients("0.01,0.0001,0.002,0.000001"),
        FULL_LINEAR,
    ]
    assert {type(model).kind for model in models} == set(LATENCY_MODELS) == {"roofline", "linear"}
    for model in models:
        data = json.loads(json.dumps(model.to_dict()))
        assert data["kind"] == model.kind
        again = latency_from_dict(data)
        assert again == model and again.describe() == model.describe()
    assert RooflineLatency(gpu_preset("A800-80GB"), model_preset("Llama-2-13B-chat")).to_dict()["gpu"] == "A800-80GB"


@pytest.mark.parametrize("data", [
    {"base_s": 0.01},
    {"kind": "cubic"},
    {"kind": "linear", "base_s": 0.01, "per_prefill_token_s": 0, "per_decode_token_s": 0, "per_foo_s": 1},
    {"kind": "linear", "base_s": "fast", "per_prefill_token_s": 0, "per_decode_token_s": 0},
    {"kind": "linear", "base_s": 0.0, "per_prefill_token_s": 0, "per_decode_token_s": 0},
    {"kind": "roofline", "gpu": "B200", "model": "Llama-2-7B-chat"},
    {"kind": "roofline", "gpu": "H100", "model": "Llama-2-7B-chat", "compute_efficiency": 0},
])
def test_bad_json_forms_are_refused_in_one_line(data):
    with pytest.raises(BurstGPTError) as error:
        latency_from_dict(data)
    assert "\n" not in str(error.value)


def test_a_step_never_takes_no_time():
    """A zero step time would let the engine step forever without the clock moving."""
    for text in ("0,0,0", "0,0.001,0.001"):
        with pytest.raises(BurstGPTError):
            parse_linear_coefficients(text)
    with pytest.raises(BurstGPTError):
        RooflineLatency(gpu_preset("A800"), model_preset("Llama-2-7B"), compute_efficiency=0.0)


def test_linear_terms_by_hand_and_a_mixed_step_costs_the_sum_of_its_parts():
    config = EngineConfig(num_gpu_blocks=64, max_model_len=512, timeout_s=None)
    setup = EngineSetup(config, FULL_LINEAR, "m", "g")
    result = simulate_workload(_workload([0.0, 0.0], [100, 20], [3, 2]), setup)
    m = FULL_LINEAR
    # Step 1: both admitted, prefilled together: 120 tokens, pairs 100*101/2 + 20*21/2, KV read 120.
    first = (m.base_s + m.per_prefill_token_s * 120 + m.per_kv_token_s * 120
             + m.per_prefill_pair_s * (100 * 101 // 2 + 20 * 21 // 2) + m.per_admitted_request_s * 2)
    # Step 2: two decodes, contexts 101 and 21.
    second = m.base_s + m.per_decode_token_s * 2 + m.per_kv_token_s * (101 + 21)
    records = result.records
    assert records["first_token_s"].to_list() == [first, first]
    assert records["end_s"][1] == first + second
    assert result.steps["duration_s"][0] == first
    # A mixed step is the sum of its prefill and decode parts' times (the base counted once).
    prefill_part, decode_part = StepWork(50, 0, 50 * 51 // 2, 0, 50, 1), StepWork(0, 4, 0, 400, 0, 0)
    mixed = StepWork(*(a + b for a, b in zip(prefill_part, decode_part, strict=True)))
    assert m.cost(mixed) == pytest.approx(m.cost(prefill_part) + m.cost(decode_part) - m.base_s, rel=1e-15)


def test_presets_by_unambiguous_prefix_in_any_case():
    assert gpu_preset("a800").name == "A800-80GB"
    assert gpu_preset(" H100 ").name == "H100-80GB"
    assert model_preset("llama-2-7b").name == "Llama-2-7B-chat"
    assert model_preset("LLAMA-2-13B-CHAT").name == "Llama-2-13B-chat"
    with pytest.raises(BurstGPTError, match=r"ambiguous \(matches Llama-2-7B-chat, Llama-2-13B-chat\)"):
        model_preset("llama")
    with pytest.raises(BurstGPTError,
                       match="unknown; choose one of: A800-80GB, A100-80GB, RTX-A6000-48GB, H100-80GB, CPU"):
        gpu_preset("B200")


def test_engine_spec_builds_the_setup_and_checks_its_fields():
    setup = build_engine_setup(EngineSpec(gpu="h100", model="llama-2-7b", num_gpu_blocks=600, timeout_s=None))
    assert (setup.gpu_name, setup.model_name, setup.config.num_gpu_blocks) == ("H100-80GB", "Llama-2-7B-chat", 600)
    assert setup.config.timeout_s is None and isinstance(setup.latency, RooflineLatency)
    linear = build_engine_setup(latency={"kind": "linear", "base_s": 0.01, "per_prefill_token_s": 0.0,
                                         "per_decode_token_s": 0.001})
    assert linear.latency == LinearLatency(0.01, 0.0, 0.001)
    for bad in ({"max_num_seqs": 0}, {"block_size": 2.5}, {"timeout_s": -1.0}, {"gpu_memory_utilization": 1.5}):
        with pytest.raises(BurstGPTError):
            build_engine_setup(**bad)


def test_simulate_prints_the_presets_chosen_and_its_engine_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", "-o", str(out), "--rate", "5", "--num-requests", "20", "--gpu", "a800", "--model",
                 "llama-2-7b", "--num-gpu-blocks", "500", "--max-num-seqs", "64"]) == 0
    err = capsys.readouterr().err
    assert "--gpu a800: using preset A800-80GB" in err and "--model llama-2-7b: using preset Llama-2-7B-chat" in err
    # --max-num-seqs as given; the token budget vLLM's OpenAI-server default for an 80 GB A800.
    assert ("500 KV blocks x 16 tokens; max_num_seqs 64; max_num_batched_tokens 8192; max_model_len 4096" in err
            and "latency roofline A800-80GB x Llama-2-7B-chat" in err)
    config = json.loads((out / "config.json").read_text())
    assert (config["gpu"], config["model"], config["num_gpu_blocks"]) == ("A800-80GB", "Llama-2-7B-chat", 500)
    assert latency_from_dict(config["latency"]) == build_engine_setup(gpu="a800", model="llama-2-7b").latency
    assert main(["simulate", "-o", str(tmp_path / "x"), "--num-requests", "5", "--model", "llama"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "ambiguous" in lines[0] and "Llama-2-13B-chat" in lines[0]
    assert not (tmp_path / "x").exists()


def test_linear_coefficients_flag_gives_the_linear_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", "-o", str(out), "--rate", "5", "--num-requests", "20", "--output-lengths", "fixed:4",
                 "--latency-coefficients", "0.02,0.0001,0.001"]) == 0
    assert "latency linear (base_s 0.02, per_prefill_token_s 0.0001, per_decode_token_s 0.001)" in \
        capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["latency"] == {"kind": "linear", "base_s": 0.02, "per_prefill_token_s": 0.0001,
                                 "per_decode_token_s": 0.001, "per_kv_token_s": 0.0, "per_prefill_pair_s": 0.0,
                                 "per_admitted_request_s": 0.0}
    assert json.loads((out / "summary.json").read_text())["requests"]["total"] == 20
