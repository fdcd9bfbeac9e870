"""Synthetic prompts of a given token length, for workload rows that carry no prompt text.

The text is a random sequence of common three-letter English words, each with a leading space (" the",
" and", ...). Under the builtin tokenizer (`burstgpt.workload.tokenizer`) each word is exactly one token, so a
prompt of n words has exactly n tokens; in the BPE and SentencePiece tokenizers of current LLMs each such word
is one token too (servers add a BOS token or chat template; the server's `usage` gives the exact count). With
another tokenizer given, the prompt is cut to exactly n of its tokens. Each request starts at a different
random offset so prompts share no prefix and prefix caching cannot make a synthetic workload cheaper than a
real one.

Shared prefixes (`prefix_block_ids`, `prefix_block_size` P in the workload): block id h stands for a fixed
text of exactly P tokens that depends only on (h, P, tokenizer), drawn from a word pool of its own (not
seeded by the prompt seed, so every run and every request sees the same text for the same id). A prompt is
the concatenation of its ids' texts (the last one cut when the ids cover more than the prompt) and then the
request's own random words up to `input_tokens`. Equal leading ids therefore give byte-identical leading text
of exactly P tokens per id, which a server's prefix cache can reuse. Every block starts with a space-led word,
so with a pre-tokenizer that splits before spaces (builtin, byte-level BPE, SentencePiece) no token spans two
blocks and a block's count is the same wherever it sits; the whole prompt is re-counted and corrected anyway.
"""

from __future__ import annotations

import functools

import numpy as np

from burstgpt.errors import BurstGPTError
from burstgpt.workload.tokenizer import BuiltinTokenizer, Tokenizer

# All four characters long, so a slice of `4 * n` characters is exactly n words.
_WORDS = (
    " the and for was not but you his her she are had all can one out has him who its now may new two any"
    " way our did how get see own say too off old end why few far big day man set put run yes let use top"
).split(" ")[1:]
_POOL_WORDS = 1 << 18  # 262,144 words (1 MiB of text), longer prompts repeat it
_BLOCK_POOL_SEED = 0x626C6F636B  # "block": the block texts' own pool, the same for every run
_MASK64 = (1 << 64) - 1
_CORRECTIONS = 6  # re-count rounds for a subword tokenizer before giving up on exactness


@functools.lru_cache(maxsize=4)
def _word_pool(seed: int) -> str:
    """`_POOL_WORDS` random pool words (each " xyz"), one string."""
    rng = np.random.default_rng(seed)
    words = np.array([" " + w for w in _WORDS])
    return "".join(words[rng.integers(0, words.size, _POOL_WORDS)].tolist())


