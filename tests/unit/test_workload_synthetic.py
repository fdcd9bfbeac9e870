"""The synthetic BurstGPT-like trace reproduces the parameters it was built with."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from burstgpt.analysis.fits import fit_zipf, gamma_fit_per_window
from burstgpt.trace import load_trace
from burstgpt.trace.schema import TRACE_SCHEMA
from burstgpt.workload.synthetic_trace import (
    DEFAULT_STREAMS,
    daily_weekly_profile,
    synthetic_burstgpt,
    synthetic_burstgpt_trace,
    write_burstgpt_csv,
)


@pytest.fixture(scope="module")
def week():
    return synthetic_burstgpt(days=7, seed=1)


def test_schema_order_and_determinism(week):
    frame = week.trace.frame
    assert frame.schema == pl.Schema(TRACE_SCHEMA)
    assert frame["timestamp_s"].is_sorted() and frame["timestamp_s"].min() >= 0
    assert frame["timestamp_s"].max() < 7 * 86400
    again = synthetic_burstgpt_trace(days=7, seed=1)
    assert again.frame.equals(frame)
    assert not synthetic_burstgpt_trace(days=1, seed=2).frame.equals(frame.head(10))


def test_failure_rates_per_model_and_service(week):
    rates = week.trace.frame.group_by("model", "service").agg(pl.col("failed").mean(), pl.len())
    for spec in DEFAULT_STREAMS:
        row = rates.filter((pl.col("model") == spec.model) & (pl.col("service") == spec.service))
        n = row["len"].item()
        tolerance = 4 * np.sqrt(spec.failure_rate * (1 - spec.failure_rate) / n)
        assert abs(row["failed"].item() - spec.failure_rate) < tolerance


def test_conversation_is_periodic_and_api_is_bursty(week):
    frame = week.trace.frame
    conv = frame.filter(pl.col("service") == "conversation")["timestamp_s"].to_numpy()
    hour = (conv // 3600) % 24
    day = (conv // 86400) % 7
    weekday_afternoon = np.sum((day < 5) & (hour >= 13) & (hour < 17)) / (5 * 4)
    weekday_night = np.sum((day < 5) & (hour >= 1) & (hour < 5)) / (5 * 4)
    weekend_afternoon = np.sum((day >= 5) & (hour >= 13) & (hour < 17)) / (2 * 4)
    assert weekday_afternoon > 5 * weekday_night
    assert weekend_afternoon < 0.6 * weekday_afternoon
    assert daily_weekly_profile(np.arange(0, 7 * 86400, 60.0)).mean() == pytest.approx(1.0, rel=1e-3)
    api_counts = week.windows.filter((pl.col("model") == "ChatGPT") & (pl.col("service") == "api"))["n_arrivals"]
    assert api_counts.std() / api_counts.mean() > 0.8  # aperiodic bursts: far beyond Poisson spread


def test_per_window_truth_is_recovered(week):
    # ChatGPT API: the busiest stream. Windows with >= 300 arrivals give a fit precise enough to compare.
    truth = week.windows.filter((pl.col("model") == "ChatGPT") & (pl.col("service") == "api"))
    stamps = week.trace.frame.filter((pl.col("model") == "ChatGPT") & (pl.col("service") == "api"))
    fits = gamma_fit_per_window(stamps["timestamp_s"].to_numpy(), window_s=1200.0, min_arrivals=300, start_s=0.0)
    joined = fits.drop_nulls("alpha").join(truth, on="window_start_s", suffix="_true")
    assert joined.height > 50
    ratio = (joined["alpha"] / joined["alpha_true"]).to_numpy()
    assert np.median(ratio) == pytest.approx(1.0, abs=0.08)
    assert np.corrcoef(np.log(joined["alpha"]), np.log(joined["alpha_true"]))[0, 1] > 0.8
    np.testing.assert_allclose(truth["n_arrivals"].sum(), stamps.height)
    expected = (truth["rate_rps"] * 1200).to_numpy()
    assert np.corrcoef(expected, truth["n_arrivals"].to_numpy())[0, 1] > 0.95


def test_lengths_zipf_and_linear_bimodal_responses(week):
    frame = week.trace.frame
    for spec in DEFAULT_STREAMS[:1] + DEFAULT_STREAMS[2:3]:
        rows = frame.filter((pl.col("model") == spec.model) & (pl.col("service") == spec.service) & ~pl.col("failed"))
        lengths = spec.request_lengths
        fit = fit_zipf(rows["request_tokens"].to_numpy(), min_tokens=lengths.min_tokens, max_tokens=lengths.max_tokens)
        assert abs(fit.theta - lengths.theta) < 0.05
        request = rows["request_tokens"].to_numpy().astype(float)
        response = rows["response_tokens"].to_numpy().astype(float)
        slope = np.polyfit(request, response, 1)[0]
        # E[response | request] = p * short_mean + (1 - p) * (intercept + slope * request)
        assert slope == pytest.approx((1 - spec.short_probability) * spec.slope, rel=0.1)
        short = response < spec.short_mean + 3 * spec.short_sd
        assert np.mean(short) == pytest.approx(spec.short_probability, abs=0.05)


def test_burstgpt_csv_round_trip(tmp_path):
    trace = synthetic_burstgpt_trace(days=0.5, seed=3)
    path = write_burstgpt_csv(trace, tmp_path / "synthetic.csv")
    assert path.read_text().splitlines()[0] == (
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"
    )
    loaded = load_trace(path)
    assert loaded.format == "burstgpt" and loaded.num_rows == trace.num_rows
    np.testing.assert_array_equal(loaded.frame["timestamp_s"], np.floor(trace.frame["timestamp_s"]))
    assert loaded.frame["service"].to_list() == trace.frame["service"].to_list()
    assert loaded.frame["failed"].sum() == trace.frame["failed"].sum()
