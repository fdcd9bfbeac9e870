"""A workload described as data: `WorkloadSpec` in, the workload table out (`build_workload`).

The CLI flags of `workload generate`, `bench` and `simulate` become a `WorkloadSpec`; the Python API, the
examples, sweeps and tests build one directly. A spec is small, frozen and JSON-serialisable (`to_dict` /
`from_dict`), so a run directory records exactly the workload it ran and any point of a sweep can be rebuilt.

Arrivals come from one of three sources:

- `ScheduledArrivals`: a renewal process (gamma, poisson, weibull, constant; `burstgpt.workload.processes`)
  whose shape alpha and scale beta (or mean rate) stay constant or follow a schedule (the paper's quadratic
  alpha and linear beta, other shapes, or a table) changing every N requests or T seconds;
- `MirroredArrivals`: a trace's per-window burstiness (a params file from `workload fit`, or a trace fitted on
  the fly) mirrored to a target mean rate;
- `ReplayedTrace`: a trace's own timestamps replayed `scale` times faster;
- `ServeGenClients`: a pool of ServeGen clients (`burstgpt.workload.servegen`), each with its own arrivals and
  length distributions, at their recorded rates or scaled to a target or a rate function.

Request lengths are Zipf (`RequestLengths`); response lengths follow a mode of `burstgpt.workload.responses`;
prompts optionally come from a prompt source (`Prompts`). One `seed` gives independent streams for arrivals,
lengths, responses and prompts.

    from burstgpt.workload import WorkloadSpec, ScheduledArrivals, build_workload
    spec = WorkloadSpec(ScheduledArrivals(alpha=0.5, rate_rps=2.0), num_requests=1000, seed=1)
    frame = build_workload(spec)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Literal

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError, InputError
from burstgpt.trace.filters import filter_trace_frame
from burstgpt.trace.schema import Trace
from burstgpt.workload.arrivals import (
    SHAPES,
    ParamSchedule,
    mirror_schedule,
    schedule_from_table,
    scheduled_arrivals,
    shape_values,
)
from burstgpt.workload.generate import assemble_workload, attach_prompts, seed_streams, select_replay
from burstgpt.workload.prefixes import PrefixSharing, apply_prefix_sharing
from burstgpt.workload.processes import get_process
from burstgpt.workload.responses import ResponseSpec
from burstgpt.workload.schema import validate_workload

if TYPE_CHECKING:  # imported where used: the fits pull in scipy and the analysis, slow for CLI start-up
    from burstgpt.workload.params import WorkloadParams
from burstgpt.workload.servegen import (
    ClientFilters,
    compose_pool,
    filter_clients,
    load_pool,
    pool_span,
    read_rate_function,
)
from burstgpt.workload.sessions import turn_columns

DEFAULT_THETA = 1.1  # the paper's Table III
DEFAULT_MIN_INPUT = 16
DEFAULT_MAX_INPUT = 4096
DEFAULT_MAX_OUTPUT = 2048
DEFAULT_CHANGE_EVERY = 200  # the paper changes alpha/beta after N = 200 requests

Range = float | tuple[float, float]


@dataclass(frozen=True)
class ScheduledArrivals:
    """A renewal process with constant or scheduled parameters.

    `alpha` is the process's shape (Gamma: CV = 1/sqrt(alpha)); give the scale `beta_s` (seconds) or the mean
    rate `rate_rps` (requests/s), not both. A pair (FROM, TO) for any of them makes a schedule: `schedule` is a
    shape name for both (constant, linear, quadratic, step), "paper" (quadratic alpha, linear beta; the default
    for ranges) or "ASHAPE,BSHAPE"; `schedule_table` a CSV/JSON file with columns at, alpha, beta_s instead.
    Steps last `change_every` requests or seconds (`change_unit`); `schedule_steps` steps span the workload
    (default: enough for num_requests / duration, else 10).
    """

    process: str = "gamma"
    alpha: Range = 1.0
    beta_s: Range | None = None
    rate_rps: Range | None = None
    schedule: str | None = None
    schedule_table: str | None = None
    change_every: float = DEFAULT_CHANGE_EVERY
    change_unit: Literal["requests", "seconds"] = "requests"
    schedule_steps: int | None = None
    kind: Literal["scheduled"] = "scheduled"


@dataclass(frozen=True)
class MirroredArrivals:
    """A trace's per-window Gamma burstiness mirrored to `target_rate_rps` (default: the trace's own rate x
    `time_scale`). Give `params` (a `workload fit` file, or `WorkloadParams`) or `trace` (fitted here with
    windows of `fit_window_s`, keeping `models` / `services`). `time_scale` K compresses the trace's clock K
    times. Without num_requests or duration, one pass over the trace's windows. `process` (gamma, weibull, ...)
    is the family of every window's gaps; each window keeps its rate and fitted CV."""

    params: str | None = None
    trace: str | None = None
    target_rate_rps: float | None = None
    time_scale: float = 1.0
    fit_window_s: float = 1200.0
    models: tuple[str, ...] | None = None
    services: tuple[str, ...] | None = None
    process: str = "gamma"  # the family each window's gaps are drawn from, keeping its rate and CV
    fitted: WorkloadParams | None = field(default=None, compare=False, repr=False)
    kind: Literal["mirrored"] = "mirrored"


