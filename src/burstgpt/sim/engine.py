"""A discrete-event model of one vLLM-like engine replica (v1 scheduler semantics).

Every step, at time `t`:

1. requests that arrived by `t` join the waiting queue (or are rejected: an empty prompt or one not shorter than
   the context -> `http_4xx`; queue already at `max_queue` -> `rejected`);
2. clients whose deadline (arrival + timeout) is <= `t` give up (`timeout`); the engine aborts their requests,
   freeing their KV blocks, then or `abort_delay_s` later;
3. running requests, in admission order, get their next tokens within the token budget
   `max_num_batched_tokens`: one for a decoding request, the next chunk of an unfinished (or recomputed) prefill
   otherwise; each holds ceil(computed tokens / block_size) KV blocks (shared prefix blocks once); when a block
   is needed and none is free, the most recently admitted running request is preempted (blocks freed into the
   prefix cache, back to the front of the queue, what is no longer cached recomputed later);
4. if nothing was preempted, waiting requests are admitted first-come-first-served while fewer than
   `max_num_seqs` run, budget remains and blocks for their whole context, less their prefix-cache hit, are free
   (head-of-line blocking); a hit's tokens are not computed again;
5. the step lasts `latency.step_time(...)` of its work (`burstgpt.sim.latency.StepWork`); a request whose
   scheduled tokens complete its context emits one token at the step's end; a request with all its output
   tokens (or a context of max_model_len tokens) finishes then.

When a step is pure decoding (no prefill, no admission, no preemption), the following steps are too until an
arrival, a deadline, a finish or a KV block shortage; `run(jump=True)` takes all of them at once in closed form:
block use from a histogram of the requests' positions within their blocks, and the run's duration as a sum of
step times that are linear in the step index (`DecodeLines`). It makes the same decisions as stepping; times
agree to float rounding (the sum is evaluated in closed form rather than added step by step). With
`jump=False` the engine is bit-identical to the simple per-step reference (`burstgpt.sim.reference`).
Prefix caching does not cut decode runs short: a decoder only fills blocks past its prompt, which nobody else
can share (its own blocks get their keys lazily, if it is ever preempted), and the blocks a run takes evict
cached free blocks in LRU order whether taken step by step or all at the run's end (no lookup happens within a
run: it has no admission).

Modules: `scheduler` (request table, queue, admission, preemption, timeouts), `kv_cache` (block accounting and
its closed forms for decode runs), `step_log` (the step table, `STEP_COLUMNS`, logged per segment and expanded
by `ServingEngine.steps.frame()` with the same float operations as the engine) and `latency` (the step-time
model, `LatencyModel`: `step_time` per step, `decode_line_coefficients` for a decode run). This module runs the
steps.
"""

from __future__ import annotations

import gc
import math
from heapq import heappop, heappush

from burstgpt.sim.latency import DecodeLines, LatencyModel
from burstgpt.sim.scheduler import (
    _NO_REQUESTS,
    CANCELLED,
    DONE,
    INVALID,
    PENDING,
    REJECTED,
    RUNNING,
    TIMED_OUT,
    WAITING,
    EngineConfig,
    Scheduler,
)
from burstgpt.sim.step_log import STEP_COLUMNS

__all__ = ["CANCELLED", "DONE", "INVALID", "PENDING", "REJECTED", "RUNNING", "STEP_COLUMNS", "TIMED_OUT", "WAITING",
           "EngineConfig", "ServingEngine"]


def _one_line_total(upper0: float, upper1: float, overhead: float):
    """`DecodeLines.total` of step-time lines of which one stays on top (the same float operations)."""

    def total(steps: int) -> float:
        return steps * upper0 + upper1 * (steps * (steps - 1) / 2) + steps * overhead

    return total


