"""`burstgpt bench`: put a workload onto an OpenAI-compatible server on schedule and write a run directory."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console

from burstgpt import __version__
from burstgpt.client.timing import DEFAULT_MAX_CONNECTIONS
from burstgpt.commands.workload import add_generation_arguments, workload_from_args
from burstgpt.errors import BurstGPTError
from burstgpt.metrics.requests import parse_slo
from burstgpt.outputs import write_json_atomic
from burstgpt.records import CONFIG_FILE, RECORDS_JSONL, WORKLOAD_FILE, new_run_id, prepare_run_directory
from burstgpt.workload.io import write_workload
#: Header names whose values are never written to config.json.
_SECRET_HEADER_WORDS = ("authorization", "key", "token", "secret", "cookie", "password")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="load-test an OpenAI-compatible server with a workload (open loop) and write a run directory",
        description="Send every workload request at its scheduled time (open loop; closed with "
        "--max-concurrency), record one row per request, scrape the server's /metrics, and write a run "
        "directory (config.json, requests.parquet, timeseries.csv, server_metrics.csv, summary.json, "
        "timeline.png). Ctrl-C stops sending, lets in-flight requests finish for --grace seconds and still "
        "writes a valid summary. A non-empty run directory is refused unless --overwrite.",
    )
    add_bench_arguments(parser)
    parser.set_defaults(func=run)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("target")
    target.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000 "
                        "(or a full .../v1/completions URL)")
    target.add_argument("--endpoint", choices=("completions", "chat"), default="completions",
                        help="OpenAI API: /v1/completions or /v1/chat/completions (default: completions)")
    target.add_argument("--model", help="model name for rows without one (default: the first of /v1/models)")
    target.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="NAME",
                        help="environment variable holding the API key, sent as a Bearer token when set; "
                        "the key is never printed or saved (default: OPENAI_API_KEY)")
    target.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="extra HTTP header (repeatable); values of secret-looking names are not saved")
    target.add_argument("--extra-body", default="{}", metavar="JSON",
                        help="JSON object merged into every request body, e.g. '{\"top_p\": 0.9}'")

    request = parser.add_argument_group("requests")
    request.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                         help="stream responses (SSE); TTFT, TPOT and ITL need it (default: on)")
    request.add_argument("--include-usage", action=argparse.BooleanOptionalAction, default=True,
                         help="ask for a final usage chunk (stream_options.include_usage) (default: on)")
    request.add_argument("--max-tokens", type=int, help="max_tokens for rows with no output length or cap")
    request.add_argument("--ignore-eos", action="store_true",
                         help="send ignore_eos for every request (always sent when a row fixes output_tokens)")
    request.add_argument("--temperature", type=float, help="sampling temperature (default: server's)")
    request.add_argument("--timeout", type=float, default=30.0, metavar="S",
                         help="total timeout per request, seconds (default: 30, as in the paper)")
    request.add_argument("--ttft-timeout", type=float, metavar="S",
                         help="timeout for the first token (non-streamed: response headers), seconds")
    request.add_argument("--prompt-seed", type=int, default=0,
                         help="seed of synthetic prompts for rows without prompt text (default: 0)")
    request.add_argument("--chunk-times", action="store_true",
                         help="record every streamed chunk's arrival time (needed for ITL; larger output)")

    add_generation_arguments(parser)  # the workload: --workload FILE or the flags of `workload generate`
    schedule = parser.add_argument_group("schedule")
    schedule.add_argument("--max-concurrency", type=int, metavar="N",
                          help="cap requests in flight (makes the run closed-loop; the report says so)")
    schedule.add_argument("--grace", type=float, default=5.0, metavar="S",
                          help="after Ctrl-C/SIGTERM, seconds in-flight requests may finish (default: 5)")
    schedule.add_argument("--workers", default="auto", metavar="N",
                          help="sender processes sharing the schedule (requests dealt round-robin, a session "
                          "stays in one); 'auto': one per available core when the workload's busiest second "
                          "has over 1000 requests, else 1 (default: auto)")
    schedule.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                          help="cap of open connections (= requests in flight) over all senders; a request due "
                          "while all are busy waits, the wait counts as dispatch lag and the run warns "
                          f"(default: {DEFAULT_MAX_CONNECTIONS})")
    schedule.add_argument("--strict-timing", action="store_true",
                          help="exit with status 3 when the run is client-limited (p99 dispatch lag > 10 ms or "
                          "a request sent > 100 ms late)")
    schedule.add_argument("--ray-address", metavar="ADDR",
                          help="run the senders as Ray actors: 'local' (an in-process cluster), 'auto' (the "
                          "running cluster) or a cluster address; needs burstgpt[ray]")

    out = parser.add_argument_group("output")
    out.add_argument("-o", "--out", metavar="RUN_DIR", help="run directory (default: runs/bench-<UTC time>)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace the run in a non-empty RUN_DIR (its files are removed first)")
    out.add_argument("--metrics-url", help="Prometheus endpoint (default: <url's scheme://host:port>/metrics)")
    out.add_argument("--no-server-metrics", action="store_true", help="do not scrape /metrics")
    out.add_argument("--scrape-interval", type=float, default=1.0, metavar="S",
                     help="seconds between /metrics scrapes (default: 1)")
    out.add_argument("--window", type=float, default=10.0, metavar="S",
                     help="window of the instantaneous metrics, seconds (default: 10)")
    out.add_argument("--step", type=float, metavar="S", help="window step; < --window gives sliding windows")
    out.add_argument("--slo", help="goodput SLOs, seconds, e.g. ttft=2,tpot=0.1 (keys: ttft, tpot, e2e, "
                     "latency_per_output_token)")
    out.add_argument("--quiet", action="store_true", help="no live progress and no summary table")
    out.add_argument("--prometheus-port", type=int, metavar="P",
                     help="serve the client's own metrics (requests by status and failure class, TTFT, TPOT, ITL, "
                     "end-to-end latency, dispatch lag, in flight) for Prometheus on 127.0.0.1:P/metrics while "
                     "the run lasts; 0 picks a free port and prints it (see docs/grafana.md)")


def parse_headers(items: list[str]) -> dict[str, str]:
    headers = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise BurstGPTError(f"bad --header {item!r}: use 'NAME: VALUE'")
        headers[name.strip()] = value.strip()
    return headers


def _saved_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: ("<not saved>" if any(w in k.lower() for w in _SECRET_HEADER_WORDS) else v) for k, v in headers.items()}


def _workload_args(args: argparse.Namespace) -> dict:
    """The workload generation flags' values (to rerun the generation)."""
    probe = argparse.ArgumentParser(add_help=False)
    add_generation_arguments(probe)
    return {action.dest: getattr(args, action.dest, None) for action in probe._actions}


