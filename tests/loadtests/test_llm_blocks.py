"""The emulator's KV block pool: hash-chain hits, reference counts, eviction of unused blocks."""

from loadtests.llm.blocks import BlockPool, chain_keys

WORDS = [f"t{i}" for i in range(64)]


def test_a_chain_key_names_the_whole_prefix() -> None:
    a = chain_keys(WORDS[:32], 16)
    b = chain_keys(["x", *WORDS[1:32]], 16)
    assert len(a) == 2 and chain_keys(WORDS[:40], 16)[:2] == a  # a partial block has no key
    assert a[0] != b[0] and a[1] != b[1]  # same second block, other parent: another key


def test_a_published_prefix_is_hit_by_the_next_sequence() -> None:
    pool = BlockPool(num_blocks=8, block_tokens=16)
    keys = chain_keys(WORDS[:48], 16)
    first = pool.allocate(keys, 48)
    assert first is not None and first.cached == [] and first.private == 3
    pool.publish(first, keys)
    pool.release(first)
    assert pool.hit_blocks(keys) == 3 and pool.used == 0  # cached, but free to evict
    second = pool.allocate(keys, 64)
    assert second is not None and second.cached == keys and second.private == 1
    assert pool.used == 4


def test_eviction_takes_unused_blocks_only_and_a_full_pool_makes_a_request_wait() -> None:
    pool = BlockPool(num_blocks=4, block_tokens=16)
    held_keys = chain_keys(WORDS[:32], 16)
    held = pool.allocate(held_keys, 32)
    assert held is not None
    pool.publish(held, held_keys)  # in use by a running sequence
    done_keys = chain_keys(WORDS[32:64], 16)
    done = pool.allocate(done_keys, 32)
    assert done is not None
    pool.publish(done, done_keys)
    pool.release(done)  # cached, unused
    assert pool.free == 0 and len(pool.evictable) == 2
    fresh = pool.allocate([], 20)  # two blocks: both must come from the unused ones
    assert fresh is not None and pool.evictions == 2
    assert pool.hit_blocks(held_keys) == 2 and pool.hit_blocks(done_keys) == 0
    assert pool.allocate([], 1) is None  # only held blocks are left: wait
    pool.release(fresh)
    assert pool.allocate([], 16) is not None


def test_releasing_frees_the_tail_of_a_chain_first() -> None:
    pool = BlockPool(num_blocks=3, block_tokens=16)
    keys = chain_keys(WORDS[:48], 16)
    seq = pool.allocate(keys, 48)
    assert seq is not None
    pool.publish(seq, keys)
    pool.release(seq)
    assert pool.allocate([], 16) is not None
    assert pool.hit_blocks(keys) == 2  # the deepest block went, the shared start stayed


def test_the_same_content_published_twice_keeps_one_cached_copy() -> None:
    pool = BlockPool(num_blocks=4, block_tokens=16)
    keys = chain_keys(WORDS[:32], 16)
    a, b = pool.allocate(keys, 32), pool.allocate(keys, 32)  # both miss: neither published yet
    assert a is not None and b is not None and pool.free == 0
    pool.publish(a, keys)
    pool.publish(b, keys)  # b's copies are duplicates and go back
    assert pool.free == 2 and pool.refs == {keys[0]: 2, keys[1]: 2}
