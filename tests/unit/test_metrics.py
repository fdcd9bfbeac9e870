"""Metric functions against values computed by hand on small record tables."""

from __future__ import annotations

import math

import polars as pl
import pytest

from burstgpt.errors import BurstGPTError
from burstgpt.metrics import (
    account_requests,
    average_metrics,
    derive_request_metrics,
    goodput,
    inter_token_latencies,
    parse_slo,
    summarize,
    throughput,
    window_series,
)


@pytest.fixture
def records() -> pl.DataFrame:
    # id: scheduled, sent, first token, end, in, out, status
    # 0: 0,   0.0,  0.5,  2.0, 10, 5, ok        (chunks 0.5, 1.0, 2.0)
    # 1: 1,   1.1,  1.6,  3.1, 20, 3, ok
    # 2: 2,   2.0,  -,    4.0, 30, 0, failed http_5xx
    # 3: 12, 12.5, 13.0, 14.0, 40, 2, ok        (chunks 13.0, 14.0)
    # 4: 13, 13.0,  -,   13.5, 50, -, cancelled in flight
    # 5: 15,  -,    -,    -,   60, -, not_sent
    return pl.DataFrame(
        {
            "request_id": [0, 1, 2, 3, 4, 5],
            "scheduled_s": [0.0, 1.0, 2.0, 12.0, 13.0, 15.0],
            "sent_s": [0.0, 1.1, 2.0, 12.5, 13.0, None],
            "first_token_s": [0.5, 1.6, None, 13.0, None, None],
            "end_s": [2.0, 3.1, 4.0, 14.0, 13.5, None],
            "input_tokens": [10, 20, 30, 40, 50, 60],
            "output_tokens": [5, 3, 0, 2, None, None],
            "status": ["ok", "ok", "failed", "ok", "cancelled", "not_sent"],
            "error_class": [None, None, "http_5xx", None, None, None],
            "chunk_times_s": [[0.5, 1.0, 2.0], None, None, [13.0, 14.0], None, None],
        }
    )


def test_accounting_and_failure_rate(records):
    acc = account_requests(records)
    assert (acc.total, acc.sent, acc.succeeded, acc.failed, acc.cancelled, acc.not_sent) == (6, 5, 3, 1, 1, 1)
    assert acc.balanced and acc.failures_by_class == {"http_5xx": 1}
    assert average_metrics(records)["failure_rate"] == pytest.approx(1 / 4)


def test_unbalanced_accounting_is_detected(records):
    broken = records.with_columns(pl.when(pl.col("request_id") == 0).then(pl.lit("weird")).otherwise("status")
                                  .alias("status"))
    assert not account_requests(broken).balanced


def test_per_request_latencies(records):
    derived = derive_request_metrics(records)
    ttft = derived["ttft_s"].to_list()
    assert ttft[0] == pytest.approx(0.5) and ttft[1] == pytest.approx(0.5) and ttft[2] is None
    tpot = derived["tpot_s"].to_list()
    assert tpot[0] == pytest.approx(0.375) and tpot[1] == pytest.approx(0.75) and tpot[2] is None
    assert tpot[3] == pytest.approx(1.0)
    lpot = derived["latency_per_output_token_s"].to_list()
    assert lpot[0] == pytest.approx(2.0 / 5) and lpot[1] == pytest.approx(2.0 / 3) and lpot[2] is None
    assert derived["dispatch_lag_s"].to_list()[:5] == pytest.approx([0.0, 0.1, 0.0, 0.5, 0.0])
    assert derived["dispatch_lag_s"][5] is None
    assert inter_token_latencies(records).to_list() == pytest.approx([0.5, 1.0, 1.0])


