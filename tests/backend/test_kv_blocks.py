"""The block manager's bookkeeping: reservations, the prefix hash chain, sharing, LRU eviction."""

from __future__ import annotations

import pytest

from backend.kv_blocks import NULL_BLOCK, BlockManager, blocks_for

SIZE = 4


def committed(manager: BlockManager, prompt: list[int], total: int):  # type: ignore[no-untyped-def]
    """Allocate ``prompt`` and mark all of it computed, as the engine does after its prefill."""
    chain = manager.allocate(prompt, total)
    assert chain is not None
    manager.commit(chain, prompt, len(prompt))
    return chain


def test_blocks_for_rounds_up() -> None:
    assert [blocks_for(n, SIZE) for n in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]


def test_allocation_reserves_the_whole_sequence_and_never_hands_out_the_null_block() -> None:
    manager = BlockManager(num_blocks=9, block_size=SIZE)
    chain = manager.allocate(list(range(6)), total_tokens=13)
    assert chain is not None and len(chain.blocks) == 4 and NULL_BLOCK not in chain.blocks
    assert manager.available_blocks == 4 and manager.usage == 0.5
    assert manager.allocate(list(range(100, 106)), total_tokens=20) is None  # 5 > 4 left
    manager.release(chain)
    assert manager.available_blocks == 8 and manager.usage == 0.0


def test_a_shared_prefix_reuses_full_blocks_only_and_counts_hits() -> None:
    manager = BlockManager(num_blocks=20, block_size=SIZE)
    first = committed(manager, list(range(10)), 12)  # blocks of 0-3, 4-7; 8-9 partial
    second = manager.allocate([*range(8), 50, 51], 12)
    assert second is not None and second.cached_tokens == 8
    assert second.blocks[:2] == first.blocks[:2] and second.blocks[2] != first.blocks[2]
    assert (manager.query_tokens, manager.hit_tokens) == (20, 8)
    other = manager.allocate([1, *range(1, 10)], 12)  # same tokens later, different first block
    assert other is not None and other.cached_tokens == 0


def test_the_last_prompt_token_is_always_computed() -> None:
    manager = BlockManager(num_blocks=20, block_size=SIZE)
    committed(manager, list(range(8)), 8)
    again = manager.allocate(list(range(8)), 9)
    assert again is not None and again.cached_tokens == 4  # not 8: the logits of token 7


def test_released_cached_blocks_are_evicted_least_recent_and_tail_first() -> None:
    manager = BlockManager(num_blocks=7, block_size=SIZE)  # 6 usable
    old = committed(manager, list(range(12)), 12)  # 3 blocks
    new = committed(manager, list(range(100, 112)), 12)  # 3 blocks
    old_blocks, new_blocks = list(old.blocks), list(new.blocks)
    manager.release(old)
    manager.release(new)
    assert manager.available_blocks == 6  # cached but idle blocks count as free
    taker = manager.allocate(list(range(200, 208)), 8)  # needs 2: evicts old's tail, then middle
    assert taker is not None and taker.blocks == [old_blocks[2], old_blocks[1]]
    assert manager.cached_prefix([*list(range(12)), 0]) == old_blocks[:1]
    assert manager.cached_prefix([*list(range(100, 112)), 0]) == new_blocks


def test_a_block_held_by_two_sequences_is_freed_only_by_the_last() -> None:
    manager = BlockManager(num_blocks=5, block_size=SIZE)  # 4 usable
    first = committed(manager, list(range(5)), 5)  # 2 blocks
    second = manager.allocate(list(range(5)), 5)  # reuses block 1, reserves 1 more
    assert second is not None and second.blocks[0] == first.blocks[0]
    assert manager.available_blocks == 1
    manager.release(first)
    assert manager.available_blocks == 2  # the shared block is still held
    manager.release(second)
    assert manager.available_blocks == 4


def test_an_idle_cached_prefix_does_not_count_twice_toward_a_reservation() -> None:
    manager = BlockManager(num_blocks=4, block_size=SIZE)  # 3 usable
    manager.release(committed(manager, list(range(9)), 9))  # 3 idle cached blocks
    # 9 tokens again: 2 cached blocks reused, 1 taken; nothing more fits beside it.
    again = manager.allocate(list(range(9)), 9)
    assert again is not None and again.cached_tokens == 8 and manager.available_blocks == 0
    assert manager.allocate([7, 7, 7], 3) is None


def test_a_cache_needs_more_than_the_null_block() -> None:
    with pytest.raises(ValueError, match="at least 2 blocks"):
        BlockManager(num_blocks=1, block_size=SIZE)
