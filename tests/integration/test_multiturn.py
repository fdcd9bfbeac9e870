"""Multi-turn replay against the simulated server (serve-sim on 127.0.0.1): a later turn of a session is sent
only after its predecessor has ended plus its think time, sessions start on their open-loop schedule, no
request is lost, prompts built from prefix ids have exact lengths, and Ctrl-C keeps its meaning."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import polars as pl
import pytest

from burstgpt.client.openai import EndpointOptions
from burstgpt.client.runner import LoadGenerator, RunOptions
from burstgpt.metrics import account_requests, metrics_by_turn
from burstgpt.server import ServerOptions, running_server
from burstgpt.sim.simulate import build_engine_setup
from burstgpt.workload.prefixes import PrefixSharing, Sessions, SystemPrompts
from burstgpt.workload.spec import (
    ReplayedTrace,
    RequestLengths,
    Responses,
    ScheduledArrivals,
    WorkloadSpec,
    build_workload,
)

EPSILON_S = 1e-6  # float rounding of times taken on one loop clock


@pytest.fixture(scope="module")
def sim_url():
    # Llama-2-7B on an H100 (roofline): ~5-10 ms per decode step, so 20-60 output tokens take 0.1-0.5 s.
    setup = build_engine_setup(gpu="H100-80GB", model="Llama-2-7B-chat", num_gpu_blocks=2000, timeout_s=30.0)
    with running_server(ServerOptions(setup, port=0)) as url:
        yield url


def _write_conversations(path, sessions: int, seed: int) -> pl.DataFrame:
    """A BurstGPT 8-column CSV whose recorded turns come 0.02-0.08 s after the previous turn's recorded end
    with a recorded elapsed time of 0.01 s: far sooner than serve-sim answers, so an open-loop replay would
    send most later turns before their predecessor has ended. Every fifth row has no elapsed time (so the
    next turn has no think time)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(sessions):
        t = rng.uniform(0.0, 1.5)
        for _ in range(int(rng.integers(1, 5))):
            elapsed = None if len(rows) % 5 == 4 else 0.01
            rows.append((round(t, 4), f"s{s}", elapsed, int(rng.integers(20, 200)), int(rng.integers(20, 60))))
            t += 0.01 + rng.uniform(0.02, 0.08)
    frame = pl.DataFrame(rows, schema=["Timestamp", "Session ID", "Elapsed time", "Request tokens",
                                       "Response tokens"], orient="row").sort("Timestamp")
    frame.with_columns(pl.lit("ChatGPT").alias("Model"), pl.lit(0).alias("Total tokens"),
                       pl.lit("Conversation log").alias("Log Type")).write_csv(path)
    return frame


def _pairs(workload: pl.DataFrame, records: pl.DataFrame) -> pl.DataFrame:
    """Each later turn beside its predecessor: sent_s, end_s of the previous turn, this turn's think time."""
    joined = records.join(workload.select("request_id", "arrival_s", "think_time_s"), on="request_id")
    return (joined.sort("session_id", "turn")
            .with_columns(pl.col("end_s").shift(1).over("session_id").alias("previous_end_s"))
            .filter(pl.col("turn") > 0))


def test_replayed_turns_wait_for_their_predecessor_and_sessions_stay_open_loop(sim_url, tmp_path):
    path = tmp_path / "conversations.csv"
    _write_conversations(path, sessions=14, seed=3)
    workload = build_workload(WorkloadSpec(ReplayedTrace(str(path))))
    assert workload["turn"].max() >= 2 and workload["output_tokens"].null_count() == 0
    result = LoadGenerator(workload, EndpointOptions(sim_url, timeout_s=30.0),
                           RunOptions(progress=False), records_path=tmp_path / "r.jsonl").run_sync()
    records = result.records
    assert records.height == workload.height and set(records["status"]) == {"ok"}  # nothing lost
    assert records["session_id"].to_list() == workload["session_id"].to_list()
    assert records["turn"].to_list() == workload["turn"].to_list()
    later = _pairs(workload, records)
    # Due: the predecessor's end + think time; without a think time, never before the row's own arrival.
    due = later.select(pl.when(pl.col("think_time_s").is_null())
                       .then(pl.max_horizontal("previous_end_s", "arrival_s"))
                       .otherwise(pl.col("previous_end_s") + pl.col("think_time_s")).alias("due_s"))["due_s"]
    assert later["think_time_s"].null_count() > 0
    assert (later["sent_s"] >= due - EPSILON_S).all()
    assert np.allclose(later["scheduled_s"].to_numpy(), due.to_numpy())
    # The check has teeth: on the recorded (open-loop) schedule most later turns would have gone out early.
    assert (later["arrival_s"] < due).mean() > 0.5
    # First turns keep their open-loop schedule.
    first = records.filter(pl.col("turn") == 0)
    assert (first["sent_s"] - first["scheduled_s"]).max() < 0.25
    assert np.allclose(first["scheduled_s"].to_numpy(),
                       workload.filter(pl.col("turn") == 0)["arrival_s"].to_numpy())
    by_turn = metrics_by_turn(records)
    expected = workload.group_by("turn").len().sort("turn")
    assert by_turn["turn"].to_list() == expected["turn"].to_list()
    assert by_turn["requests"].to_list() == expected["len"].to_list() == by_turn["succeeded"].to_list()
    for turn, e2e_mean, failure_rate in by_turn.select("turn", "e2e_mean_s", "failure_rate").iter_rows():
        rows = records.filter(pl.col("turn") == turn)
        assert e2e_mean == pytest.approx(float(np.mean(rows["end_s"].to_numpy() - rows["sent_s"].to_numpy())))
        assert failure_rate == 0.0


