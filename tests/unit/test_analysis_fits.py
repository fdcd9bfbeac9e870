"""Fits against known truth: Gamma renewal streams, per-window shape patterns, Zipf samples, scipy references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from burstgpt.analysis.fits import (
    FitError,
    dequantize_timestamps,
    detect_timestamp_resolution,
    fit_gamma,
    fit_zipf,
    gamma_fit_per_window,
    interarrival_gaps,
)


def gamma_window_stream(alphas, window_s, rate_rps, rng, gap_sampler=None) -> np.ndarray:
    """Arrival times (s): window i holds a renewal stream with Gamma(alphas[i], 1/(alphas[i]*rate)) gaps."""
    parts = []
    for i, alpha in enumerate(alphas):
        count = int(window_s * rate_rps * 2) + 100
        gaps = rng.gamma(alpha, 1.0 / (alpha * rate_rps), count) if gap_sampler is None else gap_sampler(i, count)
        times = i * window_s + np.cumsum(gaps)
        parts.append(times[times < (i + 1) * window_s])
    return np.concatenate(parts)


@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 2.0), (2.0, 0.25), (0.25, 10.0)])
def test_gamma_renewal_stream_recovered_within_5_percent(alpha, beta):
    rng = np.random.default_rng(11)
    timestamps = np.cumsum(rng.gamma(alpha, beta, 50_000))
    fit = fit_gamma(interarrival_gaps(timestamps))
    assert fit.alpha == pytest.approx(alpha, rel=0.05)
    assert fit.beta_s == pytest.approx(beta, rel=0.05)
    assert fit.cv == pytest.approx(1 / np.sqrt(fit.alpha))
    assert fit.n >= 49_900  # a few float ties (gaps below the ulp of the cumulative sum) are dropped
    assert fit.ks_pvalue > 0.01  # the right family fits
    # Same maximum as scipy's optimiser.
    ref_alpha, _, ref_beta = stats.gamma.fit(np.diff(timestamps)[np.diff(timestamps) > 0], floc=0)
    assert fit.alpha == pytest.approx(ref_alpha, rel=1e-5)
    assert fit.beta_s == pytest.approx(ref_beta, rel=1e-5)


def test_fit_gamma_rejects_quantised_gaps_and_bad_samples():
    rng = np.random.default_rng(1)
    whole_seconds = np.floor(np.cumsum(rng.exponential(0.5, 1000)))
    with pytest.raises(FitError, match="interarrival_gaps"):
        fit_gamma(np.diff(whole_seconds))
    with pytest.raises(FitError):
        fit_gamma(np.array([1.0, -2.0, 3.0]))
    with pytest.raises(FitError):
        fit_gamma(np.array([1.0]))
    with pytest.raises(FitError):
        fit_gamma(np.array([2.0, 2.0, 2.0]))


def test_per_window_fits_recover_alpha_pattern():
    rng = np.random.default_rng(5)
    alphas = [0.3, 0.6, 1.0, 2.0, 4.0, 0.3, 4.0]
    window_s, rate = 1200.0, 2.0
    timestamps = gamma_window_stream(alphas, window_s, rate, rng)
    # A sparse window (5 arrivals) and an empty one after the pattern.
    tail = np.array([len(alphas) * window_s + 10.0 * k for k in range(1, 6)])
    timestamps = np.concatenate([timestamps, tail, [(len(alphas) + 2) * window_s + 1.0]])
    table = gamma_fit_per_window(timestamps, window_s=window_s, min_arrivals=10)
    assert table.height == len(alphas) + 3
    counts = np.bincount((timestamps // window_s).astype(int))
    assert table["n_arrivals"].to_list() == counts.tolist()
    assert table["window_start_s"].to_list() == [i * window_s for i in range(table.height)]
    fitted = table.head(len(alphas))
    np.testing.assert_allclose(fitted["alpha"].to_numpy(), alphas, rtol=0.10)
    np.testing.assert_allclose(fitted["beta_s"].to_numpy(), 1 / (np.array(alphas) * rate), rtol=0.12)
    np.testing.assert_allclose(fitted["cv"].to_numpy(), 1 / np.sqrt(fitted["alpha"].to_numpy()))
    np.testing.assert_allclose(fitted["rate_rps"].to_numpy(), counts[: len(alphas)] / window_s)
    for column in ("alpha", "beta_s", "cv", "ks_stat", "aic_gamma", "best_model"):
        assert table[column].slice(len(alphas)).null_count() == 3, column


def test_window_fit_equals_scipy_fits_and_kstest():
    rng = np.random.default_rng(8)
    timestamps = np.cumsum(rng.gamma(0.7, 3.0, 3000))
    table = gamma_fit_per_window(timestamps, window_s=2000.0)
    row = table.row(1, named=True)
    gaps = np.diff(timestamps[(timestamps >= 2000.0) & (timestamps < 4000.0)])
    assert row["n_arrivals"] == gaps.size + 1
    assert row["mean_gap_s"] == pytest.approx(gaps.mean())
    for name, family, k in (
        ("gamma", stats.gamma, 2),
        ("weibull", stats.weibull_min, 2),
        ("lognormal", stats.lognorm, 2),
        ("exponential", stats.expon, 1),
    ):
        params = family.fit(gaps, floc=0)
        reference_aic = 2 * k - 2 * family.logpdf(gaps, *params).sum()
        assert row[f"aic_{name}"] == pytest.approx(reference_aic, rel=1e-7, abs=1e-6), name
    reference_ks = stats.kstest(gaps, stats.gamma(row["alpha"], scale=row["beta_s"]).cdf).statistic
    assert row["ks_stat"] == pytest.approx(reference_ks, abs=1e-5)


def test_interpolated_ks_statistic_matches_scipy_across_shapes():
    rng = np.random.default_rng(12)
    alphas = [0.05, 0.3, 1.0, 5.0, 50.0, 200.0]
    timestamps = gamma_window_stream(alphas, 1000.0, 2.0, rng)
    table = gamma_fit_per_window(timestamps, window_s=1000.0)
    for i, row in enumerate(table.iter_rows(named=True)):
        inside = timestamps[(timestamps >= i * 1000.0) & (timestamps < (i + 1) * 1000.0)]
        gaps = np.diff(inside)
        gaps = gaps[gaps > 0]
        reference = stats.kstest(gaps, stats.gamma(row["alpha"], scale=row["beta_s"]).cdf).statistic
        assert row["ks_stat"] == pytest.approx(reference, abs=1e-5), alphas[i]


def test_best_model_by_aic_picks_the_generating_family():
    rng = np.random.default_rng(3)
    samplers = {
        0: lambda n: rng.gamma(0.4, 1.25, n),
        1: lambda n: rng.lognormal(-1.0, 1.5, n),
        2: lambda n: 0.6 * rng.weibull(2.5, n),
    }
    timestamps = gamma_window_stream([1, 1, 1], 3000.0, 2.0, rng, gap_sampler=lambda i, n: samplers[i](n))
    table = gamma_fit_per_window(timestamps, window_s=3000.0)
    assert table["best_model"].to_list() == ["gamma", "lognormal", "weibull"]


def test_whole_second_timestamps_are_spread_before_fitting():
    rng = np.random.default_rng(21)
    poisson = np.cumsum(rng.exponential(0.7, 200_000))  # about 1.4 arrivals per second: many ties when floored
    floored = np.floor(poisson)
    assert detect_timestamp_resolution(floored) == 1.0
    assert detect_timestamp_resolution(poisson) is None
    spread = gamma_fit_per_window(floored, window_s=3600.0)
    # A Poisson stream's alpha is 1; spreading within the second restores it.
    assert spread["alpha"].drop_nulls().mean() == pytest.approx(1.0, rel=0.03)
    # Fitting the integer gaps with ties dropped (no spreading) describes the rounding instead.
    unspread = gamma_fit_per_window(floored, window_s=3600.0, resolution_s=0)
    assert abs(unspread["alpha"].drop_nulls().mean() - 1.0) > 0.3
    # Continuous timestamps pass through untouched; spreading is seeded.
    np.testing.assert_array_equal(dequantize_timestamps(poisson), poisson)
    np.testing.assert_array_equal(dequantize_timestamps(floored, seed=4), dequantize_timestamps(floored, seed=4))
    spread_once = dequantize_timestamps(floored, seed=4)
    assert np.all((spread_once >= np.sort(floored)) & (spread_once < np.sort(floored) + 1.0))
    ms = np.round(poisson, 3)
    assert detect_timestamp_resolution(ms) == 0.001


def bounded_zipf_sample(theta, low, high, size, rng) -> np.ndarray:
    k = np.arange(low, high + 1)
    pmf = k.astype(float) ** -theta
    return rng.choice(k, size=size, p=pmf / pmf.sum())


@pytest.mark.parametrize(("theta", "low", "high"), [(1.1, 1, 8000), (0.5, 20, 4000), (2.0, 1, 2000)])
def test_zipf_exponent_recovered_within_0_05(theta, low, high):
    rng = np.random.default_rng(2)
    sample = bounded_zipf_sample(theta, low, high, 50_000, rng)
    fit = fit_zipf(sample, min_tokens=low, max_tokens=high)
    assert fit.theta == pytest.approx(theta, abs=0.05)
    assert (fit.min_tokens, fit.max_tokens, fit.n) == (low, high, 50_000)
    assert fit.ks_stat < 0.01
    # The wrong exponent fits visibly worse.
    assert fit_zipf(bounded_zipf_sample(theta + 0.5, low, high, 50_000, rng), low, high).theta > theta + 0.4


def test_zipf_defaults_and_bad_input():
    rng = np.random.default_rng(4)
    sample = bounded_zipf_sample(1.1, 5, 500, 10_000, rng)
    fit = fit_zipf(sample)
    assert (fit.min_tokens, fit.max_tokens) == (sample.min(), sample.max())
    uniform = rng.integers(1, 1001, 20_000)
    assert fit_zipf(uniform, 1, 1000).theta < 0.02
    with pytest.raises(FitError):
        fit_zipf(np.array([0, 3, 4]))
    with pytest.raises(FitError):
        fit_zipf(np.array([], dtype=int))
