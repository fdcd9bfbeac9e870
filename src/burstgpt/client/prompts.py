"""Synthetic prompts of a given token length, for workload rows that carry no prompt text.

The text is a random sequence of common three-letter English words, each with a leading space (" the",
" and", ...). Under the builtin tokenizer (`burstgpt.workload.tokenizer`) each word is exactly one token, so a
prompt of n words has exactly n tokens; in the BPE and SentencePiece tokenizers of current LLMs each such word
is one token too (servers add a BOS token or chat template; the server's `usage` gives the exact count). With
another tokenizer given, the prompt is cut to exactly n of its tokens. Each request starts at a different
random offset so prompts share no prefix and prefix caching cannot make a synthetic workload cheaper than a
real one.
"""

from __future__ import annotations

import numpy as np

from burstgpt.workload.tokenizer import BuiltinTokenizer, Tokenizer

# All four characters long, so a slice of `4 * n` characters is exactly n words.
_WORDS = (
    " the and for was not but you his her she are had all can one out has him who its now may new two any"
    " way our did how get see own say too off old end why few far big day man set put run yes let use top"
).split(" ")[1:]
_POOL_WORDS = 1 << 18  # 262,144 words (1 MiB of text), longer prompts repeat it


class PromptSynthesizer:
    """Makes prompts of exactly n tokens (under `tokenizer`, default builtin) from one seeded random word
    pool; O(n) per prompt."""

    def __init__(self, seed: int = 0, tokenizer: Tokenizer | None = None) -> None:
        rng = np.random.default_rng(seed)
        words = np.array([" " + w for w in _WORDS])
        self._pool = "".join(words[rng.integers(0, words.size, _POOL_WORDS)].tolist())
        self._seed = seed
        # The builtin tokenizer counts each pool word as one token: slicing is exact, no re-tokenising.
        self._tokenizer = None if tokenizer is None or isinstance(tokenizer, BuiltinTokenizer) else tokenizer

    def prompt(self, num_tokens: int, request_id: int) -> str:
        """Exactly `num_tokens` tokens of text (at least 1: servers refuse an empty prompt); the same
        (seed, request_id, num_tokens) gives the same text."""
        num_tokens = max(int(num_tokens), 1)
        words = num_tokens if self._tokenizer is None else 2 * num_tokens + 8  # margin for the cut
        text = self._words(words, request_id)
        if self._tokenizer is not None:
            text = self._tokenizer.truncate(text, num_tokens) or text
        return text

    def _words(self, count: int, request_id: int) -> str:
        # A multiplicative hash of the request id picks the offset: deterministic, spread over the pool.
        offset = (request_id * 2654435761 + self._seed * 40503) % _POOL_WORDS
        start, stop = 4 * offset, 4 * (offset + count)
        text = self._pool
        if stop > len(text):
            text = text * (stop // len(text) + 1)
        return text[start + 1 : stop]  # drop the first word's leading space
