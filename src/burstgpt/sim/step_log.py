"""The engine's step table: one row per engine step (`STEP_COLUMNS`), logged compactly as the engine runs (a
single step, or a whole run of pure-decode steps as its step-time lines and block increments), handed on a chunk
at a time to consumers (`StepConsumer`: `IntervalDigest` derives the server metrics per metrics interval and the
sampled steps without ever expanding the table), and expanded to rows only when asked for (`StepLog.frame`), a
few thousand rows at a time, with the same float operations as the engine
(`burstgpt.sim.latency.expand_run_tables`).

Step modes (`STEP_MODES`, `burstgpt simulate --steps`):

- `all`: every step (tens of millions of rows for a million requests: about 40 per request);
- `sampled` (the default): the steps a user studying a burst looks at, in step order:
  1. the last step of every metrics interval: the step whose state a scrape at the interval's end sees, i.e. the
     row each line of server_metrics.csv comes from (so the two files line up);
  2. every step that ran with requests queued (`num_waiting > 0`): the burst itself, while the engine cannot
     admit everything (out of KV blocks, out of `max_num_seqs`, or out of token budget), step by step;
  3. every step that preempted a request.
  A run that never queues has about one row per metrics interval; a run overloaded all the time approaches
  `all`.
- `none`: no step table (the server metrics are still derived from the steps).
"""

from __future__ import annotations

import math
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError
from burstgpt.records import conform_server_metrics
from burstgpt.sim.latency import expand_run_tables, run_line_tables

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
    "prefix_cache_queries": pl.Int32(),  # prompt tokens looked up in the prefix cache by first admissions
    "prefix_cache_hits": pl.Int32(),  # of which found in it (vLLM's counters of the same names, per step)
}

#: What `burstgpt simulate --steps` writes to steps.parquet (see the module docstring).
STEP_MODES = ("none", "sampled", "all")

_COUNT_COLUMNS = ("kv_blocks_used", "num_running", "num_waiting", "prefill_tokens", "decode_tokens", "preemptions",
                  "generated_tokens", "prompt_tokens", "finished", "prefix_cache_queries", "prefix_cache_hits")
_KV, _RUNNING, _WAITING = 0, 1, 2
_PREEMPTIONS, _FINISHED = _COUNT_COLUMNS.index("preemptions"), _COUNT_COLUMNS.index("finished")
#: Server-metric counters (cumulative since the start, as a scrape sees them) and the step column each adds up.
SERVER_COUNTER_STEPS = {"num_preemptions_total": "preemptions", "prompt_tokens_total": "prompt_tokens",
                        "generation_tokens_total": "generated_tokens",
                        "prefix_cache_queries_total": "prefix_cache_queries",
                        "prefix_cache_hits_total": "prefix_cache_hits"}
_COUNTERS = [_COUNT_COLUMNS.index(name) for name in SERVER_COUNTER_STEPS.values()]

_FRAME_CHUNK_ROWS = 1 << 16  # rows expanded at a time by `StepLog.frame` (temporaries stay in cache)
_FRAME_THREADS = 2
_LOG_CHUNK = 1 << 16  # segments logged before they are handed on as one chunk


