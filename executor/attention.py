"""Attention over the paged KV cache: one step's metadata and the two kinds of rows in it.

A step's flat batch holds decode rows (a chunk of one token: it attends to its sequence's
cached positions up to its own) and prefill chunks (several tokens of one sequence at
positions start.., causal over the cache up to each one). Decode rows go through
`decode_attention` (a fused Triton kernel on CUDA that reads only each sequence's live
blocks; a block-table gather in torch elsewhere); prefill chunks through
scaled_dot_product_attention over their sequence's pages, so a long prompt costs memory
linear in its length, or, two or more of them on CUDA, through one Triton launch for all.
Shapes: q [tokens, heads, d]; caches [blocks, block_size, kv_heads, d].
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .ops import pdl_on, use_triton

PREFILL_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                         SDPBackend.MATH]
"""SDPA's backends for prefill chunks on CUDA: all but cuDNN's. torch tries cuDNN first on
sm90 and sm100 with a recent cuDNN, which builds an execution plan at each new (query length,
key length), and served prompts rarely repeat a length. On the H200, steps at a prompt
length not seen before took 75-83 ms against 13-37 for lengths seen before
(docs/results/h200-2026-12-03c-firstuse.txt); that cuDNN was the cause is inferred, not yet
measured with it off."""


@dataclass
class PrefillSpan:
    """A chunk of `length` tokens of one sequence at flat rows row.., positions start..;
    `blocks` holds its block-table entries up to its last position (a device tensor)."""

    row: int
    length: int
    start: int
    blocks: torch.Tensor


PREFILL_BLOCK_M = 64
"""Queries of one chunk per program of the batched prefill kernel (a work item)."""


@dataclass
class PrefillTables:
    """A step's prefill chunks as the batched prefill kernel reads them (int32, on the
    device): `info` [chunks, 3] (first row, length, start position), `tables` [chunks, width]
    (block tables padded with a valid id), `work` [items, 2] (chunk, first query) per
    PREFILL_BLOCK_M queries."""

    info: torch.Tensor
    tables: torch.Tensor
    work: torch.Tensor


@dataclass
class PagedAttentionMetadata:
    """One ragged step over the paged KV cache, built once per step and shared by every layer.

    Token t is at `positions[t]` and its key/value is written at cache slot `slots[t]` (block *
    block_size + offset). Decode rows: `decode_rows` (None: every row is one), their block
    tables `block_tables` [rows, width] (int32, padded with any valid block id) and
    `context_lens` (int64: the row's position + 1). Prefill chunks: `prefills`; with two or
    more on CUDA (with Triton), also `prefill_tables`, for one launch over all of them.
    """

    positions: torch.Tensor
    slots: torch.Tensor
    decode_rows: torch.Tensor | None
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    prefills: list[PrefillSpan]
    prefill_tables: PrefillTables | None = None

    @property
    def num_decodes(self) -> int:
        return self.context_lens.shape[0]


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: PagedAttentionMetadata, kv_index: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Causal attention of every row of the step over its sequence's cache (the new tokens'
    keys and values already written). `kv_index` maps query heads to cache KV heads when
    they are not in equal runs (None: runs of heads / kv_heads query heads per KV head)."""
    if meta.decode_rows is None and not meta.prefills:
        return decode_attention(q, k_cache, v_cache, meta.block_tables, meta.context_lens,
                                kv_index)
    out = torch.empty_like(q)
    if meta.num_decodes:
        rows = meta.decode_rows
        out[rows] = decode_attention(q[rows], k_cache, v_cache, meta.block_tables,
                                     meta.context_lens, kv_index)
    batch = meta.prefill_tables
    if batch is not None and kv_index is None and use_triton(q):
        # several chunks: one launch for all (a loop of SDPA calls costs ~20 launches per
        # chunk and layer)
        from .triton_kernels import paged_prefill_attention
        paged_prefill_attention(q, k_cache, v_cache, out, batch.info, batch.tables, batch.work)
        return out
    with sdpa_kernel(PREFILL_SDPA_BACKENDS) if q.is_cuda else contextlib.nullcontext():
        for span in meta.prefills:
            end = span.row + span.length
            out[span.row:end] = prefill_attention(q[span.row:end], k_cache, v_cache, span,
                                                  kv_index)
    return out


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, context_lens: torch.Tensor,
                     kv_index: torch.Tensor | None = None) -> torch.Tensor:
    """One query row per sequence over its first context_lens[i] cached positions."""
    if use_triton(q) and kv_index is None:
        from .triton_kernels import paged_decode_attention
        return paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens,
                                      pdl=pdl_on(q))
    return gathered_decode_attention(q, k_cache, v_cache, block_tables, context_lens, kv_index)


def gathered_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              block_tables: torch.Tensor, context_lens: torch.Tensor,
                              kv_index: torch.Tensor | None = None) -> torch.Tensor:
    """decode_attention in plain torch: each row's blocks gathered to [width * block_size]
    positions, those past its context masked (the reference the kernel is checked against)."""
    rows, heads, d = q.shape
    tables = block_tables.long()
    k = k_cache[tables].flatten(1, 2)                 # [rows, width * block_size, kv, d]
    v = v_cache[tables].flatten(1, 2)
    if kv_index is not None:
        k, v = k[:, :, kv_index], v[:, :, kv_index]
    kv_heads = k.shape[2]
    qg = q.view(rows, kv_heads, heads // kv_heads, d)
    scores = torch.einsum("rkgd,rpkd->rkgp", qg.float(), k.float()) / math.sqrt(d)
    hidden = torch.arange(k.shape[1], device=q.device)[None, :] >= context_lens[:, None]
    scores.masked_fill_(hidden[:, None, None, :], float("-inf"))
    out = torch.einsum("rkgp,rpkd->rkgd", scores.softmax(-1), v.float())
    return out.to(q.dtype).reshape(rows, heads, d)


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      span: PrefillSpan, kv_index: torch.Tensor | None = None) -> torch.Tensor:
    """One chunk's queries over its sequence's cached positions 0..start+length-1, causal
    (query i sees positions up to start + i), through scaled_dot_product_attention."""
    n, heads, d = q.shape
    end = span.start + n
    k = k_cache[span.blocks].flatten(0, 1)[:end]      # [end, kv, d]
    v = v_cache[span.blocks].flatten(0, 1)[:end]
    if kv_index is not None:
        k, v = k[:, kv_index], v[:, kv_index]
    elif k.shape[1] != heads:  # grouped heads, expanded: SDPA's flash kernel then applies
        k = k.repeat_interleave(heads // k.shape[1], dim=1)
        v = v.repeat_interleave(heads // v.shape[1], dim=1)
    # [1, heads, tokens, d]: SDPA's fused (flash / memory-efficient) kernels take 4-D inputs
    # only; 3-D ones fall back to the math path, which materialises every score
    qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    if span.start == 0:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    else:
        seen = (torch.arange(end, device=q.device)[None, :]
                <= torch.arange(span.start, end, device=q.device)[:, None])
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=seen)
    return out[0].transpose(0, 1)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int],
                     kv_index: torch.Tensor) -> torch.Tensor:
    """Plain causal attention of each whole sequence over itself (no cache): the truth the
    paged path is checked against. q [tokens, heads, d]; k, v [tokens, kv_heads, d]."""
    outs, start = [], 0
    for n in lengths:
        qs = q[start:start + n].transpose(0, 1)
        ks = k[start:start + n][:, kv_index].transpose(0, 1)
        vs = v[start:start + n][:, kv_index].transpose(0, 1)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(0, 1))
        start += n
    return torch.cat(outs)
