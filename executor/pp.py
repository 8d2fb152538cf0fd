"""Pipeline parallelism applied from outside: keep this stage's layers, pass activations on.

A stage keeps the layers core assigned to it (`RankInfo.layers`), the embedding only on the
first stage and the final norm and LM head only on the last. The residual stream (pre-norm
blocks carry activations and residual in one tensor) goes to the next stage with send/recv
over the PP group; the last stage's sampled tokens are broadcast back so every stage (and
the replica's scheduler) knows them.
"""

from __future__ import annotations

import torch
from torch import nn

from .context import ParallelContext
from .model import Transformer


def apply_pp(model: Transformer, ctx: ParallelContext) -> Transformer:
    """Drop the layers, embedding and head that other stages own."""
    keep = ctx.layers
    model.layers = nn.ModuleList(b for b in model.layers if b.layer_id in keep)
    if not ctx.is_first_stage:
        model.tok_embeddings = None
    if not ctx.is_last_stage:
        model.norm = None
        model.output = None
    return model


def receive_activations(ctx: ParallelContext, num_tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """The residual stream [tokens, hidden] from the previous stage."""
    return ctx.pp.recv((num_tokens, ctx.model.hidden_size), dtype)


def send_activations(ctx: ParallelContext, h: torch.Tensor) -> None:
    """Hand the residual stream to the next stage."""
    ctx.pp.send(h)


def share_tokens(ctx: ParallelContext, tokens: torch.Tensor) -> torch.Tensor:
    """Broadcast the last stage's sampled tokens to every stage of the pipeline."""
    return ctx.pp.broadcast(tokens, src=ctx.pp.world_size - 1)
