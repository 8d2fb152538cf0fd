"""A linear layer over a few rows (a decode step's batch) as one Triton kernel that streams the
weight once at close to the memory's bandwidth.

At a decode batch of 1 to 16 rows, y = x W^T reads every byte of W for a few multiply-adds
each: the time is the weight's bytes over the bandwidth the kernel reaches. cuBLAS's kernels
for these shapes reach 1.4-2.1 TB/s on the dense shape's attention matrices on an H200
(docs/benchmarks.md), a third to a half of the copy bandwidth: too few programs in flight
for matrices of a few MB. Here program i owns BLOCK_N output columns, walks K in BLOCK_K
tiles (contiguous rows of W: coalesced loads, pipelined by Triton) and accumulates in fp32;
BLOCK_N is chosen so that several programs run on every multiprocessor. One row is an
elementwise multiply and a row sum; 2 to 16 rows pad to 16 and take the tensor cores
(tl.dot). Imported only on CUDA (executor/ops.py decides).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .ops import SKINNY_MAX_ROWS as MAX_ROWS  # tl.dot pads 2..16 rows to 16

TARGET_PROGRAMS = 1024
"""Programs a launch aims at: about eight per multiprocessor of an H200, to keep enough
loads in flight to cover the memory's latency."""


class SkinnyConfig(NamedTuple):
    """One launch's tiling: output columns and reduction width per program, warps, stages."""

    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def skinny_config(rows: int, n: int, k: int) -> SkinnyConfig:
    """The tiling for x [rows, k] @ W[n, k]^T: the widest column block (up to 16) that still
    gives TARGET_PROGRAMS programs; one row reads 512 columns of K per tile."""
    if rows == 1:
        block_n = 16
        while block_n > 2 and triton.cdiv(n, block_n) < TARGET_PROGRAMS:
            block_n //= 2
        return SkinnyConfig(block_n, min(512, triton.next_power_of_2(k)), 4, 4)
    return SkinnyConfig(16, min(128, max(16, triton.next_power_of_2(k))), 4, 4)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, n, k, stride_w, HAS_BIAS: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = tl.arange(0, BLOCK_K)
    cmask = cols < n
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_w
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for start in range(0, k, BLOCK_K):
        kmask = start + kk < k
        x = tl.load(x_ptr + start + kk, mask=kmask, other=0.0).to(tl.float32)
        w = tl.load(w_rows + start + kk[None, :], mask=cmask[:, None] & kmask[None, :],
                    other=0.0)
        acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + cols, y.to(y_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _skinny_kernel(x_ptr, w_ptr, b_ptr, y_ptr, rows, n, k, stride_x, stride_w, stride_y,
                   HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r = tl.arange(0, 16)
    kk = tl.arange(0, BLOCK_K)
    cmask = cols < n
    rmask = r < rows
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_w
    x_rows = x_ptr + r[:, None] * stride_x
    acc = tl.zeros([16, BLOCK_N], tl.float32)
    for start in range(0, k, BLOCK_K):
        kmask = start + kk < k
        x = tl.load(x_rows + start + kk[None, :], mask=rmask[:, None] & kmask[None, :],
                    other=0.0)
        w = tl.load(w_rows + start + kk[None, :], mask=cmask[:, None] & kmask[None, :],
                    other=0.0)
        acc += tl.dot(x, tl.trans(w))
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + r[:, None] * stride_y + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  config: SkinnyConfig | None = None) -> torch.Tensor:
    """x [rows <= MAX_ROWS, k] @ weight[n, k]^T (+ bias) in one launch, accumulated in fp32;
    x and weight of one 16-bit dtype, their last dims contiguous. `config` overrides the
    tiling (scripts/bench_linear.py sweeps it)."""
    rows, k = x.shape
    n = weight.shape[0]
    if rows > MAX_ROWS or weight.shape[1] != k:
        raise ValueError(f"skinny_linear takes up to {MAX_ROWS} rows of width {weight.shape[1]}"
                         f", got {tuple(x.shape)}")
    if x.stride(-1) != 1 or weight.stride(-1) != 1:
        raise ValueError("skinny_linear needs x and weight with a contiguous last dimension")
    y = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    if rows == 0 or n == 0:
        return y
    cfg = config or skinny_config(rows, n, k)
    grid = (triton.cdiv(n, cfg.block_n),)
    b = bias if bias is not None else weight
    if rows == 1:
        _gemv_kernel[grid](x, weight, b, y, n, k, weight.stride(0), HAS_BIAS=bias is not None,
                           BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
                           num_stages=cfg.num_stages)
    else:
        _skinny_kernel[grid](x, weight, b, y, rows, n, k, x.stride(0), weight.stride(0),
                             y.stride(0), HAS_BIAS=bias is not None, BLOCK_N=cfg.block_n,
                             BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
                             num_stages=cfg.num_stages)
    return y
