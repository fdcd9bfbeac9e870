"""The load generator against real aiohttp servers on 127.0.0.1: every failure class, accounting, Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import polars as pl
import pytest
from aiohttp import web

from burstgpt.client.openai import EndpointOptions, request_body
from burstgpt.client.runner import LoadGenerator, RunOptions
from burstgpt.client.scrape import parse_server_metrics
from burstgpt.records import read_run_directory
from burstgpt.report import write_run_directory

BODIES = web.AppKey("bodies", list)  # request bodies the test server received
AUTHS = web.AppKey("auths", list)  # their Authorization headers

# The test server's behaviour is chosen per request by the model name, so one run covers many classes.
EXPECTED_CLASS = {
    "ok": None,
    "http500": "http_5xx",
    "http429": "http_429",
    "http404": "http_4xx",
    "reset": "connection_reset",
    "malformed": "malformed_response",
    "error_event": "stream_error_event",
    "no_done": "stream_broken",
    "slow_first": "ttft_timeout",
    "slow_total": "timeout",
    "hang": "ttft_timeout",
    "bad_json": "malformed_response",
}
METRICS_TEXT = """# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 4.0
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{engine="0",model_name="m"} 5.0
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="1.0",model_name="m"} 2.0
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m"} 2.0
"""


def _chunk(model: str, text: str, chat: bool) -> bytes:
    choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
    return b"data: " + json.dumps({"model": model, "choices": [choice]}).encode() + b"\n\n"


async def _completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    chat = request.path.endswith("/chat/completions")
    model = body.get("model", "ok")
    n = int(body.get("max_tokens") or (10 if model == "slow_total" else 3))
    request.app[BODIES].append(body)
    request.app[AUTHS].append(request.headers.get("Authorization"))
    if model == "http500":
        return web.json_response({"error": {"message": "internal"}}, status=500)
    if model == "http429":
        return web.json_response({"error": {"message": "slow down"}}, status=429)
    if model == "http404":
        return web.json_response({"error": {"message": "no such model"}}, status=404)
    if model == "hang":
        await asyncio.sleep(3600)
    if model == "bad_json":
        return web.Response(text="this is not JSON")
    if model == "error_body":  # HTTP 200 carrying an error object
        return web.json_response({"error": {"message": "model overloaded"}})
    if model == "slow_first":
        await asyncio.sleep(2.0)
    if model == "slow":
        await asyncio.sleep(float(body.get("delay_s", 3.0)))
    usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
    if not body.get("stream"):
        text = "x" * n
        choice = {"index": 0, "message": {"role": "assistant", "content": text}} if chat else {"index": 0, "text": text}
        return web.json_response({"choices": [choice], "usage": usage})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(n):
        if model == "slow_total":
            await asyncio.sleep(0.3)
        if model == "reset" and i == 1:
            request.transport.abort()  # drop the connection mid-stream
            return response
        if model == "malformed" and i == 1:
            await response.write(b"data: {not json\n\n")
            continue
        if model == "error_event" and i == 1:
            await response.write(b'data: {"error": {"message": "engine crashed", "code": 500}}\n\n')
            continue
        await response.write(_chunk(model, f"t{i}", chat))
    if body.get("stream_options", {}).get("include_usage"):
        await response.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
    if model != "no_done":
        await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(text=METRICS_TEXT, content_type="text/plain")


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"data": [{"id": "ok"}]})


class ServerThread:
    """A small OpenAI-like aiohttp server on 127.0.0.1 in its own thread and event loop."""

    def __init__(self, metrics: bool = True) -> None:
        self.app = web.Application()
        self.app[BODIES] = []
        self.app[AUTHS] = []
        self.app.router.add_post("/v1/completions", _completions)
        self.app.router.add_post("/v1/chat/completions", _completions)
        self.app.router.add_get("/v1/models", _models)
        if metrics:
            self.app.router.add_get("/metrics", _metrics)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.runner = web.AppRunner(self.app, shutdown_timeout=0.1)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert started.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)

        async def cancel_handlers() -> None:  # e.g. the "hang" handlers still sleeping
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_handlers(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def server():
    srv = ServerThread()
    try:
        yield srv
    finally:
        srv.stop()


def run_bench(workload: pl.DataFrame, endpoint: EndpointOptions, options: RunOptions, **kwargs):
    return LoadGenerator(workload, endpoint, options, **kwargs).run_sync()


def _workload(models: list[str], gap_s: float = 0.01) -> pl.DataFrame:
    n = len(models)
    return pl.DataFrame(
        {
            "request_id": list(range(n)),
            "arrival_s": [i * gap_s for i in range(n)],
            "input_tokens": [5] * n,
            "model": models,
        }
    )


def _check_classes(records: pl.DataFrame, models: list[str], expected: dict[str, str | None]) -> None:
    assert records.height == len(models)
    assert records["request_id"].to_list() == list(range(len(models)))
    for row in records.iter_rows(named=True):
        want = expected[row["model"]]
        assert row["error_class"] == want, (row["model"], row["error_class"], row["error_message"])
        assert row["status"] == ("ok" if want is None else "failed"), row
        assert row["sent_s"] is not None and row["end_s"] >= row["sent_s"]


def test_streaming_every_failure_class(server, tmp_path):
    models = list(EXPECTED_CLASS) * 2
    endpoint = EndpointOptions(server.url, timeout_s=1.0, ttft_timeout_s=0.5, record_chunk_times=True)
    result = run_bench(_workload(models), endpoint, RunOptions(progress=False, metrics_url=server.url + "/metrics",
                                                               scrape_interval_s=0.25),
                       headers={}, records_path=tmp_path / "requests.jsonl")
    records = result.records
    _check_classes(records, models, EXPECTED_CLASS)
    ok = records.filter(pl.col("status") == "ok")
    # The server's usage wins over the client's chunk count; the chunk times are those of the 3 text chunks.
    assert ok["input_tokens"].to_list() == [7] * ok.height
    assert ok["output_tokens"].to_list() == [3] * ok.height
    assert all(len(times) == 3 for times in ok["chunk_times_s"].to_list())
    assert (ok["first_token_s"] == ok["chunk_times_s"].list.first()).all()
    reset = records.filter(pl.col("model") == "reset")
    assert (reset["first_token_s"].is_not_null()).all()  # one chunk arrived before the connection dropped
    # TTFT timeout fires at 0.5 s after sending, the total timeout at 1 s.
    ttft = records.filter(pl.col("error_class") == "ttft_timeout")
    assert ((ttft["end_s"] - ttft["sent_s"]) - 0.5).abs().max() < 0.2
    total = records.filter(pl.col("error_class") == "timeout")
    assert ((total["end_s"] - total["sent_s"]) - 1.0).abs().max() < 0.2
    # Server metrics were scraped on the run's clock; label sets combine (KV mean, running sum).
    server_metrics = result.server_metrics
    assert server_metrics.height >= 2
    assert server_metrics["kv_cache_usage_perc"].to_list()[0] == 0.5
    assert server_metrics["num_requests_running"].to_list()[0] == 7.0
    assert server_metrics["num_preemptions_total"].to_list()[0] == 5.0
    assert server_metrics["num_requests_waiting"].null_count() == server_metrics.height
    summary = write_run_directory(tmp_path / "run", records, config={"url": server.url},
                                  server_metrics=server_metrics)
    acc = summary.requests
    assert acc.balanced and acc.sent == len(models) and acc.succeeded == 2
    assert acc.failed == len(models) - 2 and acc.cancelled == 0 and acc.not_sent == 0
    assert sum(acc.failures_by_class.values()) == acc.failed
    assert summary.server.kv_cache_usage_perc.mean == 0.5


def test_non_streaming_chat_and_total_timeout(server, tmp_path):
    expected = {"ok": None, "http500": "http_5xx", "http429": "http_429", "hang": "timeout",
                "bad_json": "malformed_response", "error_body": "stream_error_event"}
    models = list(expected)
    endpoint = EndpointOptions(server.url + "/v1", api="chat", stream=False, timeout_s=0.8, max_tokens=4,
                               temperature=0.5, extra_body={"top_p": 0.9})
    result = run_bench(_workload(models), endpoint, RunOptions(progress=False), headers={"X-Test": "1"},
                       records_path=tmp_path / "r.jsonl")
    _check_classes(result.records, models, expected)
    ok = result.records.filter(pl.col("status") == "ok").row(0, named=True)
    assert ok["output_tokens"] == 4 and ok["first_token_s"] is None and ok["bytes_received"] > 0
    body = next(b for b in server.app[BODIES] if b.get("top_p") == 0.9)
    assert body["messages"][0]["role"] == "user" and body["max_tokens"] == 4 and body["temperature"] == 0.5
    assert "stream" not in body


def test_connection_refused_is_counted(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    models = ["ok"] * 5
    result = run_bench(_workload(models), EndpointOptions(f"http://127.0.0.1:{port}", timeout_s=1.0),
                       RunOptions(progress=False, model="ok", metrics_url=f"http://127.0.0.1:{port}/metrics",
                                  check_server=False),
                       headers={}, records_path=tmp_path / "r.jsonl")
    assert result.records["error_class"].to_list() == ["connection_refused"] * 5
    assert result.server_metrics.height == 0
    assert any("server metrics unavailable" in w for w in result.warnings)


def test_request_body_fixed_and_free_output_lengths():
    options = EndpointOptions("http://h", max_tokens=64)
    fixed = request_body(options, model="m", prompt="p", output_tokens=10, max_output_tokens=None)
    assert fixed["max_tokens"] == 10 and fixed["ignore_eos"] is True
    assert fixed["stream_options"] == {"include_usage": True}
    free = request_body(options, model="m", prompt="p", output_tokens=None, max_output_tokens=None)
    assert free["max_tokens"] == 64 and "ignore_eos" not in free
    capped = request_body(options, model=None, prompt="p", output_tokens=None, max_output_tokens=5)
    assert capped["max_tokens"] == 5 and "model" not in capped
    assert EndpointOptions("http://h:1/v1/chat/completions").url == "http://h:1/v1/chat/completions"
    assert EndpointOptions("http://h:1/", api="chat").url == "http://h:1/v1/chat/completions"


def test_parse_server_metrics_sglang_and_missing():
    text = "sglang:token_usage{tp_rank=\"0\"} 0.4\nsglang:num_queue_reqs 3\nother_metric 1\n"
    row = parse_server_metrics(text)
    assert row["kv_cache_usage_perc"] == 0.4 and row["num_requests_waiting"] == 3.0
    assert row["num_requests_running"] is None


def test_open_loop_keeps_schedule_while_requests_are_slow(server, tmp_path):
    # 40 requests 25 ms apart, each taking 0.5 s: an open loop sends them on time regardless.
    n = 40
    workload = _workload(["slow"] * n, gap_s=0.025)
    endpoint = EndpointOptions(server.url, timeout_s=5.0, extra_body={"delay_s": 0.5})
    result = run_bench(workload, endpoint, RunOptions(progress=False), headers={}, records_path=tmp_path / "r.jsonl")
    records = result.records
    assert (records["status"] == "ok").all()
    lag = records["sent_s"] - records["scheduled_s"]
    assert lag.min() >= 0 and lag.max() < 0.05
    # Closed loop with 4 slots: request k can only go when one of the first k-4 has ended.
    closed = run_bench(workload.head(12), endpoint, RunOptions(progress=False, max_concurrency=4), headers={},
                       records_path=tmp_path / "c.jsonl").records
    sent = closed.sort("sent_s")["sent_s"].to_numpy()
    ends = closed.sort("end_s")["end_s"].to_numpy()
    assert (sent[4:] >= ends[:-4] - 1e-3).all()


@pytest.mark.parametrize("sig", [signal.SIGINT], ids=["SIGINT"])  # SIGTERM: test_rundir_lifecycle, vs serve-sim
def test_signal_mid_run_leaves_valid_summary(server, tmp_path, sig):
    # 60 requests over 3 s, each answered after 2 s: at SIGINT (~1 s in) some are in flight, most unsent.
    wl = _workload(["slow"] * 60, gap_s=0.05).with_columns(pl.col("arrival_s"))
    wl_path = tmp_path / "wl.jsonl"
    wl.write_ndjson(wl_path)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "burstgpt.cli", "bench", "--url", server.url, "--workload", str(wl_path),
           "--out", str(run_dir), "--grace", "0.3", "--quiet", "--extra-body", '{"delay_s": 2.0}',
           "--no-server-metrics"]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (run_dir / "requests.jsonl").exists():  # the run has started sending
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    summary = json.loads((run_dir / "summary.json").read_text())
    acc = summary["requests"]
    assert acc["balanced"] and acc["total"] == 60
    assert acc["cancelled"] > 0 and acc["not_sent"] > 0
    assert acc["sent"] == acc["succeeded"] + acc["failed"] + acc["cancelled"]
    assert summary["run"]["interrupted"] is True and summary["run"]["stop_reason"] == sig.name
    run = read_run_directory(run_dir)
    assert run.complete and run.records.height == 60
    cancelled = run.records.filter(pl.col("status") == "cancelled")
    assert cancelled["error_class"].null_count() == cancelled.height
    # Cancelled requests were in flight: cancelled after the 0.3 s grace, well before their 2 s answer.
    assert cancelled["sent_s"].null_count() == 0
    assert (cancelled["end_s"] - cancelled["sent_s"]).max() < 2.0
    # Never-sent requests have their own status, and the parquet and summary.json agree.
    not_sent = run.records.filter(pl.col("status") == "not_sent")
    assert not_sent.height == acc["not_sent"] and not_sent["sent_s"].null_count() == not_sent.height
    assert cancelled.height == acc["cancelled"]
    assert b"Traceback" not in err


def test_bench_cli_generates_workload_and_keeps_key_secret(server, tmp_path, monkeypatch, capsys):
    from burstgpt.cli import main

    secret = "sk-test-very-secret-123"
    monkeypatch.setenv("BURSTGPT_TEST_KEY", secret)
    run_dir = tmp_path / "run"
    status = main(["bench", "--url", server.url, "--model", "ok", "--arrival", "constant", "--rate", "40",
                   "--num-requests", "12", "--max-output-tokens", "4", "--api-key-env", "BURSTGPT_TEST_KEY",
                   "--header", "X-Api-Key: also-secret", "--header", "X-Trace: t1", "--out", str(run_dir),
                   "--slo", "ttft=1", "--window", "0.1", "--scrape-interval", "0.1", "--quiet"])
    assert status == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["requests"]["succeeded"] == 12 and summary["requests"]["balanced"]
    assert summary["schedule"]["offered_rate_rps"] == pytest.approx(40.0)
    assert summary["goodput"]["good_requests"] == 12
    assert summary["server"]["samples"] >= 1
    config = json.loads((run_dir / "config.json").read_text())
    assert config["headers"] == {"X-Api-Key": "<not saved>", "X-Trace": "t1"}
    assert config["workload_args"]["num_requests"] == 12
    assert pl.read_parquet(run_dir / "workload.parquet").height == 12
    assert all(b["max_tokens"] == 4 for b in server.app[BODIES][-12:])
    assert server.app[AUTHS][-12:] == [f"Bearer {secret}"] * 12
    for path in run_dir.iterdir():  # the key is in no file and was not printed
        if path.suffix in (".json", ".jsonl", ".csv"):
            assert secret not in path.read_text() and "also-secret" not in path.read_text()
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    # A missing workload file is a one-line error, exit 2.
    assert main(["bench", "--url", server.url, "--workload", str(tmp_path / "nope.parquet")]) == 2


def test_scraper_columns_are_the_server_metrics_layout():
    from burstgpt.client.scrape import SERVER_METRIC_SOURCES
    from burstgpt.records import SERVER_METRICS_SCHEMA

    assert ["time_s", *SERVER_METRIC_SOURCES] == list(SERVER_METRICS_SCHEMA)


@pytest.mark.parametrize("arrivals", [[0.0, float("nan"), 0.2], [0.0, 0.3, 0.1], [0.0, float("inf"), 1.0]],
                         ids=["nan", "decreasing", "inf"])
def test_unusable_arrivals_are_refused_before_any_request(server, tmp_path, arrivals):
    from burstgpt.errors import InputError

    workload = pl.DataFrame({"request_id": [0, 1, 2], "arrival_s": arrivals, "input_tokens": [5, 5, 5],
                             "model": ["ok"] * 3})
    received = len(server.app[BODIES])
    with pytest.raises(InputError, match="arrival_s") as caught:
        run_bench(workload, EndpointOptions(server.url), RunOptions(progress=False), headers={},
                  records_path=tmp_path / "r.jsonl", workload_source="wl.parquet")
    assert caught.value.path == "wl.parquet" and caught.value.line in (2, 3)
    assert len(server.app[BODIES]) == received and not (tmp_path / "r.jsonl").exists()


def test_never_sent_requests_are_not_sent_not_cancelled(server, tmp_path):
    from burstgpt.metrics import account_requests

    # 20 requests 0.1 s apart, each answered after 2 s; stopped at 0.35 s with a 0.2 s grace: the first few
    # were sent and are cancelled in flight, the rest were never sent.
    workload = _workload(["slow"] * 20, gap_s=0.1)
    endpoint = EndpointOptions(server.url, timeout_s=10.0, extra_body={"delay_s": 2.0})
    generator = LoadGenerator(workload, endpoint, RunOptions(progress=False, grace_s=0.2), headers={},
                              records_path=tmp_path / "r.jsonl")

    async def run_and_stop():
        asyncio.get_running_loop().call_later(0.35, generator.request_stop, "test")
        return await generator.run()

    records = asyncio.run(run_and_stop()).records
    sent = records.filter(pl.col("sent_s").is_not_null())
    never = records.filter(pl.col("sent_s").is_null())
    assert sent.height >= 1 and never.height >= 10
    assert set(sent["status"]) == {"cancelled"} and set(never["status"]) == {"not_sent"}
    assert never["end_s"].null_count() == never.height
    acc = account_requests(records)
    assert (acc.sent, acc.cancelled, acc.not_sent, acc.total) == (sent.height, sent.height, never.height, 20)
    assert acc.balanced
