"""Synthetic prompts have exactly the workload's input_tokens tokens under the tokenizer module."""

from __future__ import annotations

import numpy as np

from burstgpt.client.prompts import PromptSynthesizer
from burstgpt.workload.tokenizer import SubwordTokenizer, builtin_tokenizer, count_tokens


def test_prompts_have_exactly_the_requested_builtin_tokens():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([[1, 2, 3, 100, 4096], rng.integers(1, 20_000, 40), [300_000]])  # > the pool too
    for seed in (0, 7):
        synth = PromptSynthesizer(seed)
        prompts = [synth.prompt(int(n), request_id=i) for i, n in enumerate(lengths)]
        assert builtin_tokenizer().count(prompts).tolist() == lengths.tolist()
        assert synth.prompt(50, request_id=3) == prompts[3][: len(synth.prompt(50, request_id=3))]  # same text
    # Prompts start at different places: no shared prefix for prefix caching to exploit.
    synth = PromptSynthesizer(0)
    assert len({synth.prompt(20, request_id=i) for i in range(50)}) == 50


def test_zero_tokens_still_gives_a_one_token_prompt():
    # Servers refuse an empty prompt, so a 0-token row is sent as the shortest prompt there is.
    assert count_tokens(PromptSynthesizer(0).prompt(0, request_id=1)) == 1


def test_prompts_are_cut_exactly_under_another_tokenizer():
    chars = SubwordTokenizer("chars", lambda t: tuple(map(ord, t)), lambda ids: "".join(map(chr, ids)))
    synth = PromptSynthesizer(0, tokenizer=chars)
    for n in (1, 5, 33, 1000):
        assert len(synth.prompt(n, request_id=n)) == n
