"""The pending queue: requests waiting for backend capacity, by priority class, fair by tenant.

Order of service:

1. **Priority class** first: every queued ``critical`` request goes before any ``standard``
   one, which goes before any ``sheddable`` one.
2. **Fair across tenants** within a class: start-time fair queueing (SFQ, Goyal et al. 1996).
   A request gets a virtual start tag ``max(class clock, tenant's last finish tag)`` and a
   finish tag ``start + cost / weight``; the queue serves the smallest finish tag and the
   class clock moves to the start tag served. A tenant with 30 requests queued has finish
   tags stretching far ahead, so a newcomer's single request (finish tag one cost past the
   clock) goes out next instead of behind all 30. Costs are estimated tokens when the body
   tells, else 1 (a request).
3. **FIFO within a tenant**: a tenant's tags only grow, so its requests leave in arrival order.

When the queue is full, a request of a higher class displaces the queued ``sheddable`` request
that would have been served last (largest finish tag); otherwise it is refused. ``push``,
``pop``, ``peek`` and ``remove`` are O(log n) amortized: one heap per class, removal by
tombstone. :class:`FairQueue` is this queue in the capacity module's terms
(:class:`gateway.capacity.PendingQueue`).

A tenant that empties its queue forgets its last finish tag, so on return it starts at the
class clock: it may get at most one request's cost ahead of what strict SFQ gives it, which
keeps memory bounded by the tenants with something queued.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateway.capacity import Ticket

T = TypeVar("T", bound=Hashable)
B = TypeVar("B")


class Priority(enum.IntEnum):
    """Request classes, the Gateway API Inference Extension's names; lower is served first
    (as :attr:`gateway.capacity.Ticket.priority`)."""

    CRITICAL = 0
    STANDARD = 1
    SHEDDABLE = 2

    @classmethod
    def parse(cls, text: str) -> Priority | None:
        """``critical`` / ``standard`` / ``sheddable`` (any case), else None."""
        return _BY_NAME.get(text.strip().lower())

    @property
    def label(self) -> str:
        """The metric label (``critical`` ...): looked up, since ``Enum.name`` is a descriptor
        call and this runs for every request's metrics."""
        return _LABELS[self]


_BY_NAME = {p.name.lower(): p for p in Priority}
_LABELS = {p: name for name, p in _BY_NAME.items()}


class Refused(enum.Enum):
    """Why ``push`` did not queue the item."""

    FULL = "full"  # nothing of a lower class to displace


@dataclass(order=True)
class _Entry(Generic[T]):
    finish: float
    seq: int
    item: T = field(compare=False)
    tenant: str = field(compare=False)
    priority: Priority = field(compare=False)
    start: float = field(compare=False)
    removed: bool = field(default=False, compare=False)


class _Class(Generic[T]):
    """One priority class: SFQ tags, a min-heap by finish tag and, for displacement, a max-heap."""

    __slots__ = ("clock", "heap", "last_finish", "latest", "live", "queued_by_tenant")

    def __init__(self) -> None:
        self.clock = 0.0  # virtual time: the start tag of the request served last
        self.heap: list[_Entry[T]] = []
        self.latest: list[tuple[float, int, _Entry[T]]] = []  # (-finish, -seq): served last first
        self.last_finish: dict[str, float] = {}
        self.queued_by_tenant: dict[str, int] = {}
        self.live = 0

    def add(self, entry: _Entry[T], track_latest: bool) -> None:
        heapq.heappush(self.heap, entry)
        if track_latest:
            heapq.heappush(self.latest, (-entry.finish, -entry.seq, entry))
        self.queued_by_tenant[entry.tenant] = self.queued_by_tenant.get(entry.tenant, 0) + 1
        self.live += 1

    def drop(self, entry: _Entry[T]) -> None:
        """Account for ``entry`` leaving (served, displaced or removed)."""
        entry.removed = True
        self.live -= 1
        left = self.queued_by_tenant[entry.tenant] - 1
        if left:
            self.queued_by_tenant[entry.tenant] = left
        else:
            del self.queued_by_tenant[entry.tenant]
            del self.last_finish[entry.tenant]
        if self.live == 0:  # all tombstones: start clean
            self.heap.clear()
            self.latest.clear()
        elif len(self.heap) + len(self.latest) > 4 * self.live + 64:
            self._compact()  # tombstones never reach the top of `latest`: sweep them, amortized

    def _compact(self) -> None:
        self.heap = [e for e in self.heap if not e.removed]
        heapq.heapify(self.heap)
        self.latest = [x for x in self.latest if not x[2].removed]
        heapq.heapify(self.latest)

    def first(self) -> _Entry[T] | None:
        heap = self.heap
        while heap and heap[0].removed:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def last(self) -> _Entry[T] | None:
        latest = self.latest
        while latest and latest[0][2].removed:
            heapq.heappop(latest)
        return latest[0][2] if latest else None


