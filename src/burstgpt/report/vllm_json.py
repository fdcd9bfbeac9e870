"""A run's summary in the result-file shape of `vllm bench serve --save-result` (vLLM's
`vllm/benchmarks/serve.py`), so notebooks and dashboards written for vLLM's files read ours. The key-by-key
mapping is in docs/report.md.

The statistics follow vLLM's definitions, computed from the request records: over succeeded requests,
`np.mean` / `np.median` / `np.std` (population, ddof 0) / `np.percentile` (linear), in milliseconds, and 0 when
there are no values (as vLLM does); TPOT only for requests with more than one output token; ITL one value per
gap between streamed chunks. `duration` is the first send to the last end.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

from burstgpt.metrics.requests import derive_request_metrics, inter_token_latencies, meets_slo_expr
from burstgpt.records import STATUS_CANCELLED, STATUS_FAILED, STATUS_OK, RunSummary

#: Percentiles written as p<N>_<metric>_ms by default (vLLM's default is 99 alone).
DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)
VLLM_RESULT_FILE = "vllm_bench_result.json"


def _percentile_key(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)  # vLLM's p_word


def _metric_stats(name: str, values: np.ndarray, percentiles) -> dict[str, float]:
    values = values if values.size else np.zeros(1)  # vLLM: np.mean(values or 0)
    result = {f"mean_{name}_ms": float(np.mean(values) * 1000), f"median_{name}_ms": float(np.median(values) * 1000),
              f"std_{name}_ms": float(np.std(values) * 1000)}
    for p in percentiles:
        result[f"p{_percentile_key(p)}_{name}_ms"] = float(np.percentile(values, p) * 1000)
    return result


def _max_concurrent_requests(sent_s: np.ndarray, end_s: np.ndarray) -> int:
    """vLLM's max_concurrent_requests: requests active in each whole second from the first send (a request
    counts in every second bucket from its start's to its end's, both included); the largest count."""
    if sent_s.size == 0:
        return 0
    start = np.floor(sent_s - sent_s.min()).astype(np.int64)
    end = np.floor(end_s - sent_s.min()).astype(np.int64)
    length = int(end.max()) + 2
    change = np.bincount(start, minlength=length) - np.bincount(end + 1, minlength=length)
    return int(np.cumsum(change).max())


def _max_output_tokens_per_s(succeeded: pl.DataFrame) -> float | None:
    """vLLM's max_output_tokens_per_s: the most chunk arrivals (first token and every later chunk) in one whole
    second from the first send. None without recorded chunk times (the simulator does not record them)."""
    if succeeded.height == 0 or succeeded["chunk_times_s"].null_count() == succeeded.height:
        return None
    origin = float(succeeded["sent_s"].min())
    times = succeeded.select(pl.col("chunk_times_s").explode().drop_nulls())["chunk_times_s"].to_numpy()
    if times.size == 0:
        return None
    return float(np.bincount(np.floor(times - origin).clip(0).astype(np.int64)).max())


def _backend(config: dict, producer: str) -> str:
    """vLLM's backend name for the API the run used ("burstgpt-simulate" for a simulated run)."""
    if producer == "simulate":
        return "burstgpt-simulate"
    return "openai-chat" if "chat" in str(config.get("api") or "") else "openai"


def vllm_bench_result(records: pl.DataFrame, config: dict, summary: RunSummary, *,
                      percentiles=DEFAULT_PERCENTILES, slo: dict[str, float] | None = None) -> dict:
    """The JSON-ready dict `vllm bench serve --save-result` would write for this run (see module doc).

    `config`: the run's config.json; `summary`: its `RunSummary` (for the SLOs and the offered rate); `slo`:
    goodput SLOs in seconds (default: the summary's), giving request_goodput (null without SLOs, as in vLLM).
    """
    derived = derive_request_metrics(records)
    sent = derived.filter(pl.col("sent_s").is_not_null())
    ok = sent.filter(pl.col("status") == STATUS_OK)
    failed = int(sent["status"].is_in([STATUS_FAILED, STATUS_CANCELLED]).sum())
    ends = sent["end_s"].drop_nulls()
    duration = float(ends.max() - sent["sent_s"].min()) if sent.height and ends.len() else 0.0
    completed = ok.height
    input_tokens = int(ok["input_tokens"].fill_null(0).sum())
    output_tokens = int(ok["output_tokens"].fill_null(0).sum())
    slo = slo if slo is not None else (summary.goodput.slo if summary.goodput else None)
    good = int(ok.select(meets_slo_expr(slo).sum()).item()) if slo else None

    def per_s(count):
        return count / duration if duration > 0 else 0.0

    models = ok["model"].drop_nulls()
    model_id = config.get("model_used") or config.get("model") or (models.mode()[0] if models.len() else None)
    offered = summary.schedule.offered_rate_rps
    backend = _backend(config, summary.producer)
    result = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": backend,
        "backend": backend,
        "label": config.get("label"),
        "model_id": model_id,
        "tokenizer_id": config.get("tokenizer") or model_id,
        "num_prompts": records.height,
        "request_rate": offered if offered is not None else "inf",
        "burstiness": config.get("burstiness"),
        "max_concurrency": config.get("max_concurrency"),
        "duration": duration,
        "completed": completed,
        "failed": failed,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": per_s(completed),
        "request_goodput": per_s(good) if good is not None else None,
        "output_throughput": per_s(output_tokens),
        "total_token_throughput": per_s(input_tokens + output_tokens),
        "max_output_tokens_per_s": _max_output_tokens_per_s(ok),
        "max_concurrent_requests": _max_concurrent_requests(ok["sent_s"].to_numpy(), ok["end_s"].to_numpy()),
    }
    for name, values in (("ttft", ok["ttft_s"]), ("tpot", ok["tpot_s"]), ("itl", inter_token_latencies(records)),
                         ("e2el", ok["e2e_s"])):
        result |= _metric_stats(name, values.drop_nulls().to_numpy().astype(float), percentiles)
    # Metadata, as `vllm bench serve --metadata KEY=VALUE` adds it: where the figures came from.
    result |= {"burstgpt_producer": summary.producer, "burstgpt_run_id": summary.run_id,
               "burstgpt_not_sent": summary.requests.not_sent}
    return result
