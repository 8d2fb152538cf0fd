"""One-row linear layers (a batch-1 decode step) as Triton GEMV kernels, for CUDA graphs.

At batch 1, y = x W^T reads every byte of W for one multiply-add each: its time is W's
bytes over the bandwidth reached. On an H200, cuBLAS reaches 1.3-2.4 TB/s on the dense
shape's attention and down matrices, these kernels 2.0-3.0 (scripts/bench_linear.py,
docs/benchmarks.md): program i owns BLOCK_N (two) output columns and streams their rows of
W in BLOCK_K tiles, so a 2,048-row matrix is a thousand programs in flight. Their launches
cost more host time than cuBLAS's, so they are taken only inside a captured graph, where
launches are free (ops.graph_kernels).

A small kernel between two GEMVs costs a launch and a drain of the GPU (a few us) for a few
KB of work, so the steps around a matmul are folded into its kernel, on the input side:
SiLU-and-mul of the gate/up output before the down projection, RMSNorm or the residual add +
RMSNorm before QKV (ops.norm_linear says where); and on the output side:
- rotary + KV-cache write after QKV: program i then owns column pairs (c, c + d/2) of one
  head, which rotary mixes, and writes rotated queries to y, rotated keys and the values to
  the cache (ops.qkv_into_cache);
- the residual add + RMSNorm after the attention output projection, and after the last
  layer's down projection (the final norm): each program writes its columns of the stream,
  and the last to finish (an atomic count) normalises the whole row (ops.linear_add_norm),
  so the matmul after it (gate/up, the LM head) reads its input ready.
The input norm's 1/rms is a per-row scalar, so it is applied after the dot product; its sum
of squares accumulates in the same loop (each program sees the whole row), and program 0
writes the residual sum.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_kernels import gdc_launch_dependents, gdc_wait, launch_options, program_counts

BLOCK_N = 2
BLOCK_K = 1024
"""Columns and reduction width per program: the fastest tiling of the dense shape's five
weights at one row in scripts/bench_linear.py's sweep on an H200 (4 warps, 3 stages)."""

_PLAIN, _SILU_MUL, _NORM, _ADD_NORM = 0, 1, 2, 3          # the input side
_STORE, _ROTARY_CACHE, _ADD_NORM_OUT = 0, 1, 2            # the output side


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
def _store_rotated(y_ptr, kc_ptr, vc_ptr, pos_ptr, slot_ptr, cos_ptr, sin_ptr, y, pair,
                   n, stride_table, stride_cs, stride_ch, num_heads, num_kv_heads,
                   HALF: tl.constexpr):
    """The QKV output's column pairs `pair` (pair p: columns c and c + HALF of one head,
    y [pairs, 2] in fp32): queries and keys rotated at the row's position, queries to y,
    keys and values to the cache at the row's slot (as rotary_into_cache does)."""
    a, b = tl.split(y.to(y_ptr.dtype.element_ty).to(tl.float32))  # rounded as QKV stores
    head = pair // HALF
    i = pair % HALF
    col = head * (2 * HALF) + i
    pmask = pair < n // 2
    pos = tl.load(pos_ptr)
    slot = tl.load(slot_ptr).to(tl.int64)
    cos = tl.load(cos_ptr + pos * stride_table + i, mask=pmask, other=0.0)
    sin = tl.load(sin_ptr + pos * stride_table + i, mask=pmask, other=0.0)
    is_v = head >= num_heads + num_kv_heads
    ty = y_ptr.dtype.element_ty
    r1 = tl.where(is_v, a, a * cos - b * sin).to(ty)
    r2 = tl.where(is_v, b, b * cos + a * sin).to(ty)
    is_q = pmask & (head < num_heads)
    tl.store(y_ptr + col, r1, mask=is_q)
    tl.store(y_ptr + col + HALF, r2, mask=is_q)
    kv = tl.where(is_v, head - num_heads - num_kv_heads, head - num_heads)
    at = slot * stride_cs + kv * stride_ch + i
    is_k = pmask & (head >= num_heads) & ~is_v
    tl.store(kc_ptr + at, r1, mask=is_k)
    tl.store(kc_ptr + at + HALF, r2, mask=is_k)
    tl.store(vc_ptr + at, r1, mask=pmask & is_v)
    tl.store(vc_ptr + at + HALF, r2, mask=pmask & is_v)


