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

    __slots__ = ("a0", "a1", "b0", "b1", "overhead_s")

    def __init__(self, a0: float, a1: float, b0: float, b1: float, overhead_s: float) -> None:
        self.a0, self.a1, self.b0, self.b1, self.overhead_s = a0, a1, b0, b1, overhead_s

    def total(self, steps: int) -> float:
        """Seconds taken by the first `steps` steps, in closed form (step 0 alone: exactly its duration)."""
        a0, a1, b0, b1 = (self.a0, self.a1, self.b0, self.b1) if self.a0 >= self.b0 else (
            self.b0, self.b1, self.a0, self.a1)
        split = steps
        if b1 > a1:
            # The lower line overtakes from step `cross` on.
            split = min(steps, int((a0 - b0) / (b1 - a1)) + 1)
        seconds = split * a0 + a1 * (split * (split - 1) / 2)
        if split < steps:
            rest = steps - split
            seconds += rest * b0 + b1 * ((split + steps - 1) * rest / 2)
        return seconds + steps * self.overhead_s


def decode_run_tables(a0, a1, b0, b1, overhead_s, step):
    """For arrays (one element per step of some decode runs): each step's duration and its start offset from its
    run's start (`DecodeLines.total(step)`), with the same operations as `DecodeLines` (float64 arrays)."""
    with np.errstate(invalid="ignore"):  # a linear model's second line is -inf (never on top)
        return _decode_run_tables(a0, a1, b0, b1, overhead_s, step)


def _decode_run_tables(a0, a1, b0, b1, overhead_s, step):
    duration = np.maximum(a0 + a1 * step, b0 + b1 * step) + overhead_s
    first_high = a0 >= b0
    hi0, hi1 = np.where(first_high, a0, b0), np.where(first_high, a1, b1)
    lo0, lo1 = np.where(first_high, b0, a0), np.where(first_high, b1, a1)
    with np.errstate(divide="ignore"):
        cross = np.floor((hi0 - lo0) / (lo1 - hi1)) + 1
    split = np.where(lo1 > hi1, np.minimum(step, np.nan_to_num(cross, posinf=np.inf)), step)
    offset = split * hi0 + hi1 * (split * (split - 1) / 2)
    rest = step - split
    offset = offset + np.where(rest > 0, rest * lo0 + lo1 * ((split + step - 1) * rest / 2), 0.0)
    return duration, offset + step * overhead_s


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
        flops_per_token, attention_flops, weight_bytes, kv_bytes, flop_rate, byte_rate = self._constants
        # Step 0 with exactly step_time's operations; each later step reads `requests` more tokens.
        compute_0 = (flops_per_token * (0 + requests) + attention_flops * context) / flop_rate
        memory_0 = (weight_bytes + kv_bytes * context) / byte_rate
        return DecodeLines(compute_0, attention_flops * requests / flop_rate, memory_0,
                           kv_bytes * requests / byte_rate, self.overhead_s)


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
        head = self.base_s + self.per_prefill_token_s * 0 + self.per_decode_token_s * requests
        return DecodeLines(head + self.per_kv_token_s * context, self.per_kv_token_s * requests, -math.inf, 0.0, 0.0)


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
