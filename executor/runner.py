"""The ModelRunner contract, and the runner of the reference decoder under any layout.

A runner is constructed with a ParallelContext and consumes its metadata (layers, heads,
KV heads, experts, groups). It owns no request routing and no placement: its scheduler
hands it batches and block tables. Method names follow PyPTO Serving's runners
(`init_kv_cache`, `warmup`, `run_prefill`, `run_decode`) so a PyPTO runner fits as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch

from .batch import DecodeBatch, PrefillBatch, StepOutput, build_step
from .context import ParallelContext
from .ep import apply_ep
from .kv_cache import PagedKVCache, blocks_needed
from .model import DTYPES, Transformer, init_weights
from .pp import apply_pp, receive_activations, send_activations, share_tokens
from .tp import apply_tp


@runtime_checkable
class ModelRunner(Protocol):
    """What a worker's engine drives, one step at a time, on every rank of a replica."""

    ctx: ParallelContext
    kv_cache: PagedKVCache | None

    def load_weights(self, weights: Mapping[str, torch.Tensor] | None = None) -> None:
        """Take this rank's share of the full weights (`None`: the runner's own source)."""

    def init_kv_cache(self, num_blocks: int | None = None) -> PagedKVCache:
        """Allocate this rank's KV shard (its layers x its KV heads) of `num_blocks` blocks."""

    def warmup(self) -> None:
        """Run one throwaway step so the first real one pays no start-up cost."""

    def run_prefill(self, batch: PrefillBatch) -> StepOutput: ...

    def run_decode(self, batch: DecodeBatch) -> StepOutput: ...

    def run_dummy(self) -> None:
        """An idle replica's step: joins every collective (MoE all2all) with a dummy token."""

    def forward(self, batch: PrefillBatch | DecodeBatch | None,
                kv_cache: PagedKVCache | None) -> StepOutput: ...


class ReferenceModelRunner:
    """Runs the reference decoder sharded by the context: TP, PP, EP and any mix."""

    def __init__(self, ctx: ParallelContext, seed: int = 0):
        self.ctx = ctx
        self.seed = seed
        self.dtype = DTYPES[ctx.model.dtype]
        self.model: Transformer | None = None
        self.kv_cache: PagedKVCache | None = None

    def load_weights(self, weights: Mapping[str, torch.Tensor] | None = None) -> None:
        """Build the full model (seeded, or from a full state dict), then keep our share."""
        model = Transformer(self.ctx.model)
        if weights is None:
            init_weights(model, self.seed)
        else:
            model.load_state_dict(weights)
        model = apply_pp(model, self.ctx)
        model = model.to(device=self.ctx.device, dtype=self.dtype).eval()
        model = apply_tp(model, self.ctx)
        self.model = apply_ep(model, self.ctx)

    def init_kv_cache(self, num_blocks: int | None = None) -> PagedKVCache:
        spec, serve = self.ctx.model, self.ctx.config.serve
        if num_blocks is None:
            num_blocks = serve.max_num_seqs * blocks_needed(spec.max_seq_len, serve.kv_block_size)
        self.kv_cache = PagedKVCache(
            layers=self.ctx.kv_cache.layers,
            num_blocks=num_blocks,
            block_size=serve.kv_block_size,
            num_kv_heads=len(self.ctx.kv_cache.kv_heads),
            head_dim=spec.head_dim,
            dtype=self.dtype,
            device=self.ctx.device,
        )
        return self.kv_cache

    def warmup(self) -> None:
        self.run_dummy()

    def run_prefill(self, batch: PrefillBatch) -> StepOutput:
        return self.forward(batch, self._cache())

    def run_decode(self, batch: DecodeBatch) -> StepOutput:
        return self.forward(batch, self._cache())

    def run_dummy(self) -> None:
        self.forward(None, None)

    @torch.inference_mode()
    def forward(self, batch: PrefillBatch | DecodeBatch | None,
                kv_cache: PagedKVCache | None) -> StepOutput:
        """One step of this rank's stage; `batch=None` is the dummy step."""
        if self.model is None:
            raise RuntimeError("call load_weights() before running the model")
        ctx, model = self.ctx, self.model
        step = build_step(batch, ctx.kv_block_size, ctx.device, use_cache=kv_cache is not None,
                          max_seq_len=ctx.model.max_seq_len)
        if ctx.is_first_stage:
            h = model.embed(step.tokens)
        else:
            h = receive_activations(ctx, step.num_tokens, self.dtype)
        h = model.run_layers(h, step.meta, kv_cache)
        logits = None
        if ctx.is_last_stage:
            logits = model.head(h[step.last_rows]).float()
            next_tokens = logits.argmax(-1)
        else:
            send_activations(ctx, h)
            next_tokens = torch.empty(step.num_seqs, dtype=torch.long, device=ctx.device)
        next_tokens = share_tokens(ctx, next_tokens)
        return StepOutput(logits=logits, next_tokens=next_tokens.tolist())

    def _cache(self) -> PagedKVCache:
        if self.kv_cache is None:
            raise RuntimeError("call init_kv_cache() before run_prefill/run_decode")
        return self.kv_cache