def test_average_latency_statistics(records):
    lat = average_metrics(records)["latency_s"]
    # TPOT of the succeeded requests: 0.375, 0.75, 1.0
    tpot = lat["tpot"]
    assert tpot["count"] == 3
    assert tpot["mean"] == pytest.approx((0.375 + 0.75 + 1.0) / 3)
    assert tpot["median"] == pytest.approx(0.75)
    assert tpot["p90"] == pytest.approx(0.75 + 0.8 * 0.25)  # linear interpolation at rank 1.8
    assert tpot["p99"] == pytest.approx(0.75 + 0.98 * 0.25)
    mean = (0.375 + 0.75 + 1.0) / 3
    assert tpot["std"] == pytest.approx(math.sqrt(((0.375 - mean) ** 2 + (0.75 - mean) ** 2 + (1 - mean) ** 2) / 2))
    assert lat["e2e"]["mean"] == pytest.approx((2.0 + 2.0 + 1.5) / 3)
    assert lat["ttft"]["mean"] == pytest.approx(0.5)
    assert lat["latency_per_output_token"]["median"] == pytest.approx(2.0 / 3)
    assert lat["itl"]["mean"] == pytest.approx(2.5 / 3)


def test_throughput_and_schedule(records):
    thr = throughput(records)
    assert thr["duration_s"] == pytest.approx(14.0)  # first send 0.0 to last end 14.0
    assert thr["requests_per_s"] == pytest.approx(3 / 14)
    assert thr["input_tokens_per_s"] == pytest.approx((10 + 20 + 40) / 14)
    assert thr["output_tokens_per_s"] == pytest.approx((5 + 3 + 2) / 14)
    assert thr["total_tokens_per_s"] == pytest.approx(80 / 14)
    sched = average_metrics(records)["schedule"]
    assert sched["offered_rate_rps"] == pytest.approx(5 / 15)
    assert sched["achieved_send_rate_rps"] == pytest.approx(4 / 13)
    assert sched["dispatch_lag_s"]["median"] == pytest.approx(0.0)
    assert sched["dispatch_lag_s"]["max"] == pytest.approx(0.5)


def test_goodput(records):
    good = goodput(records, parse_slo("ttft=0.6,tpot=0.8"))
    assert good["good_requests"] == 2  # request 3's TPOT of 1.0 misses
    assert good["goodput_requests_per_s"] == pytest.approx(2 / 14)
    assert good["fraction_of_succeeded"] == pytest.approx(2 / 3)
    assert goodput(records, {"e2e": 1.9})["good_requests"] == 1


def test_parse_slo_rejects_bad_specs():
    assert parse_slo("ttft=2,tpot=0.1") == {"ttft": 2.0, "tpot": 0.1}
    for bad in ("ttft", "speed=1", "ttft=x", "ttft=-1"):
        with pytest.raises(BurstGPTError):
            parse_slo(bad)


def test_tumbling_windows(records):
    ts = window_series(records, 10.0)
    # Last event: scheduled 15.0, so windows [0,10) and [10,20), the second 5 s long.
    assert ts["window_start_s"].to_list() == [0.0, 10.0]
    first, second = ts.row(0, named=True), ts.row(1, named=True)
    assert (first["succeeded"], first["failed"], first["cancelled"]) == (2, 1, 0)
    assert first["failure_rate"] == pytest.approx(1 / 3)
    assert first["requests_per_s"] == pytest.approx(2 / 10)
    assert first["input_tokens_per_s"] == pytest.approx(30 / 10)
    assert first["output_tokens_per_s"] == pytest.approx(8 / 10)
    assert first["offered_rps"] == pytest.approx(3 / 10) and first["sent_rps"] == pytest.approx(3 / 10)
    assert first["tpot_median_s"] == pytest.approx((0.375 + 0.75) / 2)
    assert first["e2e_mean_s"] == pytest.approx(2.0)
    assert (second["succeeded"], second["failed"], second["cancelled"]) == (1, 0, 1)
    assert second["failure_rate"] == pytest.approx(0.0)
    assert second["requests_per_s"] == pytest.approx(1 / 5)
    assert second["offered_rps"] == pytest.approx(3 / 5) and second["sent_rps"] == pytest.approx(2 / 5)
    assert second["dispatch_lag_median_s"] == pytest.approx(0.25)


