"""GPU and model presets (looked up by name or unambiguous case-insensitive prefix) and the KV-cache size they
imply. The step-time models built on them are in `burstgpt.sim.latency`."""

from __future__ import annotations

from dataclasses import dataclass

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


def resolve_preset_name(presets: dict, name: str, what: str) -> str:
    """The key of `presets` that `name` means: an exact case-insensitive match, else the only key it is a
    case-insensitive prefix of. Raises a one-line error listing the choices when unknown or ambiguous."""
    wanted = name.strip().lower()
    for key in presets:
        if key.lower() == wanted:
            return key
    matches = [key for key in presets if wanted and key.lower().startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    problem = f"is ambiguous (matches {', '.join(matches)})" if matches else "is unknown"
    raise BurstGPTError(f"{what} preset '{name}' {problem}; choose one of: {', '.join(presets)}")


def gpu_preset(name: str) -> GPUSpec:
    """The GPU preset called `name` (case-insensitive; an unambiguous prefix such as `a800` will do)."""
    return GPU_PRESETS[resolve_preset_name(GPU_PRESETS, name, "GPU")]


def model_preset(name: str) -> ModelSpec:
    """The model preset called `name` (case-insensitive; an unambiguous prefix such as `llama-2-7b` will do)."""
    return MODEL_PRESETS[resolve_preset_name(MODEL_PRESETS, name, "model")]


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
