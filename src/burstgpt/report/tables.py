"""Terminal tables (rich) of run summaries: one run, or several side by side."""

from __future__ import annotations

from rich.table import Table

from burstgpt.records import RunSummary


def _fmt(value, unit: str = "", scale: float = 1.0, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value}{unit}"
    scaled = value * scale
    if abs(scaled) >= 10 ** digits:  # large figures in full, not as 1.58e+03
        return f"{scaled:,.0f}{unit}"
    return f"{scaled:.{digits}g}{unit}"


def summary_rows(summary: RunSummary) -> list[tuple[str, str]]:
    """(label, formatted value) pairs of the figures a user reads first."""
    req, lat, thr, sched, run = (summary.requests, summary.latency_s, summary.throughput, summary.schedule,
                                 summary.run)
    rows = [
        ("producer", summary.producer),
        ("loop", run.loop + (f" (max concurrency {run.max_concurrency})" if run.max_concurrency else "")),
        ("requests", f"{req.total} total, {req.sent} sent = {req.succeeded} ok + {req.failed} failed"
                     f" + {req.cancelled} cancelled; {req.not_sent} not sent"),
        ("accounted for", _fmt(req.balanced)),
        ("failure rate R", _fmt(summary.failure_rate, " %", 100)),
    ]
    if run.interrupted:
        rows.append(("interrupted", run.stop_reason or "yes"))
    if req.failures_by_class:
        rows.append(("failures by class", ", ".join(f"{k} {v}" for k, v in req.failures_by_class.items())))
    for key, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "end-to-end"),
                       ("latency_per_output_token", "latency/output token")):
        stats = lat[key]
        if stats.count:
            rows.append((f"{label} (ms) mean/p50/p90/p99",
                         " / ".join(_fmt(getattr(stats, s), scale=1000) for s in ("mean", "median", "p90", "p99"))))
    lag = sched.dispatch_lag_s
    rows += [
        ("throughput P", f"{_fmt(thr.requests_per_s)} req/s, {_fmt(thr.input_tokens_per_s)} in tok/s, "
                         f"{_fmt(thr.output_tokens_per_s)} out tok/s, {_fmt(thr.total_tokens_per_s)} tok/s"),
        ("offered / achieved send rate", f"{_fmt(sched.offered_rate_rps)} / "
                                         f"{_fmt(sched.achieved_send_rate_rps)} req/s"),
        ("dispatch lag p50/p99/max (ms)",
         " / ".join(_fmt(value, scale=1000) for value in (lag.median, lag.p99, lag.max))),
    ]
    if summary.goodput:
        good = summary.goodput
        slo = ",".join(f"{k}={v:g}" for k, v in good.slo.items())
        rows.append((f"goodput ({slo})", f"{_fmt(good.goodput_requests_per_s)} req/s, "
                                          f"{_fmt(good.fraction_of_succeeded, ' %', 100)} of ok"))
    if summary.server:
        kv = summary.server.kv_cache_usage_perc
        rows.append(("KV-cache usage mean/max", f"{_fmt(kv.mean, ' %', 100)} / {_fmt(kv.max, ' %', 100)}"))
        rows.append(("preemptions during run", _fmt(summary.server.num_preemptions_increase)))
    return rows


def summary_table(summary: RunSummary, title: str = "") -> Table:
    """A two-column table of one run's summary."""
    table = Table(title=title or None, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in summary_rows(summary):
        table.add_row(label, value)
    return table


def comparison_table(summaries: list[RunSummary], labels: list[str]) -> Table:
    """Several runs side by side, one column per run."""
    table = Table(title="run comparison")
    table.add_column("metric", style="bold")
    for label in labels:
        table.add_column(label)
    per_run = [dict(summary_rows(summary)) for summary in summaries]
    keys: list[str] = []
    for rows in per_run:
        keys += [k for k in rows if k not in keys]
    for key in keys:
        table.add_row(key, *(rows.get(key, "-") for rows in per_run))
    return table
