"""Request records as JSON lines: appended one per request as each ends, read back into a Polars frame."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl

from burstgpt.errors import InputError
from burstgpt.records.schema import (
    REQUEST_RECORD_SCHEMA,
    RequestRecord,
    conform_request_records,
    upgrade_legacy_statuses,
)

try:  # orjson (optional) encodes a record ~5x faster than json: it is on the load generator's hot path
    import orjson

    def _json_line(obj: dict) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
except ImportError:  # pragma: no cover - depends on the environment
    def _json_line(obj: dict) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class RecordWriter:
    """Appends records to a JSONL file. Lines are written by `flush()` (the runner calls it twice a second
    and at the end), so a killed run loses at most the last half second and the file stays line-valid.

    `append=True` opens the file for appending (O_APPEND) instead of truncating it: several sender processes
    then share one file, and since each flush is one write() of whole lines, their lines never interleave."""

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        self._fd = os.open(self.path, flags, 0o666)
        self._lines: list[bytes] = []
        self.count = 0

    def write(self, record: RequestRecord) -> None:
        self._lines.append(_json_line(vars(record)))
        self.count += 1

    def flush(self) -> None:
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines.clear()
        view = memoryview(data)
        while view:  # a regular file takes it all in one write(); loop only for the rare short write
            view = view[os.write(self._fd, view):]

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1


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
