"""Prefix reuse of traces whose requests carry prompt block ids (`prefix_block_ids`, Mooncake's `hash_ids`):
how much of each prompt was seen before, and the hit rate of an LRU prefix cache as a function of its size.

A request's ids are its prompt's leading KV blocks in order; equal ids are identical blocks of
`block_size` tokens (the last block of a prompt may be partial: it holds what is left of `request_tokens`).
Requests are taken in trace order and, within a request, blocks in prompt order: one *access* per id.

Two views of reuse, both per model x service group (a cache per group: different models never share KV blocks)
and for all requests together (one cache):

- **seen before**: the access's block occurred in an earlier request (a block repeated inside one request is
  not seen before on its second occurrence). `prefix_seen_before` counts only the leading run of a request's
  blocks that were all seen before: what an unbounded prefix cache can serve.
- **LRU hit rate** of a cache of C blocks whose blocks are touched in access order (every block of every request,
  hit or miss, becomes most recently used). Two hit rates from the same cache:
  `hit_rate` counts every access whose block is in the cache (a per-block cache);
  `prefix_hit_rate` counts a hit only on the leading run of a request's blocks that are all cached, as a
  prefix cache (vLLM's) serves them: once a block misses, the rest of the request misses too. Since the request's
  blocks before a hit were all hits (no eviction happened), this equals "block k hits iff the largest stack
  distance among blocks 0..k of the request is below C". `prefix_token_hit_rate` weights those hits by their
  tokens over all prompt tokens (vLLM's `prefix_cache_hits / prefix_cache_queries` counts tokens).
  The model has no capacity held by running requests, and vLLM frees a finished request's tail blocks first;
  it is the idealised cache a trace's ids imply, not a simulation of one engine (that is `burstgpt simulate`).

Method (exact, all cache sizes at once): an access hits an LRU cache of C blocks iff its *stack distance*, the
number of distinct blocks touched since the previous access of its block, is below C (Mattson et al. 1970); a
first access never hits. For an access i whose block was last accessed at p,
`distance(i) = (distinct blocks before i) - 1 - #{j < p : next(j) > i}`, where next(j) is the position of the
next access of j's block (infinite for its last access). The last count is, for every access p, the number of
earlier accesses whose next access comes later than p's: an inversion count per element, computed by
`_earlier_greater_counts` in ceil(log2 N) vectorised passes over the accesses (a wavelet matrix: one stable
partition by each bit of the value, most significant first). Total O(N log N) time and O(N) memory for N
accesses; one sort of the ids finds previous and next accesses. 1M accesses take about 0.5 s, 10M about 6 s on
the 2-core development machine (`stack_distances` on random ids, see docs/analysis.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from burstgpt.analysis.temporal import GROUP, clock_offset_s

#: Stack distance of a block's first access: it misses every cache.
COLD = np.iinfo(np.int64).max

#: Cache sizes, tokens, at which summary.json reports hit rates: about one GPU's KV cache for a 7-70B model,
#: a node's, and a CPU-memory tier such as Mooncake's. Traces without a block size use `SUMMARY_CACHE_BLOCKS`.
SUMMARY_CACHE_TOKENS = (100_000, 1_000_000, 10_000_000)
SUMMARY_CACHE_BLOCKS = (100, 1_000, 10_000)

#: Cache sizes on the hit-rate curve: up to this many log-spaced sizes from 1 block to the distinct blocks.
CURVE_POINTS = 64

#: `scope` of the rows covering one model x service group, and of the rows covering all requests.
SCOPE_GROUP = "group"
SCOPE_ALL = "all"


def has_prefix_ids(frame: pl.DataFrame) -> bool:
    """Whether any request of a trace table has at least one prefix block id."""
    return (frame.height > 0 and "prefix_block_ids" in frame.columns
            and bool((frame["prefix_block_ids"].list.len().fill_null(0) > 0).any()))


# ------------------------------------------------------------------------------------------------ stack distances


def _earlier_greater_counts(permutation: np.ndarray) -> np.ndarray:
    """For a permutation `v` of 0..n-1: `counts[j] = #{j' < j : v[j'] > v[j]}` (int64, shape (n,)).

    A wavelet matrix built top-down: at bit b the elements are ordered by (v >> (b + 1), position), so each group
    of values sharing their bits above b is contiguous, starts at index `(v >> (b + 1)) << (b + 1)` (v is a
    permutation) and holds `2**b` values with bit b set when full. An element with bit b clear is smaller than
    every earlier element of its group with bit b set: count those (a cumulative sum), then stably partition
    each group by bit b. Elements of other groups were compared at a higher bit. After the last bit the order
    is by value, so the counts are read back by value.
    """
    n = permutation.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    dtype = np.int32 if n < 2**31 - 1 else np.int64
    values = permutation.astype(dtype)
    counts = np.zeros(n, dtype=dtype)
    index = np.arange(n, dtype=dtype)
    values_next, counts_next = np.empty_like(values), np.empty_like(counts)
    bit, ones, start, position, scratch = (np.empty_like(values) for _ in range(5))
    for b in range(max(int(n - 1).bit_length(), 1) - 1, -1, -1):
        half = 1 << b
        np.right_shift(values, b, out=bit)
        bit &= 1
        np.cumsum(bit, out=ones)
        ones -= bit  # elements with bit b set before this one
        np.bitwise_and(values, dtype(~(2 * half - 1)), out=start)  # index where this element's group starts
        np.right_shift(start, 1, out=scratch)  # every earlier group is full: half of it has bit b set
        ones -= scratch  # ... so these are the ones before this element within its group
        np.multiply(ones, bit, out=scratch)
        counts += ones
        counts -= scratch  # added only where bit b is clear
        # New position: a clear bit keeps its rank among the group's clear bits (index - ones); a set bit goes
        # after the group's clear bits, of which there are `half` unless the group is the last, short one.
        np.add(start, half, out=position)
        position += ones
        position += ones
        position -= index
        last_start = int(values[-1]) & ~(2 * half - 1)
        if n - last_start < half:
            position[last_start:] -= half - (n - last_start)
        position *= bit
        position += index
        position -= ones
        values_next[position] = values
        counts_next[position] = counts
        values, values_next = values_next, values
        counts, counts_next = counts_next, counts
    return counts[permutation].astype(np.int64)


@dataclass
class _Occurrences:
    """Previous and next access of the same block for each access (-1: none), and where its block first
    occurred."""

    previous: np.ndarray
    next: np.ndarray
    first: np.ndarray


def _occurrences(block_ids: np.ndarray) -> _Occurrences:
    n = block_ids.size
    order = np.argsort(block_ids, kind="stable")  # accesses of each block together, in access order
    ordered = block_ids[order]
    same = ordered[1:] == ordered[:-1]
    previous = np.full(n, -1, dtype=np.int64)
    following = np.full(n, -1, dtype=np.int64)
    previous[order[1:][same]] = order[:-1][same]
    following[order[:-1][same]] = order[1:][same]
    run_start = np.ones(n, dtype=bool)
    run_start[1:] = ~same
    first = np.empty(n, dtype=np.int64)
    first[order] = order[run_start][np.cumsum(run_start) - 1]
    return _Occurrences(previous, following, first)


def _stack_distances(block_ids: np.ndarray, occurrences: _Occurrences) -> np.ndarray:
    n = block_ids.size
    previous, following = occurrences.previous, occurrences.next
    reuse = previous >= 0
    distances = np.full(n, COLD, dtype=np.int64)
    if not reuse.any():
        return distances
    distinct_before = np.cumsum(~reuse) - (~reuse)  # distinct blocks in accesses [0, i)
    has_next = following >= 0
    # Values next(j) of the accesses that have a next one, ranked among the reuse positions: a permutation.
    reuse_rank = np.cumsum(reuse) - 1
    later_next = _earlier_greater_counts(reuse_rank[following[has_next]])
    # Accesses with no next access count as "next is later" for everyone after them.
    lasts_before = np.cumsum(~has_next) - (~has_next)
    contained = np.zeros(n, dtype=np.int64)
    contained[has_next] = later_next
    contained += lasts_before
    distances[reuse] = distinct_before[reuse] - 1 - contained[previous[reuse]]
    return distances


def stack_distances(block_ids: np.ndarray) -> np.ndarray:
    """LRU stack distance of each access of a block-access stream (int64, shape of `block_ids`): the number of
    distinct other blocks accessed since the previous access of the same block; `COLD` for a first access. An
    access hits an LRU cache of C blocks iff its distance is below C. O(N log N) (see the module docstring)."""
    block_ids = np.asarray(block_ids)
    return _stack_distances(block_ids, _occurrences(block_ids))


def _segment_cummax(values: np.ndarray, segment: np.ndarray, ceiling: int) -> np.ndarray:
    """Running maximum of `values` (0..ceiling) restarting at each new `segment` (non-decreasing ints):
    offsetting each segment above every earlier one lets one global running maximum do it. Segments are
    numbered densely first, so the offsets stay below segments x (ceiling + 1) <= N x (N + 1)."""
    if segment.size == 0:
        return values
    rank = np.cumsum(np.concatenate(([False], segment[1:] != segment[:-1])), dtype=np.int64)
    offset = rank * (ceiling + 1)
    return np.maximum.accumulate(values + offset) - offset


# ------------------------------------------------------------------------------------------------ one stream


@dataclass
class ReuseProfile:
    """The reuse of one access stream (one cache). Arrays have one entry per access.

    `distances`: LRU stack distances (`COLD` for first accesses); `prefix_distances`: the largest distance among
    the request's blocks up to this one (a prefix cache of C blocks serves the access iff it is below C);
    `seen_before`: the block occurred in an earlier request; `prefix_seen_before`: it and every earlier block of
    its request did; `tokens`: tokens the access's block holds (None without a block size); `prompt_tokens`:
    total prompt tokens of the requests (the denominator of the token fractions); `distinct_blocks`.
    """

    distances: np.ndarray
    prefix_distances: np.ndarray
    seen_before: np.ndarray
    prefix_seen_before: np.ndarray
    tokens: np.ndarray | None
    prompt_tokens: int | None
    distinct_blocks: int

    @property
    def accesses(self) -> int:
        return int(self.distances.size)

    def hit_rates(self, cache_blocks) -> dict[str, np.ndarray]:
        """Hit rates of an LRU cache of each size in `cache_blocks` (blocks, >= 0): `hit_rate` (per block),
        `prefix_hit_rate` (leading run of the request, per block) and `prefix_token_hit_rate` (the same in
        tokens over all prompt tokens; NaN without token counts). Arrays shaped like `cache_blocks`."""
        sizes = np.minimum(np.asarray(cache_blocks, dtype=np.int64), self.distinct_blocks)
        total = max(self.accesses, 1)
        rates = {}
        for name, distances, weights, denominator in (
            ("hit_rate", self.distances, None, total),
            ("prefix_hit_rate", self.prefix_distances, None, total),
            ("prefix_token_hit_rate", self.prefix_distances, self.tokens, self.prompt_tokens),
        ):
            if denominator is None or (weights is not None and denominator == 0):
                rates[name] = np.full(sizes.shape, np.nan)
                continue
            # hits(C) = accesses with distance < C; a first access (COLD) falls in the last bin, never counted.
            counts = np.bincount(np.minimum(distances, self.distinct_blocks), weights=weights,
                                 minlength=self.distinct_blocks + 1)
            below = np.concatenate(([0], np.cumsum(counts[:-1])))
            rates[name] = below[sizes] / denominator
        return rates


def reuse_profile(
    block_ids: np.ndarray,
    request: np.ndarray,
    tokens: np.ndarray | None = None,
    prompt_tokens: int | None = None,
) -> ReuseProfile:
    """The `ReuseProfile` of an access stream: `block_ids` in access order, `request` the (non-decreasing)
    request index of each access (a request's accesses are consecutive, in prompt order), `tokens` the tokens
    each block holds and `prompt_tokens` the requests' total prompt tokens (both optional)."""
    block_ids = np.asarray(block_ids, dtype=np.int64)
    request = np.asarray(request, dtype=np.int64)
    occurrences = _occurrences(block_ids)
    distances = _stack_distances(block_ids, occurrences)
    distinct = int((occurrences.previous < 0).sum())
    prefix = _segment_cummax(np.minimum(distances, distinct), request, distinct)
    prefix = np.where(prefix >= distinct, COLD, prefix)
    seen = request[occurrences.first] < request
    # Leading run of seen blocks: the running minimum of `seen` within the request (as a running max of unseen).
    prefix_seen = _segment_cummax((~seen).astype(np.int64), request, 1) == 0
    return ReuseProfile(distances, prefix, seen, prefix_seen,
                        None if tokens is None else np.asarray(tokens, dtype=np.float64), prompt_tokens, distinct)


def curve_cache_blocks(distinct_blocks: int, points: int = CURVE_POINTS) -> np.ndarray:
    """Log-spaced cache sizes, blocks, from 1 to `distinct_blocks` (both included; at most `points`)."""
    if distinct_blocks < 1:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.round(np.geomspace(1, distinct_blocks, points)).astype(np.int64))


