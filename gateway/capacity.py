"""Capacity: per-backend limits, the one pending queue and its deadline, in one place. Pure.

Like Envoy's concurrency "circuit breakers" (``max_requests``, ``max_pending_requests``) with a
deadline on the wait, after linkerd's pending queue. A request that finds every candidate of its
group at ``limits.max_requests_per_backend`` waits in the group's queue; it gives up at
``limits.queue_timeout`` after it *arrived* (a retry that has to queue again keeps its first
deadline, so the setting bounds the request, not each wait).

Two rules keep the queue honest:

* **No overtaking.** While anyone waits for a group, a newcomer queues behind them even if a slot
  is free at that instant.
* **Hand-over, not wake-up.** When a try ends, the freed slot is picked for the head of the queue
  then and there (:meth:`Capacity.release` returns the grants), so no newcomer can take it in
  between and the woken request never has to wait again.

The queue's order is :class:`PendingQueue`'s alone (FIFO by default); the gateway uses
:class:`gateway.pending_queue.FairQueue`, by priority class and fair across tenants. The
I/O layer (the handler's futures, the simulator's events) only delivers the grants.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from gateway.config.model import LimitsConfig
from gateway.failures import Failure
from gateway.request_info import NO_INFO, RequestInfo

T = TypeVar("T")


class NoPick(enum.Enum):
    """Why the pick found no backend for a try."""

    NO_BACKEND = "no_backend"  # nothing routable in the group: shed
    ALL_FULL = "all_full"  # every candidate at max_requests_per_backend: queue or shed


@dataclass(eq=False, slots=True)
class Ticket(Generic[T]):
    """One request wanting a backend: what the pick needs and where the grant goes.

    ``on_grant`` receives the backend, or the :class:`Failure` that sheds the request; the I/O
    layer sets it (a future's ``set_result``, a simulator event).
    """

    group: str
    arrived_at: float
    deadline: float
    request: RequestInfo = NO_INFO  # what the pick may know of the request
    tried: list[str] = field(default_factory=list)
    tenant: str = ""
    priority: int = 1  # lower is served first; the FIFO queue ignores it
    cost: float = 1.0  # what fair queueing charges the tenant for this request
    on_grant: Callable[[T | Failure], None] | None = None
    queued: bool = False


class PendingQueue(Protocol[T]):
    """The order in which waiting tickets get a freed slot."""

    def push(self, ticket: Ticket[T], now: float) -> Ticket[T] | None:
        """Enqueue; returns a ticket displaced to make room, or ``ticket`` itself if refused."""
        ...

    def pop(self) -> Ticket[T]: ...

    def peek(self) -> Ticket[T] | None: ...

    def remove(self, ticket: Ticket[T]) -> bool: ...

    def __len__(self) -> int: ...


class FifoQueue(Generic[T]):
    """First come, first served, bounded by ``limit`` tickets."""

    __slots__ = ("_items", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: collections.deque[Ticket[T]] = collections.deque()

    def push(self, ticket: Ticket[T], now: float) -> Ticket[T] | None:
        if len(self._items) >= self.limit:
            return ticket
        self._items.append(ticket)
        return None

    def pop(self) -> Ticket[T]:
        return self._items.popleft()

    def peek(self) -> Ticket[T] | None:
        return self._items[0] if self._items else None

    def remove(self, ticket: Ticket[T]) -> bool:
        try:
            self._items.remove(ticket)  # O(n), only on a queue timeout or a client leaving
        except ValueError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Ticket[T]]:
        return iter(self._items)


Pick = Callable[[Ticket[T], float], "T | NoPick"]


class Capacity(Generic[T]):
    """Admits, queues or sheds tickets; hands freed slots to the head of each group's queue.

    ``pick`` chooses a backend for a ticket with room under the per-backend limit (taking its
    circuit permit), or says why it cannot; it is the policy's business, not this module's.
    ``settings`` is the config's ``limits:`` section itself (``max_pending`` or
    ``queue_timeout`` 0 means never queue).
    """

    def __init__(
        self,
        settings: LimitsConfig,
        pick: Pick[T],
        queue_factory: Callable[[int], PendingQueue[T]] | None = None,
    ) -> None:
        self.settings = settings
        self._pick = pick
        self._queue_factory = queue_factory or FifoQueue
        self._queues: dict[str, PendingQueue[T]] = {}
        self.pending = 0  # tickets waiting, all groups
        self.shed_total = 0

    def ticket(self, group: str, arrived_at: float, request: RequestInfo = NO_INFO) -> Ticket[T]:
        """A ticket for a request of ``group`` that arrived at ``arrived_at``."""
        return Ticket(group, arrived_at, arrived_at + self.settings.queue_timeout, request)

    def admit(self, ticket: Ticket[T], now: float) -> T | Failure | None:
        """A backend for this try, the :class:`Failure` that sheds it, or None: queued (the
        grant comes later through ``ticket.on_grant``)."""
        queue = self._queues.get(ticket.group)
        if queue is None or len(queue) == 0:
            picked = self._pick(ticket, now)
            if picked is NoPick.NO_BACKEND:
                return self._shed(Failure.NO_BACKEND)
            if picked is not NoPick.ALL_FULL:
                return picked  # type narrowing: neither NoPick member, so a backend
        return self._enqueue(ticket, now)

    def pick_now(self, ticket: Ticket[T], now: float) -> T | None:
        """A backend with room for an extra try of ``ticket`` right now, or None; never queues
        and never jumps a queue (a hedge must not take a slot a waiting request needs)."""
        queue = self._queues.get(ticket.group)
        if queue is not None and len(queue) > 0:
            return None
        picked = self._pick(ticket, now)
        return None if isinstance(picked, NoPick) else picked

    def release(self, group: str, now: float) -> list[tuple[Ticket[T], T | Failure]]:
        """A try of ``group`` ended: hand freed slots to waiting tickets, in queue order.

        Each grant is delivered through the ticket's ``on_grant`` and also returned; tickets
        past their deadline are shed on the way.
        """
        queue = self._queues.get(group)
        grants: list[tuple[Ticket[T], T | Failure]] = []
        while queue is not None and len(queue) > 0:
            head = queue.peek()
            assert head is not None
            if now >= head.deadline:
                self._leave(queue.pop())
                grants.append((head, self._shed(Failure.QUEUE_TIMEOUT)))
                continue
            picked = self._pick(head, now)
            if picked is NoPick.ALL_FULL:
                break
            self._leave(queue.pop())
            if picked is NoPick.NO_BACKEND:
                grants.append((head, self._shed(Failure.NO_BACKEND)))
            else:
                grants.append((head, picked))
        for ticket, result in grants:
            if ticket.on_grant is not None:
                ticket.on_grant(result)
        return grants

    def expire(self, ticket: Ticket[T]) -> Failure | None:
        """The ticket's deadline passed (or its client left) while it waited: take it out.
        Returns the shed reason, or None if it had already been granted."""
        queue = self._queues.get(ticket.group)
        if not ticket.queued or queue is None or not queue.remove(ticket):
            return None
        self._leave(ticket)
        return self._shed(Failure.QUEUE_TIMEOUT)

    def wait_left_s(self, ticket: Ticket[T], now: float) -> float:
        """Seconds ``ticket`` may still wait; 0 means its time is up."""
        return max(0.0, ticket.deadline - now)

    def retry_after_s(self) -> float:
        """What a shed request's ``Retry-After`` says: about one queue deadline."""
        return max(1.0, self.settings.queue_timeout)

    def group_queues(self) -> dict[str, PendingQueue[T]]:
        """Each group's queue, to read (``/admin/tenants``)."""
        return dict(self._queues)

    def queued(self, group: str) -> int:
        queue = self._queues.get(group)
        return len(queue) if queue is not None else 0

    def _enqueue(self, ticket: Ticket[T], now: float) -> Failure | None:
        s = self.settings
        if s.queue_timeout <= 0:
            return self._shed(Failure.OVERLOADED)
        full = self.pending >= s.max_pending  # a priority queue may still displace a ticket
        if now >= ticket.deadline:  # a retry that finds no room after its request's deadline
            return self._shed(Failure.QUEUE_TIMEOUT)
        queue = self._queues.get(ticket.group)
        if queue is None:
            queue = self._queues[ticket.group] = self._queue_factory(s.max_pending)
        displaced = queue.push(ticket, now)
        if displaced is ticket:
            return self._shed(Failure.OVERLOADED)
        if full and displaced is None:  # over the bound across groups, and nothing made room
            queue.remove(ticket)
            return self._shed(Failure.OVERLOADED)
        ticket.queued = True
        self.pending += 1
        if displaced is not None:
            self._leave(displaced)
            if displaced.on_grant is not None:
                displaced.on_grant(self._shed(Failure.OVERLOADED))
        return None

    def _leave(self, ticket: Ticket[T]) -> None:
        ticket.queued = False
        self.pending -= 1

    def _shed(self, reason: Failure) -> Failure:
        self.shed_total += 1
        return reason
