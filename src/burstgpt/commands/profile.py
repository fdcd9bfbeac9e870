"""`burstgpt profile`: time controlled experiments on a server through its API and fit the simulator's step-time
model to them (a latency model file for `simulate` / `serve-sim --latency-model`).

Also home of what `calibrate` shares: the fit table (`print_fit`) and writing a model file (`write_model`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from burstgpt import __version__
from burstgpt.errors import BurstGPTError
from burstgpt.outputs import write_json_atomic


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="fit the simulator's step-time model to a server by timing controlled requests",
        description="Send controlled requests to an OpenAI-compatible server, one experiment at a time on an idle "
        "server: a prefill sweep (prompts of several lengths, max_tokens=1, repeated) and a decode sweep (K "
        "concurrent ignore_eos streams at several context lengths, inter-token gaps). Reads the engine settings "
        "from /metrics (vllm:cache_config_info) and /v1/models, fits the linear step-time model (non-negative, "
        "robust) and writes it with what it was fitted on, for `simulate --latency-model FILE`. Ctrl-C stops "
        "and writes a model from what was measured, marked partial. See docs/calibrate.md.",
    )
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("-o", "--out", required=True, metavar="FILE", help="latency model file to write (JSON)")
    parser.add_argument("--model", help="model to profile (default: the first of /v1/models)")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="NAME",
                        help="environment variable holding the API key, sent as a Bearer token when set; never "
                        "printed or saved (default: OPENAI_API_KEY)")
    parser.add_argument("--quick", action="store_true", help="fewer points and repeats (about a third of the time)")
    parser.add_argument("--tokenizer", default="builtin", metavar="SPEC",
                        help="tokenizer making prompts of the wanted lengths: builtin (default), a tokenizer.json "
                        "or a cached transformers name; either way the server's usage gives the counts fitted")
    parser.add_argument("--idle-timeout", type=float, default=60.0, metavar="S",
                        help="how long to wait for the server to be idle before each point (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt texts (default 0)")
    parser.set_defaults(func=run_profile)


def run_profile(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from burstgpt.client.profile import Profiler, redact_url
    from burstgpt.sim.calibrate import fit_profile, frontend_delay_from_profile
    from burstgpt.workload.tokenizer import load_tokenizer

    if not urlsplit(args.url).scheme.startswith("http"):
        raise BurstGPTError(f"--url {args.url!r} must start with http:// or https://")
    if not args.idle_timeout > 0:
        raise BurstGPTError("--idle-timeout must be > 0")
    headers = {}
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    err = Console(stderr=True)
    progress = _ProgressReporter(err)
    profiler = Profiler(args.url, model=args.model, headers=headers, tokenizer=load_tokenizer(args.tokenizer),
                        quick=args.quick, idle_timeout_s=args.idle_timeout, seed=args.seed, progress=progress.update)
    interrupted = asyncio.run(_run_until_interrupted(profiler))
    progress.close()
    measured = profiler.measurements(partial=interrupted)
    if interrupted:
        err.print(f"[yellow]interrupted[/]: fitting what was measured ({measured.prefill.height} prefill, "
                  f"{measured.decode.height} decode measurements)", highlight=False)
    if not measured.engine_timed:
        measured.notes.append("prefill timed by the client's TTFT (the server exposes no "
                              "vllm:request_prefill_time_seconds): HTTP overhead is in the per-request term")
    try:
        fit = fit_profile(measured.prefill, measured.decode, engine_timed=measured.engine_timed, partial=interrupted)
    except BurstGPTError as exc:
        if interrupted:
            err.print(f"nothing written: {exc}", highlight=False)
            return 130
        raise
    notes = list(measured.notes)
    if interrupted:
        notes.append("PARTIAL: the profile was interrupted; the fit uses only the points measured")
    frontend_delay = frontend_delay_from_profile(measured.prefill) if measured.engine_timed else None
    if frontend_delay is not None:
        notes.append(f"frontend delay {1e3 * frontend_delay:.3g} ms: the median client TTFT minus the engine's "
                     "prefill time of the prefill sweep (HTTP, tokenisation; `simulate` adds it to every request)")
    write_model(args.out, fit, method="profile", source=redact_url(args.url), model_name=measured.model_name,
                engine=measured.settings, notes=notes, frontend_delay_s=frontend_delay,
                measurements={"prefill": measured.prefill.to_dicts(), "decode": measured.decode.to_dicts()})
    print_fit(fit, title=f"burstgpt profile: {measured.model_name} at {redact_url(args.url)}", notes=notes)
    print(f"latency model written: {args.out}", file=sys.stderr)
    return 130 if interrupted else 0


async def _run_until_interrupted(profiler) -> bool:
    """Run the profile; True when Ctrl-C / SIGTERM stopped it (what was measured stays in `profiler`)."""
    task = asyncio.ensure_future(profiler.run())
    loop = asyncio.get_running_loop()
    stopped = []

    def stop() -> None:
        stopped.append(True)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    try:
        await task
    except asyncio.CancelledError:
        if not stopped:
            raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(signum)
            except (NotImplementedError, RuntimeError):
                pass
    return bool(stopped)


class _ProgressReporter:
    """A rich progress bar on a terminal, else one plain line per finished point."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = None
        if console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("profiling {task.description}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total} requests"), TimeElapsedColumn(),
                                console=console, transient=True)
            self.task = self.bar.add_task("", total=None)
            self.bar.start()

    def update(self, done: int, total: int, what: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total, description=what)
        else:
            print(f"profile: {what} done ({done}/{total} requests)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def write_model(path, fit, *, method: str, source, model_name: str | None, engine: dict, notes: list[str],
                measurements: dict, frontend_delay_s: float | None = None) -> None:
    """Write the fitted model file (`burstgpt.sim.latency.FittedModel`) atomically."""
    from burstgpt.sim.latency import FittedModel

    if fit.unmeasured:
        notes = [*notes, f"not determined by the measurements (set to 0): {', '.join(fit.unmeasured)}"]
    document = FittedModel(
        fit.model, method=method, source=source, model_name=model_name, engine=engine,
        fitted_at_utc=datetime.now(UTC).isoformat(timespec="seconds"), burstgpt_version=__version__,
        fit=fit.quality, notes=notes, measurements=measurements, frontend_delay_s=frontend_delay_s,
    )
    write_json_atomic(path, document.to_dict())


