"""Self-contained HTML reports (run, comparison, analysis, results) and the `vllm bench serve` result format."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib.figure import Figure

from burstgpt.analysis import characterise
from burstgpt.cli import main
from burstgpt.metrics import window_series
from burstgpt.report import read_run_directory, write_run_directory
from burstgpt.report.compare import compare_runs
from burstgpt.report.html import REPORT_FILE, latency_histograms, write_results_report
from burstgpt.report.tables import summary_rows
from burstgpt.report.trace_figures import write_analysis
from burstgpt.report.vllm_json import vllm_bench_result
from burstgpt.workload.synthetic_trace import synthetic_burstgpt_trace

VLLM_SERVE = Path("/work/vllm-venv/lib/python3.11/site-packages/vllm/benchmarks/serve.py")


def _records(seed: int, n: int = 400, fail_share: float = 0.1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    scheduled = np.sort(rng.uniform(0, 80, n))
    sent = scheduled + rng.exponential(0.002, n)
    ttft = rng.exponential(0.2, n)
    out = rng.integers(1, 60, n)
    gaps = [rng.exponential(0.02, k - 1) for k in out]
    chunks = [list(s + t + np.concatenate([[0.0], np.cumsum(g)])) for s, t, g in zip(sent, ttft, gaps, strict=True)]
    end = np.array([c[-1] for c in chunks]) + 0.001
    failed = rng.uniform(size=n) < fail_share
    return pl.DataFrame({
        "request_id": np.arange(n), "model": ["m"] * n, "scheduled_s": scheduled, "sent_s": sent,
        "first_token_s": sent + ttft, "end_s": end, "input_tokens": rng.integers(10, 500, n), "output_tokens": out,
        "status": np.where(failed, "failed", "ok"),
        "error_class": pl.Series(np.where(failed, np.where(rng.uniform(size=n) < 0.5, "http_5xx", "timeout"),
                                          None).tolist(), dtype=pl.Utf8),
        "chunk_times_s": chunks,
    })


def _server(seconds: int = 80) -> pl.DataFrame:
    t = np.arange(seconds, dtype=float)
    return pl.DataFrame({"time_s": t, "kv_cache_usage_perc": 0.3 + 0.1 * np.sin(t / 10),
                         "num_requests_running": np.full(seconds, 4.0), "num_requests_waiting": t % 3,
                         "generation_tokens_total": np.cumsum(np.full(seconds, 50.0))})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Three run directories (seeds 2, 3, 4; the second without server metrics), ttft SLO 0.3 s, 5-s windows."""
    root = tmp_path_factory.mktemp("runs")
    for seed in (2, 3, 4):
        write_run_directory(root / f"run{seed}", _records(seed, fail_share=0.05 * seed),
                            config={"url": "http://x", "model": "m", "api": "chat"},
                            server_metrics=_server() if seed != 3 else None, window_s=5.0, slo={"ttft": 0.3})
    return [root / f"run{seed}" for seed in (2, 3, 4)]


