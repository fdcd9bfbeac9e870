"""The paged KV cache's block accounting, as vLLM V1's block pool keeps it (vllm/v1/core/block_pool.py): a request
holding c computed tokens holds ceil(c / block_size) blocks (written `-(-c // block_size)` in the engine's
loops); blocks are taken as tokens are scheduled and given back when the request leaves the running set (finished,
preempted, aborted).

Automatic prefix caching (`caching`): a full block is cached under a key naming its tokens (`Scheduler` derives
the keys: shared prefix blocks from the workload's prefix block ids, every other block unique to its request).
A freed block with a key stays cached in an LRU of evictable free blocks (`lru`; vLLM appends such blocks to the
end of its free queue and hands out never-cached blocks first) and is evicted only when a new block is needed
and no uncached free block is left. `free` counts every free block, cached or not (vLLM's usage gauge does the
same), `evictable` the cached ones; `refs[key]` is how many running requests hold the block cached under `key`
(0: it is in the LRU). Blocks that nobody can ever look up again (a finished request's unique blocks) are kept as
anonymous counts in the LRU; at its front they are as good as uncached free blocks and are counted with them
(the LRU always starts with a cached block someone may look up), so a workload without shared prefixes and
without preemptions never touches the LRU.

Decoding requests are summarised rather than tracked one by one: the engine's decode clock counts decode steps,
a decoder's computed tokens are its `base` plus the clock, and `by_residue[r]` counts the decoders whose base is
r modulo block_size. At decode clock c the decoders with base = -c mod block_size fill their last block and take
a new one, so a run of pure-decode steps takes blocks in closed form (`steps_until_shortage`; the blocks a run
takes are summed in `ServingEngine._decode_run`, on its hot path).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from itertools import accumulate


class KVCache:
    """Free-block count, the prefix cache's LRU and the decoders' histogram of base mod block_size
    (`by_residue`). The engine reads and writes `free` directly on its hot path; after taking blocks it calls
    `evict` when `free < evictable` (the new blocks came out of the LRU)."""

    __slots__ = ("num_blocks", "block_size", "free", "by_residue", "caching", "evictable", "lru", "refs",
                 "lru_entry", "_dead_tail", "_next_entry", "version")

    def __init__(self, num_blocks: int, block_size: int, caching: bool = False) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free = num_blocks
        self.by_residue = [0] * block_size
        self.caching = caching
        self.evictable = 0
        # LRU of cached free blocks, oldest first: entry id -> key (one block cached under that key) or an int
        # (that many anonymous blocks nobody will look up again).
        self.lru: OrderedDict[int, object] = OrderedDict()
        self.refs: dict[object, int] = {}  # key -> running requests holding its block (0: in the LRU)
        self.lru_entry: dict[object, int] = {}  # key -> its LRU entry, while its block is free
        self._dead_tail: int | None = None  # the LRU's last entry when it is anonymous (merged into)
        self._next_entry = 0
        self.version = 0  # changes whenever what a lookup could find (keys, free or held) changes

    @property
    def used(self) -> int:
        """Blocks held by running requests."""
        return self.num_blocks - self.free

    # -- prefix cache --------------------------------------------------------------------------------------
    def evict(self, count: int) -> None:
        """Evict the `count` oldest cached free blocks (they were just handed out as new blocks)."""
        lru, refs, lru_entry = self.lru, self.refs, self.lru_entry
        self.evictable -= count
        self.version += 1
        while count:
            entry, value = lru.popitem(last=False)
            if type(value) is int:
                if entry == self._dead_tail:
                    self._dead_tail = None
                if value > count:  # the rest of them would now lead the LRU: as good as uncached
                    self.evictable -= value - count
                    break
                count -= value
            else:
                del refs[value], lru_entry[value]
                count -= 1
        self._fold_front()

    def _fold_front(self) -> None:
        """Count anonymous blocks at the LRU's front as uncached free blocks (they are evicted next and nobody
        looks them up: the same thing)."""
        lru = self.lru
        while lru:
            entry = next(iter(lru))
            value = lru[entry]
            if type(value) is not int:
                return
            del lru[entry]
            self.evictable -= value
            if entry == self._dead_tail:
                self._dead_tail = None

    def add_dead(self, count: int) -> None:
        """Append `count` cached blocks nobody can look up again to the LRU (merged with an anonymous tail)."""
        if count and self.lru:  # into an empty LRU: at its front, i.e. uncached
            self.evictable += count
            tail = self._dead_tail
            if tail is None:
                tail = self._dead_tail = self._next_entry
                self._next_entry += 1
                self.lru[tail] = count
            else:
                self.lru[tail] += count

    def _append(self, key) -> None:
        self.version += 1
        entry = self._next_entry
        self._next_entry += 1
        self.lru[entry] = key
        self.lru_entry[key] = entry
        self._dead_tail = None
        self.evictable += 1

    def release(self, key) -> bool:
        """A running request gives back its block cached under `key`: into the LRU when nobody else holds it.
        Returns whether the block is free now."""
        count = self.refs[key] - 1
        self.refs[key] = count
        if count:
            self.version += 1
            return False
        self._append(key)
        return True

    def cache_freed_all(self, keys) -> None:
        """Freed blocks become the ones cached under `keys`, in that order (a block cached under one of them
        before, necessarily free, stays in the LRU anonymously)."""
        lru, refs, lru_entry = self.lru, self.refs, self.lru_entry
        entry = self._next_entry
        anonymized = False
        for key in keys:
            if refs.get(key) == 0:
                lru[lru_entry.pop(key)] = 1
                anonymized = True
            refs[key] = 0
            lru[entry] = key
            lru_entry[key] = entry
            entry += 1
        added = entry - self._next_entry
        if added:
            self._next_entry = entry
            self.evictable += added
            self._dead_tail = None
            self.version += 1
        if anonymized:
            self._fold_front()

    def anonymize(self, key) -> None:
        """The free block cached under `key` can no longer be looked up (it stays in the LRU, anonymously)."""
        self.lru[self.lru_entry.pop(key)] = 1
        self.version += 1
        self._fold_front()

    def register(self, key) -> bool:
        """A running request's block just filled with the tokens `key` names: cache it under `key` unless another
        running request holds a block cached under it (then it stays uncached: a duplicate). A free block cached
        under `key` before stays in the LRU anonymously. Returns whether the block is now cached."""
        count = self.refs.get(key)
        if count:
            return False
        if count == 0:
            self.anonymize(key)
        self.refs[key] = 1
        self.version += 1
        return True

    def touch_all(self, keys) -> None:
        """A request admitted with a prefix-cache hit takes the blocks cached under `keys` (out of the LRU when
        free; `free` is the caller's)."""
        lru, refs, lru_entry = self.lru, self.refs, self.lru_entry
        taken = 0
        for key in keys:
            count = refs[key]
            if not count:
                del lru[lru_entry.pop(key)]
                taken += 1
            refs[key] = count + 1
        self.version += 1
        if taken:
            self.evictable -= taken
            self._fold_front()

    # -- decode runs ---------------------------------------------------------------------------------------
    def steps_until_shortage(self, decoders: int, first: int, limit: int) -> int:
        """How many steps (at most `limit`) a run of pure-decode steps of `decoders` requests can take before a
        step finds too few free blocks; `first` = -clock mod block_size at its first step. After j steps the run
        holds (j // bs) x decoders + at_most[j % bs] more blocks, at_most[r] being the number of decoders at
        residues first, first - 1, ..., first - r + 1 (mod bs)."""
        bs, by_residue = self.block_size, self.by_residue
        quotient, remainder = divmod(self.free, decoders)
        if quotient * bs >= limit:
            return limit
        at_most = [0, *accumulate(by_residue[first::-1] + by_residue[:first:-1])]
        steps = quotient * bs + bisect_right(at_most, remainder) - 1
        return steps if steps < limit else limit
