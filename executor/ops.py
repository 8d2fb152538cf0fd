"""The model's elementwise steps, each one fused Triton kernel on CUDA and plain torch
elsewhere, and its linear layers: cuBLAS, or GEMV kernels for one row inside a CUDA graph.

`PYPTO_KERNELS=torch` keeps the torch versions on CUDA too (to compare numbers or timings).
Both versions compute in fp32 and round once, so bf16 results agree to rounding.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_HALF = (torch.bfloat16, torch.float16)
NORM_FOLD_MAX_COLS = 4096
"""Outputs up to which the norm is folded into the GEMV. Every program of the fused kernel
redoes the norm's reads for its two columns, which costs more than the launch saved on a
wide matrix: on an H200, QKV (3,072 outputs) fused 8.2 us vs 8.8 apart, gate/up (16,384)
26.7 vs 23.0 (scripts/bench_linear.py, docs/benchmarks.md)."""


@dataclass(frozen=True)
class GraphKernels:
    """The kernels a step captured into a CUDA graph takes: GEMVs for one-row linear layers
    (else cuBLAS), and programmatic dependent launch between the Triton kernels (each may
    start while the one before drains; triton_kernels.launch_options)."""

    gemv: bool = True
    pdl: bool = True


ALL_GRAPH_KERNELS = GraphKernels()
_IN_GRAPH: contextvars.ContextVar[GraphKernels | None] = contextvars.ContextVar(
    "in_graph", default=None)


@functools.cache
def _triton_ready() -> bool:
    if os.environ.get("PYPTO_KERNELS", "triton") == "torch":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _pdl_capable(device: torch.device) -> bool:
    from .triton_kernels import PDL_AVAILABLE
    return PDL_AVAILABLE and torch.cuda.get_device_capability(device)[0] >= 9


def pdl_on(x: torch.Tensor) -> bool:
    """Whether the Triton kernel about to run on x launches with programmatic dependent
    launch: inside graph_kernels with `pdl`, on a GPU that has it (compute capability 9+)."""
    kernels = _IN_GRAPH.get()
    return kernels is not None and kernels.pdl and x.is_cuda and _pdl_capable(x.device)


def use_triton(x: torch.Tensor) -> bool:
    """Whether x's step takes the Triton kernels: a CUDA tensor, with Triton installed."""
    return triton_on(x.device)


def triton_on(device: torch.device) -> bool:
    """Whether steps on `device` take the Triton kernels (CUDA, with Triton installed)."""
    return device.type == "cuda" and _triton_ready()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None
             ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x * rsqrt(mean(x^2) + eps) * weight over the last dim of x [rows, n]; with
    `residual`, the residual stream's add first: (norm(x + residual), x + residual)."""
    if use_triton(x):
        from .triton_kernels import rms_norm as kernel
        return kernel(x, weight, eps, residual, pdl=pdl_on(x))
    total = x if residual is None else x + residual
    xf = total.float()
    out = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
           ).to(x.dtype)
    return out if residual is None else (out, total)


def rotary(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
           ) -> torch.Tensor:
    """Rotary embedding (half-split form) of x [tokens, heads, d] at `positions`; cos/sin
    [max_seq_len, d / 2] fp32. On CUDA x is rotated in place and returned."""
    if use_triton(x):
        from .triton_kernels import rotary_
        return rotary_(x, positions, cos, sin)
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


def rotary_into_cache(qkv: torch.Tensor, num_heads: int, num_kv_heads: int,
                      positions: torch.Tensor, slots: torch.Tensor, cos: torch.Tensor,
                      sin: torch.Tensor, cache) -> torch.Tensor:
    """qkv [tokens, heads + 2 kv_heads, d]: the rotated queries [tokens, heads, d] back; the
    rotated keys and the values written at `slots` of `cache` (a LayerCache)."""
    if use_triton(qkv):
        from .triton_kernels import rotary_into_cache as kernel
        kernel(qkv, num_heads, num_kv_heads, positions, slots, cos, sin, *cache.flat(),
               pdl=pdl_on(qkv))
        return qkv[:, :num_heads]
    qk = rotary(qkv[:, :num_heads + num_kv_heads], positions, cos, sin)
    cache.write(slots, qk[:, num_heads:], qkv[:, num_heads + num_kv_heads:])
    return qk[:, :num_heads]


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """x [rows, 2n] -> silu(x[:, :n]) * x[:, n:]."""
    if use_triton(x):
        from .triton_kernels import silu_mul as kernel
        return kernel(x, pdl=pdl_on(x))
    a, b = x.float().chunk(2, dim=-1)
    return (F.silu(a) * b).to(x.dtype)


