"""Table helpers shared by every part's schema module (kept at the bottom of the import graph)."""

from __future__ import annotations

import polars as pl


def conform_to_schema(frame: pl.DataFrame, schema: dict[str, pl.DataType], *, keep_extra: bool = False) -> pl.DataFrame:
    """Add the schema's missing columns as nulls, cast to the schema and put its columns first, in order.

    Other columns are dropped, or kept after the schema's when `keep_extra`.
    """
    exprs = [
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in schema.items()
    ]
    extra = [name for name in frame.columns if name not in schema] if keep_extra else []
    return frame.select(exprs + extra)


def first_true_index(mask: pl.Series) -> int | None:
    """Row index of the first true value of a boolean series, or None."""
    idx = mask.fill_null(False).arg_true()
    return int(idx[0]) if idx.len() else None
