"""Generated prefix sharing (system prompts, multi-turn sessions), its fits, and recorded sessions on replay."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from burstgpt.analysis.fits import fit_zipf
from burstgpt.cli import main
from burstgpt.errors import BurstGPTError
from burstgpt.trace import load_trace
from burstgpt.workload.generate import assemble_workload
from burstgpt.workload.io import read_workload
from burstgpt.workload.prefixes import (
    PrefixSharing,
    Sessions,
    SystemPrompts,
    apply_prefix_sharing,
    fit_sessions,
    fit_system_prompts,
)
from burstgpt.workload.schema import validate_workload
from burstgpt.workload.spec import Prompts, ReplayedTrace, ScheduledArrivals, WorkloadSpec, build_workload


def _base(n: int, seed: int = 0, output: int | None = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(0.1, n))
    own = rng.integers(1, 300, n)
    out = None if output is None else np.full(n, output)
    return assemble_workload(arrival, own, output_tokens=out, max_output_tokens=1000)


def write_burstgpt8(path, sessions: int, seed: int, mean_turns: float, think_median_s: float, think_sigma: float):
    """A BurstGPT 8-column CSV of `sessions` conversations: geometric turns, log-normal think times between a
    turn's end (timestamp + elapsed time) and the next turn. Returns the rows written (a frame)."""
    rng = np.random.default_rng(seed)
    turns = rng.geometric(1 / mean_turns, sessions)
    session = np.repeat(np.arange(sessions), turns)
    turn = np.concatenate([np.arange(t) for t in turns])
    elapsed = rng.uniform(0.5, 3.0, session.size)
    think = rng.lognormal(np.log(think_median_s), think_sigma, session.size)
    starts = rng.uniform(0, 5000, sessions)
    timestamp = np.empty(session.size)
    for s in range(sessions):  # a test fixture: the loop states the recurrence plainly
        rows = np.flatnonzero(session == s)
        t = starts[s]
        for r in rows:
            timestamp[r] = t
            t += elapsed[r] + think[r]
    frame = pl.DataFrame({
        "Timestamp": np.round(timestamp, 3), "Session ID": [f"conv-{s}" for s in session],
        "Elapsed time": np.round(elapsed, 3), "Model": "ChatGPT", "Request tokens": rng.integers(10, 500, session.size),
        "Response tokens": rng.integers(1, 300, session.size), "Total tokens": 0, "Log Type": "Conversation log",
        "_turn": turn, "_think": think,
    }).sort("Timestamp")
    frame.drop("_turn", "_think").write_csv(path)
    return frame


