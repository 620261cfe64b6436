"""The prefix index: which backends recently received each prompt block, bounded per backend.

What a backend holds in its prefix cache is learnt from what this gateway sent it: every try
records its prompt's block hashes against the backend. Each backend's record is an LRU of at
most its capacity in hashes (about what its KV cache holds: a cache evicts the least recently
used blocks too): the size the backend reports where it does (:meth:`PrefixIndex.set_capacities`,
from its /metrics), ``capacity_blocks`` otherwise, and never more than ``max_blocks`` shared by
the fleet (``max_blocks // backends`` each). A block held by one backend costs about 400 bytes
(its LRU entry and its reverse-map entry), so without the shared bound 1,000 backends of
4,096 blocks would take ~1.6 GB; with it the index stays under ~400 MB at the default
``max_blocks`` whatever the fleet size, and small fleets keep their whole per-backend bound.
A backend that leaves, is ejected, restarts or fails is forgotten at once (its cache is gone
or cold, or it is not where a session should stay).

Lookups rely on the chain (see ``gateway.affinity.blocks``): if a backend holds block i of a
prompt it almost surely holds blocks 0..i-1, because they were sent together and touched
together. So the matched prefix is found by binary search over the block positions, about
``log2(len(hashes))`` dict lookups per backend, and the holders of a prompt's deepest known
block come from one reverse map, without scanning the fleet.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence


class PrefixIndex:
    """Block hash -> backends that recently received it; see the module docstring."""

    __slots__ = ("_capacity", "_held", "_holders", "_share", "capacity_blocks", "max_blocks")

    def __init__(self, capacity_blocks: int, max_blocks: int | None = None) -> None:
        if capacity_blocks < 1:
            raise ValueError("capacity_blocks must be >= 1")
        if max_blocks is not None and max_blocks < 1:
            raise ValueError("max_blocks must be >= 1")
        self.capacity_blocks = capacity_blocks  # for a backend that reports no size
        self.max_blocks = max_blocks  # over the whole fleet (None: no shared bound)
        self._share = max_blocks if max_blocks is not None else capacity_blocks  # per backend
        self._capacity: dict[str, int] = {}  # per backend, from what it reports
        self._held: dict[str, OrderedDict[int, None]] = {}  # per backend, oldest first
        self._holders: dict[int, set[str]] = {}

    def capacity_of(self, backend: str) -> int:
        """The most block hashes kept for ``backend``: its own bound, within its share of
        ``max_blocks``."""
        own = self._capacity.get(backend, self.capacity_blocks)
        return own if self.max_blocks is None else min(own, self._share)

    def set_capacities(self, reported: Mapping[str, int]) -> None:
        """The backends whose KV cache reports a size, and that size in blocks: each record
        is bounded by it (at least 1), the others by ``capacity_blocks``; the least recently
        sent hashes beyond a bound are dropped. Replaces the previous sizes (so the map stays
        as large as the fleet that reports)."""
        self._capacity = {backend: max(1, blocks) for backend, blocks in reported.items()}
        for backend, held in self._held.items():
            self._trim(backend, held)

    def record(self, backend: str, hashes: Sequence[int]) -> None:
        """``backend`` received a prompt with these block hashes: it caches them now."""
        if not hashes:
            return
        held = self._held.get(backend)
        if held is None:
            held = self._held[backend] = OrderedDict()
        holders = self._holders
        for h in hashes:
            if h in held:
                held.move_to_end(h)
            else:
                held[h] = None
                owners = holders.get(h)
                if owners is None:
                    holders[h] = {backend}
                else:
                    owners.add(backend)
        self._trim(backend, held)

    def _trim(self, backend: str, held: OrderedDict[int, None]) -> None:
        capacity = self.capacity_of(backend)
        while len(held) > capacity:
            old, _ = held.popitem(last=False)
            self._drop_holder(old, backend)

    def matched_blocks(self, backend: str, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` ``backend`` is expected to hold."""
        held = self._held.get(backend)
        if not held or not hashes or hashes[0] not in held:
            return 0
        low, high = 1, len(hashes)  # blocks [0, low) are held; find the first not held
        while low < high:
            mid = (low + high) // 2
            if hashes[mid] in held:
                low = mid + 1
            else:
                high = mid
        return low

    def deepest_holders(self, hashes: Sequence[int]) -> tuple[int, set[str]]:
        """The number of leading blocks some backend holds, and those backends (0 and an empty
        set when no backend holds the first block)."""
        holders = self._holders
        if not hashes or hashes[0] not in holders:
            return 0, set()
        low, high = 1, len(hashes)
        while low < high:
            mid = (low + high) // 2
            if hashes[mid] in holders:
                low = mid + 1
            else:
                high = mid
        return low, holders[hashes[low - 1]]

    def forget(self, backend: str) -> None:
        """``backend`` was ejected, restarted or failed: its cache is no longer to be counted
        (its reported capacity is kept: it is the same backend)."""
        held = self._held.pop(backend, None)
        if held is None:
            return
        for h in held:
            self._drop_holder(h, backend)

    def retain(self, backends: set[str]) -> None:
        """Forget every backend not in ``backends`` (after a membership change, or ejected),
        and share ``max_blocks`` among them: a fleet that grew trims each record at once."""
        for backend in [b for b in self._held if b not in backends]:
            self.forget(backend)
        if self.max_blocks is not None:
            share = max(1, self.max_blocks // max(1, len(backends)))
            if share != self._share:
                shrank = share < self._share
                self._share = share
                if shrank:
                    for backend, held in self._held.items():
                        self._trim(backend, held)

    def blocks_held(self, backend: str) -> int:
        """How many block hashes are recorded against ``backend``."""
        held = self._held.get(backend)
        return len(held) if held is not None else 0

    def _drop_holder(self, h: int, backend: str) -> None:
        owners = self._holders.get(h)
        if owners is not None:
            owners.discard(backend)
            if not owners:
                del self._holders[h]
