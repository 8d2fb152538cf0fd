"""The model's elementwise steps and its skinny matmuls, each one Triton kernel on CUDA and plain
torch elsewhere.

`PYPTO_KERNELS=torch` keeps the torch versions on CUDA too (to compare numbers or timings).
Both versions compute in fp32 and round once, so bf16 results agree to rounding.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

SKINNY_MAX_ROWS = 16
"""Rows up to which a 16-bit linear layer on CUDA takes the skinny Triton kernel."""
_HALF = (torch.bfloat16, torch.float16)


@functools.cache
def _triton_ready() -> bool:
    if os.environ.get("PYPTO_KERNELS", "triton") == "torch":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


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
        return kernel(x, weight, eps, residual)
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
        kernel(qkv, num_heads, num_kv_heads, positions, slots, cos, sin, *cache.flat())
        return qkv[:, :num_heads]
    qk = rotary(qkv[:, :num_heads + num_kv_heads], positions, cos, sin)
    cache.write(slots, qk[:, num_heads:], qkv[:, num_heads + num_kv_heads:])
    return qk[:, :num_heads]


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """x [rows, 2n] -> silu(x[:, :n]) * x[:, n:]."""
    if use_triton(x):
        from .triton_kernels import silu_mul as kernel
        return kernel(x)
    a, b = x.float().chunk(2, dim=-1)
    return (F.silu(a) * b).to(x.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    """x [rows, k] @ weight[n, k]^T (+ bias). On CUDA a 16-bit step of up to SKINNY_MAX_ROWS
    rows (a decode batch) takes the Triton kernel that streams the weight at close to the
    bandwidth (executor/skinny_linear.py); anything else, cuBLAS (F.linear)."""
    if (x.dim() == 2 and x.shape[0] <= SKINNY_MAX_ROWS and x.dtype in _HALF
            and weight.dtype == x.dtype
            and use_triton(x) and x.stride(-1) == 1 and weight.stride(-1) == 1):
        from .skinny_linear import skinny_linear
        return skinny_linear(x, weight, bias)
    return F.linear(x, weight, bias)
