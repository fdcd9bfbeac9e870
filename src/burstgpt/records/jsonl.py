"""Request records as JSON lines: appended one per request as each ends, read back into a Polars frame."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from burstgpt.errors import InputError
from burstgpt.records.schema import (
    REQUEST_RECORD_SCHEMA,
    RequestRecord,
    conform_request_records,
    upgrade_legacy_statuses,
)


class RecordWriter:
    """Appends records to a JSONL file. Lines are flushed by `flush()` (the runner calls it twice a second
    and at the end), so a killed run loses at most the last half second and the file stays line-valid."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8")
        self.count = 0

    def write(self, record: RequestRecord) -> None:
        self._file.write(json.dumps(vars(record), separators=(",", ":")) + "\n")
        self.count += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_records_jsonl(path: str | Path) -> pl.DataFrame:
    """Read request records written as JSON lines; a torn last line (the writer was killed) is dropped."""
    path = Path(path)
    lines = path.read_bytes().splitlines()
    if lines and not lines[-1].rstrip().endswith(b"}"):
        lines = lines[:-1]
    if not lines:
        return pl.DataFrame(schema=REQUEST_RECORD_SCHEMA)
    try:
        frame = pl.read_ndjson(b"\n".join(lines), schema=REQUEST_RECORD_SCHEMA)
    except Exception as exc:  # polars raises several error types for bad JSON
        raise InputError(path, f"cannot read records: {str(exc).splitlines()[0]}") from None
    return upgrade_legacy_statuses(conform_request_records(frame))
