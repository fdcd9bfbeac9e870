"""The normalised trace table every reader produces and every analysis consumes.

| column           | dtype       | meaning                                                                       |
|------------------|-------------|-------------------------------------------------------------------------------|
| timestamp_s      | Float64     | seconds from the trace's origin (see `Trace.origin`), sorted ascending, finite,|
|                  |             | 0 <= timestamp_s <= `MAX_TIMESTAMP_S`                                         |
| model            | Utf8        | e.g. `ChatGPT`, `GPT-4`                                                        |
| service          | Utf8        | `conversation` or `api`                                                        |
| request_tokens   | Int64       | prompt length, tokens, 0..`MAX_TOKENS`                                         |
| response_tokens  | Int64       | response length, tokens, 0..`MAX_TOKENS`                                       |
| failed           | Boolean     | the request failed; BurstGPT's definition: `response_tokens == 0`              |
| session_id       | Utf8        | nullable; conversation session (BurstGPT 8-column schema)                      |
| elapsed_s        | Float64     | nullable; request elapsed time, seconds (BurstGPT 8-column schema)             |
| prefix_block_ids | List(Int64) | nullable; ids of the prompt's leading KV blocks; equal ids = identical token    |
|                  |             | blocks (Mooncake `hash_ids`); each id covers `Trace.prefix_block_size` tokens  |
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

TRACE_SCHEMA: dict[str, pl.DataType] = {
    "timestamp_s": pl.Float64(),
    "model": pl.Utf8(),
    "service": pl.Utf8(),
    "request_tokens": pl.Int64(),
    "response_tokens": pl.Int64(),
    "failed": pl.Boolean(),
    "session_id": pl.Utf8(),
    "elapsed_s": pl.Float64(),
    "prefix_block_ids": pl.List(pl.Int64()),
}

SERVICES = ("conversation", "api")

#: Largest plausible time from the trace origin, seconds (~31.7 years); beyond it a timestamp is taken as
#: corrupt. The same bound as the workload table's `arrival_s` (`burstgpt.workload.schema.MAX_ARRIVAL_S`).
MAX_TIMESTAMP_S = 1e9

#: Largest plausible prompt or response length, tokens (100x the longest context windows in use).
MAX_TOKENS = 100_000_000


@dataclass
class LoadReport:
    """What loading a trace did. Counts are rows; `filtered_rows` is set once `filter_trace` has run."""

    rows_read: int
    rows: int
    invalid_rows: int = 0  # dropped by skip_invalid
    out_of_order_rows: int = 0  # rows found before an earlier timestamp, then sorted
    filtered_rows: int | None = None


@dataclass
class Trace:
    """A loaded trace.

    `origin` is the wall-clock instant of `timestamp_s == 0` when known (it gives hour of day and day of week
    their calendar meaning); when None, hour of day is `timestamp_s // 3600 % 24` and day 0 is taken as the
    first day of the week. `load_report` says what the loader did (rows read, rows dropped, rows re-sorted).
    `prefix_block_size` is the number of tokens each `prefix_block_ids` entry stands for (512 for Mooncake),
    None when the trace has no block ids.
    """

    frame: pl.DataFrame
    source: str
    format: str
    origin: datetime | None = None
    load_report: LoadReport | None = None
    prefix_block_size: int | None = None

    @property
    def num_rows(self) -> int:
        return self.frame.height
