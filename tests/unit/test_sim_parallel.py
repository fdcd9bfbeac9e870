"""A workload simulated in parts, in parallel processes (`burstgpt.sim.parallel`), gives exactly the results of one
engine: records, server metrics, sampled steps and step counts; also where a part's start finds the engine busy,
where a part's process cannot be used, and where nothing may be cut (preemptions, prefix caching)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from burstgpt.cli import main
from burstgpt.sim.engine import ServingEngine
from burstgpt.sim.latency import LinearLatency
from burstgpt.sim.output_lengths import parse_output_length_model, resolve_output_lengths
from burstgpt.sim.parallel import (
    PartTask,
    expected_ends,
    join_parts,
    part_bounds,
    simulate_in_parts,
    simulate_part,
)
from burstgpt.sim.simulate import EngineSpec, build_engine_setup, simulate_workload
from burstgpt.sim.step_log import IntervalDigest, StepLog
from burstgpt.workload.spec import RequestLengths, ScheduledArrivals, WorkloadSpec, build_workload

# The paper's engine (A800 x Llama-2-13B) at a moderate bursty load: idle now and then, as a real day is.
SETUP = build_engine_setup(EngineSpec())


def _workload(num_requests: int, seed: int, rate_rps: float = 0.5):
    return build_workload(WorkloadSpec(arrivals=ScheduledArrivals(alpha=0.5, rate_rps=rate_rps),
                                       num_requests=num_requests, lengths=RequestLengths(zipf_theta=1.1), seed=seed))


def _same(one, other) -> None:
    assert other.records.equals(one.records)
    assert other.server_metrics.equals(one.server_metrics)
    assert other.steps.equals(one.steps)
    assert other.num_steps == one.num_steps


@pytest.mark.parametrize("workers", [2, 3])
def test_parts_in_parallel_give_exactly_the_results_of_one_engine(workers):
    workload = _workload(1500, seed=workers)
    for interval in (1.0, 0.3):
        single = simulate_workload(workload, SETUP, steps="sampled", metrics_interval_s=interval, workers=1)
        parallel = simulate_workload(workload, SETUP, steps="sampled", metrics_interval_s=interval, workers=workers)
        assert single.parts == 1 and parallel.parts == workers  # it was cut, and every part was used
        _same(single, parallel)
    assert single.server_metrics.height > 100 and single.steps.height > 100


def _fresh_points(task: PartTask, arrival, prompt, output) -> set[int]:
    """Requests before which one engine, running everything, is idle carrying nothing over."""
    engine = ServingEngine(task.config, task.latency, record_steps=False)
    engine.submit(arrival, prompt, output)
    points: set[int] = set()
    engine.run(when_fresh=lambda next_request: points.add(next_request))
    return points


def test_a_part_starting_where_the_engine_is_busy_is_taken_from_where_it_is_idle():
    """Cut where one engine is busy: the first part stops at its next idle moment after the cut and the second
    part's process, which noted that moment too, is used from there; or, cut so that the second part's process
    never sees it, the stretch is simulated here. Either way the joined parts equal one engine's run."""
    workload = _workload(1200, seed=7, rate_rps=1.0)
    arrival, prompt = workload["arrival_s"].to_numpy(), workload["input_tokens"].to_numpy()
    output = resolve_output_lengths(workload, parse_output_length_model("lognormal:200,0.8"),
                                    max_model_len=SETUP.config.max_model_len, seed=7)
    task = PartTask(SETUP.config, SETUP.latency, 1.0, SETUP.config.num_gpu_blocks, sample=True)
    points = sorted(_fresh_points(task, arrival, prompt, output))
    whole = simulate_part(task, arrival, prompt, output)
    assert not whole.stopped and whole.end == len(arrival)
    # A busy request with an idle moment within the second part's mark window (5% of the requests) after it.
    busy = next(k for k in range(300, 900) if k not in points and any(k < p <= k + 40 for p in points))
    idle_after = next(p for p in points if p > busy)
    parts = simulate_in_parts(task, arrival, prompt, output, [busy])
    assert [part.start for part in parts] == [0, idle_after] and parts[0].stopped
    columns, digest, num_steps = join_parts(parts)
    expected_columns = whole.columns
    for name, column in expected_columns.items():
        np.testing.assert_array_equal(columns[name], column, err_msg=name)
    assert num_steps == whole.num_steps
    assert digest.server_metrics().equals(whole.digest.server_metrics())
    assert digest.sampled_steps().equals(whole.digest.sampled_steps())


def test_a_part_whose_process_cannot_run_is_simulated_here():
    """A latency model that does not pickle cannot go to another process: the part runs here, same results."""

    class LocalLinear(LinearLatency):  # defined in a function: pickle cannot name it
        pass

    setup = build_engine_setup(EngineSpec(latency=LocalLinear(0.02, 1e-4, 5e-4, 1e-7)))
    workload = _workload(800, seed=3, rate_rps=0.3)
    single = simulate_workload(workload, setup, steps="sampled", workers=1)
    parallel = simulate_workload(workload, setup, steps="sampled", workers=2)
    assert parallel.parts == 2
    _same(single, parallel)