@dataclass(frozen=True)
class ReplayedTrace:
    """A trace's own timestamps replayed `scale` times faster, from trace second `start_s` to `end_s`, of the
    given `models` / `services`, optionally skipping the trace's long low-rate opening."""

    trace: str
    scale: float = 1.0
    start_s: float | None = None
    end_s: float | None = None
    models: tuple[str, ...] | None = None
    services: tuple[str, ...] | None = None
    skip_quiet_start: bool = False
    kind: Literal["replay"] = "replay"


@dataclass(frozen=True)
class ServeGenClients:
    """A pool of ServeGen clients read from `directory` (`burstgpt.workload.servegen`): the clients whose names
    match `clients` (names or globs, e.g. "language/m-small/*"; None = all) and pass `filters` (mean rate,
    requests/s; CV; mean input tokens, over the span), from second `start_s` of ServeGen's clock for the
    workload's `duration_s` (default: to the end of the records). Without `target_rate_rps` or `rate_fn` the
    clients keep their recorded rates; `target_rate_rps` scales all by one factor so the aggregate mean over the
    span is that; `rate_fn`, a CSV with columns time_s (from the workload's start) and rate_rps, gives the
    aggregate rate over time. Lengths come from each client's distributions; responses default to them."""

    directory: str
    clients: tuple[str, ...] | None = None
    start_s: float = 0.0
    target_rate_rps: float | None = None
    rate_fn: str | None = None
    filters: ClientFilters = field(default_factory=ClientFilters)
    kind: Literal["servegen"] = "servegen"


@dataclass(frozen=True)
class RequestLengths:
    """Zipf request lengths, tokens, on [min_input_tokens, max_input_tokens]. None = the params file's value
    when mirroring one, else the paper's defaults (theta 1.1 on [16, 4096])."""

    zipf_theta: float | None = None
    min_input_tokens: int | None = None
    max_input_tokens: int | None = None


@dataclass(frozen=True)
class Responses:
    """Response lengths: `mode` of `burstgpt.workload.responses` (None = "trace" for a replay, else "model"),
    `output_tokens` for mode fixed, and the max_tokens cap sent with every request (None = no cap)."""

    mode: str | None = None
    output_tokens: int | None = None
    max_output_tokens: int | None = DEFAULT_MAX_OUTPUT


@dataclass(frozen=True)
class Prompts:
    """Real prompt texts cut to each request's exact length (`burstgpt.workload.prompts`)."""

    source: str
    format: str = "auto"
    field: str | None = None
    tokenizer: str = "builtin"
    buffer: int = 10_000