def _metrics_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/metrics"


def run(args: argparse.Namespace) -> int:
    from burstgpt.client.runner import LoadGenerator, RunOptions
    from burstgpt.records import remove_run_files
    from burstgpt.report.rundir import write_run_directory
    from burstgpt.report.tables import summary_table
    try:
        extra_body = json.loads(args.extra_body)
    except json.JSONDecodeError as exc:
        raise BurstGPTError(f"--extra-body is not JSON: {exc}") from None
    if not isinstance(extra_body, dict):
        raise BurstGPTError("--extra-body must be a JSON object")
    if not urlsplit(args.url).scheme.startswith("http"):
        raise BurstGPTError(f"--url {args.url!r} must start with http:// or https://")
    for name in ("timeout", "grace", "scrape_interval", "window"):
        if not getattr(args, name) > 0 and not (name == "grace" and args.grace == 0):
            raise BurstGPTError(f"--{name.replace('_', '-')} must be > 0")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise BurstGPTError("--max-concurrency must be >= 1")
    if args.max_connections < 1:
        raise BurstGPTError("--max-connections must be >= 1")
    workers_flag = _workers_flag(args.workers)
    slo = parse_slo(args.slo)
    headers = parse_headers(args.header)
    saved_headers = _saved_headers(headers)
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"

    workload = workload_from_args(args)
    if workload.height == 0:
        raise BurstGPTError("the workload has no requests to send (check --duration / --num-requests)")
    run_dir = Path(args.out or f"runs/bench-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}")
    created_dir = not run_dir.exists()
    from burstgpt.client.openai import EndpointOptions  # aiohttp: only when benchmarking

    endpoint = EndpointOptions(
        base_url=args.url,
        api=args.endpoint,
        stream=args.stream,
        include_usage=args.include_usage,
        max_tokens=args.max_tokens,
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
        extra_body=extra_body,
        timeout_s=args.timeout,
        ttft_timeout_s=args.ttft_timeout,
        record_chunk_times=args.chunk_times,
    )
    metrics_url = None if args.no_server_metrics else (args.metrics_url or _metrics_url(args.url))
    options = RunOptions(
        model=args.model,
        max_concurrency=args.max_concurrency,
        grace_s=args.grace,
        prompt_seed=args.prompt_seed,
        tokenizer=args.tokenizer,
        metrics_url=metrics_url,
        scrape_interval_s=args.scrape_interval,
        progress=not args.quiet,
        max_connections=args.max_connections,
    )
    config = {
        "command": "bench",
        "producer": "bench",  # "serve-sim+bench" once the server is known to be burstgpt serve-sim
        "run_id": new_run_id(),
        "burstgpt_version": __version__,
        "url": args.url,
        "endpoint_url": endpoint.url,
        "api": args.endpoint,
        "model": args.model,
        "api_key_env": args.api_key_env,
        "headers": saved_headers,
        "extra_body": extra_body,
        "stream": args.stream,
        "include_usage": args.include_usage,
        "max_tokens": args.max_tokens,
        "ignore_eos": args.ignore_eos,
        "temperature": args.temperature,
        "timeout_s": args.timeout,
        "ttft_timeout_s": args.ttft_timeout,
        "prompt_seed": args.prompt_seed,
        "tokenizer": args.tokenizer,
        "chunk_times": args.chunk_times,
        "workload": str(Path(args.workload).resolve()) if args.workload else None,
        "workload_args": _workload_args(args),
        "workload_file": WORKLOAD_FILE,
        "max_concurrency": args.max_concurrency,
        "grace_s": args.grace,
        "metrics_url": metrics_url,
        "scrape_interval_s": args.scrape_interval,
        "window_s": args.window,
        "step_s": args.step,
        "slo": slo or None,
    }
    err = Console(stderr=True)

    def warn(message: str) -> None:
        err.print(f"[yellow]warning:[/] {message}", highlight=False)

    from burstgpt.client.workers import MultiSenderRun, auto_worker_count

    # --workers auto on Ray: one sender per CPU of the cluster (known once joined; config.json then says null)
    workers = workers_flag or (None if args.ray_address else auto_worker_count(workload))
    config.update(workers=workers, max_connections=args.max_connections, ray_address=args.ray_address,
                  strict_timing=args.strict_timing)
    exporter = None
    if args.prometheus_port is not None:
        if not 0 <= args.prometheus_port <= 65535:
            raise BurstGPTError(f"--prometheus-port {args.prometheus_port}: give a port 0-65535 (0: a free one)")
        from burstgpt.client.exporter import ClientMetricsExporter

        exporter = ClientMetricsExporter()
        config["prometheus_port"] = args.prometheus_port
    # Checks the workload (finite, sorted arrivals) before anything is written.
    source = args.workload or "the generated workload"
    if workers == 1 and args.ray_address is None:
        generator = LoadGenerator(workload, endpoint, options, headers=headers,
                                  records_path=run_dir / RECORDS_JSONL, warn=warn, workload_source=source,
                                  exporter=exporter)
    else:
        generator = MultiSenderRun(workload, endpoint, options, workers=workers, headers=headers,
                                   records_path=run_dir / RECORDS_JSONL, warn=warn, workload_source=source,
                                   ray_address=args.ray_address, exporter=exporter)
    if exporter is not None:  # listening before anything is written: a port in use leaves no run behind
        exporter.watch(generator.counters)
        exporter.start(args.prometheus_port)
        err.print(f"client metrics for Prometheus: {exporter.url}", highlight=False)
    prepare_run_directory(run_dir, overwrite=args.overwrite)
    write_json_atomic(run_dir / CONFIG_FILE, config)  # now, so even a killed run says how it was started
    write_workload(workload, run_dir / WORKLOAD_FILE)  # the exact requests, for a rerun with --workload
    try:
        result = generator.run_sync()
    except BurstGPTError:  # a failed start (no server): leave nothing that looks like a run
        if exporter is not None:
            exporter.close()
        remove_run_files(run_dir)
        if created_dir:
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    config["model_used"] = result.model
    config["workers"] = result.workers  # as run (--workers auto on Ray: the cluster's CPUs)
    timing = timing_facts(result, generator, closed_loop=args.max_concurrency is not None,
                          max_connections=args.max_connections)
    if timing["client_limited"]:
        warn(timing["reason"])
        result.warnings.append(timing["reason"])
    with _signals_deferred() as deferred:  # a signal now would leave no summary: finish writing first
        summary = write_run_directory(
            run_dir,
            result.records,
            config=config,
            server_metrics=result.server_metrics,
            window_s=args.window,
            step_s=args.step,
            slo=slo,
            run_info={
                "started_at_utc": result.started_at_utc,
                "wall_duration_s": result.wall_duration_s,
                "interrupted": result.interrupted,
                "stop_reason": result.stop_reason,
                "warnings": result.warnings,
                "timing": timing,
            },
            producer="serve-sim+bench" if result.sim_server else "bench",
        )
    if exporter is not None:  # served until the run directory is written, for a last scrape
        exporter.close()
    if not args.quiet:
        Console().print(summary_table(summary, title=f"burstgpt bench: {run_dir}"))
        Console().print(f"timing ({result.workers} sender{'s' if result.workers > 1 else ''}): {timing['reason']}",
                        highlight=False)
    if not summary.requests.balanced:  # would be a bug in the client: say so loudly
        print("burstgpt: error: request accounting does not balance; see summary.json", file=sys.stderr)
        return 1
    if result.interrupted or deferred:
        return 130
    return STRICT_TIMING_STATUS if args.strict_timing and timing["client_limited"] else 0


