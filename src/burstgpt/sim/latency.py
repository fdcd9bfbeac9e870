"""Step-time (latency) models: how long one engine step takes, given the work in it.

A step's work is a `StepWork` (all counts, tokens):

- `prefill_tokens`: prompt (or recomputed) tokens processed;
- `decode_seqs`: requests producing their next token from their previous one (one token each);
- `prefill_pairs`: attention (query-key) pairs of the prefill chunks: a chunk of c tokens after a context of
  k cached tokens has c x k + c (c + 1) / 2 (quadratic in chunk and context);
- `decode_kv_tokens`: the decoding requests' contexts, new token included (each new token attends to all of
  them, so they are also the decode part's attention pairs and the KV it reads);
- `prefill_kv_tokens`: the prefill chunks' contexts, new tokens included (KV read by the prefill part);
- `admitted`: requests admitted from the queue in the step (issue 9: a fixed cost per newly admitted request).

Every model is a `LatencyModel`, registered by `kind` (`LATENCY_MODELS`) and serialised to a JSON dict with a
"kind" key (`to_dict`, `latency_from_dict`). The engine calls `step_time` with the fields of `StepWork` as
positional integers (the hot path: no object per step) and, for a run of pure-decode steps, takes its duration
in closed form from `decode_line_coefficients`: step j of such a run (decode_seqs = n, decode_kv_tokens =
context + j n, everything else 0) must last exactly max(a0 + a1 j, b0 + b1 j) + overhead_s, step 0 with the
same float operations as `step_time`. A model linear in the work (any number of terms) has one line (b0 = -inf).

- `roofline`: FLOPs (2 x parameters per token, plus 4 x layers x hidden per attention pair) against the GPU's
  peak FLOP/s, and bytes (weights once per step, plus the KV read) against its memory bandwidth, each scaled by
  an efficiency; the step takes the larger of the two plus a fixed overhead. One roofline per step, prefill and
  decode together: the weights are read once for the whole batch.
- `linear`: base + per prefill token + per prefill attention pair + per decode sequence + per KV token read
  + per admitted request, seconds; a mixed prefill+decode step costs the sum of its parts' times.

A latency model file (`--latency-model FILE`, written by `burstgpt profile` and `burstgpt calibrate`) is a
`FittedModel`: a model of any kind plus what it was fitted on (the server's model name and engine settings,
the date, the fit's quality, the burstgpt version; never a credential). `load_latency_model` reads it; a bare
`{"kind": ...}` object is accepted too. `StepRecorder` wraps a model to keep every step's work (for the
server's step metrics and for calibration).
"""

from __future__ import annotations

import dataclasses
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

from burstgpt.errors import BurstGPTError, InputError
from burstgpt.sim.hardware import GPU_PRESETS, MODEL_PRESETS, GPUSpec, ModelSpec, gpu_preset, model_preset


class StepWork(NamedTuple):
    """The work of one engine step (see the module doc); `model.step_time(*work)` is its duration."""

    prefill_tokens: int
    decode_seqs: int
    prefill_pairs: int
    decode_kv_tokens: int
    prefill_kv_tokens: int
    admitted: int = 0


#: Latency model classes by kind (filled by `LatencyModel.__init_subclass__`).
LATENCY_MODELS: dict[str, type[LatencyModel]] = {}


