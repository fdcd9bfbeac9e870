"""Distribution fits for traces: Gamma inter-arrival times (overall and per time window, against exponential,
Weibull and lognormal by AIC) and the bounded discrete power law (Zipf) of request lengths.

Everything is maximum likelihood. The per-window fits are vectorised across windows: closed-form starts
(Minka's for the Gamma shape, the log-variance moment for the Weibull shape) followed by a few Newton steps on
all windows at once with `scipy.special`, sums per window by `np.bincount`, and one sort of all gaps for the
Kolmogorov-Smirnov statistics. Thousands of windows take well under a second.

Coarse timestamps. BurstGPT logs arrival times in whole seconds, so many inter-arrival gaps are exactly 0 and
every gap is an integer; a continuous likelihood then breaks (log 0) or, if zeros are dropped, describes the
rounding rather than the traffic. Mooncake writes milliseconds but its conversation trace advances in ~3-s
ticks (90 % ties). `time_resolution` finds the effective recording step: the coarsest of 1 s, 0.1 s, 0.01 s or
1 ms that every timestamp is a multiple of, or, when many arrivals tie, a coarser quantum that the positive gaps
are multiples of (3 s for Mooncake). `dequantize_timestamps` then places each arrival at a seeded uniform
position inside its recorded interval [t, t + resolution) and re-sorts. For a Poisson process
this restores exactly the law of the unrounded arrivals (given the count in a second, arrival positions are
uniform order statistics); for clustered traffic (alpha < 1) it smooths clustering below the resolution, so
alpha of windows whose mean gap is only a few seconds is biased up (towards 1); windows with mean gaps well
above the resolution are unaffected. Timestamps with no common resolution (continuous, e.g. Azure's 100 ns
stamps, generated streams) are left untouched, so the spreading cannot bias their fits; exact ties among them
(gaps of 0) are dropped before fitting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
from scipy import optimize, special, stats

from burstgpt.errors import BurstGPTError

#: Resolutions (seconds) `detect_timestamp_resolution` tries, coarsest first.
CANDIDATE_RESOLUTIONS_S = (1.0, 0.1, 0.01, 0.001)

#: Largest fraction of exact-zero samples `fit_gamma` leaves out (as float ties) rather than refusing.
MAX_TIED_FRACTION = 1e-2

#: Samples whose largest is within this relative distance of their smallest are "all equal" to the Gamma fits:
#: their shape alpha (~ 2 / (relative spread)^2) is past what float64 logs resolve, and a perfectly regular
#: stream has no Gamma shape to report.
MIN_RELATIVE_SPREAD = 1e-4

#: Models compared per window by AIC (`aic_<name>` columns of `gamma_fit_per_window`).
ARRIVAL_MODELS = ("gamma", "exponential", "weibull", "lognormal")

#: Columns of `gamma_fit_per_window`, in order.
WINDOW_FIT_COLUMNS = (
    "window_start_s", "window_end_s", "n_arrivals", "rate_rps", "mean_gap_s", "alpha", "beta_s", "cv",
    "ks_stat", "aic_gamma", "aic_exponential", "aic_weibull", "aic_lognormal", "best_model",
)


class FitError(BurstGPTError, ValueError):
    """Samples a fit cannot use (too few, non-positive, not finite). Shown by the CLI as one line."""


@dataclass(frozen=True)
class GammaFit:
    """Gamma(alpha, beta) maximum-likelihood fit: shape `alpha`, scale `beta_s` (seconds, mean = alpha*beta),
    `cv` = 1/sqrt(alpha), sample mean `mean_s` (seconds), `n` samples, and the Kolmogorov-Smirnov statistic of the
    samples against the fitted distribution with its nominal p-value (nominal: the parameters were estimated from
    the same samples, so the true p-value is larger)."""

    alpha: float
    beta_s: float
    cv: float
    mean_s: float
    n: int
    ks_stat: float
    ks_pvalue: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ZipfFit:
    """Bounded discrete power law fit: P(k) = k**-theta / sum_{j=min}^{max} j**-theta for integer k in
    [min_tokens, max_tokens] (tokens); `n` samples; `ks_stat` = max |empirical CDF - fitted CDF| over the range."""

    theta: float
    min_tokens: int
    max_tokens: int
    n: int
    ks_stat: float

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ timestamps


@dataclass(frozen=True)
class TimeResolution:
    """How finely a stream's timestamps were recorded (`time_resolution`).

    `resolution_s`: the effective recording step (seconds), None when the timestamps look continuous;
    `tied_fraction`: share of arrivals at exactly the same timestamp as the arrival before them (0..1; 0 for
    fewer than 2 arrivals); `method`: how the step was found: "multiple" (every timestamp is a multiple of a
    round step), "gap quantum" (the positive gaps lie on multiples of a coarser step, e.g. 3-s stamps written in
    ms with jitter), or "continuous"."""

    resolution_s: float | None
    tied_fraction: float
    method: str

    def to_dict(self) -> dict:
        return {"time_resolution_s": self.resolution_s, "tied_arrival_fraction": self.tied_fraction,
                "ties_spread": self.resolution_s is not None, "time_resolution_method": self.method}


def time_resolution(timestamps_s: np.ndarray) -> TimeResolution:
    """Detect the effective recording resolution of timestamps (seconds, any order).

    First the coarsest of `CANDIDATE_RESOLUTIONS_S` that every timestamp is a multiple of. Then, when more than
    `MAX_TIED_FRACTION` of the arrivals tie (a continuous clock almost never ties), the dominant quantum of the
    positive gaps: the typical smallest gap q (median of the gaps near the 10th percentile), accepted when at least
    `QUANTUM_SHARE` of the gaps up to `QUANTUM_MULTIPLES` q lie within `QUANTUM_TOLERANCE` q of a multiple of q.
    A coarser quantum wins over the exact-multiple step: Mooncake's conversation trace writes milliseconds but
    records arrivals every ~3 s (90 % ties), and spreading ties over 1 ms would leave gaps of ~0 that the Gamma
    fit reads as extreme burstiness (alpha ~0.1).
    """
    t = np.asarray(timestamps_s, dtype=np.float64)
    if t.size < 2:
        return TimeResolution(None, 0.0, "continuous")
    if not _is_sorted(t):
        t = np.sort(t)
    gaps = np.diff(t)
    tied = float(np.count_nonzero(gaps == 0) / gaps.size)
    step = None
    probe = t[:: max(1, t.size // 1000)]  # rule candidates out cheaply on ~1000 timestamps first
    for resolution in CANDIDATE_RESOLUTIONS_S:
        if _all_multiples(probe, resolution) and _all_multiples(t, resolution):
            step = resolution
            break
    if tied > MAX_TIED_FRACTION:
        quantum = _gap_quantum(gaps[gaps > 0], step)
        if quantum is not None and (step is None or quantum > step * (1 + 1e-9)):
            return TimeResolution(quantum, tied, "gap quantum")
    return TimeResolution(step, tied, "multiple" if step is not None else "continuous")


#: `time_resolution`'s test for a gap quantum q: at least QUANTUM_SHARE of the positive gaps up to
#: QUANTUM_MULTIPLES * q lie within QUANTUM_TOLERANCE * q of a multiple of q.
QUANTUM_SHARE = 0.9
QUANTUM_MULTIPLES = 20
QUANTUM_TOLERANCE = 0.05


def _gap_quantum(positive_gaps: np.ndarray, step: float | None) -> float | None:
    """The step (seconds) that the positive gaps are multiples of, or None (see `time_resolution`)."""
    if positive_gaps.size < 10:
        return None
    low = float(np.quantile(positive_gaps, 0.1))
    near = positive_gaps[(positive_gaps > 0.5 * low) & (positive_gaps <= 1.5 * low)]
    quantum = float(np.median(near))
    if step is not None:  # a whole number of recording steps (3000 ms, not 2999.5 ms)
        quantum = max(step, round(quantum / step) * step)
    small = positive_gaps[positive_gaps <= QUANTUM_MULTIPLES * quantum] / quantum
    on_lattice = np.abs(small - np.rint(small)) <= QUANTUM_TOLERANCE
    return quantum if np.mean(on_lattice) >= QUANTUM_SHARE else None


def detect_timestamp_resolution(timestamps_s: np.ndarray) -> float | None:
    """The effective recording step of timestamps (seconds; `time_resolution(...).resolution_s`), or None when
    they are continuous (or there are fewer than 2)."""
    return time_resolution(timestamps_s).resolution_s


def _all_multiples(values: np.ndarray, resolution: float) -> bool:
    units = values / resolution
    # Tolerance: a millionth of a unit, widened by float64 rounding of the largest value.
    tolerance = 1e-6 + 4.0 * np.finfo(np.float64).eps * float(np.max(np.abs(units)))
    distance = units - np.rint(units)
    np.abs(distance, out=distance)
    return bool(distance.max() <= tolerance)


def dequantize_timestamps(
    timestamps_s: np.ndarray, resolution_s: float | None = None, seed: int = 0
) -> np.ndarray:
    """Timestamps (seconds) spread uniformly inside their recording interval [t, t + resolution), sorted.

    `resolution_s=None` detects it (`time_resolution`); 0 or a continuous trace returns the timestamps sorted and
    otherwise unchanged. The spreading is seeded by `seed`, so results are reproducible. See the module docstring
    for why and for its bias.
    """
    t = np.asarray(timestamps_s, dtype=np.float64)
    if not np.all(np.isfinite(t)):
        raise FitError("timestamps must be finite numbers")
    resolution = detect_timestamp_resolution(t) if resolution_s is None else resolution_s
    if not resolution:
        return t if _is_sorted(t) else np.sort(t)
    rng = np.random.default_rng(seed)
    # Nearly sorted already (disorder only within a resolution step): the stable sort (timsort) is ~4x faster.
    return np.sort(t + rng.uniform(0.0, resolution, t.size), kind="stable")


def interarrival_gaps(timestamps_s: np.ndarray, resolution_s: float | None = None, seed: int = 0) -> np.ndarray:
    """Positive inter-arrival gaps (seconds) of a stream, after `dequantize_timestamps`; exact ties left in
    continuous timestamps are dropped. Shape (at most n - 1,)."""
    gaps = np.diff(dequantize_timestamps(timestamps_s, resolution_s, seed))
    return gaps[gaps > 0]


def _is_sorted(values: np.ndarray) -> bool:
    return bool(values.size < 2 or np.all(values[1:] >= values[:-1]))


# ------------------------------------------------------------------------------------------------ Gamma


def fit_gamma(samples: np.ndarray) -> GammaFit:
    """Maximum-likelihood Gamma fit of positive samples (e.g. inter-arrival gaps in seconds, shape (n,), n >= 2).

    Exact zeros up to `MAX_TIED_FRACTION` of the samples (float ties, e.g. `np.diff` of a long cumulative sum)
    are left out and not counted in `n`; more than that means quantised data, where leaving them out would bias
    the fit, so `FitError` is raised: for gaps of whole-second timestamps use `interarrival_gaps`.
    """
    x = np.asarray(samples, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise FitError("a Gamma fit needs finite, non-negative samples")
    zeros = int(np.sum(x == 0))
    if zeros > MAX_TIED_FRACTION * x.size:
        raise FitError(
            f"a Gamma fit needs positive samples; {zeros} of {x.size} are 0 (gaps of whole-second timestamps? "
            "use burstgpt.analysis.fits.interarrival_gaps, which spreads tied timestamps)"
        )
    x = x[x > 0]
    if x.size < 2:
        raise FitError(f"a Gamma fit needs at least 2 positive samples, got {x.size}")
    if x.max() <= x.min() * (1.0 + MIN_RELATIVE_SPREAD):
        raise FitError("a Gamma fit needs samples that are not all equal (perfectly regular gaps)")
    fit = _fit_groups(x, np.zeros(x.size, dtype=np.int64), 1, compare_models=False)
    alpha, beta, ks = float(fit["alpha"][0]), float(fit["beta_s"][0]), float(fit["ks_stat"][0])
    return GammaFit(
        alpha=alpha, beta_s=beta, cv=float(1.0 / np.sqrt(alpha)), mean_s=float(x.mean()), n=int(x.size),
        ks_stat=ks, ks_pvalue=float(stats.kstwo.sf(ks, x.size)),
    )


def gamma_fit_per_window(
    timestamps_s: np.ndarray,
    window_s: float = 1200.0,
    min_arrivals: int = 10,
    start_s: float | None = None,
    *,
    resolution_s: float | None = None,
    seed: int = 0,
) -> pl.DataFrame:
    """Fit the inter-arrival gaps inside each time window: Gamma by maximum likelihood, compared by AIC with
    exponential, Weibull and lognormal fits of the same gaps.

    Windows are [start_s + i*window_s, start_s + (i+1)*window_s) from `start_s` (default: the first timestamp
    rounded down to a multiple of `window_s`, i.e. aligned on the trace clock) to the window holding the last
    timestamp; earlier timestamps are ignored. A window's gaps are those between consecutive arrivals both
    inside it (n_arrivals - 1 of them). Whole-second timestamps are spread first (`dequantize_timestamps` with
    `resolution_s` and `seed`; see the module docstring).

    Returns one row per window (empty ones included) with columns `WINDOW_FIT_COLUMNS`:
    window_start_s, window_end_s (seconds), n_arrivals, rate_rps (n_arrivals / window_s), mean_gap_s, alpha
    (shape), beta_s (scale, seconds), cv (1/sqrt(alpha)), ks_stat (KS statistic of the gaps against the fitted
    Gamma), aic_gamma, aic_exponential, aic_weibull, aic_lognormal, best_model (lowest AIC, one of
    `ARRIVAL_MODELS`). Fit columns are null where a window has fewer than `min_arrivals` arrivals (at least 3).
    """
    if not (np.isfinite(window_s) and window_s > 0):
        raise FitError(f"window length must be a positive number of seconds, got {window_s}")
    t = dequantize_timestamps(timestamps_s, resolution_s, seed)
    if start_s is None:
        start_s = float(np.floor(t[0] / window_s) * window_s) if t.size else 0.0
    t = t[t >= start_s]
    window = np.floor((t - start_s) / window_s).astype(np.int64)
    n_windows = int(window[-1]) + 1 if t.size else 0
    counts = np.bincount(window, minlength=n_windows)

    gaps = np.diff(t)
    gap_window = window[1:]
    keep = (gap_window == window[:-1]) & (gaps > 0)
    fittable = counts >= max(int(min_arrivals), 3)
    keep &= fittable[gap_window]
    gaps, gap_window = gaps[keep], gap_window[keep]
    gap_counts = np.bincount(gap_window, minlength=n_windows)
    # A window needs two distinct gaps for a two-parameter fit (distinct beyond float noise: MIN_RELATIVE_SPREAD).
    gap_min = np.full(n_windows, np.inf)
    gap_max = np.full(n_windows, -np.inf)
    fittable &= gap_counts >= 2
    if gaps.size:
        starts = np.flatnonzero(np.r_[True, gap_window[1:] != gap_window[:-1]])
        present = gap_window[starts]
        gap_min[present] = np.minimum.reduceat(gaps, starts)
        gap_max[present] = np.maximum.reduceat(gaps, starts)
    fittable &= gap_max > gap_min * (1.0 + MIN_RELATIVE_SPREAD)
    keep = fittable[gap_window]
    gaps, gap_window = gaps[keep], gap_window[keep]
    fitted_windows = np.flatnonzero(fittable)
    compact = (np.cumsum(fittable) - 1)[gap_window]  # window id -> index among fitted windows
    fit = _fit_groups(gaps, compact, fitted_windows.size)

    columns: dict[str, np.ndarray] = {}
    for name in ("mean_gap_s", "alpha", "beta_s", "cv", "ks_stat", *(f"aic_{m}" for m in ARRIVAL_MODELS)):
        full = np.full(n_windows, np.nan)
        full[fitted_windows] = fit[name]
        columns[name] = full
    best = np.full(n_windows, None, dtype=object)
    if fitted_windows.size:
        aics = np.column_stack([fit[f"aic_{m}"] for m in ARRIVAL_MODELS])
        best[fitted_windows] = np.asarray(ARRIVAL_MODELS, dtype=object)[np.argmin(aics, axis=1)]
    window_start = start_s + np.arange(n_windows) * window_s
    frame = pl.DataFrame(
        {
            "window_start_s": window_start,
            "window_end_s": window_start + window_s,
            "n_arrivals": counts.astype(np.int64),
            "rate_rps": counts / window_s,
            **columns,
            "best_model": pl.Series(best.tolist(), dtype=pl.Utf8),
        }
    )
    return frame.with_columns(pl.col(name).fill_nan(None) for name in columns)


def _fit_groups(x: np.ndarray, group: np.ndarray, n_groups: int, compare_models: bool = True) -> dict[str, np.ndarray]:
    """Fit every group of positive samples `x` (group ids 0..n_groups-1, non-decreasing, each group >= 2
    distinct values) at once. Returns arrays of shape (n_groups,) keyed by WINDOW_FIT_COLUMNS names; the AIC
    entries (exponential, Weibull, lognormal fits) only with `compare_models`."""
    m = np.bincount(group, minlength=n_groups).astype(np.float64)
    mean = np.bincount(group, x, n_groups) / m
    log_x = np.log(x)
    mean_log = np.bincount(group, log_x, n_groups) / m
    sum_log = mean_log * m

    # Gamma: s = log(mean) - mean(log x) > 0; Minka's closed-form start, then generalised Newton steps.
    s = np.maximum(np.log(mean) - mean_log, 1e-300)
    alpha = (3.0 - s + np.sqrt((s - 3.0) ** 2 + 24.0 * s)) / (12.0 * s)
    for _ in range(10):
        step = (np.log(alpha) - special.digamma(alpha) - s) / (alpha**2 * (1.0 / alpha - special.polygamma(1, alpha)))
        new_alpha = 1.0 / (1.0 / alpha + step)
        done = np.all(np.abs(new_alpha - alpha) <= 1e-12 * alpha)
        alpha = new_alpha
        if done:
            break
    beta = mean / alpha
    ll_gamma = (alpha - 1.0) * sum_log - m * alpha - m * alpha * np.log(beta) - m * special.gammaln(alpha)

    ks = _gamma_ks_statistics(log_x, group, m, alpha, beta)

    result = {"mean_gap_s": mean, "alpha": alpha, "beta_s": beta, "cv": 1.0 / np.sqrt(alpha), "ks_stat": ks,
              "aic_gamma": 4.0 - 2.0 * ll_gamma}
    if compare_models:
        result["aic_exponential"] = 2.0 - 2.0 * (-m * np.log(mean) - m)
        centred_log = log_x - mean_log[group]
        var_log = np.bincount(group, centred_log**2, n_groups) / m
        result["aic_lognormal"] = 4.0 - 2.0 * (-sum_log - 0.5 * m * np.log(2.0 * np.pi * var_log) - 0.5 * m)
        result["aic_weibull"] = 4.0 - 2.0 * _weibull_log_likelihood(log_x, group, n_groups, m, mean_log, var_log,
                                                                    sum_log)
    return result


#: Grid points per group on which `_gamma_ks_statistics` evaluates the Gamma CDF exactly.
KS_GRID_POINTS = 64


def _gamma_ks_statistics(log_x, group, m, alpha, beta) -> np.ndarray:
    """Kolmogorov-Smirnov statistic of each group's samples against its fitted Gamma, shape (n_groups,).

    `special.gammainc` with a different shape per sample costs ~0.4 us each (4 s for 10 million gaps), so the CDF
    is evaluated exactly on `KS_GRID_POINTS` points per group, evenly spaced in log(x / beta) over the group's
    range, and interpolated between them by cubic Hermite interpolation with the exact derivative (the density);
    the interpolation error is below 1e-6 for shapes 0.05..200 (checked in tests against scipy.stats.kstest).
    """
    if log_x.size == 0:
        return np.empty(0)
    first = np.concatenate([[0], np.cumsum(m[:-1])]).astype(np.int64)
    log_beta = np.log(beta)
    u = log_x - log_beta[group]  # log(x / beta)
    u_low = np.minimum.reduceat(u, first)
    u_high = np.maximum.reduceat(u, first)
    step = (u_high - u_low) / (KS_GRID_POINTS - 1)
    grid_u = u_low[:, None] + step[:, None] * np.arange(KS_GRID_POINTS)
    grid_z = np.exp(grid_u)
    grid_cdf = special.gammainc(alpha[:, None], grid_z)
    # dP/du = z * density(z) = z^alpha e^-z / Gamma(alpha), times the step for the Hermite basis.
    grid_slope = np.exp(alpha[:, None] * grid_u - grid_z - special.gammaln(alpha)[:, None]) * step[:, None]
    # Cubic Hermite on each cell in Horner form: cdf = p0 + s (d0 + s (c2 + s c3)), s in [0, 1].
    p0, p1 = grid_cdf[:, :-1], grid_cdf[:, 1:]
    d0, d1 = grid_slope[:, :-1], grid_slope[:, 1:]
    c2 = (3.0 * (p1 - p0) - 2.0 * d0 - d1).ravel()
    c3 = (2.0 * (p0 - p1) + d0 + d1).ravel()
    p0, d0 = p0.ravel(), d0.ravel()
    cells = KS_GRID_POINTS - 1
    position = u
    position -= u_low[group]
    position /= step[group]
    cell = np.minimum(position.astype(np.int64), cells - 1)
    s = position
    s -= cell
    cell += group * cells
    cdf = c3[cell]
    cdf *= s
    cdf += c2[cell]
    cdf *= s
    cdf += d0[cell]
    cdf *= s
    cdf += p0[cell]
    np.clip(cdf, 0.0, 1.0, out=cdf)
    # One sort of the CDF values keyed by group so groups stay in their (contiguous, ordered) blocks:
    # key = group + cdf / 2 lies in [group, group + 0.5].
    cdf *= 0.5
    cdf += group
    # Polars' single-threaded sort: the same sorted values as ndarray.sort for half its CPU time (it runs beside
    # the other statistics, so one thread). The unsorted keys are not needed after it: their buffer takes the
    # result.
    sorted_cdf = np.subtract(pl.Series(cdf).sort(multithreaded=False).to_numpy(), group, out=cdf)
    sorted_cdf *= 2.0
    inverse_n = (1.0 / m)[group]
    below = np.arange(u.size, dtype=np.float64)
    below -= first[group]
    below *= inverse_n  # ECDF just below each sample: rank / n
    distance = sorted_cdf - below
    below += inverse_n  # ECDF at each sample: (rank + 1) / n
    below -= sorted_cdf
    np.maximum(distance, below, out=distance)
    return np.maximum.reduceat(distance, first)


def _weibull_log_likelihood(log_x, group, n_groups, m, mean_log, var_log, sum_log) -> np.ndarray:
    """Maximised Weibull log-likelihood per group: Newton on the shape k solving
    sum(x^k log x)/sum(x^k) - 1/k = mean(log x), vectorised over groups."""
    # Work relative to each group's largest log x so x**k neither overflows nor loses precision.
    first = np.concatenate([[0], np.cumsum(m[:-1])]).astype(np.int64)
    max_log = np.maximum.reduceat(log_x, first) if log_x.size else np.empty(0)
    shifted = log_x - max_log[group]
    mean_shifted = mean_log - max_log
    # Start: Var(log X) = pi^2 / (6 k^2) for a Weibull.
    k = np.pi / np.sqrt(6.0 * np.maximum(var_log, 1e-300))
    for _ in range(60):
        weight = k[group]
        weight *= shifted
        np.exp(weight, out=weight)
        weight_sum = np.bincount(group, weight, n_groups)
        weight *= shifted
        a = np.bincount(group, weight, n_groups) / weight_sum
        weight *= shifted
        c = np.bincount(group, weight, n_groups) / weight_sum
        g = a - 1.0 / k - mean_shifted
        slope = (c - a * a) + 1.0 / k**2
        new_k = k - g / slope
        new_k = np.where(new_k > 0, new_k, k / 2.0)
        if np.all(np.abs(new_k - k) <= 1e-7 * k):
            break  # k is the MLE to 1e-7 (relative): the log-likelihood is maximal to ~1e-14 relative
        k = new_k
    # log(scale) from sum(x^k)/m = scale^k, with the last k and its weight sum.
    log_scale = max_log + (np.log(weight_sum) - np.log(m)) / k
    return m * np.log(k) - m * k * log_scale + (k - 1.0) * sum_log - m


# ------------------------------------------------------------------------------------------------ Zipf

#: `value_counts` counts values below this with one np.bincount table (fast: no sort); larger values by sorting,
#: so a length of 4e9 tokens costs no 30-GiB table.
MAX_COUNTING_TABLE = 1 << 22

#: The bounded-Zipf power sums run term by term over the first ZIPF_EXACT_TERMS lengths of the range and use the
#: Euler-Maclaurin formula past them (its error there is below 1e-15 of the sum), so a range of 1e8 tokens costs
#: as little memory as one of 2e5.
ZIPF_EXACT_TERMS = 1 << 18


def value_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a non-negative integer array (sorted) and how often each occurs, both shape (d,).
    Counts with np.bincount while the largest value is below `MAX_COUNTING_TABLE`, else with np.unique."""
    values = np.asarray(values)
    small = values.size and np.issubdtype(values.dtype, np.integer) and 0 <= values.min()
    if small and values.max() < MAX_COUNTING_TABLE:
        counts = np.bincount(values)
        distinct = np.flatnonzero(counts)
        return distinct, counts[distinct]
    return np.unique(values, return_counts=True)


