"""Load generation by several sender processes (`bench --workers`, Ray actors) against burstgpt serve-sim on
127.0.0.1: the same schedule as one sender, one clock, the client-limited verdict, the connection cap, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import polars as pl
import pytest

from burstgpt.client.openai import EndpointOptions
from burstgpt.client.scrape import parse_server_metrics
from burstgpt.client.runner import LoadGenerator, RunOptions
from burstgpt.client.workers import MultiSenderRun, deal_workload
from burstgpt.records import read_run_directory

FAST = ("--time-scale", "50")  # serve-sim's engine runs 50x faster than real time: requests end in ms


def _workload(n: int, rate: float, seed: int, *, sessions: int = 0) -> pl.DataFrame:
    """`n` Poisson arrivals at `rate` req/s, short prompts and outputs; the first `sessions` * 3 rows form
    `sessions` three-turn sessions (turns interleaved with the other requests)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    session_ids = [None] * n
    turns = [None] * n
    for row in range(sessions * 3):
        session_ids[row * 2] = f"s{row % sessions}"
        turns[row * 2] = row // sessions
    return pl.DataFrame({
        "request_id": np.arange(n) * 7 + 3,  # ids are not row numbers
        "arrival_s": arrivals - arrivals[0],
        "input_tokens": rng.integers(4, 20, n),
        "output_tokens": rng.integers(2, 6, n),
        "session_id": pl.Series(session_ids, dtype=pl.Utf8),
        "turn": pl.Series(turns, dtype=pl.Int64),
    })


