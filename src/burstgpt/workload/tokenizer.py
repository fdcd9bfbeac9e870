"""The one tokenizer interface, used everywhere tokens are counted: workload prompts, the client's synthesised
prompts, the simulated server's `usage` and the prompts built from prefix block ids.

`builtin` is deterministic and offline: every run of up to 6 letters, every digit and every punctuation mark is
one token; whitespace separates tokens and is not one (about 1.3 tokens per English word). A `tokenizer.json`
file goes through the `tokenizers` package; a `transformers` tokenizer name must already be in the local cache.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError, InputError

BUILTIN_PATTERN = r"[^\W\d_]{1,6}|\d|[^\w\s]|_"


class Tokenizer(Protocol):
    """Counts, lists and truncates tokens."""

    name: str

    def tokens(self, text: str) -> Sequence:
        """The tokens of `text` in order, as hashable items (strings or ids)."""

    def count(self, texts: list[str]) -> np.ndarray:
        """Token count of each text, int64, shape (len(texts),)."""

    def truncate(self, text: str, num_tokens: int) -> str | None:
        """A prefix of `text` that re-tokenises to exactly `num_tokens` tokens, or None if there is none."""


class BuiltinTokenizer:
    """Deterministic offline tokenizer: a run of up to 6 letters, a digit or a punctuation mark is one token;
    whitespace separates tokens and is not one. Prefix-stable, so truncation is always exact."""

    name = "builtin"

    def __init__(self) -> None:
        self._regex = re.compile(BUILTIN_PATTERN)

    def tokens(self, text: str) -> list[str]:
        """The tokens of `text`, in order."""
        return self._regex.findall(text)

    def count(self, texts: list[str]) -> np.ndarray:
        # Vectorised in polars' regex engine, which agrees with Python's `re` on this pattern.
        return pl.Series(texts, dtype=pl.Utf8).str.count_matches(BUILTIN_PATTERN).fill_null(0).to_numpy().astype(
            np.int64
        )

    def truncate(self, text: str, num_tokens: int) -> str | None:
        if num_tokens <= 0:
            return None
        ends = self._token_ends(text)
        if ends.size < num_tokens:
            return None
        return text[: ends[num_tokens - 1]]

    @functools.lru_cache(maxsize=256)  # noqa: B019 - tokenizer instances live as long as a pool build
    def _token_ends(self, text: str) -> np.ndarray:
        return np.fromiter((m.end() for m in self._regex.finditer(text)), dtype=np.int64)


class SubwordTokenizer:
    """A real tokenizer given as encode/decode functions (no special tokens). Truncation cuts the ids, decodes,
    re-encodes and corrects the cut a few times until the re-tokenised count is exact."""

    def __init__(
        self,
        name: str,
        encode: Callable[[str], list[int]],
        decode: Callable[[list[int]], str],
        encode_batch: Callable[[list[str]], list[list[int]]] | None = None,
    ) -> None:
        self.name = name
        self._encode = functools.lru_cache(maxsize=256)(encode)
        self._decode = decode
        self._encode_batch = encode_batch

    def tokens(self, text: str) -> tuple[int, ...]:
        """The token ids of `text`, in order (no special tokens)."""
        return tuple(self._encode(text))

    def count(self, texts: list[str]) -> np.ndarray:
        if self._encode_batch is not None:
            return np.array([len(ids) for ids in self._encode_batch(texts)], dtype=np.int64)
        return np.array([len(self._encode(t)) for t in texts], dtype=np.int64)

    def truncate(self, text: str, num_tokens: int) -> str | None:
        ids = self._encode(text)
        if num_tokens <= 0 or len(ids) < num_tokens:
            return None
        cut = num_tokens
        for _ in range(6):
            candidate = self._decode(list(ids[:cut]))
            got = len(self._encode(candidate))
            if got == num_tokens:
                return candidate
            cut += num_tokens - got
            if cut <= 0 or cut > len(ids):
                return None
        return None


def load_tokenizer(spec: str = "builtin") -> Tokenizer:
    """`builtin`; a path to a `tokenizer.json` (needs the `tokenizers` package); or a `transformers` tokenizer
    name or local directory (needs `transformers`; loaded from the local cache only, never downloaded)."""
    if spec in ("", "builtin"):
        return BuiltinTokenizer()
    path = Path(spec)
    if path.suffix == ".json" or (path.is_file() and path.name.endswith("tokenizer.json")):
        if not path.is_file():
            raise InputError(path, "no such tokenizer file")
        if importlib.util.find_spec("tokenizers") is None:
            raise BurstGPTError(
                "a tokenizer.json needs the 'tokenizers' package: pip install 'burstgpt[tokenizers]'"
            )
        from tokenizers import Tokenizer as HFTokenizer

        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exceptions
            raise InputError(path, f"cannot load tokenizer: {str(exc).splitlines()[0]}") from None
        return SubwordTokenizer(
            f"tokenizers:{path}",
            lambda t: tuple(tok.encode(t, add_special_tokens=False).ids),
            lambda ids: tok.decode(ids, skip_special_tokens=True),
            lambda ts: [e.ids for e in tok.encode_batch(ts, add_special_tokens=False)],
        )
    if importlib.util.find_spec("transformers") is None:
        raise BurstGPTError(
            f"tokenizer {spec!r}: use 'builtin', a tokenizer.json file, or install 'transformers' for names"
        )
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(spec, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a missing model
        raise BurstGPTError(f"tokenizer {spec!r} not in the local cache: {str(exc).splitlines()[0]}") from None
    return SubwordTokenizer(
        f"transformers:{spec}",
        lambda t: tuple(tok.encode(t, add_special_tokens=False)),
        lambda ids: tok.decode(ids, skip_special_tokens=True),
    )


@functools.lru_cache(maxsize=1)
def builtin_tokenizer() -> BuiltinTokenizer:
    """The shared builtin tokenizer instance."""
    return BuiltinTokenizer()


def count_tokens(text: str, tokenizer: Tokenizer | None = None) -> int:
    """Tokens in one text under `tokenizer` (default: builtin)."""
    return int((tokenizer or builtin_tokenizer()).count([text])[0])


def block_keys(tokens: Sequence, block_size: int) -> list[int]:
    """One key per full block of `block_size` tokens of a token sequence, chained over the blocks before it (as a
    prefix cache hashes them: equal keys = equal tokens from the start), as non-negative int64 prefix block ids
    (`prefix_block_ids` with `prefix_block_size = block_size`). The tail of a partial block gets no key."""
    keys, previous = [], 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        previous = hash((previous, tuple(tokens[start:start + block_size]))) & 0x7FFF_FFFF_FFFF_FFFF
        keys.append(previous)
    return keys
