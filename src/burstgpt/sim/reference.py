"""A deliberately simple per-step engine over request objects: the oracle for `ServingEngine` in tests and the
baseline in `benchmarks/bench_sim.py`. Same semantics as `burstgpt.sim.engine` (see its module doc and
`burstgpt.sim.scheduler` for the prefix cache), written for clarity: one Python loop per step over the running
requests, every KV block kept in a list with its cache key, the LRU of cached free blocks as a plain list. Far
too slow for large workloads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from burstgpt.sim.engine import DONE, INVALID, REJECTED, RUNNING, TIMED_OUT, WAITING, EngineConfig
from burstgpt.sim.latency import StepWork


@dataclass
class _Request:
    rid: int
    arrival: float
    prompt: int
    output_len: int
    deadline: float  # the client gives up
    abort_at: float  # the engine aborts it
    ids: tuple = ()  # prefix block ids
    id_size: int = 0  # tokens per id
    state: int = 0
    computed: int = 0
    generated: int = 0
    seen: int = 0  # output tokens the client received by its deadline
    blocks: list = field(default_factory=list)  # per block held: its cache key, or None while not cached
    preemptions: int = 0
    cached_tokens: int = 0
    first_scheduled: float = math.nan
    first_token: float = math.nan
    last_token: float = math.nan
    end: float = math.nan


class _Anonymous:
    """An LRU entry nobody can look up (a block whose key a newer block took over)."""


def reference_simulate(config: EngineConfig, latency, arrival_s, prompt_tokens, output_tokens,
                       prefix_ids=None, prefix_block_size=None) -> dict[str, np.ndarray]:
    """Simulate step by step (`latency`: a `burstgpt.sim.latency.LatencyModel`; `prefix_ids`: per request a list
    of prefix block ids or None, each standing for `prefix_block_size` tokens); returns per-request arrays
    (state, first_scheduled, first_token, end, generated, preemptions, cached_tokens) and per step `step_times`
    (start), `kv_blocks_used` (after its allocations) and `cache_hits` (prompt tokens found in the prefix cache
    by first admissions)."""
    timeout = config.timeout_s if config.timeout_s is not None else math.inf
    count = len(arrival_s)
    ids = list(prefix_ids) if prefix_ids is not None else [None] * count
    sizes = np.broadcast_to(np.asarray(prefix_block_size if prefix_block_size is not None else 0), (count,))
    requests = [
        # A request stops at max_model_len tokens of context, as vLLM's does.
        _Request(i, float(a), int(p), min(max(int(o), 1), max(config.max_model_len - int(p), 1)),
                 float(a) + timeout, float(a) + timeout + config.abort_delay_s,
                 tuple(int(x) for x in ids[i]) if ids[i] is not None else (), int(sizes[i]))
        for i, (a, p, o) in enumerate(zip(arrival_s, prompt_tokens, output_tokens, strict=True))
    ]
    bs = config.block_size
    caching = config.enable_prefix_caching
    uncached_free = config.num_gpu_blocks  # free blocks not in the prefix cache
    lru: list = []  # cached free blocks, by key, oldest first
    refs: dict = {}  # key -> running requests holding its block (0: in the LRU)
    waiting: list[_Request] = []
    running: list[_Request] = []
    next_arrival = 0
    now = 0.0
    step_times: list[float] = []
    step_kv: list[int] = []
    step_hits: list[int] = []

    def free_blocks() -> int:
        return uncached_free + len(lru)

    def key(req: _Request, block: int):
        """Block `block` of `req` is shared with the requests whose leading ids are equal when its tokens lie in
        the region its ids cover; otherwise it is the request's own."""
        covered = min(len(req.ids) * req.id_size, req.prompt)
        if (block + 1) * bs <= covered:
            return "shared", req.ids[: ((block + 1) * bs - 1) // req.id_size + 1], block
        return "own", req.rid, block

    def take(blocks: int) -> None:
        """Hand out new blocks: uncached free ones first, then evict the oldest cached ones."""
        nonlocal uncached_free
        for _ in range(blocks):
            if uncached_free:
                uncached_free -= 1
            else:
                evicted = lru.pop(0)
                if not isinstance(evicted, _Anonymous):
                    del refs[evicted]

    def fill(req: _Request, before: int, after: int) -> None:
        """Blocks of `req` that fill as it computes tokens before..after get cached under their keys, unless a
        running request holds that key's block; a free block cached under it before stays, anonymously."""
        if not caching:
            return
        for block in range(before // bs, after // bs):
            name = key(req, block)
            if refs.get(name, 0) > 0:
                continue
            if name in refs:
                lru[lru.index(name)] = _Anonymous()
            refs[name] = 1
            req.blocks[block] = name

    def give_back(req: _Request) -> None:
        """Free `req`'s blocks, its last one first: cached ones go to the end of the LRU when nobody holds them."""
        nonlocal uncached_free
        for name in reversed(req.blocks):
            if name is None:
                uncached_free += 1
            else:
                refs[name] -= 1
                if refs[name] == 0:
                    lru.append(name)
        req.blocks = []

    def lookup(req: _Request) -> tuple[int, int]:
        """(leading blocks found in the cache, of which free); at most (context - 1) // bs."""
        if not caching:
            return 0, 0
        hit = free = 0
        while hit < (req.prompt + req.generated - 1) // bs and key(req, hit) in refs:
            free += refs[key(req, hit)] == 0
            hit += 1
        return hit, free

    def time_out(req: _Request) -> None:
        req.generated = req.seen
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
        for req in sorted((r for r in running + waiting if r.abort_at <= now), key=lambda r: r.rid):
            time_out(req)
            if req in running:
                give_back(req)
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
            needed = -(-(req.computed + chunk) // bs) - len(req.blocks)
            while needed > free_blocks():
                victim = running.pop()
                give_back(victim)
                victim.computed = 0
                victim.preemptions += 1
                victim.state = WAITING
                waiting.insert(0, victim)
                preempted = True
                if victim is req:
                    break
            if req.state != RUNNING:
                break
            take(needed)
            req.blocks += [None] * needed
            fill(req, req.computed, req.computed + chunk)
            scheduled.append((req, chunk))
            budget -= chunk
            index += 1
        admitted = hits = 0
        if not preempted:
            while waiting and budget > 0 and len(running) < config.max_num_seqs:
                req = waiting[0]
                context = req.prompt + req.generated
                hit, hit_free = lookup(req)
                chunk = min(context - hit * bs, budget)
                end = context if config.reserve_full_prompt else hit * bs + chunk
                if -(-end // bs) - hit + hit_free > free_blocks():
                    break
                waiting.pop(0)
                for block in range(hit):  # take the cached blocks, out of the LRU when free
                    name = key(req, block)
                    if refs[name] == 0:
                        lru.remove(name)
                    refs[name] += 1
                    req.blocks.append(name)
                new = -(-(hit * bs + chunk) // bs) - hit
                take(new)
                req.blocks += [None] * new
                req.computed = hit * bs
                fill(req, req.computed, req.computed + chunk)
                if caching and req.preemptions == 0:
                    req.cached_tokens = hit * bs
                    hits += hit * bs
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
        step_kv.append(config.num_gpu_blocks - free_blocks())
        step_hits.append(hits)
        end = now + duration
        for req, chunk in scheduled:
            req.computed += chunk
            if req.computed == req.prompt + req.generated:
                if req.generated == 0:
                    req.first_token = end
                req.generated += 1
                req.last_token = end
                if end <= req.deadline:
                    req.seen = req.generated
                if req.generated == req.output_len:
                    req.state, req.end = DONE, end
                    if req.deadline < end:
                        time_out(req)
                    give_back(req)
                    running.remove(req)
        # Clients whose deadline has passed by the next step are gone; they keep what they had received.
        now = end
    return {
        "state": np.array([r.state for r in requests], np.int8),
        "first_scheduled": np.array([r.first_scheduled for r in requests]),
        "first_token": np.array([r.first_token for r in requests]),
        "end": np.array([r.end for r in requests]),
        "generated": np.array([r.generated for r in requests], np.int64),
        "preemptions": np.array([r.preemptions for r in requests], np.int64),
        "cached_tokens": np.array([r.cached_tokens for r in requests], np.int64),
        "step_times": np.array(step_times),
        "kv_blocks_used": np.array(step_kv, np.int64),
        "cache_hits": np.array(step_hits, np.int64),
    }
