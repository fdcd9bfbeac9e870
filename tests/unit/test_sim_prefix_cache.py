"""Automatic prefix caching in the simulated engine (vLLM V1's rules, see docs/sim.md): hand-computed cases, and
the fast engine against the per-step reference on random workloads with shared prefix ids and preemptions."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from burstgpt.sim.engine import DONE, EngineConfig, ServingEngine
from burstgpt.sim.latency import LinearLatency
from burstgpt.sim.reference import reference_simulate
from burstgpt.sim.simulate import EngineSetup, simulate_workload
from burstgpt.workload.schema import conform_workload

# Step times exact in binary floating point: base 1/16 s, 1/1024 s per prefill token, 1/512 s per decode.
LINEAR = LinearLatency(base_s=2**-4, per_prefill_token_s=2**-10, per_decode_token_s=2**-9)
FULL_LINEAR = LinearLatency(base_s=2**-4, per_prefill_token_s=2**-10, per_decode_token_s=2**-9,
                            per_kv_token_s=2**-14, per_prefill_pair_s=2**-20, per_admitted_request_s=2**-7)


def _check_cache(engine: ServingEngine) -> None:
    """The block pool's own invariants: the LRU's blocks are free and counted, free keys are in it, held keys
    are not, and it starts with a block someone may look up."""
    kv = engine.kv
    counted = sum(value if isinstance(value, int) else 1 for value in kv.lru.values())
    assert counted == kv.evictable <= kv.free <= kv.num_blocks
    assert {key for key, count in kv.refs.items() if count == 0} == set(kv.lru_entry)
    assert all(kv.lru[entry] == key for key, entry in kv.lru_entry.items())
    if kv.lru:
        assert not isinstance(next(iter(kv.lru.values())), int)


def _run_steps(engine: ServingEngine, steps: int) -> None:
    """Take `steps` engine steps one by one (idle time jumps to the next arrival)."""
    taken = 0
    while taken < steps:
        if engine.step():
            taken += 1
            _check_cache(engine)
        else:
            engine.now = max(engine.now, engine.arrival[engine.next_arrival])


def _used(engine: ServingEngine) -> int:
    return engine.kv.num_blocks - engine.kv.free


def test_shared_system_prompt_by_hand():
    """Blocks of 4 tokens, prefix ids of 8 tokens: the first two ids (16 tokens, 4 blocks) are a system prompt
    that every request shares; the third id is each request's own, except r3 which repeats r0's prompt."""
    config = EngineConfig(num_gpu_blocks=40, block_size=4, max_num_seqs=8, max_num_batched_tokens=64,
                          max_model_len=40, timeout_s=None)
    engine = ServingEngine(config, LINEAR)
    engine.submit([0.0, 0.0, 1.0, 2.0], [24, 24, 20, 24], [3, 3, 1, 1],
                  [[7, 8, 100], [7, 8, 101], [7, 8, 102], [7, 8, 100]], 8)
    # Step 0: r0 computes its 24 tokens (6 blocks, all cached as they are allocated); r1, admitted in the same
    # step, finds the system prompt's 4 blocks in r0's and computes its last 8 tokens (2 new blocks).
    _run_steps(engine, 1)
    assert _used(engine) == 6 + 2 and engine.kv.evictable == 0
    assert engine.cached_tokens[:2].tolist() == [0, 16]
    # Steps 1-2: both decode; each takes a 7th block for token 25.
    _run_steps(engine, 2)
    # Both finished: every full block is cached and free; r0 gave its own 2 blocks back first, r1 its 6.
    assert _used(engine) == 0 and engine.kv.evictable == 2 + 6
    # r2 (20-token prompt) finds the 4 system blocks free in the cache and computes 4 tokens in 1 new block.
    _run_steps(engine, 1)
    assert engine.cached_tokens[2] == 16 and engine.kv.evictable == 8 - 4 + 5
    # r3 repeats r0's prompt: 5 of its 6 blocks are cached, but the last token is always computed, so it
    # recomputes its last block (its new copy takes over the key; r0's old block stays, anonymously).
    _run_steps(engine, 1)
    assert engine.cached_tokens[3] == 20
    steps = engine.steps.frame()
    prefill = 2**-4 + np.array([24 + 8, 0, 0, 4, 4]) * 2**-10
    decode = np.array([0, 2, 2, 0, 0]) * 2**-9
    np.testing.assert_array_equal(steps["duration_s"].to_numpy(), prefill + decode)
    assert steps["time_s"].to_list() == [0.0, 0.09375, 0.16015625, 1.0, 2.0]
    assert steps["prefill_tokens"].to_list() == [32, 0, 0, 4, 4]
    assert steps["kv_blocks_used"].to_list() == [8, 10, 10, 5, 6]
    assert steps["prefix_cache_queries"].to_list() == [48, 0, 0, 20, 24]
    assert steps["prefix_cache_hits"].to_list() == [16, 0, 0, 16, 20]
    assert (engine.prefix_queries, engine.prefix_hits) == (24 + 24 + 20 + 24, 16 + 16 + 20)
    columns = engine.columns()
    assert columns["state"].tolist() == [DONE] * 4
    assert columns["end"].tolist() == [0.2265625, 0.2265625, 1.06640625, 2.06640625]
    # Without prefix caching r1 computes all of its 48 tokens' worth and holds its own 6 blocks.
    plain = ServingEngine(EngineConfig(**{**config.__dict__, "enable_prefix_caching": False}), LINEAR)
    plain.submit([0.0, 0.0], [24, 24], [3, 3], [[7, 8, 100], [7, 8, 101]], 8)
    _run_steps(plain, 1)
    assert _used(plain) == 12 and plain.steps.frame()["duration_s"][0] == 2**-4 + 48 * 2**-10
    assert plain.prefix_hits == 0


@pytest.mark.parametrize("jump", [False, True])
def test_preempted_request_resumes_from_its_cached_blocks_by_hand(jump):
    """12 blocks of 4 tokens; A and B (16-token prompts, 20 output tokens) decode together until B is
    preempted; its 6 full blocks stay cached, but A's new blocks evict them one by one from the tail; when A
    finishes, B resumes from the 3 blocks left and recomputes only the other 13 of its 25 tokens."""
    config = EngineConfig(num_gpu_blocks=12, block_size=4, max_num_seqs=8, max_num_batched_tokens=64,
                          max_model_len=48, timeout_s=None)
    engine = ServingEngine(config, LINEAR)
    engine.submit([0.0, 0.0], [16, 16], [20, 20])
    engine.run(jump=jump)
    _check_cache(engine)
    steps = engine.steps.frame()
    # Step 0 prefills both (8 blocks). Decode step k (1-based) computes token 16 + k; it needs a new block
    # when 16 + k - 1 is a multiple of 4: k = 1 (10 blocks), 5 (12: full), 9 (none left: B, the last
    # admitted, is preempted with 24 computed tokens in 6 full blocks, all cached; A's new block evicts B's
    # last one), 13 and 17 (each evicts B's next-to-last cached block). A finishes at k = 19.
    both, alone = 2**-4 + 2 * 2**-9, 2**-4 + 2**-9
    expected = [2**-4 + 32 * 2**-10] + [both] * 8 + [alone] * 11
    # Step 20: B (16 prompt + 9 output tokens) finds blocks 0-2 cached: it computes 25 - 12 = 13 tokens, emits
    # its 10th token, then decodes its last 10 alone.
    expected += [2**-4 + 13 * 2**-10] + [alone] * 10
    if jump:
        np.testing.assert_allclose(steps["duration_s"].to_numpy(), expected, rtol=1e-12)
    else:
        np.testing.assert_array_equal(steps["duration_s"].to_numpy(), expected)
    used = steps["kv_blocks_used"].to_list()
    assert used[:10] == [8, 10, 10, 10, 10, 12, 12, 12, 12, 7]  # step 9: B's 6 blocks freed, 5 still cached
    assert used[13] == 8 and used[17] == 9 and used[20] == 7  # B back with 3 cached + 4 new blocks
    assert steps["preemptions"].to_list() == [0] * 9 + [1] + [0] * 21
    assert steps["prefill_tokens"][20] == 13
    columns = engine.columns()
    assert columns["preemptions"].tolist() == [0, 1] and columns["generated"].tolist() == [20, 20]
    assert engine.resumed_hits == 12 and engine.prefix_hits == 0
    np.testing.assert_allclose(columns["end"], [sum(expected[:20]), sum(expected)], rtol=1e-12)
    # Without prefix caching B recomputes all 25 tokens.
    plain = ServingEngine(EngineConfig(**{**config.__dict__, "enable_prefix_caching": False}), LINEAR)
    plain.submit([0.0, 0.0], [16, 16], [20, 20])
    plain.run(jump=jump)
    assert plain.steps.frame()["prefill_tokens"][20] == 25


def _random_case(seed: int):
    """A bursty workload over a small cache: three "system prompts" of prefix ids shared by most requests (at
    random depths, some diverging), block and id sizes that do not divide each other, timeouts, abort delays."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 120))
    arrival = np.cumsum(rng.gamma(0.5, 0.2, n))
    prompt = rng.integers(1, 400, n)
    output = rng.integers(1, 200, n)
    block_size = int(rng.choice([4, 8, 16]))
    id_size = int(rng.choice([3, 8, 16, 20, 32]))
    systems = [rng.integers(0, 5, 30).tolist() for _ in range(3)]
    ids = []
    for i in range(n):
        mine = systems[int(rng.integers(0, 3))][: int(rng.integers(1, 30))]
        if rng.random() < 0.3:
            mine[-1] = 100 + i  # its own last block
        mine = mine[: (prompt[i] - 1) // id_size + 1]  # ids cover at most the prompt (workload rule)
        ids.append(mine if rng.random() > 0.3 else None)
    config = EngineConfig(
        num_gpu_blocks=int(rng.integers(40, 150)) * 16 // block_size, block_size=block_size,
        max_num_seqs=int(rng.integers(2, 40)), max_num_batched_tokens=int(rng.integers(64, 1024)), max_model_len=640,
        timeout_s=float(rng.choice([5.0, 30.0])), max_queue=[None, 10][seed % 2],
        abort_delay_s=float(rng.choice([0.0, 0.0, 1.5])), reserve_full_prompt=seed % 7 != 6,
    )
    return config, arrival, prompt, output, ids, id_size


@pytest.mark.parametrize("seed", range(16))
def test_fast_engine_matches_the_reference_with_shared_prefixes_and_preemptions(seed):
    """Stepping is bit-identical to the plain reference (every block with its key, the LRU as a list), jumping
    equal to float rounding: the requests' outcomes, cached prompt tokens, and every step's start and KV use."""
    config, arrival, prompt, output, ids, id_size = _random_case(seed)
    expected = reference_simulate(config, FULL_LINEAR, arrival, prompt, output, ids, id_size)
    for jump in (False, True):
        engine = ServingEngine(config, FULL_LINEAR)
        engine.submit(arrival, prompt, output, ids, id_size)
        engine.run(jump=jump)
        _check_cache(engine)
        for name, values in engine.columns(len(arrival)).items():
            if values.dtype.kind == "f" and jump:
                np.testing.assert_allclose(values, expected[name], rtol=1e-12, atol=1e-9, err_msg=name)
            else:
                np.testing.assert_array_equal(values, expected[name], err_msg=f"{name}, jump={jump}")
        steps = engine.steps.frame()
        np.testing.assert_allclose(steps["time_s"].to_numpy(), expected["step_times"], rtol=0 if not jump else 1e-12,
                                   atol=0 if not jump else 1e-9)
        np.testing.assert_array_equal(steps["kv_blocks_used"].to_numpy(), expected["kv_blocks_used"])
        np.testing.assert_array_equal(steps["prefix_cache_hits"].to_numpy(), expected["cache_hits"])
        assert engine.prefix_hits == expected["cache_hits"].sum()
    assert expected["cache_hits"].sum() > 0  # shared prefixes were found


def test_the_random_cases_exercise_preemption_and_resumption():
    """Across the random cases, preempted requests resume from their own cached blocks (not only from shared
    ones) and shared prefixes are hit: the agreement above covers those paths."""
    resumed = preempted = hits = 0
    for seed in range(16):
        config, arrival, prompt, output, ids, id_size = _random_case(seed)
        engine = ServingEngine(config, FULL_LINEAR)
        engine.submit(arrival, prompt, output, ids, id_size)
        engine.run()
        resumed += engine.resumed_hits
        preempted += engine.total_preemptions
        hits += engine.prefix_hits
    assert preempted > 20 and resumed > 1000 and hits > 10_000


def test_requests_without_prefix_ids_and_without_preemption_are_unchanged_by_caching():
    rng = np.random.default_rng(3)
    arrival, prompt, output = np.cumsum(rng.exponential(0.5, 200)), rng.integers(1, 300, 200), \
        rng.integers(1, 200, 200)
    results = []
    for caching in (True, False):
        config = EngineConfig(num_gpu_blocks=2000, max_model_len=640, timeout_s=30.0, enable_prefix_caching=caching)
        engine = ServingEngine(config, FULL_LINEAR)
        engine.submit(arrival, prompt, output)
        engine.run()
        assert engine.total_preemptions == 0 and not engine.kv.lru  # nothing anyone could look up
        results.append((engine.columns(), engine.steps.frame()))
    (on, on_steps), (off, off_steps) = results
    for name in on:
        np.testing.assert_array_equal(on[name], off[name], err_msg=name)
    cache_columns = ["prefix_cache_queries", "prefix_cache_hits"]
    assert on_steps.drop(cache_columns).equals(off_steps.drop(cache_columns))
    # Every prompt was looked up (nothing found); without caching nothing is.
    assert on_steps["prefix_cache_queries"].sum() == prompt.sum() and on_steps["prefix_cache_hits"].sum() == 0
    assert off_steps["prefix_cache_queries"].sum() == 0


def test_simulate_workload_records_cached_prompt_tokens():
    frame = conform_workload(pl.DataFrame({
        "arrival_s": [0.0, 0.5, 1.0, 1.5], "input_tokens": [64, 64, 40, 700], "output_tokens": [4, 4, 4, 4],
        "prefix_block_ids": [[1, 2, 3, 4], [1, 2, 9, 9], None, [1, 2]], "prefix_block_size": [16, 16, None, 16],
    }))
    config = EngineConfig(num_gpu_blocks=64, max_model_len=512, timeout_s=None)
    records = simulate_workload(frame, EngineSetup(config, LINEAR, "m", "g")).records
    # The second request shares the first two ids (32 tokens, 2 blocks of 16); the last is refused (too long).
    assert records["cached_prompt_tokens"].to_list() == [0, 32, 0, None]
    off = EngineConfig(**{**config.__dict__, "enable_prefix_caching": False})
    assert simulate_workload(frame, EngineSetup(off, LINEAR, "m", "g")).records["cached_prompt_tokens"] \
        .null_count() == 4
