"""Reading and writing workload tables (Parquet or JSONL, chosen by file suffix)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from burstgpt.errors import InputError
from burstgpt.outputs import atomic_path
from burstgpt.tables import first_true_index
from burstgpt.workload.schema import WORKLOAD_SCHEMA, conform_workload, validate_workload

_REQUIRED = ("arrival_s", "input_tokens")


def write_workload(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write a workload atomically as Parquet (`.parquet`) or JSON lines (`.jsonl`/`.json`)."""
    path = Path(path)
    frame = conform_workload(frame)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            # Fixed settings (no statistics timestamps) keep the same seed byte-identical.
            frame.write_parquet(tmp, compression="zstd", statistics=False)
        elif path.suffix in (".jsonl", ".json", ".ndjson"):
            frame.write_ndjson(tmp)
        else:
            raise InputError(path, "unknown workload format: use a .parquet or .jsonl file name")
    return path


def read_workload(path: str | Path) -> pl.DataFrame:
    """Read a workload file and check it (`validate_workload`): required columns present, arrivals finite,
    non-negative and sorted."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    try:
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
        elif path.suffix in (".jsonl", ".json", ".ndjson"):
            frame = pl.read_ndjson(path, infer_schema_length=None)
        else:
            raise InputError(path, "unknown workload format: use a .parquet or .jsonl file")
    except InputError:
        raise
    except Exception as exc:  # polars raises several error types for unreadable files
        line = _first_bad_json_line(path) if path.suffix != ".parquet" else None
        raise InputError(path, f"cannot read workload: {str(exc).splitlines()[0]}", line=line) from None
    for name in _REQUIRED:
        if name not in frame.columns:
            raise InputError(path, "missing required column", column=name)
    for name in frame.columns:
        if name in WORKLOAD_SCHEMA:
            bad = _first_bad_cast(frame, name, WORKLOAD_SCHEMA[name])
            if bad is not None:
                raise InputError(path, f"not a valid {WORKLOAD_SCHEMA[name]}", line=bad + 1, column=name)
    return validate_workload(conform_workload(frame), path)


def _first_bad_json_line(path: Path) -> int | None:
    """1-based number of the first line that is not a strict JSON object (NaN and Infinity are not JSON)."""

    def refuse(constant: str) -> None:
        raise ValueError(constant)

    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                if not isinstance(json.loads(raw, parse_constant=refuse), dict):
                    return number
            except ValueError:
                return number
    return None


def _first_bad_cast(frame: pl.DataFrame, name: str, dtype: pl.DataType) -> int | None:
    column = frame[name]
    if column.dtype == dtype:
        return None
    cast = column.cast(dtype, strict=False)
    return first_true_index(cast.is_null() & column.is_not_null())