def test_nothing_is_cut_where_the_cache_or_preemptions_carry_over():
    """Preemptions (a small KV cache under a burst) and shared prefixes leave state a later request can see:
    a run with prefix ids is not cut, one with preemptions only where none happened yet; results identical."""
    crowded = build_engine_setup(EngineSpec(num_gpu_blocks=400, max_num_seqs=64, max_num_batched_tokens=2048))
    workload = _workload(1000, seed=11, rate_rps=3.0)
    single = simulate_workload(workload, crowded, steps="sampled", workers=1)
    assert single.steps["preemptions"].sum() > 0
    _same(single, simulate_workload(workload, crowded, steps="sampled", workers=2))
    # Every prompt starts with one of two shared 32-token system prompts (prefix ids of 16-token blocks).
    workload = _workload(600, seed=5).with_columns(input_tokens=pl.col("input_tokens") + 32)
    shared = workload.with_columns(
        prefix_block_ids=pl.Series([[index % 2, 10 + index % 2] for index in range(workload.height)]),
        prefix_block_size=pl.lit(16, pl.Int64))
    single = simulate_workload(shared, SETUP, steps="sampled", workers=1)
    assert single.steps["prefix_cache_hits"].sum() > 0
    parallel = simulate_workload(shared, SETUP, steps="sampled", workers=2)
    assert parallel.parts == 1
    _same(single, parallel)


def test_digest_cut_and_joined_back_equals_the_whole():
    """A run stopped where it is idle and fresh, and a new engine given the rest: the first digest with the
    second appended (`IntervalDigest.append`) is the whole run's; the whole one cut there (`since`) the second's."""
    workload = _workload(400, seed=2)
    arrival, prompt = workload["arrival_s"].to_numpy(), workload["input_tokens"].to_numpy()
    output = np.full(workload.height, 120)

    def run(start: int, stop_from: int | None = None, mark_at: int | None = None):
        engine = ServingEngine(SETUP.config, SETUP.latency)
        digest = IntervalDigest(0.5, SETUP.config.num_gpu_blocks, sample=True)
        log = engine.steps = StepLog(SETUP.config.block_size, consumers=(digest,), keep=False)
        engine.submit(arrival[start:], prompt[start:], output[start:])
        marks = {}

        def when_fresh(next_request: int) -> bool:
            if next_request == mark_at:
                log.flush()
                marks[next_request] = (digest.mark(), log.size)
            return stop_from is not None and start + next_request >= stop_from

        engine.run(when_fresh=when_fresh)
        log.finish()
        return engine, digest, log.size, marks

    head_engine, head, head_steps, _ = run(0, stop_from=200)
    cut = head_engine.next_arrival
    assert 200 <= cut < 300 and head_engine.is_idle()
    _, tail, _, _ = run(cut)
    _, whole, _, marks = run(0, mark_at=cut)
    assert whole.server_metrics().height > 50
    since = whole.since(*marks[cut])
    assert since.server_metrics().equals(tail.server_metrics())
    assert since.sampled_steps().equals(tail.sampled_steps())
    head.append(tail, head_steps)
    assert head.server_metrics().equals(whole.server_metrics())
    assert head.sampled_steps().equals(whole.sampled_steps())


def test_part_bounds_fall_after_the_longest_expected_idle_time():
    arrival = np.arange(100, dtype=np.float64)
    arrival[52:] += 50.0  # a long pause before request 52
    output = np.full(100, 10)
    ends = expected_ends(SETUP.config, SETUP.latency, arrival, output)
    assert part_bounds(arrival, 2, ends) == [52]
    # All requests arriving at once: nowhere to cut.
    assert part_bounds(np.zeros(100), 2, expected_ends(SETUP.config, SETUP.latency, np.zeros(100), output)) == []


def test_simulate_cli_workers(tmp_path, capsys):
    """`simulate --workers 2` writes the run directory `--workers 1` does; 0 workers is refused in one line."""
    common = ["simulate", "--alpha", "0.5", "--rate", "0.5", "--zipf-theta", "1.1", "--num-requests", "600",
              "--seed", "4", "--quiet"]
    for workers in ("1", "2"):
        assert main([*common, "-o", str(tmp_path / workers), "--workers", workers]) == 0
    for name in ("requests.parquet", "steps.parquet"):
        assert pl.read_parquet(tmp_path / "2" / name).equals(pl.read_parquet(tmp_path / "1" / name)), name
    assert (tmp_path / "2" / "server_metrics.csv").read_bytes() == (tmp_path / "1" / "server_metrics.csv").read_bytes()
    capsys.readouterr()
    assert main([*common, "-o", str(tmp_path / "0"), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "burstgpt: error: --workers must be at least 1, got 0"