def test_sliding_windows_and_in_flight(records):
    ts = window_series(records, 10.0, 5.0)
    assert ts["window_start_s"].to_list() == [0.0, 5.0, 10.0]
    middle = ts.row(1, named=True)  # [5, 15): request 3 ends ok, request 4 cancelled; 12 and 13 offered
    assert (middle["succeeded"], middle["cancelled"]) == (1, 1)
    assert middle["offered_rps"] == pytest.approx(2 / 10)
    short = window_series(records, 2.5)
    # At 2.5 s requests 0, 1, 2 were sent and only 0 had ended; at 5.0 s all three had ended.
    assert short["in_flight"].to_list()[:2] == [2, 0]
    with pytest.raises(BurstGPTError):
        window_series(records, 5.0, 10.0)


def test_server_metric_windows(records):
    server = pl.DataFrame(
        {
            "time_s": [0.0, 1.0, 2.0, 11.0, 12.0],
            "kv_cache_usage_perc": [0.1, 0.2, 0.3, 0.4, 0.6],
            "num_preemptions_total": [0.0, 1.0, 3.0, 4.0, 2.0],  # the last value: server restarted
        }
    )
    ts = window_series(records, 10.0, server_metrics=server)
    assert ts["kv_cache_usage_perc_mean"].to_list() == pytest.approx([0.2, 0.5])
    assert ts["kv_cache_usage_perc_max"].to_list() == pytest.approx([0.3, 0.6])
    # Increases: 1, 2 in the first window; 1, then 2 after the reset in the second (5 s long).
    assert ts["num_preemptions_per_s"].to_list() == pytest.approx([3 / 10, 3 / 5])
    assert ts["generation_tokens_per_s"].to_list() == [None, None]


def test_summarize_ignores_nulls_and_empty():
    stats = summarize(pl.Series([1.0, None, 3.0]))
    assert (stats.count, stats.mean, stats.median) == (2, 2.0, 2.0)
    empty = summarize(pl.Series([], dtype=pl.Float64))
    assert empty.count == 0 and empty.mean is None and empty.std is None


def test_simulator_style_records_work():
    # The simulator fills first_scheduled_s and preemptions, no chunk times, zero bytes.
    sim = pl.DataFrame(
        {
            "request_id": [0, 1],
            "scheduled_s": [0.0, 0.5],
            "sent_s": [0.0, 0.5],
            "first_scheduled_s": [0.1, 0.7],
            "first_token_s": [0.2, 0.9],
            "end_s": [1.2, 1.4],
            "input_tokens": [100, 200],
            "output_tokens": [11, 6],
            "status": ["ok", "failed"],
            "error_class": [None, "rejected"],
            "bytes_received": [0, 0],
            "preemptions": [0, 2],
        }
    )
    summary = average_metrics(sim)
    assert summary["requests"]["failures_by_class"] == {"rejected": 1}
    assert summary["latency_s"]["tpot"]["mean"] == pytest.approx(1.0 / 10)
    assert summary["latency_s"]["itl"]["count"] == 0


def test_failure_rate_is_binned_by_send_time():
    # Requests every 0.5 s for 10 s; every other one fails by a 30 s timeout, the rest succeed in 1 s. By end
    # time the tail (30-40 s, nothing offered) would show 100 % failures; by send time each window of sends
    # shows its true 50 %, and windows with no sends have no failure rate.
    n = 20
    sent = [i * 0.5 for i in range(n)]
    records = pl.DataFrame({
        "request_id": range(n), "scheduled_s": sent, "sent_s": sent,
        "end_s": [t + (30.0 if i % 2 else 1.0) for i, t in enumerate(sent)],
        "status": ["failed" if i % 2 else "ok" for i in range(n)],
        "error_class": ["timeout" if i % 2 else None for i in range(n)],
    })
    ts = window_series(records, 10.0)
    assert ts["window_start_s"].to_list() == [0.0, 10.0, 20.0, 30.0]
    assert ts["failure_rate"].to_list() == [0.5, None, None, None]
    assert ts["failed"].to_list() == [0, 0, 0, 10]  # the counts of ended requests still go by end time