class LatencyModel(ABC):
    """Seconds per engine step. Subclasses set `kind` and are registered under it."""

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        LATENCY_MODELS[cls.kind] = cls

    @abstractmethod
    def step_time(self, prefill_tokens: int, decode_seqs: int, prefill_pairs: int, decode_kv_tokens: int,
                  prefill_kv_tokens: int, admitted: int) -> float:
        """Seconds for one step with the given work (the fields of `StepWork`)."""

    @abstractmethod
    def decode_line_coefficients(self, requests: int, context: int) -> tuple[float, float, float, float, float]:
        """(a0, a1, b0, b1, overhead_s) of a run of pure-decode steps of `requests` requests whose contexts sum to
        `context` tokens at its first step: step j lasts max(a0 + a1 j, b0 + b1 j) + overhead_s."""

    @abstractmethod
    def to_dict(self) -> dict:
        """JSON form, with a "kind" key (`latency_from_dict` reads it back)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict) -> LatencyModel:
        """The model from its JSON form (without checking "kind")."""

    @abstractmethod
    def describe(self) -> str:
        """One line for the user."""

    def cost(self, work: StepWork) -> float:
        """Seconds for one step of `work`."""
        return self.step_time(*work)

    def decode_lines(self, requests: int, context: int) -> DecodeLines:
        """Pure-decode steps of `requests` requests whose contexts sum to `context` tokens at the first step."""
        return DecodeLines(*self.decode_line_coefficients(requests, context))


def latency_from_dict(data: dict, source: str = "latency model") -> LatencyModel:
    """A latency model from its JSON form: {"kind": KIND, ...} with KIND one of `LATENCY_MODELS`."""
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        raise BurstGPTError(f"{source}: expected a JSON object with a \"kind\" ({', '.join(LATENCY_MODELS)})")
    kind = data["kind"]
    if kind not in LATENCY_MODELS:
        raise BurstGPTError(f"{source}: unknown kind '{kind}'; choose one of: {', '.join(LATENCY_MODELS)}")
    fields = {k: v for k, v in data.items() if k != "kind"}
    try:
        return LATENCY_MODELS[kind].from_dict(fields)
    except (TypeError, ValueError, KeyError) as exc:
        raise BurstGPTError(f"{source}: bad '{kind}' model: {exc}") from None


def _number_fields(cls, data: dict) -> dict:
    """`data`'s entries checked against the dataclass `cls`'s float fields: known names, finite numbers >= 0."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(names))}")
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"'{name}' must be a non-negative number, got {value!r}")
    return {name: float(value) for name, value in data.items()}


class DecodeLines:
    """Step times of a run of pure-decode steps: step j (0-based) lasts max(a0 + a1 j, b0 + b1 j) + overhead_s
    seconds (two lines: compute and memory for the roofline). Step 0 equals the model's `step_time` exactly."""

    __slots__ = ("a0", "a1", "b0", "b1", "overhead_s", "_upper0", "_upper1", "_lower0", "_lower1", "_split_cap")

    def __init__(self, a0: float, a1: float, b0: float, b1: float, overhead_s: float) -> None:
        self.a0, self.a1, self.b0, self.b1, self.overhead_s = a0, a1, b0, b1, overhead_s
        # The line on top at step 0, and the step from which the other one is on top (None: never); `total` is
        # called several times per run, so this is worked out once.
        upper0, upper1, lower0, lower1 = (a0, a1, b0, b1) if a0 >= b0 else (b0, b1, a0, a1)
        self._upper0, self._upper1, self._lower0, self._lower1 = upper0, upper1, lower0, lower1
        self._split_cap = int((upper0 - lower0) / (lower1 - upper1)) + 1 if lower1 > upper1 else None

    def total(self, steps: int) -> float:
        """Seconds taken by the first `steps` steps, in closed form (step 0 alone: exactly its duration)."""
        a0, a1 = self._upper0, self._upper1
        split_cap = self._split_cap
        if split_cap is None or split_cap >= steps:
            return steps * a0 + a1 * (steps * (steps - 1) / 2) + steps * self.overhead_s
        # The lower line overtakes from step `split` on.
        split = split_cap
        seconds = split * a0 + a1 * (split * (split - 1) / 2)
        rest = steps - split
        seconds += rest * self._lower0 + self._lower1 * ((split + steps - 1) * rest / 2)
        return seconds + steps * self.overhead_s


def run_line_tables(a0, a1, b0, b1):
    """Per decode run (arrays of its `DecodeLines` fields): (upper0, upper1, lower0, lower1, split_cap) with the line
    on top at step 0 first, as `DecodeLines.total` orders them, and `split_cap` the step from which the lower line
    is on top (+inf when never), so a run's first `split = min(step, split_cap)` steps follow the upper line."""
    with np.errstate(invalid="ignore", divide="ignore"):  # a linear model's second line is -inf (never on top)
        first_high = a0 >= b0
        upper0, upper1 = np.where(first_high, a0, b0), np.where(first_high, a1, b1)
        lower0, lower1 = np.where(first_high, b0, a0), np.where(first_high, b1, a1)
        cross = np.floor((upper0 - lower0) / (lower1 - upper1)) + 1
        split_cap = np.where(lower1 > upper1, np.nan_to_num(cross, posinf=np.inf), np.inf)
    return upper0, upper1, lower0, lower1, split_cap


