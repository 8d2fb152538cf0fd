"""The ModelRunner contract, and the runner of the reference decoder under any layout.

A runner is constructed with a ParallelContext and consumes its metadata (layers, heads,
KV heads, experts, groups). It owns no request routing and no placement: its scheduler
hands it batches and block tables. Method names follow PyPTO Serving's runners
(`init_kv_cache`, `warmup`, `run_prefill`, `run_decode`) so a PyPTO runner fits as is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

from .batch import (
    ChunkLike,
    DecodeBatch,
    PrefillBatch,
    StepChunk,
    StepInput,
    StepOutput,
    build_step,
    dummy_step,
    warmup_prefill,
)
from .checkpoint import load_checkpoint_model
from .context import ParallelContext
from .decode_graphs import DecodeGraphs, graph_max_batch, graphs_unsupported
from .ep import apply_ep
from .errors import DeviceMemoryError, out_of_memory
from .kv_cache import PagedKVCache, blocks_needed
from .model import DTYPES, Transformer, fuse_weights, init_weights
from .pp import apply_pp, receive_activations, send_activations, share_tokens
from .sampler import Sampler, SamplingLike
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

    def run_step(self, chunks: Sequence[ChunkLike],
                 sampling: Sequence[SamplingLike | None] | None = None) -> StepOutput:
        """One forward over a ragged step (prefill chunks and decodes mixed); the last stage
        samples each sampling chunk (`sampling[i]` for the i-th; None: greedy)."""

    def run_prefill(self, batch: PrefillBatch) -> StepOutput:
        """A step of prefill chunks (a view of run_step); greedy tokens on every rank."""

    def run_decode(self, batch: DecodeBatch) -> StepOutput:
        """A step of decodes (a view of run_step); greedy tokens on every rank."""

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
        self.sampler = Sampler()
        self.graphs: DecodeGraphs | None = None
        self.eager_reason: str | None = None
        """Why decode steps run eagerly (None once CUDA graphs are captured by warmup)."""

    def load_weights(self, weights: Mapping[str, torch.Tensor] | None = None) -> None:
        """Build the full model (seeded, or from a full state dict), then keep our share; with
        model.path, read only our share of the checkpoint (executor/checkpoint.py)."""
        if weights is None and self.ctx.model.path is not None:
            self.model = load_checkpoint_model(self.ctx)
        else:
            model = Transformer(self.ctx.model)
            if weights is None:
                init_weights(model, self.seed)
            else:
                model.load_state_dict(weights)
            model = apply_pp(model, self.ctx)
            model = model.to(device=self.ctx.device, dtype=self.dtype).eval()
            model = apply_tp(model, self.ctx)
            self.model = apply_ep(model, self.ctx)
        # fused and stacked now, so the KV pool is sized from what is really free; experts are
        # stacked only where the sync-free paths run (grouped_experts.sync_free: CUDA)
        cuda = self.ctx.device.type == "cuda"
        fuse_weights(self.model, stack_experts=cuda,
                     release=torch.cuda.empty_cache if cuda else None)

    def init_kv_cache(self, num_blocks: int | None = None) -> PagedKVCache:
        spec, serve = self.ctx.model, self.ctx.config.serve
        if num_blocks is None:
            num_blocks = serve.max_num_seqs * blocks_needed(spec.max_seq_len, serve.kv_block_size)
        try:
            self.kv_cache = PagedKVCache(
                layers=self.ctx.kv_cache.layers,
                num_blocks=num_blocks,
                block_size=serve.kv_block_size,
                num_kv_heads=len(self.ctx.kv_cache.kv_heads),
                head_dim=spec.head_dim,
                dtype=self.dtype,
                device=self.ctx.device,
                scratch=graphs_unsupported(self.ctx) is None,
            )
        except RuntimeError as e:
            if not out_of_memory(e):
                raise
            raise DeviceMemoryError.kv_pool(num_blocks, self.ctx.rank, e) from None
        return self.kv_cache

    def warmup(self) -> None:
        """One dummy step; then, where graphs_unsupported says nothing against it, capture
        the decode steps' CUDA graphs (executor/decode_graphs.py). Running out of device
        memory here is a DeviceMemoryError naming the settings to lower."""
        try:
            self._warmup()
        except RuntimeError as e:
            if not out_of_memory(e):
                raise
            raise DeviceMemoryError.warmup(self.ctx.rank, e) from None

    def _warmup(self) -> None:
        self.run_dummy()
        if self.ctx.device.type == "cuda":
            self._warm_eager_kernels()
        self.eager_reason = graphs_unsupported(self.ctx)
        if self.eager_reason is None and self._cache().scratch_block is None:
            self.eager_reason = "the KV cache was allocated without a scratch block"
        if self.eager_reason is None:
            graphs = DecodeGraphs(self.model, self._cache(), graph_max_batch(self.ctx),
                                  self.ctx.model.max_seq_len)
            graphs.capture()
            self.graphs = graphs

    def _warm_eager_kernels(self) -> None:
        """Eager steps on the free KV blocks (nothing is cached yet), so first-use costs
        (kernel variants compiled, cuBLAS algorithms loaded) are paid before the first
        request: the biggest prefill step a burst of new requests makes, a prefill over two
        pages next to a decode, then two decodes."""
        cache, spec, serve = self._cache(), self.ctx.model, self.ctx.config.serve
        burst = warmup_prefill(serve.max_num_batched_tokens, serve.max_num_seqs,
                               spec.max_seq_len, cache.num_blocks, cache.block_size,
                               spec.vocab_size)
        if burst:
            self.run_step(burst)
        bs = cache.block_size
        n = min(2 * bs + 1, spec.max_seq_len - 1)
        need = -(-n // bs)
        if n < 2 or cache.num_blocks < need + 1:
            return
        tokens = [i % spec.vocab_size for i in range(n)]
        self.run_step([StepChunk(tokens, 0, list(range(need))), StepChunk([1], 0, [need])])
        self.run_step([StepChunk([1], n, list(range(need + 1))), StepChunk([1], 1, [need])])

    def run_step(self, chunks: Sequence[ChunkLike],
                 sampling: Sequence[SamplingLike | None] | None = None) -> StepOutput:
        """One forward over every chunk; tokens come back on the last PP stage only."""
        if not chunks:
            self.run_dummy()
            return StepOutput(logits=None)
        indices = [getattr(c, "output_index", 0) for c in chunks if c.sample]
        if self.graphs is not None and self.graphs.fits(chunks):
            return self._sample(*self.graphs.run(chunks), sampling, indices)
        step = build_step(chunks, self.ctx.kv_block_size, self.ctx.device,
                          max_seq_len=self.ctx.model.max_seq_len)
        return self._run(step, self._cache(), sampling, indices)

    def run_prefill(self, batch: PrefillBatch) -> StepOutput:
        return self.forward(batch, self._cache())

    def run_decode(self, batch: DecodeBatch) -> StepOutput:
        return self.forward(batch, self._cache())

    def run_dummy(self) -> None:
        self._run(dummy_step(self.ctx.device), None, None, [])

    def forward(self, batch: PrefillBatch | DecodeBatch | None,
                kv_cache: PagedKVCache | None) -> StepOutput:
        """One greedy step of this rank's stage, tokens shared with every stage over PP;
        `batch=None` is the dummy step."""
        if batch is None:
            self.run_dummy()
            return StepOutput(logits=None)
        chunks = batch.chunks()
        if kv_cache is self.kv_cache and self.graphs is not None and self.graphs.fits(chunks):
            out = self._sample(*self.graphs.run(chunks), None, [])
        else:
            step = build_step(batch, self.ctx.kv_block_size, self.ctx.device,
                              max_seq_len=self.ctx.model.max_seq_len)
            out = self._run(step, kv_cache, None, [])
        tokens = (torch.tensor(out.next_tokens, dtype=torch.long, device=self.ctx.device)
                  if self.ctx.is_last_stage
                  else torch.empty(len(chunks), dtype=torch.long, device=self.ctx.device))
        out.next_tokens = share_tokens(self.ctx, tokens).tolist()
        return out

    @torch.inference_mode()
    def _run(self, step: StepInput, kv_cache: PagedKVCache | None,
             sampling: Sequence[SamplingLike | None] | None, output_indices: list[int]
             ) -> StepOutput:
        """This rank's stage of one step: embed or receive, its layers, then send on or (last
        stage) the LM head of the sampled rows and the sampler."""
        if self.model is None:
            raise RuntimeError("call load_weights() before running the model")
        ctx, model = self.ctx, self.model
        if ctx.is_first_stage:
            h = model.embed(step.tokens)
        else:
            h = receive_activations(ctx, step.num_tokens, self.dtype)
        h = model.run_layers(h, step.meta, kv_cache)
        if not ctx.is_last_stage:
            send_activations(ctx, h)
            return StepOutput(logits=None)
        if step.num_seqs == 0:
            return StepOutput(logits=None)
        return self._sample(model.head(h[step.last_rows]).float(), None, sampling,
                            output_indices)

    def _sample(self, logits: torch.Tensor, greedy: list[int] | None,
                sampling: Sequence[SamplingLike | None] | None,
                output_indices: list[int]) -> StepOutput:
        params = list(sampling) if sampling is not None else [None] * logits.shape[0]
        return StepOutput(logits=logits, next_tokens=self.sampler.sample(
            logits, params, output_indices, greedy=greedy))

    def _cache(self) -> PagedKVCache:
        if self.kv_cache is None:
            raise RuntimeError("call init_kv_cache() before run_prefill/run_decode")
        return self.kv_cache

