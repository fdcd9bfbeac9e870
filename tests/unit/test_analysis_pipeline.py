"""`analyze_trace` draws the figures while the arrival fits finish (`characterise`'s `meanwhile`) and must write
exactly what the sequential `write_analysis(characterise(trace))` writes; `freed_memory_kept` keeps freed memory
only while its block runs."""

from __future__ import annotations

import ctypes
import json
import os
import re

import numpy as np
import polars as pl
import pytest

from burstgpt.analysis import characterise
from burstgpt.analysis.characterise import ARRIVAL_TABLES
from burstgpt.commands.analyze import freed_memory_kept
from burstgpt.report.trace_figures import ARRIVAL_FIGURES, analyze_trace, write_analysis
from burstgpt.workload.synthetic_trace import synthetic_burstgpt_trace


def _without_clock(content: bytes) -> bytes:
    """report.html states when it was written (to the minute); the two runs may straddle a minute."""
    return re.sub(rb"\d{4}-\d{2}-\d{2} \d{2}:\d{2}(:\d{2})? UTC", b"<time>", content)


@pytest.fixture(scope="module")
def trace():
    return synthetic_burstgpt_trace(days=1.5, seed=3, rate_scale=0.03)


def test_analyze_trace_writes_the_files_of_the_sequential_path(trace, tmp_path):
    sequential = write_analysis(characterise(trace, window_s=600), tmp_path / "sequential")
    _, pipelined = analyze_trace(trace, tmp_path / "pipelined", window_s=600)
    names = sorted(p.name for p in sequential.parent.iterdir())
    assert names == sorted(p.name for p in pipelined.parent.iterdir())
    assert {f"{name}.png" for name in ARRIVAL_FIGURES} <= set(names)  # the late figure is there too
    assert sum(name.endswith(".png") for name in names) >= 10
    for name in names:  # tables, PNGs, report.html and summary.json (its figure list in the same order)
        assert _without_clock((sequential.parent / name).read_bytes()) == \
            _without_clock((pipelined.parent / name).read_bytes()), name
    figures = json.loads(pipelined.read_text())["figures"]  # fig06 is drawn last but listed in its place
    assert figures.index("fig06_gamma_arrivals.png") == figures.index("fig05_burstiness.png") + 1


def test_meanwhile_sees_every_table_but_the_arrival_fits(trace):
    seen = {}

    def meanwhile(partial):
        seen.update(partial.tables())
        seen["arrival heights"] = [getattr(partial, name).height for name in ARRIVAL_TABLES]

    result = characterise(trace, window_s=600, meanwhile=meanwhile)
    assert seen.pop("arrival heights") == [0, 0, 0]
    final = result.tables()
    assert all(final[name].height > 0 for name in ARRIVAL_TABLES)
    assert set(seen) == set(final) - set(ARRIVAL_TABLES)
    plain = characterise(trace, window_s=600).tables()
    for name, table in final.items():
        assert table.equals(plain[name], null_equal=True), name
        if name in seen:
            assert seen[name].equals(table, null_equal=True), name
            # NaNs were already turned into nulls when meanwhile saw the table.
            assert not any(table[c].is_nan().any() for c in table.columns if table[c].dtype == pl.Float64)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_freed_memory_is_kept_inside_the_block_and_given_back_after():
    try:
        ctypes.CDLL("libc.so.6").mallopt  # noqa: B018
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    size = 256 << 20

    def touch_and_free() -> int:
        block = np.ones(size // 8)  # pages touched: resident
        del block
        return _rss_bytes()

    with freed_memory_kept():
        before = _rss_bytes()
        kept = touch_and_free() - before
    after_block = _rss_bytes() - before
    assert kept > size * 0.9  # freed, but kept for reuse
    assert after_block < size * 0.1  # given back on leaving the block
    # And outside the block a large block is returned to the system when freed, as glibc does by default.
    before = _rss_bytes()
    assert touch_and_free() - before < size * 0.1
