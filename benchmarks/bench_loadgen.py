"""How much load can `burstgpt bench` put out? Rate steps against a cheap static-SSE target, 1 sender and all.

Starts a target that answers every /v1/completions and /v1/chat/completions with the same static SSE body (8
streamed tokens, a usage chunk, [DONE]): Debian's nginx (config in a temp dir, 127.0.0.1 only, access log of
`$msec` per request) or, when nginx is absent, a multi-process Python server (aiohttp, SO_REUSEPORT, one
process per core). Measures the target's ceiling with `wrk` when installed, then steps the Poisson rate up for
1 sender and for all senders (`bench --workers`), and prints per rate:

- `server req/s`: requests the target logged over the run, over the span between its first and last one;
- `span/sched`: the client's send span over the schedule's span (1.00: the schedule was kept);
- `CPU ms/req`: client CPU time (user + sys of every sender process, from the run itself) per request sent;
- `lag p50/p99 ms`: dispatch lag (sent - scheduled); `verdict`: `burstgpt.client.timing` (client-limited or not);
- `failed`: failed requests by class (client_limit: the client's own limits; others: the target's).

Then, for all senders, a run at twice the highest rate sustained within 5 %: it should end with the
client-limited verdict, not with connection failures. The 1-sender figures are the baseline of the same run
(ratio printed). `vllm bench serve` and `aiperf` are run on the same target when installed (detected only).

    python benchmarks/bench_loadgen.py [--duration 5] [--rates 2000,4000,5000,6000,7000,8500,10000] [--workers N]

The machine is shared in development: figures then come out low; CPU ms/request is the steadier one.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl

from burstgpt.client.openai import EndpointOptions
from burstgpt.client.runner import LoadGenerator, RunOptions
from burstgpt.client.timing import records_verdict
from burstgpt.client.workers import MultiSenderRun
from burstgpt.machine import available_cores

TOKENS = 8  # streamed tokens per response


def sse_body() -> str:
    chunks = "".join(f'data: {{"choices":[{{"index":0,"text":" t{i}"}}]}}\n\n' for i in range(TOKENS))
    usage = f'data: {{"choices":[],"usage":{{"prompt_tokens":8,"completion_tokens":{TOKENS},"total_tokens":{8 + TOKENS}}}}}\n\n'
    return chunks + usage + "data: [DONE]\n\n"


MODELS_BODY = '{"object":"list","data":[{"id":"static","object":"model","owned_by":"bench"}]}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Target:
    """The static target: nginx, or the Python fallback. `log` gets one `$msec` line per request."""

    def __init__(self, workdir: Path, processes: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "requests.log"
        self.kind = "nginx" if shutil.which("nginx") else "python"
        self.processes = processes
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        if self.kind == "nginx":
            self._start_nginx()
        else:
            self._start_python()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"target ({self.kind}) did not start")
                time.sleep(0.05)

    def _start_nginx(self) -> None:
        body = sse_body().replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        temp = self.workdir
        config = textwrap.dedent(f"""
            worker_processes {self.processes};
            daemon off;
            pid {temp}/nginx.pid;
            error_log {temp}/error.log warn;
            worker_rlimit_nofile 65536;
            events {{ worker_connections 16384; multi_accept on; }}
            http {{
                access_log off;
                client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;
                fastcgi_temp_path {temp}/fastcgi; uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
                keepalive_requests 10000000; keepalive_timeout 120s;
                log_format stamp '$msec';
                server {{
                    listen 127.0.0.1:{self.port} backlog=4096 reuseport;
                    location = /v1/models {{ default_type application/json; return 200 '{MODELS_BODY}'; }}
                    location ~ ^/v1/(chat/)?completions$ {{
                        access_log {self.log} stamp;  # unbuffered: every line is there when the run ends
                        default_type text/event-stream;
                        return 200 "{body}";
                    }}
                }}
            }}
        """)
        (self.workdir / "nginx.conf").write_text(config)
        self.procs.append(subprocess.Popen(["nginx", "-c", str(self.workdir / "nginx.conf"), "-e",
                                            str(self.workdir / "error.log")], stderr=subprocess.DEVNULL))

    def _start_python(self) -> None:
        for k in range(self.processes):
            self.procs.append(subprocess.Popen([sys.executable, __file__, "--serve", str(self.port),
                                                str(self.log.with_suffix(f".{k}.log"))]))

    def log_lines(self) -> int:
        return sum(len(p.read_bytes().splitlines()) for p in self._logs())

    def stamps_since(self, skip: int, since_unix: float) -> np.ndarray:
        """Request times (s, wall clock) the target logged after its first `skip` lines and not before
        `since_unix` (all log files together)."""
        time.sleep(0.3)  # the Python target flushes its log every 200 ms
        lines = b"".join(p.read_bytes() for p in self._logs()).split()
        stamps = np.sort(np.asarray(lines, dtype=np.float64)) if lines else np.zeros(0)
        stamps = stamps[skip:]
        return stamps[stamps >= since_unix]

    def _logs(self) -> list[Path]:
        return [self.log] if self.kind == "nginx" else sorted(self.workdir.glob("requests.*.log"))

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGQUIT if self.kind == "nginx" else signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def serve_python(port: int, log_path: str) -> None:
    """The fallback target process: aiohttp on a shared port (SO_REUSEPORT), logging a stamp per request."""
    import asyncio

    from aiohttp import web

    body = sse_body().encode()
    log = open(log_path, "a", buffering=1 << 16)  # noqa: SIM115 - flushed at exit

    async def completions(request: web.Request) -> web.Response:
        await request.read()
        log.write(f"{time.time():.3f}\n")
        return web.Response(body=body, content_type="text/event-stream")

    async def models(request: web.Request) -> web.Response:
        return web.Response(text=MODELS_BODY, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        app.router.add_post("/v1/chat/completions", completions)
        app.router.add_get("/v1/models", models)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096, reuse_port=True).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        while not stop.is_set():
            await asyncio.sleep(0.2)
            log.flush()
        await runner.cleanup()
        log.close()

    asyncio.run(main())


def wrk_ceiling(url: str, duration_s: float, connections: int) -> float | None:
    """Requests/s wrk reaches against the target (POST, the same body), or None without wrk."""
    if not shutil.which("wrk"):
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                     'wrk.body = \'{"model":"static","prompt":"hi","max_tokens":8,"stream":true}\'\n')
    try:
        out = subprocess.run(["wrk", "-t", str(available_cores()), "-c", str(connections), "-d",
                              f"{duration_s:g}s", "-s", script.name, f"{url}/v1/completions"],
                             capture_output=True, text=True, timeout=duration_s + 30).stdout
    finally:
        os.unlink(script.name)
    match = re.search(r"Requests/sec:\s*([\d.]+)", out)
    return float(match.group(1)) if match else None


def poisson_workload(rate: float, duration_s: float, seed: int) -> pl.DataFrame:
    n = int(round(rate * duration_s))
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, n))
    return pl.DataFrame({"request_id": np.arange(n), "arrival_s": arrivals - arrivals[0],
                         "input_tokens": np.full(n, 8), "output_tokens": np.full(n, TOKENS)})


def one_step(target: Target, rate: float, duration_s: float, workers: int, seed: int) -> dict:
    """One run at `rate` req/s with `workers` senders; the figures of the table."""
    workload = poisson_workload(rate, duration_s, seed)
    endpoint = EndpointOptions(target.url, timeout_s=30.0)
    options = RunOptions(model="static", progress=False, check_server=False)
    skip = target.log_lines()
    since = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        records_path = Path(tmp) / "requests.jsonl"
        if workers == 1:
            result = LoadGenerator(workload, endpoint, options, records_path=records_path).run_sync()
        else:
            result = MultiSenderRun(workload, endpoint, options, workers=workers, records_path=records_path
                                    ).run_sync()
    stamps = target.stamps_since(skip, since)
    records = result.records
    verdict = records_verdict(records)
    sent = records["sent_s"].drop_nulls()
    sched = workload["arrival_s"]
    failed = records.filter(pl.col("status") == "failed")["error_class"].value_counts(sort=True)
    server_rate = (stamps.size - 1) / (stamps[-1] - stamps[0]) if stamps.size > 1 and stamps[-1] > stamps[0] else None
    return {
        "rate": rate,
        "workers": workers,
        "requests": workload.height,
        "server_rps": server_rate,
        "server_requests": int(stamps.size),
        "span_over_schedule": (float(sent.max() - sent.min()) / float(sched.max() - sched.min())),
        "cpu_ms_per_request": 1e3 * (result.cpu_s or 0.0) / max(sent.len(), 1),
        "lag_p50_ms": 1e3 * verdict.lag_p50_s if verdict.lag_p50_s is not None else None,
        "lag_p99_ms": 1e3 * verdict.lag_p99_s if verdict.lag_p99_s is not None else None,
        "verdict": verdict.label,
        "ok": int((records["status"] == "ok").sum()),
        "failed": ", ".join(f"{c} {n}" for c, n in failed.iter_rows()) or "-",
        "connection_waits": result.connection_waits,
    }


def sustained(row: dict) -> bool:
    """Kept within 5 %: the server saw the offered rate and every request succeeded."""
    return (row["server_rps"] is not None and abs(row["server_rps"] / row["rate"] - 1) <= 0.05
            and row["ok"] == row["requests"])


def print_row(row: dict) -> None:
    def fmt(value, spec):
        return format(value, spec) if value is not None else "-"

    print(f"{row['workers']:>7d} {row['rate']:>9.0f} {fmt(row['server_rps'], '>11.0f')} "
          f"{row['span_over_schedule']:>10.3f} {row['cpu_ms_per_request']:>10.3f} {fmt(row['lag_p50_ms'], '>8.2f')} "
          f"{fmt(row['lag_p99_ms'], '>9.2f')}  {row['verdict']:<15s} {'yes' if sustained(row) else 'no':<5s} "
          f"{row['failed']}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per rate step (default 5)")
    parser.add_argument("--rates", default="2000,4000,5000,6000,7000,8500,10000",
                        help="comma-separated rates, req/s (default 2000,4000,5000,6000,7000,8500,10000)")
    parser.add_argument("--workers", type=int, default=available_cores(), help="'all senders' (default: cores)")
    parser.add_argument("--target-processes", type=int, default=1,
                        help="nginx worker processes / Python server processes (default 1)")
    parser.add_argument("--wrk-seconds", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)  # internal: the Python fallback target
    args = parser.parse_args()
    if args.serve:
        serve_python(int(args.serve[0]), args.serve[1])
        return 0
    rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-loadgen-") as tmp:
        target = Target(Path(tmp), args.target_processes)
        target.start()
        try:
            print(f"target: {target.kind} ({args.target_processes} process(es)) at {target.url}, static SSE "
                  f"body of {TOKENS} tokens; client: {available_cores()} core(s) available; event loop: "
                  f"{os.environ.get('BURSTGPT_EVENT_LOOP', 'uvloop if installed')}")
            ceiling = wrk_ceiling(target.url, args.wrk_seconds, 64)
            print(f"target ceiling (wrk, 64 connections, {args.wrk_seconds:g} s): "
                  + (f"{ceiling:,.0f} req/s" if ceiling else "wrk not installed"))
            for tool in ("vllm", "aiperf"):
                print(f"{tool}: {'installed (not run by this script yet)' if shutil.which(tool) else 'not installed'}")
            print(f"\n{'senders':>7s} {'rate':>9s} {'server req/s':>11s} {'span/sched':>10s} {'CPU ms/req':>10s} "
                  f"{'lag p50':>8s} {'lag p99':>9s}  {'verdict':<15s} {'kept':<5s} failed")
            best: dict[int, float] = {}  # highest rate kept within 5 % at the server
            on_time: dict[int, float] = {}  # ... and with the on-schedule verdict
            rows = []
            for workers in sorted({1, args.workers}):
                for rate in rates:
                    row = one_step(target, rate, args.duration, workers, args.seed)
                    rows.append(row)
                    print_row(row)
                    if sustained(row):
                        best[workers] = max(best.get(workers, 0.0), rate)
                        if row["verdict"] != "client-limited":
                            on_time[workers] = max(on_time.get(workers, 0.0), rate)
            top = best.get(args.workers)
            overload = 2 * (top or rates[0])
            print(f"\ntwice the highest rate kept within 5 % with {args.workers} senders ({overload:.0f} req/s):")
            row = one_step(target, overload, args.duration, args.workers, args.seed)
            print_row(row)
            client_failures = row["failed"] != "-"
        finally:
            target.stop()
    print()
    one, all_ = best.get(1), best.get(args.workers)
    print(f"highest rate kept within 5 % at the server: 1 sender {one or 0:.0f} req/s, "
          f"{args.workers} senders {all_ or 0:.0f} req/s" + (f" (x{all_ / one:.2f})" if one and all_ else "")
          + f"; also on schedule (p99 lag <= 10 ms): {on_time.get(1, 0):.0f} and "
            f"{on_time.get(args.workers, 0):.0f} req/s")
    cpu = [r["cpu_ms_per_request"] for r in rows if r["workers"] == 1 and sustained(r)]
    print("client CPU per request (1 sender, sustained steps): "
          + (f"{min(cpu):.3f}-{max(cpu):.3f} ms" if cpu else "-"))
    print(f"goals: >= 7000 req/s with all senders: {'yes' if (all_ or 0) >= 7000 else 'NO'}; "
          f"<= 0.35 ms CPU/request: {'yes' if cpu and min(cpu) <= 0.35 else 'NO'}; "
          f"2x overload ends client-limited without failures: "
          f"{'yes' if row['verdict'] == 'client-limited' and not client_failures else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
