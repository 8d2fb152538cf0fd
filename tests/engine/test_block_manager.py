"""Block pool and prefix cache: reference counts, double frees, hits, LRU eviction, events."""

from __future__ import annotations

import pytest

from pypto_serving.engine.block_manager import BlockError, BlockManager, BlockPool
from pypto_serving.engine.hashing import block_hashes
from pypto_serving.engine.request import Request
from pypto_serving.engine.sampling_params import SamplingParams


def req(seq_id: int, tokens: list[int]) -> Request:
    return Request(f"r{seq_id}", seq_id, tokens, SamplingParams(max_tokens=4))


def compute(bm: BlockManager, r: Request, n: int) -> None:
    """Allocate and 'run' n more tokens of r, as a step would."""
    assert bm.allocate(r, r.num_computed_tokens + n)
    r.num_computed_tokens += n
    bm.cache_full_blocks(r)


def test_double_free_of_a_block_raises():
    pool = BlockPool(4)
    b = pool.allocate()
    pool.release(b)
    with pytest.raises(BlockError, match=f"double free of KV block {b}"):
        pool.release(b)
    assert pool.num_free == 4


def test_freeing_a_sequence_twice_raises_and_changes_nothing():
    bm = BlockManager(8, 4)
    r = req(0, list(range(10)))
    compute(bm, r, 10)
    bm.free(r)
    assert bm.num_free == 8
    with pytest.raises(BlockError, match="holds no KV blocks"):
        bm.free(r)
    bm.check()
    assert bm.num_free == 8


def test_allocation_is_incremental_and_refuses_past_the_pool():
    bm = BlockManager(4, 4)
    r = req(0, list(range(16)))
    assert bm.allocate(r, 5)
    table = bm.block_table(r.seq_id)
    assert len(table) == 2
    assert bm.allocate(r, 8) and bm.block_table(r.seq_id) is table and len(table) == 2
    assert bm.allocate(r, 16) and len(table) == 4
    other = req(1, [1, 2])
    assert not bm.allocate(other, 2)
    assert not bm.holds(other.seq_id)
    bm.check()


def test_a_shared_prefix_is_found_and_its_blocks_shared():
    bm = BlockManager(16, 4)
    prompt = list(range(100, 110))  # two full blocks + 2
    a = req(0, prompt)
    compute(bm, a, 10)
    b = req(1, prompt[:8] + [7, 7, 7])
    hits = bm.find_cached_prefix(b)
    assert hits == bm.block_table(a.seq_id)[:2]
    assert bm.allocate(b, 11, hits)
    assert [bm.pool.ref_counts[x] for x in hits] == [2, 2]
    bm.check()


def test_at_least_one_prompt_token_is_left_to_compute():
    bm = BlockManager(16, 4)
    a = req(0, list(range(8)))
    compute(bm, a, 8)
    same = req(1, list(range(8)))
    assert len(bm.find_cached_prefix(same)) == 1  # not 2: the last token must run


def test_cached_blocks_outlive_their_request_and_are_evicted_lru():
    bm = BlockManager(4, 2)
    a, b = req(0, [1, 2, 3, 4]), req(1, [5, 6, 7, 8])
    compute(bm, a, 4)
    compute(bm, b, 4)
    bm.free(a)
    bm.free(b)
    assert bm.num_free == 4 and bm.pool.num_evictable == 4
    assert len(bm.find_cached_prefix(req(2, [1, 2, 3, 4, 9]))) == 2
    # Two fresh blocks evict the least recently freed: a's, tail block first.
    c = req(3, [9, 9, 9, 9])
    assert bm.allocate(c, 4)
    assert len(bm.find_cached_prefix(req(4, [1, 2, 3, 4, 9]))) == 0
    assert len(bm.find_cached_prefix(req(5, [5, 6, 7, 8, 9]))) == 2
    stored, evicted = bm.drain_kv_events()
    assert set(stored) == set(block_hashes([5, 6, 7, 8], 2))
    assert evicted == []  # a's hashes were stored and evicted since the last drain: netted
    bm.check()


def test_events_report_hashes_stored_then_evicted_across_drains():
    bm = BlockManager(2, 2)
    a = req(0, [1, 2, 3, 4])
    compute(bm, a, 4)
    assert bm.drain_kv_events() == (block_hashes([1, 2, 3, 4], 2), [])
    bm.free(a)
    assert bm.drain_kv_events() == ([], [])  # still cached
    assert bm.allocate(req(1, [0]), 1)
    stored, evicted = bm.drain_kv_events()
    assert stored == [] and len(evicted) == 1
    assert evicted[0] in block_hashes([1, 2, 3, 4], 2)
    assert set(bm.cached_hashes()) | set(evicted) == set(block_hashes([1, 2, 3, 4], 2))


def test_the_same_prefix_computed_twice_at_once_is_cached_once():
    bm = BlockManager(8, 2)
    a, b = req(0, [1, 2, 3]), req(1, [1, 2, 3])
    assert bm.allocate(a, 3) and bm.allocate(b, 3)
    for r in (a, b):
        r.num_computed_tokens = 3
        bm.cache_full_blocks(r)
    assert len(bm.pool.cached) == 1
    bm.free(a)
    bm.free(b)
    bm.check()
    assert bm.num_free == 8 and bm.pool.num_evictable == 1
