"""GPU and model presets, the KV-cache size they imply, and the step-time (latency) models.

A step's work is described by four numbers (all may be NumPy arrays of the same shape, for many steps at once):

- `prefill_tokens`: prompt (or recomputed) tokens processed in the step;
- `decode_tokens`: requests producing their next token from their previous one (one token each);
- `attention_pairs`: sum over all tokens processed of the context each attends to (query-key pairs);
- `kv_tokens`: sum over the scheduled requests of the tokens whose KV cache is read (context incl. the new ones).

`RooflineLatency` turns them into seconds: FLOPs (2 x parameters per token, plus 4 x layers x hidden per
attention pair) against the GPU's peak FLOP/s, and bytes (weights once per step, plus the KV cache read) against
its memory bandwidth, each scaled by an efficiency factor; the step takes the larger of the two plus a fixed
per-step overhead. `LinearLatency` takes user coefficients instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from burstgpt.errors import BurstGPTError

GIB = 1024**3


@dataclass(frozen=True)
class GPUSpec:
    """One GPU: memory (bytes), dense 16-bit tensor throughput (FLOP/s) and memory bandwidth (bytes/s)."""

    name: str
    memory_bytes: float
    peak_flops: float
    memory_bandwidth: float


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer: parameter count, shape, KV layout and context length (tokens)."""

    name: str
    num_parameters: float
    num_layers: int
    hidden_size: int
    num_kv_heads: int
    head_dim: int
    max_model_len: int
    dtype_bytes: int = 2

    @property
    def weight_bytes(self) -> float:
        return self.num_parameters * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V cache per token over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


#: Public spec-sheet figures (dense BF16/FP16 tensor FLOP/s without sparsity).
GPU_PRESETS: dict[str, GPUSpec] = {
    "A800-80GB": GPUSpec("A800-80GB", 80 * GIB, 312e12, 2.039e12),
    "RTX-A6000-48GB": GPUSpec("RTX-A6000-48GB", 48 * GIB, 154.8e12, 768e9),
    "H100-80GB": GPUSpec("H100-80GB", 80 * GIB, 989e12, 3.35e12),
}

MODEL_PRESETS: dict[str, ModelSpec] = {
    "Llama-2-7B-chat": ModelSpec("Llama-2-7B-chat", 6.74e9, 32, 4096, 32, 128, 4096),
    "Llama-2-13B-chat": ModelSpec("Llama-2-13B-chat", 13.0e9, 40, 5120, 40, 128, 4096),
}


def _lookup(presets: dict, name: str, what: str):
    for key, value in presets.items():
        if key.lower() == name.lower():
            return value
    raise BurstGPTError(f"unknown {what} '{name}'; choose one of: {', '.join(presets)}")


def gpu_preset(name: str) -> GPUSpec:
    """The GPU preset called `name` (case-insensitive)."""
    return _lookup(GPU_PRESETS, name, "GPU")


def model_preset(name: str) -> ModelSpec:
    """The model preset called `name` (case-insensitive)."""
    return _lookup(MODEL_PRESETS, name, "model")


def num_gpu_blocks(
    gpu: GPUSpec,
    model: ModelSpec,
    *,
    block_size: int = 16,
    gpu_memory_utilization: float = 0.9,
    activation_reserve_bytes: float = 2 * GIB,
) -> int:
    """KV-cache blocks that fit, as vLLM sizes them: (memory x utilisation - weights - activations) / block bytes."""
    free = gpu.memory_bytes * gpu_memory_utilization - model.weight_bytes - activation_reserve_bytes
    blocks = int(free // (block_size * model.kv_bytes_per_token))
    if blocks <= 0:
        raise BurstGPTError(
            f"{model.name} does not fit on {gpu.name} at memory utilisation {gpu_memory_utilization}: "
            "no memory left for the KV cache"
        )
    return blocks


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
class RooflineLatency:
    """Step time = max(FLOPs / (peak x compute_efficiency), bytes / (bandwidth x memory_efficiency)) + overhead_s."""

    gpu: GPUSpec
    model: ModelSpec
    compute_efficiency: float = 0.6
    memory_efficiency: float = 0.8
    overhead_s: float = 0.003

    def __post_init__(self) -> None:
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

    def step_time(self, prefill_tokens: int, decode_tokens: int, attention_pairs: int, kv_tokens: int) -> float:
        """Seconds for one step with the given work."""
        flops_per_token, attention_flops, weight_bytes, kv_bytes, flop_rate, byte_rate = self._constants
        compute_s = (flops_per_token * (prefill_tokens + decode_tokens) + attention_flops * attention_pairs) / flop_rate
        memory_s = (weight_bytes + kv_bytes * kv_tokens) / byte_rate
        return (compute_s if compute_s > memory_s else memory_s) + self.overhead_s

    def decode_lines(self, requests: int, context: int) -> DecodeLines:
        """Pure-decode steps of `requests` requests whose contexts sum to `context` tokens at the first step."""
        return DecodeLines(*self.decode_line_coefficients(requests, context))

    def decode_line_coefficients(self, requests: int, context: int) -> tuple[float, float, float, float, float]:
        """The fields (a0, a1, b0, b1, overhead_s) of `decode_lines`, without building the object (hot path)."""
        flops_per_token, attention_flops, weight_bytes, kv_bytes, flop_rate, byte_rate = self._constants
        # Step 0 with exactly step_time's operations; each later step reads `requests` more tokens.
        compute_0 = (flops_per_token * (0 + requests) + attention_flops * context) / flop_rate
        memory_0 = (weight_bytes + kv_bytes * context) / byte_rate
        return (compute_0, attention_flops * requests / flop_rate, memory_0, kv_bytes * requests / byte_rate,
                self.overhead_s)


@dataclass(frozen=True)
class LinearLatency:
    """User coefficients: step time = base_s + per_prefill_token_s x prefill + per_decode_token_s x decode
    + per_kv_token_s x kv_tokens (seconds)."""

    base_s: float
    per_prefill_token_s: float
    per_decode_token_s: float
    per_kv_token_s: float = 0.0

    def step_time(  # noqa: ARG002 - attention pairs do not enter the linear model
        self, prefill_tokens: int, decode_tokens: int, attention_pairs: int, kv_tokens: int
    ) -> float:
        """Seconds for one step with the given work."""
        return (
            self.base_s
            + self.per_prefill_token_s * prefill_tokens
            + self.per_decode_token_s * decode_tokens
            + self.per_kv_token_s * kv_tokens
        )

    def decode_lines(self, requests: int, context: int) -> DecodeLines:
        """Pure-decode steps of `requests` requests whose contexts sum to `context` tokens at the first step."""
        return DecodeLines(*self.decode_line_coefficients(requests, context))

    def decode_line_coefficients(self, requests: int, context: int) -> tuple[float, float, float, float, float]:
        """The fields (a0, a1, b0, b1, overhead_s) of `decode_lines`, without building the object (hot path)."""
        head = self.base_s + self.per_prefill_token_s * 0 + self.per_decode_token_s * requests
        return head + self.per_kv_token_s * context, self.per_kv_token_s * requests, -math.inf, 0.0, 0.0


def parse_linear_coefficients(text: str) -> LinearLatency:
    """`BASE,PREFILL,DECODE[,KV]` in seconds (per step, per prefill token, per decode token, per KV token read)."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (3, 4) or any(not math.isfinite(v) or v < 0 for v in values):
        raise BurstGPTError(
            f"--latency-coefficients '{text}': expected BASE,PREFILL,DECODE[,KV] as non-negative seconds"
        )
    return LinearLatency(*values)
