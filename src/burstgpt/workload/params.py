"""Workload parameters fitted from a trace, saved as a human-readable JSON file (`burstgpt workload fit`).

File layout (`format: burstgpt-workload-params/1`):

    source, filters            the trace and the model/service filters applied
    duration_s, num_requests   the trace span (first to last timestamp) and its request count
    mean_rate_rps              num_requests / duration_s
    arrivals.window_s          window length of the per-window fits (the paper's 20 minutes by default)
    arrivals.overall           Gamma fit of all inter-arrival gaps: alpha, beta_s, cv
    arrivals.timestamps        how the timestamps were recorded: time_resolution_s (null: continuous),
                               tied_arrival_fraction, ties_spread (arrivals spread within the resolution first)
    arrivals.windows           one row per window in order: window_start_s, window_end_s, n_arrivals, rate_rps,
                               alpha, beta_s, cv (null where the window had too few arrivals to fit)
    request_tokens             bounded Zipf: theta, min_tokens, max_tokens, ks_stat (theta and ks_stat null
                               when every request has the same length: min_tokens = max_tokens)
    response_tokens            failure_rate, mean, linear_fit response = intercept + slope * request (successes;
                               absent when request lengths do not vary), and `empirical`: request-length
                               bin_edges with response-length quantiles per bin
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError, InputError
from burstgpt.outputs import write_json_atomic
from burstgpt.trace.schema import Trace
from burstgpt.workload.lengths import EmpiricalResponses, ZipfLengths

PARAMS_FORMAT = "burstgpt-workload-params/1"
WINDOW_COLUMNS = ("window_start_s", "window_end_s", "n_arrivals", "rate_rps", "alpha", "beta_s", "cv")


@dataclass
class WorkloadParams:
    """Fitted parameters of a trace (see the module doc for the meaning of each field)."""

    source: str
    duration_s: float
    num_requests: int
    mean_rate_rps: float
    window_s: float
    overall_alpha: float
    overall_beta_s: float
    windows: pl.DataFrame  # WINDOW_COLUMNS, one row per window
    zipf: ZipfLengths
    zipf_ks_stat: float | None = None
    responses: EmpiricalResponses | None = None
    response_summary: dict = field(default_factory=dict)
    filters: dict = field(default_factory=dict)
    timestamps: dict = field(default_factory=dict)

    @property
    def zipf_theta(self) -> float | None:
        """The fitted Zipf exponent; None when all request lengths are equal (no exponent is defined)."""
        return None if self.zipf.min_tokens == self.zipf.max_tokens else self.zipf.theta

    def to_dict(self) -> dict:
        return {
            "format": PARAMS_FORMAT,
            "source": self.source,
            "filters": self.filters,
            "duration_s": self.duration_s,
            "num_requests": self.num_requests,
            "mean_rate_rps": self.mean_rate_rps,
            "arrivals": {
                "process": "gamma renewal, per-window shape alpha and scale beta_s (seconds)",
                "window_s": self.window_s,
                "overall": {
                    "alpha": self.overall_alpha,
                    "beta_s": self.overall_beta_s,
                    "cv": 1.0 / np.sqrt(self.overall_alpha) if self.overall_alpha > 0 else None,
                },
                "windows": self.windows.select(WINDOW_COLUMNS).to_dicts(),
                "timestamps": self.timestamps,
            },
            "request_tokens": {
                "distribution": "zipf: P(k) proportional to k**-theta on integers [min_tokens, max_tokens]",
                "theta": self.zipf_theta,
                "min_tokens": self.zipf.min_tokens,
                "max_tokens": self.zipf.max_tokens,
                "ks_stat": self.zipf_ks_stat,
            },
            "response_tokens": dict(
                self.response_summary, empirical=self.responses.to_dict() if self.responses is not None else None
            ),
        }


def fit_workload_params(
    trace: Trace, *, window_s: float = 1200.0, min_arrivals: int = 10, filters: dict | None = None
) -> WorkloadParams:
    """Fit per-window Gamma arrivals, Zipf request lengths and the response model of a (filtered) trace.

    Windows are aligned on multiples of `window_s` from the trace clock's origin (for BurstGPT, midnight).
    Fits are `burstgpt.analysis.fits`': tied timestamps are spread within their recording resolution first
    (`time_resolution`, `dequantize_timestamps`), once for the overall and the per-window fits. A trace the fits
    cannot describe (fewer than 3 requests, gaps that are all equal, request lengths over the sampler's range)
    raises `BurstGPTError` naming it; constant request lengths give a Zipf law on one length (theta null).
    """
    from burstgpt.analysis.fits import FitError, dequantize_timestamps, fit_gamma, fit_zipf, time_resolution
    from burstgpt.analysis.lengths import linear_fit

    frame = trace.frame
    if frame.height < 3:
        raise BurstGPTError(f"{trace.source}: need at least 3 requests to fit a workload, got {frame.height}")
    timestamps = frame["timestamp_s"].to_numpy()
    resolution = time_resolution(timestamps)
    spread = dequantize_timestamps(timestamps, resolution.resolution_s or 0.0)
    windows = window_table(spread, window_s, min_arrivals, resolution_s=0.0)
    gaps = np.diff(spread)
    try:
        overall = fit_gamma(gaps[gaps > 0])
    except FitError as exc:
        raise BurstGPTError(f"{trace.source}: cannot fit the arrivals: {exc}") from None
    requests = frame["request_tokens"].to_numpy()
    responses = frame["response_tokens"].to_numpy()
    positive_requests = requests[requests > 0]
    if positive_requests.size == 0:
        raise BurstGPTError(f"{trace.source}: no request has a positive token count")
    try:
        zipf_fit = fit_zipf(positive_requests)
        theta, ks_stat = float(zipf_fit.theta), float(zipf_fit.ks_stat)
    except FitError:  # every request has the same length: a law on that one length, no exponent
        theta, ks_stat = 0.0, None
    low, high = int(positive_requests.min()), int(positive_requests.max())
    try:
        zipf = ZipfLengths(theta, low, high)
    except BurstGPTError as exc:
        raise BurstGPTError(f"{trace.source}: request lengths {low:,}..{high:,} tokens: {exc}") from None
    ok = responses > 0
    summary: dict = {"failure_rate": float(np.mean(~ok))}
    empirical = None
    if ok.any():
        summary["mean"] = float(responses[ok].mean())
        line = linear_fit(requests[ok], responses[ok])
        if line.slope is not None:  # left out when the request lengths do not vary
            summary["linear_fit"] = {"intercept": line.intercept, "slope": line.slope}
        summary["model"] = ("empirical response-given-request quantiles (below); generation defaults to leaving "
                            "responses to the model")
        empirical = EmpiricalResponses.fit(requests, responses)
    duration = float(timestamps[-1] - timestamps[0])
    return WorkloadParams(
        source=trace.source,
        duration_s=duration,
        num_requests=frame.height,
        mean_rate_rps=frame.height / duration if duration > 0 else float("nan"),
        window_s=window_s,
        overall_alpha=float(overall.alpha),
        overall_beta_s=float(overall.beta_s),
        windows=windows,
        zipf=zipf,
        zipf_ks_stat=ks_stat,
        responses=empirical,
        response_summary=summary,
        filters=filters or {},
        timestamps=resolution.to_dict(),
    )


def window_table(timestamps_s: np.ndarray, window_s: float = 1200.0, min_arrivals: int = 10, *,
                 resolution_s: float | None = None) -> pl.DataFrame:
    """Per-window arrival counts and Gamma fits (`WINDOW_COLUMNS`), every window from the one holding the first
    timestamp to the one holding the last, empty ones included, aligned on multiples of `window_s` of the trace
    clock; fit columns are null where a window has fewer than `min_arrivals` arrivals. `resolution_s` as in
    `burstgpt.analysis.fits.gamma_fit_per_window` (None: detect it and spread tied timestamps; 0: as given)."""
    from burstgpt.analysis.fits import gamma_fit_per_window

    if not window_s > 0:
        raise BurstGPTError(f"window length must be positive, got {window_s}")
    fits = gamma_fit_per_window(timestamps_s, window_s=window_s, min_arrivals=min_arrivals, resolution_s=resolution_s)
    return fits.select(WINDOW_COLUMNS)


def write_params(params: WorkloadParams, path: str | Path) -> None:
    write_json_atomic(path, params.to_dict())


def read_params(path: str | Path) -> WorkloadParams:
    """Read and check a params file; anything malformed raises `InputError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such params file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON: {exc.msg}", line=exc.lineno) from None
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None
    if not isinstance(data, dict) or data.get("format") != PARAMS_FORMAT:
        raise InputError(path, f"not a workload params file (expected format {PARAMS_FORMAT!r})")
    try:
        arrivals = data["arrivals"]
        requests = data["request_tokens"]
        response = data.get("response_tokens") or {}
        windows = pl.DataFrame(arrivals["windows"], schema={c: pl.Float64 for c in WINDOW_COLUMNS})
        windows = windows.with_columns(pl.col("n_arrivals").cast(pl.Int64))
        if windows.height == 0:
            raise ValueError("arrivals.windows is empty")
        if sum(windows[c].null_count() for c in ("window_start_s", "window_end_s", "n_arrivals")):
            raise ValueError("arrivals.windows: every window needs window_start_s, window_end_s and n_arrivals")
        if (windows["n_arrivals"] < 0).any() or (windows["window_end_s"] <= windows["window_start_s"]).any():
            raise ValueError("arrivals.windows: counts must be >= 0 and windows must end after they start")
        alpha = windows["alpha"].drop_nulls()
        if (alpha <= 0).any() or (windows["beta_s"].drop_nulls() <= 0).any():
            raise ValueError("arrivals.windows: alpha and beta_s must be positive")
        empirical = response.get("empirical")
        params = WorkloadParams(
            source=str(data.get("source", "")),
            duration_s=float(data["duration_s"]),
            num_requests=int(data["num_requests"]),
            mean_rate_rps=float(data["mean_rate_rps"]),
            window_s=float(arrivals["window_s"]),
            overall_alpha=float(arrivals["overall"]["alpha"]),
            overall_beta_s=float(arrivals["overall"]["beta_s"]),
            windows=windows,
            # theta is null when all lengths were equal (min = max): any exponent gives that one length.
            zipf=ZipfLengths(float(requests["theta"] if requests["theta"] is not None else 0.0),
                             int(requests["min_tokens"]), int(requests["max_tokens"])),
            zipf_ks_stat=requests.get("ks_stat"),
            responses=EmpiricalResponses.from_dict(empirical) if empirical else None,
            response_summary={k: v for k, v in response.items() if k != "empirical"},
            filters=data.get("filters") or {},
            timestamps=arrivals.get("timestamps") or {},
        )
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, BurstGPTError, pl.exceptions.PolarsError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise InputError(path, f"malformed params: {what}") from None
    if not params.overall_alpha > 0:
        raise InputError(path, "malformed params: arrivals.overall.alpha must be positive")
    return params