ArrivalSource = ScheduledArrivals | MirroredArrivals | ReplayedTrace | ServeGenClients
_SOURCES: dict[str, type] = {"scheduled": ScheduledArrivals, "mirrored": MirroredArrivals, "replay": ReplayedTrace,
                             "servegen": ServeGenClients}


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything that determines a workload table; the same spec and seed give the same table."""

    arrivals: ArrivalSource = field(default_factory=ScheduledArrivals)
    num_requests: int | None = None
    duration_s: float | None = None
    lengths: RequestLengths = field(default_factory=RequestLengths)
    responses: Responses = field(default_factory=Responses)
    prompts: Prompts | None = None
    prefixes: PrefixSharing | None = None  # shared system prompts, multi-turn sessions (`workload.prefixes`)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (`from_dict` reads it back)."""
        out = dataclasses.asdict(self)
        out["arrivals"].pop("fitted", None)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkloadSpec:
        """The spec `to_dict` wrote; unknown keys are an error naming them."""
        try:
            data = dict(data)
            arrivals = dict(data.pop("arrivals", {}) or {})
            source = _SOURCES[arrivals.get("kind", "scheduled")]
            for name in ("alpha", "beta_s", "rate_rps"):
                if isinstance(arrivals.get(name), list):
                    arrivals[name] = tuple(arrivals[name])
            for name in ("models", "services", "clients"):
                if isinstance(arrivals.get(name), list):
                    arrivals[name] = tuple(arrivals[name])
            if isinstance(arrivals.get("filters"), dict):
                arrivals["filters"] = ClientFilters(**arrivals["filters"])
            prompts = data.pop("prompts", None)
            prefixes = data.pop("prefixes", None)
            return cls(
                arrivals=source(**arrivals),
                lengths=RequestLengths(**(data.pop("lengths", None) or {})),
                responses=Responses(**(data.pop("responses", None) or {})),
                prompts=Prompts(**prompts) if prompts else None,
                prefixes=PrefixSharing.from_dict(prefixes) if prefixes else None,
                **data,
            )
        except (KeyError, TypeError) as exc:
            raise BurstGPTError(f"not a workload spec: {exc}") from None


