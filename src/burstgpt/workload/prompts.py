"""The prompt pool (paper section IV-B3): real prompt texts indexed by token count.

Sources: ShareGPT-format JSON (human/user turns), Alpaca-format JSON (instruction + input), JSONL with a text
field, plain text (one prompt per blank-line-separated paragraph), a local Hugging Face dataset (when the
`datasets` package is installed), or `synthetic`, a built-in deterministic text source that needs no file.

Tokenizers come from `burstgpt.workload.tokenizer` (builtin, a `tokenizer.json`, or a cached `transformers`
name): the one token-counting rule of the whole package.

`PromptPool.build` keeps up to `buffer_size` prompts for the lengths a workload needs: for each length L it
picks source prompts with at least L tokens uniformly at random and truncates them so that the re-tokenised
prompt has exactly L tokens (candidates whose re-tokenisation differs are dropped). `PromptPool.draw` then
picks, for each request, uniformly among the pool's prompts of its length.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from burstgpt.errors import BurstGPTError, InputError
from burstgpt.workload.tokenizer import Tokenizer

SOURCE_FORMATS = ("auto", "sharegpt", "alpaca", "jsonl", "text", "hf", "synthetic")
_TEXT_FIELDS = ("text", "prompt", "content", "instruction", "question", "input")


# --------------------------------------------------------------------------------------------------------------
# Sources


_SYLLABLES = ("ka", "lo", "mi", "ten", "ra", "sol", "ve", "dun", "pi", "ro", "gal", "ne", "tor", "as", "bri", "um")


def synthetic_texts(num_texts: int, words_per_text: int, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English texts: `num_texts` texts of `words_per_text` words (each word <= 6 letters,
    one builtin token) with a comma or full stop (one more token) after about one word in eight."""
    rng = np.random.default_rng(seed)
    syllables = np.array(_SYLLABLES)
    # A fixed vocabulary of 1,000 words of 1-2 syllables, used with Zipf-like frequencies like real text.
    parts = rng.integers(0, syllables.size, size=(1000, 2))
    two = rng.random(1000) < 0.6
    vocabulary = np.where(two, np.char.add(syllables[parts[:, 0]], syllables[parts[:, 1]]), syllables[parts[:, 0]])
    ranks = np.arange(1, vocabulary.size + 1, dtype=np.float64)
    weights = ranks**-1.0 / np.sum(ranks**-1.0)
    words = vocabulary[rng.choice(vocabulary.size, size=(num_texts, words_per_text), p=weights)]
    marks = rng.random((num_texts, words_per_text))
    words = np.where(marks < 0.09, np.char.add(words, "."), np.where(marks < 0.125, np.char.add(words, ","), words))
    return [" ".join(row) for row in words.tolist()]


def load_prompt_texts(
    source: str, fmt: str = "auto", field: str | None = None, *, synthetic_tokens: int = 4096
) -> list[str]:
    """Prompt texts from a source (see the module doc). Malformed files raise `InputError` naming the line.
    The `synthetic` source gives 64 texts of at least `synthetic_tokens` builtin tokens each."""
    if fmt not in SOURCE_FORMATS:
        raise BurstGPTError(f"unknown prompt format {fmt!r}; choose one of {', '.join(SOURCE_FORMATS)}")
    if source == "synthetic" or fmt == "synthetic":
        return synthetic_texts(64, max(int(synthetic_tokens), 1))
    if source.startswith("hf:") or fmt == "hf":
        return _load_hf(source.removeprefix("hf:"), field)
    path = Path(source)
    if not path.exists():
        raise InputError(path, "no such prompt source")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            return _load_hf(str(path), field)
        raise InputError(path, "a prompt directory must be a saved Hugging Face dataset")
    if fmt == "auto":
        fmt = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(path.suffix, "text")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text (byte {exc.start})") from None
    if fmt == "text":
        texts = [p.strip() for p in re.split(r"\n\s*\n", raw) if p.strip()]
    elif fmt == "jsonl":
        texts = _texts_from_jsonl(path, raw, field)
    else:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"invalid JSON: {exc.msg}", line=exc.lineno) from None
        texts = _texts_from_json(path, data, fmt, field)
    if not texts:
        raise InputError(path, "no prompts found")
    return texts


def _texts_from_jsonl(path: Path, raw: str, field: str | None) -> list[str]:
    texts = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"invalid JSON: {exc.msg}", line=number) from None
        text = _text_of(record, field)
        if text is None:
            raise InputError(path, f"no text field ({field or ' / '.join(_TEXT_FIELDS)})", line=number)
        if text:
            texts.append(text)
    return texts


def _texts_from_json(path: Path, data: object, fmt: str, field: str | None) -> list[str]:
    if isinstance(data, dict):  # some dumps wrap the list: {"data": [...]}
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else data
    if not isinstance(data, list):
        raise InputError(path, "expected a JSON list of prompts or conversations")
    texts: list[str] = []
    for number, item in enumerate(data, start=1):
        if isinstance(item, dict) and "conversations" in item and fmt in ("json", "sharegpt"):
            turns = item["conversations"]
            if not isinstance(turns, list):
                raise InputError(path, f"item {number}: 'conversations' is not a list")
            for turn in turns:
                if isinstance(turn, dict) and turn.get("from", turn.get("role")) in ("human", "user"):
                    value = turn.get("value", turn.get("content"))
                    if isinstance(value, str) and value.strip():
                        texts.append(value)
        elif isinstance(item, dict) and "instruction" in item and fmt in ("json", "alpaca"):
            extra = item.get("input") or ""
            texts.append(f"{item['instruction']}\n\n{extra}" if extra else str(item["instruction"]))
        else:
            text = _text_of(item, field)
            if text is None:
                raise InputError(
                    path, f"item {number}: not a ShareGPT conversation, an Alpaca record or a text record"
                )
            if text:
                texts.append(text)
    return texts


