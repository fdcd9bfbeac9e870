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

The step table (`STEP_COLUMNS`, one row per step) is logged per segment, a single step or a whole decode run
(`_StepLog`), and expanded to rows by `ServingEngine.steps.frame()`, with the same float operations as the engine.
"""

from __future__ import annotations

import gc
import math
import struct
from array import array
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from bisect import bisect_right
from heapq import heappop, heappush
from itertools import accumulate

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.sim.hardware import DecodeLines, expand_run_tables, run_line_tables

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


_FRAME_CHUNK_ROWS = 1 << 16  # rows expanded at a time by `_StepLog.frame` (temporaries stay in cache)
_FRAME_THREADS = 2
_LOG_CHUNK = 1 << 16  # segments logged as separate byte strings before they are joined


class _StepLog:
    """The step table, stored per segment: a single step, or a run of pure-decode steps (expanded in `frame`).

    Each segment is packed into bytes as it is logged (`struct`, cheap in the engine's loop): a single step as
    `_STEP_FORMAT` (start, duration, KV blocks used after it and the counts of `_COUNT_COLUMNS`), a run as
    `_RUN_FORMAT` plus bs integers (start, steps, the fields a0, a1, b0, b1, overhead_s of its `DecodeLines`, KV
    blocks used before it, batch size, queue length, requests finished at its last step, its first residue, and
    its decoders counted by base mod bs: at its step j the decoders at residue (first - j) mod bs take a new
    block). `is_run` keeps the order. Byte strings are joined every `_LOG_CHUNK` segments."""

    _STEP_FORMAT = "<2d9q"
    _RUN_FORMAT = "<dq5d5q"

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._pack_step = struct.Struct(self._STEP_FORMAT).pack
        self._pack_run = struct.Struct(f"{self._RUN_FORMAT}{block_size}q").pack
        self.is_run = bytearray()  # per segment: 1 for a run, 0 for a single step
        self.step_bytes: list[bytes] = []  # packed single steps since the last join
        self.run_bytes: list[bytes] = []
        self.joined: list[tuple[bytes, bytes]] = []  # (single steps, runs) joined every `_LOG_CHUNK` segments
        self.pending = 0  # segments logged since the last join
        self.size = 0  # steps

    def add_step(self, start: float, duration: float, kv_used: int, num_running: int, num_waiting: int,
                 prefill_tokens: int, decode_tokens: int, preemptions: int, generated_tokens: int,
                 prompt_tokens: int, finished: int) -> None:
        self.step_bytes.append(self._pack_step(start, duration, kv_used, num_running, num_waiting, prefill_tokens,
                                               decode_tokens, preemptions, generated_tokens, prompt_tokens, finished))
        self.is_run.append(0)
        self.size += 1
        self.pending += 1
        if self.pending >= _LOG_CHUNK:
            self._join()

    def add_run(self, start: float, steps: int, lines: tuple[float, float, float, float, float],
                kv_used_before: int, residues: tuple[int, ...], first_residue: int, batch: int, waiting: int,
                finished: int) -> None:
        """A run of `steps` pure-decode steps of `batch` requests; `lines`: the fields (a0, a1, b0, b1, overhead_s)
        of its `DecodeLines`; `residues`: its decoders counted by base mod bs (bs values); at its step j (0-based)
        the decoders at residue (first_residue - j) mod bs take a new block."""
        self.run_bytes.append(self._pack_run(start, steps, *lines, kv_used_before, batch, waiting, finished,
                                             first_residue, *residues))
        self.is_run.append(1)
        self.size += steps
        self.pending += 1
        if self.pending >= _LOG_CHUNK:
            self._join()

    def _join(self) -> None:
        """Join the byte strings logged since the last join (one object instead of thousands)."""
        self.joined.append((b"".join(self.step_bytes), b"".join(self.run_bytes)))
        self.step_bytes, self.run_bytes = [], []
        self.pending = 0

    def frame(self) -> pl.DataFrame:
        """The step table (`STEP_COLUMNS`), one row per step."""
        bs = self.block_size
        count_names = ("kv_blocks_used", *_COUNT_COLUMNS)
        single = np.frombuffer(b"".join([*(block for block, _ in self.joined), *self.step_bytes]), np.dtype(
            [("start", "<f8"), ("duration", "<f8"), *((name, "<i8") for name in count_names)]))
        runs = np.frombuffer(b"".join([*(block for _, block in self.joined), *self.run_bytes]), np.dtype(
            [("start", "<f8"), ("steps", "<i8"), *((name, "<f8") for name in ("a0", "a1", "b0", "b1", "overhead")),
             *((name, "<i8") for name in ("kv_before", "batch", "waiting", "finished", "first")),
             ("residues", "<i8", (bs,))]))
        is_run = np.frombuffer(bytes(self.is_run), np.uint8).astype(bool)
        is_single = ~is_run
        segments = len(is_run)
        # Per segment: start, steps, step-time lines (a single step: flat at its duration, max(d + 0 j, -inf) + 0
        # = d exactly), the counts, the batch size of a run (0 for a single step) and its row of `at_most`.
        starts = np.empty(segments)
        starts[is_single], starts[is_run] = single["start"], runs["start"]
        steps = np.ones(segments, np.int64)
        steps[is_run] = runs["steps"]
        a0, a1, b0, b1, overhead = np.empty(segments), np.zeros(segments), np.full(segments, -np.inf), \
            np.zeros(segments), np.zeros(segments)
        a0[is_single] = single["duration"]
        for line, name in ((a0, "a0"), (a1, "a1"), (b0, "b0"), (b1, "b1"), (overhead, "overhead")):
            line[is_run] = runs[name]
        per_segment = np.zeros((len(count_names), segments), np.int32)
        for position, name in enumerate(count_names):
            per_segment[position, is_single] = single[name]
        run_counts = {"kv_blocks_used": runs["kv_before"], "num_running": runs["batch"], "num_waiting": runs["waiting"],
                      "decode_tokens": runs["batch"], "generated_tokens": runs["batch"], "finished": runs["finished"]}
        for name, values in run_counts.items():
            per_segment[count_names.index(name), is_run] = values
        batch = np.zeros(segments, np.int32)
        batch[is_run] = runs["batch"]
        at_most_row = np.zeros(segments, np.int64)  # row 0: zeros (single steps)
        at_most_row[is_run] = np.arange(1, len(runs) + 1)
        # at_most[row, r]: blocks a run adds within r steps (r = 0..bs), from residues first, first - 1, ...
        residues = np.concatenate([np.zeros((1, bs), np.int64), runs["residues"].reshape(-1, bs)])
        first_residue = np.concatenate([[0], runs["first"]])
        rolled = np.take_along_axis(residues, (first_residue[:, None] - np.arange(bs)) % bs, axis=1)
        at_most_table = np.concatenate([np.zeros((len(residues), 1), np.int64), np.cumsum(rolled, axis=1)],
                                       axis=1).ravel()  # stride bs + 1
        del residues, rolled, single, runs
        # The segment's step-time lines as (upper at step 0, lower at step 0) and the step from which the lower
        # line is on top (`split_cap`, +inf when never): the per-segment part of `expand_run_tables`.
        upper0, upper1, lower0, lower1, split_cap = run_line_tables(a0, a1, b0, b1)
        last_row = np.cumsum(steps) - 1
        size = int(last_row[-1]) + 1 if segments else 0
        columns = {"time_s": np.empty(size), "duration_s": np.empty(size)}
        columns.update({name: np.empty(size, np.int32) for name in count_names})
        finished_position = count_names.index("finished")

        def expand(lo: int, hi: int) -> None:
            """Write the rows of segments lo..hi-1."""
            counts = steps[lo:hi]
            row_lo, row_hi = int(last_row[lo] + 1 - counts[0]), int(last_row[hi - 1] + 1)
            first = last_row[lo:hi] + 1 - counts - row_lo
            step = np.arange(row_hi - row_lo, dtype=np.int64)
            step -= np.repeat(first, counts)  # the row's step index within its segment
            part = slice(lo, hi)
            duration, offset = expand_run_tables(upper0[part], upper1[part], lower0[part], lower1[part],
                                                 split_cap[part], overhead[part], counts, step.astype(np.float64))
            columns["duration_s"][row_lo:row_hi] = duration
            offset += np.repeat(starts[part], counts)
            columns["time_s"][row_lo:row_hi] = offset
            del duration, offset
            # KV blocks after step j of a run: before + ((j + 1) // bs) * batch + at_most[(j + 1) % bs].
            step += 1
            kv = columns["kv_blocks_used"][row_lo:row_hi]
            np.floor_divide(step, bs, out=kv, casting="unsafe")
            kv *= np.repeat(batch[part], counts)
            np.remainder(step, bs, out=step)
            step += np.repeat(at_most_row[part] * (bs + 1), counts)
            kv += at_most_table[step]
            kv += np.repeat(per_segment[0][part], counts)
            del step
            for position, name in enumerate(count_names[1:], start=1):
                column = columns[name]
                if position == finished_position:
                    column[row_lo:row_hi] = 0
                    column[last_row[lo:hi]] = per_segment[position][part]
                else:
                    column[row_lo:row_hi] = np.repeat(per_segment[position][part], counts)

        # Expand a few thousand rows at a time so temporaries stay small (in cache) next to the table itself, on
        # two threads (NumPy releases the GIL in its array operations; the threads write disjoint rows).
        bounds = np.searchsorted(last_row, np.arange(_FRAME_CHUNK_ROWS, size, _FRAME_CHUNK_ROWS), side="left").tolist()
        chunks = [(lo, hi) for lo, hi in zip([0, *bounds], [*bounds, segments], strict=True) if lo < hi]
        if chunks:
            with ThreadPoolExecutor(max_workers=_FRAME_THREADS) as pool:
                for _ in pool.map(expand, *zip(*chunks, strict=True)):
                    pass  # re-raises a thread's exception
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
        self.starved: set[int] | frozenset[int] = _NO_REQUESTS  # decoders left without budget in the last step
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
        # Called millions of times offline: attributes are read into locals where used more than once.
        t = self.now
        ended = self.last_ended = []
        if self.next_arrival < self.num_submitted and self.arrival[self.next_arrival] <= t:
            self._absorb_arrivals(t)
        oldest = self.oldest_live
        if oldest < self.next_arrival and self.state[oldest] < DONE:  # `_next_deadline()`, its usual case inline
            next_deadline = self.deadline[oldest]
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
        free_blocks = self.free_blocks
        crossing = self.by_residue[-self.clock % bs]  # decoders whose next token needs a new block
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
            self.free_blocks = free_blocks - crossing
            scheduled_decoders = decoders
            self.starved = _NO_REQUESTS
        else:
            prefill_need = 0
            for rid in prefilling:
                prefill_need += prompt[rid] + generated[rid] - computed_col[rid]
            extra = crossing
            if decoders + prefill_need <= budget:
                for rid in prefilling:
                    computed = computed_col[rid]
                    extra += -(-(prompt[rid] + generated[rid]) // bs) - -(-computed // bs)
            if decoders + prefill_need <= budget and extra <= free_blocks:
                self.free_blocks = free_blocks - extra
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
        if not preempted and budget > 0 and self.num_waiting:
            self._admit(budget, t, prefill_chunks)
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
        pairs = kv = context
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
                    self.free_blocks += -(-computed_col[rid] // bs)
                    self._complete(rid, t_end)
                    ended.append(rid)
                    finished += 1
                else:
                    self._add_decoder(rid, computed_col[rid])
        heap = self.finish_heap
        if heap and heap[0][0] <= clock:
            finished += self._finish_decoders(t_end, ended)
        if track_events:
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
        is_decoder, prompt, output_len, base = self.is_decoder, self.prompt, self.output_len, self.base
        by_residue, bs = self.by_residue, self.config.block_size
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
        self.free_blocks += freed_blocks
        self.num_running -= finished
        return finished

    def _decode_run(self, t: float, next_arrival_s: float | None, next_deadline: float) -> None:
        """Take k >= 1 pure-decode steps at once: up to the first finish, block shortage, arrival or deadline."""
        # The hot path of an offline run: attributes used in the loop are read into locals once.
        config = self.config
        bs, num_gpu_blocks = config.block_size, config.num_gpu_blocks
        heap = self.finish_heap
        by_residue = self.by_residue
        is_decoder, prompt, output_len, base = self.is_decoder, self.prompt, self.output_len, self.base
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
            free_blocks = self.free_blocks
            # Decoders needing a new block at relative step j (0-based) are those with base = -(clock + j) mod bs;
            # after j steps the batch holds (j // bs) * n + at_most[j % bs] more blocks, at_most[r] being the
            # number of decoders at residues first, first - 1, ..., first - r + 1 (mod bs).
            first = -clock % bs
            k_max = at - clock
            quotient, remainder = divmod(free_blocks, n)
            if quotient * bs < k_max:  # the free blocks may run out before the next finish
                at_most = [0, *accumulate(by_residue[first::-1] + by_residue[:first:-1])]
                k_blocks = quotient * bs + bisect_right(at_most, remainder) - 1
                if k_blocks < k_max:
                    k_max = k_blocks
            limit = next_arrival_s if next_arrival_s < next_deadline else next_deadline
            lines = line_coefficients(n, self.decoder_base_sum + n * (clock + 1))  # `DecodeLines` fields
            a0, a1, b0, b1, overhead = lines
            upper0, upper1, lower1 = (a0, a1, b1) if a0 >= b0 else (b0, b1, a1)
            if lower1 > upper1:  # the lines may cross: `DecodeLines.total` in full
                total = DecodeLines(*lines).total
            else:
                def total(steps: int, upper0=upper0, upper1=upper1, overhead=overhead) -> float:
                    """`DecodeLines.total` when one line stays on top (the same float operations)."""
                    return steps * upper0 + upper1 * (steps * (steps - 1) / 2) + steps * overhead
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
                end = t + total(k)
                if end < limit:
                    if k < k_max:
                        k = first_reaching(total, t, limit, k + 1, k_max)
                        end = None
                elif k > 1 and t + total(k - 1) >= limit:
                    k = first_reaching(total, t, limit, 1, k - 1)
                    end = None
            now = t + total(k) if end is None else end
            clock += k
            self.clock = clock
            residues_before = tuple(by_residue) if log is not None else None
            low = first - k % bs + 1  # after k // bs whole cycles: at_most[k % bs], residues first down to low
            added = sum(by_residue[low:first + 1]) if low >= 0 else sum(by_residue[:first + 1]) + sum(by_residue[low:])
            self.free_blocks = free_blocks - ((k // bs) * n + added)
            self.starved = _NO_REQUESTS
            ended = self.last_ended
            finished = self._finish_decoders(now, ended) if at <= clock else 0
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
            next_deadline = self._next_deadline()
            if now >= next_deadline or by_residue[-clock % bs] > self.free_blocks:
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
        # The engine makes no reference cycles, but its loop allocates millions of small tuples, which would
        # trigger the cyclic garbage collector over and over (about 6% of the run): pause it meanwhile.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._run(jump, progress)
        finally:
            if collecting:
                gc.enable()

    def _run(self, jump: bool, progress) -> None:
        step, arrival = self.step, self.arrival
        calls = 0
        while True:
            if not step(jump=jump):
                if self.next_arrival >= self.num_submitted:
                    break
                self.now = max(self.now, arrival[self.next_arrival])
            calls += 1
            if progress is not None and calls % 16384 == 0:
                progress(self.next_arrival)
        if progress is not None:
            progress(self.next_arrival)