class PendingQueue(Generic[T]):
    """Items waiting for capacity, served by class, then fairly across tenants, then FIFO."""

    def __init__(self, max_size: int, weights: dict[str, float] | None = None) -> None:
        """``max_size`` items at most; ``weights`` gives tenants a larger share (default 1)."""
        self.max_size = max_size
        self.weights = weights or {}
        self._classes: dict[Priority, _Class[T]] = {p: _Class() for p in Priority}
        self._entries: dict[T, _Entry[T]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item: object) -> bool:
        return item in self._entries

    def count(self, priority: Priority) -> int:
        return self._classes[priority].live

    def push(
        self, item: T, tenant: str, priority: Priority, cost: float = 1.0
    ) -> T | Refused | None:
        """Queue ``item``. Returns None, the sheddable item displaced to make room (the caller
        refuses it), or :attr:`Refused.FULL` when the queue is full and nothing may go."""
        displaced: T | None = None
        if len(self._entries) >= self.max_size:
            victim = self._classes[Priority.SHEDDABLE].last()
            if victim is None or priority >= Priority.SHEDDABLE:
                return Refused.FULL
            displaced = victim.item
            self.remove(displaced)
        cls = self._classes[priority]
        start = max(cls.clock, cls.last_finish.get(tenant, 0.0))
        finish = start + max(cost, 1e-9) / self.weights.get(tenant, 1.0)
        cls.last_finish[tenant] = finish
        entry = _Entry(finish, next(self._seq), item, tenant, priority, start)
        cls.add(entry, track_latest=priority is Priority.SHEDDABLE)
        self._entries[item] = entry
        return displaced

    def _next(self) -> _Entry[T] | None:
        for priority in Priority:  # CRITICAL first
            cls = self._classes[priority]
            entry = cls.first() if cls.live else None
            if entry is not None:
                return entry
        return None

    def peek(self) -> T | None:
        """The item :meth:`pop` would return, left in place."""
        entry = self._next()
        return entry.item if entry is not None else None

    def pop(self) -> T | None:
        """The next item to serve, or None when empty."""
        entry = self._next()
        if entry is None:
            return None
        cls = self._classes[entry.priority]
        heapq.heappop(cls.heap)
        cls.clock = max(cls.clock, entry.start)
        cls.drop(entry)
        del self._entries[entry.item]
        return entry.item

    def remove(self, item: T) -> bool:
        """Take ``item`` out (it gave up waiting); False if it was not queued."""
        entry = self._entries.pop(item, None)
        if entry is None:
            return False
        self._classes[entry.priority].drop(entry)
        return True

    def queued_by_tenant(self) -> dict[str, int]:
        """Requests queued per tenant, all classes together (for /admin)."""
        out: dict[str, int] = {}
        for cls in self._classes.values():
            for tenant, n in cls.queued_by_tenant.items():
                out[tenant] = out.get(tenant, 0) + n
        return out


@dataclass
class FairShare:
    """What every group's :class:`FairQueue` reads at each push: shared, updated on reload."""

    weights: dict[str, float] = field(default_factory=dict)  # tenant -> share, default 1
    sheddable_limit: int = 0  # a sheddable ticket is refused once this many wait (0: never waits)


class FairQueue(Generic[B]):
    """The capacity module's pending queue: tickets by class, fair by tenant (this module).

    A ``sheddable`` ticket is refused once ``share.sheddable_limit`` tickets wait, so sheddable
    requests are the first refused when every backend is full.
    """

    __slots__ = ("_queue", "share")

    def __init__(self, limit: int, share: FairShare | None = None) -> None:
        self.share = share or FairShare()
        self._queue: PendingQueue[Ticket[B]] = PendingQueue(limit, self.share.weights)

    def push(self, ticket: Ticket[B], now: float) -> Ticket[B] | None:
        """None when queued, a displaced sheddable ticket, or ``ticket`` itself if refused."""
        priority = Priority(ticket.priority)
        if priority is Priority.SHEDDABLE and len(self._queue) >= self.share.sheddable_limit:
            return ticket
        result = self._queue.push(ticket, ticket.tenant, priority, ticket.cost)
        return ticket if result is Refused.FULL else result

    def pop(self) -> Ticket[B]:
        ticket = self._queue.pop()
        if ticket is None:
            raise IndexError("pop from an empty pending queue")
        return ticket

    def peek(self) -> Ticket[B] | None:
        return self._queue.peek()

    def remove(self, ticket: Ticket[B]) -> bool:
        return self._queue.remove(ticket)

    def __len__(self) -> int:
        return len(self._queue)

    def queued_by_tenant(self) -> dict[str, int]:
        return self._queue.queued_by_tenant()
