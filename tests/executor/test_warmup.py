"""The warm-up: its burst step (batch.warmup_prefill: the biggest prefill a burst of new
requests makes, on distinct free blocks, within every limit), and what a user reads when the
KV pool or the warm-up does not fit the device."""

from __future__ import annotations

import pytest

from pypto_serving.executor.batch import warmup_prefill


@pytest.mark.parametrize("limits, chunks, length", [
    # serve defaults on a GPU: 2,048 tokens as 16 prompts of 128
    ((2048, 128, 4096, 10_000, 16), 16, 128),
    ((2048, 4, 4096, 10_000, 16), 4, 128),      # max_num_seqs caps the count
    ((2048, 128, 4096, 20, 16), 2, 128),        # so do the free blocks (8 per prompt)
    ((2048, 128, 64, 10_000, 16), 32, 63),      # prompts fit the context
    ((8, 128, 4096, 10_000, 4), 1, 8),          # a step budget under one prompt
])
def test_the_burst_fits_every_limit(limits, chunks, length):
    max_tokens, max_seqs, max_seq_len, num_blocks, bs = limits
    burst = warmup_prefill(max_tokens, max_seqs, max_seq_len, num_blocks, bs, vocab_size=100)
    assert len(burst) == chunks
    assert all(len(c.token_ids) == length and c.start_pos == 0 and c.sample for c in burst)
    assert sum(len(c.token_ids) for c in burst) <= max_tokens
    blocks = [b for c in burst for b in c.block_table]
    assert len(set(blocks)) == len(blocks) and max(blocks) < num_blocks
    assert all(len(c.block_table) * bs >= length for c in burst)
    assert max(t for c in burst for t in c.token_ids) < 100


def test_out_of_device_memory_names_what_did_not_fit_and_what_to_lower():
    import torch

    from pypto_serving.executor.errors import DeviceMemoryError
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")
    pool = str(DeviceMemoryError.kv_pool(1000, 3, oom))
    assert pool.startswith("the KV pool of 1000 blocks ran out of device memory on rank 3 "
                           "(CUDA out of memory. Tried to allocate 2.00 GiB)")
    assert "serve.gpu_memory_utilization" in pool and "max_num_batched_tokens" not in pool
    warm = str(DeviceMemoryError.warmup(0, torch.OutOfMemoryError("")))
    assert "(OutOfMemoryError)" in warm and "serve.max_num_batched_tokens" in warm


def test_an_allocation_failure_is_recognised_however_a_library_reports_it():
    import torch

    from pypto_serving.executor.errors import out_of_memory
    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory."))
    assert out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
                                      "cublasCreate(handle)"))
    assert not out_of_memory(RuntimeError("CUDA error: an illegal memory access was "
                                          "encountered"))
    assert not out_of_memory(ValueError("out of memory"))  # not a device error
