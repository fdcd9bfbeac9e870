"""The scheduler of the simulated engine (vLLM v1 semantics; see `burstgpt.sim.engine` for the step): the request
table, the waiting queue, the running set, admission (with prefix-cache hits), preemption, client timeouts and
aborts, and completion.

Prefix caching (vllm/v1/core/kv_cache_manager.py, block_pool.py): a full block is cached under a key naming its
tokens. A request with workload prefix block ids (`prefix_ids`, each standing for `prefix_block_size` tokens)
shares the leading tokens its ids cover with every request whose leading ids are equal: engine block j (tokens
[jB, (j+1)B)) lying inside that region has key (chain id of the ids up to the one holding token (j+1)B - 1, j),
chain ids being interned per (parent chain id, id). Every other block is unique to its request, key (~rid, j);
such blocks only matter to the request itself after a preemption, so they are given keys lazily, when it is
preempted (a finished request's unique blocks go to the LRU as anonymous counts).
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass
from heapq import heappop, heappush

import numpy as np

from burstgpt.errors import BurstGPTError
from burstgpt.sim.kv_cache import KVCache
from burstgpt.sim.step_log import StepLog
from burstgpt.workload.schema import MAX_ARRIVAL_S

# Request states.
PENDING, WAITING, RUNNING, DONE, TIMED_OUT, REJECTED, INVALID, CANCELLED = range(8)

_NO_REQUESTS: frozenset[int] = frozenset()  # shared empty `starved` set (never mutated)


@dataclass(frozen=True)
class EngineConfig:
    """Scheduler and cache limits. Times in seconds, lengths in tokens.

    `timeout_s`: the client's timeout (it gives up at arrival + timeout_s; its record ends then), `abort_delay_s`:
    how long after that the engine notices and aborts the request (frees its KV). `enable_prefix_caching`: vLLM's
    automatic prefix caching. `reserve_full_prompt`: admit a queued request only when blocks for its whole
    context (not just its first chunk) are free, vLLM's `scheduler_reserve_full_isl` (default on)."""

    num_gpu_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 4096
    timeout_s: float | None = 30.0
    max_queue: int | None = None
    enable_prefix_caching: bool = True
    abort_delay_s: float = 0.0
    reserve_full_prompt: bool = True

    def check(self) -> None:
        if self.num_gpu_blocks <= 0 or self.block_size <= 0:
            raise BurstGPTError("num_gpu_blocks and block_size must be positive")
        if self.max_num_seqs <= 0 or self.max_num_batched_tokens <= 0 or self.max_model_len <= 1:
            raise BurstGPTError("max_num_seqs, max_num_batched_tokens and max_model_len must be positive")
        if self.num_gpu_blocks * self.block_size < self.max_model_len:
            raise BurstGPTError(
                f"the KV cache ({self.num_gpu_blocks} blocks x {self.block_size} tokens) cannot hold one request "
                f"of max_model_len {self.max_model_len} tokens: lower --max-model-len or raise --num-gpu-blocks"
            )
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise BurstGPTError("timeout must be positive")
        if self.max_queue is not None and self.max_queue < 0:
            raise BurstGPTError("max_queue must be non-negative")
        if not (self.abort_delay_s >= 0 and math.isfinite(self.abort_delay_s)):
            raise BurstGPTError("the abort delay must be a non-negative number of seconds")


