"""The reference decoder: a plain single-device torch module, dense or MoE, from a ModelSpec.

Embedding, pre-norm blocks (RMSNorm, rotary attention with grouped-query heads, a SwiGLU MLP
or top-k routed SwiGLU experts), final RMSNorm and LM head. It knows nothing of parallelism:
tp.py, pp.py and ep.py reshape it from outside. The few attributes they rewrite (which
heads / KV heads an attention holds, which layers remain) are plain data here, so a sharded
module is the same function on its share of the weights.

Weights are random from a fixed seed, drawn on the CPU in parameter order, so every rank
builds bit-identical full weights and slices its share from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.config import ModelSpec, RopeScaling
from . import ops
from .attention import PagedAttentionMetadata, causal_attention, paged_attention
from .grouped_experts import StackedExperts, grouped_experts, sync_free
from .weight_marks import WeightMarks

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class SequenceMetadata:
    """Whole sequences from position 0 with no KV cache (the reference path, the dummy step):
    `lengths[i]` tokens of sequence i, one after another in the flat batch."""

    lengths: list[int]
    positions: torch.Tensor


AttentionMetadata = SequenceMetadata | PagedAttentionMetadata


def hooked(module: nn.Module) -> bool:
    """Whether a hook is on the module (TP's all-reduce of partial sums, a test's fault): its
    output must then come out of its own call, not a kernel that folds in the step after it
    (torch keeps a module's hooks in these two dicts)."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


class Linear(nn.Linear):
    """nn.Linear through ops.linear (a GEMV kernel for one row in a CUDA graph). Same
    parameters and state-dict names as nn.Linear (checkpoints, TP's reshards)."""

    silu_mul_input = False
    """Whether the layer's input is SwiGLU's gate/up output, silu_mul'd first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)

    def add_norm(self, x: torch.Tensor, residual: torch.Tensor, norm: RMSNorm
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(self(x) + residual), self(x) + residual): the layer's output joins the
        residual stream and is normalised, in the matmul's kernel where ops.linear_add_norm
        can; a hooked layer runs on its own, then the add and norm."""
        if hooked(self):
            return norm(self(x), residual)
        return ops.linear_add_norm(x, self.weight, self.bias, residual, norm.weight, norm.eps,
                                   self.silu_mul_input)


class DownProjection(Linear):
    """SwiGLU's down projection over the gate/up output [rows, 2 x in_features]: silu(gate) *
    up, then the matmul (one kernel where ops.silu_mul_linear can)."""

    silu_mul_input = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.silu_mul_linear(x, self.weight, self.bias)


class FusedProjection:
    """Several nn.Linear layers of one input as one matmul: their weights (and biases) become
    views of one concatenated tensor, so the output is their outputs side by side. Fused on
    first use and again whenever a weight was replaced (a .to(), a TP reshard)."""

    def __init__(self, *linears: nn.Linear):
        self.linears = linears
        self._fused_from = WeightMarks()

    def _still_fused(self) -> bool:
        return self._fused_from.current(self.linears)

    def fuse_into(self, weight: torch.Tensor) -> None:
        """Fuse into the caller's storage: one expert's slice of a layer's stacked experts,
        or the tensor the checkpoint loader read the layers' weights into (then nothing is
        copied)."""
        self._fuse(into=weight)

    def _fuse(self, into: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            parts = [lin.weight.data for lin in self.linears]
            if into is None:
                self.weight = torch.cat(parts)
            elif _rows_of(parts, into):  # already there (the checkpoint loader read them in)
                self.weight = into
            else:
                self.weight = torch.cat(parts, out=into)
            biased = all(lin.bias is not None for lin in self.linears)
            self.bias = torch.cat([lin.bias.data for lin in self.linears]) if biased else None
            row = 0
            for lin in self.linears:
                rows = lin.weight.shape[0]
                lin.weight.data = self.weight[row:row + rows]
                if biased:
                    lin.bias.data = self.bias[row:row + rows]
                row += rows
        self._fused_from.take(self.linears)

    def ensure(self) -> None:
        """Fuse now unless already fused from the layers' current weights."""
        if not self._still_fused():
            self._fuse()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.ensure()
        return ops.linear(x, self.weight, self.bias)

    def after_norm(self, norm: RMSNorm, x: torch.Tensor, residual: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(self(norm(x + residual)), x + residual), the norm folded into the matmul's
        kernel where ops.norm_linear can; without `residual`, x itself second."""
        self.ensure()
        return ops.norm_linear(x, residual, norm.weight, norm.eps, self.weight, self.bias)


def _rows_of(parts: list[torch.Tensor], whole: torch.Tensor) -> bool:
    """Whether `parts` are, in order, the consecutive row blocks of `whole` itself."""
    row = 0
    for part in parts:
        if part.data_ptr() != whole[row].data_ptr() or part.shape[1:] != whole.shape[1:]:
            return False
        row += part.shape[0]
    return row == whole.shape[0]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """norm(x); with `residual`, (norm(x + residual), x + residual)."""
        return ops.rms_norm(x, self.weight, self.eps, residual)


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None
                     ) -> torch.Tensor:
    """Rotary inverse frequencies (float64), with 'linear' or Llama-3 scaling applied: llama3
    divides the low frequencies (wavelength above original / low_freq_factor) by `factor`,
    keeps the high ones (below original / high_freq_factor) and blends linearly between."""
    half = head_dim // 2
    freqs = 1.0 / theta ** (torch.arange(half, dtype=torch.float64) / half)
    if scaling is None:
        return freqs
    if scaling.rope_type == "linear":
        return freqs / scaling.factor
    original, low, high = (scaling.original_max_position_embeddings, scaling.low_freq_factor,
                           scaling.high_freq_factor)
    wavelength = 2 * math.pi / freqs
    blend = ((original / wavelength - low) / (high - low)).clamp(0.0, 1.0)
    blended = (1 - blend) * freqs / scaling.factor + blend * freqs
    return torch.where(wavelength > original / low, freqs / scaling.factor,
                       torch.where(wavelength < original / high, freqs, blended))


class Rotary(nn.Module):
    """Rotary position embedding (half-split form) with a precomputed cos/sin table."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float,
                 scaling: RopeScaling | None = None):
        super().__init__()
        if head_dim % 2:
            # the halves would differ in width and broadcasting would silently mix them up
            raise ValueError(
                f"rotary embedding needs an even head_dim, got {head_dim} (model.hidden_size / "
                "model.num_attention_heads): pick sizes whose quotient is even")
        freqs = rope_frequencies(head_dim, theta, scaling)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), freqs)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: [tokens, heads, head_dim] (on CUDA rotated in place)."""
        return ops.rotary(x, positions, self.cos, self.sin)


class Attention(nn.Module):
    """Grouped-query attention over the heads in `head_ids` and KV heads in `kv_head_ids`."""

    def __init__(self, spec: ModelSpec, rotary: Rotary):
        super().__init__()
        d, h, kv = spec.head_dim, spec.num_attention_heads, spec.num_kv_heads
        self.head_dim = d
        self.queries_per_kv = h // kv
        self.head_ids = range(h)
        self.kv_head_ids = range(kv)
        bias = spec.attention_bias
        self.wq = Linear(spec.hidden_size, h * d, bias=bias)
        self.wk = Linear(spec.hidden_size, kv * d, bias=bias)
        self.wv = Linear(spec.hidden_size, kv * d, bias=bias)
        self.wo = Linear(h * d, spec.hidden_size, bias=False)
        self.rotary = [rotary]  # shared table; a list keeps it out of this module's state
        self.qkv = FusedProjection(self.wq, self.wk, self.wv)

    def kv_index(self, device: torch.device) -> torch.Tensor:
        """For each held query head, the position of its KV head among the held KV heads."""
        key = (self.head_ids, self.kv_head_ids, device)
        if getattr(self, "_kv_index_key", None) != key:
            index = [h // self.queries_per_kv - self.kv_head_ids.start for h in self.head_ids]
            self._kv_index = torch.tensor(index, device=device)
            per = len(index) // len(self.kv_head_ids)
            # held query heads in runs of `per` per held KV head: attention can group them
            self._grouped = per * len(self.kv_head_ids) == len(index) and index == [
                i // per for i in range(len(index))]
            self._kv_index_key = key
        return self._kv_index

    def forward(self, norm: RMSNorm, x: torch.Tensor, residual: torch.Tensor | None,
                meta: AttentionMetadata, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the heads' output [tokens, heads * d], before wo; the residual stream x +
        residual, or x without `residual`) for the input norm(x + residual): QKV, rotary,
        the cache write and attention. On the paged path QKV, rotary and the cache write
        are one kernel where ops.qkv_into_cache can."""
        n, d = x.shape[0], self.head_dim
        h, kv = len(self.head_ids), len(self.kv_head_ids)
        rotary, kv_index = self.rotary[0], self.kv_index(x.device)
        self.qkv.ensure()
        if isinstance(meta, PagedAttentionMetadata):
            q, stream = ops.qkv_into_cache(x, residual, norm.weight, norm.eps, self.qkv.weight,
                                           self.qkv.bias, h, kv, meta.positions, meta.slots,
                                           rotary.cos, rotary.sin, cache)
            out = paged_attention(q, cache.k, cache.v, meta,
                                  None if self._grouped else kv_index)
        else:
            qkv, stream = self.qkv.after_norm(norm, x, residual)
            qkv = qkv.view(n, h + 2 * kv, d)
            qk = rotary(qkv[:, :h + kv], meta.positions)
            out = causal_attention(qk[:, :h], qk[:, h:], qkv[:, h + kv:], meta.lengths,
                                   kv_index)
        return out.reshape(n, h * d), stream


