"""Paged KV-cache bookkeeping: the blocks each sequence holds, and the prefix cache over them.

The cache is ``num_blocks`` blocks of ``block_size`` positions. Block 0 is the null block: it
pads block tables and takes the writes of a CUDA graph's padding rows, so it is never handed
out. Every full block a sequence has computed is registered under a hash chain (its parent's
hash and its own tokens), so a later request whose prompt starts with the same tokens reuses
those blocks instead of recomputing them (vLLM's automatic prefix caching). Blocks are
reference-counted; one nobody holds stays cached, in least-recently-released order, until a new
allocation needs it. A sequence's blocks are released tail first, so the shared heads of
prompts (system prompts, earlier turns) are the last to be evicted.

Pure bookkeeping, no tensors: the engine thread owns it; metrics read its counters.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

NULL_BLOCK = 0
ROOT_HASH = 0

# (hash of the prefix before the block, the block's tokens): equal keys mean equal K/V.
BlockKey = tuple[int, tuple[int, ...]]


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks needed to hold ``tokens`` positions."""
    return -(-tokens // block_size)


@dataclass
class BlockChain:
    """A sequence's blocks in position order and the hashes of its registered full blocks."""

    blocks: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    cached_tokens: int = 0  # the prefix found in the cache when it was allocated


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 2:
            raise ValueError("the KV cache needs at least 2 blocks (one is the null block)")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(1, num_blocks))  # hold nothing reusable
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; LRU first
        self._refs = [0] * num_blocks
        self._key_of: dict[int, BlockKey] = {}
        self._block_of: dict[BlockKey, int] = {}
        self.query_tokens = 0  # prompt tokens looked up in the prefix cache
        self.hit_tokens = 0  # of which found cached

    @property
    def usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def available_blocks(self) -> int:
        """Blocks an allocation may take: free ones plus cached ones nobody holds."""
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        """Share of usable blocks held by sequences, 0..1 (cached idle blocks count as free)."""
        return 1.0 - self.available_blocks / self.usable_blocks

    def cached_prefix(self, tokens: Sequence[int]) -> list[int]:
        """Blocks caching the longest run of full blocks that ``tokens`` starts with.

        The last token is never matched: its logits must be computed to sample from.
        """
        size = self.block_size
        found: list[int] = []
        parent = ROOT_HASH
        for start in range(0, len(tokens) - 1 - size + 1, size):
            key = (parent, tuple(tokens[start : start + size]))
            block = self._block_of.get(key)
            if block is None:
                break
            found.append(block)
            parent = hash(key)
        return found

    def allocate(self, prompt: Sequence[int], total_tokens: int) -> BlockChain | None:
        """Blocks for a sequence of up to ``total_tokens`` positions whose prompt is ``prompt``.

        Reuses the cached prefix of ``prompt`` and reserves the rest at once, so a running
        sequence never runs out of blocks mid-way; ``None`` when they do not fit now.
        """
        hits = self.cached_prefix(prompt)
        need = blocks_for(total_tokens, self.block_size) - len(hits)
        idle_hits = sum(1 for b in hits if self._refs[b] == 0)
        if need > self.available_blocks - idle_hits:
            return None
        for block in hits:
            self._hold(block)
        chain = BlockChain(blocks=hits + [self._take() for _ in range(need)])
        chain.cached_tokens = len(hits) * self.block_size
        parent = ROOT_HASH
        for block in hits:
            parent = hash(self._key_of[block])
            chain.hashes.append(parent)
        self.query_tokens += len(prompt)
        self.hit_tokens += chain.cached_tokens
        return chain

    def commit(self, chain: BlockChain, tokens: Sequence[int], computed: int) -> None:
        """Register the blocks that ``computed`` written positions of ``tokens`` have filled."""
        size = self.block_size
        for index in range(len(chain.hashes), computed // size):
            parent = chain.hashes[-1] if chain.hashes else ROOT_HASH
            key = (parent, tuple(tokens[index * size : (index + 1) * size]))
            block = chain.blocks[index]
            if key not in self._block_of and block not in self._key_of:
                self._block_of[key] = block
                self._key_of[block] = key
            chain.hashes.append(hash(key))

    def release(self, chain: BlockChain) -> None:
        """Drop the sequence's hold on its blocks, tail first (the head stays cached longest)."""
        for block in reversed(chain.blocks):
            self._refs[block] -= 1
            if self._refs[block] > 0:
                continue
            if block in self._key_of:
                self._evictable[block] = None
            else:
                self._free.append(block)
        chain.blocks = []

    def _hold(self, block: int) -> None:
        if self._refs[block] == 0:
            self._evictable.pop(block, None)
        self._refs[block] += 1

    def _take(self) -> int:
        """A block to write: a free one, else the least recently released cached one."""
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)
            del self._block_of[self._key_of.pop(block)]
        self._refs[block] = 1
        return block