def build_workload(
    spec: WorkloadSpec,
    *,
    notes: list[str] | None = None,
    status: Callable[[str], ContextManager[Any]] | None = None,
) -> pl.DataFrame:
    """The workload table (`burstgpt.workload.schema`) that `spec` describes, validated.

    `notes` collects remarks worth telling the user (a mirrored slice whose rate differs from the target,
    requests no prompt could serve); `status(message)` wraps slow steps (fitting a trace, building a prompt
    pool), e.g. with a spinner.
    """
    from burstgpt.workload.lengths import EmpiricalResponses, ZipfLengths

    notes = notes if notes is not None else []
    status = status or (lambda message: contextlib.nullcontext())
    _check_bounds(spec)
    streams = seed_streams(spec.seed)
    cap = spec.responses.max_output_tokens or None
    source = spec.arrivals
    trace_responses = session = service = prefix_ids = client_id = None
    prefix_size: int | None = None
    params: WorkloadParams | None = None

    if isinstance(source, ReplayedTrace):
        from burstgpt.trace import load_trace

        trace = load_trace(source.trace)
        selection = select_replay(
            trace, source.scale, start_s=source.start_s, end_s=source.end_s, models=_listed(source.models),
            services=_listed(source.services), skip_quiet_start=source.skip_quiet_start,
        )
        kept, arrival_s = selection.frame, selection.arrival_s
        limit = arrival_s.size
        if spec.duration_s is not None:
            limit = int(np.searchsorted(arrival_s, spec.duration_s, side="left"))
        if spec.num_requests is not None:
            limit = min(limit, spec.num_requests)
        kept, arrival_s = kept.head(limit), arrival_s[:limit]
        # Trace rows with 0 request tokens (failed logs) still arrive; they send a 1-token prompt.
        input_tokens = np.maximum(kept["request_tokens"].to_numpy(), 1)
        trace_responses = kept["response_tokens"].to_numpy()
        service, session = kept["service"], kept["session_id"]
        prefix_ids, prefix_size = kept["prefix_block_ids"], trace.prefix_block_size
        response = _response_spec(
            spec.responses, cap, default="trace",
            empirical=lambda: EmpiricalResponses.fit(kept["request_tokens"].to_numpy(), trace_responses),
        )
    elif isinstance(source, ServeGenClients):
        with status(f"reading ServeGen clients from {source.directory}"):
            pool = _servegen_pool(spec, source, notes)
        arrival_s, input_tokens, trace_responses, client_id = (
            pool.arrival_s, pool.input_tokens, pool.output_tokens, pool.client_id)
        response = _response_spec(spec.responses, cap, default="trace", empirical=lambda: None)
    else:
        if isinstance(source, MirroredArrivals):
            params = _mirror_params(source, status)
            arrival_s = _mirrored_arrivals(spec, source, params, streams.arrivals, notes)
        elif isinstance(source, ScheduledArrivals):
            arrival_s = _scheduled_arrivals(spec, source, streams.arrivals)
        else:
            raise BurstGPTError(f"unknown arrival source {type(source).__name__}")
        zipf = ZipfLengths(
            _pick(spec.lengths.zipf_theta, params.zipf.theta if params else None, DEFAULT_THETA),
            _pick(spec.lengths.min_input_tokens, params.zipf.min_tokens if params else None, DEFAULT_MIN_INPUT),
            _pick(spec.lengths.max_input_tokens, params.zipf.max_tokens if params else None, DEFAULT_MAX_INPUT),
        )
        input_tokens = zipf.sample(arrival_s.size, streams.lengths)

        def empirical():
            if params is None or params.responses is None:
                raise BurstGPTError("empirical response lengths need mirrored params (--params/--mirror) or --replay")
            return params.responses

        response = _response_spec(spec.responses, cap, default="model", empirical=empirical)

    output_tokens = response.output_tokens(input_tokens, streams.responses, trace_responses)
    frame = assemble_workload(
        arrival_s, input_tokens, output_tokens=output_tokens, max_output_tokens=cap,
        service=service, session_id=session, prefix_block_ids=prefix_ids, prefix_block_size=prefix_size,
    )
    if client_id is not None:  # a ServeGen pool: which client sent each request
        frame = frame.with_columns(client_id)
    if spec.prompts is not None:
        frame = _attach_prompts(frame, spec.prompts, input_tokens, streams.prompts, notes, status)
    if isinstance(source, ReplayedTrace):  # recorded sessions: turn order and think times
        frame = frame.with_columns(turn_columns(kept, source.scale))
    if spec.prefixes is not None:
        frame = apply_prefix_sharing(frame, spec.prefixes, seed=spec.seed, duration_s=spec.duration_s,
                                     replay=isinstance(source, ReplayedTrace), notes=notes, status=status)
    return validate_workload(frame)


# ------------------------------------------------------------------------------------------------- internals


def _listed(values: tuple[str, ...] | None) -> list[str] | None:
    return list(values) if values else None


def _pick(*values):
    return next(v for v in values if v is not None)


def _check_bounds(spec: WorkloadSpec) -> None:
    if spec.num_requests is not None and spec.num_requests < 1:
        raise BurstGPTError(f"--num-requests must be positive, got {spec.num_requests}")
    if spec.duration_s is not None and not (math.isfinite(spec.duration_s) and spec.duration_s > 0):
        raise BurstGPTError(f"--duration must be positive, got {spec.duration_s}")


def _response_spec(responses: Responses, cap, *, default: str, empirical) -> ResponseSpec:
    mode = responses.mode or default
    return ResponseSpec(
        mode=mode, max_output_tokens=cap, fixed_tokens=responses.output_tokens,
        empirical=empirical() if mode == "empirical" else None,
    )


def _mirror_params(source: MirroredArrivals, status) -> WorkloadParams:
    from burstgpt.workload.params import fit_workload_params, read_params

    if source.fitted is not None:
        return source.fitted
    if (source.params is None) == (source.trace is None):
        raise BurstGPTError("mirroring needs either a params file or a trace (--params or --mirror), not both")
    if source.params is not None:
        return read_params(source.params)
    from burstgpt.trace import load_trace

    with status(f"fitting {source.trace}"):
        trace = filter_nonempty(load_trace(source.trace), source.models, source.services)
        return fit_workload_params(trace, window_s=source.fit_window_s,
                                   filters={"models": _listed(source.models), "services": _listed(source.services)})


