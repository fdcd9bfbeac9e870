"""The engine's step table: one row per engine step (`STEP_COLUMNS`), logged compactly as the engine runs (a
single step, or a whole run of pure-decode steps as its step-time lines and block increments) and expanded to
rows only when asked for (`StepLog.frame`), a few thousand rows at a time, with the same float operations as the
engine (`burstgpt.sim.latency.expand_run_tables`)."""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl

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
}


_COUNT_COLUMNS = ("num_running", "num_waiting", "prefill_tokens", "decode_tokens", "preemptions",
                  "generated_tokens", "prompt_tokens", "finished")


_FRAME_CHUNK_ROWS = 1 << 16  # rows expanded at a time by `StepLog.frame` (temporaries stay in cache)
_FRAME_THREADS = 2
_LOG_CHUNK = 1 << 16  # segments logged as separate byte strings before they are joined


class StepLog:
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
