"""The paged KV cache's block accounting, as vLLM's block manager keeps it: a request holding c computed tokens
holds ceil(c / block_size) blocks (written `-(-c // block_size)` in the engine's loops); blocks are taken as
tokens are scheduled and all freed when the request leaves the running set (finished, preempted, aborted).

Decoding requests are summarised rather than tracked one by one: the engine's decode clock counts decode steps,
a decoder's computed tokens are its `base` plus the clock, and `by_residue[r]` counts the decoders whose base is
r modulo block_size. At decode clock c the decoders with base = -c mod block_size fill their last block and take
a new one, so a run of pure-decode steps takes blocks in closed form (`run_growth`, `steps_until_shortage`).
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate


class KVCache:
    """Free-block count and the decoders' histogram of base mod block_size (`by_residue`). The engine reads and
    writes `free` directly on its hot path."""

    __slots__ = ("num_blocks", "block_size", "free", "by_residue")

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free = num_blocks
        self.by_residue = [0] * block_size

    @property
    def used(self) -> int:
        """Blocks held by running requests."""
        return self.num_blocks - self.free

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

    def run_growth(self, steps: int, first: int, decoders: int) -> int:
        """Blocks a run of `steps` pure-decode steps of `decoders` requests takes (`first` as above)."""
        bs, by_residue = self.block_size, self.by_residue
        low = first - steps % bs + 1  # after steps // bs whole cycles: residues first down to low
        partial = sum(by_residue[low:first + 1]) if low >= 0 else sum(by_residue[:first + 1]) + sum(by_residue[low:])
        return (steps // bs) * decoders + partial
