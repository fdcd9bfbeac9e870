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

    # Checks the workload (finite, sorted arrivals) before anything is written.
    generator = LoadGenerator(workload, endpoint, options, headers=headers, records_path=run_dir / RECORDS_JSONL,
                              warn=warn, workload_source=args.workload or "the generated workload")
    prepare_run_directory(run_dir, overwrite=args.overwrite)
    write_json_atomic(run_dir / CONFIG_FILE, config)  # now, so even a killed run says how it was started
    write_workload(workload, run_dir / WORKLOAD_FILE)  # the exact requests, for a rerun with --workload
    try:
        result = generator.run_sync()
    except BurstGPTError:  # a failed start (no server): leave nothing that looks like a run
        remove_run_files(run_dir)
        if created_dir:
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    config["model_used"] = result.model
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
            },
            producer="serve-sim+bench" if result.sim_server else "bench",
        )
    if not args.quiet:
        Console().print(summary_table(summary, title=f"burstgpt bench: {run_dir}"))
    if not summary.requests.balanced:  # would be a bug in the client: say so loudly
        print("burstgpt: error: request accounting does not balance; see summary.json", file=sys.stderr)
        return 1
    return 130 if result.interrupted or deferred else 0


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
