"""Prefix reuse of traces with prompt block ids: LRU stack distances and hit-rate curves against a plain LRU
simulation, the seen-before fractions by hand, and `analyze` on the shared Mooncake trace."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from burstgpt.analysis import characterise, prefix_reuse_statistics, reuse_profile, stack_distances
from burstgpt.analysis.prefix_reuse import COLD
from burstgpt.cli import main
from burstgpt.report.trace_figures import write_analysis
from burstgpt.tables import conform_to_schema
from burstgpt.trace import TRACE_SCHEMA, Trace


def brute_force_lru(requests: list[list[int]], tokens: list[list[int]], cache_blocks: int) -> tuple[int, int, int]:
    """An LRU cache of `cache_blocks` blocks fed every block of every request in order: (block hits, prefix hits:
    hits on a request's leading run of cached blocks, tokens of those prefix hits)."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = prefix_hits = prefix_tokens = 0
    for blocks, sizes in zip(requests, tokens, strict=True):
        leading = True
        for block, size in zip(blocks, sizes, strict=True):
            hit = block in cache
            leading = leading and hit
            hits += hit
            prefix_hits += leading
            prefix_tokens += size if leading else 0
            if hit:
                cache.move_to_end(block)
            else:
                cache[block] = None
                if len(cache) > cache_blocks:
                    cache.popitem(last=False)
    return hits, prefix_hits, prefix_tokens


requests_strategy = st.lists(
    st.lists(st.integers(0, 12), min_size=1, max_size=6),  # small id range: reuse, and repeats inside a request
    min_size=1, max_size=14,
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(requests=requests_strategy, data=st.data())
def test_lru_hit_rate_curve_equals_brute_force_lru_for_every_cache_size(requests, data):
    tokens = [data.draw(st.lists(st.integers(1, 16), min_size=len(r), max_size=len(r))) for r in requests]
    uncovered = data.draw(st.integers(0, 20))  # prompt tokens no block id covers
    prompt_tokens = sum(map(sum, tokens)) + uncovered
    profile = reuse_profile(np.concatenate(requests), np.repeat(np.arange(len(requests)), list(map(len, requests))),
                            np.concatenate(tokens), prompt_tokens)
    accesses = sum(map(len, requests))
    assert profile.distinct_blocks == len(set().union(*requests))
    sizes = np.arange(0, profile.distinct_blocks + 3)  # up to beyond every distinct block
    rates = profile.hit_rates(sizes)
    for size in sizes:
        hits, prefix_hits, prefix_tokens = brute_force_lru(requests, tokens, int(size))
        assert rates["hit_rate"][size] == pytest.approx(hits / accesses, abs=1e-12)
        assert rates["prefix_hit_rate"][size] == pytest.approx(prefix_hits / accesses, abs=1e-12)
        assert rates["prefix_token_hit_rate"][size] == pytest.approx(prefix_tokens / prompt_tokens, abs=1e-12)


def test_stack_distances_equal_their_definition_on_long_streams():
    # Lengths around powers of two exercise the last, short group of every bit level.
    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 255, 256, 257, 1000, 3001):
        ids = rng.integers(0, max(n // 8, 2), size=n)
        expected = np.full(n, COLD, dtype=np.int64)
        last_seen: dict[int, int] = {}
        for i, block in enumerate(ids.tolist()):
            if block in last_seen:
                expected[i] = len(set(ids[last_seen[block] + 1:i].tolist()) - {block})
            last_seen[block] = i
        np.testing.assert_array_equal(stack_distances(ids), expected, err_msg=f"n={n}")


def trace_with_ids(rows: list[tuple[float, str, int, list[int] | None]], block_size: int | None = 4,
                   service: str = "conversation") -> Trace:
    """An in-memory trace of (timestamp_s, model, request_tokens, prefix block ids) rows."""
    frame = pl.DataFrame({
        "timestamp_s": [float(r[0]) for r in rows], "model": [r[1] for r in rows], "service": [service] * len(rows),
        "request_tokens": [r[2] for r in rows], "response_tokens": [10] * len(rows), "failed": [False] * len(rows),
        "prefix_block_ids": [r[3] for r in rows],
    }, schema_overrides={"prefix_block_ids": pl.List(pl.Int64)})
    return Trace(conform_to_schema(frame, TRACE_SCHEMA), "memory", "test", prefix_block_size=block_size)


# Blocks of 4 tokens. Seen before = the block occurred in an EARLIER request:
#   t=0   [1, 2, 3]  10 tokens (4, 4, 2)  nothing seen
#   t=10  [1, 2, 4]  12 tokens (4, 4, 4)  1, 2 seen (8 tokens), leading run 1, 2
#   t=50  None       (no ids: left out)
#   t=70  [5, 1]      5 tokens (4, 1)     1 seen (1 token), leading run empty
#   t=80  [4, 4]      8 tokens (4, 4)     both seen (8 tokens), leading run both
#   t=130 [6, 6]      9 tokens (4, 4; 1 uncovered)  nothing seen: the second 6 is in the same request
HAND_ROWS = [(0, "m", 10, [1, 2, 3]), (10, "m", 12, [1, 2, 4]), (50, "m", 7, None), (70, "m", 5, [5, 1]),
             (80, "m", 8, [4, 4]), (130, "m", 9, [6, 6])]


def test_seen_before_fractions_by_hand():
    reuse = prefix_reuse_statistics(trace_with_ids(HAND_ROWS).frame, 4, window_s=60)
    overall = reuse.summary.filter(pl.col("scope") == "all").row(0, named=True)
    assert overall["requests"] == 5
    assert overall["block_accesses"] == 12
    assert overall["distinct_blocks"] == 6
    assert overall["prompt_tokens"] == 44
    assert overall["seen_before_fraction"] == pytest.approx(5 / 12)
    assert overall["prefix_seen_before_fraction"] == pytest.approx(4 / 12)
    assert overall["seen_before_token_fraction"] == pytest.approx(17 / 44)
    assert overall["prefix_seen_before_token_fraction"] == pytest.approx(16 / 44)
    windows = reuse.windows.filter(pl.col("scope") == "all")
    assert windows["window_start_s"].to_list() == [0.0, 60.0, 120.0]
    assert windows["block_accesses"].to_list() == [6, 4, 2]
    assert windows["seen_before_blocks"].to_list() == [2, 3, 0]
    assert windows["seen_before_fraction"].to_list() == pytest.approx([2 / 6, 3 / 4, 0.0])
    # An unbounded per-block LRU also hits the second 6 (touched just before): 6 hits of 12, not 5.
    unbounded = reuse.curve.filter(pl.col("scope") == "all").row(-1, named=True)
    assert unbounded["cache_blocks"] == 6
    assert unbounded["cache_tokens"] == 24
    assert unbounded["hit_rate"] == pytest.approx(6 / 12)
    assert unbounded["prefix_hit_rate"] == pytest.approx(4 / 12)


def test_groups_have_their_own_cache_and_all_requests_share_one():
    rows = [(0, "A", 8, [1, 2]), (1, "B", 8, [1, 3]), (2, "B", 8, [1, 3])]
    reuse = prefix_reuse_statistics(trace_with_ids(rows).frame, 4, window_s=60)
    seen = {(r["scope"], r["model"]): r["seen_before_fraction"] for r in reuse.summary.iter_rows(named=True)}
    assert seen == {("group", "A"): 0.0, ("group", "B"): pytest.approx(2 / 4), ("all", None): pytest.approx(3 / 6)}
    section = reuse.to_dict()
    assert section["overall"]["block_accesses"] == 6
    assert [g["model"] for g in section["groups"]] == ["A", "B"]


def test_ids_without_block_size_leave_token_columns_null():
    reuse = prefix_reuse_statistics(trace_with_ids(HAND_ROWS, block_size=None).frame, None, window_s=60)
    overall = reuse.summary.filter(pl.col("scope") == "all").row(0, named=True)
    assert overall["seen_before_fraction"] == pytest.approx(5 / 12)
    assert overall["prompt_tokens"] is None and overall["seen_before_token_fraction"] is None
    assert reuse.curve["cache_tokens"].null_count() == reuse.curve.height
    assert reuse.curve["prefix_token_hit_rate"].null_count() == reuse.curve.height
    assert reuse.to_dict()["overall"]["hit_rate_at"][0]["prefix_token_hit_rate"] is None


def test_two_groups_write_the_figure_with_all_requests(tmp_path):
    rows = [(10 * i, "A" if i % 3 else "B", 40, [i % 5, 10 + i % 4, 20 + i]) for i in range(30)]
    result = characterise(trace_with_ids(rows), window_s=100)
    assert set(result.prefix_reuse_summary["scope"]) == {"group", "all"}
    summary = json.loads(write_analysis(result, tmp_path).read_text())
    assert "prefix_reuse.png" in summary["figures"]
    assert (tmp_path / "prefix_reuse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["prefix_reuse"]["overall"]["block_accesses"] == 90


def test_trace_without_ids_has_null_section_and_no_figure(tmp_path):
    rows = [(i * 7.0, "m", 100, None) for i in range(20)]
    result = characterise(trace_with_ids(rows, block_size=None), window_s=60)
    summary = json.loads(write_analysis(result, tmp_path).read_text())
    assert "prefix_reuse" in summary and summary["prefix_reuse"] is None
    assert not (tmp_path / "prefix_reuse.png").exists()
    assert not any(name.startswith("prefix") for name in summary["tables"])


def test_analyze_mooncake_writes_prefix_reuse_figure_and_section(tmp_path, capsys, mooncake_trace):
    outdir = tmp_path / "analysis"
    assert main(["analyze", str(mooncake_trace), "-o", str(outdir), "--window", "300"]) == 0
    summary = json.loads((outdir / "summary.json").read_text())
    assert "prefix_reuse.png" in summary["figures"]
    assert (outdir / "prefix_reuse.png").stat().st_size > 0
    assert "Prefix reuse" in capsys.readouterr().out

    # The same statistics straight from the JSONL file, in plain Python.
    records = [json.loads(line) for line in mooncake_trace.read_text().splitlines() if line.strip()]
    requests = [r["hash_ids"] for r in records if r.get("hash_ids")]
    first_request: dict[int, int] = {}
    seen = 0
    for index, blocks in enumerate(requests):
        seen += sum(first_request.get(b, index) < index for b in blocks)
        for block in blocks:
            first_request.setdefault(block, index)
    accesses = sum(map(len, requests))
    section = summary["prefix_reuse"]
    overall = section["overall"]
    assert section["block_size_tokens"] == 512
    assert overall["requests"] == len(requests)
    assert overall["block_accesses"] == accesses
    assert overall["distinct_blocks"] == len(first_request)
    assert overall["seen_before_fraction"] == pytest.approx(seen / accesses, abs=1e-12)
    smallest = overall["hit_rate_at"][0]
    assert smallest["cache_tokens"] == smallest["cache_blocks"] * 512 <= 100_000
    tokens = [[512] * len(blocks) for blocks in requests]  # token weights are not checked here
    hits, prefix_hits, _ = brute_force_lru(requests, tokens, smallest["cache_blocks"])
    assert smallest["hit_rate"] == pytest.approx(hits / accesses, abs=1e-12)
    assert smallest["prefix_hit_rate"] == pytest.approx(prefix_hits / accesses, abs=1e-12)

    windows = pl.read_csv(outdir / "prefix_reuse_windows.csv")
    assert windows["block_accesses"].sum() == 2 * accesses  # the group's rows and the all-requests rows
    assert (windows["window_end_s"] - windows["window_start_s"] == 300).all()
    curve = pl.read_csv(outdir / "prefix_hit_rate_curve.csv").filter(pl.col("scope") == "all")
    assert (curve["hit_rate"].diff().drop_nulls() >= 0).all()
    assert curve["cache_blocks"][-1] == overall["distinct_blocks"]
