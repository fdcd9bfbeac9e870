"""Synthetic prompts have exactly the workload's input_tokens tokens under the tokenizer module; prompts built
from prefix block ids share exactly the blocks their ids share."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from burstgpt.client.prompts import PromptSynthesizer
from burstgpt.trace import load_trace
from burstgpt.workload.spec import ReplayedTrace, WorkloadSpec, build_workload
from burstgpt.workload.tokenizer import (
    BUILTIN_PATTERN,
    SubwordTokenizer,
    builtin_tokenizer,
    count_tokens,
    load_tokenizer,
)


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


# ------------------------------------------------------------------------------------ prompts from block ids

_BUILTIN = re.compile(BUILTIN_PATTERN)


def _builtin_tokens(text: str) -> list[str]:
    return _BUILTIN.findall(text)


@pytest.fixture(scope="module")
def tiny_bpe(tiny_bpe_path):
    """The conftest's small byte-level BPE, as (our tokenizer, the `tokenizers` object)."""
    import tokenizers

    return load_tokenizer(str(tiny_bpe_path)), tokenizers.Tokenizer.from_file(str(tiny_bpe_path))


def _shared_id_subset(mooncake_trace, limit: int) -> pl.DataFrame:
    """Mooncake rows replayed into a workload, keeping the first `limit` of those whose first block id is
    shared with another kept row (so pairs with equal leading ids exist) and some without."""
    frame = build_workload(WorkloadSpec(ReplayedTrace(str(mooncake_trace)), num_requests=600))
    first = frame["prefix_block_ids"].list.first()
    shared = frame.filter(first.is_in(first.filter(first.is_duplicated()).implode()))
    return pl.concat([shared.head(limit), frame.filter(~first.is_duplicated()).head(4)])


def _leading_equal_ids(a: list[int], b: list[int]) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def _check_shared_prefixes(rows: pl.DataFrame, prompts: list[str], tokens_of) -> int:
    """Every prompt has exactly input_tokens tokens; every pair shares exactly its equal leading ids' blocks:
    the first P x k tokens are identical and the next block differs. Returns the pairs with k > 0 checked."""
    tokens = [tokens_of(p) for p in prompts]
    assert [len(t) for t in tokens] == rows["input_tokens"].to_list()
    ids, size, lengths = rows["prefix_block_ids"].to_list(), rows["prefix_block_size"].to_list(), \
        rows["input_tokens"].to_list()
    checked = 0
    for a in range(len(prompts)):
        for b in range(a + 1, len(prompts)):
            k = _leading_equal_ids(ids[a], ids[b])
            shared = size[a] * k
            assert tokens[a][:shared] == tokens[b][:shared]
            end = shared + size[a]
            if k < min(len(ids[a]), len(ids[b])) and end <= min(lengths[a], lengths[b]):
                assert tokens[a][shared:end] != tokens[b][shared:end]  # different ids, different block text
            checked += k > 0
    return checked


def test_mooncake_ids_become_prompts_sharing_exactly_their_blocks_builtin(mooncake_trace):
    rows = _shared_id_subset(mooncake_trace, 24)
    assert set(rows["prefix_block_size"].to_list()) == {512}
    # The trace's hash_ids reach the workload unchanged (replay keeps every row, so request_id = trace row).
    trace_ids = load_trace(mooncake_trace).frame["prefix_block_ids"]
    assert rows["prefix_block_ids"].to_list() == trace_ids.gather(rows["request_id"]).to_list()
    synth, other_seed = PromptSynthesizer(0), PromptSynthesizer(5)
    prompts = [synth.prompt(r["input_tokens"], r["request_id"], prefix_block_ids=r["prefix_block_ids"],
                            prefix_block_size=r["prefix_block_size"]) for r in rows.iter_rows(named=True)]
    assert _check_shared_prefixes(rows, prompts, _builtin_tokens) > 10
    # The block texts depend only on (id, size, tokenizer), not on the prompt seed or the request.
    r = rows.row(0, named=True)
    again = other_seed.prompt(r["input_tokens"], 99, prefix_block_ids=r["prefix_block_ids"],
                              prefix_block_size=512)
    covered = min(len(r["prefix_block_ids"]) * 512, r["input_tokens"])
    assert _builtin_tokens(again)[:covered] == _builtin_tokens(prompts[0])[:covered]


def test_mooncake_ids_become_prompts_sharing_exactly_their_blocks_subword(mooncake_trace, tiny_bpe):
    tokenizer, raw = tiny_bpe
    rows = _shared_id_subset(mooncake_trace, 20)
    # Mooncake prompts are 10-40k tokens: scale the blocks 512 -> 16 tokens (and the lengths with them) so a
    # real tokenizer stays fast; ids still cover the prompt as the validator requires.
    rows = rows.with_columns(pl.lit(16, dtype=pl.Int64).alias("prefix_block_size"),
                             ((pl.col("input_tokens") + 31) // 32).alias("input_tokens"))
    synth = PromptSynthesizer(0, tokenizer=tokenizer)
    prompts = [synth.prompt(r["input_tokens"], r["request_id"], prefix_block_ids=r["prefix_block_ids"],
                            prefix_block_size=16) for r in rows.iter_rows(named=True)]
    # Most pool words are several tokens in this BPE, so exactness is not word counting.
    assert raw.encode(" the and for was not but").ids.__len__() > 6
    assert _check_shared_prefixes(rows, prompts, lambda p: raw.encode(p, add_special_tokens=False).ids) > 5


def test_block_texts_are_fixed_distinct_and_cut_for_a_partial_last_block(tiny_bpe):
    tokenizer, raw = tiny_bpe
    for synth, count in ((PromptSynthesizer(0), lambda t: len(_builtin_tokens(t))),
                         (PromptSynthesizer(3, tokenizer=tokenizer), lambda t: len(raw.encode(t).ids))):
        texts = [synth.block_text(h, 16) for h in range(200)]
        assert len(set(texts)) == 200 and all(count(t) == 16 and t.startswith(" ") for t in texts)
        assert synth.block_text(7, 16) == texts[7] and synth.block_text(7, 32) != texts[7]
        # 3 ids of 16 tokens over a 40-token prompt: two full blocks, then 8 tokens of the third id's text.
        prompt = synth.prompt(40, 1, prefix_block_ids=[5, 6, 7], prefix_block_size=16)
        assert count(prompt) == 40 and prompt.startswith(texts[5] + texts[6])
        assert not any(t[-1].isspace() for t in texts)  # no lone trailing space to merge with the next block
        longer = synth.prompt(70, 2, prefix_block_ids=[5, 6, 7], prefix_block_size=16)
        assert count(longer) == 70 and longer.startswith(texts[5] + texts[6] + texts[7])
        assert prompt == longer[: len(prompt)]  # the cut block is a prefix of the full one