def test_system_prompts_are_shared_whole_blocks_with_zipf_popularity():
    base = _base(20_000)
    sharing = PrefixSharing(SystemPrompts(fraction=0.3, pool_size=8, tokens=100, popularity=1.2), block_size=16)
    frame = validate_workload(apply_prefix_sharing(base, sharing, seed=3))
    assert frame["arrival_s"].to_list() == base["arrival_s"].to_list()  # no sessions: the timeline is kept
    has = frame["prefix_block_ids"].is_not_null()
    assert abs(has.mean() - 0.3) < 0.02
    blocks = 7  # 100 tokens round up to 7 blocks of 16
    assert set(frame.filter(has)["prefix_block_ids"].list.len()) == {blocks}
    added = (frame["input_tokens"] - base["input_tokens"]).to_numpy()
    assert set(added[has.to_numpy()]) == {blocks * 16} and set(added[~has.to_numpy()]) == {0}
    # Ids are the pool's prompts: block b of prompt j is j * 7 + b; popularity follows the Zipf exponent.
    first = frame.filter(has)["prefix_block_ids"].list.first().to_numpy()
    assert set(first % blocks) == {0} and set(first // blocks) <= set(range(8))
    counts = np.sort(np.bincount(first // blocks, minlength=8))[::-1]
    ranks = np.repeat(np.arange(1, 9), counts)
    assert abs(fit_zipf(ranks, 1, 8).theta - 1.2) < 0.1
    # Deterministic with the seed; another seed changes the draw.
    assert apply_prefix_sharing(base, sharing, seed=3).equals(frame)
    assert not apply_prefix_sharing(base, sharing, seed=4).equals(frame)


def test_sessions_extend_the_previous_prompt_and_answer():
    base = _base(6_000, output=7)
    sharing = PrefixSharing(SystemPrompts(fraction=0.5, pool_size=4, tokens=32), Sessions(mean_turns=4,
                            think_time_s=2.0, think_time_sigma=0.5), block_size=16)
    frame = validate_workload(apply_prefix_sharing(base, sharing, seed=1))
    assert frame.height == base.height and frame["request_id"].to_list() == list(range(frame.height))
    turns = frame.group_by("session_id").agg(pl.len(), pl.col("turn").sort())
    assert abs(turns["len"].mean() - 4) < 0.25
    assert all(t == list(range(len(t))) for t in turns["turn"].to_list())
    ordered = frame.sort("session_id", "turn")
    same = pl.col("session_id") == pl.col("session_id").shift(1)
    later = ordered.with_columns(
        pl.col("prefix_block_ids").shift(1).alias("previous_ids"),
        pl.col("input_tokens").shift(1).alias("previous_input"),
        pl.col("output_tokens").shift(1).alias("previous_output"),
        (pl.col("arrival_s") - pl.col("arrival_s").shift(1)).alias("gap_s"),
    ).filter(same)
    assert later.height > 3000
    # Turn k's prompt = turn k-1's prompt + its answer + a new message (one of the drawn lengths, >= 1).
    new_message = later["input_tokens"] - later["previous_input"] - later["previous_output"]
    assert new_message.min() >= 1 and set(new_message.to_list()) <= set(base["input_tokens"].to_list())
    # ... so its ids start with all of turn k-1's ids (a prefix cache sees the reuse).
    extends = later.select(
        (pl.col("prefix_block_ids").list.head(pl.col("previous_ids").list.len()) == pl.col("previous_ids")).all())
    assert extends.item()
    # Think time = arrival gap between turns; log-normal with the given median and sigma.
    assert np.allclose(later["gap_s"].to_numpy(), later["think_time_s"].to_numpy())
    log_think = np.log(later["think_time_s"].to_numpy())
    assert abs(np.exp(np.median(log_think)) - 2.0) < 0.1 and abs(log_think.std() - 0.5) < 0.03
    assert frame.filter(pl.col("turn") == 0)["think_time_s"].null_count() == frame.filter(pl.col("turn") == 0).height
    # Sessions share only system prompt blocks: their own block ids are disjoint.
    own = ordered.with_columns(pl.col("prefix_block_ids").list.eval(pl.element().filter(pl.element() >= 4 * 2)))
    owners = own.explode("prefix_block_ids").drop_nulls("prefix_block_ids").group_by("prefix_block_ids").agg(
        pl.col("session_id").n_unique())
    assert owners["session_id"].max() == 1


def test_sessions_respect_the_duration_and_left_to_the_model_answers_are_noted():
    base = _base(2_000, output=None)
    notes: list[str] = []
    frame = apply_prefix_sharing(base, PrefixSharing(sessions=Sessions(mean_turns=3, think_time_s=30)), seed=0,
                                 duration_s=150.0, notes=notes)
    assert frame["arrival_s"].max() < 150.0 and frame.height < base.height
    assert any("left to the model" in n for n in notes)


def test_spec_round_trips_and_the_cli_writes_sessions(tmp_path):
    spec = WorkloadSpec(ScheduledArrivals(rate_rps=5.0), num_requests=300, seed=2,
                        prefixes=PrefixSharing(SystemPrompts(fraction=0.4), Sessions(mean_turns=2.5), block_size=32))
    assert WorkloadSpec.from_dict(spec.to_dict()) == spec
    frame = build_workload(spec)
    out = tmp_path / "w.parquet"
    assert main(["workload", "generate", "--rate", "5", "--num-requests", "300", "--seed", "2",
                 "--system-prompts", "0.4", "--sessions", "2.5", "--prefix-block-size", "32", "-o", str(out)]) == 0
    assert read_workload(out).equals(frame)
    assert frame["turn"].max() >= 2 and frame["prefix_block_size"].drop_nulls().unique().to_list() == [32]


@pytest.mark.parametrize(("flags", "message"), [
    (["--system-prompts", "1.5"], "--system-prompts must be a fraction"),
    (["--sessions", "0.5"], "--sessions must be a mean number of turns >= 1"),
    (["--sessions", "2", "--prompts", "synthetic"], "drop --prompts"),
])
def test_bad_prefix_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    status = main(["workload", "generate", "--rate", "5", "--num-requests", "50", *flags,
                   "-o", str(tmp_path / "w.parquet")])
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w.parquet").exists()


def test_system_prompts_fitted_from_mooncake_match_a_brute_force_count(mooncake_trace):
    trace = load_trace(mooncake_trace)
    fitted = fit_system_prompts(trace)
    ids = trace.frame["prefix_block_ids"].to_list()
    uses: dict[int, int] = {}
    for row in ids:
        for h in row:
            uses[h] = uses.get(h, 0) + 1
    shared_lengths, first_ids = [], []
    for row in ids:
        k = 0
        while k < len(row) and uses[row[k]] > 1:
            k += 1
        if k:
            shared_lengths.append(k)
            first_ids.append(row[0])
    assert fitted.fraction == pytest.approx(len(shared_lengths) / len(ids))
    assert fitted.pool_size == len(set(first_ids))
    assert fitted.tokens == round(np.median(shared_lengths) * 512)
    assert 0 <= fitted.popularity < 5
    # A fitted workload then shares prefixes in about the same share of requests.
    frame = apply_prefix_sharing(_base(5_000), PrefixSharing(trace=str(mooncake_trace)), seed=0)
    assert abs(frame["prefix_block_ids"].is_not_null().mean() - fitted.fraction) < 0.03


def test_sessions_fitted_from_a_burstgpt_8_column_trace(tmp_path):
    path = tmp_path / "burstgpt8.csv"
    write_burstgpt8(path, sessions=3000, seed=5, mean_turns=3.5, think_median_s=20.0, think_sigma=0.8)
    fitted = fit_sessions(load_trace(path))
    assert abs(fitted.mean_turns - 3.5) / 3.5 < 0.05
    assert abs(fitted.think_time_s - 20.0) / 20.0 < 0.1 and abs(fitted.think_time_sigma - 0.8) < 0.05
    # Fitted values fill what is not set by hand; a hand-set value wins.
    frame = apply_prefix_sharing(_base(4_000), PrefixSharing(sessions=Sessions(think_time_s=1.0), trace=str(path)),
                                 seed=0)
    think = frame["think_time_s"].drop_nulls().to_numpy()
    assert abs(np.exp(np.median(np.log(think))) - 1.0) < 0.1
    assert abs(frame.group_by("session_id").len()["len"].mean() - fitted.mean_turns) < 0.25


def test_replayed_sessions_keep_turn_order_and_think_times(tmp_path):
    path = tmp_path / "burstgpt8.csv"
    rows = write_burstgpt8(path, sessions=40, seed=1, mean_turns=3, think_median_s=10.0, think_sigma=0.5)
    frame = build_workload(WorkloadSpec(ReplayedTrace(str(path), scale=4.0)))
    assert frame.height == rows.height
    # Brute force from the written file: turn = rank in the session, think = (send - previous end) / scale.
    expected_turn, expected_think, last_end = [], [], {}
    seen: dict[str, int] = {}
    for r in rows.iter_rows(named=True):
        s = r["Session ID"]
        expected_turn.append(seen.get(s, 0))
        expected_think.append(None if s not in last_end else max(r["Timestamp"] - last_end[s], 0.0) / 4.0)
        seen[s] = seen.get(s, 0) + 1
        last_end[s] = r["Timestamp"] + r["Elapsed time"]
    assert frame["turn"].to_list() == expected_turn
    got = frame["think_time_s"].to_list()
    assert [g is None for g in got] == [e is None for e in expected_think]
    assert np.allclose([g for g in got if g is not None], [e for e in expected_think if e is not None])
    assert frame["session_id"].to_list() == rows["Session ID"].to_list()
    with pytest.raises(BurstGPTError, match="keeps its own sessions"):
        build_workload(WorkloadSpec(ReplayedTrace(str(path)), prefixes=PrefixSharing(sessions=Sessions())))


def test_prefix_sharing_needs_synthetic_prompts_and_no_trace_ids(mooncake_trace):
    with pytest.raises(BurstGPTError, match="already has prefix block ids"):
        build_workload(WorkloadSpec(ReplayedTrace(str(mooncake_trace)), num_requests=20,
                                    prefixes=PrefixSharing(SystemPrompts(fraction=0.5))))
    with pytest.raises(BurstGPTError, match="drop --prompts"):
        build_workload(WorkloadSpec(ScheduledArrivals(rate_rps=1.0), num_requests=20, prompts=Prompts("synthetic"),
                                    prefixes=PrefixSharing(SystemPrompts(fraction=0.5))))


def test_a_turn_that_would_overflow_the_context_starts_a_new_session():
    base = _base(5_000, output=50)
    uncapped = apply_prefix_sharing(base, PrefixSharing(sessions=Sessions(mean_turns=8)), seed=2)
    assert uncapped["input_tokens"].max() > 1500
    capped = validate_workload(apply_prefix_sharing(
        base, PrefixSharing(SystemPrompts(fraction=0.5, tokens=128), Sessions(mean_turns=8, max_context_tokens=1500)),
        seed=2))
    assert capped["input_tokens"].max() <= 1500 and capped.height == base.height
    assert capped["session_id"].n_unique() > uncapped["session_id"].n_unique()
    # Split sessions are still conversations: every later turn extends its predecessor's prompt.
    later = capped.sort("session_id", "turn").with_columns(
        pl.col("input_tokens").shift(1).over("session_id").alias("previous")).filter(pl.col("turn") > 0)
    assert (later["input_tokens"] > later["previous"]).all()


@pytest.mark.parametrize(("column", "values"), [("turn", [0, -1, None]), ("think_time_s", [None, 1.0, float("nan")]),
                                                ("think_time_s", [None, -0.5, 2.0])])
def test_bad_turns_and_think_times_are_refused_with_row_and_column(column, values):
    from burstgpt.errors import InputError

    frame = _base(3).with_columns(pl.Series(column, values, dtype=pl.Float64 if column == "think_time_s" else pl.Int64))
    with pytest.raises(InputError) as caught:
        validate_workload(frame, "w.parquet")
    bad_row = next(i for i, v in enumerate(values) if v is not None and (v != v or v < 0))
    assert (caught.value.column, caught.value.line) == (column, bad_row + 1)


def pinned_base() -> pl.DataFrame:
    """400 requests: exponential gaps, own messages of 1-299 tokens, answers of 0-49 tokens or left to the
    model (about one in six)."""
    rng = np.random.default_rng(7)
    arrival = np.cumsum(rng.exponential(0.2, 400))
    return assemble_workload(arrival, rng.integers(1, 300, 400), output_tokens=rng.integers(-10, 50, 400),
                             max_output_tokens=1000)


#: Seeded cases whose output tests/data/prefix_sharing/<name>.parquet pins (written by the implementation
#: before the flat-array rewrite of `apply_prefix_sharing`, which must not change any workload).
PINNED_CASES = {
    "system_prompts": (PrefixSharing(SystemPrompts(fraction=0.4, pool_size=5, tokens=40, popularity=0.8),
                                     block_size=16), {}),
    "sessions": (PrefixSharing(SystemPrompts(fraction=0.5, pool_size=4, tokens=40), Sessions(
        mean_turns=3, think_time_s=2.0, think_time_sigma=0.5, max_context_tokens=700), block_size=16),
        {"duration_s": 70.0}),
}


@pytest.mark.parametrize("name", sorted(PINNED_CASES))
def test_prefix_sharing_reproduces_its_pinned_seeded_output(tests_data, name):
    sharing, kwargs = PINNED_CASES[name]
    frame = apply_prefix_sharing(pinned_base(), sharing, seed=11, **kwargs)
    pinned = read_workload(tests_data / "prefix_sharing" / f"{name}.parquet")
    assert frame.schema == pinned.schema and frame.equals(pinned)
    # The pinned case exercises what it should: ids on some rows only; sessions cut by the duration and the cap.
    assert 0 < frame["prefix_block_ids"].null_count() < frame.height
    if "duration_s" in kwargs:
        assert frame.height < 400 and frame["turn"].max() >= 2 and frame["input_tokens"].max() <= 700


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 4), st.integers(0, 50), st.integers(0, 4)),
                min_size=1, max_size=30))
def test_block_id_lists_concatenate_both_ranges_of_every_row(rows):
    from burstgpt.workload.prefixes import _block_id_lists

    first_start, first_count, second_start, second_count = (np.array(column, dtype=np.int64) for column in zip(*rows))
    lists = _block_id_lists(first_start, first_count, second_start, second_count)
    expected = [list(range(a, a + k)) + list(range(b, b + m)) or None for a, k, b, m in rows]
    assert lists.dtype == pl.List(pl.Int64) and lists.to_list() == expected
