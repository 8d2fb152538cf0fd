"""Bytes one rank holds: its weights and its KV cache per token, from what core gave it.

One formula for everyone: the replica worker sizes its KV pool with it, and a simulator can
size a layout with it without a device. Both read only `RankInfo` (the rank's layers, heads,
KV heads, MLP columns, experts and vocabulary rows) and the `ModelSpec`.
"""

from __future__ import annotations

import math

from .config import ModelSpec
from .topology import RankInfo

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def dtype_bytes(spec: ModelSpec) -> int:
    return DTYPE_BYTES[spec.dtype]


def kv_bytes_per_token(info: RankInfo, spec: ModelSpec) -> int:
    """KV-cache bytes one token takes on this rank: its stage's layers x its KV heads x
    head_dim x 2 (key and value) x the dtype's size. Experts hold no KV."""
    kv = info.kv_cache
    return len(kv.layers) * len(kv.kv_heads) * spec.head_dim * 2 * dtype_bytes(spec)


def kv_bytes_per_block(info: RankInfo, spec: ModelSpec, block_size: int) -> int:
    return kv_bytes_per_token(info, spec) * block_size


def kv_blocks_for_budget(info: RankInfo, spec: ModelSpec, block_size: int,
                         budget_bytes: int) -> int:
    """Whole KV blocks that fit in `budget_bytes` on this rank (a stage without KV: none
    needed, so the budget never limits it and the answer is unbounded: -1)."""
    per_block = kv_bytes_per_block(info, spec, block_size)
    return budget_bytes // per_block if per_block else -1


def blocks_for_tokens(num_tokens: int, block_size: int) -> int:
    return math.ceil(num_tokens / block_size)


def weight_bytes(info: RankInfo, spec: ModelSpec, expert_parallel: bool) -> int:
    """Weight bytes this rank holds: embedding rows (first stage), final norm and LM-head rows
    (last stage) and, per layer of its stage, both norms, its heads' and KV heads' slices of
    the attention projections, and its MLP columns or experts (whole experts under EP; every
    expert's MLP columns without it) plus the replicated router."""
    h, d, inter = spec.hidden_size, spec.head_dim, spec.intermediate_size
    heads, kv_heads = len(info.attention_heads), len(info.kv_cache.kv_heads)
    params = 0
    if info.is_first_stage:
        params += len(info.vocab) * h
    if info.is_last_stage:
        params += len(info.vocab) * h + h
    attention = (heads * d * h) * 2 + (kv_heads * d * h) * 2  # wq, wo; wk, wv
    if not spec.is_moe:
        ffn = 3 * h * len(info.mlp_columns)
    elif expert_parallel:
        ffn = spec.num_experts * h + len(info.experts) * 3 * h * inter
    else:
        ffn = spec.num_experts * h + spec.num_experts * 3 * h * len(info.mlp_columns)
    params += len(info.layers) * (2 * h + attention + ffn)
    return params * dtype_bytes(spec)
