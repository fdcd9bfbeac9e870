"""burstgpt.client: the open-loop load generator for OpenAI-compatible servers.

    from burstgpt.client import EndpointOptions, LoadGenerator, RunOptions
    result = LoadGenerator(workload, EndpointOptions("http://127.0.0.1:8000"), RunOptions()).run_sync()
    result.records          # one request record per workload row (burstgpt.records schema)

Modules: `runner` (LoadGenerator, RunOptions, BenchResult), `openai` (EndpointOptions, request bodies, one
request's lifecycle and its failure class), `sse` (the SSE parser), `scrape` (Prometheus /metrics scraping),
`prompts` (synthesised prompts of exact token length, starting with the shared
text of their prefix block ids), `progress` (the live view),
`exporter` (the client's own metrics for Prometheus), `timing` (the client-limited verdict, the connection
cap's default), `workers` (one schedule sent by several processes or Ray actors: MultiSenderRun).
"""

from __future__ import annotations

from burstgpt.lazy import lazy_exports

_EXPORTS = {"LoadGenerator": "runner", "RunOptions": "runner", "BenchResult": "runner",
            "EndpointOptions": "openai", "MultiSenderRun": "workers", "DispatchVerdict": "timing"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