def _text_of(record: object, field: str | None) -> str | None:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        return None
    for name in (field,) if field else _TEXT_FIELDS:
        value = record.get(name)
        if isinstance(value, str):
            return value
    return None


def _load_hf(name: str, field: str | None) -> list[str]:
    if importlib.util.find_spec("datasets") is None:
        raise BurstGPTError("a Hugging Face dataset prompt source needs the 'datasets' package")
    import datasets

    name, _, split = name.partition(":")
    try:
        if Path(name).is_dir():
            dataset = datasets.load_from_disk(name)
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset[split or next(iter(dataset))]
        else:
            dataset = datasets.load_dataset(name, split=split or "train", download_mode="reuse_cache_if_exists")
    except Exception as exc:  # noqa: BLE001 - datasets raises many types
        raise BurstGPTError(f"cannot load dataset {name!r}: {str(exc).splitlines()[0]}") from None
    columns = dataset.column_names
    if "conversations" in columns and not field:
        return _texts_from_json(Path(name), list(dataset), "sharegpt", None)  # rows as dicts
    chosen = field or next((c for c in _TEXT_FIELDS if c in columns), None)
    if chosen is None or chosen not in columns:
        raise BurstGPTError(f"dataset {name!r} has no text column ({', '.join(columns)}); pass --prompt-field")
    return [t for t in dataset[chosen] if isinstance(t, str) and t]


# --------------------------------------------------------------------------------------------------------------
# The pool


@dataclass(frozen=True)
class PromptPool:
    """Prompts sorted by token length. `texts[i]` has exactly `lengths[i]` tokens under `tokenizer_name`."""

    texts: pl.Series  # Utf8, shape (P,)
    lengths: np.ndarray  # int64, shape (P,), ascending
    tokenizer_name: str

    @classmethod
    def build(
        cls,
        source_texts: list[str],
        tokenizer: Tokenizer,
        wanted_lengths: np.ndarray,
        rng: np.random.Generator,
        buffer_size: int = 10_000,
    ) -> PromptPool:
        """A pool of at most `buffer_size` prompts covering the lengths in `wanted_lengths` (tokens; repeats
        weigh a length's share: the most requested lengths are served first when the buffer is smaller than the
        number of distinct lengths). Each length gets buffer_size // distinct lengths candidates (at least 1)."""
        if buffer_size < 1:
            raise BurstGPTError(f"prompt buffer size must be positive, got {buffer_size}")
        distinct, demand = np.unique(np.asarray(wanted_lengths, dtype=np.int64), return_counts=True)
        keep = distinct > 0
        distinct, demand = distinct[keep], demand[keep]
        if distinct.size > buffer_size:
            chosen = np.sort(np.argsort(-demand, kind="stable")[:buffer_size])
            distinct = distinct[chosen]
        per_length = max(1, buffer_size // max(distinct.size, 1))
        counts = tokenizer.count(source_texts)
        order = np.argsort(counts, kind="stable")
        sorted_counts = counts[order]
        pool_texts: list[str] = []
        pool_lengths: list[int] = []
        # One iteration per distinct length (bounded by the buffer), not per request.
        for length in distinct.tolist():
            first_eligible = int(np.searchsorted(sorted_counts, length, side="left"))
            num_eligible = order.size - first_eligible
            if num_eligible == 0:
                continue
            picks = rng.choice(num_eligible, size=min(per_length, num_eligible), replace=False)
            for pick in np.sort(picks).tolist():
                source = source_texts[order[first_eligible + pick]]
                text = source if counts[order[first_eligible + pick]] == length else tokenizer.truncate(source, length)
                if text is not None:
                    pool_texts.append(text)
                    pool_lengths.append(length)
        return cls(pl.Series("prompt", pool_texts, dtype=pl.Utf8), np.array(pool_lengths, dtype=np.int64),
                   tokenizer.name)

    def draw(self, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each requested length, a uniformly chosen pool index with exactly that length; -1 where the pool
        has none. int64, shape (len(lengths),)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        longest = int(self.lengths[-1]) if self.lengths.size else 0
        # Dense table over 0..longest+1 (the last slot stands for "longer than any prompt"): one gather per
        # request instead of two binary searches.
        first_of = np.searchsorted(self.lengths, np.arange(longest + 2), side="left")
        count_of = np.append(np.diff(first_of), 0)
        slot = np.clip(lengths, 0, longest + 1)
        first, available = first_of[slot], count_of[slot]
        ids = first + (rng.random(lengths.size) * available).astype(np.int64)
        return np.where(available > 0, ids, -1)

    def prompts_for(self, ids: np.ndarray) -> pl.Series:
        """Prompt texts for pool indices (null where the index is -1)."""
        index = pl.Series("i", ids, dtype=pl.Int64)
        return self.texts.gather(index.set(index < 0, None)).alias("prompt")
