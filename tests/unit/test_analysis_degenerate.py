"""Degenerate and extreme traces: `analyze` and `workload fit` never crash and never report an undefined
statistic as a number (one request, two requests, constant lengths, zero responses, one window, a trace under an
hour or a day, lengths up to 1e8 tokens, coarse timestamps)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from burstgpt.analysis import characterise
from burstgpt.analysis import fits, temporal
from burstgpt.cli import main
from burstgpt.errors import BurstGPTError
from burstgpt.report.trace_figures import _plot_length_distributions, write_analysis
from burstgpt.tables import conform_to_schema
from burstgpt.trace import TRACE_SCHEMA, Trace
from burstgpt.workload.params import fit_workload_params, read_params

HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


def burstgpt_csv(path: Path, rows: list[tuple[float, str, int, int, str]]) -> Path:
    """A BurstGPT 6-column CSV of (timestamp, model, request, response, 'Conversation'|'API') rows."""
    lines = [f"{t:g},{m},{q},{r},{q + r},{kind} log" for t, m, q, r, kind in rows]
    path.write_text(HEADER + "\n".join(lines) + "\n")
    return path


def trace_of(timestamps, request, response, model="ChatGPT", service="conversation") -> Trace:
    n = len(timestamps)
    frame = pl.DataFrame({
        "timestamp_s": np.asarray(timestamps, dtype=np.float64), "model": [model] * n, "service": [service] * n,
        "request_tokens": np.asarray(request, dtype=np.int64), "response_tokens": np.asarray(response, dtype=np.int64),
        "failed": np.asarray(response) == 0,
    })
    return Trace(conform_to_schema(frame, TRACE_SCHEMA), "memory", "test")


def groups_of(summary: dict) -> dict:
    return {(g["model"], g["service"]): g for g in summary["groups"]}


def test_analyze_degenerate_groups_exits_0_with_dashes_and_summary(tmp_path, capsys):
    # One request (ChatGPT conversation), two requests (GPT-4 API), and 30 requests of one request length with
    # one response length (GPT-4 conversation), all inside 20 minutes: one window, a trace under an hour.
    rows = [(5, "ChatGPT", 100, 50, "Conversation"), (7, "GPT-4", 120, 30, "API"), (9, "GPT-4", 80, 0, "API")]
    rows += [(10 + 37 * i, "GPT-4", 256, 64, "Conversation") for i in range(30)]
    trace = burstgpt_csv(tmp_path / "degenerate.csv", sorted(rows))
    outdir = tmp_path / "out"
    assert main(["analyze", str(trace), "-o", str(outdir)]) == 0
    summary = json.loads((outdir / "summary.json").read_text())
    assert summary["figures"] and all((outdir / name).exists() for name in summary["figures"])
    groups = groups_of(summary)
    single, constant = groups[("ChatGPT", "conversation")], groups[("GPT-4", "conversation")]
    for group in (single, constant):
        assert group["request_zipf"]["zipf_theta"] is None and group["request_zipf"]["ks_stat"] is None
        assert group["request_response_correlation"]["slope"] is None
    assert constant["request_zipf"]["min_tokens"] == constant["request_zipf"]["max_tokens"] == 256
    assert single["arrival_summary"]["gamma_alpha"] is None
    printed = capsys.readouterr().out
    rows_printed = {line.split()[0] + " " + line.split()[1]: line.split() for line in printed.splitlines()
                    if line.startswith(("ChatGPT", "GPT-4"))}
    assert rows_printed["ChatGPT conversation"][-1] == "-"  # theta
    assert rows_printed["GPT-4 conversation"][-1] == "-"
    assert "0.000" not in rows_printed["GPT-4 conversation"][-1]
    # Undefined values are empty in the tables, not NaN.
    assert "NaN" not in (outdir / "response_bimodality.csv").read_text()
    assert "NaN" not in (outdir / "periodicity.csv").read_text()


@pytest.mark.parametrize("case", ["one request", "two requests", "same timestamp", "all failed", "constant response",
                                  "regular arrivals"])
def test_characterise_and_figures_survive(tmp_path, case):
    traces = {
        "one request": trace_of([5.0], [100], [50]),
        "two requests": trace_of([5.0, 9.0], [100, 200], [50, 20]),
        "same timestamp": trace_of([5.0] * 20, np.arange(1, 21), [3] * 20),
        "all failed": trace_of(np.arange(50) * 7.0, np.arange(50) * 3 + 1, [0] * 50),
        "constant response": trace_of(np.arange(50) * 7.0, np.arange(50) * 3 + 1, [40] * 50),
        # Float timestamps of a perfectly regular stream: gaps equal up to float noise.
        "regular arrivals": trace_of(np.arange(100) * 0.7071, np.arange(1, 101), np.full(100, 9)),
    }
    result = characterise(traces[case])
    summary_path = write_analysis(result, tmp_path / "out")
    summary = json.loads(summary_path.read_text())
    group = summary["groups"][0]
    line = group["request_response_correlation"]
    if case == "constant response":
        assert line["slope"] == pytest.approx(0.0, abs=1e-12) and line["pearson_r"] is None
    if case == "all failed":
        assert line["n"] == 0 and line["slope"] is None
    if case == "regular arrivals":
        assert group["arrival_summary"]["gamma_alpha"] is None and group["arrival_summary"]["windows_fitted"] == 0
    if case == "one request":
        assert group["arrival_summary"]["windows_fitted"] == 0
        assert group["burstiness"]["window_5_min"]["mean_bursts_2x_per_day"] is None  # no time observed


def test_huge_lengths_cost_no_table_by_the_longest(tmp_path):
    rng = np.random.default_rng(8)
    n = 3000
    request = rng.integers(1, 5000, n)
    request[::500] = 100_000_000  # a few lengths at the readers' ceiling
    response = rng.integers(0, 3000, n)
    response[7] = 99_999_999
    trace = trace_of(np.sort(rng.uniform(0, 7200, n)).round(), request, response)
    tracemalloc.start()  # traces numpy's allocations
    try:
        result = characterise(trace)
        _plot_length_distributions(result)  # the figure that overlays the fitted Zipf law
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 150e6  # a count per possible length would be 800 MB
    zipf = result.request_zipf.row(0, named=True)
    assert zipf["max_tokens"] == 100_000_000 and zipf["zipf_theta"] > 0


def test_zipf_sums_past_the_exact_terms_match_term_by_term(monkeypatch):
    low, high = 5, 300_000
    at = np.array([4, 5, 6, 999, 1004, 1005, 5000, 123_456, 299_999, 300_000])
    exact = {theta: np.concatenate([[0.0], np.cumsum(fits.zipf_pmf(theta, low, high))])[at - low + 1]
             for theta in (0.0, 0.4, 1.0, 1.0 + 1e-7, 1.8)}
    monkeypatch.setattr(fits, "ZIPF_EXACT_TERMS", 1000)  # Euler-Maclaurin from length 1005 on
    for theta, expected in exact.items():
        np.testing.assert_allclose(fits.zipf_cdf(theta, low, high, at), expected, rtol=1e-9, atol=1e-12)
    rng = np.random.default_rng(3)
    sample = low + np.searchsorted(np.cumsum(fits.zipf_pmf(1.2, low, high)), rng.random(20_000))
    assert fits.fit_zipf(sample, low, high).theta == pytest.approx(1.2, abs=0.03)


def test_fewer_than_two_distinct_lengths_have_no_zipf_exponent():
    with pytest.raises(fits.FitError, match="2 distinct"):
        fits.fit_zipf(np.full(40, 256))


def test_partial_hours_at_the_trace_ends_are_not_quiet_hours():
    # Constant Poisson traffic, 0.5 requests/s, from 00:40 to 05:20: hours 0 and 5 are observed for 20 minutes.
    rng = np.random.default_rng(2)
    timestamps = 2400 + np.cumsum(rng.exponential(2.0, 9000))
    timestamps = timestamps[timestamps < 5 * 3600 + 1200]
    frame = trace_of(timestamps, np.full(timestamps.size, 10), np.full(timestamps.size, 5)).frame
    bins = temporal.time_bins(frame)
    profile = temporal.hour_of_day_profile(temporal.hourly_requests(bins))
    per_hour = dict(zip(profile["hour_of_day"].to_list(), profile["mean_requests"].to_list(), strict=True))
    for hour in (0, 5):
        assert per_hour[hour] == pytest.approx(1800, rel=0.15)  # counts of 20 minutes would be ~600
    daily = temporal.daily_requests(bins)
    assert daily["observed_s"][0] == pytest.approx(timestamps[-1] - timestamps[0])
    weekday = temporal.day_of_week_profile(daily).row(0, named=True)
    assert weekday["mean_requests"] == pytest.approx(0.5 * 86400, rel=0.05)  # per day, not per 4.7 hours


def test_short_trace_figures_label_what_they_count(tmp_path):
    rng = np.random.default_rng(4)
    timestamps = np.sort(rng.uniform(3600, 3 * 3600, 600)).round()
    result = characterise(trace_of(timestamps, rng.integers(1, 900, 600), rng.integers(1, 400, 600)))
    from burstgpt.report.trace_figures import _plot_burstiness, _plot_gamma_arrivals

    burstiness = _plot_burstiness(result)
    for ax in burstiness.axes:
        assert "h observed" in ax.get_ylabel()
        assert ax.get_ylim()[0] == 0  # bars from zero, not one point on a -0.04..0.04 axis
    arrivals = _plot_gamma_arrivals(result)
    arrivals.canvas.draw()
    for ax in arrivals.axes:
        labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)]
        assert not any("$" in text or "times" in text for text in labels), labels  # no 4x10^0 mathtext
        assert ax.get_legend() is None or ax.get_legend()._loc != 0 or ax is arrivals.axes[3]
    assert arrivals.legends  # the groups' legend sits above the panels
    assert result.burstiness_summary["observed_days"][0] == pytest.approx((timestamps[-1] - timestamps[0]) / 86400)


def poisson_rounded(rate_rps: float, duration_s: float, quantum_s: float, rng) -> np.ndarray:
    arrivals = np.cumsum(rng.exponential(1.0 / rate_rps, int(rate_rps * duration_s * 1.1)))
    return np.floor(arrivals[arrivals < duration_s] / quantum_s) * quantum_s


def test_coarse_quantum_is_detected_and_ties_spread_within_it():
    rng = np.random.default_rng(12)
    stamps = poisson_rounded(5.0, 4 * 3600, 2.0, rng)  # 2-s stamps: a multiple of 1 s, but 2 s apart
    resolution = fits.time_resolution(stamps)
    assert (resolution.resolution_s, resolution.method) == (2.0, "gap quantum")
    assert resolution.tied_fraction > 0.8
    windows = fits.gamma_fit_per_window(stamps, window_s=1200.0)
    assert windows["alpha"].median() == pytest.approx(1.0, rel=0.1)
    # Continuous stamps with a few exact ties stay continuous; whole seconds at a low rate stay at 1 s.
    continuous = np.cumsum(rng.gamma(0.3, 1 / 0.3, 20_000))
    assert fits.time_resolution(continuous).resolution_s is None
    assert fits.time_resolution(poisson_rounded(0.05, 20 * 3600, 1.0, rng)).resolution_s == 1.0


def test_mooncake_style_millisecond_stamps_of_3s_ticks_through_cli(tmp_path, capsys):
    # Mooncake's conversation trace: ms timestamps that advance in ~3000-ms ticks (5999, 9000, ...), most tied.
    rng = np.random.default_rng(6)
    stamps = poisson_rounded(4.0, 2 * 3600, 3.0, rng)
    instants, which = np.unique(stamps, return_inverse=True)
    ms = (instants * 1000 + rng.integers(-1, 2, instants.size)).astype(np.int64)[which]
    path = tmp_path / "conversation.jsonl"
    path.write_text("".join(json.dumps({"timestamp": int(t), "input_length": int(q), "output_length": int(r)}) + "\n"
                            for t, q, r in zip(ms, rng.integers(100, 9000, ms.size), rng.integers(1, 900, ms.size),
                                               strict=True)))
    outdir = tmp_path / "out"
    assert main(["analyze", str(path), "-o", str(outdir), "--no-figures"]) == 0
    summary = json.loads((outdir / "summary.json").read_text())
    assert summary["timestamps"]["time_resolution_s"] == 3.0
    assert summary["timestamps"]["ties_spread"] is True
    assert summary["timestamps"]["tied_arrival_fraction"] > 0.8
    arrivals = summary["groups"][0]["arrival_summary"]
    assert arrivals["time_resolution_s"] == 3.0
    assert arrivals["window_alpha_median"] == pytest.approx(1.0, rel=0.1)  # ~0.1 with ties spread over 1 ms
    assert "every 3 s" in capsys.readouterr().out


def test_shared_mooncake_trace_analyses(shared_traces, tmp_path):
    path = shared_traces / "mooncake_synthetic_trace.jsonl"
    if not path.exists():
        pytest.skip("mooncake_synthetic_trace.jsonl not present")
    assert main(["analyze", str(path), "-o", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["timestamps"]["time_resolution_s"] == 0.001  # whole milliseconds, few ties


def test_workload_fit_on_constant_lengths_and_refusals(tmp_path, capsys):
    rows = [(3 * i, "ChatGPT", 512, 40 + i % 7, "Conversation") for i in range(60)]
    trace = burstgpt_csv(tmp_path / "constant.csv", rows)
    out = tmp_path / "params.json"
    assert main(["workload", "fit", str(trace), "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["request_tokens"]["theta"] is None and data["request_tokens"]["min_tokens"] == 512
    assert "linear_fit" not in data["response_tokens"]  # request lengths do not vary: no line
    assert data["arrivals"]["timestamps"]["time_resolution_s"] == 1.0
    params = read_params(out)
    assert (params.zipf.min_tokens, params.zipf.max_tokens, params.zipf_theta) == (512, 512, None)
    assert "theta 0" not in capsys.readouterr().out
    regular = trace_of(np.arange(100) * 0.7071, np.arange(1, 101), np.full(100, 9))  # all gaps equal
    with pytest.raises(BurstGPTError, match="memory: cannot fit the arrivals"):
        fit_workload_params(regular)
    too_wide = trace_of(np.cumsum(np.random.default_rng(1).exponential(1.0, 50)), np.r_[np.arange(1, 50), 60_000_000],
                        np.full(50, 9))
    with pytest.raises(BurstGPTError, match="memory: request lengths"):
        fit_workload_params(too_wide)
