"""Bad workloads are refused before the simulator runs (they used to make it spin forever), and no validated input
can keep the engine looping."""

from __future__ import annotations

import contextlib
import signal

import numpy as np
import polars as pl
import pytest

from burstgpt.cli import main
from burstgpt.errors import BurstGPTError, InputError
from burstgpt.sim.engine import DONE, EngineConfig, ServingEngine
from burstgpt.sim.latency import LinearLatency
from burstgpt.sim.simulate import EngineSetup, simulate_workload
from burstgpt.workload.schema import conform_workload

LINEAR = LinearLatency(base_s=0.0625, per_prefill_token_s=0.0009765625, per_decode_token_s=0.001953125)


@contextlib.contextmanager
def within(seconds: float):
    """Fail (instead of hanging the suite) when the block runs longer than `seconds`."""

    def expire(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _frame(arrival) -> pl.DataFrame:
    count = len(arrival)
    return conform_workload(pl.DataFrame({"arrival_s": np.asarray(arrival, float), "input_tokens": [20] * count,
                                          "output_tokens": [5] * count}))


SETUP = EngineSetup(EngineConfig(num_gpu_blocks=64, max_model_len=512, timeout_s=None), LINEAR, "m", "g")


@pytest.mark.parametrize(("arrival", "message"), [
    ([0.0, float("nan"), 2.0], "not a finite number"),
    ([0.0, float("inf")], "not a finite number"),
    ([0.0, 3.0, 1.0], "must not decrease"),
    ([0.0, 1e300], "wrong unit"),
    ([-1.0, 0.0], "negative"),
])
def test_simulate_workload_refuses_bad_arrivals_in_one_line(arrival, message):
    with within(10), pytest.raises(InputError, match=message) as error:
        simulate_workload(_frame(arrival), SETUP)
    assert "\n" not in str(error.value) and "arrival_s" in str(error.value)


@pytest.mark.parametrize("arrival", [[float("nan")], [1e300], [-5.0], [2.0, 1.0]])
def test_the_engine_refuses_arrivals_it_could_never_reach(arrival):
    engine = ServingEngine(SETUP.config, LINEAR)
    with pytest.raises(BurstGPTError):
        engine.submit(arrival, [10] * len(arrival), [3] * len(arrival))
    assert engine.num_submitted == 0


def test_simulate_cli_refuses_a_bad_workload_file_with_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.parquet"
    _frame([0.0, float("nan")]).write_parquet(path)  # written around the workload writer, which validates
    with within(30):
        status = main(["simulate", "-o", str(tmp_path / "run"), "--workload", str(path), "--num-gpu-blocks", "300"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "bad.parquet" in err[-1] and "arrival_s" in err[-1]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_request_longer_than_the_cache_stops_at_the_context_instead_of_thrashing():
    """4 blocks of 16 tokens hold one 64-token context; a request asking for 1000 output tokens after a 10-token
    prompt used to be preempted by itself over and over (no timeout: forever). Like vLLM, it stops at
    max_model_len."""
    config = EngineConfig(num_gpu_blocks=4, block_size=16, max_model_len=64, timeout_s=None)
    for jump in (True, False):
        engine = ServingEngine(config, LINEAR)
        engine.submit([0.0, 0.5], [10, 30], [1000, 1000])
        with within(10):
            engine.run(jump=jump)
        columns = engine.columns()
        assert columns["state"].tolist() == [DONE, DONE]
        assert columns["generated"].tolist() == [54, 34]
