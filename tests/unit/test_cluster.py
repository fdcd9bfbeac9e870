"""The cluster simulator: N replicas behind a router, each router policy on a hand-made case."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from burstgpt.errors import BurstGPTError
from burstgpt.sim.cluster import ROUTERS, simulate_cluster
from burstgpt.sim.engine import EngineConfig
from burstgpt.sim.latency import LinearLatency
from burstgpt.sim.simulate import EngineSetup, build_engine_setup, simulate_workload
from burstgpt.workload import ScheduledArrivals, WorkloadSpec, build_workload
from burstgpt.workload.schema import conform_workload

# 50 ms a step plus 1 ms per decoding request: exact enough to reason about by hand.
LINEAR = LinearLatency(base_s=0.05, per_prefill_token_s=0.0, per_decode_token_s=0.001)


def _setup(blocks: int = 400, timeout_s: float | None = None) -> EngineSetup:
    config = EngineConfig(num_gpu_blocks=blocks, block_size=16, max_num_seqs=64, max_num_batched_tokens=4096,
                          max_model_len=4096, timeout_s=timeout_s)
    return EngineSetup(config, LINEAR, "test-model", "test-gpu")


def _workload(arrival, prompt, output, prefix_ids=None) -> pl.DataFrame:
    columns = {"arrival_s": np.asarray(arrival, float), "input_tokens": np.asarray(prompt, np.int64),
               "output_tokens": np.asarray(output, np.int64)}
    if prefix_ids is not None:
        columns["prefix_block_ids"] = pl.Series(prefix_ids, dtype=pl.List(pl.Int64))
        columns["prefix_block_size"] = [16 if ids else None for ids in prefix_ids]
    return conform_workload(pl.DataFrame(columns))


def test_one_replica_is_the_single_engine_simulation():
    workload = build_workload(WorkloadSpec(ScheduledArrivals(alpha=0.5, rate_rps=3.0), num_requests=400, seed=3))
    setup = build_engine_setup(num_gpu_blocks=500)
    single = simulate_workload(workload, setup, seed=3, steps="none").records
    for router in ROUTERS:
        cluster = simulate_cluster(workload, setup, 1, router, seed=3)
        assert (cluster.replica == 0).all()
        assert cluster.records["status"].to_list() == single["status"].to_list()
        assert cluster.records["output_tokens"].to_list() == single["output_tokens"].to_list()
        # The cluster stops decode runs at every arrival: the same decisions, times equal to float rounding.
        np.testing.assert_allclose(cluster.records["end_s"].to_numpy(), single["end_s"].to_numpy(), rtol=1e-9)


def test_round_robin_cycles_and_each_replica_matches_its_share_alone():
    workload = _workload(np.arange(9) * 0.02, [100] * 9, [40] * 9)
    setup = _setup()
    cluster = simulate_cluster(workload, setup, 3, "round_robin")
    assert cluster.replica.tolist() == [0, 1, 2] * 3
    for replica in range(3):
        share = workload[replica::3]
        alone = simulate_workload(share, setup, steps="none").records
        np.testing.assert_allclose(cluster.records["end_s"].to_numpy()[replica::3], alone["end_s"].to_numpy(),
                                   rtol=1e-9)


def test_least_outstanding_avoids_the_busy_replica():
    # A: a long request on replica 0; B (short) goes to replica 1 and is done in well under a second; at t=5 A is
    # still decoding (1000 tokens at >= 50 ms a step), so C goes to the idle replica 1, where round robin sends
    # it to replica 0.
    workload = _workload([0.0, 0.1, 5.0], [64, 64, 64], [1000, 5, 5])
    assert simulate_cluster(workload, _setup(), 2, "least_outstanding").replica.tolist() == [0, 1, 1]
    assert simulate_cluster(workload, _setup(), 2, "round_robin").replica.tolist() == [0, 1, 0]


def test_least_kv_prefers_the_emptier_cache_over_equal_request_counts():
    # A (2000-token prompt) fills replica 0's cache; B (short prompt) goes to replica 1; both keep decoding, so
    # at C each replica holds one request: least_outstanding breaks the tie to replica 0, least_kv sees replica
    # 0's 126 blocks against replica 1's 5 and picks replica 1.
    workload = _workload([0.0, 0.5, 1.0], [2000, 50, 50], [500, 500, 5])
    assert simulate_cluster(workload, _setup(), 2, "least_kv").replica.tolist() == [0, 1, 1]
    assert simulate_cluster(workload, _setup(), 2, "least_outstanding").replica.tolist() == [0, 1, 0]


def test_prefix_affinity_keeps_a_shared_prefix_on_one_replica_and_hits_its_cache():
    rng = np.random.default_rng(5)
    count = 120
    first_ids = rng.integers(0, 6, count)  # six system prompts of 8 blocks (128 tokens) each
    prefix_ids = [[int(first) * 100 + block for block in range(8)] for first in first_ids]
    prefix_ids[::10] = [None] * len(prefix_ids[::10])  # some requests without a shared prefix
    workload = _workload(np.arange(count) * 0.05, [200] * count, [20] * count, prefix_ids)
    setup = _setup(blocks=2000)
    affinity = simulate_cluster(workload, setup, 4, "prefix_affinity")
    with_ids = np.array([ids is not None for ids in prefix_ids])
    groups = pl.DataFrame({"first": first_ids[with_ids], "replica": affinity.replica[with_ids]})
    assert groups.group_by("first").agg(pl.col("replica").n_unique())["replica"].max() == 1
    assert groups["replica"].n_unique() > 1  # the prompts spread over the replicas
    spread = simulate_cluster(workload, setup, 4, "round_robin")
    assert affinity.records["cached_prompt_tokens"].sum() > spread.records["cached_prompt_tokens"].sum()


def test_active_replicas_follow_the_table():
    workload = _workload(np.arange(10) * 1.0, [50] * 10, [5] * 10)
    active = pl.DataFrame({"time_s": [0.0, 4.5], "replicas": [1, 3]})
    result = simulate_cluster(workload, _setup(), 3, "round_robin", active=active)
    assert (result.replica[:5] == 0).all()
    assert set(result.replica[5:].tolist()) == {0, 1, 2}


def test_bad_router_and_fleet_are_refused():
    workload = _workload([0.0], [10], [2])
    with pytest.raises(BurstGPTError, match="unknown router"):
        simulate_cluster(workload, _setup(), 2, "random")
    with pytest.raises(BurstGPTError, match="positive integer"):
        simulate_cluster(workload, _setup(), 0)