def test_generated_sessions_with_shared_prompts_arrive_with_exact_lengths(sim_url, tmp_path):
    # Short messages: the conversation grows with every turn and must stay inside the model's context.
    spec = WorkloadSpec(ScheduledArrivals(rate_rps=20.0), num_requests=36, seed=4,
                        lengths=RequestLengths(max_input_tokens=300),
                        responses=Responses(mode="fixed", output_tokens=12),
                        prefixes=PrefixSharing(SystemPrompts(fraction=0.7, pool_size=2, tokens=40),
                                               Sessions(mean_turns=3, think_time_s=0.05, think_time_sigma=0.3)))
    workload = build_workload(spec)
    assert workload["prefix_block_ids"].null_count() < workload.height and workload["turn"].max() >= 1
    result = LoadGenerator(workload, EndpointOptions(sim_url, timeout_s=30.0),
                           RunOptions(progress=False), records_path=tmp_path / "r.jsonl").run_sync()
    records = result.records
    assert set(records["status"]) == {"ok"}
    # serve-sim counts prompt tokens with the builtin tokenizer: prompts made from block ids are exact.
    assert records["input_tokens"].to_list() == workload["input_tokens"].to_list()
    later = _pairs(workload, records)
    assert later.height > 10
    assert (later["sent_s"] >= later["previous_end_s"] + later["think_time_s"] - EPSILON_S).all()


def test_ctrl_c_stops_waiting_turns_and_accounts_for_every_request(sim_url, tmp_path):
    # Sessions of 3-5 turns with 1 s think times: at Ctrl-C (0.8 s in) first turns have ended and their next
    # turns are waiting; those must never be sent, and every row still gets exactly one record.
    spec = WorkloadSpec(ScheduledArrivals(rate_rps=30.0), num_requests=40, seed=2,
                        lengths=RequestLengths(max_input_tokens=300),
                        responses=Responses(mode="fixed", output_tokens=8),
                        prefixes=PrefixSharing(sessions=Sessions(mean_turns=4, think_time_s=1.0,
                                                                 think_time_sigma=0.0)))
    workload = build_workload(spec)
    generator = LoadGenerator(workload, EndpointOptions(sim_url, timeout_s=30.0),
                              RunOptions(progress=False, grace_s=2.0), records_path=tmp_path / "r.jsonl")
    timer = threading.Timer(0.8, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        result = generator.run_sync()
    finally:
        timer.cancel()
    records = result.records
    assert result.interrupted and result.stop_reason == "SIGINT"
    assert records["request_id"].to_list() == workload["request_id"].to_list()
    accounting = account_requests(records)
    assert accounting.balanced and accounting.total == workload.height
    not_sent = records.filter(pl.col("status") == "not_sent")
    assert not_sent.filter(pl.col("turn") > 0).height > 0 and not_sent["sent_s"].null_count() == not_sent.height
    # Nothing was sent after the stop (the first later turn is due at 1 s at the earliest).
    assert records["sent_s"].drop_nulls().max() < 1.0
    later = _pairs(workload, records).filter(pl.col("sent_s").is_not_null())
    assert (later["sent_s"] >= later["previous_end_s"] + later["think_time_s"] - EPSILON_S).all()


def test_prompts_are_exact_under_the_runs_tokenizer_end_to_end(tmp_path, tiny_bpe_path):
    # serve-sim counting with a small byte-level BPE (trained in conftest) sees exactly the workload's lengths
    # when the client builds its prompts (shared blocks included) under the same tokenizer.
    from burstgpt.workload.tokenizer import load_tokenizer

    path = tiny_bpe_path
    spec = WorkloadSpec(ScheduledArrivals(rate_rps=40.0), num_requests=24, seed=6,
                        lengths=RequestLengths(max_input_tokens=200),
                        responses=Responses(mode="fixed", output_tokens=4),
                        prefixes=PrefixSharing(SystemPrompts(fraction=0.8, pool_size=2, tokens=64),
                                               Sessions(mean_turns=2, think_time_s=0.01), block_size=16))
    workload = build_workload(spec)
    setup = build_engine_setup(gpu="H100-80GB", model="Llama-2-7B-chat", num_gpu_blocks=2000, timeout_s=30.0)
    with running_server(ServerOptions(setup, port=0, tokenizer=load_tokenizer(str(path)))) as url:
        result = LoadGenerator(workload, EndpointOptions(url, timeout_s=30.0),
                               RunOptions(progress=False, tokenizer=str(path)),
                               records_path=tmp_path / "r.jsonl").run_sync()
    assert set(result.records["status"]) == {"ok"}
    assert result.records["input_tokens"].to_list() == workload["input_tokens"].to_list()