class _Page(HTMLParser):
    """What a report page holds: ids, figures (by data-name), every URL it references, the text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids, self.figures, self.urls, self.text, self.svg, self.img = set(), [], [], [], 0, 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "figure":
            self.figures.append(attrs.get("data-name"))
        self.svg += tag == "svg"
        self.img += tag == "img"
        for name in ("src", "href", "xlink:href", "action", "data"):
            if attrs.get(name):
                self.urls.append(attrs[name])

    def handle_data(self, data):
        self.text.append(data)


def _external(urls: list[str]) -> list[str]:
    """URLs that would make a request: anything but in-page anchors and data: URIs."""
    return [u for u in urls if not (u.startswith("#") or u.startswith("data:"))]


def test_run_report_is_self_contained_and_shows_the_summary(runs):
    summary = read_run_directory(runs[0]).summary
    text = (runs[0] / REPORT_FILE).read_text()
    page = _Page(text)
    assert REPORT_FILE in summary.files
    assert "summary" in page.ids and "failures" in page.ids and "server" in page.ids and "config" in page.ids
    assert page.figures == ["timeline", "latency_distributions", "server_metrics"]
    assert page.svg >= 3
    assert _external(page.urls) == []
    assert not re.search(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}/", text.replace('xmlns="http://www.w3.org/2000/svg"', "")
                         .replace('xmlns:xlink="http://www.w3.org/1999/xlink"', "")
                         .replace("http://www.w3.org/", "")), "a URL other than SVG namespaces"
    shown = " ".join(page.text)
    for label, value in summary_rows(summary):  # every summary row, as the terminal table shows it
        assert label in shown and value in shown
    for error_class, count in summary.requests.failures_by_class.items():
        assert error_class in shown and f"{count:,}" in shown


def test_latency_histograms_count_every_succeeded_request():
    records = _records(1)
    histograms = latency_histograms(records)
    ok = records.filter(pl.col("status") == "ok")
    counts = dict(histograms.group_by("metric").agg(pl.col("count").sum()).iter_rows())
    assert counts["ttft"] == ok.height
    assert counts["e2e"] == ok.height
    assert counts["tpot"] == int((ok["output_tokens"] > 1).sum())
    assert counts["itl"] == int((ok["output_tokens"] - 1).sum())
    ttft = histograms.filter(pl.col("metric") == "ttft")
    assert ttft["bin_start_s"][0] <= float((ok["first_token_s"] - ok["sent_s"]).min())
    assert ttft["bin_end_s"][-1] >= float((ok["first_token_s"] - ok["sent_s"]).max())


def test_comparison_report_shows_every_run(runs, tmp_path):
    labels, summaries, _ = compare_runs(runs, tmp_path / "cmp")
    page = _Page((tmp_path / "cmp" / REPORT_FILE).read_text())
    assert {"summary", "comparison"} <= page.ids
    assert page.figures == ["timeline", "latency_distributions"]
    assert _external(page.urls) == []
    shown = " ".join(page.text)
    for label, summary in zip(labels, summaries, strict=True):
        assert shown.count(label) >= 3  # the summary header, the comparison table, the figures' legends
        assert dict(summary_rows(summary))["failure rate R"] in shown


def test_analysis_report_embeds_every_figure_and_the_tables(tmp_path):
    result = characterise(synthetic_burstgpt_trace(days=1.5, seed=0, rate_scale=0.03))
    summary = json.loads(write_analysis(result, tmp_path).read_text())
    page = _Page((tmp_path / REPORT_FILE).read_text())
    assert sorted(page.figures) == sorted(Path(name).stem for name in summary["figures"])
    assert page.img == len(summary["figures"]) > 10
    assert _external(page.urls) == []
    assert {"summary", "table-overview", "table-failure_rates", "table-arrival_summary"} <= page.ids
    assert f"{result.totals['rows']:,}" in " ".join(page.text)


def test_results_report_for_a_frame_and_figures(tmp_path):
    results = pl.DataFrame({"rate_rps": [1.0, 2.0, 4.0], "goodput_rps": [1.0, 1.9, 2.5]})
    figure = Figure()
    figure.subplots().plot(results["rate_rps"], results["goodput_rps"])
    path = write_results_report(tmp_path / "sweep.html", "sweep", results, [("goodput", figure)],
                                config={"alpha": 0.5})
    page = _Page(path.read_text())
    assert page.figures == ["goodput"] and {"summary", "config"} <= page.ids
    assert "2.5" in page.text and _external(page.urls) == []


# ------------------------------------------------------------------------------------------------ vllm-json


def test_vllm_json_follows_vllms_definitions(runs):
    run = read_run_directory(runs[0])
    records = run.records
    result = vllm_bench_result(records, run.config, run.summary, percentiles=(50, 99))
    ok = records.filter(pl.col("status") == "ok")
    ttft = (ok["first_token_s"] - ok["sent_s"]).to_numpy()
    e2e = (ok["end_s"] - ok["sent_s"]).to_numpy()
    long = ok.filter(pl.col("output_tokens") > 1)
    tpot = ((long["end_s"] - long["first_token_s"]) / (long["output_tokens"] - 1)).to_numpy()
    itl = np.concatenate([np.diff(c) for c in ok["chunk_times_s"].to_list()])
    duration = float(records["end_s"].max() - records["sent_s"].min())
    assert result["completed"] == ok.height and result["failed"] == records.height - ok.height
    assert result["duration"] == pytest.approx(duration)
    assert result["total_input_tokens"] == ok["input_tokens"].sum()
    assert result["output_throughput"] == pytest.approx(ok["output_tokens"].sum() / duration)
    assert result["request_goodput"] == pytest.approx(int((ttft <= 0.3).sum()) / duration)
    for name, values in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2el", e2e)):
        assert result[f"mean_{name}_ms"] == pytest.approx(np.mean(values) * 1000)
        assert result[f"std_{name}_ms"] == pytest.approx(np.std(values) * 1000)  # population std, as vLLM
        assert result[f"median_{name}_ms"] == pytest.approx(np.median(values) * 1000)
        assert result[f"p99_{name}_ms"] == pytest.approx(np.percentile(values, 99) * 1000)
        assert result[f"p50_{name}_ms"] == pytest.approx(np.percentile(values, 50) * 1000)
    # vLLM's per-second buckets from the first successful send, computed request by request here.
    origin = ok["sent_s"].min()
    active = np.zeros(200, dtype=int)
    for start, end in zip(ok["sent_s"], ok["end_s"], strict=True):
        active[int(start - origin):int(end - origin) + 1] += 1
    assert result["max_concurrent_requests"] == active.max()
    tokens = np.zeros(200, dtype=int)
    for chunk_times in ok["chunk_times_s"]:
        for t in chunk_times:
            tokens[int(t - origin)] += 1
    assert result["max_output_tokens_per_s"] == tokens.max()
    assert result["backend"] == "openai-chat" and result["model_id"] == "m"


@pytest.mark.skipif(not VLLM_SERVE.exists(), reason="vLLM's benchmarks/serve.py is not installed here")
def test_vllm_json_has_every_key_of_vllms_result_file(runs, tmp_path):
    source = VLLM_SERVE.read_text()
    block = source[source.index("if isinstance(metrics, BenchmarkMetrics):"):]
    block = block[block.index("result = {"):block.index("}")]
    per_request = {"input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times", "queue_times",
                   "generated_texts", "errors", "rtfx"}  # --save-detailed lists; rtfx is for audio models
    keys = set(re.findall(r'"(\w+)":', block)) - per_request
    keys |= set(re.findall(r'result_json\["(\w+)"\] =', source)) - {"ramp_up_strategy", "ramp_up_start_rps",
                                                                      "ramp_up_end_rps"}
    keys |= {f"{stat}_{metric}_ms" for stat in ("mean", "median", "std", "p99") for metric in ("ttft", "tpot", "itl")}
    assert len(keys) > 20
    assert main(["report", str(runs[1]), "--format", "vllm-json"]) == 0
    written = json.loads((runs[1] / "vllm_bench_result.json").read_text())
    assert keys - set(written) == set()


def test_report_vllm_json_cli_into_out_dir_and_bad_percentiles(runs, tmp_path, capsys):
    run_dirs = [str(runs[0]), str(runs[2])]
    assert main(["report", *run_dirs, "--format", "vllm-json", "--out", str(tmp_path / "out"),
                 "--metric-percentiles", "90,99.9"]) == 0
    for run_dir in (runs[0], runs[2]):
        written = json.loads((tmp_path / "out" / f"{run_dir.name}.json").read_text())
        assert written["completed"] == read_run_directory(run_dir).summary.requests.succeeded
        assert "p99.9_ttft_ms" in written and "p90_tpot_ms" in written and "p99_ttft_ms" not in written
    capsys.readouterr()
    assert main(["report", run_dirs[0], "--format", "vllm-json", "--metric-percentiles", "90,x"]) == 2
    err = capsys.readouterr().err
    assert "--metric-percentiles" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_report_rerender_rewrites_report_html(runs, tmp_path):
    shutil.copytree(runs[1], tmp_path / "run")
    (tmp_path / "run" / REPORT_FILE).unlink()
    assert main(["report", str(tmp_path / "run"), "--window", "20"]) == 0
    text = (tmp_path / "run" / REPORT_FILE).read_text()
    assert "windows of 20 s" in text
    timeseries = window_series(read_run_directory(tmp_path / "run").records, 20.0)
    assert timeseries.height == 5  # 0-100 s in 20-s windows: the figure's windows are the report's