def filter_nonempty(trace: Trace, models, services) -> Trace:
    """`trace` with only the rows of `models` / `services` (None = all); an error when none is left."""
    frame = filter_trace_frame(trace.frame, models=_listed(models), services=_listed(services))
    if frame.height == 0:
        raise BurstGPTError(f"{trace.source}: no rows of the chosen model/service")
    return dataclasses.replace(trace, frame=frame)


def _mirrored_arrivals(
    spec: WorkloadSpec, source: MirroredArrivals, params: WorkloadParams, rng: np.random.Generator, notes: list[str]
) -> np.ndarray:
    if not source.time_scale > 0:
        raise BurstGPTError(f"--time-scale must be positive, got {source.time_scale}")
    target = source.target_rate_rps if source.target_rate_rps is not None else params.mean_rate_rps * source.time_scale
    schedule = mirror_schedule(
        params.windows, target, time_compression=source.time_scale, fallback_alpha=params.overall_alpha,
        process=source.process,
    )
    duration = spec.duration_s
    if duration is None and spec.num_requests is None:
        duration = schedule.end  # one pass over the trace's windows
    elif duration is not None and duration < 0.9 * schedule.end:
        # The target is the mean over the whole mirrored trace; a slice of it keeps that slice's own rate.
        notes.append(
            f"--duration {duration:g} s covers {100 * duration / schedule.end:.0f}% of the mirrored trace "
            f"({schedule.end:.0f} s at --time-scale {source.time_scale:g}); --target-rate {target:.4g} req/s is "
            "the mean over the whole trace, so this slice keeps its own, different rate"
        )
    return scheduled_arrivals(schedule, rng, num_requests=spec.num_requests, duration_s=duration)


def _servegen_pool(spec: WorkloadSpec, source: ServeGenClients, notes: list[str]):
    """The composed ServeGen pool of `source` over the workload's span (`burstgpt.workload.servegen`)."""
    if source.target_rate_rps is not None and source.rate_fn is not None:
        raise BurstGPTError("give --target-rate or --rate-fn, not both")
    clients = load_pool(source.directory, source.clients)
    start, end = pool_span(clients, source.start_s, spec.duration_s)
    clients = filter_clients(clients, source.filters, start, end)
    pool = compose_pool(
        clients, start_s=start, duration_s=spec.duration_s, target_rate_rps=source.target_rate_rps,
        rate_fn=read_rate_function(source.rate_fn) if source.rate_fn else None, num_requests=spec.num_requests,
        seed=spec.seed,
    )
    notes.extend(pool.notes)
    return pool


