"""A run directory looks complete only when this run completed it: non-empty directories are refused without
--overwrite, a killed or failed run never passes for a finished one, a signal still leaves a valid summary.
`bench` runs as a subprocess against a real `burstgpt serve-sim` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from burstgpt.cli import main
from burstgpt.errors import BurstGPTError
from burstgpt.records import RunSummary, prepare_run_directory, read_run_directory
from burstgpt.report import write_run_directory

MODEL = "sim-llama"


def _records(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    scheduled = np.sort(rng.uniform(0, 10, n))
    return pl.DataFrame({"request_id": np.arange(n), "scheduled_s": scheduled, "sent_s": scheduled,
                         "first_token_s": scheduled + 0.1, "end_s": scheduled + 0.5, "input_tokens": [10] * n,
                         "output_tokens": [5] * n, "status": ["ok"] * n})


def _free_port() -> int:
    with socket.socket() as sock:  # bound then released: nobody listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def serve_sim(serve_sim_process):
    """`burstgpt serve-sim` on a free loopback port; its URL. Stopped with SIGTERM."""
    with serve_sim_process("--gpu", "H100-80GB", "--model", "Llama-2-7B-chat", "--served-model-name", MODEL) as url:
        yield url


def _slow_workload(path: Path, n: int = 60, gap_s: float = 0.05, output_tokens: int = 400) -> Path:
    """n requests gap_s apart, each generating output_tokens tokens (seconds each on the simulated engine)."""
    pl.DataFrame({"request_id": range(n), "arrival_s": [i * gap_s for i in range(n)], "input_tokens": [50] * n,
                  "output_tokens": [output_tokens] * n}).write_parquet(path)
    return path


def _start_bench(url: str, workload: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "burstgpt.cli", "bench", "--url", url, "--workload", str(workload), "-o",
           str(run_dir), "--grace", "0.3", "--quiet", "--no-server-metrics", *extra]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_sending(proc: subprocess.Popen, run_dir: Path) -> None:
    deadline = time.monotonic() + 30
    while not (run_dir / "requests.jsonl").exists():  # the run has started sending
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_bench_refuses_a_non_empty_run_directory(tmp_path, capsys):
    old = tmp_path / "run"
    write_run_directory(old, _records(5), config={"url": "http://old"})
    before = (old / "summary.json").read_bytes()
    status = main(["bench", "--url", f"http://127.0.0.1:{_free_port()}", "--model", "m", "--arrival", "constant",
                   "--rate", "10", "--num-requests", "3", "-o", str(old), "--quiet"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "--overwrite" in err[0]
    assert (old / "summary.json").read_bytes() == before  # the old run is untouched
    assert read_run_directory(old).complete


def test_new_config_over_an_old_run_is_not_complete(tmp_path):
    # What a killed run leaves when it started over a finished one: its own config and records beside the old
    # run's requests.parquet and summary.json. The old summary must not pass for this run's.
    run_dir = tmp_path / "run"
    write_run_directory(run_dir, _records(5), config={"url": "http://old"})
    (run_dir / "config.json").write_text(json.dumps({"url": "http://new", "run_id": "a-newer-run"}))
    _records(2, seed=1).write_ndjson(run_dir / "requests.jsonl")
    run = read_run_directory(run_dir)
    assert not run.complete and run.summary is None


def test_killed_overwrite_run_is_incomplete_then_recovered(serve_sim, tmp_path):
    run_dir = tmp_path / "run"
    write_run_directory(run_dir, _records(300), config={"url": "http://old"}, extra_tables={"steps": _records(2)})
    (run_dir / "notes.txt").write_text("mine")
    proc = _start_bench(serve_sim, _slow_workload(tmp_path / "wl.parquet"), run_dir, "--overwrite")
    try:
        _wait_for_sending(proc, run_dir)
        time.sleep(0.5)
        proc.kill()  # kill -9: no chance to write anything more
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    run = read_run_directory(run_dir)
    assert not run.complete and run.summary is None
    assert run.records.height < 60 and run.config["producer"] == "bench"  # this run's records, not the old 300
    assert not (run_dir / "steps.parquet").exists()  # the old run's files are gone, the user's file stays
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert main(["report", str(run_dir)]) == 0
    recovered = read_run_directory(run_dir)
    assert recovered.complete and recovered.summary.run.extra["recovered_from_jsonl"] is True


def test_failed_start_leaves_no_run_directory(tmp_path, capsys):
    run_dir = tmp_path / "never"
    status = main(["bench", "--url", f"http://127.0.0.1:{_free_port()}", "--model", "m", "--arrival", "constant",
                   "--rate", "10", "--num-requests", "3", "-o", str(run_dir), "--quiet"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no server at" in err[0]
    assert not run_dir.exists()
    empty = tmp_path / "empty"  # a directory the user made stays, and stays empty
    empty.mkdir()
    assert main(["bench", "--url", f"http://127.0.0.1:{_free_port()}", "--model", "m", "--arrival", "constant",
                 "--rate", "10", "--num-requests", "3", "-o", str(empty), "--quiet"]) == 2
    assert empty.is_dir() and not any(empty.iterdir())


def test_sigterm_against_serve_sim_leaves_a_valid_summary(serve_sim, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start_bench(serve_sim, _slow_workload(tmp_path / "wl.parquet"), run_dir)
    try:
        _wait_for_sending(proc, run_dir)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err
    summary = RunSummary.from_json(json.loads((run_dir / "summary.json").read_text()))
    acc = summary.requests
    assert acc.balanced and acc.total == 60 and acc.cancelled > 0 and acc.not_sent > 0
    assert acc.sent == acc.succeeded + acc.failed + acc.cancelled and acc.total == acc.sent + acc.not_sent
    assert summary.run.interrupted and summary.run.stop_reason == "SIGTERM"
    assert summary.producer == "serve-sim+bench"  # bench recognised burstgpt's own server
    run = read_run_directory(run_dir)
    assert run.complete and run.producer == "serve-sim+bench" and run.config["run_id"] == summary.run_id
    statuses = run.records["status"].value_counts()
    counts = dict(zip(statuses["status"].to_list(), statuses["count"].to_list(), strict=True))
    assert counts.get("not_sent", 0) == acc.not_sent and counts.get("cancelled", 0) == acc.cancelled


def test_prepare_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    write_run_directory(run_dir, _records(5), config={}, extra_tables={"steps": _records(1)})
    (run_dir / "keep.txt").write_text("x")
    with pytest.raises(BurstGPTError, match="not empty"):
        prepare_run_directory(run_dir)
    prepare_run_directory(run_dir, overwrite=True)
    assert sorted(p.name for p in run_dir.iterdir()) == ["keep.txt"]
    with pytest.raises(BurstGPTError, match="not a directory"):
        prepare_run_directory(run_dir / "keep.txt")
    assert prepare_run_directory(tmp_path / "fresh").is_dir()


def test_rewriting_a_run_directory_drops_the_old_runs_files(tmp_path):
    # The shared write path (bench, simulate, report): a new run written over an old one in place gets a new
    # run_id and loses the old server metrics rather than inheriting them.
    run_dir = tmp_path / "run"
    first = write_run_directory(run_dir, _records(5), config={}, producer="simulate",
                                server_metrics=pl.DataFrame({"time_s": [0.0, 1.0], "kv_cache_usage_perc": [0.1, 0.2]}))
    second = write_run_directory(run_dir, _records(7, seed=2), config={}, producer="simulate")
    assert second.run_id != first.run_id and second.server is None
    assert not (run_dir / "server_metrics.csv").exists()
    run = read_run_directory(run_dir)
    assert run.complete and run.records.height == 7 and run.server_metrics is None
    assert run.producer == "simulate" and run.summary.producer == "simulate"
