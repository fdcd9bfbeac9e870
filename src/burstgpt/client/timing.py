"""Is the load generator keeping its schedule? The dispatch-lag verdict of a run (or of a window of one), and
the client's own limits.

Dispatch lag is `sent_s - scheduled_s` (seconds): how late the client handed a request to the network. A run
is **client-limited** when the client itself could not keep the schedule: its p99 lag is over
`P99_LAG_LIMIT_S` (10 ms) or any request went out more than `MAX_LAG_LIMIT_S` (100 ms) late. Then the rate
the server saw is the client's achieved rate, not the offered one, and the run measures the client.

    verdict = dispatch_verdict(lags_s, achieved_rate_rps=812.0, offered_rate_rps=1000.0)
    verdict.client_limited, verdict.label, verdict.reason

Used by `bench` (summary and `--strict-timing`), the benchmark and the live view.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

#: p99 dispatch lag above which a run is client-limited, seconds.
P99_LAG_LIMIT_S = 0.010
#: Any single request sent later than this makes the run client-limited, seconds.
MAX_LAG_LIMIT_S = 0.100

#: Default cap of open connections (= requests in flight) of one run, over all its senders (`--max-connections`).
#: Past about a thousand, connections cost an overloaded client more CPU per request than they bring (measured
#: with benchmarks/bench_loadgen.py: 1 sender offered 7,000 req/s sent 2,500 req/s with 512 connections, 1,900
#: with 1,024, 1,400 with 4,096): it then collapses instead of saturating.
DEFAULT_MAX_CONNECTIONS = 1024

ON_SCHEDULE = "on-schedule"
CLIENT_LIMITED = "client-limited"
NO_REQUESTS = "no-requests"


@dataclass(frozen=True)
class DispatchVerdict:
    """The dispatch-lag verdict: lag statistics (seconds), the rates (requests/s) and the label."""

    label: str  # ON_SCHEDULE, CLIENT_LIMITED or NO_REQUESTS (nothing was sent)
    requests: int  # sent requests the lags are of
    lag_p50_s: float | None
    lag_p99_s: float | None
    lag_max_s: float | None
    late_requests: int  # requests sent more than MAX_LAG_LIMIT_S late
    achieved_rate_rps: float | None  # the send rate actually achieved
    offered_rate_rps: float | None  # the schedule's rate, when known
    reason: str  # one line: why this label

    @property
    def client_limited(self) -> bool:
        return self.label == CLIENT_LIMITED

    def as_dict(self) -> dict:
        return {**asdict(self), "client_limited": self.client_limited}


def dispatch_verdict(
    lags_s,
    *,
    achieved_rate_rps: float | None = None,
    offered_rate_rps: float | None = None,
    p99_limit_s: float = P99_LAG_LIMIT_S,
    max_limit_s: float = MAX_LAG_LIMIT_S,
) -> DispatchVerdict:
    """The verdict over an array of dispatch lags (seconds; NaN, i.e. never sent, ignored)."""
    lags = np.asarray(lags_s, dtype=np.float64)
    lags = lags[~np.isnan(lags)]
    if lags.size == 0:
        return DispatchVerdict(NO_REQUESTS, 0, None, None, None, 0, achieved_rate_rps, offered_rate_rps,
                               "no request was sent")
    p50, p99 = (float(q) for q in np.quantile(lags, [0.5, 0.99]))
    worst = float(lags.max())
    late = int(np.count_nonzero(lags > max_limit_s))
    rate = f"achieved {achieved_rate_rps:.1f} req/s" if achieved_rate_rps is not None else "achieved rate unknown"
    if offered_rate_rps is not None:
        rate += f" of {offered_rate_rps:.1f} offered"
    if p99 > p99_limit_s or late:
        why = []
        if p99 > p99_limit_s:
            why.append(f"p99 dispatch lag {p99 * 1e3:.1f} ms > {p99_limit_s * 1e3:g} ms")
        if late:
            why.append(f"{late} request(s) sent > {max_limit_s * 1e3:g} ms late (worst {worst * 1e3:.1f} ms)")
        return DispatchVerdict(CLIENT_LIMITED, int(lags.size), p50, p99, worst, late, achieved_rate_rps,
                               offered_rate_rps, f"client-limited: {'; '.join(why)}; {rate}")
    return DispatchVerdict(ON_SCHEDULE, int(lags.size), p50, p99, worst, 0, achieved_rate_rps, offered_rate_rps,
                           f"on schedule: p99 dispatch lag {p99 * 1e3:.2f} ms, worst {worst * 1e3:.1f} ms; {rate}")


def send_rate_rps(times_s) -> float | None:
    """Rate of a set of instants (seconds): (n - 1) / (last - first); None for fewer than 2 or a zero span."""
    times = np.asarray(times_s, dtype=np.float64)
    times = times[~np.isnan(times)]
    if times.size < 2:
        return None
    span = float(times.max() - times.min())
    return (times.size - 1) / span if span > 0 else None


def records_verdict(records: pl.DataFrame) -> DispatchVerdict:
    """The verdict of request records (`burstgpt.records` schema): lags of the sent ones, achieved send rate,
    offered rate from their scheduled times."""
    sent = records["sent_s"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    scheduled = records["scheduled_s"].cast(pl.Float64).to_numpy()
    return dispatch_verdict(sent - scheduled, achieved_rate_rps=send_rate_rps(sent),
                            offered_rate_rps=send_rate_rps(scheduled))


def worker_verdicts(records: pl.DataFrame, worker_ids: np.ndarray) -> dict[int, DispatchVerdict]:
    """One verdict per worker: `worker_ids` gives each record's sender (same length as `records`)."""
    ids = np.asarray(worker_ids)
    return {int(w): records_verdict(records.filter(pl.Series(ids == w))) for w in np.unique(ids)}
