"""`workload inspect` on workloads with sessions and shared prefixes: statistics against brute-force counts,
the turns-per-session table, and the CLI's printout and figures."""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
import pytest

from burstgpt.cli import main
from burstgpt.workload.generate import assemble_workload
from burstgpt.workload.inspect import prefix_stats, session_stats, session_turns, workload_stats
from burstgpt.workload.io import write_workload
from burstgpt.workload.prefixes import PrefixSharing, Sessions, SystemPrompts
from burstgpt.workload.spec import Responses, ScheduledArrivals, WorkloadSpec, build_workload


@pytest.fixture(scope="module")
def chat() -> pl.DataFrame:
    return build_workload(WorkloadSpec(
        ScheduledArrivals(alpha=0.5, rate_rps=4.0), num_requests=1500, seed=3,
        responses=Responses(mode="fixed", output_tokens=40),
        prefixes=PrefixSharing(SystemPrompts(fraction=0.6, pool_size=5, tokens=100),
                               Sessions(mean_turns=3, think_time_s=5.0, max_context_tokens=3000), block_size=32)))


def test_session_and_prefix_stats_match_brute_force_counts(chat):
    rows = chat.to_dicts()
    turns = Counter(r["session_id"] for r in rows)
    think = [r["think_time_s"] for r in rows if r["think_time_s"] is not None]
    stats = session_stats(chat)
    assert stats["sessions"] == len(turns) and stats["turns_per_session_max"] == max(turns.values())
    assert stats["turns_per_session_mean"] == pytest.approx(len(rows) / len(turns))
    assert stats["multi_turn_sessions"] == pytest.approx(sum(t > 1 for t in turns.values()) / len(turns))
    assert stats["think_times_set"] == len(think) > 0
    assert stats["think_time_s_p50"] == pytest.approx(np.median(think))
    # Prefixes: a block access is seen before when its id occurred in an earlier request.
    first_request: dict[int, int] = {}
    accesses = seen = covered = 0
    for i, r in enumerate(rows):
        for block in r["prefix_block_ids"] or []:
            first_request.setdefault(block, i)
            accesses += 1
            seen += first_request[block] < i
        covered += min(len(r["prefix_block_ids"] or []) * (r["prefix_block_size"] or 0), r["input_tokens"])
    prefixes = prefix_stats(chat)
    assert prefixes["with_prefix_ids"] == pytest.approx(np.mean([bool(r["prefix_block_ids"]) for r in rows]))
    assert prefixes["prefix_block_size"] == "32"
    assert prefixes["prefix_unique_blocks"] == len(first_request)
    assert prefixes["prefix_blocks_seen_before"] == pytest.approx(seen / accesses)
    assert prefixes["prefix_token_share"] == pytest.approx(covered / sum(r["input_tokens"] for r in rows))
    assert 0.3 < prefixes["prefix_blocks_seen_before"] < 1  # sessions and system prompts do repeat blocks


def test_seen_before_counts_blocks_of_earlier_requests_only():
    frame = assemble_workload(np.arange(4.0), np.full(4, 100), prefix_block_ids=pl.Series(
        [[5, 5, 1], [1, 3], [3, 3], None], dtype=pl.List(pl.Int64)), prefix_block_size=16)
    stats = prefix_stats(frame)
    # r0: 5, 5 (repeated within its first request: not seen), 1; r1: 1 seen, 3; r2: 3, 3 both seen.
    assert stats["prefix_blocks_seen_before"] == pytest.approx(3 / 7)
    assert stats["prefix_unique_blocks"] == 3 and stats["with_prefix_ids"] == pytest.approx(0.75)


def test_turns_per_session_table_buckets_the_tail(chat):
    table = session_turns(chat, max_turns=4)
    counts = Counter(Counter(chat["session_id"].to_list()).values())
    expected = [counts[t] for t in (1, 2, 3)] + [sum(c for t, c in counts.items() if t >= 4)]
    assert table["turns"].to_list() == ["1", "2", "3", ">=4"] and table["sessions"].to_list() == expected
    assert table["share"].sum() == pytest.approx(1.0)


def test_a_workload_without_sessions_or_ids_has_no_such_stats():
    frame = assemble_workload(np.arange(50.0), np.full(50, 10))
    stats = workload_stats(frame)
    assert not any(k.startswith(("session", "turns", "think", "prefix", "with_prefix")) for k in stats)
    assert session_turns(frame).height == 0


def test_cli_inspect_prints_sessions_and_prefixes_and_draws_them(chat, tmp_path, capsys):
    path = write_workload(chat, tmp_path / "chat.parquet")
    assert main(["workload", "inspect", str(path), "--plots", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    for key in ("sessions", "turns_per_session_mean", "think_time_s_p50", "prefix_blocks_seen_before",
                "turns per session"):
        assert key in out
    assert {p.name for p in (tmp_path / "plots").iterdir()} >= {"sessions.png", "prefixes.png"}
    plain = write_workload(assemble_workload(np.arange(30.0), np.full(30, 10)), tmp_path / "plain.parquet")
    assert main(["workload", "inspect", str(plain), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "turns per session" not in out and "prefix_blocks_seen_before" not in out
