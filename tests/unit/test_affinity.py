"""The prefix index (bounded, forgets departed backends) and the consistent-hash ring."""

from collections import Counter

from gateway.affinity import HashRing, PrefixIndex


def chain(tag: int, n: int) -> tuple[int, ...]:
    return tuple(tag * 1000 + i for i in range(n))


def test_matched_blocks_is_the_longest_held_prefix() -> None:
    index = PrefixIndex(capacity_blocks=100)
    index.record("a", chain(1, 5))
    assert index.matched_blocks("a", chain(1, 8)) == 5
    assert index.matched_blocks("a", chain(1, 3)) == 3
    assert index.matched_blocks("a", chain(2, 5)) == 0
    assert index.matched_blocks("b", chain(1, 5)) == 0


def test_deepest_holders_names_who_holds_the_most() -> None:
    index = PrefixIndex(capacity_blocks=100)
    index.record("a", chain(1, 3))
    index.record("b", chain(1, 6))
    assert index.deepest_holders(chain(1, 10)) == (6, {"b"})
    assert index.deepest_holders(chain(1, 2)) == (2, {"a", "b"})
    assert index.deepest_holders(chain(9, 4)) == (0, set())


def test_each_backend_keeps_at_most_capacity_blocks_least_recent_out() -> None:
    index = PrefixIndex(capacity_blocks=4)
    index.record("a", chain(1, 3))
    index.record("a", chain(2, 2))
    index.record("a", chain(2, 2))  # touched again: recent
    assert index.blocks_held("a") == 4
    assert index.matched_blocks("a", chain(1, 3)) == 0  # its first block was the oldest
    assert index.matched_blocks("a", chain(2, 2)) == 2
    assert index.deepest_holders(chain(1, 1)) == (0, set())  # reverse map evicted too


def test_a_reported_capacity_bounds_that_backend_alone_and_trims_at_once() -> None:
    index = PrefixIndex(capacity_blocks=10)
    index.record("a", chain(1, 8))
    index.record("b", chain(2, 8))
    index.set_capacities({"a": 3})
    assert index.capacity_of("a") == 3 and index.capacity_of("b") == 10
    assert index.blocks_held("a") == 3 and index.blocks_held("b") == 8
    index.record("a", chain(3, 5))
    assert index.blocks_held("a") == 3  # the newest three, the rest evicted
    assert index.deepest_holders(chain(2, 8)) == (8, {"b"})
    index.set_capacities({})  # no longer reported: the configured bound again
    assert index.capacity_of("a") == 10


def test_forget_and_retain_drop_a_backend_everywhere() -> None:
    index = PrefixIndex(capacity_blocks=10)
    index.record("a", chain(1, 3))
    index.record("b", chain(1, 3))
    index.forget("a")
    assert index.matched_blocks("a", chain(1, 3)) == 0
    assert index.deepest_holders(chain(1, 3)) == (3, {"b"})
    index.retain({"c"})
    assert index.deepest_holders(chain(1, 3)) == (0, set()) and index.blocks_held("b") == 0


def test_ring_is_deterministic_and_walks_each_backend_once() -> None:
    names = [f"pod-{i}" for i in range(8)]
    ring = HashRing(names)
    again = HashRing(list(reversed(names)))
    for key in (0, 12345, 2**64 - 1, 2**63):
        walk = list(ring.walk(key))
        assert sorted(walk) == sorted(names)
        assert walk == list(again.walk(key))


def test_ring_spreads_homes_and_moves_few_when_a_backend_leaves() -> None:
    names = [f"pod-{i}" for i in range(8)]
    ring, smaller = HashRing(names), HashRing(names[1:])
    keys = [k * 0x9E3779B97F4A7C15 % 2**64 for k in range(4000)]
    homes = [next(ring.walk(k)) for k in keys]
    assert max(Counter(homes).values()) < 2 * 4000 / 8
    moved = sum(1 for k, h in zip(keys, homes, strict=True) if next(smaller.walk(k)) != h)
    assert moved == homes.count("pod-0")  # only the departed backend's prefixes move


def test_max_blocks_is_shared_by_the_fleet_and_a_grown_fleet_trims_at_once() -> None:
    index = PrefixIndex(capacity_blocks=10, max_blocks=12)
    index.retain({"a"})
    assert index.capacity_of("a") == 10  # alone, its own bound is the smaller
    index.record("a", chain(1, 8))
    index.retain({"a", "b", "c"})  # 12 // 3 = 4 each
    assert index.capacity_of("a") == 4 and index.blocks_held("a") == 4
    index.record("b", chain(2, 8))
    assert index.blocks_held("b") == 4
    assert sum(index.blocks_held(n) for n in "abc") <= 12
    index.set_capacities({"c": 2})  # a reported size below the share still binds
    assert index.capacity_of("c") == 2


def test_rendezvous_spreads_keys_and_a_removed_member_moves_only_its_own() -> None:
    ring = HashRing(["a", "b", "c", "d"])
    first = {key: ring.rendezvous(key * 7919, "abcd")[0] for key in range(400)}
    assert all(n > 60 for n in Counter(first.values()).values())  # ~100 each
    without_b = {key: ring.rendezvous(key * 7919, "acd")[0] for key in range(400)}
    moved = {key for key in first if first[key] != without_b[key]}
    assert moved == {key for key, member in first.items() if member == "b"}
    assert ring.rendezvous(11, "abcd") == ring.rendezvous(11, "dcba")
    assert ring.rendezvous(11, "abcd") == HashRing(["d", "c", "b", "a"]).rendezvous(11, "abcd")
