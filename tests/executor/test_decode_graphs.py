"""What a decode graph reads: the static buffers `DecodeGraphs` writes for a step (on the CPU
the host and device buffers are one; tests/gpu replays the graphs on a GPU)."""

from __future__ import annotations

import pytest
import torch

from pypto_serving.engine.plan import SeqChunk
from pypto_serving.executor.decode_graphs import DecodeGraphs, graph_buckets
from pypto_serving.executor.kv_cache import PagedKVCache


def test_buckets_double_with_a_step_between_and_end_at_the_largest_batch():
    assert graph_buckets(8) == [1, 2, 4, 8]
    assert graph_buckets(100) == [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 100]


def _graphs(max_seq_len: int) -> DecodeGraphs:
    cache = PagedKVCache(range(1), num_blocks=600, block_size=16, num_kv_heads=2, head_dim=8,
                         scratch=True)
    return DecodeGraphs(None, cache, max_batch=4, max_seq_len=max_seq_len)


# whole table rows; rows of 200,000 blocks (2 x 800 KB, over a MiB): the live columns apart
@pytest.mark.parametrize("max_seq_len", [256, 16 * 200_000])
def test_a_step_writes_its_rows_and_pads_the_bucket_with_the_scratch_block(max_seq_len):
    g = _graphs(max_seq_len)
    scratch = g.kv_cache.scratch_block
    chunks = [SeqChunk(seq_id=0, token_ids=[11], start_pos=40, sample=True,
                       block_table=[7, 3, 9]),
              SeqChunk(seq_id=1, token_ids=[12], start_pos=5, sample=True, block_table=[2])]
    g._write(chunks, 4)
    tokens, positions, slots, lens = g.inputs[:, :4].tolist()
    assert tokens == [11, 12, 0, 0] and positions == [40, 5, 0, 0]
    assert slots == [9 * 16 + 8, 2 * 16 + 5, scratch * 16, scratch * 16]
    assert lens == [41, 6, 1, 1]
    # each row's live blocks; past them only block ids (the kernel reads no further)
    assert g.tables[0, :3].tolist() == [7, 3, 9] and g.tables[1, 0] == 2
    assert ((g.tables >= 0) & (g.tables <= scratch)).all()
    assert (g.tables[2:4] == scratch).all()


@pytest.mark.parametrize("rows", [3, 12])  # row by row, and packed in one (ROW_BY_ROW_MAX)
def test_a_shorter_step_after_a_longer_one_reads_only_its_own_blocks(rows):
    cache = PagedKVCache(range(1), num_blocks=600, block_size=16, num_kv_heads=2, head_dim=8,
                         scratch=True)
    g = DecodeGraphs(None, cache, max_batch=16, max_seq_len=256)

    def step(start: int, first_block: int) -> list[SeqChunk]:
        blocks = start // 16 + 1
        return [SeqChunk(seq_id=i, token_ids=[i], start_pos=start, sample=True,
                         block_table=list(range(first_block + 20 * i,
                                                first_block + 20 * i + blocks)))
                for i in range(rows)]

    g._write(step(100, 0), 16)     # 7 blocks a row
    g._write(step(20, 300), 16)    # then 2 blocks a row, other ones
    lens = g.inputs[3, :rows].tolist()
    assert lens == [21] * rows
    for i in range(rows):
        assert g.tables[i, :2].tolist() == [300 + 20 * i, 301 + 20 * i]
    assert (g.tables[:rows] <= cache.scratch_block).all()


def test_a_block_table_too_short_for_its_position_is_refused_by_name():
    g = _graphs(256)
    with pytest.raises(IndexError, match="position 40 needs 3 blocks, but the block table has 2"):
        g._write([SeqChunk(seq_id=0, token_ids=[1], start_pos=40, sample=True,
                           block_table=[1, 2])], 1)
    assert torch.equal(g.inputs, torch.zeros_like(g.inputs))  # nothing written
