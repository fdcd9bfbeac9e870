"""The dispatch-lag verdict (`burstgpt.client.timing`) and how a schedule is dealt to several senders."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from burstgpt.client.timing import (
    CLIENT_LIMITED,
    MAX_LAG_LIMIT_S,
    NO_REQUESTS,
    ON_SCHEDULE,
    P99_LAG_LIMIT_S,
    dispatch_verdict,
    records_verdict,
)
from burstgpt.client.workers import ONE_SENDER_PEAK_RPS, auto_worker_count, deal_workload, share_of


def test_verdict_thresholds():
    rng = np.random.default_rng(0)
    calm = rng.uniform(0, P99_LAG_LIMIT_S / 2, 1000)
    verdict = dispatch_verdict(calm, achieved_rate_rps=99.0, offered_rate_rps=100.0)
    assert verdict.label == ON_SCHEDULE and not verdict.client_limited
    assert verdict.lag_p99_s == np.quantile(calm, 0.99) and verdict.lag_max_s == calm.max()
    # The p99 over its limit, no request very late: client-limited by the p99.
    slow = calm + P99_LAG_LIMIT_S
    assert slow.max() < MAX_LAG_LIMIT_S
    verdict = dispatch_verdict(slow)
    assert verdict.client_limited and verdict.late_requests == 0 and "p99" in verdict.reason
    # One request of a thousand very late: the p99 is fine, the worst is not.
    one_late = calm.copy()
    one_late[500] = 2 * MAX_LAG_LIMIT_S
    verdict = dispatch_verdict(one_late, achieved_rate_rps=80.0)
    assert verdict.client_limited and verdict.late_requests == 1 and verdict.lag_p99_s < P99_LAG_LIMIT_S
    assert "80.0 req/s" in verdict.reason and verdict.as_dict()["client_limited"] is True


def test_verdict_ignores_unsent_and_handles_nothing_sent():
    assert dispatch_verdict(np.array([np.nan, np.nan])).label == NO_REQUESTS
    records = pl.DataFrame({"scheduled_s": [0.0, 0.5, 1.0, 1.5], "sent_s": [0.001, 0.502, None, 1.9]})
    verdict = records_verdict(records)
    assert verdict.requests == 3 and verdict.label == CLIENT_LIMITED  # 0.4 s late
    assert verdict.achieved_rate_rps == (3 - 1) / (1.9 - 0.001)
    assert verdict.offered_rate_rps == (4 - 1) / 1.5


def test_auto_worker_count_follows_the_busiest_second():
    calm = pl.DataFrame({"arrival_s": np.linspace(0, 10, int(ONE_SENDER_PEAK_RPS) * 5)})  # 500/s
    assert auto_worker_count(calm, cores=4) == 1
    burst = pl.DataFrame({"arrival_s": np.concatenate([np.linspace(0, 10, 100),
                                                        np.full(int(ONE_SENDER_PEAK_RPS) + 1, 10.5)])})
    assert auto_worker_count(burst, cores=4) == 4
    assert auto_worker_count(burst, cores=1) == 1


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.one_of(st.none(), st.integers(0, 5)), min_size=1, max_size=60), st.integers(1, 5))
def test_dealing_keeps_sessions_whole_and_units_balanced(sessions, workers):
    # Rows: a None is a lone request; an integer k a turn of session k (turns numbered in row order).
    turn_of: dict[int, int] = {}
    turns = []
    for s in sessions:
        turns.append(None if s is None else turn_of.setdefault(s, 0))
        if s is not None:
            turn_of[s] += 1
    workload = pl.DataFrame({"session_id": pl.Series([None if s is None else f"s{s}" for s in sessions],
                                                     dtype=pl.Utf8),
                             "turn": pl.Series(turns, dtype=pl.Int64)})
    dealt = deal_workload(workload, workers)
    assert dealt.shape == (len(sessions),) and dealt.min() >= 0 and dealt.max() < workers
    # A session's turns all go to one sender.
    for s in set(sessions) - {None}:
        assert len({dealt[i] for i, x in enumerate(sessions) if x == s}) == 1
    # Units (lone requests and sessions), in order of first row, go round-robin: 0, 1, ..., workers-1, 0, ...
    seen: set = set()
    unit_senders = []
    for i, s in enumerate(sessions):
        key = ("row", i) if s is None else ("session", s)
        if key not in seen:
            seen.add(key)
            unit_senders.append(dealt[i])
    assert unit_senders == [k % workers for k in range(len(unit_senders))]


@given(st.one_of(st.none(), st.integers(1, 10_000)), st.integers(1, 64))
@settings(max_examples=100, deadline=None, derandomize=True)
def test_caps_are_divided_among_senders(total, workers):
    parts = [share_of(total, workers, k) for k in range(workers)]
    if total is None:
        assert parts == [None] * workers
    else:
        assert min(parts) >= 1 and max(parts) - min(parts) <= 1
        assert sum(parts) == max(total, workers)  # exactly the cap, unless it is below one per sender
