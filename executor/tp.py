"""Tensor parallelism applied from outside to the plain reference model.

Column-parallel QKV and gate/up projections, row-parallel output and down projections
followed by an all_reduce over the TP group; attention heads and KV heads from core's
shards (a KV head is replicated on several ranks when there are fewer KV heads than TP
ranks); a vocab-parallel embedding (all_reduce) and LM head (all_gather of the logits).
Without EP each expert is sharded like the MLP; with EP, ep.py owns the experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.placement import mlp_shard
from . import ops
from .comm import GroupCoordinator
from .context import ParallelContext
from .model import Attention, FeedForward, MoE, Transformer


def apply_tp(model: Transformer, ctx: ParallelContext) -> Transformer:
    """Keep this TP rank's share of every weight; insert the TP collectives."""
    tp = ctx.tp
    if tp.world_size == 1:
        return model
    if model.tok_embeddings is not None:
        model.tok_embeddings = VocabParallelEmbedding(model.tok_embeddings.weight, ctx.vocab, tp)
    if model.output is not None:
        model.output = VocabParallelHead(model.output.weight, ctx.tp_vocab_shards, tp)
    for block in model.layers:
        _shard_attention(block.attention, ctx)
        if isinstance(block.ffn, FeedForward):
            _shard_mlp(block.ffn, ctx.mlp_columns)
            _reduce_output(block.ffn.w2, tp)  # the MLP's output (a block calls w2 itself)
        elif isinstance(block.ffn, MoE) and not ctx.expert_parallel:
            for expert in block.ffn.experts:
                _shard_mlp(expert, ctx.mlp_columns)
            if block.ffn.shared is not None:  # its gate scales each token: sums commute
                _shard_mlp(block.ffn.shared.mlp, shared_columns(ctx))
            _reduce_output(block.ffn, tp)
    return model


def _shard_attention(attn: Attention, ctx: ParallelContext) -> None:
    heads, kv_heads, d = ctx.attention_heads, ctx.kv_heads, attn.head_dim
    _keep_rows(attn.wq, _expand(heads, d))
    _keep_rows(attn.wk, _expand(kv_heads, d))
    _keep_rows(attn.wv, _expand(kv_heads, d))
    _keep_cols(attn.wo, _expand(heads, d))
    attn.head_ids, attn.kv_head_ids = heads, kv_heads
    _reduce_output(attn.wo, ctx.tp)  # the attention's output, however it is called


def shared_columns(ctx: ParallelContext) -> range:
    """This TP rank's slice of the shared expert's width (sharded like the MLP)."""
    return mlp_shard(ctx.model.shared_expert_intermediate_size, ctx.tp.world_size,
                     ctx.tp.rank_in_group)


def _shard_mlp(mlp: FeedForward, columns: range) -> None:
    _keep_rows(mlp.w1, columns)
    _keep_rows(mlp.w3, columns)
    _keep_cols(mlp.w2, columns)


def _expand(heads: range, head_dim: int) -> range:
    """Rows of a projection that belong to a contiguous run of heads."""
    return range(heads.start * head_dim, heads.stop * head_dim)


def _keep_rows(linear: nn.Linear, rows: range) -> None:
    """Column parallel: keep output features `rows` (rows of the [out, in] weight)."""
    linear.weight = nn.Parameter(linear.weight.data[rows.start:rows.stop].clone(),
                                 requires_grad=False)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data[rows.start:rows.stop].clone(),
                                   requires_grad=False)
    linear.out_features = len(rows)


def _keep_cols(linear: nn.Linear, cols: range) -> None:
    """Row parallel: keep input features `cols`; the outputs are partial sums."""
    linear.weight = nn.Parameter(linear.weight.data[:, cols.start:cols.stop].clone(),
                                 requires_grad=False)
    linear.in_features = len(cols)


def _reduce_output(module: nn.Module, group: GroupCoordinator) -> None:
    """Sum the module's partial output over the group once it returns."""
    module.register_forward_hook(lambda _m, _inputs, out: group.all_reduce(out))


class VocabParallelEmbedding(nn.Module):
    """Each TP rank holds rows `vocab` of the table; lookups are summed over the group."""

    def __init__(self, full_weight: torch.Tensor, vocab: range, group: GroupCoordinator):
        super().__init__()
        self.vocab = vocab
        self.group = group
        self.weight = nn.Parameter(full_weight.data[vocab.start:vocab.stop].clone(),
                                   requires_grad=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mine = (tokens >= self.vocab.start) & (tokens < self.vocab.stop)
        local = torch.where(mine, tokens - self.vocab.start, torch.zeros_like(tokens))
        out = F.embedding(local, self.weight) * mine.unsqueeze(-1).to(self.weight.dtype)
        return self.group.all_reduce(out)


class VocabParallelHead(nn.Module):
    """Each TP rank computes the logits of its vocabulary rows; they are all_gathered.

    Shards may differ by one row (vocab not divisible by TP): each is padded to the largest
    for the gather and the padding dropped after.
    """

    def __init__(self, full_weight: torch.Tensor, shards: tuple[range, ...],
                 group: GroupCoordinator):
        super().__init__()
        self.shards = shards
        self.group = group
        vocab = shards[group.rank_in_group]
        self.weight = nn.Parameter(full_weight.data[vocab.start:vocab.stop].clone(),
                                   requires_grad=False)
        self.width = max(len(s) for s in shards)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        local = ops.linear(h, self.weight)
        if local.shape[-1] < self.width:
            local = F.pad(local, (0, self.width - local.shape[-1]))
        gathered = self.group.all_gather(local, dim=-1)
        parts = [gathered[..., i * self.width: i * self.width + len(s)]
                 for i, s in enumerate(self.shards)]
        return torch.cat(parts, dim=-1)
