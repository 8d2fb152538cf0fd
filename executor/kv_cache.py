"""The paged KV cache one rank holds, shaped by ownership, and the block allocator.

A rank caches only its KV-cache shard from core (`RankInfo.kv_cache`): the layers of its
pipeline stage and the KV heads of its TP shard. Block ids belong to the replica's
scheduler (one block table per sequence, valid on every rank of the replica); the cache
only stores and reads by them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class LayerCache:
    """Key and value blocks of one layer: [num_blocks, block_size, kv_heads, head_dim]."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v
        self.block_size = k.shape[1]

    def write(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store new tokens' keys/values at flat slots (block * block_size + offset)."""
        self.k.view(-1, *self.k.shape[2:])[slots] = k
        self.v.view(-1, *self.v.shape[2:])[slots] = v

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values indexed by flat slot: [num_blocks * block_size, kv_heads, dim]."""
        return self.k.view(-1, *self.k.shape[2:]), self.v.view(-1, *self.v.shape[2:])


class PagedKVCache:
    """KV blocks for the layers in `layers` (global layer ids) and `num_kv_heads` heads:
    `num_blocks` the scheduler allocates, and with `scratch` one more (id `scratch_block` =
    num_blocks) that the padding rows of a CUDA-graph step write to and read from."""

    def __init__(
        self,
        layers: range,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        scratch: bool = False,
    ):
        self.layers = layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.scratch_block = num_blocks if scratch else None
        shape = (len(layers), num_blocks + scratch, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def layer(self, layer_id: int) -> LayerCache:
        if layer_id not in self.layers:
            raise KeyError(f"layer {layer_id} is not cached on this rank (it holds layers "
                           f"{self.layers.start}..{self.layers.stop - 1})")
        i = layer_id - self.layers.start
        return LayerCache(self.k[i], self.v[i])


def slot_mapping(block_table: Sequence[int], positions: Sequence[int], block_size: int
                 ) -> list[int]:
    """Flat cache slots (block * block_size + offset) of token positions of one sequence."""
    need = (max(positions) // block_size + 1) if len(positions) else 0
    if need > len(block_table):
        raise IndexError(f"position {max(positions)} needs {need} blocks but the block table "
                         f"has {len(block_table)}")
    return [block_table[p // block_size] * block_size + p % block_size for p in positions]


def blocks_needed(num_tokens: int, block_size: int) -> int:
    return math.ceil(num_tokens / block_size)


class CacheFullError(RuntimeError):
    """No free KV block is left; the scheduler must wait or preempt."""


class BlockAllocator:
    """Free-list of KV block ids for one replica (the scheduler side of the paged cache)."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise CacheFullError(f"need {n} KV blocks but only {len(self._free)} of "
                                 f"{self.num_blocks} are free")
        return [self._free.pop() for _ in range(n)]

    def free(self, blocks: Sequence[int]) -> None:
        self._free.extend(reversed(blocks))

    def grow(self, block_table: list[int], num_tokens: int, block_size: int) -> list[int]:
        """Extend `block_table` in place so it holds `num_tokens` tokens; returns it."""
        missing = blocks_needed(num_tokens, block_size) - len(block_table)
        if missing > 0:
            block_table.extend(self.allocate(missing))
        return block_table
