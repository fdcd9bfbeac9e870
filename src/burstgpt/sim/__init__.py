"""burstgpt.sim: a fast simulator of one vLLM-like engine replica.

    from burstgpt.sim import EngineSpec, build_engine_setup, simulate_workload
    setup = build_engine_setup(EngineSpec(gpu="A800", model="Llama-2-7B", num_gpu_blocks=1000))
    result = simulate_workload(workload, setup, seed=0)     # .records (burstgpt.records), .steps

Modules: `simulate` (EngineSpec, EngineSetup, simulate_workload, server metrics from steps), `engine` (the step
loop), `scheduler`, `kv_cache`, `step_log`, `latency` (step-time models by kind), `hardware` (GPU and model
presets), `output_lengths`, `reference` (a per-step reference implementation for the tests).
"""

from __future__ import annotations

from burstgpt.lazy import lazy_exports

_EXPORTS = {"EngineSpec": "simulate", "EngineSetup": "simulate", "build_engine_setup": "simulate",
            "simulate_workload": "simulate", "server_metrics_from_steps": "simulate",
            "LatencyModel": "latency", "latency_from_dict": "latency"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
