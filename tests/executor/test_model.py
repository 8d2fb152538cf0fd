"""The plain reference model in one process: the paged KV cache path equals recomputation."""

from __future__ import annotations

import pytest
import torch

from pypto_serving.core.config import ModelSpec
from pypto_serving.executor.batch import (
    DecodeBatch,
    PrefillBatch,
    StepChunk,
    build_step,
    prefill_tables,
)
from pypto_serving.executor.kv_cache import (
    BlockAllocator,
    CacheFullError,
    PagedKVCache,
    slot_mapping,
)
from pypto_serving.executor.model import build_reference_model, sequence_metadata

SPEC = ModelSpec(name="t", num_layers=2, hidden_size=32, num_attention_heads=4, num_kv_heads=2,
                 intermediate_size=64, num_experts=4, experts_per_token=2, vocab_size=64,
                 max_seq_len=32)


def _logits_with_cache(model, prompts, new_tokens, block_size=4):
    """Prefill the prompts, then decode `new_tokens[step][seq]`, through a paged cache."""
    cache = PagedKVCache(range(SPEC.num_layers), num_blocks=16, block_size=block_size,
                         num_kv_heads=SPEC.num_kv_heads, head_dim=SPEC.head_dim)
    alloc = BlockAllocator(16)
    tables = [alloc.grow([], len(p) + len(new_tokens), block_size) for p in prompts]
    step = build_step(PrefillBatch(prompts, tables), block_size, torch.device("cpu"))
    out = [model(step.tokens, step.meta, cache)[step.last_rows]]
    lengths = [len(p) for p in prompts]
    for toks in new_tokens:
        step = build_step(DecodeBatch(toks, lengths, tables), block_size, torch.device("cpu"))
        out.append(model(step.tokens, step.meta, cache)[step.last_rows])
        lengths = [n + 1 for n in lengths]
    return out


@pytest.mark.parametrize("moe", [False, True])
def test_paged_cache_prefill_and_decode_equal_recomputation(moe):
    spec = SPEC if moe else SPEC.model_copy(update={"num_experts": 0})
    model = build_reference_model(spec, seed=3)
    prompts = [[1, 5, 9, 2, 7], [3, 3, 8]]
    new = [[11, 12], [13, 14], [15, 16]]
    got = _logits_with_cache(model, prompts, new)
    for step in range(len(new) + 1):
        seqs = [p + [t[i] for t in new[:step]] for i, p in enumerate(prompts)]
        tokens = torch.tensor([t for s in seqs for t in s])
        want = model(tokens, sequence_metadata([len(s) for s in seqs]))
        last = torch.tensor([len(s) for s in seqs]).cumsum(0) - 1
        torch.testing.assert_close(got[step], want[last], rtol=1e-5, atol=1e-5)


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (build_reference_model(SPEC, seed=s) for s in (0, 0, 1))
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(),
                                  strict=True):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name


def test_slot_mapping_follows_the_block_table():
    assert slot_mapping([7, 2], [0, 3, 4, 5], 4) == [28, 31, 8, 9]
    with pytest.raises(IndexError, match="needs 3 blocks but the block table has 2"):
        slot_mapping([7, 2], [8], 4)


def test_block_allocator_reuses_freed_blocks_and_reports_a_full_cache():
    alloc = BlockAllocator(3)
    table = alloc.grow([], 9, block_size=4)
    assert table == [0, 1, 2] and alloc.num_free == 0
    with pytest.raises(CacheFullError, match="need 1 KV blocks but only 0 of 3 are free"):
        alloc.allocate(1)
    alloc.free(table)
    assert alloc.num_free == 3


def test_cache_holds_only_its_layers():
    cache = PagedKVCache(range(2, 4), num_blocks=2, block_size=4, num_kv_heads=1, head_dim=8)
    assert cache.k.shape == (2, 2, 4, 1, 8)
    cache.layer(3)
    with pytest.raises(KeyError, match="layer 1 is not cached on this rank"):
        cache.layer(1)


def test_a_batch_without_tokens_is_refused():
    with pytest.raises(ValueError, match="at least one sequence and one token"):
        build_step(PrefillBatch([[]], [[0]]), 4, torch.device("cpu"))


@pytest.mark.parametrize("rows", [0, 3])
def test_packed_rows_come_back_bit_exact_in_every_dtype(rows):
    from pypto_serving.executor.ep import pack_rows, unpack_rows

    x = torch.randn(rows, 5, dtype=torch.bfloat16)
    ids = torch.randint(0, 2**40, (rows, 2))
    w = torch.rand(rows, 2)
    packed = pack_rows(x, ids, w)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, 5 * 2 + 2 * 8 + 2 * 4)
    got = unpack_rows(packed, (torch.bfloat16, (5,)), (torch.long, (2,)), (torch.float32, (2,)))
    for a, b in zip(got, (x, ids, w), strict=True):
        assert torch.equal(a, b)


def test_the_batched_prefill_kernels_tables_follow_the_chunks():
    # rows: chunk 0 (70 tokens at 0, 18 blocks), a decode at row 70, chunk 1 (3 tokens after
    # 5 cached: positions 0..7, 2 blocks)
    blocks = [7, 3, 9, 1, 4, 8, 2, 6, 5, 0, 11, 12, 13, 14, 15, 16, 17, 18, 30, 31]
    spans = [(0, 70, 0, 0, 18), (71, 3, 5, 18, 20)]
    tables = prefill_tables(spans, blocks, torch.device("cpu"))
    assert tables.info.tolist() == [[0, 70, 0], [71, 3, 5]]
    assert tables.tables.tolist() == [blocks[:18], [30, 31] + [30] * 16]  # padded: its first
    # 64 queries per work item: chunk 0 in two, chunk 1 in one
    assert tables.work.tolist() == [[0, 0], [0, 64], [1, 0]]


def test_a_step_builds_those_tables_only_where_the_kernel_runs():
    chunks = [StepChunk(list(range(9)), 0, [0, 1, 2]), StepChunk([1], 9, [3, 4, 5]),
              StepChunk([4, 5, 6], 5, [6, 7])]
    meta = build_step(chunks, 4, torch.device("cpu")).meta
    assert meta.prefill_tables is None and len(meta.prefills) == 2  # the CPU: SDPA per chunk