def zipf_cdf(theta: float, min_tokens: int, max_tokens: int, at: np.ndarray) -> np.ndarray:
    """P(K <= at) under the bounded Zipf law P(k) proportional to k**-theta on the integers [min_tokens,
    max_tokens] (`fit_zipf`, `burstgpt.workload.lengths.ZipfLengths`), for integer `at` (any shape). Memory does
    not grow with the range (`ZIPF_EXACT_TERMS`)."""
    at = np.clip(np.asarray(at, dtype=np.float64), min_tokens - 1, max_tokens)
    total = _zipf_power_sums(theta, min_tokens, np.array([float(max_tokens)]))[0][0]
    return _zipf_power_sums(theta, min_tokens, at.ravel())[0].reshape(at.shape) / total


def zipf_pmf(theta: float, min_tokens: int, max_tokens: int) -> np.ndarray:
    """P(k) for every k in min_tokens..max_tokens, shape (max - min + 1,) (the whole range: for samplers)."""
    k = np.arange(min_tokens, max_tokens + 1, dtype=np.float64)
    # Work in logs relative to the largest term so a large theta does not underflow to all zeros.
    weights = np.exp(-theta * (np.log(k) - np.log(min_tokens)))
    return weights / weights.sum()


def _zipf_power_sums(theta: float, low: int, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """S0(u) = sum_{k=low}^{u} w(k) and S1(u) = sum_{k=low}^{u} w(k) log k with w(k) = (k / low)**-theta, for
    each (integer-valued, >= low - 1) upper limit u, shape of `upper`. Exact term by term for
    k < low + ZIPF_EXACT_TERMS, Euler-Maclaurin past that."""
    upper = np.asarray(upper, dtype=np.float64)
    head_end = min(float(upper.max(initial=low)), low + ZIPF_EXACT_TERMS - 1.0)
    log_k = np.log(np.arange(low, head_end + 1.0))
    weights = np.exp(-theta * (log_k - np.log(low)))
    cumulative_0 = np.concatenate([[0.0], np.cumsum(weights)])
    cumulative_1 = np.concatenate([[0.0], np.cumsum(weights * log_k)])
    index = (np.minimum(upper, head_end) - low + 1).astype(np.int64)
    s0, s1 = cumulative_0[index], cumulative_1[index]
    tail = upper > head_end
    if np.any(tail):
        t0, t1 = _zipf_tail_sums(theta, low, head_end + 1.0, upper[tail])
        s0[tail] += t0
        s1[tail] += t1
    return s0, s1


def _zipf_tail_sums(theta: float, low: int, a: float, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum_{k=a}^{b} w(k) and sum_{k=a}^{b} w(k) log k (w as in `_zipf_power_sums`) by Euler-Maclaurin: the
    integral, half the end terms, and the first derivative correction. With x = a e^t and s = 1 - theta,
    integral w = w(a) a E1, integral w log = w(a) a (log(a) E1 + E2), E1 = int_0^L e^(st) dt, E2 = int_0^L t e^(st)
    dt, L = log(b / a)."""
    s = 1.0 - theta
    length = np.log(b / a)
    x = s * length
    e1 = length if s == 0 else np.expm1(x) / s
    with np.errstate(divide="ignore", invalid="ignore"):
        # The closed form of E2 cancels for small s L: a series there (error < 1e-13 relative).
        e2 = np.where(np.abs(x) < 1e-2,
                      length**2 * (0.5 + x / 3.0 + x**2 / 8.0 + x**3 / 30.0 + x**4 / 144.0),
                      (length * np.exp(x) - e1) / (s if s != 0 else 1.0))
    log_a, log_low = np.log(a), np.log(low)
    w_a = np.exp(-theta * (log_a - log_low))
    log_b = np.log(b)
    w_b = np.exp(-theta * (log_b - log_low))
    # w'(x) = -theta w / x; (w log)'(x) = w (1 - theta log x) / x.
    sum_0 = w_a * a * e1 + (w_a + w_b) / 2.0 + (-theta * w_b / b + theta * w_a / a) / 12.0
    sum_1 = (w_a * a * (log_a * e1 + e2) + (w_a * log_a + w_b * log_b) / 2.0
             + (w_b * (1.0 - theta * log_b) / b - w_a * (1.0 - theta * log_a) / a) / 12.0)
    return sum_0, sum_1


def fit_zipf(lengths: np.ndarray, min_tokens: int | None = None, max_tokens: int | None = None) -> ZipfFit:
    """Maximum-likelihood fit of the bounded discrete power law the paper calls Zipf:

        P(k) = k**-theta / sum_{j=min_tokens}^{max_tokens} j**-theta,  k integer in [min_tokens, max_tokens],

    with theta >= 0 (the workload sampler `burstgpt.workload.lengths.ZipfLengths` draws from the same law).
    `lengths` are token counts, shape (n,); the bounds default to the sample's min and max, and lengths outside
    them are left out. The MLE solves E_theta[log k] = mean(log k_i) (the left side falls as theta grows); when
    the sample's mean log length is above that of the uniform law (theta = 0), the MLE on theta >= 0 is 0.
    Memory grows with the number of distinct lengths, not with the longest (`value_counts`, `zipf_cdf`).
    Fewer than 2 distinct lengths leave theta undefined: `FitError`.
    """
    values = np.asarray(lengths)
    if values.size == 0:
        raise FitError("a Zipf fit needs at least one length")
    # Integers are finite, and bounds taken from the sample keep every length: no pass over millions of them.
    if not np.issubdtype(values.dtype, np.integer) and not np.all(np.isfinite(values.astype(np.float64))):
        raise FitError("lengths must be finite numbers")
    values = values.astype(np.int64, copy=False)
    low = int(values.min()) if min_tokens is None else int(min_tokens)
    high = int(values.max()) if max_tokens is None else int(max_tokens)
    if low < 1 or high < low:
        raise FitError(f"a Zipf fit needs 1 <= min_tokens <= max_tokens, got [{low}, {high}]")
    if min_tokens is not None or max_tokens is not None:
        values = values[(values >= low) & (values <= high)]
    if values.size == 0:
        raise FitError(f"no length lies in [{low}, {high}]")
    distinct, counts = value_counts(values)
    if distinct.size < 2:
        raise FitError(f"a Zipf fit needs at least 2 distinct lengths, all {values.size} are {int(distinct[0])}")
    target = float(counts @ np.log(distinct.astype(np.float64))) / values.size
    top = np.array([float(high)])

    def mean_log_k(theta: float) -> float:
        s0, s1 = _zipf_power_sums(theta, low, top)
        return float(s1[0] / s0[0])

    if mean_log_k(0.0) <= target:
        theta = 0.0
    else:
        upper = 1.0
        while mean_log_k(upper) > target and upper < 1e12:  # E[log k] -> log(min) < target as theta grows
            upper *= 2.0
        theta = float(optimize.brentq(lambda th: mean_log_k(th) - target, 0.0, upper, xtol=1e-10))
    # KS: the empirical CDF is flat between distinct lengths while the fitted CDF rises, so the largest gap is at
    # a distinct length or just below one.
    empirical = np.cumsum(counts) / values.size
    fitted_at = zipf_cdf(theta, low, high, distinct)
    fitted_below = zipf_cdf(theta, low, high, distinct - 1)
    ks = float(max(np.max(np.abs(empirical - fitted_at)),
                   np.max(np.abs(np.concatenate([[0.0], empirical[:-1]]) - fitted_below))))
    return ZipfFit(theta=theta, min_tokens=low, max_tokens=high, n=int(values.size), ks_stat=ks)
