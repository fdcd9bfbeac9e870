"""The scraper against a real vLLM /metrics exposition (saved from vLLM CPU 0.32.0 serving a tiny model)."""

import pytest

from burstgpt.client.scrape import parse_server_metrics


@pytest.fixture
def sample_text(tests_data) -> str:
    """A real vLLM /metrics exposition (tests/data)."""
    return (tests_data / "vllm_cpu_0.32_metrics.txt").read_text()


def _value(text: str, name: str) -> float:
    """The value of the one unlabelled-by-reason sample of `name`, read by plain string handling."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in sample")


def test_real_vllm_exposition_is_parsed(sample_text):
    text = sample_text
    row = parse_server_metrics(text)
    expected = {
        "kv_cache_usage_perc": "vllm:kv_cache_usage_perc",
        "num_requests_running": "vllm:num_requests_running",
        "num_requests_waiting": "vllm:num_requests_waiting",
        "num_preemptions_total": "vllm:num_preemptions_total",
        "prompt_tokens_total": "vllm:prompt_tokens_total",
        "generation_tokens_total": "vllm:generation_tokens_total",
    }
    for column, name in expected.items():
        assert row[column] == _value(text, name), column


def test_real_vllm_exposition_with_traffic_values(sample_text):
    # The same exposition after some traffic: counters and gauges must come through as numbers, and the
    # by-reason / by-source breakdowns must not be added into the totals.
    text = sample_text
    text = text.replace('vllm:prompt_tokens_total{engine="0",model_name="tiny"} 0.0',
                        'vllm:prompt_tokens_total{engine="0",model_name="tiny"} 1234.0')
    text = text.replace('vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0',
                        'vllm:num_requests_waiting{engine="0",model_name="tiny"} 7.0')
    text = text.replace('vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.0',
                        'vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.42')
    row = parse_server_metrics(text)
    assert row["prompt_tokens_total"] == 1234.0
    assert row["num_requests_waiting"] == 7.0
    assert row["kv_cache_usage_perc"] == 0.42
