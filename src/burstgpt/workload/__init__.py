"""burstgpt.workload: bursty arrivals at any scale, Zipf lengths and real prompts (paper section IV).

Modules: `arrivals` (Gamma/Poisson/constant, schedules, mirroring, replay), `lengths` (Zipf request lengths,
empirical response lengths), `prompts` (tokenizers, prompt sources, the prompt pool), `params` (fitted
parameters file), `generate` (assembling the workload table), `inspect` (statistics and plots),
`synthetic_trace` (a BurstGPT-like trace with known parameters); `schema` and `io` define and read/write the
workload table. See docs/workload.md.
"""
