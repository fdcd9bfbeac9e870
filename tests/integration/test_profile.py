"""`burstgpt profile` against a real `burstgpt serve-sim` (a subprocess on 127.0.0.1) running a KNOWN linear
step-time model given as `--latency-model FILE`: the profile must recover every coefficient within 5 %, read the
engine settings the server exposes, and never write the API key. The server runs at real time (time scale 1):
a faster clock would shrink the steps next to the fixed HTTP and event-loop delays the profile must see
through, and the test would then measure our scaling rather than the profile."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from burstgpt.cli import main
from burstgpt.sim.latency import LINEAR_TERMS, LinearLatency, load_latency_model

#: Magnitudes like a small engine on CPU (the vLLM CPU build measured ~9.5 ms per admitted request; attention's
#: quadratic cost adds 40 % to a 2,000-token prefill).
KNOWN = LinearLatency(base_s=0.005, per_prefill_token_s=50e-6, per_decode_token_s=0.5e-3, per_kv_token_s=1e-6,
                      per_prefill_pair_s=2e-8, per_admitted_request_s=9.5e-3)
SECRET = "sk-profile-test-secret"


def known_server_args(model_file: Path) -> tuple[str, ...]:
    """serve-sim flags of the known engine: the linear model of `model_file` and fixed engine settings."""
    return ("--latency-model", str(model_file), "--num-gpu-blocks", "3000", "--block-size", "32",
            "--max-num-seqs", "256", "--max-num-batched-tokens", "8192", "--max-model-len", "4096",
            "--served-model-name", "known-linear")


def assert_recovers(fitted: LinearLatency, tolerance: float) -> None:
    """Every coefficient of `fitted` within `tolerance` (relative) of KNOWN's."""
    errors = {name: getattr(fitted, name) / getattr(KNOWN, name) - 1 for name in LINEAR_TERMS}
    assert all(abs(error) < tolerance for error in errors.values()), \
        ", ".join(f"{name} {error:+.1%}" for name, error in errors.items())


@pytest.fixture(scope="module")
def known_server(tmp_path_factory, serve_sim_process):
    model_file = tmp_path_factory.mktemp("known") / "known.json"
    model_file.write_text(json.dumps(KNOWN.to_dict()))
    with serve_sim_process(*known_server_args(model_file), "--api-key", SECRET) as url:
        yield url


def test_profile_recovers_every_coefficient_of_a_known_server(known_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROFILE_TEST_KEY", SECRET)
    out = tmp_path / "model.json"
    assert main(["profile", "--url", known_server, "-o", str(out), "--quick", "--api-key-env", "PROFILE_TEST_KEY"]) == 0
    fitted = load_latency_model(out)
    assert_recovers(fitted.latency, 0.05)
    # What it was fitted on: the settings serve-sim exposes as vLLM's cache_config_info, and /v1/models.
    assert fitted.method == "profile" and fitted.model_name == "known-linear"
    assert fitted.engine_settings() == {"num_gpu_blocks": 3000, "block_size": 32, "max_num_seqs": 256,
                                        "max_num_batched_tokens": 8192, "max_model_len": 4096}
    assert fitted.fit.r2 > 0.99 and not fitted.fit.partial and fitted.fit.points > 10
    assert SECRET not in out.read_text()
    shown = capsys.readouterr().out
    assert "R^2" in shown and "per_admitted_request_s" in shown


def test_ctrl_c_stops_the_profile_and_writes_a_partial_model(known_server, tmp_path):
    """SIGINT once some decode points are in: exit 130, and a model fitted from them, marked partial."""
    out = tmp_path / "partial.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PROFILE_TEST_KEY": SECRET}
    process = subprocess.Popen(
        [sys.executable, "-m", "burstgpt.cli", "profile", "--url", known_server, "-o", str(out), "--quick",
         "--api-key-env", "PROFILE_TEST_KEY"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        for line in process.stderr:  # plain progress lines: stderr is not a terminal
            if line.startswith("profile: decode") and "x 32 tokens" in line and not line.startswith(
                    "profile: decode 1 x"):
                break
        else:
            raise AssertionError("no decode progress line")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    fitted = load_latency_model(out)
    assert fitted.fit.partial and any("PARTIAL" in note for note in fitted.notes)
    assert len(fitted.measurements["decode"]) < 6  # the quick plan has 6 decode points; it stopped early
    assert "interrupted" in stderr and "(PARTIAL)" in stdout


def test_profile_without_a_server_or_with_a_wrong_key_is_one_line(known_server, tmp_path, monkeypatch, capsys):
    with socket.socket() as sock:  # bound then released: nobody listens there
        sock.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("PROFILE_TEST_KEY", "not-the-key")
    for url in (nowhere, known_server):
        out = tmp_path / "model.json"
        assert main(["profile", "--url", url, "-o", str(out), "--api-key-env", "PROFILE_TEST_KEY"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and url in error and "not-the-key" not in error
        assert not out.exists()