# ------------------------------------------------------------------------------------------------ trace tables


@dataclass
class PrefixReuse:
    """Prefix reuse of a trace (see `prefix_reuse_statistics`). Every table has columns scope (`SCOPE_GROUP`
    rows: one model x service group, its own cache; `SCOPE_ALL` rows: all requests, one cache; model and service
    null), model, service.

    `summary`, one row per scope: requests (with ids), block_accesses, distinct_blocks, prompt_tokens,
    seen_before_fraction, seen_before_token_fraction, prefix_seen_before_fraction,
    prefix_seen_before_token_fraction.
    `windows`, one row per scope x analysis window with requests: window_start_s, window_end_s (trace seconds;
    windows of `window_s` aligned on the clock as the arrival fits'), requests, block_accesses,
    seen_before_blocks, prompt_tokens, seen_before_tokens, prefix_seen_before_blocks, prefix_seen_before_tokens,
    then the four fractions of `summary` (blocks seen in an earlier request of the whole trace, not only of the
    window).
    `curve`, one row per scope x cache size: cache_blocks, cache_tokens (null without a block size), hit_rate,
    prefix_hit_rate, prefix_token_hit_rate (see the module docstring).
    `at_sizes`: the same columns at `SUMMARY_CACHE_TOKENS` (or `SUMMARY_CACHE_BLOCKS`) for summary.json.
    """

    block_size: int | None
    summary: pl.DataFrame
    windows: pl.DataFrame
    curve: pl.DataFrame
    at_sizes: pl.DataFrame

    def to_dict(self) -> dict:
        """summary.json's `prefix_reuse` section: block size, then per scope its summary row with
        `hit_rate_at` (the `at_sizes` rows)."""
        def record(row: dict) -> dict:
            key = (row["scope"], row["model"], row["service"])
            sizes = self.at_sizes.filter((pl.col("scope") == key[0]) & pl.col("model").eq_missing(key[1])
                                         & pl.col("service").eq_missing(key[2]))
            return {**{k: _finite(v) for k, v in row.items() if k != "scope"},
                    "hit_rate_at": [{k: _finite(v) for k, v in r.items() if k not in ("scope", "model", "service")}
                                    for r in sizes.iter_rows(named=True)]}

        rows = list(self.summary.iter_rows(named=True))
        overall = next(r for r in rows if r["scope"] == SCOPE_ALL)
        return {
            "block_size_tokens": self.block_size,
            "overall": {k: v for k, v in record(overall).items() if k not in ("model", "service")},
            "groups": [record(r) for r in rows if r["scope"] == SCOPE_GROUP],
        }


