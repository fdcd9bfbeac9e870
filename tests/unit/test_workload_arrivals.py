"""Arrival processes, schedules, mirroring and replay against known truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from burstgpt.analysis.fits import fit_gamma, gamma_fit_per_window, interarrival_gaps
from burstgpt.errors import BurstGPTError
from burstgpt.trace import load_trace
from burstgpt.workload.arrivals import (
    ParamSchedule,
    constant_arrivals,
    gamma_arrivals,
    mirror_schedule,
    poisson_arrivals,
    quiet_opening_end,
    replay_arrivals,
    scheduled_arrivals,
    shape_values,
    shaped_schedule,
)
from burstgpt.workload.generate import select_replay
from burstgpt.workload.params import window_table



def _positive_gaps(arrivals: np.ndarray) -> np.ndarray:
    gaps = np.diff(arrivals)
    # With alpha < 1 a few gaps are below float64 resolution at t ~ 1e4 s and vanish in the cumulative sum.
    assert np.mean(gaps == 0) < 0.002
    return gaps[gaps > 0]


@pytest.mark.parametrize(("alpha", "beta_s"), [(0.25, 2.0), (0.5, 2.0), (1.0, 5.0), (3.0, 0.1)])
def test_gamma_arrivals_recover_alpha_and_beta_within_5_percent(alpha, beta_s):
    arrivals = gamma_arrivals(50_000, alpha, beta_s, np.random.default_rng(7))
    assert arrivals.size == 50_000 and arrivals[0] == 0 and np.all(np.diff(arrivals) >= 0)
    fit = fit_gamma(_positive_gaps(arrivals))
    assert fit.alpha == pytest.approx(alpha, rel=0.05)
    assert fit.beta_s == pytest.approx(beta_s, rel=0.05)


def test_poisson_and_constant_special_cases():
    poisson = poisson_arrivals(50_000, 4.0, np.random.default_rng(1))
    fit = fit_gamma(np.diff(poisson))
    assert fit.alpha == pytest.approx(1.0, rel=0.05)
    assert 1 / np.diff(poisson).mean() == pytest.approx(4.0, rel=0.03)
    constant = constant_arrivals(5, 2.0)
    np.testing.assert_array_equal(constant, [0.0, 0.5, 1.0, 1.5, 2.0])


def test_same_seed_same_arrivals_and_bad_parameters_rejected():
    a = gamma_arrivals(1000, 0.5, 1.0, np.random.default_rng(3))
    b = gamma_arrivals(1000, 0.5, 1.0, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(BurstGPTError):
        gamma_arrivals(10, -1.0, 1.0, np.random.default_rng(0))


def test_shape_values_by_hand():
    np.testing.assert_allclose(shape_values("linear", 1, 3, 3), [1, 2, 3])
    np.testing.assert_allclose(shape_values("quadratic", 2, 0.5, 5), [2, 0.875, 0.5, 0.875, 2])
    np.testing.assert_allclose(shape_values("step", 1, 4, 4), [1, 1, 4, 4])
    np.testing.assert_allclose(shape_values("constant", 7, 9, 2), [7, 7])


def test_quadratic_alpha_schedule_shows_in_per_window_fits():
    # The paper's default: quadratic alpha (dip and recovery), here at a constant 5 req/s so only burstiness moves.
    steps, window = 15, 600.0
    alpha = shape_values("quadratic", 2.0, 0.3, steps)
    schedule = ParamSchedule.regular(alpha, 1.0 / (alpha * 5.0), window, "seconds")
    arrivals = scheduled_arrivals(schedule, np.random.default_rng(11), duration_s=steps * window)
    fits = gamma_fit_per_window(arrivals, window_s=window, min_arrivals=10, start_s=0.0).sort("window_start_s")
    assert fits.height == steps
    fitted = fits["alpha"].to_numpy()
    np.testing.assert_allclose(fitted, alpha, rtol=0.15)
    leading, _, _ = np.polyfit(np.arange(steps), fitted, 2)
    assert leading > 0  # convex: a dip, not a trend
    assert abs(int(np.argmin(fitted)) - steps // 2) <= 2
    np.testing.assert_allclose(fits["n_arrivals"].to_numpy(), 3000, rtol=0.1)


def test_request_indexed_schedule_changes_every_n_requests():
    # alpha linear 0.5 -> 2 and beta linear 2 -> 0.25, changing every 5000 requests.
    schedule = shaped_schedule((0.5, 2.0), (2.0, 0.25), "linear", "linear", 4, 5000, "requests")
    arrivals = scheduled_arrivals(schedule, np.random.default_rng(5), num_requests=20_000)
    assert arrivals.size == 20_000
    gaps = np.diff(arrivals)  # gap i-1 precedes request i, drawn with the step of request i
    for k in range(4):
        block = gaps[max(k * 5000 - 1, 0) : (k + 1) * 5000 - 1]
        fit = fit_gamma(block[block > 0])
        assert fit.alpha == pytest.approx(schedule.alpha[k], rel=0.07)
        assert fit.beta_s == pytest.approx(schedule.beta_s[k], rel=0.1)


def test_request_schedule_bounded_by_duration_only():
    schedule = ParamSchedule.regular(np.array([1.0, 1.0]), np.array([0.1, 0.01]), 100, "requests")
    arrivals = scheduled_arrivals(schedule, np.random.default_rng(2), duration_s=50.0)
    assert arrivals.max() < 50.0
    # 100 requests at 10 req/s take ~10 s; the rest hold the last step at 100 req/s.
    assert arrivals.size == pytest.approx(100 + 40 * 100, rel=0.05)


def test_time_schedule_rates_silent_windows_and_cycling():
    schedule = ParamSchedule(
        np.array([0.0, 100.0, 200.0]),
        np.array([0.5, 1.0, 2.0]),
        np.array([1.0 / (0.5 * 10), np.inf, 1.0 / (2.0 * 20)]),
        "seconds",
        300.0,
        after_end="cycle",
    )
    arrivals = scheduled_arrivals(schedule, np.random.default_rng(9), duration_s=1200.0)
    counts = np.bincount((arrivals // 100).astype(int), minlength=12)
    # Rates 10, 0 and 20 req/s in every 300 s cycle.
    np.testing.assert_allclose(counts[0::3], 1000, rtol=0.2)
    assert np.all(counts[1::3] == 0)
    np.testing.assert_allclose(counts[2::3], 2000, rtol=0.1)


def test_time_schedule_starts_at_first_live_window():
    schedule = ParamSchedule(np.array([0.0, 50.0]), np.array([1.0, 1.0]), np.array([np.inf, 0.1]), "seconds", 100.0)
    arrivals = scheduled_arrivals(schedule, np.random.default_rng(0), duration_s=100.0)
    assert arrivals[0] == 50.0 and arrivals.size == pytest.approx(500, rel=0.15)


def test_windows_with_few_arrivals_still_get_their_expected_count():
    # Very bursty (alpha 0.2, CV 2.2) and only ~2 or ~20 arrivals per 10 s window: a gap drawn in a slow
    # window must not swallow the fast window after it (the time-rescaled process keeps each window's rate).
    num_windows = 2000
    rate = np.where(np.arange(num_windows) % 2 == 0, 0.2, 2.0)
    alpha = np.full(num_windows, 0.2)
    schedule = ParamSchedule.regular(alpha, 1.0 / (alpha * rate), 10.0, "seconds")
    arrivals = scheduled_arrivals(schedule, np.random.default_rng(6), duration_s=num_windows * 10.0)
    counts = np.bincount((arrivals // 10).astype(int), minlength=num_windows)
    assert counts[0::2].mean() == pytest.approx(2.0, rel=0.1)
    assert counts[1::2].mean() == pytest.approx(20.0, rel=0.05)


def test_schedule_rejects_bad_tables():
    with pytest.raises(BurstGPTError):
        ParamSchedule(np.array([1.0]), np.array([1.0]), np.array([1.0]), "seconds", 2.0)
    with pytest.raises(BurstGPTError):
        ParamSchedule(np.array([0.0]), np.array([-1.0]), np.array([1.0]), "seconds", 2.0)


def test_replay_at_scale_100_keeps_order_and_divides_every_gap(burstgpt_head):
    trace = load_trace(burstgpt_head)
    timestamps = trace.frame["timestamp_s"].to_numpy()
    replayed = replay_arrivals(timestamps, 100.0)
    assert replayed[0] == 0
    np.testing.assert_allclose(np.diff(replayed), np.diff(timestamps) / 100.0, rtol=1e-12, atol=1e-9)
    selection = select_replay(trace, 100.0)
    assert selection.frame["request_tokens"].to_list() == trace.frame["request_tokens"].to_list()
    gpt4 = select_replay(trace, 10.0, models=["GPT-4"], services=["conversation"], start_s=3600, end_s=36000)
    kept = gpt4.frame
    assert set(kept["model"].unique()) == {"GPT-4"} and set(kept["service"].unique()) == {"conversation"}
    assert kept["timestamp_s"].min() >= 3600 and kept["timestamp_s"].max() < 36000
    expected = trace.frame.filter(
        (pl.col("model") == "GPT-4") & (pl.col("service") == "conversation") & pl.col("timestamp_s").is_between(
            3600, 36000, closed="left")
    )
    assert kept.height == expected.height
    np.testing.assert_allclose(gpt4.arrival_s, (expected["timestamp_s"] - expected["timestamp_s"][0]) / 10.0)


def test_quiet_opening_is_skipped_only_when_there_is_one():
    busy_day = np.sort(np.random.default_rng(0).uniform(36000, 72000, 2000))
    night = np.sort(np.random.default_rng(1).uniform(0, 36000, 50))
    timestamps = np.concatenate([night, busy_day])
    end = quiet_opening_end(timestamps, 1200.0)
    assert 34800 <= end <= 37200
    assert quiet_opening_end(busy_day, 1200.0) == busy_day[0]


def test_quiet_opening_of_the_real_burstgpt_head(burstgpt_head):
    trace = load_trace(burstgpt_head)
    selection = select_replay(trace, 1.0, skip_quiet_start=True)
    # The real head: busy first 20 minutes, a quiet night, the working day from ~8 h on.
    assert 6 * 3600 <= selection.origin_s <= 9 * 3600
    assert selection.frame.height > trace.num_rows / 2


def _mirror_check(path: Path, window_s: float, target_rps: float, compression: float, seed: int):
    trace = load_trace(path)
    timestamps = trace.frame["timestamp_s"].to_numpy()
    windows = window_table(timestamps, window_s, 10)
    overall_alpha = fit_gamma(interarrival_gaps(timestamps)).alpha
    schedule = mirror_schedule(windows, target_rps, time_compression=compression, fallback_alpha=overall_alpha)
    arrivals = scheduled_arrivals(schedule, np.random.default_rng(seed), duration_s=schedule.end)
    mean_rate = arrivals.size / schedule.end
    generated_window = window_s / compression
    generated_counts = np.bincount((arrivals // generated_window).astype(int), minlength=windows.height)
    correlation = np.corrcoef(generated_counts[: windows.height], windows["n_arrivals"].to_numpy())[0, 1]
    fitted = windows.filter(pl.col("alpha").is_not_null())
    np.testing.assert_allclose(schedule.alpha[: windows.height][windows["alpha"].is_not_null().to_numpy()],
                               fitted["alpha"].to_numpy())  # burstiness kept
    return mean_rate, correlation


def test_mirror_burstgpt_head_hits_target_rate_and_follows_window_counts(burstgpt_head):
    # 400 rows over ~10.4 h: the paper's 20-minute windows give 32 windows with 0-73 arrivals each, enough
    # contrast (a busy day after a quiet night) for a meaningful correlation.
    mean_rate, correlation = _mirror_check(burstgpt_head, 1200.0, 20.0, 10.0, seed=3)
    assert mean_rate == pytest.approx(20.0, rel=0.02)
    assert correlation > 0.9


def test_mirror_azure_hour_hits_target_rate_and_follows_window_counts(azure_code):
    # One hour: 20-minute windows would give 3 points, so correlate per 60 s window (60 windows of ~150).
    mean_rate, correlation = _mirror_check(azure_code, 60.0, 400.0, 2.0, seed=4)
    assert mean_rate == pytest.approx(400.0, rel=0.02)
    assert correlation > 0.9


# ------------------------------------------------------------------------------------------------ families per step


def test_a_single_family_named_per_step_draws_exactly_the_plain_schedule():
    # The per-step path must not change what the single-process path draws (same seed, same arrivals).
    alpha = shape_values("quadratic", 2.0, 0.3, 12)
    for unit, step, bound in (("seconds", 60.0, {"duration_s": 720.0}), ("requests", 50, {"num_requests": 600})):
        plain = ParamSchedule.regular(alpha, 1.0 / (alpha * 5.0), step, unit)
        named = ParamSchedule(plain.starts, plain.alpha, plain.beta_s, unit, plain.end,
                              step_process=np.full(12, "gamma"))
        np.testing.assert_array_equal(scheduled_arrivals(plain, np.random.default_rng(4), **bound),
                                      scheduled_arrivals(named, np.random.default_rng(4), **bound))


def test_per_step_families_draw_each_windows_own_gaps():
    # 600 s windows alternating Gamma(0.5) and Weibull(0.5) at 5 req/s: each family's gaps, pooled over its
    # windows, recover its own shape; the two differ in CV (2.0 vs 2.24), so a mix-up would show.
    from scipy import stats

    from burstgpt.workload.processes import get_process

    kinds = np.array(["gamma", "weibull"] * 6)
    shape = np.full(12, 0.5)
    unit_mean = np.where(kinds == "gamma", 0.5, get_process("weibull").unit_mean(shape))
    schedule = ParamSchedule(np.arange(12) * 600.0, shape, 1.0 / (unit_mean * 5.0), "seconds", 7200.0,
                             step_process=kinds)
    arrivals = scheduled_arrivals(schedule, np.random.default_rng(8), duration_s=7200.0)
    window = (arrivals // 600).astype(int)
    inside = window[1:] == window[:-1]
    gaps, gap_window = np.diff(arrivals)[inside], window[1:][inside]
    gamma_gaps, weibull_gaps = gaps[gap_window % 2 == 0], gaps[gap_window % 2 == 1]
    assert fit_gamma(gamma_gaps[gamma_gaps > 0]).alpha == pytest.approx(0.5, rel=0.05)
    assert stats.weibull_min.fit(weibull_gaps[weibull_gaps > 0], floc=0)[0] == pytest.approx(0.5, rel=0.05)
    np.testing.assert_allclose(np.bincount(window, minlength=12), 3000, rtol=0.12)
    frame = schedule.to_frame()
    assert frame["process"].to_list() == kinds.tolist()
    np.testing.assert_allclose(frame["mean_rate_rps"].to_numpy(), 5.0)


def test_a_stationary_start_begins_mid_gap():
    # In equilibrium the first arrival comes after the forward-recurrence time, mean E[G^2] / (2 E[G]) =
    # mean gap x (1 + CV^2) / 2: 1.5 s for Gamma(0.5) gaps of mean 1 s (CV^2 = 2), not at 0.
    schedule = ParamSchedule.regular(np.array([0.5]), np.array([2.0]), 1000.0, "seconds")
    first = np.array([scheduled_arrivals(schedule, np.random.default_rng(seed), num_requests=1,
                                         stationary_start=True)[0] for seed in range(3000)])
    assert np.all(first > 0)
    assert first.mean() == pytest.approx(1.5, rel=0.08)
    assert scheduled_arrivals(schedule, np.random.default_rng(0), num_requests=1)[0] == 0.0


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.floats(min_value=0.02, max_value=500.0))
def test_weibull_shape_for_cv_inverts_its_cv(shape):
    from burstgpt.workload.processes import get_process

    weibull = get_process("weibull")
    cv = weibull.cv(np.array([shape]))
    assert weibull.shape_for_cv(cv)[0] == pytest.approx(shape, rel=1e-8)
    gamma = get_process("gamma")
    assert gamma.cv(gamma.shape_for_cv(cv))[0] == pytest.approx(cv[0], rel=1e-12)


def test_weibull_cv_formula_by_hand():
    from math import gamma as gamma_function

    from burstgpt.workload.processes import get_process

    weibull = get_process("weibull")
    for k in (0.375, 1.0, 2.0):
        by_hand = np.sqrt(gamma_function(1 + 2 / k) / gamma_function(1 + 1 / k) ** 2 - 1)
        assert weibull.cv(np.array([k]))[0] == pytest.approx(by_hand, rel=1e-12)
    assert weibull.shape_for_cv(np.array([1.0]))[0] == pytest.approx(1.0, rel=1e-10)  # exponential


def test_mirrored_windows_drawn_from_another_family_keep_rate_and_cv():
    fits = pl.DataFrame({"window_start_s": [0.0, 600.0, 1200.0], "window_end_s": [600.0, 1200.0, 1800.0],
                         "n_arrivals": [600, 0, 1800], "alpha": [0.25, None, 4.0]})
    gamma = mirror_schedule(fits, 2.0)
    weibull = mirror_schedule(fits, 2.0, process="weibull")
    from burstgpt.workload.processes import get_process

    assert weibull.process == "weibull"
    np.testing.assert_allclose(get_process("weibull").cv(weibull.alpha), 1 / np.sqrt(gamma.alpha), rtol=1e-10)
    np.testing.assert_allclose(weibull.mean_gap_s(), gamma.mean_gap_s(), rtol=1e-12)
    arrivals = scheduled_arrivals(weibull, np.random.default_rng(1), duration_s=1800.0)
    np.testing.assert_allclose(np.bincount((arrivals // 600).astype(int), minlength=3), [900, 0, 2700], rtol=0.25)