@triton.jit
def _add_norm_out(y, cols, cmask, res_ptr, total_ptr, g_ptr, normed_ptr, count_ptr, n, eps,
                  N_P: tl.constexpr):
    """y's columns added to the residual stream (`res_ptr`) into `total_ptr`; the last
    program of the launch to get here (an atomic count, which it resets) writes
    rms_norm(total) * g to `normed_ptr`, as the separate add + norm kernel would."""
    ty = total_ptr.dtype.element_ty
    total = (y.to(ty).to(tl.float32)
             + tl.load(res_ptr + cols, mask=cmask, other=0.0).to(tl.float32)).to(ty)
    tl.store(total_ptr + cols, total, mask=cmask)
    # every thread's stores are in before the count (barrier, then a release); the last
    # one's acquire orders its loads (past L1, which is not coherent) after all of them
    tl.debug_barrier()
    if tl.atomic_add(count_ptr, 1, sem="acq_rel") == tl.num_programs(0) - 1:
        offs = tl.arange(0, N_P)
        mask = offs < n
        x = tl.load(total_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg"
                    ).to(tl.float32)
        inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n + eps)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(normed_ptr + offs, (x * inv * g).to(ty), mask=mask)
        tl.atomic_xchg(count_ptr, 0)


@triton.jit
def _gemv_kernel(x_ptr, r_ptr, g_ptr, sum_ptr, w_ptr, b_ptr, y_ptr, n, k, stride_w, eps,
                 pos_ptr, slot_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, stride_table, stride_cs,
                 stride_ch, num_heads, num_kv_heads,
                 res_ptr, total_ptr, og_ptr, count_ptr, out_eps,
                 INPUT: tl.constexpr, OUTPUT: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HALF: tl.constexpr,
                 N_P: tl.constexpr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    j = tl.arange(0, BLOCK_N)
    if OUTPUT == 1:  # column pairs (c, c + HALF) of a head, side by side: j = 2 pair + side
        pair = pid * (BLOCK_N // 2) + j // 2
        cols = (pair // HALF) * (2 * HALF) + pair % HALF + (j % 2) * HALF
        cmask = pair < n // 2
    else:
        cols = pid * BLOCK_N + j
        cmask = cols < n
    kk = tl.arange(0, BLOCK_K)
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
    if OUTPUT == 0:
        tl.store(y_ptr + cols, y.to(y_ptr.dtype.element_ty), mask=cmask)
    if OUTPUT == 1:
        _store_rotated(y_ptr, kc_ptr, vc_ptr, pos_ptr, slot_ptr, cos_ptr, sin_ptr,
                       tl.reshape(y, (BLOCK_N // 2, 2)), pid * (BLOCK_N // 2)
                       + tl.arange(0, BLOCK_N // 2), n, stride_table, stride_cs, stride_ch,
                       num_heads, num_kv_heads, HALF)
    if OUTPUT == 2:
        _add_norm_out(y, cols, cmask, res_ptr, total_ptr, og_ptr, y_ptr, count_ptr, n,
                      out_eps, N_P)


def _launch(mode: int, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            k: int, residual: torch.Tensor | None = None, norm: torch.Tensor | None = None,
            total: torch.Tensor | None = None, eps: float = 0.0,
            tiling: tuple[int, int] = (BLOCK_N, BLOCK_K), pdl: bool = False,
            output: int = _STORE, rotary: tuple = (), add_norm: tuple = ()) -> torch.Tensor:
    """The GEMV launch behind every entry point: input side `mode`, output side `output`
    with its arguments (`rotary`: positions, slots, cos, sin, k_flat, v_flat, num_heads,
    num_kv_heads; `add_norm`: residual, total, norm weight, eps)."""
    if x.shape[0] != 1 or weight.shape[1] != k:
        raise ValueError(f"a GEMV takes one row of width {weight.shape[1]}, got "
                         f"{tuple(x.shape)}")
    if any(t is not None and t.stride(-1) != 1 for t in (x, weight, residual)):
        raise ValueError("a GEMV needs x, the residual and the weight with a contiguous last "
                         "dimension")
    n, (block_n, block_k) = weight.shape[0], tiling
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    if not n:
        return y
    pos, slots, cos, sin, k_flat, v_flat, heads, kv_heads = rotary or (x,) * 6 + (0, 0)
    half = n // (heads + 2 * kv_heads) // 2 if rotary else 1
    res, out_total, out_norm, out_eps = add_norm or (x, x, x, 0.0)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, x if residual is None else residual, x if norm is None else norm,
        x if total is None else total, weight, weight if bias is None else bias, y, n, k,
        weight.stride(0), eps, pos, slots, cos, sin, k_flat, v_flat,
        cos.stride(0) if rotary else 0, k_flat.stride(0) if rotary else 0,
        k_flat.stride(1) if rotary else 0, heads, kv_heads, res, out_total, out_norm,
        program_counts("add + norm GEMV", x.device, 1) if add_norm else x, out_eps,
        INPUT=mode, OUTPUT=output, HAS_BIAS=bias is not None, BLOCK_N=block_n,
        BLOCK_K=min(block_k, triton.next_power_of_2(k)), HALF=half,
        N_P=triton.next_power_of_2(n) if add_norm else 1, PDL=pdl, num_warps=4,
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


def qkv_gemv_into_cache(x: torch.Tensor, residual: torch.Tensor | None,
                        norm: torch.Tensor | None, eps: float, weight: torch.Tensor,
                        bias: torch.Tensor | None, num_heads: int, num_kv_heads: int,
                        positions: torch.Tensor, slots: torch.Tensor, cos: torch.Tensor,
                        sin: torch.Tensor, k_flat: torch.Tensor, v_flat: torch.Tensor,
                        pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The QKV projection of x [1, k] (after rms_norm(x + residual) with `norm`; without
    `residual`, rms_norm(x); without `norm`, x as it is) with rotary and the cache write
    folded in: (the rotated queries [1, heads, d], x + residual or x); the rotated keys and
    the values go to k/v_flat [slots, kv_heads, d] at slots[0]."""
    rotary = (positions, slots, cos, sin, k_flat, v_flat, num_heads, num_kv_heads)
    mode = _PLAIN if norm is None else _NORM if residual is None else _ADD_NORM
    total = torch.empty_like(x) if mode == _ADD_NORM else x
    y = _launch(mode, x, weight, bias, x.shape[1], residual, norm, total, eps, pdl=pdl,
                output=_ROTARY_CACHE, rotary=rotary)
    return y[:, :num_heads * k_flat.shape[-1]].view(1, num_heads, -1), total


def gemv_add_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  residual: torch.Tensor, norm: torch.Tensor, eps: float, pdl: bool = False,
                  silu_mul_input: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(y + residual) * norm, y + residual) for y = x @ weight^T (+ bias), x [1, k]
    (with `silu_mul_input`, x [1, 2k] and y = silu_mul(x) @ weight^T): the matmul, the
    residual add and the norm after it in one launch."""
    mode, k = (_SILU_MUL, x.shape[1] // 2) if silu_mul_input else (_PLAIN, x.shape[1])
    total = torch.empty((1, weight.shape[0]), dtype=x.dtype, device=x.device)
    normed = _launch(mode, x, weight, bias, k, pdl=pdl, output=_ADD_NORM_OUT,
                     add_norm=(residual, total, norm, eps))
    return normed, total