class StepSegments:
    """One chunk of the step log, decoded: per segment (a single step, or a run of pure-decode steps) its start
    (s), number of steps, step-time lines, the counts of `_COUNT_COLUMNS` (a run: those of each of its steps, its
    KV blocks before it, `finished` at its last step) and its block increments. `rows` gives the step-table rows
    of any (segment, step) pairs; `expand_into` all rows; both with the float operations of `frame`."""

    def __init__(self, single_bytes: bytes, run_bytes: bytes, kinds: bytes, block_size: int) -> None:
        bs = self.block_size = block_size
        # Every field is 8 bytes: the records as rows of words (`StepLog`'s `_STEP_FORMAT` and `_RUN_FORMAT`).
        single = np.frombuffer(single_bytes, "<i8").reshape(-1, 2 + len(_COUNT_COLUMNS))
        runs = np.frombuffer(run_bytes, "<i8").reshape(-1, 12 + bs)
        single_floats, run_floats = single.view("<f8"), runs.view("<f8")
        is_run = np.frombuffer(kinds, np.uint8).astype(bool)
        single_at, run_at = np.flatnonzero(~is_run), np.flatnonzero(is_run)  # positions among the segments
        segments = self.num_segments = len(is_run)
        # Per segment: start, steps, step-time lines (a single step: flat at its duration, max(d + 0 j, -inf) + 0
        # = d exactly), the counts, the batch size of a run (0 for a single step) and where its block sums start.
        self.start = np.empty(segments)
        self.start[single_at], self.start[run_at] = single_floats[:, 0], run_floats[:, 0]
        self.steps = np.ones(segments, np.int64)
        self.steps[run_at] = runs[:, 1]
        lines = np.zeros((5, segments))  # a0, a1, b0, b1, overhead
        lines[:, run_at] = run_floats[:, 2:7].T
        lines[0, single_at] = single_floats[:, 1]
        lines[2, single_at] = -np.inf
        a0, a1, b0, b1, self.overhead = lines
        self.counts = np.zeros((len(_COUNT_COLUMNS), segments), np.int32)
        self.counts[:, single_at] = single[:, 2:].T
        kv_before, batch, waiting, finished, first = runs[:, 7:12].T
        run_counts = {"kv_blocks_used": kv_before, "num_running": batch, "num_waiting": waiting,
                      "decode_tokens": batch, "generated_tokens": batch, "finished": finished}
        for name, values in run_counts.items():
            self.counts[_COUNT_COLUMNS.index(name), run_at] = values
        self.batch = np.zeros(segments, np.int32)
        self.batch[run_at] = batch
        # Blocks a run adds within r steps (r = 0..bs): its decoders at residues first, first - 1, ... (mod bs)
        # counted, i.e. cumulative[start + r] - cumulative[start] in the run's row of cumulative sums over its
        # residues reversed and repeated twice (start = bs - 1 - first); row 0 (single steps) is zeros.
        reversed_residues = runs[:, 12:][:, ::-1]
        cumulative = np.zeros((len(runs) + 1, 2 * bs + 1), np.int32)  # counts <= max_num_seqs
        cumulative[1:, 1:bs + 1] = reversed_residues
        cumulative[1:, bs + 1:] = reversed_residues
        np.cumsum(cumulative, axis=1, out=cumulative)
        self.cumulative_blocks = cumulative.ravel()
        self.block_start = np.zeros(segments, np.int64)  # per segment: where its row's sums start, + bs - 1 - first
        self.block_start[run_at] = np.arange(1, len(runs) + 1) * (2 * bs + 1) + (bs - 1 - first)
        # The segment's step-time lines as (upper at step 0, lower at step 0) and the step from which the lower
        # line is on top (`split_cap`, +inf when never): the per-segment part of `expand_run_tables`.
        self.upper0, self.upper1, self.lower0, self.lower1, self.split_cap = run_line_tables(a0, a1, b0, b1)
        self.last_row = np.cumsum(self.steps) - 1  # each segment's last row within the chunk
        self.num_steps = int(self.last_row[-1]) + 1 if segments else 0

    def _times(self, part, counts: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(time_s, duration_s) of steps `step` (0-based within their segment) of the segments `part` (a slice or
        indices), each taken `counts` times in a row."""
        duration, offset = expand_run_tables(self.upper0[part], self.upper1[part], self.lower0[part],
                                             self.lower1[part], self.split_cap[part], self.overhead[part], counts,
                                             step.astype(np.float64))
        offset += np.repeat(self.start[part], counts)
        return offset, duration

    def _kv(self, part, counts: np.ndarray, step: np.ndarray) -> np.ndarray:
        """KV blocks after step j of a run: before + ((j + 1) // bs) * batch + blocks added within (j + 1) % bs."""
        bs = self.block_size
        following = step + 1
        kv = np.empty(len(step), np.int32)
        np.floor_divide(following, bs, out=kv, casting="unsafe")
        kv *= np.repeat(self.batch[part], counts)
        np.remainder(following, bs, out=following)
        start = np.repeat(self.block_start[part], counts)
        following += start
        kv += self.cumulative_blocks[following]
        kv -= self.cumulative_blocks[start]
        kv += np.repeat(self.counts[_KV][part], counts)
        return kv

    def kv(self, segment: np.ndarray, step: np.ndarray) -> np.ndarray:
        """KV blocks used after the allocation of step `step` of each segment `segment`."""
        return self._kv(segment, np.ones(len(segment), np.int64), step)

    def step_ends(self, segment: np.ndarray, step: np.ndarray) -> np.ndarray:
        """End (s) of step `step` of each segment `segment`: time_s + duration_s, as in the step table."""
        time_s, duration = self._times(segment, np.ones(len(segment), np.int64), step)
        time_s += duration
        return time_s

    def rows(self, segment: np.ndarray, step: np.ndarray) -> dict[str, np.ndarray]:
        """The step-table columns (`STEP_COLUMNS`) of step `step` of each segment `segment`."""
        ones = np.ones(len(segment), np.int64)
        time_s, duration = self._times(segment, ones, step)
        columns = {"time_s": time_s, "duration_s": duration, "kv_blocks_used": self._kv(segment, ones, step)}
        for position, name in enumerate(_COUNT_COLUMNS[1:], start=1):
            columns[name] = self.counts[position][segment]
        columns["finished"] = np.where(step == self.steps[segment] - 1, columns["finished"], 0).astype(np.int32)
        return {name: columns[name] for name in STEP_COLUMNS}

    def expand_into(self, columns: dict[str, np.ndarray], lo: int, hi: int, row_offset: int = 0) -> None:
        """Write the rows of segments lo..hi-1 into `columns` (`STEP_COLUMNS` arrays), this chunk's first row at
        `row_offset`."""
        counts, last_row = self.steps[lo:hi], self.last_row
        row_lo, row_hi = int(last_row[lo] + 1 - counts[0]), int(last_row[hi - 1] + 1)
        first = last_row[lo:hi] + 1 - counts - row_lo
        step = np.arange(row_hi - row_lo, dtype=np.int64)
        step -= np.repeat(first, counts)  # the row's step index within its segment
        part = slice(lo, hi)
        rows = slice(row_offset + row_lo, row_offset + row_hi)
        columns["time_s"][rows], columns["duration_s"][rows] = self._times(part, counts, step)
        columns["kv_blocks_used"][rows] = self._kv(part, counts, step)
        for position, name in enumerate(_COUNT_COLUMNS[1:], start=1):
            column = columns[name]
            if position == _FINISHED:
                column[rows] = 0
                column[row_offset + last_row[part]] = self.counts[position][part]
            else:
                column[rows] = np.repeat(self.counts[position][part], counts)


class StepConsumer(Protocol):
    """Takes the step log a chunk at a time, in step order (`first_step`: the chunk's first row in the run)."""

    def consume(self, chunk: StepSegments, first_step: int) -> None: ...


class StepLog:
    """The step table, stored per segment: a single step, or a run of pure-decode steps (expanded in `frame`).

    The engine calls `add_step` and `add_run` (plain functions bound at construction: the engine's hot loop
    calls them millions of times). Each segment is packed as it is logged (`struct.pack_into` a preallocated
    buffer): a single step as `_STEP_FORMAT` (start, duration, and the counts of `_COUNT_COLUMNS`, KV blocks
    after the step's allocation first), a run as `_RUN_FORMAT` plus bs integers (start, steps, the fields a0, a1, b0, b1, overhead_s of its
    `DecodeLines`, KV blocks used before it, batch size, queue length, requests finished at its last step, its
    first residue, and its decoders counted by base mod bs: at its step j the decoders at residue (first - j) mod
    bs take a new block). Every `_LOG_CHUNK` segments (and at `finish`) the pending ones are decoded into a
    `StepSegments` chunk and handed to the `consumers`; with `keep` (the default) the packed chunk is also kept
    for `frame` and `scan`, else dropped, so memory stays bounded however long the run."""

    _STEP_FORMAT = f"<2d{len(_COUNT_COLUMNS)}q"
    _RUN_FORMAT = "<dq5d5q"

    def __init__(self, block_size: int, *, consumers: tuple[StepConsumer, ...] = (), keep: bool = True) -> None:
        self.block_size = block_size
        self.consumers = consumers
        self.keep = keep
        self.joined: list[tuple[bytes, bytes, bytes]] = []  # packed chunks (single steps, runs, kinds) if `keep`
        self.size = 0  # steps handed on so far (all steps after `finish`)
        # Two buffers of `_LOG_CHUNK` segments each (no object per segment), allocated at the first segment (an
        # engine that logs nothing pays nothing); `kinds` keeps the order.
        single_format, run_format = struct.Struct(self._STEP_FORMAT), struct.Struct(f"{self._RUN_FORMAT}{block_size}q")
        self._single_bytes, self._run_bytes = single_format.size, run_format.size
        single_buffer = run_buffer = bytearray()
        kinds = bytearray()  # per segment: 1 for a run, 0 for a single step
        single_end = run_end = 0  # bytes used in each buffer
        pack_step, pack_run, single_size, run_size = single_format.pack_into, run_format.pack_into, \
            single_format.size, run_format.size
        add_kind, flush, limit = kinds.append, self.flush, _LOG_CHUNK

        def add_step(start: float, duration: float, kv_used: int, num_running: int, num_waiting: int,
                     prefill_tokens: int, decode_tokens: int, preemptions: int, generated_tokens: int,
                     prompt_tokens: int, finished: int, prefix_cache_queries: int = 0,
                     prefix_cache_hits: int = 0) -> None:
            """One step (seconds; counts as in `STEP_COLUMNS`)."""
            nonlocal single_end
            pack_step(single_buffer, single_end, start, duration, kv_used, num_running, num_waiting, prefill_tokens,
                      decode_tokens, preemptions, generated_tokens, prompt_tokens, finished, prefix_cache_queries,
                      prefix_cache_hits)
            single_end += single_size
            add_kind(0)
            if len(kinds) >= limit:
                flush()

        def add_decode_run(start: float, steps: int, lines: tuple[float, float, float, float, float],
                           kv_used_before: int, residues: tuple[int, ...], first_residue: int, batch: int,
                           waiting: int, finished: int) -> None:
            """A run of `steps` pure-decode steps of `batch` requests; `lines`: the fields (a0, a1, b0, b1,
            overhead_s) of its `DecodeLines`; `residues`: its decoders counted by base mod bs (bs values); at its
            step j (0-based) the decoders at residue (first_residue - j) mod bs take a new block."""
            nonlocal run_end
            pack_run(run_buffer, run_end, start, steps, *lines, kv_used_before, batch, waiting, finished,
                     first_residue, *residues)
            run_end += run_size
            add_kind(1)
            if len(kinds) >= limit:
                flush()

        def take_pending() -> tuple[bytes, bytes, bytes]:
            """The segments logged since the last call, packed (single steps, runs, kinds); empties the buffers."""
            nonlocal single_end, run_end
            packed = (memoryview(single_buffer)[:single_end].tobytes(), memoryview(run_buffer)[:run_end].tobytes(),
                      bytes(kinds))
            single_end = run_end = 0
            kinds.clear()
            return packed

        def allocate() -> None:
            """Allocate the buffers and put the recorders in place of `first_step` / `first_run`."""
            nonlocal single_buffer, run_buffer
            single_buffer, run_buffer = bytearray(single_size * limit), bytearray(run_size * limit)
            self.add_step, self.add_run = add_step, add_decode_run

        def first_step(*step) -> None:
            allocate()
            add_step(*step)

        def first_run(*run) -> None:
            allocate()
            add_decode_run(*run)

        self.add_step, self.add_run = first_step, first_run
        self._take_pending = take_pending

    def flush(self) -> None:
        """Hand the segments logged since the last flush on as one chunk (to the consumers; kept if `keep`)."""
        packed = self._take_pending()
        if not packed[2]:
            return
        if self.keep:
            self.joined.append(packed)
        first_step = self.size
        self.size += len(packed[0]) // self._single_bytes + int(
            np.frombuffer(packed[1], np.int64).reshape(-1, self._run_bytes // 8)[:, 1].sum())
        if self.consumers:
            chunk = StepSegments(*packed, self.block_size)
            for consumer in self.consumers:
                consumer.consume(chunk, first_step)

    def finish(self) -> None:
        """Hand on what is pending (call once the run has ended); the consumers are let go."""
        self.flush()
        # `add_step` and `add_run` hold this log (a reference cycle, freed only by the cyclic collector): drop
        # the consumers now, so what they hold is freed as soon as their owners let go of them.
        self.consumers = ()

    def _check_kept(self) -> None:
        if not self.keep:
            raise BurstGPTError("the step table was not kept (StepLog(keep=False))")
        self.flush()

    def scan(self) -> pl.LazyFrame:
        """The step table (`STEP_COLUMNS`) as a LazyFrame expanded one logged chunk at a time as it is read (by
        `sink_parquet`, say): the whole table is never in memory at once (only with `keep`). The next chunk is
        expanded on a second thread while the reader takes the current one."""
        from polars.io.plugins import register_io_source

        self._check_kept()
        joined, block_size = list(self.joined), self.block_size

        def expand(packed: tuple[bytes, bytes, bytes]) -> pl.DataFrame:
            chunk = StepSegments(*packed, block_size)
            columns = {name: np.empty(chunk.num_steps, np.float64 if dtype == pl.Float64 else np.int32)
                       for name, dtype in STEP_COLUMNS.items()}
            if chunk.num_segments:
                chunk.expand_into(columns, 0, chunk.num_segments)
            return pl.DataFrame(columns, schema=STEP_COLUMNS)

        def frames(with_columns, predicate, n_rows, batch_size):
            """Polars' IO-source protocol: the chunks' rows, projected, filtered, up to `n_rows`."""
            with ThreadPoolExecutor(max_workers=1) as pool:
                upcoming = pool.submit(expand, joined[0]) if joined else None
                for position in range(len(joined)):
                    frame = upcoming.result()
                    upcoming = pool.submit(expand, joined[position + 1]) if position + 1 < len(joined) else None
                    if with_columns is not None:
                        frame = frame.select(with_columns)
                    if predicate is not None:
                        frame = frame.filter(predicate)
                    if n_rows is not None:
                        frame = frame.head(n_rows)
                        n_rows -= frame.height
                    yield frame
                    if n_rows == 0:
                        return

        return register_io_source(frames, schema=STEP_COLUMNS)

    def frame(self) -> pl.DataFrame:
        """The step table (`STEP_COLUMNS`), one row per step (only with `keep`)."""
        self._check_kept()
        columns = {name: np.empty(self.size, np.float64 if dtype == pl.Float64 else np.int32)
                   for name, dtype in STEP_COLUMNS.items()}
        # Expand a few thousand rows at a time so temporaries stay small (in cache) next to the table itself, on
        # two threads (NumPy releases the GIL in its array operations; the threads write disjoint rows).
        tasks = []
        row_offset = 0
        for packed in self.joined:
            chunk = StepSegments(*packed, self.block_size)
            bounds = np.searchsorted(chunk.last_row, np.arange(_FRAME_CHUNK_ROWS, chunk.num_steps, _FRAME_CHUNK_ROWS),
                                     side="left").tolist()
            tasks += [(chunk, lo, hi, row_offset) for lo, hi in zip([0, *bounds], [*bounds, chunk.num_segments],
                                                                    strict=True) if lo < hi]
            row_offset += chunk.num_steps
        if tasks:
            with ThreadPoolExecutor(max_workers=_FRAME_THREADS) as pool:
                for _ in pool.map(lambda task: task[0].expand_into(columns, *task[1:]), tasks):
                    pass  # re-raises a thread's exception
        return pl.DataFrame(columns, schema=STEP_COLUMNS)


# -- server metrics per interval -----------------------------------------------------------------------------------

#: Columns of an interval table (`IntervalDigest`, `burstgpt.sim.simulate.server_metrics_from_steps`): per interval,
#: the state after its last step, its highest KV use and the cumulative counters since the run's start.
_INTERVAL_COLUMNS = ("time_s", "kv_blocks", "kv_blocks_peak", "num_requests_running", "num_requests_waiting",
                     *SERVER_COUNTER_STEPS)


def last_rows_and_peaks(bucket: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows in step order and each row's interval (`bucket`): per interval, in order of first appearance, its
    last row (index) and the highest of its rows' `values`."""
    if not len(bucket):
        return np.zeros(0, np.int64), values[:0]
    if np.all(bucket[1:] >= bucket[:-1]):
        # Step ends do not go back (the usual case): each interval is one contiguous block of rows.
        starts = np.flatnonzero(np.concatenate([[True], bucket[1:] != bucket[:-1]]))
        return np.append(starts[1:] - 1, len(bucket) - 1), np.maximum.reduceat(values, starts)
    # Rounding can put a step's end a hair before its predecessor's: gather each interval's rows wherever they are
    # (a stable sort keeps them in step order).
    order = np.argsort(bucket, kind="stable")
    grouped = bucket[order]
    starts = np.flatnonzero(np.concatenate([[True], grouped[1:] != grouped[:-1]]))
    last_rows = order[np.append(starts[1:] - 1, len(bucket) - 1)]
    peaks = np.maximum.reduceat(values[order], starts)
    by_appearance = np.argsort(order[starts], kind="stable")
    return last_rows[by_appearance], peaks[by_appearance]


def interval_server_metrics(intervals: dict[str, np.ndarray], num_gpu_blocks: int) -> pl.DataFrame:
    """An interval table (`_INTERVAL_COLUMNS` arrays) in the `burstgpt.records` server-metrics layout, plus
    `kv_cache_usage_peak` (the interval's highest KV usage, 0-1)."""
    return conform_server_metrics(pl.DataFrame(intervals).with_columns(
        (pl.col("kv_blocks") / num_gpu_blocks).alias("kv_cache_usage_perc"),
        (pl.col("kv_blocks_peak") / num_gpu_blocks).alias("kv_cache_usage_peak"),
    ).drop("kv_blocks", "kv_blocks_peak"))


def check_interval(interval_s: float) -> None:
    """Refuse a metrics interval that is not a positive number of seconds."""
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise BurstGPTError(f"--metrics-interval must be a positive number of seconds, got {interval_s}")


class IntervalDigest:
    """What a run directory needs from the step log, computed chunk by chunk without expanding it: the server
    metrics per metrics interval (`server_metrics`: the values a scrape at the interval's end sees, i.e. the
    state after the last step that ended in it; counters cumulative; the interval's KV peak) and, with `sample`,
    the sampled step table (`sampled_steps`; see the module docstring). Equal to
    `burstgpt.sim.simulate.server_metrics_from_steps` of the full step table.

    A step belongs to interval floor(end / interval_s). Within a segment step ends only grow (every step lasts
    at least the latency model's positive base), so a segment covers intervals b_first..b_last of its first and
    last steps, and the last of its steps in each is found by bisection on the closed-form step ends; a run's KV
    use only grows until its last step, so that step is also its peak in the interval."""

    def __init__(self, interval_s: float, num_gpu_blocks: int, *, sample: bool = False) -> None:
        check_interval(interval_s)
        self.interval_s = interval_s
        self.num_gpu_blocks = num_gpu_blocks
        self.sample = sample
        self._intervals: list[dict[str, np.ndarray]] = []  # per chunk: its intervals (+ "_bucket", "_step")
        self._interval_rows: list[dict[str, np.ndarray]] = []  # sample: per chunk, its intervals' last steps
        self._event_rows: list[dict[str, np.ndarray]] = []  # sample: per chunk, its steps with a queue or preemption
        self._counters = np.zeros(len(_COUNTERS), np.int64)  # `SERVER_COUNTER_STEPS` totals before the chunk
        self._final_table: tuple[int, tuple] | None = None  # (chunks it covers, `_final`'s result)

    def _bucket(self, ends: np.ndarray) -> np.ndarray:
        return np.floor(ends / self.interval_s)

    def consume(self, chunk: StepSegments, first_step: int) -> None:
        segments = np.arange(chunk.num_segments)
        last_step = chunk.steps - 1
        both_ends = chunk.step_ends(np.concatenate([segments, segments]),
                                    np.concatenate([np.zeros_like(last_step), last_step]))
        first_end, last_end = both_ends[:chunk.num_segments], both_ends[chunk.num_segments:]
        first_bucket, last_bucket = self._bucket(first_end), self._bucket(last_end)
        spans = np.maximum(last_bucket - first_bucket, 0).astype(np.int64) + 1  # intervals each segment reaches
        # Pieces: (segment, interval), the segment's intervals in order; a piece's step is the segment's last one in
        # that interval: its last step for its last interval, else found by search (step ends grow).
        segment = np.repeat(segments, spans)
        piece_bucket = np.repeat(first_bucket, spans) + (np.arange(len(segment)) - np.repeat(np.cumsum(spans) - spans,
                                                                                             spans))
        step = last_step[segment]
        ends = last_end[segment]
        inner = np.flatnonzero(piece_bucket < last_bucket[segment])
        if len(inner):
            step[inner], ends[inner] = self._last_steps_in(chunk, segment[inner], piece_bucket[inner],
                                                           first_end[segment[inner]], last_end[segment[inner]])
        kept = np.flatnonzero(self._bucket(ends) == piece_bucket)  # an interval no step of the segment ends in: none
        segment, step, piece_bucket, ends = segment[kept], step[kept], piece_bucket[kept], ends[kept]
        kv_blocks = chunk.kv(segment, step)
        # Cumulative counters after the piece's step: before the chunk + earlier segments + its own steps so far.
        per_step = chunk.counts[_COUNTERS].astype(np.int64)
        totals = per_step * chunk.steps
        before = np.cumsum(totals, axis=1) - totals + self._counters[:, None]
        self._counters += totals.sum(axis=1)
        last, peaks = last_rows_and_peaks(piece_bucket, kv_blocks)
        segment, step = segment[last], step[last]
        cumulative = before[:, segment] + per_step[:, segment] * (step + 1)
        global_step = first_step + chunk.last_row[segment] - last_step[segment] + step
        self._intervals.append({
            "_bucket": piece_bucket[last], "_step": global_step, "time_s": ends[last], "kv_blocks": kv_blocks[last],
            "kv_blocks_peak": peaks, "num_requests_running": chunk.counts[_RUNNING][segment],
            "num_requests_waiting": chunk.counts[_WAITING][segment],
            **dict(zip(SERVER_COUNTER_STEPS, cumulative, strict=True)),
        })
        if self.sample:
            self._interval_rows.append({"_step": global_step, **chunk.rows(segment, step)})
            # Every step of a segment that ran with a queue or preempted (a run: all its steps).
            busy = np.flatnonzero((chunk.counts[_WAITING] > 0) | (chunk.counts[_PREEMPTIONS] > 0))
            counts = chunk.steps[busy]
            owner = np.repeat(busy, counts)
            offset = np.arange(len(owner), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
            self._event_rows.append({"_step": first_step + chunk.last_row[owner] - last_step[owner] + offset,
                                     **chunk.rows(owner, offset)})

    def mark(self) -> tuple[int, int, int, np.ndarray]:
        """Where the digest stands, between two chunks (for `since`)."""
        return len(self._intervals), len(self._interval_rows), len(self._event_rows), self._counters.copy()

    def since(self, mark: tuple[int, int, int, np.ndarray], first_step: int) -> IntervalDigest:
        """The digest of the chunks consumed after `mark` alone: as if they were a run of their own, its step
        `first_step` the new run's step 0 and its counters starting at zero (`append` puts it back)."""
        intervals, interval_rows, event_rows, counters = mark
        part = IntervalDigest(self.interval_s, self.num_gpu_blocks, sample=self.sample)
        part._append_chunks(self, -first_step, -counters, intervals, interval_rows, event_rows)
        return part

    def append(self, later: IntervalDigest, first_step: int) -> None:
        """Append the digest of a run that continues this one's (the steps of another engine that took over at
        this one's step `first_step` with its counters at zero): as if this digest had consumed its chunks
        (`burstgpt.sim.parallel` joins the parts of a workload simulated in parallel so)."""
        self._append_chunks(later, first_step, self._counters)

    def _append_chunks(self, other: IntervalDigest, step_shift: int, counter_shift: np.ndarray, intervals: int = 0,
                       interval_rows: int = 0, event_rows: int = 0) -> None:
        """Append `other`'s chunks from the given positions on, their step indexes and counters shifted."""
        if (other.interval_s, other.num_gpu_blocks, other.sample) != (self.interval_s, self.num_gpu_blocks,
                                                                      self.sample):
            raise BurstGPTError("only digests of the same interval, cache size and sampling can be joined")
        shifts = dict(zip(SERVER_COUNTER_STEPS, counter_shift.tolist(), strict=True))
        for part in other._intervals[intervals:]:
            shifted = {**part, "_step": part["_step"] + step_shift}
            for counter, shift in shifts.items():
                shifted[counter] = part[counter] + shift
            self._intervals.append(shifted)
        self._interval_rows += [{**part, "_step": part["_step"] + step_shift}
                                for part in other._interval_rows[interval_rows:]]
        self._event_rows += [{**part, "_step": part["_step"] + step_shift} for part in other._event_rows[event_rows:]]
        self._counters = other._counters + counter_shift  # both cases: what this digest's counters come to
        self._final_table = None

    def _last_steps_in(self, chunk: StepSegments, segment: np.ndarray, bucket: np.ndarray, first_end: np.ndarray,
                       last_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For runs `segment` that go on past interval `bucket`: the last step j in it (bucket(end_j) <= bucket <
        bucket(end_{j+1}); step ends grow) and its end. First a guess from the run's mean step (its durations vary
        little), then bisection where the guess was wrong."""
        low, high = np.zeros(len(segment), np.int64), chunk.steps[segment] - 1  # bucket(low) <= b < bucket(high)
        low_end = first_end.copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            guess = np.floor(((bucket + 1) * self.interval_s - first_end) / ((last_end - first_end) / high))
        guess = np.clip(np.nan_to_num(guess), 0, high - 1).astype(np.int64)
        count = len(segment)
        probe_step = np.concatenate([guess, guess + 1])
        probe_end = chunk.step_ends(np.concatenate([segment, segment]), probe_step)
        below = self._bucket(probe_end) <= np.concatenate([bucket, bucket])
        for half in (slice(0, count), slice(count, None)):  # the guess, then the step after it
            up, down = np.flatnonzero(below[half]), np.flatnonzero(~below[half])
            low[up], low_end[up] = probe_step[half][up], probe_end[half][up]
            high[down] = np.minimum(high[down], probe_step[half][down])
        active = np.flatnonzero(high - low > 1)
        while len(active):
            middle = (low[active] + high[active]) // 2
            middle_end = chunk.step_ends(segment[active], middle)
            below = self._bucket(middle_end) <= bucket[active]
            up, down = active[below], active[~below]
            low[up], low_end[up] = middle[below], middle_end[below]
            high[down] = middle[~below]
            active = active[high[active] - low[active] > 1]
        return low, low_end

    def _final(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """The chunks' intervals as one table, and its rows reduced again (an interval's last step in one chunk may
        be followed by more of its steps in the next): each interval's last row (index) and highest peak."""
        if self._final_table is not None and self._final_table[0] == len(self._intervals):
            return self._final_table[1]
        if not self._intervals:
            table = {"_bucket": np.zeros(0), "_step": np.zeros(0, np.int64),
                     **{name: np.zeros(0, np.float64 if name == "time_s" else np.int64) for name in _INTERVAL_COLUMNS}}
        else:
            table = {name: np.concatenate([part[name] for part in self._intervals]) for name in self._intervals[0]}
        final = (table, *last_rows_and_peaks(table["_bucket"], table["kv_blocks_peak"]))
        self._final_table = (len(self._intervals), final)  # for `server_metrics` and `sampled_steps` alike
        return final

    def server_metrics(self) -> pl.DataFrame:
        """Server metrics per interval (see the class docstring), in the `burstgpt.records` layout."""
        table, last, peaks = self._final()
        intervals = {name: table[name][last] for name in _INTERVAL_COLUMNS}
        intervals["kv_blocks_peak"] = peaks
        return interval_server_metrics(intervals, self.num_gpu_blocks)

    def sampled_steps(self) -> pl.DataFrame:
        """The sampled step table (`STEP_COLUMNS`), in step order (only with `sample`)."""
        if not self.sample:
            raise BurstGPTError("steps were not sampled (IntervalDigest(sample=False))")
        if not self._intervals:
            return pl.DataFrame(schema=STEP_COLUMNS)
        # The intervals' final last steps, the event rows, then each step once, in step order.
        table, last, _ = self._final()
        parts = [*self._interval_rows, *self._event_rows]
        rows = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        chosen = np.concatenate([last, np.arange(len(table["_bucket"]), len(rows["_step"]))])
        _, unique = np.unique(rows["_step"][chosen], return_index=True)
        chosen = chosen[unique]
        return pl.DataFrame({name: rows[name][chosen] for name in STEP_COLUMNS}, schema=STEP_COLUMNS)
