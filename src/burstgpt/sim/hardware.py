"""GPU and model presets (looked up by name or unambiguous case-insensitive prefix), the KV-cache size they imply
(`num_gpu_blocks`, as vLLM's memory profiling sizes it) and vLLM's default batch limits for them
(`batch_defaults`). The step-time models built on them are in `burstgpt.sim.latency`."""

from __future__ import annotations

from dataclasses import dataclass

from burstgpt.errors import BurstGPTError

GIB = 1024**3


@dataclass(frozen=True)
class GPUSpec:
    """One device: memory (bytes), dense 16-bit tensor throughput (FLOP/s), memory bandwidth (bytes/s), the name
    the device reports (`torch.cuda.get_device_name`, which vLLM's defaults look at) and whether it is a CPU."""

    name: str
    memory_bytes: float
    peak_flops: float
    memory_bandwidth: float
    device_name: str = ""
    is_cpu: bool = False


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
#: The CPU preset stands for a vLLM CPU server (its KV space is VLLM_CPU_KVCACHE_SPACE, here memory x utilisation);
#: its roofline figures are a rough AVX-512 server socket: give such a server a fitted latency model instead.
GPU_PRESETS: dict[str, GPUSpec] = {
    "A800-80GB": GPUSpec("A800-80GB", 80 * GIB, 312e12, 2.039e12, "NVIDIA A800-SXM4-80GB"),
    "A100-80GB": GPUSpec("A100-80GB", 80 * GIB, 312e12, 2.039e12, "NVIDIA A100-SXM4-80GB"),
    "RTX-A6000-48GB": GPUSpec("RTX-A6000-48GB", 48 * GIB, 154.8e12, 768e9, "NVIDIA RTX A6000"),
    "H100-80GB": GPUSpec("H100-80GB", 80 * GIB, 989e12, 3.35e12, "NVIDIA H100 80GB HBM3"),
    "CPU": GPUSpec("CPU", 32 * GIB, 2e12, 100e9, "cpu", is_cpu=True),
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


def default_block_size(gpu: GPUSpec) -> int:
    """vLLM's default KV block size: 16 tokens on GPUs, 128 on its CPU backend (vllm/platforms/cpu.py,
    `check_and_update_config`)."""
    return 128 if gpu.is_cpu else 16


def batch_defaults(gpu: GPUSpec) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) that vLLM's OpenAI API server picks when they are not given
    (vllm/engine/arg_utils.py, `EngineArgs.get_batch_defaults`, usage context OPENAI_API_SERVER, one GPU): CPU
    2048 / 128; memory >= 160 GiB 16384 / 1024; >= 70 GiB and a device name without "a100" 8192 / 1024 (an A800
    reports "NVIDIA A800-SXM4-80GB", so it gets the larger ones); otherwise 2048 / 256."""
    if gpu.is_cpu:
        return 2048, 128
    if gpu.memory_bytes >= 160 * GIB:
        return 16384, 1024
    if gpu.memory_bytes >= 70 * GIB and "a100" not in gpu.device_name.lower():
        return 8192, 1024
    return 2048, 256


def activation_peak_bytes(model: ModelSpec, max_num_batched_tokens: int) -> float:
    """Approximate transient activation peak of vLLM's profiling forward pass, bytes: `max_num_batched_tokens`
    dummy tokens through one layer with about 16 hidden-size 16-bit values per token alive at once (residual,
    normed input, QKV, attention output, the gate and up MLP intermediates at ~2.7 x hidden); the sampler's
    logits are small beside it and left out. Llama-2-13B: 0.31 GiB at 2048 tokens, 1.25 GiB at 8192. An
    approximation: a real server's `cache_config_info` (num_gpu_blocks) overrides it."""
    return 16.0 * model.hidden_size * model.dtype_bytes * max_num_batched_tokens


def num_gpu_blocks(
    gpu: GPUSpec,
    model: ModelSpec,
    *,
    block_size: int = 16,
    gpu_memory_utilization: float = 0.9,
    max_num_batched_tokens: int = 2048,
    non_torch_bytes: float = 0.5 * GIB,
) -> int:
    """KV-cache blocks as vLLM sizes them (vllm/v1/worker/gpu_worker.py `determine_available_memory`,
    vllm/v1/core/kv_cache_utils.py `get_kv_cache_config_from_groups`): available = memory x utilisation -
    weights - peak activations of a `max_num_batched_tokens` forward pass (`activation_peak_bytes`) - non-torch
    memory (CUDA context, NCCL buffers: about 0.5 GiB); blocks = available // (block_size x KV bytes per token
    over all layers). vLLM reserves one of them as its null block (see docs/sim.md)."""
    free = (gpu.memory_bytes * gpu_memory_utilization - model.weight_bytes
            - activation_peak_bytes(model, max_num_batched_tokens) - non_torch_bytes)
    blocks = int(free // (block_size * model.kv_bytes_per_token))
    if blocks <= 0:
        raise BurstGPTError(
            f"{model.name} does not fit on {gpu.name} at memory utilisation {gpu_memory_utilization}: "
            "no memory left for the KV cache"
        )
    return blocks
