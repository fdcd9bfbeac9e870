"""Average metrics over a request-records table (`burstgpt.records`): the paper's R, L and P.

Pure functions: they take the records frame written by the load generator or the simulator and return
frames or typed summaries. Times are seconds since the run's start.

Definitions (per request, seconds):
- `ttft_s`    = first_token_s - sent_s (streamed requests; null when no token arrived or not streamed)
- `tpot_s`    = (end_s - first_token_s) / (output_tokens - 1), only when output_tokens > 1
- `itl_s`     = gaps between consecutive streamed chunks (`chunk_times_s`), one value per gap
- `e2e_s`     = end_s - sent_s
- `latency_per_output_token_s` = e2e_s / output_tokens, only when output_tokens > 0
- `dispatch_lag_s` = sent_s - scheduled_s (how late the client sent it)

Latency statistics (L) are over succeeded requests only; R = failed / (succeeded + failed) (cancelled and
never-sent requests are the client's doing, not the server's, and are counted apart); throughput (P) counts
succeeded requests and their tokens over the run's span, from the first send to the last end. The result
types (`Stats`, `Accounting`) are those of the run summary, `burstgpt.records.summary`.
"""

from __future__ import annotations

import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.records import (
    ERROR_CLASSES,
    STATUS_CANCELLED,
    STATUS_FAILED,
    STATUS_NOT_SENT,
    STATUS_OK,
    Accounting,
    Stats,
    conform_request_records,
)

#: Latency columns added by `derive_request_metrics` (all seconds).
LATENCY_COLUMNS = ("ttft_s", "tpot_s", "e2e_s", "latency_per_output_token_s")

#: Names accepted in an SLO spec and the per-request column each bounds.
SLO_COLUMNS = {
    "ttft": "ttft_s",
    "tpot": "tpot_s",
    "e2e": "e2e_s",
    "latency_per_output_token": "latency_per_output_token_s",
}

#: Quantiles reported everywhere, with their key names.
QUANTILES = {"median": 0.5, "p90": 0.9, "p99": 0.99}


def derive_request_metrics(records: pl.DataFrame) -> pl.DataFrame:
    """The records conformed to the schema, plus the per-request latency and dispatch-lag columns (seconds)."""
    frame = conform_request_records(records)
    out_tokens = pl.col("output_tokens")
    return frame.with_columns(
        (pl.col("first_token_s") - pl.col("sent_s")).alias("ttft_s"),
        pl.when(out_tokens > 1)
        .then((pl.col("end_s") - pl.col("first_token_s")) / (out_tokens - 1))
        .otherwise(None)
        .alias("tpot_s"),
        (pl.col("end_s") - pl.col("sent_s")).alias("e2e_s"),
        pl.when(out_tokens > 0)
        .then((pl.col("end_s") - pl.col("sent_s")) / out_tokens)
        .otherwise(None)
        .alias("latency_per_output_token_s"),
        (pl.col("sent_s") - pl.col("scheduled_s")).alias("dispatch_lag_s"),
    )


def inter_token_latencies(records: pl.DataFrame) -> pl.Series:
    """Gaps (seconds) between consecutive streamed chunks of succeeded requests, one value per gap."""
    frame = conform_request_records(records).filter(pl.col("status") == STATUS_OK)
    gaps = frame.select(pl.col("chunk_times_s").list.diff(null_behavior="drop").alias("itl_s")).explode("itl_s")
    return gaps["itl_s"].drop_nulls()


def stats_exprs(column: str, prefix: str | None = None) -> list[pl.Expr]:
    """Polars aggregations (mean, median, p90, p99, std) of `column`, named `<prefix>_<stat>`."""
    prefix = prefix or column
    col = pl.col(column)
    exprs = [col.count().alias(f"{prefix}_count"), col.mean().alias(f"{prefix}_mean")]
    exprs += [col.quantile(q, "linear").alias(f"{prefix}_{name}") for name, q in QUANTILES.items()]
    exprs += [col.std(ddof=1).alias(f"{prefix}_std"), col.max().alias(f"{prefix}_max")]
    return exprs


