"""Reading and writing workload tables (Parquet or JSONL, chosen by file suffix)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from burstgpt.errors import InputError
from burstgpt.outputs import atomic_path
from burstgpt.workload.schema import WORKLOAD_SCHEMA, conform_workload

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
    """Read a workload file and check it: required columns present, arrivals non-negative and sorted."""
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
        raise InputError(path, f"cannot read workload: {str(exc).splitlines()[0]}") from None
    for name in _REQUIRED:
        if name not in frame.columns:
            raise InputError(path, "missing required column", column=name)
    for name in frame.columns:
        if name in WORKLOAD_SCHEMA:
            bad = _first_bad_cast(frame, name, WORKLOAD_SCHEMA[name])
            if bad is not None:
                raise InputError(path, f"not a valid {WORKLOAD_SCHEMA[name]}", line=bad + 1, column=name)
    frame = conform_workload(frame)
    for name in ("arrival_s", "input_tokens"):
        bad = _first_index(frame[name].is_null() | (frame[name] < 0))
        if bad is not None:
            raise InputError(path, "missing or negative value", line=bad + 1, column=name)
    if frame.height > 1 and not frame["arrival_s"].is_sorted():
        frame = frame.sort("arrival_s", maintain_order=True)
    return frame


def _first_bad_cast(frame: pl.DataFrame, name: str, dtype: pl.DataType) -> int | None:
    column = frame[name]
    if column.dtype == dtype:
        return None
    cast = column.cast(dtype, strict=False)
    return _first_index(cast.is_null() & column.is_not_null())


def _first_index(mask: pl.Series) -> int | None:
    idx = mask.arg_true()
    return int(idx[0]) if idx.len() else None
