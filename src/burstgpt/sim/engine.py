"""A discrete-event model of one vLLM-like engine replica (v1 scheduler semantics).

Every step, at time `t`:

1. requests that arrived by `t` join the waiting queue (or are rejected: an empty prompt or one not shorter than
   the context -> `http_4xx`; queue already at `max_queue` -> `rejected`);
2. requests whose deadline (arrival + timeout) is <= `t` are aborted (`timeout`), their KV blocks freed;
3. running requests, in admission order, get their next tokens within the token budget
   `max_num_batched_tokens`: one for a decoding request, the next chunk of an unfinished (or recomputed) prefill
   otherwise; each holds ceil(computed tokens / block_size) KV blocks; when a block is needed and none is free,
   the most recently admitted running request is preempted (blocks freed, back to the front of the queue, its
   prompt and generated tokens recomputed later);
4. if nothing was preempted, waiting requests are admitted first-come-first-served while fewer than
   `max_num_seqs` run, budget remains and their first chunk's blocks fit (head-of-line blocking);
5. the step lasts `latency.step_time(...)`; a request whose scheduled tokens complete its context emits one
   token at the step's end; a request with all its output tokens finishes then.

When a step is pure decoding (no prefill, no admission, no preemption), the following steps are too until an
arrival, a deadline, a finish or a KV block shortage; `run(jump=True)` takes all of them at once in closed form:
block use from a histogram of the requests' positions within their blocks, and the run's duration as a sum of
step times that are linear in the step index (`DecodeLines`). It makes the same decisions as stepping; times
agree to float rounding (the sum is evaluated in closed form rather than added step by step). With
`jump=False` the engine is bit-identical to the simple per-step reference (`burstgpt.sim.reference`).
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass
from bisect import bisect_right
from heapq import heappop, heappush
from itertools import accumulate

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.sim.hardware import DecodeLines, decode_run_tables

# Request states.
PENDING, WAITING, RUNNING, DONE, TIMED_OUT, REJECTED, INVALID, CANCELLED = range(8)


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


#: Columns of the step table (one row per engine step).
STEP_COLUMNS: dict[str, pl.DataType] = {
    "time_s": pl.Float64(),  # step start, seconds since the run's start
    "duration_s": pl.Float64(),  # step length, seconds
    "num_running": pl.Int32(),  # requests in the batch (running after scheduling)
    "num_waiting": pl.Int32(),  # requests queued after scheduling
    "prefill_tokens": pl.Int32(),  # prompt or recomputed tokens processed
    "decode_tokens": pl.Int32(),  # decode tokens processed
    "kv_blocks_used": pl.Int32(),  # KV blocks held after the step's allocation
    "preemptions": pl.Int32(),  # requests preempted in this step
    "generated_tokens": pl.Int32(),  # output tokens emitted at the step's end
    "prompt_tokens": pl.Int32(),  # prompt tokens of requests that emitted their first token this step
    "finished": pl.Int32(),  # requests that completed at the step's end
}


_COUNT_COLUMNS = ("num_running", "num_waiting", "prefill_tokens", "decode_tokens", "preemptions",
                  "generated_tokens", "prompt_tokens", "finished")


_FRAME_CHUNK_ROWS = 1 << 22  # rows expanded at a time by `_StepLog.frame`


class _StepLog:
    """The step table, stored per segment: a single step, or a run of pure-decode steps (expanded in `frame`).

    Segments keep their start and length and point into the single-step columns (duration, KV blocks used and
    the counts) or into the run columns (step-time lines `DecodeLines`, blocks used before the run, batch size,
    queue length, requests finished at its last step, and `at_most`: blocks added within r steps, r < bs)."""

    _RUN_FIELDS = 9  # a0, a1, b0, b1, overhead, kv used before, batch, waiting, finished

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.start = array("d")
        self.steps = array("q")
        self.slot = array("q")  # >= 0: run index; < 0: -1 - single-step index
        self.step_duration = array("d")
        self.step_values = array("q")  # kv used, then the counts, per single step
        self.run_values = array("d")
        self.run_at_most = array("q")
        self.size = 0

    def add_step(self, start: float, duration: float, kv_used: int, *counts: int) -> None:
        self.start.append(start)
        self.steps.append(1)
        self.slot.append(-1 - len(self.step_duration))
        self.step_duration.append(duration)
        self.step_values.extend((kv_used, *counts))
        self.size += 1

    def add_run(self, start: float, steps: int, lines: DecodeLines, kv_used_before: int, at_most: list[int],
                batch: int, waiting: int, finished: int) -> None:
        self.start.append(start)
        self.steps.append(steps)
        self.slot.append(len(self.run_values) // self._RUN_FIELDS)
        self.run_values.extend((lines.a0, lines.a1, lines.b0, lines.b1, lines.overhead_s, kv_used_before, batch,
                                waiting, finished))
        self.run_at_most.extend(at_most[: self.block_size])
        self.size += steps

    def frame(self) -> pl.DataFrame:
        def col(values, dtype):
            return np.frombuffer(values, dtype) if len(values) else np.empty(0, dtype)

        steps = col(self.steps, np.int64)
        slot = col(self.slot, np.int64)
        bs = self.block_size
        count_names = ("kv_blocks_used", *_COUNT_COLUMNS)
        # Per segment: step-time lines, KV blocks before, batch size and the counts. A single step is a run of
        # one step whose line is flat at its duration (max(d + 0 j, -inf) + 0 = d exactly).
        segments = len(steps)
        lines = np.zeros((segments, 5))
        lines[:, 2] = -np.inf
        per_segment = np.zeros((segments, len(count_names)), np.int64)
        batch = np.zeros(segments, np.int64)
        at_most_row = np.zeros(segments, np.int64)  # row of the at_most table (row 0: all zeros)
        single = slot < 0
        if single.any():
            lines[single, 0] = col(self.step_duration, np.float64)[-1 - slot[single]]
            per_segment[single] = col(self.step_values, np.int64).reshape(-1, len(count_names))[-1 - slot[single]]
        runs = ~single
        if runs.any():
            values = col(self.run_values, np.float64).reshape(-1, self._RUN_FIELDS)[slot[runs]]
            lines[runs] = values[:, :5]
            per_segment[runs, 0] = values[:, 5].astype(np.int64)
            batch[runs] = values[:, 6].astype(np.int64)
            for name in ("num_running", "decode_tokens", "generated_tokens"):
                per_segment[runs, count_names.index(name)] = batch[runs]
            per_segment[runs, count_names.index("num_waiting")] = values[:, 7].astype(np.int64)
            per_segment[runs, count_names.index("finished")] = values[:, 8].astype(np.int64)
            at_most_row[runs] = slot[runs] + 1
        at_most_table = np.concatenate([np.zeros(bs, np.int64), col(self.run_at_most, np.int64)])
        starts = col(self.start, np.float64)
        last_row = np.cumsum(steps) - 1
        columns = {"time_s": np.empty(self.size), "duration_s": np.empty(self.size)}
        columns.update({name: np.empty(self.size, np.int32) for name in count_names})
        # Expand a few million rows at a time so temporaries stay small next to the table itself.
        bounds = np.searchsorted(last_row, np.arange(_FRAME_CHUNK_ROWS, self.size, _FRAME_CHUNK_ROWS), side="left")
        for lo, hi in zip([0, *bounds.tolist()], [*bounds.tolist(), segments], strict=True):
            if lo >= hi:
                continue
            counts = steps[lo:hi]
            row_lo, row_hi = int(last_row[lo] + 1 - counts[0]), int(last_row[hi - 1] + 1)
            first = last_row[lo:hi] + 1 - counts - row_lo
            j = (np.arange(row_hi - row_lo) - np.repeat(first, counts)).astype(np.float64)
            duration, offset = decode_run_tables(*(np.repeat(lines[lo:hi, i], counts) for i in range(5)), j)
            columns["duration_s"][row_lo:row_hi] = duration
            columns["time_s"][row_lo:row_hi] = np.repeat(starts[lo:hi], counts) + offset
            after = j.astype(np.int64) + 1
            kv_extra = (after // bs) * np.repeat(batch[lo:hi], counts) + at_most_table[
                np.repeat(at_most_row[lo:hi] * bs, counts) + after % bs]
            for position, name in enumerate(count_names):
                column = columns[name]
                if name == "finished":
                    column[row_lo:row_hi] = 0
                    column[last_row[lo:hi]] = per_segment[lo:hi, position]
                else:
                    column[row_lo:row_hi] = np.repeat(per_segment[lo:hi, position], counts)
                if name == "kv_blocks_used":
                    column[row_lo:row_hi] += kv_extra.astype(np.int32)
        return pl.DataFrame({name: columns[name] for name in STEP_COLUMNS})


class ServingEngine:
    """One engine replica. Submit requests (arrays, or one at a time), then `run()` offline or `step()` repeatedly.

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
        self.by_residue = [0] * config.block_size
        self.finish_heap: list[tuple[int, int]] = []  # (clock at which it finishes, id); lazy deletion
        self.decoder_ids: set[int] = set()
        self.starved: set[int] = set()  # decoders left without budget in the last step
        self.free_blocks = config.num_gpu_blocks
        self.total_preemptions = 0
        self.steps = _StepLog(config.block_size)
        self.last_emitted: list[int] = []
        self.last_first_tokens: list[int] = []
        self.last_ended: list[int] = []

    # -- submission ----------------------------------------------------------------------------------------
    def submit(self, arrival_s, prompt_tokens, output_tokens) -> range:
        """Add requests (arrays, or scalars for one); returns their engine ids. Arrivals must not decrease.
        Output lengths below 1 count as 1."""
        arrival_s = np.atleast_1d(np.asarray(arrival_s, np.float64))
        prompt_tokens = np.atleast_1d(np.asarray(prompt_tokens, np.int64))
        output_tokens = np.maximum(np.atleast_1d(np.asarray(output_tokens, np.int64)), 1)
        count = len(arrival_s)
        lo = self.num_submitted
        if count == 0:
            return range(lo, lo)
        if np.any(np.diff(arrival_s) < 0) or (lo and arrival_s[0] < self.arrival[lo - 1]):
            raise BurstGPTError("requests must be submitted in arrival order")
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
        return self.config.num_gpu_blocks - self.free_blocks

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
        self.by_residue[base % self.config.block_size] += 1
        heappush(self.finish_heap, (self.prompt[rid] + self.output_len[rid] - base - 1, rid))

    def _remove_decoder(self, rid: int) -> None:
        """Take `rid` out of the decoder summary, writing its computed and generated counts back."""
        base = self.base[rid]
        self.is_decoder[rid] = 0
        self.decoder_ids.discard(rid)
        self.num_decoders -= 1
        self.decoder_base_sum -= base
        self.by_residue[base % self.config.block_size] -= 1
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
        self.free_blocks += -(-self.computed[rid] // bs)
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
            while needed > self.free_blocks:
                victim = self._pop_last_running()
                running.pop()
                self._preempt(victim, t)
                preempted += 1
                if victim == rid:
                    self_preempted = True
                    break
            if self_preempted:
                break
            self.free_blocks -= needed
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
        """Admit queued requests FCFS into `prefill_chunks`; returns the budget left."""
        bs = self.config.block_size
        waiting, state = self.waiting, self.state
        max_seqs = self.config.max_num_seqs
        while self.num_waiting and budget > 0 and self.num_running < max_seqs:
            rid = waiting[0]
            if state[rid] != WAITING:
                waiting.popleft()
                continue
            chunk = min(self.prompt[rid] + self.generated[rid], budget)
            blocks = -(-chunk // bs)
            if blocks > self.free_blocks:
                break
            waiting.popleft()
            self.num_waiting -= 1
            self.free_blocks -= blocks
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
        return budget

    # -- the step ------------------------------------------------------------------------------------------
    def step(self, *, jump: bool = False, next_arrival_s: float | None = None) -> bool:
        """Run one engine step at `self.now` (with `jump`, possibly a run of pure-decode steps at once).

        Returns False when there is nothing to do. `next_arrival_s` bounds a jump when future arrivals are not
        submitted yet (real-time use); offline it is the next submitted arrival.
        """
        t = self.now
        self.last_ended = []
        if self.next_arrival < self.num_submitted and self.arrival[self.next_arrival] <= t:
            self._absorb_arrivals(t)
        next_deadline = self._next_deadline()
        if t >= next_deadline:
            self.last_ended = self._expire(t)
            next_deadline = self._next_deadline()
        if self.num_running == 0 and self.num_waiting == 0:
            self.last_emitted = []
            self.last_first_tokens = []
            return False
        config = self.config
        bs = config.block_size
        budget = config.max_num_batched_tokens
        decoders = self.num_decoders
        crossing = self.by_residue[-self.clock % bs]  # decoders whose next token needs a new block
        prefill_chunks: dict[int, int] = {}
        preempted = 0
        if not self.prefilling and decoders <= budget and crossing <= self.free_blocks:
            if jump and decoders and (
                not self.num_waiting or not self._head_admissible(budget - decoders, self.free_blocks - crossing)
            ):
                self._decode_run(t, next_arrival_s, next_deadline)
                return True
            self.free_blocks -= crossing
            scheduled_decoders = decoders
            self.starved = set()
        else:
            prefill_need = 0
            for rid in self.prefilling:
                prefill_need += self.prompt[rid] + self.generated[rid] - self.computed[rid]
            extra = crossing
            if decoders + prefill_need <= budget:
                for rid in self.prefilling:
                    computed = self.computed[rid]
                    extra += -(-(self.prompt[rid] + self.generated[rid]) // bs) - -(-computed // bs)
            if decoders + prefill_need <= budget and extra <= self.free_blocks:
                self.free_blocks -= extra
                for rid in self.prefilling:
                    prefill_chunks[rid] = self.prompt[rid] + self.generated[rid] - self.computed[rid]
                scheduled_decoders = decoders
                self.starved = set()
            else:
                prefill_chunks, scheduled_decoders, preempted = self._schedule_in_order(budget, t)
        budget -= scheduled_decoders + sum(prefill_chunks.values())
        if not preempted and budget > 0 and self.num_waiting:
            self._admit(budget, t, prefill_chunks)
        # Work of the step.
        decode_tokens = scheduled_decoders
        prefill_tokens = 0
        # Decoders: each new token attends to its context (computed + 1 tokens), which is read once.
        context = self.decoder_base_sum + self.num_decoders * (self.clock + 1)
        for rid in self.starved:
            context -= self.base[rid] + self.clock + 1
        pairs = kv = context
        prompt, generated, computed_col = self.prompt, self.generated, self.computed
        for rid, chunk in prefill_chunks.items():
            computed = computed_col[rid]
            if chunk == 1 and generated[rid] > 0 and computed == prompt[rid] + generated[rid] - 1:
                decode_tokens += 1
            else:
                prefill_tokens += chunk
            pairs += chunk * computed + chunk * (chunk + 1) // 2
            kv += computed + chunk
        duration = self.latency.step_time(prefill_tokens, decode_tokens, pairs, kv)
        t_end = t + duration
        kv_used = config.num_gpu_blocks - self.free_blocks
        # Apply: the decode clock moves on; prefills advance; completed contexts emit a token.
        if self.track_events:
            emitted_ids = [rid for rid in self.decoder_ids if rid not in self.starved]
        self.clock += 1
        emitted = scheduled_decoders
        first_tokens = []
        prompt_done = 0
        finished = 0
        ended = self.last_ended
        becoming_decoders = []
        for rid, chunk in prefill_chunks.items():
            computed = computed_col[rid] + chunk
            computed_col[rid] = computed
            if computed == prompt[rid] + generated[rid]:
                emitted += 1
                if generated[rid] == 0:
                    self.first_token[rid] = t_end
                    first_tokens.append(rid)
                    prompt_done += prompt[rid]
                generated[rid] += 1
                self.last_token[rid] = t_end
                becoming_decoders.append(rid)
        for rid in becoming_decoders:
            self.prefilling.remove(rid)
            if generated[rid] >= self.output_len[rid]:
                self.num_running -= 1
                self.free_blocks += -(-computed_col[rid] // bs)
                self._complete(rid, t_end)
                ended.append(rid)
                finished += 1
            else:
                self._add_decoder(rid, computed_col[rid])
        finished += self._finish_decoders(t_end, ended)
        if self.track_events:
            self.last_emitted = emitted_ids + becoming_decoders
            self.last_first_tokens = first_tokens
        if self.record_steps:
            self.steps.add_step(t, duration, kv_used, self.num_running + finished, self.num_waiting, prefill_tokens,
                                decode_tokens, preempted, emitted, prompt_done, finished)
        self.now = t_end
        return True

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
        finished = 0
        while heap and heap[0][0] <= clock:
            at, rid = heappop(heap)
            if not self.is_decoder[rid] or self.prompt[rid] + self.output_len[rid] - self.base[rid] - 1 != at:
                continue  # stale entry
            self._leave_running(rid)
            self._complete(rid, t_end)
            ended.append(rid)
            finished += 1
        return finished

    def _decode_run(self, t: float, next_arrival_s: float | None, next_deadline: float) -> None:
        """Take k >= 1 pure-decode steps at once: up to the first finish, block shortage, arrival or deadline."""
        bs = self.config.block_size
        heap = self.finish_heap
        by_residue = self.by_residue
        if next_arrival_s is None:
            next_arrival_s = self.arrival[self.next_arrival] if self.next_arrival < self.num_submitted else math.inf
        while True:
            n = self.num_decoders
            while True:  # drop stale entries so the top is the next finish
                at, rid = heap[0]
                if self.is_decoder[rid] and self.prompt[rid] + self.output_len[rid] - self.base[rid] - 1 == at:
                    break
                heappop(heap)
            clock = self.clock
            k_finish = at - clock
            # Decoders needing a new block at relative step j (0-based) are those with base = -(clock + j) mod bs;
            # after j steps the batch holds (j // bs) * n + at_most[j % bs] more blocks.
            first = -clock % bs  # residues -(clock + j) mod bs for j = 0, 1, ...: first, first - 1, ... (wrapping)
            at_most = [0, *accumulate(by_residue[first::-1] + by_residue[:first:-1])]
            quotient, remainder = divmod(self.free_blocks, n)
            k_max = min(k_finish, quotient * bs + bisect_right(at_most, remainder) - 1)
            limit = next_arrival_s if next_arrival_s < next_deadline else next_deadline
            lines = self.latency.decode_lines(n, self.decoder_base_sum + n * (clock + 1))
            # Step j + 1 (j >= 1) runs only if it starts before `limit` (the next arrival or deadline): k is the
            # first j >= 1 whose end t + total(j) reaches `limit`, else k_max. Durations never shrink within a run,
            # so k <= (limit - t) / (first duration) + 1 narrows the search.
            k = k_max
            total = lines.total
            end = None  # t + total(k) when already known
            if limit < math.inf:
                # Step durations never shrink within a run: k <= ceil(span / first duration), usually equal.
                first = total(1)
                k = min(k_max, max(1, math.ceil((limit - t) / first)))
                end = t + total(k)
                if end < limit:
                    if k < k_max:
                        k = self._first_reaching(total, t, limit, k + 1, k_max)
                        end = None
                elif k > 1 and t + total(k - 1) >= limit:
                    k = self._first_reaching(total, t, limit, 1, k - 1)
                    end = None
            now = t + total(k) if end is None else end
            used_before = self.config.num_gpu_blocks - self.free_blocks
            self.clock = clock + k
            self.free_blocks -= (k // bs) * n + at_most[k % bs]
            self.starved = set()
            ended = self.last_ended
            finished = self._finish_decoders(now, ended)
            if self.record_steps:
                self.steps.add_run(t, k, lines, used_before, at_most, n, self.num_waiting, finished)
            if self.track_events:
                self.last_emitted = list(self.decoder_ids) + ended
                self.last_first_tokens = []
            self.now = now
            # Another run may follow at once when nothing else would happen at `now`: no arrival or deadline
            # reached, nobody queued, and the next step's new blocks fit (exactly what `step` would check).
            if self.track_events or not self.num_decoders or self.num_waiting or now >= limit:
                return
            next_deadline = self._next_deadline()
            if now >= next_deadline or by_residue[-self.clock % bs] > self.free_blocks:
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

    def run(self, *, jump: bool = True, progress=None) -> None:
        """Run until every submitted request has ended. `progress(requests_absorbed)` is called now and then."""
        calls = 0
        while True:
            if not self.step(jump=jump):
                if self.next_arrival >= self.num_submitted:
                    break
                self.now = max(self.now, self.arrival[self.next_arrival])
            calls += 1
            if progress is not None and calls % 16384 == 0:
                progress(self.next_arrival)
        if progress is not None:
            progress(self.next_arrival)
