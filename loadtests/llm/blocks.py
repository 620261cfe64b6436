"""KV blocks with automatic prefix caching: hash chains, reference counts, LRU eviction.

Only *full* blocks are shared. A block's key is the hash of its parent's key and its own
tokens, so a key names the whole prefix up to it and a lookup walks the chain until the first
miss. A cached block is in use while some sequence references it; at reference count zero it
stays cached (a later request can still hit it) but may be evicted, least recently freed
first, to make room. Blocks are counted, not stored: the emulator needs their accounting,
not their contents.

As in vLLM, a sequence frees its blocks tail first, so when a prefix must go, its deepest
blocks go before the shared system prompt they extend.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

ROOT_KEY = 0


def chain_keys(tokens: Sequence[str], block_tokens: int) -> list[int]:
    """The hash-chain key of every full block of ``tokens``, first block first."""
    keys = []
    parent = ROOT_KEY
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        parent = hash((parent, tuple(tokens[start : start + block_tokens])))
        keys.append(parent)
    return keys


@dataclass
class Allocation:
    """The blocks one sequence holds: shared ``cached`` keys and a count of private ones."""

    cached: list[int] = field(default_factory=list)
    private: int = 0


class BlockPool:
    """``num_blocks`` KV blocks: free, cached-and-unused (evictable), or held by sequences."""

    def __init__(self, num_blocks: int, block_tokens: int) -> None:
        self.num_blocks = num_blocks
        self.block_tokens = block_tokens
        self.free = num_blocks  # blocks holding nothing
        self.refs: dict[int, int] = {}  # cached key -> sequences holding it
        self.evictable: OrderedDict[int, None] = OrderedDict()  # refs == 0, oldest first
        self.evictions = 0

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    def hit_blocks(self, keys: Sequence[int]) -> int:
        """How many leading blocks of the chain ``keys`` are cached."""
        hits = 0
        for key in keys:
            if key not in self.refs:
                break
            hits += 1
        return hits

    @property
    def used(self) -> int:
        """Blocks held by sequences (vLLM's KV usage counts evictable ones as free)."""
        return self.num_blocks - self.free - len(self.evictable)

    def allocate(self, keys: Sequence[int], total_tokens: int) -> Allocation | None:
        """Hold the cached prefix of ``keys`` and enough new blocks for ``total_tokens``;
        None, changing nothing, when they do not fit (the sequence must wait)."""
        hits = self.hit_blocks(keys)
        shared = keys[:hits]
        needed = self.blocks_for(total_tokens) - hits
        reusable = sum(1 for key in shared if self.refs[key] == 0)
        if needed > self.free + len(self.evictable) - reusable:
            return None
        for key in shared:
            if self.refs[key] == 0:
                del self.evictable[key]
            self.refs[key] += 1
        for _ in range(needed):
            self._take_one()
        return Allocation(list(shared), needed)

    def _take_one(self) -> None:
        if self.free > 0:
            self.free -= 1
            return
        key, _ = self.evictable.popitem(last=False)
        del self.refs[key]
        self.evictions += 1

    def publish(self, allocation: Allocation, keys: Sequence[int]) -> None:
        """Make the computed full blocks ``keys`` (a chain that extends the allocation's
        cached prefix) shareable: each new key turns one private block into a cached one."""
        for key in keys[len(allocation.cached) :]:
            if allocation.private == 0:
                break
            if key in self.refs:  # another sequence cached the same content first
                if self.refs[key] == 0:
                    del self.evictable[key]
                self.refs[key] += 1
                self.free += 1  # our duplicate private copy goes back
            else:
                self.refs[key] = 1
            allocation.private -= 1
            allocation.cached.append(key)

    def release(self, allocation: Allocation) -> None:
        """Give the allocation's blocks back: private ones free, cached ones evictable at zero
        references, tail first so a chain is evicted from its end."""
        self.free += allocation.private
        for key in reversed(allocation.cached):
            self.refs[key] -= 1
            if self.refs[key] == 0:
                self.evictable[key] = None
        allocation.cached.clear()
        allocation.private = 0