class FeedForward(nn.Module):
    """SwiGLU MLP: w2(silu(w1 x) * w3 x)."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.w1 = Linear(hidden, intermediate, bias=False)
        self.w3 = Linear(hidden, intermediate, bias=False)
        self.w2 = DownProjection(intermediate, hidden, bias=False)
        self.w13 = FusedProjection(self.w1, self.w3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.w13(x))

    def add_norm(self, x: torch.Tensor, residual: torch.Tensor, norm: RMSNorm
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(self(x) + residual), self(x) + residual), the add and norm folded into the
        down projection's kernel where Linear.add_norm can."""
        if hooked(self):
            return norm(self(x), residual)
        return self.w2.add_norm(self.w13(x), residual, norm)


def route(gate: nn.Linear, x: torch.Tensor, top_k: int, renormalize: bool = True
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing: (weights [tokens, k], expert ids [tokens, k]); the weights are the
    softmax probabilities, renormalized to sum 1 when `renormalize`."""
    probs = gate(x).float().softmax(-1)
    weights, ids = probs.topk(top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights.to(x.dtype), ids


def run_experts(rows: torch.Tensor, expert_ids: torch.Tensor, experts: Mapping[int, nn.Module],
                num_experts: int) -> torch.Tensor:
    """Row i through expert expert_ids[i]: rows sorted by expert, each expert called once on
    its contiguous run (one host sync for the run lengths, whatever the expert count)."""
    order = torch.argsort(expert_ids, stable=True)
    counts = torch.bincount(expert_ids, minlength=num_experts).tolist()
    ordered, out = rows[order], torch.empty_like(rows)
    results, start = [], 0
    for e, count in enumerate(counts):
        if count:
            results.append(experts[e](ordered[start:start + count]))
            start += count
    if results:
        out[order] = torch.cat(results)
    return out


def sorted_experts(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                   experts: Sequence[nn.Module]) -> torch.Tensor:
    """sum_k weights[:, k] * expert_{ids[:, k]}(x) by the sorted path (run_experts): each
    expert called once on exactly the rows routed to it."""
    token = torch.arange(x.shape[0], device=x.device).repeat_interleave(ids.shape[1])
    y = run_experts(x[token], ids.reshape(-1), dict(enumerate(experts)), len(experts))
    return torch.zeros_like(x).index_add_(0, token, y * weights.reshape(-1, 1))


class SharedExpert(nn.Module):
    """The expert every token goes through besides its routed ones, scaled per token by a
    sigmoid gate (Qwen2-MoE): sigmoid(gate x) * mlp(x)."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.mlp = FeedForward(hidden, intermediate)
        self.gate = Linear(hidden, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(x)) * self.mlp(x)


class MoE(nn.Module):
    """Top-k routed SwiGLU experts. On CUDA a step of up to
    grouped_experts.MAX_SYNC_FREE_ROWS rows runs them without a host sync (a decode step can
    be graphed); otherwise the rows are sorted so that every expert sees only its tokens."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.top_k = spec.experts_per_token
        self.renormalize = spec.moe_renormalize
        self.gate = Linear(spec.hidden_size, spec.num_experts, bias=False)
        self.experts = nn.ModuleList(
            FeedForward(spec.hidden_size, spec.intermediate_size) for _ in range(spec.num_experts)
        )
        self.shared = (SharedExpert(spec.hidden_size, spec.shared_expert_intermediate_size)
                       if spec.shared_expert_intermediate_size else None)
        self.stacked = StackedExperts(self.experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = route(self.gate, x, self.top_k, self.renormalize)
        if sync_free(x):
            out = grouped_experts(x, weights, ids, self.stacked)
        else:
            out = sorted_experts(x, weights, ids, self.experts)
        return out if self.shared is None else out + self.shared(x)


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, layer_id: int, rotary: Rotary):
        super().__init__()
        self.layer_id = layer_id
        self.attention_norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.attention = Attention(spec, rotary)
        self.ffn_norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.ffn = MoE(spec) if spec.is_moe else FeedForward(spec.hidden_size,
                                                              spec.intermediate_size)

    def forward(self, h: torch.Tensor, residual: torch.Tensor | None, meta: AttentionMetadata,
                kv_cache=None, then_norm: RMSNorm | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One block on the residual stream held as (h, residual), whose sum is the stream:
        each pending add is fused into the norm after it, and both into a matmul's kernel
        where the kernels allow: the input norm into QKV (ops.qkv_into_cache), the
        attention output's add and norm into wo (ops.linear_add_norm). Returns the new
        pair: (this block's MLP output, the stream before it); with `then_norm` (the final
        norm after the last block), (then_norm(the stream after it), that stream), the add
        and norm folded into the down projection (ops.linear_add_norm)."""
        cache = kv_cache.layer(self.layer_id) if kv_cache is not None else None
        out, residual = self.attention(self.attention_norm, h, residual, meta, cache)
        x, residual = self.attention.wo.add_norm(out, residual, self.ffn_norm)
        if then_norm is None:
            return self.ffn(x), residual
        if isinstance(self.ffn, FeedForward):
            return self.ffn.add_norm(x, residual, then_norm)
        return then_norm(self.ffn(x), residual)  # experts (EP's too): their sum, then the norm


class Transformer(nn.Module):
    """The decoder. `embed`, `run_layers` and `head` are the pieces a pipeline stage runs."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.rotary = Rotary(spec.head_dim, spec.max_seq_len, spec.rope_theta, spec.rope_scaling)
        self.tok_embeddings: nn.Module | None = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(Block(spec, i, self.rotary) for i in range(spec.num_layers))
        self.norm: nn.Module | None = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.output: nn.Module | None = Linear(spec.hidden_size, spec.vocab_size, bias=False)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok_embeddings(tokens)

    def _blocks(self, h: torch.Tensor, meta: AttentionMetadata, kv_cache=None,
                then_norm: RMSNorm | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layers on the stream (h, residual); `then_norm` goes to the last block."""
        residual, last = None, len(self.layers) - 1
        for i, block in enumerate(self.layers):
            h, residual = block(h, residual, meta, kv_cache,
                                then_norm=then_norm if i == last else None)
        return h, residual

    def run_layers(self, h: torch.Tensor, meta: AttentionMetadata, kv_cache=None) -> torch.Tensor:
        h, residual = self._blocks(h, meta, kv_cache)
        return h if residual is None else h + residual

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(h))

    def forward(self, tokens: torch.Tensor, meta: AttentionMetadata, kv_cache=None):
        """Logits of every token (single device, whole model: the decode graphs' step), the
        last block's add and the final norm folded into its down projection."""
        h = self.embed(tokens)
        if not self.layers:
            return self.head(h)
        return self.output(self._blocks(h, meta, kv_cache, then_norm=self.norm)[0])


