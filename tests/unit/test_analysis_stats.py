"""Trace statistics against hand-computed values and generated traces with known structure."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import polars as pl
import pytest
from scipy import stats

from burstgpt.analysis import characterise, write_characterisation
from burstgpt.analysis import lengths, sessions, temporal, throughput
from burstgpt.tables import conform_to_schema
from burstgpt.trace import TRACE_SCHEMA, LoadReport, Trace


def trace_frame(timestamps, model="ChatGPT", service="conversation", request=None, response=None,
                session_id=None, elapsed=None) -> pl.DataFrame:
    n = len(timestamps)
    request = np.full(n, 100) if request is None else np.asarray(request)
    response = np.full(n, 50) if response is None else np.asarray(response)
    return conform_to_schema(pl.DataFrame(
        {
            "timestamp_s": np.asarray(timestamps, dtype=float),
            "model": [model] * n,
            "service": [service] * n,
            "request_tokens": request.astype(np.int64),
            "response_tokens": response.astype(np.int64),
            "failed": response == 0,
            "session_id": pl.Series(session_id if session_id is not None else [None] * n, dtype=pl.Utf8),
            "elapsed_s": pl.Series(elapsed if elapsed is not None else [None] * n, dtype=pl.Float64),
        },
    ), TRACE_SCHEMA)


def poisson_times(rate_of_t, horizon_s, peak_rate, rng) -> np.ndarray:
    """Inhomogeneous Poisson arrivals by thinning: rate_of_t(t) <= peak_rate requests/s."""
    candidates = np.cumsum(rng.exponential(1.0 / peak_rate, int(horizon_s * peak_rate * 1.2) + 100))
    candidates = candidates[candidates < horizon_s]
    return candidates[rng.random(candidates.size) < rate_of_t(candidates) / peak_rate]


def test_periodicity_score_separates_daily_periodic_from_aperiodic():
    rng = np.random.default_rng(7)
    days = 14
    horizon = days * 86400.0
    periodic = poisson_times(lambda t: 0.05 * (1 + 0.9 * np.sin(2 * np.pi * t / 86400.0)), horizon, 0.1, rng)
    # Aperiodic, bursty: on/off bursts of random length (mean 3 h) at random rates, no daily rhythm.
    edges = np.cumsum(rng.exponential(3 * 3600.0, 400))
    edges = edges[edges < horizon]
    levels = rng.lognormal(np.log(0.02), 1.0, edges.size + 1) * (rng.random(edges.size + 1) < 0.6)
    bursty = poisson_times(lambda t: np.minimum(levels[np.searchsorted(edges, t)], 0.3), horizon, 0.3, rng)
    frame = pl.concat([trace_frame(periodic, service="conversation"), trace_frame(bursty, service="api")])
    frame = frame.sort("timestamp_s")
    hourly = temporal.hourly_requests(temporal.time_bins(frame))
    table = temporal.periodicity(hourly)
    scores = dict(zip(table["service"], table["periodicity_score_24h"], strict=True))
    assert scores["conversation"] > 0.6
    assert scores["api"] < 0.2
    assert dict(zip(table["service"], table["periodic"], strict=True)) == {"conversation": True, "api": False}
    assert table["hours"].to_list() == [days * 24] * 2
    # The score is built from the sample autocorrelation, checked here against numpy.
    counts = hourly.filter(pl.col("service") == "conversation")["requests"].to_numpy().astype(float)
    centred = counts - counts.mean()
    assert table.filter(pl.col("service") == "conversation")["acf_24h"][0] == pytest.approx(
        np.dot(centred[:-24], centred[24:]) / np.dot(centred, centred))


def test_hourly_and_daily_counts_with_origin_calendar():
    rng = np.random.default_rng(1)
    timestamps = np.sort(rng.uniform(0, 3 * 86400, 5000))
    frame = trace_frame(timestamps)
    origin = datetime(2023, 11, 1, 6, 30)  # a Wednesday, 06:30
    bins = temporal.time_bins(frame, origin)
    hourly = temporal.hourly_requests(bins)
    clock = timestamps + 6.5 * 3600
    expected = np.bincount((clock // 3600).astype(int))
    first = int(clock.min() // 3600)
    assert hourly["requests"].to_list() == expected[first:].tolist()
    assert hourly["hour_of_day"][0] == first % 24 == 6
    daily = temporal.daily_requests(bins)
    assert daily["requests"].to_list() == np.bincount((clock // 86400).astype(int)).tolist()
    assert daily["day_of_week"].to_list() == [2, 3, 4, 5]
    assert str(daily["date"][0]) == "2023-11-01"
    profile = temporal.hour_of_day_profile(hourly)
    seven = hourly.filter(pl.col("hour_of_day") == 7)["requests"].to_numpy()
    row = profile.filter(pl.col("hour_of_day") == 7).row(0, named=True)
    assert row["days"] == seven.size
    assert row["mean_requests"] == pytest.approx(seven.mean())
    assert row["std_requests"] == pytest.approx(seven.std(ddof=1))


def test_burstiness_counts_doublings_by_hand():
    counts = [4, 8, 3, 6, 0, 5, 20]  # per 5-minute window
    timestamps = np.concatenate([i * 300 + np.linspace(1, 299, c) for i, c in enumerate(counts)])
    bursts = temporal.burstiness(temporal.time_bins(trace_frame(timestamps)), window_minutes=(5,))
    row = bursts.row(0, named=True)
    # 4->8 and 3->6 double; 5->20 quadruples; 0->5 does not count (nothing to double).
    assert (row["bursts_2x"], row["bursts_3x"], row["bursts_4x"]) == (3, 1, 1)
    assert row["windows"] == 6
    # The trace observed 1 s .. 6*300 + 299 s of its day: 3 bursts in that time are 3 / (2098 / 86400) per day.
    assert row["observed_s"] == 2098.0
    summary = temporal.burstiness_summary(bursts)
    assert summary["mean_bursts_2x_per_day"][0] == pytest.approx(3 * 86400 / 2098)


def test_bimodality_test_tells_two_modes_from_one():
    rng = np.random.default_rng(3)
    two_modes = np.concatenate([rng.lognormal(np.log(20), 0.4, 6000), rng.lognormal(np.log(400), 0.4, 4000)])
    one_mode = rng.lognormal(np.log(150), 0.8, 10000)
    frame = pl.concat([
        trace_frame(np.arange(two_modes.size), model="A", response=np.maximum(1, two_modes.round())),
        trace_frame(np.arange(one_mode.size), model="B", response=np.maximum(1, one_mode.round())),
    ])
    table = lengths.response_bimodality(frame)
    a, b = table.row(0, named=True), table.row(1, named=True)
    assert a["bimodal"] is True and b["bimodal"] is False
    assert a["mode_low_tokens"] == pytest.approx(20, rel=0.1)
    assert a["mode_high_tokens"] == pytest.approx(400, rel=0.1)
    assert a["mode_low_weight"] == pytest.approx(0.6, abs=0.03)
    x = np.maximum(1, two_modes.round())
    n = x.size
    g1, g2 = stats.skew(x, bias=False), stats.kurtosis(x, bias=False)
    assert a["bimodality_coefficient"] == pytest.approx((g1**2 + 1) / (g2 + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def test_request_response_relationship():
    rng = np.random.default_rng(4)
    request = rng.integers(1, 2000, 20000)
    response = np.maximum(1, (30 + 0.4 * request + rng.normal(0, 40, request.size)).round()).astype(int)
    response[:500] = 0  # failures are left out of the pairs
    frame = trace_frame(np.arange(request.size), request=request, response=response)
    fit = lengths.request_response_correlation(frame).row(0, named=True)
    ok = response > 0
    slope, intercept = np.polyfit(request[ok], response[ok], 1)
    assert fit["n"] == ok.sum()
    assert fit["slope"] == pytest.approx(slope) and fit["slope"] == pytest.approx(0.4, abs=0.01)
    assert fit["intercept_tokens"] == pytest.approx(intercept)
    assert fit["pearson_r"] == pytest.approx(np.corrcoef(request[ok], response[ok])[0, 1])
    assert fit["spearman_rho"] == pytest.approx(stats.spearmanr(request[ok], response[ok]).statistic)
    bins = lengths.request_response_bins(frame)
    assert bins["requests"].sum() == ok.sum()
    first = bins.row(0, named=True)
    inside = ok & (request >= first["request_bin_start_tokens"]) & (request < first["request_bin_end_tokens"])
    assert first["response_mean_tokens"] == pytest.approx(response[inside].mean())
    assert first["response_median_tokens"] == pytest.approx(np.median(response[inside]))
    assert first["response_p25_tokens"] == pytest.approx(np.percentile(response[inside], 25))
    assert first["response_p75_tokens"] == pytest.approx(np.percentile(response[inside], 75))
    assert first["response_std_tokens"] == pytest.approx(np.std(response[inside], ddof=1))
    last = bins.row(-1, named=True)
    assert last["request_bin_end_tokens"] is None  # the last bin holds every longer request
    assert last["requests"] == (ok & (request >= last["request_bin_start_tokens"])).sum()
    counts = lengths.request_response_counts(frame)
    assert counts["count"].sum() == ok.sum()
    histograms = lengths.length_histograms(frame)
    assert histograms.filter(pl.col("kind") == "request")["count"].sum() == request.size
    assert histograms.filter(pl.col("kind") == "response")["count"].sum() == ok.sum()


def test_throughput_box_stats_and_failure_rates_by_hand():
    # Two days; at hour 10 the request tokens per hour are 100+200 on day 0 and 400 on day 1.
    timestamps = [10 * 3600 + 5, 10 * 3600 + 60, 86400 + 10 * 3600 + 7, 86400 + 23 * 3600]
    frame = trace_frame(timestamps, request=[100, 200, 400, 1], response=[10, 0, 30, 0])
    bins = temporal.time_bins(frame)
    hourly = throughput.hourly_throughput(bins)
    assert hourly.height == 86400 // 3600 + 14  # every hour from hour 10 of day 0 to hour 23 of day 1
    box = throughput.throughput_box_stats(hourly)
    ten = box.filter((pl.col("hour_of_day") == 10) & (pl.col("kind") == "request")).row(0, named=True)
    assert ten["days"] == 2
    # The trace starts 5 s into hour 10 of day 0: its 300 tokens arrived in 3595 observed seconds.
    day0 = 300 * 3600 / 3595
    assert ten["median_tokens_per_hour"] == pytest.approx((day0 + 400) / 2)
    assert ten["q1_tokens_per_hour"] == pytest.approx(np.percentile([day0, 400], 25))
    # Hour 23 of day 1 is observed for 0 s (the last arrival is its first instant): left out, not a zero.
    assert box.filter(pl.col("hour_of_day") == 23)["days"].to_list() == [1, 1]
    eleven = box.filter((pl.col("hour_of_day") == 11) & (pl.col("kind") == "response")).row(0, named=True)
    assert eleven["mean_tokens_per_hour"] == 0.0
    rates = throughput.failure_rates(bins).row(0, named=True)
    assert (rates["requests"], rates["failures"], rates["failure_rate"]) == (4, 2, 0.5)
    by_hour = throughput.failure_rates_by_hour(bins)
    assert by_hour.filter(pl.col("hour_of_day") == 10)["failure_rate"][0] == pytest.approx(1 / 3)
    by_day = throughput.failure_rates_by_day(bins)
    assert by_day["failures"].to_list() == [1, 1]


def test_sessions_turns_gaps_and_elapsed():
    frame = trace_frame(
        [0, 10, 30, 35, 100, 200],
        session_id=["a", "b", "a", "a", "b", "c"],
        response=[10, 20, 30, 40, 0, 60],
        elapsed=[1.0, 2.0, 3.0, 4.0, None, 6.0],
    )
    table = sessions.session_table(frame)
    assert dict(zip(table["session_id"], table["turns"], strict=True)) == {"a": 3, "b": 2, "c": 1}
    a = table.filter(pl.col("session_id") == "a").row(0, named=True)
    assert (a["duration_s"], a["mean_turn_gap_s"]) == (35.0, 17.5)
    assert sorted(sessions.turn_gaps(frame).to_list()) == [5.0, 30.0, 90.0]
    summary = sessions.session_summary(frame).row(0, named=True)
    assert summary["sessions"] == 3 and summary["median_turn_gap_s"] == 30.0
    fit = sessions.elapsed_fit(frame).row(0, named=True)
    assert fit["seconds_per_token"] == pytest.approx(0.1) and fit["n"] == 5
    assert sessions.session_table(trace_frame([0, 1])).height == 0


def test_characterise_and_write_directory(tmp_path):
    rng = np.random.default_rng(9)
    parts = []
    for model, service, rate in (("ChatGPT", "conversation", 0.05), ("GPT-4", "api", 0.01)):
        times = np.floor(np.cumsum(rng.gamma(0.5, 1 / (0.5 * rate), int(2 * 86400 * rate))))
        response = rng.integers(0, 500, times.size)
        parts.append(trace_frame(times, model, service, request=rng.integers(1, 3000, times.size), response=response))
    frame = pl.concat(parts).sort("timestamp_s")
    trace = Trace(frame=frame, source="generated", format="burstgpt", origin=None, load_report=LoadReport(rows_read=frame.height, rows=frame.height))
    result = characterise(trace, window_s=1800.0)
    assert result.totals["rows"] == frame.height
    assert result.totals["failures"] == int((frame["response_tokens"] == 0).sum())
    assert result.totals["mean_request_tokens"] == pytest.approx(frame["request_tokens"].mean())
    assert set(result.arrival_windows["window_start_s"].to_numpy() % 1800.0) == {0.0}
    alpha = result.arrival_summary.filter(pl.col("model") == "ChatGPT")["gamma_alpha"][0]
    assert alpha == pytest.approx(0.5, rel=0.15)  # whole-second timestamps, mean gap 20 s
    filtered = characterise(trace, model="GPT-4", start_s=3600.0, end_s=86400.0)
    expected = frame.filter((pl.col("model") == "GPT-4") & (pl.col("timestamp_s") >= 3600)
                            & (pl.col("timestamp_s") < 86400))
    assert filtered.totals["rows"] == expected.height
    assert filtered.overview["model"].to_list() == ["GPT-4"]

    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "summary.json").write_text("{}")  # stale, from an earlier run

    def failing_figures(directory):
        raise RuntimeError("figure step failed")

    with pytest.raises(RuntimeError):
        write_characterisation(result, outdir, before_summary=failing_figures)
    assert not (outdir / "summary.json").exists()  # the failed run does not look complete
    summary_path = write_characterisation(result, outdir)
    summary = json.loads(summary_path.read_text())
    assert summary["totals"]["rows"] == frame.height
    assert set(summary["tables"]) == set(result.tables())
    for name in summary["tables"]:
        assert pl.read_csv(outdir / f"{name}.csv").height == result.tables()[name].height
    groups = {(g["model"], g["service"]): g for g in summary["groups"]}
    assert groups[("GPT-4", "api")]["overview"]["requests"] == frame.filter(pl.col("model") == "GPT-4").height
    assert "window_5_min" in groups[("ChatGPT", "conversation")]["burstiness"]