def _as_range(value: Range | None, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    pair = (float(value), float(value)) if isinstance(value, int | float) else tuple(float(v) for v in value)
    if len(pair) != 2 or not all(math.isfinite(v) and v > 0 for v in pair):
        raise BurstGPTError(f"{name} expects one or two positive numbers (FROM:TO), got {value!r}")
    return pair


def _scheduled_arrivals(spec: WorkloadSpec, source: ScheduledArrivals, rng: np.random.Generator) -> np.ndarray:
    if spec.num_requests is None and spec.duration_s is None:
        raise BurstGPTError("give --duration or --num-requests (or --params / --mirror / --replay)")
    process = get_process(source.process)
    alpha = _as_range(source.alpha, "--alpha")
    beta = _as_range(source.beta_s, "--beta")
    rate = _as_range(source.rate_rps, "--rate")
    if beta and rate:
        raise BurstGPTError("give --beta or --rate, not both")
    if process.fixed_shape is not None:
        if source.process == "poisson" and alpha != (1.0, 1.0):
            raise BurstGPTError("--arrival poisson fixes alpha = 1; drop --alpha or use --arrival gamma")
        alpha = (process.fixed_shape, process.fixed_shape)
    if source.change_unit not in ("requests", "seconds"):
        raise BurstGPTError(f"change unit must be requests or seconds, got {source.change_unit!r}")
    step, unit = float(source.change_every), source.change_unit
    if not step > 0 or (unit == "requests" and step != int(step)):
        raise BurstGPTError(f"--change-every must be a positive whole number of requests or seconds, got {step:g}")
    if source.schedule_table is not None:
        schedule = schedule_from_table(read_schedule_table(Path(source.schedule_table)), unit)
        schedule = dataclasses.replace(schedule, process=source.process)
    elif beta is None and rate is None:
        raise BurstGPTError("give --beta (scale, seconds) or --rate (requests/s)")
    else:
        schedule = _shaped_schedule(spec, source, alpha, beta, rate, step, unit)
    return scheduled_arrivals(schedule, rng, num_requests=spec.num_requests, duration_s=spec.duration_s)


def _shaped_schedule(spec, source: ScheduledArrivals, alpha, beta, rate, step: float, unit: str) -> ParamSchedule:
    ranged = alpha[0] != alpha[1] or (beta or rate)[0] != (beta or rate)[1]
    shape_spec = source.schedule or ("paper" if ranged else "constant")
    if shape_spec == "paper":
        shapes = ("quadratic", "linear")
    else:
        shapes = tuple(shape_spec.split(",")) if "," in shape_spec else (shape_spec, shape_spec)
    if len(shapes) != 2 or any(s not in SHAPES for s in shapes):
        raise BurstGPTError(f"--schedule: unknown shape {shape_spec!r}; use {', '.join(SHAPES)}, paper, A,B or a file")
    if source.schedule_steps is not None:
        steps = source.schedule_steps
    elif unit == "requests" and spec.num_requests is not None:
        steps = math.ceil(spec.num_requests / step)
    elif unit == "seconds" and spec.duration_s is not None:
        steps = math.ceil(spec.duration_s / step)
    else:
        steps = 10
    if steps < 1:
        raise BurstGPTError(f"--schedule-steps must be positive, got {steps}")
    alpha_values = shape_values(shapes[0], alpha[0], alpha[1], steps)
    if beta is not None:
        beta_values = shape_values(shapes[1], beta[0], beta[1], steps)
    else:  # the rate follows the beta shape; beta = mean gap / unit mean of the shape
        unit_mean = get_process(source.process).unit_mean(alpha_values)
        beta_values = 1.0 / (unit_mean * shape_values(shapes[1], rate[0], rate[1], steps))
    if np.any(alpha_values <= 0) or np.any(beta_values <= 0):
        raise BurstGPTError("the schedule reaches a non-positive alpha or beta")
    return ParamSchedule.regular(alpha_values, beta_values, step, unit, process=source.process)


def read_schedule_table(path: Path) -> pl.DataFrame:
    """A schedule table (CSV or JSON) with numeric columns at, alpha, beta_s."""
    if not path.is_file():
        raise InputError(path, "no such schedule table")
    try:
        frame = pl.read_json(path) if path.suffix == ".json" else pl.read_csv(path)
    except Exception as exc:  # polars raises several error types
        raise InputError(path, f"cannot read schedule table: {str(exc).splitlines()[0]}") from None
    try:
        return frame.select(pl.col("at", "alpha", "beta_s").cast(pl.Float64, strict=True))
    except pl.exceptions.PolarsError as exc:
        raise InputError(path, f"schedule table needs numeric columns at, alpha, beta_s: "
                               f"{str(exc).splitlines()[0]}") from None


def _attach_prompts(frame, prompts: Prompts, input_tokens, rng, notes: list[str], status) -> pl.DataFrame:
    from burstgpt.workload.prompts import load_prompt_texts
    from burstgpt.workload.tokenizer import load_tokenizer

    with status(f"building the prompt pool from {prompts.source}"):
        tokenizer = load_tokenizer(prompts.tokenizer)
        texts = load_prompt_texts(prompts.source, prompts.format, prompts.field,
                                  synthetic_tokens=int(input_tokens.max()) if input_tokens.size else 1)
        frame, unserved = attach_prompts(frame, texts, tokenizer, rng, prompts.buffer)
    if unserved:
        notes.append(f"{unserved} of {frame.height} requests ask for a length no prompt in {prompts.source} "
                     "reaches; their prompt is left empty (the client synthesises one)")
    return frame
