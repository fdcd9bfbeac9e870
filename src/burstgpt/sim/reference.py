"""A deliberately simple per-step engine over request objects: the oracle for `ServingEngine` in tests and the
baseline in `benchmarks/bench_sim.py`. Same semantics as `burstgpt.sim.engine` (see its module doc), written
for clarity: one Python loop per step over the running requests. Far too slow for large workloads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from burstgpt.sim.engine import DONE, INVALID, REJECTED, RUNNING, TIMED_OUT, WAITING, EngineConfig
from burstgpt.sim.latency import StepWork


@dataclass
class _Request:
    rid: int
    arrival: float
    prompt: int
    output_len: int
    deadline: float
    state: int = 0
    computed: int = 0
    generated: int = 0
    blocks: int = 0
    preemptions: int = 0
    first_scheduled: float = math.nan
    first_token: float = math.nan
    last_token: float = math.nan
    end: float = math.nan


def reference_simulate(config: EngineConfig, latency, arrival_s, prompt_tokens, output_tokens) -> dict[str, np.ndarray]:
    """Simulate step by step (`latency`: a `burstgpt.sim.latency.LatencyModel`); returns per-request arrays
    (state, first_scheduled, first_token, end, generated, preemptions) and `step_times` (start of every step)."""
    timeout = config.timeout_s if config.timeout_s is not None else math.inf
    requests = [
        # A request stops at max_model_len tokens of context, as vLLM's does.
        _Request(i, float(a), int(p), min(max(int(o), 1), max(config.max_model_len - int(p), 1)), float(a) + timeout)
        for i, (a, p, o) in enumerate(zip(arrival_s, prompt_tokens, output_tokens, strict=True))
    ]
    bs = config.block_size
    free = config.num_gpu_blocks
    waiting: list[_Request] = []
    running: list[_Request] = []
    next_arrival = 0
    now = 0.0
    step_times: list[float] = []

    def time_out(req: _Request) -> None:
        if req.last_token > req.deadline:
            req.generated -= 1
        if req.first_token > req.deadline:
            req.first_token = math.nan
        req.state = TIMED_OUT
        req.end = req.deadline

    while True:
        while next_arrival < len(requests) and requests[next_arrival].arrival <= now:
            req = requests[next_arrival]
            next_arrival += 1
            if not 0 < req.prompt < config.max_model_len:
                req.state, req.end = INVALID, req.arrival
            elif config.max_queue is not None and len(waiting) >= config.max_queue:
                req.state, req.end = REJECTED, req.arrival
            else:
                req.state = WAITING
                waiting.append(req)
        for req in [r for r in running + waiting if r.deadline <= now]:
            time_out(req)
            if req in running:
                free += req.blocks
                running.remove(req)
            else:
                waiting.remove(req)
        if not running and not waiting:
            if next_arrival >= len(requests):
                break
            now = max(now, requests[next_arrival].arrival)
            continue
        budget = config.max_num_batched_tokens
        scheduled: list[tuple[_Request, int]] = []
        preempted = False
        index = 0
        while index < len(running) and budget > 0:
            req = running[index]
            chunk = min(req.prompt + req.generated - req.computed, budget)
            needed = -(-(req.computed + chunk) // bs) - req.blocks
            while needed > free:
                victim = running.pop()
                free += victim.blocks
                victim.blocks = victim.computed = 0
                victim.preemptions += 1
                victim.state = WAITING
                waiting.insert(0, victim)
                preempted = True
                if victim is req:
                    break
            if req.state != RUNNING:
                break
            free -= needed
            req.blocks += needed
            scheduled.append((req, chunk))
            budget -= chunk
            index += 1
        admitted = 0
        if not preempted:
            while waiting and budget > 0 and len(running) < config.max_num_seqs:
                req = waiting[0]
                chunk = min(req.prompt + req.generated, budget)
                needed = -(-chunk // bs)
                if needed > free:
                    break
                waiting.pop(0)
                free -= needed
                req.blocks = needed
                req.state = RUNNING
                if math.isnan(req.first_scheduled):
                    req.first_scheduled = now
                running.append(req)
                scheduled.append((req, chunk))
                budget -= chunk
                admitted += 1
        prefill = decode = prefill_pairs = decode_kv = prefill_kv = 0
        for req, chunk in scheduled:
            if chunk == 1 and req.generated > 0 and req.computed == req.prompt + req.generated - 1:
                decode += 1
                decode_kv += req.computed + 1
            else:
                prefill += chunk
                prefill_pairs += chunk * req.computed + chunk * (chunk + 1) // 2
                prefill_kv += req.computed + chunk
        duration = float(latency.cost(StepWork(prefill, decode, prefill_pairs, decode_kv, prefill_kv, admitted)))
        step_times.append(now)
        end = now + duration
        for req, chunk in scheduled:
            req.computed += chunk
            if req.computed == req.prompt + req.generated:
                if req.generated == 0:
                    req.first_token = end
                req.generated += 1
                req.last_token = end
                if req.generated == req.output_len:
                    req.state, req.end = DONE, end
                    if req.deadline < end:
                        time_out(req)
                    free += req.blocks
                    running.remove(req)
        now = end
    return {
        "state": np.array([r.state for r in requests], np.int8),
        "first_scheduled": np.array([r.first_scheduled for r in requests]),
        "first_token": np.array([r.first_token for r in requests]),
        "end": np.array([r.end for r in requests]),
        "generated": np.array([r.generated for r in requests], np.int64),
        "preemptions": np.array([r.preemptions for r in requests], np.int64),
        "step_times": np.array(step_times),
    }