def _pool_slice(pool: str, offset: int, count: int) -> str:
    """`count` words of `pool` from word `offset` (wrapping round), each with its leading space."""
    start, stop = 4 * offset, 4 * (offset + count)
    if stop > len(pool):
        pool = pool * (stop // len(pool) + 1)
    return pool[start:stop]


def _mix(*values: int) -> int:
    """A 64-bit hash of integers (splitmix64 steps): block ids 0, 1, 2, ... land far apart in the pool."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h


class PromptSynthesizer:
    """Makes prompts of exactly n tokens (under `tokenizer`, default builtin) from one seeded random word
    pool; O(n) per prompt. `prompt(..., prefix_block_ids=, prefix_block_size=)` starts the prompt with the
    shared texts of its block ids."""

    def __init__(self, seed: int = 0, tokenizer: Tokenizer | None = None) -> None:
        self._pool = _word_pool(seed)
        self._block_pool = _word_pool(_BLOCK_POOL_SEED)
        self._seed = seed
        # The builtin tokenizer counts each pool word as one token: slicing is exact, no re-tokenising.
        self._tokenizer = None if tokenizer is None or isinstance(tokenizer, BuiltinTokenizer) else tokenizer
        self.tokenizer_name = "builtin" if self._tokenizer is None else self._tokenizer.name
        self._block_cache: dict[tuple[int, int], str] = {}

    def prompt(
        self,
        num_tokens: int,
        request_id: int,
        *,
        prefix_block_ids: list[int] | None = None,
        prefix_block_size: int | None = None,
    ) -> str:
        """Exactly `num_tokens` tokens of text (at least 1: servers refuse an empty prompt); the same
        (seed, request_id, num_tokens, block ids) gives the same text. With block ids, the prompt starts with
        `block_text` of each id (P = `prefix_block_size` tokens each; the last cut to fit `num_tokens`)."""
        num_tokens = max(int(num_tokens), 1)
        if not prefix_block_ids:
            words = num_tokens if self._tokenizer is None else 2 * num_tokens + 8  # margin for the cut
            text = self._words(words, request_id)[1:]  # drop the first word's leading space
            if self._tokenizer is not None:
                text = self._tokenizer.truncate(text, num_tokens) or text
            return text
        size = int(prefix_block_size or 0)
        if size < 1:
            raise BurstGPTError(f"request {request_id}: prefix block ids need a positive prefix block size")
        full, last = divmod(num_tokens, size)
        ids = [int(h) for h in prefix_block_ids]
        if len(ids) > full:  # the ids cover the whole prompt: the last block in use is cut
            prefix = "".join(self.block_text(h, size) for h in ids[:full])
            if last:
                prefix += self._cut_block(ids[full], size, last)
            tail_tokens = 0
        else:
            prefix = "".join(self.block_text(h, size) for h in ids)
            tail_tokens = num_tokens - size * len(ids)
        if self._tokenizer is None:
            return prefix + (self._words(tail_tokens, request_id) if tail_tokens else "")
        return self._exact(prefix, tail_tokens, num_tokens, request_id)

    def block_text(self, block_id: int, block_size: int) -> str:
        """The fixed text of block `block_id`: exactly `block_size` tokens, each word with a leading space.

        Two halves from two hashed pool offsets, so distinct ids get distinct texts (a clash needs both
        18-bit offsets to agree)."""
        key = (block_id, block_size)
        text = self._block_cache.get(key)
        if text is not None:
            return text
        h1, h2 = _mix(block_id, block_size, 1), _mix(block_id, block_size, 2)
        if self._tokenizer is None:
            half = (block_size + 1) // 2
            text = (_pool_slice(self._block_pool, h1 % _POOL_WORDS, half)
                    + _pool_slice(self._block_pool, h2 % _POOL_WORDS, block_size - half))
        else:
            text = self._subword_block(h1, h2, block_size, block_id)
        if len(self._block_cache) >= 8192:  # bounded memory: drop the oldest entry
            self._block_cache.pop(next(iter(self._block_cache)))
        self._block_cache[key] = text
        return text

    # ------------------------------------------------------------------------------------------- internals

    def _words(self, count: int, request_id: int) -> str:
        """`count` words of the request's own text, each with its leading space."""
        # A multiplicative hash of the request id picks the offset: deterministic, spread over the pool.
        offset = (request_id * 2654435761 + self._seed * 40503) % _POOL_WORDS
        return _pool_slice(self._pool, offset, count)

    def _cut_block(self, block_id: int, block_size: int, num_tokens: int) -> str:
        """The first `num_tokens` tokens of a block's text (the same cut for the same id and length)."""
        text = self.block_text(block_id, block_size)
        if self._tokenizer is None:
            return text[: 4 * num_tokens]
        return self._tokenizer.truncate(text, num_tokens) or text

    def _subword_block(self, h1: int, h2: int, block_size: int, block_id: int) -> str:
        # Words may be several tokens each: 2P + 8 words hold at least P tokens; cut to exactly P. The cut
        # needs decode(encode) to round-trip; a cut ending in a lone space (which the next block's leading
        # space could merge with) is avoided by trying a few other offsets.
        fallback = None
        for attempt in range(8):
            words = 2 * block_size + 8
            half = words // 2
            candidate = (_pool_slice(self._block_pool, (h1 + attempt) % _POOL_WORDS, half)
                         + _pool_slice(self._block_pool, h2 % _POOL_WORDS, words - half))
            text = self._tokenizer.truncate(candidate, block_size)
            if text is None or not text.startswith(" "):
                continue
            if not text[-1].isspace():
                return text
            fallback = fallback or text
        if fallback is not None:
            return fallback
        raise BurstGPTError(f"tokenizer {self.tokenizer_name}: cannot make block {block_id} exactly "
                            f"{block_size} tokens long")

    def _exact(self, prefix: str, tail_tokens: int, num_tokens: int, request_id: int) -> str:
        """`prefix` plus the request's own words, re-counted under the tokenizer and corrected until the whole
        prompt is exactly `num_tokens` tokens (boundary effects such as a tokenizer's dummy leading space)."""
        tokenizer = self._tokenizer
        own = self._words(2 * max(tail_tokens, 1) + 8 + _CORRECTIONS, request_id)
        tail = tokenizer.truncate(own, tail_tokens) if tail_tokens > 0 else ""
        text = prefix + (tail or "")
        for _ in range(_CORRECTIONS):
            got = int(tokenizer.count([text])[0])
            if got == num_tokens:
                return text
            if got > num_tokens:  # cut the end; the leading (shared) text is untouched
                return tokenizer.truncate(text, num_tokens) or text
            tail_tokens += num_tokens - got
            own = self._words(2 * tail_tokens + 8, request_id)
            text = prefix + (tokenizer.truncate(own, tail_tokens) or own)
        return text
