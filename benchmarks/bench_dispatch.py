"""Does the load generator keep its schedule? burstgpt's open-loop client against a naive one.

Starts `benchmarks/fast_server.py` in another process, then drives it at --rate requests/s for --duration
seconds twice, in this process: (1) burstgpt's client (`burstgpt.client.runner.LoadGenerator`: absolute deadlines
from one start time, records to JSONL), (2) a naive client that sleeps each inter-arrival gap in turn
(`asyncio.sleep(gap)`, so every wake-up's lateness accumulates) and sends with the same request code.
Prints, for each, the achieved send rate (target: within 1% of --rate) and p50/p99 dispatch lag
(sent - scheduled; target p99 under 5 ms), and the naive/burstgpt ratios.

    python benchmarks/bench_dispatch.py [--rate 500] [--duration 30] [--arrival constant|poisson]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import polars as pl

from burstgpt.client.openai import EndpointOptions, RequestSender, request_body
from burstgpt.client.runner import LoadGenerator, RunOptions
from burstgpt.metrics.requests import send_rate, summarize
from burstgpt.records import REQUEST_RECORD_SCHEMA, RequestRecord, conform_request_records

HERE = Path(__file__).resolve().parent


def make_workload(rate: float, duration_s: float, arrival: str, seed: int) -> pl.DataFrame:
    n = int(round(rate * duration_s))
    if arrival == "constant":
        arrivals = np.arange(n) / rate
    else:
        arrivals = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, n))
        arrivals -= arrivals[0]
    return pl.DataFrame({"request_id": np.arange(n), "arrival_s": arrivals, "input_tokens": np.full(n, 8),
                         "model": ["fast"] * n})


async def naive_client(workload: pl.DataFrame, endpoint: EndpointOptions) -> pl.DataFrame:
    """Sleep each gap, then send: the accumulated-sleep pattern common in simple load generators."""
    arrivals = workload["arrival_s"].to_numpy()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sender = RequestSender(session, endpoint, {}, t0)
        tasks = []
        previous = 0.0
        for i, arrival in enumerate(arrivals):
            await asyncio.sleep(arrival - previous)
            previous = arrival
            record = RequestRecord(request_id=i, model="fast", service=None, scheduled_s=float(arrival),
                                   input_tokens=8)
            body = request_body(endpoint, model="fast", prompt="hi " * 8, output_tokens=None,
                                max_output_tokens=3)
            tasks.append(asyncio.create_task(sender.send(record, body)))
        records = await asyncio.gather(*tasks)
    return conform_request_records(pl.DataFrame([vars(r) for r in records], schema=REQUEST_RECORD_SCHEMA))


def figures(records: pl.DataFrame) -> dict:
    lag = summarize(records["sent_s"] - records["scheduled_s"])
    return {
        "achieved_rate_rps": send_rate(records["sent_s"]),
        "lag_p50_ms": lag.median * 1000,
        "lag_p99_ms": lag.p99 * 1000,
        "ok": int((records["status"] == "ok").sum()),
        "sent": records.height,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests/s (default 500)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per client (default 30)")
    parser.add_argument("--arrival", choices=("constant", "poisson"), default="constant")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    server = subprocess.Popen([sys.executable, str(HERE / "fast_server.py")], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if not line.startswith("PORT "):
            raise SystemExit(f"fast_server did not start: {line!r}")
        url = f"http://127.0.0.1:{int(line.split()[1])}"
        workload = make_workload(args.rate, args.duration, args.arrival, args.seed)
        scheduled_rate = send_rate(workload["arrival_s"])
        endpoint = EndpointOptions(url, max_tokens=3, timeout_s=30.0)
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            ours = LoadGenerator(workload, endpoint, RunOptions(model="fast", progress=False), headers={},
                                 records_path=Path(tmp) / "requests.jsonl").run_sync().records
            ours_wall = time.perf_counter() - started
        started = time.perf_counter()
        naive = asyncio.run(naive_client(workload, endpoint))
        naive_wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(10)

    print(f"workload: {workload.height} requests, {args.arrival} arrivals, target {args.rate:g} req/s "
          f"(schedule's own rate {scheduled_rate:.2f} req/s), {args.duration:g} s per client")
    rows = [("burstgpt (absolute deadlines)", figures(ours), ours_wall),
            ("naive (accumulated sleeps)", figures(naive), naive_wall)]
    print(f"{'client':32s} {'achieved req/s':>15s} {'vs target':>10s} {'lag p50 ms':>11s} {'lag p99 ms':>11s}"
          f" {'ok/sent':>13s} {'wall s':>7s}")
    for name, fig, wall in rows:
        off = (fig["achieved_rate_rps"] / args.rate - 1) * 100
        print(f"{name:32s} {fig['achieved_rate_rps']:15.2f} {off:+9.2f}% {fig['lag_p50_ms']:11.3f}"
              f" {fig['lag_p99_ms']:11.3f} {fig['ok']:>6d}/{fig['sent']:<6d} {wall:7.1f}")
    ours_fig, naive_fig = rows[0][1], rows[1][1]
    print(f"naive / burstgpt: lag p50 x{naive_fig['lag_p50_ms'] / max(ours_fig['lag_p50_ms'], 1e-9):.1f}, "
          f"lag p99 x{naive_fig['lag_p99_ms'] / max(ours_fig['lag_p99_ms'], 1e-9):.1f}")
    within = abs(ours_fig["achieved_rate_rps"] / args.rate - 1) <= 0.01
    print(f"targets (burstgpt): rate within 1%: {'yes' if within else 'NO'}; "
          f"p99 lag < 5 ms: {'yes' if ours_fig['lag_p99_ms'] < 5 else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
