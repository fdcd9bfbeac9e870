"""Length samplers and the prompt pool against known truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from burstgpt.analysis.fits import fit_zipf
from burstgpt.errors import BurstGPTError, InputError
from burstgpt.workload.lengths import EmpiricalResponses, ZipfLengths
from burstgpt.workload.prompts import PromptPool, load_prompt_texts, synthetic_texts
from burstgpt.workload.tokenizer import BuiltinTokenizer


@pytest.mark.parametrize(("theta", "low", "high"), [(1.1, 16, 4096), (0.8, 1, 2000), (1.5, 4, 8192)])
def test_zipf_lengths_recover_theta_within_0_05(theta, low, high):
    sampler = ZipfLengths(theta, low, high)
    lengths = sampler.sample(100_000, np.random.default_rng(1))
    assert lengths.min() >= low and lengths.max() <= high and lengths.dtype == np.int64
    fit = fit_zipf(lengths, min_tokens=low, max_tokens=high)
    assert abs(fit.theta - theta) < 0.05


def test_zipf_frequencies_match_hand_computed_pmf():
    # theta = 1 on [1, 3]: P = (1, 1/2, 1/3) / (11/6) = (6/11, 3/11, 2/11).
    lengths = ZipfLengths(1.0, 1, 3).sample(200_000, np.random.default_rng(2))
    frequencies = np.bincount(lengths, minlength=4)[1:] / lengths.size
    np.testing.assert_allclose(frequencies, [6 / 11, 3 / 11, 2 / 11], atol=0.004)
    with pytest.raises(BurstGPTError):
        ZipfLengths(1.0, 10, 5)


def test_empirical_responses_keep_the_request_response_relation():
    rng = np.random.default_rng(3)
    request = rng.integers(10, 2000, 50_000)
    response = np.maximum(np.rint(100 + 0.5 * request + rng.normal(0, 30, request.size)), 1).astype(int)
    response[rng.random(request.size) < 0.05] = 0  # failures are ignored by the fit
    model = EmpiricalResponses.fit(request, response, num_bins=20)
    restored = EmpiricalResponses.from_dict(json.loads(json.dumps(model.to_dict())))
    probe = np.array([100] * 5000 + [1500] * 5000)
    drawn = restored.sample(probe, np.random.default_rng(4))
    assert drawn.min() >= 1
    # The bin holding 100 spans roughly [10, 110): mean response ~100 + 0.5 * 60; 1500's bin ~[1400, 1500).
    assert drawn[:5000].mean() == pytest.approx(100 + 0.5 * 60, rel=0.1)
    assert drawn[5000:].mean() == pytest.approx(100 + 0.5 * 1450, rel=0.05)


def test_builtin_tokenizer_counts_like_python_regex_and_truncates_exactly():
    tokenizer = BuiltinTokenizer()
    texts = ["Hello, world!", "naïve café: 12 apples_and  pears", "", "extraordinarily", "x" * 13]
    # naïve café : 1 2 apples _ and pears = 9; "extraordinarily" = extrao|rdinar|ily; 13 x = 6 + 6 + 1.
    np.testing.assert_array_equal(tokenizer.count(texts), [4, 9, 0, 3, 3])
    for text in synthetic_texts(5, 300, seed=4) + texts:
        total = int(tokenizer.count([text])[0])
        for n in range(1, total + 1, 7):
            cut = tokenizer.truncate(text, n)
            assert cut is not None and int(tokenizer.count([cut])[0]) == n
        assert tokenizer.truncate(text, total + 1) is None


def test_pool_prompts_have_exactly_the_requested_length():
    tokenizer = BuiltinTokenizer()
    wanted = ZipfLengths(1.1, 1, 600).sample(5000, np.random.default_rng(5))
    pool = PromptPool.build(synthetic_texts(16, 700), tokenizer, wanted, np.random.default_rng(6), buffer_size=2000)
    ids = pool.draw(wanted, np.random.default_rng(7))
    assert np.all(ids >= 0)
    prompts = pool.prompts_for(ids).to_list()
    np.testing.assert_array_equal(tokenizer.count(prompts), wanted)


def test_pool_picks_uniformly_among_equal_length_candidates():
    tokenizer = BuiltinTokenizer()
    texts = ["alpha beta gamma", "one two three", "red green blue", "a b c d e"]
    pool = PromptPool.build(texts, tokenizer, np.array([3, 5]), np.random.default_rng(0), buffer_size=10)
    ids = pool.draw(np.full(30_000, 3), np.random.default_rng(1))
    prompts = pool.prompts_for(ids)
    counts = prompts.value_counts()["count"].to_numpy()
    # The three 3-token texts plus a 3-token truncation of the 5-token one: 4 equal-length candidates.
    assert counts.size == 4
    np.testing.assert_allclose(counts, 7500, rtol=0.05)
    # A length no source reaches gets no prompt.
    assert pool.draw(np.array([99]), np.random.default_rng(2))[0] == -1


def test_prompt_sources_sharegpt_alpaca_jsonl_text(tmp_path):
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(json.dumps([
        {"id": "1", "conversations": [{"from": "human", "value": "What is a GPU?"},
                                       {"from": "gpt", "value": "A processor."},
                                       {"from": "human", "value": "And a TPU?"}]},
    ]))
    assert load_prompt_texts(str(sharegpt)) == ["What is a GPU?", "And a TPU?"]
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
                                  {"instruction": "Count to 3.", "input": "", "output": "1 2 3"}]))
    assert load_prompt_texts(str(alpaca)) == ["Translate.\n\nBonjour", "Count to 3."]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"text": "first"}\n\n{"text": "second"}\n')
    assert load_prompt_texts(str(jsonl)) == ["first", "second"]
    text = tmp_path / "p.txt"
    text.write_text("para one\nstill one\n\n\npara two\n")
    assert load_prompt_texts(str(text)) == ["para one\nstill one", "para two"]


def test_malformed_prompt_files_name_the_line(tmp_path):
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(InputError) as info:
        load_prompt_texts(str(bad_jsonl))
    assert info.value.line == 2
    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(InputError) as info:
        load_prompt_texts(str(no_field))
    assert info.value.line == 2
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[\n{"instruction": "x"},\n{oops}\n]')
    with pytest.raises(InputError) as info:
        load_prompt_texts(str(bad_json))
    assert info.value.line == 3
    with pytest.raises(InputError):
        load_prompt_texts(str(tmp_path / "missing.json"))


def test_zipf_guide_table_equals_plain_inverse_cdf():
    sampler = ZipfLengths(1.3, 5, 3000)
    drawn = sampler.sample(300_000, np.random.default_rng(8))
    cdf = np.cumsum(sampler.pmf())
    cdf[-1] = 1.0
    plain = 5 + np.minimum(np.searchsorted(cdf, np.random.default_rng(8).random(300_000), side="right"), cdf.size - 1)
    np.testing.assert_array_equal(drawn, plain)


def _context_tokenizer():
    """A toy subword tokenizer that is not prefix-stable, as BPE is not: "ab" is one token unless a "c"
    follows it, so cutting ids and decoding can re-tokenise to a different count."""
    import re as _re

    vocab = {"ab": 0, "a": 1, "b": 2, "c": 3}
    inverse = {v: k for k, v in vocab.items()}
    pattern = _re.compile(r"ab(?!c)|a|b|c")
    return (lambda text: [vocab[m.group()] for m in pattern.finditer(text)],
            lambda ids: "".join(inverse[i] for i in ids))


def test_subword_truncation_is_exact_or_refused():
    from burstgpt.workload.tokenizer import SubwordTokenizer

    encode, decode = _context_tokenizer()
    tokenizer = SubwordTokenizer("toy", encode, decode)
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("abc"), 40)) for _ in range(50)]
    exact = refused = 0
    for text in texts:
        total = int(tokenizer.count([text])[0])
        for n in range(1, total + 1):
            cut = tokenizer.truncate(text, n)
            if cut is None:
                refused += 1
            else:
                assert len(encode(cut)) == n and text.startswith(cut)
                exact += 1
    assert exact > 10 * refused > 0  # corrections succeed mostly; the impossible cuts are refused
    pool = PromptPool.build(texts, tokenizer, np.arange(1, 30), np.random.default_rng(1), buffer_size=500)
    np.testing.assert_array_equal(tokenizer.count(pool.texts.to_list()), pool.lengths)
