"""Shared fixtures: where the read-only real data lives (`../shared/data` beside the checkout)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TESTS_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (traces/, servegen/); skips the test when the checkout has no shared data beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("shared data (../shared/data) not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_traces(shared_data: Path) -> Path:
    """`../shared/data/traces`."""
    return shared_data / "traces"


@pytest.fixture(scope="session")
def tests_data() -> Path:
    """Small fixtures committed with the tests (`tests/data`)."""
    return TESTS_DATA


def _shared_trace(shared_traces: Path, name: str) -> Path:
    path = shared_traces / name
    if not path.exists():
        pytest.skip(f"shared trace {name} not present")
    return path


@pytest.fixture(scope="session")
def burstgpt_head(shared_traces: Path) -> Path:
    """The first 400 rows of the real BurstGPT_1.csv (6 columns, ~10.4 h)."""
    return _shared_trace(shared_traces, "burstgpt_1_head.csv")


@pytest.fixture(scope="session")
def azure_code(shared_traces: Path) -> Path:
    """One hour of the Azure LLM inference trace 2023, code service."""
    return _shared_trace(shared_traces, "azure_llm_2023_code.csv")


@pytest.fixture(scope="session")
def mooncake_trace(shared_traces: Path) -> Path:
    """Mooncake's synthetic trace (JSONL, ms timestamps, hash_ids of 512-token blocks)."""
    return _shared_trace(shared_traces, "mooncake_synthetic_trace.jsonl")


@pytest.fixture(scope="session")
def tiny_bpe_path(tmp_path_factory) -> Path:
    """A small byte-level BPE `tokenizer.json` trained here on a few sentences (as
    examples/vllm_cpu/make_tiny_model.py does): most words are several tokens in it, which is what makes exact
    counts hard. Skips when the `tokenizers` package is absent."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the quick brown fox jumps over the lazy dog and the cat", "how did she get the old man to run",
              "we may see two new ways for you"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@contextlib.contextmanager
def _serve_sim(*args: str) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "burstgpt.cli", "serve-sim", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"},
    )
    try:
        line = process.stdout.readline()
        match = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
        if not match:
            process.kill()
            raise AssertionError(f"serve-sim did not start: {line}{process.stderr.read()}")
        yield match.group(1)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def serve_sim_process():
    """A context manager: `with serve_sim_process(*ARGS) as url` runs `burstgpt serve-sim --port 0 ARGS` in a
    process on a free loopback port, yields its URL and stops it with SIGTERM."""
    return _serve_sim