def float_argmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x in fp32, each row's first index of its maximum as int64 [rows]) of x [rows, n]:
    one kernel on CUDA (the decode graphs' logits and greedy tokens)."""
    if use_triton(x) and x.stride(-1) == 1:
        from .triton_kernels import float_argmax as kernel
        return kernel(x, pdl=pdl_on(x))
    return x.float(), x.argmax(-1)


@contextlib.contextmanager
def graph_kernels(kernels: GraphKernels = ALL_GRAPH_KERNELS):
    """Within: the step runs for (or inside) a CUDA graph capture, where launches are free,
    so one-row linear layers take the GEMV kernels (executor/gemv.py) and the Triton kernels
    programmatic dependent launch, as `kernels` says (GraphKernels(False, False): cuBLAS
    and plain launches, the baseline scripts/bench_decode.py measures)."""
    token = _IN_GRAPH.set(kernels)
    try:
        yield
    finally:
        _IN_GRAPH.reset(token)


def _gemv_on(x: torch.Tensor, weight: torch.Tensor) -> bool:
    kernels = _IN_GRAPH.get()
    return (kernels is not None and kernels.gemv and x.dim() == 2 and x.shape[0] == 1
            and x.dtype in _HALF and weight.dtype == x.dtype and use_triton(x) and x.stride(-1) == 1
            and weight.stride(-1) == 1)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    """x [rows, k] @ weight[n, k]^T (+ bias): a GEMV kernel for one row in a graph, else
    cuBLAS (F.linear)."""
    if _gemv_on(x, weight):
        from .gemv import gemv
        return gemv(x, weight, bias, pdl=pdl_on(x))
    return F.linear(x, weight, bias)


def silu_mul_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """silu_mul(x) @ weight^T (+ bias): one GEMV kernel for one row in a graph."""
    if _gemv_on(x, weight):
        from .gemv import silu_mul_gemv
        return silu_mul_gemv(x, weight, bias, pdl=pdl_on(x))
    return F.linear(silu_mul(x), weight, bias)


def linear_add_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    residual: torch.Tensor, norm: torch.Tensor, eps: float,
                    silu_mul_input: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(y + residual), y + residual) for y = x @ weight^T (+ bias), or y =
    silu_mul(x) @ weight^T with `silu_mul_input` (SwiGLU's down projection): a linear layer
    whose output joins the residual stream, and the norm after it. One GEMV kernel for one
    row in a graph."""
    if _gemv_on(x, weight) and residual.is_contiguous():
        from .gemv import gemv_add_norm
        return gemv_add_norm(x, weight, bias, residual, norm, eps, pdl=pdl_on(x),
                             silu_mul_input=silu_mul_input)
    y = (silu_mul_linear if silu_mul_input else linear)(x, weight, bias)
    return rms_norm(y, norm, eps, residual)


def qkv_into_cache(x: torch.Tensor, residual: torch.Tensor | None, norm: torch.Tensor,
                   eps: float, weight: torch.Tensor, bias: torch.Tensor | None,
                   num_heads: int, num_kv_heads: int, positions: torch.Tensor,
                   slots: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The QKV projection of rms_norm(x + residual), rotary and the cache write: (the
    rotated queries [tokens, heads, d], x + residual; without `residual`, x). One GEMV
    kernel for one row in a graph (the norm folded in up to NORM_FOLD_MAX_COLS outputs),
    else norm_linear then rotary_into_cache."""
    if _gemv_on(x, weight) and (residual is None or residual.is_contiguous()):
        from .gemv import qkv_gemv_into_cache
        stream = None
        if weight.shape[0] > NORM_FOLD_MAX_COLS:  # the norm apart (see NORM_FOLD_MAX_COLS)
            x, stream = _norm_with_stream(x, residual, norm, eps)
            residual = norm = None
        q, total = qkv_gemv_into_cache(x, residual, norm, eps, weight, bias, num_heads,
                                       num_kv_heads, positions, slots, cos, sin,
                                       *cache.flat(), pdl=pdl_on(x))
        return q, total if stream is None else stream
    qkv, stream = norm_linear(x, residual, norm, eps, weight, bias)
    heads = num_heads + 2 * num_kv_heads
    q = rotary_into_cache(qkv.view(x.shape[0], heads, weight.shape[0] // heads), num_heads,
                          num_kv_heads, positions, slots, cos, sin, cache)
    return q, stream


def norm_linear(x: torch.Tensor, residual: torch.Tensor | None, norm: torch.Tensor,
                eps: float, weight: torch.Tensor, bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual) @ weight^T (+ bias), x + residual); without `residual`, x
    itself second. One GEMV kernel for one row in a graph, up to NORM_FOLD_MAX_COLS
    outputs."""
    if (_gemv_on(x, weight) and weight.shape[0] <= NORM_FOLD_MAX_COLS
            and (residual is None or residual.is_contiguous())):
        from .gemv import norm_gemv
        return norm_gemv(x, residual, norm, eps, weight, bias, pdl=pdl_on(x))
    # apart: the norm kernel, then the linear layer (a GEMV for one row in a graph)
    normed, stream = _norm_with_stream(x, residual, norm, eps)
    return linear(normed, weight, bias), stream


def _norm_with_stream(x: torch.Tensor, residual: torch.Tensor | None, norm: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual); without `residual`, (rms_norm(x), x)."""
    if residual is None:
        return rms_norm(x, norm, eps), x
    return rms_norm(x, norm, eps, residual)
