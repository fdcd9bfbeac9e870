"""Benchmark: generate a 10-million-request workload (arrivals + lengths + prompt ids) with the vectorised engine,
against a per-request Python loop doing the same work, measured in the same run.

Workload: the paper's default schedule (quadratic alpha 2 -> 0.25 -> 2, linear beta 1 -> 0.1 s) changing every
200 requests; Zipf(1.1) request lengths on [16, 4096] tokens; a prompt pool (synthetic texts, builtin
tokenizer) indexed by length, one uniformly chosen prompt id per request; the workload table assembled.

The loop baseline (random.gammavariate per gap, bisect on the Zipf CDF per length, random.choice among the
pool's ids of that length) is timed on a subset (--loop-requests, default 200,000) and extrapolated linearly to
the full size; the printout says so.

Then the same size with shared prefixes (issue 10): `build_workload` of a `WorkloadSpec` with the paper's
arrivals and Zipf lengths plus generated system prompts (half the requests start with one of 16 prompts of 512
tokens) and multi-turn sessions (3 turns on average, each extending the previous prompt and answer), as prefix
block ids of 64 tokens. Target: under 10 s.

    .venv/bin/python benchmarks/bench_workload.py [--requests 10000000] [--loop-requests 200000]
"""

from __future__ import annotations

import argparse
import bisect
import random
import time

import numpy as np

from burstgpt.workload.arrivals import scheduled_arrivals, shaped_schedule
from burstgpt.workload.generate import assemble_workload, seed_streams
from burstgpt.workload.lengths import ZipfLengths
from burstgpt.workload.prompts import PromptPool, synthetic_texts
from burstgpt.workload.tokenizer import BuiltinTokenizer

CHANGE_EVERY = 200


def vectorised(num_requests: int, pool: PromptPool, seed: int = 0):
    streams = seed_streams(seed)
    steps = -(-num_requests // CHANGE_EVERY)
    schedule = shaped_schedule((2.0, 0.25), (1.0, 0.1), "quadratic", "linear", steps, CHANGE_EVERY, "requests")
    arrivals = scheduled_arrivals(schedule, streams.arrivals, num_requests=num_requests)
    lengths = ZipfLengths(1.1, 16, 4096).sample(num_requests, streams.lengths)
    prompt_ids = pool.draw(lengths, streams.prompts)
    frame = assemble_workload(arrivals, lengths, max_output_tokens=2048)
    return frame, prompt_ids


def python_loop(num_requests: int, pool: PromptPool, seed: int = 0):
    rnd = random.Random(seed)
    steps = -(-num_requests // CHANGE_EVERY)
    schedule = shaped_schedule((2.0, 0.25), (1.0, 0.1), "quadratic", "linear", steps, CHANGE_EVERY, "requests")
    alpha, beta = schedule.alpha.tolist(), schedule.beta_s.tolist()
    zipf = ZipfLengths(1.1, 16, 4096)
    cdf = np.cumsum(zipf.pmf()).tolist()
    by_length: dict[int, list[int]] = {}
    for i, length in enumerate(pool.lengths.tolist()):
        by_length.setdefault(length, []).append(i)
    rows = []
    clock = 0.0
    for i in range(num_requests):
        step = i // CHANGE_EVERY
        if i:
            clock += rnd.gammavariate(alpha[step], beta[step])
        length = zipf.min_tokens + min(bisect.bisect_right(cdf, rnd.random()), len(cdf) - 1)
        candidates = by_length.get(length)
        prompt_id = rnd.choice(candidates) if candidates else -1
        rows.append((i, clock, length, None, 2048, prompt_id))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000_000)
    parser.add_argument("--loop-requests", type=int, default=200_000)
    args = parser.parse_args()

    start = time.perf_counter()
    tokenizer = BuiltinTokenizer()
    pool = PromptPool.build(synthetic_texts(64, 4096), tokenizer, np.arange(16, 4097), np.random.default_rng(0),
                            buffer_size=10_000)
    pool_s = time.perf_counter() - start
    print(f"prompt pool: {pool.lengths.size} prompts for {np.unique(pool.lengths).size} lengths in {pool_s:.2f} s "
          "(built once, not counted below)")

    vectorised(10_000, pool)  # warm up imports and caches
    start = time.perf_counter()
    frame, prompt_ids = vectorised(args.requests, pool)
    engine_s = time.perf_counter() - start
    assert frame.height == args.requests and np.all(prompt_ids >= 0)
    rate = args.requests / frame["arrival_s"][-1]
    print(f"vectorised: {args.requests:,} requests in {engine_s:.2f} s "
          f"({args.requests / engine_s / 1e6:.2f} M requests/s; mean rate of the workload {rate:.3g} req/s)")

    start = time.perf_counter()
    rows = python_loop(args.loop_requests, pool)
    loop_subset_s = time.perf_counter() - start
    assert len(rows) == args.loop_requests
    loop_s = loop_subset_s * args.requests / args.loop_requests
    print(f"python loop: {args.loop_requests:,} requests in {loop_subset_s:.2f} s, extrapolated to "
          f"{args.requests:,}: {loop_s:.1f} s")
    print(f"speed-up: {loop_s / engine_s:.1f}x; target < 5 s: {'met' if engine_s < 5 else 'NOT met'}")
    del frame, prompt_ids, rows

    from burstgpt.workload import RequestLengths, ScheduledArrivals, WorkloadSpec, build_workload
    from burstgpt.workload.prefixes import PrefixSharing, Sessions, SystemPrompts

    spec = WorkloadSpec(ScheduledArrivals(alpha=(2.0, 0.25), beta_s=(1.0, 0.1)), num_requests=args.requests,
                        lengths=RequestLengths(zipf_theta=1.1), seed=0,
                        prefixes=PrefixSharing(SystemPrompts(), Sessions(), block_size=64))
    start = time.perf_counter()
    frame = build_workload(spec)
    prefix_s = time.perf_counter() - start
    ids = frame["prefix_block_ids"].list.len().sum()
    print(f"with system prompts and sessions: {frame.height:,} requests, {ids:,} prefix ids, "
          f"{frame['session_id'].n_unique():,} sessions in {prefix_s:.2f} s; target < 10 s: "
          f"{'met' if prefix_s < 10 else 'NOT met'}")


if __name__ == "__main__":
    main()
