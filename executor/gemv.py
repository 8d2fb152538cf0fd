"""One-row linear layers (a batch-1 decode step) as Triton GEMV kernels, for CUDA graphs.

At batch 1, y = x W^T reads every byte of W for one multiply-add each: its time is W's
bytes over the bandwidth reached. On an H200, cuBLAS reaches 1.3-2.4 TB/s on the dense
shape's attention and down matrices, these kernels 2.0-3.0 (scripts/bench_linear.py,
docs/benchmarks.md): program i owns BLOCK_N (two) output columns and streams their rows of
W in BLOCK_K tiles, so a 2,048-row matrix is a thousand programs in flight. Their launches
cost more host time than cuBLAS's, so they are taken only inside a captured graph, where
launches are free (ops.graph_kernels).

Two variants fold the step before a matmul into its loads, one launch fewer: SiLU-and-mul of
the gate/up output before the down projection, and the residual add + RMSNorm before QKV
(ops.norm_linear says where). The norm's 1/rms is a per-row scalar, so it is applied after
the dot product; the sum of squares accumulates in the same loop (each program sees the
whole row), and program 0 writes the residual sum.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_kernels import gdc_launch_dependents, gdc_wait, launch_options

BLOCK_N = 2
BLOCK_K = 1024
"""Columns and reduction width per program: the fastest tiling of the dense shape's five
weights at one row in scripts/bench_linear.py's sweep on an H200 (4 warps, 3 stages)."""

_PLAIN, _SILU_MUL, _NORM, _ADD_NORM = 0, 1, 2, 3


@triton.jit
def _gemv_block(x_ptr, r_ptr, g_ptr, sum_ptr, w, acc, ss, offs, kmask, pid, k,
                INPUT: tl.constexpr, OUT_TY: tl.constexpr):
    """One BLOCK_K tile: the input's slice (transformed per INPUT) times the weight tile `w`
    into the accumulator; the sum of squares for the norm modes."""
    x = tl.load(x_ptr + offs, mask=kmask, other=0.0).to(tl.float32)
    if INPUT == 1:  # x is [2k]: silu(first half) * second half, rounded as stored
        b = tl.load(x_ptr + k + offs, mask=kmask, other=0.0).to(tl.float32)
        x = (x / (1.0 + tl.exp(-x)) * b).to(OUT_TY).to(tl.float32)
    if INPUT == 3:  # the residual stream's add, rounded as a separate add rounds it
        x = (x + tl.load(r_ptr + offs, mask=kmask, other=0.0).to(tl.float32)
             ).to(sum_ptr.dtype.element_ty)
        if pid == 0:
            tl.store(sum_ptr + offs, x, mask=kmask)
        x = x.to(tl.float32)
    if INPUT >= 2:
        ss += x * x
        x = x * tl.load(g_ptr + offs, mask=kmask, other=0.0).to(tl.float32)
    return acc + w.to(tl.float32) * x[None, :], ss


@triton.jit
def _gemv_kernel(x_ptr, r_ptr, g_ptr, sum_ptr, w_ptr, b_ptr, y_ptr, n, k, stride_w, eps,
                 INPUT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = tl.arange(0, BLOCK_K)
    cmask = cols < n
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_w
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    ss = tl.zeros([BLOCK_K], tl.float32)
    kmask = kk < k
    # the first weight tile comes from memory before the wait for the kernel before
    # (programmatic dependent launch): weights are not its output, the input is
    w = tl.load(w_rows + kk[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0)
    if PDL:
        gdc_wait()
    acc, ss = _gemv_block(x_ptr, r_ptr, g_ptr, sum_ptr, w, acc, ss, kk, kmask, pid, k,
                          INPUT, y_ptr.dtype.element_ty)
    for start in range(BLOCK_K, k, BLOCK_K):
        offs = start + kk
        kmask = offs < k
        w = tl.load(w_rows + offs[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0)
        acc, ss = _gemv_block(x_ptr, r_ptr, g_ptr, sum_ptr, w, acc, ss, offs, kmask, pid, k,
                              INPUT, y_ptr.dtype.element_ty)
    if PDL:  # only now: the next GEMV's early loads would compete with these
        gdc_launch_dependents()
    y = tl.sum(acc, axis=1)
    if INPUT >= 2:
        y = y / tl.sqrt(tl.sum(ss, axis=0) / k + eps)
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + cols, y.to(y_ptr.dtype.element_ty), mask=cmask)


def _launch(mode: int, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            k: int, residual: torch.Tensor | None = None, norm: torch.Tensor | None = None,
            total: torch.Tensor | None = None, eps: float = 0.0,
            tiling: tuple[int, int] = (BLOCK_N, BLOCK_K), pdl: bool = False) -> torch.Tensor:
    if x.shape[0] != 1 or weight.shape[1] != k:
        raise ValueError(f"a GEMV takes one row of width {weight.shape[1]}, got "
                         f"{tuple(x.shape)}")
    if any(t is not None and t.stride(-1) != 1 for t in (x, weight, residual)):
        raise ValueError("a GEMV needs x, the residual and the weight with a contiguous last "
                         "dimension")
    n, (block_n, block_k) = weight.shape[0], tiling
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    if n:
        _gemv_kernel[(triton.cdiv(n, block_n),)](
            x, x if residual is None else residual, x if norm is None else norm,
            x if total is None else total, weight, weight if bias is None else bias, y, n, k,
            weight.stride(0), eps, INPUT=mode, HAS_BIAS=bias is not None, BLOCK_N=block_n,
            BLOCK_K=min(block_k, triton.next_power_of_2(k)), PDL=pdl, num_warps=4,
            num_stages=3, **launch_options(pdl))
    return y


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         tiling: tuple[int, int] = (BLOCK_N, BLOCK_K), pdl: bool = False) -> torch.Tensor:
    """x [1, k] @ weight[n, k]^T (+ bias), accumulated in fp32; `tiling` (BLOCK_N, BLOCK_K)
    for scripts/bench_linear.py's sweep; `pdl`: a programmatic dependent launch
    (triton_kernels.launch_options)."""
    return _launch(_PLAIN, x, weight, bias, x.shape[1], tiling=tiling, pdl=pdl)


def silu_mul_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  pdl: bool = False) -> torch.Tensor:
    """(silu(x[:, :k]) * x[:, k:]) @ weight[n, k]^T for x [1, 2k]: SwiGLU's down projection."""
    return _launch(_SILU_MUL, x, weight, bias, x.shape[1] // 2, pdl=pdl)


def norm_gemv(x: torch.Tensor, residual: torch.Tensor | None, norm: torch.Tensor, eps: float,
              weight: torch.Tensor, bias: torch.Tensor | None = None, pdl: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual) @ weight^T, x + residual) for x [1, k] (without `residual`:
    rms_norm(x) @ weight^T and x itself)."""
    if residual is None:
        return _launch(_NORM, x, weight, bias, x.shape[1], norm=norm, eps=eps, pdl=pdl), x
    total = torch.empty_like(x)
    y = _launch(_ADD_NORM, x, weight, bias, x.shape[1], residual, norm, total, eps, pdl=pdl)
    return y, total
