"""The in-process store: least recently used answers go first, bounded by bytes and entries.

Pure: the clock is passed in (``now``, seconds on the caller's monotonic clock). Entries expire
at an absolute time so that an answer copied from the shared store keeps the time it had left
there instead of starting a new TTL.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.cache.entry import CachedResponse

EvictionListener = Callable[[str], None]  # called with the reason: "size" or "expired"


@dataclass(frozen=True, slots=True)
class StoreLimits:
    max_bytes: int
    max_entries: int
    max_entry_bytes: int


@dataclass(slots=True)
class _Slot:
    entry: CachedResponse
    expires_at: float
    size_bytes: int


class MemoryStore:
    def __init__(self, limits: StoreLimits, on_evict: EvictionListener | None = None) -> None:
        self.limits = limits
        self._on_evict = on_evict
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self.bytes_held = 0

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, key: str, now: float) -> CachedResponse | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        if slot.expires_at <= now:
            self._drop(key, "expired")
            return None
        self._slots.move_to_end(key)
        return slot.entry

    def put(self, key: str, entry: CachedResponse, expires_at: float, now: float) -> bool:
        """Keep ``entry`` until ``expires_at``; False when it is over the per-entry limit
        (or already expired) and so was not kept."""
        size = entry.size_bytes
        if size > self.limits.max_entry_bytes or expires_at <= now:
            return False
        if key in self._slots:
            self._drop(key, None)
        self._slots[key] = _Slot(entry, expires_at, size)
        self.bytes_held += size
        self._make_room(now)
        return True

    def resize(self, limits: StoreLimits, now: float) -> None:
        """New limits, applied at once (a config reload keeps what still fits)."""
        self.limits = limits
        for key in [k for k, s in self._slots.items() if s.size_bytes > limits.max_entry_bytes]:
            self._drop(key, "size")
        self._make_room(now)

    def _make_room(self, now: float) -> None:
        limits = self.limits
        while self._slots and (
            self.bytes_held > limits.max_bytes or len(self._slots) > limits.max_entries
        ):
            key, slot = next(iter(self._slots.items()))
            self._drop(key, "expired" if slot.expires_at <= now else "size")

    def _drop(self, key: str, reason: str | None) -> None:
        slot = self._slots.pop(key)
        self.bytes_held -= slot.size_bytes
        if reason is not None and self._on_evict is not None:
            self._on_evict(reason)