def _bench(args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "burstgpt.cli", "bench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "MPLBACKEND": "Agg"}, **popen)


def test_n_workers_send_exactly_the_schedule_of_one(serve_sim_process, tmp_path):
    workload = _workload(240, rate=300.0, seed=1, sessions=5)
    with serve_sim_process(*FAST) as url:
        endpoint = EndpointOptions(url, timeout_s=10.0)
        options = RunOptions(progress=False, metrics_url=f"{url}/metrics", scrape_interval_s=0.2)
        one = LoadGenerator(workload, endpoint, options, records_path=tmp_path / "one.jsonl").run_sync()
        three = MultiSenderRun(workload, endpoint, options, workers=3, records_path=tmp_path / "three.jsonl",
                               ).run_sync()
    for result in (one, three):
        records = result.records
        assert (records["status"] == "ok").all(), records.filter(pl.col("status") != "ok").head(3)
        assert records["request_id"].to_list() == sorted(workload["request_id"].to_list())  # none missing/twice
    first_turns = pl.col("turn").is_null() | (pl.col("turn") == 0)
    # Requests on the open-loop schedule are due at the same times; later turns when their predecessor ended.
    assert one.records.filter(first_turns)["scheduled_s"].to_list() == \
        three.records.filter(first_turns)["scheduled_s"].to_list()
    records = three.records
    assert three.workers == 3 and one.records["worker"].unique().to_list() == [0]
    # Each record says which sender sent it: the dealt one; every sender sent its share, a session in one.
    dealt = pl.DataFrame({"request_id": workload["request_id"], "dealt": deal_workload(workload, 3)})
    joined = records.join(dealt, on="request_id")
    assert (joined["worker"] == joined["dealt"]).all()
    assert sorted(joined["worker"].unique().to_list()) == [0, 1, 2]
    per_session = joined.filter(pl.col("session_id").is_not_null()).group_by("session_id").agg(
        pl.col("worker").n_unique().alias("senders"), pl.len().alias("turns"))
    assert per_session["senders"].to_list() == [1] * 5 and per_session["turns"].to_list() == [3] * 5
    # One clock: sends keep the schedule on it (a sender on another clock would be off by its start-up).
    lag = records["sent_s"] - records["scheduled_s"]
    assert lag.min() >= 0 and lag.quantile(0.5) < 0.05
    # Times finer than a millisecond (uvloop's loop.time() is in whole ms: the records use time.monotonic()).
    for column in ("sent_s", "first_token_s", "end_s"):
        sub_ms = ((one.records[column] * 1e3) - (one.records[column] * 1e3).round()).abs() > 1e-6
        assert sub_ms.mean() > 0.5, column
    # Later turns were sent after their predecessor ended, on that same clock.
    chained = records.filter(pl.col("session_id").is_not_null()).sort("session_id", "turn")
    previous_end = chained.select(pl.col("end_s").shift(1).over("session_id"))["end_s"]
    assert ((chained["sent_s"] - previous_end).drop_nulls() >= 0).all()
    # The parent scraped the server while the senders ran.
    assert three.server_metrics is not None and three.server_metrics.height >= 2


def test_overloaded_client_is_flagged_client_limited(serve_sim_process, tmp_path):
    # 1500 requests due within 15 ms: no single sender sends them on time, and the run must say so.
    burst = _workload(1500, rate=100_000.0, seed=2)
    wl_path = tmp_path / "burst.parquet"
    burst.write_parquet(wl_path)
    with serve_sim_process(*FAST) as url:
        proc = _bench(["--url", url, "--workload", str(wl_path), "--workers", "1", "--out", str(tmp_path / "run"),
                       "--quiet", "--no-server-metrics", "--strict-timing"])
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err.decode()  # --strict-timing: client-limited is an error
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    timing = summary["run"]["timing"]
    assert timing["client_limited"] and timing["verdict"] == "client-limited"
    records = read_run_directory(tmp_path / "run").records
    lag = (records["sent_s"] - records["scheduled_s"]).to_numpy()
    assert timing["dispatch"]["lag_max_s"] == pytest.approx(lag.max())
    assert timing["per_worker"]["0"]["requests"] == 1500
    assert any(w.startswith("client-limited") for w in summary["run"]["warnings"])
    assert b"client-limited" in err and b"Traceback" not in err
    # ... and not the server's failure: every request still succeeded.
    assert summary["requests"]["succeeded"] == 1500


def test_connection_cap_queues_requests_as_lag_not_failures(serve_sim_process, tmp_path):
    # 24 requests in 0.12 s, each ~0.1 s long, through at most 2 connections: they queue, none fails.
    workload = _workload(24, rate=200.0, seed=3).with_columns(pl.lit(40).alias("output_tokens"))
    with serve_sim_process("--time-scale", "5") as url:
        result = LoadGenerator(workload, EndpointOptions(url, timeout_s=30.0),
                               RunOptions(progress=False, max_connections=2),
                               records_path=tmp_path / "r.jsonl").run_sync()
    records = result.records
    assert (records["status"] == "ok").all()
    assert result.connection_waits > 0
    assert any("--max-connections" in w for w in result.warnings)
    # Never more than 2 in flight: each send waits for an end (sorted sends vs sorted ends, 2 apart).
    sent = np.sort(records["sent_s"].to_numpy())
    ends = np.sort(records["end_s"].to_numpy())
    assert (sent[2:] >= ends[:-2] - 1e-3).all()
    from burstgpt.client.timing import records_verdict

    assert records_verdict(records).client_limited  # the waits are the client's: lag, then the verdict


def test_ray_local_run_gives_the_same_records_as_workers(serve_sim_process, tmp_path):
    pytest.importorskip("ray")
    workload = _workload(120, rate=100.0, seed=4, sessions=3)
    columns = ["request_id", "scheduled_s", "worker", "status", "input_tokens", "output_tokens"]
    first_turns = pl.col("turn").is_null() | (pl.col("turn") == 0)
    with serve_sim_process(*FAST) as url:
        endpoint = EndpointOptions(url, timeout_s=10.0)
        options = RunOptions(progress=False)
        local = MultiSenderRun(workload, endpoint, options, workers=2, records_path=tmp_path / "mp.jsonl").run_sync()
        ray_run = MultiSenderRun(workload, endpoint, options, workers=2, records_path=tmp_path / "ray.jsonl",
                                 ray_address="local")
        on_ray = ray_run.run_sync()
    assert on_ray.records.filter(first_turns).select(columns).equals(local.records.filter(first_turns).select(columns))
    assert on_ray.records.select("request_id", "worker", "status").equals(local.records.select(
        "request_id", "worker", "status"))
    # The actors' clocks were checked before the start: one machine, so (almost) no offset.
    assert [f.node is not None for f in ray_run.facts] == [True, True]
    assert all(abs(f.clock_offset_s) < 0.05 for f in ray_run.facts)
    lag = on_ray.records["sent_s"] - on_ray.records["scheduled_s"]
    assert lag.min() >= 0 and lag.quantile(0.5) < 0.05


def _running_at(url: str) -> float:
    """The server's running requests, from its /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        return parse_server_metrics(response.read().decode())["num_requests_running"] or 0.0


def test_sigint_with_workers_leaves_one_valid_summary(serve_sim_process, tmp_path):
    # 80 requests over 2 s, each ~3 s long: at SIGINT (~1 s in) some are in flight, many not yet sent.
    workload = _workload(80, rate=40.0, seed=5).with_columns(pl.lit(300).alias("output_tokens"))
    wl_path = tmp_path / "wl.parquet"
    workload.write_parquet(wl_path)
    run_dir = tmp_path / "run"
    with serve_sim_process("--time-scale", "1") as url:
        proc = _bench(["--url", url, "--workload", str(wl_path), "--workers", "2", "--out", str(run_dir),
                       "--grace", "0.3", "--quiet", "--no-server-metrics"])
        try:
            deadline = time.monotonic() + 60
            while _running_at(url) < 10:  # the senders are sending: the server has requests in its batch
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err
    summary = json.loads((run_dir / "summary.json").read_text())
    acc = summary["requests"]
    assert acc["balanced"] and acc["total"] == 80
    assert acc["sent"] == acc["succeeded"] + acc["failed"] + acc["cancelled"]
    assert acc["cancelled"] > 0 and acc["not_sent"] > 0
    assert summary["run"]["interrupted"] and summary["run"]["stop_reason"] == "SIGINT"
    run = read_run_directory(run_dir)
    assert run.complete and run.records.height == 80 and run.records["request_id"].is_unique().all()
    assert sorted(run.records["worker"].unique().to_list()) == [0, 1]
    # The grace period (0.3 s) ended the in-flight requests long before their ~3 s answers.
    cancelled = run.records.filter(pl.col("status") == "cancelled")
    assert (cancelled["end_s"] - cancelled["sent_s"]).max() < 2.5


_FD_LIMITED_CLIENT = """
import json, os, resource, sys
import polars as pl
from burstgpt.client.openai import EndpointOptions
from burstgpt.client.runner import LoadGenerator, RunOptions

workload = pl.read_parquet(sys.argv[2])
generator = LoadGenerator(workload, EndpointOptions(sys.argv[1], timeout_s=30.0),
                          RunOptions(progress=False, max_connections=None), records_path=sys.argv[3])
# Everything is imported and open: now allow only 16 more descriptors (soft and hard, so they stay).
limit = len(os.listdir("/proc/self/fd")) + 16
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
records = generator.run_sync().records
print(json.dumps({"status": records["status"].value_counts().rows(),
                  "classes": records["error_class"].drop_nulls().value_counts().rows()}))
"""


def test_running_out_of_descriptors_is_the_clients_limit_not_the_servers(serve_sim_process, tmp_path):
    # 40 requests at once, each ~1 s long, from a client allowed ~16 sockets: the rest cannot even connect.
    workload = _workload(40, rate=10_000.0, seed=6).with_columns(pl.lit(100).alias("output_tokens"))
    workload.write_parquet(tmp_path / "wl.parquet")
    with serve_sim_process("--time-scale", "1") as url:
        done = subprocess.run([sys.executable, "-c", _FD_LIMITED_CLIENT, url, str(tmp_path / "wl.parquet"),
                               str(tmp_path / "r.jsonl")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    classes = dict(result["classes"])
    status = dict(result["status"])
    assert classes.get("client_limit", 0) > 0 and status.get("ok", 0) > 0
    assert "connection_refused" not in classes and "connection_reset" not in classes
    assert sum(status.values()) == 40
