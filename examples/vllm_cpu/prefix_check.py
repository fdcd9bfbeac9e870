"""Does a real vLLM engine see the prefixes a burstgpt workload shares? (issue 10's real-engine check.)

Against the vLLM CPU server of README.md here (it has prefix caching on by default), sends the same bursty
workload twice: once with shared system prompts (4 prompts of 512 tokens, 80 % of requests start with one),
once with the same lengths and arrivals but every prefix id made unique (no sharing). Prompts are rendered from
the prefix ids under the model's own tokenizer, so equal ids are equal tokens. Prints the prefix-cache hit rate
from the scraped `vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total` and the TTFT of both runs.

    .venv/bin/python examples/vllm_cpu/prefix_check.py --url http://127.0.0.1:8011 --tokenizer tiny-llama/tokenizer.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from burstgpt.client import EndpointOptions, LoadGenerator, RunOptions
from burstgpt.workload import RequestLengths, Responses, ScheduledArrivals, WorkloadSpec, build_workload
from burstgpt.workload.prefixes import PrefixSharing, SystemPrompts


def shared_and_unique(rate: float, duration_s: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    spec = WorkloadSpec(ScheduledArrivals(alpha=0.5, rate_rps=rate), duration_s=duration_s, seed=seed,
                        lengths=RequestLengths(min_input_tokens=600, max_input_tokens=1200),
                        responses=Responses("fixed", output_tokens=32),
                        prefixes=PrefixSharing(SystemPrompts(fraction=0.8, pool_size=4, tokens=512, popularity=0.0),
                                               block_size=128))
    shared = build_workload(spec)
    # Same rows, but every id distinct: the prompts have the same lengths and no common prefix.
    unique = shared.with_columns(
        pl.when(pl.col("prefix_block_ids").is_not_null())
        .then(pl.col("prefix_block_ids").list.eval(pl.int_range(pl.len())) + 1_000_000_000
              + pl.col("request_id") * 1_000)
        .otherwise(None).alias("prefix_block_ids"))
    return shared, unique


def run(workload: pl.DataFrame, url: str, tokenizer: str) -> dict:
    result = LoadGenerator(workload, EndpointOptions(url, timeout_s=60.0),
                           RunOptions(model="tiny", metrics_url=f"{url}/metrics", tokenizer=tokenizer,
                                      progress=False)).run_sync()
    records, server = result.records, result.server_metrics
    ok = records.filter(pl.col("status") == "ok")
    ttft = ok["first_token_s"] - ok["sent_s"]
    figures = {"requests": records.height, "ok": ok.height, "ttft_p50_ms": 1e3 * ttft.median(),
               "ttft_p90_ms": 1e3 * ttft.quantile(0.9), "input_tokens": int(ok["input_tokens"].sum())}
    for column in ("prefix_cache_queries_total", "prefix_cache_hits_total"):
        if server is not None and column in server.columns:
            values = server[column].drop_nulls()
            figures[column] = float(values.max() - values.min()) if values.len() else float("nan")
    queries = figures.get("prefix_cache_queries_total")
    figures["hit_rate"] = figures.get("prefix_cache_hits_total", float("nan")) / queries if queries else float("nan")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8011")
    parser.add_argument("--tokenizer", required=True, type=Path, help="the served model's tokenizer.json")
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    shared, unique = shared_and_unique(args.rate, args.duration, args.seed)
    rows = {}
    for name, workload in (("shared ids", shared), ("unique ids", unique)):
        rows[name] = run(workload, args.url, str(args.tokenizer))
        print(name, rows[name], flush=True)
    print("\n| | shared ids | unique ids |\n|---|---|---|")
    for key in ("requests", "ok", "input_tokens", "prefix_cache_queries_total", "prefix_cache_hits_total",
                "hit_rate", "ttft_p50_ms", "ttft_p90_ms"):
        a, b = rows["shared ids"].get(key, float("nan")), rows["unique ids"].get(key, float("nan"))
        print(f"| {key} | {a:.4g} | {b:.4g} |")


if __name__ == "__main__":
    main()