def expand_run_tables(upper0, upper1, lower0, lower1, split_cap, overhead_s, counts, step):
    """For each step of some decode runs (per-run tables of `run_line_tables` and `overhead_s`; `counts`: the
    runs' numbers of steps; `step`: each step's 0-based index in its run, float64, runs one after the other): its
    duration and its start offset from its run's start (`DecodeLines.total(step)`), seconds, with the same float
    operations as `DecodeLines`."""
    high0, high1, overhead = np.repeat(upper0, counts), np.repeat(upper1, counts), np.repeat(overhead_s, counts)
    duration = high1 * step
    duration += high0
    low = np.repeat(lower1, counts)
    low *= step
    low += np.repeat(lower0, counts)
    with np.errstate(invalid="ignore"):  # a linear model's second line is -inf (never on top)
        np.maximum(duration, low, out=duration)
    duration += overhead
    del low
    crossing = bool((split_cap < np.inf).any())
    split = np.minimum(step, np.repeat(split_cap, counts)) if crossing else step
    offset = split * high0
    pairs = split - 1
    pairs *= split
    pairs /= 2
    pairs *= high1
    offset += pairs
    del pairs, high0, high1
    if crossing:
        rest = step - split
        beyond = np.flatnonzero(rest > 0)  # steps past the crossing follow the lower line
        if len(beyond):
            runs = np.repeat(np.arange(len(counts)), counts)[beyond]
            r, s = rest[beyond], split[beyond]
            offset[beyond] += r * lower0[runs] + lower1[runs] * ((s + step[beyond] - 1) * r / 2)
    offset += step * overhead
    return duration, offset


@dataclass(frozen=True)
class RooflineLatency(LatencyModel):
    """Step time = max(FLOPs / (peak x compute_efficiency), bytes / (bandwidth x memory_efficiency)) + overhead_s."""

    kind: ClassVar[str] = "roofline"

    gpu: GPUSpec
    model: ModelSpec
    compute_efficiency: float = 0.6
    memory_efficiency: float = 0.8
    overhead_s: float = 0.003

    def __post_init__(self) -> None:
        for name in ("compute_efficiency", "memory_efficiency"):
            if not 0 < getattr(self, name) <= 1:
                raise BurstGPTError(f"roofline {name.replace('_', ' ')} must be in (0, 1], got {getattr(self, name)}")
        if not (math.isfinite(self.overhead_s) and self.overhead_s >= 0):
            raise BurstGPTError(f"roofline step overhead must be a non-negative number, got {self.overhead_s}")
        model = self.model
        # Constants of the formulas, computed once (the engine calls these methods millions of times).
        object.__setattr__(self, "_constants", (
            2.0 * model.num_parameters,  # FLOPs per token through the weights
            4.0 * model.num_layers * model.hidden_size,  # FLOPs per attention pair
            model.weight_bytes,
            float(model.kv_bytes_per_token),
            self.gpu.peak_flops * self.compute_efficiency,
            self.gpu.memory_bandwidth * self.memory_efficiency,
        ))

    def step_time(self, prefill_tokens: int, decode_seqs: int, prefill_pairs: int, decode_kv_tokens: int,
                  prefill_kv_tokens: int, admitted: int) -> float:  # noqa: ARG002 - no per-request cost
        flops_per_token, attention_flops, weight_bytes, kv_bytes, flop_rate, byte_rate = self._constants
        compute_s = (flops_per_token * (prefill_tokens + decode_seqs)
                     + attention_flops * (prefill_pairs + decode_kv_tokens)) / flop_rate
        memory_s = (weight_bytes + kv_bytes * (decode_kv_tokens + prefill_kv_tokens)) / byte_rate
        return (compute_s if compute_s > memory_s else memory_s) + self.overhead_s

    def decode_line_coefficients(self, requests: int, context: int) -> tuple[float, float, float, float, float]:
        flops_per_token, attention_flops, weight_bytes, kv_bytes, flop_rate, byte_rate = self._constants
        # Step 0 with exactly step_time's operations; each later step reads `requests` more tokens.
        compute_0 = (flops_per_token * (0 + requests) + attention_flops * (0 + context)) / flop_rate
        memory_0 = (weight_bytes + kv_bytes * (context + 0)) / byte_rate
        return (compute_0, attention_flops * requests / flop_rate, memory_0, kv_bytes * requests / byte_rate,
                self.overhead_s)

    def to_dict(self) -> dict:
        gpu = self.gpu.name if GPU_PRESETS.get(self.gpu.name) == self.gpu else dataclasses.asdict(self.gpu)
        model = self.model.name if MODEL_PRESETS.get(self.model.name) == self.model else dataclasses.asdict(self.model)
        return {"kind": self.kind, "gpu": gpu, "model": model, "compute_efficiency": self.compute_efficiency,
                "memory_efficiency": self.memory_efficiency, "overhead_s": self.overhead_s}

    @classmethod
    def from_dict(cls, data: dict) -> RooflineLatency:
        data = dict(data)
        gpu, model = data.pop("gpu"), data.pop("model")
        gpu = gpu_preset(gpu) if isinstance(gpu, str) else GPUSpec(**gpu)
        model = model_preset(model) if isinstance(model, str) else ModelSpec(**model)
        return cls(gpu, model, **_number_fields(cls, data))

    def describe(self) -> str:
        return (f"roofline {self.gpu.name} x {self.model.name} (compute efficiency {self.compute_efficiency:g}, "
                f"memory efficiency {self.memory_efficiency:g}, step overhead {self.overhead_s * 1e3:g} ms)")