#: Exit status of a client-limited run under --strict-timing.
STRICT_TIMING_STATUS = 3


def _workers_flag(value: str) -> int | None:
    """--workers: a positive count, or None for 'auto'."""
    if value == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        raise BurstGPTError(f"--workers {value!r}: give a number or 'auto'") from None
    if count < 1:
        raise BurstGPTError("--workers must be >= 1")
    return count


def timing_facts(result, generator, *, closed_loop: bool, max_connections: int | None) -> dict:
    """The summary's `run.timing` section: the dispatch-lag verdict overall and per sender, the connection
    cap and its waits, and (Ray) the senders' nodes and clock offsets."""
    from burstgpt.client.timing import records_verdict, worker_verdicts

    overall = records_verdict(result.records)
    sent = result.records.filter(result.records["sent_s"].is_not_null())
    per_worker = worker_verdicts(sent, sent["worker"].fill_null(0).to_numpy()) if sent.height else {}
    facts = getattr(generator, "facts", [])
    if closed_loop:  # waiting for a free slot is the point of a closed loop, not the client falling behind
        client_limited = False
        reason = f"closed loop (--max-concurrency): dispatch lag includes waits for a free slot; {overall.reason}"
    else:
        client_limited = overall.client_limited
        reason = overall.reason
    return {
        "verdict": "closed-loop" if closed_loop else overall.label,
        "client_limited": client_limited,
        "reason": reason,
        "workers": result.workers,
        "dispatch": overall.as_dict(),
        "per_worker": {str(k): v.as_dict() for k, v in per_worker.items()},
        "max_connections": max_connections,
        "connection_waits": result.connection_waits,
        "client_cpu_s": result.cpu_s,  # user + system CPU of sending, every sender process
        "client_cpu_ms_per_request": (1e3 * result.cpu_s / sent.height if result.cpu_s is not None and sent.height
                                      else None),
        "senders": [{"worker": f.worker, "requests": f.requests, "node": f.node, "clock_offset_s": f.clock_offset_s,
                     "clock_rtt_s": f.clock_rtt_s} for f in facts],
    }


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM while the block runs; yields a list that gets the names of signals received."""
    received: list[str] = []
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda number, frame: received.append(signal.Signals(number).name))
    except ValueError:  # not the main thread: signals cannot be handled here anyway
        pass
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