class ServingEngine(Scheduler):
    """One engine replica. Submit requests (arrays, or one at a time), then `run()` offline or `step()` repeatedly.
    `latency` is a `burstgpt.sim.latency.LatencyModel`."""

    latency: LatencyModel

    # -- the step ------------------------------------------------------------------------------------------
    def step(self, *, jump: bool = False, next_arrival_s: float | None = None) -> bool:
        """Run one engine step at `self.now` (with `jump`, possibly a run of pure-decode steps at once).

        Returns False when there is nothing to do. `next_arrival_s` bounds a jump when future arrivals are not
        submitted yet (real-time use); offline it is the next submitted arrival.
        """
        # Called millions of times offline: attributes are read into locals where used more than once.
        t = self.now
        ended = self.last_ended = []
        if self.next_arrival < self.num_submitted and self.arrival[self.next_arrival] <= t:
            self._absorb_arrivals(t)
        oldest = self.oldest_live
        if oldest < self.next_arrival and self.state[oldest] < DONE and not self.abort_delay:
            next_deadline = self.deadline[oldest]  # `_next_deadline()`, its usual case inline
        else:
            next_deadline = self._next_deadline()
        if t >= next_deadline:
            ended = self.last_ended = self._expire(t)
            next_deadline = self._next_deadline()
        if self.num_running == 0 and self.num_waiting == 0:
            self.last_emitted = []
            self.last_first_tokens = []
            return False
        config = self.config
        bs = config.block_size
        budget = config.max_num_batched_tokens
        decoders = self.num_decoders
        kv_cache = self.kv
        free_blocks = kv_cache.free
        crossing = kv_cache.by_residue[-self.clock % bs]  # decoders whose next token needs a new block
        prefilling = self.prefilling
        prompt, generated, computed_col = self.prompt, self.generated, self.computed
        prefill_chunks: dict[int, int] = {}
        preempted = 0
        if not prefilling and decoders <= budget and crossing <= free_blocks:
            if jump and decoders and (
                not self.num_waiting or not self._head_admissible(budget - decoders, free_blocks - crossing)
            ):
                self._decode_run(t, next_arrival_s, next_deadline)
                return True
            kv_cache.free = free_blocks - crossing
            if kv_cache.free < kv_cache.evictable:
                self._evict_taken()
            scheduled_decoders = decoders
            self.starved = _NO_REQUESTS
        else:
            prefill_need = 0
            for rid in prefilling:
                prefill_need += prompt[rid] + generated[rid] - computed_col[rid]
            extra = crossing
            # Requests with prefix ids cache their blocks as they are scheduled: the request-by-request loop.
            fits = decoders + prefill_need <= budget and not (self.prefix and any(rid in self.prefix
                                                                                  for rid in prefilling))
            if fits:
                for rid in prefilling:
                    computed = computed_col[rid]
                    extra += -(-(prompt[rid] + generated[rid]) // bs) - -(-computed // bs)
            if fits and extra <= free_blocks:
                kv_cache.free = free_blocks - extra
                if kv_cache.free < kv_cache.evictable:
                    self._evict_taken()
                for rid in prefilling:
                    prefill_chunks[rid] = prompt[rid] + generated[rid] - computed_col[rid]
                scheduled_decoders = decoders
                self.starved = _NO_REQUESTS
            else:
                prefill_chunks, scheduled_decoders, preempted = self._schedule_in_order(budget, t)
        if prefill_chunks:
            budget -= scheduled_decoders + sum(prefill_chunks.values())
        else:
            budget -= scheduled_decoders
        queries, hits = self.prefix_queries, self.prefix_hits
        admitted = self._admit(budget, t, prefill_chunks) if not preempted and budget > 0 and self.num_waiting else 0
        # Work of the step.
        decode_tokens = scheduled_decoders
        prefill_tokens = 0
        clock = self.clock
        starved = self.starved
        # Decoders: each new token attends to its context (computed + 1 tokens), which is read once.
        context = self.decoder_base_sum + self.num_decoders * (clock + 1)
        if starved:
            base = self.base
            for rid in starved:
                context -= base[rid] + clock + 1
        decode_kv = context
        prefill_pairs = prefill_kv = 0
        for rid, chunk in prefill_chunks.items():
            computed = computed_col[rid]
            if chunk == 1 and generated[rid] > 0 and computed == prompt[rid] + generated[rid] - 1:
                decode_tokens += 1  # a recomputed request's last token: a decode
                decode_kv += computed + 1
            else:
                prefill_tokens += chunk
                prefill_pairs += chunk * computed + chunk * (chunk + 1) // 2
                prefill_kv += computed + chunk
        duration = self.latency.step_time(prefill_tokens, decode_tokens, prefill_pairs, decode_kv, prefill_kv,
                                          admitted)
        t_end = t + duration
        kv_used = config.num_gpu_blocks - kv_cache.free
        # Apply: the decode clock moves on; prefills advance; completed contexts emit a token.
        track_events = self.track_events
        if track_events:
            emitted_ids = [rid for rid in self.decoder_ids if rid not in starved]
        clock += 1
        self.clock = clock
        emitted = scheduled_decoders
        first_tokens = []
        prompt_done = 0
        finished = 0
        becoming_decoders = []
        # (id, computed tokens) of the requests finishing, when their blocks matter to the prefix cache.
        released = [] if self.caching and (self.kv.lru or self.prefix or self.total_preemptions) else None
        if prefill_chunks:
            first_token, last_token = self.first_token, self.last_token
            for rid, chunk in prefill_chunks.items():
                computed = computed_col[rid] + chunk
                computed_col[rid] = computed
                if computed == prompt[rid] + generated[rid]:
                    emitted += 1
                    if generated[rid] == 0:
                        first_token[rid] = t_end
                        first_tokens.append(rid)
                        prompt_done += prompt[rid]
                    generated[rid] += 1
                    last_token[rid] = t_end
                    becoming_decoders.append(rid)
            output_len = self.output_len
            for rid in becoming_decoders:
                prefilling.remove(rid)
                if generated[rid] >= output_len[rid]:
                    self.num_running -= 1
                    kv_cache.free += -(-computed_col[rid] // bs)
                    if released is not None:
                        released.append((rid, computed_col[rid]))
                    self._complete(rid, t_end)
                    ended.append(rid)
                    finished += 1
                else:  # `_add_decoder`, inline (once per request)
                    rid_base = computed_col[rid] - clock
                    self.base[rid] = rid_base
                    self.is_decoder[rid] = 1
                    self.decoder_ids.add(rid)
                    self.num_decoders += 1
                    self.decoder_base_sum += rid_base
                    kv_cache.by_residue[rid_base % bs] += 1
                    heappush(self.finish_heap, (prompt[rid] + output_len[rid] - rid_base - 1, rid))
        heap = self.finish_heap
        if heap and heap[0][0] <= clock:
            finished += self._finish_decoders(t_end, ended, released)
        if released:
            self._release_finished(released)
        if track_events:
            self.last_emitted = emitted_ids + becoming_decoders
            self.last_first_tokens = first_tokens
        if self.record_steps:
            self.steps.add_step(t, duration, kv_used, self.num_running + finished, self.num_waiting, prefill_tokens,
                                decode_tokens, preempted, emitted, prompt_done, finished, self.prefix_queries - queries,
                                self.prefix_hits - hits)
        self.now = t_end
        return True

    def _decode_run(self, t: float, next_arrival_s: float | None, next_deadline: float) -> None:
        """Take k >= 1 pure-decode steps at once: up to the first finish, block shortage, arrival or deadline."""
        # The hot path of an offline run: attributes used in the loop are read into locals once.
        config = self.config
        bs, num_gpu_blocks = config.block_size, config.num_gpu_blocks
        heap = self.finish_heap
        kv_cache = self.kv
        by_residue = kv_cache.by_residue
        is_decoder, prompt, output_len, base = self.is_decoder, self.prompt, self.output_len, self.base
        state = self.state
        line_coefficients = self.latency.decode_line_coefficients
        first_reaching = self._first_reaching
        log = self.steps if self.record_steps else None
        track_events = self.track_events
        inf = math.inf
        if next_arrival_s is None:
            next_arrival_s = self.arrival[self.next_arrival] if self.next_arrival < self.num_submitted else inf
        while True:
            n = self.num_decoders
            while True:  # drop stale entries so the top is the next finish
                at, rid = heap[0]
                if is_decoder[rid] and prompt[rid] + output_len[rid] - base[rid] - 1 == at:
                    break
                heappop(heap)
            clock = self.clock
            free_blocks = kv_cache.free
            # Decoders needing a new block at relative step j (0-based) are those with base = -(clock + j) mod bs.
            first = -clock % bs
            k_max = at - clock
            if (free_blocks // n) * bs < k_max:  # the free blocks may run out before the next finish
                k_max = kv_cache.steps_until_shortage(n, first, k_max)
            limit = next_arrival_s if next_arrival_s < next_deadline else next_deadline
            lines = line_coefficients(n, self.decoder_base_sum + n * (clock + 1))  # `DecodeLines` fields
            a0, a1, b0, b1, overhead = lines
            upper0, upper1, lower1 = (a0, a1, b1) if a0 >= b0 else (b0, b1, a1)
            # `total(j)`: seconds of the run's first j steps. When one line stays on top (the usual case) it is
            # written out inline below, `j * upper0 + upper1 * (j * (j - 1) / 2) + j * overhead` (the same float
            # operations as `DecodeLines.total`), and made a function only for the rare bisection.
            total = DecodeLines(*lines).total if lower1 > upper1 else None  # None: one line stays on top
            # Step j + 1 (j >= 1) runs only if it starts before `limit` (the next arrival or deadline): k is the
            # first j >= 1 whose end t + total(j) reaches `limit`, else k_max.
            k = k_max
            end = None  # t + total(k) when already known
            if limit < inf:
                # Step durations never shrink within a run: k <= ceil(span / first duration), usually equal. (The
                # first step lasts upper0 + overhead; only this first guess uses it, the checks below use `total`.)
                k = math.ceil((limit - t) / (upper0 + overhead))
                if k < 1:
                    k = 1
                if k > k_max:
                    k = k_max
                end = t + (total(k) if total else k * upper0 + upper1 * (k * (k - 1) / 2) + k * overhead)
                if end < limit:
                    if k < k_max:
                        k = first_reaching(total or _one_line_total(upper0, upper1, overhead), t, limit, k + 1, k_max)
                        end = None
                elif k > 1:
                    j = k - 1
                    if t + (total(j) if total else j * upper0 + upper1 * (j * (j - 1) / 2) + j * overhead) >= limit:
                        k = first_reaching(total or _one_line_total(upper0, upper1, overhead), t, limit, 1, j)
                        end = None
            now = end if end is not None else t + (
                total(k) if total else k * upper0 + upper1 * (k * (k - 1) / 2) + k * overhead)
            clock += k
            self.clock = clock
            residues_before = tuple(by_residue) if log is not None else None
            # The blocks the run takes: k // bs whole cycles of every decoder, then the decoders at residues first,
            # first - 1, ..., first - k % bs + 1 (mod bs).
            low = first - k % bs + 1
            kv_cache.free = free_blocks - (k // bs) * n - (
                sum(by_residue[low:first + 1]) if low >= 0 else sum(by_residue[:first + 1]) + sum(by_residue[low:]))
            if kv_cache.free < kv_cache.evictable:  # the run's new blocks evicted cached free ones
                self._evict_taken()
            self.starved = _NO_REQUESTS
            ended = self.last_ended
            if at <= clock:
                released = [] if self.caching and (kv_cache.lru or self.prefix or self.total_preemptions) else None
                finished = self._finish_decoders(now, ended, released)
                if released:
                    self._release_finished(released)
            else:
                finished = 0
            if log is not None:
                log.add_run(t, k, lines, num_gpu_blocks - free_blocks, residues_before, first, n, self.num_waiting,
                            finished)
            self.now = now
            if track_events:
                self.last_emitted = list(self.decoder_ids) + ended
                self.last_first_tokens = []
                return
            # Another run may follow at once when nothing else would happen at `now`: no arrival or deadline
            # reached, nobody queued, and the next step's new blocks fit (exactly what `step` would check).
            if not self.num_decoders or self.num_waiting or now >= limit:
                return
            oldest = self.oldest_live
            if oldest < self.next_arrival and state[oldest] < DONE and not self.abort_delay:
                next_deadline = self.deadline[oldest]  # `_next_deadline()`, its usual case inline
            else:
                next_deadline = self._next_deadline()
            if now >= next_deadline or by_residue[-clock % bs] > kv_cache.free:
                return
            t = now
            self.last_ended = []

    @staticmethod
    def _first_reaching(total, t: float, limit: float, low: int, high: int) -> int:
        """The smallest j in [low, high] with t + total(j) >= limit, or high when none is."""
        while low < high:
            middle = (low + high) // 2
            if t + total(middle) >= limit:
                high = middle
            else:
                low = middle + 1
        return low

    def run(self, *, jump: bool = True, progress=None, when_fresh=None) -> bool:
        """Run until every submitted request has ended. `progress(requests_absorbed)` is called now and then.

        `when_fresh(next_request)` is called whenever the engine is idle, carrying nothing over to the requests
        not absorbed yet (`carries_nothing_over`: from there a new engine given those requests alone runs them
        exactly as this one would), with the index of the next one; if it returns True the run stops there and
        `run` returns True (a later `run()` carries on). `burstgpt.sim.parallel` runs parts of a workload in
        parallel that way."""
        # The engine makes no reference cycles, but its loop allocates millions of small tuples, which would
        # trigger the cyclic garbage collector over and over (about 6% of the run): pause it meanwhile.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._run(jump, progress, when_fresh)
        finally:
            if collecting:
                gc.enable()

    def _run(self, jump: bool, progress, when_fresh) -> bool:
        step, arrival = self.step, self.arrival
        calls = 0
        stopped = False
        while True:
            if not step(jump=jump):
                if self.next_arrival >= self.num_submitted:
                    break
                if when_fresh is not None and self.carries_nothing_over() and when_fresh(self.next_arrival):
                    stopped = True
                    break
                self.now = max(self.now, arrival[self.next_arrival])
            calls += 1
            if progress is not None and calls % 16384 == 0:
                progress(self.next_arrival)
        if progress is not None:
            progress(self.next_arrival)
        return stopped
