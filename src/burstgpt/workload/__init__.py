"""burstgpt.workload: bursty arrivals at any scale, Zipf lengths and real prompts (paper section IV).

The entry point is `WorkloadSpec` -> `build_workload(spec)` -> the workload table (`spec`). Modules:
`arrivals` (schedules, mirroring, replay), `processes` (renewal processes by kind: gamma, poisson, weibull,
constant), `lengths` (Zipf request lengths, empirical response lengths), `responses` (response-length modes by
kind), `tokenizer` (the one token-counting interface), `prompts` (prompt sources, the prompt pool), `params`
(fitted parameters file), `generate` (assembling the workload table), `inspect` (statistics and plots),
`synthetic_trace` (a BurstGPT-like trace with known parameters), `prefixes` (generated shared system prompts
and multi-turn sessions), `sessions` (turns and think times of recorded sessions); `schema` and `io` define, check and
read/write the workload table. See docs/workload.md.
"""

from __future__ import annotations

from burstgpt.lazy import lazy_exports

# Exported lazily so that `burstgpt.workload.schema` stays light for the client and the server.
_EXPORTS = {
    "WorkloadSpec": "spec", "ScheduledArrivals": "spec", "MirroredArrivals": "spec", "ReplayedTrace": "spec",
    "ServeGenClients": "spec",
    "RequestLengths": "spec", "Responses": "spec", "Prompts": "spec", "build_workload": "spec",
    "read_workload": "io", "write_workload": "io", "validate_workload": "schema", "WORKLOAD_SCHEMA": "schema",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
