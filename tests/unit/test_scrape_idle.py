"""`client.scrape.wait_until_idle`: the one idle check that profile and sweep (--url) run before each point."""

from __future__ import annotations

import asyncio

import pytest

from burstgpt.client.scrape import wait_until_idle
from burstgpt.errors import BurstGPTError


def _metrics(running: int, waiting: int) -> str:
    return (f'vllm:num_requests_running{{model_name="m"}} {running}\n'
            f'vllm:num_requests_waiting{{model_name="m"}} {waiting}\n')


def _source(bodies):
    bodies = list(bodies)

    async def fetch():
        return bodies.pop(0) if len(bodies) > 1 else bodies[0]
    return fetch


def test_returns_the_first_idle_scrape():
    row = asyncio.run(wait_until_idle(_source([_metrics(2, 1), _metrics(0, 3), _metrics(0, 0)]), 5.0, poll_s=0.001))
    assert row["num_requests_running"] == 0 and row["num_requests_waiting"] == 0


def test_no_metrics_counts_as_idle():
    assert asyncio.run(wait_until_idle(_source([None]), 5.0, poll_s=0.001)) == {}


def test_a_server_that_stays_busy_is_an_error_naming_the_counts_and_the_hint():
    with pytest.raises(BurstGPTError, match=r"within 0.05 s \(running 1, waiting 4; someone else\)"):
        asyncio.run(wait_until_idle(_source([_metrics(1, 4)]), 0.05, poll_s=0.001, busy_hint="someone else"))
