"""`bench --prometheus-port`: the client's own metrics, scraped with prometheus_client's parser during and after
real runs against serve-sim on 127.0.0.1, equal the run's records as the summary counts them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from urllib.request import urlopen

import numpy as np
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from burstgpt.client.exporter import ClientMetricsExporter
from burstgpt.client.openai import EndpointOptions
from burstgpt.client.runner import LoadGenerator, RunOptions
from burstgpt.metrics.requests import account_requests, derive_request_metrics, inter_token_latencies
from burstgpt.server import ServerOptions, running_server
from burstgpt.server.app import FaultOptions
from burstgpt.sim.simulate import build_engine_setup
from burstgpt.workload.spec import RequestLengths, Responses, ScheduledArrivals, WorkloadSpec, build_workload


def scrape(url: str) -> dict[str, dict]:
    """The exposition at `url` as {sample name: {frozen labels: value}}."""
    text = urlopen(url, timeout=5).read().decode()
    samples: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get(name, {}).get(frozenset(labels.items()), 0.0)


class Poller(threading.Thread):
    """Scrapes `url` every `interval_s` until stopped (what Prometheus does, faster)."""

    def __init__(self, url: str, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.url, self.interval_s = url, interval_s
        self.scrapes: list[dict] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.scrapes.append(scrape(self.url))
            self.done.wait(self.interval_s)


def assert_scrape_equals_records(samples: dict, records: pl.DataFrame) -> None:
    """Every counter and histogram of a final scrape against the records, as `burstgpt.metrics` counts them."""
    accounting = account_requests(records)
    assert value(samples, "burstgpt_client_requests_total", status="ok", error_class="") == accounting.succeeded
    assert value(samples, "burstgpt_client_requests_total", status="cancelled", error_class="") == accounting.cancelled
    failed = {dict(labels)["error_class"]: v for labels, v in samples["burstgpt_client_requests_total"].items()
              if dict(labels)["status"] == "failed"}
    assert failed == accounting.failures_by_class
    assert value(samples, "burstgpt_client_requests_sent_total") == accounting.sent
    assert value(samples, "burstgpt_client_requests_scheduled") == accounting.total
    assert value(samples, "burstgpt_client_requests_in_flight") == 0
    derived = derive_request_metrics(records)
    ok = derived.filter(pl.col("status") == "ok")
    expected = {"time_to_first_token": ok["ttft_s"], "time_per_output_token": ok["tpot_s"],
                "e2e_request_latency": ok["e2e_s"],
                "dispatch_lag": derived.filter(pl.col("sent_s").is_not_null())["dispatch_lag_s"],
                "inter_token_latency": inter_token_latencies(records)}
    for name, series in expected.items():
        values = series.drop_nulls().to_numpy()
        metric = f"burstgpt_client_{name}_seconds"
        assert value(samples, f"{metric}_count") == values.size, name
        assert value(samples, f"{metric}_sum") == pytest.approx(values.sum(), rel=1e-9, abs=1e-9), name
        assert value(samples, f"{metric}_bucket", le="+Inf") == values.size, name
    assert value(samples, "burstgpt_client_generation_tokens_total") == records["output_tokens"].fill_null(0).sum()


def test_exporter_during_and_after_a_run_equals_the_records(tmp_path):
    setup = build_engine_setup(gpu="H100-80GB", model="Llama-2-7B-chat", num_gpu_blocks=2000, timeout_s=30.0)
    workload = build_workload(WorkloadSpec(
        arrivals=ScheduledArrivals(process="poisson", rate_rps=40.0), duration_s=2.5,
        lengths=RequestLengths(min_input_tokens=20, max_input_tokens=200),
        responses=Responses(mode="fixed", output_tokens=12), seed=5))
    faults = FaultOptions(error_rate=0.1, seed=2)  # some http_5xx, so failure classes are counted too
    with running_server(ServerOptions(setup, port=0, faults=faults)) as url, ClientMetricsExporter() as exporter:
        endpoint = EndpointOptions(url, record_chunk_times=True, timeout_s=10.0)
        generator = LoadGenerator(workload, endpoint, RunOptions(progress=False), exporter=exporter,
                                  records_path=tmp_path / "requests.jsonl")
        exporter.watch(generator.counters)
        exporter.start(0)
        poller = Poller(exporter.url)
        poller.start()
        try:
            result = generator.run_sync()
        finally:
            poller.done.set()
            poller.join(10)
        after = scrape(exporter.url)
    records = result.records
    assert records.height == workload.height and (records["status"] == "failed").any()
    assert_scrape_equals_records(after, records)
    # During the run: sends counted as they happen, nothing counted twice or lost, counters never go back.
    during = [s for s in poller.scrapes if 0 < value(s, "burstgpt_client_requests_sent_total") < workload.height]
    assert during, "no scrape fell within the run"
    assert any(value(s, "burstgpt_client_requests_in_flight") > 0 for s in during)
    for name in ("burstgpt_client_requests_sent_total", "burstgpt_client_time_to_first_token_seconds_count"):
        series = [value(s, name) for s in poller.scrapes] + [value(after, name)]
        assert series == sorted(series), name
    for scraped in poller.scrapes:
        ended = sum(scraped.get("burstgpt_client_requests_total", {}).values())
        assert ended <= value(scraped, "burstgpt_client_requests_sent_total")


def test_bench_cli_prometheus_port_with_two_senders(serve_sim_process, tmp_path):
    """`bench --prometheus-port 0 --workers 2`: the port is printed, the endpoint answers while the senders run,
    and (fed in the parent from the records both senders append) its last scrape equals the run directory."""
    run_dir = tmp_path / "run"
    with serve_sim_process("--gpu", "H100-80GB", "--model", "Llama-2-7B-chat") as url:
        command = [sys.executable, "-m", "burstgpt.cli", "bench", "--url", url, "--arrival", "poisson", "--rate", "60",
                   "--duration", "3", "--response", "fixed", "--output-tokens", "8", "--workers", "2",
                   "--prometheus-port", "0", "--quiet", "-o", str(run_dir)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            metrics_url = None
            lines = []
            for line in process.stderr:
                lines.append(line)
                found = re.search(r"client metrics for Prometheus: (http://127\.0\.0\.1:\d+/metrics)", line)
                if found:
                    metrics_url = found.group(1)
                    break
            assert metrics_url, "".join(lines)
            scrapes = []
            while process.poll() is None:
                try:
                    scrapes.append(scrape(metrics_url))
                except OSError:  # closed: the run directory is written and bench is exiting
                    break
                time.sleep(0.1)
            _, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, err
    records = pl.read_parquet(run_dir / "requests.parquet")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert np.unique(records["worker"].to_numpy()).tolist() == [0, 1]
    assert json.loads((run_dir / "config.json").read_text())["prometheus_port"] == 0
    assert any(0 < value(s, "burstgpt_client_requests_sent_total") < records.height for s in scrapes)
    last = scrapes[-1]
    assert value(last, "burstgpt_client_requests_total", status="ok", error_class="") == \
        summary["requests"]["succeeded"] == records.height
    assert value(last, "burstgpt_client_time_to_first_token_seconds_count") == summary["latency_s"]["ttft"]["count"]
    assert value(last, "burstgpt_client_time_to_first_token_seconds_sum") == pytest.approx(
        summary["latency_s"]["ttft"]["mean"] * summary["latency_s"]["ttft"]["count"])