def _seconds(value: float) -> str:
    """A duration with a readable unit."""
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1e-3:
        return f"{value * 1e3:.4g} ms"
    if magnitude >= 1e-6:
        return f"{value * 1e6:.4g} us"
    return f"{value * 1e9:.4g} ns"


def print_fit(fit, *, title: str, notes: list[str] = ()) -> None:
    """The coefficients and the fit's quality as rich tables on stdout; notes after them."""
    from burstgpt.sim.calibrate import coefficient_table

    console = Console()
    table = Table(title=title)
    table.add_column("term")
    table.add_column("seconds", justify="right")
    table.add_column("per", justify="left")
    per = {"base_s": "step", "per_prefill_token_s": "prefill token", "per_decode_token_s": "decode sequence",
           "per_kv_token_s": "KV token read", "per_prefill_pair_s": "prefill attention pair",
           "per_admitted_request_s": "newly admitted request"}
    for name, value in coefficient_table(fit.model):
        table.add_row(name, _seconds(value), per[name] + (" (not measured)" if name in fit.unmeasured else ""))
    console.print(table)
    q = fit.quality
    quality = Table(title="fit quality" + (" (PARTIAL)" if q.partial else ""))
    for column in ("R^2", "points", "outliers", "|residual| p50", "p90", "p99", "relative p50", "p90", "p99"):
        quality.add_column(column, justify="right")
    quality.add_row(f"{q.r2:.4f}", str(q.points), str(q.outliers), _seconds(q.residual_p50_s),
                    _seconds(q.residual_p90_s), _seconds(q.residual_p99_s), f"{q.relative_p50:.1%}",
                    f"{q.relative_p90:.1%}", f"{q.relative_p99:.1%}")
    console.print(quality)
    for note in notes:
        console.print(f"note: {note}", highlight=False)


def engine_fields_with_latency_model(args: argparse.Namespace) -> dict:
    """`EngineSpec` fields from the engine flags `simulate` and `serve-sim` share: the engine settings given
    (`--num-gpu-blocks`, `--block-size`, `--max-num-seqs`, `--max-num-batched-tokens`, `--max-model-len`; the
    others take EngineSpec's defaults), the inline linear model of `--latency-coefficients` as `latency`, or with
    `--latency-model FILE` its model and the settings it was fitted with where no flag gives them (said on
    stderr)."""
    from burstgpt.sim.latency import ENGINE_SETTING_NAMES, load_latency_model

    from burstgpt.sim.latency import parse_linear_coefficients

    fields = {name: getattr(args, name) for name in ENGINE_SETTING_NAMES if getattr(args, name, None) is not None}
    if getattr(args, "frontend_delay", None) is not None:
        fields["frontend_delay_s"] = args.frontend_delay
    path = getattr(args, "latency_model", None)
    coefficients = getattr(args, "latency_coefficients", None)
    if path and coefficients:
        raise BurstGPTError("give --latency-model or --latency-coefficients, not both")
    if coefficients:
        fields["latency"] = parse_linear_coefficients(coefficients)
    if not path:
        return fields
    fitted = load_latency_model(path)
    fields["latency"] = fitted.latency
    taken, kept = [], []
    if fitted.frontend_delay_s is not None and "frontend_delay_s" not in fields:
        fields["frontend_delay_s"] = fitted.frontend_delay_s
        taken.append(f"frontend_delay_s {fitted.frontend_delay_s:.4g}")
    for name, value in fitted.engine_settings().items():
        if name in fields:
            if fields[name] != value:
                kept.append(f"--{name.replace('_', '-')} {fields[name]} (file: {value})")
        else:
            fields[name] = value
            taken.append(f"{name} {value}")
    print(f"latency model {path}: {fitted.describe()}", file=sys.stderr)
    if taken:
        print(f"  engine settings from the file: {', '.join(taken)} (flags override them)", file=sys.stderr)
    if kept:
        print(f"  overridden on the command line: {', '.join(kept)}", file=sys.stderr)
    return fields