def summarize(values: pl.Series) -> Stats:
    """Stats of a numeric series (nulls and NaNs ignored); quantiles use linear interpolation (numpy's default)."""
    series = values.cast(pl.Float64).drop_nulls().drop_nans().rename("v")
    row = pl.DataFrame({"v": series}).select(stats_exprs("v", "s")).row(0, named=True)
    return Stats(
        count=int(row["s_count"]),
        mean=row["s_mean"],
        median=row["s_median"],
        p90=row["s_p90"],
        p99=row["s_p99"],
        std=row["s_std"],
        max=row["s_max"],
    )


def account_requests(records: pl.DataFrame) -> Accounting:
    """Count requests by status and failures by error class. `sent` counts records with a send time, so a record
    whose status disagrees with its sent_s (or an unknown status) leaves the accounting unbalanced."""
    frame = conform_request_records(records)
    status = pl.col("status")
    row = frame.select(
        pl.len().alias("total"),
        pl.col("sent_s").is_not_null().sum().alias("sent"),
        (status == STATUS_OK).sum().alias("succeeded"),
        (status == STATUS_FAILED).sum().alias("failed"),
        (status == STATUS_CANCELLED).sum().alias("cancelled"),
        (status == STATUS_NOT_SENT).sum().alias("not_sent"),
    ).row(0, named=True)
    by_class = (
        frame.filter(status == STATUS_FAILED)
        .group_by("error_class")
        .len()
        .with_columns(pl.col("error_class").fill_null("other"))
    )
    counts = dict(zip(by_class["error_class"].to_list(), by_class["len"].to_list(), strict=True))
    ordered = {name: int(counts.pop(name)) for name in ERROR_CLASSES if name in counts}
    ordered.update({name: int(n) for name, n in counts.items()})  # unknown classes are still shown
    return Accounting(failures_by_class=ordered, **{k: int(v) for k, v in row.items()})


def failure_rate(records: pl.DataFrame) -> float | None:
    """R: failed / (succeeded + failed); None when nothing finished."""
    acc = account_requests(records)
    finished = acc.succeeded + acc.failed
    return acc.failed / finished if finished else None


def run_span_s(records: pl.DataFrame) -> tuple[float | None, float | None]:
    """(first send, last end) over sent requests, seconds; (None, None) when nothing was sent."""
    frame = conform_request_records(records).filter(pl.col("sent_s").is_not_null())
    if frame.height == 0:
        return None, None
    return float(frame["sent_s"].min()), float(frame["end_s"].max())


def throughput(records: pl.DataFrame) -> dict:
    """P: succeeded requests/s and input/output/total tokens/s over the run's span (first send to last end)."""
    start, end = run_span_s(records)
    duration = (end - start) if start is not None else 0.0
    ok = conform_request_records(records).filter(pl.col("status") == STATUS_OK)
    input_tokens = int(ok["input_tokens"].fill_null(0).sum())
    output_tokens = int(ok["output_tokens"].fill_null(0).sum())

    def rate(count: float) -> float | None:
        return count / duration if duration > 0 else None

    return {
        "duration_s": duration,
        "requests_per_s": rate(ok.height),
        "input_tokens_per_s": rate(input_tokens),
        "output_tokens_per_s": rate(output_tokens),
        "total_tokens_per_s": rate(input_tokens + output_tokens),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
    }


def parse_slo(spec: str | None) -> dict[str, float]:
    """Parse `ttft=2,tpot=0.1` into {'ttft': 2.0, 'tpot': 0.1} (seconds). Keys: see `SLO_COLUMNS`."""
    if not spec:
        return {}
    slo: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in SLO_COLUMNS:
            raise BurstGPTError(f"bad --slo item {part!r}: use NAME=SECONDS with NAME in {', '.join(SLO_COLUMNS)}")
        try:
            bound = float(value)
        except ValueError:
            raise BurstGPTError(f"bad --slo value in {part!r}: not a number") from None
        if not bound > 0:
            raise BurstGPTError(f"bad --slo value in {part!r}: must be > 0 seconds")
        slo[name] = bound
    return slo


