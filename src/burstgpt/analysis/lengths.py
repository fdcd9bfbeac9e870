"""Request and response lengths (paper section III-C, Figs 7-9): Zipf fit of request lengths, length
histograms, a bimodality test of response lengths, request-vs-response binned statistics, linear fit and
correlation. Tidy Polars frames split by model x service; lengths are tokens.

Failed requests (response_tokens == 0) are left out of response statistics and of request-vs-response pairs
(their response length is not a length); request lengths of failed requests count, 0-token requests do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl
from scipy import stats

from burstgpt.analysis.fits import MAX_COUNTING_TABLE, FitError, fit_zipf, value_counts
from burstgpt.analysis.temporal import GROUP

#: Histogram bins per length histogram.
HISTOGRAM_BINS = 60
#: Request-length bins for request-vs-response statistics.
REQUEST_BINS = 20


def nice_bin_width(upper: float, bins: int) -> float:
    """A round bin width (1, 2 or 5 times a power of ten, at least 1 token) covering [0, upper] in ~`bins`."""
    if not upper > 0:
        return 1.0
    raw = upper / bins
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if raw <= factor * power:
            return max(1.0, factor * power)
    return max(1.0, 10.0 * power)


def round_bins(values: pl.Series, bins: int, quantile: float = 0.99) -> tuple[float, int]:
    """(width, count) of round bins from 0 covering `values` up to their `quantile` in about `bins` bins."""
    top = float(values.quantile(quantile, "linear"))
    width = nice_bin_width(top, bins)
    return width, max(1, math.ceil(top / width))


def bin_start(column: str, width: float, n_bins: int) -> pl.Expr:
    """Start (tokens) of the round bin holding each value of `column`; values past the last bin go in it."""
    return ((pl.col(column) // width).clip(0, n_bins - 1) * width).cast(pl.Float64)


@dataclass(frozen=True)
class LinearFit:
    """Least-squares line y = intercept + slope * x over `n` pairs, with Pearson's r and Spearman's rho. None
    where undefined: the line needs x to vary, the correlations need x and y to vary."""

    n: int
    slope: float | None
    intercept: float | None
    pearson_r: float | None
    spearman_rho: float | None


def linear_fit(x: np.ndarray, y: np.ndarray) -> LinearFit:
    """`LinearFit` of paired samples x, y (shape (n,) each)."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.size < 2 or np.ptp(x) == 0:
        return LinearFit(int(x.size), None, None, None, None)
    xf, yf = x.astype(np.float64), y.astype(np.float64)
    dx, dy = xf - xf.mean(), yf - yf.mean()
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    slope = sxy / sxx
    varies = syy > 0
    return LinearFit(int(x.size), slope, float(yf.mean() - slope * xf.mean()),
                     sxy / math.sqrt(sxx * syy) if varies else None, spearman_rho(x, y) if varies else None)


def linear_fit_by_group(rows: pl.DataFrame, x_column: str, y_column: str, slope_name: str,
                        intercept_name: str) -> pl.DataFrame:
    """`linear_fit` of y on x per model x service. Columns: model, service, n, <slope_name>, <intercept_name>,
    pearson_r, spearman_rho (null where undefined)."""
    return _linear_fit_table(
        [((model, service), group[x_column].to_numpy(), group[y_column].to_numpy())
         for (model, service), group in _group_iter(rows, [x_column, y_column])],
        slope_name, intercept_name)


