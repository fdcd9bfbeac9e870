"""The scheduler of the simulated engine (vLLM v1 semantics; see `burstgpt.sim.engine` for the step): the request
table, the waiting queue, the running set, admission, preemption, timeouts and completion."""

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
    """Scheduler and cache limits. Times in seconds, lengths in tokens."""

    num_gpu_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 4096
    timeout_s: float | None = 30.0
    max_queue: int | None = None

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


class Scheduler:
    """The request table and the scheduling phases of one engine replica (`burstgpt.sim.engine.ServingEngine`
    runs the steps): the queue, the running set in admission order, the decoder summary, admission, preemption,
    timeouts and completion. Block accounting is in `self.kv` (`burstgpt.sim.kv_cache.KVCache`).

    State is kept so that a step costs O(1) plus O(1) per request that changes phase in it (admitted, finishing
    its prefill, finishing, preempted, timed out); a run of pure-decode steps costs O(block_size) plus a few
    float operations per step. Decoding requests are not touched individually: a decode clock `clock` counts
    decode steps, and a decoding request's computed tokens are `base + clock` (its context is one token more).
    The decoders are summarised by their count, the sum of their bases, a histogram of base mod block_size (which
    of them need a new KV block at each step) and a heap of the clock values at which they finish.
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
        self.deadline = array("d")
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
        self.kv = KVCache(config.num_gpu_blocks, config.block_size)
        self.total_preemptions = 0
        self.steps = StepLog(config.block_size)
        self.last_emitted: list[int] = []
        self.last_first_tokens: list[int] = []
        self.last_ended: list[int] = []

    # -- submission ----------------------------------------------------------------------------------------
    def submit(self, arrival_s, prompt_tokens, output_tokens) -> range:
        """Add requests (arrays, or scalars for one); returns their engine ids. Arrivals must be finite, in
        0..MAX_ARRIVAL_S seconds and must not decrease. Output lengths below 1 count as 1; a request stops at
        max_model_len tokens of context, as vLLM's does (so a lone request always fits the KV cache)."""
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
        timeout = self.config.timeout_s
        self.arrival.extend(arrival_s.tolist())
        self.prompt.extend(prompt_tokens.tolist())
        self.output_len.extend(output_tokens.tolist())
        self.deadline.extend((arrival_s + timeout if timeout is not None else np.full(count, np.inf)).tolist())
        nan = array("d", [math.nan]) * count
        zeros = array("q", bytes(8 * count))
        self.state.extend(bytes(count))
        for column in (self.first_scheduled, self.first_token, self.last_token, self.end):
            column.extend(nan)
        for column in (self.generated, self.computed, self.base, self.preemptions, self.admitted_seq):
            column.extend(zeros)
        self.is_decoder.extend(bytes(count))
        self.num_submitted = lo + count
        return range(lo, lo + count)

    # -- queries -------------------------------------------------------------------------------------------
    @property
    def kv_blocks_used(self) -> int:
        return self.kv.used

    def is_idle(self) -> bool:
        """Nothing queued or running (requests submitted for a later time may still come)."""
        return self.num_running == 0 and self.num_waiting == 0

    def all_ended(self) -> bool:
        return self.next_arrival >= self.num_submitted and self.is_idle()

    def generated_tokens(self, rid: int) -> int:
        """Output tokens request `rid` has produced so far."""
        if self.is_decoder[rid]:
            return self.base[rid] + self.clock + 1 - self.prompt[rid]
        return self.generated[rid]

    def columns(self, count: int | None = None) -> dict[str, np.ndarray]:
        """Per-request results as NumPy arrays (the first `count` requests)."""
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
        }

    def _next_deadline(self) -> float:
        """Earliest deadline of a queued or running request: the oldest live one's, as deadlines follow arrivals."""
        oldest, state, limit = self.oldest_live, self.state, self.next_arrival
        while oldest < limit and state[oldest] >= DONE:
            oldest += 1
        self.oldest_live = oldest
        return self.deadline[oldest] if oldest < limit else math.inf

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

    def _expire(self, t: float) -> list[int]:
        """Abort every request whose deadline is <= t (its record ends at the deadline); returns their ids."""
        aborted = []
        rid, limit, state, deadline = self.oldest_live, self.next_arrival, self.state, self.deadline
        while rid < limit and deadline[rid] <= t:
            current = state[rid]
            if current == RUNNING:
                emitted_at_t = bool(self.is_decoder[rid]) and rid not in self.starved
                self._leave_running(rid)
                if emitted_at_t and t > deadline[rid]:
                    self.generated[rid] -= 1  # that token reached the client after the timeout
            elif current == WAITING:
                self.num_waiting -= 1
            else:
                rid += 1
                continue
            self._time_out(rid)
            aborted.append(rid)
            rid += 1
        return aborted

    def _time_out(self, rid: int) -> None:
        deadline = self.deadline[rid]
        if self.first_token[rid] > deadline:
            self.first_token[rid] = math.nan
        self.state[rid] = TIMED_OUT
        self.end[rid] = deadline

    def _leave_running(self, rid: int) -> None:
        """Remove a running request from the running set and free its blocks (state is set by the caller)."""
        if self.is_decoder[rid]:
            self._remove_decoder(rid)
        else:
            self.prefilling.remove(rid)
        bs = self.config.block_size
        self.kv.free += -(-self.computed[rid] // bs)
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
        self._leave_running(rid)
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
            while needed > self.kv.free:
                victim = self._pop_last_running()
                running.pop()
                self._preempt(victim, t)
                preempted += 1
                if victim == rid:
                    self_preempted = True
                    break
            if self_preempted:
                break
            self.kv.free -= needed
            if self.is_decoder[rid]:
                scheduled_decoders.add(rid)
            else:
                prefill_chunks[rid] = chunk
            budget -= chunk
            index += 1
        # Decoders left out this step do not advance with the clock.
        self.starved = self.decoder_ids - scheduled_decoders
        for rid in self.starved:
            self._rebase(rid, -1)  # compensated in advance: the clock moves on at the step's end
        return prefill_chunks, len(scheduled_decoders), preempted

    def _head_admissible(self, budget: int, free_blocks: int) -> bool:
        """Would the queue's first request be admitted with this budget and these free blocks?"""
        if budget <= 0 or self.num_running >= self.config.max_num_seqs or not self.num_waiting:
            return False
        waiting, state = self.waiting, self.state
        while state[waiting[0]] != WAITING:
            waiting.popleft()
        head = waiting[0]
        chunk = min(self.prompt[head] + self.generated[head], budget)
        return -(-chunk // self.config.block_size) <= free_blocks

    def _admit(self, budget: int, t: float, prefill_chunks: dict[int, int]) -> int:
        """Admit queued requests FCFS into `prefill_chunks`; returns how many were admitted."""
        bs = self.config.block_size
        waiting, state = self.waiting, self.state
        max_seqs = self.config.max_num_seqs
        admitted = 0
        while self.num_waiting and budget > 0 and self.num_running < max_seqs:
            rid = waiting[0]
            if state[rid] != WAITING:
                waiting.popleft()
                continue
            chunk = min(self.prompt[rid] + self.generated[rid], budget)
            blocks = -(-chunk // bs)
            if blocks > self.kv.free:
                break
            waiting.popleft()
            self.num_waiting -= 1
            self.kv.free -= blocks
            self.computed[rid] = 0
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
            # The last token came after the server's timeout had already aborted the request.
            self.generated[rid] -= 1
            self._time_out(rid)

    def _finish_decoders(self, t_end: float, ended: list[int]) -> int:
        """Complete the decoders whose output is whole at the current clock; returns how many."""
        heap, clock = self.finish_heap, self.clock
        is_decoder, prompt, output_len, base = self.is_decoder, self.prompt, self.output_len, self.base
        by_residue, bs = self.kv.by_residue, self.config.block_size
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
            self._complete(rid, t_end)
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
        self.state[rid] = CANCELLED
        self.end[rid] = t
        return True
