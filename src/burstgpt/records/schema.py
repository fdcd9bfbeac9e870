"""Per-request records and server metrics: the schemas written by both the load generator (`client`) and the
simulator (`sim`), and read by `metrics` and `report`.

All times are seconds since the run's start (the instant request schedule time 0 refers to).

| column              | dtype        | meaning                                                                  |
|---------------------|--------------|--------------------------------------------------------------------------|
| request_id          | Int64        | the workload's request_id                                                |
| model               | Utf8         | model name sent / simulated                                              |
| service             | Utf8         | `conversation` or `api` (from the workload), nullable                    |
| scheduled_s         | Float64      | when the request was due to be sent (the workload's arrival_s; a later  |
|                     |              | turn of a session: its predecessor's end_s plus its think time)         |
| sent_s              | Float64      | when it was actually sent (simulator: arrival time); null if never sent |
| first_scheduled_s   | Float64      | simulator only: first time the engine scheduled it; null for the client  |
| first_token_s       | Float64      | when the first output token arrived; null if none did                    |
| end_s               | Float64      | when the request ended (success, failure or cancellation)               |
| input_tokens        | Int64        | prompt tokens (server `usage` when given, else counted)                  |
| output_tokens       | Int64        | completion tokens received (server `usage` when given, else counted)     |
| status              | Utf8         | `ok`, `failed`, `cancelled` (sent, stopped in flight) or `not_sent`      |
| error_class         | Utf8         | null unless failed; then one of ERROR_CLASSES                            |
| error_message       | Utf8         | short human-readable message, nullable                                   |
| http_status         | Int64        | HTTP status code, nullable                                               |
| bytes_received      | Int64        | response bytes received (0 for the simulator)                            |
| preemptions         | Int64        | simulator only: times the request was preempted; null for the client     |
| chunk_times_s       | List(Float64)| optional: arrival time of every streamed chunk; null when not recorded   |
| session_id          | Utf8         | the workload's session_id, nullable                                      |
| turn                | Int64        | 0-based turn within session_id (multi-turn replay), nullable             |
| cached_prompt_tokens| Int64        | prompt tokens found in the prefix cache when first scheduled (vLLM's     |
|                     |              | usage.prompt_tokens_details.cached_tokens); simulator: null if never     |
|                     |              | scheduled; client: null unless the server reports it                     |
| worker              | Int64        | client: index of the sender process that sent it (`bench --workers`),    |
|                     |              | 0 for a single sender; null for the simulator                            |

`sent_s` is null exactly for `not_sent` records, so `sent = ok + failed + cancelled` and
`total = sent + not_sent` hold for every complete record table.

Server metrics: the serving engine's own state over time, on the records' clock. Written by the load
generator (scraped from Prometheus `/metrics`) and by the simulator (from its engine steps); read by the
metrics windows and the run figures.

| column                   | dtype   | meaning                                                                 |
|--------------------------|---------|-------------------------------------------------------------------------|
| time_s                   | Float64 | seconds since the run's start (same clock as the request records)       |
| kv_cache_usage_perc      | Float64 | KV-cache usage as a fraction, 0-1 (despite the vLLM name)               |
| num_requests_running     | Float64 | requests in the running batch                                           |
| num_requests_waiting     | Float64 | requests queued, not yet scheduled                                      |
| num_preemptions_total    | Float64 | cumulative preemptions since the server started (a counter)             |
| prompt_tokens_total      | Float64 | cumulative prompt tokens processed (a counter)                          |
| generation_tokens_total  | Float64 | cumulative generated tokens (a counter)                                 |

Every column but `time_s` is nullable (null where the server does not expose it). Counters are cumulative as
the server reports them; take differences for rates. Extra engine-specific columns may follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import polars as pl

from burstgpt.tables import conform_to_schema

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_CANCELLED = "cancelled"  # sent, then stopped in flight because the run stopped
STATUS_NOT_SENT = "not_sent"  # never sent: the run stopped first
STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_CANCELLED, STATUS_NOT_SENT)

#: Failure classes. Every failed request carries exactly one.
ERROR_CLASSES = (
    "timeout",  # total request time exceeded (client), or aborted by the server's timeout (sim)
    "ttft_timeout",  # no first token within the time-to-first-token timeout
    "connection_refused",
    "connection_reset",  # connection dropped/reset, including mid-stream
    "http_429",
    "http_4xx",
    "http_5xx",
    "stream_broken",  # stream ended before [DONE] / usage without a connection error
    "stream_error_event",  # an error object arrived inside the stream
    "malformed_response",  # response not parseable as the expected JSON / SSE
    "rejected",  # refused by the server's queue limit (sim)
    "client_limit",  # the client's own limit, not the server: out of file descriptors or local ports
    "other",
)

_MESSAGE_LIMIT = 300  # characters of an error text kept in error_message


def _column(dtype: pl.DataType, **default) -> field:
    """A record field and its Polars dtype (the schema is derived from these fields)."""
    return field(metadata={"dtype": dtype}, **default)


@dataclass
class RequestRecord:
    """One request's outcome, one row of `REQUEST_RECORD_SCHEMA` (derived from these fields; see the module
    table for meanings). A new record is `not_sent` until the client sends it."""

    request_id: int = _column(pl.Int64())
    model: str | None = _column(pl.Utf8())
    service: str | None = _column(pl.Utf8())
    scheduled_s: float = _column(pl.Float64())
    sent_s: float | None = _column(pl.Float64(), default=None)
    first_scheduled_s: float | None = _column(pl.Float64(), default=None)
    first_token_s: float | None = _column(pl.Float64(), default=None)
    end_s: float | None = _column(pl.Float64(), default=None)
    input_tokens: int | None = _column(pl.Int64(), default=None)
    output_tokens: int | None = _column(pl.Int64(), default=None)
    status: str = _column(pl.Utf8(), default=STATUS_NOT_SENT)
    error_class: str | None = _column(pl.Utf8(), default=None)
    error_message: str | None = _column(pl.Utf8(), default=None)
    http_status: int | None = _column(pl.Int64(), default=None)
    bytes_received: int = _column(pl.Int64(), default=0)
    preemptions: int | None = _column(pl.Int64(), default=None)
    chunk_times_s: list[float] | None = _column(pl.List(pl.Float64()), default=None)
    session_id: str | None = _column(pl.Utf8(), default=None)
    turn: int | None = _column(pl.Int64(), default=None)
    cached_prompt_tokens: int | None = _column(pl.Int64(), default=None)
    worker: int | None = _column(pl.Int64(), default=None)

    def fail(self, error_class: str, message: str) -> None:
        """Mark the request failed with one of ERROR_CLASSES and a short message."""
        self.status = STATUS_FAILED
        self.error_class = error_class
        self.error_message = message[:_MESSAGE_LIMIT]


#: Column -> dtype of a request-records table: the fields of `RequestRecord`, in order.
REQUEST_RECORD_SCHEMA: dict[str, pl.DataType] = {f.name: f.metadata["dtype"] for f in fields(RequestRecord)}

SERVER_METRICS_SCHEMA: dict[str, pl.DataType] = {
    "time_s": pl.Float64(),
    "kv_cache_usage_perc": pl.Float64(),
    "num_requests_running": pl.Float64(),
    "num_requests_waiting": pl.Float64(),
    "num_preemptions_total": pl.Float64(),
    "prompt_tokens_total": pl.Float64(),
    "generation_tokens_total": pl.Float64(),
}

#: Gauge columns (averaged over a window) and counter columns (differenced over a window).
SERVER_GAUGES = ("kv_cache_usage_perc", "num_requests_running", "num_requests_waiting")
SERVER_COUNTERS = ("num_preemptions_total", "prompt_tokens_total", "generation_tokens_total")


def empty_request_records() -> pl.DataFrame:
    """A zero-row frame with the request-record schema."""
    return pl.DataFrame(schema=REQUEST_RECORD_SCHEMA)


def conform_request_records(frame: pl.DataFrame) -> pl.DataFrame:
    """Add any missing record columns as nulls, cast to the schema and order the columns."""
    return conform_to_schema(frame, REQUEST_RECORD_SCHEMA)


def upgrade_legacy_statuses(frame: pl.DataFrame) -> pl.DataFrame:
    """Records written before `not_sent` existed called never-sent requests `cancelled` (with a null sent_s):
    give them their own status, as the client now writes it."""
    legacy = (pl.col("status") == STATUS_CANCELLED) & pl.col("sent_s").is_null()
    return frame.with_columns(pl.when(legacy).then(pl.lit(STATUS_NOT_SENT)).otherwise(pl.col("status")).alias("status"))


def conform_server_metrics(frame: pl.DataFrame) -> pl.DataFrame:
    """Server metrics in the standard layout (extra columns kept after it), sorted by time_s."""
    return conform_to_schema(frame, SERVER_METRICS_SCHEMA, keep_extra=True).sort("time_s")


def empty_server_metrics() -> pl.DataFrame:
    """A zero-row server-metrics frame."""
    return pl.DataFrame(schema=SERVER_METRICS_SCHEMA)