@dataclass(frozen=True)
class LinearLatency(LatencyModel):
    """Step time, seconds = base_s + per_prefill_token_s x prefill tokens + per_decode_token_s x decode sequences
    + per_kv_token_s x KV tokens read + per_prefill_pair_s x prefill attention pairs + per_admitted_request_s x
    requests admitted in the step. `base_s` must be positive (a step always takes time)."""

    kind: ClassVar[str] = "linear"

    base_s: float
    per_prefill_token_s: float
    per_decode_token_s: float
    per_kv_token_s: float = 0.0
    per_prefill_pair_s: float = 0.0
    per_admitted_request_s: float = 0.0

    def __post_init__(self) -> None:
        values = dataclasses.astuple(self)
        if any(not (math.isfinite(v) and v >= 0) for v in values) or not self.base_s > 0:
            raise BurstGPTError(f"linear latency coefficients must be non-negative numbers with a positive base: "
                                f"{', '.join(f'{v:g}' for v in values)}")

    def step_time(self, prefill_tokens: int, decode_seqs: int, prefill_pairs: int, decode_kv_tokens: int,
                  prefill_kv_tokens: int, admitted: int) -> float:
        return (
            self.base_s
            + self.per_prefill_token_s * prefill_tokens
            + self.per_decode_token_s * decode_seqs
            + self.per_kv_token_s * (decode_kv_tokens + prefill_kv_tokens)
            + self.per_prefill_pair_s * prefill_pairs
            + self.per_admitted_request_s * admitted
        )

    def decode_line_coefficients(self, requests: int, context: int) -> tuple[float, float, float, float, float]:
        # Step 0 with exactly step_time's operations (the zero terms included: x + 0.0 is x).
        head = self.base_s + self.per_prefill_token_s * 0 + self.per_decode_token_s * requests
        a0 = head + self.per_kv_token_s * (context + 0) + self.per_prefill_pair_s * 0 + self.per_admitted_request_s * 0
        return a0, self.per_kv_token_s * requests, -math.inf, 0.0, 0.0

    def to_dict(self) -> dict:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> LinearLatency:
        return cls(**_number_fields(cls, data))

    def describe(self) -> str:
        terms = ", ".join(f"{f.name} {getattr(self, f.name):g}" for f in dataclasses.fields(self)
                          if getattr(self, f.name) or f.name == "base_s")
        return f"linear ({terms})"


