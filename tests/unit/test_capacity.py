"""The capacity module: admit, queue or shed; strict FIFO hand-over; deadlines from arrival."""

from __future__ import annotations

import pytest

from gateway.capacity import Capacity, NoPick, Ticket
from gateway.config.model import LimitsConfig
from gateway.failures import Failure


class Slots:
    """A pick over one group of backends with ``limit`` slots each (the per-backend limit)."""

    def __init__(self, names: list[str], limit: int) -> None:
        self.in_flight = dict.fromkeys(names, 0)
        self.limit = limit

    def pick(self, ticket: Ticket[str], now: float) -> str | NoPick:
        if not self.in_flight:
            return NoPick.NO_BACKEND
        roomy = [n for n, used in self.in_flight.items() if used < self.limit]
        if not roomy:
            return NoPick.ALL_FULL
        name = min(roomy, key=lambda n: self.in_flight[n])
        self.in_flight[name] += 1
        return name

    def done(self, name: str) -> None:
        self.in_flight[name] -= 1


def make(
    limit: int = 1,
    max_pending: int = 8,
    queue_timeout_s: float = 1.0,
    names: list[str] | None = None,
) -> tuple[Capacity[str], Slots]:
    slots = Slots(["a"] if names is None else names, limit)
    settings = LimitsConfig(
        max_requests_per_backend=limit, max_pending=max_pending, queue_timeout=queue_timeout_s
    )
    return Capacity(settings, slots.pick), slots


def queued_ticket(capacity: Capacity[str], now: float, grants: list[object]) -> Ticket[str]:
    ticket = capacity.ticket("default", now)
    ticket.on_grant = grants.append
    assert capacity.admit(ticket, now) is None
    return ticket


def test_admits_while_there_is_room_then_queues() -> None:
    capacity, _ = make(limit=2)
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) == "a"
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) == "a"
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) is None
    assert capacity.pending == 1


def test_no_backend_is_shed_at_once() -> None:
    capacity, _ = make(names=[])
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) is Failure.NO_BACKEND
    assert capacity.shed_total == 1


def test_a_freed_slot_is_handed_to_the_head_of_the_queue() -> None:
    capacity, slots = make()
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) == "a"
    grants: list[object] = []
    first = queued_ticket(capacity, 0.1, grants)
    queued_ticket(capacity, 0.2, grants)
    slots.done("a")
    handed = capacity.release("default", 0.3)
    assert handed == [(first, "a")]
    assert grants == ["a"]  # delivered through on_grant, to the first only
    assert capacity.pending == 1


def test_a_newcomer_never_overtakes_a_queued_request() -> None:
    capacity, slots = make(limit=1, names=["a", "b"])
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) == "a"
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) == "b"
    grants: list[object] = []
    queued_ticket(capacity, 0.1, grants)
    slots.done("b")  # a slot is free, but nobody has been told yet
    newcomer = capacity.ticket("default", 0.2)
    assert capacity.admit(newcomer, 0.2) is None  # queues behind the waiting request
    capacity.release("default", 0.3)
    assert grants == ["b"] and newcomer.queued


def test_strict_fifo_over_many_releases() -> None:
    capacity, slots = make()
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) == "a"
    order: list[int] = []
    for i in range(5):
        ticket = capacity.ticket("default", 0.01 * i)
        ticket.on_grant = lambda _result, i=i: order.append(i)
        assert capacity.admit(ticket, 0.01 * i) is None
    for _ in range(5):
        slots.done("a")
        capacity.release("default", 0.5)
    assert order == [0, 1, 2, 3, 4]


def test_the_deadline_counts_from_arrival_not_from_each_wait() -> None:
    capacity, slots = make(queue_timeout_s=1.0)
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) == "a"
    ticket = capacity.ticket("default", 10.0)
    assert ticket.deadline == 11.0
    grants: list[object] = []
    ticket.on_grant = grants.append
    assert capacity.admit(ticket, 10.0) is None
    slots.done("a")
    capacity.release("default", 10.6)  # granted after 0.6 s; its try fails; it must queue again
    assert grants == ["a"]
    assert capacity.admit(ticket, 10.7) is None
    assert capacity.wait_left_s(ticket, 10.7) == pytest.approx(0.3)
    assert capacity.expire(ticket) is Failure.QUEUE_TIMEOUT
    # and a retry that finds no room after its request's deadline is shed without queueing
    assert capacity.admit(ticket, 11.5) is Failure.QUEUE_TIMEOUT


def test_heads_past_their_deadline_are_shed_on_release() -> None:
    capacity, slots = make(queue_timeout_s=1.0)
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) == "a"
    grants: list[object] = []
    late = queued_ticket(capacity, 0.0, grants)
    fresh = queued_ticket(capacity, 0.9, grants)
    slots.done("a")
    assert capacity.release("default", 1.2) == [(late, Failure.QUEUE_TIMEOUT), (fresh, "a")]
    assert capacity.pending == 0


def test_full_queue_sheds_overloaded() -> None:
    capacity, _ = make(max_pending=1)
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) == "a"
    queued_ticket(capacity, 0.0, [])
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) is Failure.OVERLOADED
    assert (capacity.pending, capacity.shed_total) == (1, 1)


@pytest.mark.parametrize("settings", [(1, 0, 1.0), (1, 4, 0.0)])
def test_no_queue_sheds_at_once(settings: tuple[int, int, float]) -> None:
    capacity, _ = make(*settings)
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) == "a"
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) is Failure.OVERLOADED
    assert capacity.pending == 0


def test_expire_after_the_grant_is_a_no_op() -> None:
    capacity, slots = make()
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) == "a"
    ticket = queued_ticket(capacity, 0.0, [])
    slots.done("a")
    capacity.release("default", 0.5)
    assert capacity.expire(ticket) is None
    assert capacity.pending == 0


def test_groups_queue_apart() -> None:
    capacity, slots = make()
    assert capacity.admit(capacity.ticket("default", 0.0), 0.0) == "a"
    queued_ticket(capacity, 0.0, [])
    assert capacity.queued("default") == 1 and capacity.queued("canary") == 0
    assert capacity.release("canary", 0.1) == []
