"""How many KV blocks a replica's pool has: the same number on every rank of the replica.

Each rank works out what fits its own budget with core's formula (`core.memory`): a byte
figure (`serve.kv_cache_bytes`), or on a GPU a fraction (`serve.gpu_memory_utilization`) of
the device memory free after the weights, or, on a CPU with no figure, enough for
`serve.max_num_seqs` sequences of `model.max_seq_len`. The replica takes the minimum over its
ranks (a MIN all_reduce over its CPU group), since one block table serves all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..core.memory import blocks_for_tokens, kv_bytes_per_block
from .comm import GroupCoordinator
from .context import ParallelContext
from .errors import ExecutorError


class KVBudgetError(ExecutorError):
    """The KV budget holds no block on some rank; the message says which field to raise."""


@dataclass(frozen=True)
class KVPool:
    """The replica's pool: blocks, tokens per block, and this rank's bytes per block."""

    num_blocks: int
    block_size: int
    bytes_per_block: int
    source: str
    """Where this rank's figure came from: kv_cache_bytes, gpu_memory_utilization, default."""

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def nbytes(self) -> int:
        return self.num_blocks * self.bytes_per_block


def rank_kv_blocks(ctx: ParallelContext) -> tuple[int, str]:
    """Blocks that fit this rank's budget, and which setting decided it."""
    spec, serve = ctx.model, ctx.config.serve
    per_block = kv_bytes_per_block(ctx.rank_info, spec, serve.kv_block_size)
    if serve.kv_cache_bytes is not None:
        blocks, source = serve.kv_cache_bytes // per_block, "kv_cache_bytes"
        if blocks < 1:
            raise KVBudgetError(
                f"serve.kv_cache_bytes={serve.kv_cache_bytes} holds no KV block on rank "
                f"{ctx.rank} (one block of {serve.kv_block_size} tokens takes {per_block} "
                f"bytes there): raise serve.kv_cache_bytes to at least {per_block}")
        return blocks, source
    if ctx.device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(ctx.device)
        blocks = int(free * serve.gpu_memory_utilization) // per_block
        if blocks < 1:
            raise KVBudgetError(
                f"serve.gpu_memory_utilization={serve.gpu_memory_utilization} of the "
                f"{free} bytes free on rank {ctx.rank} holds no KV block of {per_block} bytes:"
                " raise serve.gpu_memory_utilization or free the device")
        return blocks, "gpu_memory_utilization"
    return (serve.max_num_seqs * blocks_for_tokens(spec.max_seq_len, serve.kv_block_size),
            "default")


def replica_kv_pool(ctx: ParallelContext, group: GroupCoordinator) -> KVPool:
    """This rank's figure, then the minimum over the replica (`group`: its CPU twin)."""
    blocks, source = rank_kv_blocks(ctx)
    if group.world_size > 1:
        t = torch.tensor([blocks], dtype=torch.long)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group.process_group)
        blocks = int(t.item())
    spec, serve = ctx.model, ctx.config.serve
    return KVPool(num_blocks=blocks, block_size=serve.kv_block_size,
                  bytes_per_block=kv_bytes_per_block(ctx.rank_info, spec, serve.kv_block_size),
                  source=source)