def _linear_fit_table(pairs, slope_name: str, intercept_name: str) -> pl.DataFrame:
    """One row per ((model, service), x, y) of `pairs`: their `linear_fit`."""
    rows = []
    for (model, service), x, y in pairs:
        fit = linear_fit(x, y)
        rows.append({"model": model, "service": service, "n": fit.n, slope_name: fit.slope,
                     intercept_name: fit.intercept, "pearson_r": fit.pearson_r, "spearman_rho": fit.spearman_rho})
    schema = {"model": pl.Utf8, "service": pl.Utf8, "n": pl.Int64, slope_name: pl.Float64,
              intercept_name: pl.Float64, "pearson_r": pl.Float64, "spearman_rho": pl.Float64}
    return pl.DataFrame(rows, schema=schema).sort(*GROUP, nulls_last=True)


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties). Non-negative integer data (token counts) are ranked
    by counting (O(n + max value), up to `MAX_COUNTING_TABLE`) instead of sorting, which is several times faster
    on millions of rows."""
    if x.size < 2:
        return float("nan")
    return float(np.corrcoef(_average_ranks(x), _average_ranks(y))[0, 1])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    if np.issubdtype(values.dtype, np.integer) and values.min() >= 0 and values.max() < MAX_COUNTING_TABLE:
        counts = np.bincount(values)
        below = np.cumsum(counts) - counts  # values smaller than each value
        return (below + (counts + 1) / 2.0)[values]
    return stats.rankdata(values)


def _group_iter(frame: pl.DataFrame, columns: list[str]):
    for (model, service), group in frame.select(*GROUP, *columns).group_by(*GROUP, maintain_order=True):
        yield (str(model) if model is not None else None, str(service) if service is not None else None), group


@dataclass
class _LengthGroup:
    """One model x service group's lengths (tokens), all rows, shape (n,) each; the selections several
    statistics share are computed once (each is a pass over millions of rows)."""

    model: str | None
    service: str | None
    request: np.ndarray
    response: np.ndarray

    @cached_property
    def ok(self) -> np.ndarray:
        """Successful requests (response_tokens > 0)."""
        return self.response > 0

    @cached_property
    def positive_request(self) -> np.ndarray:
        """Request lengths above 0 tokens (failed requests included)."""
        return self.request[self.request > 0]

    @cached_property
    def ok_request(self) -> np.ndarray:
        """Request lengths of the successful requests."""
        return self.request[self.ok]

    @cached_property
    def ok_response(self) -> np.ndarray:
        """Response lengths of the successful requests (the positive ones)."""
        return self.response[self.ok]


@dataclass
class _BinPlan:
    """Round bins shared by every group: (width, count) per use; None where there are no lengths."""

    request_histogram: tuple[float, int] | None
    response_histogram: tuple[float, int] | None
    pair_request: tuple[float, int] | None
    pair_response: tuple[float, int] | None
    max_request: int
    max_response: int


def _length_groups(frame: pl.DataFrame) -> list[_LengthGroup]:
    return [_LengthGroup(model, service, group["request_tokens"].to_numpy(), group["response_tokens"].to_numpy())
            for (model, service), group in _group_iter(frame, ["request_tokens", "response_tokens"])]


def _bin_plan(frame: pl.DataFrame, histogram_bins: int, request_bins: int) -> _BinPlan:
    """Bins from 0 to the 99.5th percentile (histograms) and 99th percentile (request-vs-response) of the
    lengths, in one pass over the columns."""
    request, response = pl.col("request_tokens"), pl.col("response_tokens")
    ok = response > 0
    tops = frame.select(
        request.filter(request > 0).quantile(0.995, "linear").alias("request_histogram"),
        response.filter(ok).quantile(0.995, "linear").alias("response_histogram"),
        request.filter(ok).quantile(0.99, "linear").alias("pair_request"),
        response.filter(ok).quantile(0.99, "linear").alias("pair_response"),
        request.max().alias("max_request"), response.max().alias("max_response"),
    ).row(0, named=True)

    def plan(top, bins):
        if top is None:
            return None
        width = nice_bin_width(float(top), bins)
        return width, max(1, math.ceil(float(top) / width))

    return _BinPlan(plan(tops["request_histogram"], histogram_bins), plan(tops["response_histogram"], histogram_bins),
                    plan(tops["pair_request"], request_bins), plan(tops["pair_response"], request_bins),
                    int(tops["max_request"] or 0), int(tops["max_response"] or 0))


def _bin_index(values: np.ndarray, width: float, n_bins: int) -> np.ndarray:
    """Bin of each integer length; widths from `nice_bin_width` are whole tokens, so integer division works."""
    index = values // int(width)
    np.minimum(index, n_bins - 1, out=index)
    return index


@dataclass
class LengthStatistics:
    """Every length table (see the function of the same name for its columns)."""

    request_zipf: pl.DataFrame
    length_histograms: pl.DataFrame
    response_bimodality: pl.DataFrame
    request_response_bins: pl.DataFrame
    request_response_counts: pl.DataFrame
    request_response_correlation: pl.DataFrame


def length_statistics(frame: pl.DataFrame, histogram_bins: int = HISTOGRAM_BINS,
                      request_bins: int = REQUEST_BINS) -> LengthStatistics:
    """All length statistics with one pass to split the rows by group (what `characterise` uses)."""
    groups = _length_groups(frame)
    plan = _bin_plan(frame, histogram_bins, request_bins)
    return LengthStatistics(
        request_zipf=_request_zipf(groups), length_histograms=_length_histograms(groups, plan),
        response_bimodality=_response_bimodality(groups), request_response_bins=_request_response_bins(groups, plan),
        request_response_counts=_request_response_counts(groups, plan),
        request_response_correlation=_request_response_correlation(groups),
    )


def request_zipf_fits(frame: pl.DataFrame) -> pl.DataFrame:
    """Zipf (bounded discrete power law, `fits.fit_zipf`) fit of positive request lengths per model x service.

    Columns: model, service, n, zipf_theta, min_tokens, max_tokens, ks_stat (theta and ks_stat null when the
    group has fewer than 2 distinct positive lengths: no exponent is defined).
    """
    return _request_zipf(_length_groups(frame))


def _request_zipf(groups: list[_LengthGroup]) -> pl.DataFrame:
    rows = []
    for g in groups:
        positive = g.positive_request
        if positive.size == 0:
            continue
        row = {"model": g.model, "service": g.service, "n": positive.size, "min_tokens": int(positive.min()),
               "max_tokens": int(positive.max())}
        try:
            fit = fit_zipf(positive)
        except FitError:  # one distinct length: theta undefined, left null
            pass
        else:
            row |= {"zipf_theta": fit.theta, "ks_stat": fit.ks_stat}
        rows.append(row)
    schema = {"model": pl.Utf8, "service": pl.Utf8, "n": pl.Int64, "zipf_theta": pl.Float64,
              "min_tokens": pl.Int64, "max_tokens": pl.Int64, "ks_stat": pl.Float64}
    return pl.DataFrame(rows, schema=schema).sort(*GROUP, nulls_last=True)


def length_histograms(frame: pl.DataFrame, bins: int = HISTOGRAM_BINS) -> pl.DataFrame:
    """Histograms of request lengths (all requests with > 0 tokens) and response lengths (successful requests),
    per model x service, on shared round bins from 0 to each kind's 99.5th percentile; longer lengths fall in
    the last bin, whose bin_end_tokens is then past the longest length.

    Columns: model, service, kind ('request' or 'response'), bin_start_tokens, bin_end_tokens, count.
    """
    return _length_histograms(_length_groups(frame), _bin_plan(frame, bins, REQUEST_BINS))


def _length_histograms(groups: list[_LengthGroup], plan: _BinPlan) -> pl.DataFrame:
    parts = []
    for kind, bins, longest in (("request", plan.request_histogram, plan.max_request),
                                ("response", plan.response_histogram, plan.max_response)):
        if bins is None:
            continue
        width, n_bins = bins
        starts = np.arange(n_bins) * width
        ends = starts + width
        ends[-1] = max(ends[-1], longest + 1.0)
        for g in groups:
            values = g.positive_request if kind == "request" else g.ok_response
            if values.size == 0:
                continue
            counts = np.bincount(_bin_index(values, width, n_bins), minlength=n_bins)
            parts.append(pl.DataFrame({"model": [g.model] * n_bins, "service": [g.service] * n_bins,
                                       "kind": [kind] * n_bins, "bin_start_tokens": starts, "bin_end_tokens": ends,
                                       "count": counts.astype(np.int64)},
                                      schema_overrides={"model": pl.Utf8, "service": pl.Utf8}))
    if not parts:
        return pl.DataFrame(schema={"model": pl.Utf8, "service": pl.Utf8, "kind": pl.Utf8,
                                    "bin_start_tokens": pl.Float64, "bin_end_tokens": pl.Float64, "count": pl.Int64})
    return pl.concat(parts).sort(*GROUP, "kind", "bin_start_tokens", nulls_last=True)


def bimodality_coefficient(values: np.ndarray, counts: np.ndarray | None = None) -> float:
    """Sarle's bimodality coefficient (g1^2 + 1) / (g2 + 3 (n-1)^2 / ((n-2)(n-3))) with sample skewness g1 and
    excess kurtosis g2 (bias-corrected, as scipy.stats.skew/kurtosis with bias=False); > 5/9 suggests a bimodal
    (or very flat) distribution. `counts` optionally gives each value's multiplicity (distinct values)."""
    x = np.asarray(values, dtype=np.float64)
    w = np.ones_like(x) if counts is None else np.asarray(counts, dtype=np.float64)
    n = w.sum()
    if n < 4 or np.ptp(x) == 0:
        return float("nan")
    centred = x - (w @ x) / n
    m2, m3, m4 = (w @ centred**2) / n, (w @ centred**3) / n, (w @ centred**4) / n
    g1 = m3 / m2**1.5 * math.sqrt(n * (n - 1)) / (n - 2)
    g2 = ((n + 1) * (m4 / m2**2 - 3) + 6) * (n - 1) / ((n - 2) * (n - 3))
    return float((g1**2 + 1.0) / (g2 + 3.0 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def two_gaussian_mixture(values: np.ndarray, weights: np.ndarray, iterations: int = 300) -> dict:
    """EM fit of a 1- and a 2-component Gaussian mixture to `values` with integer `weights` (counts of each
    distinct value, so millions of samples cost as much as their distinct values). Returns log-likelihoods,
    the BIC difference (1-component minus 2-component; > 0 favours two), the two components (mean, sd, weight)
    and Ashman's D = sqrt(2) |mu1 - mu2| / sqrt(sd1^2 + sd2^2) (> 2: cleanly separated modes)."""
    x = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    n = w.sum()
    mean = float(w @ x / n)
    sd = float(np.sqrt(w @ (x - mean) ** 2 / n))
    floor_sd = max(sd * 1e-3, 1e-6)  # keeps a component from collapsing onto one distinct value
    ll1 = float(w @ stats.norm.logpdf(x, mean, sd))
    # Start at the 25th and 75th weighted percentiles.
    order = np.argsort(x)
    cumulative = np.cumsum(w[order]) / n
    mu = np.array([x[order][np.searchsorted(cumulative, 0.25)], x[order][np.searchsorted(cumulative, 0.75)]])
    sigma = np.array([sd, sd]) / 2.0
    share = np.array([0.5, 0.5])
    ll2 = -np.inf
    for _ in range(iterations):
        log_density = np.log(share)[:, None] + stats.norm.logpdf(x[None, :], mu[:, None], sigma[:, None])
        log_total = np.logaddexp(log_density[0], log_density[1])
        responsibility = np.exp(log_density - log_total) * w
        new_ll = float(w @ log_total)
        mass = responsibility.sum(axis=1) + 1e-300
        share = mass / n
        mu = responsibility @ x / mass
        sigma = np.maximum(np.sqrt((responsibility * (x[None, :] - mu[:, None]) ** 2).sum(axis=1) / mass), floor_sd)
        if abs(new_ll - ll2) <= 1e-9 * abs(new_ll):
            ll2 = new_ll
            break
        ll2 = new_ll
    delta_bic = (2 * math.log(n) - 2 * ll1) - (5 * math.log(n) - 2 * ll2)
    order = np.argsort(mu)
    ashman = math.sqrt(2.0) * abs(mu[1] - mu[0]) / math.sqrt(sigma[0] ** 2 + sigma[1] ** 2)
    return {"loglik_1": ll1, "loglik_2": ll2, "delta_bic": float(delta_bic), "means": mu[order].tolist(),
            "sds": sigma[order].tolist(), "weights": share[order].tolist(), "ashman_d": float(ashman)}


def response_bimodality(frame: pl.DataFrame) -> pl.DataFrame:
    """Bimodality of successful response lengths per model x service.

    Two tests: Sarle's bimodality coefficient of the lengths (`bimodality_coefficient`), and a 1- vs
    2-component Gaussian mixture of log(response tokens) compared by BIC (`two_gaussian_mixture`; log because
    token lengths are right-skewed). `bimodal` is true when the 2-component mixture wins by BIC by more than 10
    and its modes are separated (Ashman's D > 2): a skewed single mode can win the BIC but not with D > 2.

    Columns: model, service, n, mean_tokens, median_tokens, bimodality_coefficient, mixture_delta_bic,
    mode_low_tokens, mode_high_tokens (exp of the component means), mode_low_weight, ashman_d, bimodal.
    """
    return _response_bimodality(_length_groups(frame))


def _response_bimodality(groups: list[_LengthGroup]) -> pl.DataFrame:
    rows = []
    for g in groups:
        lengths = g.ok_response
        if lengths.size == 0:
            continue
        distinct, counts = value_counts(lengths)
        cumulative = np.cumsum(counts)
        median = 0.5 * (distinct[np.searchsorted(cumulative, (lengths.size - 1) // 2, side="right")]
                        + distinct[np.searchsorted(cumulative, lengths.size // 2, side="right")])
        row = {"model": g.model, "service": g.service, "n": lengths.size, "mean_tokens": float(lengths.mean()),
               "median_tokens": float(median), "bimodality_coefficient": bimodality_coefficient(distinct, counts)}
        if distinct.size >= 3:
            mixture = two_gaussian_mixture(np.log(distinct), counts)
            row |= {"mixture_delta_bic": mixture["delta_bic"], "mode_low_tokens": math.exp(mixture["means"][0]),
                    "mode_high_tokens": math.exp(mixture["means"][1]), "mode_low_weight": mixture["weights"][0],
                    "ashman_d": mixture["ashman_d"],
                    "bimodal": bool(mixture["delta_bic"] > 10 and mixture["ashman_d"] > 2)}
        rows.append(row)
    schema = {"model": pl.Utf8, "service": pl.Utf8, "n": pl.Int64, "mean_tokens": pl.Float64,
              "median_tokens": pl.Float64, "bimodality_coefficient": pl.Float64, "mixture_delta_bic": pl.Float64,
              "mode_low_tokens": pl.Float64, "mode_high_tokens": pl.Float64, "mode_low_weight": pl.Float64,
              "ashman_d": pl.Float64, "bimodal": pl.Boolean}
    return pl.DataFrame(rows, schema=schema).sort(*GROUP, nulls_last=True)


def request_response_bins(frame: pl.DataFrame, bins: int = REQUEST_BINS) -> pl.DataFrame:
    """Response-length statistics per request-length bin (paper Fig 8), successful requests only; round bins
    from 0 to the 99th percentile of request length, longer requests in the last bin (open: end null).

    Columns: model, service, request_bin_start_tokens, request_bin_end_tokens, requests, response_mean_tokens,
    response_std_tokens, response_p25_tokens, response_median_tokens, response_p75_tokens (quantiles with
    linear interpolation).
    """
    return _request_response_bins(_length_groups(frame), _bin_plan(frame, HISTOGRAM_BINS, bins))


def binned_quantiles(bin_index: np.ndarray, values: np.ndarray, n_bins: int, quantiles: tuple[float, ...]) -> np.ndarray:
    """Quantiles (linear interpolation) of non-negative integer `values` within each bin, shape
    (n_bins, len(quantiles)), NaN for empty bins. Counts a (bin, value) table instead of sorting when it is
    small enough (token lengths, up to `MAX_COUNTING_TABLE` cells), so millions of values cost one pass."""
    out = np.full((n_bins, len(quantiles)), np.nan)
    top = int(values.max()) + 1 if values.size else 1
    if n_bins * top <= MAX_COUNTING_TABLE:
        table = np.bincount(bin_index * top + values, minlength=n_bins * top).reshape(n_bins, top)
        cumulative = np.cumsum(table, axis=1)
        for b in np.flatnonzero(cumulative[:, -1]):
            count = cumulative[b, -1]
            for j, q in enumerate(quantiles):
                position = q * (count - 1)
                low = math.floor(position)
                v_low = np.searchsorted(cumulative[b], low, side="right")
                v_high = np.searchsorted(cumulative[b], min(low + 1, count - 1), side="right")
                out[b, j] = v_low + (position - low) * (v_high - v_low)
        return out
    order = np.lexsort((values, bin_index))
    sorted_values, sorted_bins = values[order], bin_index[order]
    for b in np.unique(sorted_bins):
        out[b] = np.quantile(sorted_values[sorted_bins == b], quantiles)
    return out


def _request_response_bins(groups: list[_LengthGroup], plan: _BinPlan) -> pl.DataFrame:
    if plan.pair_request is None:
        return pl.DataFrame()
    width, n_bins = plan.pair_request
    parts = []
    for g in groups:
        request, response = g.ok_request, g.ok_response
        if request.size == 0:
            continue
        index = _bin_index(request, width, n_bins)
        count = np.bincount(index, minlength=n_bins)
        total = np.bincount(index, response.astype(np.float64), n_bins)
        squares = np.bincount(index, response.astype(np.float64) ** 2, n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count
            std = np.sqrt(np.maximum(squares - count * mean**2, 0.0) / (count - 1))
        std[count < 2] = np.nan
        q = binned_quantiles(index, response, n_bins, (0.25, 0.5, 0.75))
        present = count > 0
        starts = np.arange(n_bins) * width
        ends = np.where(np.arange(n_bins) == n_bins - 1, np.nan, starts + width)
        k = int(present.sum())
        parts.append(pl.DataFrame({
            "model": [g.model] * k, "service": [g.service] * k, "request_bin_start_tokens": starts[present],
            "request_bin_end_tokens": ends[present], "requests": count[present].astype(np.int64),
            "response_mean_tokens": mean[present], "response_std_tokens": std[present],
            "response_p25_tokens": q[present, 0], "response_median_tokens": q[present, 1],
            "response_p75_tokens": q[present, 2],
        }, schema_overrides={"model": pl.Utf8, "service": pl.Utf8}).fill_nan(None))
    return pl.concat(parts).sort(*GROUP, "request_bin_start_tokens", nulls_last=True) if parts else pl.DataFrame()


def request_response_counts(frame: pl.DataFrame, bins: int = REQUEST_BINS) -> pl.DataFrame:
    """Two-dimensional counts of (request bin, response bin) pairs (paper Fig 9), successful requests; round
    bins up to each length's 99th percentile, longer lengths in the last bin. Only non-empty cells.

    Columns: model, service, request_bin_start_tokens, response_bin_start_tokens, count.
    """
    return _request_response_counts(_length_groups(frame), _bin_plan(frame, HISTOGRAM_BINS, bins))


def _request_response_counts(groups: list[_LengthGroup], plan: _BinPlan) -> pl.DataFrame:
    if plan.pair_request is None or plan.pair_response is None:
        return pl.DataFrame()
    (x_width, x_bins), (y_width, y_bins) = plan.pair_request, plan.pair_response
    parts = []
    for g in groups:
        if g.ok_response.size == 0:
            continue
        cell = _bin_index(g.ok_request, x_width, x_bins) * y_bins + _bin_index(g.ok_response, y_width, y_bins)
        counts = np.bincount(cell, minlength=x_bins * y_bins)
        filled = np.flatnonzero(counts)
        parts.append(pl.DataFrame({
            "model": [g.model] * filled.size, "service": [g.service] * filled.size,
            "request_bin_start_tokens": (filled // y_bins) * x_width, "response_bin_start_tokens": (filled % y_bins) * y_width,
            "count": counts[filled].astype(np.int64),
        }, schema_overrides={"model": pl.Utf8, "service": pl.Utf8,
                             "request_bin_start_tokens": pl.Float64, "response_bin_start_tokens": pl.Float64}))
    return (pl.concat(parts).sort(*GROUP, "request_bin_start_tokens", "response_bin_start_tokens", nulls_last=True)
            if parts else pl.DataFrame())


def request_response_correlation(frame: pl.DataFrame) -> pl.DataFrame:
    """Least-squares line response = intercept + slope * request and correlations, successful requests
    (`linear_fit`). Columns: model, service, n, slope, intercept_tokens, pearson_r, spearman_rho (null where
    undefined: fewer than 2 pairs, constant request lengths, or for the correlations constant responses).
    """
    return _request_response_correlation(_length_groups(frame))


def _request_response_correlation(groups: list[_LengthGroup]) -> pl.DataFrame:
    return _linear_fit_table((((g.model, g.service), g.ok_request, g.ok_response) for g in groups),
                             "slope", "intercept_tokens")