def meets_slo_expr(slo: dict[str, float]) -> pl.Expr:
    """Boolean expression over derived records: succeeded and every bounded metric within its SLO.

    A metric that is undefined for a request (e.g. TPOT with one output token) does not count against it;
    TTFT undefined because nothing was streamed does count against a TTFT SLO.
    """
    expr = pl.col("status") == STATUS_OK
    for name, bound in slo.items():
        column = pl.col(SLO_COLUMNS[name])
        if name == "ttft":
            expr = expr & column.is_not_null() & (column <= bound)
        else:
            expr = expr & (column.is_null() | (column <= bound))
    return expr


def goodput(records: pl.DataFrame, slo: dict[str, float]) -> dict:
    """Requests that succeeded within every SLO: count, per second over the run's span, share of succeeded."""
    derived = derive_request_metrics(records)
    good = int(derived.select(meets_slo_expr(slo).sum()).item())
    succeeded = int((derived["status"] == STATUS_OK).sum())
    start, end = run_span_s(records)
    duration = (end - start) if start is not None else 0.0
    return {
        "slo": dict(slo),
        "good_requests": good,
        "goodput_requests_per_s": good / duration if duration > 0 else None,
        "fraction_of_succeeded": good / succeeded if succeeded else None,
    }


def send_rate(times_s: pl.Series) -> float | None:
    """Achieved rate of a sequence of instants: (n - 1) / (last - first), per second; None for < 2 instants."""
    times = times_s.drop_nulls()
    if times.len() < 2:
        return None
    span = float(times.max()) - float(times.min())
    return (times.len() - 1) / span if span > 0 else None


def average_metrics(records: pl.DataFrame, slo: dict[str, float] | None = None) -> dict:
    """The run's averages (the paper's R^avg, L^avg, P^avg) plus accounting, dispatch lag and goodput.

    Returns a JSON-ready dict: `requests` (accounting), `failure_rate`, `latency_s` (Stats per metric, over
    succeeded requests), `throughput`, `schedule` (offered and achieved send rates, dispatch-lag stats),
    `goodput` (only with an SLO).
    """
    derived = derive_request_metrics(records)
    ok = derived.filter(pl.col("status") == STATUS_OK)
    latency = {column.removesuffix("_s"): summarize(ok[column]).as_dict() for column in LATENCY_COLUMNS}
    latency["itl"] = summarize(inter_token_latencies(records)).as_dict()
    summary = {
        "requests": account_requests(records).as_dict(),
        "failure_rate": failure_rate(records),
        "latency_s": latency,
        "throughput": throughput(records),
        "schedule": {
            "offered_rate_rps": send_rate(derived["scheduled_s"]),
            "achieved_send_rate_rps": send_rate(derived["sent_s"]),
            "dispatch_lag_s": summarize(derived["dispatch_lag_s"]).as_dict(),
        },
    }
    if slo:
        summary["goodput"] = goodput(records, slo)
    return summary


def metrics_by_turn(records: pl.DataFrame) -> pl.DataFrame:
    """Metrics cut by turn index (multi-turn runs: records with a `turn`; rows without one are left out).

    One row per turn, ascending: `turn`, `requests`, `succeeded`, `failure_rate` (failed / (succeeded +
    failed), null when none finished), `input_tokens_mean` (later turns carry the conversation so far), and
    the mean and median of ttft_s, tpot_s and e2e_s over succeeded requests (seconds)."""
    derived = derive_request_metrics(records).filter(pl.col("turn").is_not_null())
    ok = pl.col("status") == STATUS_OK
    failed = (pl.col("status") == STATUS_FAILED).sum()
    finished = ok.sum() + failed
    latency = [expr for column in ("ttft_s", "tpot_s", "e2e_s") for expr in (
        pl.col(column).filter(ok).mean().alias(f"{column.removesuffix('_s')}_mean_s"),
        pl.col(column).filter(ok).median().alias(f"{column.removesuffix('_s')}_median_s"))]
    return (
        derived.group_by("turn")
        .agg(
            pl.len().cast(pl.Int64).alias("requests"),
            ok.sum().cast(pl.Int64).alias("succeeded"),
            pl.when(finished > 0).then(failed / finished).alias("failure_rate"),
            pl.col("input_tokens").mean().alias("input_tokens_mean"),
            *latency,
        )
        .sort("turn")
    )
