"""Records: what a run produces, as types and files. One package for the request-record and server-metrics
schemas (`schema`), request records as JSON lines (`jsonl`), the typed run summary (`summary`) and the run
directory's files (`rundir`).

Layering: trace -> analysis -> workload -> client | sim -> **records** -> metrics -> report. The client and the
simulator write records; `burstgpt.metrics` computes R, L and P from them; `burstgpt.report` assembles the
`RunSummary`, the time series and the figures and writes them through `rundir`. So this package only defines
types and does I/O: it imports nothing from client, sim, metrics or report (a test checks this), only the
bottom utilities (`errors`, `outputs`, `tables`).
"""

from burstgpt.records.jsonl import RecordWriter, read_records_jsonl
from burstgpt.records.rundir import (
    CONFIG_FILE,
    RECORDS_JSONL,
    RECORDS_PARQUET,
    RUN_FILES,
    SERVER_METRICS_FILE,
    SUMMARY_FILE,
    TIMELINE_FIGURE,
    TIMESERIES_FILE,
    WORKLOAD_FILE,
    RunDirectory,
    new_run_id,
    prepare_run_directory,
    read_run_directory,
    remove_run_files,
    write_run_summary,
    write_run_tables,
)
from burstgpt.records.schema import (
    ERROR_CLASSES,
    REQUEST_RECORD_SCHEMA,
    SERVER_COUNTERS,
    SERVER_GAUGES,
    SERVER_METRICS_SCHEMA,
    STATUS_CANCELLED,
    STATUS_FAILED,
    STATUS_NOT_SENT,
    STATUS_OK,
    STATUSES,
    RequestRecord,
    conform_request_records,
    conform_server_metrics,
    empty_request_records,
    empty_server_metrics,
)
from burstgpt.records.summary import (
    PRODUCERS,
    SUMMARY_FORMAT,
    Accounting,
    Goodput,
    RunFacts,
    RunSummary,
    Schedule,
    ServerSummary,
    Stats,
    Throughput,
)
from burstgpt.tables import conform_to_schema

__all__ = [
    "CONFIG_FILE",
    "ERROR_CLASSES",
    "PRODUCERS",
    "RECORDS_JSONL",
    "RECORDS_PARQUET",
    "REQUEST_RECORD_SCHEMA",
    "RUN_FILES",
    "SERVER_COUNTERS",
    "SERVER_GAUGES",
    "SERVER_METRICS_FILE",
    "SERVER_METRICS_SCHEMA",
    "STATUSES",
    "STATUS_CANCELLED",
    "STATUS_FAILED",
    "STATUS_NOT_SENT",
    "STATUS_OK",
    "SUMMARY_FILE",
    "SUMMARY_FORMAT",
    "TIMELINE_FIGURE",
    "TIMESERIES_FILE",
    "WORKLOAD_FILE",
    "Accounting",
    "Goodput",
    "RecordWriter",
    "RequestRecord",
    "RunDirectory",
    "RunFacts",
    "RunSummary",
    "Schedule",
    "ServerSummary",
    "Stats",
    "Throughput",
    "conform_request_records",
    "conform_server_metrics",
    "conform_to_schema",
    "empty_request_records",
    "empty_server_metrics",
    "new_run_id",
    "prepare_run_directory",
    "read_records_jsonl",
    "read_run_directory",
    "remove_run_files",
    "write_run_summary",
    "write_run_tables",
]