def parse_linear_coefficients(text: str) -> LinearLatency:
    """`BASE,PREFILL,DECODE[,KV]` in seconds (per step, per prefill token, per decode token, per KV token read)."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (3, 4) or any(not math.isfinite(v) or v < 0 for v in values) or not values[0] > 0:
        raise BurstGPTError(
            f"--latency-coefficients '{text}': expected BASE,PREFILL,DECODE[,KV] as non-negative seconds, "
            "BASE positive"
        )
    return LinearLatency(*values)


#: The linear model's coefficients, in the order of `LinearLatency`'s fields and of `linear_features`' columns.
LINEAR_TERMS = ("base_s", "per_prefill_token_s", "per_decode_token_s", "per_kv_token_s", "per_prefill_pair_s",
                "per_admitted_request_s")


def linear_features(prefill_tokens, decode_seqs, prefill_pairs, decode_kv_tokens, prefill_kv_tokens, admitted
                    ) -> np.ndarray:
    """The linear model's design matrix for steps given by arrays of `StepWork` fields: shape (steps, 6),
    float64, columns in `LINEAR_TERMS` order (1, prefill tokens, decode sequences, KV tokens read, prefill
    pairs, admitted requests), so that `features @ coefficients` is `LinearLatency.step_time` of each step."""
    prefill_tokens = np.asarray(prefill_tokens, np.float64)
    return np.column_stack([
        np.ones_like(prefill_tokens), prefill_tokens, np.asarray(decode_seqs, np.float64),
        np.asarray(decode_kv_tokens, np.float64) + np.asarray(prefill_kv_tokens, np.float64),
        np.asarray(prefill_pairs, np.float64), np.asarray(admitted, np.float64),
    ])


class StepRecorder:
    """A latency model that keeps the work of the steps it times (`last`: the latest step's `StepWork` tuple;
    `works`: every step's, in order, when `keep_all`) and delegates the time to `model`. For an engine stepped
    one step at a time (`step()` without `jump`): decode runs taken in closed form would not be recorded step by
    step, so it refuses them. Not a registered kind: it is never written to a file."""

    def __init__(self, model: LatencyModel, *, keep_all: bool = True) -> None:
        self.model = model
        self.last: tuple[int, int, int, int, int, int] | None = None
        self.works: list[tuple[int, int, int, int, int, int]] | None = [] if keep_all else None

    def step_time(self, prefill_tokens: int, decode_seqs: int, prefill_pairs: int, decode_kv_tokens: int,
                  prefill_kv_tokens: int, admitted: int) -> float:
        work = self.last = (prefill_tokens, decode_seqs, prefill_pairs, decode_kv_tokens, prefill_kv_tokens,
                            admitted)
        if self.works is not None:
            self.works.append(work)
        return self.model.step_time(*work)

    def decode_line_coefficients(self, requests: int, context: int):
        raise RuntimeError("StepRecorder records single steps: step the engine without jump")

    def describe(self) -> str:
        return self.model.describe()


#: `format` tag of a latency model file.
LATENCY_MODEL_FORMAT = "burstgpt-latency-model"

#: Engine settings a model file may carry that `EngineSpec` takes (the rest are kept for the record only).
ENGINE_SETTING_NAMES = ("num_gpu_blocks", "block_size", "max_num_seqs", "max_num_batched_tokens", "max_model_len")


@dataclass(frozen=True)
class FitQuality:
    """How well a fitted model explains its measurements: `r2` (coefficient of determination), residual
    percentiles of |measured - predicted| in seconds and relative to the measurement, the number of points
    fitted and of points dropped as outliers, and whether the measurements were cut short (`partial`)."""

    r2: float
    residual_p50_s: float
    residual_p90_s: float
    residual_p99_s: float
    relative_p50: float
    relative_p90: float
    relative_p99: float
    points: int
    outliers: int = 0
    partial: bool = False


@dataclass(frozen=True)
class FittedModel:
    """A latency model and what it was fitted on: `method` (`profile`, `calibrate`, or None for a bare model),
    `source` (the server URL without credentials, or the run directories), the served `model_name`, `engine`
    settings read from the server (`ENGINE_SETTING_NAMES` and whatever else it exposes), `fitted_at_utc`
    (ISO 8601), `burstgpt_version`, `fit` quality, free-form `notes` and the `measurements` fitted (tables as
    lists of rows, for the record)."""

    latency: LatencyModel
    method: str | None = None
    source: str | list[str] | None = None
    model_name: str | None = None
    engine: dict = field(default_factory=dict)
    fitted_at_utc: str | None = None
    burstgpt_version: str | None = None
    fit: FitQuality | None = None
    notes: list[str] = field(default_factory=list)
    measurements: dict = field(default_factory=dict)
    frontend_delay_s: float | None = None  # EngineSpec.frontend_delay_s as measured (profile), None if unknown

    def engine_settings(self) -> dict[str, int]:
        """The settings of `ENGINE_SETTING_NAMES` the file carries, as positive integers (others skipped)."""
        settings = {}
        for name in ENGINE_SETTING_NAMES:
            value = self.engine.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                settings[name] = value
        return settings

    def to_dict(self) -> dict:
        return {
            "format": LATENCY_MODEL_FORMAT, "version": 1, "latency": self.latency.to_dict(), "method": self.method,
            "source": self.source, "model_name": self.model_name, "engine": dict(self.engine),
            "fitted_at_utc": self.fitted_at_utc, "burstgpt_version": self.burstgpt_version,
            "fit": dataclasses.asdict(self.fit) if self.fit is not None else None, "notes": list(self.notes),
            "measurements": self.measurements, "frontend_delay_s": self.frontend_delay_s,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "latency model") -> FittedModel:
        """From `to_dict`'s form, or a bare latency model `{"kind": ...}`."""
        if isinstance(data, dict) and "kind" in data:
            return cls(latency_from_dict(data, source))
        if not isinstance(data, dict) or data.get("format") != LATENCY_MODEL_FORMAT:
            raise BurstGPTError(f"{source}: not a latency model (expected {{\"format\": \"{LATENCY_MODEL_FORMAT}\", "
                                f"...}} or {{\"kind\": ...}})")
        fit = data.get("fit")
        try:
            quality = FitQuality(**fit) if isinstance(fit, dict) else None
        except TypeError as exc:
            raise BurstGPTError(f"{source}: bad 'fit': {exc}") from None
        engine = data.get("engine") or {}
        if not isinstance(engine, dict):
            raise BurstGPTError(f"{source}: 'engine' must be a JSON object")
        return cls(latency_from_dict(data.get("latency"), f"{source}: 'latency'"), method=data.get("method"),
                   source=data.get("source"), model_name=data.get("model_name"), engine=engine,
                   fitted_at_utc=data.get("fitted_at_utc"), burstgpt_version=data.get("burstgpt_version"),
                   fit=quality, notes=list(data.get("notes") or []), measurements=data.get("measurements") or {},
                   frontend_delay_s=_non_negative_or_none(data.get("frontend_delay_s"), f"{source}: 'frontend_delay_s'"))

    def describe(self) -> str:
        """One line: the model, and what it was fitted on."""
        parts = [self.latency.describe()]
        if self.frontend_delay_s:
            parts.append(f"frontend delay {1e3 * self.frontend_delay_s:.3g} ms")
        if self.method:
            on = f"{self.model_name} at {self.source}" if self.model_name else str(self.source)
            parts.append(f"fitted by {self.method} on {on}, {self.fitted_at_utc}")
        if self.fit is not None:
            parts.append(f"R^2 {self.fit.r2:.3f}, residual p50 {self.fit.relative_p50:.1%}"
                         + (" (PARTIAL)" if self.fit.partial else ""))
        return "; ".join(parts)


def _non_negative_or_none(value, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value >= 0):
        raise BurstGPTError(f"{what} must be a non-negative number of seconds, got {value!r}")
    return float(value)


def load_latency_model(path: str | Path) -> FittedModel:
    """Read a latency model file (`FittedModel.to_dict`'s JSON, or a bare `{"kind": ...}` model); a bad file is
    an `InputError` naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not JSON: {exc.msg}", line=exc.lineno) from None
    try:
        return FittedModel.from_dict(data, source="model file")
    except BurstGPTError as exc:
        raise InputError(path, str(exc).removeprefix("model file: ")) from None