def _finite(value):
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _fraction(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    return pl.when(denominator > 0).then(numerator / denominator).otherwise(None)


_FRACTIONS = [
    _fraction(pl.col("seen_before_blocks"), pl.col("block_accesses")).alias("seen_before_fraction"),
    _fraction(pl.col("seen_before_tokens"), pl.col("prompt_tokens")).alias("seen_before_token_fraction"),
    _fraction(pl.col("prefix_seen_before_blocks"), pl.col("block_accesses")).alias("prefix_seen_before_fraction"),
    _fraction(pl.col("prefix_seen_before_tokens"), pl.col("prompt_tokens"))
    .alias("prefix_seen_before_token_fraction"),
]


def prefix_reuse_statistics(
    frame: pl.DataFrame,
    block_size: int | None,
    *,
    window_s: float = 1200.0,
    origin: datetime | None = None,
) -> PrefixReuse | None:
    """Prefix reuse of a trace table (`burstgpt.trace.schema`) with `block_size` tokens per id (None: token
    columns null), per model x service group and for all requests (see `PrefixReuse`); None when no request
    has ids. Requests without ids are left out; `window_s` (seconds) and `origin` place the analysis windows."""
    if not has_prefix_ids(frame):
        return None
    offset = clock_offset_s(origin)
    first_s = float(frame["timestamp_s"].min())
    windows_start_s = float(np.floor((first_s + offset) / window_s) * window_s - offset)
    requests = (
        frame.select(pl.col(*GROUP).cast(pl.Utf8), "timestamp_s", "request_tokens", "prefix_block_ids")
        .with_row_index("request")
        .filter(pl.col("prefix_block_ids").list.len() > 0)
        .with_columns(((pl.col("timestamp_s") - windows_start_s) // window_s).cast(pl.Int64).alias("window"))
    )
    accesses = (
        requests.select("request", *GROUP, "window", "request_tokens", "prefix_block_ids",
                        pl.int_ranges(0, pl.col("prefix_block_ids").list.len()).alias("position"))
        .explode("prefix_block_ids", "position")
    )
    has_size = block_size is not None
    if has_size:
        block_tokens = (pl.col("request_tokens") - pl.col("position") * block_size).clip(0, block_size)
        accesses = accesses.with_columns(block_tokens.alias("tokens"))
    scopes: list[tuple[dict, pl.DataFrame, pl.DataFrame]] = []
    for model, service in requests.select(*GROUP).unique(maintain_order=True).rows():
        keep = pl.col("model").eq_missing(model) & pl.col("service").eq_missing(service)
        scopes.append(({"scope": SCOPE_GROUP, "model": model, "service": service},
                       requests.filter(keep), accesses.filter(keep)))
    all_scope = {"scope": SCOPE_ALL, "model": None, "service": None}
    summaries, window_tables, curves, at_sizes = [], [], [], []
    profiles: list[ReuseProfile] = []
    for scope, scope_requests, scope_accesses in [*scopes, (all_scope, requests, accesses)]:
        if scope is all_scope and len(scopes) == 1:
            profile = profiles[0]  # one group: the shared cache is the group's
        else:
            prompt = int(scope_requests["request_tokens"].sum()) if has_size else None
            profile = reuse_profile(scope_accesses["prefix_block_ids"].to_numpy(),
                                    scope_accesses["request"].to_numpy(),
                                    scope_accesses["tokens"].to_numpy() if has_size else None, prompt)
        profiles.append(profile)
        labels = [pl.lit(v, pl.Utf8).alias(k) for k, v in scope.items()]
        flagged = scope_accesses.select(
            "window",
            pl.Series("seen", profile.seen_before),
            pl.Series("prefix_seen", profile.prefix_seen_before),
            (pl.col("tokens") if has_size else pl.lit(None, pl.Int64)).alias("tokens"),
        )
        per_window = (
            flagged.group_by("window").agg(
                pl.len().cast(pl.Int64).alias("block_accesses"),
                pl.col("seen").sum().cast(pl.Int64).alias("seen_before_blocks"),
                pl.col("prefix_seen").sum().cast(pl.Int64).alias("prefix_seen_before_blocks"),
                pl.col("tokens").filter(pl.col("seen")).sum().alias("seen_before_tokens"),
                pl.col("tokens").filter(pl.col("prefix_seen")).sum().alias("prefix_seen_before_tokens"),
            )
            .join(scope_requests.group_by("window").agg(
                pl.len().cast(pl.Int64).alias("requests"), pl.col("request_tokens").sum().alias("prompt_tokens")),
                on="window")
        )
        if not has_size:
            per_window = per_window.with_columns(
                pl.lit(None, pl.Int64).alias(c) for c in ("prompt_tokens", "seen_before_tokens",
                                                          "prefix_seen_before_tokens"))
        counts = ["requests", "block_accesses", "seen_before_blocks", "prompt_tokens", "seen_before_tokens",
                  "prefix_seen_before_blocks", "prefix_seen_before_tokens"]
        window_tables.append(
            per_window.sort("window").select(
                *labels,
                (windows_start_s + pl.col("window") * window_s).alias("window_start_s"),
                (windows_start_s + (pl.col("window") + 1) * window_s).alias("window_end_s"),
                *[pl.col(c).cast(pl.Int64) for c in counts],
            ).with_columns(_FRACTIONS)
        )
        summaries.append(
            per_window.select(pl.col(c).sum().cast(pl.Int64) for c in counts)
            .with_columns(
                pl.lit(profile.distinct_blocks, pl.Int64).alias("distinct_blocks"),
                *([] if has_size else [pl.lit(None, pl.Int64).alias(c) for c in
                                       ("prompt_tokens", "seen_before_tokens", "prefix_seen_before_tokens")]),
            )
            .with_columns(_FRACTIONS)
            .select(*labels, "requests", "block_accesses", "distinct_blocks", "prompt_tokens",
                    "seen_before_fraction", "seen_before_token_fraction", "prefix_seen_before_fraction",
                    "prefix_seen_before_token_fraction")
        )
        sizes = curve_cache_blocks(profile.distinct_blocks)
        curves.append(_rate_table(labels, sizes, profile, block_size))
        summary_sizes = (np.array([max(t // block_size, 1) for t in SUMMARY_CACHE_TOKENS]) if has_size
                         else np.array(SUMMARY_CACHE_BLOCKS))
        at_sizes.append(_rate_table(labels, summary_sizes, profile, block_size))
    return PrefixReuse(block_size, pl.concat(summaries), pl.concat(window_tables), pl.concat(curves),
                       pl.concat(at_sizes))


def _rate_table(labels: list[pl.Expr], cache_blocks: np.ndarray, profile: ReuseProfile,
                block_size: int | None) -> pl.DataFrame:
    rates = profile.hit_rates(cache_blocks)
    return pl.DataFrame({
        "cache_blocks": cache_blocks.astype(np.int64),
        "cache_tokens": cache_blocks.astype(np.int64) * block_size if block_size is not None
        else pl.Series([None] * cache_blocks.size, dtype=pl.Int64),
        **{name: values.astype(np.float64) for name, values in rates.items()},
    }).select(*labels, pl.all()).with_columns(pl.col(pl.Float64).fill_nan(None))
