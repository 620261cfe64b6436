"""The pending queue: priority classes first, fair across tenants, FIFO within a tenant."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pending_queue import PendingQueue, Priority, Refused

STD = Priority.STANDARD


def drain(queue: PendingQueue[str]) -> list[str]:
    out = []
    while (item := queue.pop()) is not None:
        out.append(item)
    return out


def test_higher_class_first_then_arrival_order() -> None:
    queue: PendingQueue[str] = PendingQueue(10)
    queue.push("s1", "a", Priority.SHEDDABLE)
    queue.push("n1", "a", STD)
    queue.push("c1", "a", Priority.CRITICAL)
    queue.push("n2", "a", STD)
    assert drain(queue) == ["c1", "n1", "n2", "s1"]
    assert len(queue) == 0


def test_a_newcomer_is_not_stuck_behind_a_flooding_tenant() -> None:
    queue: PendingQueue[str] = PendingQueue(100)
    for i in range(30):
        queue.push(f"flood{i}", "flood", STD)
    queue.push("polite", "polite", STD)
    order = drain(queue)
    assert order.index("polite") <= 1
    assert [x for x in order if x.startswith("flood")] == [f"flood{i}" for i in range(30)]


def test_two_busy_tenants_alternate() -> None:
    queue: PendingQueue[str] = PendingQueue(100)
    for i in range(5):
        queue.push(f"a{i}", "a", STD)
    for i in range(5):
        queue.push(f"b{i}", "b", STD)
    order = drain(queue)
    assert [x[0] for x in order[2:8]] in (list("ababab"), list("bababa"))


def test_cost_and_weight_set_the_share() -> None:
    queue: PendingQueue[str] = PendingQueue(100, weights={"heavy": 3.0})
    for i in range(12):
        queue.push(f"h{i}", "heavy", STD)
        queue.push(f"l{i}", "light", STD)
    first_eight = drain(queue)[:8]
    assert sum(x.startswith("h") for x in first_eight) == 6  # 3:1 by weight

    queue = PendingQueue(100)
    for i in range(6):
        queue.push(f"big{i}", "big", STD, cost=1000)
        queue.push(f"small{i}", "small", STD, cost=100)
    first_six = drain(queue)[:6]
    assert all(x.startswith("small") for x in first_six)  # tokens, not requests, count


def test_full_queue_displaces_the_last_sheddable_for_a_higher_class() -> None:
    queue: PendingQueue[str] = PendingQueue(3)
    queue.push("s1", "a", Priority.SHEDDABLE)
    queue.push("s2", "a", Priority.SHEDDABLE)
    queue.push("n1", "b", STD)
    assert queue.push("s3", "c", Priority.SHEDDABLE) is Refused.FULL
    assert queue.push("c1", "b", Priority.CRITICAL) == "s2"  # the one that would go last
    assert queue.push("n2", "b", STD) == "s1"
    assert queue.push("n3", "b", STD) is Refused.FULL  # nothing sheddable left to displace
    assert drain(queue) == ["c1", "n1", "n2"]


def test_remove_takes_an_item_out_anywhere() -> None:
    queue: PendingQueue[str] = PendingQueue(10)
    for name in ("a1", "a2", "a3"):
        queue.push(name, "a", STD)
    assert queue.remove("a2") and not queue.remove("a2") and "a2" not in queue
    assert queue.queued_by_tenant() == {"a": 2}
    assert drain(queue) == ["a1", "a3"]
    assert queue.queued_by_tenant() == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 2)), max_size=60))
def test_matches_a_model_of_the_rules(ops: list[tuple[int, int, int]]) -> None:
    """Random pushes, pops and removes: counts agree, classes never invert, tenants stay FIFO."""
    queue: PendingQueue[int] = PendingQueue(8)
    rng = random.Random(len(ops))
    queued: dict[int, tuple[int, Priority]] = {}
    served: list[tuple[int, int, Priority]] = []
    for n, (op, tenant, cls) in enumerate(ops):
        if op <= 1:
            result = queue.push(n, f"t{tenant}", Priority(cls), cost=rng.choice([1, 5]))
            if result is not Refused.FULL:
                queued[n] = (tenant, Priority(cls))
            if isinstance(result, int) and not isinstance(result, Refused):
                assert queued.pop(result)[1] is Priority.SHEDDABLE
        elif op == 2:
            item = queue.pop()
            if item is not None:
                tenant_of, cls_of = queued.pop(item)
                assert all(p >= cls_of for _, p in queued.values())  # lower is more urgent
                served.append((item, tenant_of, cls_of))
        elif queued:
            victim = rng.choice(sorted(queued))
            assert queue.remove(victim)
            del queued[victim]
        assert len(queue) == len(queued) <= 8
    for tenant in range(3):
        for cls in Priority:
            items = [i for i, t, c in served if t == tenant and c == cls]
            assert items == sorted(items)


def test_tombstones_do_not_pile_up_under_steady_load() -> None:
    queue: PendingQueue[int] = PendingQueue(100)
    for n in range(10):
        queue.push(n, "a", Priority.SHEDDABLE)
    for n in range(10, 5000):  # one in, one out: the queue never empties
        queue.push(n, f"t{n % 3}", Priority.SHEDDABLE)
        assert queue.pop() is not None
    sheddable = queue._classes[Priority.SHEDDABLE]
    assert len(queue) == 10 and len(sheddable.latest) <= 4 * 10 + 64
