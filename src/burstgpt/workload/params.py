"""Workload parameters fitted from a trace, saved as a human-readable JSON file (`burstgpt workload fit`).

File layout (`format: burstgpt-workload-params/1`):

    source, filters            the trace and the model/service filters applied
    duration_s, num_requests   the trace span (first to last timestamp) and its request count
    mean_rate_rps              num_requests / duration_s
    arrivals.window_s          window length of the per-window fits (the paper's 20 minutes by default)
    arrivals.overall           Gamma fit of all inter-arrival gaps: alpha, beta_s, cv
    arrivals.windows           one row per window in order: window_start_s, window_end_s, n_arrivals, rate_rps,
                               alpha, beta_s, cv (null where the window had too few arrivals to fit)
    request_tokens             bounded Zipf: theta, min_tokens, max_tokens, ks_stat
    response_tokens            failure_rate, mean, linear fit response = intercept + slope * request (successes),
                               and `empirical`: request-length bin_edges with response-length quantiles per bin
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
            },
            "request_tokens": {
                "distribution": "zipf: P(k) proportional to k**-theta on integers [min_tokens, max_tokens]",
                "theta": self.zipf.theta,
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
    Fits are `burstgpt.analysis.fits`' (whole-second timestamps are spread inside their second first).
    """
    from burstgpt.analysis.fits import fit_gamma, fit_zipf, interarrival_gaps

    frame = trace.frame
    if frame.height < 3:
        raise BurstGPTError(f"{trace.source}: need at least 3 requests to fit a workload, got {frame.height}")
    timestamps = frame["timestamp_s"].to_numpy()
    windows = window_table(timestamps, window_s, min_arrivals)
    # interarrival_gaps spreads whole-second timestamps (BurstGPT's) inside their second before differencing.
    overall = fit_gamma(interarrival_gaps(timestamps))
    requests = frame["request_tokens"].to_numpy()
    responses = frame["response_tokens"].to_numpy()
    positive_requests = requests[requests > 0]
    if positive_requests.size == 0:
        raise BurstGPTError(f"{trace.source}: no request has a positive token count")
    zipf_fit = fit_zipf(positive_requests)
    ok = responses > 0
    summary: dict = {"failure_rate": float(np.mean(~ok))}
    empirical = None
    if ok.sum() >= 2:
        slope, intercept = np.polyfit(requests[ok].astype(float), responses[ok].astype(float), 1)
        summary.update(
            mean=float(responses[ok].mean()),
            linear_fit={"intercept": float(intercept), "slope": float(slope)},
            model="empirical response-given-request quantiles (below); generation defaults to leaving "
            "responses to the model",
        )
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
        zipf=ZipfLengths(float(zipf_fit.theta), int(zipf_fit.min_tokens), int(zipf_fit.max_tokens)),
        zipf_ks_stat=float(zipf_fit.ks_stat),
        responses=empirical,
        response_summary=summary,
        filters=filters or {},
    )


def window_table(timestamps_s: np.ndarray, window_s: float = 1200.0, min_arrivals: int = 10) -> pl.DataFrame:
    """Per-window arrival counts and Gamma fits (`WINDOW_COLUMNS`), every window from the one holding the first
    timestamp to the one holding the last, empty ones included, aligned on multiples of `window_s` of the trace
    clock; fit columns are null where a window has fewer than `min_arrivals` arrivals."""
    from burstgpt.analysis.fits import gamma_fit_per_window

    if not window_s > 0:
        raise BurstGPTError(f"window length must be positive, got {window_s}")
    fits = gamma_fit_per_window(timestamps_s, window_s=window_s, min_arrivals=min_arrivals)
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
            zipf=ZipfLengths(float(requests["theta"]), int(requests["min_tokens"]), int(requests["max_tokens"])),
            zipf_ks_stat=requests.get("ks_stat"),
            responses=EmpiricalResponses.from_dict(empirical) if empirical else None,
            response_summary={k: v for k, v in response.items() if k != "empirical"},
            filters=data.get("filters") or {},
        )
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, BurstGPTError, pl.exceptions.PolarsError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise InputError(path, f"malformed params: {what}") from None
    if not params.overall_alpha > 0:
        raise InputError(path, "malformed params: arrivals.overall.alpha must be positive")
    return params
