"""Run directories: writing, reading back, re-rendering, recovery from JSONL, and comparing runs."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from burstgpt.cli import main
from burstgpt.metrics import average_metrics, window_series
from burstgpt.records import REQUEST_RECORD_SCHEMA, conform_request_records
from burstgpt.report import read_run_directory, write_run_directory
from burstgpt.report.figures import FAILURE_RATE_LABEL, RunSeries, timeline_figure


def _records(seed: int, n: int = 300, fail_share: float = 0.1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    scheduled = np.sort(rng.uniform(0, 60, n))
    sent = scheduled + rng.exponential(0.002, n)
    ttft = rng.exponential(0.2, n)
    out = rng.integers(2, 100, n)
    end = sent + ttft + out * 0.01
    failed = rng.uniform(size=n) < fail_share
    return pl.DataFrame(
        {
            "request_id": np.arange(n),
            "scheduled_s": scheduled,
            "sent_s": sent,
            "first_token_s": sent + ttft,
            "end_s": end,
            "input_tokens": rng.integers(10, 500, n),
            "output_tokens": out,
            "status": np.where(failed, "failed", "ok"),
            "error_class": pl.Series(np.where(failed, "http_5xx", None).tolist(), dtype=pl.Utf8),
            "chunk_times_s": [[float(a), float(b)] for a, b in zip(sent + ttft, end, strict=True)],
        }
    )


def _server(seconds: int = 60) -> pl.DataFrame:
    t = np.arange(seconds, dtype=float)
    return pl.DataFrame({"time_s": t, "kv_cache_usage_perc": 0.3 + 0.1 * np.sin(t / 10),
                         "num_requests_running": np.full(seconds, 4.0)})


def test_write_and_read_run_directory(tmp_path):
    records = _records(0)
    steps = pl.DataFrame({"step": [0, 1], "batch_tokens": [128, 64]})
    summary = write_run_directory(tmp_path / "run", records, config={"url": "http://x", "max_concurrency": 8},
                                  server_metrics=_server(), extra_tables={"steps": steps}, window_s=5.0,
                                  slo={"ttft": 0.5}, run_info={"interrupted": False})
    run_dir = tmp_path / "run"
    for name in ("config.json", "requests.parquet", "timeseries.csv", "server_metrics.csv", "steps.parquet",
                 "summary.json", "timeline.png"):
        assert (run_dir / name).stat().st_size > 0, name
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == summary.to_json()
    expected = average_metrics(records, {"ttft": 0.5})
    assert summary.failure_rate == pytest.approx(expected["failure_rate"])
    assert summary.latency_s["e2e"].p99 == pytest.approx(expected["latency_s"]["e2e"]["p99"])
    assert summary.goodput.good_requests == expected["goodput"]["good_requests"]
    assert summary.run.loop == "closed" and summary.run.max_concurrency == 8
    assert summary.server.kv_cache_usage_perc.max == pytest.approx(_server()["kv_cache_usage_perc"].max())
    timeseries = pl.read_csv(run_dir / "timeseries.csv")
    direct = window_series(records, 5.0, slo={"ttft": 0.5}, server_metrics=_server())
    assert timeseries.height == direct.height
    assert timeseries["requests_per_s"].to_list() == pytest.approx(direct["requests_per_s"].to_list())
    assert pl.read_parquet(run_dir / "steps.parquet").equals(steps)
    run = read_run_directory(run_dir)
    assert run.complete and run.records.equals(conform_request_records(records))
    assert run.server_metrics["kv_cache_usage_perc"].to_list() == pytest.approx(
        _server()["kv_cache_usage_perc"].to_list())


def test_report_recovers_a_killed_run_from_jsonl(tmp_path):
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    records = _records(1, n=50)
    (run_dir / "config.json").write_text(json.dumps({"url": "http://x", "window_s": 5.0}))
    text = records.write_ndjson()
    (run_dir / "requests.jsonl").write_text(text + '{"request_id": 50, "sched')  # torn last line
    assert main(["report", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["requests"]["total"] == 50 and summary["requests"]["balanced"]
    assert summary["run"]["recovered_from_jsonl"] is True and summary["run"]["window_s"] == 5.0
    assert pl.read_parquet(run_dir / "requests.parquet").height == 50


def test_report_rerenders_with_new_window_and_slo(tmp_path):
    records = _records(2)
    last_event_s = records["end_s"].max()
    write_run_directory(tmp_path / "r", records, config={"window_s": 10.0}, run_info={"interrupted": True})
    assert pl.read_csv(tmp_path / "r" / "timeseries.csv").height == math.ceil(last_event_s / 10)
    assert main(["report", str(tmp_path / "r"), "--window", "20", "--slo", "ttft=0.3"]) == 0
    assert pl.read_csv(tmp_path / "r" / "timeseries.csv").height == math.ceil(last_event_s / 20)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["goodput"]["slo"] == {"ttft": 0.3}
    assert summary["run"]["interrupted"] is True and summary["run"]["window_s"] == 20.0


def test_compare_runs(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    write_run_directory(a, _records(3, fail_share=0.0), config={}, server_metrics=_server())
    write_run_directory(b, _records(4, fail_share=0.5), config={"max_concurrency": 4})
    out = tmp_path / "cmp"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    table = pl.read_csv(out / "comparison.csv")
    assert table["run"].to_list() == ["a", "b"]
    assert table["failure_rate"][0] == 0.0
    assert table["failure_rate"][1] == pytest.approx(average_metrics(_records(4, fail_share=0.5))["failure_rate"])
    assert table["loop"].to_list() == ["open", "closed"]
    assert (out / "comparison.png").stat().st_size > 0
    assert "run comparison" in capsys.readouterr().out


def test_report_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(tmp_path), "--slo", "nope=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("burstgpt: error:") for line in err)


def test_empty_records_still_give_a_valid_run(tmp_path):
    summary = write_run_directory(tmp_path / "e", pl.DataFrame(schema=REQUEST_RECORD_SCHEMA), config={})
    assert summary.requests.total == 0 and summary.requests.balanced
    assert summary.failure_rate is None and summary.throughput.requests_per_s is None


def test_comparison_figure_labels_offered_load_and_failure_rate_by_send_time():
    runs = [RunSeries(name, window_series(_records(seed), 10.0), None) for name, seed in (("a", 5), ("b", 6))]
    axes = timeline_figure(runs).axes
    throughput_labels = axes[1].get_legend_handles_labels()[1]
    assert throughput_labels == ["a: completed req/s", "a: offered req/s", "b: completed req/s", "b: offered req/s"]
    assert [t.get_text() for t in axes[1].get_legend().get_texts()] == throughput_labels
    assert axes[2].get_ylabel() == FAILURE_RATE_LABEL and "sent" in FAILURE_RATE_LABEL


def test_comparison_names_each_runs_producer(tmp_path):
    write_run_directory(tmp_path / "sim", _records(7), config={}, producer="simulate")
    write_run_directory(tmp_path / "http", _records(8), config={"command": "bench"})  # written before producer
    assert main(["report", str(tmp_path / "sim"), str(tmp_path / "http"), "-o", str(tmp_path / "cmp")]) == 0
    table = pl.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert table["producer"].to_list() == ["simulate", "bench"]
    assert json.loads((tmp_path / "sim" / "config.json").read_text())["producer"] == "simulate"