def fuse_weights(model: nn.Module, stack_experts: bool,
                 release: Callable[[], None] | None = None) -> None:
    """Fuse every projection group and, with `stack_experts`, stack every MoE layer's
    experts (grouped_experts.StackedExperts) now rather than at first use, calling `release`
    after each layer: on CUDA, torch.cuda.empty_cache, so that the copies they replace are
    handed back before the KV pool is sized from free memory, instead of lingering in torch's
    cache as a second copy of the weights (experts first: stacking fuses them too)."""
    for module in model.modules():
        if stack_experts and isinstance(module, MoE):
            module.stacked.weights()
        for fused in (getattr(module, "qkv", None), getattr(module, "w13", None)):
            if isinstance(fused, FusedProjection):
                fused.ensure()
        if release is not None and isinstance(module, Block):
            release()  # what the block before this one left behind
    if release is not None:
        release()


@torch.no_grad()
def init_weights(model: Transformer, seed: int) -> Transformer:
    """Fill every parameter from one CPU generator, in parameter order (same on every rank).

    Linear weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norm weights ~ 1 + N(0, 0.1^2):
    activations stay O(1) at any width, and logits differ enough for stable greedy tokens.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight"):
            value = 1.0 + 0.1 * noise
        elif "tok_embeddings" in name:
            value = noise
        else:
            value = noise / math.sqrt(p.shape[-1])
        p.copy_(value.to(p.dtype))
    return model


def build_reference_model(
    spec: ModelSpec, seed: int = 0, device: torch.device | str = "cpu"
) -> Transformer:
    """The full model with seeded random weights, in the spec's dtype, on `device`."""
    model = init_weights(Transformer(spec), seed)
    return model.to(device=device, dtype=DTYPES[spec.dtype]).eval()


def sequence_metadata(lengths: list[int], device: torch.device | str = "cpu") -> SequenceMetadata:
    """Metadata for whole sequences run from position 0 with no cache (the reference path)."""
    positions = torch.cat([torch.arange(n) for n in lengths]) if lengths else torch.zeros(0)
    return SequenceMetadata(lengths=list(lengths), positions=positions.long().to(device))