class Scheduler:
    """The request table and the scheduling phases of one engine replica (`burstgpt.sim.engine.ServingEngine`
    runs the steps): the queue, the running set in admission order, the decoder summary, admission, preemption,
    timeouts and completion. Block accounting and the prefix cache are in `self.kv`
    (`burstgpt.sim.kv_cache.KVCache`).

    State is kept so that a step costs O(1) plus O(1) per request that changes phase in it (admitted, finishing
    its prefill, finishing, preempted, timed out); a run of pure-decode steps costs O(block_size) plus a few
    float operations per step. Decoding requests are not touched individually: a decode clock `clock` counts
    decode steps, and a decoding request's computed tokens are `base + clock` (its context is one token more).
    The decoders are summarised by their count, the sum of their bases, a histogram of base mod block_size (which
    of them need a new KV block at each step) and a heap of the clock values at which they finish.
    Prefix caching costs a request without prefix ids nothing beyond O(1) at its end, unless it is preempted
    (then O(its blocks) at the preemption and at its resumption); a request with ids pays O(its shared blocks).
    Requests must be submitted in non-decreasing arrival order.
    """

    def __init__(self, config: EngineConfig, latency, *, record_steps: bool = True,
                 track_events: bool = False) -> None:
        config.check()
        self.config = config
        self.latency = latency
        self.record_steps = record_steps
        self.track_events = track_events  # keep `last_emitted` / `last_first_tokens` (for the real-time server)
        self.now = 0.0
        # Per-request columns (index = engine id = submission order).
        self.arrival = array("d")
        self.prompt = array("q")
        self.output_len = array("q")
        self.deadline = array("d")  # when the client gives up (arrival + timeout)
        self.abort_delay = config.abort_delay_s
        # When the engine aborts a request whose client gave up: the deadline itself without an abort delay.
        self.abort_at = array("d") if self.abort_delay else self.deadline
        self.gone = bytearray()  # the client gave up (only with an abort delay: the engine still runs it)
        self.client_generated = array("q")  # output tokens the client had when it gave up (abort delay only)
        self.oldest_present = 0  # with an abort delay: no request before this one has a live client
        self.state = array("b")
        self.first_scheduled = array("d")
        self.first_token = array("d")
        self.last_token = array("d")  # time of the latest token (kept for non-decoding requests)
        self.end = array("d")
        self.generated = array("q")  # output tokens so far (for decoders: base + clock + 1 - prompt)
        self.computed = array("q")  # tokens whose KV is cached (for decoders: base + clock)
        self.base = array("q")
        self.preemptions = array("q")
        self.admitted_seq = array("q")  # admission stamp, to spot stale entries of `order`
        self.cached_tokens = array("q")  # prompt tokens found in the prefix cache at the first admission
        self.is_decoder = bytearray()
        self.num_submitted = 0
        self.next_arrival = 0  # first submitted request not yet absorbed
        self.oldest_live = 0  # no request before this one is queued or running
        # Queue: a deque with lazy deletion (entries whose state is no longer WAITING are skipped).
        self.waiting: deque[int] = deque()
        self.num_waiting = 0
        # Running: admission order (lazy deletion), prefilling requests, decoder summary.
        self.order: list[tuple[int, int]] = []
        self.admissions = 0
        self.num_running = 0
        self.prefilling: list[int] = []
        self.clock = 0
        self.num_decoders = 0
        self.decoder_base_sum = 0
        self.finish_heap: list[tuple[int, int]] = []  # (clock at which it finishes, id); lazy deletion
        self.decoder_ids: set[int] = set()
        self.starved: set[int] | frozenset[int] = _NO_REQUESTS  # decoders left without budget in the last step
        self.caching = config.enable_prefix_caching
        self.kv = KVCache(config.num_gpu_blocks, config.block_size, self.caching)
        # Prefix caching: per request with prefix ids, (chain id per id, tokens per id, shareable blocks); the
        # flags of which of its shareable blocks a running one holds cached; chain ids by (parent, id).
        self.prefix: dict[int, tuple[list[int], int, int]] = {}
        self.registered: dict[int, bytearray] = {}
        self._chain_ids: dict[tuple[int, int], int] = {}
        self._hit_memo: tuple[int, int, int, int] = (-1, -1, 0, 0)  # (id, cache version, hit, free): last lookup
        # vLLM's vllm:prefix_cache_queries / _hits: prompt tokens looked up and found, first admissions only.
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.resumed_hits = 0  # context tokens preempted requests found in the cache when resumed
        self.total_preemptions = 0
        self.steps = StepLog(config.block_size)
        self.last_emitted: list[int] = []
        self.last_first_tokens: list[int] = []
        self.last_ended: list[int] = []

    # -- submission ----------------------------------------------------------------------------------------
    def submit(self, arrival_s, prompt_tokens, output_tokens, prefix_ids=None, prefix_block_size=None) -> range:
        """Add requests (arrays, or scalars for one); returns their engine ids. Arrivals must be finite, in
        0..MAX_ARRIVAL_S seconds and must not decrease. Output lengths below 1 count as 1; a request stops at
        max_model_len tokens of context, as vLLM's does (so a lone request always fits the KV cache).
        `prefix_ids`: per request a sequence of prefix block ids or None (the workload's `prefix_block_ids`;
        for one request, a list of ids), each id standing for `prefix_block_size` tokens (a scalar, or one per
        request)."""
        arrival_s = np.atleast_1d(np.asarray(arrival_s, np.float64))
        prompt_tokens = np.atleast_1d(np.asarray(prompt_tokens, np.int64))
        room = np.maximum(self.config.max_model_len - prompt_tokens, 1)
        output_tokens = np.clip(np.atleast_1d(np.asarray(output_tokens, np.int64)), 1, room)
        count = len(arrival_s)
        lo = self.num_submitted
        if count == 0:
            return range(lo, lo)
        if not (np.all(np.isfinite(arrival_s)) and arrival_s.min() >= 0 and arrival_s.max() <= MAX_ARRIVAL_S):
            # A NaN arrival would never be reached, a huge one would absorb every step's duration (t + d == t).
            raise BurstGPTError(f"arrival times must be finite numbers of seconds in 0..{MAX_ARRIVAL_S:.0e}")
        if np.any(np.diff(arrival_s) < 0) or (lo and arrival_s[0] < self.arrival[lo - 1]):
            raise BurstGPTError("requests must be submitted in arrival order")
        if prompt_tokens.min() < 0:
            raise BurstGPTError("prompt lengths must not be negative")
        if prefix_ids is not None:
            if count == 1 and (len(prefix_ids) == 0 or not hasattr(prefix_ids[0], "__len__")):
                prefix_ids = [prefix_ids]  # one request's ids
            if len(prefix_ids) != count:
                raise BurstGPTError("prefix_ids must have one entry per request")
            self._add_prefixes(lo, prefix_ids, prefix_block_size, prompt_tokens.tolist())
        timeout = self.config.timeout_s
        # The arrays' bytes straight into the columns (native float64 and int64, as array "d" and "q" hold them).
        self.arrival.frombytes(arrival_s.tobytes())
        self.prompt.frombytes(prompt_tokens.tobytes())
        self.output_len.frombytes(output_tokens.tobytes())
        deadlines = arrival_s + timeout if timeout is not None else np.full(count, np.inf)
        self.deadline.frombytes(deadlines.tobytes())
        if self.abort_at is not self.deadline:
            self.abort_at.frombytes((deadlines + self.abort_delay).tobytes())
        nan = array("d", [math.nan]) * count
        zeros = array("q", bytes(8 * count))
        self.state.extend(bytes(count))
        self.gone.extend(bytes(count))
        for column in (self.first_scheduled, self.first_token, self.last_token, self.end):
            column.extend(nan)
        for column in (self.generated, self.computed, self.base, self.preemptions, self.admitted_seq,
                       self.cached_tokens, self.client_generated):
            column.extend(zeros)
        self.is_decoder.extend(bytes(count))
        self.num_submitted = lo + count
        return range(lo, lo + count)

    def _add_prefixes(self, lo: int, prefix_ids, prefix_block_size, prompts: list[int]) -> None:
        """Intern the requests' prefix id chains (a Python loop over the requests that have ids only)."""
        bs, chain_ids = self.config.block_size, self._chain_ids
        sizes = np.broadcast_to(np.asarray(prefix_block_size if prefix_block_size is not None else 0, np.int64),
                                (len(prompts),)).tolist()
        for offset, ids in enumerate(prefix_ids):
            if ids is None or len(ids) == 0:
                continue
            size = sizes[offset]
            if size < 1:
                raise BurstGPTError("prefix block ids need a positive prefix_block_size")
            shareable = min(len(ids) * size, prompts[offset]) // bs
            if not shareable:
                continue
            chains, parent = [], -1
            for block_id in ids[: -(-(shareable * bs) // size)]:
                parent = chain_ids.setdefault((parent, int(block_id)), len(chain_ids))
                chains.append(parent)
            self.prefix[lo + offset] = (chains, size, shareable)

    # -- queries -------------------------------------------------------------------------------------------
    @property
    def interned_prefix_blocks(self) -> int:
        """Distinct prefix blocks (id chains) seen so far: the memory the prefix keys hold (~100 bytes each)."""
        return len(self._chain_ids)

    @property
    def kv_blocks_used(self) -> int:
        return self.kv.used

    def is_idle(self) -> bool:
        """Nothing queued or running (requests submitted for a later time may still come)."""
        return self.num_running == 0 and self.num_waiting == 0

    def all_ended(self) -> bool:
        return self.next_arrival >= self.num_submitted and self.is_idle()

    def carries_nothing_over(self) -> bool:
        """Idle, and nothing in the state a request absorbed from now on could notice: nothing in the prefix
        cache (no cached block, no request with prefix ids still to come) and no preemption so far (after one,
        requests' own blocks get keys and lookups start). A new engine then runs the requests not yet absorbed
        exactly as this one would: its decode clock, admission stamps and counters start elsewhere, but only
        their differences matter, and its time jumps to the next arrival as this one's does."""
        kv = self.kv
        return (self.num_running == 0 and self.num_waiting == 0 and not self.prefix and not self.total_preemptions
                and not kv.lru and not kv.refs and not kv.evictable)

    def generated_tokens(self, rid: int) -> int:
        """Output tokens request `rid` has produced so far."""
        if self.is_decoder[rid]:
            return self.base[rid] + self.clock + 1 - self.prompt[rid]
        return self.generated[rid]

    def columns(self, count: int | None = None) -> dict[str, np.ndarray]:
        """Per-request results as NumPy arrays (the first `count` requests). `cached_tokens`: prompt tokens found
        in the prefix cache at the first admission (0 when never admitted)."""
        count = self.num_submitted if count is None else count
        generated = np.frombuffer(self.generated, np.int64)[:count].copy()
        for rid in self.decoder_ids:
            if rid < count:
                generated[rid] = self.generated_tokens(rid)
        return {
            "state": np.frombuffer(self.state, np.int8)[:count].copy(),
            "first_scheduled": np.frombuffer(self.first_scheduled, np.float64)[:count].copy(),
            "first_token": np.frombuffer(self.first_token, np.float64)[:count].copy(),
            "end": np.frombuffer(self.end, np.float64)[:count].copy(),
            "generated": generated,
            "preemptions": np.frombuffer(self.preemptions, np.int64)[:count].copy(),
            "cached_tokens": np.frombuffer(self.cached_tokens, np.int64)[:count].copy(),
        }

    def _next_deadline(self) -> float:
        """When the next client gives up or the next abort is due, among queued or running requests: the oldest
        live one's, as deadlines follow arrivals."""
        oldest, state, limit = self.oldest_live, self.state, self.next_arrival
        while oldest < limit and state[oldest] >= DONE:
            oldest += 1
        self.oldest_live = oldest
        at = self.abort_at[oldest] if oldest < limit else math.inf
        if self.abort_delay:
            present, gone = max(self.oldest_present, oldest), self.gone
            while present < limit and (state[present] >= DONE or gone[present]):
                present += 1
            self.oldest_present = present
            if present < limit and self.deadline[present] < at:
                at = self.deadline[present]
        return at

    # -- decoder bookkeeping -------------------------------------------------------------------------------
    def _add_decoder(self, rid: int, computed: int) -> None:
        base = computed - self.clock
        self.base[rid] = base
        self.is_decoder[rid] = 1
        self.decoder_ids.add(rid)
        self.num_decoders += 1
        self.decoder_base_sum += base
        self.kv.by_residue[base % self.config.block_size] += 1
        heappush(self.finish_heap, (self.prompt[rid] + self.output_len[rid] - base - 1, rid))

    def _remove_decoder(self, rid: int) -> None:
        """Take `rid` out of the decoder summary, writing its computed and generated counts back."""
        base = self.base[rid]
        self.is_decoder[rid] = 0
        self.decoder_ids.discard(rid)
        self.num_decoders -= 1
        self.decoder_base_sum -= base
        self.kv.by_residue[base % self.config.block_size] -= 1
        self.computed[rid] = base + self.clock
        self.generated[rid] = base + self.clock + 1 - self.prompt[rid]

    def _rebase(self, rid: int, delta: int) -> None:
        """Shift a decoder's base (it did not advance with the clock)."""
        self._remove_decoder(rid)
        self._add_decoder(rid, self.computed[rid] + delta)

    # -- prefix cache --------------------------------------------------------------------------------------
    def _block_key(self, rid: int, block: int):
        """The cache key of request `rid`'s block `block` (see the module doc)."""
        prefix = self.prefix.get(rid)
        if prefix is not None and block < prefix[2]:
            return prefix[0][((block + 1) * self.config.block_size - 1) // prefix[1]], block
        return ~rid, block

    def _prefix_hit(self, rid: int) -> tuple[int, int]:
        """(leading blocks of `rid`'s context found in the prefix cache, how many of them are free): vLLM's
        `get_computed_blocks`, at most (context - 1) // block_size blocks (the last token is always computed)."""
        prefix = self.prefix.get(rid)
        if prefix is None and not self.preemptions[rid]:
            return 0, 0  # its blocks are unique and it never left any in the cache
        memo = self._hit_memo  # the queue's head is looked up at every step until it is admitted
        if memo[0] == rid and memo[1] == self.kv.version:
            return memo[2], memo[3]
        hit, free = self._lookup(rid, prefix)
        self._hit_memo = (rid, self.kv.version, hit, free)
        return hit, free

    def _lookup(self, rid: int, prefix) -> tuple[int, int]:
        """`_prefix_hit` without its memo."""
        bs, refs = self.config.block_size, self.kv.refs
        limit = (self.prompt[rid] + self.generated[rid] - 1) // bs
        hit = free = 0
        if prefix is not None:
            chains, size, shareable = prefix
            end = shareable if shareable < limit else limit
            while hit < end:
                count = refs.get((chains[((hit + 1) * bs - 1) // size], hit))
                if count is None:
                    return hit, free
                free += not count
                hit += 1
            if hit < shareable:
                return hit, free
        if self.preemptions[rid]:
            own = ~rid
            while hit < limit:
                count = refs.get((own, hit))
                if count is None:
                    break
                free += not count
                hit += 1
        return hit, free

    def _take_hit(self, rid: int, hit: int, hit_free: int) -> None:
        """Admit `rid` with its first `hit` blocks from the cache (`hit_free` of them were free: they leave the
        LRU)."""
        kv = self.kv
        kv.touch_all([self._block_key(rid, block) for block in range(hit)])
        kv.free -= hit_free
        prefix = self.prefix.get(rid)
        if prefix is not None:
            shareable = prefix[2]
            flags = self.registered[rid] = bytearray(shareable)
            flags[:min(hit, shareable)] = b"\x01" * min(hit, shareable)

    def _register_chunk(self, rid: int, before: int, after: int) -> None:
        """`rid` (with prefix ids) computes tokens before..after: its shareable blocks filled by them are cached
        (vLLM caches them when it allocates the chunk, so a request admitted later in the same step finds them)."""
        prefix = self.prefix[rid]
        bs = self.config.block_size
        high = min(after // bs, prefix[2])
        low = before // bs
        if low >= high:
            return
        flags = self.registered.get(rid)
        if flags is None:
            flags = self.registered[rid] = bytearray(prefix[2])
        chains, size = prefix[0], prefix[1]
        register = self.kv.register
        for block in range(low, high):
            flags[block] = register((chains[((block + 1) * bs - 1) // size], block))

    def _release(self, rid: int, computed: int, preempted: bool) -> None:
        """The prefix-cache side of `rid` giving back its blocks (the caller added all of them to `kv.free`; the
        ones other running requests share are taken back off here), in vLLM's order (its last block first): its
        unique full blocks (kept under their keys when it is preempted, for its own resumption; anonymous
        otherwise), then its shareable cached blocks, deepest first. A partial block is not cached."""
        kv = self.kv
        full = computed // self.config.block_size
        prefix = self.prefix.get(rid)
        shareable = prefix[2] if prefix is not None else 0
        shared_full = full if full < shareable else shareable
        if preempted:
            own = ~rid
            kv.cache_freed_all([(own, block) for block in range(full - 1, shared_full - 1, -1)])
        else:
            if self.preemptions[rid]:
                # Keys of its unique blocks from an earlier preemption: nobody will look them up again.
                own, refs = ~rid, kv.refs
                for block in range(shared_full, full):
                    if refs.get((own, block)) == 0:
                        kv.anonymize((own, block))
                    refs.pop((own, block), None)
                kv.version += 1
            kv.add_dead(full - shared_full)
        if prefix is not None:
            flags = self.registered.pop(rid, None)
            if flags is not None:
                chains, size = prefix[0], prefix[1]
                bs = self.config.block_size
                still_held = 0  # blocks other running requests share: not freed (the caller counted them)
                for block in range(shared_full - 1, -1, -1):
                    if flags[block] and not kv.release((chains[((block + 1) * bs - 1) // size], block)):
                        still_held += 1
                kv.free -= still_held
            if not preempted:
                del self.prefix[rid]

    def _release_finished(self, finished: list[tuple[int, int]]) -> None:
        """Cache side of the requests (id, computed tokens) that finished in a step, in running (admission)
        order, as vLLM frees them."""
        if not self.prefix and not self.total_preemptions:
            if self.kv.lru:
                bs = self.config.block_size
                self.kv.add_dead(sum(computed // bs for _, computed in finished))
            return
        stamp = self.admitted_seq
        for rid, computed in sorted(finished, key=lambda item: stamp[item[0]]):
            self._release(rid, computed, False)

    def _evict_taken(self) -> None:
        """New blocks were taken beyond the uncached free ones: they came out of the LRU."""
        kv = self.kv
        kv.evict(kv.evictable - kv.free)

    # -- phases of a step ----------------------------------------------------------------------------------
    def _absorb_arrivals(self, t: float) -> None:
        rid, limit = self.next_arrival, self.num_submitted
        arrival, state, prompt = self.arrival, self.state, self.prompt
        max_len, max_queue = self.config.max_model_len, self.config.max_queue
        while rid < limit and arrival[rid] <= t:
            if state[rid] == PENDING:
                if not 0 < prompt[rid] < max_len:
                    state[rid] = INVALID
                    self.end[rid] = arrival[rid]
                elif max_queue is not None and self.num_waiting >= max_queue:
                    state[rid] = REJECTED
                    self.end[rid] = arrival[rid]
                else:
                    state[rid] = WAITING
                    self.waiting.append(rid)
                    self.num_waiting += 1
            rid += 1
        self.next_arrival = rid

    def _clients_leave(self, t: float) -> None:
        """With an abort delay: the clients whose deadline is <= t give up; their records keep the tokens they
        had received (a token emitted at t after the deadline came too late). The engine runs the request on
        until it aborts it (`abort_at`) or it finishes."""
        rid, limit = max(self.oldest_present, self.oldest_live), self.next_arrival
        state, deadline, gone = self.state, self.deadline, self.gone
        while rid < limit and deadline[rid] <= t:
            if state[rid] < DONE and not gone[rid]:
                gone[rid] = 1
                tokens = self.generated_tokens(rid)
                if (t > deadline[rid] and state[rid] == RUNNING and self.is_decoder[rid]
                        and rid not in self.starved):
                    tokens -= 1  # emitted at t, after the deadline
                self.client_generated[rid] = tokens
            rid += 1

    def _expire(self, t: float) -> list[int]:
        """Abort every request whose abort time is <= t (its record ends at its client's deadline); returns their
        ids."""
        if self.abort_delay:
            self._clients_leave(t)
        aborted = []
        rid, limit, state, abort_at = self.oldest_live, self.next_arrival, self.state, self.abort_at
        while rid < limit and abort_at[rid] <= t:
            current = state[rid]
            if current == RUNNING:
                emitted_at_t = bool(self.is_decoder[rid]) and rid not in self.starved
                self._leave_running(rid)
                if emitted_at_t and t > self.deadline[rid]:
                    self.generated[rid] -= 1  # that token reached the client after the timeout
            elif current == WAITING:
                self.num_waiting -= 1
                self.prefix.pop(rid, None)
            else:
                rid += 1
                continue
            self._time_out(rid)
            aborted.append(rid)
            rid += 1
        return aborted

    def _time_out(self, rid: int) -> None:
        deadline = self.deadline[rid]
        if self.gone[rid]:
            self.generated[rid] = self.client_generated[rid]
        if self.first_token[rid] > deadline:
            self.first_token[rid] = math.nan
        self.state[rid] = TIMED_OUT
        self.end[rid] = deadline

    def _leave_running(self, rid: int, preempted: bool = False) -> None:
        """Remove a running request from the running set and free its blocks (state is set by the caller)."""
        if self.is_decoder[rid]:
            self._remove_decoder(rid)
        else:
            self.prefilling.remove(rid)
        computed = self.computed[rid]
        self.kv.free += -(-computed // self.config.block_size)
        if self.caching:
            self._release(rid, computed, preempted)
        self.num_running -= 1
        self.state[rid] = DONE  # placeholder: no longer RUNNING (callers overwrite)

    def _pop_last_running(self) -> int:
        """The most recently admitted running request (cleaning stale entries of `order`)."""
        order, state, stamp = self.order, self.state, self.admitted_seq
        while True:
            rid, seq = order.pop()
            if state[rid] == RUNNING and stamp[rid] == seq:
                return rid

    def _preempt(self, rid: int, t: float) -> None:
        emitted_at_t = bool(self.is_decoder[rid]) and rid not in self.starved
        self._leave_running(rid, preempted=True)
        if emitted_at_t:
            self.last_token[rid] = t
        self.computed[rid] = 0
        self.state[rid] = WAITING
        self.preemptions[rid] += 1
        self.total_preemptions += 1
        self.waiting.appendleft(rid)
        self.num_waiting += 1

    def _running_in_order(self) -> list[int]:
        """Running requests in admission order (compacting `order`)."""
        state, stamp = self.state, self.admitted_seq
        self.order = [(rid, seq) for rid, seq in self.order if state[rid] == RUNNING and stamp[rid] == seq]
        return [rid for rid, _ in self.order]

    def _need(self, rid: int) -> tuple[int, int]:
        """(computed tokens, tokens still to schedule) of a running request."""
        if self.is_decoder[rid]:
            return self.base[rid] + self.clock, 1
        computed = self.computed[rid]
        return computed, self.prompt[rid] + self.generated[rid] - computed

    def _schedule_in_order(self, budget: int, t: float) -> tuple[dict[int, int], int, int]:
        """vLLM's running loop, request by request in admission order, preempting from the end when blocks run
        out. Returns (chunks of the scheduled prefilling requests, decoders scheduled, preempted)."""
        bs = self.config.block_size
        kv = self.kv
        prefix = self.prefix
        prefill_chunks: dict[int, int] = {}
        scheduled_decoders: set[int] = set()
        preempted = 0
        running = self._running_in_order()
        index = 0
        while index < len(running) and budget > 0:
            rid = running[index]
            computed, need = self._need(rid)
            chunk = min(need, budget)
            needed = -(-(computed + chunk) // bs) - -(-computed // bs)
            self_preempted = False
            while needed > kv.free:
                victim = self._pop_last_running()
                running.pop()
                self._preempt(victim, t)
                preempted += 1
                if victim == rid:
                    self_preempted = True
                    break
            if self_preempted:
                break
            kv.free -= needed
            if kv.free < kv.evictable:
                self._evict_taken()
            if self.is_decoder[rid]:
                scheduled_decoders.add(rid)
            else:
                prefill_chunks[rid] = chunk
                if rid in prefix:
                    self._register_chunk(rid, computed, computed + chunk)
            budget -= chunk
            index += 1
        # Decoders left out this step do not advance with the clock.
        self.starved = self.decoder_ids - scheduled_decoders
        for rid in self.starved:
            self._rebase(rid, -1)  # compensated in advance: the clock moves on at the step's end
        return prefill_chunks, len(scheduled_decoders), preempted

    def _admission_blocks(self, rid: int, budget: int) -> tuple[int, int, int, int]:
        """(free blocks needed to admit `rid`, prefix-cache hit in blocks, of which free, its first chunk) with
        `budget` tokens left: vLLM's `allocate_slots` with `full_sequence_must_fit` (blocks for the whole context
        minus the hit, plus the hit blocks taken out of the LRU) or, without `reserve_full_prompt`, the first
        chunk's blocks."""
        bs = self.config.block_size
        context = self.prompt[rid] + self.generated[rid]
        if self.caching and (self.preemptions[rid] or rid in self.prefix):
            hit, hit_free = self._prefix_hit(rid)
        else:
            hit = hit_free = 0
        chunk = min(context - hit * bs, budget)
        end = context if self.config.reserve_full_prompt else hit * bs + chunk
        return -(-end // bs) - hit + hit_free, hit, hit_free, chunk

    def _head_admissible(self, budget: int, free_blocks: int) -> bool:
        """Would the queue's first request be admitted with this budget and these free blocks?"""
        if budget <= 0 or self.num_running >= self.config.max_num_seqs or not self.num_waiting:
            return False
        waiting, state = self.waiting, self.state
        while state[waiting[0]] != WAITING:
            waiting.popleft()
        head = waiting[0]
        if self.caching and (self.prefix or self.total_preemptions):
            return self._admission_blocks(head, budget)[0] <= free_blocks
        # Nothing any request could find in the cache: `_admission_blocks` without a lookup.
        context = self.prompt[head] + self.generated[head]
        end = context if self.config.reserve_full_prompt or context <= budget else budget
        return -(-end // self.config.block_size) <= free_blocks

    def _admit(self, budget: int, t: float, prefill_chunks: dict[int, int]) -> int:
        """Admit queued requests FCFS into `prefill_chunks`; returns how many were admitted."""
        bs = self.config.block_size
        kv = self.kv
        waiting, state = self.waiting, self.state
        max_seqs = self.config.max_num_seqs
        caching = self.caching
        # Whether any request could find something in the cache (else no lookups: `_admission_blocks` inline).
        lookups = caching and (self.prefix or self.total_preemptions)
        reserve_full = self.config.reserve_full_prompt
        prompt, generated = self.prompt, self.generated
        admitted = 0
        while self.num_waiting and budget > 0 and self.num_running < max_seqs:
            rid = waiting[0]
            if state[rid] != WAITING:
                waiting.popleft()
                continue
            if lookups:
                needed, hit, hit_free, chunk = self._admission_blocks(rid, budget)
            else:
                context = prompt[rid] + generated[rid]
                chunk = context if context < budget else budget
                needed = -(-(context if reserve_full else chunk) // bs)
                hit = 0
            if needed > kv.free:
                break
            waiting.popleft()
            self.num_waiting -= 1
            cached = hit * bs
            if caching:
                if hit:
                    self._take_hit(rid, hit, hit_free)
                if not self.preemptions[rid]:
                    self.prefix_queries += prompt[rid]
                    self.prefix_hits += cached
                    self.cached_tokens[rid] = cached
                else:
                    self.resumed_hits += cached
            kv.free -= -(-(cached + chunk) // bs) - hit
            if kv.free < kv.evictable:
                self._evict_taken()
            self.computed[rid] = cached
            if rid in self.prefix:
                self._register_chunk(rid, cached, cached + chunk)
            state[rid] = RUNNING
            self.admissions += 1
            self.admitted_seq[rid] = self.admissions
            self.order.append((rid, self.admissions))
            self.prefilling.append(rid)
            self.num_running += 1
            if self.first_scheduled[rid] != self.first_scheduled[rid]:  # NaN: first time
                self.first_scheduled[rid] = t
            prefill_chunks[rid] = chunk
            budget -= chunk
            admitted += 1
        return admitted

    def _complete(self, rid: int, t_end: float) -> None:
        """Request `rid` produced its last token at `t_end` (it has left the running set)."""
        self.state[rid] = DONE
        self.end[rid] = t_end
        self.last_token[rid] = t_end
        if self.deadline[rid] < t_end:
            # The client had given up by then (or gave up during this last step).
            if not self.gone[rid]:
                self.generated[rid] -= 1
            self._time_out(rid)

    def _finish_decoders(self, t_end: float, ended: list[int], released: list | None = None) -> int:
        """Complete the decoders whose output is whole at the current clock; returns how many. With prefix
        caching their (id, computed tokens) are appended to `released` (for `_release_finished`)."""
        heap, clock = self.finish_heap, self.clock
        is_decoder, prompt, output_len, base = self.is_decoder, self.prompt, self.output_len, self.base
        by_residue, bs = self.kv.by_residue, self.config.block_size
        state, end, last_token, deadline = self.state, self.end, self.last_token, self.deadline
        finished = freed_blocks = removed_base = 0
        while heap and heap[0][0] <= clock:
            at, rid = heappop(heap)
            if not is_decoder[rid] or prompt[rid] + output_len[rid] - base[rid] - 1 != at:
                continue  # stale entry
            # `_leave_running` of a decoder, inline (once per request in an offline run); counters updated below.
            rid_base = base[rid]
            is_decoder[rid] = 0
            self.decoder_ids.discard(rid)
            by_residue[rid_base % bs] -= 1
            removed_base += rid_base
            computed = self.computed[rid] = rid_base + clock
            self.generated[rid] = computed + 1 - prompt[rid]
            freed_blocks += -(-computed // bs)
            if released is not None:
                released.append((rid, computed))
            if deadline[rid] < t_end:
                self._complete(rid, t_end)  # the client had given up by then
            else:  # `_complete`, its usual case inline
                state[rid] = DONE
                end[rid] = last_token[rid] = t_end
            ended.append(rid)
            finished += 1
        self.num_decoders -= finished
        self.decoder_base_sum -= removed_base
        self.kv.free += freed_blocks
        self.num_running -= finished
        return finished

    def cancel(self, rid: int, t: float) -> bool:
        """Abort request `rid` at time `t` (the client went away): frees its blocks, drops it from the queue.
        Returns False when it had already ended."""
        state = self.state[rid]
        if state >= DONE:
            return False
        if state == RUNNING:
            self._leave_running(rid)
        elif state == WAITING:
            self.num_waiting -= 1  # its queue entry is skipped lazily
            self.prefix.pop(rid, None)
        self.state[rid] = CANCELLED
        self.end[rid] = t
        return True
